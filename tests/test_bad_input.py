"""The bad-input catalogue: every mistake a user can make gets ONE clear error.

Each case runs the real command line (``fbnet_fast.cli.main``, in-process for speed; the
NaN case and one resume case in a subprocess) and asserts:

* the command's ``run`` raises the project exception type named in the case, with a
  message naming the file / field / layer at fault and what was expected;
* ``main`` turns it into exit status 2 and exactly one line ``fbnet-fast: error: ...`` on
  stderr (no traceback);
* nothing the user had changed: every file under the test folder has the same bytes and
  no run folder was created.

Run ``pytest tests/test_bad_input.py -s`` to print the catalogue with each message.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fbnet_fast.cli import _all_commands, build_parser, main
from fbnet_fast.errors import (CheckpointError, ConfigError, DataError, FBNetError, LUTError, RunDirError, SpaceError,
                               TrainingError)
from fbnet_fast.lut import LatencyTable
from fbnet_fast.search import SearchConfig, Searcher, run_search
from tests.conftest import make_tiny_space

ROOT = Path(__file__).resolve().parent.parent

CASES = {}


def case(exc, *fragments):
    """Register ``fn(tmp) -> argv`` as a catalogue case expecting ``exc`` with ``fragments`` in its message."""
    def deco(fn):
        CASES[fn.__name__] = (fn, exc, fragments)
        return fn
    return deco


# ---- shared material ---------------------------------------------------------------------------

def _space_file(tmp: Path, **changes) -> Path:
    d = make_tiny_space().to_dict()
    d.update(changes)
    path = tmp / "space.json"
    path.write_text(json.dumps(d))
    return path


def _lut_dict(space=None) -> dict:
    space = space or make_tiny_space()
    m = torch.tensor([2.0, 2.5, 4.0, 9.0, 1.0], dtype=torch.float64).repeat(space.num_layers, 1)
    return LatencyTable.from_matrix(space, m, fixed_ms=3.0).to_dict()


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _search(tmp: Path, *extra: str, lut: Path | None = None, space: Path | None = None) -> list[str]:
    space = space or _space_file(tmp)
    lut = lut or _write_json(tmp / "lut.json", _lut_dict())
    return ["search", "--space", str(space), "--width-mult", "1", "--lut", str(lut), "--num-train", "80",
            "--num-val", "16", "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "1", "--no-progress",
            "--out", str(tmp / "run"), *extra]


def _image_folder(root: Path, classes: dict[str, list[str]]) -> Path:
    from PIL import Image

    for cls, files in classes.items():
        (root / cls).mkdir(parents=True)
        for i, name in enumerate(files):
            if name.endswith(".png") and not name.startswith("bad"):
                Image.new("RGB", (20, 20), (10 * i, 50, 90)).save(root / cls / name)
            else:
                (root / cls / name).write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny finished search (2 epochs, checkpoints) to break in the resume cases."""
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = SearchConfig(space="unused", epochs=2, warmup_epochs=1, batch_size=8, num_train=80, num_val=16,
                       progress=False, plots=False, kernel="reference", checkpoint_every=4,
                       target_fraction=None)  # the LUT's every architecture takes 5 ms: no budget to spend
    run_search(cfg, out, space=make_tiny_space(), lut=LatencyTable.from_dict(_lut_dict()), log=lambda m: None)
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---- latency tables ---------------------------------------------------------------------------

@case(LUTError, "lut.json", "not valid JSON", "line 1 column 2")
def lut_malformed_json(tmp):
    (tmp / "lut.json").write_text("{")
    return _search(tmp, lut=tmp / "lut.json")


@case(LUTError, "lut.json", "LUT has 4 layers", "has 5")
def lut_missing_layer(tmp):
    d = _lut_dict()
    d["layers"].pop()
    return _search(tmp, lut=_write_json(tmp / "lut.json", d))


@case(LUTError, "lut.json", "layers[2]", "no entry for candidate 'k3_e3'")
def lut_missing_candidate(tmp):
    d = _lut_dict()
    del d["layers"][2]["latency"]["k3_e3"]
    return _search(tmp, lut=_write_json(tmp / "lut.json", d))


@case(LUTError, "lut.json", "fingerprint", "'fbnet-fast lut measure'")
def lut_of_another_space(tmp):
    other = make_tiny_space(stem_filters=16)
    return _search(tmp, lut=_write_json(tmp / "lut.json", _lut_dict(other)))


