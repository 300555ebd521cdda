"""Triton (GPU) kernels of the ``bn_act`` family: the launchers of :mod:`.bn_act` for CUDA tensors.

Same launcher names, signatures and named results as :mod:`fbnet_fast.ops.bn_act`
(which checks the arguments, then calls these for CUDA tensors). Activations are
float32 contiguous channels-last rows ``[M, C]``; per-channel vectors ``[C]``.

Kernels, top to bottom:

* ``_affine_act_kernel``: ``act(scale*z + shift)``, optionally ``out += alpha * (...)``
  (the Gumbel-weighted sum, accumulated in place). Flat 1D blocks over ``M*C``.
* ``_act_grad_apply_kernel``: ``k1*gm + k2*(z - center) + k3``. Flat 1D blocks.
* ``_stats_partial_kernel``: per row chunk and channel block, a chunk mean and M2
  (sum of squared deviations), merging ``[BLOCK_M, BLOCK_C]`` tiles with Chan's
  formula, so one read of ``z`` gives a variance without ``E[z^2] - E[z]^2``
  cancellation (|mean| >> std happens: BN inputs after a ReLU'd block).
* ``_grad_sums_partial_kernel``: per row chunk, ``sum gm`` and ``sum gm*(z - center)``.
* ``_stats_merge_kernel`` / ``_sum_parts_kernel``: stage 2, fold the ``[P, ...]``
  partials in a fixed order (``[BLOCK_P, BLOCK_D]`` tiles, then tile by tile).
* ``_bn_fold_kernel`` / ``_bn_grad_fold_kernel``: BatchNorm's per-channel finish (scale,
  shift, invstd and the running statistics; backward's k1..k3, gamma/beta gradients and
  the Gumbel-weight dot), one launch each where ~10 tiny tensor ops were.

Determinism: the chunking depends on the shape alone (never on the GPU's SM count),
partials are written to their own slots, and stage 2 folds them in index order; no
float atomics, so a resumed search is bit-identical on any GPU of one kind.

``triton`` is imported at the top: this module is only imported on first use with a
CUDA tensor (:func:`fbnet_fast.ops._launch.triton_family`), which turns a missing
``triton`` into a :class:`~fbnet_fast.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from .bn_act import ActGradSums, BNFold, BNGradFold, BNStats

__all__ = ["bn_stats", "affine_act", "affine_act_accumulate_", "act_grad_sums", "act_grad_apply", "bn_fold",
           "bn_grad_fold", "aot_specs", "AOTSpec"]


# ---------------------------------------------------------------------------- kernels
@triton.jit
def _affine_act_kernel(z_ptr, scale_ptr, shift_ptr, out_ptr, numel, C, alpha,
                       RELU: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    ch = offs % C
    z = tl.load(z_ptr + offs, mask=mask, other=0.0)
    y = z * tl.load(scale_ptr + ch, mask=mask, other=0.0) + tl.load(shift_ptr + ch, mask=mask, other=0.0)
    if RELU:
        y = tl.maximum(y, 0.0)
    if ACCUMULATE:
        y = tl.load(out_ptr + offs, mask=mask, other=0.0) + alpha * y
    tl.store(out_ptr + offs, y, mask=mask)


@triton.jit
def _act_grad_apply_kernel(g_ptr, z_ptr, scale_ptr, shift_ptr, center_ptr, k1_ptr, k2_ptr, k3_ptr, out_ptr,
                           numel, C, RELU: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    ch = offs % C
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0)
    if RELU:
        u = z * tl.load(scale_ptr + ch, mask=mask, other=0.0) + tl.load(shift_ptr + ch, mask=mask, other=0.0)
        g = tl.where(u > 0.0, g, 0.0)
    k1 = tl.load(k1_ptr + ch, mask=mask, other=0.0)
    k2 = tl.load(k2_ptr + ch, mask=mask, other=0.0)
    k3 = tl.load(k3_ptr + ch, mask=mask, other=0.0)
    y = k1 * g + k2 * (z - tl.load(center_ptr + ch, mask=mask, other=0.0)) + k3
    tl.store(out_ptr + offs, y, mask=mask)


@triton.jit
def _stats_partial_kernel(z_ptr, mean_part_ptr, m2_part_ptr, M, C, ROWS_PER_PROG,
                          BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    row0 = pid_m * ROWS_PER_PROG
    row_end = tl.minimum(row0 + ROWS_PER_PROG, M)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(row0, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & cmask[None, :]
        x = tl.load(z_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0)
        cnt = tl.minimum(row_end - start, BLOCK_M).to(tl.float32)
        seen = (start - row0).to(tl.float32)  # every earlier tile of the chunk is full
        t_mean = tl.sum(x, axis=0) / cnt
        d = tl.where(mask, x - t_mean[None, :], 0.0)
        t_m2 = tl.sum(d * d, axis=0)
        total = seen + cnt
        delta = t_mean - mean
        mean = mean + delta * (cnt / total)
        m2 = m2 + t_m2 + delta * delta * (seen * cnt / total)
    tl.store(mean_part_ptr + pid_m * C + cols, mean, mask=cmask)
    tl.store(m2_part_ptr + pid_m * C + cols, m2, mask=cmask)


@triton.jit
def _grad_sums_partial_kernel(g_ptr, z_ptr, scale_ptr, shift_ptr, center_ptr, part_ptr, M, C, ROWS_PER_PROG,
                              RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    scale = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    center = tl.load(center_ptr + cols, mask=cmask, other=0.0)
    row0 = pid_m * ROWS_PER_PROG
    row_end = tl.minimum(row0 + ROWS_PER_PROG, M)
    s_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_gz = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(row0, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & cmask[None, :]
        offs = rows[:, None] * C + cols[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        z = tl.load(z_ptr + offs, mask=mask, other=0.0)
        if RELU:
            g = tl.where(z * scale[None, :] + shift[None, :] > 0.0, g, 0.0)
        s_g += tl.sum(g, axis=0)
        s_gz += tl.sum(g * (z - center[None, :]), axis=0)
    tl.store(part_ptr + pid_m * 2 * C + cols, s_g, mask=cmask)
    tl.store(part_ptr + pid_m * 2 * C + C + cols, s_gz, mask=cmask)


@triton.jit
def _stats_merge_kernel(mean_part_ptr, m2_part_ptr, mean_ptr, var_ptr, P, M, C, ROWS_PER_PART,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Parallel-axis theorem in two fixed-order passes over the partials:
    # mean = sum n_p mean_p / M;  M2 = sum (M2_p + n_p (mean_p - mean)^2).
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & cmask[None, :]
        cnt = tl.minimum(M - parts * ROWS_PER_PART, ROWS_PER_PART).to(tl.float32)
        mp = tl.load(mean_part_ptr + parts[:, None] * C + cols[None, :], mask=mask, other=0.0)
        acc += tl.where(mask, mp * cnt[:, None], 0.0)
    mean = tl.sum(acc, axis=0) / M
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & cmask[None, :]
        cnt = tl.minimum(M - parts * ROWS_PER_PART, ROWS_PER_PART).to(tl.float32)
        offs = parts[:, None] * C + cols[None, :]
        d = tl.load(mean_part_ptr + offs, mask=mask, other=0.0) - mean[None, :]
        acc += tl.where(mask, tl.load(m2_part_ptr + offs, mask=mask, other=0.0) + cnt[:, None] * d * d, 0.0)
    tl.store(mean_ptr + cols, mean, mask=cmask)
    tl.store(var_ptr + cols, tl.sum(acc, axis=0) / M, mask=cmask)


@triton.jit
def _sum_parts_kernel(part_ptr, out_ptr, P, D, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = cols < D
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & dmask[None, :]
        acc += tl.load(part_ptr + parts[:, None] * D + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + cols, tl.sum(acc, axis=0), mask=dmask)


@triton.jit
def _bn_fold_kernel(mean_ptr, var_ptr, gamma_ptr, beta_ptr, perm_ptr, rmean_ptr, rvar_ptr, scale_ptr, shift_ptr,
                    invstd_ptr, C, eps, momentum, unbias, HAS_PERM: tl.constexpr, UPDATE: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    j = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = j < C
    if HAS_PERM:
        c = tl.load(perm_ptr + j, mask=mask, other=0).to(tl.int32)
    else:
        c = j
    mean = tl.load(mean_ptr + j, mask=mask, other=0.0)
    var = tl.load(var_ptr + j, mask=mask, other=0.0)
    inv = 1.0 / tl.sqrt_rn(var + eps)
    a = tl.load(gamma_ptr + c, mask=mask, other=0.0) * inv
    tl.store(invstd_ptr + j, inv, mask=mask)
    tl.store(scale_ptr + j, a, mask=mask)
    tl.store(shift_ptr + j, tl.load(beta_ptr + c, mask=mask, other=0.0) - mean * a, mask=mask)
    if UPDATE:
        rm = tl.load(rmean_ptr + c, mask=mask, other=0.0)
        rv = tl.load(rvar_ptr + c, mask=mask, other=0.0)
        tl.store(rmean_ptr + c, (1.0 - momentum) * rm + momentum * mean, mask=mask)
        tl.store(rvar_ptr + c, (1.0 - momentum) * rv + momentum * (var * unbias), mask=mask)


@triton.jit
def _bn_grad_fold_kernel(sg_ptr, sgz_ptr, gamma_ptr, beta_ptr, invstd_ptr, perm_ptr, k1_ptr, k2_ptr, k3_ptr,
                         gg_ptr, gb_ptr, dot_ptr, C, alpha, count, HAS_PERM: tl.constexpr,
                         BATCH: tl.constexpr, BLOCK_C: tl.constexpr):
    # One program walking the channel blocks in order: the dot's summation order is fixed.
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        j = start + tl.arange(0, BLOCK_C)
        mask = j < C
        if HAS_PERM:
            c = tl.load(perm_ptr + j, mask=mask, other=0).to(tl.int32)
        else:
            c = j
        sg = tl.load(sg_ptr + j, mask=mask, other=0.0)
        sgz = tl.load(sgz_ptr + j, mask=mask, other=0.0)
        inv = tl.load(invstd_ptr + j, mask=mask, other=0.0)
        g = tl.load(gamma_ptr + c, mask=mask, other=0.0)
        acc += g * inv * sgz + tl.load(beta_ptr + c, mask=mask, other=0.0) * sg
        k1 = alpha * g * inv
        tl.store(k1_ptr + j, k1, mask=mask)
        if BATCH:
            # Divided, as eager does, not multiplied by 1/count: the BN backward
            # subtracts nearly equal terms, and one ulp here moved a grad past 2x eager's error.
            tl.store(k2_ptr + j, -k1 * inv * inv * sgz / count, mask=mask)
            tl.store(k3_ptr + j, -k1 * sg / count, mask=mask)
        else:
            tl.store(k2_ptr + j, k1 * 0.0, mask=mask)
            tl.store(k3_ptr + j, k1 * 0.0, mask=mask)
        tl.store(gg_ptr + c, alpha * inv * sgz, mask=mask)
        tl.store(gb_ptr + c, alpha * sg, mask=mask)
    tl.store(dot_ptr, tl.sum(acc, axis=0))


# ---------------------------------------------------------------------- launch policy
# Flat elementwise blocks: 1024 fp32 = 8 per thread at 4 warps, enough bytes in
# flight per SM for a bandwidth-bound pass.
ELEM_BLOCK = 1024
# Reduction tiles [BLOCK_M, BLOCK_C]: 128 B of contiguous channels per row.
RED_BLOCK_M = 64
# Stage 1 aims at ~512 programs (about 4 per SM on an H100) whatever C is; chosen from
# the shape alone so the summation order, hence every bit, is the same on any GPU.
TARGET_PROGRAMS = 512
# Stage 2 folds the partials [BLOCK_P, ...] at a time.
PART_BLOCK_P = 32
PART_BLOCK_D = 128
NUM_WARPS = 4
# FMA contraction stated explicitly (Triton 3.9 warns and 3.10 flips the default):
# results must not change with the Triton version.
FP_FUSION = True
# The compile options of every launch (the AOT test compiles with the same ones).
LAUNCH_OPTS = dict(num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION)
# BatchNorm finish: 256 channels a block (C <= 1104 in the FBNet spaces: <= 5 blocks).
FOLD_BLOCK_C = 256


def block_c(c: int) -> int:
    """Channel block of the 2D-tiled kernels: 32 fp32 = 128 B rows, whatever ``C``.

    One block size for every ``C``: a narrower block for ``C <= 16`` would save idle
    lanes, not bytes (masked lanes load nothing), and would double the kernels to
    compile and check ahead of time.
    """
    return 32


class RowChunks(NamedTuple):
    rows_per_prog: int  # a multiple of the row tile
    programs: int  # P: the number of partials per channel


def row_chunks(m: int, c: int, tile: int) -> RowChunks:
    """Split ``m`` rows into ``P`` chunks of whole ``tile``-row tiles (shape-only policy)."""
    tiles = max(1, triton.cdiv(m, tile))
    want = max(1, TARGET_PROGRAMS // triton.cdiv(c, block_c(c)))
    per = triton.cdiv(tiles, min(tiles, want))
    rows = per * tile
    return RowChunks(rows, triton.cdiv(m, rows))


def device_ctx(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


INT32_LIMIT = 2**31 - 2**16  # headroom for the last block's offsets past the end


def check_int32(name: str, t: torch.Tensor) -> None:
    """Kernels index with int32 (half the integer work of int64 in the address math)."""
    if t.numel() > INT32_LIMIT:
        raise ConfigError(f"{name} has {t.numel()} elements; the Triton kernels index with int32 "
                          f"(at most {INT32_LIMIT})")


def sum_parts(part: torch.Tensor) -> torch.Tensor:
    """``part [P, D] -> [D]``: the column sums in a fixed order (stage 2 of a reduction)."""
    p, d = part.shape
    out = part.new_empty(d)
    _sum_parts_kernel[(triton.cdiv(d, PART_BLOCK_D),)](part, out, p, d, BLOCK_P=PART_BLOCK_P, BLOCK_D=PART_BLOCK_D,
                                                        **LAUNCH_OPTS)
    return out


def merge_stats(mean_part: torch.Tensor, m2_part: torch.Tensor, m: int, rows_per_part: int) -> BNStats:
    """Partial ``mean, M2 [P, C]`` over consecutive chunks of ``rows_per_part`` rows -> ``BNStats``."""
    p, c = mean_part.shape
    mean, var = mean_part.new_empty(c), mean_part.new_empty(c)
    bc = block_c(c)
    _stats_merge_kernel[(triton.cdiv(c, bc),)](mean_part, m2_part, mean, var, p, m, c, rows_per_part,
                                               BLOCK_P=PART_BLOCK_P, BLOCK_C=bc, **LAUNCH_OPTS)
    return BNStats(mean, var)


# -------------------------------------------------------------------------- launchers
def bn_stats(z: torch.Tensor) -> BNStats:
    """Per-channel mean and biased variance of ``z [M, C]``."""
    check_int32("z", z)
    m, c = z.shape
    bc = block_c(c)
    ch = row_chunks(m, c, RED_BLOCK_M)
    mean_part = z.new_empty(ch.programs, c)
    m2_part = z.new_empty(ch.programs, c)
    with device_ctx(z):
        _stats_partial_kernel[(ch.programs, triton.cdiv(c, bc))](
            z, mean_part, m2_part, m, c, ch.rows_per_prog, BLOCK_M=RED_BLOCK_M, BLOCK_C=bc, **LAUNCH_OPTS)
        return merge_stats(mean_part, m2_part, m, ch.rows_per_prog)


def _affine(z, scale, shift, out, relu, accumulate, alpha):
    check_int32("z", z)
    n = z.numel()
    with device_ctx(z):
        _affine_act_kernel[(triton.cdiv(n, ELEM_BLOCK),)](
            z, scale, shift, out, n, z.shape[1], float(alpha), RELU=bool(relu), ACCUMULATE=accumulate,
            BLOCK=ELEM_BLOCK, **LAUNCH_OPTS)


def affine_act(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, relu: bool,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(scale * z + shift)`` for ``z [M, C]``; ``out`` (``[M, C]``, may be ``z``) receives it."""
    out = torch.empty_like(z) if out is None else out
    _affine(z, scale, shift, out, relu, False, 1.0)
    return out


