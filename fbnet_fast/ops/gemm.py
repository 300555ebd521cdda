"""The mixed op's 1x1 convolutions as matrix products, with a kernel for their short inner dimensions.

:func:`mm` computes ``a [M, K] @ b [K, N]`` (``out`` and ``accumulate`` for ``out += a @ b``).
A 1x1 convolution over channels-last rows is such a product with a long ``M`` (pixels) and
short ``K``, ``N`` (channels). BLAS sgemm is tuned for large ``K`` and ``N``: at the default
search's width 0.25 (8-88 channels) the products ``[65536, 8] @ [8, 48]`` ran at ~20 GFLOP/s
in MKL (1 thread, AMD EPYC Zen 4), bound neither by arithmetic nor by writing the output.
CPU products where it measured faster (:func:`use_small`: with AVX2 or AVX-512 every product the mixed op
runs, in the SSE2 build outputs of one vector) go to ``fbnet_fast._C.small_gemm`` (csrc/small_gemm.cpp: register tiles of 4 rows x up to 64
columns, one pass over ``a``, one write of ``out``); the rest, and every CUDA product, to torch.
``python bench/cpu/ab_gemm.py`` measures both on the mixed op's shapes (BENCHMARKS.md).

The kernel sums over ``k`` in order in float32 (FMA): a result differs from torch's by float32
rounding of a ``K``-term dot product, never by the thread count.

Two fusions save the mixed op a pass over an activation tensor each, where the kernel runs (the
same results otherwise, computed in separate passes): a prologue ``relu(scale * a + shift)`` on
``a``'s columns (``a_scale``/``a_shift`` of :func:`mm`; ``y_scale``/``y_shift`` of :func:`mm_tn`),
the BN2 + ReLU in front of an IR block's last 1x1 conv, so ``h2`` is never written; and the
output's per-column batch statistics (:func:`mm_stats`) for the BN after the conv, taken over
each 64-row block while it is in cache.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ..errors import ConfigError
from ._launch import check_vec, cpu_ext
from .bn_act import affine_act, bn_stats

__all__ = ["MMStats", "Rules", "SMALL_ENV", "enabled", "mm", "mm_stats", "mm_tn", "rules", "small_mm_ref",
           "small_rule",
           "small_tn_rule", "use_small", "use_small_tn"]

SMALL_ENV = "FBNET_FAST_SMALL_GEMM"
# Which CPU products go to the small kernel. Until the twenty-third session: a narrow output (N <= 48, one register
# tile of columns), or a long one over a short inner dimension (K <= 32 and M * N >= 2**21), in v4; N <= 8 in v3
# (AVX2), whose kernel lost to MKL beyond one vector of columns (0.5-0.8x). gcc had folded the tiles' B loads into
# each FMA (load-bound); held in registers (csrc/vec.h, in_register) the kernel measured 0.84-1.5x MKL in v3 (under 1x on
# 4 of fbnet-cifar's 45 width-0.25 product shapes) and 1.0-1.9x in v4 on every width-1.0 one, N up to 1,104
# (bench/cpu/ab_gemm.py, AMD EPYC Zen 4, 1 thread; bench/results/session23/). Every product up to NARROW_N columns now goes to it, in v3 and
# v4 (bench/cpu/ab_routing.py, AMD EPYC Zen 4, 1 thread unless said, medians of 11 rounds in one process;
# bench/results/session23/): emulated AVX2 (v3) against the former limit of 8, the default search's evaluation
# forward 1.35-1.46x faster, its theta step 1.04x, its weight step 1.03-1.04x; AVX-512 (v4) against a limit of 48,
# the evaluation 1.07-1.14x (1.08x at 2 threads), the weight step 1.005-1.015x, the width-1.0 supernet step (batch
# 32) 1.035x (1.012x at 2 threads). NARROW_N bounds the padded copy of B.
NARROW_N = 4096
# The base variant (SSE2, a V8 is two xmm, nothing pinned) keeps the one-vector limit: it won only at N <= 8 there.
NARROW_N_BASE = 8
MAX_K = 4096  # the kernel keeps a padded copy of b ([K, N] floats)


def enabled() -> bool:
    """``$FBNET_FAST_SMALL_GEMM``: unset or ``1`` uses the kernel where it pays, ``0`` sends every product to torch."""
    raw = os.environ.get(SMALL_ENV)
    if raw is None or raw.strip() in ("", "1"):
        return True
    if raw.strip() == "0":
        return False
    raise ConfigError(f"{SMALL_ENV} must be 0 (every product to torch) or 1 (the small kernel where it pays), "
                      f"got {raw!r}")


def use_small(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`mm` sends ``a [M, K] @ b [K, N]`` to the small kernel."""
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        return False
    return small_rule(a.device, a.shape[0], a.shape[1], b.shape[1])


