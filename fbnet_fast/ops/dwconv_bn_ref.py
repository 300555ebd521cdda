"""Eager references of the ``dwconv_bn`` family (see :mod:`fbnet_fast.ops.dwconv_bn`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dwconv_bn import DWConvBNBackward, DWConvBNForward

__all__ = ["dwconv_bn_forward_ref", "dwconv_bn_backward_ref"]


def _conv(z1, scale1, shift1, weight, stride):
    n, h, w, c = z1.shape
    k = int(round(weight.shape[0] ** 0.5))
    h1 = torch.relu(z1 * scale1 + shift1).permute(0, 3, 1, 2)
    wt = weight.t().reshape(c, 1, k, k)
    return F.conv2d(h1, wt, stride=stride, padding=k // 2, groups=c).permute(0, 2, 3, 1)


def dwconv_bn_forward_ref(z1, scale1, shift1, weight, stride, *, stats=True, scale2=None,
                          shift2=None) -> DWConvBNForward:
    out = _conv(z1, scale1, shift1, weight, stride).contiguous()
    act = None if scale2 is None else torch.relu(out * scale2 + shift2)
    if not stats:
        return DWConvBNForward(out, None, None, act)
    var, mean = torch.var_mean(out.reshape(-1, out.shape[-1]), dim=0, correction=0)
    return DWConvBNForward(out, mean, var, act)


def dwconv_bn_backward_ref(grad_out, z1, scale1, shift1, weight, stride, center1, *,
                           weight_grad=True) -> DWConvBNBackward:
    with torch.enable_grad():
        u1 = (z1 * scale1 + shift1).detach().requires_grad_(True)
        wt = weight.detach().requires_grad_(True)
        n, h, w, c = z1.shape
        k = int(round(weight.shape[0] ** 0.5))
        y = F.conv2d(torch.relu(u1).permute(0, 3, 1, 2), wt.t().reshape(c, 1, k, k), stride=stride,
                     padding=k // 2, groups=c).permute(0, 2, 3, 1)
        g_u1, g_w = torch.autograd.grad(y, (u1, wt), grad_out)
    g2 = g_u1.reshape(-1, c)
    return DWConvBNBackward(g_u1.contiguous(), g_w if weight_grad else None, g2.sum(0),
                            (g2 * (z1.reshape(-1, c) - center1)).sum(0))
