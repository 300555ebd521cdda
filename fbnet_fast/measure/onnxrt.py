"""Host CPU with ONNX Runtime (what many deployments run), and the ONNX/TorchScript exporters.

Blocks are exported with the TorchScript-based ONNX exporter (``dynamo=False``):
the torch.export-based one needs ``onnxscript``, which is not a dependency, and
these blocks are static convolution graphs that both exporters handle alike.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from .core import Backend, Job

__all__ = ["OnnxRuntimeBackend", "export_onnx", "export_torchscript", "OPSET"]

OPSET = 17


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


class OnnxRuntimeBackend(Backend):
    """Each block exported to ONNX and run by an ``InferenceSession`` (CPU provider,
    ``intra_op_num_threads = threads``, sequential execution, all graph optimisations)."""

    name = "onnxruntime"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ConfigError(f"back end 'onnxruntime' needs the onnxruntime package: {e}") from None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        d = super().describe()
        d.update(runtime=f"onnxruntime {ort.__version__}", exporter=f"torch {torch.__version__} onnx opset {OPSET}")
        return d

    def prepare(self, job: Job) -> Callable[[], object]:
        import numpy as np
        import onnxruntime as ort

        model = export_onnx(job.build(), job.shape)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        feed = {"x": np.random.default_rng(self.seed).standard_normal(job.shape).astype(np.float32)}
        return lambda: sess.run(None, feed)
