"""The ``bn_act`` kernel family: per-channel BatchNorm pieces on channels-last rows.

Every activation is a float32, contiguous ``[M, C]`` tensor (``M = N*H*W`` rows of an
NHWC tensor); per-channel vectors are contiguous float32 ``[C]``. BatchNorm with a
ReLU is written as ``y = act(scale * z + shift)`` with ``scale = gamma * invstd`` and
``shift = beta - mean * scale``, so one kernel serves training (batch statistics)
and eval (running statistics).

Launchers (callable without autograd; results are small NamedTuples or tensors):

* :func:`bn_stats` ``z [M, C] -> BNStats(mean [C], var [C])`` (biased variance).
* :func:`affine_act` ``z [M, C] -> act(scale*z + shift) [M, C]`` (``out`` may be ``z``).
* :func:`affine_act_accumulate_` ``out [M, C] += alpha * act(scale*z + shift)``: the
  Gumbel-weighted sum accumulated in place, no per-candidate output tensor.
* :func:`act_grad_sums` ``-> ActGradSums(sum_g [C], sum_gz [C])`` with
  ``gm = grad * (scale*z + shift > 0 if relu else 1)``, ``sum_g = sum_rows gm``,
  ``sum_gz = sum_rows gm * (z - center)``: the one reduction BN backward needs
  (and, with ``gamma``/``beta``, the gradient of the Gumbel weight).
* :func:`act_grad_apply` ``-> k1 * gm + k2 * (z - center) + k3 [M, C]``: BN backward's
  elementwise pass with the per-channel coefficients folded (``out`` may be ``grad``).
* :func:`bn_fold` ``mean, var [C] -> BNFold(scale, shift, invstd [C])``, updating the
  running statistics in place: BatchNorm's per-channel finish after the statistics.
* :func:`bn_grad_fold` ``sum_g, sum_gz [C] -> BNGradFold(k1, k2, k3, grad_gamma,
  grad_beta [C], weight_dot [])``: BN backward's per-channel finish after the sums.

The two folds are one launch each: composed from tensor ops they were ~10 tiny ops a
BatchNorm, ~700 of the fused mixed op's ~1030 launches on a GPU and ~15 % of its time on
the CPU. ``perm`` (int64 ``[C]``, optional) maps internal channel ``j`` to module channel
``perm[j]`` (a channel shuffle folded into the conv before the BN): ``mean, var, scale,
shift, invstd, k*`` are internal order, ``gamma, beta``, running statistics and their
gradients module order.

Backend per device: CPU tensors run ``fbnet_fast._C`` (csrc/bn_act.cpp), CUDA tensors
``fbnet_fast.ops.bn_act_triton`` (same launcher names and signatures). Eager
references with the same signatures: :mod:`fbnet_fast.ops.bn_act_ref`. Reductions are
deterministic (fixed-order partial sums, no float atomics).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import ConfigError
from ._launch import backend, check_act, check_vec, cpu_ext, ptr

__all__ = ["BNStats", "ActGradSums", "BNFold", "BNGradFold", "bn_stats", "affine_act", "affine_act_accumulate_",
           "act_grad_sums", "act_grad_apply", "bn_fold", "bn_grad_fold"]

FAMILY = "bn_act"


class BNStats(NamedTuple):
    mean: torch.Tensor  # [C]
    var: torch.Tensor  # [C], biased (divided by M), as BN normalises with


class ActGradSums(NamedTuple):
    sum_g: torch.Tensor  # [C]  sum over rows of the (ReLU-masked) gradient
    sum_gz: torch.Tensor  # [C] sum over rows of masked gradient * (z - center)


class BNFold(NamedTuple):
    scale: torch.Tensor  # [C] gamma * invstd (internal order)
    shift: torch.Tensor  # [C] beta - mean * scale
    invstd: torch.Tensor  # [C] 1 / sqrt(var + eps)


class BNGradFold(NamedTuple):
    k1: torch.Tensor  # [C] grad_z = k1 * gm + k2 * (z - mean) + k3 (internal order)
    k2: torch.Tensor
    k3: torch.Tensor
    grad_gamma: torch.Tensor  # [C] module order
    grad_beta: torch.Tensor  # [C] module order
    weight_dot: torch.Tensor  # [] sum(grad_y * bn(z)): the Gumbel weight's gradient (alpha not applied)


def _check_perm(perm, c, device):
    if perm is None:
        return
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64 or perm.shape != (c,) \
            or not perm.is_contiguous() or perm.device != device:
        got = f"{perm.dtype} {list(perm.shape)} on {perm.device}" if isinstance(perm, torch.Tensor) else type(perm)
        raise ConfigError(f"perm must be a contiguous int64 [{c}] tensor on {device}, got {got}")


def _check_affine(z, scale, shift, name="z"):
    check_act(z, name, 2)
    c = z.shape[1]
    check_vec(scale, "scale", c, z.device)
    check_vec(shift, "shift", c, z.device)


def bn_stats(z: torch.Tensor) -> BNStats:
    """Per-channel mean and biased variance of ``z [M, C]``."""
    check_act(z, "z", 2)
    if (tk := backend(z, FAMILY)) is not None:
        return tk.bn_stats(z)
    m, c = z.shape
    mean, var = z.new_empty(c), z.new_empty(c)
    cpu_ext().bn_stats(z.data_ptr(), m, c, mean.data_ptr(), var.data_ptr())
    return BNStats(mean, var)


def affine_act(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, relu: bool,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(scale * z + shift)`` for ``z [M, C]``; ``out`` (``[M, C]``, may be ``z``) receives it."""
    _check_affine(z, scale, shift)
    if (tk := backend(z, FAMILY)) is not None:
        return tk.affine_act(z, scale, shift, relu=relu, out=out)
    out = torch.empty_like(z) if out is None else out
    check_act(out, "out", 2)
    cpu_ext().affine_act(z.data_ptr(), z.shape[0], z.shape[1], scale.data_ptr(), shift.data_ptr(), bool(relu),
                         out.data_ptr())
    return out


