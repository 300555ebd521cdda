"""``fbnet-fast export`` to ExecuTorch (``pte``, ``pte-int8``) and ONNX int8 (``onnx-int8``).

* fp32 ``.pte`` (XNNPACK) within 1e-4 of the eager model on three architectures, two input sizes
  and two fixed batch sizes, and within the project's derived tolerance (fbnet_fast/export.py).
* int8 (PT2E for ExecuTorch, static QDQ for ONNX Runtime), calibrated on the run's training split
  and judged on its held-out split: the accuracy drop against fp32 eager stays within the default
  ``MAX_INT8_DROP`` (2 points) on a small trained net (37 % top-1 on 400 held-out images of the
  generated data set, 10 classes; measured drops 0-0.5 points), and a deliberately broken
  calibration (constant images) is caught by the same gate.
* ``--verify FILE`` accepts the run's own exports and names what differs in a file of another
  architecture (input shape, classes, logits); errors are one line, the missing extra included.

Everything runs in this process (``cli.main``), so torch and ExecuTorch are imported once.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_space
from fbnet_fast.cli import main
from fbnet_fast.errors import ConfigError
from fbnet_fast.export import (MAX_INT8_DROP, ExportError, Images, Program, export_model, export_onnx,
                               fold_batchnorm, native_stderr, verify_file)
from fbnet_fast.model import build_model, load_model_file
from fbnet_fast.runtimes import executorch_available
from fbnet_fast.space import Architecture

from test_model import _randomise_bn

needs_executorch = pytest.mark.skipif(not executorch_available(), reason="ExecuTorch is not installed "
                                      "(the [executorch] extra, README 'ExecuTorch')")

RUN_BLOCKS = ("k3_e3", "k5_e6", "k3_e1_g2", "k5_e6", "k3_e3")
NUM_VAL = 400


def _cli(*args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([str(a) for a in args])
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny net trained for 6 epochs on 1,500 generated 16x16 images (~8 s): ~37 % top-1 on 400
    held-out images (chance 10 %), enough for int8 to have something to lose."""
    from fbnet_fast.train import TrainConfig, run_training

    space = make_tiny_space()
    out = tmp_path_factory.mktemp("run") / "train"
    cfg = TrainConfig(num_train=1500, num_val=NUM_VAL, epochs=6, batch_size=32, lr=0.1, lr_ramp_steps=20,
                      augment=False, dropout=0.0, progress=False)
    s = run_training(cfg, space, Architecture(RUN_BLOCKS, space.name, space.fingerprint), out, log=lambda m: None)
    assert s["best_val_acc"] > 0.2, s  # well above chance, or the accuracy comparisons below say little
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The command as a user runs it: every new format, the default calibration (128 training images)."""
    out = tmp_path_factory.mktemp("export")
    rc, stdout = _cli("export", run, "--format", "onnx,pte,pte-int8,onnx-int8", "--out", out, "--bench-runs", "0")
    assert rc == 0
    return out, stdout


@pytest.fixture(scope="module")
def others(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path, int]]:
    """fp32 .pte programs of two other architectures: the run's input size (batch 1) and 24x24 (batch 3)."""
    out = tmp_path_factory.mktemp("others")
    res = {}
    for key, size, batch, blocks in (("same-shape", 16, 1, ("k3_e1", "skip", "k3_e3", "k5_e6", "k3_e1_g2")),
                                     ("24px", 24, 3, ("k5_e6", "k3_e1_g2", "skip", "k3_e3", "skip"))):
        space = make_tiny_space(input_size=size)
        torch.manual_seed(len(res))
        m = build_model(space, Architecture(blocks, space.name, space.fingerprint))
        _randomise_bn(m, seed=3 + len(res))
        rep = export_model(m.eval(), out / key, formats=["pte"], input_shape=(3, size, size), pte_batch=batch,
                           verify_batch=5)
        assert rep["verification"]["pte"]["ok"], rep["verification"]
        res[key] = (m, out / key / rep["files"]["pte"], batch)
    return res


