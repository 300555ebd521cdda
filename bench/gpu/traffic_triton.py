"""Memory-traffic model of one mixed op on a GPU, pass by pass: the Triton path vs eager.

Companion of ``bench/cpu/traffic_model.py`` (totals per case): this one lists every kernel
pass of :class:`~fbnet_fast.ops.mixed_op_fused.MixedOpFunction` as the Triton
launchers run it, and counts kernel launches, which bound the small layers on a GPU.

For each benchmark layer (the cases of ``bench/cpu/bench_mixed_op.py``: four fbnet-cifar
layers at batch 32, three fbnet (224) layers at batch 8), every candidate of the
space active (soft Gumbel weights, the worst case), fp32, training mode, it lists the
kernel passes each implementation makes and the bytes each pass reads and writes,
then the time those bytes take at an H100's ~3 TB/s and the number of kernel launches.

Model, stated so it can be argued with:

* Every kernel reads its inputs and writes its outputs once from HBM (halo re-reads of
  the depthwise conv and GEMM operand re-reads hit L2); no reuse *between* kernels.
  Real traffic is lower where a whole intermediate fits the 50 MB L2 (the cifar
  layers' largest tensors are ~19 MB), so the figures are an upper bound on HBM bytes
  and ``bytes / 3 TB/s`` a bandwidth floor, not a prediction.
* Weights and ``[C]`` vectors are ignored (< 1% of the bytes in every case).
* Eager: cuDNN conv and BatchNorm, BN training forward = a statistics pass plus a
  normalise pass (reads its input twice), BN backward = a reduction pass plus an
  elementwise pass (reads grad and input twice); ReLU out of place as in ``IRBlock``;
  the Gumbel weighting ``w * y`` and the sum ``out + y`` are separate kernels, and so
  is autograd's accumulation of x's gradient over candidates.
* Fused: the passes of :class:`fbnet_fast.ops.mixed_op_fused.MixedOpFunction` with
  the Triton launchers (a two-stage reduction counts as one pass: its partials are
  tiny), cuBLAS GEMMs for the 1x1 convs; backward recomputes z1, z2, h2 and z3.

Run: ``python bench/gpu/traffic_triton.py`` (prints the Markdown table quoted in
BENCHMARKS.md; ``--detail CASE`` lists every pass of one case).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from fbnet_fast.space import load_space, parse_candidate

F32 = 4
HBM_BYTES_PER_S = 3.0e12  # H100 SXM: 3.35 TB/s peak, ~3 TB/s reached by streaming kernels
LAUNCH_S = 4e-6  # per kernel launch from eager PyTorch (host side), when launches cannot overlap

# (case id, space, layer index, batch): the same cases as bench/cpu/bench_mixed_op.py.
CASES = [
    ("cifar-L02-24x32-s1", "fbnet-cifar", 2, 32),
    ("cifar-L05-24to32x32-s2", "fbnet-cifar", 5, 32),
    ("cifar-L10-64x8-s1", "fbnet-cifar", 10, 32),
    ("cifar-L18-184x4-s1", "fbnet-cifar", 18, 32),
    ("fbnet224-L01-16to24x112-s2", "fbnet", 1, 8),
    ("fbnet224-L06-32x28-s1", "fbnet", 6, 8),
    ("fbnet224-L14-112x14-s1", "fbnet", 14, 8),
]


@dataclass
class Ledger:
    """Kernel passes with the elements each reads and writes (fp32)."""

    passes: list[tuple[str, str, int, int]] = field(default_factory=list)  # (phase, name, read, write)

    def add(self, phase: str, name: str, read: int, write: int) -> None:
        self.passes.append((phase, name, read, write))

    def bytes(self, phase: str | None = None) -> int:
        return F32 * sum(r + w for p, _, r, w in self.passes if phase is None or p == phase)

    def launches(self, phase: str | None = None) -> int:
        return sum(1 for p, *_ in self.passes if phase is None or p == phase)


@dataclass(frozen=True)
class Layer:
    m: int  # input rows N*H*W
    mo: int  # output rows N*Ho*Wo
    c_in: int
    c_out: int
    stride: int
    candidates: tuple  # parsed Candidate objects

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out


def layer_of(space_name: str, index: int, batch: int) -> Layer:
    space = load_space(space_name)
    spec = space.layers[index]
    return Layer(batch * spec.in_size ** 2, batch * spec.out_size ** 2, spec.c_in, spec.c_out, spec.stride,
                 tuple(parse_candidate(c) for c in space.candidates))


# ------------------------------------------------------------------------------ fused
def fused(layer: Layer) -> Ledger:
    led = Ledger()
    m, mo, ci, co = layer.m, layer.mo, layer.c_in, layer.c_out
    led.add("fwd", "out = zeros", 0, mo * co)
    residual_any = False
    for c in layer.candidates:
        if c.kind == "skip":
            if layer.residual:
                residual_any = True
                continue
            led.add("fwd", "skip: strided x copy" if layer.stride > 1 else "skip: -", mo * ci, mo * ci)
            led.add("fwd", "skip: GEMM", mo * ci, mo * co)
            led.add("fwd", "skip: bn_stats", mo * co, 0)
            led.add("fwd", "skip: affine_act_accumulate_", 2 * mo * co, mo * co)
            led.add("bwd", "skip: strided x copy", mo * ci, mo * ci)
            led.add("bwd", "skip: GEMM recompute z", mo * ci, mo * co)
            led.add("bwd", "skip: act_grad_sums", 2 * mo * co, 0)
            led.add("bwd", "skip: act_grad_apply", 2 * mo * co, mo * co)
            led.add("bwd", "skip: GEMM grad xs", mo * co, mo * ci)
            led.add("bwd", "skip: GEMM grad W", mo * co + mo * ci, 0)
            led.add("bwd", "skip: gx += grad xs", 2 * mo * ci, mo * ci)
            continue
        cm = c.mid_channels(ci)
        residual_any |= layer.residual
        # forward
        led.add("fwd", "GEMM z1 = x W1", m * ci, m * cm)
        led.add("fwd", "bn_stats z1", m * cm, 0)
        led.add("fwd", "dwconv_bn_forward (+BN2 stats)", m * cm, mo * cm)
        led.add("fwd", "affine_act h2 (in place)", mo * cm, mo * cm)
        led.add("fwd", "GEMM z3 = h2 W3", mo * cm, mo * co)
        led.add("fwd", "bn_stats z3", mo * co, 0)
        led.add("fwd", "affine_act_accumulate_ out", 2 * mo * co, mo * co)
        # backward: recompute, then one candidate's gradients
        led.add("bwd", "GEMM recompute z1", m * ci, m * cm)
        led.add("bwd", "dwconv_bn_forward recompute z2", m * cm, mo * cm)
        led.add("bwd", "affine_act recompute h2", mo * cm, mo * cm)
        led.add("bwd", "GEMM recompute z3", mo * cm, mo * co)
        led.add("bwd", "act_grad_sums bn3", 2 * mo * co, 0)
        led.add("bwd", "act_grad_apply bn3", 2 * mo * co, mo * co)
        led.add("bwd", "GEMM grad W3", mo * co + mo * cm, 0)
        led.add("bwd", "GEMM grad h2", mo * co, mo * cm)
        led.add("bwd", "act_grad_sums bn2", 2 * mo * cm, 0)
        led.add("bwd", "act_grad_apply bn2", 2 * mo * cm, mo * cm)
        led.add("bwd", "dwconv_bn_backward (+BN1 sums)", mo * cm + m * cm, m * cm)
        led.add("bwd", "act_grad_apply bn1", 2 * m * cm, m * cm)
        led.add("bwd", "GEMM grad W1", m * cm + m * ci, 0)
        led.add("bwd", "GEMM gx += gz1 W1", m * cm + m * ci, m * ci)
    led.add("bwd", "gx = zeros", 0, m * ci)
    if residual_any:
        led.add("fwd", "out += (sum w) x", m * ci + mo * co, mo * co)
        led.add("bwd", "x . grad (Gumbel weight grads)", m * ci + mo * co, 0)
        led.add("bwd", "gx += (sum w) grad", m * ci + mo * co, m * ci)
    return led


# ------------------------------------------------------------------------------ eager
def _bn_eager(led: Ledger, tag: str, rows: int, ch: int) -> None:
    led.add("fwd", f"{tag} BN (stats + normalise)", 2 * rows * ch, rows * ch)
    led.add("bwd", f"{tag} BN backward (reduce + apply)", 4 * rows * ch, rows * ch)


def _relu_eager(led: Ledger, tag: str, n: int) -> None:
    led.add("fwd", f"{tag} ReLU", n, n)
    led.add("bwd", f"{tag} ReLU backward", 2 * n, n)


def _conv_eager(led: Ledger, tag: str, rows_in: int, ci: int, rows_out: int, co: int) -> None:
    led.add("fwd", f"{tag} conv", rows_in * ci, rows_out * co)
    led.add("bwd", f"{tag} conv grad input", rows_out * co, rows_in * ci)
    led.add("bwd", f"{tag} conv grad weight", rows_out * co + rows_in * ci, 0)


def eager(layer: Layer) -> Ledger:
    led = Ledger()
    m, mo, ci, co = layer.m, layer.mo, layer.c_in, layer.c_out
    first = True
    for c in layer.candidates:
        if c.kind == "skip" and layer.residual:
            pass  # the identity: y is x itself
        elif c.kind == "skip":
            _conv_eager(led, "skip", m if layer.stride == 1 else mo, ci, mo, co)
            _bn_eager(led, "skip", mo, co)
            _relu_eager(led, "skip", mo * co)
        else:
            cm = c.mid_channels(ci)
            _conv_eager(led, "conv_pw", m, ci, m, cm)
            _bn_eager(led, "bn1", m, cm)
            _relu_eager(led, "bn1", m * cm)
            if c.groups > 1:
                led.add("fwd", "channel shuffle copy", m * cm, m * cm)
                led.add("bwd", "channel shuffle backward copy", m * cm, m * cm)
            _conv_eager(led, "conv_dw", m, cm, mo, cm)
            _bn_eager(led, "bn2", mo, cm)
            _relu_eager(led, "bn2", mo * cm)
            _conv_eager(led, "conv_pwl", mo, cm, mo, co)
            _bn_eager(led, "bn3", mo, co)
            if layer.residual:
                led.add("fwd", "y + x", mo * co + m * ci, mo * co)
        led.add("fwd", "w * y", mo * co, mo * co)
        led.add("bwd", "grad * w", mo * co, mo * co)
        led.add("bwd", "grad w = sum(grad * y)", 2 * mo * co + mo * co, mo * co)
        if not first:
            led.add("fwd", "out + w y", 2 * mo * co, mo * co)
            led.add("bwd", "grad x accumulate", 2 * m * ci, m * ci)
        first = False
    return led


# ----------------------------------------------------------------- launches, measured
# Triton launches per launcher call (two-stage reductions: a partials kernel + a fold).
# BatchNorm's finish (bn_fold / bn_grad_fold) is one launch each; the dwconv forward is
# 1 launch, +1 for the statistics' fold, +1 for BN2 apply when asked for (the recomputation).
TRITON_LAUNCHES = {"bn_stats": 2, "affine_act": 1, "affine_act_accumulate_": 1, "act_grad_sums": 2,
                   "act_grad_apply": 1, "bn_fold": 1, "bn_grad_fold": 1,
                   "dwconv_bn_forward": lambda k: 1 + bool(k.get("stats", True)) + (k.get("scale2") is not None),
                   "dwconv_bn_backward": 3}
_NO_KERNEL = {"detach", "empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided", "lift_fresh", "set_",
              "resize_"}


def measured_launches(space_name: str, index: int) -> dict[str, int]:
    """Kernel launches of one forward+backward, counted on the CPU.

    Every aten op that computes (views and allocations excluded, through a
    ``TorchDispatchMode``) is taken as one GPU launch; each fused launcher call counts
    its Triton launches (:data:`TRITON_LAUNCHES`). ``sync`` counts ``nonzero`` and
    ``.item()``; ``.tolist()`` does not dispatch on CPU tensors, so host syncs are
    undercounted (see BENCHMARKS.md). The count does not depend on batch or image size, so
    batch 2 stands for the benchmark's. Needs the CPU extension for the fused path.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from fbnet_fast.ops import _ext
    from fbnet_fast.ops import mixed_op_fused as mof
    from fbnet_fast.ops.mixed_op_ref import mixed_op_ref
    from fbnet_fast.space import FBNET_CANDIDATES
    from fbnet_fast.supernet import MixedOp

    counts = {"aten": 0, "triton": 0, "sync": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("_local_scalar_dense", "nonzero"):
                counts["sync"] += 1
            if not func.is_view and name not in _NO_KERNEL:
                counts["aten"] += 1
            return func(*args, **(kwargs or {}))

    def wrap(name, fn):
        def run(*a, **k):
            n = TRITON_LAUNCHES[name]
            counts["triton"] += n(k) if callable(n) else n
            with torch.utils._python_dispatch._disable_current_modes():
                return fn(*a, **k)
        return run

    spec = load_space(space_name).layers[index]
    result = {}
    for impl in ("fused", "eager"):
        if impl == "fused" and not _ext.available():
            continue
        torch.manual_seed(0)
        op = MixedOp(spec, FBNET_CANDIDATES).to(memory_format=torch.channels_last)
        x = torch.randn(2, spec.c_in, spec.in_size, spec.in_size).contiguous(memory_format=torch.channels_last)
        w = torch.softmax(torch.randn(len(FBNET_CANDIDATES)), 0).requires_grad_(True)
        x.requires_grad_(True)
        counts.update(aten=0, triton=0, sync=0)
        saved = {n: getattr(mof, n) for n in TRITON_LAUNCHES}
        try:
            if impl == "fused":
                for n, fn in saved.items():
                    setattr(mof, n, wrap(n, fn))
            with Count():
                y = (mof.mixed_op_fused if impl == "fused" else mixed_op_ref)(x, w, op.candidates)
                y.backward(torch.ones_like(y))
        finally:
            for n, fn in saved.items():
                setattr(mof, n, fn)
        result[impl] = dict(counts)
    return result


# ------------------------------------------------------------------------------ table
def rows():
    for case, space, index, batch in CASES:
        layer = layer_of(space, index, batch)
        yield case, batch, layer, fused(layer), eager(layer)


def _mb(b: int) -> str:
    return f"{b / 1e6:,.0f}"


def _us(b: int) -> str:
    return f"{b / HBM_BYTES_PER_S * 1e6:,.0f}"


def table(launches: bool = True) -> str:
    head = ("| case | batch | fused fwd MB | fused fwd+bwd MB | eager fwd MB | eager fwd+bwd MB | fused/eager bytes | "
            "fused fwd+bwd µs @3TB/s | eager fwd+bwd µs @3TB/s |")
    if launches:
        head += " launches fused (aten + Triton) / eager | launch floor µs fused / eager |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for (case, batch, _, f, e), (_, space, index, _) in zip(rows(), CASES):
        ft, et = f.bytes(), e.bytes()
        line = (f"| {case} | {batch} | {_mb(f.bytes('fwd'))} | {_mb(ft)} | {_mb(e.bytes('fwd'))} | {_mb(et)} | "
                f"{ft / et:.2f} | {_us(ft)} | {_us(et)} |")
        if launches:
            lc = measured_launches(space, index)
            ea, fu = lc["eager"], lc.get("fused")
            if fu:
                nf = fu["aten"] + fu["triton"]
                cells = (f"{nf} ({fu['aten']} + {fu['triton']})", f"{nf * LAUNCH_S * 1e6:,.0f}")
            else:
                cells = ("n/a (no CPU extension)", "n/a")
            line += f" {cells[0]} / {ea['aten']} | {cells[1]} / {ea['aten'] * LAUNCH_S * 1e6:,.0f} |"
        out.append(line)
    return "\n".join(out)


def detail(case_id: str) -> str:
    for case, _, layer, f, e in rows():
        if case == case_id:
            lines = [f"{case}: {layer}"]
            for name, led in (("fused", f), ("eager", e)):
                lines.append(f"-- {name}: {led.bytes() / 1e6:,.1f} MB in {led.launches()} passes")
                lines += [f"   {p:3s} {n:40s} read {4 * r / 1e6:8.2f} MB  write {4 * w / 1e6:8.2f} MB"
                          for p, n, r, w in led.passes]
            return "\n".join(lines)
    raise SystemExit(f"unknown case {case_id!r}; expected one of {[c[0] for c in CASES]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detail", metavar="CASE", help="list every pass of one case")
    ap.add_argument("--no-launches", action="store_true", help="skip the measured launch counts (needs torch work)")
    args = ap.parse_args()
    print(detail(args.detail) if args.detail else table(launches=not args.no_launches))


if __name__ == "__main__":
    main()
