"""Latency-table benchmarks: one pytest-benchmark case per deduplicated block.

    pytest bench/lut/bench_lut.py --benchmark-only --lut-out lut.json

times every (layer shape, candidate) block of ``--lut-space`` (default fbnet-cifar
at width 0.25) plus stem and head alone at its real input shape, and writes the
LUT in the ``fbnet-fast lut measure`` format (options in ``bench/lut_plugin.py``).
Each case: 3 warm-up rounds, then ``--lut-repeats`` rounds of ``inner`` calls, with
``inner`` picked so a round lasts ``--lut-min-sample-ms`` (the CLI's rule). Cases run
one block after another, not interleaved like the CLI; comparing the two LUTs with
``fbnet-fast lut diff`` shows what interleaving buys.
"""

from __future__ import annotations

import re
import time

import pytest
import torch

from lut_plugin import lut_settings


def pytest_generate_tests(metafunc):
    if "lut_job" not in metafunc.fixturenames:
        return
    from fbnet_fast.measure import block_jobs

    s = lut_settings(metafunc.config)
    timer = time.process_time if s.clock == "cpu" else time.perf_counter
    jobs = [j for g in block_jobs(s.space, batch_size=s.batch_size) for j in g]
    params = [pytest.param(j, id=re.sub(r"[^A-Za-z0-9_.-]+", "-", j.label or j.key),
                           marks=pytest.mark.benchmark(group=f"lut-{s.space.name}", timer=timer)) for j in jobs]
    metafunc.parametrize("lut_job", params)


def test_lut_block(benchmark, lut_job, lut_cfg, lut_record):
    from fbnet_fast.lut import LatencyEntry
    from fbnet_fast.measure import TorchCPUBackend
    from fbnet_fast.measure.remote_runner import CLOCKS, summarize

    cfg = lut_cfg
    backend = TorchCPUBackend(threads=cfg.threads, repeats=cfg.repeats, warmup=cfg.warmup,
                              min_sample_ms=cfg.min_sample_ms, clock=cfg.clock)
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.no_grad():
            fn = backend.prepare(lut_job)
        clock = CLOCKS[cfg.clock]
        for _ in range(cfg.warmup):
            fn()
        t0 = clock()
        fn()
        once = max(clock() - t0, 1e-7)
        inner = max(1, min(1000, int(cfg.min_sample_ms / (once * 1e3) + 1e-6)))
        benchmark.extra_info.update(job=lut_job.key, inner=inner, threads=cfg.threads, clock=cfg.clock)
        benchmark.pedantic(fn, rounds=cfg.repeats, iterations=inner, warmup_rounds=1)
    finally:
        torch.set_num_threads(old)
    stats = getattr(benchmark, "stats", None)
    if stats is None or not stats.stats.data:  # --benchmark-disable: ran once, nothing timed
        return
    lut_record(lut_job.key, LatencyEntry(**summarize([d * 1e3 for d in stats.stats.data])))
