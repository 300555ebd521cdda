"""Triton kernels run on CPU under ``TRITON_INTERPRET=1``, against the eager ``_ref`` oracles.

Not collected by a plain ``pytest`` (the name does not match ``test_*.py``):
``tests/test_triton_kernels.py::test_interpreter_numerics`` runs this module in a
subprocess with ``TRITON_INTERPRET=1`` set before triton is imported (Triton reads it
when ``@triton.jit`` decorates a kernel, so it cannot be switched on inside a process
that already imported the kernels). To run it by hand::

    TRITON_INTERPRET=1 python -m pytest -q tests/_triton_interp_cases.py

Tolerance everywhere: the fused fp32 result's max error against an fp64 reference is at
most 2x eager fp32's (``fbnet_fast.ops.testing.assert_close_to_ref``); the mixed-op cases use the CPU
tests' oracle (``fbnet_fast.ops.testing``: an eager ensemble, and the ReLU-kink slack for gradients). Shapes are small: the interpreter runs each
program in Python (about 1 ms per program and operation).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (run via test_triton_kernels.py)",
                allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

import fbnet_fast.ops as ops_pkg  # noqa: E402
from fbnet_fast.ops import (bn_act, bn_act_ref, bn_act_triton, dwconv_bn, dwconv_bn_ref,  # noqa: E402
                            dwconv_bn_triton)
from fbnet_fast.ops.mixed_op_fused import mixed_op_fused  # noqa: E402
from fbnet_fast.ops.mixed_op_ref import mixed_op_ref  # noqa: E402
from fbnet_fast.space import FBNET_CANDIDATES, Stage, load_space  # noqa: E402
from fbnet_fast.supernet import Supernet  # noqa: E402

from fbnet_fast.ops.testing import assert_close_to_ref  # noqa: E402
from fbnet_fast.ops.testing import compare_mixed_op, compare_supernet_step, make_mixed_op  # noqa: E402
from test_bn_act import check_bn_fold, check_bn_grad_fold  # noqa: E402  (the CPU tests' checks, one oracle)

torch.set_num_threads(1)


@pytest.fixture(params=["default", "few_programs"])
def policy(request, monkeypatch):
    """``few_programs`` caps stage 1 at 3 programs per channel block, so every program
    loops over several tiles (the in-chunk Chan merge and accumulation paths)."""
    if request.param == "few_programs":
        monkeypatch.setattr(bn_act_triton, "TARGET_PROGRAMS", 3)
    return request.param


# ------------------------------------------------------------------------------ bn_act
BN_SHAPES = [
    (1, 1),      # a single row and channel: degenerate reductions
    (7, 3),      # fewer channels than one block
    (97, 16),    # prime rows
    (300, 37),   # two channel blocks, the second partial
    (2113, 5),   # 34 row tiles: more partials than one stage-2 block (32)
]


def _bn_inputs(m, c, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, c, generator=g) * 2 + offset
    grad = torch.randn(m, c, generator=g)
    return z, grad, [torch.randn(c, generator=g) for _ in range(6)]


@pytest.mark.parametrize("m,c", BN_SHAPES)
@pytest.mark.parametrize("offset", [0.0, 30.0])  # 30: |mean| >> std, where E[z^2] - E[z]^2 would cancel
def test_bn_act_stats(m, c, offset, policy):
    z, _, _ = _bn_inputs(m, c, offset)
    got = bn_act_triton.bn_stats(z)
    ref32, ref64 = bn_act_ref.bn_stats_ref(z), bn_act_ref.bn_stats_ref(z.double())
    for name in ("mean", "var"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))


@pytest.mark.parametrize("m,c", BN_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_bn_act_affine_and_accumulate(m, c, relu):
    z, _, (a, b, *_) = _bn_inputs(m, c)
    ref = bn_act_ref.affine_act_ref(z.double(), a.double(), b.double(), relu=relu)
    eager = bn_act_ref.affine_act_ref(z, a, b, relu=relu)
    assert_close_to_ref("affine_act", bn_act_triton.affine_act(z, a, b, relu=relu), eager, ref)
    zz = z.clone()  # in place over z, as the forward writes h2 over z2
    bn_act_triton.affine_act(zz, a, b, relu=relu, out=zz)
    assert_close_to_ref("affine_act in place", zz, eager, ref)
    out, out32 = torch.ones(m, c), torch.ones(m, c)
    bn_act_triton.affine_act_accumulate_(out, z, a, b, relu=relu, alpha=0.37)
    bn_act_ref.affine_act_accumulate_ref(out32, z, a, b, relu=relu, alpha=0.37)
    assert_close_to_ref("affine_act_accumulate_", out, out32, 1 + 0.37 * ref)


@pytest.mark.parametrize("m,c", BN_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_bn_act_grad_sums_and_apply(m, c, relu, policy):
    z, g, (a, b, ctr, k1, k2, k3) = _bn_inputs(m, c)
    d = [t.double() for t in (g, z, a, b, ctr)]
    got = bn_act_triton.act_grad_sums(g, z, a, b, ctr, relu=relu)
    ref32 = bn_act_ref.act_grad_sums_ref(g, z, a, b, ctr, relu=relu)
    ref64 = bn_act_ref.act_grad_sums_ref(*d, relu=relu)
    for name in ("sum_g", "sum_gz"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))
    ks = (k1, k2, k3)
    gg = g.clone()  # out=grad, as the backward reuses grad's buffer
    got = bn_act_triton.act_grad_apply(gg, z, a, b, ctr, *ks, relu=relu, out=gg)
    assert_close_to_ref("act_grad_apply", got, bn_act_ref.act_grad_apply_ref(g, z, a, b, ctr, *ks, relu=relu),
                        bn_act_ref.act_grad_apply_ref(*d, *(k.double() for k in ks), relu=relu))


@pytest.mark.parametrize("c", [1, 37, 600])  # one channel; a partial block; 3 blocks of 256
@pytest.mark.parametrize("use_perm", [False, True], ids=["identity", "perm"])
@pytest.mark.parametrize("flag", [False, True], ids=["eval", "train"])
def test_bn_act_folds(c, use_perm, flag):
    """The BatchNorm finishing kernels (update running stats / batch-statistics gradient when ``flag``)."""
    check_bn_fold(bn_act_triton.bn_fold, c, use_perm, flag)
    check_bn_grad_fold(bn_act_triton.bn_grad_fold, c, use_perm, flag)


# --------------------------------------------------------------------------- dwconv_bn
# (N, H, W, C, k, stride)
DW_SHAPES = [
    (2, 8, 8, 16, 3, 1),
    (2, 8, 8, 16, 5, 2),
    (1, 7, 7, 24, 3, 2),   # batch 1, odd size at stride 2 (ceil output)
    (3, 9, 5, 40, 5, 1),   # non-square, two channel blocks
    (2, 5, 11, 3, 3, 2),   # C below one block
    (1, 1, 1, 8, 5, 1),    # 1x1 image: every tap but the centre is padding
    (2, 2, 3, 17, 5, 2),   # image smaller than the kernel
    (1, 6, 6, 8, 5, 2),    # even size at stride 2: the last row has no tap below
]


def _dw_inputs(n, h, w, c, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, h, w, c, generator=gen)
    scale = torch.rand(c, generator=gen) + 0.5
    shift = torch.randn(c, generator=gen) * 0.5
    weight = torch.randn(k * k, c, generator=gen)
    center = torch.randn(c, generator=gen) * 0.1
    return z1, scale, shift, weight, center


@pytest.mark.parametrize("n,h,w,c,k,stride", DW_SHAPES)
def test_dwconv_forward(n, h, w, c, k, stride, policy):
    z1, a, b, wt, _ = _dw_inputs(n, h, w, c, k)
    got = dwconv_bn_triton.dwconv_bn_forward(z1, a, b, wt, stride)
    ref32 = dwconv_bn_ref.dwconv_bn_forward_ref(z1, a, b, wt, stride)
    ref64 = dwconv_bn_ref.dwconv_bn_forward_ref(z1.double(), a.double(), b.double(), wt.double(), stride)
    for name in ("out", "mean", "var"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))
    nostats = dwconv_bn_triton.dwconv_bn_forward(z1, a, b, wt, stride, stats=False)
    assert nostats.mean is None and nostats.var is None and torch.equal(nostats.out, got.out)


@pytest.mark.parametrize("n,h,w,c,k,stride", DW_SHAPES)
def test_dwconv_backward(n, h, w, c, k, stride, policy):
    z1, a, b, wt, ctr = _dw_inputs(n, h, w, c, k)
    ho, wo = dwconv_bn.conv_out_size(h, stride), dwconv_bn.conv_out_size(w, stride)
    g = torch.randn(n, ho, wo, c, generator=torch.Generator().manual_seed(1))
    got = dwconv_bn_triton.dwconv_bn_backward(g, z1, a, b, wt, stride, ctr)
    ref32 = dwconv_bn_ref.dwconv_bn_backward_ref(g, z1, a, b, wt, stride, ctr)
    ref64 = dwconv_bn_ref.dwconv_bn_backward_ref(*(t.double() for t in (g, z1, a, b, wt)), stride, ctr.double())
    for name in ("grad_in", "grad_weight", "sum_g", "sum_gz"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))


# ------------------------------------------------------------- the Function, end to end
@pytest.fixture
def triton_on_cpu(monkeypatch):
    """Route the family launchers' CPU tensors to the Triton modules (as CUDA tensors are)."""
    mods = {"bn_act": bn_act_triton, "dwconv_bn": dwconv_bn_triton}
    for fam in (bn_act, dwconv_bn):
        monkeypatch.setattr(fam, "backend", lambda t, family: mods[family])


