"""Plain models: exactly the chosen blocks, hand-counted parameters and FLOPs, weight inheritance."""

import pytest
import torch
from torch import nn

from conftest import make_tiny_space
from fbnet_fast.blocks import IRBlock, SkipBlock
from fbnet_fast.errors import CheckpointError, SpaceError
from fbnet_fast.model import (build_model, count_flops, inherit_from_supernet, load_model_file, model_stats,
                              save_model_file)
from fbnet_fast.space import Architecture, parse_candidate
from fbnet_fast.supernet import Supernet

# Covers: a grouped IR block (shuffle), skip as a 1x1 conv (16 -> 16 but stride 2: layer 1
# changes width, so layer 2's skip is stride 1 same width -> identity), k5_e6 and skip as
# the identity. Layers of the tiny space: 8->8 s1, 8->16 s2, 16->16 s1, 16->24 s2, 24->24 s1.
BLOCKS = ("k3_e1_g2", "skip", "skip", "k5_e6", "k3_e3")


def _arch(space, blocks=BLOCKS):
    return Architecture(tuple(blocks), space.name, space.fingerprint)


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so BN actually matters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def _hand_params(space, blocks) -> int:
    """Parameters from the paper's block definition (Table 2), counted by hand."""
    total = 3 * 3 * space.in_channels * space.stem_channels + 2 * space.stem_channels  # stem conv + BN
    for layer, name in zip(space.layers, blocks):
        c = parse_candidate(name)
        if c.kind == "skip":
            if layer.stride != 1 or layer.c_in != layer.c_out:
                total += layer.c_in * layer.c_out + 2 * layer.c_out
            continue
        mid = round(layer.c_in * c.expansion)
        total += layer.c_in * mid // c.groups + 2 * mid  # conv_pw + bn1
        total += mid * c.kernel * c.kernel + 2 * mid  # depthwise + bn2
        total += mid * layer.c_out // c.groups + 2 * layer.c_out  # conv_pwl + bn3
    c_last = space.layers[-1].c_out
    total += c_last * space.head_channels + 2 * space.head_channels  # head conv + BN
    total += space.head_channels * space.num_classes + space.num_classes  # fc
    return total


def _hand_flops(space, blocks) -> int:
    """2 x multiply-adds of the convs and the fc (what FlopCounterMode counts), by hand."""
    s0 = (space.input_size - 1) // space.stem_stride + 1
    total = 2 * s0 * s0 * space.stem_channels * space.in_channels * 9
    for layer, name in zip(space.layers, blocks):
        c = parse_candidate(name)
        o2 = layer.out_size ** 2
        if c.kind == "skip":
            if layer.stride != 1 or layer.c_in != layer.c_out:
                total += 2 * o2 * layer.c_in * layer.c_out
            continue
        mid = round(layer.c_in * c.expansion)
        total += 2 * layer.in_size ** 2 * layer.c_in * mid // c.groups
        total += 2 * o2 * mid * c.kernel * c.kernel
        total += 2 * o2 * mid * layer.c_out // c.groups
    f2 = space.final_size ** 2
    total += 2 * f2 * space.layers[-1].c_out * space.head_channels
    total += 2 * space.head_channels * space.num_classes
    return total


def test_model_has_exactly_the_chosen_blocks(tiny_space):
    model = build_model(tiny_space, _arch(tiny_space))
    assert len(model.blocks) == tiny_space.num_layers
    kinds = [type(b) for b in model.blocks]
    assert kinds == [IRBlock, SkipBlock, SkipBlock, IRBlock, IRBlock]
    assert not model.blocks[1].identity and model.blocks[2].identity
    assert (model.blocks[0].groups, model.blocks[0].kernel) == (2, 3)
    assert (model.blocks[3].kernel, model.blocks[3].expansion) == (5, 6)
    # no supernet left-overs: no theta, no mixed ops, no unused candidates
    names = [n for n, _ in model.named_parameters()]
    assert not any("theta" in n or "candidates" in n or "layers." in n for n in names)
    assert not any(isinstance(m, nn.ModuleList) for m in model.modules())


def test_state_dict_keys_are_readable_and_stable(tiny_space):
    keys = list(build_model(tiny_space, _arch(tiny_space)).state_dict())
    assert keys[:2] == ["stem.conv.weight", "stem.bn.weight"]
    assert "blocks.0.conv_pw.weight" in keys and "blocks.0.bn3.running_var" in keys
    assert "blocks.1.conv.weight" in keys  # skip that changes shape
    assert not any(k.startswith("blocks.2.") for k in keys)  # skip as identity has no state
    assert keys[-2:] == ["head.fc.weight", "head.fc.bias"]
    assert keys == list(build_model(tiny_space, _arch(tiny_space)).state_dict())


@pytest.mark.parametrize("blocks", [
    BLOCKS,
    ("skip",) * 5,  # the cheapest net: every shape change a 1x1 conv
    ("k5_e6",) * 5,
])
def test_params_and_flops_match_hand_count(tiny_space, blocks):
    stats = model_stats(tiny_space, _arch(tiny_space, blocks))
    assert stats.params == _hand_params(tiny_space, blocks)
    assert stats.flops == _hand_flops(tiny_space, blocks)
    assert stats.macs == stats.flops // 2


def test_flops_scale_with_batch(tiny_space):
    model = build_model(tiny_space, _arch(tiny_space))
    assert count_flops(model, (3, 3, 16, 16)) == 3 * count_flops(model, (1, 3, 16, 16))


def test_inherited_model_equals_supernet_with_one_hot_weights(tiny_space):
    torch.manual_seed(0)
    arch = _arch(tiny_space)
    net = Supernet(tiny_space, impl="reference")
    _randomise_bn(net)
    # distinct weights everywhere so a wrong candidate index cannot pass by accident
    for p in net.weight_parameters():
        p.data.normal_(0, 0.3)
    model = build_model(tiny_space, arch)
    copied = inherit_from_supernet(model, net.state_dict())
    assert set(copied) == set(model.state_dict())
    net.eval()
    model.eval()
    one_hot = torch.zeros(tiny_space.num_layers, len(tiny_space.candidates))
    one_hot[torch.arange(tiny_space.num_layers), torch.tensor(arch.indices(tiny_space))] = 1.0
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref, out = net(x, one_hot), model(x)
    # the same float32 ops in the same order (a weight of exactly 1.0 is exact): bit-identical
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # and a different architecture gives a different function
    other = build_model(tiny_space, _arch(tiny_space, ("k3_e1",) * 5))
    inherit_from_supernet(other, net.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), ref)


def test_inherit_rejects_another_space(tiny_space):
    other_space = make_tiny_space(stem_filters=16)
    net = Supernet(other_space, impl="reference")
    model = build_model(tiny_space, _arch(tiny_space))
    with pytest.raises(CheckpointError, match="shape"):
        inherit_from_supernet(model, net.state_dict())


def test_architecture_must_fit_space(tiny_space):
    with pytest.raises(SpaceError, match="layers"):
        build_model(tiny_space, Architecture(("skip",) * 4))
    with pytest.raises(SpaceError, match="not a candidate"):
        build_model(tiny_space, Architecture(("k7_e6",) * 5))


def test_model_file_round_trip(tmp_path, tiny_space):
    torch.manual_seed(0)
    model = build_model(tiny_space, _arch(tiny_space))
    _randomise_bn(model)
    save_model_file(tmp_path / "m.pt", model, val_acc=0.5)
    loaded, payload = load_model_file(tmp_path / "m.pt")
    assert payload["val_acc"] == 0.5 and str(loaded.arch) == str(model.arch)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model_file(tmp_path / "bad.pt")
