"""Where the supernet step's time goes, layer by layer, against what its matrix products alone must cost.

    python bench/cpu/step_bound.py [--threads 2] [--rounds 5] [--width 1.0] [--batch 32] [--frozen] [--as-avx2]

One soft supernet training step (fbnet-cifar, every candidate of every layer active: the speed issue's
"supernet step" case at width 1.0, batch 32), eager channels_last and fused, rounds alternating after one
untimed warm-up step each. Each layer's forward and backward are timed in place in the whole step (forward
pre/post hooks; backward from the hook on the layer's output gradient to the one on its input gradient), so
each row is that layer as the step runs it, caches and all.

The bound: a layer's 1x1 convolutions are matrix products whatever runs them. Forward ``2 M K N / g`` per
product (``g`` groups), backward twice that (input and weight gradients); every other op of a layer
(depthwise convolutions, BatchNorms, activations, the weighted sum) is left out, as if it were free. At the fp32
GEMM rate of the same machine timed in the same rounds (``torch.mm`` of two 1024x1024 matrices, as
ab_supernet.py), those products alone take ``bound`` ms: no implementation that runs them at that rate can take
less, so ``eager / bound`` is the most any such implementation can gain on that layer over eager. (A kernel can
beat the square GEMM's rate only where MKL's blocking is poor for the shape, and the fused path does no fewer
products: it keeps, not recomputes, every layer of this case.)

The MKL column: the same layer's products as ``torch.mm`` calls of their exact shapes (a grouped conv's
as one product per group, as eager runs it), timed one by one in the same rounds. It is what the products
cost where they run in MKL (the fused path runs the 8x8 and 4x4 layers' there, and the narrow ones in its own
kernel), so ``eager / MKL`` is the most any implementation that leaves its products to MKL can gain on the layer
over eager: where it is below 2, a 2x step needs products faster than MKL runs them, not less work around them.

The timed rounds run with the objects alive at their start frozen out of the collector's scans
(``long_lived_frozen``), as ``fbnet-fast search`` and ``train`` run their steps: without that a full collection
landed in one layer's forward every few steps. ``--as-avx2``: torch, oneDNN and MKL held to AVX2 and our kernels'
``v3`` variant, as ``search_wall.py --as-avx2``.

Prints a table per layer and per resolution, the totals, and writes ``bench/results/step_bound.json``. Run it
alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from search_wall import AVX2_ENV, prepare  # noqa: E402  (bench/cpu is on sys.path when run as a script)

if __name__ == "__main__" and "--as-avx2" in sys.argv:  # before torch loads: it reads them once
    os.environ.update(AVX2_ENV)

import torch  # noqa: E402

from ab_supernet import gemm_rate_timer  # noqa: E402
from fbnet_fast.blocks import IRBlock, SkipBlock  # noqa: E402
from fbnet_fast.malloc import long_lived_frozen  # noqa: E402
from fbnet_fast.measure.core import cpu_name  # noqa: E402
from fbnet_fast.space import load_space  # noqa: E402
from fbnet_fast.supernet import Supernet  # noqa: E402

OUT = Path(__file__).parents[1] / "results" / "step_bound.json"
PROVIDERS = {"eager_cl": "reference", "fused": "cpp"}


def layer_products(layer, m_in: int, m_out: int, frozen: bool = False) -> dict[str, list[tuple[int, int, int, bool]]]:
    """``phase -> [(M, K, N, transposed_a)]``: the products of every candidate of ``layer`` (a MixedOp) as eager
    autograd runs them, one per group. Forward ``x W1^T``, ``h2 W3^T``; backward the input gradients ``gz W``
    and, unless ``frozen`` (weights wanting no gradient: the theta step), the weight gradients ``gz^T x``
    (``transposed_a``: ``a`` is read transposed, ``[M, K]^T``)."""
    out: dict[str, list[tuple[int, int, int, bool]]] = {"fwd": [], "bwd": []}
    for b in layer.candidates:
        if isinstance(b, IRBlock):
            g = b.groups
            for m, k, n in ((m_in, b.c_in // g, b.mid // g), (m_out, b.mid // g, b.c_out // g)):
                out["fwd"] += [(m, k, n, False)] * g
                # input gradient, weight gradient
                out["bwd"] += ([(m, n, k, False)] if frozen else [(m, n, k, False), (n, m, k, True)]) * g
        elif isinstance(b, SkipBlock) and not b.identity:
            out["fwd"].append((m_out, b.c_in, b.c_out, False))
            out["bwd"] += [(m_out, b.c_out, b.c_in, False)] + ([] if frozen else [(b.c_out, m_out, b.c_in, True)])
    return out


def product_flop(layer, m_in: int, m_out: int) -> float:
    """Forward FLOPs of the 1x1 convolutions of every candidate of ``layer`` (a MixedOp): ``2 M K N`` over
    :func:`layer_products`' forward products (a grouped conv's ``g`` products of ``1 / g**2`` the size each)."""
    return sum(2.0 * m * k * n for m, k, n, _ in layer_products(layer, m_in, m_out)["fwd"])


def products_timer(net, batch: int, shapes: dict[int, tuple[int, int, int, int]], frozen: bool = False):
    """A function timing each layer's products in MKL (torch.mm, new output per call as eager allocates):
    returns ``{"Lii fwd": seconds, ...}`` for one pass over every layer."""
    ops = {}
    for i, layer in enumerate(net.layers):
        h, w, ho, wo = shapes[i]
        for phase, prods in layer_products(layer, batch * h * w, batch * ho * wo, frozen).items():
            mats = []
            for m, k, n, ta in prods:
                a = torch.randn(k, m).t() if ta else torch.randn(m, k)  # [m, k], transposed storage for gz^T
                mats.append((a, torch.randn(k, n)))
            ops[f"L{i:02d} {phase}"] = mats

    def run() -> dict[str, float]:
        t = {}
        for key, mats in ops.items():
            t0 = time.perf_counter()
            for a, b in mats:
                torch.mm(a, b)
            t[key] = time.perf_counter() - t0
        return t
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frozen", action="store_true",
                   help="the theta step's case: every weight frozen, only theta wants a gradient (backward: input "
                        "gradients only; the first layer's backward is not timed, its input wants no gradient)")
    p.add_argument("--as-avx2", action="store_true", help="as an AVX2-only CPU runs it (emulated)")
    args = p.parse_args(argv)
    if args.as_avx2 and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "DEFAULT"):
        raise SystemExit("--as-avx2: torch loaded before the AVX2 restriction was set; run this file as a script")
    isa = prepare(args.as_avx2, args.threads).isa()  # our v3 with --as-avx2, threads, malloc as the commands run
    space = load_space("fbnet-cifar", width_mult=args.width)
    times: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in PROVIDERS}
    shapes: dict[int, tuple[int, int, int, int]] = {}
    nets = {}
    for prov, impl in PROVIDERS.items():
        torch.manual_seed(0)
        net = Supernet(space, impl=impl).to(memory_format=torch.channels_last)
        if args.frozen:
            for prm in net.weight_parameters():  # theta alone wants a gradient, as the search's theta step
                prm.requires_grad_(False)
        x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,))
        nets[prov] = (net, x, y)
        for i, layer in enumerate(net.layers):
            def pre(mod, inp, i=i, prov=prov):
                mod._bound_t0 = time.perf_counter()

            def post(mod, inp, out, i=i, prov=prov):
                times[prov][f"L{i:02d} fwd"].append(time.perf_counter() - mod._bound_t0)
                shapes[i] = (inp[0].shape[2], inp[0].shape[3], out.shape[2], out.shape[3])
                if not out.requires_grad:
                    return
                start: dict[str, float] = {}

                def out_grad(g, start=start):
                    start["t"] = time.perf_counter()

                def in_grad(g, i=i, prov=prov, start=start):
                    if "t" in start:
                        times[prov][f"L{i:02d} bwd"].append(time.perf_counter() - start["t"])

                out.register_hook(out_grad)
                if inp[0].requires_grad:
                    inp[0].register_hook(in_grad)

            layer.register_forward_pre_hook(pre)
            layer.register_forward_hook(post)

    def step(prov: str) -> float:
        net, x, y = nets[prov]
        t = time.perf_counter()
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(net(x, w), y).backward()
        return time.perf_counter() - t

    gemm_rate = gemm_rate_timer()  # ab_supernet.py's, so both state the same rate

    for prov in PROVIDERS:
        step(prov)
    for prov in PROVIDERS:
        times[prov].clear()
    gemm_rate()
    mkl = products_timer(nets["fused"][0], args.batch, shapes, args.frozen)
    mkl()
    mkl_times: dict[str, list[float]] = defaultdict(list)
    steps: dict[str, list[float]] = {p: [] for p in PROVIDERS}
    rates = []
    with long_lived_frozen():
        for _ in range(args.rounds):
            rates.append(gemm_rate())
            for k, v in mkl().items():
                mkl_times[k].append(v)
            for prov in PROVIDERS:
                steps[prov].append(step(prov))
    rate = statistics.median(rates)
    med = {p: {k: statistics.median(v) for k, v in times[p].items()} for p in PROVIDERS}
    mkl_med = {k: statistics.median(v) for k, v in mkl_times.items()}
    step_med = {p: statistics.median(v) for p, v in steps.items()}

    net = nets["fused"][0]
    rows = []
    for i, layer in enumerate(net.layers):
        h, w, ho, wo = shapes[i]
        fwd = product_flop(layer, args.batch * h * w, args.batch * ho * wo)
        for phase, flop in (("fwd", fwd), ("bwd", (1 if args.frozen else 2) * fwd)):
            key = f"L{i:02d} {phase}"
            e, f = med["eager_cl"].get(key), med["fused"].get(key)
            if e is None or f is None:
                continue
            rows.append(dict(layer=i, phase=phase, res=f"{h}x{w}", eager_ms=1e3 * e, fused_ms=1e3 * f,
                             product_gflop=flop / 1e9, bound_ms=1e3 * flop / rate, mkl_ms=1e3 * mkl_med[key]))
    frozen = ", weights frozen (theta step)" if args.frozen else ""
    print(f"cpu {cpu_name()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), fused ISA {isa}, "
          f"threads {args.threads}; fbnet-cifar width {args.width}, batch {args.batch}, soft (every candidate "
          f"active){frozen}; median of {args.rounds} alternating rounds")
    print(f"fp32 GEMM rate {rate / 1e9:.1f} GFLOP/s; whole step: eager_cl {step_med['eager_cl']:.3f} s, fused "
          f"{step_med['fused']:.3f} s ({step_med['eager_cl'] / step_med['fused']:.2f}x)\n")
    print("| layer | res | eager ms | fused ms | eager/fused | products GFLOP | bound ms | eager/bound | fused/bound "
          "| MKL ms | eager/MKL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| L{r['layer']:02d} {r['phase']} | {r['res']} | {r['eager_ms']:.1f} | {r['fused_ms']:.1f} | "
              f"{r['eager_ms'] / r['fused_ms']:.2f}x | {r['product_gflop']:.2f} | {r['bound_ms']:.1f} | "
              f"{r['eager_ms'] / r['bound_ms']:.2f}x | {r['fused_ms'] / r['bound_ms']:.2f}x | {r['mkl_ms']:.1f} | "
              f"{r['eager_ms'] / r['mkl_ms']:.2f}x |")
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for r in rows:
        g = groups[r["res"]]
        g[0] += r["eager_ms"]; g[1] += r["fused_ms"]; g[2] += r["bound_ms"]; g[3] += r["mkl_ms"]
    tot = [sum(g[k] for g in groups.values()) for k in range(4)]
    groups["all layers"] = tot
    print("\n| input resolution | eager ms | fused ms | eager/fused | bound ms | eager/bound | fused/bound | MKL ms "
          "| eager/MKL | fused/MKL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res, (e, f, b, mk) in groups.items():
        print(f"| {res} | {e:.0f} | {f:.0f} | {e / f:.2f}x | {b:.0f} | {e / b:.2f}x | {f / b:.2f}x | {mk:.0f} | "
              f"{e / mk:.2f}x | {f / mk:.2f}x |")
    rest = {p: 1e3 * step_med[p] - (tot[0] if p == "eager_cl" else tot[1]) for p in PROVIDERS}
    print(f"\noutside the layers (stem, head, loss, sampling, zero_grad, autograd engine): eager {rest['eager_cl']:.0f} ms, "
          f"fused {rest['fused']:.0f} ms")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(cpu=cpu_name(), torch=torch.__version__,
                                   capability=torch.backends.cpu.get_cpu_capability(), threads=args.threads,
                                   isa=isa, frozen=args.frozen,
                                   width=args.width, batch=args.batch, rounds=args.rounds,
                                   gemm_gflops=rate / 1e9, step_s=step_med, layers=rows,
                                   groups={k: dict(eager_ms=v[0], fused_ms=v[1], bound_ms=v[2], mkl_ms=v[3])
                                           for k, v in groups.items()},
                                   timestamp=time.time()), indent=1))


if __name__ == "__main__":
    main()
