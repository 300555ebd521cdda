"""Host CPU with ONNX Runtime (what many deployments run), and the ONNX/TorchScript exporters.

Blocks are exported with the TorchScript-based ONNX exporter (``dynamo=False``):
the torch.export-based one needs ``onnxscript``, which is not a dependency, and
these blocks are static convolution graphs that both exporters handle alike.

``dtype="int8"`` times each block quantized by onnxruntime's static QDQ flow
(:func:`fbnet_fast.runtimes.onnx_int8`), calibrated on :func:`calibration_batches`:
seeded generated data of the block's own input shape. Latency does not depend on what the
calibration saw: it only sets the scale and zero-point constants, while the quantized graph
(which ops, which int8 kernels, which shapes) is fixed by the model and the quantization
scheme; ``tests/test_runtime_backends.py`` checks that two very different calibrations give
the same graph. User images would not help either: a block in the middle of the network
sees activations of whichever architecture precedes it, which a LUT, measured before any
architecture is chosen, cannot know. (Accuracy is another matter: ``fbnet-fast export``
calibrates the whole searched network on the training images.)
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from .core import Backend, Job, ModelCache

__all__ = ["OnnxRuntimeBackend", "export_onnx", "export_torchscript", "onnx_model", "calibration_batches", "OPSET",
           "CALIB_BATCHES"]

OPSET = 17
CALIB_BATCHES = 4  # generated calibration batches per int8 block (the values do not change its latency)


def calibration_batches(shape: tuple[int, ...], seed: int, n: int = CALIB_BATCHES) -> list[torch.Tensor]:
    """``n`` seeded standard-normal batches of ``shape``: the calibration data of an int8 block.

    Standard normal is what a normalised image or a batch-normalised activation looks like; for
    latency any non-degenerate data gives the same program (module docstring)."""
    g = torch.Generator().manual_seed(int(seed))
    return [torch.randn(tuple(shape), generator=g) for _ in range(n)]


def export_onnx(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    """``module`` (eval mode) as an ONNX model with one input ``x`` of fixed ``shape``."""
    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module, (torch.randn(shape),), buf, dynamo=False, opset_version=OPSET,
                          input_names=["x"], output_names=["y"], do_constant_folding=True)
    return buf.getvalue()


def export_torchscript(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    """``module`` (eval mode) traced at ``shape`` and frozen, as TorchScript bytes."""
    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices; boards still run it
        traced = torch.jit.trace(module, torch.randn(shape))
        torch.jit.save(torch.jit.freeze(traced), buf)
    return buf.getvalue()


def onnx_model(module: nn.Module, shape: tuple[int, ...], *, dtype: str = "fp32", seed: int = 0) -> bytes:
    """``module`` as ONNX (input ``x`` of fixed ``shape``); ``dtype="int8"``: quantized by
    onnxruntime's static QDQ flow, calibrated on :func:`calibration_batches` ``(shape, seed)``."""
    from ..runtimes import check_dtype, onnx_int8

    model = export_onnx(module, shape)
    if check_dtype(dtype) == "int8":
        model = onnx_int8(model, calibration_batches(shape, seed), input_name="x")
    return model


class OnnxRuntimeBackend(Backend):
    """Each block exported to ONNX and run by an ``InferenceSession`` (CPU provider,
    ``intra_op_num_threads = threads``, sequential execution, all graph optimisations);
    ``dtype="int8"``: the static-QDQ quantized block (module docstring)."""

    name = "onnxruntime"
    DTYPES = ("fp32", "int8")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ConfigError(f"back end 'onnxruntime' needs the onnxruntime package: {e}") from None
        self._models = ModelCache(f"onnx opset {OPSET} {self.dtype} seed {self.seed} torch {torch.__version__}")

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        d = super().describe()
        d.update(runtime=f"onnxruntime {ort.__version__}", exporter=f"torch {torch.__version__} onnx opset {OPSET}")
        if self.dtype == "int8":
            d["quantization"] = ("onnxruntime quantize_static QDQ: per-channel int8 weights, uint8 activations, "
                                 f"min-max on {CALIB_BATCHES} generated batches")
        return d

    def prepare(self, job: Job) -> Callable[[], object]:
        import numpy as np
        import onnxruntime as ort

        model = self._models.get(job, lambda m, shape: onnx_model(m, shape, dtype=self.dtype, seed=self.seed))
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: QDQ models leave unused initializers it warns about
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        feed = {"x": np.random.default_rng(self.seed).standard_normal(job.shape).astype(np.float32)}
        return lambda: sess.run(None, feed)
