"""The mixed op's 1x1 products: MKL (torch.mm) vs the small-product kernel, per shape and in the step.

    python bench/cpu/ab_gemm.py [--threads 1 2] [--width 0.25] [--batch 64] [--rounds 7] [--step-rounds 8]
    python bench/cpu/ab_gemm.py --concat [--threads 1 2]
    python bench/cpu/ab_gemm.py --as-avx2 ...   # torch, oneDNN, MKL held to AVX2, our kernels' v3 (emulated)

Per shape: every product a supernet step of fbnet-cifar at this width and batch runs for its IR
candidates (``z1 = x @ W1^T``, ``z3 = h2 @ W3^T``, ``gh2 = gz3 @ W3``, ``gx += gz1 @ W1``), each timed
alone, torch and the kernel alternating, median of ``--rounds``; the table says which one
:func:`fbnet_fast.ops.gemm.use_small` picks, and the totals weight each shape by its count in a step.
Alone, the operands sit in cache; in the step they do not, so the second part times the whole fused
supernet step (soft weights, all 9 candidates) with the kernel on and off (``FBNET_FAST_SMALL_GEMM``),
alternating within one process, median of ``--step-rounds``. Run it alone on the machine.

``--concat`` answers the speed issue's "fewer, bigger GEMMs": per distinct layer shape, the 8 IR
candidates' first 1x1 products as 8 calls (as the fused op runs them) against one product over their
concatenated weights, for the forward (``x @ [W1_1; ...; W1_8]^T``), the input gradient (``[gz1_1 ...
gz1_8] @ [W1_1; ...]``) and the weight gradient (``[gz1_1 ...]^T x``), torch's BLAS in both, timed alone.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--as-avx2" in sys.argv:  # before torch loads (as search_wall.py --as-avx2)
    sys.path.insert(0, str(Path(__file__).parent))
    from search_wall import AVX2_ENV

    os.environ.update(AVX2_ENV)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fbnet_fast.measure.core import cpu_name  # noqa: E402
from fbnet_fast.ops import _ext, gemm  # noqa: E402
from fbnet_fast.space import load_space, parse_candidate  # noqa: E402
from fbnet_fast.supernet import Supernet  # noqa: E402


def _median_ms(f, rounds: int) -> float:
    f()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


# The 1x1 products of an IR candidate in a supernet step, by role: ``z1 = x W1^T``, ``z3 = relu(bn2(z2)) W3^T``,
# ``gh2 = gz3 W3``, ``gx += gz1 W1`` (``[M, K] @ [K, N]``), and the weight gradients ``gw3 = gz3^T relu(bn2(z2))``,
# ``gw1 = gz1^T x`` (``[M, K]^T [M, N]``, the operands as the fused op passes them to gemm.mm_tn).
PRODUCTS = ("z1", "z3", "gh2", "gx")
WEIGHT_GRADIENTS = ("gw3", "gw1")


def step_products(space, batch: int, res: int = 32):
    """``(role, M, K, N)`` of every product one soft supernet step's IR candidates run (forward + backward), roles as
    in :data:`PRODUCTS` and :data:`WEIGHT_GRADIENTS` (the default keep budget holds every layer: no recomputation)."""
    ir = [c for c in map(parse_candidate, space.candidates) if c.kind == "ir"]
    for layer in space.layers:
        out_res = (res + layer.stride - 1) // layer.stride
        m_in, m_out = batch * res * res, batch * out_res * out_res
        for cand in ir:
            mid = cand.mid_channels(layer.c_in)
            yield "z1", m_in, layer.c_in, mid
            yield "z3", m_out, mid, layer.c_out
            yield "gh2", m_out, layer.c_out, mid
            yield "gx", m_in, mid, layer.c_in
            yield "gw3", m_out, layer.c_out, mid
            yield "gw1", m_in, mid, layer.c_in
        res = out_res


def step_shapes(space, batch: int, res: int = 32) -> collections.Counter:
    """``(M, K, N) -> count`` of the products (:data:`PRODUCTS`) one soft supernet step's IR candidates run."""
    return collections.Counter((m, k, n) for role, m, k, n in step_products(space, batch, res) if role in PRODUCTS)


