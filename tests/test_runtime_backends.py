"""Latency back ends of the deployment runtimes: ExecuTorch (XNNPACK) fp32 and int8, ONNX Runtime int8.

A one-layer space with two candidates keeps every LUT at four jobs (two blocks, stem, head);
lowering a block to an ExecuTorch program takes 1.5-4 s on 2 cores, so each ExecuTorch LUT is
measured once per module and read by several tests (the module fixtures are used only by tests
marked ``needs_executorch``). The ExecuTorch tests skip where ExecuTorch is not installed, except
under ``FBNET_FAST_REQUIRE_EXECUTORCH=1``: ``.ci/run`` sets it and installs the extra, so CI runs them.
"""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pytest
import torch

from fbnet_fast.cli import main
from fbnet_fast.errors import ConfigError
from fbnet_fast.lut import LatencyTable
from fbnet_fast.measure import (BACKENDS, ExecuTorchBackend, OnnxRuntimeBackend, backend_from_device, block_jobs,
                                get_backend, measure_lut)
from fbnet_fast.measure.core import load_partial
from fbnet_fast.runtimes import EXECUTORCH_INSTALL
from fbnet_fast.space import Architecture, Stage
from tests.conftest import make_tiny_space, needs_executorch

FAST = dict(repeats=2, warmup=1, min_sample_ms=0.05)
CLI_FAST = ["--repeats", "2", "--warmup", "1", "--min-sample-ms", "0.05", "--passes", "1"]


def _space():
    return make_tiny_space(stages=[Stage(8, 1, 1)], candidates=["k3_e1", "skip"])


@pytest.fixture(scope="module")
def space():
    return _space()


class _Counting:
    """Wraps a module-level function of ``module`` and counts its calls (restored by ``undo``)."""

    def __init__(self, module, name):
        self.module, self.name, self.calls = module, name, 0
        self.orig = getattr(module, name)

        def wrapped(*a, **kw):
            self.calls += 1
            return self.orig(*a, **kw)

        setattr(module, name, wrapped)

    def undo(self):
        setattr(self.module, self.name, self.orig)


@pytest.fixture(scope="module")
def et_fp32(tmp_path_factory, space):
    """An ExecuTorch fp32 LUT measured in two passes, and how many programs were lowered."""
    import fbnet_fast.measure.executorch_xnnpack as et

    out = tmp_path_factory.mktemp("et") / "et_fp32.json"
    count = _Counting(et, "to_pte")
    try:
        measure_lut(space, backend="executorch", output=out, progress=False, passes=2, **FAST)
    finally:
        count.undo()
    return out, count.calls


@pytest.fixture(scope="module")
def et_int8(tmp_path_factory, space):
    """An ExecuTorch int8 LUT measured by a run interrupted after the first layer shape, then resumed."""
    import fbnet_fast.measure.executorch_xnnpack as et

    out = tmp_path_factory.mktemp("et") / "et_int8.json"
    partial = Path(str(out) + ".partial")

    class Interrupted(ExecuTorchBackend):
        def prepare(self, job):
            if job.key == "stem":
                raise KeyboardInterrupt
            return super().prepare(job)

    with pytest.raises(KeyboardInterrupt):
        measure_lut(_space(), backend=Interrupted(dtype="int8", passes=1, **FAST), output=out, progress=False)
    saved = json.loads(partial.read_text())
    count = _Counting(et, "to_pte")
    try:
        # the resumed run's stem program, checked against eager in a test; measuring reuses it
        resumed = ExecuTorchBackend(dtype="int8", passes=1, **FAST)
        stem = next(j for g in block_jobs(space) for j in g if j.key == "stem")
        torch.manual_seed(0)
        got = resumed.prepare(stem)()
        torch.manual_seed(0)
        with torch.no_grad():
            ref = stem.build().eval()(torch.randn(stem.shape, generator=torch.Generator().manual_seed(0)))
        measure_lut(space, backend=resumed, output=out, progress=False)
    finally:
        count.undo()
    return out, saved, count.calls, (got, ref)


# ---- ExecuTorch ------------------------------------------------------------------------------

@needs_executorch
def test_executorch_fp32_lut_round_trips_with_its_device_record(et_fp32, space):
    out, lowered = et_fp32
    t = LatencyTable.load(out, space)
    dev = t.device
    assert dev["backend"] == "executorch" and dev["dtype"] == "fp32" and dev["delegate"] == "xnnpack"
    assert dev["runtime"].startswith("executorch 1.") and dev["threads"] == 1 and dev["clock"] == "cpu"
    assert dev["passes"] == 2 and "quantization" not in dev
    assert all(math.isfinite(e.median_ms) and e.median_ms > 0 and e.repeats == 2
               for layer in t.layers for e in layer.values())
    assert set(t.fixed) == {"stem", "head"}
    assert lowered == 4  # one program per job, reused by the second pass
    # the record re-creates the same back end (lut validate, lut fit, crossdeploy)
    again = backend_from_device(dev)
    made = ExecuTorchBackend(passes=2, **FAST)
    assert type(again) is ExecuTorchBackend and again.settings() == made.settings() and again.dtype == "fp32"


