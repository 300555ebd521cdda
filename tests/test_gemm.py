"""The small-product kernel (csrc/small_gemm.cpp) vs an exact product, on every ISA variant.

Tolerance, derived: the kernel sums ``K`` float32 products in order with FMA, so each output
element's error against the exact sum is at most ``gamma_K * sum_k |a_ik b_kj|`` with
``gamma_K = K u / (1 - K u)``, ``u = 2**-24`` (Higham, Accuracy and Stability of Numerical
Algorithms, 3.1). The test bounds it by ``1.01 K u (|a| @ |b|)`` against a float64 product, plus
for ``accumulate`` one more rounding of the sum with ``out``'s old value (``u`` times its size).
A wrong index, a missed tail column or row, or a stale accumulator is off by O(1), far above it.
"""

from __future__ import annotations

import pytest
import torch

from fbnet_fast.errors import ConfigError
from fbnet_fast.ops import _ext, gemm

pytestmark = pytest.mark.skipif(not _ext.available(), reason="fbnet_fast._C not built (pip install -e .)")

U = 2.0 ** -24

# (M, K, N): one row; rows not a multiple of the 4-row tile or of the 64-row work item; columns below one
# vector, one AVX-512 vector plus a tail of 8, the 8-column tail alone, not a multiple of 8, a whole 4-vector
# tile plus remainders; the mixed op's narrow shapes at width 0.25 and 1.0.
SHAPES = [(1, 1, 1), (3, 5, 7), (67, 8, 24), (130, 17, 8), (257, 3, 61), (65, 64, 64), (1000, 48, 88),
          (4099, 8, 48), (2048, 112, 40), (513, 1104, 33)]


def _bound(a, b, extra=0.0):
    k = a.shape[1]
    return 1.01 * k * U * (a.double().abs() @ b.double().abs()) + extra + 1e-30


def _at_1_and_2_threads(f):
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = f()
        torch.set_num_threads(2)
        return one, f()
    finally:
        torch.set_num_threads(n0)


def _call(a, b, **kw):
    """gemm.mm with the kernel forced (the shape rule may send a small case to torch)."""
    m, k = a.shape
    out = kw.pop("out", None)
    acc = kw.pop("accumulate", False)
    out = a.new_empty(m, b.shape[1]) if out is None else out
    b = b.contiguous()  # held by a name: a temporary's buffer would be freed before the kernel runs
    _ext.load().small_gemm(a.data_ptr(), m, k, a.stride(0), b.data_ptr(), b.shape[1], out.data_ptr(),
                           out.stride(0), acc)
    return out


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_small_gemm_matches_exact_product(m, k, n, isa):
    g = torch.Generator().manual_seed(m * 31 + k * 7 + n)
    a = torch.randn(m, k, generator=g) * 3
    b = torch.randn(k, n, generator=g)
    exact = a.double() @ b.double()
    got = _call(a, b)
    assert ((got.double() - exact).abs() <= _bound(a, b)).all()
    # out += a @ b: the old value takes part
    old = torch.randn(m, n, generator=g)
    got = _call(a, b, out=old.clone(), accumulate=True)
    assert ((got.double() - (old.double() + exact)).abs() <= _bound(a, b, U * (old.double().abs() + exact.abs()))).all()


@pytest.mark.parametrize("m,k,n", [(70, 8, 24), (300, 48, 8)])
def test_small_gemm_reads_row_strided_a(m, k, n, isa):
    """A column slice of a wider matrix (row stride > K) is read in place, not copied."""
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(m, k + 13, generator=g)
    a = wide[:, 5:5 + k]
    b = torch.randn(k, n, generator=g)
    got = _call(a, b)
    assert ((got.double() - a.double() @ b.double()).abs() <= _bound(a, b)).all()


def test_small_gemm_same_bits_for_any_thread_count(isa):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4099, 24, generator=g), torch.randn(24, 40, generator=g)
    one, two = _at_1_and_2_threads(lambda: _call(a, b))
    assert torch.equal(one, two)


