"""Multi-target latency: the combination's numbers and gradients, files, and a search that lands
between the two single-target searches on each device (synthetic LUTs with opposite preferences)."""

import math

import pytest
import torch

from conftest import make_tiny_space
from fbnet_fast.errors import ConfigError, LUTError
from fbnet_fast.lut import LatencyTable
from fbnet_fast.multitarget import MultiTargetLatency, load_latency_model

# Per candidate: device A loves k3_e1, device B loves k5_e6, k3_e3 is a fair compromise.
CANDS = ["k3_e1", "k3_e3", "k5_e6"]
COST_A = [1.0, 3.0, 10.0]
COST_B = [10.0, 3.0, 1.0]


def _space():
    return make_tiny_space(candidates=CANDS)


def _lut(space, costs, backend):
    m = torch.tensor(costs, dtype=torch.float64).repeat(space.num_layers, 1)
    return LatencyTable.from_matrix(space, m, fixed_ms=2.0, device={"backend": backend, "threads": 1})


@pytest.fixture
def pair():
    space = _space()
    return space, _lut(space, COST_A, "devA"), _lut(space, COST_B, "devB")


def test_mean_is_a_weighted_sum_of_log_latencies(pair):
    space, a, b = pair
    mt = MultiTargetLatency([a, b], weights="1,3")
    assert mt.weights == [0.25, 0.75] and mt.names == ["devA-1t", "devB-1t"]
    w = torch.softmax(torch.randn(space.num_layers, len(CANDS), dtype=torch.float64), 1).requires_grad_()
    lat = mt.expected_latency(w)
    la, lb = a.expected_latency(w, a.matrix(CANDS)), b.expected_latency(w, b.matrix(CANDS))
    # log LAT = sum_d w_d log LAT_d + a constant (the normalisation), gradients alike
    const = math.log(mt.common_ms) - 0.25 * math.log(mt.ref_ms[0]) - 0.75 * math.log(mt.ref_ms[1])
    assert torch.allclose(torch.log(lat), 0.25 * torch.log(la) + 0.75 * torch.log(lb) + const)
    (g,) = torch.autograd.grad(torch.log(lat), w)
    (g_ref,) = torch.autograd.grad(0.25 * torch.log(la) + 0.75 * torch.log(lb), w)
    assert torch.allclose(g, g_ref)


def test_normalised_devices_read_the_same_at_uniform_start_and_max_is_the_worst(pair):
    space, a, b = pair
    uniform = torch.full((space.num_layers, len(CANDS)), 1 / 3, dtype=torch.float64)
    for combine in ("mean", "max"):
        mt = MultiTargetLatency([a, b], combine=combine)
        assert float(mt.expected_latency(uniform)) == pytest.approx(mt.common_ms)
    mt = MultiTargetLatency([a, b], combine="max")
    all_a = [0] * space.num_layers
    per = mt.per_target_latency(all_a)
    assert per == {"devA-1t": pytest.approx(2 + space.num_layers), "devB-1t": pytest.approx(2 + 10 * space.num_layers)}
    assert mt.architecture_latency(all_a) == pytest.approx(per["devB-1t"] * mt.common_ms / mt.ref_ms[1])
    assert mt.min_latency() <= min(mt.architecture_latency([i] * space.num_layers) for i in range(3))
    assert mt.matrix().shape == (2, space.num_layers, 3)


def test_files_round_trip_and_errors(tmp_path, pair):
    space, a, b = pair
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    mt = load_latency_model(f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", space, weights="2,1", combine="max")
    assert isinstance(mt, MultiTargetLatency) and mt.combine == "max"
    mt.save(tmp_path / "multi.json")
    back = load_latency_model(tmp_path / "multi.json", space)
    assert back.weights == pytest.approx([2 / 3, 1 / 3]) and back.combine == "max"
    assert back.architecture_latency([1] * space.num_layers) == pytest.approx(mt.architecture_latency([1] * space.num_layers))
    assert isinstance(load_latency_model(tmp_path / "a.json", space), LatencyTable)
    with pytest.raises(ConfigError, match="weight"):
        load_latency_model(f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", space, weights="1,2,3")
    with pytest.raises(ConfigError, match="combination"):
        MultiTargetLatency([a, b], combine="min")
    other = make_tiny_space(candidates=CANDS, head_filters=64)
    with pytest.raises(LUTError, match="same space"):
        MultiTargetLatency([a, _lut(other, COST_B, "x")])


def _search(tmp_path, name, lut, space):
    from fbnet_fast.data import build_datasets
    from fbnet_fast.search import SearchConfig, run_search

    data = build_datasets("synthetic", image_size=16, seed=0, num_train=200, num_val=32)
    # Latency-dominated: large alpha in the additive form and a fast theta LR make the outcome
    # depend on the LUTs alone (10 theta steps), so the test is deterministic, not a coin toss.
    cfg = SearchConfig(epochs=6, warmup_epochs=1, batch_size=16, progress=False, kernel="reference", alpha=5.0,
                       target_fraction=None, tau_schedule="paper",
                       loss_form="add", theta_lr=0.3, plots=False, latency_unit="ms")
    return run_search(cfg, tmp_path / name, space=space, lut=lut, data=data, log=lambda m: None)


@pytest.fixture(scope="module")
def single_target_runs(tmp_path_factory):
    """The two single-target searches, shared by both combinations."""
    space = _space()
    a, b = _lut(space, COST_A, "devA"), _lut(space, COST_B, "devB")
    root = tmp_path_factory.mktemp("single")
    return space, a, b, _search(root, "a", a, space), _search(root, "b", b, space)


@pytest.mark.parametrize("combine", ["mean", "max"])
def test_multi_target_search_lands_between_the_single_target_searches(tmp_path, single_target_runs, combine):
    space, a, b, res_a, res_b = single_target_runs
    mt = MultiTargetLatency([a, b], combine=combine)
    res_m = _search(tmp_path, "m", mt, space)
    idx = {k: r["arch"].indices(space) for k, r in (("a", res_a), ("b", res_b), ("m", res_m))}
    on_a = {k: a.architecture_latency(i) for k, i in idx.items()}
    on_b = {k: b.architecture_latency(i) for k, i in idx.items()}
    assert on_a["a"] < on_a["m"] < on_a["b"]
    assert on_b["b"] < on_b["m"] < on_b["a"]
    assert res_m["latency_per_target_ms"] == {"devA-1t": pytest.approx(on_a["m"]), "devB-1t": pytest.approx(on_b["m"])}
    # the run folder keeps the combination, so a resumed or sampled run reads the same latency
    again = load_latency_model(tmp_path / "m" / "lut.json", space)
    assert isinstance(again, MultiTargetLatency) and again.combine == combine


def test_search_options_reach_the_config():

    from fbnet_fast.cli import build_parser
    from fbnet_fast.search import SearchConfig

    args = build_parser().parse_args(["search", "--lut", "a.json,b.json", "--lut-weights", "1,2",
                                      "--lut-combine", "max"])
    from fbnet_fast.cli.search import search_config_from_args

    cfg = search_config_from_args(args)
    assert (cfg.lut, cfg.lut_weights, cfg.lut_combine) == ("a.json,b.json", "1,2", "max")
    with pytest.raises(ConfigError, match="lut_combine"):
        SearchConfig(lut_combine="min").validate()
