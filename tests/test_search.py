import json
import math

import pytest
import torch

from fbnet_fast.data import build_datasets
from fbnet_fast.errors import ConfigError, RunDirError
from fbnet_fast.lut import LatencyTable
from fbnet_fast.search import SearchConfig, Searcher, run_search, tau_at


@pytest.fixture(scope="module")
def tiny_data():
    return build_datasets("synthetic", image_size=16, seed=0, num_train=320, num_val=64)


def cfg(**kw):
    base = dict(epochs=3, warmup_epochs=1, batch_size=32, progress=False, kernel="reference", lut_repeats=2)
    base.update(kw)
    return SearchConfig(**base)


def test_tau_schedule():
    c = SearchConfig(tau_schedule="paper", hard_epochs=0)
    assert [round(tau_at(c, e), 6) for e in range(3)] == [5.0, round(5 * math.exp(-0.045), 6),
                                                           round(5 * math.exp(-0.09), 6)]
    assert math.isclose(tau_at(c, 90), 5 * math.exp(-0.045 * 90))


@pytest.mark.parametrize("epochs,warmup", [(8, 2), (3, 1), (40, 10), (2, 1)])
def test_anneal_schedule_ends_at_tau_end_whatever_the_length(epochs, warmup):
    c = SearchConfig(epochs=epochs, warmup_epochs=warmup, tau_schedule="anneal", tau0=5.0, tau_end=0.1)
    taus = [tau_at(c, e) for e in range(epochs)]
    assert taus[:warmup + 1] == [5.0] * (warmup + 1) or epochs - warmup == 1
    assert math.isclose(taus[-1], 0.1) and all(a >= b for a, b in zip(taus, taus[1:]))
    with pytest.raises(ConfigError, match="tau_end"):
        SearchConfig(tau_schedule="anneal", tau0=1.0, tau_end=2.0).validate()


@pytest.mark.parametrize("epochs,warmup,hard", [(6, 2, 2), (8, 2, 1), (4, 1, 3), (5, 2, 0)])
def test_hard_epochs_are_the_last_and_anneal_ends_before_them(epochs, warmup, hard):
    from fbnet_fast.search import hard_at

    c = SearchConfig(epochs=epochs, warmup_epochs=warmup, hard_epochs=hard, tau_schedule="anneal", tau0=5.0,
                     tau_end=0.5)
    c.validate()
    assert [hard_at(c, e) for e in range(epochs)] == [e >= epochs - hard for e in range(epochs)]
    taus = [tau_at(c, e) for e in range(epochs)]
    soft_search = epochs - warmup - hard
    if soft_search >= 1:
        assert math.isclose(taus[warmup + soft_search - 1], 0.5)  # the last soft epoch reaches tau_end
    if soft_search >= 2:
        assert taus[warmup] == 5.0
    assert all(math.isclose(t, 0.5) for t in taus[epochs - hard:])
    with pytest.raises(ConfigError, match="hard_epochs"):
        SearchConfig(epochs=epochs, warmup_epochs=warmup, hard_epochs=epochs - warmup + 1).validate()


def test_a_run_folder_written_before_the_budget_defaults_resumes_as_it_ran():
    """Options missing from an old config.json take the values the code then ran with."""
    d = SearchConfig().to_dict()
    for k in ("target_ms", "target_fraction", "hard_epochs", "tau_schedule", "tau_end", "commit", "commit_by",
              "commit_lr", "commit_rho", "decide_by"):
        d.pop(k)
    old = SearchConfig.from_dict(d)
    assert (old.target_fraction, old.hard_epochs, old.tau_schedule, old.commit) == (None, 0, "paper", None)
    assert (old.commit_by, old.commit_lr, old.commit_rho, old.decide_by) == (1.0, 0.5, 5.0, None)
    assert SearchConfig.from_dict(SearchConfig().to_dict()) == SearchConfig()


