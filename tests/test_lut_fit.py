"""Tables fitted to whole networks (fbnet_fast.measure.fit, ``fbnet-fast lut fit``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fbnet_fast.errors import ConfigError, LUTError
from fbnet_fast.lut import LatencyEntry, LatencyTable
from fbnet_fast.measure.fit import compare, fit_networks, fit_table, fitted_lut, predict_ms, split_heldout
from tests.conftest import make_tiny_space


def _uniform_idx(space, n, seed):
    g = np.random.default_rng(seed)
    return g.integers(0, len(space.candidates), size=(n, space.num_layers))


def _truth(space, seed=0):
    g = np.random.default_rng(seed)
    return g.uniform(0.2, 3.0, size=(space.num_layers, len(space.candidates))), 0.7


def test_the_fit_recovers_a_known_additive_table_exactly():
    """Measurements that *are* an additive table: with (almost) no pull toward a wrong block-wise
    table, the fit predicts held-out networks to 1e-6 relative, and recovers every entry up to the
    per-layer constant no additive data can identify."""
    space = make_tiny_space()
    truth, fixed = _truth(space)
    wrong = truth * np.random.default_rng(1).uniform(0.5, 1.5, size=truth.shape)  # not a scale of the truth
    table = LatencyTable.from_matrix(space, torch.tensor(wrong), fixed_ms=0.3)
    idx = _uniform_idx(space, 120, 2)
    y = predict_ms(truth, fixed, idx)
    fit = fit_table(table, space, idx.tolist(), y.tolist(), lambdas=(1e-9,), tie=False)
    test = _uniform_idx(space, 50, 3)
    np.testing.assert_allclose(predict_ms(fit.matrix, fit.fixed_ms, test), predict_ms(truth, fixed, test), rtol=1e-6)
    d = fit.matrix - truth  # equal up to a constant per layer
    np.testing.assert_allclose(d - d.mean(1, keepdims=True), 0.0, atol=1e-6)
    assert fit.unseen_entries == 0 and fit.n_networks == 120


def _pairwise_truth(space, idx, truth, fixed):
    """The additive truth plus a context effect: a block right after a block of the same kernel runs
    40 % faster (a runtime fusing across the boundary), which no block timed alone shows."""
    k = [c.split("_")[0] for c in space.candidates]
    y = predict_ms(truth, fixed, idx)
    for a in range(len(idx)):
        for l in range(1, space.num_layers):
            if k[idx[a, l]] == k[idx[a, l - 1]] and k[idx[a, l]] != "skip":
                y[a] -= 0.4 * truth[l, idx[a, l]]
    return y


def test_with_a_planted_context_effect_the_fitted_table_beats_the_blockwise_one_held_out():
    space = make_tiny_space()
    truth, fixed = _truth(space, 4)
    table = LatencyTable.from_matrix(space, torch.tensor(truth), fixed_ms=fixed)  # exact blocks, alone
    g = np.random.default_rng(5)
    # biased draws, as a search visits: each layer prefers one block
    pref = g.dirichlet(np.full(len(space.candidates), 0.5), size=space.num_layers)
    idx = np.stack([[g.choice(len(space.candidates), p=pref[l]) for l in range(space.num_layers)]
                    for _ in range(300)])
    y = _pairwise_truth(space, idx, truth, fixed)
    fit_i, test_i = split_heldout(len(idx), 0.2, seed=0)
    fit = fit_table(table, space, idx[fit_i].tolist(), y[fit_i].tolist(), tie=False)
    held = compare(table, space, fit, idx[test_i].tolist(), y[test_i].tolist())
    assert held["fitted"]["median_abs_pct_error"] < held["scale_offset"]["median_abs_pct_error"]
    assert held["fitted"]["median_abs_pct_error"] < 0.5 * held["blockwise"]["median_abs_pct_error"]
    assert held["fitted"]["kendall_tau"] >= held["blockwise"]["kendall_tau"]
    assert set(fit.cv_error) == {0.01, 0.1, 1.0, 10.0, 100.0} and fit.lam in fit.cv_error


def test_bad_input_is_one_clear_error():
    space = make_tiny_space()
    truth, fixed = _truth(space)
    table = LatencyTable.from_matrix(space, torch.tensor(truth), fixed_ms=fixed)
    idx = _uniform_idx(space, 6, 0)
    with pytest.raises(ConfigError, match="too few to fit"):
        fit_table(table, space, idx.tolist(), predict_ms(truth, fixed, idx).tolist())
    idx = _uniform_idx(space, 40, 0)
    y = predict_ms(truth, fixed, idx)
    with pytest.raises(ConfigError, match="40 architectures but 39 measurements"):
        fit_table(table, space, idx.tolist(), y[:-1].tolist())
    y[3] = 0.0
    with pytest.raises(ConfigError, match="> 0 ms"):
        fit_table(table, space, idx.tolist(), y.tolist())
    with pytest.raises(ConfigError, match="has 2 layers"):
        fit_table(table, space, [[0, 1]] * 40, predict_ms(truth, fixed, idx).tolist())


def test_a_fitted_table_round_trips_records_its_fit_and_old_files_load(tmp_path):
    space = make_tiny_space()
    truth, fixed = _truth(space)
    table = LatencyTable.from_matrix(space, torch.tensor(truth), fixed_ms=fixed)
    table.correction = {"offset_ms": 0.1, "scale": 1.1}
    idx = _uniform_idx(space, 60, 0)
    fit = fit_table(table, space, idx.tolist(), (1.2 * predict_ms(truth, fixed, idx)).tolist())
    out = fitted_lut(table, space, fit, {"heldout": {"networks": 0}})
    out.save(tmp_path / "f.json")
    back = LatencyTable.load(tmp_path / "f.json", space)
    assert back.correction is None and back.fit["networks"] == 60 and back.fit["lambda"] == fit.lam
    assert back.fit["blockwise"]["ms"][0] == pytest.approx(truth[0].tolist(), rel=1e-5)
    torch.testing.assert_close(back.matrix(), torch.tensor(fit.matrix))
    # schema version 1 (no fit field) still loads
    d = table.to_dict()
    d["schema_version"] = 1
    d.pop("fit")
    (tmp_path / "v1.json").write_text(json.dumps(d))
    assert LatencyTable.load(tmp_path / "v1.json", space).fit is None
    d["fit"] = [1, 2]
    d["schema_version"] = 2
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(LUTError, match="'fit' must be null or an object"):
        LatencyTable.load(tmp_path / "bad.json", space)


def test_fit_networks_cover_fast_and_slow_ends():
    space = make_tiny_space()
    truth, fixed = _truth(space, 6)
    table = LatencyTable.from_matrix(space, torch.tensor(truth), fixed_ms=fixed)
    archs, sources = fit_networks(space, table, 200, seed=0)
    n = {s: sources.count(s) for s in set(sources) if not s.startswith("preset:")}
    assert n == {"uniform": 100, "fast": 50, "slow": 50}
    lat = {s: np.mean([table.architecture_latency(list(a.blocks)) for a, t in zip(archs, sources) if t == s])
           for s in n}
    assert lat["fast"] < lat["uniform"] < lat["slow"]
    with pytest.raises(ConfigError, match="-n must be >= 1"):
        fit_networks(space, table, 0)


def test_a_network_measurement_killed_mid_way_resumes_with_what_is_missing(tmp_path):
    from fbnet_fast.measure.additivity import validate_lut
    from tests.test_measure import _CountingBackend

    space = make_tiny_space()
    truth, fixed = _truth(space)
    table = LatencyTable.from_matrix(space, torch.tensor(truth), fixed_ms=fixed)
    archs, sources = fit_networks(space, table, 30, seed=0)
    partial = tmp_path / "fit.json.networks.partial"
    b1 = _CountingBackend(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        validate_lut(table, space, archs, sources, b1, progress=False, partial=partial, group_size=10)
    saved = json.loads(partial.read_text())  # complete JSON, written after each group of 10
    assert len(saved["passes"][0]) == len(set(b1.measured)) and 0 < len(b1.measured) <= 20
    b2 = _CountingBackend()
    rep = validate_lut(table, space, archs, sources, b2, progress=False, partial=partial, group_size=10)
    assert not partial.exists()
    rest = len({"net:" + ",".join(a.blocks) for a in archs}) - len(set(b1.measured))
    assert rest > 0 and not set(b2.measured[:rest]) & set(b1.measured)  # pass 1 went on where it stopped
    assert len(b2.measured) < 2 * len(archs)  # ... and nothing of it was measured twice
    full = validate_lut(table, space, archs, sources, _CountingBackend(), progress=False)
    assert rep.measured_ms == full.measured_ms


class _SerializingBackend:
    """A fake back end that "exports" every job through a :class:`ModelCache` (counting the exports)
    and records the groups it was given; ``stop_after`` exports it is killed."""

    def __new__(cls, *a, **kw):
        from fbnet_fast.measure.core import Backend, ModelCache

        class Impl(Backend):
            name = "fake-serializing"

            def __init__(self, stop_after=None, **kw):
                super().__init__(**kw)
                self.stop_after, self.exported, self.groups = stop_after, [], []
                self._models = ModelCache("fake v1")

            def _export(self, module, shape):
                if self.stop_after is not None and len(self.exported) == self.stop_after:
                    raise KeyboardInterrupt
                self.exported.append(repr(module))
                return repr(module).encode()

            def measure(self, groups, on_result):
                for g in groups:
                    self.groups.append(len(g))
                    models = [self._models.get(job, self._export) for job in g]  # all prepared, then timed
                    for job, m in zip(g, models):
                        ms = len(m) / 1000 + (sum(map(ord, job.key)) % 13) / 100
                        on_result(job, LatencyEntry(ms, ms * 0.9, ms * 1.2, self.repeats))

        return Impl(*a, **kw)


def test_networks_are_one_interleaved_group_their_p10_is_the_latency_and_a_killed_run_reuses_its_exports(tmp_path):
    """By default every network is timed in one group (drift reaches all alike) and its latency is
    the 10th percentile of its samples; a run killed while exporting (ONNX, .pte: most of a fit's
    time) exports only the models it had not made when started again, and leaves nothing behind."""
    from fbnet_fast.measure.additivity import validate_lut

    space = make_tiny_space()
    truth, fixed = _truth(space)
    table = LatencyTable.from_matrix(space, torch.tensor(truth), fixed_ms=fixed)
    archs, sources = fit_networks(space, table, 24, seed=1)
    n, distinct = len(archs), len({a.blocks for a in archs})  # a tiny space's draws can repeat
    partial = tmp_path / "fit.json.networks.partial"
    b1 = _SerializingBackend(stop_after=9)
    with pytest.raises(KeyboardInterrupt):
        validate_lut(table, space, archs, sources, b1, progress=False, partial=partial)
    assert b1.groups == [n] and len(b1.exported) == 9
    assert len(list((tmp_path / "fit.json.networks.partial.models").glob("*.bin"))) == 9
    b2 = _SerializingBackend()
    rep = validate_lut(table, space, archs, sources, b2, progress=False, partial=partial)
    assert len(b2.exported) == distinct - 9 and not set(b2.exported) & set(b1.exported)
    assert not partial.exists() and not (tmp_path / "fit.json.networks.partial.models").exists()
    b3 = _SerializingBackend()
    med = validate_lut(table, space, archs, sources, b3, progress=False, statistic="median")
    assert len(b3.exported) == distinct  # no folder without a partial file
    np.testing.assert_allclose(rep.measured_ms, 0.9 * np.asarray(med.measured_ms), rtol=1e-12)
    np.testing.assert_allclose(rep.measured_p10_ms, rep.measured_ms, rtol=1e-12)
    assert rep.device["network_statistic"] == "p10" and med.device["network_statistic"] == "median"
    assert rep.device["network_group_size"] == n
    b4 = _SerializingBackend()
    validate_lut(table, space, archs, sources, b4, progress=False, group_size=10)
    assert b4.groups == [10, 10, n - 20] * b4.passes
    with pytest.raises(ConfigError, match="statistic must be one of p10, median"):
        validate_lut(table, space, archs, sources, b4, progress=False, statistic="mean")
    with pytest.raises(ConfigError, match="groups of at least 2"):
        validate_lut(table, space, archs, sources, b4, progress=False, group_size=1)


def test_a_model_cache_directory_keeps_formats_apart(tmp_path):
    """Two back ends (two tags: format, dtype, seed) caching in one folder never read each other's bytes."""
    from fbnet_fast.measure.core import Job, ModelCache

    job = Job("net:a", lambda: torch.nn.Conv2d(3, 4, 1), (1, 3, 8, 8))
    a, b = ModelCache("onnx fp32"), ModelCache("onnx int8")
    a.directory = b.directory = tmp_path
    assert a.get(job, lambda m, s: b"A") == b"A" and b.get(job, lambda m, s: b"B") == b"B"
    again = ModelCache("onnx fp32")
    again.directory = tmp_path
    assert again.get(job, lambda m, s: pytest.fail("made again")) == b"A"
    assert len(list(tmp_path.glob("*.bin"))) == 2 and not list(tmp_path.glob("*.tmp*"))


