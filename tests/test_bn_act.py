"""bn_act kernels vs their eager references (fbnet_fast/ops/bn_act_ref.py)."""

from __future__ import annotations

import pytest
import torch

from fbnet_fast import _ext
from fbnet_fast.errors import ConfigError
from fbnet_fast.ops import bn_act, bn_act_ref

from _kernel_tol import assert_close_to_ref

pytestmark = pytest.mark.skipif(not _ext.available(), reason="fbnet_fast._C not built (pip install -e .)")

SHAPES = [
    (1, 1),       # a single row: degenerate reductions
    (7, 3),       # C below one vector: tail-only loops
    (97, 16),     # prime rows, one full vector of channels
    (1000, 37),   # channels not a multiple of the vector width
    (4099, 144),  # more rows than one reduction chunk (fixed-order partials)
]


def _inputs(m, c, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, c, generator=g) * 2 + offset
    grad = torch.randn(m, c, generator=g)
    vecs = [torch.randn(c, generator=g) for _ in range(6)]
    return z, grad, vecs


@pytest.mark.parametrize("m,c", SHAPES)
@pytest.mark.parametrize("offset", [0.0, 30.0])  # 30: |mean| >> std, where E[z^2]-E[z]^2 cancels
def test_bn_stats(m, c, offset):
    z, _, _ = _inputs(m, c, offset=offset)
    got = bn_act.bn_stats(z)
    ref64, ref32 = bn_act_ref.bn_stats_ref(z.double()), bn_act_ref.bn_stats_ref(z)
    for name in ("mean", "var"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))


@pytest.mark.parametrize("m,c", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_affine_act_and_accumulate(m, c, relu):
    z, _, (a, b, *_) = _inputs(m, c)
    ref = bn_act_ref.affine_act_ref(z.double(), a.double(), b.double(), relu=relu)
    assert_close_to_ref("affine_act", bn_act.affine_act(z, a, b, relu=relu),
                        bn_act_ref.affine_act_ref(z, a, b, relu=relu), ref)
    out = torch.ones(m, c)
    bn_act.affine_act_accumulate_(out, z, a, b, relu=relu, alpha=0.37)
    out32 = torch.ones(m, c)
    bn_act_ref.affine_act_accumulate_ref(out32, z, a, b, relu=relu, alpha=0.37)
    assert_close_to_ref("accumulate", out, out32, 1 + 0.37 * ref)
    # In place over z (the forward reuses z2's buffer for h2).
    zz = z.clone()
    bn_act.affine_act(zz, a, b, relu=relu, out=zz)
    assert_close_to_ref("affine_act in place", zz, bn_act_ref.affine_act_ref(z, a, b, relu=relu), ref)


@pytest.mark.parametrize("m,c", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_act_grad_sums_and_apply(m, c, relu):
    z, g, (a, b, ctr, k1, k2, k3) = _inputs(m, c)
    d = [t.double() for t in (g, z, a, b, ctr)]
    got = bn_act.act_grad_sums(g, z, a, b, ctr, relu=relu)
    ref64 = bn_act_ref.act_grad_sums_ref(*d, relu=relu)
    ref32 = bn_act_ref.act_grad_sums_ref(g, z, a, b, ctr, relu=relu)
    for name in ("sum_g", "sum_gz"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))
    ks = (k1, k2, k3)
    got = bn_act.act_grad_apply(g, z, a, b, ctr, *ks, relu=relu)
    ref64 = bn_act_ref.act_grad_apply_ref(*d, *(k.double() for k in ks), relu=relu)
    assert_close_to_ref("act_grad_apply", got, bn_act_ref.act_grad_apply_ref(g, z, a, b, ctr, *ks, relu=relu), ref64)


def test_reductions_are_thread_count_invariant():
    z, g, (a, b, ctr, *_) = _inputs(5003, 72, seed=3)
    old = torch.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            torch.set_num_threads(t)
            res.append((*bn_act.bn_stats(z), *bn_act.act_grad_sums(g, z, a, b, ctr, relu=True)))
    finally:
        torch.set_num_threads(old)
    for x, y in zip(*res):
        assert torch.equal(x, y)


def test_launcher_errors_name_the_tensor():
    z = torch.randn(8, 4)
    with pytest.raises(ConfigError, match="z must be contiguous"):
        bn_act.bn_stats(z.t())
    with pytest.raises(ConfigError, match="z must be float32"):
        bn_act.bn_stats(z.double())
    with pytest.raises(ConfigError, match=r"scale must be a contiguous float32 \[4\]"):
        bn_act.affine_act(z, torch.ones(3), torch.ones(4), relu=True)