def affine_act_accumulate_(out: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *,
                           relu: bool, alpha: float) -> None:
    """``out [M, C] += alpha * act(scale * z + shift)`` in place."""
    _affine(z, scale, shift, out, relu, True, alpha)


def act_grad_sums(grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                  center: torch.Tensor, *, relu: bool) -> ActGradSums:
    """Per-channel ``sum gm`` and ``sum gm * (z - center)`` over the rows of ``grad, z [M, C]``."""
    check_int32("z", z)
    m, c = z.shape
    bc = block_c(c)
    ch = row_chunks(m, c, RED_BLOCK_M)
    part = z.new_empty(ch.programs, 2 * c)
    with device_ctx(z):
        _grad_sums_partial_kernel[(ch.programs, triton.cdiv(c, bc))](
            grad, z, scale, shift, center, part, m, c, ch.rows_per_prog, RELU=bool(relu), BLOCK_M=RED_BLOCK_M,
            BLOCK_C=bc, **LAUNCH_OPTS)
        sums = sum_parts(part)
    return ActGradSums(sums[:c], sums[c:])


def act_grad_apply(grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   center: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor, *, relu: bool,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``k1 * gm + k2 * (z - center) + k3`` for ``grad, z [M, C]``; ``out`` may be ``grad``."""
    check_int32("z", z)
    out = torch.empty_like(z) if out is None else out
    n = z.numel()
    with device_ctx(z):
        _act_grad_apply_kernel[(triton.cdiv(n, ELEM_BLOCK),)](
            grad, z, scale, shift, center, k1, k2, k3, out, n, z.shape[1], RELU=bool(relu), BLOCK=ELEM_BLOCK,
            **LAUNCH_OPTS)
    return out


def bn_fold(mean: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, *, eps: float,
            perm: torch.Tensor | None = None, running_mean: torch.Tensor | None = None,
            running_var: torch.Tensor | None = None, momentum: float = 0.0, count: int = 1) -> BNFold:
    """BatchNorm's fold from ``mean, var [C]``; updates the running statistics in place when given."""
    c = mean.shape[0]
    scale, shift, invstd = mean.new_empty(c), mean.new_empty(c), mean.new_empty(c)
    update = running_mean is not None
    with device_ctx(mean):
        _bn_fold_kernel[(triton.cdiv(c, FOLD_BLOCK_C),)](
            mean, var, gamma, beta, perm if perm is not None else mean, running_mean if update else mean,
            running_var if update else mean, scale, shift, invstd, c, float(eps), float(momentum),
            float(count) / float(count - 1) if update else 1.0, HAS_PERM=perm is not None, UPDATE=update,
            BLOCK_C=FOLD_BLOCK_C, **LAUNCH_OPTS)
    return BNFold(scale, shift, invstd)


def bn_grad_fold(sum_g: torch.Tensor, sum_gz: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                 invstd: torch.Tensor, *, count: int, batch: bool, alpha: float = 1.0,
                 perm: torch.Tensor | None = None) -> BNGradFold:
    """Backward coefficients of ``y = alpha * bn(z)`` from the ``[C]`` sums (one program)."""
    c = sum_g.shape[0]
    k1, k2, k3, gg, gb = (sum_g.new_empty(c) for _ in range(5))
    dot = sum_g.new_empty(())
    with device_ctx(sum_g):
        _bn_grad_fold_kernel[(1,)](
            sum_g, sum_gz, gamma, beta, invstd, perm if perm is not None else sum_g, k1, k2, k3, gg, gb, dot, c,
            float(alpha), float(count), HAS_PERM=perm is not None, BATCH=bool(batch), BLOCK_C=FOLD_BLOCK_C,
            **LAUNCH_OPTS)
    return BNGradFold(k1, k2, k3, gg, gb, dot)


# ----------------------------------------------------------------- ahead-of-time specs
class AOTSpec(NamedTuple):
    """One specialisation a launcher can request, for ``triton.compile(ASTSource(...))``."""

    name: str
    fn: object  # the @triton.jit function
    signature: dict  # argument name -> "*fp32" | "i32" | "fp32" | "constexpr"
    constexprs: dict  # constexpr name -> value


def aot_signature(fn, types: dict, constexprs: dict) -> dict:
    """Full signature in argument order: ``types`` by name, constexprs marked."""
    return {a: ("constexpr" if a in constexprs else types[a]) for a in fn.arg_names}


def aot_specs() -> list[AOTSpec]:
    """Every (kernel, constexpr) combination the launchers above can launch."""
    ptr, i32, f32 = "*fp32", "i32", "fp32"
    bc = block_c(1)
    specs = []

    def add(name, fn, ce, **types):
        specs.append(AOTSpec(name, fn, aot_signature(fn, {**{a: ptr for a in fn.arg_names}, **types}, ce), ce))

    for relu in (False, True):
        for acc in (False, True):
            add(f"affine_act relu={relu} accumulate={acc}", _affine_act_kernel,
                dict(RELU=relu, ACCUMULATE=acc, BLOCK=ELEM_BLOCK), numel=i32, C=i32, alpha=f32)
        add(f"act_grad_apply relu={relu}", _act_grad_apply_kernel, dict(RELU=relu, BLOCK=ELEM_BLOCK), numel=i32,
            C=i32)
        add(f"grad_sums_partial relu={relu}", _grad_sums_partial_kernel,
            dict(RELU=relu, BLOCK_M=RED_BLOCK_M, BLOCK_C=bc), M=i32, C=i32, ROWS_PER_PROG=i32)
    add("stats_partial", _stats_partial_kernel, dict(BLOCK_M=RED_BLOCK_M, BLOCK_C=bc), M=i32, C=i32,
        ROWS_PER_PROG=i32)
    add("stats_merge", _stats_merge_kernel, dict(BLOCK_P=PART_BLOCK_P, BLOCK_C=bc), P=i32, M=i32, C=i32,
        ROWS_PER_PART=i32)
    add("sum_parts", _sum_parts_kernel, dict(BLOCK_P=PART_BLOCK_P, BLOCK_D=PART_BLOCK_D), P=i32, D=i32)
    for has_perm in (False, True):
        perm_t = "*i64" if has_perm else ptr
        for update in (False, True):
            add(f"bn_fold perm={has_perm} update={update}", _bn_fold_kernel,
                dict(HAS_PERM=has_perm, UPDATE=update, BLOCK_C=FOLD_BLOCK_C), perm_ptr=perm_t, C=i32, eps=f32,
                momentum=f32, unbias=f32)
        for batch in (False, True):
            add(f"bn_grad_fold perm={has_perm} batch={batch}", _bn_grad_fold_kernel,
                dict(HAS_PERM=has_perm, BATCH=batch, BLOCK_C=FOLD_BLOCK_C), perm_ptr=perm_t, C=i32, alpha=f32,
                count=f32)
    return specs
