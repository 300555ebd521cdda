"""Fused vs eager mixed op on one CUDA GPU, fp32 and bf16: a few layers and a whole supernet step.

``python bench/gpu/gpu_check.py --out bench/results/gpu_check/kernels.json`` (``bench/gpu_check.sh``
runs it under a timeout; one to two minutes on an H100, most of it Triton's JIT). Without a CUDA
device it says so and exits 0, writing nothing.

Cases, forward + backward, every candidate active: the layers of ``traffic_triton.CASES``
(fbnet-cifar at batch 32, fbnet (224) at batch 8, soft weights) and one supernet training step
(``fbnet`` at 224 px, width 1.0, batch 64, soft Gumbel weights at tau 5: stem, 22 mixed ops,
head, cross-entropy). ``eager`` is ``mixed_op_ref`` with module and input channels_last (the
supernet with ``impl="reference"``), ``fused`` is ``mixed_op_fused`` (Triton + cuBLAS; the
supernet with ``impl="triton"``, which raises where ``"auto"`` would fall back to eager).
``bf16`` is the same step under ``torch.autocast("cuda", torch.bfloat16)``. The fused kernels are
float32 only (``mixed_op_fused.supports``, every launcher's ``check_act``): fused bf16 is tried,
and its ConfigError is recorded as "unsupported" with the library's message.

Before a case is timed, fused is checked on this GPU with ``assert_close_to_ref`` (|fused - fp64|
<= 2x the worst error of eager channels_last and eager NCHW + floor): output, grad x, grad weights
of a layer; logits, loss and grad theta of the supernet at ``--check-batch`` images (fp64 at batch
64 would need ~50 GB). A case that fails is not timed. cuDNN/cuBLAS flags are torch's defaults
(recorded: eager fp32 convs may use TF32, the fused GEMMs do not). Rounds alternate eager, fused;
a round is ``iters`` back-to-back steps between two CUDA events (``iters`` set from a warm-up
step so a round lasts ~25 ms); the table shows medians of ms per step and eager/fused.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[2])]  # traffic_triton, fbnet_fast

ROOT = Path(__file__).parents[2]
OUT = ROOT / "bench" / "results" / "gpu_check" / "kernels.json"
DTYPES = ("fp32", "bf16")
TAU = 5.0  # the search's tau0: soft weights, every candidate active
ROUND_S = 0.025  # target length of one timed round
MAX_ITERS = 50


def _amp(dtype: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ timing
def _time(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict]:
    """Median ms per step of each provider, rounds interleaved; a provider that raises is reported, not timed."""
    res: dict[str, dict] = {}
    iters: dict[str, int] = {}
    for name, step in steps.items():
        failure = None
        try:
            step()  # JIT, cuDNN plans, allocator
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t = time.perf_counter()
            step()
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - the other provider is still timed
            oom = isinstance(e, torch.cuda.OutOfMemoryError)
            failure = {"status": "oom" if oom else "error", "reason": f"{type(e).__name__}: {str(e)[:2000]}"}
        if failure is not None:
            res[name] = failure
            _free()  # after the except block: its traceback no longer holds the step's tensors
            continue
        iters[name] = max(1, min(MAX_ITERS, int(ROUND_S / max(dt, 1e-6))))
        res[name] = {"status": "ok", "peak_mib": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1),
                     "iters": iters[name], "rounds_ms": []}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(rounds):
        for name in iters:
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters[name]):
                steps[name]()
            end.record()
            end.synchronize()
            res[name]["rounds_ms"].append(start.elapsed_time(end) / iters[name])
    for name in iters:
        v = res[name]["rounds_ms"]
        res[name]["median_ms"] = statistics.median(v)
        res[name]["min_ms"] = min(v)
    return res


# ------------------------------------------------------------------------------ layers
def _layer(space: str, index: int, batch: int):
    from fbnet_fast.space import FBNET_CANDIDATES, load_space
    from fbnet_fast.supernet import MixedOp

    torch.manual_seed(0)
    spec = load_space(space).layers[index]
    op = MixedOp(spec, FBNET_CANDIDATES).to("cuda").to(memory_format=torch.channels_last)
    x = torch.randn(batch, spec.c_in, spec.in_size, spec.in_size, device="cuda")
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.softmax(torch.randn(len(FBNET_CANDIDATES), device="cuda"), 0)
    return spec, op, x, w


def _layer_run(fn, op, x, w, go, dtype):
    """One forward + backward from fresh leaves: ``(output, grad x, grad weights)``."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    with _amp(dtype):
        y = fn(x, w, op.candidates)
    y.backward(go.to(y.dtype))
    return y.detach(), x.grad, w.grad