def test_layers_of_one_shape_share_their_entries_and_a_shape_tied_truth_is_recovered():
    """tie=True (the default): one unknown per (distinct layer shape, candidate). A truth that is the
    same for every layer of a shape is recovered exactly; the fitted table repeats it per layer."""
    from fbnet_fast.measure.fit import shape_groups
    from fbnet_fast.space import Stage

    space = make_tiny_space(stages=[Stage(8, 3, 1), Stage(16, 3, 2)])
    groups = shape_groups(space)
    assert len(set(groups.tolist())) < space.num_layers  # the tiny space has repeated shapes
    g = np.random.default_rng(5)
    z = g.uniform(0.2, 3.0, size=(int(groups.max()) + 1, len(space.candidates)))
    truth, fixed = z[groups], 0.4
    table = LatencyTable.from_matrix(space, torch.tensor(truth * 1.3), fixed_ms=0.1)
    idx = _uniform_idx(space, 80, 6)
    fit = fit_table(table, space, idx.tolist(), predict_ms(truth, fixed, idx).tolist(), lambdas=(1e-9,))
    assert fit.extra == {"tie": "shape", "unknowns": (int(groups.max()) + 1) * len(space.candidates) + 1}
    for a in range(space.num_layers):
        for b in range(space.num_layers):
            if groups[a] == groups[b]:
                np.testing.assert_array_equal(fit.matrix[a], fit.matrix[b])
    test = _uniform_idx(space, 40, 7)
    np.testing.assert_allclose(predict_ms(fit.matrix, fit.fixed_ms, test), predict_ms(truth, fixed, test), rtol=1e-6)


