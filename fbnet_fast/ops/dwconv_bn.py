"""The ``dwconv_bn`` kernel family: depthwise conv fused with the BN+ReLU before it.

In an IR block ``h1 = relu(bn1(z1))`` feeds the depthwise ``k x k`` conv and
``z2 = dwconv(h1)`` feeds ``bn2``. Eager makes four passes over mid-channel tensors
(BN1 apply, ReLU, conv, BN2 statistics) and keeps ``h1`` for backward; these kernels
rebuild ``h1`` on the fly from ``z1`` and the folded BN1 affine, and produce the BN2
statistics (forward) or the BN1 gradient sums (backward) in the same pass.

Layouts: float32, contiguous, channels-last. ``z1 [N, H, W, C]``, depthwise weight as
``[k*k, C]`` (``conv_dw.weight.view(C, k*k).t()``: taps major so each tap's C values
are contiguous), ``scale1, shift1 [C]`` (``h1 = relu(scale1 * z1 + shift1)``),
``stride`` 1 or 2, padding ``k // 2``, ``Ho = (H - 1) // stride + 1`` (same for W).

Launchers (callable without autograd):

* :func:`dwconv_bn_forward` ``-> DWConvBNForward(out [N, Ho, Wo, C], mean [C], var [C], act)``:
  ``out = dwconv(relu(scale1*z1 + shift1))`` and its biased per-channel statistics
  (``None`` when ``stats=False``, e.g. recomputation in backward or eval mode); with
  ``scale2, shift2`` (BN2 already known: the recomputation in backward) also
  ``act = relu(scale2*out + shift2) [N, Ho, Wo, C]`` from the same pass.
* :func:`dwconv_bn_backward` ``-> DWConvBNBackward(grad_in [N, H, W, C], grad_weight
  [k*k, C], sum_g [C], sum_gz [C])``: ``grad_in`` is the gradient w.r.t. the BN1 output
  *before* its ReLU (``u1 = scale1*z1 + shift1``, ReLU mask applied);
  ``sum_g = sum grad_in``, ``sum_gz = sum grad_in * (z1 - center1)`` over N, H, W.

Backend per device: CPU tensors run ``fbnet_fast._C`` (csrc/dwconv_bn.cpp), CUDA
tensors ``fbnet_fast.ops.dwconv_bn_triton`` (same launcher names and signatures).
Eager references: :mod:`fbnet_fast.ops.dwconv_bn_ref`. Reductions (statistics, weight
gradient) are deterministic: fixed chunks of rows, partials added in chunk order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._launch import backend, check_act, check_vec, cpu_ext
from ..errors import ConfigError

__all__ = ["DWConvBNForward", "DWConvBNBackward", "dwconv_bn_forward", "dwconv_bn_backward", "conv_out_size"]

FAMILY = "dwconv_bn"


class DWConvBNForward(NamedTuple):
    out: torch.Tensor  # [N, Ho, Wo, C]
    mean: torch.Tensor | None  # [C] batch mean of out
    var: torch.Tensor | None  # [C] biased batch variance of out
    act: torch.Tensor | None = None  # [N, Ho, Wo, C] relu(scale2 * out + shift2) when asked for


class DWConvBNBackward(NamedTuple):
    grad_in: torch.Tensor  # [N, H, W, C] gradient w.r.t. u1 = scale1*z1 + shift1 (ReLU mask applied)
    grad_weight: torch.Tensor | None  # [k*k, C]; None when not asked for
    sum_g: torch.Tensor  # [C] sum of grad_in
    sum_gz: torch.Tensor  # [C] sum of grad_in * (z1 - center1)


def conv_out_size(size: int, stride: int) -> int:
    """'same' padding with an odd kernel."""
    return (size - 1) // stride + 1


def _check(z1, scale1, shift1, weight, stride) -> int:
    check_act(z1, "z1", 4)
    c = z1.shape[3]
    check_vec(scale1, "scale1", c, z1.device)
    check_vec(shift1, "shift1", c, z1.device)
    check_act(weight, "weight", 2)
    k = int(round(weight.shape[0] ** 0.5))
    if weight.shape[1] != c or k * k != weight.shape[0] or k % 2 == 0:
        raise ConfigError(f"weight must be [k*k, {c}] with odd k, got {list(weight.shape)}")
    if stride not in (1, 2):
        raise ConfigError(f"stride must be 1 or 2, got {stride}")
    return k


def dwconv_bn_forward(z1: torch.Tensor, scale1: torch.Tensor, shift1: torch.Tensor, weight: torch.Tensor,
                      stride: int, *, stats: bool = True, scale2: torch.Tensor | None = None,
                      shift2: torch.Tensor | None = None) -> DWConvBNForward:
    """``dwconv(relu(scale1 * z1 + shift1))`` with its BN statistics; see the module docstring."""
    k = _check(z1, scale1, shift1, weight, stride)
    n, h, w, c = z1.shape
    if (scale2 is None) != (shift2 is None):
        raise ConfigError("scale2 and shift2 must both be given or both be None")
    if scale2 is not None:
        check_vec(scale2, "scale2", c, z1.device)
        check_vec(shift2, "shift2", c, z1.device)
    if (tk := backend(z1, FAMILY)) is not None:
        return tk.dwconv_bn_forward(z1, scale1, shift1, weight, stride, stats=stats, scale2=scale2, shift2=shift2)
    out = z1.new_empty(n, conv_out_size(h, stride), conv_out_size(w, stride), c)
    mean = z1.new_empty(c) if stats else None
    var = z1.new_empty(c) if stats else None
    act = torch.empty_like(out) if scale2 is not None else None
    extra = {} if act is None else dict(scale2=scale2.data_ptr(), shift2=shift2.data_ptr(), act_out=act.data_ptr())
    cpu_ext().dwconv_bn_forward(z1.data_ptr(), n, h, w, c, scale1.data_ptr(), shift1.data_ptr(), weight.data_ptr(),
                                k, stride, out.data_ptr(), mean.data_ptr() if stats else 0,
                                var.data_ptr() if stats else 0, **extra)
    return DWConvBNForward(out, mean, var, act)


def dwconv_bn_backward(grad_out: torch.Tensor, z1: torch.Tensor, scale1: torch.Tensor, shift1: torch.Tensor,
                       weight: torch.Tensor, stride: int, center1: torch.Tensor, *,
                       weight_grad: bool = True) -> DWConvBNBackward:
    """Gradients of :func:`dwconv_bn_forward`'s ``out`` w.r.t. ``u1`` and ``weight``, plus BN1 sums.

    ``weight_grad=False`` (frozen weights, e.g. a theta step): ``grad_weight`` is ``None`` and
    the CPU kernel skips its loop.
    """
    k = _check(z1, scale1, shift1, weight, stride)
    n, h, w, c = z1.shape
    check_act(grad_out, "grad_out", 4)
    expect = (n, conv_out_size(h, stride), conv_out_size(w, stride), c)
    if tuple(grad_out.shape) != expect:
        raise ConfigError(f"grad_out must be {list(expect)}, got {list(grad_out.shape)}")
    check_vec(center1, "center1", c, z1.device)
    if (tk := backend(z1, FAMILY)) is not None:
        return tk.dwconv_bn_backward(grad_out, z1, scale1, shift1, weight, stride, center1, weight_grad=weight_grad)
    grad_in = torch.empty_like(z1)
    grad_w = torch.empty_like(weight) if weight_grad else None
    sg, sgz = z1.new_empty(c), z1.new_empty(c)
    cpu_ext().dwconv_bn_backward(grad_out.data_ptr(), z1.data_ptr(), n, h, w, c, scale1.data_ptr(),
                                 shift1.data_ptr(), weight.data_ptr(), k, stride, center1.data_ptr(),
                                 grad_in.data_ptr(), grad_w.data_ptr() if weight_grad else 0, sg.data_ptr(),
                                 sgz.data_ptr())
    return DWConvBNBackward(grad_in, grad_w, sg, sgz)
