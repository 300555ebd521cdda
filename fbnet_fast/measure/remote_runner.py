#!/usr/bin/env python3
"""Self-contained block timer: the one file copied to a board by the SSH back end.

It depends on nothing from fbnet-fast (only the standard library plus the board's
``onnxruntime`` + ``numpy``, ``torch``, or ExecuTorch's python runtime ``executorch``
(with the ``torch`` it needs for its tensors)), so a board needs no install of this
project. A board without the manifest's runtime gets one line on stderr naming the
missing package, and exit status 3. The host imports the same timing functions (:func:`time_interleaved`,
:func:`summarize`) for its own back ends, so a LUT measured on the host and one
measured on a board use one sampling rule.

Usage on the board::

    python3 remote_runner.py MANIFEST.json

``MANIFEST.json``::

    {"runtime": "onnxruntime" | "torch" | "executorch", "threads": 1, "repeats": 40, "warmup": 3,
     "min_sample_ms": 1.0, "clock": "auto" | "wall" | "cpu", "seed": 0, "prime": 0, "shuffle_seed": null,
     "groups": [[{"key": "...", "file": "blocks/0.onnx", "shape": [1, 8, 32, 32]}, ...], ...]}

``file`` is relative to the manifest's folder (ONNX for onnxruntime, TorchScript
for torch, a ``.pte`` program for executorch). Output on stdout, one JSON object per line after a tag::

    DEVICE {"device_name": "...", "machine": "aarch64", "runtime": "onnxruntime 1.17.0", ...}
    RESULT {"key": "...", "median_ms": ..., "p10_ms": ..., "p90_ms": ..., "repeats": 30}

Results are flushed one group at a time so the host can show progress and save a
partial LUT while the board works.

Sampling rule: the blocks of one group (the candidates of one layer shape) are
timed in interleaved rounds: every round takes one sample of every block. Load
that comes and goes on the machine then lands on all candidates of a layer alike
instead of on whichever block happened to be running, so the *order* of the
candidates (what the search uses) is stable run to run. A sample is the mean of
``inner`` back-to-back calls, ``inner`` chosen so a sample lasts about
``min_sample_ms``: single calls of ~20 us blocks are dominated by timer jitter.
Whole networks (``lut fit`` / ``lut validate``) are timed with ``prime`` untimed calls
before each sample and a fresh order each round (``shuffle_seed``; see :func:`time_interleaved`).
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from typing import Callable, Sequence

__all__ = ["quantile", "summarize", "round_orders", "time_interleaved", "resolve_clock", "CLOCKS", "cpu_model", "main",
           "RUNTIMES", "MISSING_RUNTIME_EXIT"]

MISSING_RUNTIME_EXIT = 3

# "cpu" (process CPU time) is the default with one thread: on a host shared with
# other work the OS parks the timing process for whole time slices, which wall
# time counts and CPU time does not. Measured on a 2-core VM at load average ~9:
# the same 0.12 ms block gave medians 0.25 / 0.43 / 0.21 ms in three wall-clock
# runs (2 ms samples) and 0.115 / 0.120 / 0.122 ms in CPU time. With more threads
# CPU time sums over threads and is no latency, so "wall" is used.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def resolve_clock(clock: str, threads: int) -> str:
    """``"auto"`` -> ``"cpu"`` with one thread, else ``"wall"``; others as given."""
    if clock == "auto":
        return "cpu" if threads == 1 else "wall"
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'auto', 'wall' or 'cpu', got {clock!r}")
    return clock


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted sequence (numpy's default rule)."""
    if not sorted_xs:
        raise ValueError("quantile of an empty sequence")
    pos = (len(sorted_xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float]) -> dict:
    """``{median_ms, p10_ms, p90_ms, repeats}`` of per-call times in ms."""
    xs = sorted(float(x) for x in samples_ms)
    return {"median_ms": quantile(xs, 0.5), "p10_ms": quantile(xs, 0.1), "p90_ms": quantile(xs, 0.9),
            "repeats": len(xs)}


def round_orders(n: int, repeats: int, shuffle_seed: int | None = None):
    """The order in which each of ``repeats`` interleaved rounds visits ``n`` callables: as given, or
    (``shuffle_seed``) a fresh seeded random permutation every round. Shared by every timer."""
    order = list(range(n))
    rng = random.Random(shuffle_seed) if shuffle_seed is not None else None
    for _ in range(repeats):
        if rng is not None:
            rng.shuffle(order)
        yield order


