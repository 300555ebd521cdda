"""Block measurement: sampling rule, deduplication, back ends, resume from a partial file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fbnet_fast.blocks import build_block
from fbnet_fast.errors import ConfigError, LUTError
from fbnet_fast.lut import LatencyEntry, LatencyTable
from fbnet_fast.measure import (Backend, CUDABackend, OnnxRuntimeBackend, block_jobs, get_backend, job_key,
                                measure_lut, time_module)
from fbnet_fast.measure.cuda import time_cuda_interleaved
from fbnet_fast.space import Stage
from fbnet_fast.measure.remote_runner import quantile, resolve_clock, summarize, time_interleaved
from tests.conftest import make_tiny_space, needs_executorch

FAST = dict(repeats=2, warmup=1, min_sample_ms=0.05, passes=1)


def _two_stage_space(**kw):
    """Layers: 8->8 s1, 8->16 s2, then two identical 16->16 s1 layers (deduplicated)."""
    return make_tiny_space(stages=[Stage(8, 1, 1), Stage(16, 3, 2)], **kw)


# ---- sampling rule ----------------------------------------------------------------------------

def test_quantile_and_summary_match_numpy_rule():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    s = summarize(xs)
    ref = torch.quantile(torch.tensor(xs, dtype=torch.float64), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    assert (s["p10_ms"], s["median_ms"], s["p90_ms"]) == pytest.approx(ref.tolist())
    assert s["repeats"] == 5
    assert quantile([7.0], 0.9) == 7.0


def test_interleaved_rounds_with_a_fake_clock():
    """Each call advances a fake clock by a fixed cost: samples are exact and rounds interleave."""
    now = [0.0]
    order = []

    def block(name, cost_s):
        def fn():
            order.append(name)
            now[0] += cost_s
        return fn

    fns = [block("a", 1e-4), block("b", 4e-4)]
    s = time_interleaved(fns, repeats=3, warmup=2, min_sample_ms=1.0, clock=lambda: now[0])
    assert s[0] == pytest.approx([0.1] * 3) and s[1] == pytest.approx([0.4] * 3)
    # warm-up + 2 calibration calls per block, then rounds: 10 calls of a, 2 of b (1 ms / cost), 3 times
    timed = order[8:]
    assert timed == (["a"] * 10 + ["b"] * 2) * 3
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved(fns, repeats=0)


def test_primed_shuffled_rounds_time_each_sample_warm_and_vary_the_order():
    """``prime``: untimed calls right before each sample (a call after a cold start costs more here,
    and the samples must not see it); ``shuffle_seed``: every round visits all callables once, in
    an order that changes between rounds and repeats with the seed."""
    now = [0.0]
    order = []
    last = [None]

    def net(name, cost_s):
        def fn():
            order.append(name)
            now[0] += cost_s * (3.0 if last[0] != name else 1.0)  # cold: the previous call was another net
            last[0] = name
        return fn

    fns = [net(c, 2e-3) for c in "abcdef"]
    cold = time_interleaved(fns, repeats=20, warmup=0, min_sample_ms=0.0, clock=lambda: now[0])
    assert all(x == pytest.approx(6.0) for row in cold for x in row)  # every sample after another net: cold
    order.clear()
    warm = time_interleaved(fns, repeats=20, warmup=0, min_sample_ms=0.0, clock=lambda: now[0], prime=1,
                            shuffle_seed=3)
    assert all(x == pytest.approx(2.0) for row in warm for x in row)
    rounds = [order[12 + 12 * r:24 + 12 * r:2] for r in range(20)]  # after calibration; (prime, sample) pairs
    assert all(sorted(r) == list("abcdef") for r in rounds) and len({tuple(r) for r in rounds}) > 10
    order.clear()
    time_interleaved(fns, repeats=20, warmup=0, min_sample_ms=0.0, clock=lambda: now[0], prime=1, shuffle_seed=3)
    assert [order[12 + 12 * r:24 + 12 * r:2] for r in range(20)] == rounds
    with pytest.raises(ValueError, match="prime"):
        time_interleaved(fns, repeats=1, prime=-1)


def test_clock_choice():
    assert resolve_clock("auto", 1) == "cpu" and resolve_clock("auto", 2) == "wall"
    assert resolve_clock("wall", 1) == "wall"
    with pytest.raises(ConfigError, match="clock"):
        get_backend("torch-cpu", clock="tsc")


def test_time_module_is_an_entry():
    e = time_module(lambda: sum(range(100)), repeats=2, warmup=1, min_sample_ms=0.05)
    assert isinstance(e, LatencyEntry) and e.repeats == 2 and 0 < e.p10_ms <= e.median_ms <= e.p90_ms


# ---- jobs --------------------------------------------------------------------------------------

def test_identical_blocks_are_one_job():
    space = _two_stage_space()
    groups = block_jobs(space)
    shapes = {l.shape_key() for l in space.layers}
    K = len(space.candidates)
    assert len(groups) == len(shapes) + 1  # + stem/head
    keys = [j.key for g in groups for j in g]
    assert len(keys) == len(set(keys)) == len(shapes) * K + 2
    for l in space.layers:  # every (layer, candidate) has its job
        for c in space.candidates:
            assert job_key(l.shape_key(), c) in keys
    # labels name the layers a job stands for; input shapes are the layer's
    g = groups[2]
    assert g[0].label.startswith("L02-03") and g[0].shape == (1, 16, 8, 8)


def test_fbnet_cifar_dedup_counts():
    from fbnet_fast.space import load_space

    space = load_space("fbnet-cifar", width_mult=0.25)
    assert sum(len(g) for g in block_jobs(space)) == 10 * 9 + 2


# ---- back ends -----------------------------------------------------------------------------------

def test_torch_cpu_lut_describes_the_device(tmp_path):
    space = _two_stage_space()
    t = measure_lut(space, progress=False, output=tmp_path / "l.json", **FAST)
    again = LatencyTable.load(tmp_path / "l.json", space)
    dev = again.device
    assert dev["backend"] == "torch-cpu" and dev["threads"] == 1 and dev["clock"] == "cpu"
    assert dev["runtime"].startswith("torch ") and dev["batch_size"] == 1 and dev["input_size"] == 16
    assert dev["device_name"] and dev["repeats"] == 2
    # layers 2 and 3 share a shape: one measurement, the same entry
    assert again.layers[2] == again.layers[3]
    assert all(math.isfinite(e.median_ms) and e.median_ms >= 0 for layer in t.layers for e in layer.values())
    assert t.layers[0]["skip"].median_ms < t.layers[0]["k5_e6"].median_ms  # identity vs a full block


def test_onnxruntime_backend():
    space = _two_stage_space(candidates=["k3_e1_g2", "k5_e6", "skip"])
    t = measure_lut(space, backend="onnxruntime", progress=False, **FAST)
    t.check_space(space)
    assert t.device["backend"] == "onnxruntime" and t.device["runtime"].startswith("onnxruntime ")
    assert isinstance(get_backend("onnxruntime", **FAST), OnnxRuntimeBackend)


class _FakeEvent:
    """A CUDA event on a fake GPU clock: every block call advances it by 0.25 ms."""

    gpu_ms = 0.0
    syncs = 0

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = _FakeEvent.gpu_ms

    def synchronize(self):
        _FakeEvent.syncs += 1

    def elapsed_time(self, other):
        return other.t - self.t


class _FakeCuda:
    Event = _FakeEvent

    @staticmethod
    def is_available():
        return True

    @staticmethod
    def synchronize():
        _FakeEvent.syncs += 1

    @staticmethod
    def get_device_name():
        return "Fake GPU 9000"


def test_cuda_event_timing_logic_with_a_stand_in():
    def fn():
        _FakeEvent.gpu_ms += 0.25

    _FakeEvent.syncs = 0
    s = time_cuda_interleaved([fn, fn], repeats=4, warmup=1, min_sample_ms=1.0, cuda=_FakeCuda)
    assert s == [[0.25] * 4, [0.25] * 4]
    assert _FakeEvent.syncs >= 8  # every sample waits for its end event
    # primed and shuffled (how whole networks are timed): a call right after the other net costs 3x
    last, seen = [None], []

    def net(name):
        def call():
            _FakeEvent.gpu_ms += 0.25 * (3.0 if last[0] != name else 1.0)
            last[0] = name
            seen.append(name)
        return call

    fns = [net(c) for c in "abcd"]
    s = time_cuda_interleaved(fns, repeats=10, warmup=1, min_sample_ms=0.0, cuda=_FakeCuda, prime=1, shuffle_seed=0)
    assert all(x == pytest.approx(0.25) for row in s for x in row)
    rounds = [tuple(seen[8 + 8 * r:16 + 8 * r:2]) for r in range(10)]  # after warm-up + calibration
    assert all(sorted(r) == list("abcd") for r in rounds) and len(set(rounds)) > 3
    # the back end end to end, with the stand-in and CPU tensors
    class OnFakeGPU(CUDABackend):
        def prepare(self, job):  # the real block runs (on the CPU); the fake GPU clock charges its size
            run, cost = super().prepare(job), 0.01 + 1e-4 * sum(p.numel() for p in job.build().parameters())

            def call():
                run()
                _FakeEvent.gpu_ms += cost
            return call

    space = _two_stage_space(candidates=["k3_e1", "skip"])
    t = measure_lut(space, backend=OnFakeGPU(cuda=_FakeCuda, device="cpu", **FAST), progress=False)
    assert t.device["device_name"] == "Fake GPU 9000" and t.device["clock"] == "cuda-events"
    nparams = sum(p.numel() for p in build_block("k3_e1", space.layers[1]).parameters())
    assert t.layers[1]["k3_e1"].median_ms == pytest.approx(0.01 + 1e-4 * nparams)
    assert t.layers[0]["skip"].median_ms == pytest.approx(0.01)  # identity: no parameters


def test_cuda_backend_without_gpu_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="CUDA"):
        get_backend("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backend_on_a_real_gpu():  # pragma: no cover - runs only where a GPU is present
    space = _two_stage_space()
    t = measure_lut(space, backend="cuda", progress=False, **FAST)
    t.check_space(space)
    assert t.device["device_name"] == torch.cuda.get_device_name()


def test_unknown_backend_and_bad_settings():
    with pytest.raises(ConfigError, match="unknown back end"):
        get_backend("tpu")
    with pytest.raises(ConfigError, match="repeats"):
        get_backend("torch-cpu", repeats=0)
    with pytest.raises(ConfigError, match="threads"):
        get_backend("torch-cpu", threads=0)


# ---- resume -------------------------------------------------------------------------------------

class _CountingBackend(Backend):
    """Deterministic fake: latency from the job key; can stop after ``stop_after`` groups."""

    name = "fake"

    def __init__(self, stop_after=None, **kw):
        super().__init__(**kw)
        self.stop_after, self.measured = stop_after, []

    def measure(self, groups, on_result):
        for gi, g in enumerate(groups):
            if self.stop_after is not None and gi == self.stop_after:
                raise KeyboardInterrupt
            for job in g:
                self.measured.append(job.key)
                ms = (sum(map(ord, job.key)) % 97) / 10 + 0.1
                on_result(job, LatencyEntry(ms, ms * 0.9, ms * 1.1, self.repeats))


def test_interrupted_run_resumes_from_the_partial_file(tmp_path):
    space = make_tiny_space()
    out = tmp_path / "lut.json"
    partial = Path(str(out) + ".partial")
    b1 = _CountingBackend(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        measure_lut(space, backend=b1, output=out, progress=False)
    assert not out.exists() and partial.exists()
    saved = json.loads(partial.read_text())  # complete JSON: written atomically per group
    assert len(saved["passes"][0]) == len(b1.measured) == 2 * len(space.candidates)
    assert saved["passes"][1] == {}
    b2 = _CountingBackend()
    t = measure_lut(space, backend=b2, output=out, progress=False)
    n_jobs = sum(len(g) for g in block_jobs(space))
    # only what was missing: the rest of pass 1, all of pass 2
    assert len(b1.measured) + len(b2.measured) == 2 * n_jobs
    assert sorted(b2.measured[:n_jobs - len(b1.measured)]) == sorted(
        j.key for g in block_jobs(space) for j in g if j.key not in b1.measured)
    assert out.exists() and not partial.exists()
    full = measure_lut(space, backend=_CountingBackend(), progress=False)
    torch.testing.assert_close(t.matrix(), full.matrix())
    assert t.fixed == full.fixed


def test_partial_from_other_settings_is_not_reused(tmp_path):
    space = make_tiny_space()
    out = tmp_path / "lut.json"
    with pytest.raises(KeyboardInterrupt):
        measure_lut(space, backend=_CountingBackend(stop_after=1, threads=2), output=out, progress=False)
    b = _CountingBackend(threads=1)
    measure_lut(space, backend=b, output=out, progress=False)
    assert len(b.measured) == 2 * sum(len(g) for g in block_jobs(space))
    # --restart ignores a matching partial too
    with pytest.raises(KeyboardInterrupt):
        measure_lut(space, backend=_CountingBackend(stop_after=1), output=out, progress=False)
    b = _CountingBackend()
    measure_lut(space, backend=b, output=out, progress=False, resume=False)
    assert len(b.measured) == 2 * sum(len(g) for g in block_jobs(space))


def test_backend_that_drops_a_result_is_an_error():
    class Lossy(_CountingBackend):
        def measure(self, groups, on_result):
            super().measure([g[:-1] for g in groups], on_result)

    with pytest.raises(LUTError, match="no timing"):
        measure_lut(make_tiny_space(), backend=Lossy(), progress=False)


def test_each_entry_is_its_best_pass():
    """A disturbance during one pass (here: pass 1 of one job is 10x slow) does not reach the LUT."""

    class Disturbed(_CountingBackend):
        pass_no = 0

        def measure(self, groups, on_result):
            Disturbed.pass_no += 1

            def wrapped(job, e):
                if Disturbed.pass_no == 1 and job.key == "stem":
                    e = LatencyEntry(e.median_ms * 10, e.p10_ms * 10, e.p90_ms * 10, e.repeats)
                on_result(job, e)
            super().measure(groups, wrapped)

    space = make_tiny_space()
    t = measure_lut(space, backend=Disturbed(), progress=False)
    ref = measure_lut(space, backend=_CountingBackend(passes=1), progress=False)
    assert t.fixed == ref.fixed and t.device["passes"] == 2
    torch.testing.assert_close(t.matrix(), ref.matrix())
    with pytest.raises(ConfigError, match="passes"):
        get_backend("torch-cpu", passes=0)


@pytest.mark.parametrize("name,kw", [
    ("torch-cpu", dict(threads=1, repeats=7, warmup=2, min_sample_ms=0.5, passes=3, clock="wall", channels_last=False)),
    ("onnxruntime", dict(threads=1, repeats=5, warmup=1, min_sample_ms=0.2, passes=1, clock="cpu")),
    ("onnxruntime", dict(threads=2, repeats=3, passes=2, dtype="int8")),
    pytest.param("executorch", dict(threads=2, repeats=4, warmup=2, min_sample_ms=0.3, passes=3, clock="cpu",
                                    dtype="int8"), marks=needs_executorch),
])
def test_every_backend_rebuilds_itself_from_its_device_record(name, kw):
    """Backend.from_device(backend.describe()) is the same back end: what crossdeploy and lut validate rely on."""
    from fbnet_fast.measure import BACKENDS, backend_from_device

    made = get_backend(name, **kw)
    again = backend_from_device(made.describe())
    assert type(again) is BACKENDS[name] and again.settings() == made.settings()
    assert (again.repeats, again.warmup, again.min_sample_ms) == (made.repeats, made.warmup, made.min_sample_ms)
    assert again.dtype == made.dtype == kw.get("dtype", "fp32")
    assert backend_from_device(made.describe(), passes=4).passes == 4  # overrides win


def test_ssh_device_record_names_the_board():
    from fbnet_fast.measure import SSHBackend, backend_from_device

    rec = {"backend": "ssh", "board": "pi@10.0.0.7:2222", "format": "torchscript", "threads": 2, "repeats": 9}
    kw = SSHBackend.device_kwargs(rec)
    assert kw == {"threads": 2, "repeats": 9, "host": "10.0.0.7", "user": "pi", "port": 2222, "runtime": "torch"}
    with pytest.raises(ConfigError, match="names no machine"):
        backend_from_device({"backend": "given"})
    with pytest.raises(ConfigError, match="unknown back end 'tpu'"):
        backend_from_device({"backend": "tpu"})


def test_backend_cli_options_come_from_the_registry():
    """Each back end adds its own options; the shared ones and a LUT's record fill the rest."""
    from fbnet_fast.cli import build_parser
    from fbnet_fast.cli.lut import _make_backend

    parser = build_parser()
    args = parser.parse_args(["lut", "measure", "-o", "x.json", "--backend", "torch-cpu", "--no-channels-last",
                              "--repeats", "5"])
    b = _make_backend(args)
    assert (b.name, b.channels_last, b.repeats, b.threads) == ("torch-cpu", False, 5, 1)
    args = parser.parse_args(["lut", "validate", "lut.json", "--passes", "2"])
    record = {"backend": "torch-cpu", "repeats": 11, "memory_format": "contiguous", "passes": 3}
    b = _make_backend(args, record)
    assert (b.repeats, b.channels_last, b.passes) == (11, False, 2)  # from the record, but --passes wins
    # timing whole networks: the record's block repeats and passes give way to the networks' own defaults
    from fbnet_fast.cli.lut import NETWORK_PASSES, NETWORK_REPEATS

    b = _make_backend(args, record, networks=True)
    assert (b.repeats, b.channels_last, b.passes) == (NETWORK_REPEATS, False, 2)
    b = _make_backend(parser.parse_args(["lut", "fit", "lut.json", "--repeats", "7"]), record, networks=True)
    assert (b.repeats, b.passes) == (7, NETWORK_PASSES)
    args = parser.parse_args(["lut", "measure", "-o", "x.json", "--backend", "ssh", "--host", "board",
                              "--remote-runtime", "torch", "-O", "A=b"])
    from fbnet_fast.measure import SSHBackend

    assert SSHBackend.cli_kwargs(args) == {"host": "board", "runtime": "torch", "ssh_options": ["A=b"]}