def _held_out(run: Path, n: int = NUM_VAL) -> tuple[torch.nn.Module, Images]:
    from fbnet_fast.export import run_images

    model, payload = load_model_file(run / "best.pt")
    _, held = run_images("synthetic", image_size=16, num_classes=10, num_train=1500, num_val=NUM_VAL,
                         mean=payload["mean"], std=payload["std"], calib_images=1, eval_images=n)
    return model, held


# ---- fp32 parity ---------------------------------------------------------------------------------

@needs_executorch
def test_pte_fp32_matches_eager_within_1e4(run, exported, others):
    out, _ = exported
    cases = [(load_model_file(run / "best.pt")[0], out / "model.pte", 1)] + list(others.values())
    for model, path, batch in cases:
        size = model.space.input_size
        # 5 images: not a multiple of batch 3, so the padded last call is exercised too
        x = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2
        with native_stderr():
            prog = Program(path)
            y = prog(x)
        assert prog.input_shape == (batch, 3, size, size)
        with torch.no_grad():
            ref = model.eval()(x)
        assert y.shape == ref.shape
        err = float((y - ref).abs().max())
        assert err <= 1e-4, (path, err)
        # the same function, not merely nearby numbers: the logits vary across images 100x more
        assert err < 0.01 * float(ref.std(0).max()), (path, err, ref.std(0))


@needs_executorch
def test_cli_export_writes_checks_and_prints_int8_accuracy(run, exported):
    out, stdout = exported
    rep = json.loads((out / "export.json").read_text())
    assert rep["files"] == {"onnx": "model.onnx", "pte": "model.pte", "pte-int8": "model.int8.pte",
                            "onnx-int8": "model.int8.onnx"}
    assert all((out / f).is_file() for f in rep["files"].values())
    # the fixed input shape of the ExecuTorch programs, stated
    assert rep["pte"]["batch"] == 1 and rep["pte"]["input_shape"] == [1, 3, 16, 16]
    assert rep["input_shapes"]["pte-int8"] == [1, 3, 16, 16] and rep["input_shapes"]["onnx-int8"][0] == "batch"
    assert "fixed input shape" in rep["pte"]["note"] and rep["pte"]["delegate"] == "XNNPACK"
    # calibration: the training split, the default count
    cal = rep["int8"]["calibration"]
    assert cal["split"] == "train" and cal["images"] == 128 and "training images" in cal["source"]
    assert set(rep["int8"]["flows"]) == {"pte-int8", "onnx-int8"}

    ver = rep["verification"]
    assert ver["held_out"]["images"] == NUM_VAL and "validation split" in ver["held_out"]["source"]
    summary = json.loads((run / "summary.json").read_text())
    for fmt in ("onnx", "pte"):
        e = ver[fmt]
        assert e["ok"] and e["held_out"]["ok"] and e["held_out"]["images"] == NUM_VAL
        assert e["held_out"]["max_abs_diff_vs_eager_fp32"] <= 1e-4
        assert e["held_out"]["argmax_agreement"] == 1.0
        assert e["max_abs_err"] <= e["tolerance"] and e["held_out"]["max_abs_err"] <= e["held_out"]["tolerance"]
    for fmt in ("pte-int8", "onnx-int8"):
        h = ver[fmt]["held_out"]
        assert ver[fmt]["ok"] and h["dtype"] == "int8" and h["images"] == NUM_VAL
        # the held-out images are the run's validation split, normalised as in training: the eager
        # model scores what the training recorded on it (the folded eval model; allow 1 image)
        assert abs(h["eager_fp32_accuracy"] - summary["best_val_acc"]) <= 1 / NUM_VAL + 1e-9
        assert h["accuracy_drop"] == pytest.approx(h["eager_fp32_accuracy"] - h["accuracy"])
        assert h["accuracy_drop"] <= MAX_INT8_DROP and h["max_accuracy_drop"] == MAX_INT8_DROP
        # int8, not a copy of the fp32 model: the logits move, a little
        assert 1e-3 < h["logit_rel_rms_err"] < 0.2 and h["argmax_agreement"] >= 0.85
        line = next(ln for ln in stdout.splitlines() if ln.startswith(fmt))
        assert f"held-out top-1 int8 {h['accuracy']:.4f} vs fp32 {h['eager_fp32_accuracy']:.4f}" in line
        assert f"agreement {h['argmax_agreement']:.3f}" in line
    assert "checked on 400 held-out (validation split) images" in stdout


