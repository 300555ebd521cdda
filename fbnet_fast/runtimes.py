"""Deployment runtimes beside eager torch: ExecuTorch (XNNPACK) programs in fp32 and int8, and
ONNX Runtime int8 (static QDQ). One place lowers a module for each runtime and runs the result,
so that the latency back ends (``measure/executorch_xnnpack.py``, ``measure/onnxrt.py``) time exactly what
``fbnet-fast export`` writes.

Every flow is the runtime's own recommended one; nothing is hand-rolled:

* **ExecuTorch fp32**: ``torch.export.export`` -> ``to_edge_transform_and_lower`` with the
  ``XnnpackPartitioner`` -> ``.to_executorch()``; the ``.pte`` bytes run through
  ``executorch.runtime`` (the same XNNPACK kernels a phone runs, here on the host CPU).
* **ExecuTorch int8**: the PT2E flow: ``torch.export`` -> ``prepare_pt2e`` with the
  ``XNNPACKQuantizer`` (symmetric, per-channel weights, static activations) -> calibration
  batches -> ``convert_pt2e`` -> re-export -> the same lowering.
* **ONNX Runtime int8**: ``quant_pre_process`` (shape inference and graph optimisation, as
  onnxruntime's quantization guide asks first) -> ``quantize_static`` in the QDQ format with
  per-channel int8 weights and uint8 activations, calibrated by min-max on the given batches.

ExecuTorch is an optional extra (``pip install ".[executorch]"``, README "ExecuTorch");
:func:`require_executorch` names the install recipe in one line when it is missing.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["DTYPES", "EXECUTORCH_INSTALL", "executorch_available", "require_executorch", "executorch_version",
           "to_pte", "load_pte", "set_executorch_threads", "executorch_threads", "onnx_int8", "check_dtype"]

DTYPES = ("fp32", "int8")
EXECUTORCH_INSTALL = ('pip install --no-deps "executorch==1.5.1" "torchao>=0.18,<0.19" && '
                      'pip install flatbuffers ruamel.yaml tabulate pyyaml packaging')


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return dtype


@contextlib.contextmanager
def _quiet(native: bool = False):
    """torchao and ExecuTorch print load notices on import and lowering (torchao's logger: CUDA-only
    libraries it cannot load; ExecuTorch's C++ log on file descriptor 2: cpuinfo, the thread pool's
    size); they say nothing about the result. ``native`` also holds back what C++ writes to fd 2
    meanwhile, and shows it only when the block fails."""
    import logging

    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    saved = None
    if native:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real fd 2 (an embedding host)
            saved = None
    sink = tempfile.TemporaryFile() if saved is not None else None
    if sink is not None:
        os.dup2(sink.fileno(), 2)
    ok = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
        ok = True
    finally:
        log.setLevel(level)
        if sink is not None:
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
            sink.close()


def executorch_available() -> bool:
    try:
        with _quiet(native=True):
            import executorch.runtime  # noqa: F401
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except Exception:
        return False
    return True


def require_executorch(what: str = "this") -> None:
    """Raise one ConfigError with the install recipe when ExecuTorch cannot be imported."""
    try:
        with _quiet(native=True):
            import executorch.runtime  # noqa: F401
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except Exception as e:
        raise ConfigError(f"{what} needs ExecuTorch, which is not installed ({type(e).__name__}: {e}); install "
                          f"the extra without touching torch: {EXECUTORCH_INSTALL}") from None


def executorch_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source build
        return "unknown"


def to_pte(model: nn.Module, example: torch.Tensor, *, dtype: str = "fp32",
           calib: Iterable[torch.Tensor] | None = None) -> bytes:
    """``model`` (eval mode, fixed input shape of ``example``) lowered to an ExecuTorch program
    with the XNNPACK delegate; ``dtype="int8"`` quantizes it first with the PT2E flow, observing
    activations on the ``calib`` batches (``example`` alone when none are given)."""
    check_dtype(dtype)
    require_executorch(f"an ExecuTorch {dtype} program")
    with _quiet(native=True):
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        model = model.eval()
        with torch.no_grad():
            ep = torch.export.export(model, (example,))
            if dtype == "int8":
                from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                    XNNPACKQuantizer, get_symmetric_quantization_config)
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
                prepared = prepare_pt2e(ep.module(), quantizer)
                for x in (list(calib) if calib is not None else [example]):
                    prepared(x)
                ep = torch.export.export(convert_pt2e(prepared), (example,))
            prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        return bytes(prog.buffer)


# How many times this process resized ExecuTorch's thread pool. XNNPACK binds a loaded program to the
# pool it found: run after a resize, the program waits forever on the old pool's workers (seen: an export
# hung in `pthreadpool_parallelize`). load_pte records the generation and refuses to run across one.
_POOL_GENERATION = [0]


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's CPU thread pool (XNNPACK runs its kernels on it). Programs loaded before a
    resize cannot run after it (:func:`load_pte` raises instead of hanging): size the pool first."""
    require_executorch("setting ExecuTorch's threads")
    with _quiet(native=True):
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(int(threads))
            _POOL_GENERATION[0] += 1


def executorch_threads() -> int:
    """The current size of ExecuTorch's CPU thread pool."""
    require_executorch("reading ExecuTorch's threads")
    with _quiet(native=True):
        from executorch.extension.pybindings import portable_lib

        return int(portable_lib._threadpool_get_thread_count())


def load_pte(program: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ExecuTorch program's ``forward`` as a function of one tensor."""
    require_executorch("running a .pte program")
    with _quiet(native=True):
        from executorch.runtime import Runtime

        # An executorch.runtime Method does not own its Program: once the Program is collected the
        # Method's memory is freed under it (a wrong input count, then a segfault). ``run`` holds both.
        loaded = Runtime.get().load_program(program)
        method = loaded.load_method("forward")
    if method is None:  # pragma: no cover - the program was made by to_pte
        raise ConfigError("the ExecuTorch program has no 'forward' method")
    n_in = method.metadata.num_inputs()

    generation = _POOL_GENERATION[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        if _POOL_GENERATION[0] != generation:
            raise RuntimeError("this ExecuTorch program was loaded before the thread pool was resized "
                               "(set_executorch_threads); XNNPACK would wait on the old pool forever: load it again")
        return method.execute([x.contiguous()])[0]

    run.num_inputs = n_in  # type: ignore[attr-defined]
    run.method = method  # type: ignore[attr-defined]
    run.program = loaded  # type: ignore[attr-defined]
    return run


def onnx_int8(model: bytes, calib: Sequence[torch.Tensor], *, input_name: str) -> bytes:
    """An fp32 ONNX model quantized by onnxruntime's static QDQ flow, calibrated on ``calib``."""
    import numpy as np
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [{input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)} for x in calib]
    if not batches:
        raise ConfigError("int8 quantization needs at least one calibration batch")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):  # noqa: D102 - onnxruntime's interface
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="fbnet-ort-int8-") as d:
        src, pre, out = (os.path.join(d, n) for n in ("model.onnx", "pre.onnx", "int8.onnx"))
        with open(src, "wb") as f:
            f.write(model)
        with _quiet(), contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        with open(out, "rb") as f:
            return f.read()
