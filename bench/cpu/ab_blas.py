"""The default search's steps with the one-call C++ path using torch's BLAS, against without it, in one process.

    python bench/cpu/ab_blas.py [--threads 1] [--rounds 9] [--frozen] [--as-avx2] [--width 0.25] [--batch 64]

``fbnet_fast._C.set_blas`` gives the one-call paths (csrc/ir_block.cpp) torch's ``sgemm_``; with it every IR
candidate of a training step runs as one C++ call forward and one backward, the products torch would run
going through torch's BLAS from there. ``set_blas(0)`` is the code before that: candidates with such a product
run the Python launches. Both give the same bits (tests/test_mixed_op.py), so the A/B can switch between them
in one process, step by step, on the same supernet and batch: the default search's (fbnet-cifar width 0.25,
batch 64, every candidate soft; ``--width 1.0 --batch 32``: the speed issue's supernet step), forward +
cross-entropy + backward. Rounds alternate the order; medians.
``--frozen``: every weight frozen, theta alone wants a gradient (the search's theta step). ``--as-avx2``:
torch, oneDNN and MKL held to AVX2 and our kernels' ``v3`` variant (an emulation of an AVX2-only CPU on
this one, named so in the output). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_wall import prepare  # noqa: E402  (the whole-search benchmark's AVX2 restriction, threads, malloc)


def add_step_args(p: argparse.ArgumentParser, rounds: int) -> None:
    """The options of the in-process step A/Bs (this and ab_so.py): threads, rounds, the step, the supernet."""
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--frozen", action="store_true", help="the theta step: only theta wants a gradient")
    p.add_argument("--as-avx2", action="store_true", help="as an AVX2-only CPU runs it (emulated)")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)


def step_net(args: argparse.Namespace):
    """(supernet, x, y) of the step the A/Bs time: fbnet-cifar at ``args.width`` on the fused kernels, channels
    last, seed 0, weights frozen with ``args.frozen`` (as the search's theta step), a batch of ``args.batch``."""
    import torch

    from fbnet_fast.space import load_space
    from fbnet_fast.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(load_space("fbnet-cifar", width_mult=args.width), impl="cpp").to(memory_format=torch.channels_last)
    if args.frozen:
        for prm in net.weight_parameters():  # theta alone wants a gradient, as the search's theta step
            prm.requires_grad_(False)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    return net, x, y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_step_args(p, rounds=9)
    args = p.parse_args(argv)
    ext = prepare(args.as_avx2, args.threads)
    import torch

    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _ext
    sgemm = _ext.torch_sgemm()
    if not sgemm:
        raise SystemExit("this torch exports no sgemm_: the one-call paths cannot use its BLAS here")
    net, x, y = step_net(args)

    def step(blas: bool) -> float:
        ext.set_blas(sgemm if blas else 0)
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(net(x, w), y).backward()
        return time.perf_counter() - t

    times: dict[bool, list[float]] = {False: [], True: []}
    for blas in (False, True, False, True):  # warm-up
        step(blas)
    for r in range(args.rounds):
        for blas in ((False, True) if r % 2 == 0 else (True, False)):
            times[blas].append(step(blas))
    ext.set_blas(sgemm)
    old, new = statistics.median(times[False]), statistics.median(times[True])
    ratios = [a / b for a, b in zip(times[False], times[True])]
    what = "theta step (weights frozen)" if args.frozen else "weight step"
    print(f"cpu {cpu_name()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), fused ISA "
          f"{ext.isa()}{' (emulated AVX2)' if args.as_avx2 else ''}, threads {args.threads}; {what}, fbnet-cifar "
          f"width {args.width}, batch {args.batch}, soft; medians of {args.rounds} alternating rounds")
    print(f"without BLAS (Python launches where torch multiplies) {1e3 * old:.1f} ms, with (every candidate in "
          f"one call) {1e3 * new:.1f} ms: {old / new:.3f}x on the medians; fastest rounds "
          f"{1e3 * min(times[False]):.1f} vs {1e3 * min(times[True]):.1f} ms ({min(times[False]) / min(times[True]):.3f}x); "
          f"median of the per-round ratios {statistics.median(ratios):.3f}x; per round {[round(r, 3) for r in ratios]}")


if __name__ == "__main__":
    main()