@case(LUTError, "lut.json", "layers[1].latency.k5_e6.median_ms", "finite number >= 0 ms", "-1.5")
def lut_negative_latency(tmp):
    d = _lut_dict()
    d["layers"][1]["latency"]["k5_e6"]["median_ms"] = -1.5
    return _search(tmp, lut=_write_json(tmp / "lut.json", d))


@case(LUTError, "lut.json", "layers[0].latency.skip.median_ms", "finite number >= 0 ms", "nan")
def lut_nan_latency(tmp):
    d = _lut_dict()
    d["layers"][0]["latency"]["skip"]["median_ms"] = float("nan")  # json writes NaN
    return _search(tmp, lut=_write_json(tmp / "lut.json", d))


@case(LUTError, "lut.json", "field 'candidates' names ['k3_e3'] more than once", "each block must appear once")
def lut_candidate_listed_twice(tmp):
    # A permuted 'candidates' list is fine (entries are read by name; test_lut_loss), a repeated
    # name is not: its columns would be ambiguous.
    d = _lut_dict()
    d["candidates"] = ["k3_e3"] + d["candidates"]
    return _search(tmp, lut=_write_json(tmp / "lut.json", d))


# ---- latency budgets --------------------------------------------------------------------------

@case(ConfigError, "--target-ms must be a positive number of ms", "got 0.0")
def budget_target_not_positive(tmp):
    return _search(tmp, "--target-ms", "0")


@case(ConfigError, "--target-ms 1000", "outside what this space can reach", "lut.json", "8 to 48 ms")
def budget_target_out_of_reach(tmp):
    return _search(tmp, "--target-ms", "1000", "--budget-mode", "target")


@case(ConfigError, "--target-ms 5", "below the fastest architecture", "8 ms")
def budget_ceiling_below_the_fastest(tmp):
    return _search(tmp, "--target-ms", "5")


@case(ConfigError, "--target-ms 1000", "above the slowest architecture", "8 to 48 ms", "--budget-mode under")
def budget_ceiling_above_the_slowest(tmp):
    return _search(tmp, "--target-ms", "1000")


# ---- search spaces ----------------------------------------------------------------------------

@case(SpaceError, "space.json", "unknown block name 'conv7'", "k<kernel>_e<expansion>")
def space_unknown_block(tmp):
    return _search(tmp, space=_space_file(tmp, candidates=["k3_e1", "conv7", "skip"]))


@case(SpaceError, "stage 1", "'repeats'", "positive integer", "got 0")
def space_stage_zero_repeats(tmp):
    stages = make_tiny_space().to_dict()["stages"]
    stages[1]["repeats"] = 0
    return _search(tmp, space=_space_file(tmp, stages=stages))


@case(SpaceError, "stage 2", "'filters'", "positive integer", "got -24")
def space_stage_negative_width(tmp):
    stages = make_tiny_space().to_dict()["stages"]
    stages[2]["filters"] = -24
    return _search(tmp, space=_space_file(tmp, stages=stages))


@case(SpaceError, "'k3_e1_g3'", "groups=3", "does not divide", "layer 0")
def space_groups_do_not_divide_channels(tmp):
    return _search(tmp, space=_space_file(tmp, candidates=["k3_e1", "k3_e1_g3", "skip"]))


@case(SpaceError, "input_size 3", "too small for the total stride 4")
def space_input_too_small_for_strides(tmp):
    return _search(tmp, space=_space_file(tmp, input_size=3))


@case(SpaceError, "'nosuch'", "neither a file nor a built-in space", "fbnet-cifar")
def space_unknown_name(tmp):
    return ["space", "nosuch"]


# ---- checkpoints (resume) --------------------------------------------------------------------

@case(CheckpointError, "no readable checkpoint in", "ckpt-", "corrupt or truncated", "expected a file written by")
def checkpoint_corrupt(tmp, finished_run):
    run = _copy_run(finished_run, tmp / "run")
    for p in (run / "checkpoints").glob("ckpt-*.pt"):
        p.write_bytes(os.urandom(2000))
    return ["search", "--resume", "--out", str(run)]


@case(CheckpointError, "no readable checkpoint in", "are all corrupt or truncated", "PytorchStreamReader")
def checkpoint_truncated(tmp, finished_run):
    run = _copy_run(finished_run, tmp / "run")
    for p in (run / "checkpoints").glob("ckpt-*.pt"):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])
    return ["search", "--resume", "--out", str(run)]


