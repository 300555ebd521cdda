"""bn_act kernels vs their eager references (fbnet_fast/ops/bn_act_ref.py)."""

from __future__ import annotations

from contextlib import closing

import pytest
import torch

from fbnet_fast.ops import _ext
from fbnet_fast.errors import ConfigError
from fbnet_fast.ops import bn_act, bn_act_ref

from fbnet_fast.ops.testing import assert_close_to_ref, at_thread_counts, runnable_isas

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
    # assign: the first term of a sum, out's old values (NaN here) never read; the same bits as adding to zeros
    out = torch.full((m, c), float("nan"))
    bn_act.affine_act_accumulate_(out, z, a, b, relu=relu, alpha=0.37, assign=True)
    zeros = torch.zeros(m, c)
    bn_act.affine_act_accumulate_(zeros, z, a, b, relu=relu, alpha=0.37)
    assert torch.equal(out, zeros)
    # In place over z (the forward reuses z2's buffer for h2).
    zz = z.clone()
    bn_act.affine_act(zz, a, b, relu=relu, out=zz)
    assert_close_to_ref("affine_act in place", zz, bn_act_ref.affine_act_ref(z, a, b, relu=relu), ref)


def _check_act_grad_passes(m, c, relu):
    """act_grad_sums and act_grad_apply over [m, c] against the reference."""
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


