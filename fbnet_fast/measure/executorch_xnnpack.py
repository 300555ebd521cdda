"""Host CPU with ExecuTorch and its XNNPACK delegate: the runtime, and the kernels, a phone runs.

Each block (or, for ``lut validate`` / ``lut fit``, each whole network: they come as the same
:class:`~fbnet_fast.measure.core.Job`) is lowered by :func:`fbnet_fast.runtimes.to_pte`, the
flow ``fbnet-fast export --format pte`` uses too: ``torch.export`` -> ``to_edge_transform_and_lower``
with the ``XnnpackPartitioner`` -> ``.pte`` bytes, run through ``executorch.runtime`` on a fixed
seeded input of the job's shape (NCHW, as a deployed program receives it; the delegate converts
to its own layout inside, as on the phone).

``dtype="int8"`` quantizes the block first with the PT2E flow and the ``XNNPACKQuantizer``
(per-channel symmetric int8 weights, static int8 activations), calibrated on
:func:`~fbnet_fast.measure.onnxrt.calibration_batches`: seeded generated data of the block's own
input shape. The latency does not depend on the calibration values: they set only the scale and
zero-point constants of the program, while the quantized graph and the XNNPACK kernels that run
it are fixed by the model and the quantization scheme. (The accuracy of an int8 *network* does
depend on them; ``fbnet-fast export --format pte-int8`` calibrates on training images.)

Threads: ExecuTorch's CPU thread pool (XNNPACK runs on it; by default as many threads as
cores) is sized to ``threads`` when measuring starts, and left so (the runtime prints a line
each time it is resized); ``threads`` is recorded in the device record. With one thread
XNNPACK runs on the calling thread, so the default ``clock="auto"`` (process CPU time with one
thread) measures it as it does eager torch.

Lowering takes about 1.5 s per block in fp32 and 4 s in int8 on a 2-core host, so a program is
made once per block and reused by every pass. ExecuTorch is an optional extra; without it the
back end refuses to start with one line naming the install recipe
(:data:`fbnet_fast.runtimes.EXECUTORCH_INSTALL`).

(The module is not called ``executorch.py``: ``remote_runner.py`` run as a script from this
folder would then import it in place of the ``executorch`` package.)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..lut import LatencyEntry
from ..runtimes import check_dtype, executorch_threads, executorch_version, load_pte, require_executorch, \
    set_executorch_threads, to_pte
from .core import Backend, Job, ModelCache
from .onnxrt import CALIB_BATCHES, calibration_batches

__all__ = ["ExecuTorchBackend", "pte_model", "DELEGATE"]

DELEGATE = "xnnpack"


def pte_model(module: nn.Module, shape: tuple[int, ...], *, dtype: str = "fp32", seed: int = 0) -> bytes:
    """``module`` as an ExecuTorch program (XNNPACK delegate) for input ``shape``; ``dtype="int8"``:
    PT2E-quantized, calibrated on :func:`~fbnet_fast.measure.onnxrt.calibration_batches` ``(shape, seed)``."""
    check_dtype(dtype)
    example = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))
    calib = calibration_batches(shape, seed) if dtype == "int8" else None
    return to_pte(module, example, dtype=dtype, calib=calib)


class ExecuTorchBackend(Backend):
    """Blocks lowered to ExecuTorch programs with the XNNPACK delegate, fp32 or int8 (module docstring)."""

    name = "executorch"
    DTYPES = ("fp32", "int8")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        require_executorch("back end 'executorch'")
        # lowered once, reused by later passes
        self._programs = ModelCache(f"pte {DELEGATE} {self.dtype} seed {self.seed} executorch {executorch_version()}")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(runtime=f"executorch {executorch_version()}", delegate=DELEGATE,
                 exporter=f"torch {torch.__version__} torch.export, to_edge_transform_and_lower")
        if self.dtype == "int8":
            d["quantization"] = ("PT2E XNNPACKQuantizer: per-channel symmetric int8 weights, static int8 "
                                 f"activations, calibrated on {CALIB_BATCHES} generated batches")
        return d

    def prepare(self, job: Job) -> Callable[[], object]:
        run = load_pte(self._programs.get(job, lambda m, shape: pte_model(m, shape, dtype=self.dtype, seed=self.seed)))
        x = torch.randn(tuple(job.shape), generator=torch.Generator().manual_seed(self.seed))
        return lambda: run(x)

    def measure(self, groups: Sequence[Sequence[Job]], on_result: Callable[[Job, LatencyEntry], None]) -> None:
        set_executorch_threads(self.threads)
        if executorch_threads() != self.threads:  # pragma: no cover - a runtime that ignores the request
            raise ConfigError(f"ExecuTorch kept {executorch_threads()} threads; asked for {self.threads}")
        super().measure(groups, on_result)
