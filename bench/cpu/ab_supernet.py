"""Interleaved A/B of one whole-supernet training step: eager channels_last vs fused.

``python bench/cpu/ab_supernet.py [threads] [rounds] [--as-avx2]``: fbnet-cifar at width 1.0, batch 32 (the
pytest-benchmark supernet case, ``bench_mixed_op._supernet``), soft Gumbel weights (all 9
candidates of all 22 layers active), forward + cross-entropy + backward. Rounds alternate
(eager, fused, eager, fused, ...) after one untimed warm-up step each, so a shared machine's
load falls on both alike; eager NCHW is left out (slower than channels_last on this CPU in
every run so far). Prints the medians and writes ``bench/results/ab_supernet.json``
(``ab_supernet_avx2.json`` with ``--as-avx2``: torch, oneDNN and MKL held to AVX2 before torch loads and our
kernels on their ``v3`` variant, as ``search_wall.py --as-avx2`` does: an AVX2-only CPU's instruction mix,
emulated on this one's cores and caches). The timed rounds run as a search's epochs do: inside
``fbnet_fast.malloc.long_lived_frozen`` (the long-lived objects exempt from the cyclic collector's scans) and
with ``tune_malloc``'s thresholds. Until the twenty-seventh session they ran outside it, and both providers' steps
paid full collections of the whole process now and then (~35-60 ms a fused step at width 1.0, `perf`).

It also states how much of the machine a step uses: the step's floating-point work is the eager
forward counted with ``torch.utils.flop_counter.FlopCounterMode``, times 3 (each conv and linear's
backward computes a grad input and a grad weight, each as much work as its forward; the fused path's
recomputation is not credited). The backward is not counted directly because torch 2.13's counter
overcounts grouped (depthwise) convolution backward: it reported 1,028 GFLOP for a step whose
forward is 32.9 GFLOP, while the step ran in 4.2 s on a core whose GEMM rate is 83 GFLOP/s. The machine's fp32
matrix-multiply rate is timed in the same rounds (``torch.mm`` of two 1024x1024 matrices at the same
thread count), so each provider's GFLOP/s is also given as a fraction of that rate.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # siblings, bench/conftest.py
if __name__ == "__main__" and "--as-avx2" in sys.argv:  # before torch loads (as search_wall.py --as-avx2)
    from search_wall import AVX2_ENV

    os.environ.update(AVX2_ENV)

import torch  # noqa: E402

import bench_mixed_op as b  # noqa: E402

OUT = Path(__file__).parents[1] / "results" / "ab_supernet.json"
PROVIDERS = ("eager_cl", "fused")


def gemm_rate_timer():
    """A function timing 10 ``torch.mm`` of two 1024x1024 fp32 matrices at the current thread count: FLOP/s."""
    a, bm = torch.randn(1024, 1024), torch.randn(1024, 1024)

    def gemm() -> float:
        t = time.perf_counter()
        for _ in range(10):
            torch.mm(a, bm)
        return 10 * 2 * 1024 ** 3 / (time.perf_counter() - t)

    return gemm


def main(threads: int, rounds: int, as_avx2: bool = False) -> None:
    torch.set_num_threads(threads)
    from fbnet_fast.malloc import long_lived_frozen, tune_malloc
    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.ops import _ext

    ext = _ext.load() if _ext.available() else None
    if as_avx2 and ext is not None:
        ext.set_isa("v3")
    isa = ext.isa() if ext is not None else None

    tune_malloc()  # as the fbnet-fast commands run (both providers)
    nets = {p: b._supernet(*b.SUPERNET_PROVIDERS[p]) for p in PROVIDERS}

    def step(p):
        net, x, y = nets[p]
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(net(x, w), y).backward()

    from torch.utils.flop_counter import FlopCounterMode

    for p in PROVIDERS:
        step(p)
    net, x, _ = nets["eager_cl"]
    with FlopCounterMode(display=False) as fc:
        net(x, net.sample_weights(5.0, generator=torch.Generator().manual_seed(0)))
    flops = 3 * fc.get_total_flops()
    gemm = gemm_rate_timer()

    gemm()
    ts = {p: [] for p in PROVIDERS}
    rates = []
    with long_lived_frozen():  # the collector as a search's or a training's epochs run (both providers)
        for _ in range(rounds):
            rates.append(gemm())
            for p in PROVIDERS:
                t = time.perf_counter()
                step(p)
                ts[p].append(time.perf_counter() - t)
    med = {p: sorted(v)[len(v) // 2] for p, v in ts.items()}
    peak = sorted(rates)[len(rates) // 2]
    print(f"{cpu_name()}, torch capability {torch.backends.cpu.get_cpu_capability()}, fused isa {isa}"
          + (" (emulated AVX2)" if as_avx2 else ""))
    print(f"supernet step (fbnet-cifar, width 1.0, batch {b.SUPERNET_BATCH}, threads={threads}, median of {rounds}): "
          f"eager_cl {med['eager_cl']:.2f} s, fused {med['fused']:.2f} s, "
          f"speed-up {med['eager_cl'] / med['fused']:.2f}x")
    print(f"work {flops / 1e9:.2f} GFLOP a step (3 x the forward's, FlopCounterMode); fp32 GEMM rate {peak / 1e9:.1f} GFLOP/s; "
          + ", ".join(f"{p} {flops / med[p] / 1e9:.1f} GFLOP/s = {100 * flops / med[p] / peak:.1f} %" for p in PROVIDERS))
    out = OUT.with_name("ab_supernet_avx2.json") if as_avx2 else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(cpu=cpu_name(), torch_capability=torch.backends.cpu.get_cpu_capability(),
                                   fused_isa=isa, emulated_avx2=as_avx2, threads=threads, rounds_s=ts, median_s=med,
                                   step_gflop=flops / 1e9,
                                   gemm_gflops_rounds=[r / 1e9 for r in rates], gemm_gflops=peak / 1e9,
                                   timestamp=time.time()), indent=1))


if __name__ == "__main__":
    pos = [a for a in sys.argv[1:] if a != "--as-avx2"]
    main(int(pos[0]) if pos else 1, int(pos[1]) if len(pos) > 1 else 3, "--as-avx2" in sys.argv)
