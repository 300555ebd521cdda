"""Block kinds: one registry, and the fused kernels run only the exact kinds they implement.

The trap this guards: the fused planner used to recognise an IR block by its attributes
(``hasattr(b, "conv_dw")``), so a new kind with a depthwise conv and something more (here
squeeze-excite) would have run through the kernels without its extra part and returned
wrong numbers, silently.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fbnet_fast.blocks import BLOCK_KINDS, IRBlock, SkipBlock, build_block, register_block_kind
from fbnet_fast.errors import ConfigError
from fbnet_fast.ops import _ext, mixed_op, mixed_op_ref
from fbnet_fast.ops.mixed_op_fused import FUSED_KINDS, supports
from fbnet_fast.space import FBNET_CANDIDATES, Candidate, LayerSpec
from fbnet_fast.supernet import MixedOp

needs_ext = pytest.mark.skipif(not _ext.available(), reason="fbnet_fast._C not built (pip install -e .)")


class IRSEBlock(IRBlock):
    """A toy kind: an IR block with squeeze-excite after the depthwise conv (MobileNetV3 style)."""

    kind = "ir_se"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        squeeze = max(1, self.mid // 4)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(self.mid, squeeze, 1), nn.ReLU(),
                                nn.Conv2d(squeeze, self.mid, 1), nn.Sigmoid())

    @classmethod
    def from_candidate(cls, cand: Candidate, layer: LayerSpec) -> "IRSEBlock":
        return cls(c_in=layer.c_in, c_out=layer.c_out, kernel=cand.kernel, expansion=cand.expansion,
                   groups=cand.groups, stride=layer.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(torch.relu(self.bn1(self.conv_pw(x))))
        y = torch.relu(self.bn2(self.conv_dw(y)))
        y = y * self.se(y)
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.residual else y


LAYER = LayerSpec(0, 0, 8, 8, 1, 6, 6)


def test_registry_maps_every_kind_to_its_class():
    assert BLOCK_KINDS["ir"] is IRBlock and BLOCK_KINDS["skip"] is SkipBlock
    for name in FBNET_CANDIDATES:
        block = build_block(name, LAYER)
        assert BLOCK_KINDS[block.kind] is type(block)
    saved = dict(BLOCK_KINDS)
    try:
        register_block_kind(IRSEBlock)
        block = build_block(Candidate("ir_se", 3, 3.0, 1), LAYER)
        assert type(block) is IRSEBlock and block.mid == 24
        with pytest.raises(ValueError, match="already IRBlock"):
            register_block_kind(type("FakeIR", (nn.Module,), {"kind": "ir"}))
        with pytest.raises(TypeError, match="kind"):
            register_block_kind(type("NoKind", (nn.Module,), {}))
    finally:
        BLOCK_KINDS.clear()
        BLOCK_KINDS.update(saved)


def _layer_with_se(seed: int = 0) -> MixedOp:
    """An FBNet mixed op whose third candidate is replaced by the toy kind (same shapes)."""
    torch.manual_seed(seed)
    op = MixedOp(LAYER, FBNET_CANDIDATES)
    ref = op.candidates[2]
    op.candidates[2] = IRSEBlock(c_in=ref.c_in, c_out=ref.c_out, kernel=ref.kernel, expansion=ref.expansion,
                                 groups=ref.groups, stride=ref.stride)
    return op


def _step(op: MixedOp, impl: str):
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    w = torch.softmax(torch.randn(len(FBNET_CANDIDATES), generator=torch.Generator().manual_seed(2)), 0)
    w.requires_grad_(True)
    y = mixed_op(x, w, op, impl=impl) if impl != "ref" else mixed_op_ref(x, w, op.candidates)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
    return y.detach(), x.grad, w.grad, [p.grad.clone() for p in op.parameters() if p.grad is not None]


def test_unknown_kind_runs_the_reference_under_auto():
    """impl="auto": the layer with the toy kind goes to the eager reference, bit-identical to it."""
    import copy

    op = _layer_with_se()
    x = torch.zeros(1, 8, 6, 6)
    why = supports(x, torch.ones(len(FBNET_CANDIDATES)), op.candidates)
    assert why is not None and "IRSEBlock" in why and "'ir_se'" in why
    got = _step(copy.deepcopy(op), "auto")
    want = _step(copy.deepcopy(op), "ref")
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    assert len(got[3]) == len(want[3]) and all(torch.equal(a, b) for a, b in zip(got[3], want[3]))
    # The squeeze-excite part really matters: without it the output differs.
    plain = copy.deepcopy(op)
    plain.candidates[2] = IRBlock(c_in=8, c_out=8, kernel=op.candidates[2].kernel,
                                  expansion=op.candidates[2].expansion, stride=1)
    plain.candidates[2].load_state_dict({k: v for k, v in op.candidates[2].state_dict().items()
                                         if not k.startswith("se.")})
    assert not torch.allclose(_step(plain, "ref")[0], want[0])


@needs_ext
def test_unknown_kind_is_refused_by_the_fused_impl():
    with pytest.raises(ConfigError, match=r"candidate 2 is a IRSEBlock \(kind 'ir_se'\)"):
        _step(_layer_with_se(), "cpp")


def test_a_subclass_of_a_fused_kind_is_not_that_kind():
    class TweakedIR(IRBlock):  # same kind string, other behaviour: still not what the kernels implement
        pass

    op = MixedOp(LAYER, FBNET_CANDIDATES)
    ref = op.candidates[0]
    op.candidates[0] = TweakedIR(c_in=8, c_out=8, kernel=ref.kernel, expansion=ref.expansion, stride=1)
    assert "TweakedIR" in supports(torch.zeros(1, 8, 6, 6), torch.ones(len(FBNET_CANDIDATES)), op.candidates)
    assert set(FUSED_KINDS) == {"ir", "skip"}