class Rules(NamedTuple):
    """:func:`small_rule` and :func:`small_tn_rule` with ``$FBNET_FAST_SMALL_GEMM`` and the CPU's variant read once
    (:func:`rules`): the mixed op asks for every product of every candidate, ~1,100 times a default-search step,
    and each reading of the environment costs about a microsecond."""

    on: bool  # CPU tensors and the kernel enabled
    narrow_n: int  # widest output the small kernel takes (NARROW_N, or NARROW_N_BASE in the SSE2 build)
    tn_long_narrow: int = 0  # narrow side the TN kernel takes over at least TN_LONG_M rows (v4's TN_LONG_NARROW)

    def small(self, m: int, k: int, n: int) -> bool:
        """:func:`small_rule` for a float32 ``[m, k] @ [k, n]``."""
        return self.on and k <= MAX_K and n <= self.narrow_n

    def small_tn(self, p: int, q: int, m: int) -> bool:
        """:func:`small_tn_rule` for float32 ``[m, p]^T [m, q]``."""
        if not self.on:
            return False
        narrow, wide = (p, q) if p <= q else (q, p)
        return wide <= TN_MAX_WIDE and (narrow <= TN_MAX_NARROW
                                         or (m >= TN_LONG_M and narrow <= self.tn_long_narrow))


def rules(device: torch.device) -> Rules:
    """The routing rules for products on ``device`` as they stand now (read the environment and the variant)."""
    if device.type != "cpu" or not enabled():
        return Rules(False, 0)
    isa = cpu_ext().isa()
    return Rules(True, NARROW_N_BASE if isa == "base" else NARROW_N, TN_LONG_NARROW if isa == "v4" else 0)


def small_rule(device: torch.device, m: int, k: int, n: int) -> bool:
    """:func:`use_small` for a float32 ``[m, k] @ [k, n]`` on ``device``, by shape alone."""
    return rules(device).small(m, k, n)


def small_mm_ref(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *,
                 accumulate: bool = False) -> torch.Tensor:
    """The reference: torch's product, same signature as :func:`mm`."""
    if out is None:
        return torch.mm(a, b)
    if accumulate:
        return out.addmm_(a, b)
    return torch.mm(a, b, out=out)


def _check_prologue(scale: torch.Tensor | None, shift: torch.Tensor | None, cols: int, device, what: str) -> bool:
    if (scale is None) != (shift is None):
        raise ConfigError(f"{what}: scale and shift must both be given or both be None")
    if scale is None:
        return False
    check_vec(scale, "scale", cols, device)
    check_vec(shift, "shift", cols, device)
    return True


class MMStats(NamedTuple):
    out: torch.Tensor  # [M, N]
    mean: torch.Tensor  # [N] per-column mean of out
    var: torch.Tensor  # [N] per-column biased variance of out


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *, accumulate: bool = False,
       a_scale: torch.Tensor | None = None, a_shift: torch.Tensor | None = None) -> torch.Tensor:
    """``a [M, K] @ b [K, N]`` into a new ``[M, N]`` tensor, or into ``out`` (``out += a @ b`` with ``accumulate``).

    ``a`` may be any row-major view (row stride >= K, unit column stride); ``b`` any tensor
    (copied contiguous if it is not, it is small); ``out`` contiguous rows. With ``a_scale, a_shift``
    (``[K]``) the product is ``relu(a_scale * a + a_shift) @ b``: fused into the kernel, or applied
    in a pass of its own where torch multiplies.
    """
    return _mm(a, b, out, accumulate, a_scale, a_shift, False).out


