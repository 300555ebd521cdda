"""The accuracy-vs-latency study: its figures on hand-made points, and a tiny study end to end."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_space
from fbnet_fast.cli import main
from fbnet_fast.errors import ConfigError, RunDirError
from fbnet_fast.space import load_space
from fbnet_fast.research.study import (SearchRun, StudyConfig, accuracy_gaps, bootstrap_difference, bootstrap_median,
                                       dominated_fraction, dominates, fill_band, fitting_presets, front_accuracy_at,
                                       one_path_plan, pareto_front, run_study, seed_spread)


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
    with pytest.raises(ConfigError, match="search_seeds"):
        StudyConfig(search_seeds=0).validate()
    with pytest.raises(ConfigError, match="train_seeds"):
        StudyConfig(train_seeds=0).validate()
    with pytest.raises(ConfigError, match="bootstrap"):
        StudyConfig(bootstrap=50).validate()
    with pytest.raises(ConfigError, match="compare_one_path"):
        StudyConfig(alphas=(), cost_alphas=(), targets=(0.6,), compare_one_path=0.75).validate()
    with pytest.raises(ConfigError, match="soft"):
        StudyConfig(alphas=(), cost_alphas=(), targets=(0.6,), compare_one_path=0.6, gumbel="hard").validate()
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
    assert study["seeds"]["search"] == [0] and study["seeds"]["train"] == [0]
    assert study["seeds"]["random_architectures"] == 1
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



# ---- statistics, band draws, one-path plan (pure) ------------------------------------------------

def _draws(n, seed, spread=0.1):
    import random

    rnd = random.Random(seed)
    return [0.7 + rnd.gauss(0, spread) for _ in range(n)]


def test_bootstrap_interval_contains_the_median_repeats_with_its_seed_and_shrinks_with_more_data():
    few, many = _draws(8, 1), _draws(128, 1)
    a = bootstrap_median([few], resamples=2000, seed=3)
    assert a.lo <= a.median <= a.hi and a.median == pytest.approx(sorted(few)[3] / 2 + sorted(few)[4] / 2)
    assert (a.n, a.clusters, a.resamples, a.seed) == (8, 1, 2000, 3)
    assert bootstrap_median([few], resamples=2000, seed=3) == a  # seeded: the same interval
    assert bootstrap_median([few], resamples=2000, seed=4) != a
    b = bootstrap_median([many], resamples=2000, seed=3)
    assert b.lo <= b.median <= b.hi and (b.hi - b.lo) < 0.5 * (a.hi - a.lo)
    assert bootstrap_median([[0.5]], resamples=200).lo is None and bootstrap_median([], resamples=200) is None


def test_clustered_values_are_resampled_by_architecture_first():
    # 4 searches whose architectures differ a lot, each trained 3 times with little spread: the two-stage
    # interval reflects the 4 architectures, not 12 independent values.
    groups = [[0.50, 0.51, 0.52], [0.70, 0.71, 0.69], [0.60, 0.61, 0.62], [0.80, 0.79, 0.81]]
    nested = bootstrap_median(groups, resamples=4000, seed=0)
    flat = bootstrap_median([[v for g in groups for v in g]], resamples=4000, seed=0)
    assert nested.median == flat.median and nested.clusters == 4 and nested.n == 12
    assert (nested.hi - nested.lo) > (flat.hi - flat.lo)


def test_bootstrap_difference():
    hi, lo = [_draws(5, s, 0.02) for s in range(4)], [[v - 0.2 for v in _draws(5, s + 10, 0.02)] for s in range(3)]
    d = bootstrap_difference(hi, lo, resamples=2000, seed=1)
    pooled = lambda g: sorted(v for x in g for v in x)  # noqa: E731
    assert d.median == pytest.approx(float(np.median(pooled(hi)) - np.median(pooled(lo))))
    assert 0 < d.lo <= d.median <= d.hi  # 20 points apart: the interval excludes 0
    same = bootstrap_difference(hi, hi, resamples=2000, seed=1)
    assert same.median == 0 and same.lo < 0 < same.hi
    assert bootstrap_difference(hi, [], resamples=200) is None


def test_seed_spread_separates_training_noise_from_architecture():
    s = seed_spread([[0.5, 0.7], [0.8, 0.8], [0.6]])
    assert s["within_arch_sd"] == pytest.approx(math.sqrt((0.02 + 0.0) / 2))
    assert s["between_arch_sd"] == pytest.approx(float(np.std([0.6, 0.8, 0.6], ddof=1)))
    assert (s["archs"], s["archs_with_several_trainings"]) == (3, 2)


def _fake_band_sampler(ratio=1.3):
    """propose: LUT latencies spread over [lut_lo, lut_hi]; measure: ratio x LUT (+-2 %, by key)."""
    calls = {"proposed": 0, "measured": 0}

    def propose(lut_lo, lut_hi, n, rnd):
        calls["proposed"] += n
        out = []
        for i in range(n):
            lut = lut_lo + (lut_hi - lut_lo) * ((i * 0.618 + rnd * 0.31) % 1.0)
            out.append({"key": f"r{rnd}-{i}", "blocks": ["skip"], "lut_ms": lut, "measured": {}})
        return out, 3 * n

    def measure_on(host):
        def measure(cands):
            calls["measured"] += len(cands)
            for c in cands:
                jitter = 1 + 0.02 * ((hash(c["key"]) % 100) / 50 - 1)
                c["measured"][host] = {"median_ms": ratio * c["lut_ms"] * jitter}
        return measure

    return propose, measure_on, calls


def test_band_is_drawn_until_full_then_reused_and_remeasured_on_another_host():
    propose, measure_on, calls = _fake_band_sampler()
    rounds = []
    lo, hi = 3.8, 4.2
    got = fill_band(rounds, lo=lo, hi=hi, need=5, host="A", measure=measure_on("A"), propose=propose, ratio0=1.0,
                    max_candidates=200)
    assert got["full"] and len(got["accepted"]) == 5
    assert all(lo <= c["measured"]["A"]["median_ms"] <= hi for c in got["accepted"])
    assert 5 <= got["measured_until_full"] <= got["measured"] == got["candidates"] == calls["measured"]
    assert got["proposals"] == 3 * calls["proposed"] and got["rounds"] == len(rounds) >= 2  # ratio 1.0 first: missed
    assert rounds[-1]["ratio"] == pytest.approx(1.3, rel=0.03)  # the measured/LUT ratio was learnt
    # stops once full: the same record again draws and measures nothing
    before = dict(calls)
    again = fill_band(rounds, lo=lo, hi=hi, need=5, host="A", measure=measure_on("A"), propose=propose, ratio0=1.0,
                      max_candidates=200)
    assert calls == before and [c["key"] for c in again["accepted"]] == [c["key"] for c in got["accepted"]]
    # a larger band_random continues the record; another host re-measures what it reuses
    more = fill_band(rounds, lo=lo, hi=hi, need=8, host="B", measure=measure_on("B"), propose=propose, ratio0=1.0,
                     max_candidates=200)
    assert more["full"] and [c["key"] for c in more["accepted"][:5]] == [c["key"] for c in got["accepted"]]
    assert calls["measured"] >= before["measured"] + got["candidates"]
    # a band no random net reaches stops at the cap and says so
    short = fill_band([], lo=100.0, hi=101.0, need=3, host="A", measure=measure_on("A"),
                      propose=lambda a, b, n, r: propose(1.0, 2.0, n, r), ratio0=1.0, max_candidates=20)
    assert not short["full"] and short["candidates"] == 20 and "cap" in short["note"]


def test_one_path_plan_runs_as_many_epochs_as_fit_the_soft_search():
    plan = one_path_plan(100.0, 4.0, 1.0, epochs=6, warmup_epochs=2, decide_by=0.5, first_epoch_extra_s=2.0)
    e, w = plan["epochs"], plan["warmup_epochs"]
    assert w == round(e * 2 / 6) and plan["fits"]
    assert plan["predicted_s"] == pytest.approx(2.0 + 4.0 * e + 0.5 * (e - w) * 1.0)
    assert plan["predicted_s"] <= 100.0 < plan["next_s"]
    no_decide = one_path_plan(100.0, 4.0, 1.0, epochs=6, warmup_epochs=2, decide_by=None, first_epoch_extra_s=2.0)
    assert no_decide["epochs"] < e  # every theta step runs: fewer epochs fit
    tiny = one_path_plan(1.0, 4.0, 1.0, epochs=6, warmup_epochs=2, decide_by=0.5)
    assert (tiny["epochs"], tiny["warmup_epochs"], tiny["fits"]) == (2, 1, False)  # the least a search can be


def test_search_seeds_name_their_runs_and_share_their_own_warmup():
    cfg = StudyConfig(alphas=(), cost_alphas=(), targets=(0.6, 0.9), search_seeds=2, train_seeds=3, seed=5)
    runs = cfg.search_runs()
    assert [r.name for r in runs] == ["target-0.6-auto", "target-0.9-auto", "target-0.6-s1-auto", "target-0.9-s1-auto"]
    assert [cfg.search_config(r).seed for r in runs] == [5, 5, 6, 6]
    assert [cfg.train_config(j).seed for j in range(3)] == [5, 6, 7]
    assert [cfg.shares_warmup(r.spec, r.seed_index) for r in runs] == [False, True, False, True]
    hard = SearchRun(("target", 0.6), 1, role="one-path")
    assert hard.name == "target-0.6-s1-onepath-auto"
    hcfg = cfg.search_config(hard, epochs=20, warmup_epochs=7)
    assert (hcfg.gumbel, hcfg.epochs, hcfg.warmup_epochs, hcfg.seed) == ("hard", 20, 7, 6)
    probe = cfg.search_config(SearchRun(("target", 0.6), 0, role="probe"))
    assert (probe.gumbel, probe.epochs, probe.warmup_epochs, probe.decide_by) == ("hard", 3, 2, None)


# ---- a tiny target study with seeds, a one-path comparison and committed results ------------------

def test_tiny_seeded_target_study_with_one_path_resumes_from_its_results(tmp_path, tiny_lut, capsys):
    res = tmp_path / "results"
    argv, out = _tiny_study_argv(tmp_path, tiny_lut, "--targets", "0.6", "--band-random", "2", "--band", "0.3",
                                 "--num-random", "0", "--no-presets", "--search-seeds", "2", "--train-seeds", "2",
                                 "--compare-one-path", "0.6", "--bootstrap", "500", "--results", str(res))
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "target 0.6 x uniform" in text and "one-path at the same wall time" in text

    costs = {c["name"]: c for c in csv.DictReader((res / "cost.csv").open())}
    assert sorted(costs) == ["target-0.6-auto", "target-0.6-onepath-auto", "target-0.6-onepath-probe-auto",
                             "target-0.6-s1-auto", "target-0.6-s1-onepath-auto", "target-0.6-s1-onepath-probe-auto"]
    seeds = {n: json.loads((out / "searches" / n / "config.json").read_text())["search"]["seed"] for n in costs}
    assert seeds["target-0.6-auto"] == seeds["target-0.6-onepath-auto"] == 0 and seeds["target-0.6-s1-auto"] == 1

    rows = list(csv.DictReader((res / "points.csv").open()))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("searched") == 2 and kinds.count("one-path") == 2 and kinds.count("band") == 2
    for r in rows:  # every architecture trained with both training seeds
        rec = json.loads((res / "archs" / f"{r['key']}.json").read_text())
        assert sorted(rec["trainings"]) == ["0", "1"] and r["trainings"] == "2"
        assert all(t["cpu"] and t["val_acc"] is not None for t in rec["trainings"].values())
        (lat,) = rec["latency"].values()
        assert lat["median_ms"] == pytest.approx(float(r["measured_ms"]), abs=1e-5) and lat["cpu"] and lat["isa"]
        assert json.loads((out / "train" / f"{r['key']}-t1" / "config.json").read_text())["train"]["seed"] == 1

    summary = json.loads((res / "summary.json").read_text())
    assert summary["complete"] and summary["trainings"] == 2 * len(rows)
    (t,) = summary["figures"]["targets"]
    s, band = t["searched"], t["band"]
    assert (s["searches"], s["trainings"], band["trained_archs"], band["trainings"]) == (2, 4, 2, 4)
    assert abs(t["searched_lut_error"]) <= 0.03 + 1e-9  # --budget-mode target lands on T
    lo, hi = band["band_ms"]
    assert band["centre_ms"] == pytest.approx((lo + hi) / 2)
    assert all(lo <= float(r["measured_ms"]) <= hi for r in rows if r["kind"] == "band")
    assert band["draws"]["full"] and 2 <= band["draws"]["measured_until_full"] <= band["draws"]["measured"]
    assert band["draws"]["proposals"] >= band["draws"]["candidates"]
    for iv in (s["accuracy"], band["accuracy"], t["gain"]):
        assert iv["lo"] <= iv["median"] <= iv["hi"] and iv["resamples"] == 500
    assert t["gain"]["median"] == pytest.approx(s["accuracy"]["median"] - band["accuracy"]["median"])
    assert s["accuracy"]["clusters"] == 2 and s["accuracy"]["n"] == 4

    # one-path: each seed's search got the soft search's wall time, as many epochs as the probe says fit
    op = t["one_path"]
    assert op["searches"] == 2 and op["trainings"] == 4 and op["soft_minus_one_path"] is not None
    for w in op["wall"]:
        plan = w["plan"]
        soft = json.loads((res / "searches" / f"{plan['soft']}.json").read_text())
        assert plan["budget_s"] == soft["epoch_elapsed_s"][-1] == w["soft_s"]
        assert plan["next_s"] > plan["budget_s"] and (plan["fits"] or plan["epochs"] == 2)
        hard = json.loads((out / "searches" / f"{plan['soft'][:-5]}-onepath-auto" / "config.json").read_text())
        assert plan["epochs"] == w["one_path_epochs"]
        assert (hard["search"]["gumbel"], hard["search"]["epochs"]) == ("hard", plan["epochs"])
    report = (res / "report.md").read_text()
    assert "| target | T (LUT ms) |" in report and "Soft minus one-path" in report and "--search-seeds 2" in report
    assert "only 3 distinct draw(s)" in report  # 2 searches a point: the report says its intervals are optimistic
    assert (res / "pareto.png").stat().st_size > 1000

    # Another machine, another day: a fresh study folder with the committed results redoes nothing.
    fresh = list(argv)
    fresh[fresh.index("--out") + 1] = str(tmp_path / "elsewhere")
    assert main(fresh) == 0
    assert not (tmp_path / "elsewhere" / "searches").exists() and not (tmp_path / "elsewhere" / "train").exists()
    again = json.loads((res / "summary.json").read_text())
    assert again["figures"]["targets"] == summary["figures"]["targets"]
    lines = [json.loads(l) for l in (res / "invocations.jsonl").read_text().splitlines()]
    assert len(lines) == 2  # this invocation's line is rewritten after every report, not appended
    assert again["cost"]["runs"] == 2
    assert again["cost"]["earlier_runs_wall_s"] == pytest.approx(lines[0]["wall_s"], abs=0.05)

    # A different schedule is refused, naming the option, rather than mixed with these results.
    capsys.readouterr()
    other = list(fresh)
    other[other.index("--out") + 1] = str(tmp_path / "third")
    other[other.index("--train-epochs") + 1] = "2"
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "train_epochs" in err and "--results" in err
    lut2 = tmp_path / "lut2.json"
    tiny_lut.__class__.from_matrix(make_tiny_space(), tiny_lut.matrix() * 2, fixed_ms=3.0).save(lut2)
    other = list(fresh)
    other[other.index("--lut") + 1] = str(lut2)
    assert main(other) == 2
    assert "another latency table" in capsys.readouterr().err


def test_backend_is_a_fixed_option_and_old_folders_were_torch_cpu(tmp_path, tiny_lut):
    """backend joins FIXED; a study.json from before the option existed reads as torch-cpu (LEGACY_FIXED)."""
    from fbnet_fast.research.study import Study

    with pytest.raises(ConfigError, match="backend must be one of torch-cpu, onnxruntime, executorch"):
        StudyConfig(backend="cuda").validate()
    space_file = tmp_path / "tiny.json"
    space_file.write_text(json.dumps(make_tiny_space().to_dict()))
    lut_file = tmp_path / "lut.json"
    tiny_lut.save(lut_file)
    cfg = StudyConfig(space=str(space_file), width_mult=1.0, lut=str(lut_file), progress=False)
    assert cfg.backend == "onnxruntime" and "backend" in StudyConfig.FIXED
    old = tmp_path / "old"
    Study(dataclasses.replace(cfg, backend="torch-cpu"), old, log=lambda m: None)
    doc = json.loads((old / "study.json").read_text())
    del doc["study"]["backend"]  # as written before the option existed
    (old / "study.json").write_text(json.dumps(doc))
    with pytest.raises(RunDirError, match="backend: folder 'torch-cpu', now 'onnxruntime'"):
        Study(cfg, old, log=lambda m: None)
    Study(dataclasses.replace(cfg, backend="torch-cpu"), old, log=lambda m: None)  # continues
