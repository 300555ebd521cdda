"""Latency look-up tables: the documented JSON format, validation, expected latency.

A LUT holds one measured latency per (searchable layer, candidate) of one search
space on one device, plus the fixed stem and head. The file (schema version 2)::

    {
      "schema": "fbnet-fast/lut",
      "schema_version": 2,
      "space": {"name": "fbnet-cifar", "fingerprint": "3bfadf277e0dfa93",
                "input_size": 32, "num_layers": 22},
      "device": {"backend": "torch-cpu", "device_name": "Intel(R) Xeon(R) Processor",
                 "threads": 1, "runtime": "torch 2.13.0+cpu", "batch_size": 1,
                 "input_size": 32, "clock": "cpu", "repeats": 40, "passes": 2,
                 "warmup": 3, "min_sample_ms": 1.0, "created": "2026-11-25T07:00:00Z", ...},
      "candidates": ["k3_e1", ..., "skip"],
      "fixed": {"stem": ENTRY, "head": ENTRY},
      "layers": [{"index": 0, "c_in": 8, "c_out": 8, "stride": 1, "in_size": 32,
                  "latency": {"k3_e1": ENTRY, ...}}, ...],
      "correction": null | {"offset_ms": 0.1, "scale": 1.05, "fitted_on": 40, ...},
      "fit": null | {"method": ..., "networks": 200, "lambda": 1.0, "heldout": {...}, ...}
    }

    ENTRY = {"median_ms": 0.042, "p10_ms": 0.040, "p90_ms": 0.047, "repeats": 40}

Fields:

* ``schema``, ``schema_version``: ``"fbnet-fast/lut"``, 2 (version 1, the same without
  ``fit``, is still read). Other values are refused.
* ``space.fingerprint``: :attr:`SearchSpace.fingerprint` (resolved layer shapes after the
  width multiplier, candidates in order, stem/head widths, input size). A LUT is only
  used for a space with the same fingerprint.
* ``device``: free-form description of where and how it was measured. Written by
  :mod:`fbnet_fast.measure`: ``backend`` (``torch-cpu``, ``onnxruntime``, ``cuda``, ``ssh``,
  or ``given`` for hand-made tables), ``device_name`` (CPU model, or GPU name for
  ``cuda``), ``threads`` (intra-op threads, fixed while measuring), ``runtime``
  (``"torch 2.13.0"``, ``"onnxruntime 1.22.0"``), ``batch_size``, ``input_size``
  (resolution), ``clock`` (``cpu`` process time, ``wall``, or ``cuda-events``), the
  sampling settings ``repeats``/``warmup``/``min_sample_ms``, ``created`` (UTC);
  ``ssh`` adds ``board`` (``user@host:port``), ``format`` (``onnx``/``torchscript``) and
  ``board_*`` (machine, python, cpu_count); ``memory_format`` for torch back ends.
* ``candidates``: the column order of this file; every layer has exactly these entries,
  each name once. Entries are always read by name: a LUT whose list is the space's in
  another order is valid, and :meth:`LatencyTable.check_space` (run by ``load`` and
  ``from_dict`` when given the space) re-orders its columns to the space's, so a candidate
  index means the same block in the LUT as in the space.
* ``fixed``: stem and head, measured alone like the blocks (added to every prediction).
* ``layers[i]``: the layer's shape (``c_in``, ``c_out``, ``stride``, ``in_size``: input
  height = width) and one ENTRY per candidate. Layers of the same shape share one
  measurement.
* ENTRY: median and 10th/90th percentiles in ms of ``repeats`` samples of the block's
  per-call time (a bare number is read as a given value with ``repeats`` 0).
* ``correction`` (written by ``fbnet-fast lut validate``, the additivity study) maps a
  LUT sum to a predicted end-to-end latency:
  ``pred = scale * (sum of entries + fixed) + offset_ms``. The search uses it when
  present (:meth:`LatencyTable.predict`). Extra keys record the fit (``fitted_on``,
  ``median_abs_pct_error_before``/``_after``, ``kendall_tau``).
* ``fit`` (written by ``fbnet-fast lut fit``): the entries were fitted to whole networks
  measured on the same back end (:mod:`fbnet_fast.measure.fit`); records the method, the
  number of networks, the regularisation chosen by cross-validation, the held-out errors of
  the block-wise sum, its correction and the fitted table, and the block-wise entries it
  started from. A fitted table carries no ``correction``.

An interrupted ``lut measure`` leaves ``OUTPUT.partial`` next to the output:
``{"schema": "fbnet-fast/lut-partial", "fingerprint", "settings", "batch_size",
"passes": [{JOB_KEY: ENTRY}, ...]}`` (one object per measuring pass) with ``JOB_KEY`` =
``"cin8-cout16-s2-in32/k3_e6"``, ``"stem"`` or ``"head"``; it is not a LUT and is never
loaded as one.

:meth:`LatencyTable.load` validates everything and raises one :class:`LUTError`
naming the file and the bad entry (missing layer or candidate, wrong fingerprint,
negative or non-finite value, wrong schema).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .errors import LUTError
from .runs import atomic_write_text
from .space import SearchSpace

__all__ = ["LatencyEntry", "LatencyTable", "SCHEMA", "SCHEMA_VERSION", "layer_shapes"]

SCHEMA = "fbnet-fast/lut"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
_ENTRY_KEYS = ("median_ms", "p10_ms", "p90_ms", "repeats")


@dataclass(frozen=True)
class LatencyEntry:
    """One measured latency: median and 10th/90th percentiles in ms over ``repeats``."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int

    @classmethod
    def constant(cls, ms: float) -> "LatencyEntry":
        """An entry for a value that was given, not measured (repeats 0)."""
        return cls(float(ms), float(ms), float(ms), 0)

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "repeats": self.repeats}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "LatencyEntry":
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            d = {"median_ms": d, "p10_ms": d, "p90_ms": d, "repeats": 0}
        if not isinstance(d, Mapping):
            raise LUTError(f"{where}: expected an object with {list(_ENTRY_KEYS)}, got {type(d).__name__}")
        missing = [k for k in _ENTRY_KEYS if k not in d]
        if missing:
            raise LUTError(f"{where}: missing field(s) {missing}")
        vals = {}
        for k in _ENTRY_KEYS[:3]:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise LUTError(f"{where}.{k}: latency must be a finite number >= 0 ms, got {v!r}")
            vals[k] = float(v)
        r = d["repeats"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise LUTError(f"{where}.repeats: must be an integer >= 0, got {r!r}")
        return cls(vals["median_ms"], vals["p10_ms"], vals["p90_ms"], r)


@dataclass
class LatencyTable:
    """A validated LUT. ``layers[l][candidate]`` is a :class:`LatencyEntry`."""

    space_name: str
    fingerprint: str
    input_size: int
    candidates: list[str]
    layers: list[dict[str, LatencyEntry]]
    fixed: dict[str, LatencyEntry] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    layer_shapes: list[dict[str, int]] = field(default_factory=list)
    correction: dict[str, float] | None = None
    source: str = "<memory>"
    fit: dict[str, Any] | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_matrix(cls, space: SearchSpace, ms: Any, *, fixed_ms: float = 0.0,
                    device: Mapping[str, Any] | None = None) -> "LatencyTable":
        """A LUT from a ``[L, K]`` array of given latencies (tests, hand-made tables)."""
        t = torch.as_tensor(ms, dtype=torch.float64)
        if t.shape != (space.num_layers, len(space.candidates)):
            raise LUTError(f"latency matrix must be [{space.num_layers}, {len(space.candidates)}], got {list(t.shape)}")
        layers = [{c: LatencyEntry.constant(float(t[l, i])) for i, c in enumerate(space.candidates)}
                  for l in range(space.num_layers)]
        return cls(space.name, space.fingerprint, space.input_size, list(space.candidates), layers,
                   fixed={"stem": LatencyEntry.constant(fixed_ms), "head": LatencyEntry.constant(0.0)},
                   device=dict(device or {"backend": "given"}),
                   layer_shapes=layer_shapes(space))

    # ---- numbers the search uses --------------------------------------------------------
    def matrix(self, candidates: list[str] | None = None) -> torch.Tensor:
        """``[L, K]`` median latencies in ms, columns in ``candidates`` order (default: the LUT's)."""
        cands = candidates or self.candidates
        return torch.tensor([[layer[c].median_ms for c in cands] for layer in self.layers], dtype=torch.float64)

    @property
    def fixed_ms(self) -> float:
        """Stem + head latency (a constant the architecture does not change)."""
        return sum(e.median_ms for e in self.fixed.values())

    def predict(self, block_sum_ms: torch.Tensor | float) -> torch.Tensor | float:
        """End-to-end latency predicted from a sum of block latencies (fixed part included)."""
        total = block_sum_ms + self.fixed_ms
        if self.correction:
            return self.correction["scale"] * total + self.correction["offset_ms"]
        return total

    def expected_latency(self, weights: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """``LAT = sum_l sum_i weights[l, i] * LUT[l][i]`` (+ fixed, corrected), differentiable.

        Args:
            weights: ``[L, K]`` Gumbel weights or probabilities.
            matrix: the cached ``[L, K]`` LUT on ``weights``' device (saves a transfer per step).
        """
        m = self.matrix().to(weights) if matrix is None else matrix
        return self.predict((weights * m).sum())

    def architecture_latency(self, blocks: Sequence[int | str]) -> float:
        """Predicted latency in ms of one architecture: a block name, or a column index, per layer.

        Indices are positions in :attr:`candidates`, which is the space's order once the
        table was checked against the space (:meth:`check_space`); names need no such care.
        """
        if len(blocks) != len(self.layers):
            raise LUTError(f"{self.source}: an architecture of {len(blocks)} layers for a LUT of {len(self.layers)}")
        names = [b if isinstance(b, str) else self.candidates[b] for b in blocks]
        for l, name in enumerate(names):
            if name not in self.layers[l]:
                raise LUTError(f"{self.source}: layers[{l}] has no entry for block {name!r}")
        return float(self.predict(sum(self.layers[l][name].median_ms for l, name in enumerate(names))))

    def min_latency(self) -> float:
        """The lowest latency any architecture of the space can reach under this LUT."""
        return float(self.predict(float(self.matrix().min(dim=1).values.sum())))

    def max_latency(self) -> float:
        """The highest latency any architecture of the space can reach under this LUT."""
        return float(self.predict(float(self.matrix().max(dim=1).values.sum())))

    # ---- checks -------------------------------------------------------------------------
    def find_space(self, name: str | None = None, width_mult: float | None = None) -> SearchSpace:
        """The search space this LUT was measured for: ``name`` (default: the LUT's own space name)
        at ``width_mult``, or, without one, at the first common width multiplier whose resolved
        space has the LUT's fingerprint. Raises :class:`LUTError` when none matches."""
        from .space import load_space

        name = name or self.space_name
        if width_mult is not None:
            return load_space(name, width_mult=width_mult)
        for wm in (0.25, 1.0, 0.5, 0.75, 0.35, 1.25, 1.5, 2.0):
            space = load_space(name, width_mult=wm)
            if space.fingerprint == self.fingerprint:
                return space
        raise LUTError(f"{self.source}: no width multiplier of space {name!r} matches the LUT's fingerprint "
                       f"{self.fingerprint}; pass --space and --width-mult")

    def check_space(self, space: SearchSpace) -> None:
        """Raise :class:`LUTError` unless this LUT covers exactly ``space``; then take the space's column order.

        After this, :attr:`candidates` is ``space.candidates`` (the entries are keyed by name,
        so nothing else changes): a candidate index, a ``[L, K]`` weight matrix and
        :meth:`matrix` all mean the same block for the table as for the space, whatever
        order the file listed them in.
        """
        if self.fingerprint != space.fingerprint:
            raise LUTError(
                f"{self.source}: LUT is for space {self.space_name!r} with fingerprint {self.fingerprint}, "
                f"but the search uses space {space.name!r} with fingerprint {space.fingerprint} "
                f"(widths, input size or candidates differ); measure a LUT for this space with 'fbnet-fast lut measure'"
            )
        if len(self.layers) != space.num_layers:
            raise LUTError(f"{self.source}: LUT has {len(self.layers)} layers, space {space.name!r} has {space.num_layers}")
        for l, layer in enumerate(self.layers):
            for c in space.candidates:
                if c not in layer:
                    raise LUTError(f"{self.source}: layers[{l}] has no entry for candidate {c!r}")
        self.candidates = list(space.candidates)

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        shapes = self.layer_shapes or [{} for _ in self.layers]
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "space": {"name": self.space_name, "fingerprint": self.fingerprint,
                      "input_size": self.input_size, "num_layers": len(self.layers)},
            "device": self.device,
            "candidates": list(self.candidates),
            "fixed": {k: e.to_dict() for k, e in self.fixed.items()},
            "layers": [{"index": l, **shapes[l], "latency": {c: layer[c].to_dict() for c in self.candidates}}
                       for l, layer in enumerate(self.layers)],
            "correction": self.correction,
            "fit": self.fit,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "<dict>", space: SearchSpace | None = None) -> "LatencyTable":
        if not isinstance(d, Mapping):
            raise LUTError(f"{source}: a LUT must be a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise LUTError(f"{source}: field 'schema' must be {SCHEMA!r}, got {d.get('schema')!r}")
        if d.get("schema_version") not in READABLE_VERSIONS:
            raise LUTError(
                f"{source}: schema_version {d.get('schema_version')!r} is not supported (this fbnet-fast reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        sp = d.get("space")
        if not isinstance(sp, Mapping) or not isinstance(sp.get("fingerprint"), str):
            raise LUTError(f"{source}: field 'space' must be an object with a 'fingerprint' string")
        cands = d.get("candidates")
        if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
            raise LUTError(f"{source}: field 'candidates' must be a non-empty list of block names")
        dup = sorted({c for c in cands if cands.count(c) > 1})
        if dup:
            raise LUTError(f"{source}: field 'candidates' names {dup} more than once; each block must appear once")
        raw_layers = d.get("layers")
        if not isinstance(raw_layers, list) or not raw_layers:
            raise LUTError(f"{source}: field 'layers' must be a non-empty list")
        layers, shapes = [], []
        for l, raw in enumerate(raw_layers):
            where = f"{source}: layers[{l}]"
            if not isinstance(raw, Mapping) or not isinstance(raw.get("latency"), Mapping):
                raise LUTError(f"{where}: expected an object with a 'latency' object")
            if raw.get("index", l) != l:
                raise LUTError(f"{where}: 'index' is {raw.get('index')!r}, expected {l} (layers must be in order)")
            lat = raw["latency"]
            entries = {}
            for c in cands:
                if c not in lat:
                    raise LUTError(f"{where}: no entry for candidate {c!r}")
                entries[c] = LatencyEntry.from_dict(lat[c], f"{where}.latency.{c}")
            extra = sorted(set(lat) - set(cands))
            if extra:
                raise LUTError(f"{where}: entries {extra} are not in the LUT's 'candidates' list")
            layers.append(entries)
            shapes.append({k: raw[k] for k in ("c_in", "c_out", "stride", "in_size") if k in raw})
        fixed_raw = d.get("fixed", {}) or {}
        if not isinstance(fixed_raw, Mapping):
            raise LUTError(f"{source}: field 'fixed' must be an object like {{'stem': ENTRY, 'head': ENTRY}}")
        fixed = {k: LatencyEntry.from_dict(v, f"{source}: fixed.{k}") for k, v in fixed_raw.items()}
        corr = d.get("correction")
        if corr is not None:
            if not isinstance(corr, Mapping):
                raise LUTError(f"{source}: field 'correction' must be null or {{offset_ms, scale}}")
            for k in ("offset_ms", "scale"):
                v = corr.get(k)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise LUTError(f"{source}: correction.{k} must be a finite number, got {v!r}")
            if corr["scale"] <= 0:
                raise LUTError(f"{source}: correction.scale must be > 0, got {corr['scale']!r}")
            corr = dict(corr)
        device = d.get("device", {})
        if not isinstance(device, Mapping):
            raise LUTError(f"{source}: field 'device' must be an object")
        fit = d.get("fit")
        if fit is not None and not isinstance(fit, Mapping):
            raise LUTError(f"{source}: field 'fit' must be null or an object")
        table = cls(
            space_name=str(sp.get("name", "")), fingerprint=sp["fingerprint"],
            input_size=int(sp.get("input_size", 0) or 0), candidates=list(cands), layers=layers,
            fixed=fixed, device=dict(device), layer_shapes=shapes, correction=corr, source=source,
            fit=dict(fit) if fit is not None else None,
        )
        if space is not None:
            table.check_space(space)
        return table

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None) -> "LatencyTable":
        """Read and validate ``path``; with ``space``, also check it covers that space."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise LUTError(f"LUT file {str(path)!r} does not exist") from None
        except OSError as e:
            raise LUTError(f"cannot read LUT file {str(path)!r}: {e.strerror}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise LUTError(f"LUT file {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        return cls.from_dict(d, source=str(path), space=space)


def layer_shapes(space: SearchSpace) -> list[dict[str, int]]:
    """Per searchable layer, the shape fields a LUT records (``c_in``, ``c_out``, ``stride``, ``in_size``)."""
    return [{"c_in": l.c_in, "c_out": l.c_out, "stride": l.stride, "in_size": l.in_size} for l in space.layers]
