"""The kernel tests' oracle itself: it must let legitimate fp32 differences through and catch defects.

fbnet_fast.ops.testing widened the old "2x eager" rule in two ways (an eager ensemble, and
the ReLU-kink slack of fbnet_fast.ops.testing); these tests pin down that neither widening
hides a wrong result: the slack is exactly the effect of the branch flips it allows, and
defects of 1e-5 relative in an output or the gradients, or 1e-4 in one parameter's
gradient, still fail.
"""

from __future__ import annotations

import pytest
import torch

from fbnet_fast.ops import _ext
from fbnet_fast.ops.mixed_op_fused import mixed_op_fused
from fbnet_fast.space import FBNET_CANDIDATES

from fbnet_fast.ops.testing import compare_mixed_op, make_mixed_op
from fbnet_fast.ops.testing import ReluRecorder, relu_flip_slack

needs_ext = pytest.mark.skipif(not _ext.available(), reason="fbnet_fast._C not built (pip install -e .)")


def _tiny_relu_net(dtype, flip_at=None):
    """``loss = sum(c * relu(x @ W + b))`` with one pre-activation, (1, 2), at 1e-9 in fp64.

    ``flip_at``: compute the backward as if that position's ReLU took the other branch.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64)
    c = torch.randn(3, 5, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    b[2] = 1e-9 - (x[1] @ w[:, 2])  # z[1, 2] = 1e-9: any fp32 rounding may put it on either side of 0
    leaves = {k: t.to(dtype).requires_grad_(True) for k, t in (("x", x), ("w", w), ("b", b))}
    z = leaves["x"] @ leaves["w"] + leaves["b"]
    if flip_at is None:
        y = torch.relu(z)
    else:
        mask = (z.detach() > 0).to(dtype)
        mask[flip_at] = 1 - mask[flip_at]
        y = z * mask  # the same values to within |z[flip_at]| = 1e-9, the other branch's gradient
    loss = (c.to(dtype) * y).sum()
    return loss, leaves


def test_relu_flip_slack_is_the_exact_effect_of_the_flip_it_allows():
    rec64, rec32 = ReluRecorder(), ReluRecorder()
    with rec64:
        loss64, leaves64 = _tiny_relu_net(torch.float64)
    with rec32:
        _tiny_relu_net(torch.float32)
    assert len(rec64.calls) == len(rec32.calls) == 1
    slack = relu_flip_slack(loss64, rec64, [rec32], leaves64)
    true = torch.autograd.grad(loss64, list(leaves64.values()))
    loss_f, leaves_f = _tiny_relu_net(torch.float64, flip_at=(1, 2))
    flipped = torch.autograd.grad(loss_f, list(leaves_f.values()))
    for name, t, f in zip(leaves64, true, flipped):
        torch.testing.assert_close(slack[name], (f - t).abs(), rtol=1e-12, atol=1e-15, msg=name)
    # Only position (1, 2) is near its kink: the slack touches x's row 1, W's column 2, b[2].
    assert slack["x"][[0, 2]].abs().max() == 0 and slack["w"][:, [0, 1, 3, 4]].abs().max() == 0
    assert slack["b"][2] > 0 and slack["b"][[0, 1, 3, 4]].abs().max() == 0


def test_relu_flip_slack_is_zero_away_from_kinks():
    rec64, rec32 = ReluRecorder(), ReluRecorder()
    with rec64:
        z64 = torch.linspace(0.5, 1.5, 12, dtype=torch.float64).reshape(3, 4).requires_grad_(True)
        loss64 = torch.relu(torch.cat([z64, -z64])).pow(2).sum()
    with rec32:
        z32 = z64.detach().float()
        torch.relu(torch.cat([z32, -z32]))
    slack = relu_flip_slack(loss64, rec64, [rec32], {"z": z64})
    assert slack["z"].abs().max() == 0


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, s):
        ctx.s = s
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.s, None


def _defective(kind: str, rel: float):
    """The fused mixed op with one defect of relative size ``rel``."""

    def fn(x, w, cands):
        if kind == "param grad":  # one BN scale's gradient only
            cands[3].bn2.weight.register_hook(lambda g: g * (1 + rel))
        y = mixed_op_fused(x, w, cands)
        if kind == "output":
            return y * (1 + rel)
        if kind == "all grads":
            return _ScaleGrad.apply(y, 1 + rel)
        return y

    return fn


@needs_ext
@pytest.mark.parametrize("kind", ["output", "all grads", "param grad"])
@pytest.mark.parametrize("n,c_in,c_out,stride,h,cl", [(2, 8, 8, 1, 8, False), (1, 8, 16, 2, 7, True)])
def test_oracle_catches_small_defects(kind, n, c_in, c_out, stride, h, cl):
    """A defect of 1e-5 relative in the output or in every gradient fails, and so does 1e-4 in the
    gradient of one BN scale (whose entries, ~0.05, sit under the rule's absolute floor of 1e-6)."""
    op = make_mixed_op(c_in, c_out, stride, h)
    x = torch.randn(n, c_in, h, h, generator=torch.Generator().manual_seed(1))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    theta = torch.randn(len(FBNET_CANDIDATES), generator=torch.Generator().manual_seed(2))
    compare_mixed_op(op, x, theta, False, _defective(kind, 0.0))  # the same path without the defect passes
    with pytest.raises(AssertionError, match="output" if kind == "output" else "grad"):
        compare_mixed_op(op, x, theta, False, _defective(kind, 1e-4 if kind == "param grad" else 1e-5))
