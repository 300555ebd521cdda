"""The accuracy-vs-latency study: its figures on hand-made points, and a tiny study end to end."""

import csv
import json
import math
from pathlib import Path

import pytest

from conftest import make_tiny_space
from fbnet_fast.cli import main
from fbnet_fast.errors import ConfigError, RunDirError
from fbnet_fast.space import load_space
from fbnet_fast.research.study import (StudyConfig, accuracy_gaps, dominated_fraction, dominates, fitting_presets,
                              front_accuracy_at, pareto_front, run_study)


def test_dominance_and_front():
    assert dominates((1.0, 0.8), (2.0, 0.7)) and dominates((1.0, 0.8), (1.0, 0.7))
    assert not dominates((1.0, 0.8), (1.0, 0.8))  # equal points dominate neither way
    assert not dominates((1.0, 0.6), (2.0, 0.7))
    pts = [(3.0, 0.9), (1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (4.0, 0.85)]
    assert pareto_front(pts) == [1, 3, 0]


def test_dominated_fraction_counts_each_random_point_once():
    searched = [(1.0, 0.6), (2.0, 0.8)]
    random = [(1.5, 0.5), (2.5, 0.7), (0.5, 0.3), (3.0, 0.9)]  # dominated, dominated, faster, more accurate
    assert dominated_fraction(searched, random) == 0.5
    assert math.isnan(dominated_fraction(searched, []))


def test_gap_interpolates_on_the_random_front():
    random = [(1.0, 0.5), (3.0, 0.7), (2.0, 0.4)]  # (2.0, 0.4) is dominated: not on the front
    assert front_accuracy_at(random, 2.0) == pytest.approx(0.6)
    assert front_accuracy_at(random, 0.5) is None  # faster than every random architecture
    assert front_accuracy_at(random, 10.0) == pytest.approx(0.7)  # a bigger budget runs the best one
    gaps = accuracy_gaps([(2.0, 0.65), (0.5, 0.9), (3.0, 0.6)], random)
    assert gaps[0] == pytest.approx(0.05) and gaps[1] is None and gaps[2] == pytest.approx(-0.1)


def test_presets_fit_the_cifar_space_only():
    names = [n for n, _, _ in fitting_presets(load_space("fbnet-cifar", width_mult=0.25))]
    assert "fbnet_c" in names and all("(blocks in fbnet-cifar)" in l for _, l, _ in
                                      fitting_presets(load_space("fbnet-cifar", width_mult=0.25)))
    assert fitting_presets(make_tiny_space()) == []  # 5 layers: no preset fits


def test_bad_options():
    with pytest.raises(ConfigError, match="cost_alphas"):
        StudyConfig(alphas=(0.0,), cost_alphas=(0.5,)).validate()
    with pytest.raises(ConfigError, match="warmup_epochs"):
        StudyConfig(search_epochs=2, warmup_epochs=2).validate()
    with pytest.raises(ConfigError, match="loss_form"):
        StudyConfig(loss_form="sum").validate()
    with pytest.raises(ConfigError, match="gumbel"):
        StudyConfig(gumbel="medium").validate()
    with pytest.raises(ConfigError, match="jobs"):
        StudyConfig(jobs=0).validate()
    with pytest.raises(ConfigError, match="unknown phase"):
        run_study(StudyConfig(), "unused", skip=["everything"])


def _tiny_study_argv(tmp_path, tiny_lut, *what: str) -> tuple[list[str], Path]:
    """A study of the tiny space on a little generated data, 2-epoch searches, 1-epoch trainings;
    ``what``: the searches and points (``--alphas ...``, ``--targets ...``). Returns (argv, study folder)."""
    space_file = tmp_path / "tiny.json"
    space_file.write_text(json.dumps(make_tiny_space().to_dict()))
    lut_file = tmp_path / "lut.json"
    tiny_lut.save(lut_file)
    out = tmp_path / "study"
    # width multiplier 1.0: the tiny space is already tiny
    argv = ["study", "pareto", "--space", str(space_file), "--width-mult", "1.0", "--data", "synthetic",
            "--num-train", "256", "--num-val", "64", *what, "--search-epochs", "2", "--warmup-epochs", "1",
            "--train-epochs", "1", "--batch-size", "32", "--lut", str(lut_file), "--latency-repeats", "2",
            "--threads", "1", "--jobs", "2", "--no-progress", "--out", str(out)]
    return argv, out


def test_tiny_study_end_to_end_and_rerun_reuses_everything(tmp_path, tiny_lut, capsys):
    argv, out = _tiny_study_argv(tmp_path, tiny_lut, "--alphas", "0,1", "--cost-alphas", "1", "--num-random", "3")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "random architectures dominated by the searched front" in text and "reference" in text

    rows = list(csv.DictReader((out / "points.csv").open()))
    assert [r["kind"] for r in rows].count("random") == 3 and [r["kind"] for r in rows].count("searched") == 2
    assert all(r["val_acc"] != "" and float(r["measured_ms"]) > 0 and float(r["lut_ms"]) > 0 for r in rows)
    costs = list(csv.DictReader((out / "cost.csv").open()))
    assert sorted((r["alpha"], r["kernel"]) for r in costs) == [("0.0", "auto"), ("1.0", "auto"),
                                                                ("1.0", "reference")]
    assert all(float(r["wall_s"]) > 0 and float(r["peak_rss_mib"]) > 10 for r in costs)
    # alpha 0 is outside cost_alphas: it started after the warm-up of the alpha-1 fused search
    shared = {(r["alpha"], r["kernel"]): r for r in costs}
    assert shared[("0.0", "auto")]["warmup_from"] == "alpha-1-auto" and shared[("0.0", "auto")]["epochs_run"] == "1"
    assert shared[("1.0", "auto")]["warmup_from"] == "" and shared[("1.0", "reference")]["epochs_run"] == "2"
    hist = [json.loads(l) for l in (out / "searches" / "alpha-0-auto" / "metrics.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in hist] == ["warmup", "search"]
    summary = json.loads((out / "summary.json").read_text())
    f = summary["figures"]["measured_ms"]
    assert 0.0 <= f["random_dominated_by_searched_front"] <= 1.0 and summary["complete"]
    assert summary["search_cost"]["fused_vs_reference"][0]["wall_speedup"] > 0
    study = json.loads((out / "study.json").read_text())
    assert study["seeds"] == {"search": 0, "train": 0, "data": 0, "random_architectures": 1}
    assert study["search_config"]["alpha-1"]["alpha"] == 1.0 and study["train_config"]["epochs"] == 1
    assert study["search_config"]["alpha-1"]["target_fraction"] is None  # alpha searches have no budget
    assert study["search_config"]["alpha-1"]["space"] == "space.json" and (out / "space.json").is_file()
    assert (out / "pareto.png").stat().st_size > 1000

    # A rerun reuses every search, training and timing: same points, nothing new in the folder's logs.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".pt", ".log")}
    assert main(argv) == 0
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".pt", ".log")}
    assert before == after
    assert list(csv.DictReader((out / "points.csv").open())) == rows

    # A second study (additive loss) starts every search from the first study's warm-up.
    argv2 = [a for a in argv]
    argv2[argv2.index("--out") + 1] = str(tmp_path / "study-add")
    argv2[argv2.index("--cost-alphas") + 1] = ""
    argv2[argv2.index("--alphas") + 1] = "0.5"
    argv2 += ["--loss-form", "add", "--warmup-from", str(out / "searches" / "alpha-1-auto"), "--num-random", "0",
              "--no-presets", "--skip", "measure,train"]
    assert main(argv2) == 0
    (c2,) = list(csv.DictReader((tmp_path / "study-add" / "cost.csv").open()))
    assert (c2["alpha"], c2["warmup_from"], c2["epochs_run"]) == ("0.5", "alpha-1-auto", "1")
    cfg2 = json.loads((tmp_path / "study-add" / "searches" / "alpha-0.5-auto" / "config.json").read_text())
    assert cfg2["search"]["loss_form"] == "add" and cfg2["search"]["warmup_from"].endswith("alpha-1-auto")

    # Other options in the same folder are refused, naming the field.
    bad = [a if a != "2" else "3" for a in argv]  # --search-epochs 3
    assert main(bad) == 2
    assert "search_epochs" in capsys.readouterr().err


def test_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(RunDirError, match="no study.json"):
        run_study(StudyConfig(lut="nope.json"), tmp_path)


def test_tiny_target_study_compares_each_searched_net_with_random_nets_of_its_latency(tmp_path, tiny_lut, capsys):
    argv, out = _tiny_study_argv(tmp_path, tiny_lut, "--targets", "0.6,0.9", "--band-random", "2", "--num-random",
                                 "0", "--no-presets")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "target 0.6 x uniform" in text and "random in band median" in text
    rows = list(csv.DictReader((out / "points.csv").open()))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("searched") == 2 and kinds.count("band") == 4 and "random" not in kinds
    summary = json.loads((out / "summary.json").read_text())
    targets = summary["figures"]["targets"]
    assert [t["fraction"] for t in targets] == [0.6, 0.9]
    for t in targets:
        lo, hi = t["band"]
        band = [r for r in rows if r["kind"] == "band" and float(r["target"]) == t["fraction"]]
        assert all(lo <= float(r["lut_ms"]) <= hi for r in band)  # random nets at the searched net's latency
        assert abs(t["searched_lut_error"]) <= 0.03 + 1e-9  # --budget-mode target (the study's default)
        assert t["band_trained"] == 2 and t["band_draws"] >= 2 and t["searched_acc"] is not None
        assert t["gain_vs_band_median"] == pytest.approx(float(t["searched_acc"]) - t["band_median_acc"])
    (cost,) = [c for c in csv.DictReader((out / "cost.csv").open()) if c["target"] == "0.9"]
    assert cost["warmup_from"] == "target-0.6-auto"  # the second search starts after the first's warm-up
    cfg = json.loads((out / "searches" / "target-0.9-auto" / "config.json").read_text())["search"]
    assert (cfg["target_fraction"], cfg["budget_mode"]) == (0.9, "target")
    assert (out / "pareto.png").stat().st_size > 1000
