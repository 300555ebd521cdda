"""Mixed-op kernels: one module per kernel family, its eager reference beside it.

:func:`mixed_op` is the one dispatch point. ``impl`` picks the implementation:
``"reference"`` (eager PyTorch, the oracle), ``"cpp"`` (fused CPU kernels),
``"triton"`` (fused GPU kernels) or ``"auto"`` (the fused kernel for the tensor's
device when it is available, else the reference).
"""

from __future__ import annotations

import torch

from .mixed_op_ref import active_candidates, mixed_op_ref

__all__ = ["mixed_op", "mixed_op_ref", "active_candidates", "resolve_impl"]


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete implementation ``impl`` stands for on ``device``."""
    if impl != "auto":
        return impl
    return "reference"


def mixed_op(x: torch.Tensor, weights: torch.Tensor, op: torch.nn.Module, *, impl: str = "auto") -> torch.Tensor:
    """``sum_i weights[i] * op.candidates[i](x)`` with the chosen implementation.

    Args:
        x: ``[N, C_in, H, W]``.
        weights: ``[K]`` Gumbel weights of ``op``'s ``K`` candidates.
        op: a :class:`fbnet_fast.supernet.MixedOp` (its ``candidates`` are used).
        impl: ``"reference" | "cpp" | "triton" | "auto"``.
    """
    impl = resolve_impl(impl, x.device)
    if impl == "reference":
        return mixed_op_ref(x, weights, op.candidates)
    raise NotImplementedError(f"mixed op implementation {impl!r} is not built yet")