def _check_layer(case, spec, op, x, w, dtype) -> None:
    """Fused vs eager (channels_last and NCHW) vs eager fp64 on this GPU; AssertionError or ConfigError."""
    from fbnet_fast.ops.mixed_op_fused import mixed_op_fused
    from fbnet_fast.ops.mixed_op_ref import mixed_op_ref
    from fbnet_fast.ops.testing import assert_close_to_ref

    go = torch.randn(x.shape[0], spec.c_out, spec.out_size, spec.out_size, device="cuda", dtype=torch.float64,
                     generator=torch.Generator(device="cuda").manual_seed(3))
    fused = _layer_run(mixed_op_fused, copy.deepcopy(op), x, w, go, dtype)  # first: a ConfigError costs nothing
    nchw = copy.deepcopy(op).to(memory_format=torch.contiguous_format)
    eagers = [_layer_run(mixed_op_ref, copy.deepcopy(op), x, w, go, dtype),
              _layer_run(mixed_op_ref, nchw, x.contiguous(), w, go, dtype)]
    f64 = _layer_run(mixed_op_ref, copy.deepcopy(op).double(), x.double(), w.double(), go, "fp32")
    for i, what in enumerate(("output", "grad x", "grad weights")):
        assert_close_to_ref(f"{case} {dtype} {what}", fused[i], [e[i] for e in eagers], f64[i])


def _layer_steps(op, x, w, dtype) -> dict[str, Callable[[], None]]:
    from fbnet_fast.ops.mixed_op_fused import mixed_op_fused
    from fbnet_fast.ops.mixed_op_ref import mixed_op_ref

    w = w.detach().requires_grad_(True)

    def make(fn):
        go = None

        def step():
            nonlocal go
            xx = x.detach().requires_grad_(True)
            with _amp(dtype):
                y = fn(xx, w, op.candidates)
            go = torch.ones_like(y) if go is None else go
            y.backward(go)

        return step

    return {"eager": make(mixed_op_ref), "fused": make(mixed_op_fused)}


# ---------------------------------------------------------------------------- supernet
def _supernet():
    from fbnet_fast.space import load_space
    from fbnet_fast.supernet import Supernet

    space = load_space("fbnet", width_mult=1.0)
    torch.manual_seed(0)
    return space, Supernet(space, impl="reference")  # CPU master copy; each provider gets a GPU copy


def _batch(space, batch: int):
    x = torch.randn(batch, space.in_channels, space.input_size, space.input_size,
                    generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, space.num_classes, (batch,), generator=torch.Generator().manual_seed(2))
    return x, y


def _on_gpu(net, impl: str, channels_last: bool = True):
    net = copy.deepcopy(net).to("cuda")
    net.set_impl(impl)
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _supernet_run(net, x, y, dtype):
    """One training step: ``(logits, loss, grad theta [L, K])``."""
    net.zero_grad(set_to_none=True)
    w = net.sample_weights(TAU, generator=torch.Generator().manual_seed(0))
    with _amp(dtype):
        logits = net(x, w)
        loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    return logits.detach(), loss.detach(), torch.stack([p.grad for p in net.arch_parameters()])


def _check_supernet(space, net, batch: int, dtype: str) -> None:
    from fbnet_fast.ops.testing import assert_close_to_ref

    x, y = _batch(space, batch)  # a small batch of the same net: fp64 eager at 64 x 224 px would take ~50 GB
    x, y = x.cuda(), y.cuda()
    xl = x.contiguous(memory_format=torch.channels_last)
    fused = _supernet_run(_on_gpu(net, "triton"), xl, y, dtype)
    eagers = [_supernet_run(_on_gpu(net, "reference"), xl, y, dtype),
              _supernet_run(_on_gpu(net, "reference", channels_last=False), x, y, dtype)]
    f64 = _supernet_run(_on_gpu(net, "reference", channels_last=False).double(), x.double(), y, "fp32")
    for i, what in enumerate(("logits", "loss", "grad theta")):
        assert_close_to_ref(f"supernet {dtype} {what}", fused[i], [e[i] for e in eagers], f64[i])


def _supernet_steps(net, x, y, dtype) -> dict[str, Callable[[], None]]:
    nets = {"eager": _on_gpu(net, "reference"), "fused": _on_gpu(net, "triton")}
    x = x.cuda().contiguous(memory_format=torch.channels_last)
    y = y.cuda()
    return {name: (lambda n=n: _supernet_run(n, x, y, dtype)) for name, n in nets.items()}