@needs_executorch
def test_int8_programs_are_smaller_and_quantized(exported):
    out, _ = exported
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (out / "model.int8.pte").stat().st_size < 0.75 * (out / "model.pte").stat().st_size


def test_int8_accuracy_gate_fails_with_the_files_kept(run, tmp_path):
    """Calibrated on constant images, int8 clips every real activation: the drop gate must fire."""
    model, held = _held_out(run)
    bad_calib = Images(torch.zeros(16, 3, 16, 16), torch.zeros(16, dtype=torch.long), "constant images")
    with pytest.raises(ExportError, match=r"int8 export loses too much accuracy.*onnx-int8.*--max-int8-drop"):
        export_model(model, tmp_path, formats=["onnx-int8"], input_shape=(3, 16, 16), calib=bad_calib,
                     held_out=held)
    assert (tmp_path / "model.int8.onnx").is_file()
    e = json.loads((tmp_path / "export.json").read_text())["verification"]["onnx-int8"]
    assert not e["ok"] and e["held_out"]["accuracy_drop"] > MAX_INT8_DROP


# ---- verify: is FILE an export of this run's model? ------------------------------------------------

@needs_executorch
def test_verify_accepts_the_runs_own_exports(run, exported):
    out, _ = exported
    rc, stdout = _cli("export", run, "--verify", out / "model.pte", "--verify", out / "model.int8.pte",
                      "--verify", out / "model.int8.onnx", "--verify", out / "model.onnx")
    assert rc == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == 4
    assert "an fp32 export" in lines[0] and "input [1, 3, 16, 16]" in lines[0]
    assert "an int8 export" in lines[1] and "an int8 export" in lines[2]  # the .pte's dtype found by its rules
    assert "an fp32 export" in lines[3]


@needs_executorch
def test_verify_names_the_mismatch(run, others, tmp_path):
    model, held = _held_out(run, n=64)
    # another architecture, same input shape and classes: the logits give it away
    with pytest.raises(ExportError, match=r"is not an export of R's model: it passes neither the fp32 rule .* nor "
                                          r"the int8 rule"):
        verify_file(model, others["same-shape"][1], held, run="R")
    # another input size
    with pytest.raises(ExportError, match=r"is not an export of R's model: its input shape is \[3, 3, 24, 24\], "
                                          r"the model takes \[N, 3, 16, 16\]"):
        verify_file(model, others["24px"][1], held, run="R")
    # another number of classes
    space7 = make_tiny_space(num_classes=7)
    m7 = build_model(space7, Architecture(RUN_BLOCKS, space7.name, space7.fingerprint)).eval()
    f7 = export_onnx(fold_batchnorm(m7), torch.zeros(1, 3, 16, 16), tmp_path / "seven.onnx")
    with pytest.raises(ExportError, match=r"it outputs 7 classes, the model 10"):
        verify_file(model, f7, held, run="R")
    # the same architecture with other weights: an fp32 ONNX file is held to the fp32 rule
    torch.manual_seed(11)
    other = build_model(model.space, model.arch).eval()
    fo = export_onnx(fold_batchnorm(other), torch.zeros(1, 3, 16, 16), tmp_path / "other.onnx")
    with pytest.raises(ExportError, match=r"its logits differ from the model's by up to"):
        verify_file(model, fo, held, run="R")


