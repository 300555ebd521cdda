"""FBNet's latency-aware loss.

Paper (Wu et al. 2019, eq. 2), the default ``form="mul"``::

    L = CE * alpha * log(LAT) ** beta

The seed text's additive form, ``form="add"``::

    L = CE + alpha * log(LAT) ** beta

``LAT`` is the expected latency under the Gumbel weights (see
:meth:`fbnet_fast.lut.LatencyTable.expected_latency`), in ``unit`` (ms or us). The
power of a log is only defined for ``LAT > 1`` in that unit, so the unit is a choice
with consequences: ``d log(log LAT^beta) / d log LAT = beta / log LAT``, i.e. the pull
towards cheaper blocks grows as ``log LAT`` shrinks. The paper's phone latencies are
~20 ms (log = 3); a small CPU net at ~2 ms would sit at log = 0.7 in ms but 7.6 in us.
``unit="auto"`` picks ms when every architecture of the space is above e ms (log > 1)
and us otherwise, and the resolved unit is recorded in the run's config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = ["LatencyLoss", "LossTerms", "resolve_unit", "UNIT_SCALE"]

UNIT_SCALE = {"ms": 1.0, "us": 1000.0}


def resolve_unit(unit: str, min_latency_ms: float) -> str:
    """The concrete unit for ``unit`` given the lowest latency the space can reach."""
    if unit == "auto":
        return "ms" if min_latency_ms > math.e else "us"
    if unit not in UNIT_SCALE:
        raise ConfigError(f"latency unit must be 'ms', 'us' or 'auto', got {unit!r}")
    if min_latency_ms * UNIT_SCALE[unit] <= 1.0:
        raise ConfigError(
            f"the fastest architecture of this space has {min_latency_ms * UNIT_SCALE[unit]:.3g} {unit} under the LUT, "
            f"so log(LAT) can reach <= 0 and log(LAT)**beta is undefined; use --latency-unit us (or auto)"
        )
    return unit


@dataclass
class LossTerms:
    """One evaluation of the loss: every number a log line wants."""

    loss: torch.Tensor
    ce: torch.Tensor
    latency_ms: torch.Tensor
    latency_term: torch.Tensor


class LatencyLoss(torch.nn.Module):
    """``CE * alpha * log(LAT)^beta`` (``"mul"``) or ``CE + alpha * log(LAT)^beta`` (``"add"``).

    ``alpha = 0`` turns the latency term off: the additive form then is plain CE and
    the product form is replaced by plain CE too (a zero product would stop training).
    """

    def __init__(self, *, alpha: float = 0.2, beta: float = 0.6, form: str = "mul", unit: str = "ms",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ConfigError(f"alpha must be a finite number >= 0, got {alpha}")
        if not (math.isfinite(beta) and beta > 0):
            raise ConfigError(f"beta must be a finite number > 0, got {beta}")
        if form not in ("mul", "add"):
            raise ConfigError(f"loss form must be 'mul' (the paper's product) or 'add', got {form!r}")
        if unit not in UNIT_SCALE:
            raise ConfigError(f"latency unit must be 'ms' or 'us' (resolve 'auto' first), got {unit!r}")
        self.alpha, self.beta, self.form, self.unit = alpha, beta, form, unit
        self.label_smoothing = label_smoothing

    def latency_term(self, latency_ms: torch.Tensor) -> torch.Tensor:
        lat = latency_ms * UNIT_SCALE[self.unit]
        if bool(lat.detach() <= 1.0):
            raise ConfigError(
                f"expected latency {float(lat):.4g} {self.unit} is <= 1, so log(LAT)**beta is undefined; "
                f"use a smaller latency unit (--latency-unit us)"
            )
        return self.alpha * torch.log(lat) ** self.beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor, latency_ms: torch.Tensor) -> LossTerms:
        """``logits [N, classes]``, ``target [N]``, ``latency_ms`` scalar -> :class:`LossTerms`."""
        ce = torch.nn.functional.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        lat_term = self.latency_term(latency_ms.to(ce.dtype))
        if self.alpha == 0:
            loss = ce
        elif self.form == "mul":
            loss = ce * lat_term
        else:
            loss = ce + lat_term
        return LossTerms(loss, ce, latency_ms, lat_term)
