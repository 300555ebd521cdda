"""This build's depthwise kernels against another build of the extension, bit for bit.

    python bench/cpu/ab_build.py --baseline DIR_OR_SO      # exit 1 if any output's bits differ

``--baseline``: a checkout with its extension built in place (``DIR/fbnet_fast/_C*.so``, as the checkout A/Bs'
``--baseline``) or an extension file copied aside before a change. Both builds are loaded into this one process
(another ``_C`` file is its own module), so their outputs are compared directly with ``torch.equal``:
``dwconv_bn_forward`` (output, BN statistics, with and without the fused activation), ``dwconv_bn_backward`` and
``ir_eval`` (which composes the forward's row kernel), on one grid of shapes (odd sizes, remainders of 1-15
channels, 1x1 to 32x32 images, k 3 and 5, stride 1 and 2), for every ISA variant both builds carry and this CPU
runs, at 1 and 2 threads. A change to these kernels that passes keeps the searches' numbers as they were on this
grid's evidence (the held-out comparisons in BENCHMARKS.md stand); confirm with one whole search, whose held-out
accuracy must repeat. Their speed, against the same checkout: ``bench/cpu/ab_dwconv.py --baseline DIR``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

BIT_SHAPES = [(64, 8, 8, 96), (64, 8, 8, 168), (2, 8, 8, 40), (3, 4, 4, 24), (4, 16, 16, 48), (2, 32, 32, 8),
              (2, 7, 9, 20), (5, 8, 8, 19), (2, 2, 2, 33), (1, 1, 1, 16), (2, 5, 5, 184), (2, 14, 14, 24),
              (2, 12, 12, 40), (2, 5, 13, 16), (3, 16, 16, 56), (2, 28, 28, 8), (1, 10, 11, 200)]
IR_SHAPES = [(4, 8, 8, 16, 96, 24), (3, 4, 4, 40, 168, 40), (2, 16, 16, 8, 48, 16), (2, 7, 7, 24, 72, 32),
             (2, 14, 14, 16, 40, 16)]  # [N, H, W, Cin, mid, Cout]


def load_build(path: str):
    """Another build of ``fbnet_fast._C`` as its own module (its init symbol is PyInit__C whatever the path)."""
    spec = importlib.util.spec_from_file_location("fbnet_fast_ab_old._C", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--baseline {path}: not a loadable extension module")
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
    z1, sc, sh = torch.randn(n, h, w, c, generator=g), torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    sh *= 0.1
    wt, go = 0.1 * torch.randn(k * k, c, generator=g), torch.randn(n, ho, wo, c, generator=g)
    cen = torch.randn(c, generator=g)

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True,
                   help="a checkout with its extension built in place, or the other build's _C*.so")
    args = p.parse_args(argv)
    from fbnet_fast.ops import _ext

    path = args.baseline
    if path.is_dir():
        found = sorted((path / "fbnet_fast").glob("_C*.so"))
        if not found:
            raise SystemExit(f"--baseline {path}: no fbnet_fast/_C*.so there (build it: python setup.py build_ext "
                             f"--inplace)")
        path = found[0]
    return check_bits(load_build(str(path)), _ext.load())


if __name__ == "__main__":
    sys.exit(main())
