"""pytest plugin of the LUT benchmark suite (``bench/lut/bench_lut.py``).

Registered from ``bench/conftest.py`` (``pytest_plugins``). Options::

    pytest bench/lut/bench_lut.py --benchmark-only --lut-out lut.json
        [--lut-space fbnet-cifar] [--lut-width-mult 0.25] [--lut-threads 1]
        [--lut-batch-size 1] [--lut-repeats 40] [--lut-min-sample-ms 1.0]

Every deduplicated (layer shape, candidate) block, plus stem and head, is one
pytest-benchmark case; with ``--lut-out`` the per-call samples of every case are
turned into a LUT in exactly the format of ``fbnet-fast lut measure`` (the device
description says ``"backend": "torch-cpu"``, ``"measured_by": "pytest-benchmark"``).
With one thread the cases use ``time.process_time`` as their timer, as the CLI
does (see ``fbnet_fast.measure.remote_runner.CLOCKS``); with more, wall time.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

_RESULTS: dict = {}


def pytest_addoption(parser):
    g = parser.getgroup("fbnet-fast latency tables")
    g.addoption("--lut-out", default=None, help="write the LUT measured by bench_lut.py to this JSON file")
    g.addoption("--lut-space", default="fbnet-cifar", help="space of bench_lut.py (default: fbnet-cifar)")
    g.addoption("--lut-width-mult", type=float, default=0.25, help="width multiplier (default: 0.25)")
    g.addoption("--lut-threads", type=int, default=1, help="intra-op threads (default: 1)")
    g.addoption("--lut-batch-size", type=int, default=1, help="images per call (default: 1)")
    g.addoption("--lut-repeats", type=int, default=40, help="benchmark rounds per block (default: 40)")
    g.addoption("--lut-min-sample-ms", type=float, default=1.0,
                help="each round averages enough calls to last this long (default: 1.0)")


class LutSettings:
    def __init__(self, config):
        from fbnet_fast.space import load_space

        self.space = load_space(config.getoption("--lut-space"), width_mult=config.getoption("--lut-width-mult"))
        self.threads = config.getoption("--lut-threads")
        self.batch_size = config.getoption("--lut-batch-size")
        self.repeats = config.getoption("--lut-repeats")
        self.min_sample_ms = config.getoption("--lut-min-sample-ms")
        self.warmup = 3
        self.clock = "cpu" if self.threads == 1 else "wall"
        self.out = config.getoption("--lut-out")


def lut_settings(config) -> LutSettings:
    s = getattr(config, "_fbnet_lut_settings", None)
    if s is None:
        s = config._fbnet_lut_settings = LutSettings(config)
    return s


@pytest.fixture(scope="session")
def lut_cfg(request) -> LutSettings:
    """The ``--lut-*`` settings and the space."""
    return lut_settings(request.config)


@pytest.fixture(scope="session")
def lut_record():
    """``lut_record(job_key, LatencyEntry)``: keep a measured entry for ``--lut-out``."""
    return _RESULTS.__setitem__


def pytest_sessionfinish(session, exitstatus):
    out = session.config.getoption("--lut-out", None)
    if not out or not _RESULTS:
        return
    import platform

    import torch

    from fbnet_fast.lut import LatencyTable, layer_shapes
    from fbnet_fast.measure import block_jobs, cpu_name, job_key

    s = lut_settings(session.config)
    space = s.space
    needed = [j.key for g in block_jobs(space, batch_size=s.batch_size) for j in g]
    missing = [k for k in needed if k not in _RESULTS]
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if missing:
        msg = (f"--lut-out {out}: not written, {len(missing)} of {len(needed)} blocks were not benchmarked "
               f"(e.g. {missing[0]}); run all of bench/lut/bench_lut.py with --benchmark-only")
        if tr:
            tr.write_line(msg, red=True)
        return
    device = {"backend": "torch-cpu", "device_name": cpu_name(), "threads": s.threads, "clock": s.clock,
              "host": platform.node(), "runtime": f"torch {torch.__version__}", "memory_format": "channels_last",
              "batch_size": s.batch_size, "input_size": space.input_size, "repeats": s.repeats,
              "warmup": s.warmup, "min_sample_ms": s.min_sample_ms, "measured_by": "pytest-benchmark",
              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    layers = [{c: _RESULTS[job_key(l.shape_key(), c)] for c in space.candidates} for l in space.layers]
    table = LatencyTable(space.name, space.fingerprint, space.input_size, list(space.candidates), layers,
                         fixed={"stem": _RESULTS["stem"], "head": _RESULTS["head"]}, device=device,
                         layer_shapes=layer_shapes(space))
    table.save(out)
    if tr:
        tr.write_line(f"wrote LUT {out}: {space.name} ({space.fingerprint}), {len(needed)} blocks, "
                      f"fastest architecture {table.min_latency():.4f} ms")


def pytest_collection_modifyitems(session, config, items):
    # bench/conftest.py collects bench_*.py itself, so naming this file on the command
    # line (pytest bench/lut/bench_lut.py) collects it twice; keep one of each LUT case.
    seen, keep = set(), []
    for item in items:
        if "bench_lut.py::" in item.nodeid:
            if item.nodeid in seen:
                continue
            seen.add(item.nodeid)
        keep.append(item)
    items[:] = keep
