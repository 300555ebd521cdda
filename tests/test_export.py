"""Export: BN folded, TorchScript and ONNX (onnxruntime) outputs match eager within stated tolerances.

Tolerance (the project's rule, see fbnet_fast/export.py): against the float64 eager
model, an export's max-abs error must be at most ``ERROR_RATIO`` (4) x the float32
eager model's own error plus ``ABS_FLOOR`` (1e-6) x max|logit|. Folding BN moves one
multiply into the conv weights, so the rounding differs but stays of the same order.
"""

import json

import onnx
import pytest
import torch
from torch import nn

from conftest import make_tiny_space
from fbnet_fast.errors import ConfigError
from fbnet_fast.export import (ABS_FLOOR, ERROR_RATIO, ONNX_OPSET, _run_onnx, export_model, fold_batchnorm,
                               parse_formats)
from fbnet_fast.model import build_model
from fbnet_fast.space import Architecture

from test_model import _randomise_bn

# every block kind: grouped IR (shuffle), 1x1-conv skip, identity skip, k5 IR, residual IR
BLOCKS = ("k3_e1_g2", "skip", "skip", "k5_e6", "k3_e3")


@pytest.fixture(scope="module")
def model():
    space = make_tiny_space()
    torch.manual_seed(0)
    m = build_model(space, Architecture(BLOCKS, space.name, space.fingerprint))
    _randomise_bn(m, seed=1)
    return m.eval()


def test_fold_batchnorm_removes_every_bn_and_keeps_the_function(model):
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.double()(x.double())
        model.float()
        err_eager = (model(x).double() - ref).abs().max()
        err_fold = (folded(x).double() - ref).abs().max()
    assert err_fold <= ERROR_RATIO * err_eager + ABS_FLOOR * max(1.0, float(ref.abs().max()))


def test_torchscript_and_onnx_match_eager(tmp_path, model):
    rep = export_model(model, tmp_path, formats=["torchscript", "onnx"], input_shape=(3, 16, 16),
                       verify_batch=6, metadata={"note": "test"})
    assert rep["onnx_opset"] == ONNX_OPSET and rep["batchnorm_folded"]
    for fmt in ("torchscript", "onnx"):
        c = rep["verification"][fmt]
        assert c["ok"] and c["argmax_agreement"] == 1.0
        assert c["max_abs_err"] <= ERROR_RATIO * c["eager_fp32_err"] + ABS_FLOOR * 10  # logits are O(1) here
    assert json.loads((tmp_path / "export.json").read_text())["note"] == "test"

    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == ONNX_OPSET
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops

    # A batch size different from the one traced and exported (1): the batch is dynamic.
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
        ts = torch.jit.load(str(tmp_path / "model.torchscript.pt"))(x)
    onx = _run_onnx(tmp_path / "model.onnx", x)
    # float32 against float32: BN folding and onnxruntime's kernels reorder sums; logits O(1).
    torch.testing.assert_close(ts, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(onx, ref, rtol=1e-5, atol=1e-5)


def test_export_of_a_width_multiplied_cifar_model(tmp_path):
    # The shipped space at width 0.25: 22 layers deep, so rounding differences accumulate.
    from fbnet_fast.space import load_space

    space = load_space("fbnet-cifar", width_mult=0.25)
    blocks = ("k3_e1", "k3_e6", "skip", "k5_e1_g2", "k3_e3", "k5_e6", "k3_e1_g2", "skip", "k5_e3", "k3_e6",
              "k5_e1", "skip", "k3_e3", "k5_e6", "k3_e1", "k5_e3", "k5_e6", "skip", "k3_e6", "k5_e1_g2",
              "k3_e1", "k5_e6")
    torch.manual_seed(0)
    m = build_model(space, Architecture(blocks, space.name, space.fingerprint))
    _randomise_bn(m, seed=2)
    rep = export_model(m.eval(), tmp_path, input_shape=(3, 32, 32), verify_batch=4)
    assert all(rep["verification"][f]["ok"] for f in ("torchscript", "onnx"))


def test_parse_formats():
    assert parse_formats("onnx, torchscript,onnx") == ["onnx", "torchscript"]
    with pytest.raises(ConfigError, match="tflite"):
        parse_formats("onnx,tflite")
