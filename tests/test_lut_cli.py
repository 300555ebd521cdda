"""``fbnet-fast lut measure|show|diff|validate`` and the additivity study's pieces."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from fbnet_fast.measure.additivity import fit_correction, kendall_tau, load_theta, sample_architectures
from fbnet_fast.model import build_model
from fbnet_fast.cli import main
from fbnet_fast.errors import ConfigError
from fbnet_fast.lut import LatencyTable
from fbnet_fast.cli.lut import diff_tables
from fbnet_fast.space import Stage
from tests.conftest import make_tiny_space

FAST = ["--repeats", "2", "--warmup", "1", "--min-sample-ms", "0.05", "--passes", "1"]


@pytest.fixture
def small_space():
    return make_tiny_space(stages=[Stage(8, 1, 1), Stage(16, 2, 2)], candidates=["k3_e1", "k5_e6", "skip"])


@pytest.fixture
def space_file(tmp_path, small_space):
    p = tmp_path / "small.json"
    p.write_text(json.dumps(small_space.to_dict()))
    return p


@pytest.fixture
def measured(tmp_path, space_file):
    out = tmp_path / "lut.json"
    rc = main(["lut", "measure", "--space", str(space_file), "--width-mult", "1", "-o", str(out), "--no-progress",
               *FAST])
    assert rc == 0
    return out


def test_measure_and_show(measured, space_file, small_space, capsys):
    t = LatencyTable.load(measured, small_space)
    assert t.device["backend"] == "torch-cpu" and t.device["repeats"] == 2
    capsys.readouterr()
    assert main(["lut", "show", str(measured), "--space", str(space_file), "--width-mult", "1"]) == 0
    out = capsys.readouterr().out
    assert "torch-cpu" in out and "k5_e6" in out and "8->16 s2" in out and "fastest architecture" in out
    assert main(["lut", "show", str(measured), "--spread"]) == 0
    assert "-" in capsys.readouterr().out.splitlines()[4]


def test_measure_onnxruntime_from_the_cli(tmp_path, space_file, small_space):
    out = tmp_path / "ort.json"
    assert main(["lut", "measure", "--space", str(space_file), "--width-mult", "1", "--backend", "onnxruntime",
                 "-o", str(out), "--no-progress", *FAST]) == 0
    assert LatencyTable.load(out, small_space).device["runtime"].startswith("onnxruntime")


def _lut(space, rows, device):
    return LatencyTable.from_matrix(space, torch.tensor(rows, dtype=torch.float64), device=device)


def test_diff_finds_the_candidates_that_flip(tmp_path, small_space, capsys):
    # layer 1: k3_e1 < k5_e6 on device A, k3_e1 > k5_e6 on B (like depthwise convs on iPhone X vs S8);
    # layer 2: a 2% difference is noise under the 5% gap, not a flip
    a = _lut(small_space, [[1.0, 3.0, 0.1], [1.0, 2.0, 0.5], [1.00, 1.01, 0.2]], {"backend": "A"})
    b = _lut(small_space, [[1.1, 3.3, 0.1], [2.5, 2.0, 0.5], [1.02, 1.01, 0.2]], {"backend": "B"})
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    a.save(pa)
    b.save(pb)
    d = diff_tables(LatencyTable.load(pa), LatencyTable.load(pb))
    assert [r["flips"] for r in d["layers"]] == [[], [["k3_e1", "k5_e6"]], []]
    assert d["flipped_pairs"] == 1 and d["layers_with_flips"] == 1
    assert d["layers"][1]["order_a"] == ["skip", "k3_e1", "k5_e6"]
    assert d["layers"][1]["order_b"] == ["skip", "k5_e6", "k3_e1"]
    assert diff_tables(a, a)["flipped_pairs"] == 0 and diff_tables(a, a)["kendall_tau_mean"] == 1.0
    capsys.readouterr()
    js = tmp_path / "d.json"
    assert main(["lut", "diff", str(pa), str(pb), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "reversed in B): k3_e1<k5_e6" in out and "1 candidate pair(s) flip" in out
    assert json.loads(js.read_text())["flipped_pairs"] == 1
    assert main(["lut", "diff", str(pa), str(pb), "--min-gap", "0"]) == 0
    assert "2 candidate pair(s) flip" in capsys.readouterr().out


def test_diff_of_different_candidate_lists_is_one_error(tmp_path, small_space, capsys):
    other = make_tiny_space(stages=[Stage(8, 1, 1), Stage(16, 2, 2)], candidates=["k3_e1", "skip"])
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    LatencyTable.from_matrix(small_space, torch.ones(3, 3)).save(pa)
    LatencyTable.from_matrix(other, torch.ones(3, 2)).save(pb)
    assert main(["lut", "diff", str(pa), str(pb)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbnet-fast: error:") and "different candidates" in err


# ---- additivity study ---------------------------------------------------------------------------

def test_kendall_tau_against_brute_force():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, generator=g).tolist(), torch.rand(12, generator=g).tolist()
    s = sum((1 if (a - b) * (c - d) > 0 else -1) for (a, c), (b, d) in itertools.combinations(zip(x, y), 2))
    assert kendall_tau(x, y) == pytest.approx(s / 66)  # no ties: tau-b == tau-a


def test_fit_correction_recovers_offset_and_scale():
    x = [1.0, 2.0, 3.0, 5.0]
    off, sc = fit_correction(x, [1.2 * v + 0.3 for v in x])
    assert off == pytest.approx(0.3) and sc == pytest.approx(1.2)
    off, sc = fit_correction([2.0, 2.0], [3.0, 3.5])  # degenerate: pure offset
    assert (off, sc) == (pytest.approx(1.25), 1.0)


def test_sampling_and_theta(tmp_path, small_space):
    uni = sample_architectures(small_space, 5, seed=1)
    assert uni == sample_architectures(small_space, 5, seed=1) and len(uni) == 5
    theta = torch.full((3, 3), -20.0)
    theta[:, 1] = 20.0  # all mass on k5_e6
    p = tmp_path / "theta.json"
    p.write_text(json.dumps({"candidates": small_space.candidates, "theta": theta.tolist()}))
    t = load_theta(p, small_space)
    assert all(a.blocks == ("k5_e6",) * 3 for a in sample_architectures(small_space, 3, theta=t))
    p.write_text(json.dumps({"theta": [[0.0]]}))
    with pytest.raises(ConfigError, match=r"\[3, 3\]"):
        load_theta(p, small_space)


def test_plain_model_runs(small_space):
    m = build_model(small_space, ["k3_e1", "k5_e6", "skip"]).eval()
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, small_space.num_classes)


def test_validate_stores_a_correction_the_search_uses(tmp_path, measured, space_file, small_space, capsys):
    theta = torch.zeros(3, 3)
    theta[:, 0] = 3.0
    tp = tmp_path / "theta.json"
    tp.write_text(json.dumps({"candidates": small_space.candidates, "theta": theta.tolist()}))
    png, rep = tmp_path / "s.png", tmp_path / "r.json"
    capsys.readouterr()
    rc = main(["lut", "validate", str(measured), "--space", str(space_file), "--width-mult", "1", "-n", "4",
               "--theta", str(tp), "--num-theta", "3", "--plot", str(png), "--report", str(rep), "--no-progress",
               *FAST])
    assert rc == 0
    out = capsys.readouterr().out
    assert "7 architectures (theta 3, uniform 4)" in out and "Kendall tau" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(rep.read_text())
    s = report["summary"]
    assert s["n"] == 7 and len(report["archs"]) == 7 and -1 <= s["kendall_tau"] <= 1
    assert s["median_abs_pct_error"] >= 0 and s["max_abs_pct_error"] >= s["median_abs_pct_error"]
    t = LatencyTable.load(measured, small_space)
    c = t.correction
    assert c["fitted_on"] == 7 and c["scale"] > 0 and math.isfinite(c["offset_ms"])
    idx = [0, 1, 2]
    raw = sum(t.layers[l][t.candidates[i]].median_ms for l, i in enumerate(idx)) + t.fixed_ms
    assert t.architecture_latency(idx) == pytest.approx(c["scale"] * raw + c["offset_ms"])
    # the corrected prediction of each sampled net is what the report lists
    a0 = report["archs"][0]
    pred = t.architecture_latency([small_space.candidates.index(b) for b in a0["blocks"]])
    assert pred == pytest.approx(c["scale"] * a0["lut_sum_ms"] + c["offset_ms"])


def test_validate_refuses_another_backend(measured, space_file, capsys):
    rc = main(["lut", "validate", str(measured), "--space", str(space_file), "--width-mult", "1", "-n", "2",
               "--backend", "onnxruntime", "--no-progress", "--no-write", *FAST])
    assert rc == 2 and "same one" in capsys.readouterr().err


def test_pytest_benchmark_writes_the_same_lut_format(tmp_path, space_file, small_space):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "bench_lut.json"
    p = subprocess.run(
        [sys.executable, "-m", "pytest", str(root / "bench"), "-k", "test_lut_block", "--benchmark-only", "-q",
         "-p", "no:cacheprovider", f"--bench-out={tmp_path}", f"--lut-space={space_file}", "--lut-width-mult=1",
         "--lut-repeats=2", "--lut-min-sample-ms=0.05", f"--lut-out={out}", "--benchmark-storage", str(tmp_path)],
        capture_output=True, text=True, cwd=root, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    n_jobs = 3 * 3 + 2  # three distinct layer shapes x three candidates + stem + head
    assert f"{n_jobs} passed" in p.stdout
    t = LatencyTable.load(out, small_space)
    assert t.device["measured_by"] == "pytest-benchmark" and t.device["clock"] == "cpu"
    assert all(e.repeats == 2 for layer in t.layers for e in layer.values())


def test_fit_measures_networks_and_writes_a_fitted_table_with_its_heldout_report(tmp_path, measured, space_file,
                                                                                small_space, capsys):
    out, rep = tmp_path / "fitted.json", tmp_path / "fit_report.json"
    capsys.readouterr()
    rc = main(["lut", "fit", str(measured), "--space", str(space_file), "--width-mult", "1", "-n", "20",
               "-o", str(out), "--report", str(rep), "--no-progress", *FAST])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("blockwise", "scale_offset", "fitted"):
        assert name in text
    t = LatencyTable.load(out, small_space)
    assert t.correction is None and t.device["backend"] == "torch-cpu"
    held = t.fit["heldout"]
    assert held["networks"] == 4 and set(held) >= {"blockwise", "scale_offset", "fitted"}
    assert 0.0 <= held["fitted"]["share_within_10pct"] <= 1.0 and t.fit["networks"] == 16
    assert t.fit["measure_s"] >= 0 and t.fit["lambda"] in (0.01, 0.1, 1.0, 10.0, 100.0)
    r = json.loads(rep.read_text())
    assert len(r["networks"]) == 20 and len(r["heldout_index"]) == 4
    # the search takes it like any LUT
    assert t.architecture_latency([0, 1, 2]) > 0
    # a fitted table is not fitted again, and the held-out share is checked
    assert main(["lut", "fit", str(out), "--space", str(space_file), "--width-mult", "1", "--no-progress",
                 *FAST]) == 2
    assert "already a fitted table" in capsys.readouterr().err
    assert main(["lut", "fit", str(measured), "--space", str(space_file), "--width-mult", "1", "--heldout", "1.5",
                 "--no-progress", *FAST]) == 2
    assert "--heldout" in capsys.readouterr().err


def test_validate_of_a_fitted_table_measures_networks_the_fit_never_saw_and_puts_three_predictors_side_by_side(
        tmp_path, measured, space_file, small_space, capsys):
    out = tmp_path / "fitted.json"
    assert main(["lut", "fit", str(measured), "--space", str(space_file), "--width-mult", "1", "-n", "12",
                 "--heldout", "0.25", "-o", str(out), "--no-progress", *FAST]) == 0
    before = out.read_bytes()
    keys = LatencyTable.load(out, small_space).fit["fit_networks"]
    fit_nets = set(keys)  # 27 networks in this space: the biased draws repeat some
    assert len(keys) == 9 and len(fit_nets) >= 4
    rep = tmp_path / "v.json"
    capsys.readouterr()
    assert main(["lut", "validate", str(out), "--space", str(space_file), "--width-mult", "1", "-n", "3",
                 "--num-searched", "3", "--report", str(rep),
                 "--plot", str(tmp_path / "v.png"), "--no-progress", *FAST]) == 0
    text = capsys.readouterr().out
    assert "three predictors side by side" in text and "nothing written" in text
    for name in ("blockwise", "scale_offset", "fitted", "searched-like"):
        assert name in text
    r = json.loads(rep.read_text())
    assert set(r["predictors"]) == {"blockwise", "scale_offset", "fitted"}
    assert r["predictors"]["fitted"]["all"]["n"] == 6 and r["excluded_fit_networks"] == 9
    seen = {".".join(str(small_space.candidates.index(b)) for b in a["blocks"]) for a in r["archs"]}
    assert len(seen) == 6 and not seen & fit_nets
    # the fitted prediction of each network is the fitted table's sum
    t = LatencyTable.load(out, small_space)
    a0 = r["archs"][0]
    assert a0["lut_sum_ms"] == pytest.approx(t.architecture_latency([small_space.candidates.index(b)
                                                                      for b in a0["blocks"]]))
    assert out.read_bytes() == before  # a fitted table carries no correction: validate writes nothing


def test_validate_and_fit_refuse_networks_in_another_numeric_format_than_the_lut(tmp_path, space_file, capsys):
    out = tmp_path / "ort.json"
    assert main(["lut", "measure", "--space", str(space_file), "--width-mult", "1", "--backend", "onnxruntime",
                 "-o", str(out), "--no-progress", *FAST]) == 0
    for cmd in (["validate", "-n", "2", "--no-write"], ["fit", "-n", "8"]):
        capsys.readouterr()
        rc = main(["lut", cmd[0], str(out), "--space", str(space_file), "--width-mult", "1", "--dtype", "int8",
                   *cmd[1:], "--no-progress", *FAST])
        err = capsys.readouterr().err
        assert rc == 2 and "blocks are fp32" in err and "--dtype int8" in err, err