@case(CheckpointError, "ckpt-", "checkpoint is for space fingerprint", "this search uses 'tiny'")
def checkpoint_of_another_space(tmp, finished_run):
    run = _copy_run(finished_run, tmp / "run")
    other = make_tiny_space(candidates=["k3_e1", "k5_e1", "skip"])
    s = Searcher(SearchConfig(batch_size=8, num_train=80, num_val=16, progress=False, kernel="reference", epochs=2,
                              warmup_epochs=1, target_fraction=None), tmp / "other", space=other,
                 lut=LatencyTable.from_matrix(other, torch.ones(5, 3)), log=lambda m: None)
    s.epoch = 9  # newer than the run's own checkpoints: resume picks it
    path = s.save_checkpoint()
    path.rename(run / "checkpoints" / path.name)
    import shutil

    shutil.rmtree(tmp / "other")
    return ["search", "--resume", "--out", str(run)]


@case(RunDirError, "cannot resume", "holds no search (no config.json)")
def resume_a_folder_without_a_run(tmp):
    (tmp / "notarun").mkdir()
    (tmp / "notarun" / "notes.txt").write_text("mine")
    return ["search", "--resume", "--out", str(tmp / "notarun")]


# ---- data --------------------------------------------------------------------------------------

@case(DataError, "data folder", "empty", "has no class subfolders", "<class name>/<image files>")
def data_empty_folder(tmp):
    (tmp / "empty").mkdir()
    return _search(tmp, "--data", f"folder:{tmp / 'empty'}")


@case(DataError, "data folder", "missing", "does not exist")
def data_missing_folder(tmp):
    return _search(tmp, "--data", f"folder:{tmp / 'missing'}")


@case(DataError, "cannot list folder", "Permission denied")
def data_unreadable_folder(tmp, monkeypatch):
    # Tests run as root, for whom chmod 000 does not block reading: make scandir refuse.
    root = _image_folder(tmp / "imgs", {"a": ["0.png", "1.png"], "b": ["0.png", "1.png"]})
    real = os.scandir

    def scandir(path="."):
        if Path(path) == root:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return _search(tmp, "--data", f"folder:{root}")


@case(DataError, "only one class subfolder (cats)", "at least 2")
def data_one_class(tmp):
    root = _image_folder(tmp / "imgs", {"cats": ["0.png", "1.png", "2.png"]})
    return _search(tmp, "--data", f"folder:{root}")


@case(DataError, "class folder", "dogs", "has no image files (2 file(s) with other extensions)", ".png")
def data_non_image_files(tmp):
    root = _image_folder(tmp / "imgs", {"cats": ["0.png", "1.png"], "dogs": ["notes.txt", "a.csv"]})
    return _search(tmp, "--data", f"folder:{root}")


@case(DataError, "bad.png", "is not a readable image")
def data_corrupt_image_file(tmp):
    root = _image_folder(tmp / "imgs", {"cats": ["0.png", "bad.png"], "dogs": ["0.png", "1.png"]})
    return _search(tmp, "--data", f"folder:{root}")


@case(ConfigError, "data spec 'cifar10:' needs a path")
def data_spec_without_path(tmp):
    return _search(tmp, "--data", "cifar10:")


# ---- options ----------------------------------------------------------------------------------

@case(ConfigError, "alpha", "non-negative", "-0.1")
def option_alpha_negative(tmp):
    return _search(tmp, "--alpha", "-0.1")


@case(ConfigError, "beta must be > 0", "got 0.0")
def option_beta_zero(tmp):
    return _search(tmp, "--beta", "0")


@case(ConfigError, "tau0", "positive", "got 0.0")
def option_tau_zero(tmp):
    return _search(tmp, "--tau0", "0")


@case(ConfigError, "warmup_epochs (5)", "smaller than epochs (2)", "theta would never be trained")
def option_warmup_longer_than_run(tmp):
    return _search(tmp, "--warmup-epochs", "5")


@case(ConfigError, "batch_size 64", "larger than the weight split")
def option_batch_larger_than_data(tmp):
    args = _search(tmp)
    args[args.index("--batch-size") + 1] = "64"
    return args


# ---- output folder --------------------------------------------------------------------------

@case(RunDirError, "already holds files (another run?)", "--resume", "--overwrite")
def out_folder_holds_another_run(tmp, finished_run):
    _copy_run(finished_run, tmp / "run")
    return _search(tmp)