def concat_table(space, batch: int, rounds: int) -> None:
    """8 separate first-1x1 products per layer vs one over the concatenated weights (torch.mm both)."""
    ir = [c for c in map(parse_candidate, space.candidates) if c.kind == "ir"]
    seen, res = set(), 32
    print(f"{'M':>6s} {'C':>4s} {'sum mid':>7s} | fwd 8 calls / 1 call | grad_in 8 / 1 | grad_w 8 / 1 (ms, median)")
    for layer in space.layers:
        m, c = batch * res * res, layer.c_in
        res = (res + layer.stride - 1) // layer.stride
        if (m, c) in seen:
            continue
        seen.add((m, c))
        mids = [cand.mid_channels(c) for cand in ir]
        x = torch.randn(m, c)
        ws = [torch.randn(mid, c) for mid in mids]
        wcat = torch.cat(ws, 0)
        gz = [torch.randn(m, mid) for mid in mids]
        gzcat = torch.cat(gz, 1)

        def gin_sep():
            g = torch.zeros(m, c)
            for a, w in zip(gz, ws):
                g.addmm_(a, w)

        pairs = [(lambda: [torch.mm(x, w.t()) for w in ws], lambda: torch.mm(x, wcat.t())),
                 (gin_sep, lambda: torch.mm(gzcat, wcat)),
                 (lambda: [torch.mm(x.t(), a) for a in gz], lambda: torch.mm(x.t(), gzcat))]
        cells = []
        for sep, cat in pairs:
            ts, tc = [], []
            for _ in range(rounds):
                ts.append(_median_ms(sep, 1))
                tc.append(_median_ms(cat, 1))
            cells.append(f"{statistics.median(ts):7.3f} / {statistics.median(tc):7.3f}")
        print(f"{m:6d} {c:4d} {sum(mids):7d} | " + " | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--step-rounds", type=int, default=8)
    p.add_argument("--concat", action="store_true", help="separate vs concatenated first-1x1 products (torch)")
    p.add_argument("--as-avx2", action="store_true", help="as an AVX2-only CPU runs it (emulated on this one)")
    args = p.parse_args(argv)
    if args.as_avx2:
        _ext.load().set_isa("v3")
    space = load_space("fbnet-cifar", width_mult=args.width)
    print(f"cpu {cpu_name()}, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), fused ISA {_ext.load().isa()}"
          f"{' (emulated AVX2)' if args.as_avx2 else ''}; fbnet-cifar width "
          f"{args.width}, batch {args.batch}")
    if args.concat:
        for th in args.threads:
            torch.set_num_threads(th)
            print(f"\n{th} thread(s), fbnet-cifar width {args.width}, batch {args.batch}")
            concat_table(space, args.batch, args.rounds)
        return 0
    shapes = step_shapes(space, args.batch)
    for th in args.threads:
        torch.set_num_threads(th)
        tot = collections.Counter()
        print(f"\n{th} thread(s): per product, ms (median of {args.rounds}, alone)")
        print(f"{'M':>6s} {'K':>5s} {'N':>5s} {'count':>5s} {'torch':>8s} {'small':>8s} {'ratio':>6s}  rule")
        for (m, k, n), c in sorted(shapes.items()):
            a, b = torch.randn(m, k), torch.randn(k, n)
            rule = gemm.use_small(a, b)
            ts, tk = [], []

            def kernel():  # the kernel whatever the rule says; a new output each call, as mm allocates
                out = torch.empty(m, n)
                _ext.load().small_gemm(a.data_ptr(), m, k, k, b.data_ptr(), n, out.data_ptr(), n, False)
                return out

            for _ in range(args.rounds):
                ts.append(_median_ms(lambda: torch.mm(a, b), 1))
                tk.append(_median_ms(kernel, 1))
            t_torch, t_small = statistics.median(ts), statistics.median(tk)
            tot["torch"] += c * t_torch
            tot["small"] += c * t_small
            tot["rule"] += c * (t_small if rule else t_torch)
            print(f"{m:6d} {k:5d} {n:5d} {c:5d} {t_torch:8.3f} {t_small:8.3f} {t_torch / t_small:6.2f}  "
                  f"{'small' if rule else 'torch'}")
        print(f"step's products, alone: torch {tot['torch']:.1f} ms, small everywhere {tot['small']:.1f} ms, "
              f"as routed {tot['rule']:.1f} ms")
        if args.step_rounds < 1:  # --step-rounds 0: the products alone, no whole step
            continue

        torch.manual_seed(0)
        net = Supernet(space, impl="cpp").to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,))
        w = torch.softmax(torch.randn(space.num_layers, len(space.candidates)), -1)

        def step():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x, w), y).backward()

        res: dict[str, list[float]] = {"routed": [], "torch only": []}
        old = os.environ.get(gemm.SMALL_ENV)
        try:
            for _ in range(args.step_rounds):
                for k in res:
                    os.environ[gemm.SMALL_ENV] = "1" if k == "routed" else "0"
                    res[k].append(_median_ms(step, 1))
        finally:
            if old is None:
                os.environ.pop(gemm.SMALL_ENV, None)
            else:
                os.environ[gemm.SMALL_ENV] = old
        med = {k: statistics.median(v) for k, v in res.items()}
        print(f"fused supernet step (soft, 9 candidates): routed {med['routed']:.1f} ms, torch only "
              f"{med['torch only']:.1f} ms: {med['torch only'] / med['routed']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
