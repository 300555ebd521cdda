"""dwconv_bn kernels vs their eager references (fbnet_fast/ops/dwconv_bn_ref.py)."""

from __future__ import annotations

from contextlib import closing

import pytest
import torch

from fbnet_fast.ops import _ext
from fbnet_fast.errors import ConfigError
from fbnet_fast.ops import dwconv_bn, dwconv_bn_ref

from fbnet_fast.ops.testing import assert_close_to_ref, at_thread_counts, runnable_isas

pytestmark = pytest.mark.skipif(not _ext.available(), reason="fbnet_fast._C not built (pip install -e .)")

# (N, H, W, C, k, stride)
SHAPES = [
    (2, 8, 8, 16, 3, 1),
    (2, 8, 8, 16, 3, 2),
    (2, 8, 8, 16, 5, 1),
    (2, 8, 8, 16, 5, 2),
    (1, 7, 7, 24, 3, 2),    # batch 1, odd size with stride 2 (ceil output)
    (3, 9, 5, 40, 5, 1),    # non-square, C = 2.5 vectors (tail loop)
    (2, 5, 11, 3, 3, 2),    # C below one vector
    (1, 1, 1, 8, 5, 1),     # 1x1 image: every tap but the centre is padding
    (2, 2, 3, 17, 5, 2),    # image smaller than the kernel
    (2, 13, 13, 48, 3, 1),  # several reduction chunks
    (2, 30, 64, 48, 5, 1),  # 22-row chunks that start mid-image (the activated-row ring restarts)
    (2, 12, 9, 16, 5, 2),   # even height at stride 2: the ring skips a row between outputs
    # stride-1 backward by the row kernel (16- and 8-channel blocks, then the gather loop):
    (2, 9, 10, 8, 3, 1),    # one 8-block (the width-0.25 search's e1 candidates)
    (2, 7, 6, 24, 5, 1),    # a 16-block and an 8-block
    (3, 5, 4, 12, 3, 1),    # an 8-block and 4 channels gathered; W = 4 = one pixel block
    (2, 6, 7, 3, 5, 1),     # below one 8-block: gathered only; W = 7: a partial pixel block
    (1, 3, 2, 40, 5, 1),    # image narrower than the kernel: most taps read padding
    (2, 4, 2, 72, 3, 1),    # weight gradient, two blocks at once (k3), image narrower than the kernel
    (2, 6, 11, 96, 3, 1),   # weight gradient's sliding window: W not a multiple of k (its tail loop)
    (2, 5, 12, 24, 5, 1),   # ... and at k5, a 16-block and an 8-block
    # stride-2 backward by the gather loop: 16-channel blocks, then 8-channel blocks, then single channels
    (2, 9, 10, 8, 3, 2),    # one 8-block (the e1 candidates of a reduction layer)
    (2, 7, 6, 28, 5, 2),    # a 16-block, an 8-block and 4 single channels
    # activated rows with scale and shift in registers (activate_row): 4 vector blocks in v3 / v4, 3 and an 8-tail in v4
    (2, 5, 6, 32, 3, 1),
    (2, 4, 5, 64, 5, 1),
    (1, 5, 5, 56, 3, 2),
]


def _inputs(n, h, w, c, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, h, w, c, generator=gen)
    scale = torch.rand(c, generator=gen) + 0.5
    shift = torch.randn(c, generator=gen) * 0.5
    weight = torch.randn(k * k, c, generator=gen)
    center = torch.randn(c, generator=gen) * 0.1
    return z1, scale, shift, weight, center


@pytest.mark.parametrize("n,h,w,c,k,stride", SHAPES)
def test_forward(n, h, w, c, k, stride, isa):
    z1, a, b, wt, _ = _inputs(n, h, w, c, k)
    got = dwconv_bn.dwconv_bn_forward(z1, a, b, wt, stride)
    ref32 = dwconv_bn_ref.dwconv_bn_forward_ref(z1, a, b, wt, stride)
    ref64 = dwconv_bn_ref.dwconv_bn_forward_ref(z1.double(), a.double(), b.double(), wt.double(), stride)
    for name in ("out", "mean", "var"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))
    nostats = dwconv_bn.dwconv_bn_forward(z1, a, b, wt, stride, stats=False)
    assert nostats.mean is None and torch.equal(nostats.out, got.out)
    # BN2 apply + ReLU from the same pass (the recomputation in backward).
    a2, b2 = a.flip(0).contiguous(), (b * 3).contiguous()  # shift * 3: a good share of ReLU zeros
    fused = dwconv_bn.dwconv_bn_forward(z1, a, b, wt, stride, stats=False, scale2=a2, shift2=b2)
    assert torch.equal(fused.out, got.out)
    ref64 = dwconv_bn_ref.dwconv_bn_forward_ref(z1.double(), a.double(), b.double(), wt.double(), stride,
                                                scale2=a2.double(), shift2=b2.double())
    ref32 = dwconv_bn_ref.dwconv_bn_forward_ref(z1, a, b, wt, stride, scale2=a2, shift2=b2)
    assert_close_to_ref("act", fused.act, ref32.act, ref64.act)


