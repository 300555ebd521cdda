"""CUDA GPU: kernels are asynchronous, so samples are timed with CUDA events.

A sample is ``start.record(); inner calls; end.record(); end.synchronize()`` and
``start.elapsed_time(end) / inner``: the GPU's own clock, without the host's
launch gaps between samples. The ``cuda`` argument is the ``torch.cuda`` module
(tests pass a stand-in with the same ``Event``/``synchronize`` surface, so the
logic is tested where no GPU is present).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from .torch_cpu import TorchCPUBackend

__all__ = ["CUDABackend", "time_cuda_interleaved"]


def time_cuda_interleaved(fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int, min_sample_ms: float,
                          cuda: Any, max_inner: int = 1000, prime: int = 0,
                          shuffle_seed: int | None = None) -> list[list[float]]:
    """Like :func:`fbnet_fast.measure.remote_runner.time_interleaved` (``prime`` untimed calls before
    each sample, a seeded random order each round), timed with CUDA events."""
    from .remote_runner import round_orders

    inner = []
    for fn in fns:
        for _ in range(max(1, warmup)):
            fn()
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        once_ms = max(start.elapsed_time(end), 1e-4)
        inner.append(max(1, min(max_inner, int(min_sample_ms / once_ms))))
    samples: list[list[float]] = [[] for _ in fns]
    for order in round_orders(len(fns), repeats, shuffle_seed):
        for i in order:
            fn = fns[i]
            for _ in range(prime):
                fn()
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner[i]):
                fn()
            end.record()
            end.synchronize()
            samples[i].append(start.elapsed_time(end) / inner[i])
    return samples


class CUDABackend(TorchCPUBackend):
    """PyTorch eager on a CUDA device, timed with events. ``threads`` is the host's."""

    name = "cuda"

    def __init__(self, *, device: str = "cuda", cuda: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.cuda = torch.cuda if cuda is None else cuda
        if not self.cuda.is_available():
            raise ConfigError("back end 'cuda' needs a CUDA GPU, and torch.cuda.is_available() is False here "
                              "(use --backend torch-cpu or onnxruntime)")
        self.device = device

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(device_name=self.cuda.get_device_name(), host_cpu=d.get("device_name"), clock="cuda-events",
                 runtime=f"torch {torch.__version__} cuda {getattr(torch.version, 'cuda', None)}")
        return d

    def time_group(self, fns: Sequence[Callable[[], object]]) -> list[list[float]]:
        return time_cuda_interleaved(fns, repeats=self.repeats, warmup=self.warmup,
                                     min_sample_ms=self.min_sample_ms, cuda=self.cuda, prime=self.prime,
                                     shuffle_seed=self.seed if self.shuffle else None)
