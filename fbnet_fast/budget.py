"""Searching to a latency budget: a target-relative Lagrangian during the search, a repair at the end.

The user states the budget itself, ``T`` ms on the LUT's device (on the corrected scale when the
LUT carries a fitted correction), and one of three meanings:

* ``target``: land on ``T`` (the returned architecture within ``tol``, default 3 %, of it);
* ``ceiling`` (the default): at most ``T``, and spend it: the returned architecture lies in
  ``[T (1 - 2 tol), T]``;
* ``under``: at most ``T``, nothing pulls the latency up: how far below ``T`` is left to the CE.

Why ``ceiling`` spends the budget: in a weight-sharing supernet the CE's pull on theta is biased
toward ``skip`` (parameter-free blocks ease the supernet's own optimisation; the "collapse" of
DARTS-style searches, Zela et al. ICLR 2020, Chu et al. ECCV 2020), not toward the blocks that are
accurate once trained alone. Measured on the default space (fbnet-cifar, width 0.25, 6 epochs,
theta lr 0.1, the last 2 one-path; AMD EPYC): with ``under`` at 0.75 x the uniform latency (3.16 ms)
the multiplier ended at 0 and the argmax at 1.09 ms, 18 of 22 layers ``skip``; the time the user
allowed went unused. TuNAS states
its constraint as always active (``|LAT/T - 1|``) for the same reason.

During the search, constrained optimisation by the method of multipliers (the augmented
Lagrangian: Hestenes 1969, Powell 1969; Bertsekas, "Constrained Optimization and Lagrange
Multiplier Methods", 1982). TuNAS states its budget the same target-relative way,
``|LAT/T - 1|``, and NNI's one-shot profiler generalises it; neither adapts the weight::

    g(theta)  = LAT(P_theta) / T - 1            unit-free: the same options serve a LUT in us on
                                                 a CPU and one in ms on a phone
    L_theta   = CE + lambda * g + rho/2 * g^2    theta descends this (Adam); under: g^2 only
                                                 where g > 0
    lambda   <- lambda + eta * g(theta)          dual ascent after every theta step;
                                                 under: lambda >= 0 (a met bound exerts no pull)

with ``T`` replaced by the goal ``T (1 - tol)`` (the middle of its window) for ``ceiling`` and by
``T (1 - margin)`` for ``under``.

Plain dual ascent (``rho = 0``) under Adam overshoots and oscillates: ``lambda`` keeps growing
while the budget is missed and needs as many steps to unwind, while theta saturates. Measured on
a 5-layer LUT against a CE stand-in that wants the slowest blocks (Adam, lr 0.05; the set-up of
tests/test_budget.py), after 200 theta steps the expected latency missed targets of 0.6x and
0.85x the uniform latency by +256 % and +176 % with ``eta = 0.5, rho = 0``, and by under 0.1 %
with ``eta = 0.2, rho = 5`` (the defaults; after 60 steps by +1.7 % and +1.3 %). A ceiling at
0.6x ended 48 % under it with the former and on its 1 % margin with the latter.

``LAT(P_theta)`` is the LUT latency expected under ``P_theta = softmax(theta)``, which is also the
expectation of the latency of the one-hot architectures the Gumbel noise samples, so the term
needs no temperature and no noise. ``lambda`` starts at 0 and grows while the budget is missed:
nobody tunes a weight to hit ``T``. In ``under`` mode the constraint is ``g <= -margin``
(default 1 %): the argmax of a distribution whose expectation sits exactly on ``T`` is over ``T``
half of the time.

At the end (:func:`repair`), if the argmax of ``theta`` misses the budget, the fewest layers are
changed, and among the fewest the change that keeps the architecture most probable under
``P_theta``, so that the LUT latency lands in the window. It is an exact dynamic programme over
layers on the additive LUT (latency sums kept exactly, states merged on a grid far finer than the
window); a multi-target model, whose combined latency is not a sum, is repaired greedily.

Multi-target searches (``--lut a.json,b.json``) take one combined target: ``T`` is on the scale of
the combined latency (:class:`fbnet_fast.multitarget.MultiTargetLatency`), which the search prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["BUDGET_MODES", "Budget", "Commitment", "RepairResult", "repair", "reachable_range", "uniform_latency", "sample_in_band"]

BUDGET_MODES = ("target", "ceiling", "under")


def reachable_range(lut: Any) -> tuple[float, float]:
    """``(fastest, slowest)`` predicted latency in ms over every architecture of the LUT's space
    (for a multi-target model: bounds of its combined latency)."""
    return lut.min_latency(), lut.max_latency()


def uniform_latency(lut: Any, num_layers: int, num_candidates: int) -> float:
    """Predicted latency in ms under uniform theta (every candidate of every layer equally likely):
    the reference ``--target-fraction`` scales."""
    k = num_candidates
    return float(lut.expected_latency(torch.full((num_layers, k), 1.0 / k, dtype=torch.float64)))


@dataclass
class Budget:
    """The budget of one search and its Lagrange multiplier (checkpointed with the search)."""

    target_ms: float
    mode: str = "ceiling"
    tol: float = 0.03  # target: the window is T * (1 -+ tol)
    margin: float = 0.01  # ceiling: the constraint is LAT <= T * (1 - margin) during the search
    dual_lr: float = 0.2
    rho: float = 5.0
    lam: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in BUDGET_MODES:
            raise ConfigError(f"budget mode must be one of {BUDGET_MODES}, got {self.mode!r}")
        t = self.target_ms
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"--target-ms must be a positive number of ms, got {t!r}")
        if not 0 < self.tol < 1:
            raise ConfigError(f"budget tolerance must be in (0, 1), got {self.tol!r}")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"ceiling margin must be in [0, 1), got {self.margin!r}")
        if not (math.isfinite(self.dual_lr) and self.dual_lr > 0):
            raise ConfigError(f"--dual-lr must be > 0, got {self.dual_lr!r}")
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise ConfigError(f"--budget-rho must be >= 0, got {self.rho!r}")

    def check_reachable(self, lut: Any) -> None:
        """One ConfigError naming the reachable range when ``T`` lies outside it."""
        lo, hi = reachable_range(lut)
        if self.mode == "target" and not lo * (1 - self.tol) <= self.target_ms <= hi * (1 + self.tol):
            raise ConfigError(f"--target-ms {self.target_ms:g} is outside what this space can reach under "
                              f"{lut.source}: {lo:.4g} to {hi:.4g} ms")
        if self.mode != "target" and self.target_ms < lo:
            raise ConfigError(f"--target-ms {self.target_ms:g} is below the fastest architecture of this space "
                              f"under {lut.source} ({lo:.4g} ms; reachable {lo:.4g} to {hi:.4g} ms)")
        if self.mode == "ceiling" and self.window[0] > hi:
            raise ConfigError(f"--target-ms {self.target_ms:g} is above the slowest architecture of this space "
                              f"under {lut.source} ({hi:.4g} ms; reachable {lo:.4g} to {hi:.4g} ms): every "
                              f"architecture fits, so there is no budget to spend (--budget-mode under accepts it)")

    @property
    def window(self) -> tuple[float, float]:
        """Latencies the returned architecture may have, in ms."""
        if self.mode == "target":
            return self.target_ms * (1 - self.tol), self.target_ms * (1 + self.tol)
        if self.mode == "ceiling":
            return self.target_ms * (1 - 2 * self.tol), self.target_ms
        return 0.0, self.target_ms

    def gap(self, latency_ms: torch.Tensor) -> torch.Tensor:
        """``g``: the constraint's relative violation (differentiable in ``latency_ms``)."""
        return latency_ms / self.goal_ms - 1.0

    @property
    def goal_ms(self) -> float:
        """The latency the search steers ``LAT(P_theta)`` to: ``T`` (target), the window's middle
        ``T (1 - tol)`` (ceiling), ``T (1 - margin)`` as an upper bound only (under)."""
        if self.mode == "target":
            return self.target_ms
        return self.target_ms * (1 - (self.tol if self.mode == "ceiling" else self.margin))

    def term(self, latency_ms: torch.Tensor) -> torch.Tensor:
        """``lambda * g + rho/2 * g^2`` (under: the square only where ``g > 0``): what the theta loss
        adds to the CE."""
        g = self.gap(latency_ms)
        sq = torch.clamp(g, min=0.0) if self.mode == "under" else g
        return self.lam * g + 0.5 * self.rho * sq * sq

    def dual_step(self, gap: float) -> None:
        """``lambda <- lambda + eta * g`` (clamped at 0 for ``under``: a met bound exerts no pull)."""
        self.lam += self.dual_lr * float(gap)
        if self.mode == "under":
            self.lam = max(0.0, self.lam)

    def state_dict(self) -> dict[str, float]:
        return {"lam": self.lam}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.lam = float(d["lam"])


