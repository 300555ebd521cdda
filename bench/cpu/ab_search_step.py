"""One default-search weight step, fused vs eager channels_last (and optionally another checkout), A/B.

    python bench/cpu/ab_search_step.py [--threads 1 2] [--rounds 3] [--as-avx2] [--baseline DIR]

The step: fbnet-cifar at width 0.25 (the default search's supernet), batch 64, soft Gumbel weights
(all 9 candidates of the 22 layers), forward + cross-entropy + backward, channels_last. Every
measurement is a fresh process (so one provider's allocator state or thread pool cannot favour the
next) that runs 6 steps and reports the mean of the middle two of the last four; rounds alternate the
providers (``fused``, ``reference``, and ``baseline`` = the fused path of the checkout at ``--baseline``,
with its own build of ``fbnet_fast._C``, e.g. a ``git worktree`` of an older commit). Each process tunes
malloc as the ``fbnet-fast`` commands do (``fbnet_fast.malloc``), where its checkout has that. Prints the
medians over rounds and each one's speed-up over ``reference``.

``--as-avx2`` runs every process as an AVX2-only CPU would (torch, oneDNN and MKL held to AVX2, our
kernels' ``v3`` variant): an emulation on this CPU, named so in the output. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_wall import AVX2_ENV  # noqa: E402  (the restriction of the whole-search benchmark)

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time, torch
threads, impl, isa = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(threads)
try:  # as the fbnet-fast commands run (fbnet_fast/malloc.py); a checkout from before it has none
    from fbnet_fast.malloc import tune_malloc
    tune_malloc()
except ImportError:
    pass
from fbnet_fast.ops import _ext
if isa != "-":
    _ext.load().set_isa(isa)
from fbnet_fast.space import load_space
from fbnet_fast.supernet import Supernet
torch.manual_seed(0)
m = Supernet(load_space("fbnet-cifar", width_mult=0.25), impl=impl).to(memory_format=torch.channels_last).train()
x = torch.randn(64, 3, 32, 32).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
ts = []
for _ in range(6):
    w = m.sample_weights(5.0).detach()
    t0 = time.perf_counter()
    torch.nn.functional.cross_entropy(m(x, w), y).backward()
    ts.append(time.perf_counter() - t0)
ts = sorted(ts[2:])
print(json.dumps({"s": (ts[1] + ts[2]) / 2, "isa": _ext.load().isa() if _ext.available() else None,
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def _run(root: Path, threads: int, impl: str, as_avx2: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))  # and cwd=root: `python -c` puts the cwd first on sys.path
    if as_avx2:
        env.update(AVX2_ENV)
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), impl, "v3" if as_avx2 else "-"],
                         env=env, cwd=root, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--as-avx2", action="store_true")
    p.add_argument("--baseline", type=Path, default=None, help="another checkout (with its extension built)")
    args = p.parse_args()
    providers = [("fused", ROOT, "cpp"), ("reference", ROOT, "reference")]
    if args.baseline is not None:
        providers.insert(0, ("baseline", args.baseline.resolve(), "cpp"))
    times: dict[tuple[int, str], list[float]] = {}
    info = {}
    for r in range(args.rounds):
        for t in args.threads:
            for name, root, impl in providers:
                res = _run(root, t, impl, args.as_avx2)
                times.setdefault((t, name), []).append(res["s"])
                info = {"isa": res["isa"], "capability": res["capability"]}
                print(f"round {r + 1} threads {t} {name}: {res['s'] * 1e3:.0f} ms", file=sys.stderr)
    print(f"default-search weight step (fbnet-cifar w0.25, batch 64, soft), median of {args.rounds} rounds; "
          f"torch capability {info['capability']}, fused ISA {info['isa']}"
          + (" (emulated AVX2)" if args.as_avx2 else ""))
    for t in args.threads:
        ref = statistics.median(times[(t, "reference")])
        row = [f"{name} {statistics.median(times[(t, name)]) * 1e3:.0f} ms "
               f"({ref / statistics.median(times[(t, name)]):.2f}x)" for name, _, _ in providers]
        print(f"  {t} thread(s): " + "  ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