@needs_executorch
def test_cli_verify_error_is_one_line(run, others, capfd):
    rc = main(["export", str(run), "--verify", str(others["24px"][1]), "--eval-images", "32"])
    err = capfd.readouterr().err
    assert rc == 2
    # one line: ExecuTorch's native log (cpuinfo, the rejected shape) stays off the terminal
    assert err.startswith("fbnet-fast: error: ") and err.strip().count("\n") == 0, err
    assert f"{others['24px'][1]} is not an export of {run}'s model: its input shape is [3, 3, 24, 24]" in err


# ---- bad input ---------------------------------------------------------------------------------

def test_missing_executorch_is_one_line_with_the_recipe(run, tmp_path, monkeypatch, capfd):
    for name in [m for m in sys.modules if m == "executorch" or m.startswith("executorch.")] + ["executorch"]:
        monkeypatch.setitem(sys.modules, name, None)  # "import executorch..." now raises ImportError
    out = tmp_path / "out"
    rc = main(["export", str(run), "--format", "onnx,pte", "--out", str(out), "--bench-runs", "0"])
    err = capfd.readouterr().err
    assert rc == 2 and err.strip().count("\n") == 0, err
    assert "needs ExecuTorch" in err and 'pip install --no-deps "executorch==1.5.1"' in err
    assert not out.exists() or not any(out.iterdir())  # refused before writing anything
    (tmp_path / "some.pte").write_bytes(b"\0" * 64)
    with pytest.raises(ConfigError, match="needs ExecuTorch"):
        Program(tmp_path / "some.pte")


def test_unknown_format_and_file_kinds(run, tmp_path, capsys):
    rc = main(["export", str(run), "--format", "pte,tflite"])
    err = capsys.readouterr().err
    assert rc == 2 and "'tflite'" in err and "pte-int8" in err and "onnx-int8" in err
    (tmp_path / "model.tflite").write_bytes(b"\0" * 16)
    rc = main(["export", str(run), "--verify", str(tmp_path / "model.tflite"), "--eval-images", "8"])
    assert rc == 2 and "cannot tell the format" in capsys.readouterr().err
    (tmp_path / "junk.pte").write_bytes(b"not a program")
    rc = main(["export", str(run), "--verify", str(tmp_path / "junk.pte"), "--eval-images", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and "junk.pte" in err and ("cannot load" in err or "needs ExecuTorch" in err)


def test_int8_needs_the_runs_data(run, tmp_path, capsys):
    """A bare model file (no training config beside it) cannot be calibrated without --data."""
    shutil.copy(run / "best.pt", tmp_path / "m.pt")
    rc = main(["export", str(tmp_path / "m.pt"), "--format", "onnx-int8", "--bench-runs", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs the run's data set" in err and "--data" in err
    # --data gives it one; a data set with other classes is refused
    from test_deploy_cli import _image_folder

    images = _image_folder(tmp_path / "two_classes")
    rc = main(["export", str(tmp_path / "m.pt"), "--format", "onnx", "--data", f"folder:{images}"])
    assert rc == 2 and "has 2 classes but the model has 10" in capsys.readouterr().err


@needs_executorch
def test_timing_a_pte_after_the_pool_was_resized_completes_and_a_stale_program_refuses_to_run(others):
    """XNNPACK binds a loaded program to the thread pool it found: `export --bench-runs` once hung for
    good timing a .pte loaded just before it resized the pool to 1 thread. The benchmark now sizes the
    pool first, and a program loaded before a resize raises instead of waiting forever."""
    from fbnet_fast.export import benchmark
    from fbnet_fast.runtimes import load_pte, set_executorch_threads

    m, path, batch = others["same-shape"]
    set_executorch_threads(2)
    res = benchmark(m.eval(), {"pte": path}, torch.randn(batch, 3, 16, 16), runs=3)
    assert res["pte"] > 0 and res["eager"] > 0
    stale = load_pte(path.read_bytes())
    set_executorch_threads(2)
    with pytest.raises(RuntimeError, match="loaded before the thread pool was resized"):
        stale(torch.randn(batch, 3, 16, 16))
    fresh = load_pte(path.read_bytes())
    assert fresh(torch.randn(batch, 3, 16, 16)).shape[0] == batch
    set_executorch_threads(1)
