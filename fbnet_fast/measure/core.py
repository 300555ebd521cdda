"""The measurement driver shared by every back end: jobs, resume, progress, assembly.

A *job* is one block to time alone at its real input shape: a (layer shape,
candidate) pair, or the fixed stem or head. Layers with the same
:meth:`LayerSpec.shape_key` share their jobs, so identical blocks are measured
once (``fbnet-cifar`` at width 0.25: 22 x 9 = 198 entries from 10 x 9 + 2 = 92 jobs).

Jobs come in *groups*, the candidates of one layer shape, which a back end times
in interleaved rounds (see :mod:`fbnet_fast.measure.remote_runner`); the whole job list is
measured ``passes`` times (default 2) and each entry is its best pass. After every
group the driver writes the entries measured so far to ``<output>.partial``
atomically; a run that is interrupted (even killed) and started again with the same
output, back end and settings measures only what is missing.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blocks import build_block, build_head, build_stem
from ..errors import ConfigError, LUTError
from ..lut import LatencyEntry, LatencyTable, layer_shapes
from ..runs import atomic_write_text
from ..space import SearchSpace

__all__ = ["Job", "Backend", "ModelCache", "block_jobs", "job_key", "load_partial", "write_partial", "measure_lut",
           "measure_jobs", "cpu_name", "PARTIAL_SCHEMA"]

PARTIAL_SCHEMA = "fbnet-fast/lut-partial"


def cpu_name() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    from .remote_runner import cpu_model

    return cpu_model()


@dataclass(frozen=True)
class Job:
    """One module to time: ``build()`` makes it (eval mode), input ``shape`` is ``[N, C, H, W]``."""

    key: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    label: str = ""


def job_key(layer_key: tuple[int, int, int, int], candidate: str) -> str:
    """``"cin8-cout16-s2-in32/k3_e6"``: a readable key for a (layer shape, candidate) job."""
    c_in, c_out, stride, size = layer_key
    return f"cin{c_in}-cout{c_out}-s{stride}-in{size}/{candidate}"


def block_jobs(space: SearchSpace, *, batch_size: int = 1) -> list[list[Job]]:
    """The deduplicated jobs of ``space``: one group per distinct layer shape, then stem + head.

    Groups are in layer order; a job's ``label`` names the layers it stands for
    (``"L01-04 k3_e6"``).
    """
    layers = space.layers
    by_key: dict[tuple, list[int]] = {}
    for l in layers:
        by_key.setdefault(l.shape_key(), []).append(l.index)
    groups = []
    for key, idx in by_key.items():
        layer = layers[idx[0]]
        span = f"L{idx[0]:02d}" + (f"-{idx[-1]:02d}" if len(idx) > 1 else "")
        if len(idx) > 1 and idx != list(range(idx[0], idx[-1] + 1)):
            span = "L" + ",".join(f"{i:02d}" for i in idx)
        shape = (batch_size, layer.c_in, layer.in_size, layer.in_size)
        groups.append([Job(job_key(key, c), (lambda c=c, layer=layer: build_block(c, layer)), shape, f"{span} {c}")
                       for c in space.candidates])
    last = layers[-1]
    groups.append([
        Job("stem", lambda: build_stem(space), (batch_size, space.in_channels, space.input_size, space.input_size),
            "stem"),
        Job("head", lambda: build_head(space), (batch_size, last.c_out, last.out_size, last.out_size), "head"),
    ])
    return groups


class ModelCache:
    """Serialized models (ONNX, ``.pte``, TorchScript) made once per job and reused by later passes.

    Keyed by the job's key, its module's ``repr`` and its input shape: one back end instance
    may serve two spaces whose jobs share a key (``"stem"``) but not an architecture.

    With a :attr:`directory` (:meth:`Backend.cache_models`), every model made is also written there
    (atomically, named by a hash of ``tag`` and the key) and read back instead of made again: a
    killed ``lut fit`` that lowered 100 of its 200 networks to ``.pte`` (most of its time) starts
    again from the 101st. ``tag`` names what the bytes depend on beyond the module (format,
    dtype, calibration seed)."""

    def __init__(self, tag: str = "") -> None:
        self._models: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
        self.tag = tag
        self.directory: Path | None = None

    def get(self, job: Job, make: Callable[[nn.Module, tuple[int, ...]], bytes]) -> bytes:
        """``make(module, shape)`` of ``job``, the first time only."""
        module = job.build()
        key = (job.key, repr(module), tuple(job.shape))
        if key not in self._models:
            path = None
            if self.directory is not None:
                import hashlib

                digest = hashlib.sha256(repr((self.tag, *key)).encode()).hexdigest()[:32]
                path = self.directory / f"{digest}.bin"
                if path.is_file():
                    self._models[key] = path.read_bytes()
                    return self._models[key]
            self._models[key] = make(module, tuple(job.shape))
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                tmp.write_bytes(self._models[key])
                os.replace(tmp, path)
        return self._models[key]


class Backend:
    """Where and how blocks are timed. Subclasses set ``name`` and implement
    :meth:`prepare` (local back ends) or override :meth:`measure` (remote ones).

    Settings shared by all back ends: ``threads`` (intra-op threads, recorded),
    ``repeats`` samples per block after ``warmup`` calls, ``min_sample_ms`` per sample,
    ``passes`` over the whole job list (see :func:`measure_jobs`), and ``dtype``: the
    numeric format the blocks run in, one of the class's :attr:`DTYPES` (``"fp32"`` for
    all; ``"int8"`` where the runtime has a quantized path: ``onnxruntime``, ``executorch``,
    ``ssh`` with either runtime). Any other dtype is refused with one :class:`ConfigError`.
    """

    name = "abstract"
    DTYPES: tuple[str, ...] = ("fp32",)

    def __init__(self, *, threads: int | None = 1, repeats: int = 40, warmup: int = 3,
                 min_sample_ms: float = 1.0, clock: str = "auto", passes: int = 2, seed: int = 0,
                 dtype: str = "fp32") -> None:
        from ..runtimes import check_dtype
        from .remote_runner import resolve_clock

        check_dtype(dtype)
        if dtype not in self.DTYPES:
            from . import BACKENDS

            able = [n for n, c in BACKENDS.items() if dtype in c.DTYPES]
            raise ConfigError(f"back end {self.name!r} has no {dtype} path; {dtype} latency tables are measured "
                              f"with --backend {' or '.join(able)}")
        self.dtype = dtype
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        if repeats < 1:
            raise ConfigError(f"repeats must be >= 1, got {repeats}")
        if warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {warmup}")
        if not min_sample_ms >= 0:
            raise ConfigError(f"min_sample_ms must be >= 0, got {min_sample_ms}")
        if passes < 1:
            raise ConfigError(f"passes must be >= 1, got {passes}")
        self.passes = passes
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.repeats, self.warmup, self.min_sample_ms, self.seed = repeats, warmup, min_sample_ms, seed
        # how whole networks are timed (set by additivity.validate_lut; blocks keep 0 / False): untimed
        # calls before each sample, and a fresh random order of the group every round
        self.prime, self.shuffle = 0, False
        try:
            self.clock = resolve_clock(clock, self.threads)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    # ---- construction: from a LUT's device record, from the command line ------------------
    # Options every back end takes; a subclass adds its own with add_cli_options/cli_kwargs.
    SHARED_OPTIONS = ("threads", "repeats", "warmup", "min_sample_ms", "passes", "clock", "dtype")

    @classmethod
    def device_kwargs(cls, device: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments that re-create the back end a LUT's ``device`` record describes."""
        kw = {k: device[k] for k in cls.SHARED_OPTIONS if k != "clock" and k in device}
        if device.get("clock") in ("wall", "cpu"):  # "auto" resolved when measured; cuda-events is cuda's own
            kw["clock"] = device["clock"]
        return kw

    @classmethod
    def from_device(cls, device: Mapping[str, Any], **overrides: Any) -> "Backend":
        """The back end of ``device`` (a LUT's record, whose ``backend`` must be this class's name),
        with ``overrides`` taking precedence (e.g. ``passes=1``)."""
        if device.get("backend") != cls.name:
            raise ConfigError(f"a {device.get('backend')!r} device record cannot build back end {cls.name!r}")
        return cls(**{**cls.device_kwargs(device), **overrides})

    @classmethod
    def add_cli_options(cls, parser: Any) -> None:
        """Add the command-line options only this back end takes (default None: "not given")."""

    @classmethod
    def cli_kwargs(cls, args: Any) -> dict[str, Any]:
        """Constructor arguments from this back end's own options in ``args`` that were given."""
        return {}

    # ---- what a back end provides -------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The LUT's ``device`` description (backend, device_name, threads, runtime, ...)."""
        return {"backend": self.name, "device_name": cpu_name(), "threads": self.threads,
                "clock": self.clock, "host": platform.node(), "repeats": self.repeats, "warmup": self.warmup,
                "min_sample_ms": self.min_sample_ms, "passes": self.passes, "dtype": self.dtype}

    def settings(self) -> dict[str, Any]:
        """What must match for a partial LUT to be resumed with this back end. ``dtype`` is
        named when it is not fp32 (the only format before int8 tables), so partial files
        written before it existed still resume."""
        s = {"backend": self.name, "threads": self.threads, "clock": self.clock, "passes": self.passes}
        if self.dtype != "fp32":
            s["dtype"] = self.dtype
        return s

    def prepare(self, job: Job) -> Callable[[], object]:
        """A zero-argument callable that runs ``job``'s module once (local back ends)."""
        raise NotImplementedError

    def time_group(self, fns: Sequence[Callable[[], object]]) -> list[list[float]]:
        from .remote_runner import CLOCKS, time_interleaved

        return time_interleaved(fns, repeats=self.repeats, warmup=self.warmup, min_sample_ms=self.min_sample_ms,
                                clock=CLOCKS[self.clock], prime=self.prime,
                                shuffle_seed=self.seed if self.shuffle else None)

    def measure(self, groups: Sequence[Sequence[Job]], on_result: Callable[[Job, LatencyEntry], None]) -> None:
        """Time every job; call ``on_result`` for each as soon as its group is done."""
        from .remote_runner import summarize

        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for gi, group in enumerate(groups):
                torch.manual_seed(self.seed + gi)
                with torch.no_grad():
                    fns = [self.prepare(job) for job in group]
                samples = self.time_group(fns)
                del fns
                for job, s in zip(group, samples):
                    on_result(job, LatencyEntry(**summarize(s)))
        finally:
            torch.set_num_threads(old)

    def close(self) -> None:
        """Release resources (remote folders, sessions)."""

    def cache_models(self, directory: str | Path | None) -> None:
        """Keep the serialized models this back end makes in ``directory`` too (or stop, with
        ``None``), so that a run started again reads them back instead of exporting or lowering
        them again (see :class:`ModelCache`). Back ends that serialize nothing ignore it."""
        for v in vars(self).values():
            if isinstance(v, ModelCache):
                v.directory = Path(directory) if directory is not None else None


