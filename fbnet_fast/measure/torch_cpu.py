"""Host CPU with PyTorch eager: the back end the search uses by default."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .core import Backend, Job

__all__ = ["TorchCPUBackend"]


class TorchCPUBackend(Backend):
    """Blocks run in ``torch.inference_mode`` on the host CPU, NHWC unless ``channels_last=False``."""

    name = "torch-cpu"
    device = "cpu"

    def __init__(self, *, channels_last: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.channels_last = channels_last

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(runtime=f"torch {torch.__version__}",
                 memory_format="channels_last" if self.channels_last else "contiguous")
        return d

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "channels_last": self.channels_last}

    def prepare(self, job: Job) -> Callable[[], object]:
        module = job.build().eval().to(self.device)
        x = torch.randn(job.shape).to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)

        def call() -> object:
            with torch.inference_mode():
                return module(x)

        return call
