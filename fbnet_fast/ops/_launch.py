"""Argument checks and backend choice shared by the family launchers.

A launcher (``bn_act.bn_stats``, ``dwconv_bn.dwconv_bn_forward``, ...) looks at its
first tensor's device: CPU tensors go to the compiled kernels (``fbnet_fast._C``
through :mod:`fbnet_fast.ops._ext`), CUDA tensors to ``fbnet_fast/ops/<family>_triton.py``
(a module with launchers of the same names and signatures). Nothing is probed at
import time.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from types import ModuleType

import torch

from ..errors import ConfigError

__all__ = ["check_act", "check_vec", "cpu_ext", "launches_unchecked", "ptr", "triton_family"]


class _Unchecked(threading.local):
    on = False


_unchecked = _Unchecked()


@contextlib.contextmanager
def launches_unchecked():
    """Within it (this thread only), :func:`check_act` and :func:`check_vec` return at once.

    For a caller that builds every kernel argument itself from inputs it has already checked: the fused
    mixed op (after :func:`~fbnet_fast.ops.mixed_op_fused.supports`) makes ~40 launcher calls per candidate
    and step, and their per-argument checks were ~3 % of a default-search step (AMD EPYC Zen 4, 2 threads).
    The launchers' own shape arithmetic and the C++ side's argument checks still run.
    """
    prev = _unchecked.on
    _unchecked.on = True
    try:
        yield
    finally:
        _unchecked.on = prev


def check_act(t: torch.Tensor, name: str, ndim: int) -> None:
    """Kernels take float32, contiguous, channels-last activations ``[M, C]`` / ``[N, H, W, C]``."""
    if _unchecked.on:
        return
    if not isinstance(t, torch.Tensor):
        raise ConfigError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ConfigError(f"{name} must have {ndim} dimensions, got shape {list(t.shape)}")
    if t.dtype != torch.float32:
        raise ConfigError(f"{name} must be float32, got {t.dtype}")
    if not t.is_contiguous():
        raise ConfigError(f"{name} must be contiguous (channels-last rows), got strides {t.stride()}")


def check_vec(t: torch.Tensor, name: str, c: int, device: torch.device) -> None:
    """Per-channel vectors: float32, contiguous, ``[C]``, on the activations' device."""
    if _unchecked.on:
        return
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.shape != (c,) or not t.is_contiguous():
        got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ConfigError(f"{name} must be a contiguous float32 [{c}] tensor, got {got}")
    if t.device != device:
        raise ConfigError(f"{name} is on {t.device} but the activations are on {device}")


def ptr(t: torch.Tensor | None) -> int:
    """A kernel's optional buffer argument: ``t.data_ptr()``, or 0 for None (the C++ side's "not given")."""
    return 0 if t is None else t.data_ptr()


_cpu_module: ModuleType | None = None


def cpu_ext() -> ModuleType:
    """``fbnet_fast._C`` via :func:`fbnet_fast.ops._ext.load`, cached (every launcher call asks)."""
    global _cpu_module
    if _cpu_module is None:
        from . import _ext

        _cpu_module = _ext.load()
    return _cpu_module


def triton_family(family: str) -> ModuleType:
    """``fbnet_fast.ops.<family>_triton``, imported on first use on a CUDA tensor."""
    try:
        return importlib.import_module(f"fbnet_fast.ops.{family}_triton")
    except ImportError as e:
        raise ConfigError(f"no GPU kernels for {family!r} ({e}); use impl='reference' on CUDA tensors") from None


def backend(t: torch.Tensor, family: str) -> ModuleType | None:
    """``None`` for CPU (the caller uses :func:`cpu_ext`), the Triton module for CUDA."""
    if t.device.type == "cpu":
        return None
    if t.device.type == "cuda":
        return triton_family(family)
    raise ConfigError(f"fused {family} kernels run on CPU or CUDA tensors, got device {t.device}")