def _partial_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial")


def write_partial(path: Path, per_pass: Sequence[Mapping[str, LatencyEntry]], *, space: SearchSpace,
                  settings: Mapping[str, Any], batch_size: int, schema: str = PARTIAL_SCHEMA, **extra: Any) -> None:
    """Save the per-pass entries measured so far (atomically), as :func:`load_partial` reads them."""
    atomic_write_text(path, json.dumps({
        "schema": schema, "fingerprint": space.fingerprint, "space": space.name, "settings": dict(settings),
        "batch_size": batch_size, **extra,
        "passes": [{k: e.to_dict() for k, e in entries.items()} for entries in per_pass],
    }, indent=1) + "\n")


def load_partial(path: Path, space: SearchSpace, settings: Mapping[str, Any], batch_size: int,
                  schema: str = PARTIAL_SCHEMA) -> list[dict[str, LatencyEntry]]:
    """Per-pass entries of a partial file (``schema``) written by an interrupted run with the same
    settings, else []."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if (not isinstance(d, dict) or d.get("schema") != schema or d.get("fingerprint") != space.fingerprint
            or d.get("settings") != dict(settings) or d.get("batch_size") != batch_size
            or not isinstance(d.get("passes"), list)):
        return []
    out = []
    for p, entries in enumerate(d["passes"]):
        got = {}
        for k, v in (entries if isinstance(entries, dict) else {}).items():
            try:
                got[k] = LatencyEntry.from_dict(v, f"{path}: passes[{p}].{k}")
            except LUTError:
                continue  # a damaged entry is measured again
        out.append(got)
    return out


def measure_jobs(backend: Backend, groups: Sequence[Sequence[Job]], *, done: Mapping[str, LatencyEntry] | None = None,
                 done_passes: Sequence[Mapping[str, LatencyEntry]] = (), progress: bool = True,
                 on_update: Callable[[list[dict[str, LatencyEntry]]], None] | None = None,
                 desc: str = "measuring", best: str = "median_ms") -> dict[str, LatencyEntry]:
    """Run ``backend.passes`` passes over the jobs; returns one entry per job key.

    Each pass times every job (``repeats`` samples); a job's entry is the pass with the
    lowest median. Passes are a whole job list apart in time, so load that disturbs
    one layer shape's group for a few seconds reaches at most one of its passes, and
    extra load only ever adds time. Measured on this 2-core host under load 7-10: one
    pass left 17-54 % worst-entry differences between two consecutive LUTs, from a
    single disturbed group.

    Args:
        done: final entries already known (reused as they are, in every pass).
        done_passes: per-pass entries of an interrupted run (resume).
        on_update: called with the per-pass entries after each group (the driver saves
            the partial file there).
        best: the entry field (``"median_ms"`` or ``"p10_ms"``) whose lowest value picks a job's pass.
    """
    if best not in ("median_ms", "p10_ms"):
        raise ValueError(f"best must be 'median_ms' or 'p10_ms', got {best!r}")
    known = dict(done or {})
    per_pass: list[dict[str, LatencyEntry]] = [dict(known) for _ in range(backend.passes)]
    for p, entries in enumerate(list(done_passes)[:backend.passes]):
        per_pass[p].update(entries)
    todo_by_pass = []
    for p in range(backend.passes):
        todo = [[j for j in g if j.key not in per_pass[p]] for g in groups]
        todo_by_pass.append([g for g in todo if g])
    n = sum(len(g) for todo in todo_by_pass for g in todo)
    bar = tqdm(total=n, desc=desc, unit="block", disable=not progress or n == 0)
    try:
        for p, todo in enumerate(todo_by_pass):
            pending: dict[int, int] = {id(g): len(g) for g in todo}
            group_of = {j.key: id(g) for g in todo for j in g}

            def on_result(job: Job, entry: LatencyEntry, p: int = p) -> None:
                per_pass[p][job.key] = entry
                bar.update(1)
                if job.label:
                    bar.set_postfix_str(f"pass {p + 1}/{backend.passes} {job.label}", refresh=False)
                gid = group_of.get(job.key)
                if gid is not None:
                    pending[gid] -= 1
                    if pending[gid] == 0 and on_update is not None:
                        on_update(per_pass)

            if todo:
                backend.measure(todo, on_result)
            missing = [j.key for g in todo for j in g if j.key not in per_pass[p]]
            if missing:
                raise LUTError(f"back end {backend.name!r} returned no timing for {len(missing)} block(s), "
                               f"e.g. {missing[0]!r}")
    finally:
        bar.close()
    keys = [j.key for g in groups for j in g]
    return {k: min((pp[k] for pp in per_pass), key=lambda e: getattr(e, best)) for k in keys}


def get_backend_class(name: str) -> type[Backend]:
    """The back end class registered as ``name`` in :data:`fbnet_fast.measure.BACKENDS`."""
    from . import BACKENDS

    if name not in BACKENDS:
        raise ConfigError(f"unknown back end {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def get_backend(backend: str | Backend, **kw: Any) -> Backend:
    """A back end by name (``torch-cpu``, ``onnxruntime``, ``executorch``, ``cuda``, ``ssh``) or as given."""
    if isinstance(backend, Backend):
        return backend
    return get_backend_class(backend)(**kw)


def backend_from_device(device: Mapping[str, Any], *, source: str = "the LUT", **overrides: Any) -> Backend:
    """Re-create the back end a LUT's ``device`` record describes (``overrides`` win, e.g. ``passes=1``)."""
    name = device.get("backend")
    if name in (None, "given", "multi"):
        raise ConfigError(f"{source}: LUT device backend {name!r} names no machine to measure on; "
                          f"use a LUT measured with 'fbnet-fast lut measure'")
    return get_backend_class(name).from_device(device, **overrides)


