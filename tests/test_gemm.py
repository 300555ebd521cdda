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
from fbnet_fast.ops.testing import at_thread_counts

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
    one, two = at_thread_counts(lambda: _call(a, b), (1, 2))
    assert torch.equal(one, two)


@pytest.mark.parametrize("k,n", [(8, 8), (3, 61), (48, 24), (17, 40)])
@pytest.mark.parametrize("mode", ["plain", "prologue", "accumulate"])
def test_small_gemm_row_bits_do_not_depend_on_its_place(k, n, mode, isa):
    """A row's result is the same bits wherever it falls: inside a 4-row tile or among the last M % 4 rows
    (those go through the 4-row tile too: GCC left a 1-row tile's multiply-add unfused), computed alone or
    with the whole matrix (ir_eval computes an image row at a time and must give small_gemm's bits)."""
    gen = torch.Generator().manual_seed(k * 100 + n)
    a, b = torch.randn(7, k, generator=gen), torch.randn(k, n, generator=gen)
    sc, sh = torch.rand(k, generator=gen) + 0.5, torch.randn(k, generator=gen)
    pro = (sc.data_ptr(), sh.data_ptr()) if mode == "prologue" else (0, 0)
    acc = mode == "accumulate"
    start = torch.randn(7, n, generator=gen)

    def kernel(rows, out):  # the kernel itself: the shape rule may send a case to torch
        _ext.load().small_gemm(rows.data_ptr(), rows.shape[0], k, k, b.data_ptr(), n, out.data_ptr(), n, acc, *pro)
        return out

    whole = kernel(a, start.clone())
    for r in range(7):
        for rows in (a[r:r + 1], a[r:]):  # alone (a 1-row matrix), and first of a shorter one
            got = kernel(rows, start[r:r + rows.shape[0]].clone())
            assert torch.equal(got[0], whole[r]), f"row {r} of 7, computed with {rows.shape[0]} row(s)"



