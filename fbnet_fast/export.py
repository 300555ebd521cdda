"""Export a trained model for deployment: TorchScript and ONNX, BN folded into the convs.

Every conv + BN pair of an :class:`~fbnet_fast.model.FBNetModel` (stem, the three
pairs of an IR block, a shape-changing skip, the head's 1x1 conv) becomes one conv
with a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): ``W' = W * g / sqrt(v + eps)``,
``b' = (b - m) * g / sqrt(v + eps) + beta``. The exported graphs then hold convs,
ReLUs, the channel shuffle, the residual adds, pooling and one linear layer, the
ops mobile runtimes fuse and accelerate. The folded model computes the same function
as the eval-mode model up to float32 rounding.

ONNX: :data:`ONNX_OPSET` (17), written by PyTorch's TorchScript-based exporter
(``dynamo=False``: it needs no ``onnxscript`` and covers every op used here), with a
dynamic batch dimension; input ``images [N, 3, H, W]`` (normalised like the
training data, mean/std are recorded in ``export.json``), output ``logits [N, classes]``.

Checks (:func:`verify_exports`): each exported file is loaded back (TorchScript with
``torch.jit.load``, ONNX with ``onnx.checker`` and an onnxruntime CPU session) and run on
a seeded random batch; its logits are compared with the eager, unfolded model in
float64 as the reference. Tolerance, following the project's rule: an export's
max-abs error against the float64 reference may be at most
``ERROR_RATIO x`` the float32 eager model's own error against it, plus a floor of
``ABS_FLOOR x max|logit|`` for the case where the eager error happens to be ~0.
Folding changes the rounding order of every conv (one multiply moves into the
weights), so the errors are of the same order: on three random width-0.25 fbnet-cifar
architectures with random BN statistics the ratio was 0.7-1.8 (TorchScript 0.7-1.2,
onnxruntime 1.3-1.8).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import ConfigError, FBNetError
from .runs import atomic_write_text

__all__ = [
    "ExportError",
    "ONNX_OPSET",
    "EXPORT_FORMATS",
    "ERROR_RATIO",
    "ABS_FLOOR",
    "fold_batchnorm",
    "export_torchscript",
    "export_onnx",
    "verify_exports",
    "export_model",
]

ONNX_OPSET = 17
EXPORT_FORMATS = ("torchscript", "onnx")
ERROR_RATIO = 4.0
ABS_FLOOR = 1e-6

# (conv, bn) attribute pairs of the blocks in fbnet_fast.blocks.
_CONV_BN_PAIRS = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"), ("conv", "bn"))


class ExportError(FBNetError, RuntimeError):
    """An export failed or its output does not match the PyTorch model."""


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every known conv + BN pair folded into one conv.

    The BN module is replaced by ``nn.Identity`` (same attribute name, so the module
    tree keeps its shape). Raises :class:`ExportError` naming any BatchNorm left over.
    """
    folded = copy.deepcopy(model).eval()
    for name, mod in folded.named_modules():
        for conv_name, bn_name in _CONV_BN_PAIRS:
            conv, bn = getattr(mod, conv_name, None), getattr(mod, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(mod, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(mod, bn_name, nn.Identity())
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ExportError(f"BatchNorm layers not folded (no conv before them): {left}")
    return folded


def _plain(model: nn.Module) -> nn.Module:
    # FBNetModel keeps its space and architecture as Python attributes; the exported
    # module carries only the module tree.
    m = copy.copy(model)
    m.__dict__ = {k: v for k, v in model.__dict__.items() if k not in ("space", "arch")}
    return m


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace ``model`` (eval mode) on ``example`` ``[N, C, H, W]`` and save it to ``path``.

    Tracing, not scripting: the blocks branch on Python attributes fixed at build time
    (``SkipBlock.identity``, ``IRBlock.residual``), which a trace resolves once, and the
    batch size stays dynamic (the channel shuffle's reshape is traced through
    ``x.shape``); the tests run the file at another batch size than the trace's.
    """
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit announces its deprecation (in favour of torch.export) on every call;
        # TorchScript files are still what many mobile runtimes load.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(_plain(model).eval(), example, check_trace=False)
    tmp = path.with_name(f".{path.name}.tmp")
    traced.save(str(tmp))
    tmp.replace(path)
    return path


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` (eval mode) as ONNX ``opset`` with input ``images`` (dynamic batch), output ``logits``."""
    import onnx

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(_plain(model).eval(), (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    tmp.replace(path)
    return path


@dataclass
class Check:
    """One export compared with the float64 eager reference on the same batch."""

    fmt: str
    max_abs_err: float
    eager_err: float  # float32 eager (unfolded) model's max-abs error against float64
    tol: float
    argmax_agree: float

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tol

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_err": self.max_abs_err, "eager_fp32_err": self.eager_err, "tolerance": self.tol,
                "argmax_agreement": self.argmax_agree, "ok": self.ok}


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(["logits"], {"images": x.numpy()})[0])


def verify_exports(model: nn.Module, files: dict[str, Path], x: torch.Tensor) -> dict[str, Check]:
    """Compare every exported file's logits on ``x`` ``[N, C, H, W]`` with the eager model.

    See the module docstring for the tolerance. Returns one :class:`Check` per format.
    """
    model = model.eval()
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        eager = model(x).double()
    eager_err = float((eager - ref).abs().max())
    tol = ERROR_RATIO * eager_err + ABS_FLOOR * max(1.0, float(ref.abs().max()))
    out: dict[str, Check] = {}
    for fmt, path in files.items():
        if fmt == "torchscript":
            with torch.no_grad():
                y = _load_torchscript(path)(x)
        elif fmt == "onnx":
            y = _run_onnx(path, x)
        else:
            raise ConfigError(f"unknown export format {fmt!r}")
        y = y.double()
        out[fmt] = Check(fmt, float((y - ref).abs().max()), eager_err, tol,
                         float((y.argmax(1) == ref.argmax(1)).double().mean()))
    return out


def _median_ms(fn, x: torch.Tensor, runs: int) -> float:
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def benchmark(model: nn.Module, files: dict[str, Path], x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median latency in ms of one call on ``x`` for eager, folded eager and every export (1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = {}
        with torch.no_grad():
            res["eager"] = _median_ms(model.eval(), x, runs)
            for fmt, path in files.items():
                if fmt == "torchscript":
                    res[fmt] = _median_ms(_load_torchscript(path), x, runs)
                elif fmt == "onnx":
                    import onnxruntime as ort

                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = 1
                    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                    xn = x.numpy()
                    res[fmt] = _median_ms(lambda _: sess.run(["logits"], {"images": xn}), x, runs)
        return res
    finally:
        torch.set_num_threads(threads)


def parse_formats(spec: str | Sequence[str]) -> list[str]:
    """``"onnx,torchscript"`` -> ``["onnx", "torchscript"]``; raises ConfigError for unknown names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    fmts = []
    for f in (i.strip().lower() for i in items):
        if not f:
            continue
        if f not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {f!r}; expected a comma-separated subset of {EXPORT_FORMATS}")
        if f not in fmts:
            fmts.append(f)
    if not fmts:
        raise ConfigError(f"no export format given; expected a comma-separated subset of {EXPORT_FORMATS}")
    return fmts


def export_model(model: nn.Module, out_dir: str | Path, *, formats: Sequence[str] = EXPORT_FORMATS,
                 input_shape: tuple[int, int, int], opset: int = ONNX_OPSET, name: str = "model",
                 verify_batch: int = 8, bench_runs: int = 0, seed: int = 0,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fold BN, write the requested formats to ``out_dir``, check them, write ``export.json``.

    ``input_shape`` is ``(C, H, W)``. Raises :class:`ExportError` when a check fails
    (the files are kept for inspection). Returns the report written to ``export.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    folded = fold_batchnorm(model)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((verify_batch, *input_shape), generator=gen)
    example = x[:1]
    files: dict[str, Path] = {}
    for fmt in formats:
        try:
            if fmt == "torchscript":
                files[fmt] = export_torchscript(folded, example, out_dir / f"{name}.torchscript.pt")
            elif fmt == "onnx":
                files[fmt] = export_onnx(folded, example, out_dir / f"{name}.onnx", opset=opset)
            else:
                raise ConfigError(f"unknown export format {fmt!r}")
        except FBNetError:
            raise
        except Exception as e:
            raise ExportError(f"{fmt} export failed: {type(e).__name__}: {e}") from e
    checks = verify_exports(model, files, x)
    report: dict[str, Any] = {
        "files": {f: p.name for f, p in files.items()},
        "onnx_opset": opset if "onnx" in files else None,
        "input": {"name": "images", "shape": ["batch", *input_shape], "dtype": "float32"},
        "output": {"name": "logits"},
        "batchnorm_folded": True,
        "verification": {"batch": verify_batch, "seed": seed, "reference": "eager unfolded model in float64",
                         "rule": f"max_abs_err <= {ERROR_RATIO} x eager_fp32_err + {ABS_FLOOR} x max(1, max|logit|)",
                         **{f: c.to_dict() for f, c in checks.items()}},
        "torch": torch.__version__,
        **(metadata or {}),
    }
    if bench_runs > 0:
        report["latency_ms_batch1_1thread"] = benchmark(model, files, example, bench_runs)
    atomic_write_text(out_dir / "export.json", json.dumps(report, indent=1) + "\n")
    bad = [f"{f}: max abs error {c.max_abs_err:.3g} > tolerance {c.tol:.3g}" for f, c in checks.items() if not c.ok]
    if bad:
        raise ExportError("exported model does not match PyTorch: " + "; ".join(bad) + f" (files kept in {out_dir})")
    return report