def measure_lut(space: SearchSpace, *, backend: str | Backend = "torch-cpu", threads: int | None = 1,
                repeats: int = 40, warmup: int = 3, min_sample_ms: float = 1.0, clock: str = "auto",
                passes: int = 2, batch_size: int = 1,
                channels_last: bool = True, progress: bool = True, partial: LatencyTable | None = None,
                output: str | Path | None = None, resume: bool = True, seed: int = 0,
                **backend_options: Any) -> LatencyTable:
    """Measure every (layer, candidate) of ``space`` plus stem and head; returns the LUT.

    Args:
        backend: ``"torch-cpu"`` (PyTorch eager), ``"onnxruntime"``, ``"executorch"`` (XNNPACK),
            ``"cuda"``, ``"ssh"`` (``backend_options`` then name the board: ``host=``, ``port=``, ...),
            or a :class:`Backend` instance (its own settings then win over ``threads``, ``repeats``...).
            ``dtype="int8"`` in ``backend_options`` measures quantized blocks (``onnxruntime``,
            ``executorch``, ``ssh``; see :class:`Backend`).
        threads: intra-op threads while measuring (default 1; ``None`` keeps torch's
            current setting). One thread is the default because on a 2-core host shared
            with other work, a 2-thread parallel region waits for whichever thread the OS
            parked: a 0.13 ms block measured 0.24 ms median / 143 ms p90 with 2 threads
            and 0.13 / 0.16 ms with 1 (load average 8).
        repeats, warmup, min_sample_ms: the sampling rule of
            :func:`fbnet_fast.measure.remote_runner.time_interleaved`.
        clock: ``"auto"`` (process CPU time with one thread, wall time with more; see
            :data:`fbnet_fast.measure.remote_runner.CLOCKS` for why), ``"wall"`` or ``"cpu"``.
        passes: times the whole job list is measured; each entry is the pass with the
            lowest median (see :func:`measure_jobs`).
        batch_size: images per call (deployment latency is usually batch 1).
        channels_last: torch back ends run NHWC, the faster layout for depthwise convs here.
        partial: a finished or partial LUT of the same space whose entries are reused.
        output: where to write the LUT; while measuring, ``<output>.partial`` holds the
            entries so far (atomically rewritten after every layer shape) and a new run
            with ``resume=True`` continues from it. Removed once the LUT is written.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(backend, str):
        opts = dict(threads=threads, repeats=repeats, warmup=warmup, min_sample_ms=min_sample_ms, clock=clock,
                    passes=passes, seed=seed)
        if backend in ("torch-cpu", "cuda"):
            opts["channels_last"] = channels_last
        backend = get_backend(backend, **opts, **backend_options)
    elif backend_options:
        raise ConfigError(f"options {sorted(backend_options)} are for a back end given by name")
    groups = block_jobs(space, batch_size=batch_size)
    done: dict[str, LatencyEntry] = {}
    if partial is not None and partial.fingerprint == space.fingerprint:
        for l, layer in enumerate(space.layers):
            for c in space.candidates:
                if l < len(partial.layers) and c in partial.layers[l]:
                    done[job_key(layer.shape_key(), c)] = partial.layers[l][c]
        done.update({k: v for k, v in partial.fixed.items() if k in ("stem", "head")})
    ppath = _partial_path(output) if output is not None else None
    done_passes: list[dict[str, LatencyEntry]] = []
    if ppath is not None and resume and ppath.exists():
        done_passes = load_partial(ppath, space, backend.settings(), batch_size)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def save_partial(per_pass: list[dict[str, LatencyEntry]]) -> None:
        if ppath is not None:
            write_partial(ppath, per_pass, space=space, settings=backend.settings(), batch_size=batch_size,
                          created=created)

    try:
        results = measure_jobs(backend, groups, done=done, done_passes=done_passes, progress=progress,
                               on_update=save_partial, desc=f"LUT {space.name} on {backend.name}")
        device = backend.describe()
    finally:
        backend.close()
    device.update(batch_size=batch_size, input_size=space.input_size, created=created)
    device.setdefault("clock", backend.clock)
    device.setdefault("threads", backend.threads)
    table_layers = [{c: results[job_key(l.shape_key(), c)] for c in space.candidates} for l in space.layers]
    table = LatencyTable(space.name, space.fingerprint, space.input_size, list(space.candidates), table_layers,
                         fixed={"stem": results["stem"], "head": results["head"]}, device=device,
                         layer_shapes=layer_shapes(space))
    if output is not None:
        table.save(output)
        if ppath is not None:
            try:
                os.unlink(ppath)
            except FileNotFoundError:
                pass
    return table
