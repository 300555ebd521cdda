"""Shared benchmark plumbing (generic: any bench/bench_<family>.py uses it).

* ``bench_*.py`` files are collected (pyproject's pytest section only names tests/).
* The ``record`` fixture appends tidy rows (suite, case, provider, mode, metric,
  value, q1, q3, unit, device, threads, timestamp, version) that are written at the
  end of the session to ``bench/results/<suite>.csv`` (override the folder with
  ``--bench-out``); BENCHMARKS.md quotes them.
* ``record_timing(benchmark, ...)`` turns a finished pytest-benchmark run into rows.
* ``--bench-compile`` enables the slow providers (torch.compile, ~30 s per shape).
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
from collections import defaultdict
from pathlib import Path

import pytest
import torch

_ROWS: dict[str, list[dict]] = defaultdict(list)
FIELDS = ["suite", "case", "provider", "mode", "metric", "value", "q1", "q3", "unit", "device", "threads",
          "timestamp", "version"]


def pytest_addoption(parser):
    g = parser.getgroup("fbnet-fast benchmarks")
    g.addoption("--bench-out", default=str(Path(__file__).parent / "results"),
                help="folder for the tidy CSV results (default bench/results)")
    g.addoption("--bench-compile", action="store_true", help="also benchmark torch.compile providers (slow)")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _device() -> str:
    from fbnet_fast.measure.core import cpu_name

    return f"{cpu_name()} x{os.cpu_count()}"


@pytest.fixture(scope="session")
def record(request):
    """``record(suite, case, provider, mode, metric, value, unit, q1=None, q3=None)``."""
    from fbnet_fast import __version__

    def add(suite, case, provider, mode, metric, value, unit, q1=None, q3=None):
        _ROWS[suite].append(dict(
            suite=suite, case=case, provider=provider, mode=mode, metric=metric, value=value, q1=q1, q3=q3,
            unit=unit, device=_device(), threads=torch.get_num_threads(),
            timestamp=_dt.datetime.now().isoformat(timespec="seconds"), version=__version__))

    return add


def record_timing(record, benchmark, suite, case, provider, mode):
    stats = getattr(benchmark, "stats", None)
    if stats is None or stats.stats is None:  # --benchmark-disable
        return
    s = stats.stats
    record(suite, case, provider, mode, "time", s.median, "s", q1=s.q1, q3=s.q3)


def pytest_sessionfinish(session, exitstatus):
    if not _ROWS:
        return
    out = Path(session.config.getoption("--bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    for suite, rows in _ROWS.items():
        path = out / f"{suite}.csv"
        # Merge with earlier runs (a subset run with -k replaces only its own rows).
        key = lambda r: (r["case"], r["provider"], r["mode"], r["metric"])  # noqa: E731
        new = {key(r) for r in rows}
        old = list(csv.DictReader(path.open())) if path.exists() else []
        rows = [r for r in old if key(r) not in new] + rows
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
pytest_plugins = ["lut_plugin"]  # the LUT suite options, bench/lut_plugin.py