def test_a_fitted_tables_predictors_are_the_ones_its_fit_reported_and_held_out_draws_avoid_its_networks():
    """``predictors`` rebuilds, from the fitted file alone, the three predictors ``lut fit`` compared:
    on the fit's own held-out networks ``heldout_report`` gives exactly the fit's figures; the
    networks ``lut validate`` draws are distinct and never among the fit's."""
    from fbnet_fast.measure.fit import arch_key, heldout_networks, heldout_report, predictors

    space = make_tiny_space()
    truth, fixed = _truth(space, 4)
    table = LatencyTable.from_matrix(space, torch.tensor(truth * 0.8), fixed_ms=fixed)
    idx = _uniform_idx(space, 150, 6)
    y = _pairwise_truth(space, idx, truth, fixed)
    fit_i, test_i = split_heldout(len(idx), 0.2, seed=0)
    fit = fit_table(table, space, idx[fit_i].tolist(), y[fit_i].tolist(), tie=False)
    held = compare(table, space, fit, idx[test_i].tolist(), y[test_i].tolist())
    keys = [arch_key(i) for i in idx[fit_i]]
    t = LatencyTable.from_dict(json.loads(json.dumps(fitted_lut(table, space, fit, {"fit_networks": keys}).to_dict())))
    assert set(predictors(t, space)) == {"blockwise", "scale_offset", "fitted"}
    rep = heldout_report(t, space, idx[test_i].tolist(), y[test_i].tolist(), ["uniform"] * len(test_i))
    for name in held:  # the file keeps the block-wise entries to 1e-6 ms (>= 0.2 ms here): ~5e-6 relative
        for k, v in held[name].items():
            assert rep[name]["all"][k] == pytest.approx(v, rel=1e-4, abs=1e-9), (name, k)
    archs, sources = heldout_networks(space, t, 30, 20, seed=1, exclude=keys)
    got = [arch_key(a.indices(space)) for a in archs]
    assert len(set(got)) == 50 and not set(got) & set(keys)
    assert sources.count("uniform") == 30 and sources.count("searched-like") == 20
    # searched-like draws are concentrated and lean to the table's fast blocks, uniform ones do not
    lat = lambda sel: np.mean([t.architecture_latency(a.indices(space)) for a, s in zip(archs, sources) if s == sel])  # noqa: E731
    assert lat("searched-like") < lat("uniform")
    rep = heldout_report(t, space, archs, predict_ms(truth, fixed, np.asarray([a.indices(space) for a in archs])),
                         sources)
    assert set(rep["fitted"]) == {"all", "uniform", "searched-like"} and rep["fitted"]["uniform"]["n"] == 30
    # a block-wise table has only its sum (and its correction once `lut validate` stored one)
    assert set(predictors(table, space)) == {"blockwise"}
    with pytest.raises(ConfigError, match="network counts"):
        heldout_networks(space, t, -1, 0)
