"""Measuring a latency table on the host CPU with PyTorch eager.

Each searchable layer's candidates (and the fixed stem and head) are built alone
at their real input shape and timed: warm-up, then ``repeats`` samples, each the
mean of enough back-to-back calls to last ``min_sample_ms``; median and 10/90th
percentiles are recorded. Identical blocks (same shape, same candidate) are
measured once. Work already measured (a partial LUT file) is reused.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .blocks import build_block, build_head, build_stem
from .errors import ConfigError
from .lut import LatencyEntry, LatencyTable, _layer_shapes
from .space import SearchSpace

__all__ = ["measure_lut", "time_module", "cpu_name"]


def cpu_name() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_module(fn: Callable[[], object], *, repeats: int = 30, warmup: int = 5,
                min_sample_ms: float = 1.0) -> LatencyEntry:
    """Median / p10 / p90 of ``fn()`` in ms over ``repeats`` samples.

    A sample is the mean of ``inner`` back-to-back calls, ``inner`` chosen after the
    warm-up so one sample lasts about ``min_sample_ms``: single calls of tiny blocks
    (~10 us) are dominated by timer and dispatch jitter.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(1, warmup)):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(1000, int(min_sample_ms / 1e3 / once)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
    t = torch.tensor(samples, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return LatencyEntry(float(q[1]), float(q[0]), float(q[2]), repeats)


def _entry_for(module: nn.Module, shape: tuple[int, ...], *, repeats: int, warmup: int,
               channels_last: bool) -> LatencyEntry:
    module.eval()
    x = torch.randn(shape)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return time_module(lambda: module(x), repeats=repeats, warmup=warmup)


def measure_lut(space: SearchSpace, *, threads: int | None = None, repeats: int = 30, warmup: int = 5,
                batch_size: int = 1, channels_last: bool = True, progress: bool = True,
                partial: LatencyTable | None = None, seed: int = 0) -> LatencyTable:
    """Measure every (layer, candidate) of ``space`` with PyTorch eager on the host CPU.

    Args:
        threads: intra-op threads during measurement (default: the current setting);
            recorded in the LUT's device description.
        batch_size: images per call (deployment latency is usually batch 1).
        channels_last: run blocks in NHWC, the faster layout for depthwise convs here.
        partial: a LUT for the same space whose entries are reused (resume).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        layers = space.layers
        cache: dict[tuple, LatencyEntry] = {}
        if partial is not None and partial.fingerprint == space.fingerprint:
            for l, layer in enumerate(layers):
                for c in space.candidates:
                    if c in partial.layers[l]:
                        cache[(layer.shape_key(), c)] = partial.layers[l][c]
        todo = sorted({(l.shape_key(), c) for l in layers for c in space.candidates} - set(cache))
        by_key = {l.shape_key(): l for l in layers}
        opts = dict(repeats=repeats, warmup=warmup, channels_last=channels_last)
        with torch.no_grad():
            for key, c in tqdm(todo, desc="measuring LUT", unit="block", disable=not progress):
                layer = by_key[key]
                block = build_block(c, layer)
                cache[(key, c)] = _entry_for(block, (batch_size, layer.c_in, layer.in_size, layer.in_size), **opts)
            stem = _entry_for(build_stem(space), (batch_size, space.in_channels, space.input_size, space.input_size),
                              **opts)
            last = layers[-1]
            head = _entry_for(build_head(space), (batch_size, last.c_out, last.out_size, last.out_size), **opts)
        table_layers = [{c: cache[(l.shape_key(), c)] for c in space.candidates} for l in layers]
        device = {
            "backend": "torch-cpu",
            "device_name": cpu_name(),
            "threads": torch.get_num_threads(),
            "runtime": f"torch {torch.__version__}",
            "batch_size": batch_size,
            "input_size": space.input_size,
            "memory_format": "channels_last" if channels_last else "contiguous",
            "host": platform.node(),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pid": os.getpid(),
        }
        return LatencyTable(space.name, space.fingerprint, space.input_size, list(space.candidates), table_layers,
                            fixed={"stem": stem, "head": head}, device=device, layer_shapes=_layer_shapes(space))
    finally:
        torch.set_num_threads(old_threads)