@dataclass
class Commitment:
    """An entropy ceiling on every layer of ``P_theta`` that falls during the search, so the argmax
    is the net the weights trained and the net the budget holds.

    The budget holds the *expected* latency ``LAT(P_theta)`` at ``T``, and the cheapest way to
    lower an expectation is a little more mass on ``skip`` in every layer (its latency gradient
    ``p_k (lat_k - E_l)`` is the most negative there), while the blocks share the rest. Measured on
    the default run: the expected latency sat on the budget while in 17 of 22 layers ``skip`` was
    the most likely block at P 0.4-0.5 against eight blocks at 0.02-0.28: most of each layer's
    mass was on blocks, but no single block beat ``skip``, so the argmax ran at a third of ``T`` and
    scored 20.6 % against the supernet's 47.2 %. The expectation and the argmax agree only when
    ``P_theta`` is nearly one-hot, and the weights must have trained on that net before the end.

    So each layer's entropy, in units of ``log K`` (1: uniform, 0: one-hot), is held under a ceiling
    that falls linearly from 1 at the first theta step to ``end`` at share ``by`` of them (default: the last), by the same method of
    multipliers as the budget (``mu >= 0``; ``g`` is the mean excess, so only the layers above the
    ceiling are pushed)::

        h(s)     = 1 - (1 - end) * min(1, s / by) s: share of the search's theta steps done
        g        = mean_l max(0, H(P_l) / log K - h(s))
        L_theta += mu * g + rho/2 * g^2
        mu      <- mu + eta * g

    Why the entropy and why per layer, measured on the default run (one run each, the same warm-up):

    * on the *mean* entropy (``end`` 0.15) 17 layers committed (largest P 0.89-0.98, mostly
      ``k5_e1``) while the five layers that change resolution or width stayed mixed (0.33-0.77); with
      BN recalibrated, the argmax in the committed layers and the mixture in those five scored 53.8 %,
      the full argmax 26.1 %: the five mixtures held the whole gap;
    * a floor under each layer's *largest* probability committed every layer to the block that led
      when the floor started to rise, which after the first theta epoch is ``skip`` everywhere (the
      budget's first push), and the net ended at a fifth of ``T``. The entropy's pull lifts every
      block above the layer's average, so a block can still overtake ``skip`` while the ceiling
      falls.

    Sharpening the architecture distribution toward one-hot is what SNAS's annealing (Xie et al.
    2019) and FairDARTS' zero-one loss (Chu et al. 2020) aim at; here it is a scheduled constraint,
    not a weight to tune.
    """

    end: float = 0.15
    # Weak on purpose. With eta 5, rho 50 (a stand-in objective tracked the ceiling within 0.03)
    # the default run's layers committed while tau fell and the supernet went from 60 % to 12 %
    # held-out in two epochs (its argmax 11.9 %): weights trained for a mixture of nine blocks did
    # not carry over to the single path that fast. With 0.5, 5 it ended at 50.0 % (argmax 22.2 %).
    dual_lr: float = 0.5
    rho: float = 5.0
    mu: float = 0.0
    # share of the theta steps by which the ceiling reaches ``end`` (it holds there after)
    by: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.end, (int, float)) and math.isfinite(self.end) and 0 <= self.end < 1):
            raise ConfigError(f"--commit must be in [0, 1) (each layer's entropy at the end, as a share of the "
                              f"uniform's), got {self.end!r}")
        if not (isinstance(self.by, (int, float)) and math.isfinite(self.by) and 0 < self.by <= 1):
            raise ConfigError(f"--commit-by must be in (0, 1] (the share of the search's theta steps by which every "
                              f"layer is committed), got {self.by!r}")

    def ceiling(self, progress: float) -> float:
        """``h(s)``: the entropy (share of ``log K``) every layer may have after ``progress`` of the theta steps."""
        s = min(max(float(progress) / self.by, 0.0), 1.0)
        return 1.0 - (1.0 - self.end) * s

    @staticmethod
    def entropies(probs: torch.Tensor) -> torch.Tensor:
        """Per-layer entropy of ``probs`` ``[L, K]`` over ``log K`` (differentiable), ``[L]``."""
        return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1) / math.log(probs.shape[-1])

    def gap(self, probs: torch.Tensor, progress: float) -> torch.Tensor:
        """``g``: the layers' mean excess over the ceiling (0 when every layer is under it)."""
        return torch.clamp(self.entropies(probs) - self.ceiling(progress), min=0.0).mean()

    def term(self, probs: torch.Tensor, progress: float) -> torch.Tensor:
        g = self.gap(probs, progress)
        return self.mu * g + 0.5 * self.rho * g * g

    def dual_step(self, gap: float) -> None:
        self.mu = max(0.0, self.mu + self.dual_lr * float(gap))

    def state_dict(self) -> dict[str, float]:
        return {"mu": self.mu}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.mu = float(d["mu"])


