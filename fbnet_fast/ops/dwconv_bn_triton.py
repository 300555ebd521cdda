"""Triton (GPU) kernels of the ``dwconv_bn`` family: the launchers of :mod:`.dwconv_bn` for CUDA tensors.

Same launcher names, signatures and named results as :mod:`fbnet_fast.ops.dwconv_bn`
(which checks the arguments, then calls these for CUDA tensors). Layouts as there:
``z1 [N, H, W, C]`` channels-last, weight ``[k*k, C]`` (taps major), padding ``k // 2``.

Kernels, top to bottom:

* ``_dwconv_fwd_kernel``: a program owns a chunk of output positions and a channel
  block; per ``[BLOCK_P, BLOCK_C]`` tile it gathers the ``k*k`` input taps, rebuilds
  ``h1 = relu(scale1*z1 + shift1)`` in registers (zero in the padding: the conv pads
  ``h1``, not ``z1``), accumulates the conv, stores ``out`` and merges the tile's
  mean / M2 into the chunk's (Chan), so the BN2 statistics cost no extra read of ``out``.
* ``_dwconv_bwd_kernel``: a program owns a chunk of *input* positions. For each tap it
  gathers the one output position that tap maps to (stride 2: only taps of matching
  parity), so ``grad_in`` is written once, no scatter, no atomics; the same
  (input, tap, output) triples give the weight gradient (``sum g * h1``, kept as a
  ``[KK_PAD, BLOCK_C]`` register tile, one partial per program) and, after the ReLU
  mask, BN1's ``sum_g`` / ``sum_gz``.
* Stage 2 (fixed-order fold of the partials) reuses :mod:`.bn_act_triton`'s
  ``merge_stats`` and ``sum_parts``.

Chunking depends on the shape only (see :func:`.bn_act_triton.row_chunks`), so the
reductions are deterministic and bit-identical from run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bn_act_triton import (LAUNCH_OPTS, AOTSpec, affine_act, aot_signature, block_c, check_int32, device_ctx,
                            merge_stats, row_chunks, sum_parts)
from .dwconv_bn import DWConvBNBackward, DWConvBNForward, conv_out_size

__all__ = ["dwconv_bn_forward", "dwconv_bn_backward", "aot_specs"]


# ---------------------------------------------------------------------------- kernels
@triton.jit
def _dwconv_fwd_kernel(z_ptr, scale_ptr, shift_ptr, w_ptr, out_ptr, mean_part_ptr, m2_part_ptr,
                       H, W, C, Ho, Wo, NPOS, POS_PER_PROG,
                       K: tl.constexpr, STRIDE: tl.constexpr, STATS: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    PAD: tl.constexpr = K // 2
    pid_p = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    scale = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    p0 = pid_p * POS_PER_PROG
    p_end = tl.minimum(p0 + POS_PER_PROG, NPOS)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(p0, p_end, BLOCK_P):
        pos = start + tl.arange(0, BLOCK_P)
        pmask = pos < p_end
        ox = pos % Wo
        oy = (pos // Wo) % Ho
        n = pos // (Wo * Ho)
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        # Taps in a loop, not tl.static_range: unrolled, ptxas issued all k*k loads at
        # once (255 registers and spills on sm_90 for k=5) and compiled 5-10x slower.
        for dy in range(K):
            iy = oy * STRIDE + (dy - PAD)
            ymask = pmask & (iy >= 0) & (iy < H)
            row = (n * H + iy) * W
            for dx in range(K):
                ix = ox * STRIDE + (dx - PAD)
                mask = (ymask & (ix >= 0) & (ix < W))[:, None] & cmask[None, :]
                z = tl.load(z_ptr + (row + ix)[:, None] * C + cols[None, :], mask=mask, other=0.0)
                h = tl.where(mask, tl.maximum(z * scale[None, :] + shift[None, :], 0.0), 0.0)
                wt = tl.load(w_ptr + (dy * K + dx) * C + cols, mask=cmask, other=0.0)
                acc += h * wt[None, :]
        omask = pmask[:, None] & cmask[None, :]
        tl.store(out_ptr + pos[:, None] * C + cols[None, :], acc, mask=omask)
        if STATS:
            cnt = tl.minimum(p_end - start, BLOCK_P).to(tl.float32)
            seen = (start - p0).to(tl.float32)  # every earlier tile of the chunk is full
            t_mean = tl.sum(acc, axis=0) / cnt
            d = tl.where(omask, acc - t_mean[None, :], 0.0)
            total = seen + cnt
            delta = t_mean - mean
            mean = mean + delta * (cnt / total)
            m2 = m2 + tl.sum(d * d, axis=0) + delta * delta * (seen * cnt / total)
    if STATS:
        tl.store(mean_part_ptr + pid_p * C + cols, mean, mask=cmask)
        tl.store(m2_part_ptr + pid_p * C + cols, m2, mask=cmask)


@triton.jit
def _dwconv_bwd_kernel(go_ptr, z_ptr, scale_ptr, shift_ptr, w_ptr, center_ptr, gin_ptr, gw_part_ptr, s_part_ptr,
                       H, W, C, Ho, Wo, NPOS, POS_PER_PROG,
                       K: tl.constexpr, STRIDE: tl.constexpr, KK_PAD: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    PAD: tl.constexpr = K // 2
    pid_p = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    scale = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    center = tl.load(center_ptr + cols, mask=cmask, other=0.0)
    taps = tl.arange(0, KK_PAD)
    gw = tl.zeros([KK_PAD, BLOCK_C], dtype=tl.float32)
    s_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_gz = tl.zeros([BLOCK_C], dtype=tl.float32)
    p0 = pid_p * POS_PER_PROG
    p_end = tl.minimum(p0 + POS_PER_PROG, NPOS)
    for start in range(p0, p_end, BLOCK_P):
        pos = start + tl.arange(0, BLOCK_P)
        pmask = pos < p_end
        ix = pos % W
        iy = (pos // W) % H
        n = pos // (W * H)
        imask = pmask[:, None] & cmask[None, :]
        z = tl.load(z_ptr + pos[:, None] * C + cols[None, :], mask=imask, other=0.0)
        u = z * scale[None, :] + shift[None, :]
        h = tl.maximum(u, 0.0)
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for dy in range(K):
            # Input row iy feeds output row oy through tap dy when oy*STRIDE + dy - PAD == iy.
            # Divide only non-negative values: C and Python disagree on negative //.
            oyn = iy + (PAD - dy)
            oyc = tl.maximum(oyn, 0)
            oy = oyc // STRIDE
            ymask = pmask & (oyn >= 0) & (oy < Ho)
            if STRIDE > 1:
                ymask = ymask & (oyc % STRIDE == 0)
            orow = (n * Ho + oy) * Wo
            for dx in range(K):
                oxn = ix + (PAD - dx)
                oxc = tl.maximum(oxn, 0)
                ox = oxc // STRIDE
                xmask = (oxn >= 0) & (ox < Wo)
                if STRIDE > 1:
                    xmask = xmask & (oxc % STRIDE == 0)
                mask = (ymask & xmask)[:, None] & cmask[None, :]
                g = tl.load(go_ptr + (orow + ox)[:, None] * C + cols[None, :], mask=mask, other=0.0)
                wt = tl.load(w_ptr + (dy * K + dx) * C + cols, mask=cmask, other=0.0)
                acc += g * wt[None, :]
                gw += tl.where(taps[:, None] == dy * K + dx, tl.sum(g * h, axis=0)[None, :], 0.0)
        gin = tl.where(u > 0.0, acc, 0.0)  # rows outside the chunk gathered g = 0
        tl.store(gin_ptr + pos[:, None] * C + cols[None, :], gin, mask=imask)
        s_g += tl.sum(gin, axis=0)
        s_gz += tl.sum(gin * (z - center[None, :]), axis=0)
    gmask = (taps < K * K)[:, None] & cmask[None, :]
    tl.store(gw_part_ptr + pid_p * (K * K * C) + taps[:, None] * C + cols[None, :], gw, mask=gmask)
    tl.store(s_part_ptr + pid_p * 2 * C + cols, s_g, mask=cmask)
    tl.store(s_part_ptr + pid_p * 2 * C + C + cols, s_gz, mask=cmask)


# ---------------------------------------------------------------------- launch policy
def block_p(c: int) -> int:
    """Positions per tile: ``BLOCK_P * BLOCK_C = 1024`` fp32, 8 a thread at 4 warps.

    2048 (16 a thread) spilled on sm_90 (255 registers, ptxas -v, k=3 and k=5); 1024
    needs 89-107 registers in the forward and 133-168 in the backward, no spills.
    """
    return 1024 // block_c(c)


# -------------------------------------------------------------------------- launchers
def dwconv_bn_forward(z1: torch.Tensor, scale1: torch.Tensor, shift1: torch.Tensor, weight: torch.Tensor,
                      stride: int, *, stats: bool = True, scale2: torch.Tensor | None = None,
                      shift2: torch.Tensor | None = None) -> DWConvBNForward:
    """``dwconv(relu(scale1 * z1 + shift1))`` ``[N, Ho, Wo, C]`` with its BN statistics."""
    check_int32("z1", z1)
    n, h, w, c = z1.shape
    k = int(round(weight.shape[0] ** 0.5))
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    out = z1.new_empty(n, ho, wo, c)
    check_int32("out", out)
    npos = n * ho * wo
    bc, bp = block_c(c), block_p(c)
    ch = row_chunks(npos, c, bp)
    parts = z1.new_empty(2, ch.programs, c) if stats else z1.new_empty(2, 1, 1)
    with device_ctx(z1):
        _dwconv_fwd_kernel[(ch.programs, triton.cdiv(c, bc))](
            z1, scale1, shift1, weight, out, parts[0], parts[1], h, w, c, ho, wo, npos, ch.rows_per_prog,
            K=k, STRIDE=int(stride), STATS=bool(stats), BLOCK_P=bp, BLOCK_C=bc, **LAUNCH_OPTS)
        # BN2 apply as its own elementwise launch (the CPU kernel fuses it into the conv's
        # epilogue; on a GPU that is the next step once a GPU can time it).
        act = None if scale2 is None else affine_act(out.view(-1, c), scale2, shift2, relu=True).view(out.shape)
        if not stats:
            return DWConvBNForward(out, None, None, act)
        mean, var = merge_stats(parts[0], parts[1], npos, ch.rows_per_prog)
    return DWConvBNForward(out, mean, var, act)


def dwconv_bn_backward(grad_out: torch.Tensor, z1: torch.Tensor, scale1: torch.Tensor, shift1: torch.Tensor,
                       weight: torch.Tensor, stride: int, center1: torch.Tensor, *,
                       weight_grad: bool = True) -> DWConvBNBackward:
    """Gradients of :func:`dwconv_bn_forward`'s ``out`` w.r.t. ``u1`` and ``weight``, plus BN1 sums."""
    check_int32("z1", z1)
    n, h, w, c = z1.shape
    kk = weight.shape[0]
    k = int(round(kk ** 0.5))
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    npos = n * h * w
    bc, bp = block_c(c), block_p(c)
    ch = row_chunks(npos, c, bp)
    grad_in = torch.empty_like(z1)
    gw_part = z1.new_empty(ch.programs, kk * c)
    s_part = z1.new_empty(ch.programs, 2 * c)
    with device_ctx(z1):
        _dwconv_bwd_kernel[(ch.programs, triton.cdiv(c, bc))](
            grad_out, z1, scale1, shift1, weight, center1, grad_in, gw_part, s_part, h, w, c, ho, wo, npos,
            ch.rows_per_prog, K=k, STRIDE=int(stride), KK_PAD=triton.next_power_of_2(kk), BLOCK_P=bp, BLOCK_C=bc,
            **LAUNCH_OPTS)
        grad_w = sum_parts(gw_part).view(kk, c) if weight_grad else None
        sums = sum_parts(s_part)
    # weight_grad=False: the kernel computes the partials anyway (one specialisation fewer to
    # compile and check); only the stage-2 fold is skipped.
    return DWConvBNBackward(grad_in, grad_w if weight_grad else None, sums[:c], sums[c:])