def time_interleaved(fns: Sequence[Callable[[], object]], *, repeats: int, warmup: int = 3,
                     min_sample_ms: float = 1.0, max_inner: int = 1000,
                     clock: Callable[[], float] = time.perf_counter,
                     sync: Callable[[], object] | None = None, prime: int = 0,
                     shuffle_seed: int | None = None) -> list[list[float]]:
    """Per-call times in ms: ``repeats`` samples of each of ``fns``, taken in interleaved rounds.

    Args:
        fns: zero-argument callables, one per block.
        warmup: untimed calls of each callable first (allocator, caches, lazy init).
        min_sample_ms: a sample's target length; ``inner`` calls per sample are picked
            per callable from the slowest of two timed calls after the warm-up.
        clock: seconds, monotonic (a fake in tests).
        sync: called before every clock read (e.g. a device synchronise).
        prime: untimed calls right before every sample. In a round over many whole networks
            each one's weights and activations were evicted by the others since its last
            call; a primed sample times it warm, as a deployment that runs it repeatedly does.
        shuffle_seed: visit the callables in a fresh seeded random order every round (else
            always in the given order), so no callable always follows the same one (whose
            cache footprint would bias it the same way in every round and every run).

    Returns:
        ``samples[i]``: ``repeats`` per-call times in ms of ``fns[i]``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if prime < 0:
        raise ValueError(f"prime must be >= 0, got {prime}")
    sync = sync or (lambda: None)
    inner = []
    for fn in fns:
        for _ in range(max(0, warmup)):
            fn()
        once = 0.0
        for _ in range(2):
            sync()
            t0 = clock()
            fn()
            sync()
            once = max(once, clock() - t0)
        # + 1e-6: 1 ms / 0.1 ms must give 10 calls, not 9.999... -> 9
        inner.append(max(1, min(max_inner, int(min_sample_ms / (max(once, 1e-7) * 1e3) + 1e-6))))
    samples: list[list[float]] = [[] for _ in fns]
    for order in round_orders(len(fns), repeats, shuffle_seed):
        for i in order:
            fn, n = fns[i], inner[i]
            for _ in range(prime):
                fn()
            sync()
            t0 = clock()
            for _ in range(n):
                fn()
            sync()
            samples[i].append((clock() - t0) * 1e3 / n)
    return samples


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (x86 ``model name``, ARM ``Hardware``/``Model``)."""
    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    if k in ("model name", "Hardware", "Model", "cpu model") and v:
                        found.setdefault(k, v)
    except OSError:
        pass
    for k in ("model name", "Model", "Hardware", "cpu model"):
        if k in found:
            return found[k]
    return platform.processor() or platform.machine() or "unknown"


def _onnxruntime_factory(threads: int):
    import numpy as np
    import onnxruntime as ort

    def make(path: str, shape: Sequence[int], seed: int) -> Callable[[], object]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: int8 QDQ models leave unused initializers it warns about
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)
        feed = {name: x}
        return lambda: sess.run(None, feed)

    return make, f"onnxruntime {ort.__version__}"


def _torch_factory(threads: int):
    import torch

    torch.set_num_threads(threads)

    def make(path: str, shape: Sequence[int], seed: int) -> Callable[[], object]:
        m = torch.jit.load(path, map_location="cpu").eval()
        x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))

        def call():
            with torch.inference_mode():
                return m(x)

        return call

    return make, f"torch {torch.__version__}"


def _executorch_factory(threads: int):
    import importlib.metadata

    from executorch.extension.pybindings import portable_lib  # first: a board without it fails fast
    from executorch.runtime import Runtime
    import torch  # noqa: I001 - ExecuTorch's python runtime takes torch tensors

    # XNNPACK runs on ExecuTorch's own thread pool, sized here as the host back end sizes it
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(int(threads))
    runtime = Runtime.get()

    def make(path: str, shape: Sequence[int], seed: int) -> Callable[[], object]:
        program = runtime.load_program(path)  # kept alive by the closure: a Method does not own its Program
        method = program.load_method("forward")
        x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))

        def call(program=program):
            return method.execute([x])

        return call

    try:
        version = importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:  # a source build
        version = "unknown"
    return make, f"executorch {version} (xnnpack)"


# runtime -> (factory, the python package a board must have for it)
RUNTIMES = {"onnxruntime": (_onnxruntime_factory, "onnxruntime"), "torch": (_torch_factory, "torch"),
            "executorch": (_executorch_factory, "executorch")}


def _emit(tag: str, obj: dict) -> None:
    sys.stdout.write(f"{tag} {json.dumps(obj)}\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        sys.stderr.write("usage: remote_runner.py MANIFEST.json\n")
        return 2
    manifest_path = os.path.abspath(argv[0])
    with open(manifest_path) as f:
        man = json.load(f)
    base = os.path.dirname(manifest_path)
    threads = int(man.get("threads", 1))
    runtime = man.get("runtime", "onnxruntime")
    if runtime not in RUNTIMES:
        sys.stderr.write(f"remote_runner: unknown runtime {runtime!r} ({', '.join(RUNTIMES)})\n")
        return 2
    factory, package = RUNTIMES[runtime]
    try:
        make, runtime_desc = factory(threads)
    except ImportError as e:
        sys.stderr.write(f"remote_runner: runtime {runtime!r} needs the python package {package!r} on this board "
                         f"({platform.machine()}, python {platform.python_version()}, {sys.executable}), which "
                         f"cannot be imported ({type(e).__name__}: {e}); install it there (pip install {package}) or "
                         f"choose another --remote-runtime\n")
        return MISSING_RUNTIME_EXIT
    clock = resolve_clock(man.get("clock", "auto"), threads)
    _emit("DEVICE", {
        "device_name": cpu_model(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "host": platform.node(), "python": platform.python_version(), "runtime": runtime_desc,
        "threads": threads, "clock": clock,
    })
    seed = int(man.get("seed", 0))
    for group in man["groups"]:
        fns = [make(os.path.join(base, job["file"]), job["shape"], seed + i) for i, job in enumerate(group)]
        shuffle = man.get("shuffle_seed")
        samples = time_interleaved(fns, repeats=int(man["repeats"]), warmup=int(man.get("warmup", 3)),
                                   min_sample_ms=float(man.get("min_sample_ms", 1.0)), clock=CLOCKS[clock],
                                   prime=int(man.get("prime", 0)), shuffle_seed=None if shuffle is None else int(shuffle))
        for job, s in zip(group, samples):
            _emit("RESULT", {"key": job["key"], **summarize(s)})
        del fns
    return 0


if __name__ == "__main__":
    sys.exit(main())