# -------------------------------------------------------------------------------- cases
def _case(row: dict, check: Callable[[], None], steps: Callable[[], dict], rounds: int) -> dict:
    """Check, then time; fills ``row`` with each provider's outcome (``status``: ok, unsupported, check failed,
    error, oom) and the medians."""
    from fbnet_fast.errors import ConfigError

    fused = {"status": "ok"}
    try:
        check()
        row["check"] = "ok"
    except ConfigError as e:  # the library refusing the case: expected for bf16 only; eager is timed anyway
        fused = {"status": "unsupported" if row["dtype"] != "fp32" else "error", "reason": str(e)}
        row["check"] = f"n/a (fused refused: {e})"
    except AssertionError as e:
        fused = {"status": "check failed", "reason": str(e)}
        row["check"] = f"FAILED: {e}"
    except Exception as e:  # noqa: BLE001 - an OOM, a compile error: report it, time eager alone
        fused = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
        row["check"] = f"ERROR: {fused['reason']}"
    _free()
    timed: dict[str, dict] = {}
    try:
        st = steps()
        if fused["status"] != "ok":
            del st["fused"]
        timed = _time(st, rounds)
        del st
    except Exception as e:  # noqa: BLE001 - report and go on with the next case
        row["error"] = f"{type(e).__name__}: {e}"
    row["eager"] = timed.get("eager", {"status": "error"})
    row["fused"] = timed.get("fused", {"status": "error"}) if fused["status"] == "ok" else fused
    e, f = row["eager"].get("median_ms"), row["fused"].get("median_ms")
    row["eager_ms"], row["fused_ms"] = e, f
    row["ratio"] = e / f if e and f else None  # eager / fused: > 1 when fused is faster
    _free()
    return row


def _bad(row: dict) -> bool:
    """A failure (not an expected "unsupported"): a failed check, an error, an OOM."""
    return "error" in row or any(row[p]["status"] not in ("ok", "unsupported") for p in ("eager", "fused"))


def _table(rows: list[dict]) -> str:
    def ms(v):
        return f"{v:9.3f}" if v is not None else f"{'-':>9s}"

    lines = [f"{'case':30s} {'dtype':5s} {'eager ms':>9s} {'fused ms':>9s} {'eager/fused':>11s}  note",
             "-" * 80]
    for r in rows:
        note = "" if r["fused"]["status"] == "ok" else r["fused"]["status"]
        if r["eager"]["status"] != "ok":
            note = f"eager {r['eager']['status']}; {note}"
        if "error" in r:
            note = r["error"][:60]
        ratio = f"{r['ratio']:11.2f}" if r["ratio"] else f"{'-':>11s}"
        lines.append(f"{r['case']:30s} {r['dtype']:5s} {ms(r['eager_ms'])} {ms(r['fused_ms'])} {ratio}  {note}")
    return "\n".join(lines)


def _environment() -> dict:
    import triton

    p = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0), "capability": f"{p.major}.{p.minor}",
        "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"JSON results (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per provider, layer cases (default 7)")
    ap.add_argument("--supernet-rounds", type=int, default=5, help="timed rounds per provider, supernet (default 5)")
    ap.add_argument("--batch", type=int, default=64, help="supernet batch (default 64)")
    ap.add_argument("--check-batch", type=int, default=2, help="supernet batch of the fused-vs-eager check (default 2)")
    ap.add_argument("--no-supernet", action="store_true", help="layer cases only")
    ap.add_argument("-k", dest="only", default=None, help="only cases whose name contains this")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device (torch.cuda.is_available() is False): nothing measured, no JSON written")
        return 0
    try:
        import triton  # noqa: F401 - without it every fused case would read "no GPU kernels"
    except ImportError as e:
        print(f"gpu_check.py: triton does not import ({e}); it ships with CUDA builds of torch: install the "
              f"triton wheel torch pins (pip install 'fbnet-fast[triton]')", file=sys.stderr)
        return 2

    from traffic_triton import CASES

    t0 = time.perf_counter()
    env = _environment()
    print(f"{env['gpu']} (sm_{env['capability'].replace('.', '')}), torch {env['torch']}, CUDA {env['cuda']}, "
          f"triton {env['triton']}", flush=True)
    rows: list[dict] = []
    print(_table([]))
    for case, space, index, batch in CASES:
        if args.only and args.only not in case:
            continue
        spec, op, x, w = _layer(space, index, batch)
        for dtype in DTYPES:
            row = {"case": case, "kind": "layer", "space": space, "layer": index, "batch": batch, "dtype": dtype}
            rows.append(_case(row, lambda: _check_layer(case, spec, op, x, w, dtype),
                              lambda: _layer_steps(op, x, w, dtype), args.rounds))
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
    case = f"supernet-fbnet224-b{args.batch}"
    if not args.no_supernet and (not args.only or args.only in case):
        sspace, net = _supernet()
        x, y = _batch(sspace, args.batch)
        for dtype in DTYPES:
            row = {"case": case, "kind": "supernet", "space": "fbnet", "width_mult": 1.0, "batch": args.batch,
                   "check_batch": args.check_batch, "tau": TAU, "dtype": dtype}
            rows.append(_case(row, lambda: _check_supernet(sspace, net, args.check_batch, dtype),
                              lambda: _supernet_steps(net, x, y, dtype), args.supernet_rounds))
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
    wall = time.perf_counter() - t0
    ok = not any(_bad(r) for r in rows)
    print("\n" + _table(rows))
    print(f"\n{len(rows)} rows in {wall:.0f} s; {'all checks passed' if ok else 'FAILURES above'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(env, ok=ok, wall_s=round(wall, 1), rounds=args.rounds,
                                        supernet_rounds=args.supernet_rounds, timestamp=time.time(), rows=rows),
                                   indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
