"""One single-path weight step (every layer one candidate, as once a search has decided them), fused vs reference.

    python bench/cpu/ab_single_path.py ARCH_JSON [--as-avx2] [--threads 1] [--rounds 15]

ARCH_JSON: a search's ``arch.json`` (read as ``fbnet-fast`` reads one). The supernet of its space, the
weights the exact one-hot of those blocks, as ``Searcher`` runs the epochs after every layer is decided;
batch 64, forward + cross-entropy + backward, the fused path (``impl="cpp"``) and the eager reference with the
same parameters, alternating, medians of ``--rounds``. ``--as-avx2`` holds torch, oneDNN and MKL to AVX2 and our
kernels to ``v3``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_wall import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arch", type=Path)
    p.add_argument("--as-avx2", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    ext = prepare(args.as_avx2, args.threads)
    import torch

    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.runs import load_architecture_file
    from fbnet_fast.supernet import Supernet

    space, arch = load_architecture_file(args.arch)
    w = torch.zeros(space.num_layers, len(space.candidates))
    w[range(space.num_layers), arch.indices(space)] = 1.0
    torch.manual_seed(0)
    nets = {k: Supernet(space, impl=k).to(memory_format=torch.channels_last) for k in ("cpp", "reference")}
    nets["reference"].load_state_dict(nets["cpp"].state_dict())
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    def step(net) -> None:
        net.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x, w), y).backward()

    for net in nets.values():
        step(net), step(net)
    ts: dict[str, list[float]] = {k: [] for k in nets}
    for r in range(args.rounds):
        for k in list(nets)[::1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            step(nets[k])
            ts[k].append(time.perf_counter() - t0)
    m = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
    print(f"cpu {cpu_name()}, torch {torch.backends.cpu.get_cpu_capability()}, fused ISA {ext.isa()}"
          f"{' (emulated AVX2)' if args.as_avx2 else ''}, threads {args.threads}; {args.arch}: "
          f"{sum(b != 'skip' for b in arch.blocks)} blocks, {sum(b == 'skip' for b in arch.blocks)} skips")
    print(f"single-path weight step, medians of {args.rounds}: fused {m['cpp']:.1f} ms, reference "
          f"{m['reference']:.1f} ms, {m['reference'] / m['cpp']:.2f}x")


if __name__ == "__main__":
    main()