@dataclass
class RepairResult:
    """``indices``: the architecture (a candidate index per layer) after the repair; ``changed``:
    the layers that differ from the argmax; ``latency_ms``: its LUT latency; ``ok``: in the window."""

    indices: list[int]
    changed: list[int]
    latency_ms: float
    ok: bool


def _latency(lut: Any, indices: Sequence[int]) -> float:
    return float(lut.architecture_latency(list(indices)))


def repair(lut: Any, log_probs: torch.Tensor, window: tuple[float, float], *, bins: int = 4000) -> RepairResult:
    """The architecture within ``window`` (ms) that differs from ``argmax(log_probs)`` in the
    fewest layers and, among those, has the largest ``sum log P``.

    Args:
        lut: a :class:`~fbnet_fast.lut.LatencyTable` bound to the space (columns in its order), or
            a multi-target model (repaired greedily: its latency is not a sum).
        log_probs: ``[L, K]`` log-probabilities (``log_softmax(theta)``).
        window: ``(lo, hi)`` in ms on the LUT's predicted (corrected) scale.
    """
    lp = log_probs.detach().double().cpu()
    start = lp.argmax(dim=1).tolist()
    lo, hi = window
    now = _latency(lut, start)
    if lo <= now <= hi:
        return RepairResult(start, [], now, True)
    m = lut.matrix()
    if m.dim() != 2:
        return _repair_greedy(lut, lp, start, window)
    corr = getattr(lut, "correction", None) or {"scale": 1.0, "offset_ms": 0.0}
    # predicted = scale * (sum + fixed) + offset  ->  a window on the plain sum of block entries
    raw_lo = (lo - corr["offset_ms"]) / corr["scale"] - lut.fixed_ms
    raw_hi = (hi - corr["offset_ms"]) / corr["scale"] - lut.fixed_ms
    lat = m.numpy()
    L, K = lat.shape
    top = float(lat.max(axis=1).sum())
    width = max(top, 1e-12) / bins
    big = 1e6  # one changed layer outweighs any difference in log-probability
    cost = torch.where(torch.arange(K)[None, :] == torch.tensor(start)[:, None], 0.0, big).double() - lp
    cost = cost.numpy()
    best = np.full(bins + 2, np.inf)
    exact = np.zeros(bins + 2)
    best[0], exact[0] = 0.0, 0.0
    back = []
    for layer in range(L):
        nb = np.full(bins + 2, np.inf)
        ne = np.zeros(bins + 2)
        arg = np.full((bins + 2, 2), -1, dtype=np.int64)  # (previous bin, candidate)
        alive = np.nonzero(np.isfinite(best))[0]
        for k in range(K):
            e = exact[alive] + lat[layer, k]
            b = np.minimum((e / width).astype(np.int64), bins + 1)
            c = best[alive] + cost[layer, k]
            order = np.lexsort((c, b))  # per target bin, the cheapest first
            b, c, e, src = b[order], c[order], e[order], alive[order]
            first = np.ones(len(b), dtype=bool)
            first[1:] = b[1:] != b[:-1]
            b, c, e, src = b[first], c[first], e[first], src[first]
            better = c < nb[b]
            nb[b[better]], ne[b[better]] = c[better], e[better]
            arg[b[better], 0], arg[b[better], 1] = src[better], k
        best, exact = nb, ne
        back.append(arg)
    feasible = np.nonzero(np.isfinite(best) & (exact >= raw_lo - 1e-12) & (exact <= raw_hi + 1e-12))[0]
    if len(feasible) == 0:  # nothing in the window: the closest architecture, fewest changes first
        dist = np.where(np.isfinite(best), np.maximum(raw_lo - exact, exact - raw_hi), np.inf)
        feasible = np.nonzero(dist <= dist.min() + width)[0]
    end = feasible[np.argmin(best[feasible])]
    indices = [0] * L
    for layer in range(L - 1, -1, -1):
        prev, k = back[layer][end]
        indices[layer] = int(k)
        end = prev
    got = _latency(lut, indices)
    return RepairResult(indices, [l for l in range(L) if indices[l] != start[l]], got, lo <= got <= hi)