@pytest.mark.parametrize("argv, want", [
    ([], {"target_fraction": 0.75, "target_ms": None}),
    (["--target-ms", "2.5"], {"target_fraction": None, "target_ms": 2.5}),
    (["--target-fraction", "0.6", "--budget-mode", "target"], {"target_fraction": 0.6, "budget_mode": "target"}),
    (["--alpha", "0.5"], {"target_fraction": None, "target_ms": None, "alpha": 0.5}),
    (["--loss-form", "add"], {"target_fraction": None, "loss_form": "add", "alpha": 0.2}),
    (["--no-budget"], {"target_fraction": None, "target_ms": None, "alpha": 0.2, "loss_form": "mul"}),
    ([], {"commit": 0.15, "target_fraction": 0.75}),
    (["--commit", "0.3"], {"commit": 0.3, "target_fraction": 0.75}),
    (["--no-commit"], {"commit": None, "target_fraction": 0.75}),
    (["--commit-by", "0.5", "--commit-lr", "2", "--commit-rho", "20"],
     {"commit_by": 0.5, "commit_lr": 2.0, "commit_rho": 20.0, "target_fraction": 0.75}),
    (["--decide-by", "0.75"], {"decide_by": 0.75, "target_fraction": 0.75}),
    ([], {"decide_by": 0.5, "target_fraction": 0.75}),
    (["--no-decide"], {"decide_by": None, "target_fraction": 0.75}),
])
def test_the_command_line_searches_under_a_budget_unless_told_otherwise(argv, want):
    from fbnet_fast.cli import build_parser
    from fbnet_fast.cli.search import search_config_from_args

    c = search_config_from_args(build_parser().parse_args(["search", *argv]))
    assert {k: getattr(c, k) for k in want} == want
    assert c.budget(4.0) is None if want.get("target_fraction") is None and want.get("target_ms") is None else True


@pytest.mark.parametrize("argv, msg", [
    (["--target-ms", "2", "--target-fraction", "0.5"], "not both"),
    (["--target-ms", "2", "--alpha", "0.3"], "--alpha"),
    (["--target-fraction", "0.5", "--no-budget"], "--no-budget"),
])
def test_budget_and_alpha_options_conflict_clearly(argv, msg):
    from fbnet_fast.cli import build_parser
    from fbnet_fast.cli.search import search_config_from_args

    with pytest.raises(ConfigError, match=msg):
        search_config_from_args(build_parser().parse_args(["search", *argv]))


@pytest.mark.parametrize("kw, msg", [
    ({"warmup_epochs": 3, "epochs": 3}, "warmup_epochs"),
    ({"tau0": 0.0}, "tau0"),
    ({"alpha": -0.1}, "alpha"),
    ({"beta": 0.0}, "beta"),
    ({"w_fraction": 1.0}, "w_fraction"),
    ({"gumbel": "gentle"}, "gumbel"),
    ({"commit": 1.0}, "--commit must be in"),
    ({"commit_by": 0.0}, "--commit-by must be in"),
    ({"commit_lr": 0.0}, "commit_lr"),
    ({"commit_rho": -1.0}, "commit_rho"),
    ({"decide_by": 0.0}, "--decide-by must be in"),
    ({"decide_by": 1.5}, "--decide-by must be in"),
])
def test_bad_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        SearchConfig(**kw).validate()


