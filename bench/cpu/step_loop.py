"""The A/Bs' supernet step in a loop, to profile it in steady state.

    perf record -g -D 6000 python bench/cpu/step_loop.py 40 [--as-avx2] [--frozen] [--width 0.25] [--batch 64]
                                                           [--threads 1]

The step of ``ab_so.py`` / ``ab_blas.py`` (fbnet-cifar on the fused kernels, channels last, every candidate soft;
``--frozen``: the theta step), three untimed warm-up steps, then ``N`` steps with the objects alive frozen out of
the collector's scans as the commands run them; prints the mean time a step. ``perf record -D`` (a delay in ms)
leaves the build and the warm-up out of the profile. Profile an unstripped build (``RelWithDebInfo``) for source
lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_blas import add_step_args, step_net  # noqa: E402
from search_wall import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("steps", type=int, help="steps to run after the warm-up")
    add_step_args(p, rounds=1)
    args = p.parse_args(argv)
    prepare(args.as_avx2, args.threads)
    import torch

    from fbnet_fast.malloc import long_lived_frozen

    net, x, y = step_net(args)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(net(x, w), y).backward()

    for _ in range(3):
        step()
    with long_lived_frozen():
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = (time.perf_counter() - t) / max(args.steps, 1)
    print(f"{dt * 1e3:.1f} ms a step ({args.steps} steps, threads {args.threads}"
          f"{', emulated AVX2' if args.as_avx2 else ''}{', theta step' if args.frozen else ''})")


if __name__ == "__main__":
    main()