@needs_executorch
def test_executorch_int8_lut_resumes_from_its_partial_file_with_its_dtype(et_int8, space):
    out, saved, lowered, (got, ref) = et_int8
    # the interrupted run saved the first layer shape, under settings that name the dtype
    assert saved["settings"]["dtype"] == "int8" and saved["settings"]["backend"] == "executorch"
    assert sorted(saved["passes"][0]) == sorted(j.key for j in block_jobs(space)[0])
    # the resumed run lowered only the missing jobs (stem, head) and left no partial file
    assert lowered == 2 and not Path(str(out) + ".partial").exists()
    t = LatencyTable.load(out, space)
    assert t.device["dtype"] == "int8" and "PT2E" in t.device["quantization"] and t.device["delegate"] == "xnnpack"
    assert all(math.isfinite(e.median_ms) and e.median_ms > 0 for layer in t.layers for e in layer.values())
    again = backend_from_device(t.device)
    assert again.dtype == "int8" and again.settings()["dtype"] == "int8"
    # the timed program is really quantized: near eager, but not equal to it
    err = (got - ref).abs().max().item()
    assert 0 < err < 0.05 * ref.abs().max().item()


@needs_executorch
def test_an_fp32_run_does_not_resume_int8_timings(tmp_path, space):
    p = tmp_path / "x.partial"
    from fbnet_fast.measure.core import write_partial
    from fbnet_fast.lut import LatencyEntry

    e = LatencyEntry(1.0, 0.9, 1.1, 2)
    int8 = ExecuTorchBackend(dtype="int8", **FAST)
    write_partial(p, [{"stem": e}], space=space, settings=int8.settings(), batch_size=1)
    assert load_partial(p, space, ExecuTorchBackend(dtype="int8", **FAST).settings(), 1) == [{"stem": e}]
    assert load_partial(p, space, ExecuTorchBackend(**FAST).settings(), 1) == []