def test_split_is_80_20_and_disjoint(tmp_path, tiny_space, tiny_lut, tiny_data):
    s = Searcher(cfg(), tmp_path, space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    assert len(s.w_split) + len(s.t_split) == 320
    assert abs(len(s.w_split) / 320 - 0.8) < 0.02  # stratified per class: rounding per class
    w = {bytes(img.numpy()) for img in s.w_split.images}
    t = {bytes(img.numpy()) for img in s.t_split.images}
    assert not (w & t)


def test_warmup_leaves_theta_untouched_then_search_moves_it(tmp_path, tiny_space, tiny_lut, tiny_data):
    s = Searcher(cfg(), tmp_path, space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    before_w = [p.detach().clone() for p in s.model.weight_parameters()]
    s._run_epoch()  # warm-up
    assert all(torch.equal(p, torch.zeros_like(p)) for p in s.model.arch_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before_w, s.model.weight_parameters()))
    assert s.history[0]["phase"] == "warmup" and s.history[0]["theta_loss"] is None
    s._run_epoch()
    assert any(p.abs().sum() > 0 for p in s.model.arch_parameters())
    assert s.history[1]["phase"] == "search" and s.history[1]["theta_loss"] is not None


@pytest.mark.parametrize("peaked", [True, False], ids=["decided", "spread"])
def test_samples_drawn_twice_are_evaluated_once(tmp_path, tiny_space, tiny_lut, tiny_data, peaked):
    """sample_and_evaluate evaluates each distinct architecture once; a repeat gets the record its first draw
    got, which is what evaluating it again gives (the evaluation is deterministic)."""
    s = Searcher(cfg(), tmp_path, space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    s._run_epoch()
    with torch.no_grad():  # every layer decided (all draws the argmax), or theta spread (distinct draws)
        for l, op in enumerate(s.model.layers):
            op.theta.copy_(torch.randn(op.theta.shape, generator=torch.Generator().manual_seed(l)))
            if peaked:
                op.theta[l % op.theta.numel()] = 30.0
    calls = []
    evaluate = s.evaluate

    def counted(weights=None, **kw):
        calls.append(weights.argmax(1).tolist())
        return evaluate(weights, **kw)

    s.evaluate = counted
    recs = s.sample_and_evaluate(6)
    archs = [r["arch"] for r in recs]
    assert len(calls) == len(set(archs)) and len({tuple(c) for c in calls}) == len(calls)
    assert (len(set(archs)) == 1) == peaked
    s.evaluate = evaluate
    for r in recs:  # each record is what a fresh evaluation of its architecture gives
        idx = [tiny_space.candidates.index(b) for b in r["arch"].split()]
        onehot = torch.zeros(tiny_space.num_layers, len(tiny_space.candidates))
        onehot[torch.arange(len(idx)), torch.tensor(idx)] = 1.0
        assert s.evaluate(onehot) == {k: r[k] for k in ("val_acc", "val_ce")}


def test_end_to_end_writes_every_artefact(tmp_path, tiny_space, tiny_lut, tiny_data):
    out = tmp_path / "run"
    res = run_search(cfg(), out, space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    for f in ("config.json", "lut.json", "metrics.jsonl", "theta.json", "arch.json", "summary.txt"):
        assert (out / f).is_file(), f
    assert list((out / "checkpoints").glob("ckpt-*.pt"))
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    for l in lines:
        assert {"train_ce", "expected_latency_ms", "val_acc", "tau", "probs"} <= set(l)
        assert len(l["probs"]) == tiny_space.num_layers
    theta = json.loads((out / "theta.json").read_text())
    assert any(abs(v) > 0 for row in theta["theta"] for v in row)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["fingerprint"] == tiny_space.fingerprint and len(arch["blocks"]) == tiny_space.num_layers
    assert res["arch"].blocks == tuple(arch["blocks"])
    LatencyTable.load(out / "lut.json", tiny_space)
    with pytest.raises(RunDirError, match="--resume"):
        run_search(cfg(), out, space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)


def test_latency_dominated_search_moves_to_the_cheap_candidate(tmp_path, tiny_space, tiny_data):
    # 'k3_e1' costs 1 ms, everything else 20 ms: a large alpha must push theta towards it.
    L, K = tiny_space.num_layers, len(tiny_space.candidates)
    m = torch.full((L, K), 20.0, dtype=torch.float64)
    cheap = tiny_space.candidates.index("k3_e1")
    m[:, cheap] = 1.0
    lut = LatencyTable.from_matrix(tiny_space, m, fixed_ms=1.0)
    c = cfg(epochs=3, warmup_epochs=1, alpha=5.0, beta=1.0, theta_lr=0.05, loss_form="add", decide_by=None)
    s = Searcher(c, tmp_path, space=tiny_space, lut=lut, data=tiny_data, log=lambda m: None)
    s.run()
    probs = s.model.probabilities()
    assert torch.all(probs.argmax(1) == cheap)
    assert s.history[-1]["expected_latency_ms"] < s.history[0]["expected_latency_ms"]


def test_same_seed_same_result(tmp_path, tiny_space, tiny_lut, tiny_data):
    a = Searcher(cfg(epochs=2), tmp_path / "a", space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    b = Searcher(cfg(epochs=2), tmp_path / "b", space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    a.run()
    b.run()
    for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(p, q)


def test_resume_mid_epoch_is_bit_identical(tmp_path, tiny_space, tiny_lut, tiny_data):
    c = cfg(epochs=3, checkpoint_every=3)
    ref = Searcher(c, tmp_path / "ref", space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    ref.run()
    # run until a mid-epoch checkpoint of the search phase, then start a fresh searcher from it
    part = Searcher(c, tmp_path / "part", space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    part._run_epoch()
    part.phase, part.step = "w", 0
    while part.step < 4:
        part._train_step()
        part.step += 1
    part.save_checkpoint()
    again = Searcher(c, tmp_path / "part", space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    assert again.resume() is not None and (again.epoch, again.phase, again.step) == (1, "w", 4)
    again.accum = {}  # the partial run above did not accumulate metrics
    again.run()
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_warmup_from_another_alpha_ends_like_its_own_warmup(tmp_path, tiny_space, tiny_lut, tiny_data):
    quiet = dict(space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    # alpha 0.5, theta's optimiser and loss form different: none of them is read by the warm-up
    donor_cfg = cfg(epochs=3, warmup_epochs=2, alpha=0.05, theta_lr=0.05, plots=False)
    mine_cfg = cfg(epochs=3, warmup_epochs=2, alpha=0.5, loss_form="add", plots=False)
    run_search(donor_cfg, tmp_path / "donor", **quiet)
    assert (tmp_path / "donor" / "checkpoints" / "warmup.pt").is_file()
    own = run_search(mine_cfg, tmp_path / "own", **quiet)
    shared = run_search(SearchConfig(**{**mine_cfg.to_dict(), "warmup_from": str(tmp_path / "donor")}),
                        tmp_path / "shared", **quiet)
    assert own["arch"] == shared["arch"]
    a = json.loads((tmp_path / "own" / "theta.json").read_text())
    b = json.loads((tmp_path / "shared" / "theta.json").read_text())
    assert a["theta"] == b["theta"] and a["theta"] != [[0.0] * len(r) for r in a["theta"]]
    strip = lambda h: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in h]  # noqa: E731
    assert strip(own["history"]) == strip(shared["history"])
    # the shared run is a run of its own from then on: it resumes from its own checkpoints
    assert sorted(p.name for p in (tmp_path / "shared" / "checkpoints").glob("ckpt-*.pt"))


@pytest.mark.parametrize("change, msg", [
    (dict(seed=1), "seed: checkpoint 0, this search 1"),
    (dict(tau0=4.0), "tau0"),
    (dict(epochs=4), "epochs"),
])
def test_warmup_from_refuses_a_different_warmup(tmp_path, tiny_space, tiny_lut, tiny_data, change, msg):
    from fbnet_fast.errors import CheckpointError

    quiet = dict(space=tiny_space, lut=tiny_lut, data=tiny_data, log=lambda m: None)
    run_search(cfg(epochs=2, warmup_epochs=1, plots=False), tmp_path / "donor", **quiet)
    c = cfg(**{"epochs": 2, "warmup_epochs": 1, "plots": False, "warmup_from": str(tmp_path / "donor"), **change})
    with pytest.raises(CheckpointError, match=msg):
        run_search(c, tmp_path / "mine", **quiet)


def test_warmup_from_needs_a_warmup_checkpoint_and_the_same_lut(tmp_path, tiny_space, tiny_lut, tiny_data):
    from fbnet_fast.errors import CheckpointError

    quiet = dict(space=tiny_space, data=tiny_data, log=lambda m: None)
    with pytest.raises(RunDirError, match="no warm-up checkpoint"):
        run_search(cfg(epochs=2, warmup_epochs=1, warmup_from=str(tmp_path / "nothing")), tmp_path / "a",
                   lut=tiny_lut, **quiet)
    with pytest.raises(ConfigError, match="warmup_epochs is 0"):
        cfg(epochs=2, warmup_epochs=0, warmup_from=str(tmp_path)).validate()
    run_search(cfg(epochs=2, warmup_epochs=1, plots=False), tmp_path / "donor", lut=tiny_lut, **quiet)
    m = tiny_lut.matrix(tiny_space.candidates).clone()
    m[0, 0] *= 2
    other = LatencyTable.from_matrix(tiny_space, m, fixed_ms=3.0)
    with pytest.raises(CheckpointError, match="another latency table"):
        run_search(cfg(epochs=2, warmup_epochs=1, plots=False, warmup_from=str(tmp_path / "donor")),
                   tmp_path / "b", lut=other, **quiet)


def test_without_a_lut_the_search_measures_one_with_the_chosen_host_back_end(tmp_path, tiny_space, tiny_data):
    out = tmp_path / "run"
    logs: list[str] = []
    assert SearchConfig().lut_backend == "onnxruntime"  # the default (README: why)
    run_search(cfg(epochs=2, lut_backend="torch-cpu"), out, space=tiny_space, data=tiny_data, log=logs.append)
    t = LatencyTable.load(out / "lut.json", tiny_space)
    assert t.device["backend"] == "torch-cpu" and t.device["runtime"].startswith("torch")
    assert any("with torch-cpu" in m for m in logs)
    assert json.loads((out / "config.json").read_text())["search"]["lut_backend"] == "torch-cpu"
    with pytest.raises(ConfigError, match="lut_backend must be one of torch-cpu, onnxruntime, executorch"):
        cfg(lut_backend="ssh").validate()