# ----------------------------------------------------------------- ahead-of-time specs
AOT_KERNEL_SIZES = (3, 5)  # the FBNet candidates' depthwise kernels


def aot_specs() -> list[AOTSpec]:
    """Every (kernel, constexpr) combination the launchers can launch for k in AOT_KERNEL_SIZES."""
    ints = dict.fromkeys(("H", "W", "C", "Ho", "Wo", "NPOS", "POS_PER_PROG"), "i32")
    tiles = dict(BLOCK_P=block_p(1), BLOCK_C=block_c(1))
    specs = []
    for fn in (_dwconv_fwd_kernel, _dwconv_bwd_kernel):
        types = {**{a: "*fp32" for a in fn.arg_names}, **ints}
        for k in AOT_KERNEL_SIZES:
            for stride in (1, 2):
                if fn is _dwconv_bwd_kernel:
                    variants = [("", dict(KK_PAD=triton.next_power_of_2(k * k)))]
                else:
                    variants = [(f" stats={st}", dict(STATS=st)) for st in (False, True)]
                for tag, extra in variants:
                    ce = dict(K=k, STRIDE=stride, **extra, **tiles)
                    specs.append(AOTSpec(f"{fn.__name__.strip('_')} k={k} s={stride}{tag}", fn, aot_signature(fn, types, ce), ce))
    return specs
