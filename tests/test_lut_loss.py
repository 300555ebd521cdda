import json
import math

import pytest
import torch

from fbnet_fast.errors import ConfigError, LUTError
from fbnet_fast.loss import LatencyLoss, resolve_unit
from fbnet_fast.lut import LatencyTable
from fbnet_fast.measure import measure_lut
from tests.conftest import make_tiny_space


def test_expected_latency_matches_hand_computation(tiny_space, tiny_lut):
    L, K = tiny_space.num_layers, len(tiny_space.candidates)
    w = torch.softmax(torch.randn(L, K, dtype=torch.float64), 1).requires_grad_()
    lat = tiny_lut.expected_latency(w)
    m = tiny_lut.matrix()
    hand = sum(float(w.detach()[l, i]) * float(m[l, i]) for l in range(L) for i in range(K)) + 3.0
    assert math.isclose(float(lat), hand, rel_tol=1e-12)
    lat.backward()
    torch.testing.assert_close(w.grad, m)  # d LAT / d w = LUT


def test_loss_value_and_gradient_mul_and_add():
    ce_logits = torch.tensor([[2.0, 0.5, -1.0]])
    target = torch.tensor([0])
    lat = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    ce = float(torch.nn.functional.cross_entropy(ce_logits, target))
    t = LatencyLoss(alpha=0.2, beta=0.6, form="mul", unit="ms")(ce_logits, target, lat)
    assert math.isclose(float(t.loss), ce * 0.2 * math.log(20.0) ** 0.6, rel_tol=1e-6)
    t.loss.backward()
    # d/dLAT [ce * a * log(LAT)^b] = ce * a * b * log(LAT)^(b-1) / LAT
    assert math.isclose(float(lat.grad), ce * 0.2 * 0.6 * math.log(20.0) ** -0.4 / 20.0, rel_tol=1e-6)
    lat.grad = None
    t = LatencyLoss(alpha=0.2, beta=0.6, form="add", unit="us")(ce_logits, target, lat)
    assert math.isclose(float(t.loss), ce + 0.2 * math.log(20000.0) ** 0.6, rel_tol=1e-6)
    t.loss.backward()
    assert math.isclose(float(lat.grad), 0.2 * 0.6 * math.log(20000.0) ** -0.4 / 20.0, rel_tol=1e-6)


@pytest.mark.parametrize("kw, msg", [({"alpha": -1}, "alpha"), ({"beta": 0}, "beta"), ({"form": "pow"}, "form")])
def test_bad_loss_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        LatencyLoss(**kw)


def test_latency_unit_resolution():
    assert resolve_unit("auto", 20.0) == "ms"
    assert resolve_unit("auto", 0.5) == "us"
    with pytest.raises(ConfigError, match="latency-unit us"):
        resolve_unit("ms", 0.9)


