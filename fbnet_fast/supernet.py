"""The FBNet supernet: a fixed stem and head around one mixed op per searchable layer.

Each :class:`MixedOp` holds every candidate block of its layer and the layer's
architecture logits ``theta``. A forward pass takes Gumbel-softmax weights
``m = softmax((theta + g) / tau)`` per layer (drawn by :func:`gumbel_weights` from a
dedicated generator, so a search is reproducible and resumable) and returns
``sum_i m_i * block_i(x)``.

``gumbel="hard"`` is the straight-through variant: the forward value of ``m`` is the
one-hot of its argmax, so one candidate per layer is computed, while gradients reach
``theta`` through the soft weights.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from .blocks import build_block, build_head, build_stem
from .errors import ConfigError
from .ops import check_impl, head_op, stem_op
from .space import Architecture, LayerSpec, SearchSpace

__all__ = ["MixedOp", "Supernet", "gumbel_weights"]


def gumbel_weights(theta: torch.Tensor, tau: float, *, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax weights over the last dimension.

    Args:
        theta: logits ``[L, K]`` (L layers, K candidates).
        tau: temperature > 0.
        hard: straight-through one-hot (forward) with soft gradients (backward).
        generator: source of the uniform noise (CPU generator; noise is moved to
            ``theta``'s device so CPU and GPU runs draw the same architecture).

    Returns:
        ``[L, K]`` weights that sum to 1 per row. In hard mode the non-selected
        entries are exactly 0.0 in value, so they can be skipped.
    """
    if tau <= 0:
        raise ConfigError(f"gumbel temperature tau must be > 0, got {tau}")
    u = torch.rand(theta.shape, generator=generator, dtype=torch.float64)
    # -log(-log(u)) with u clamped away from 0 and 1 so the noise stays finite.
    u = u.clamp_(torch.finfo(torch.float64).tiny, 1.0 - 1e-12)
    g = (-torch.log(-torch.log(u))).to(device=theta.device, dtype=theta.dtype)
    soft = torch.softmax((theta + g) / tau, dim=-1)
    if not hard:
        return soft
    idx = soft.detach().argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, idx, 1.0)
    # (one_hot - soft.detach()) + soft is exactly 0.0 off the argmax (x + -x == 0 in IEEE).
    return (one_hot - soft.detach()) + soft


class MixedOp(nn.Module):
    """One searchable layer: K candidate blocks and their logits ``theta [K]``."""

    def __init__(self, layer: LayerSpec, candidates: Sequence[str], *, impl: str = "auto") -> None:
        super().__init__()
        self.layer = layer
        self.names = list(candidates)
        self.candidates = nn.ModuleList(build_block(c, layer) for c in candidates)
        self.theta = nn.Parameter(torch.zeros(len(candidates)))
        self.impl = impl

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        from .ops import mixed_op

        return mixed_op(x, weights, self, impl=self.impl)

    def extra_repr(self) -> str:
        l = self.layer
        return f"layer={l.index}, {l.c_in}->{l.c_out}, stride={l.stride}, impl={self.impl!r}"


class Supernet(nn.Module):
    """Stem, one :class:`MixedOp` per searchable layer, head.

    ``forward(x [N, C, H, W], weights [L, K]) -> logits [N, num_classes]``.
    ``weights`` comes from :meth:`sample_weights` (training) or :meth:`argmax_weights`
    (evaluating the most likely architecture).
    """

    def __init__(self, space: SearchSpace, *, impl: str = "auto", dropout: float = 0.0) -> None:
        super().__init__()
        impl = check_impl(impl)
        self.space = space
        self.stem = build_stem(space)
        self.layers = nn.ModuleList(MixedOp(l, space.candidates, impl=impl) for l in space.layers)
        self.impl = impl  # the layers' implementation, also the head's (ops.head_op)
        self.head = build_head(space, dropout=dropout)

    # ---- parameter groups ---------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The per-layer logits ``theta`` (optimised by Adam on the 20% split)."""
        return [op.theta for op in self.layers]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter but ``theta`` (optimised by SGD on the 80% split)."""
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    @property
    def theta(self) -> torch.Tensor:
        """``[L, K]`` stacked logits (a differentiable view of the per-layer parameters)."""
        return torch.stack(self.arch_parameters())

    def set_impl(self, impl: str) -> None:
        impl = check_impl(impl)
        self.impl = impl
        for op in self.layers:
            op.impl = impl

    # ---- architecture weights -----------------------------------------------------------
    def sample_weights(self, tau: float, *, hard: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        return gumbel_weights(self.theta, tau, hard=hard, generator=generator)

    def probabilities(self) -> torch.Tensor:
        """``P_theta``: ``[L, K]`` softmax of theta per layer (no noise)."""
        return torch.softmax(self.theta.detach(), dim=-1)

    def argmax_weights(self) -> torch.Tensor:
        """One-hot ``[L, K]`` of the most likely architecture."""
        th = self.theta.detach()
        return torch.zeros_like(th).scatter_(-1, th.argmax(-1, keepdim=True), 1.0)

    def most_likely(self) -> Architecture:
        return Architecture.from_indices(self.space, self.theta.detach().argmax(-1).tolist())

    def sample_architectures(self, n: int, *, generator: torch.Generator | None = None) -> list[Architecture]:
        """``n`` architectures drawn independently per layer from ``P_theta``."""
        probs = self.probabilities().cpu().double()
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)  # [L, n]
        return [Architecture.from_indices(self.space, idx[:, j].tolist()) for j in range(n)]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if weights.shape != (len(self.layers), len(self.space.candidates)):
            raise ConfigError(
                f"supernet weights must be [{len(self.layers)}, {len(self.space.candidates)}], got {list(weights.shape)}"
            )
        x = self.stem(x) if self.impl == "reference" else stem_op(x, self.stem, impl=self.impl)
        for op, w in zip(self.layers, weights):
            x = op(x, w)
        return self.head(x) if self.impl == "reference" else head_op(x, self.head, impl=self.impl)
