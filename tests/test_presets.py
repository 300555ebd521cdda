"""Presets: the published FBNet architectures build, train a step, export, and count like the paper."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fbnet_fast.runs import load_architecture_file
from fbnet_fast.errors import SpaceError
from fbnet_fast.model import model_stats
from fbnet_fast.presets import PRESETS, build_preset, get_preset, preset_space
from fbnet_fast.space import load_space

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_reads_like_the_table_and_fits_the_space(name):
    p = PRESETS[name]
    base = load_space("fbnet")
    assert [len(s) for s in p.stages] == [st.repeats for st in base.stages]
    space = p.space()
    assert space.head_filters == p.head_filters
    arch = p.architecture(space)
    assert arch.fingerprint == space.fingerprint and len(arch.blocks) == 22
    assert p.doc and "CVPR 2019" in p.doc


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    # 32x32 (the total stride) and 10 classes keep the step cheap; the blocks are the published ones.
    model = build_preset(name, input_size=32, num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_head_width_per_preset():
    assert {n: p.head_filters for n, p in PRESETS.items()} == {
        "fbnet_a": 1504, "fbnet_b": 1984, "fbnet_c": 1984, "fbnet_s8": 1984, "fbnet_iphonex": 1984}


def test_counts_against_published_figures():
    stats = {n: model_stats(preset_space(n), PRESETS[n].architecture()) for n in ("fbnet_a", "fbnet_b", "fbnet_c")}
    a = stats["fbnet_a"]
    # FBNet-A has no difference from the paper's definition here: within 1 % of 4.3M / 249M.
    assert abs(a.params / 4.3e6 - 1) < 0.01 and abs(a.macs / 249e6 - 1) < 0.01
    for n in ("fbnet_b", "fbnet_c"):
        pub = PRESETS[n].published
        # Bias-free convs vs the zoo's biased ones and its different g2 grouping: within 6 %.
        assert abs(stats[n].params / (pub["zoo_params_m"] * 1e6) - 1) < 0.06
        assert abs(stats[n].macs / (pub["zoo_mflops"] * 1e6) - 1) < 0.06
    # The paper's FBNet-B figure (295M) matches the 1504-wide head of its Table 1 / blog post.
    b1504 = model_stats(preset_space("fbnet_b", head_filters=1504), None, build_preset("fbnet_b", head_filters=1504))
    assert abs(b1504.macs / 295e6 - 1) < 0.015
    assert stats["fbnet_a"].flops == 2 * stats["fbnet_a"].macs


def test_unknown_preset_names_the_choices():
    with pytest.raises(SpaceError, match="fbnet_a, fbnet_b"):
        get_preset("fbnet_d")
    assert get_preset("FBNet-C") is PRESETS["fbnet_c"]


def test_preset_exports_like_a_sampled_architecture(tmp_path):
    from fbnet_fast.export import export_model

    model = build_preset("fbnet_a", input_size=32, num_classes=10).eval()
    rep = export_model(model, tmp_path, formats=("onnx",), input_shape=(3, 32, 32), bench_runs=0)
    assert (tmp_path / rep["files"]["onnx"]).is_file()
    assert rep["verification"]["onnx"]["argmax_agreement"] == 1.0


def test_cli_sample_preset_writes_a_trainable_architecture_file(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "fbnet_fast", "sample", "--preset", "fbnet_c", "--input-size", "32",
                        "--num-classes", "10", "-o", str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "fbnet_c.json").read_text())
    assert doc["source"]["preset"] == "fbnet_c" and doc["space_def"]["head"]["filters"] == 1984
    space, arch = load_architecture_file(tmp_path / "fbnet_c.json")
    assert space.input_size == 32 and arch.blocks == PRESETS["fbnet_c"].blocks
    r = subprocess.run([sys.executable, "-m", "fbnet_fast", "sample"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and "--preset" in r.stderr
