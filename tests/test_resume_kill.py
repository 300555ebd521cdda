"""Crash safety: a search killed with SIGKILL and resumed through ``fbnet-fast search --resume``
ends bit-identical to an uninterrupted run, and never leaves a corrupt checkpoint.

Schedule of the run below (tiny space, 120 training images, batch 8, 3 epochs, 1 warm-up,
a checkpoint every 3 global steps): the stratified 75/25 split gives 11 weight steps and
3 theta steps per epoch, so ``_train_step`` calls 1-11 are the warm-up, 12-22 the weights
and 23-25 theta of epoch 2, 26-39 epoch 3. ``torch.save`` calls 1-3 are the mid-epoch
checkpoints of the warm-up (global steps 3, 6, 9), call 4 the end-of-epoch-1 checkpoint,
written right after metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fbnet_fast.lut import LatencyTable
from tests.conftest import make_tiny_space

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("_kill_driver.py")

# (name, driver mode, N): where the first process dies.
# (name, driver mode, N, where the resumed run restarts)
KILLS = [
    # epoch 2 after weight step 6; the last checkpoint is after weight step 4
    ("mid-epoch weight step", "step", 17, "(epoch 1, phase w, step 4)"),
    # epoch 2 after its last theta step; the last checkpoint is after theta step 2
    ("theta phase", "step", 25, "(epoch 1, phase theta, step 2)"),
    # the end-of-epoch-1 checkpoint torn half-way; metrics.jsonl already lists epoch 1
    ("checkpoint write", "save", 4, "(epoch 0, phase w, step 9)"),
]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _search_args(tmp: Path) -> list[str]:
    space = make_tiny_space()
    (tmp / "space.json").write_text(json.dumps(space.to_dict()))
    base = torch.tensor([2.0, 2.5, 4.0, 9.0, 1.0], dtype=torch.float64)
    m = base.repeat(space.num_layers, 1) * torch.linspace(1.0, 1.5, space.num_layers)[:, None]
    LatencyTable.from_matrix(space, m, fixed_ms=3.0).save(tmp / "lut.json")
    return ["search", "--space", str(tmp / "space.json"), "--width-mult", "1", "--lut", str(tmp / "lut.json"),
            "--num-train", "120", "--num-val", "32", "--batch-size", "8", "--w-fraction", "0.75", "--epochs", "3", "--warmup-epochs", "1",
            "--threads", "1", "--no-progress", "--checkpoint-every", "3", "--keep-checkpoints", "2"]


def _start(mode: str, n: int, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), mode, str(n), "--", *argv], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def _load_all_checkpoints(run: Path) -> list[Path]:
    """Every ckpt-*.pt must load: a kill may leave a torn temp file, never a torn checkpoint."""
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    for p in ckpts:
        state = torch.load(p, map_location="cpu", weights_only=False)
        assert state["format"] == "fbnet-fast/search-checkpoint", p
    return ckpts


def _assert_same_tree(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max diff {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def _metrics(run: Path) -> list[dict]:
    # elapsed_s is wall-clock time: the only field allowed to differ.
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("elapsed_s")
    return recs


def _final_state(run: Path) -> dict:
    state = torch.load(sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1], map_location="cpu", weights_only=False)
    for r in state["history"]:
        r.pop("elapsed_s")
    for k in ("elapsed", "rng", "config"):
        state.pop(k)
    return state


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    from fbnet_fast.data import build_datasets, split_indices

    labels = build_datasets("synthetic", image_size=16, num_train=120, num_val=32).train.labels
    w, t = split_indices(120, 0.75, seed=0, labels=labels)
    assert (len(w) // 8, len(t) // 8) == (11, 3), "the kill points below assume 11 weight and 3 theta steps"
    argv = _search_args(tmp_path)
    # The uninterrupted reference and the runs to be killed start together (2 cores).
    procs = {"ref": _start("none", 0, argv + ["--out", str(tmp_path / "ref")])}
    for i, (_, mode, n, _) in enumerate(KILLS):
        procs[i] = _start(mode, n, argv + ["--out", str(tmp_path / f"k{i}")])
    results = {k: _finish(p) for k, p in procs.items()}
    rc, out, err = results["ref"]
    assert rc == 0, err

    resumed = {}
    for i, (name, _, _, _) in enumerate(KILLS):
        run = tmp_path / f"k{i}"
        rc, out, err = results[i]
        assert rc == -9, f"{name}: the driver was meant to die by SIGKILL, got {rc}:\n{err}"
        assert not (run / "theta.json").exists(), name
        ckpts = _load_all_checkpoints(run)
        assert ckpts, f"{name}: no checkpoint before the kill"
        torn = list((run / "checkpoints").glob(".ckpt-*.tmp"))
        assert bool(torn) == (KILLS[i][1] == "save"), f"{name}: temp files {torn}"
        # Resume through the real CLI (no driver, no patch).
        resumed[i] = subprocess.Popen([sys.executable, "-m", "fbnet_fast", "search", "--resume", "--out", str(run)],
                                      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ref = tmp_path / "ref"
    ref_state = _final_state(ref)
    for i, (name, _, _, position) in enumerate(KILLS):
        rc, out, err = _finish(resumed[i])
        run = tmp_path / f"k{i}"
        assert rc == 0, f"{name}: resume failed:\n{err}"
        assert "resumed from" in out and position in out, f"{name}: {out}"
        assert not list((run / "checkpoints").glob(".ckpt-*.tmp")), f"{name}: torn temp file not cleaned"
        _load_all_checkpoints(run)
        # theta and every weight, optimizer and scheduler state: bit-identical
        _assert_same_tree(ref_state, _final_state(run), name)
        for f in ("theta.json", "arch.json", "samples.json", "summary.txt"):
            assert (run / f).read_bytes() == (ref / f).read_bytes(), f"{name}: {f} differs"
        assert _metrics(run) == _metrics(ref), f"{name}: metrics.jsonl differs"
