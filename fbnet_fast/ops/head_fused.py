"""The head's 1x1 conv + BN + ReLU + global average pool as one autograd Function, and the stem's BN + ReLU
as another (CPU, float32).

``Head.forward`` in eager runs the conv, BatchNorm (a statistics pass and a normalising pass),
ReLU and the pool as separate passes over the ``[N*H*W, C_head]`` map (1504 channels in the FBNet
spaces, the widest tensor of a width-0.25 net) and, in backward, ReLU's and BatchNorm's passes
again. Here the BN statistics come from one pass (:func:`~.bn_act.bn_stats`), BN + ReLU is one
pass (:func:`~.bn_act.affine_act`), and the backward is BatchNorm's two passes with the ReLU mask
folded in (:func:`~.bn_act.act_grad_sums`, :func:`~.bn_act.act_grad_apply`), as in the mixed op.
Saved for backward: the input, the conv output ``z`` and the BN statistics. Measured (``python
bench/cpu/ab_stem_head.py``) and checked, with the whole network, against the eager head and float64 by
the network-step tests (tests/test_mixed_op.py).

Dropout and the classifier stay eager (:meth:`Head.forward` after the pool).

The stem (3x3 conv + BN + ReLU on the full-resolution map) keeps torch's conv and runs its BN + ReLU
as :class:`BNReLUFunction`: eager's channels_last BatchNorm over 8-32 channels took 2.5 ms of the
stem's 4.6 ms training step at fbnet-cifar width 0.25, batch 64 (1 thread, AMD EPYC Zen 4).
"""

from __future__ import annotations

import torch
from torch import nn

from .bn_act import affine_act
from .mixed_op_fused import fold_module_bn, module_bn_backward

__all__ = ["BNReLUFunction", "HeadFunction", "bn_relu_fused", "head_fused", "stem_fused", "supports",
           "supports_stem"]


def supports(x: torch.Tensor, head: nn.Module) -> bool:
    """Whether :func:`head_fused` runs ``head`` on ``x``: a :class:`~fbnet_fast.blocks.Head` whose conv is a
    plain 1x1 conv and whose BN an affine ``nn.BatchNorm2d`` (not folded for deployment), float32
    channels_last CPU input."""
    conv, bn = getattr(head, "conv", None), getattr(head, "bn", None)
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.bias is None and conv.groups == 1
            and conv.stride == (1, 1) and conv.weight.dtype == torch.float32
            and type(bn) is nn.BatchNorm2d and bn.affine)


class HeadFunction(torch.autograd.Function):
    """``mean_hw relu(bn(conv1x1(x)))``: ``x [N, C_in, H, W]`` (channels_last) -> ``[N, C_head]``."""

    @staticmethod
    def forward(ctx, x, weight, gamma, beta, bn):
        n, c_in, h, w = x.shape
        c = weight.shape[0]
        x2 = x.permute(0, 2, 3, 1).reshape(n * h * w, c_in)  # a view for channels_last
        w2 = weight.reshape(c, c_in)
        z = torch.mm(x2, w2.t())
        fold = fold_module_bn(bn, gamma, beta, z, None, None)  # batch statistics (and the running update) or running
        act = affine_act(z, fold.scale, fold.shift, relu=True)
        pooled = act.view(n, h * w, c).mean(1)
        # the fold is reused by the backward, as the mixed op's are (gamma, beta saved: changed in place, refused)
        ctx.fold, ctx.hw = fold, h * w
        ctx.save_for_backward(x, weight, gamma, beta, z)
        return pooled

    @staticmethod
    def backward(ctx, grad):
        x, weight, gamma, beta, z = ctx.saved_tensors
        n, c_in, h, w = x.shape
        c = weight.shape[0]
        bn = ctx.fold
        # the pool's gradient, grad / (H W) at every pixel, written once as the BN backward's input (contiguous:
        # at N = 1 the reshape of the expanded rows is a view with a zero row stride, not a copy)
        g = (grad / ctx.hw).unsqueeze(1).expand(n, ctx.hw, c).reshape(n * ctx.hw, c).contiguous()
        r = module_bn_backward(bn, gamma, beta, g, z, relu=True, out=g)
        gz = r.grad_z
        x2 = x.permute(0, 2, 3, 1).reshape(n * h * w, c_in)
        w2 = weight.reshape(c, c_in)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.mm(gz, w2).view(n, h, w, c_in).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            gw = torch.mm(gz.t(), x2).view(weight.shape)
        return gx, gw, r.grad_gamma, r.grad_beta, None


def head_fused(x: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """``head(x)`` with the conv + BN + ReLU + pool fused (see the module docstring); ``x`` as :func:`supports`."""
    if not supports(x, head):
        raise ValueError("head_fused: unsupported head or input (see fbnet_fast.ops.head_fused.supports)")
    bn = head.bn
    pooled = HeadFunction.apply(x, head.conv.weight, bn.weight, bn.bias, bn)
    return head.fc(head.dropout(pooled))


def supports_stem(x: torch.Tensor, stem: nn.Module) -> bool:
    """Whether :func:`stem_fused` runs ``stem``: a :class:`~fbnet_fast.blocks.Stem` with an affine
    ``nn.BatchNorm2d`` (not folded), float32 CPU input."""
    bn = getattr(stem, "bn", None)
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and isinstance(getattr(stem, "conv", None), nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.affine)


class BNReLUFunction(torch.autograd.Function):
    """``relu(bn(z))`` for ``z [N, C, H, W]`` (channels_last); returns channels_last."""

    @staticmethod
    def forward(ctx, z, gamma, beta, bn):
        n, c, h, w = z.shape
        z2 = z.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view for channels_last
        fold = fold_module_bn(bn, gamma, beta, z2, None, None)
        out = affine_act(z2, fold.scale, fold.shift, relu=True)
        ctx.fold = fold  # reused by the backward (gamma, beta saved: changed in place, refused)
        ctx.save_for_backward(z, gamma, beta)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        z, gamma, beta = ctx.saved_tensors
        n, c, h, w = z.shape
        z2 = z.permute(0, 2, 3, 1).reshape(n * h * w, c)
        g2 = grad.permute(0, 2, 3, 1).contiguous().view(n * h * w, c)
        r = module_bn_backward(ctx.fold, gamma, beta, g2, z2, relu=True)
        return r.grad_z.view(n, h, w, c).permute(0, 3, 1, 2), r.grad_gamma, r.grad_beta, None


def bn_relu_fused(z: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``relu(bn(z))`` by :class:`BNReLUFunction` (``z`` made channels_last if it is not)."""
    z = z.contiguous(memory_format=torch.channels_last)
    return BNReLUFunction.apply(z, bn.weight, bn.bias, bn)


def stem_fused(x: torch.Tensor, stem: nn.Module) -> torch.Tensor:
    """``stem(x)``: torch's conv, then BN + ReLU fused (see the module docstring)."""
    if not supports_stem(x, stem):
        raise ValueError("stem_fused: unsupported stem or input (see fbnet_fast.ops.head_fused.supports_stem)")
    return bn_relu_fused(stem.conv(x), stem.bn)