def affine_act_accumulate_(out: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *,
                           relu: bool, alpha: float, assign: bool = False) -> None:
    """``out [M, C] += alpha * act(scale * z + shift)`` in place; with ``assign``, ``out = alpha * act(...)``
    (the first term of a sum: ``out``'s old values are not read, so it need not be zero-filled first)."""
    _check_affine(z, scale, shift)
    check_act(out, "out", 2)
    if out.shape != z.shape:
        raise ValueError(f"out {list(out.shape)} and z {list(z.shape)} must have the same shape")
    if (tk := backend(z, FAMILY)) is not None:
        if assign:
            out.zero_()
        return tk.affine_act_accumulate_(out, z, scale, shift, relu=relu, alpha=alpha)
    cpu_ext().affine_act_accumulate(z.data_ptr(), z.shape[0], z.shape[1], scale.data_ptr(), shift.data_ptr(),
                                    bool(relu), float(alpha), out.data_ptr(), bool(assign))


def act_grad_sums(grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                  center: torch.Tensor, *, relu: bool) -> ActGradSums:
    """Per-channel ``sum gm`` and ``sum gm * (z - center)`` over the rows of ``grad, z [M, C]``."""
    _check_affine(z, scale, shift)
    check_act(grad, "grad", 2)
    check_vec(center, "center", z.shape[1], z.device)
    if (tk := backend(z, FAMILY)) is not None:
        return tk.act_grad_sums(grad, z, scale, shift, center, relu=relu)
    m, c = z.shape
    sg, sgz = z.new_empty(c), z.new_empty(c)
    cpu_ext().act_grad_sums(grad.data_ptr(), z.data_ptr(), m, c, scale.data_ptr(), shift.data_ptr(), bool(relu),
                            center.data_ptr(), sg.data_ptr(), sgz.data_ptr())
    return ActGradSums(sg, sgz)


