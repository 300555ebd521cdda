import pytest
import torch

from fbnet_fast.errors import ConfigError
from fbnet_fast.ops import mixed_op_ref
from fbnet_fast.supernet import Supernet, gumbel_weights


def test_gumbel_frequencies_approach_softmax_at_small_tau():
    theta = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    gen = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.zeros(4)
    for _ in range(n // 1000):
        th = theta.expand(1000, 4)
        w = gumbel_weights(th, 0.05, generator=gen)
        counts += torch.bincount(w.argmax(1), minlength=4)
    freq = counts / n
    # Gumbel-max: argmax(theta + g) ~ softmax(theta) exactly; 4 sigma of a binomial at n=20000.
    target = torch.softmax(theta[0], 0)
    assert torch.all((freq - target).abs() < 4 * torch.sqrt(target * (1 - target) / n))
    # at small tau the weights themselves are nearly one-hot
    assert float(w.max(1).values.mean()) > 0.9


def test_gumbel_is_deterministic_under_a_seed_and_sums_to_one():
    theta = torch.randn(5, 9)
    a = gumbel_weights(theta, 2.0, generator=torch.Generator().manual_seed(3))
    b = gumbel_weights(theta, 2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    torch.testing.assert_close(a.sum(1), torch.ones(5))


def test_gradient_flows_to_theta():
    theta = torch.zeros(3, 4, requires_grad=True)
    w = gumbel_weights(theta, 1.0, generator=torch.Generator().manual_seed(0))
    (w * torch.arange(4.0)).sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_hard_gumbel_is_one_hot_forward_soft_backward():
    theta = torch.randn(6, 5, requires_grad=True)
    w = gumbel_weights(theta, 1.0, hard=True, generator=torch.Generator().manual_seed(0))
    assert torch.all((w == 0).sum(1) == 4)  # exact zeros: those candidates are skipped
    torch.testing.assert_close(w.detach().max(1).values, torch.ones(6))
    (w * torch.randn(6, 5)).sum().backward()
    assert torch.all(theta.grad.abs().sum(1) > 0)  # every row gets a gradient through the soft weights


def test_bad_tau():
    with pytest.raises(ConfigError, match="tau"):
        gumbel_weights(torch.zeros(2, 2), 0.0)


def test_supernet_forward_backward_and_groups(tiny_space):
    torch.manual_seed(0)
    net = Supernet(tiny_space)
    assert len(net.arch_parameters()) == tiny_space.num_layers
    n_w = sum(p.numel() for p in net.weight_parameters())
    assert n_w + tiny_space.num_layers * len(tiny_space.candidates) == sum(p.numel() for p in net.parameters())
    w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
    out = net(torch.randn(4, 3, 16, 16), w)
    assert out.shape == (4, 10)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad.abs().sum() > 0 for p in net.arch_parameters())


def test_mixed_op_is_the_weighted_sum(tiny_space):
    net = Supernet(tiny_space)
    op = net.layers[1]
    x = torch.randn(2, op.layer.c_in, 16, 16)
    w = torch.softmax(torch.randn(len(op.candidates)), 0)
    expect = sum(w[i] * b(x) for i, b in enumerate(op.candidates))
    torch.testing.assert_close(op(x, w), expect)
    hard = torch.zeros(len(op.candidates))
    hard[2] = 1.0
    torch.testing.assert_close(mixed_op_ref(x, hard, op.candidates), op.candidates[2](x))


def test_hard_mode_computes_one_candidate(tiny_space):
    # the reference path, observed through forward hooks (the fused path has its own test)
    net = Supernet(tiny_space, impl="reference")
    calls = []
    for op in net.layers:
        for i, b in enumerate(op.candidates):
            b.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    w = net.sample_weights(1.0, hard=True, generator=torch.Generator().manual_seed(1))
    net(torch.randn(2, 3, 16, 16), w)
    assert len(calls) == tiny_space.num_layers


def test_sampled_architectures_follow_softmax_theta(tiny_space):
    net = Supernet(tiny_space)
    with torch.no_grad():
        net.layers[0].theta.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0, -1.0]))
    archs = net.sample_architectures(4000, generator=torch.Generator().manual_seed(0))
    first = torch.tensor([tiny_space.candidates.index(a.blocks[0]) for a in archs])
    freq = torch.bincount(first, minlength=5).double() / 4000
    p = torch.softmax(torch.tensor([2.0, 0.0, 0.0, 0.0, -1.0], dtype=torch.float64), 0)
    assert torch.all((freq - p).abs() < 4 * torch.sqrt(p * (1 - p) / 4000) + 1e-3)
    assert net.most_likely().blocks[0] == "k3_e1"


def test_weights_shape_is_checked(tiny_space):
    net = Supernet(tiny_space)
    with pytest.raises(ConfigError, match="weights must be"):
        net(torch.randn(1, 3, 16, 16), torch.ones(2, 2))
