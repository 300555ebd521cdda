"""Reduced precision for search and training: ``--precision bf16``.

Autocast-style mixed precision (``torch.autocast`` with bfloat16): the convolutions, GEMMs and
their gradients run in bf16 while the master weights, the optimiser state, θ, the loss and the
latency term stay float32 (the search computes the latency term and the cross-entropy outside the
autocast region, on float32 logits). bf16 keeps float32's exponent, so no loss scaling is needed.

Allowed only where the hardware computes bf16 natively: CPUs with AVX512-BF16 (hence every CPU
with AMX) and CUDA devices that report bf16 support. Elsewhere it is refused with one message,
because there torch emulates bf16 and runs slower than float32 (12x on an AVX2-only AMD EPYC,
measured by the speed issue). The fused mixed-op kernels are float32: under bf16 every mixed op
runs the eager reference under autocast (``impl="auto"`` falls back; ``"cpp"``/``"triton"`` refuse).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

from .errors import ConfigError

__all__ = ["PRECISIONS", "check_precision", "autocast", "fp32_logits", "native_bf16"]

PRECISIONS = ("fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (AVX512-BF16 on CPU; ``is_bf16_supported`` on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(probe()) if probe is not None else False
    return False


def check_precision(precision: str, device: torch.device | str, *, kernel: str = "auto") -> None:
    """One :class:`ConfigError` if ``precision`` is unknown or bf16 is not native on ``device``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    device = torch.device(device)
    if not native_bf16(device):
        what = ("this CPU has no AVX512-BF16 (torch would emulate bf16, slower than fp32)" if device.type == "cpu"
                else f"{device} does not support bf16")
        raise ConfigError(f"--precision bf16 needs native bf16: {what}; use --precision fp32")
    if kernel in ("cpp", "triton"):
        raise ConfigError(f"--precision bf16 runs the mixed ops as the eager reference under autocast; the fused "
                          f"{kernel!r} kernels are float32 only: use --kernel auto or reference")


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """The autocast region of a forward pass (a no-op context for fp32)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fp32_logits(model: Callable[..., torch.Tensor], precision: str, device: torch.device | str,
                *args: Any) -> torch.Tensor:
    """``model(*args)`` inside :func:`autocast`, returned as float32 (the loss is computed in fp32)."""
    with autocast(precision, device):
        out = model(*args)
    return out.float()