def test_lut_round_trip_and_validation(tmp_path, tiny_space, tiny_lut):
    p = tmp_path / "lut.json"
    tiny_lut.save(p)
    again = LatencyTable.load(p, tiny_space)
    torch.testing.assert_close(again.matrix(), tiny_lut.matrix())
    assert again.fixed_ms == 3.0
    good = json.loads(p.read_text())

    def broken(mutate, msg):
        d = json.loads(json.dumps(good))
        mutate(d)
        p.write_text(json.dumps(d))
        with pytest.raises(LUTError, match=msg) as e:
            LatencyTable.load(p, tiny_space)
        assert str(p) in str(e.value)

    broken(lambda d: d["layers"][2]["latency"].pop("k5_e6"), r"layers\[2\]: no entry for candidate 'k5_e6'")
    broken(lambda d: d["layers"].pop(), "LUT has 4 layers")
    broken(lambda d: d["layers"][1]["latency"]["skip"].update(median_ms=-1.0), r"layers\[1\].latency.skip.median_ms")
    broken(lambda d: d["layers"][1]["latency"]["skip"].update(p90_ms=float("nan")), "finite")
    broken(lambda d: d["space"].update(fingerprint="0123456789abcdef"), "fingerprint")
    broken(lambda d: d.update(schema_version=99), "schema_version")
    p.write_text("{not json")
    with pytest.raises(LUTError, match="not valid JSON"):
        LatencyTable.load(p)
    with pytest.raises(LUTError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


def test_lut_correction_is_applied(tiny_space, tiny_lut):
    tiny_lut.correction = {"offset_ms": 1.0, "scale": 2.0}
    idx = [0] * tiny_space.num_layers
    raw = float(sum(tiny_lut.matrix()[l, 0] for l in range(tiny_space.num_layers))) + 3.0
    assert math.isclose(tiny_lut.architecture_latency(idx), 2.0 * raw + 1.0)


def test_host_measurement_covers_the_space_and_dedups():
    space = make_tiny_space(stages=[make_tiny_space().stages[0], make_tiny_space().stages[1]])
    t = measure_lut(space, repeats=3, warmup=1, progress=False)
    t.check_space(space)
    m = t.matrix()
    assert torch.all(m >= 0) and torch.isfinite(m).all()
    # layers 1 and 2 differ in shape; a stride-2 'skip' is a conv, an identity skip is ~free
    assert t.layers[0]["skip"].median_ms < t.layers[0]["k5_e6"].median_ms
    assert t.device["backend"] == "torch-cpu" and t.device["threads"] >= 1
    assert all(e.repeats == 3 for layer in t.layers for e in layer.values())


def _distinct_lut(space) -> LatencyTable:
    """Every (layer, candidate) a different latency, so a column mix-up cannot go unnoticed."""
    m = torch.rand(space.num_layers, len(space.candidates), generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64) * 5 + 0.5
    return LatencyTable.from_matrix(space, m, fixed_ms=0.7)


def test_lut_in_another_column_order_is_read_by_name(tmp_path, tiny_space):
    """A file listing the candidates in another order (hand-edited, another tool) means the same table."""
    lut = _distinct_lut(tiny_space)
    d = lut.to_dict()
    d["candidates"] = d["candidates"][::-1]
    for layer in d["layers"]:
        layer["latency"] = dict(reversed(list(layer["latency"].items())))
    p = tmp_path / "reversed.json"
    p.write_text(json.dumps(d))
    raw = LatencyTable.load(p)
    assert raw.candidates == tiny_space.candidates[::-1]  # unbound: the file's own order
    for got in (LatencyTable.load(p, tiny_space), LatencyTable.from_dict(d, space=tiny_space), raw):
        got.check_space(tiny_space)
        assert got.candidates == list(tiny_space.candidates)
        torch.testing.assert_close(got.matrix(), lut.matrix(), rtol=0, atol=0)
        w = torch.softmax(torch.randn(tiny_space.num_layers, len(tiny_space.candidates)), 1).double()
        torch.testing.assert_close(got.expected_latency(w), lut.expected_latency(w), rtol=0, atol=0)
        for k, name in enumerate(tiny_space.candidates):
            every = [k] * tiny_space.num_layers
            assert got.architecture_latency(every) == lut.architecture_latency(every)
            assert got.architecture_latency([name] * tiny_space.num_layers) == lut.architecture_latency(every)
    mixed = [tiny_space.candidates[l % len(tiny_space.candidates)] for l in range(tiny_space.num_layers)]
    assert raw.architecture_latency(mixed) == lut.architecture_latency(mixed)  # names work unbound too
    saved = tmp_path / "saved.json"
    got.save(saved)
    assert json.loads(saved.read_text())["candidates"] == list(tiny_space.candidates)


def test_search_with_a_reordered_lut_is_the_same_search(tmp_path, tiny_space):
    """theta, the argmax and every latency the run reports are identical with the columns reversed."""
    from fbnet_fast.data import build_datasets
    from fbnet_fast.search import SearchConfig, run_search

    data = build_datasets("synthetic", image_size=16, seed=0, num_train=96, num_val=32)
    lut = _distinct_lut(tiny_space)
    d = lut.to_dict()
    d["candidates"] = d["candidates"][::-1]
    runs = {}
    for name, table in (("as measured", lut), ("reversed", LatencyTable.from_dict(d))):
        cfg = SearchConfig(epochs=2, warmup_epochs=1, batch_size=16, progress=False, plots=False,
                           kernel="reference", loss_form="add", alpha=1.0)
        out = tmp_path / name.replace(" ", "_")
        runs[name] = run_search(cfg, out, space=tiny_space, lut=table, data=data, log=lambda m: None)
        runs[name]["metrics"] = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        runs[name]["summary"] = (out / "summary.txt").read_text()
    a, b = runs["as measured"], runs["reversed"]
    assert a["arch"].blocks == b["arch"].blocks
    for ma, mb in zip(a["metrics"], b["metrics"]):
        for key in ("expected_latency_ms", "argmax_latency_ms", "probs"):
            assert ma.get(key) == mb.get(key), key
    assert a["summary"].replace("as_measured", "reversed") == b["summary"]