def _repair_greedy(lut: Any, lp: torch.Tensor, start: list[int], window: tuple[float, float]) -> RepairResult:
    """Change one layer at a time: the move that gets closest to the window per log-probability lost."""
    lo, hi = window
    cur = list(start)
    now = _latency(lut, cur)
    L, K = lp.shape
    for _ in range(L):
        if lo <= now <= hi:
            break
        dist = max(lo - now, now - hi)
        best = None
        for layer in range(L):
            if cur[layer] != start[layer]:
                continue
            for k in range(K):
                if k == cur[layer]:
                    continue
                cand = cur[:layer] + [k] + cur[layer + 1:]
                t = _latency(lut, cand)
                d = max(lo - t, t - hi, 0.0)
                if d >= dist:
                    continue
                key = (d > 0, d if d > 0 else 0.0, -(float(lp[layer, k]) - float(lp[layer, cur[layer]])))
                if best is None or key < best[0]:
                    best = (key, cand, t)
        if best is None:
            break
        cur, now = best[1], best[2]
    return RepairResult(cur, [l for l in range(L) if cur[l] != start[l]], now, lo <= now <= hi)


def sample_in_band(lut: Any, lo: float, hi: float, n: int, *, seed: int = 0,
                   max_draws: int = 1_000_000) -> tuple[list[list[int]], int]:
    """``n`` architectures drawn uniformly from those whose LUT latency lies in ``[lo, hi]`` ms.

    Plain rejection from the uniform distribution almost never reaches a band far from the
    uniform latency (22 layers: 0.6x of it is several standard deviations out), so each draw
    comes from the exponentially tilted distribution ``q(a) ~ exp(-lam * LAT(a))``, one
    independent choice per layer, with ``lam`` set so that ``q``'s expected latency is the
    band's centre, and is accepted when it lies in the band and then with probability
    ``exp(lam * (LAT(a) - LAT_edge))`` (``LAT_edge``: the band edge ``q`` favours least). The
    accepted architectures are exactly uniform over the band: ``q(a)`` times the acceptance
    is the same for every ``a`` in it.

    Returns ``(architectures as index lists in the LUT's column order, draws it took)``.
    Raises ConfigError when the band is outside the reachable range, is empty, or when
    ``max_draws`` draws did not fill it.
    """
    if not hasattr(lut, "layers") or not hasattr(lut, "matrix"):
        raise ConfigError("sample_in_band needs one additive LatencyTable, not a multi-target model")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"latency band [{lo}, {hi}] ms is empty")
    fast, slow = reachable_range(lut)
    if hi < fast or lo > slow:
        raise ConfigError(f"latency band [{lo:.4f}, {hi:.4f}] ms is outside the space's reachable range "
                          f"[{fast:.4f}, {slow:.4f}] ms")
    m = lut.matrix().double()  # [L, K] block latencies, raw
    f0 = float(lut.predict(0.0))
    s = float(lut.predict(1.0)) - f0  # predict is affine in the block sum: pred = s * sum + f0
    r_lo, r_hi = (lo - f0) / s, (hi - f0) / s
    r_mid = 0.5 * (r_lo + r_hi)
    spread = float((m.max(1).values - m.min(1).values).sum()) or 1.0

    def mean_at(lam: float) -> float:
        p = torch.softmax(-lam * m, dim=1)
        return float((p * m).sum())

    a, b = -200.0 / spread, 200.0 / spread  # mean_at falls as lam grows
    for _ in range(100):
        mid = 0.5 * (a + b)
        a, b = (mid, b) if mean_at(mid) > r_mid else (a, mid)
    lam = 0.5 * (a + b)
    probs = torch.softmax(-lam * m, dim=1)
    edge = r_hi if lam >= 0 else r_lo  # exp(lam * (r - edge)) <= 1 on the band
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    draws = 0
    batch = 4096
    while len(out) < n:
        if draws >= max_draws:
            raise ConfigError(f"only {len(out)} of {n} architectures in [{lo:.4f}, {hi:.4f}] ms after {draws} draws; "
                              f"widen the band")
        idx = torch.multinomial(probs, batch, replacement=True, generator=gen).T  # [batch, L]
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        r = m.gather(1, idx.T).sum(0)
        keep = (r >= r_lo) & (r <= r_hi) & (u < torch.exp(lam * (r - edge)))
        keep[max_draws - draws:] = False  # draws beyond the cap do not count
        hits = keep.nonzero().flatten()[:n - len(out)]
        out += idx[hits].tolist()
        # draws counted up to the last one taken when the batch completed the set, else all of it
        draws += int(hits[-1]) + 1 if len(out) == n else min(batch, max_draws - draws)
    return out, draws
