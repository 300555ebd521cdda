"""Measuring latency look-up tables: one module per back end.

* ``torch-cpu`` (:mod:`.torch_cpu`): host CPU, PyTorch eager (the search's default).
* ``onnxruntime`` (:mod:`.onnxrt`): host CPU, each block exported to ONNX (fp32 or int8).
* ``executorch`` (:mod:`.executorch_xnnpack`): host CPU, each block an ExecuTorch program with the
  XNNPACK delegate (fp32 or int8; needs the optional ExecuTorch install).
* ``cuda`` (:mod:`.cuda`): PyTorch on a GPU, timed with CUDA events.
* ``ssh`` (:mod:`.ssh`): a remote board; blocks exported (ONNX, TorchScript or .pte) and run there by
  :mod:`fbnet_fast.measure.remote_runner` with the board's python.

:func:`measure_lut` is the entry point; :mod:`.core` holds the jobs, the
deduplication, the progress bar and the resumable partial file.
"""

from __future__ import annotations

from typing import Callable

from ..lut import LatencyEntry
from .core import (Backend, Job, backend_from_device, block_jobs, cpu_name, get_backend, get_backend_class, job_key,
                   measure_jobs, measure_lut)
from .cuda import CUDABackend
from .executorch_xnnpack import ExecuTorchBackend
from .onnxrt import OnnxRuntimeBackend, export_onnx, export_torchscript
from .ssh import SSHBackend
from .torch_cpu import TorchCPUBackend

__all__ = ["measure_lut", "measure_jobs", "time_module", "cpu_name", "block_jobs", "job_key", "get_backend",
           "get_backend_class", "backend_from_device", "BACKEND_NAMES", "Backend", "Job", "BACKENDS",
           "TorchCPUBackend", "OnnxRuntimeBackend", "ExecuTorchBackend", "CUDABackend", "SSHBackend",
           "export_onnx", "export_torchscript"]

# The registry: a new back end is one module (a Backend subclass: name, prepare or measure,
# describe, and device_kwargs / add_cli_options / cli_kwargs if it has settings of its own) plus
# one line here. The CLI, LUT validation and the cross-device experiment read it from here.
BACKENDS: dict[str, type[Backend]] = {
    "torch-cpu": TorchCPUBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "executorch": ExecuTorchBackend,
    "cuda": CUDABackend,
    "ssh": SSHBackend,
}
BACKEND_NAMES = tuple(BACKENDS)


def time_module(fn: Callable[[], object], *, repeats: int = 40, warmup: int = 3,
                min_sample_ms: float = 1.0) -> LatencyEntry:
    """Median / p10 / p90 in ms of ``fn()`` alone (the one-callable case of the interleaved rule)."""
    from .remote_runner import summarize, time_interleaved

    return LatencyEntry(**summarize(time_interleaved([fn], repeats=repeats, warmup=warmup,
                                                     min_sample_ms=min_sample_ms)[0]))