def mm_stats(a: torch.Tensor, b: torch.Tensor, *, a_scale: torch.Tensor | None = None,
             a_shift: torch.Tensor | None = None) -> MMStats:
    """:func:`mm` into a new tensor, with the output's per-column mean and biased variance (a BatchNorm's
    batch statistics, as :func:`~fbnet_fast.ops.bn_act.bn_stats` of the output: float32 per block, float64
    across blocks)."""
    return _mm(a, b, None, False, a_scale, a_shift, True)


def _mm(a, b, out, accumulate, a_scale, a_shift, stats) -> MMStats:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ConfigError(f"mm: a {list(a.shape)} and b {list(b.shape)} do not multiply")
    if accumulate and out is None:
        raise ConfigError("mm: accumulate needs out")
    prologue = _check_prologue(a_scale, a_shift, a.shape[1], a.device, "mm")
    if not use_small(a, b) or a.shape[0] == 0:
        if prologue:
            a = affine_act(a.contiguous(), a_scale, a_shift, relu=True)
        r = small_mm_ref(a, b, out, accumulate=accumulate)
        return MMStats(r, *bn_stats(r)) if stats else MMStats(r, None, None)
    m, k = a.shape
    n = b.shape[1]
    if a.stride(1) != 1 or a.stride(0) < k:
        a = a.contiguous()
    b = b.contiguous()
    if out is None:
        out = a.new_empty(m, n)
    elif out.shape != (m, n) or out.dtype != torch.float32 or not out.is_contiguous() or out.device != a.device:
        raise ConfigError(f"mm: out must be a contiguous float32 [{m}, {n}] tensor on {a.device}, got "
                          f"{out.dtype} {list(out.shape)} strides {out.stride()}")
    mean = out.new_empty(n) if stats else None
    var = out.new_empty(n) if stats else None
    cpu_ext().small_gemm(a.data_ptr(), m, k, a.stride(0), b.data_ptr(), n, out.data_ptr(), n, bool(accumulate),
                         a_scale.data_ptr() if prologue else 0, a_shift.data_ptr() if prologue else 0,
                         mean.data_ptr() if stats else 0, var.data_ptr() if stats else 0)
    return MMStats(out, mean, var)


# x^T y for a 1x1 conv's weight gradient: the kernel where the narrower side has at most TN_MAX_NARROW columns, MKL's
# blocking elsewhere (bench/cpu/ab_tn.py: every weight-gradient shape of an fbnet-cifar supernet step, torch and the
# kernel alternating; AMD EPYC Zen 4). One limit for every ISA. With 8-wide vectors (v3 = AVX2, base; emulated on
# that CPU with --as-avx2) the kernel alone won 1.0-3.7x at 8 columns, 0.8-1.2x at 16, lost at 24-32 (0.6-0.96x);
# yet a limit of 8 made the default-search step 2-3 % slower than 16 (bench/cpu/ab_search_step.py --as-avx2): the
# 16-channel candidates then lose the one-call C++ backward, which needs every product on the kernels. With 16-wide
# vectors (v4) up to 32 columns measured 0.96-4.1x MKL (the width-1.0 [32768, 24]^T [32768, 24..144] 1.2-1.7x;
# ~6 % of the width-1.0 supernet step) and is as accurate (bench/cpu/grad_agreement.py: the gradients differ in the
# 7th digit); it stays at 16 because 16 is the setting whose whole-search held-out accuracy is measured (18 seeds,
# 1.7 points below the reference on the mean; one 12-seed run with 32 drew 7.3 below; BENCHMARKS.md, seventeenth
# session); over long products v4 takes more (below). The wider side is capped so that the per-chunk partial sums
# stay small (M / 256 x 16 x 512 floats; x 48 over long products).
TN_MAX_WIDE, TN_MAX_NARROW = 512, 16
# Over long products (at least TN_LONG_M rows, the 32x32 and 16x16 layers of a wide supernet) v4's kernel also takes
# narrow sides up to TN_LONG_NARROW: there MKL spends about half its time packing the transposed operand
# (mkl_blas_def_sgemm_scopy_down16_bdz in perf), and the kernel measured 1.09-1.67x MKL on the width-1.0 batch-32
# shapes, 1.0-1.6x on width 1.5 and 2.0 (0.95-0.99x only with the wider side at 192-240), and lost at 64 columns
# (0.87-1.07x); over 2,048 rows it is 0.87-1.07x (bench/cpu/ab_tn.py --width 1.0 1.5 2.0, AMD EPYC Zen 4, v4,
# 1 thread; bench/results/session27/). v3 (emulated AVX2) measured 0.84-1.19x at 24-32 columns there: 16 stays.
# The default search (width 0.25, batch 64) has no product this widens (its narrow sides over 8,192 rows are <= 16),
# so its bits, and the held-out accuracy measured on them, stand.
TN_LONG_M, TN_LONG_NARROW = 8192, 48


