import copy

import pytest
import torch

from fbnet_fast.blocks import IRBlock, SkipBlock, build_block, channel_shuffle
from fbnet_fast.space import LayerSpec


def count(m):
    return sum(p.numel() for p in m.parameters())


# Hand-computed: conv_pw c_in*mid/g + bn 2*mid + dw mid*k*k + bn 2*mid + pwl mid*c_out/g + bn 2*c_out.
@pytest.mark.parametrize(
    "c_in, c_out, cand, stride, params",
    [
        (16, 24, "k3_e6", 2, 16 * 96 + 192 + 96 * 9 + 192 + 96 * 24 + 48),    # 5136
        (32, 32, "k5_e1_g2", 1, 32 * 32 // 2 + 64 + 32 * 25 + 64 + 32 * 32 // 2 + 64),  # 2016
        (24, 24, "k3_e3", 1, 24 * 72 + 144 + 72 * 9 + 144 + 72 * 24 + 48),
        (112, 184, "k5_e6", 2, 112 * 672 + 1344 + 672 * 25 + 1344 + 672 * 184 + 368),
        (16, 24, "skip", 2, 16 * 24 + 48),
        (24, 24, "skip", 1, 0),
    ],
)
def test_parameter_count_and_shape(c_in, c_out, cand, stride, params):
    layer = LayerSpec(0, 0, c_in, c_out, stride, 14, (14 - 1) // stride + 1)
    block = build_block(cand, layer)
    assert count(block) == params
    y = block(torch.randn(2, c_in, 14, 14))
    assert y.shape == (2, c_out, layer.out_size, layer.out_size)


def test_ir_block_structure_follows_the_paper():
    b = IRBlock(c_in=32, c_out=32, kernel=5, expansion=1, groups=2, stride=1)
    names = [n for n, _ in b.named_children()]
    assert names == ["conv_pw", "bn1", "shuffle", "conv_dw", "bn2", "conv_pwl", "bn3"]
    assert b.conv_pw.groups == 2 and b.conv_pwl.groups == 2 and b.conv_dw.groups == 32
    assert b.conv_dw.kernel_size == (5, 5) and b.residual
    assert not IRBlock(c_in=16, c_out=24, kernel=3, expansion=6, stride=1).residual
    assert not IRBlock(c_in=16, c_out=16, kernel=3, expansion=6, stride=2).residual


def test_residual_is_added():
    b = IRBlock(c_in=8, c_out=8, kernel=3, expansion=3, stride=1).eval()
    for bn in (b.bn3,):
        torch.nn.init.zeros_(bn.weight)
        torch.nn.init.zeros_(bn.bias)
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(b(x), x)


def test_skip_is_identity_when_shapes_allow():
    s = SkipBlock(c_in=16, c_out=16, stride=1)
    x = torch.randn(1, 16, 4, 4)
    assert s(x) is x
    assert SkipBlock(c_in=16, c_out=24, stride=1).conv.stride == (1, 1)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_head_pooling_is_the_same_in_both_layouts():
    """The head pools a channels_last map under grad as a mean over the NHWC rows (a faster backward):
    the same logits and gradients as adaptive_avg_pool2d on the NCHW map, up to summation order."""
    from fbnet_fast.blocks import Head

    torch.manual_seed(0)
    head = Head(c_in=8, c_head=32, num_classes=5)
    x = torch.randn(4, 8, 3, 3)
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        h = copy.deepcopy(head).to(memory_format=fmt)
        xx = x.clone().contiguous(memory_format=fmt).requires_grad_(True)
        y = h(xx)
        y.square().sum().backward()
        outs.append((y.detach(), xx.grad, h.conv.weight.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # evaluation and export keep adaptive_avg_pool2d
        torch.testing.assert_close(head(x), outs[0][0], rtol=1e-5, atol=1e-6)