@needs_executorch
def test_whole_networks_run_on_executorch_as_lut_validate_measures_them(et_fp32, space):
    """lut validate / lut fit re-create the back end from the LUT's record and time whole networks
    (jobs of build_model) through measure_jobs, as here."""
    from fbnet_fast.measure import Job, measure_jobs
    from fbnet_fast.model import build_model

    t = LatencyTable.load(et_fp32[0], space)
    backend = backend_from_device(t.device, passes=1)
    assert isinstance(backend, ExecuTorchBackend) and backend.dtype == "fp32"
    arch = Architecture(("k3_e1",))
    job = Job("net:k3_e1", lambda: build_model(space, arch), (1, space.in_channels, 16, 16), "arch 0")
    torch.manual_seed(0)
    out = backend.prepare(job)()  # the lowered network's output, against eager on the same input
    torch.manual_seed(0)
    with torch.no_grad():
        ref = job.build().eval()(torch.randn(job.shape, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    entry = measure_jobs(backend, [[job]], progress=False)["net:k3_e1"]  # reuses the program
    assert entry.repeats == 2 and 0 < entry.p10_ms <= entry.median_ms <= entry.p90_ms


@needs_executorch
def test_lut_diff_of_fp32_and_int8_tables(et_fp32, et_int8, capsys):
    capsys.readouterr()
    assert main(["lut", "diff", str(et_fp32[0]), str(et_int8[0])]) == 0
    out = capsys.readouterr().out
    a_line, b_line = out.splitlines()[1], out.splitlines()[3]
    assert "executorch" in a_line and "fp32" in a_line and "int8" in b_line
    assert "candidate pair(s) flip order" in out
    assert main(["lut", "show", str(et_int8[0])]) == 0
    assert "int8" in capsys.readouterr().out.splitlines()[1]


@needs_executorch
def test_executorch_threads_are_pinned_and_recorded(space):
    from fbnet_fast.runtimes import executorch_threads

    b = ExecuTorchBackend(threads=2, passes=1, **FAST)
    b.measure([], lambda job, e: None)  # pins the pool without timing anything
    assert executorch_threads() == 2 and b.describe()["threads"] == 2 and b.clock == "wall"
    ExecuTorchBackend(threads=1, **FAST).measure([], lambda job, e: None)
    assert executorch_threads() == 1


# ---- ONNX Runtime int8 -------------------------------------------------------------------------

def test_onnxruntime_int8_lut_and_its_record(tmp_path, space):
    import fbnet_fast.runtimes as rt

    out = tmp_path / "ort8.json"
    count = _Counting(rt, "onnx_int8")
    try:
        measure_lut(space, backend="onnxruntime", dtype="int8", output=out, progress=False, passes=2, **FAST)
    finally:
        count.undo()
    assert count.calls == 4  # quantized once per job, reused by the second pass
    t = LatencyTable.load(out, space)
    assert t.device["backend"] == "onnxruntime" and t.device["dtype"] == "int8"
    assert "QDQ" in t.device["quantization"]
    assert all(math.isfinite(e.median_ms) and e.median_ms > 0 for layer in t.layers for e in layer.values())
    again = backend_from_device(t.device)
    assert isinstance(again, OnnxRuntimeBackend) and again.dtype == "int8"
    assert again.settings() == OnnxRuntimeBackend(dtype="int8", passes=2, **FAST).settings()
    # a LUT written before dtype existed is fp32
    old = {k: v for k, v in t.device.items() if k not in ("dtype", "quantization")}
    assert backend_from_device(old).dtype == "fp32"


def test_int8_graph_does_not_depend_on_the_calibration_data(space):
    """What calibration sees sets scales and zero points only: the quantized graph, hence the latency, is
    the same for standard-normal data and for data 50x wider and shifted."""
    import onnx

    from fbnet_fast.blocks import build_block
    from fbnet_fast.measure.onnxrt import calibration_batches, export_onnx
    from fbnet_fast.runtimes import onnx_int8

    layer = space.layers[0]
    shape = (1, layer.c_in, layer.in_size, layer.in_size)
    fp32 = export_onnx(build_block("k3_e1", layer), shape)
    a = onnx.load_from_string(onnx_int8(fp32, calibration_batches(shape, 0), input_name="x"))
    b = onnx.load_from_string(onnx_int8(fp32, [50 * x + 3 for x in calibration_batches(shape, 1)], input_name="x"))
    ops = lambda m: [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node]  # noqa: E731
    assert ops(a) == ops(b) and any(n.op_type == "QuantizeLinear" for n in a.graph.node)
    scales = lambda m: {i.name: onnx.numpy_helper.to_array(i).tolist() for i in m.graph.initializer  # noqa: E731
                        if i.name.endswith("_scale")}
    assert scales(a).keys() == scales(b).keys() and scales(a) != scales(b)


def test_dtype_from_the_command_line(tmp_path, space, capsys):
    f = tmp_path / "space.json"
    f.write_text(json.dumps(space.to_dict()))
    out = tmp_path / "ort8.json"
    assert main(["lut", "measure", "--space", str(f), "--width-mult", "1", "--backend", "onnxruntime", "--dtype",
                 "int8", "-o", str(out), "--no-progress", *CLI_FAST]) == 0
    assert LatencyTable.load(out, space).device["dtype"] == "int8"
    assert "int8" in capsys.readouterr().out
    from fbnet_fast.cli import build_parser
    from fbnet_fast.cli.lut import _make_backend

    # lut validate / lut fit take the dtype from the LUT's record unless given
    args = build_parser().parse_args(["lut", "validate", str(out)])
    assert _make_backend(args, LatencyTable.load(out).device).dtype == "int8"
    args = build_parser().parse_args(["lut", "validate", str(out), "--dtype", "fp32"])
    assert _make_backend(args, LatencyTable.load(out).device).dtype == "fp32"


def test_fp32_and_int8_of_one_runtime_are_two_targets(space):
    """crossdeploy and multi-target search name targets from the record: the dtype keeps them apart."""
    from fbnet_fast.multitarget import MultiTargetLatency
    from fbnet_fast.research.crossdeploy import target_name

    dev = {"backend": "executorch", "threads": 1}
    tables = [LatencyTable.from_matrix(space, torch.ones(1, 2), device={**dev, "dtype": d}) for d in ("fp32", "int8")]
    assert [target_name(t) for t in tables] == ["executorch 1t", "executorch int8 1t"]
    multi = MultiTargetLatency(tables)
    assert multi.names == ["executorch-1t", "executorch-int8-1t"]
    assert len(multi.per_target_latency(["skip"])) == 2


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--backend", "torch-cpu", "--dtype", "int8"],
     "back end 'torch-cpu' has no int8 path; int8 latency tables are measured with --backend onnxruntime or "
     "executorch or ssh"),
    (["--backend", "onnxruntime", "--dtype", "int4"], "unknown dtype 'int4'; expected one of fp32, int8"),
    (["--backend", "ssh", "--host", "board", "--remote-runtime", "torch", "--dtype", "int8"],
     "remote runtime 'torch' has no int8 path"),
])
def test_bad_dtype_is_one_clear_error(tmp_path, capsys, argv, message):
    capsys.readouterr()
    assert main(["lut", "measure", "-o", str(tmp_path / "x.json"), "--no-progress", *argv, *CLI_FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "x.json").exists()


def test_every_backend_names_its_dtypes():
    assert {n for n, c in BACKENDS.items() if "int8" in c.DTYPES} == {"onnxruntime", "executorch", "ssh"}
    with pytest.raises(ConfigError, match="no int8 path"):
        get_backend("cuda", dtype="int8")
    with pytest.raises(ConfigError, match="unknown dtype"):
        get_backend("executorch", dtype="fp16")


def test_missing_executorch_is_one_line_with_the_install_recipe(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_executorch(name, *a, **kw):
        if name == "executorch" or name.startswith("executorch."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    with pytest.raises(ConfigError) as e:
        get_backend("executorch")
    assert "\n" not in str(e.value) and EXECUTORCH_INSTALL in str(e.value)
    capsys.readouterr()
    assert main(["lut", "measure", "-o", str(tmp_path / "x.json"), "--backend", "executorch", *CLI_FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "back end 'executorch' needs ExecuTorch" in err and EXECUTORCH_INSTALL in err