def use_small_tn(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether :func:`mm_tn` sends ``x^T y`` to the kernel (``small_gemm_tn``)."""
    if x.dtype != torch.float32 or y.dtype != torch.float32:
        return False
    return small_tn_rule(x.device, x.shape[1], y.shape[1], x.shape[0])


def small_tn_rule(device: torch.device, p: int, q: int, m: int) -> bool:
    """:func:`use_small_tn` for float32 ``[m, p]^T [m, q]`` on ``device``, by shape alone."""
    return rules(device).small_tn(p, q, m)


def mm_tn(x: torch.Tensor, y: torch.Tensor, *, y_scale: torch.Tensor | None = None,
          y_shift: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, P]^T @ y [M, Q] -> [P, Q]``: a 1x1 conv's weight gradient (``grad_out^T input``).

    With ``y_scale, y_shift`` (``[Q]``): ``x^T relu(y_scale * y + y_shift)`` (fused into the kernel, each
    chunk of ``y`` activated in its copy; a pass of its own where torch multiplies).

    The kernel keeps register tiles over the wider operand's row and broadcasts the narrower one's,
    in fixed chunks of 256 rows (float32 within a chunk, float64 across, chunk order: the same bits
    for any thread count); torch elsewhere, with the narrower matrix as the transposed operand
    (MKL's sgemm was 4-6x slower the other way round when one side is much narrower: at M = 65536,
    ``[48, M] x [M, 8]`` 7.9 ms, ``([8, M] x [M, 48])^T`` 1.2 ms; 1 thread, AMD EPYC Zen 4, AVX-512).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"mm_tn: x {list(x.shape)} and y {list(y.shape)} must be [M, P] and [M, Q]")
    p, q = x.shape[1], y.shape[1]
    prologue = _check_prologue(y_scale, y_shift, q, y.device, "mm_tn")
    if not use_small_tn(x, y) or x.shape[0] == 0:
        if prologue:
            y = affine_act(y.contiguous(), y_scale, y_shift, relu=True)
        if p > q:
            return torch.mm(y.t(), x).t().contiguous()
        return torch.mm(x.t(), y)
    swap = p > q  # the wider operand is the vector side
    bx, vy = (y, x) if swap else (x, y)
    bx = bx if bx.stride(1) == 1 else bx.contiguous()
    vy = vy if vy.stride(1) == 1 else vy.contiguous()
    out = bx.new_empty(bx.shape[1], vy.shape[1])
    cpu_ext().small_gemm_tn(bx.data_ptr(), bx.shape[0], bx.shape[1], bx.stride(0), vy.data_ptr(), vy.shape[1],
                            vy.stride(0), out.data_ptr(), y_scale.data_ptr() if prologue else 0,
                            y_shift.data_ptr() if prologue else 0, bool(swap))
    return out.t().contiguous() if swap else out
