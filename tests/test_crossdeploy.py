"""Cross-device experiment: targets rebuilt from LUT device records, the NxN table from real
end-to-end measurements, searched architectures that follow their own LUT, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_space
from fbnet_fast.research.crossdeploy import CrossDeployResult, backend_for, cross_deploy
from fbnet_fast.errors import ConfigError
from fbnet_fast.lut import LatencyTable
from fbnet_fast.space import Architecture

REPO = Path(__file__).resolve().parents[1]
CANDS = ["k3_e1", "k3_e3", "k5_e6"]
# Few, short samples: these tests check the plumbing, not the figures.
FAST = {"repeats": 3, "passes": 1, "warmup": 1, "min_sample_ms": 0.2}


def _luts(space):
    """Hand-made tables with opposite preferences, each naming a real local back end."""
    n = space.num_layers
    a = LatencyTable.from_matrix(space, torch.tensor([[1.0, 3.0, 10.0]] * n), fixed_ms=1.0,
                                 device={"backend": "torch-cpu", "threads": 1, "memory_format": "contiguous", **FAST})
    b = LatencyTable.from_matrix(space, torch.tensor([[10.0, 3.0, 1.0]] * n), fixed_ms=1.0,
                                 device={"backend": "onnxruntime", "threads": 1, **FAST})
    return a, b


def test_backend_for_follows_the_lut_device_record():
    space = make_tiny_space(candidates=CANDS)
    a, b = _luts(space)
    ba, bb = backend_for(a), backend_for(b, passes=2)
    assert (ba.name, ba.threads, ba.repeats, ba.channels_last) == ("torch-cpu", 1, 3, False)
    assert (bb.name, bb.passes) == ("onnxruntime", 2)
    given = LatencyTable.from_matrix(space, torch.ones(space.num_layers, 3))
    with pytest.raises(ConfigError, match="names no machine"):
        backend_for(given)


def test_table_and_plot_from_given_architectures(tmp_path):
    space = make_tiny_space(candidates=CANDS)
    a, b = _luts(space)
    archs = [Architecture(("k3_e1",) * space.num_layers, space.name, space.fingerprint),
             Architecture(("k5_e6",) * space.num_layers, space.name, space.fingerprint)]
    res = cross_deploy(space, [a, b], tmp_path, archs=archs, progress=False, log=lambda m: None)
    assert res.targets == ["torch-cpu 1t", "onnxruntime 1t"] and res.arch_sources == ["given", "given"]
    assert all(v > 0 for row in res.measured_ms for v in row)
    assert res.predicted_ms == [[1.0 + 5, 1.0 + 50], [1.0 + 50, 1.0 + 5]]
    assert [res.slowdowns()[j][j] for j in range(2)] == [1.0, 1.0]
    d = json.loads((tmp_path / "crossdeploy.json").read_text())
    assert d["archs"][0]["blocks"] == list(archs[0].blocks) and len(d["devices"]) == 2
    assert "on torch-cpu 1t" in (tmp_path / "crossdeploy.md").read_text()
    assert (tmp_path / "crossdeploy.png").stat().st_size > 10_000
    with pytest.raises(ConfigError, match="no search configuration"):
        cross_deploy(space, [a, b], tmp_path / "x", archs=[archs[0], None], log=lambda m: None)


def test_each_search_follows_its_own_lut(tmp_path):
    from fbnet_fast.data import build_datasets
    from fbnet_fast.search import SearchConfig

    space = make_tiny_space(candidates=CANDS)
    a, b = _luts(space)
    data = build_datasets("synthetic", image_size=16, seed=0, num_train=200, num_val=32)
    # latency-dominated (large alpha, fast theta) so the outcome depends on the LUTs alone
    cfg = SearchConfig(epochs=4, warmup_epochs=1, batch_size=16, progress=False, kernel="reference", alpha=5.0,
                       target_fraction=None, tau_schedule="paper",
                       loss_form="add", theta_lr=0.3, plots=False, latency_unit="ms")
    res = cross_deploy(space, [a, b], tmp_path, search=cfg, data=data, progress=False, log=lambda m: None)
    assert res.arch_sources == ["searched", "searched"]
    p = res.predicted_ms
    assert p[0][0] < p[1][0] and p[1][1] < p[0][1]  # each is the faster one under its own LUT
    assert (tmp_path / "search-0" / "arch.json").is_file() and (tmp_path / "arch-1.json").is_file()


def test_result_markdown_marks_the_diagonal():
    r = CrossDeployResult(["A", "B"], [], ["given", "given"], [[1.0, 4.0], [2.0, 3.0]], [[1, 4], [2, 3]],
                          [[1, 4], [2, 3]], [[1, 4], [2, 3]])
    assert r.diagonal_wins() == [True, True]
    assert r.slowdowns() == [[1.0, 4 / 3], [2.0, 1.0]]
    assert "**1.000 ms**" in r.markdown() and "**3.000 ms**" in r.markdown()


def test_cli_crossdeploy_with_arch_files(tmp_path):
    space = make_tiny_space(candidates=CANDS)
    a, b = _luts(space)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    space_file = tmp_path / "tiny.json"
    space_file.write_text(json.dumps(space.to_dict()))
    for name, block in (("x", "k3_e1"), ("y", "k3_e3")):
        (tmp_path / f"{name}.txt").write_text(" ".join([block] * space.num_layers))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "fbnet_fast", "crossdeploy", "--lut", str(tmp_path / "a.json"),
            "--lut", str(tmp_path / "b.json"), "--space", str(space_file), "--width-mult", "1.0", "--no-progress"]
    r = subprocess.run(base + ["--arch", str(tmp_path / "x.txt"), "--arch", str(tmp_path / "y.txt"),
                               "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "its own architecture" in r.stdout and (tmp_path / "out" / "crossdeploy.png").is_file()
    r = subprocess.run(base + ["--arch", str(tmp_path / "x.txt"), "-o", str(tmp_path / "o2")], capture_output=True,
                       text=True, env=env, timeout=240)
    assert r.returncode == 2 and "one per LUT" in r.stderr
