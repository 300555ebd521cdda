"""sample / train / export: sampling follows softmax(theta), inheritance, CLI smoke tests in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_space
from fbnet_fast.cli.deploy import draw_architectures, sample_run
from fbnet_fast.runs import load_architecture_file
from fbnet_fast.errors import SpaceError
from fbnet_fast.model import supernet_key_map
from fbnet_fast.train import TrainConfig, Trainer

from test_train import folder_digest

REPO = Path(__file__).resolve().parents[1]


def make_search_run(root: Path, tiny_space, tiny_lut) -> Path:
    """A finished 2-epoch search of the tiny space on a few generated images (~2 s)."""
    from fbnet_fast.data import build_datasets
    from fbnet_fast.search import SearchConfig, run_search

    data = build_datasets("synthetic", image_size=16, seed=0, num_train=200, num_val=32)
    cfg = SearchConfig(epochs=2, warmup_epochs=1, batch_size=16, progress=False, kernel="reference")
    run_search(cfg, root, space=tiny_space, lut=tiny_lut, data=data, log=lambda m: None)
    return root


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    from fbnet_fast.lut import LatencyTable

    space = make_tiny_space()
    base = torch.tensor([2.0, 2.5, 4.0, 9.0, 1.0], dtype=torch.float64)
    m = base.repeat(space.num_layers, 1) * torch.linspace(1.0, 1.5, space.num_layers)[:, None]
    lut = LatencyTable.from_matrix(space, m, fixed_ms=3.0)
    return make_search_run(tmp_path_factory.mktemp("search"), space, lut)


def _cli(*args, cwd=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fbnet_fast", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)


def _set_theta(run: Path, theta: torch.Tensor) -> None:
    d = json.loads((run / "theta.json").read_text())
    d["theta"] = theta.tolist()
    (run / "theta.json").write_text(json.dumps(d))


def test_sampling_frequencies_follow_softmax_theta(tmp_path, search_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    space = make_tiny_space()
    theta = torch.tensor([[2.0, 0.0, -1.0, 0.5, 1.0]] * space.num_layers, dtype=torch.float64)
    theta[2] = torch.tensor([0.0, 0.0, 3.0, 0.0, -2.0])  # a peaked layer
    _set_theta(run, theta)
    n = 4000
    _, _, got_theta, _, archs = draw_architectures(run, num=n, seed=0)
    torch.testing.assert_close(got_theta, theta)
    assert archs[0][0] == "argmax" and list(archs[0][1].blocks) == [space.candidates[i] for i in theta.argmax(1)]
    idx = torch.tensor([a.indices(space) for _, a in archs[1:]])  # [n, L]
    p = torch.softmax(theta, dim=-1)
    for layer in range(space.num_layers):
        freq = torch.bincount(idx[:, layer], minlength=len(space.candidates)).double() / n
        # 4.5 binomial standard errors per cell (25 cells: a false alarm has probability < 2e-4)
        se = torch.sqrt(p[layer] * (1 - p[layer]) / n)
        assert torch.all((freq - p[layer]).abs() <= 4.5 * se + 1e-12), (layer, freq, p[layer])
    # seeded: the same draws again, different ones for another seed
    first = [a.blocks for _, a in draw_architectures(run, num=50, seed=0)[4]]
    assert first == [a.blocks for _, a in draw_architectures(run, num=50, seed=0)[4]]
    assert first != [a.blocks for _, a in draw_architectures(run, num=50, seed=1)[4]]


def test_sample_rows_carry_latency_params_flops(search_run):
    res = sample_run(search_run, num=3, seed=0)
    space = res["space"]
    for r in res["rows"]:
        lut = json.loads((search_run / "lut.json").read_text())
        expect = sum(lut["layers"][l]["latency"][b]["median_ms"] for l, b in enumerate(r["blocks"]))
        assert r["latency_ms"] == pytest.approx(expect + 3.0)  # + the fixed stem/head time of the LUT
        assert r["params"] > 0 and r["flops"] > 0 and r["macs"] * 2 == r["flops"]
        assert r["log_prob"] <= 0
    assert len(res["rows"]) == 4 and space.fingerprint == make_tiny_space().fingerprint


def test_inherit_copies_the_chosen_candidates(tmp_path, search_run):
    from fbnet_fast.data import build_datasets

    state = torch.load(sorted((search_run / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=False)["model"]
    space, arch = load_architecture_file(search_run / "arch.json", run_dir=search_run)
    data = build_datasets("synthetic", image_size=16, seed=0, num_train=64, num_val=32)
    t = Trainer(TrainConfig(inherit=str(search_run), progress=False, batch_size=32), space, arch, tmp_path,
                data=data, log=lambda m: None)
    mine = t.model.state_dict()
    for key, src in supernet_key_map(space, arch).items():
        assert torch.equal(mine[key].contiguous(), state[src].contiguous()), key


def test_architecture_files(tmp_path):
    space = make_tiny_space()
    txt = tmp_path / "a.txt"
    txt.write_text("# hand-written\nk3_e1 k3_e1_g2\nskip k5_e6   # layer 3\nk3_e3\n")
    spec = tmp_path / "space.json"
    spec.write_text(json.dumps(space.to_dict()))
    s, a = load_architecture_file(txt, space_name=str(spec))
    assert a.blocks == ("k3_e1", "k3_e1_g2", "skip", "k5_e6", "k3_e3") and s.fingerprint == space.fingerprint
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"space": "fbnet-cifar", "fingerprint": space.fingerprint, "blocks": ["skip"] * 22}))
    with pytest.raises(SpaceError, match="fingerprint.*--width-mult"):
        load_architecture_file(bad)


# ---- the commands, end to end, as a user runs them ----------------------------------------------

def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            h, w = 18 + i, 24 - i  # odd sizes: resized and centre-cropped to the space's 16x16
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            arr[..., c] = 255  # a learnable colour cue
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def test_cli_sample_train_export(tmp_path, search_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    r = _cli("sample", run, "--num", "2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "argmax" in r.stdout and "sample-02" in r.stdout and "LUT ms" in r.stdout
    doc = json.loads((run / "samples" / "sample-01.json").read_text())
    assert set(doc) >= {"space", "fingerprint", "blocks", "space_def", "stats"}
    summary = json.loads((run / "samples" / "samples.json").read_text())
    assert [a["name"] for a in summary["architectures"]] == ["argmax", "sample-01", "sample-02"]

    images = _image_folder(tmp_path / "user_images")
    before = folder_digest(images)
    out = tmp_path / "trained"
    r = _cli("train", run / "samples" / "argmax.json", "--data", f"folder:{images}", "--epochs", "2",
             "--batch-size", "8", "--inherit", run, "--out", out, "--no-progress", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "held-out top-1" in r.stdout and "inherited" in r.stdout
    assert folder_digest(images) == before  # the user's folder is only read
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert "image folder" in json.loads((out / "summary.json").read_text())["data"]

    exp = tmp_path / "exported"
    r = _cli("export", out, "--format", "onnx,torchscript", "--out", exp, "--bench-runs", "3")
    assert r.returncode == 0, r.stderr
    assert "opset 17" in r.stdout
    rep = json.loads((exp / "export.json").read_text())
    assert rep["verification"]["onnx"]["ok"] and rep["verification"]["torchscript"]["ok"]
    assert (exp / "model.onnx").is_file() and (exp / "model.torchscript.pt").is_file()
    assert rep["class_names"] == ["cats", "dogs"] and rep["preprocess"]["mean"] is not None


def test_the_search_arch_json_trains_as_is(tmp_path, search_run):
    """The file the search's last line names rebuilds its space (a custom one here) with no options."""
    doc = json.loads((search_run / "arch.json").read_text())
    assert doc["space_def"] == make_tiny_space().to_dict() and doc["fingerprint"] == make_tiny_space().fingerprint
    space, arch = load_architecture_file(search_run / "arch.json")
    assert space.fingerprint == make_tiny_space().fingerprint and list(arch.blocks) == doc["blocks"]
    out = tmp_path / "trained"
    r = _cli("train", search_run / "arch.json", "--num-train", "64", "--num-val", "16", "--epochs", "1",
             "--batch-size", "16", "--out", out, "--no-progress", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "held-out top-1" in r.stdout
    assert json.loads((out / "arch.json").read_text())["space_def"] == doc["space_def"]


def test_cli_errors_are_one_line(tmp_path):
    r = _cli("train", tmp_path / "missing.json", "--out", tmp_path / "o")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("fbnet-fast: error:")
    assert "missing.json" in r.stderr
    r = _cli("sample", tmp_path)
    assert r.returncode == 2 and "no config.json" in r.stderr
    r = _cli("export", tmp_path, "--format", "tflite")
    assert r.returncode == 2 and "tflite" in r.stderr
