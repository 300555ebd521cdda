"""The latency budget: the repair step (exact, checked by enumeration), the Lagrangian, the search."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from fbnet_fast.budget import Budget, repair
from fbnet_fast.errors import ConfigError
from fbnet_fast.lut import LatencyTable
from tests.conftest import make_tiny_space


def _lut(space, seed=0, correction=None) -> LatencyTable:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(space.num_layers, len(space.candidates), generator=g, dtype=torch.float64) * 4 + 0.2
    lut = LatencyTable.from_matrix(space, m, fixed_ms=1.5)
    lut.correction = correction
    return lut


def _brute(lut, lp, window):
    """Every architecture: the fewest changes from the argmax, then the largest sum log P, inside the window."""
    start = lp.argmax(1).tolist()
    best = None
    for idx in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        t = lut.architecture_latency(list(idx))
        if not window[0] <= t <= window[1]:
            continue
        key = (sum(a != b for a, b in zip(idx, start)), -float(sum(lp[l, k] for l, k in enumerate(idx))))
        if best is None or key < best[0]:
            best = (key, list(idx))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("frac,mode", [(0.5, "target"), (0.7, "target"), (0.9, "ceiling"), (0.6, "ceiling"),
                                       (0.6, "under")])
def test_repair_is_the_fewest_changes_then_the_most_probable(seed, frac, mode):
    space = make_tiny_space()  # 5 layers x 5 candidates: 3,125 architectures to enumerate
    correction = {"scale": 1.1, "offset_ms": 0.3} if seed % 2 else None
    lut = _lut(space, seed, correction)
    lo, hi = lut.min_latency(), lut.max_latency()
    b = Budget(lo + frac * (hi - lo), mode=mode)
    lp = torch.log_softmax(torch.randn(space.num_layers, len(space.candidates),
                                       generator=torch.Generator().manual_seed(seed + 10)) * 2, 1)
    got = repair(lut, lp, b.window)
    want = _brute(lut, lp, b.window)
    assert want is not None
    assert got.ok and b.window[0] <= got.latency_ms <= b.window[1]
    assert len(got.changed) == want[0][0], (got, want)
    assert math.isclose(-float(sum(lp[l, k] for l, k in enumerate(got.indices))), want[0][1], rel_tol=1e-9)
    assert math.isclose(got.latency_ms, lut.architecture_latency(got.indices), rel_tol=1e-12)


def test_repair_keeps_an_argmax_that_fits():
    space = make_tiny_space()
    lut = _lut(space)
    lp = torch.log_softmax(torch.randn(space.num_layers, len(space.candidates)), 1)
    t = lut.architecture_latency(lp.argmax(1).tolist())
    r = repair(lut, lp, (0.0, t * 1.0001))
    assert r.changed == [] and r.indices == lp.argmax(1).tolist() and r.ok


def test_budget_checks_its_input_and_the_reachable_range():
    space = make_tiny_space()
    lut = _lut(space)
    lo, hi = lut.min_latency(), lut.max_latency()
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="--target-ms must be a positive number"):
            Budget(bad)
    with pytest.raises(ConfigError, match="budget mode"):
        Budget(1.0, mode="floor")
    with pytest.raises(ConfigError, match=f"reach under .*: {lo:.4g} to {hi:.4g} ms"):
        Budget(hi * 1.5, mode="target").check_reachable(lut)
    with pytest.raises(ConfigError, match=f"below the fastest architecture .*{lo:.4g} ms"):
        Budget(lo * 0.5, mode="ceiling").check_reachable(lut)
    with pytest.raises(ConfigError, match=f"above the slowest architecture .*{hi:.4g} ms.*reachable {lo:.4g} to"):
        Budget(hi * 1.5, mode="ceiling").check_reachable(lut)  # nothing to spend
    with pytest.raises(ConfigError, match=f"below the fastest architecture .*{lo:.4g} ms"):
        Budget(lo * 0.5, mode="under").check_reachable(lut)
    Budget(hi * 1.5, mode="under").check_reachable(lut)  # a generous bound is fine


def test_dual_ascent_moves_lambda_by_the_relative_gap():
    b = Budget(2.0, mode="under", margin=0.0, dual_lr=0.5, rho=0.0)
    assert float(b.gap(torch.tensor(3.0))) == pytest.approx(0.5)
    b.dual_step(0.5)
    assert b.lam == pytest.approx(0.25)
    b.dual_step(-2.0)
    assert b.lam == 0.0  # a met bound exerts no pull
    c = Budget(2.0, mode="ceiling", tol=0.05, dual_lr=1.0)
    assert c.window == pytest.approx((1.8, 2.0)) and c.goal_ms == pytest.approx(1.9)
    c.dual_step(-0.3)
    assert c.lam == pytest.approx(-0.3)  # a ceiling far above the latency pulls it up: spend it
    t = Budget(2.0, mode="target", dual_lr=1.0)
    t.dual_step(-0.3)
    assert t.lam == pytest.approx(-0.3)  # a target below the latency pulls it up
    # unit-free: the same relative miss in us gives the same gap
    assert float(Budget(2000.0).gap(torch.tensor(3000.0))) == pytest.approx(float(Budget(2.0).gap(torch.tensor(3.0))))


# ---- the search under a budget ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data():
    from fbnet_fast.data import build_datasets

    return build_datasets("synthetic", image_size=16, seed=0, num_train=120, num_val=32)


def _search(tmp_path, space, lut, data, **kw):
    from fbnet_fast.search import SearchConfig, run_search

    cfg = SearchConfig(**{**dict(epochs=3, warmup_epochs=1, batch_size=20, progress=False, plots=False,
                                 kernel="reference", tau_schedule="anneal", theta_lr=0.05), **kw})
    return run_search(cfg, tmp_path, space=space, lut=lut, data=data, log=lambda m: None)


def _uniform_ms(lut, space):
    k = len(space.candidates)
    return float(lut.expected_latency(torch.full((space.num_layers, k), 1.0 / k, dtype=torch.float64)))


def _spread_lut(space, seed) -> LatencyTable:
    """Per layer the latencies 0.1, 0.5, 1, 2, 4 ms (x 1 to 1.4 by depth), assigned to the candidates in a
    seeded order: 0.5x the uniform latency is reachable, and so is 0.9x, by many architectures."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    rows = [base[torch.randperm(5, generator=g)] * (1 + 0.1 * l) for l in range(space.num_layers)]
    return LatencyTable.from_matrix(space, torch.stack(rows), fixed_ms=0.3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("frac", [0.5, 0.7, 0.9])
def test_search_lands_on_the_target_and_under_the_ceiling(tmp_path, tiny_data, seed, frac):
    space = make_tiny_space()
    lut = _spread_lut(space, seed)
    t = frac * _uniform_ms(lut, space)
    for mode in ("target", "ceiling", "under"):
        res = _search(tmp_path / mode, space, lut, tiny_data, target_ms=t, budget_mode=mode, seed=seed)
        lat = lut.architecture_latency(list(res["arch"].blocks))
        assert lat == pytest.approx(res["latency_ms"])
        if mode == "target":
            assert abs(lat / t - 1) <= 0.03 + 1e-9, (lat, t)
        elif mode == "ceiling":
            assert t * (1 - 0.06) - 1e-9 <= lat <= t * (1 + 1e-12), (lat, t)
        else:
            assert lat <= t * (1 + 1e-12), (lat, t)
        summary = (tmp_path / mode / "summary.txt").read_text()
        assert f"{mode} {t:.4f} ms" in summary and "LUT prediction" in summary
        hist = [json.loads(l) for l in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        assert hist[-1]["target_ms"] == t and "budget_lambda" in hist[-1]
        arch_file = json.loads((tmp_path / mode / "arch.json").read_text())
        assert arch_file["blocks"] == list(res["arch"].blocks)


def test_a_tight_ceiling_finds_the_cheap_block(tmp_path, tiny_data):
    """One block 100x cheaper than the rest: under a ceiling only it can meet, the search picks it."""
    space = make_tiny_space()
    m = torch.full((space.num_layers, len(space.candidates)), 2.0, dtype=torch.float64)
    cheap = space.candidates.index("k3_e3")
    m[:, cheap] = 0.02
    m[:, space.candidates.index("skip")] = 1.0
    lut = LatencyTable.from_matrix(space, m, fixed_ms=0.5)
    t = 0.5 + 0.02 * space.num_layers + 1.0  # at most one layer may be anything but the cheap block
    res = _search(tmp_path, space, lut, tiny_data, target_ms=t, budget_mode="ceiling", epochs=4)
    blocks = list(res["arch"].blocks)
    assert blocks.count("k3_e3") >= space.num_layers - 1 and res["latency_ms"] <= t
    # the multiplier pulled during the search: P_theta itself moved to the cheap block
    assert max(p[cheap] for p in res["history"][-1]["probs"]) > 1.0 / len(space.candidates)


def test_budget_errors_name_the_reachable_range(tmp_path, tiny_data):
    space = make_tiny_space()
    lut = _lut(space)
    with pytest.raises(ConfigError, match="outside what this space can reach"):
        _search(tmp_path / "a", space, lut, tiny_data, target_ms=lut.max_latency() * 2, budget_mode="target")
    with pytest.raises(ConfigError, match="--target-ms must be a positive number"):
        _search(tmp_path / "b", space, lut, tiny_data, target_ms=-1.0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("mode,frac", [("target", 0.6), ("target", 0.85), ("ceiling", 0.6), ("ceiling", 0.85),
                                       ("under", 0.6)])
def test_the_multiplier_brings_the_expected_latency_to_the_budget(mode, frac):
    """The Lagrangian alone: a stand-in for the CE that prefers the slowest block in every layer
    (accuracy pulling against latency), theta under Adam, lambda by dual ascent. The expected
    latency ends on the target (or under the ceiling) without anyone choosing a weight."""
    space = make_tiny_space()
    lut = _spread_lut(space, 0)
    m = lut.matrix()
    t = frac * _uniform_ms(lut, space)
    budget = Budget(t, mode=mode)  # the defaults: eta 0.2, rho 5
    theta = torch.zeros_like(m, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    slowest = m.argmax(1)
    lats = []
    for _ in range(200):
        p = torch.softmax(theta, 1)
        ce = -torch.log(p[torch.arange(len(slowest)), slowest]).mean()
        loss = ce + budget.term(lut.expected_latency(p, m))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            lat = float(lut.expected_latency(torch.softmax(theta, 1), m))
        budget.dual_step(float(budget.gap(torch.tensor(lat))))
        lats.append(lat)
    final = sum(lats[-10:]) / 10
    assert budget.lam > 0
    if mode == "target":
        assert abs(final / t - 1) < 0.03, (final, t)
    elif mode == "ceiling":
        assert t * (1 - 0.06) <= final <= t, (final, t)
    else:
        assert final <= t, (final, t)


def test_a_budget_search_resumes_bit_identically(tmp_path, tiny_data):
    """The multiplier is part of the checkpoint: a search resumed mid-run ends as the uninterrupted one."""
    from fbnet_fast.search import SearchConfig, Searcher

    space = make_tiny_space()
    lut = _spread_lut(space, 1)
    c = SearchConfig(epochs=3, warmup_epochs=1, batch_size=20, progress=False, plots=False, kernel="reference",
                     tau_schedule="anneal", target_ms=0.7 * _uniform_ms(lut, space), budget_mode="target")
    quiet = dict(space=space, lut=lut, data=tiny_data, log=lambda m: None)
    ref = Searcher(c, tmp_path / "ref", **quiet)
    ref.run()
    part = Searcher(c, tmp_path / "part", **quiet)
    part._run_epoch()
    part._run_epoch()  # a search epoch: lambda has moved
    assert part.budget.lam != 0.0
    again = Searcher(c, tmp_path / "part", **quiet)
    assert again.resume() is not None and again.budget.lam == part.budget.lam
    again.run()
    assert again.budget.lam == ref.budget.lam
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_multi_target_budget_is_on_the_combined_latency(tmp_path, tiny_data):
    from fbnet_fast.multitarget import MultiTargetLatency

    space = make_tiny_space()
    a, b = _spread_lut(space, 0), _spread_lut(space, 1)
    a.device, b.device = {"backend": "devA"}, {"backend": "devB"}
    multi = MultiTargetLatency([a, b])
    lo, hi = multi.min_latency(), multi.max_latency()
    t = lo + 0.4 * (hi - lo)
    res = _search(tmp_path, space, multi, tiny_data, target_ms=t, budget_mode="ceiling")
    assert multi.architecture_latency(list(res["arch"].blocks)) <= t
    assert res["latency_ms"] <= t and res["within_budget"]


def test_target_fraction_sets_t_from_the_uniform_latency(tmp_path, tiny_data):
    space = make_tiny_space()
    lut = _spread_lut(space, 2)
    logs = []
    from fbnet_fast.search import SearchConfig, run_search

    cfg = SearchConfig(epochs=2, warmup_epochs=1, batch_size=20, progress=False, plots=False, kernel="reference",
                       target_fraction=0.6)
    res = run_search(cfg, tmp_path, space=space, lut=lut, data=tiny_data, log=logs.append)
    t = 0.6 * _uniform_ms(lut, space)
    assert res["target_ms"] == pytest.approx(t) and res["latency_ms"] <= t
    assert any(f"ceiling {t:.4f} ms (0.6 x the uniform-theta latency" in m for m in logs)
    assert SearchConfig(target_ms=1.0, target_fraction=0.5).budget(4.0).target_ms == 1.0  # target_ms wins
    with pytest.raises(ConfigError, match="--target-fraction must be a positive number"):
        SearchConfig(target_fraction=0).validate()


@pytest.mark.parametrize("frac,corr", [(0.25, None), (0.5, {"scale": 1.1, "offset_ms": 0.3}), (0.8, None)])
def test_band_sampler_is_uniform_over_the_band(frac, corr):
    """Every architecture of the band is drawn equally often (enumerated: 5 layers x 5 candidates),
    none outside it, also in a band far from the uniform latency that plain rejection rarely hits."""
    from fbnet_fast.budget import sample_in_band

    space = make_tiny_space()
    lut = _lut(space, 3, corr)
    fast, slow = lut.min_latency(), lut.max_latency()
    t = fast + frac * (slow - fast)
    lo, hi = 0.95 * t, 1.05 * t
    band = {idx for idx in itertools.product(range(5), repeat=5) if lo <= lut.architecture_latency(list(idx)) <= hi}
    assert 20 <= len(band) <= 600
    n = 300 * len(band)
    archs, draws = sample_in_band(lut, lo, hi, n, seed=1)
    assert len(archs) == n and draws >= n
    counts: dict[tuple, int] = {}
    for a in archs:
        counts[tuple(a)] = counts.get(tuple(a), 0) + 1
    assert set(counts) <= band
    # chi-square against uniform over the band: mean len(band) - 1, sd sqrt(2 (len - 1))
    chi2 = sum((counts.get(a, 0) - 300) ** 2 / 300 for a in band)
    assert chi2 < len(band) - 1 + 5 * math.sqrt(2 * (len(band) - 1)), chi2
    again, _ = sample_in_band(lut, lo, hi, 10, seed=1)
    assert again == archs[:10]  # seeded


def test_band_sampler_refuses_a_band_out_of_reach():
    from fbnet_fast.budget import sample_in_band

    lut = _lut(make_tiny_space(), 0)
    with pytest.raises(ConfigError, match="reachable range"):
        sample_in_band(lut, 0.1 * lut.min_latency(), 0.5 * lut.min_latency(), 3)
    with pytest.raises(ConfigError, match="empty"):
        sample_in_band(lut, 2.0, 1.0, 3)
