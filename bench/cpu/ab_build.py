"""This build's depthwise kernels against another build of the extension: same bits? how much faster?

    cp fbnet_fast/_C*.so /tmp/old_C.so        # before the change (any earlier build of the same ABI)
    ... change csrc/, rebuild: python setup.py build_ext --inplace
    python bench/cpu/ab_build.py --old /tmp/old_C.so --bits           # exit 1 if any output's bits differ
    python bench/cpu/ab_build.py --old /tmp/old_C.so [--isa v4] [--threads 1] [--rounds 9] [--shapes ...]

``--bits`` runs ``dwconv_bn_forward`` (output, BN statistics, with and without the fused activation),
``dwconv_bn_backward`` and ``ir_eval`` (which composes the forward's row kernel) of both builds on one grid of
shapes (odd sizes, remainders of 1-15 channels, 1x1 to 32x32 images, k 3 and 5, stride 1 and 2), for every ISA
variant both builds carry and this CPU runs, at 1 and 2 threads, and compares them with ``torch.equal``. A change
to these kernels that passes keeps the searches' numbers as they were on this grid's evidence (the held-out
comparisons in BENCHMARKS.md stand); confirm with one whole search, whose held-out accuracy must repeat.

Without ``--bits`` it times ``dwconv_bn_forward`` (with statistics) and ``dwconv_bn_backward`` (input and weight
gradients, BN1's sums) of both builds on preallocated buffers, interleaved rounds (old, new, then new, old),
medians, per shape: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch

# [N, H, W, C, k, stride]: the default search's (fbnet-cifar width 0.25, batch 64) depthwise shapes, and 224-input ones
TIME_SHAPES = [(64, 8, 8, 96, 5, 1), (64, 8, 8, 96, 3, 1), (64, 8, 8, 168, 5, 1), (64, 4, 4, 168, 5, 1),
               (64, 4, 4, 184, 3, 1), (64, 16, 16, 48, 5, 1), (64, 32, 32, 24, 3, 1), (64, 32, 32, 48, 5, 1),
               (64, 16, 16, 96, 5, 2), (64, 8, 8, 168, 3, 2), (32, 14, 14, 96, 3, 1), (32, 7, 7, 184, 5, 1)]
BIT_SHAPES = [(64, 8, 8, 96), (64, 8, 8, 168), (2, 8, 8, 40), (3, 4, 4, 24), (4, 16, 16, 48), (2, 32, 32, 8),
              (2, 7, 9, 20), (5, 8, 8, 19), (2, 2, 2, 33), (1, 1, 1, 16), (2, 5, 5, 184), (2, 14, 14, 24),
              (2, 12, 12, 40), (2, 5, 13, 16), (3, 16, 16, 56), (2, 28, 28, 8), (1, 10, 11, 200)]
IR_SHAPES = [(4, 8, 8, 16, 96, 24), (3, 4, 4, 40, 168, 40), (2, 16, 16, 8, 48, 16), (2, 7, 7, 24, 72, 32),
             (2, 14, 14, 16, 40, 16)]  # [N, H, W, Cin, mid, Cout]


def load_build(path: str):
    """Another build of ``fbnet_fast._C`` as its own module (its init symbol is PyInit__C whatever the path)."""
    spec = importlib.util.spec_from_file_location("fbnet_fast_ab_old._C", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--old {path}: not a loadable extension module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _p(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def forward_case(n, h, w, c, k, s, act, seed):
    g = torch.Generator().manual_seed(seed)
    t = dict(z1=torch.randn(n, h, w, c, generator=g), sc=torch.rand(c, generator=g) + 0.5,
             sh=0.1 * torch.randn(c, generator=g), wt=0.1 * torch.randn(k * k, c, generator=g),
             s2=torch.rand(c, generator=g), b2=0.1 * torch.randn(c, generator=g))
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1

    def run(m):
        out, mean, var = torch.empty(n, ho, wo, c), torch.empty(c), torch.empty(c)
        a = torch.empty(n, ho, wo, c) if act else None
        extra = dict(scale2=_p(t["s2"]), shift2=_p(t["b2"]), act_out=_p(a)) if act else {}
        m.dwconv_bn_forward(_p(t["z1"]), n, h, w, c, _p(t["sc"]), _p(t["sh"]), _p(t["wt"]), k, s, _p(out), _p(mean),
                            _p(var), **extra)
        return [out, mean, var] + ([a] if act else [])
    return run


def backward_case(n, h, w, c, k, s, seed):
    g = torch.Generator().manual_seed(seed)
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    z1, sc, sh = torch.randn(n, h, w, c, generator=g), torch.rand(c, generator=g) + 0.5, 0.1 * torch.randn(c, generator=g)
    wt, go, cen = 0.1 * torch.randn(k * k, c, generator=g), torch.randn(n, ho, wo, c, generator=g), torch.randn(c, generator=g)

    def run(m):
        gi, gw, sg, sgz = torch.empty_like(z1), torch.empty(k * k, c), torch.empty(c), torch.empty(c)
        m.dwconv_bn_backward(_p(go), _p(z1), n, h, w, c, _p(sc), _p(sh), _p(wt), k, s, _p(cen), _p(gi), _p(gw), _p(sg),
                             _p(sgz))
        return [gi, gw, sg, sgz]
    return run


def ir_eval_case(n, h, w, cin, mid, cout, k, s, seed):
    g = torch.Generator().manual_seed(seed)
    x, w1 = torch.randn(n, h, w, cin, generator=g), 0.2 * torch.randn(mid, cin, generator=g)
    wt, w3 = 0.1 * torch.randn(k * k, mid, generator=g), 0.1 * torch.randn(cout, mid, generator=g)
    aff = [torch.rand(mid, generator=g) + 0.5, 0.1 * torch.randn(mid, generator=g), torch.rand(mid, generator=g) + 0.5,
           0.1 * torch.randn(mid, generator=g)]
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1

    def run(m):
        out = torch.zeros(n, ho, wo, cout)
        m.ir_eval(_p(x), n, h, w, cin, _p(w1), mid, _p(wt), k, s, _p(w3), cout, *map(_p, aff), _p(out))
        return [out]
    return run


def check_bits(old, new) -> int:
    isas = [i for i in new.compiled_isas() if i in old.compiled_isas()]
    cases = []
    for i, (n, h, w, c) in enumerate(BIT_SHAPES):
        for k in (3, 5):
            for s in (1, 2):
                cases += [(f"forward {n}x{h}x{w}x{c} k{k} s{s} act{a}", forward_case(n, h, w, c, k, s, a, 100 * i + k))
                          for a in (False, True)]
                cases.append((f"backward {n}x{h}x{w}x{c} k{k} s{s}", backward_case(n, h, w, c, k, s, 100 * i + k + 7)))
    for i, (n, h, w, cin, mid, cout) in enumerate(IR_SHAPES):
        for k in (3, 5):
            for s in (1, 2):
                cases.append((f"ir_eval {n}x{h}x{w}x{cin}->{mid}->{cout} k{k} s{s}",
                              ir_eval_case(n, h, w, cin, mid, cout, k, s, 1000 + 100 * i + k)))
    bad, total = [], 0
    for isa in isas:
        try:
            new.set_isa(isa)
            old.set_isa(isa)
        except ValueError:
            continue  # this CPU cannot run it
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, run in cases:
                total += 1
                if not all(torch.equal(a, b) for a, b in zip(run(old), run(new))):
                    bad.append(f"{isa} {threads}t {name}")
    print(f"compared {total} cases (ISA variants {isas}, threads 1 and 2): {len(bad)} differ")
    for b in bad[:20]:
        print("  differs:", b)
    return 1 if bad else 0


def time_kernels(old, new, shapes, rounds: int) -> None:
    print("| shape [N, H, W, C] k stride | fwd old ms | fwd new ms | old/new | bwd old ms | bwd new ms | old/new |")
    print("|---|---|---|---|---|---|---|")
    for n, h, w, c, k, s in shapes:
        g = torch.Generator().manual_seed(0)
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        z1, sc, sh = torch.randn(n, h, w, c, generator=g), torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
        wt, go, cen = 0.1 * torch.randn(k * k, c, generator=g), torch.randn(n, ho, wo, c, generator=g), torch.randn(c)
        out, mean, var = torch.empty(n, ho, wo, c), torch.empty(c), torch.empty(c)
        gi, gw, sg, sgz = torch.empty_like(z1), torch.empty(k * k, c), torch.empty(c), torch.empty(c)

        def fwd(m):
            m.dwconv_bn_forward(_p(z1), n, h, w, c, _p(sc), _p(sh), _p(wt), k, s, _p(out), _p(mean), _p(var))

        def bwd(m):
            m.dwconv_bn_backward(_p(go), _p(z1), n, h, w, c, _p(sc), _p(sh), _p(wt), k, s, _p(cen), _p(gi), _p(gw),
                                 _p(sg), _p(sgz))
        calls = max(5, int(2e6 // (n * ho * wo * c * k * k)))  # >= ~1 ms a round
        med = {}
        for name, f in (("fwd", fwd), ("bwd", bwd)):
            times = {"old": [], "new": []}
            for m in (old, new):
                f(m)
            for r in range(rounds):
                for tag, m in ((("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))):
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        f(m)
                    times[tag].append((time.perf_counter() - t0) * 1e3 / calls)
            med[name] = (statistics.median(times["old"]), statistics.median(times["new"]))
        (fo, fn), (bo, bn) = med["fwd"], med["bwd"]
        print(f"| {n}x{h}x{w}x{c} k{k} s{s} | {fo:.3f} | {fn:.3f} | {fo / fn:.2f}x | {bo:.3f} | {bn:.3f} | "
              f"{bo / bn:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="path of the other build's _C*.so")
    p.add_argument("--bits", action="store_true", help="compare outputs bit for bit instead of timing")
    p.add_argument("--isa", default=None, help="ISA variant to time (default: this CPU's best)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--shapes", default=None, help="'n,h,w,c,k,s;...' to time instead of the default list")
    args = p.parse_args(argv)
    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _ext

    new = _ext.load()
    old = load_build(args.old)
    if args.bits:
        return check_bits(old, new)
    isa = args.isa or new.isa()
    new.set_isa(isa)
    old.set_isa(isa)
    torch.set_num_threads(args.threads)
    shapes = TIME_SHAPES if args.shapes is None else [tuple(map(int, x.split(","))) for x in args.shapes.split(";")]
    print(f"{cpu_name()}, isa {isa}, threads {args.threads}; dwconv_bn_forward (with statistics) and "
          f"dwconv_bn_backward (with the weight gradient), old = {args.old}, medians of {args.rounds} interleaved rounds")
    time_kernels(old, new, shapes, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