@pytest.mark.parametrize("n,h,w,c,k,stride", SHAPES)
def test_backward(n, h, w, c, k, stride, isa):
    z1, a, b, wt, ctr = _inputs(n, h, w, c, k)
    ho, wo = dwconv_bn.conv_out_size(h, stride), dwconv_bn.conv_out_size(w, stride)
    g = torch.randn(n, ho, wo, c, generator=torch.Generator().manual_seed(1))
    got = dwconv_bn.dwconv_bn_backward(g, z1, a, b, wt, stride, ctr)
    ref32 = dwconv_bn_ref.dwconv_bn_backward_ref(g, z1, a, b, wt, stride, ctr)
    ref64 = dwconv_bn_ref.dwconv_bn_backward_ref(*(t.double() for t in (g, z1, a, b, wt)), stride, ctr.double())
    for name in ("grad_in", "grad_weight", "sum_g", "sum_gz"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))


@pytest.mark.parametrize("stride", [1, 2])
def test_backward_is_thread_count_invariant(stride, isa):
    z1, a, b, wt, ctr = _inputs(4, 15, 15, 40, 5, seed=2)
    ho = dwconv_bn.conv_out_size(15, stride)
    g = torch.randn(4, ho, ho, 40)
    # 60 input rows: 15 chunks of 4 (the chunk floor), split unevenly by 2 and 3
    res = at_thread_counts(lambda: dwconv_bn.dwconv_bn_backward(g, z1, a, b, wt, stride, ctr), (1, 2, 3))
    for run in res[1:]:
        for x, y in zip(res[0], run):
            assert torch.equal(x, y)


def test_errors_name_the_tensor():
    z1, a, b, wt, _ = _inputs(1, 4, 4, 8, 3)
    with pytest.raises(ConfigError, match=r"weight must be \[k\*k, 8\]"):
        dwconv_bn.dwconv_bn_forward(z1, a, b, torch.randn(8, 8), 1)
    with pytest.raises(ConfigError, match="stride must be 1 or 2"):
        dwconv_bn.dwconv_bn_forward(z1, a, b, wt, 3)
    with pytest.raises(ConfigError, match="z1 must be contiguous"):
        dwconv_bn.dwconv_bn_forward(z1.transpose(1, 2), a, b, wt, 1)


@pytest.mark.parametrize("k,stride", [(5, 1), (3, 2)])
def test_backward_without_weight_grad(k, stride):
    """``weight_grad=False`` (frozen weights): no weight gradient, the rest bit-identical."""
    z1, a, b, wt, ctr = _inputs(2, 9, 11, 40, k, seed=6)
    ho, wo = dwconv_bn.conv_out_size(9, stride), dwconv_bn.conv_out_size(11, stride)
    g = torch.randn(2, ho, wo, 40, generator=torch.Generator().manual_seed(3))
    full = dwconv_bn.dwconv_bn_backward(g, z1, a, b, wt, stride, ctr)
    part = dwconv_bn.dwconv_bn_backward(g, z1, a, b, wt, stride, ctr, weight_grad=False)
    assert part.grad_weight is None
    for name in ("grad_in", "sum_g", "sum_gz"):
        assert torch.equal(getattr(full, name), getattr(part, name)), name


@pytest.mark.parametrize("k,stride", [(5, 1), (3, 2)])
def test_isa_variants_agree(k, stride):
    """Each compiled ISA variant this CPU runs (base x86-64, AVX2, AVX-512) is checked against the
    reference: the vector-typed fast paths compile to SSE, AVX2 or AVX-512 code. C = 40 covers the
    16-, 8- and scalar channel blocks."""
    ext = _ext.load()
    if not hasattr(ext, "set_isa"):
        pytest.skip("single-variant build")
    z1, a, b, wt, ctr = _inputs(2, 9, 11, 40, k, seed=4)
    a2, b2 = a.flip(0).contiguous(), (b * 3).contiguous()
    ho, wo = dwconv_bn.conv_out_size(9, stride), dwconv_bn.conv_out_size(11, stride)
    g = torch.randn(2, ho, wo, 40, generator=torch.Generator().manual_seed(2))
    d = [t.double() for t in (z1, a, b, wt)]
    f32 = dwconv_bn_ref.dwconv_bn_forward_ref(z1, a, b, wt, stride, scale2=a2, shift2=b2)
    f64 = dwconv_bn_ref.dwconv_bn_forward_ref(*d, stride, scale2=a2.double(), shift2=b2.double())
    b32 = dwconv_bn_ref.dwconv_bn_backward_ref(g, z1, a, b, wt, stride, ctr)
    b64 = dwconv_bn_ref.dwconv_bn_backward_ref(g.double(), *d, stride, ctr.double())
    with closing(runnable_isas(ext)) as isas:  # closing: the ISA is restored even when an assert fails
        for isa in isas:
            fw = dwconv_bn.dwconv_bn_forward(z1, a, b, wt, stride)
            fa = dwconv_bn.dwconv_bn_forward(z1, a, b, wt, stride, stats=False, scale2=a2, shift2=b2)
            bw = dwconv_bn.dwconv_bn_backward(g, z1, a, b, wt, stride, ctr)
            for name in ("out", "mean", "var"):
                assert_close_to_ref(f"{isa} {name}", getattr(fw, name), getattr(f32, name), getattr(f64, name))
            assert_close_to_ref(f"{isa} act", fa.act, f32.act, f64.act)
            for name in ("grad_in", "grad_weight", "sum_g", "sum_gz"):
                assert_close_to_ref(f"{isa} {name}", getattr(bw, name), getattr(b32, name), getattr(b64, name))
