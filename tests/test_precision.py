"""--precision bf16: refused without native bf16, the fused kernels never see an autocast region,
and a search and a training under bf16 run with fp32 master weights, theta and loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fbnet_fast.precision as precision
from conftest import make_tiny_space
from fbnet_fast.cli import main
from fbnet_fast.data import build_datasets
from fbnet_fast.errors import ConfigError
from fbnet_fast.ops import _ext, mixed_op
from fbnet_fast.ops.testing import make_mixed_op
from fbnet_fast.search import SearchConfig, run_search
from fbnet_fast.space import Architecture, FBNET_CANDIDATES
from fbnet_fast.train import TrainConfig, run_training

native = pytest.mark.skipif(not precision.native_bf16(torch.device("cpu")),
                            reason="this CPU has no AVX512-BF16 (bf16 is refused here: tested below)")


def test_bf16_is_refused_without_native_support(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with pytest.raises(ConfigError, match="--precision bf16 needs native bf16: this CPU has no AVX512-BF16"):
        precision.check_precision("bf16", "cpu")
    precision.check_precision("fp32", "cpu")  # always allowed
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        precision.check_precision("fp16", "cpu")
    assert main(["search", "--precision", "bf16", "--epochs", "2", "--warmup-epochs", "1", "--out", "unused"]) == 2


def test_bf16_with_the_fused_kernels_named_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    with pytest.raises(ConfigError, match="fused 'cpp' kernels are float32 only"):
        precision.check_precision("bf16", "cpu", kernel="cpp")


def test_configs_default_to_fp32_and_old_search_configs_read_as_fp32():
    assert SearchConfig().precision == "fp32" and TrainConfig().precision == "fp32"
    d = SearchConfig().to_dict()
    del d["precision"]
    assert SearchConfig.from_dict(d).precision == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="bf32").validate()


@pytest.mark.skipif(not _ext.available(), reason="fbnet_fast._C not built")
def test_mixed_op_inside_autocast_runs_the_reference():
    """Inside autocast the fused Function's GEMMs would hand bf16 buffers to fp32 kernels: 'auto' takes the
    reference (bitwise the reference's result), 'cpp' refuses."""
    op = make_mixed_op(8, 8, 1, 6)
    x = torch.randn(2, 8, 6, 6)
    w = torch.softmax(torch.randn(len(FBNET_CANDIDATES)), 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mixed_op(x, w, op, impl="auto")
        ref = mixed_op(x, w, op, impl="reference")
        with pytest.raises(ConfigError, match="cannot run inside torch.autocast"):
            mixed_op(x, w, op, impl="cpp")
    assert torch.equal(got, ref)


@pytest.fixture(scope="module")
def tiny_data():
    return build_datasets("synthetic", image_size=16, seed=0, num_train=320, num_val=64)


@native
def test_bf16_search_keeps_fp32_master_weights_theta_and_finite_metrics(tmp_path, tiny_data, tiny_lut):
    cfg = SearchConfig(epochs=3, warmup_epochs=1, batch_size=32, progress=False, lut_repeats=2, precision="bf16",
                       plots=False, measure_result=False)
    res = run_search(cfg, tmp_path / "s", space=make_tiny_space(), lut=tiny_lut, data=tiny_data, log=lambda m: None)
    hist = [json.loads(l) for l in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 3 and all(math.isfinite(h["train_ce"]) and 0 <= h["val_acc"] <= 1 for h in hist)
    state = torch.load(sorted((tmp_path / "s" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    model = state["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in model.values())
    assert json.loads((tmp_path / "s" / "config.json").read_text())["search"]["precision"] == "bf16"
    assert res is not None


@native
def test_bf16_training_runs_with_fp32_weights(tmp_path, tiny_data):
    space = make_tiny_space()
    arch = Architecture(("k3_e1", "k3_e1_g2", "skip", "k5_e6", "k3_e3"), space.name, space.fingerprint)
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False, precision="bf16")
    summary = run_training(cfg, space, arch, tmp_path / "t", data=tiny_data, log=lambda m: None)
    assert 0.0 <= summary["best_val_acc"] <= 1.0
    ckpt = sorted((tmp_path / "t").rglob("*.pt"))
    assert ckpt
    state = torch.load(ckpt[-1], weights_only=False)
    tensors = [v for v in (state.get("model") or state.get("state_dict") or {}).values() if torch.is_tensor(v)]
    assert tensors and all(v.dtype in (torch.float32, torch.int64) for v in tensors)
