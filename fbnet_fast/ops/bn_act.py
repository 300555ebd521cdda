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

Backend per device: CPU tensors run ``fbnet_fast._C`` (csrc/bn_act.cpp), CUDA tensors
``fbnet_fast.ops.bn_act_triton`` (same launcher names and signatures). Eager
references with the same signatures: :mod:`fbnet_fast.ops.bn_act_ref`. Reductions are
deterministic (fixed-order partial sums, no float atomics).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._launch import backend, check_act, check_vec, cpu_ext

__all__ = ["BNStats", "ActGradSums", "bn_stats", "affine_act", "affine_act_accumulate_", "act_grad_sums",
           "act_grad_apply"]

FAMILY = "bn_act"


class BNStats(NamedTuple):
    mean: torch.Tensor  # [C]
    var: torch.Tensor  # [C], biased (divided by M), as BN normalises with


class ActGradSums(NamedTuple):
    sum_g: torch.Tensor  # [C]  sum over rows of the (ReLU-masked) gradient
    sum_gz: torch.Tensor  # [C] sum over rows of masked gradient * (z - center)


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
                           relu: bool, alpha: float) -> None:
    """``out [M, C] += alpha * act(scale * z + shift)`` in place."""
    _check_affine(z, scale, shift)
    check_act(out, "out", 2)
    if out.shape != z.shape:
        raise ValueError(f"out {list(out.shape)} and z {list(z.shape)} must have the same shape")
    if (tk := backend(z, FAMILY)) is not None:
        return tk.affine_act_accumulate_(out, z, scale, shift, relu=relu, alpha=alpha)
    cpu_ext().affine_act_accumulate(z.data_ptr(), z.shape[0], z.shape[1], scale.data_ptr(), shift.data_ptr(),
                                    bool(relu), float(alpha), out.data_ptr())


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