@pytest.mark.parametrize("m,k,n", [(65536, 8, 48), (4096, 48, 8), (1024, 48, 288), (32768, 16, 96), (8, 3, 5)])
def test_mm_routes_by_shape_and_agrees_with_torch(m, k, n, monkeypatch, isa):
    """gemm.mm: the kernel where the rule says, torch elsewhere; both the same product to the bound."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    small = gemm.use_small(a, b)
    if _ext.load().isa() != "base":
        assert small == (n <= gemm.NARROW_N)
    else:  # SSE2: one-vector outputs only
        assert small == (n <= gemm.NARROW_N_BASE)
    got = gemm.mm(a, b)
    assert ((got.double() - a.double() @ b.double()).abs() <= _bound(a, b)).all()
    out = torch.ones(m, n)
    gemm.mm(a, b, out, accumulate=True)
    assert ((out.double() - (1 + a.double() @ b.double())).abs() <= _bound(a, b, 2 * U * (1 + (a.double() @ b.double()).abs()))).all()
    monkeypatch.setenv(gemm.SMALL_ENV, "0")
    assert not gemm.use_small(a, b)
    assert torch.equal(gemm.mm(a, b), torch.mm(a, b))


def test_rules_read_the_environment_once(monkeypatch, isa):
    """gemm.rules: the routing of small_rule / small_tn_rule as one snapshot (the mixed op takes one a layer): the
    same answers while the environment stands, unchanged by a later change to it, which the next snapshot sees."""
    cpu = torch.device("cpu")
    r = gemm.rules(cpu)
    narrow = gemm.NARROW_N_BASE if _ext.load().isa() == "base" else gemm.NARROW_N
    assert r.on and r.narrow_n == narrow
    shapes = [(65536, 8, 48), (4096, 48, 8), (1024, 1504, 88), (16, gemm.MAX_K + 1, 8), (8, 3, narrow + 1)]
    for m, k, n in shapes:
        assert r.small(m, k, n) == gemm.small_rule(cpu, m, k, n) == (k <= gemm.MAX_K and n <= narrow)
    long_narrow = gemm.TN_LONG_NARROW if _ext.load().isa() == "v4" else 0
    assert r.tn_long_narrow == long_narrow
    for m in (gemm.TN_LONG_M - 1, gemm.TN_LONG_M, 65536):
        for p, q in [(8, 48), (48, 8), (16, 512), (17, 17), (8, 513), (48, 144), (144, 48), (49, 49), (24, 513)]:
            narrow, wide = min(p, q), max(p, q)
            want = wide <= gemm.TN_MAX_WIDE and (narrow <= gemm.TN_MAX_NARROW
                                                 or (m >= gemm.TN_LONG_M and narrow <= long_narrow))
            assert r.small_tn(p, q, m) == gemm.small_tn_rule(cpu, p, q, m) == want, (m, p, q)
    monkeypatch.setenv(gemm.SMALL_ENV, "0")
    assert r.small(65536, 48, 8) and r.small_tn(8, 48, 1024)  # the snapshot stands
    off = gemm.rules(cpu)
    assert not off.on and not off.small(65536, 8, 48) and not off.small_tn(8, 48, 1024)
    assert not gemm.small_rule(cpu, 65536, 8, 48) and not gemm.small_tn_rule(cpu, 8, 48, 1024)
    assert not gemm.rules(torch.device("meta")).on  # not a CPU tensor: torch's
    monkeypatch.setenv(gemm.SMALL_ENV, "yes")
    with pytest.raises(ConfigError, match=gemm.SMALL_ENV):
        gemm.rules(cpu)


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
             (70000, 24, 8), (513, 3, 512), (5000, 24, 144), (2049, 32, 40)]


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


@pytest.mark.parametrize("p,q", [(8, 40), (24, 144)])
def test_small_gemm_tn_same_bits_for_any_thread_count(p, q, isa):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9000, p, generator=g), torch.randn(9000, q, generator=g)
    out = torch.empty(p, q)

    def run():
        _ext.load().small_gemm_tn(x.data_ptr(), 9000, p, p, y.data_ptr(), q, q, out.data_ptr())
        return out.clone()

    one, two, three = at_thread_counts(run, (1, 2, 3))
    assert torch.equal(one, two) and torch.equal(one, three)


@pytest.mark.parametrize("m,p,q", [(65536, 48, 8), (4096, 8, 96), (1024, 48, 288), (100, 600, 4), (8192, 24, 144),
                                   (2048, 112, 40), (8191, 24, 32), (32768, 96, 48), (8192, 49, 64)])
def test_mm_tn_routes_by_shape_and_agrees_with_torch(m, p, q, isa, monkeypatch):
    """Every ISA variant: the kernel where its rule says (v4 also takes narrow sides up to TN_LONG_NARROW over
    TN_LONG_M rows or more), torch's elsewhere, both within their bounds of the float64 product."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(m, p, generator=g), torch.randn(m, q, generator=g)
    narrow, wide = sorted((p, q))
    long_narrow = gemm.TN_LONG_NARROW if isa == "v4" else gemm.TN_MAX_NARROW
    limit = long_narrow if m >= gemm.TN_LONG_M else gemm.TN_MAX_NARROW
    assert gemm.use_small_tn(x, y) == (narrow <= limit and wide <= gemm.TN_MAX_WIDE)
    got = gemm.mm_tn(x, y)
    assert got.shape == (p, q) and got.is_contiguous()
    bound = _tn_bound(x, y) if gemm.use_small_tn(x, y) else 1.01 * m * U * (x.double().abs().t() @ y.double().abs())
    assert ((got.double() - x.double().t() @ y.double()).abs() <= bound).all()
    monkeypatch.setenv(gemm.SMALL_ENV, "0")
    assert not gemm.use_small_tn(x, y)
    with pytest.raises(ConfigError, match=r"must be \[M, P\] and \[M, Q\]"):
        gemm.mm_tn(x, y[:-1])


