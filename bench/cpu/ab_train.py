"""``fbnet-fast train`` of sampled nets, this checkout's fused blocks vs its eager blocks vs another checkout, A/B.

    python bench/cpu/ab_train.py [--threads 1 2] [--rounds 3] [--epochs 2] [--baseline DIR] [--as-avx2]

Each measurement is one whole ``fbnet-fast train`` in a fresh process (fbnet-cifar at width 0.25,
the built-in generated data, 4,000 training and 1,000 held-out images, batch 64, the default
recipe), and the figure is the run's own ``elapsed_s`` (every epoch's training steps, evaluation
and checkpoint; start-up, data generation and any compile excluded) divided by its epochs. The
providers: ``fused`` (``--kernel auto``, the default), ``reference`` (``--kernel reference``: the
eager blocks, channels_last) and ``baseline`` (the checkout at ``--baseline``, e.g. a ``git
worktree`` of the commit the speed issue was filed against, with its own defaults). Rounds
alternate providers and architectures; prints per architecture and thread count the median
seconds per epoch and each provider's speed-up over ``baseline`` (or ``reference`` without one).

The architectures are three of the evidence study's random nets (results/pareto-seeds), one per
latency band, so they are the nets a ``study pareto`` spends its hours training.
``--as-avx2``: as an AVX2-only CPU would run it (emulated; see search_wall.py). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_wall import AVX2_ENV  # noqa: E402

from fbnet_fast.measure.core import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# results/pareto-seeds random nets of the 0.6, 0.75 and 0.9 bands (measured 0.20, 0.33, 0.43 ms on ORT)
ARCHS = {
    "band-0.6": "skip k3_e1_g2 k3_e1_g2 skip k3_e6 k3_e1_g2 k3_e3 k3_e3 k5_e3 k3_e1 k3_e1_g2 k3_e1_g2 k3_e3 k5_e6 "
                "k5_e1 skip skip k3_e1 k3_e6 k3_e1_g2 k3_e3 skip",
    "band-0.75": "skip k5_e3 k3_e1_g2 skip k5_e1 k5_e3 k5_e6 k5_e1_g2 skip k3_e6 k5_e1 k3_e1 k3_e1_g2 k3_e6 k5_e1_g2 "
                 "k5_e1 k3_e1_g2 k3_e3 k3_e1 k5_e1 k5_e1 k3_e1",
    "band-0.9": "k3_e3 skip k5_e1_g2 skip skip k3_e6 k5_e1_g2 k5_e6 k5_e6 k3_e3 k5_e6 k3_e1 k3_e3 k3_e1 k5_e1 k5_e1 "
                "k5_e6 k3_e1 skip k3_e3 k3_e3 k3_e1",
}


# the child: the CLI of whichever checkout is on PYTHONPATH, our kernels held to v3 under --as-avx2
CHILD = r"""
import sys
if sys.argv[1] == "v3":
    try:
        from fbnet_fast.ops import _ext
    except ImportError:  # a checkout from before the layout issue
        from fbnet_fast import _ext
    if _ext.available():
        _ext.load().set_isa("v3")
from fbnet_fast.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run(root: Path, arch_file: Path, threads: int, epochs: int, extra: list[str], as_avx2: bool) -> float:
    env = dict(os.environ, PYTHONPATH=str(root))  # and cwd=root: `python -c` puts the cwd first on sys.path
    if as_avx2:
        env.update(AVX2_ENV)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", CHILD, "v3" if as_avx2 else "-", "train", str(arch_file), "--space",
               "fbnet-cifar", "--width-mult", "0.25", "--num-train", "4000", "--num-val", "1000", "--epochs",
               str(epochs), "--threads", str(threads), "--no-progress", "--out", out, "--overwrite", *extra]
        subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True, text=True)
        summary = json.loads((Path(out) / "summary.json").read_text())
    return float(summary["elapsed_s"]) / int(summary["epochs"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--baseline", type=Path, default=None, help="another checkout (its fbnet_fast importable)")
    p.add_argument("--as-avx2", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    p.add_argument("--no-reference", action="store_true",
                   help="with --baseline: time only the baseline and this checkout's fused blocks (a third fewer runs)")
    args = p.parse_args()
    providers = [("fused", ROOT, ["--kernel", "auto"]), ("reference", ROOT, ["--kernel", "reference"])]
    if args.no_reference and args.baseline is not None:
        providers.pop()
    if args.baseline is not None:
        providers.insert(0, ("baseline", args.baseline.resolve(), []))
    base = providers[0][0] if args.baseline is not None else "reference"
    times: dict[tuple[str, int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name in args.archs:
            files[name] = Path(tmp) / f"{name}.json"
            files[name].write_text(json.dumps({"blocks": ARCHS[name].split(), "space": "fbnet-cifar"}))
        for r in range(args.rounds):
            for t in args.threads:
                for a in args.archs:
                    order = providers if r % 2 == 0 else providers[::-1]
                    for name, root, extra in order:
                        s = _run(root, files[a], t, args.epochs, extra, args.as_avx2)
                        times.setdefault((a, t, name), []).append(s)
                        print(f"round {r + 1} {a} threads {t} {name}: {s:.2f} s/epoch", file=sys.stderr)
    import torch

    cpu = cpu_name()
    print(f"fbnet-fast train, fbnet-cifar w0.25, 4000 + 1000 images, batch 64, {args.epochs} epoch(s) a run; "
          f"median of {args.rounds} rounds, s/epoch; {cpu}, torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}" + (" (emulated AVX2)" if args.as_avx2 else ""))
    for t in args.threads:
        for a in args.archs:
            ref = statistics.median(times[(a, t, base)])
            row = [f"{name} {statistics.median(times[(a, t, name)]):.2f} "
                   f"({ref / statistics.median(times[(a, t, name)]):.2f}x)" for name, _, _ in providers]
            print(f"  {t} thread(s) {a}: " + "  ".join(row))
    if args.json is not None:
        args.json.write_text(json.dumps([{"arch": a, "threads": t, "provider": n, "s_per_epoch": v}
                                         for (a, t, n), v in times.items()], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
