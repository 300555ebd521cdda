"""Mixed-op kernels: one module per kernel family, its eager reference beside it.

:func:`mixed_op` is the one dispatch point. ``impl`` picks the implementation:
``"reference"`` (eager PyTorch, the oracle), ``"cpp"`` (fused CPU kernels),
``"triton"`` (fused GPU kernels) or ``"auto"`` (the fused kernel for the tensor's
device when it is available, else the reference).

Families (launchers in ``<family>.py``, eager oracles in ``<family>_ref.py``, GPU
launchers of the same names in ``<family>_triton.py``): :mod:`.bn_act`,
:mod:`.dwconv_bn`; :mod:`.mixed_op_fused` composes them in one autograd Function.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import ConfigError
from .mixed_op_ref import active_candidates, mixed_op_ref

__all__ = ["IMPLS", "KERNEL_CHOICES", "block_op", "head_op", "mixed_op", "stem_op", "mixed_op_ref", "active_candidates", "resolve_impl", "check_impl"]

# The one list of mixed-op implementations: "reference" (eager, the oracle), "cpp" (fused CPU
# kernels), "triton" (fused GPU kernels), "auto" (the fused kernels of the tensor's device when
# available, else the reference). The command line also takes "fused", a synonym of "auto".
IMPLS = ("reference", "cpp", "triton", "auto")
KERNEL_CHOICES = ("auto", "fused", "reference", "cpp", "triton")


def check_impl(impl: str, *, what: str = "kernel impl") -> str:
    """``impl`` as one of :data:`IMPLS` (``"fused"`` -> ``"auto"``); one ConfigError otherwise."""
    if impl == "fused":
        return "auto"
    if impl not in IMPLS:
        raise ConfigError(f"unknown {what} {impl!r}; expected one of {KERNEL_CHOICES}")
    return impl

_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete implementation ``impl`` stands for on ``device``.

    ``"auto"``: CUDA -> ``"triton"`` when triton is installed; CPU -> ``"cpp"`` when ``fbnet_fast._C`` imports,
    else ``"reference"`` with a one-time warning that says how to build it.
    """
    if impl != "auto":
        return impl
    device = torch.device(device)
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is not None:
            return "triton"
        _warn_once("triton is not installed, using the eager reference mixed op on CUDA: "
                   "pip install 'fbnet-fast[triton]'")
        return "reference"
    if device.type == "cpu":
        from . import _ext

        if _ext.available():
            return "cpp"
        _warn_once(f"fused CPU kernels unavailable, using the eager reference mixed op: {_ext.BUILD_HINT}")
    return "reference"


def mixed_op(x: torch.Tensor, weights: torch.Tensor, op: torch.nn.Module, *, impl: str = "auto") -> torch.Tensor:
    """``sum_i weights[i] * op.candidates[i](x)`` with the chosen implementation.

    Args:
        x: ``[N, C_in, H, W]``.
        weights: ``[K]`` Gumbel weights of ``op``'s ``K`` candidates.
        op: a :class:`fbnet_fast.supernet.MixedOp` (its ``candidates`` are used).
        impl: ``"reference" | "cpp" | "triton" | "auto"``.

    ``"cpp"`` raises :class:`~fbnet_fast.errors.ExtensionError` (with the build command)
    when the extension is missing; ``"auto"`` falls back to the reference for
    inputs the fused op does not handle (non-float32).
    """
    return _mixed(x, weights, op.candidates, impl)


def block_op(x: torch.Tensor, block: torch.nn.Module, *, impl: str = "auto") -> torch.Tensor:
    """``block(x)`` for one block of a plain (sampled) network, with the chosen implementation.

    The fused kernels run it as a mixed op of one candidate with weight 1 (the same Function,
    saving the input and BN statistics and recomputing the rest in backward), so a trained
    net gets the search's kernels; an identity skip is returned as is. ``impl`` as in
    :func:`mixed_op`: ``"auto"`` takes the block's own forward for what the fused kernels do
    not handle (another block class, non-float32, inside autocast), ``"cpp"``/``"triton"``
    refuse it with one ConfigError.
    """
    if getattr(block, "kind", None) == "skip" and getattr(block, "identity", False):
        return x
    one = _ONE.get(x.device)
    if one is None:
        one = _ONE[x.device] = torch.ones(1, device=x.device)
    return _mixed(x, one, [block], impl, single=True)


def head_op(x: torch.Tensor, head: torch.nn.Module, *, impl: str = "auto") -> torch.Tensor:
    """``head(x)``; on CPU with the fused kernels (``impl`` "auto" or "cpp"), the head's conv + BN + ReLU +
    pool as one Function (:mod:`.head_fused`) where it applies (float32 channels_last input, a plain
    head, no autocast), the head's own forward otherwise."""
    return _fixed_part(x, head, impl, "head")


def stem_op(x: torch.Tensor, stem: torch.nn.Module, *, impl: str = "auto") -> torch.Tensor:
    """``stem(x)``; on CPU with the fused kernels, torch's conv and then BN + ReLU as one Function
    (:func:`.head_fused.stem_fused`) where it applies, the stem's own forward otherwise."""
    return _fixed_part(x, stem, impl, "stem")


def _fixed_part(x: torch.Tensor, module: torch.nn.Module, impl: str, part: str) -> torch.Tensor:
    # the stem or the head: fused where head_fused supports it, the module's own forward elsewhere
    impl = resolve_impl(check_impl(impl, what=f"{part} implementation"), x.device)
    if impl != "cpp" or torch.is_autocast_enabled(x.device.type):
        return module(x)
    from . import head_fused

    if part == "head":
        return head_fused.head_fused(x, module) if head_fused.supports(x, module) else module(x)
    return head_fused.stem_fused(x, module) if head_fused.supports_stem(x, module) else module(x)


# the weight of a one-candidate "mixed op", per device (a constant: no gradient is asked of it)
_ONE: dict[torch.device, torch.Tensor] = {}


def _mixed(x: torch.Tensor, weights: torch.Tensor, candidates, impl: str, *, single: bool = False) -> torch.Tensor:
    # single: one block of a plain net (block_op); its reference is the block's own forward
    requested = check_impl(impl, what="mixed op implementation")
    impl = resolve_impl(requested, x.device)
    if impl != "reference" and torch.is_autocast_enabled(x.device.type):
        # Inside an autocast region (--precision bf16) the GEMMs in the fused Function would run in
        # bf16 and hand the float32 kernels bf16 buffers: the reference runs under autocast instead.
        if requested != "auto":
            raise ConfigError(f"impl={impl!r} is float32 only and cannot run inside torch.autocast; use 'auto' or "
                              f"'reference'")
        impl = "reference"
    if impl == "reference":
        return candidates[0](x) if single else mixed_op_ref(x, weights, candidates)
    want = "cpu" if impl == "cpp" else "cuda"
    if x.device.type != want:
        raise ConfigError(f"impl={impl!r} runs on {want} tensors, but x is on {x.device}")
    from .mixed_op_fused import mixed_op_fused, supports

    if impl == "cpp":
        from . import _ext

        _ext.load()  # ExtensionError naming the build command
    checked = requested == "auto"
    if checked and supports(x, weights, candidates) is not None:
        return candidates[0](x) if single else mixed_op_ref(x, weights, candidates)
    return mixed_op_fused(x, weights, candidates, checked=checked)