@case(RunDirError, "--overwrite refuses to delete", "does not look like an fbnet-fast run folder")
def overwrite_a_folder_that_is_not_a_run(tmp):
    (tmp / "run").mkdir()
    (tmp / "run" / "thesis.tex").write_text("years of work")
    return _search(tmp, "--overwrite")


@case(ConfigError, "alpha")
def overwrite_with_a_bad_option_keeps_the_old_run(tmp, finished_run):
    # --overwrite deletes the old run only once the new one has passed every check
    _copy_run(finished_run, tmp / "run")
    return _search(tmp, "--overwrite", "--alpha", "-1")


@case(RunDirError, "--resume and --overwrite contradict each other")
def resume_and_overwrite_together(tmp, finished_run):
    run = _copy_run(finished_run, tmp / "run")
    return ["search", "--resume", "--overwrite", "--out", str(run)]


@case(RunDirError, "metrics.jsonl does not exist", "at least one finished epoch")
def plot_a_folder_without_a_run(tmp):
    (tmp / "x").mkdir()
    return ["plot", str(tmp / "x")]


# ---- the runner ---------------------------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, request, capsys):
    fn, exc, fragments = CASES[name]
    kwargs = {a: request.getfixturevalue(a) for a in fn.__code__.co_varnames[1:fn.__code__.co_argcount]}
    argv = fn(tmp_path, **kwargs)
    before = _snapshot(tmp_path)
    args = build_parser().parse_args(argv)
    with pytest.raises(exc) as info:
        _all_commands()[args.command][2](args)
    msg = str(info.value)
    assert isinstance(info.value, FBNetError)
    for f in fragments:
        assert f in msg, f"{name}: {f!r} not in {msg!r}"
    assert "\n" not in msg, msg
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"fbnet-fast: error: {msg}\n", err
    assert _snapshot(tmp_path) == before, f"{name}: files changed"
    if request.config.getoption("capture") == "no":  # pytest -s: print the catalogue
        with capsys.disabled():
            print(f"\nCATALOGUE {name} [{type(info.value).__name__}]: {msg}")


def test_catalogue_is_complete():
    assert len(CASES) >= 20


def test_corrupt_checkpoint_through_the_console_script(tmp_path, finished_run):
    run = _copy_run(finished_run, tmp_path / "run")
    for p in (run / "checkpoints").glob("ckpt-*.pt"):
        p.write_bytes(b"\x00" * 100)
    r = subprocess.run([sys.executable, "-m", "fbnet_fast", "search", "--resume", "--out", str(run)], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("fbnet-fast: error: no readable checkpoint")
    assert "Traceback" not in r.stderr


def test_newest_checkpoint_corrupt_falls_back_and_sets_it_aside(tmp_path, finished_run):
    """Not an error: the previous checkpoint is used, the bad one is renamed, not deleted."""
    run = _copy_run(finished_run, tmp_path / "run")
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    ckpts[-1].write_bytes(b"garbage")
    logs = []
    s = Searcher(SearchConfig(**json.loads((run / "config.json").read_text())["search"]), run,
                 space=make_tiny_space(), lut=LatencyTable.load(run / "lut.json"), log=logs.append)
    assert s.resume() == ckpts[-2]
    assert (run / "checkpoints" / (ckpts[-1].name + ".corrupt")).read_bytes() == b"garbage"
    assert any("renamed to" in l for l in logs)


def test_nan_loss_mid_search_stops_and_keeps_the_last_checkpoint(tmp_path):
    """A NaN loss at the 9th step (epoch 2, after a checkpoint): one line, exit 2, the checkpoint intact."""
    argv = _search(tmp_path, "--checkpoint-every", "4", "--threads", "1")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "_kill_driver.py"), "nan", "9", "--", *argv], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    msg = r.stderr.strip()
    assert msg.startswith("fbnet-fast: error: loss became nan at epoch") and "Lower --w-lr" in msg, msg
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts and f"the last good checkpoint {ckpts[-1]} is kept" in msg, msg
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "theta.json").exists()
    print(f"\nCATALOGUE nan_loss_mid_search [{TrainingError.__name__}]: {msg[len('fbnet-fast: error: '):]}")


def test_corrupt_image_message_names_something_a_cli_user_can_do(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs", {"cats": ["0.png", "bad.png"], "dogs": ["0.png", "1.png"]})
    assert main(_search(tmp_path, "--data", f"folder:{root}")) == 2
    assert "skip_bad_files" not in capsys.readouterr().err