@pytest.mark.parametrize("m,k,n", [(65536, 8, 48), (4096, 48, 8), (1024, 48, 288), (32768, 16, 96), (8, 3, 5)])
def test_mm_routes_by_shape_and_agrees_with_torch(m, k, n, monkeypatch, isa):
    """gemm.mm: the kernel where the rule says, torch elsewhere; both the same product to the bound."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    small = gemm.use_small(a, b)
    if _ext.load().isa() == "v4":
        assert small == (n <= gemm.NARROW_N or (k <= gemm.LONG_K and m * n >= gemm.LONG_OUT))
    else:  # 8-wide vectors: one-vector outputs only
        assert small == (n <= gemm.NARROW_N_8WIDE)
    got = gemm.mm(a, b)
    assert ((got.double() - a.double() @ b.double()).abs() <= _bound(a, b)).all()
    out = torch.ones(m, n)
    gemm.mm(a, b, out, accumulate=True)
    assert ((out.double() - (1 + a.double() @ b.double())).abs() <= _bound(a, b, 2 * U * (1 + (a.double() @ b.double()).abs()))).all()
    monkeypatch.setenv(gemm.SMALL_ENV, "0")
    assert not gemm.use_small(a, b)
    assert torch.equal(gemm.mm(a, b), torch.mm(a, b))


def test_mm_bad_input_one_clear_error(monkeypatch):
    a, b = torch.randn(10, 4), torch.randn(5, 3)
    with pytest.raises(ConfigError, match="do not multiply"):
        gemm.mm(a, b)
    with pytest.raises(ConfigError, match="accumulate needs out"):
        gemm.mm(a, torch.randn(4, 3), accumulate=True)
    with pytest.raises(ConfigError, match=r"out must be a contiguous float32 \[10, 3\]"):
        gemm.mm(a, torch.randn(4, 3), torch.empty(3, 10).t())
    monkeypatch.setenv(gemm.SMALL_ENV, "yes")
    with pytest.raises(ConfigError, match=gemm.SMALL_ENV):
        gemm.mm(a, torch.randn(4, 3))


# ---- x^T y (small_gemm_tn): a 1x1 conv's weight gradient. Within a chunk of 256 rows the kernel sums in
# float32 (error <= gamma_256 * sum |x y| over the chunk), across chunks in float64 (exact enough to ignore),
# so the bound is 1.01 * 256 u (|x|^T |y|) against a float64 product.
TN_SHAPES = [(1, 1, 1), (3, 5, 7), (255, 16, 8), (257, 8, 16), (1000, 48, 8), (1000, 8, 48), (4099, 13, 61),
             (70000, 24, 8), (513, 3, 512)]


def _tn_bound(x, y):
    return 1.01 * min(256, x.shape[0]) * U * (x.double().abs().t() @ y.double().abs()) + 1e-30


@pytest.mark.parametrize("m,p,q", TN_SHAPES)
def test_small_gemm_tn_matches_exact_product(m, p, q, isa):
    g = torch.Generator().manual_seed(m + 5 * p + 11 * q)
    x, y = torch.randn(m, p, generator=g), torch.randn(m, q, generator=g) * 2
    out = torch.empty(p, q)
    _ext.load().small_gemm_tn(x.data_ptr(), m, p, p, y.data_ptr(), q, q, out.data_ptr())
    assert ((out.double() - x.double().t() @ y.double()).abs() <= _tn_bound(x, y)).all()
    # row-strided views (column slices) read in place
    wx, wy = torch.randn(m, p + 3, generator=g), torch.randn(m, q + 9, generator=g)
    xs, ys = wx[:, 2:2 + p], wy[:, 4:4 + q]
    _ext.load().small_gemm_tn(xs.data_ptr(), m, p, xs.stride(0), ys.data_ptr(), q, ys.stride(0), out.data_ptr())
    assert ((out.double() - xs.double().t() @ ys.double()).abs() <= _tn_bound(xs, ys)).all()


def test_small_gemm_tn_same_bits_for_any_thread_count(isa):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9000, 8, generator=g), torch.randn(9000, 40, generator=g)
    one, two = _at_1_and_2_threads(lambda: gemm.mm_tn(x, y))
    assert torch.equal(one, two)


@pytest.mark.parametrize("m,p,q", [(65536, 48, 8), (4096, 8, 96), (1024, 48, 288), (100, 600, 4)])
def test_mm_tn_routes_by_shape_and_agrees_with_torch(m, p, q, monkeypatch):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(m, p, generator=g), torch.randn(m, q, generator=g)
    narrow, wide = sorted((p, q))
    assert gemm.use_small_tn(x, y) == (narrow <= gemm.TN_MAX_NARROW and wide <= gemm.TN_MAX_WIDE)
    got = gemm.mm_tn(x, y)
    assert got.shape == (p, q) and got.is_contiguous()
    bound = _tn_bound(x, y) if gemm.use_small_tn(x, y) else 1.01 * m * U * (x.double().abs().t() @ y.double().abs())
    assert ((got.double() - x.double().t() @ y.double()).abs() <= bound).all()
    monkeypatch.setenv(gemm.SMALL_ENV, "0")
    assert not gemm.use_small_tn(x, y)
    with pytest.raises(ConfigError, match=r"must be \[M, P\] and \[M, Q\]"):
        gemm.mm_tn(x, y[:-1])