# (N, c_in, c_out, stride, H, W, channels_last)
MIXED_SHAPES = [
    (2, 8, 8, 1, 5, 5, False),    # residual layer: identity skip + residual IR candidates
    (2, 8, 8, 1, 5, 5, True),     # channels_last input
    (2, 8, 16, 2, 7, 7, True),    # stride 2, channel change, odd size
    (1, 16, 8, 1, 5, 5, False),   # batch 1, channel reduction (skip is conv+BN+ReLU)
    (3, 8, 8, 2, 5, 7, False),    # non-square, stride 2 same width: strided skip conv
]


@pytest.mark.parametrize("n,c_in,c_out,stride,h,w,cl", MIXED_SHAPES)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_mixed_op_function(n, c_in, c_out, stride, h, w, cl, hard, triton_on_cpu):
    """Output, grad of x / theta / every parameter, and BN running stats vs the eager ensemble
    and fp64 (fbnet_fast.ops.testing: the CPU tests' oracle)."""
    op = make_mixed_op(c_in, c_out, stride, h)
    x = torch.randn(n, c_in, h, w, generator=torch.Generator().manual_seed(1))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    theta = torch.randn(len(FBNET_CANDIDATES), generator=torch.Generator().manual_seed(2))
    compare_mixed_op(op, x, theta, hard, mixed_op_fused)


def test_mixed_op_supernet_step(triton_on_cpu, monkeypatch):
    """One supernet training step (fbnet-cifar at width 0.25, three layers) through the Triton kernels."""
    monkeypatch.setattr(ops_pkg, "mixed_op", lambda x, w, op, impl: op.impl(x, w, op.candidates))
    space = load_space("fbnet-cifar", width_mult=0.25)
    space = space.replace(stages=[Stage(16, 1, 1), Stage(32, 2, 2), Stage(64, 1, 1)])
    torch.manual_seed(0)
    ref = Supernet(space, impl="reference")
    for p in ref.arch_parameters():
        p.data.normal_()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))  # 8x8: the interpreter is slow
    y = torch.randint(0, space.num_classes, (2,), generator=torch.Generator().manual_seed(2))

    def forward(kind, net, xx, w):
        for op in net.layers:  # read by the patched dispatch above
            op.impl = mixed_op_fused if kind == "fused" else mixed_op_ref
        return net(xx, w)

    compare_supernet_step(ref, x, y, False, forward)
