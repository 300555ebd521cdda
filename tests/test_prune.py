"""Lottery-ticket pruning: exact mask counts (global and per layer), masks held through training,
late rewinding, channel pruning equal to zeroed channels, and a tiny end-to-end run (API and CLI)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_space
from fbnet_fast.blocks import IRBlock
from fbnet_fast.errors import ConfigError
from fbnet_fast.model import build_model, count_flops
from fbnet_fast.research.prune import (PruneConfig, _Data, _train, magnitude_masks, prunable, prune_channels, run_pruning,
                              sparsity)
from fbnet_fast.space import Architecture

REPO = Path(__file__).resolve().parents[1]
# k3_e1_g2 is there so channel pruning meets a grouped block it must leave whole.
BLOCKS = ("k3_e3", "k3_e1_g2", "k5_e6", "k3_e3", "k5_e6")


@pytest.fixture(scope="module")
def tiny():
    from fbnet_fast.data import build_datasets

    space = make_tiny_space()
    arch = Architecture(BLOCKS, space.name, space.fingerprint)
    data = build_datasets("synthetic", image_size=16, seed=0, num_train=128, num_val=64)
    return space, arch, data


def _model(space, arch, seed=0):
    torch.manual_seed(seed)
    return build_model(space, arch)


def test_global_masks_remove_the_smallest_weights_exactly(tiny):
    space, arch, _ = tiny
    m = _model(space, arch)
    masks = {n: torch.ones_like(p) for n, p in prunable(m).items()}
    new = magnitude_masks(m, masks, 0.3, scope="global")
    total = sum(x.numel() for x in masks.values())
    assert sum(int((1 - x).sum()) for x in new.values()) == round(0.3 * total)
    kept = torch.cat([p.detach().abs().flatten()[new[n].flatten().bool()] for n, p in prunable(m).items()])
    gone = torch.cat([p.detach().abs().flatten()[~new[n].flatten().bool()] for n, p in prunable(m).items()])
    assert gone.max() <= kept.min()
    # a second round prunes only among the survivors
    newer = magnitude_masks(m, new, 0.5, scope="global")
    assert all(bool((newer[n] <= new[n]).all()) for n in new)
    assert sparsity(newer) == pytest.approx(1 - 0.7 * 0.5, abs=1e-3)


def test_per_layer_masks_prune_every_tensor_alike(tiny):
    space, arch, _ = tiny
    m = _model(space, arch)
    masks = {n: torch.ones_like(p) for n, p in prunable(m).items()}
    new = magnitude_masks(m, masks, 0.5, scope="layer")
    for n, p in prunable(m).items():
        assert int((1 - new[n]).sum()) == min(round(0.5 * p.numel()), p.numel() - 1)


def test_rounds_reach_the_target_sparsity():
    cfg = PruneConfig(rounds=4, sparsity=0.8)
    assert (1 - cfg.per_round) ** 4 == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="scope"):
        PruneConfig(scope="channel").validate()


def test_masks_hold_through_training_and_late_rewind_snapshots(tiny):
    space, arch, data = tiny
    m = _model(space, arch)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    masks = magnitude_masks(m, {n: torch.ones_like(p) for n, p in prunable(m).items()}, 0.6)
    cfg = PruneConfig(epochs=1, batch_size=32, weight_decay=5e-4)
    _, snap = _train(m, _Data(data), cfg, masks, epochs=1, seed=0, snapshot_step=2)
    for n, p in prunable(m).items():
        assert bool((p[masks[n] == 0] == 0).all()), n  # momentum and weight decay revive nothing
    assert snap is not None and not torch.equal(snap["stem.conv.weight"], init["stem.conv.weight"])
    assert not torch.equal(snap["stem.conv.weight"], m.state_dict()["stem.conv.weight"])
    with pytest.raises(ConfigError, match="rewind_step"):
        _train(_model(space, arch), _Data(data), cfg, None, epochs=1, seed=0, snapshot_step=10_000)


def test_channel_pruning_equals_zeroed_channels_and_is_smaller(tiny):
    space, arch, _ = tiny
    m = _model(space, arch).eval()
    with torch.no_grad():  # BN statistics and scales that are not all alike
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.1, 2.0)
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    slim = prune_channels(m, 0.5).eval()
    ref = _model(space, arch).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for b_ref, b_slim in zip(ref.blocks, slim.blocks):
            if isinstance(b_ref, IRBlock) and b_ref.groups == 1:
                gone = [c for c in range(b_ref.mid)
                        if not any(torch.equal(b_ref.conv_pw.weight[c], w) for w in b_slim.conv_pw.weight)]
                assert len(gone) == b_ref.mid // 2
                b_ref.bn2.weight[gone] = 0.0  # a zeroed channel outputs relu(0) = 0 into the projection
                b_ref.bn2.bias[gone] = 0.0
            elif isinstance(b_ref, IRBlock):
                assert b_slim.conv_pw.out_channels == b_ref.mid  # grouped blocks are left whole
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(slim(x), ref(x), rtol=1e-4, atol=1e-5)
    assert count_flops(slim, (1, 3, 16, 16)) < count_flops(m, (1, 3, 16, 16))


def test_end_to_end_curve_table_plot_and_latency(tmp_path, tiny):
    space, arch, data = tiny
    cfg = PruneConfig(rounds=2, sparsity=0.75, epochs=1, batch_size=32, repeats=3, passes=1,
                      channel_fractions=(0.5,), rewind_step=1)
    res = run_pruning(space, arch, cfg, tmp_path, data=data, log=lambda m: None)
    kinds = [r["kind"] for r in res["rows"]]
    assert kinds == ["dense", "imp", "reinit", "imp", "reinit", "channels"]
    imp = [r for r in res["rows"] if r["kind"] == "imp"]
    assert imp[-1]["sparsity"] == pytest.approx(0.75, abs=0.01)
    dense = res["rows"][0]
    assert all(r["macs"] == dense["macs"] for r in imp)  # unstructured zeros: same dense work
    assert res["rows"][-1]["macs"] < dense["macs"]
    assert all(r["latency_ms"] > 0 and r["latency_p10_ms"] <= r["latency_p90_ms"] for r in res["rows"])
    assert (tmp_path / "prune.png").stat().st_size > 10_000
    assert "latency / dense" in (tmp_path / "prune.md").read_text()
    assert json.loads((tmp_path / "prune.json").read_text())["config"]["rewind_step"] == 1


def test_cli_prune_preset(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = ["prune", "--preset", "fbnet_a", "--width-mult", "0.25", "--num-train", "64", "--num-val", "32",
            "--epochs", "1", "--batch-size", "32", "--rounds", "1", "--sparsity", "0.5", "--no-control",
            "--channel-fractions", "0.5", "--repeats", "2", "--passes", "1", "-o", str(tmp_path / "p")]
    r = subprocess.run([sys.executable, "-m", "fbnet_fast", *args], capture_output=True, text=True, env=env,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "p" / "prune.json").read_text())["rows"]
    assert [x["kind"] for x in rows] == ["dense", "imp", "channels"]
    r = subprocess.run([sys.executable, "-m", "fbnet_fast", "prune", "-o", str(tmp_path / "q")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "--preset" in r.stderr
