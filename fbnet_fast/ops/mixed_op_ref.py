"""Eager reference of the mixed op: the oracle every fused kernel is compared against.

``mixed_op_ref(x, weights, blocks) = sum_i weights[i] * blocks[i](x)`` over the
candidates whose weight is not exactly zero (hard Gumbel weights are zero but for one
candidate, and that candidate alone is computed). Autograd keeps every candidate's
intermediates for backward: that is the memory the fused op saves.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["mixed_op_ref", "active_candidates"]


def active_candidates(weights: torch.Tensor) -> list[int]:
    """Indices whose weight is not exactly zero (one host sync for the whole layer)."""
    return torch.nonzero(weights.detach() != 0).flatten().tolist()


def mixed_op_ref(x: torch.Tensor, weights: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
    """Weighted sum of candidate outputs.

    Args:
        x: layer input ``[N, C_in, H, W]`` (any memory format).
        weights: Gumbel weights ``[K]`` for the ``K`` candidates (differentiable).
        blocks: the ``K`` candidate modules, each ``[N, C_in, H, W] -> [N, C_out, H', W']``.

    Returns:
        ``[N, C_out, H', W']``.
    """
    active = active_candidates(weights)
    if not active:
        raise ValueError("mixed op: every candidate weight is zero")
    out = None
    for i in active:
        y = weights[i] * blocks[i](x)
        out = y if out is None else out + y
    return out
