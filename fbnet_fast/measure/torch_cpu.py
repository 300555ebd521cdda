"""Host CPU with PyTorch eager: the back end the search uses by default."""

from __future__ import annotations

from typing import Any, Callable, Mapping

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

    @classmethod
    def device_kwargs(cls, device: Mapping[str, Any]) -> dict[str, Any]:
        kw = super().device_kwargs(device)
        if "memory_format" in device:
            kw["channels_last"] = device["memory_format"] == "channels_last"
        return kw

    @classmethod
    def add_cli_options(cls, parser: Any) -> None:
        parser.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                            help="torch back ends (torch-cpu, cuda): keep NCHW (default: channels_last)")

    @classmethod
    def cli_kwargs(cls, args: Any) -> dict[str, Any]:
        return {} if getattr(args, "channels_last", None) is None else {"channels_last": args.channels_last}

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