@pytest.mark.parametrize("m,c", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_act_grad_sums_and_apply(m, c, relu):
    _check_act_grad_passes(m, c, relu)


# Row widths of one to four vector blocks, whose act_grad_sums keeps every channel's sums in registers across the
# rows (an 8-channel tail in v4: 8, 24, 40, 56), wider ones and ones not a multiple of 8 (the per-channel loop); 203
# rows: three whole 64-row blocks of float partial sums and a part block.
@pytest.mark.parametrize("c", [8, 16, 24, 32, 40, 48, 56, 64, 72, 12])
@pytest.mark.parametrize("relu", [False, True])
def test_act_grad_passes_every_variant(c, relu, isa):
    """act_grad_sums and act_grad_apply in every ISA variant (the row forms each variant's vectors take) against the
    reference."""
    _check_act_grad_passes(203, c, relu)


@pytest.mark.parametrize("m,c", [(5003, 72), (1024, 48)])  # 6 chunks by size; 16 of 64 rows (the chunk floor)
def test_reductions_are_thread_count_invariant(m, c):
    z, g, (a, b, ctr, *_) = _inputs(m, c, seed=3)
    res = at_thread_counts(lambda: (*bn_act.bn_stats(z), *bn_act.act_grad_sums(g, z, a, b, ctr, relu=True)),
                           (1, 2, 3))
    for run in res[1:]:
        for x, y in zip(res[0], run):
            assert torch.equal(x, y)


def test_launcher_errors_name_the_tensor():
    z = torch.randn(8, 4)
    with pytest.raises(ConfigError, match="z must be contiguous"):
        bn_act.bn_stats(z.t())
    with pytest.raises(ConfigError, match="z must be float32"):
        bn_act.bn_stats(z.double())
    with pytest.raises(ConfigError, match=r"scale must be a contiguous float32 \[4\]"):
        bn_act.affine_act(z, torch.ones(3), torch.ones(4), relu=True)


# ------------------------------------------------------------------ BatchNorm finishing
FOLD_C = [1, 7, 37, 600]  # one channel; below a vector; a vector and a tail; > 2 Triton blocks of 256


def _fold_inputs(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean, gamma, beta = (torch.randn(c, generator=g) for _ in range(3))
    var = torch.rand(c, generator=g) * 2 + 1e-3  # down to ~eps: invstd up to ~30
    rm, rv = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
    sums = [torch.randn(c, generator=g) * 10 for _ in range(2)]
    perm = torch.randperm(c, generator=g)
    return mean, var, gamma, beta, rm, rv, sums, perm


def check_bn_fold(fold, c, use_perm, update):
    """``fold`` (a family launcher: CPU or Triton) vs :func:`bn_fold_ref`, fp32 and fp64."""
    mean, var, gamma, beta, rm, rv, _, perm = _fold_inputs(c)
    kw = dict(eps=1e-5, perm=perm if use_perm else None)
    run = [dict(running_mean=r.clone(), running_var=v.clone(), momentum=0.1, count=37) if update else {}
           for r, v in ((rm, rv), (rm, rv), (rm.double(), rv.double()))]
    got = fold(mean, var, gamma, beta, **kw, **run[0])
    ref32 = bn_act_ref.bn_fold_ref(mean, var, gamma, beta, **kw, **run[1])
    ref64 = bn_act_ref.bn_fold_ref(mean.double(), var.double(), gamma.double(), beta.double(), **kw, **run[2])
    for name in ("scale", "shift", "invstd"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))
    for name in (("running_mean", "running_var") if update else ()):
        assert_close_to_ref(name, run[0][name], run[1][name], run[2][name])


def check_bn_grad_fold(grad_fold, c, use_perm, batch):
    mean, var, gamma, beta, _, _, (sg, sgz), perm = _fold_inputs(c)
    invstd = torch.rsqrt(var + 1e-5)
    kw = dict(count=53, batch=batch, alpha=0.37, perm=perm if use_perm else None)
    got = grad_fold(sg, sgz, gamma, beta, invstd, **kw)
    ref32 = bn_act_ref.bn_grad_fold_ref(sg, sgz, gamma, beta, invstd, **kw)
    ref64 = bn_act_ref.bn_grad_fold_ref(*(t.double() for t in (sg, sgz, gamma, beta, invstd)), **kw)
    for name in ("k1", "k2", "k3", "grad_gamma", "grad_beta", "weight_dot"):
        assert_close_to_ref(name, getattr(got, name), getattr(ref32, name), getattr(ref64, name))


@pytest.mark.parametrize("c", FOLD_C)
@pytest.mark.parametrize("use_perm", [False, True], ids=["identity", "perm"])
@pytest.mark.parametrize("update", [False, True], ids=["eval", "train"])
def test_bn_fold(c, use_perm, update):
    check_bn_fold(bn_act.bn_fold, c, use_perm, update)


@pytest.mark.parametrize("c", FOLD_C)
@pytest.mark.parametrize("use_perm", [False, True], ids=["identity", "perm"])
@pytest.mark.parametrize("batch", [False, True], ids=["running", "batch"])
def test_bn_grad_fold(c, use_perm, batch):
    check_bn_grad_fold(bn_act.bn_grad_fold, c, use_perm, batch)


def test_fold_errors_name_the_tensor():
    v = torch.ones(4)
    with pytest.raises(ConfigError, match=r"perm must be a contiguous int64 \[4\]"):
        bn_act.bn_fold(v, v, v, v, eps=1e-5, perm=torch.arange(4, dtype=torch.int32))
    with pytest.raises(ConfigError, match="more than 1 value per channel"):
        bn_act.bn_fold(v, v, v, v, eps=1e-5, running_mean=v.clone(), running_var=v.clone(), momentum=0.1, count=1)
    with pytest.raises(ConfigError, match=r"invstd must be a contiguous float32 \[4\]"):
        bn_act.bn_grad_fold(v, v, v, v, torch.ones(3), count=2, batch=True)


def test_isa_variants_agree():
    """Every compiled ISA variant this CPU runs (base x86-64, AVX2, AVX-512) gives eager-level results,
    and each is bit-identical across thread counts (the dispatch changes instructions, not the order)."""
    ext = _ext.load()
    if not hasattr(ext, "set_isa"):
        pytest.skip("single-variant build")
    z, g, (a, b, ctr, *_) = _inputs(3001, 40, seed=5)
    results = {}
    with closing(runnable_isas(ext)) as isas:  # closing: the ISA is restored even when an assert fails
        for isa in isas:
            runs = at_thread_counts(
                lambda: (*bn_act.bn_stats(z), *bn_act.act_grad_sums(g, z, a, b, ctr, relu=True)), (1, 2))
            assert all(torch.equal(x, y) for x, y in zip(*runs)), isa
            results[isa] = runs[0]
    ref64 = (*bn_act_ref.bn_stats_ref(z.double()),
             *bn_act_ref.act_grad_sums_ref(g.double(), z.double(), a.double(), b.double(), ctr.double(), relu=True))
    ref32 = (*bn_act_ref.bn_stats_ref(z), *bn_act_ref.act_grad_sums_ref(g, z, a, b, ctr, relu=True))
    for isa, got in results.items():
        for i, name in enumerate(("mean", "var", "sum_g", "sum_gz")):
            assert_close_to_ref(f"{isa} {name}", got[i], ref32[i], ref64[i])


def test_launches_unchecked_skips_argument_checks_in_this_thread_only_and_restores_them():
    import threading

    from fbnet_fast.errors import ConfigError
    from fbnet_fast.ops._launch import check_act, check_vec, launches_unchecked

    bad = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ConfigError, match="float32"):
        check_vec(bad, "v", 3, bad.device)
    seen = []
    with launches_unchecked():
        check_vec(bad, "v", 3, bad.device)  # skipped
        check_act(bad, "a", 2)
        with launches_unchecked():
            pass
        check_vec(bad, "v", 3, bad.device)  # still skipped after the nested exit

        def other():
            try:
                check_vec(bad, "v", 3, bad.device)
            except ConfigError:
                seen.append("raised")

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == ["raised"]  # another thread keeps its checks
    with pytest.raises(ConfigError, match="float32"):
        check_vec(bad, "v", 3, bad.device)  # restored on exit
    with pytest.raises(RuntimeError):
        with launches_unchecked():
            raise RuntimeError("boom")
    with pytest.raises(ConfigError):
        check_act(bad, "a", 2)  # restored after an exception too
