"""ReLU kinks in the "<= 2x eager fp32's error" rule: which gradient differences a rounding may cause.

Why the plain rule is not enough for a network with ReLUs
----------------------------------------------------------
A gradient through ``relu(z)`` is discontinuous at ``z = 0``. When the fp64 value of a
pre-activation lies closer to 0 than an fp32 implementation's rounding error of it, that
implementation may take either branch, and the two branches' gradients differ by the whole
upstream gradient at that position, not by a rounding. Which fp32 implementation flips is
luck: the summation order decides. Measured on this project's supernet step
(tests/test_mixed_op.py, AMD EPYC): the head's 1x1 conv + BN + ReLU has 1.5 M
pre-activations, 15 of them within 1e-5 of 0 in fp64, while fp32 rounds them by up to
3.7e-6. The fused mixed op's output (max error 2.0e-6 against fp64, eager's: 2.0e-6) moved
one head pre-activation at ``|z| = 2.4e-8`` across 0; eager's rounding moved none. That one
flip changes the stem's weight gradient by 9e-5, 70x the old 2x-eager bound. The bound,
not the kernel, was ill-founded.

The bound used instead
----------------------
Every ReLU input of the fp64 reference is recorded (:class:`ReluRecorder`, a
``TorchFunctionMode``), and so is the same input in the eager fp32 runs (same code, same
call order). A position ``j`` of ReLU call ``k`` is *ambiguous* when

    |z64_j| <= RADIUS * max(max_i |z32_i - z64_i|, eps32 * max_i |z64_i|)        (RADIUS = 2)

with the max over the eager ensemble (tests/_mixed_op_check.py): within twice fp32's worst
rounding of that tensor, the same factor the fused results are held to. (The flip above sat
far inside: 2.4e-8 against a radius of about 1e-5.) Flipping such a position's branch changes
a gradient ``dL/dp`` by ``+- g_j dz_j/dp`` to first order, where ``g_j`` is the upstream
gradient at the ReLU's output (backward is linear in the upstream gradient once the forward
is fixed; the forward value moves by ``|z_j| <= t``, a second-order effect).
:func:`relu_flip_slack` computes ``|g_j dz_j/dp|`` exactly in fp64 (one
vector-Jacobian product per ambiguous position; the soft supernet step has about 90) and
sums them per element, so a gradient element's bound is

    factor * eager_err + floor * max(|ref|, 1) + sum_j |g_j dz_j/dp|.

The slack is zero wherever no ReLU input is near its kink, so everything else keeps the
plain rule; a real defect (a wrong sum, a lost term) is no sum of a few branch flips and
still fails.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["RADIUS", "ReluRecorder", "relu_flip_slack"]

RADIUS = 2.0
_RELUS = (torch.relu, F.relu, torch.Tensor.relu)
_INPLACE = (torch.relu_, torch.Tensor.relu_)


class ReluRecorder(TorchFunctionMode):
    """Records ``(input, output)`` of every out-of-place ReLU called while it is active, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INPLACE or (func is F.relu and (kwargs.get("inplace") or (len(args) > 1 and args[1]))):
            raise AssertionError("in-place ReLU under ReluRecorder: its input is overwritten and cannot be kept")
        out = func(*args, **kwargs)
        if func in _RELUS:  # F.relu calls torch.relu inside: the mode is off in here, so one record per call
            self.calls.append((args[0], out))
        return out


def relu_flip_slack(loss64: torch.Tensor, rec64: ReluRecorder, recs32: Sequence[ReluRecorder],
                    targets: Mapping[str, torch.Tensor], *, radius: float = RADIUS) -> dict[str, torch.Tensor]:
    """Per-element gradient slack from the ReLU positions an fp32 rounding may flip.

    Args:
        loss64: the fp64 reference's scalar loss, its graph still alive (backward with
            ``retain_graph=True`` first, or not at all).
        rec64: the fp64 forward's ReLU calls.
        recs32: the ReLU calls of one or more eager fp32 forward passes of the same code
            (the worst error over them sets each call's ambiguity radius).
        targets: the fp64 leaves whose gradients are compared (parameters, inputs).

    Returns:
        ``{name: sum over ambiguous positions j of |g_j dz_j/d target|}`` (float64, the
        target's shape; zeros where no ReLU input is near its kink).
    """
    for rec in recs32:
        if len(rec.calls) != len(rec64.calls):
            raise AssertionError(f"fp64 and fp32 runs made {len(rec64.calls)} vs {len(rec.calls)} ReLU calls")
    names = [n for n, t in targets.items() if t.requires_grad]
    leaves = [targets[n] for n in names]
    slack = {n: torch.zeros(t.shape, dtype=torch.float64) for n, t in targets.items()}
    outs = [o for _, o in rec64.calls]
    if not outs:
        return slack
    ups = torch.autograd.grad(loss64, outs, retain_graph=True, allow_unused=True)
    eps32 = torch.finfo(torch.float32).eps
    for k, ((z64, _), g) in enumerate(zip(rec64.calls, ups)):
        if g is None or not z64.requires_grad:
            continue
        zd = z64.detach()
        err = 0.0
        for rec in recs32:
            z32 = rec.calls[k][0]
            if z32.shape != zd.shape:
                raise AssertionError(f"ReLU call {k}: fp32 input {list(z32.shape)} vs fp64 {list(zd.shape)}")
            err = max(err, (z32.detach().double() - zd).abs().max().item())
        t = radius * max(err, eps32 * zd.abs().max().item())
        for j in torch.nonzero((zd.abs() <= t) & (g != 0)).tolist():
            j = tuple(j)
            v = torch.zeros_like(zd)
            v[j] = g[j]  # the upstream gradient at position j alone
            grads = torch.autograd.grad(z64, leaves, grad_outputs=v, retain_graph=True, allow_unused=True)
            for n, d in zip(names, grads):
                if d is not None:
                    slack[n] += d.detach().double().abs()
    return slack
