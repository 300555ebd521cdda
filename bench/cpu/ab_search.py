"""End-to-end A/B: ``fbnet-fast search`` training steps with the fused mixed op vs ``--kernel reference``.

``python bench/cpu/ab_search.py [steps_per_phase] [threads]``: two :class:`fbnet_fast.search.Searcher`
objects with the command's defaults (fbnet-cifar, width 0.25, batch 64, the default data, soft
Gumbel, channels_last on CPU), identical seeds, one with ``kernel="fused"`` and one with
``kernel="reference"``, run ``_train_step`` alternately (A, B, A, B, ...) so a shared machine's load
falls on both alike: ``steps_per_phase`` weight steps, then as many theta steps (default 10 + 10, about
one epoch-equivalent of work at the default split sizes is ~100 steps; 20 is the sample). The LUT is a
constant table (latencies do not change the compute), so no LUT measurement runs. Prints the medians
and writes ``bench/results/ab_search.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fbnet_fast.lut import LatencyTable
from fbnet_fast.search import Searcher, SearchConfig
from fbnet_fast.space import load_space

OUT = Path(__file__).parents[1] / "results" / "ab_search.json"


def main(steps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    base = SearchConfig(progress=False, plots=False, threads=threads)
    space = load_space(base.space, width_mult=base.width_mult)
    lut = LatencyTable.from_matrix(space, torch.ones(space.num_layers, len(space.candidates)), fixed_ms=1.0)
    searchers = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = None
        for kernel in ("fused", "reference"):
            cfg = SearchConfig(progress=False, plots=False, threads=threads, kernel=kernel)
            s = Searcher(cfg, Path(tmp) / kernel, space=space, lut=lut, data=data, log=lambda m: None)
            data = s.data
            s.epoch = cfg.warmup_epochs  # past the warm-up: both phases run
            searchers[kernel] = s
        times = {k: {"w": [], "theta": []} for k in searchers}
        for phase in ("w", "theta"):
            for s in searchers.values():  # warm-up step, not timed
                s.phase, s.step = phase, 0
                s._train_step()
            for i in range(1, steps + 1):
                for kernel, s in searchers.items():
                    s.phase, s.step = phase, i
                    t = time.perf_counter()
                    s._train_step()
                    times[kernel][phase].append(time.perf_counter() - t)
    med = {k: {p: sorted(v)[len(v) // 2] for p, v in ph.items()} for k, ph in times.items()}
    tot = {k: sum(sum(v) for v in ph.values()) for k, ph in times.items()}
    for p in ("w", "theta"):
        print(f"{p:>5} step median: fused {med['fused'][p] * 1e3:.0f} ms, reference {med['reference'][p] * 1e3:.0f} ms, "
              f"fused/reference {med['fused'][p] / med['reference'][p]:.2f}x")
    print(f"{2 * steps} steps total: fused {tot['fused']:.1f} s, reference {tot['reference']:.1f} s, "
          f"fused/reference {tot['fused'] / tot['reference']:.2f}x (threads={threads})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(steps_per_phase=steps, threads=threads, config=base.to_dict(), times_s=times,
                                   median_s=med, total_s=tot, timestamp=time.time()), indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, int(sys.argv[2]) if len(sys.argv) > 2 else 1)
