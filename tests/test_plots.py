"""Progress bars and the pictures a search leaves in its run folder."""

from __future__ import annotations

import json

import pytest

from fbnet_fast.cli import main
from fbnet_fast.data import build_datasets
from fbnet_fast.plots import PLOT_FILES, write_plots
from fbnet_fast.search import SearchConfig, run_search

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.conftest import make_tiny_space
    import torch
    from fbnet_fast.lut import LatencyTable

    space = make_tiny_space()
    m = torch.tensor([2.0, 2.5, 4.0, 9.0, 1.0], dtype=torch.float64).repeat(space.num_layers, 1)
    lut = LatencyTable.from_matrix(space, m, fixed_ms=3.0)
    data = build_datasets("synthetic", image_size=16, num_train=100, num_val=24)
    out = tmp_path_factory.mktemp("plots") / "run"
    cfg = SearchConfig(epochs=3, warmup_epochs=1, batch_size=10, kernel="reference", plot_samples=6, progress=True)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        run_search(cfg, out, space=space, lut=lut, data=data, log=lambda m: None)
    out.joinpath("progress.log").write_text(err.getvalue())  # for the progress-bar test below
    return out


def test_progress_bars_show_ce_latency_and_accuracy(run_dir):
    bars = run_dir.joinpath("progress.log").read_text()
    assert "epoch 2/3 theta" in bars and "search" in bars
    for key in ("ce=", "lat_ms=", "acc=", "val_acc="):
        assert key in bars, key


def test_search_writes_every_picture_and_the_samples(run_dir):
    for name in PLOT_FILES:
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    samples = json.loads((run_dir / "samples.json").read_text())
    kinds = [s["kind"] for s in samples]
    returned = " ".join(json.loads((run_dir / "arch.json").read_text())["blocks"])
    # the argmax first; the net the budget repair returned second when it differs
    assert kinds[0] == "argmax" and kinds.count("sample") == 6
    if samples[0]["arch"] == returned:
        assert len(samples) == 7
    else:
        assert kinds[1] == "returned" and samples[1]["arch"] == returned and len(samples) == 8
        assert "the returned (repaired) architecture as a stand-alone subnet" in (run_dir / "summary.txt").read_text()
    for s in samples:
        assert 0.0 <= s["val_acc"] <= 1.0 and s["latency_ms"] > 3.0 and s["log_prob"] <= 0.0
    assert not list(run_dir.glob(".*.tmp"))
    assert "argmax as a stand-alone subnet" in (run_dir / "summary.txt").read_text()


def test_plot_command_regenerates_the_pictures(run_dir, capsys):
    for name in PLOT_FILES:
        (run_dir / name).unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out.count("wrote ") == 3
    for name in PLOT_FILES:
        assert (run_dir / name).read_bytes().startswith(PNG_MAGIC)


def test_plots_without_samples_skip_the_scatter(run_dir, tmp_path):
    for f in ("metrics.jsonl", "config.json"):
        (tmp_path / f).write_bytes((run_dir / f).read_bytes())
    written = write_plots(tmp_path)
    assert [p.name for p in written] == list(PLOT_FILES[:2])
