"""Export a trained model for deployment: TorchScript, ONNX and ExecuTorch, fp32 and int8, BN folded.

Every conv + BN pair of an :class:`~fbnet_fast.model.FBNetModel` (stem, the three
pairs of an IR block, a shape-changing skip, the head's 1x1 conv) becomes one conv
with a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): ``W' = W * g / sqrt(v + eps)``,
``b' = (b - m) * g / sqrt(v + eps) + beta``. The exported graphs then hold convs,
ReLUs, the channel shuffle, the residual adds, pooling and one linear layer, the
ops mobile runtimes fuse and accelerate. The folded model computes the same function
as the eval-mode model up to float32 rounding.

Formats (:data:`EXPORT_FORMATS`; file names :data:`FILE_NAMES`), each lowered by the
runtime's own flow (:mod:`fbnet_fast.runtimes`), nothing hand-rolled:

* ``torchscript``: traced, dynamic batch.
* ``onnx``: :data:`ONNX_OPSET` (17), written by PyTorch's TorchScript-based exporter
  (``dynamo=False``: it needs no ``onnxscript`` and covers every op used here), with a
  dynamic batch dimension; input ``images [N, 3, H, W]`` (normalised like the
  training data, mean/std are recorded in ``export.json``), output ``logits [N, classes]``.
* ``pte``: an ExecuTorch program with the XNNPACK delegate, fp32. ExecuTorch plans its
  memory for one input shape, so the program takes exactly ``pte_batch`` images
  (:data:`PTE_BATCH`, 1: a phone classifies one camera frame at a time); the shape is
  recorded in ``export.json``.
* ``pte-int8``: the same program quantized by the PT2E flow with the ``XNNPACKQuantizer``
  (symmetric per-channel int8 weights, static int8 activations).
* ``onnx-int8``: the fp32 ONNX model quantized by onnxruntime's static QDQ flow (per-channel
  int8 weights, uint8 activations, min-max calibration); dynamic batch.

Int8 calibration observes ``calib`` images: :data:`CALIB_IMAGES` (128) images of the run's
*training* split, a seeded random pick (not class-ordered), without augmentation, normalised
as in training (:func:`run_images`). 128 is where the int8 logits stopped improving on the two
trained networks measured (README, "Export"): their relative RMS error against fp32 was 0.052 /
0.040 / 0.040 for 32 / 128 / 512 images (PT2E; ONNX Runtime 0.044 / 0.039 / 0.042) on a width-0.25
fbnet-cifar and 0.073 / 0.035 / 0.031 (PT2E) on a tiny net, while PT2E calibrates one fixed-size
batch per call, so its time grows with the count.

Checks, each run in the export's own runtime:

1. *Random batch* (fp32 formats, :func:`verify_exports`): a seeded random batch; the
   logits are compared with the eager, unfolded model in float64 as the reference.
   Tolerance, following the project's rule: an export's max-abs error against the
   float64 reference may be at most ``ERROR_RATIO x`` the float32 eager model's own error
   against it, plus a floor of ``ABS_FLOOR x max|logit|`` for the case where the eager
   error happens to be ~0. Folding changes the rounding order of every conv (one
   multiply moves into the weights), so the errors are of the same order: on three random
   width-0.25 fbnet-cifar architectures with random BN statistics the ratio was 0.7-1.8
   (TorchScript 0.7-1.2, onnxruntime 1.3-1.8). XNNPACK's fp32 kernels stay inside it too:
   on the trained width-0.25 fbnet-cifar of README "Export" the ``.pte`` was at most 1.0e-5
   from float32 eager over 2,000 held-out images, 1.4x (random batch) and 2.3x (held-out)
   eager's own error against float64.
2. *Held-out images* (every format, :func:`check_held_out`): the run's validation split.
   fp32 formats: the same rule against float64 on the first :data:`REF_IMAGES` of them, and the
   largest difference from the float32 eager model over all of them
   (``max_abs_diff_vs_eager_fp32``). int8 formats are judged by accuracy: the int8 model's
   held-out top-1 next to the eager fp32 model's on the same images, and the agreement of their
   top-1 predictions; the export fails when the drop exceeds ``max_int8_drop``
   (:data:`MAX_INT8_DROP`, 2 points: the largest drops measured were 0.4 points on 2,000
   held-out images and 1 point on 400, where one image is 0.25 points and int8 and fp32
   disagree on ~6 % of the images, so a smaller limit would fail good exports by chance).

:func:`verify_file` checks an existing ``.pte`` / ``.onnx`` / TorchScript file against a
model the same way and names what does not match (input shape, classes, outputs). An int8 file
must also keep its logits within :data:`INT8_MAX_LOGIT_ERR` (0.25) relative RMS of the model's:
int8 rounding gave 0.03-0.07, another training of the same architecture 0.80. A checkpoint a few
steps away from the model's can be as close as int8 (0.07 between the last two epochs of a
cosine schedule), so an int8 file is told from *another network*, not from a neighbouring
checkpoint; an fp32 file is held to the fp32 rule and is told from both.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import ConfigError, FBNetError
from .runs import atomic_write_text

__all__ = [
    "ExportError",
    "ONNX_OPSET",
    "EXPORT_FORMATS",
    "DEFAULT_FORMATS",
    "INT8_FORMATS",
    "FILE_NAMES",
    "ERROR_RATIO",
    "ABS_FLOOR",
    "PTE_BATCH",
    "CALIB_IMAGES",
    "MAX_INT8_DROP",
    "INT8_MAX_LOGIT_ERR",
    "REF_IMAGES",
    "Images",
    "Program",
    "fold_batchnorm",
    "export_torchscript",
    "export_onnx",
    "export_pte",
    "export_onnx_int8",
    "run_images",
    "verify_exports",
    "check_held_out",
    "verify_file",
    "export_model",
]

ONNX_OPSET = 17
EXPORT_FORMATS = ("torchscript", "onnx", "pte", "pte-int8", "onnx-int8")
DEFAULT_FORMATS = ("torchscript", "onnx")
INT8_FORMATS = ("pte-int8", "onnx-int8")
FILE_NAMES = {"torchscript": "{name}.torchscript.pt", "onnx": "{name}.onnx", "pte": "{name}.pte",
              "pte-int8": "{name}.int8.pte", "onnx-int8": "{name}.int8.onnx"}
ERROR_RATIO = 4.0
ABS_FLOOR = 1e-6
PTE_BATCH = 1
CALIB_IMAGES = 128
MAX_INT8_DROP = 0.02
INT8_MAX_LOGIT_ERR = 0.25
_ONNX_CALIB_BATCH = 32
# Held-out images the float64 reference of the fp32 rule is computed on (float64 convs are slow on
# CPU, ~30 ms an image for a width-0.25 fbnet-cifar on 2 cores); accuracy uses all of them.
REF_IMAGES = 128
_EVAL_BATCH = 256

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


def _pte_bytes(model: nn.Module, example: torch.Tensor, dtype: str, calib: Sequence[torch.Tensor] | None) -> bytes:
    from .runtimes import to_pte

    with native_stderr():
        return to_pte(_plain(model).eval(), example, dtype=dtype, calib=calib)


def _write_bytes(data: bytes, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def export_pte(model: nn.Module, example: torch.Tensor, path: str | Path, *, dtype: str = "fp32",
               calib: torch.Tensor | None = None) -> Path:
    """Write ``model`` (eval mode) as an ExecuTorch program (XNNPACK) for inputs of ``example``'s shape.

    ``dtype="int8"``: quantized by the PT2E flow, observing ``calib`` ``[n, C, H, W]`` in batches
    of the program's batch size (the last one filled up from the start of ``calib``).
    """
    batches = None
    if dtype == "int8":
        if calib is None or not len(calib):
            raise ConfigError("an int8 ExecuTorch program needs calibration images")
        batches = list(_fixed_batches(calib, example.shape[0]))
    return _write_bytes(_pte_bytes(model, example, dtype, batches), Path(path))


def export_onnx_int8(fp32_onnx: str | Path, calib: torch.Tensor, path: str | Path) -> Path:
    """Quantize the fp32 ONNX file ``fp32_onnx`` (input ``images``) by onnxruntime's static QDQ flow."""
    from .runtimes import onnx_int8

    if calib is None or not len(calib):
        raise ConfigError("an int8 ONNX model needs calibration images")
    batches = list(torch.split(calib, _ONNX_CALIB_BATCH))
    return _write_bytes(onnx_int8(Path(fp32_onnx).read_bytes(), batches, input_name="images"), Path(path))


