"""Eager references of the ``bn_act`` family (see :mod:`fbnet_fast.ops.bn_act`).

Same signatures and results as the launchers, in plain PyTorch (float64-capable), so
tests, benchmarks and the Triton kernels share one oracle.
"""

from __future__ import annotations

import torch

from .bn_act import ActGradSums, BNFold, BNGradFold, BNStats

__all__ = ["bn_stats_ref", "affine_act_ref", "affine_act_accumulate_ref", "act_grad_sums_ref", "act_grad_apply_ref",
           "bn_fold_ref", "bn_grad_fold_ref"]


def _act(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, relu: bool) -> torch.Tensor:
    y = z * scale + shift
    return torch.relu(y) if relu else y


def _masked(grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, relu: bool) -> torch.Tensor:
    return torch.where(z * scale + shift > 0, grad, torch.zeros_like(grad)) if relu else grad


def bn_stats_ref(z: torch.Tensor) -> BNStats:
    var, mean = torch.var_mean(z, dim=0, correction=0)
    return BNStats(mean, var)


def affine_act_ref(z, scale, shift, *, relu, out=None):
    y = _act(z, scale, shift, relu)
    return y if out is None else out.copy_(y)


def affine_act_accumulate_ref(out, z, scale, shift, *, relu, alpha):
    out.add_(_act(z, scale, shift, relu), alpha=alpha)


def act_grad_sums_ref(grad, z, scale, shift, center, *, relu) -> ActGradSums:
    gm = _masked(grad, z, scale, shift, relu)
    return ActGradSums(gm.sum(0), (gm * (z - center)).sum(0))


def act_grad_apply_ref(grad, z, scale, shift, center, k1, k2, k3, *, relu, out=None):
    y = k1 * _masked(grad, z, scale, shift, relu) + k2 * (z - center) + k3
    return y if out is None else out.copy_(y)


def bn_fold_ref(mean, var, gamma, beta, *, eps, perm=None, running_mean=None, running_var=None, momentum=0.0,
                count=1) -> BNFold:
    g, b = (gamma, beta) if perm is None else (gamma[perm], beta[perm])
    invstd = torch.rsqrt(var + eps)
    scale = g * invstd
    if running_mean is not None:
        idx = slice(None) if perm is None else perm
        running_mean[idx] = (1 - momentum) * running_mean[idx] + momentum * mean
        running_var[idx] = (1 - momentum) * running_var[idx] + momentum * var * (count / (count - 1))
    return BNFold(scale, b - mean * scale, invstd)


def bn_grad_fold_ref(sum_g, sum_gz, gamma, beta, invstd, *, count, batch, alpha=1.0, perm=None) -> BNGradFold:
    g, b = (gamma, beta) if perm is None else (gamma[perm], beta[perm])
    dot = (g * invstd * sum_gz + b * sum_g).sum()
    k1 = alpha * g * invstd
    k2 = -k1 * invstd * invstd * sum_gz / count if batch else torch.zeros_like(k1)
    k3 = -k1 * sum_g / count if batch else torch.zeros_like(k1)
    gg, gb = alpha * invstd * sum_gz, alpha * sum_g
    if perm is not None:
        gg, gb = torch.empty_like(gg).index_copy_(0, perm, gg), torch.empty_like(gb).index_copy_(0, perm, gb)
    return BNGradFold(k1, k2, k3, gg, gb, dot)