# ---- the fusions: a prologue relu(scale * a + shift) on a's columns, and the output's batch statistics.
# Prologue, derived: fl(scale * a + shift) is off by at most 2u (|scale a| + |shift|) (two roundings, or one
# with FMA), ReLU is 1-Lipschitz, so with the K-term sum the error is <= 1.01 (K + 2) u (|scale a| + |shift|) @ |b|.
def _prologue_inputs(m, k, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g) * 2
    scale, shift = torch.rand(k, generator=g) + 0.5, torch.randn(k, generator=g)
    return g, a, scale, shift


def _activated64(a, scale, shift):
    return torch.relu(scale.double() * a.double() + shift.double())


def _prologue_size(a, scale, shift):
    return (scale.double() * a.double()).abs() + shift.double().abs()


# Statistics, derived: a block's float32 mean of <= 64 outputs is off by eps <= gamma_65 max|o| (E = 2 of
# those bounds two block means apart); its centred sum of squares by gamma_67 relative plus R eps^2; Chan's merge
# of the blocks in float64 turns eps into at most 2 E sqrt(var) + 2 E^2 of the variance; one float32 rounding
# of each result. A missed block, row or column is off by O(1).
def _stats_ok(out, mean, var):
    o = out.double()
    m64, v64 = o.mean(0), o.var(0, unbiased=False)
    e = 2 * 65 * U * o.abs().max(0).values
    mean_tol = 1.01 * (65 * U * o.abs().max(0).values + U * m64.abs()) + 1e-30
    var_tol = 1.01 * (68 * U * v64 + 2 * e * v64.sqrt() + 2 * e * e) + 1e-30
    return bool(((mean.double() - m64).abs() <= mean_tol).all() and ((var.double() - v64).abs() <= var_tol).all())


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_small_gemm_prologue_and_statistics(m, k, n, isa):
    g, a, scale, shift = _prologue_inputs(m, k, m + 3 * k + 7 * n)
    b = torch.randn(k, n, generator=g)
    out, mean, var = torch.empty(m, n), torch.empty(n), torch.empty(n)
    _ext.load().small_gemm(a.data_ptr(), m, k, k, b.data_ptr(), n, out.data_ptr(), n, False, scale.data_ptr(),
                           shift.data_ptr(), mean.data_ptr(), var.data_ptr())
    bound = 1.01 * (k + 2) * U * (_prologue_size(a, scale, shift) @ b.double().abs()) + 1e-30
    assert ((out.double() - _activated64(a, scale, shift) @ b.double()).abs() <= bound).all()
    assert _stats_ok(out, mean, var)
    # statistics alone, of the plain product (the 1x1 conv in front of BN1)
    _ext.load().small_gemm(a.data_ptr(), m, k, k, b.data_ptr(), n, out.data_ptr(), n, False, 0, 0, mean.data_ptr(),
                           var.data_ptr())
    assert ((out.double() - a.double() @ b.double()).abs() <= _bound(a, b)).all()
    assert _stats_ok(out, mean, var)


def test_small_gemm_statistics_keep_their_precision_off_centre(isa):
    """Outputs with |mean| >> std (a BN input after a few epochs): E[z^2] - E[z]^2 in float32 would lose the
    variance; block-centred sums keep it to the derived bound."""
    g = torch.Generator().manual_seed(9)
    a = torch.randn(5000, 8, generator=g) * 1e-3 + 1.0
    b = torch.randn(8, 24, generator=g)
    got = gemm.mm_stats(a, b)
    assert _stats_ok(got.out, got.mean, got.var)
    assert (got.var > 0).all()