def act_grad_apply(grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   center: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor, *, relu: bool,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``k1 * gm + k2 * (z - center) + k3`` for ``grad, z [M, C]``; ``out`` may be ``grad``."""
    _check_affine(z, scale, shift)
    check_act(grad, "grad", 2)
    for name, k in (("center", center), ("k1", k1), ("k2", k2), ("k3", k3)):
        check_vec(k, name, z.shape[1], z.device)
    if (tk := backend(z, FAMILY)) is not None:
        return tk.act_grad_apply(grad, z, scale, shift, center, k1, k2, k3, relu=relu, out=out)
    out = torch.empty_like(z) if out is None else out
    check_act(out, "out", 2)
    cpu_ext().act_grad_apply(grad.data_ptr(), z.data_ptr(), z.shape[0], z.shape[1], scale.data_ptr(),
                             shift.data_ptr(), bool(relu), center.data_ptr(), k1.data_ptr(), k2.data_ptr(), k3.data_ptr(),
                             out.data_ptr())
    return out


def bn_fold(mean: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, *, eps: float,
            perm: torch.Tensor | None = None, running_mean: torch.Tensor | None = None,
            running_var: torch.Tensor | None = None, momentum: float = 0.0, count: int = 1) -> BNFold:
    """BatchNorm's fold ``y = scale * z + shift`` from ``mean, var [C]`` (biased, internal order).

    With ``running_mean, running_var`` (module order) given, they are updated in place as
    ``nn.BatchNorm2d`` does: ``r = (1 - momentum) * r + momentum * stat``, the variance
    unbiased by ``count / (count - 1)`` (``count`` = values per channel, > 1).
    """
    c = mean.numel() if isinstance(mean, torch.Tensor) else -1
    for name, t in (("mean", mean), ("var", var), ("gamma", gamma), ("beta", beta)):
        check_vec(t, name, c, mean.device)
    _check_perm(perm, c, mean.device)
    if (running_mean is None) != (running_var is None):
        raise ConfigError("running_mean and running_var must both be given or both be None")
    if running_mean is not None:
        check_vec(running_mean, "running_mean", c, mean.device)
        check_vec(running_var, "running_var", c, mean.device)
        if count < 2:
            raise ConfigError(f"BatchNorm in training needs more than 1 value per channel, got {count}")
    if (tk := backend(mean, FAMILY)) is not None:
        return tk.bn_fold(mean, var, gamma, beta, eps=eps, perm=perm, running_mean=running_mean,
                          running_var=running_var, momentum=momentum, count=count)
    scale, shift, invstd = mean.new_empty(c), mean.new_empty(c), mean.new_empty(c)
    cpu_ext().bn_fold(mean.data_ptr(), var.data_ptr(), gamma.data_ptr(), beta.data_ptr(), ptr(perm), c, float(eps),
                      ptr(running_mean), ptr(running_var), float(momentum), int(count), scale.data_ptr(),
                      shift.data_ptr(), invstd.data_ptr())
    return BNFold(scale, shift, invstd)


def bn_grad_fold(sum_g: torch.Tensor, sum_gz: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                 invstd: torch.Tensor, *, count: int, batch: bool, alpha: float = 1.0,
                 perm: torch.Tensor | None = None) -> BNGradFold:
    """Backward coefficients of ``y = alpha * bn(z)`` from :func:`act_grad_sums`' ``[C]`` sums.

    ``batch``: BN normalised with batch statistics (gradients flow through mean and
    variance; ``count`` values per channel), else ``k2 = k3 = 0``.
    """
    c = sum_g.numel() if isinstance(sum_g, torch.Tensor) else -1
    for name, t in (("sum_g", sum_g), ("sum_gz", sum_gz), ("gamma", gamma), ("beta", beta), ("invstd", invstd)):
        check_vec(t, name, c, sum_g.device)
    _check_perm(perm, c, sum_g.device)
    if count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    if (tk := backend(sum_g, FAMILY)) is not None:
        return tk.bn_grad_fold(sum_g, sum_gz, gamma, beta, invstd, count=count, batch=batch, alpha=alpha, perm=perm)
    k1, k2, k3, gg, gb = (sum_g.new_empty(c) for _ in range(5))
    dot = sum_g.new_empty(())
    cpu_ext().bn_grad_fold(sum_g.data_ptr(), sum_gz.data_ptr(), gamma.data_ptr(), beta.data_ptr(), invstd.data_ptr(),
                           ptr(perm), c, float(alpha), int(count), bool(batch), k1.data_ptr(), k2.data_ptr(),
                           k3.data_ptr(), gg.data_ptr(), gb.data_ptr(), dot.data_ptr())
    return BNGradFold(k1, k2, k3, gg, gb, dot)
