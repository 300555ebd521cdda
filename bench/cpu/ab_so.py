"""Two builds of the extension, step by step in one process: a baseline ``_C`` .so against this checkout's.

    python bench/cpu/ab_so.py --baseline-so PATH [--threads 1] [--rounds 21] [--frozen] [--as-avx2]
                              [--width 0.25] [--batch 64] [--layers A-B]

Every kernel launch of the library asks ``fbnet_fast.ops._launch.cpu_ext()`` for the module, so the benchmark
loads the baseline build (a copy of its ``_C.cpython-*.so``, e.g. saved before rebuilding) beside this
checkout's and switches the launcher between them step by step: the same supernet, batch, Gumbel draw and
Python code, only the compiled kernels differ. That resolves differences of 1-3 % that fresh processes per
checkout (``ab_layers.py``, ``ab_search_step.py``) lose in this machine's drift. Both builds must carry the same
ABI (the same bindings). It also says whether the two builds give the same bits: the loss and every gradient of
the first round compared with ``torch.equal``. The step is the default search's (fbnet-cifar width 0.25, batch
64, every candidate soft), forward + cross-entropy + backward; ``--frozen``: the theta step (weights frozen);
``--as-avx2``: torch, oneDNN and MKL held to AVX2 and both builds' ``v3`` variant. Rounds alternate the order;
medians. ``--layers A-B``: only those searchable layers' forward + backward (their input made once by the layers
before them, detached, wanting a gradient): a shorter thing to time, so more rounds in the same while. Run it
alone on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_blas import add_step_args, step_net  # noqa: E402  (the same step and options as ab_blas.py)
from search_wall import prepare  # noqa: E402  (the whole-search benchmark's AVX2 restriction, threads, malloc)


def load_copy(path: Path, tmp: str):
    """The extension module in ``path``, loaded from a copy (a second dlopen of one path would return the first)."""
    dst = Path(tmp) / "baseline" / "_C.so"
    dst.parent.mkdir()
    shutil.copyfile(path, dst)
    spec = importlib.util.spec_from_file_location("fbnet_fast_baseline._C", dst)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def setup(args: argparse.Namespace):
    """This checkout's extension module, set up as the A/Bs time it (search_wall.prepare), ``args.baseline_so``
    checked to exist first."""
    if not args.baseline_so.is_file():
        raise SystemExit(f"--baseline-so {args.baseline_so}: no such file")
    return prepare(args.as_avx2, args.threads)


def baseline_beside(path: Path, tmp: str, new, same_abi: bool = True):
    """The baseline build loaded beside this checkout's module ``new``: the same ABI (``same_abi=False``: any, for a
    caller that drives it with its own Python, as ab_module.py --baseline-so does), torch's BLAS set."""
    from fbnet_fast.ops import _ext

    old = load_copy(path, tmp)
    if same_abi and getattr(old, "ABI_VERSION", None) != new.ABI_VERSION:
        raise SystemExit(f"the baseline build has ABI {getattr(old, 'ABI_VERSION', None)}, this checkout's "
                         f"{new.ABI_VERSION}: their bindings differ, so one Python cannot drive both")
    old.set_blas(_ext.torch_sgemm())
    return old


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-so", type=Path, required=True, help="the baseline build's _C.cpython-*.so")
    add_step_args(p, rounds=21)
    p.add_argument("--layers", default=None, help="A-B: time only searchable layers A..B (inclusive)")
    args = p.parse_args(argv)
    new = setup(args)
    import torch

    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _launch
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_beside(args.baseline_so, tmp, new)
        for mod in (old, new):
            if args.as_avx2:
                mod.set_isa("v3")
        mods = {"baseline": old, "this": new}

        net, x, y = step_net(args)

        span = None
        if args.layers:
            lo, _, hi = args.layers.partition("-")
            span = range(int(lo), int(hi or lo) + 1)
            if not span or span.start < 0 or span.stop > len(net.layers):
                raise SystemExit(f"--layers {args.layers}: the supernet has layers 0-{len(net.layers) - 1}")
            with torch.no_grad():
                w0 = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
                h = net.stem(x)
                for op, wl in zip(net.layers[:span.start], w0):
                    h = op(h, wl)
            h = h.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            g = None

        def run(w: torch.Tensor) -> torch.Tensor:
            if span is None:
                loss = torch.nn.functional.cross_entropy(net(x, w), y)
                loss.backward()
                return loss.detach()
            nonlocal g
            out = h
            for i in span:
                out = net.layers[i](out, w[i])
            if g is None:
                g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(
                    memory_format=torch.channels_last)
            out.backward(g)
            return out.detach()

        def step(name: str) -> tuple[float, list[torch.Tensor]]:
            _launch._cpu_module = mods[name]
            net.zero_grad(set_to_none=True)
            if span is not None:
                h.grad = None
            w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
            t = time.perf_counter()
            first = run(w)
            dt = time.perf_counter() - t
            extra = [h.grad] if span is not None else []
            return dt, [first] + extra + [q.grad for q in net.parameters() if q.grad is not None]

        try:
            outs = {name: step(name)[1] for name in mods}  # warm-up, and the bits
            same = all(torch.equal(a, b) for a, b in zip(outs["baseline"], outs["this"]))
            worst = max(float((a - b).abs().max()) for a, b in zip(outs["baseline"], outs["this"]))
            for name in ("this", "baseline"):
                step(name)
            times: dict[str, list[float]] = {k: [] for k in mods}
            for r in range(args.rounds):
                for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
                    times[name].append(step(name)[0])
        finally:
            _launch._cpu_module = new
    a, b = statistics.median(times["baseline"]), statistics.median(times["this"])
    ratios = [u / v for u, v in zip(times["baseline"], times["this"])]
    what = "theta step (weights frozen)" if args.frozen else "weight step"
    if span is not None:
        what += f", layers {span.start}-{span.stop - 1} only (forward + backward)"
    print(f"cpu {cpu_name()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), fused ISA "
          f"{new.isa()}{' (emulated AVX2)' if args.as_avx2 else ''}, threads {args.threads}; {what}, fbnet-cifar "
          f"width {args.width}, batch {args.batch}, soft; medians of {args.rounds} alternating rounds")
    print(f"same bits (loss and {len(outs['this']) - 1} gradients): {same}" + ("" if same else f", largest |diff| {worst:.3g}"))
    print(f"baseline {1e3 * a:.1f} ms, this checkout {1e3 * b:.1f} ms: {a / b:.3f}x on the medians; fastest rounds "
          f"{1e3 * min(times['baseline']):.1f} vs {1e3 * min(times['this']):.1f} ms "
          f"({min(times['baseline']) / min(times['this']):.3f}x); median of the per-round ratios "
          f"{statistics.median(ratios):.3f}x; per round {[round(r, 3) for r in ratios]}")


if __name__ == "__main__":
    main()