@pytest.mark.parametrize("m", [9000, 1000])  # 9 items of 16 blocks; 16 items of one block (a small product)
def test_small_gemm_prologue_and_statistics_same_bits_for_any_thread_count(m, isa):
    g, a, scale, shift = _prologue_inputs(m, 24, 6)
    b = torch.randn(24, 40, generator=g)

    def kernel():  # called directly: in base (SSE2) mm_stats sends N = 40 to torch, whose bits may not hold
        out, mean, var = a.new_empty(m, 40), a.new_empty(40), a.new_empty(40)
        _ext.load().small_gemm(a.data_ptr(), m, 24, 24, b.data_ptr(), 40, out.data_ptr(), 40, False,
                               scale.data_ptr(), shift.data_ptr(), mean.data_ptr(), var.data_ptr())
        return out, mean, var

    runs = at_thread_counts(kernel, (1, 2, 3))
    assert all(torch.equal(x, y) for run in runs[1:] for x, y in zip(runs[0], run))


@pytest.mark.parametrize("m,k,n", [(4096, 48, 8), (1024, 48, 288), (65536, 8, 48), (8, 3, 5)])
def test_mm_prologue_and_stats_route_by_shape(m, k, n, monkeypatch, isa):
    """The kernel where the rule says; elsewhere torch after an activation pass and bn_stats: the same results."""
    g, a, scale, shift = _prologue_inputs(m, k, 11)
    b = torch.randn(k, n, generator=g)
    exact = _activated64(a, scale, shift) @ b.double()
    bound = 1.01 * (k + 2) * U * (_prologue_size(a, scale, shift) @ b.double().abs()) + 1e-30
    got = gemm.mm(a, b, a_scale=scale, a_shift=shift)
    assert ((got.double() - exact).abs() <= bound).all()
    st = gemm.mm_stats(a, b, a_scale=scale, a_shift=shift)
    assert ((st.out.double() - exact).abs() <= bound).all()
    assert _stats_ok(st.out, st.mean, st.var) or not gemm.use_small(a, b)  # bn_stats: its own (tested) bound
    monkeypatch.setenv(gemm.SMALL_ENV, "0")
    from fbnet_fast.ops.bn_act import affine_act, bn_stats

    h = affine_act(a, scale, shift, relu=True)
    assert torch.equal(gemm.mm(a, b, a_scale=scale, a_shift=shift), torch.mm(h, b))
    st = gemm.mm_stats(a, b, a_scale=scale, a_shift=shift)
    ref = bn_stats(torch.mm(h, b))
    assert torch.equal(st.mean, ref.mean) and torch.equal(st.var, ref.var)


@pytest.mark.parametrize("m,p,q", [(1000, 8, 48), (1000, 48, 8), (4099, 13, 61), (257, 8, 16), (70000, 8, 24)])
def test_mm_tn_prologue_on_either_operand(m, p, q, isa, monkeypatch):
    """x^T relu(s y + t): the kernel activates y whether y is its vector side (p <= q) or its broadcast side."""
    # every ISA variant's kernel, whatever the routing rule gives it
    monkeypatch.setattr(gemm, "TN_MAX_NARROW", 16)
    g = torch.Generator().manual_seed(m + p + q)
    x = torch.randn(m, p, generator=g)
    _, y, scale, shift = _prologue_inputs(m, q, m * 3 + q)
    assert gemm.use_small_tn(x, y)
    got = gemm.mm_tn(x, y, y_scale=scale, y_shift=shift)
    exact = x.double().t() @ _activated64(y, scale, shift)
    bound = 1.01 * (min(256, m) + 2) * U * (x.double().abs().t() @ _prologue_size(y, scale, shift)) + 1e-30
    assert ((got.double() - exact).abs() <= bound).all()


def test_prologue_bad_input_one_clear_error():
    a, b = torch.randn(10, 4), torch.randn(4, 3)
    with pytest.raises(ConfigError, match="scale and shift must both be given"):
        gemm.mm(a, b, a_scale=torch.ones(4))
    with pytest.raises(ConfigError, match="scale"):
        gemm.mm(a, b, a_scale=torch.ones(5), a_shift=torch.zeros(5))
    with pytest.raises(ConfigError, match="scale and shift must both be given"):
        gemm.mm_tn(a, torch.randn(10, 3), y_shift=torch.ones(3))