def _fixed_batches(x: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """``x`` in batches of exactly ``batch`` rows; the last is filled up with rows from the start."""
    n = len(x)
    for i in range(0, n, batch):
        b = x[i:i + batch]
        if len(b) < batch:
            fill = x[:batch - len(b)] if n >= batch else b[-1:].expand(batch - len(b), *x.shape[1:])
            b = torch.cat([b, fill])
        yield b.contiguous()


@contextlib.contextmanager
def native_stderr() -> Iterator[Callable[[], str]]:
    """Keep what native libraries write straight to file descriptor 2 off the terminal.

    ExecuTorch's C++ runtime logs its CPU probing when its thread pool starts and the shape of
    an input it rejects; torchao logs the CUDA-only libraries it skips. None of it says anything
    about the result, and it would bury the one-line errors. Yields a function that returns the
    last line captured so far (error messages quote it).
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stderr without a descriptor
        fd = 2
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:

        def last_line() -> str:
            sys.stderr.flush()
            text = os.pread(tmp.fileno(), os.fstat(tmp.fileno()).st_size, 0).decode(errors="replace")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            return lines[-1] if lines else ""

        os.dup2(tmp.fileno(), fd)
        try:
            yield last_line
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)


def _require_executorch(what: str) -> None:
    """:func:`runtimes.require_executorch`, its import notices kept off the terminal."""
    from .runtimes import require_executorch

    with native_stderr():
        require_executorch(what)


# ---- images of the run's data set ---------------------------------------------------------------

@dataclass
class Images:
    """Normalised float32 images ``x`` ``[N, C, H, W]``, their labels and where they come from."""

    x: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.x)


def _pick(n: int, count: int | None, seed: int) -> torch.Tensor:
    if count is None or count >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def run_images(spec: str, *, image_size: int, num_classes: int, seed: int = 0, num_train: int | None = None,
               num_val: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               calib_images: int = CALIB_IMAGES, eval_images: int | None = None,
               pick_seed: int = 0) -> tuple[Images, Images]:
    """``(calibration, held-out)`` images of a run's data set (``data.build_datasets`` arguments).

    Calibration: ``calib_images`` images of the training split picked at random (``pick_seed``);
    held-out: the validation split, all of it or a seeded pick of ``eval_images``. Both are
    normalised by ``mean``/``std`` (the model file's, i.e. what the model was trained with; the
    training split's statistics when none are given), without augmentation.
    """
    from .data import build_datasets

    if calib_images < 1:
        raise ConfigError(f"--calib-images must be >= 1, got {calib_images}")
    if eval_images is not None and eval_images < 1:
        raise ConfigError(f"--eval-images must be >= 1, got {eval_images}")
    data = build_datasets(spec, image_size=image_size, seed=seed, num_train=num_train, num_val=num_val)
    if data.num_classes != num_classes:
        raise ConfigError(f"data {spec!r} has {data.num_classes} classes but the model has {num_classes}")
    mean = torch.tensor(mean if mean is not None else data.train.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std if std is not None else data.train.std, dtype=torch.float32).view(1, -1, 1, 1)

    def norm(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255.0 - mean) / std).contiguous()

    tr, va = data.train, data.val
    ci = _pick(len(tr.labels), calib_images, pick_seed)
    vi = _pick(len(va.labels), eval_images, pick_seed + 1)
    calib = Images(norm(tr.images[ci]), tr.labels[ci],
                   f"{len(ci)} training images (seeded pick {pick_seed}) of {data.description}")
    held = Images(norm(va.images[vi]), va.labels[vi],
                  f"{len(vi)} held-out (validation split) images of {data.description}")
    return calib, held


# ---- exported files, loaded in their runtimes ----------------------------------------------------

def program_kind(path: str | Path) -> str:
    """``"pte"``, ``"onnx"`` or ``"torchscript"`` from the file name."""
    name = Path(path).name.lower()
    if name.endswith(".pte"):
        return "pte"
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".pt") or name.endswith(".torchscript"):
        return "torchscript"
    raise ConfigError(f"{path}: cannot tell the format from the name; expected a .pte (ExecuTorch), .onnx "
                      f"(ONNX Runtime) or .pt (TorchScript) file")


class Program:
    """An exported file loaded in its own runtime; ``prog(x)`` runs ``x`` ``[n, C, H, W]`` -> logits.

    ``input_shape``: the file's declared input shape (``None`` where a dimension is dynamic or the
    format does not say). A program with a fixed batch ``B`` (ExecuTorch) runs ``n`` images as
    ``ceil(n / B)`` calls; the last batch is filled up and the extra rows dropped. ``int8`` is
    ``True``/``False`` where the file says (ONNX: QDQ nodes; TorchScript: fp32) and ``None`` for
    a ``.pte``, whose XNNPACK payload is opaque.
    """

    def __init__(self, path: str | Path, *, kind: str | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.kind = kind or program_kind(self.path)
        if not self.path.is_file():
            raise ConfigError(f"{self.path} does not exist")
        self.num_inputs = 1
        self.output_shape: tuple[int | None, ...] | None = None
        try:
            if self.kind == "pte":
                self._load_pte()
            elif self.kind == "onnx":
                self._load_onnx(threads)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._ts = torch.jit.load(str(self.path))
                self.input_shape, self.int8 = None, False
        except FBNetError:
            raise
        except Exception as e:
            raise ExportError(f"cannot load {self.path} as a {self.kind} file: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None

    def _load_pte(self) -> None:
        from .runtimes import load_pte

        _require_executorch(f"loading {self.path.name}")
        with native_stderr() as log:
            try:
                run = load_pte(self.path.read_bytes())
            except Exception as e:
                raise ExportError(f"cannot load {self.path} as an ExecuTorch program: {type(e).__name__}: {e}"
                                  + (f" ({log()})" if log() else "")) from None
        md = run.method.metadata
        self.num_inputs = md.num_inputs()
        self.input_shape = tuple(md.input_tensor_meta(0).sizes()) if self.num_inputs else ()
        self.output_shape = tuple(md.output_tensor_meta(0).sizes()) if md.num_outputs() else ()
        self.int8 = None
        self._pte = run

    def _load_onnx(self, threads: int | None) -> None:
        import onnx
        import onnxruntime as ort

        proto = onnx.load(str(self.path))
        self.int8 = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._sess = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        self.num_inputs = len(ins)
        dims = lambda shape: tuple(d if isinstance(d, int) else None for d in shape)  # noqa: E731
        self.input_shape = dims(ins[0].shape) if ins else ()
        self.output_shape = dims(outs[0].shape) if outs else ()
        self._in, self._out = ins[0].name if ins else "", outs[0].name if outs else ""

    @property
    def fixed_batch(self) -> int | None:
        return self.input_shape[0] if self.kind == "pte" and self.input_shape else None

    def call(self, x: torch.Tensor) -> torch.Tensor:
        """One call of the runtime on exactly ``x`` (no batching)."""
        if self.kind == "pte":
            return self._pte(x.contiguous())
        if self.kind == "onnx":
            return torch.from_numpy(self._sess.run([self._out], {self._in: x.contiguous().numpy()})[0])
        with torch.no_grad():
            return self._ts(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = self.fixed_batch
        if b is None:
            return torch.cat([self.call(c) for c in torch.split(x, _EVAL_BATCH)])
        out = [self.call(c) for c in _fixed_batches(x, b)]
        return torch.cat(out)[:len(x)]


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the ONNX file ``path`` in one onnxruntime CPU session on one thread."""
    return Program(path, kind="onnx", threads=1).call(x)


# ---- checks ------------------------------------------------------------------------------------

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


def _batched(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(c) for c in torch.split(x, _EVAL_BATCH)])


def _references(model: nn.Module, x: torch.Tensor,
                limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(float64 reference on the first ``limit`` images, float32 eager on all as float64, the
    tolerance of the project's rule)."""
    model = model.eval()
    eager = _batched(model, x).double()
    n = len(x) if limit is None else min(limit, len(x))
    ref = _batched(copy.deepcopy(model).double(), x[:n].double())
    eager_err = float((eager[:n] - ref).abs().max())
    return ref, eager, ERROR_RATIO * eager_err + ABS_FLOOR * max(1.0, float(ref.abs().max()))


def _fp32_check(fmt: str, y: torch.Tensor, ref: torch.Tensor, eager: torch.Tensor, tol: float) -> Check:
    n, y = len(ref), y.double()
    return Check(fmt, float((y[:n] - ref).abs().max()), float((eager[:n] - ref).abs().max()), tol,
                 float((y[:n].argmax(1) == ref.argmax(1)).double().mean()))


def verify_exports(model: nn.Module, files: dict[str, Path], x: torch.Tensor) -> dict[str, Check]:
    """Compare every exported fp32 file's logits on ``x`` ``[N, C, H, W]`` with the eager model.

    See the module docstring for the tolerance. Returns one :class:`Check` per format. A
    fixed-batch program (``.pte``) runs ``x`` in its own batch size.
    """
    ref, eager, tol = _references(model, x)
    out: dict[str, Check] = {}
    for fmt, path in files.items():
        if fmt in INT8_FORMATS:
            raise ConfigError(f"{fmt} is checked by accuracy on held-out images (check_held_out), not by logits")
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {fmt!r}")
        out[fmt] = _fp32_check(fmt, _run(Program(path), x), ref, eager, tol)
    return out


def _run(prog: Program, x: torch.Tensor) -> torch.Tensor:
    if prog.kind != "pte":
        return prog(x)
    with native_stderr() as log:
        try:
            return prog(x)
        except Exception as e:
            raise ExportError(f"{prog.path} failed to run: {type(e).__name__}: {e}"
                              + (f" ({log()})" if log() else "")) from None


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def _logit_err(y: torch.Tensor, eager: torch.Tensor) -> float:
    """RMS of ``y - eager`` relative to the RMS of ``eager``'s logits around their per-image mean."""
    y, eager = y.double(), eager.double()
    scale = float((eager - eager.mean(1, keepdim=True)).pow(2).mean().sqrt())
    return float((y - eager).pow(2).mean().sqrt()) / max(scale, 1e-12)


def _int8_entry(y: torch.Tensor, eager: torch.Tensor, labels: torch.Tensor, max_drop: float, *,
                logit_limit: float | None = None) -> dict[str, Any]:
    """The int8 rule: held-out top-1 drop <= ``max_drop``; with ``logit_limit`` (:func:`verify_file`)
    also the logits' relative RMS error, which tells int8 rounding from another network."""
    acc, eager_acc = _accuracy(y, labels), _accuracy(eager, labels)
    err = _logit_err(y, eager)
    ok = eager_acc - acc <= max_drop and (logit_limit is None or err <= logit_limit)
    return {"dtype": "int8", "images": len(labels), "accuracy": acc, "eager_fp32_accuracy": eager_acc,
            "accuracy_drop": eager_acc - acc, "max_accuracy_drop": max_drop,
            "argmax_agreement": float((y.argmax(1) == eager.argmax(1)).double().mean()),
            "logit_rel_rms_err": err, **({"max_logit_rel_rms_err": logit_limit} if logit_limit is not None else {}),
            "ok": ok}


def _fp32_entry(c: Check, y: torch.Tensor, eager: torch.Tensor, labels: torch.Tensor, n_ref: int) -> dict[str, Any]:
    return {"dtype": "fp32", "images": len(labels), "reference_images": n_ref, **c.to_dict(),
            "max_abs_diff_vs_eager_fp32": float((y.double() - eager).abs().max()),
            "argmax_agreement": float((y.argmax(1) == eager.argmax(1)).double().mean()),
            "accuracy": _accuracy(y, labels), "eager_fp32_accuracy": _accuracy(eager, labels)}


def check_held_out(model: nn.Module, files: dict[str, Path], held: Images, *,
                   max_int8_drop: float = MAX_INT8_DROP) -> dict[str, dict[str, Any]]:
    """Run every exported file on the held-out images ``held`` and judge it (module docstring, 2.).

    Returns ``{format: entry}``; every entry has ``ok``, ``accuracy`` and ``eager_fp32_accuracy``.
    """
    ref, eager, tol = _references(model, held.x, REF_IMAGES)
    out: dict[str, dict[str, Any]] = {}
    for fmt, path in files.items():
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {fmt!r}")
        y = _run(Program(path), held.x)
        if fmt in INT8_FORMATS:
            out[fmt] = _int8_entry(y, eager, held.labels, max_int8_drop)
        else:
            out[fmt] = _fp32_entry(_fp32_check(fmt, y, ref, eager, tol), y, eager, held.labels, len(ref))
    return out


def _shape(s: Sequence[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in s) + "]"


def verify_file(model: nn.Module, path: str | Path, held: Images, *, run: str = "the run",
                max_int8_drop: float = MAX_INT8_DROP) -> dict[str, Any]:
    """Check that ``path`` (``.pte``, ``.onnx`` or TorchScript ``.pt``) is an export of ``model``.

    The file runs in its runtime on the held-out images ``held``; it must take ``model``'s input
    shape, give its number of classes, and pass the fp32 rule or, for an int8 file, the int8
    rule of :func:`check_held_out` (a ``.pte`` does not say its dtype: the fp32 rule is tried
    first). Raises :class:`ExportError` ``"FILE is not an export of RUN's model: ..."`` naming
    the mismatch; returns the check's entry (with ``format`` and ``path``) otherwise.
    """
    path = Path(path)
    prog = Program(path)
    want_in = tuple(held.x.shape[1:])
    with torch.no_grad():
        classes = model.eval()(held.x[:1]).shape[-1]
    head = f"{path} is not an export of {run}'s model"

    def fail(why: str) -> ExportError:
        return ExportError(f"{head}: {why}")

    if prog.num_inputs != 1:
        raise fail(f"it takes {prog.num_inputs} inputs, the model one image batch")
    if prog.input_shape is not None:
        got = prog.input_shape
        if len(got) != 4 or any(g is not None and g != w for g, w in zip(got[1:], want_in)):
            raise fail(f"its input shape is {_shape(got)}, the model takes {_shape((None, *want_in))}")
    if prog.output_shape is not None and len(prog.output_shape) >= 2 and prog.output_shape[-1] is not None \
            and prog.output_shape[-1] != classes:
        raise fail(f"it outputs {prog.output_shape[-1]} classes, the model {classes} "
                   f"(output shape {_shape(prog.output_shape)})")
    try:
        y = _run(prog, held.x)
    except ExportError as e:
        raise fail(str(e)) from None
    except Exception as e:  # TorchScript and ONNX Runtime reject a wrong input shape when run
        raise fail(f"it does not run on the model's input {_shape((None, *want_in))}: "
                   f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    ref, eager, tol = _references(model, held.x, REF_IMAGES)
    if y.dim() != 2 or y.shape != eager.shape:
        raise fail(f"its output for {len(held)} images has shape {list(y.shape)}, the model's {list(eager.shape)}")
    fp32 = _fp32_entry(_fp32_check(prog.kind, y, ref, eager, tol), y, eager, held.labels, len(ref))
    int8 = _int8_entry(y, eager, held.labels, max_int8_drop, logit_limit=INT8_MAX_LOGIT_ERR)
    if prog.int8 is False or (prog.int8 is None and fp32["ok"]):
        entry = fp32
        if not fp32["ok"]:
            raise fail(f"its logits differ from the model's by up to {fp32['max_abs_err']:.3g} on {len(ref)} "
                       f"held-out images (fp32 tolerance {tol:.3g}; top-1 agreement {fp32['argmax_agreement']:.3f} "
                       f"on {len(held)})")
    else:
        entry = int8
        if not int8["ok"]:
            what = "" if prog.int8 else "neither the fp32 rule (max |diff| " \
                f"{fp32['max_abs_err']:.3g} > {tol:.3g}) nor "
            raise fail(f"it passes {what}the int8 rule on {len(held)} held-out images: logits off by "
                       f"{int8['logit_rel_rms_err']:.3f} relative RMS (limit {INT8_MAX_LOGIT_ERR}), top-1 "
                       f"{int8['accuracy']:.4f} vs the model's {int8['eager_fp32_accuracy']:.4f} (drop limit "
                       f"{max_int8_drop}), top-1 agreement {int8['argmax_agreement']:.3f}")
    return {"format": prog.kind, "path": str(path),
            "input_shape": None if prog.input_shape is None else [d for d in prog.input_shape], **entry}


# ---- latency ------------------------------------------------------------------------------------

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
    """Median latency in ms of one call on ``x`` for eager and every export (1 thread).

    A fixed-batch program whose batch is not ``len(x)`` is left out.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = {}
        with torch.no_grad():
            res["eager"] = _median_ms(model.eval(), x, runs)
            for fmt, path in files.items():
                if fmt.startswith("pte"):
                    from .runtimes import set_executorch_threads

                    with native_stderr():  # before the program loads: it binds to the pool it finds
                        set_executorch_threads(1)
                prog = Program(path, threads=1)
                if prog.kind == "pte":
                    if prog.fixed_batch != len(x):
                        continue
                    with native_stderr():
                        res[fmt] = _median_ms(prog.call, x, runs)
                else:
                    res[fmt] = _median_ms(prog.call, x, runs)
        return res
    finally:
        torch.set_num_threads(threads)


# ---- the export --------------------------------------------------------------------------------

def parse_formats(spec: str | Sequence[str]) -> list[str]:
    """``"onnx,torchscript"`` -> ``["onnx", "torchscript"]``; raises ConfigError for unknown names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    fmts = []
    for f in (i.strip().lower() for i in items):
        if not f:
            continue
        if f not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {f!r}; expected a comma-separated subset of "
                              f"{', '.join(EXPORT_FORMATS)}")
        if f not in fmts:
            fmts.append(f)
    if not fmts:
        raise ConfigError(f"no export format given; expected a comma-separated subset of {', '.join(EXPORT_FORMATS)}")
    return fmts


_INT8_FLOWS = {
    "pte-int8": "PT2E: XNNPACKQuantizer (symmetric, per-channel int8 weights, static int8 activations, "
                "histogram observer), convert_pt2e, lowered with the XNNPACK partitioner",
    "onnx-int8": "onnxruntime quant_pre_process + quantize_static, QDQ, per-channel int8 weights, uint8 "
                 "activations, min-max calibration",
}


def export_model(model: nn.Module, out_dir: str | Path, *, formats: Sequence[str] = DEFAULT_FORMATS,
                 input_shape: tuple[int, int, int], opset: int = ONNX_OPSET, name: str = "model",
                 verify_batch: int = 8, bench_runs: int = 0, seed: int = 0,
                 metadata: dict[str, Any] | None = None, calib: Images | None = None,
                 held_out: Images | None = None, pte_batch: int = PTE_BATCH,
                 max_int8_drop: float = MAX_INT8_DROP) -> dict[str, Any]:
    """Fold BN, write the requested formats to ``out_dir``, check them, write ``export.json``.

    ``input_shape`` is ``(C, H, W)``; ``pte_batch`` the fixed batch of ``.pte`` programs.
    int8 formats need ``calib`` (training images) and ``held_out``; with ``held_out`` every
    format is also checked on those images (module docstring). Raises :class:`ExportError`
    when a check fails (the files and ``export.json`` are kept for inspection). Returns the
    report written to ``export.json``.
    """
    formats = parse_formats(formats)
    int8 = [f for f in formats if f in INT8_FORMATS]
    if int8 and (calib is None or held_out is None):
        raise ConfigError(f"{', '.join(int8)} needs the run's data set: training images to calibrate on and "
                          f"held-out images to measure the int8 accuracy on")
    if not isinstance(pte_batch, int) or pte_batch < 1:
        raise ConfigError(f"--pte-batch must be an integer >= 1, got {pte_batch!r}")
    if not (isinstance(max_int8_drop, (int, float)) and 0 <= max_int8_drop <= 1):
        raise ConfigError(f"--max-int8-drop must be a fraction between 0 and 1, got {max_int8_drop!r}")
    if any(f.startswith("pte") for f in formats):
        _require_executorch(f"--format {','.join(f for f in formats if f.startswith('pte'))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    folded = fold_batchnorm(model)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((max(verify_batch, 1), *input_shape), generator=gen)
    example = x[:1]
    pte_example = torch.randn((pte_batch, *input_shape), generator=gen)
    files: dict[str, Path] = {}
    for fmt in formats:
        path = out_dir / FILE_NAMES[fmt].format(name=name)
        try:
            if fmt == "torchscript":
                files[fmt] = export_torchscript(folded, example, path)
            elif fmt == "onnx":
                files[fmt] = export_onnx(folded, example, path, opset=opset)
            elif fmt in ("pte", "pte-int8"):
                files[fmt] = export_pte(folded, pte_example, path, dtype="int8" if fmt == "pte-int8" else "fp32",
                                        calib=calib.x if calib is not None else None)
            else:  # onnx-int8: quantize the fp32 ONNX model
                if "onnx" in files:
                    files[fmt] = export_onnx_int8(files["onnx"], calib.x, path)
                else:
                    with tempfile.TemporaryDirectory(prefix="fbnet-export-") as d:
                        src = export_onnx(folded, example, Path(d) / "fp32.onnx", opset=opset)
                        files[fmt] = export_onnx_int8(src, calib.x, path)
        except FBNetError:
            raise
        except Exception as e:
            raise ExportError(f"{fmt} export failed: {type(e).__name__}: {e}") from e
    fp32_files = {f: p for f, p in files.items() if f not in INT8_FORMATS}
    checks = verify_exports(model, fp32_files, x) if fp32_files else {}
    held = check_held_out(model, files, held_out, max_int8_drop=max_int8_drop) if held_out is not None else {}
    shapes = {f: (["batch", *input_shape] if not f.startswith("pte") else [pte_batch, *input_shape])
              for f in files}
    verification: dict[str, Any] = {
        "batch": verify_batch, "seed": seed, "reference": "eager unfolded model in float64",
        "rule": f"max_abs_err <= {ERROR_RATIO} x eager_fp32_err + {ABS_FLOOR} x max(1, max|logit|)",
        "int8_rule": f"held-out top-1 of eager fp32 minus int8's <= max_accuracy_drop ({max_int8_drop}); "
                     f"logit_rel_rms_err = RMS(int8 - fp32 logits) / RMS(fp32 logits around their per-image mean) "
                     f"is reported",
        "held_out": ({"source": held_out.source, "images": len(held_out)} if held_out is not None
                     else "not checked: the run's data set is unknown (pass --data)"),
    }
    for fmt in formats:
        entry: dict[str, Any] = checks[fmt].to_dict() if fmt in checks else {"dtype": "int8"}
        if fmt in held:
            entry["held_out"] = held[fmt]
        entry["ok"] = (checks[fmt].ok if fmt in checks else True) and held.get(fmt, {}).get("ok", True)
        verification[fmt] = entry
    report: dict[str, Any] = {
        "files": {f: p.name for f, p in files.items()},
        "onnx_opset": opset if ("onnx" in files or "onnx-int8" in files) else None,
        "input": {"name": "images", "shape": ["batch", *input_shape], "dtype": "float32"},
        "input_shapes": shapes,
        "output": {"name": "logits"},
        "batchnorm_folded": True,
        "verification": verification,
        "torch": torch.__version__,
    }
    if any(f.startswith("pte") for f in files):
        from .runtimes import executorch_version

        report["pte"] = {"batch": pte_batch, "input_shape": [pte_batch, *input_shape], "delegate": "XNNPACK",
                         "executorch": executorch_version(),
                         "note": f"ExecuTorch programs have a fixed input shape: call them with exactly "
                                 f"{pte_batch} image{'s' if pte_batch > 1 else ''} (export with --pte-batch B "
                                 f"for another batch size)"}
    if int8:
        report["int8"] = {"calibration": {"split": "train", "images": len(calib), "source": calib.source,
                                          "augmentation": None},
                          "max_accuracy_drop": max_int8_drop, "flows": {f: _INT8_FLOWS[f] for f in int8}}
    report.update(metadata or {})
    if bench_runs > 0:
        report["latency_ms_batch1_1thread"] = benchmark(model, files, example, bench_runs)
    atomic_write_text(out_dir / "export.json", json.dumps(report, indent=1) + "\n")
    bad = [f"{f}: max abs error {c.max_abs_err:.3g} > tolerance {c.tol:.3g}" for f, c in checks.items() if not c.ok]
    bad += [f"{f}: on held-out images max abs error {e['max_abs_err']:.3g} > tolerance {e['tolerance']:.3g}"
            for f, e in held.items() if f not in INT8_FORMATS and not e["ok"]]
    if bad:
        raise ExportError("exported model does not match PyTorch: " + "; ".join(bad) + f" (files kept in {out_dir})")
    bad8 = [f"{f}: held-out top-1 {e['accuracy']:.4f} vs fp32 {e['eager_fp32_accuracy']:.4f} (drop "
            f"{e['accuracy_drop']:.4f} > --max-int8-drop {max_int8_drop})"
            for f, e in held.items() if f in INT8_FORMATS and not e["ok"]]
    if bad8:
        raise ExportError("int8 export loses too much accuracy on " + f"{len(held_out)} held-out images: "
                          + "; ".join(bad8) + f" (files kept in {out_dir}; calibrate on more training images "
                          "with --calib-images, or allow more with --max-int8-drop)")
    return report
