"""Multi-target search: one latency term for several devices' LUTs at once.

FBNet searches one net per device (its Table 4: FBNet-iPhoneX vs FBNet-S8). A model that
ships to several devices needs one net that is good on all of them. :class:`MultiTargetLatency`
combines ``D`` latency tables of the same space into the one latency ``LAT`` that
:class:`~fbnet_fast.loss.LatencyLoss` turns into ``alpha * log(LAT)^beta``:

* ``combine="mean"`` (default): a weighted sum of the per-device log latencies,
  ``log LAT = sum_d w_d log(LAT_d * r / r_d)``, i.e. ``LAT`` is the weighted geometric
  mean of the normalised device latencies. Its gradient is ``sum_d w_d grad(LAT_d)/LAT_d``:
  each device pulls by its *relative* saving, so a device whose blocks are ten times
  faster (ORT vs eager torch here) counts as much as a slow one.
* ``combine="max"``: the worst case, ``LAT = max_d LAT_d * r / r_d``; only the device that
  is currently worst (relative to its reference) pulls.

Normalisation: ``r_d`` is device ``d``'s expected latency under uniform block choice (the
search's starting point) and ``r`` their weighted geometric mean, so at the start every
device reads ``r`` ms and the combined value stays in ms-like units (the loss's
``log(LAT) > 0`` condition and unit choice work as for one LUT).

The object offers what the search reads from a :class:`~fbnet_fast.lut.LatencyTable`
(``matrix``, ``expected_latency``, ``architecture_latency``, ``min_latency``,
``check_space``, ``layers``, ``fixed_ms``, ``save``) plus :meth:`per_target_latency`,
the per-device report. Saved as ``{"schema": "fbnet-fast/lut-multi", "combine",
"weights", "names", "tables": [LUT, ...]}``; :func:`load_latency_model` reads either
kind, or a comma-separated list of LUT files (``--lut a.json,b.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import ConfigError, LUTError
from .lut import LatencyEntry, LatencyTable
from .runs import atomic_write_text
from .space import SearchSpace

__all__ = ["MultiTargetLatency", "load_latency_model", "parse_weights", "MULTI_SCHEMA", "COMBINE_MODES"]

MULTI_SCHEMA = "fbnet-fast/lut-multi"
COMBINE_MODES = ("mean", "max")


def parse_weights(spec: str | Sequence[float] | None, n: int) -> list[float]:
    """``"1,3"`` or ``[1, 3]`` -> weights normalised to sum 1; ``None`` -> equal weights."""
    if spec is None or spec == "":
        return [1.0 / n] * n
    try:
        vals = [float(v) for v in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise ConfigError(f"LUT weights must be comma-separated numbers, got {spec!r}") from None
    if len(vals) != n:
        raise ConfigError(f"{len(vals)} LUT weight(s) given for {n} LUT(s)")
    if not all(math.isfinite(v) and v >= 0 for v in vals) or sum(vals) <= 0:
        raise ConfigError(f"LUT weights must be >= 0 and not all 0, got {spec!r}")
    s = sum(vals)
    return [v / s for v in vals]


class MultiTargetLatency:
    """``D`` LUTs of one space combined into one latency (see the module docstring).

    Args:
        tables: the per-device LUTs (same fingerprint).
        weights: per-device weights (normalised to sum 1; default equal).
        combine: ``"mean"`` (weighted log-latency sum) or ``"max"`` (worst case).
        names: a label per device (default: the LUT's ``backend``, dtype unless fp32, and threads).
    """

    def __init__(self, tables: Sequence[LatencyTable], *, weights: Sequence[float] | str | None = None,
                 combine: str = "mean", names: Sequence[str] | None = None) -> None:
        if len(tables) < 2:
            raise ConfigError(f"a multi-target latency needs at least 2 LUTs, got {len(tables)}")
        if combine not in COMBINE_MODES:
            raise ConfigError(f"LUT combination must be one of {COMBINE_MODES}, got {combine!r}")
        fps = {t.fingerprint for t in tables}
        if len(fps) != 1:
            raise LUTError("the LUTs of a multi-target search must be for the same space; fingerprints "
                           + ", ".join(f"{t.source}: {t.fingerprint}" for t in tables))
        self.tables = list(tables)
        self.weights = parse_weights(weights, len(tables))
        self.combine = combine
        self.names = list(names) if names else [_default_name(t, i) for i, t in enumerate(tables)]
        if len(self.names) != len(tables):
            raise ConfigError(f"{len(self.names)} names for {len(tables)} LUTs")
        cands = self.tables[0].candidates
        # r_d: each device's latency at the uniform architecture, the search's start.
        self.ref_ms = [float(t.predict(float(t.matrix(cands).mean(dim=1).sum()))) for t in self.tables]
        self.common_ms = math.exp(sum(w * math.log(r) for w, r in zip(self.weights, self.ref_ms)))
        self.source = " + ".join(t.source for t in self.tables)

    # ---- what LatencyTable offers ------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.tables[0].fingerprint

    @property
    def candidates(self) -> list[str]:
        return self.tables[0].candidates

    @property
    def device(self) -> dict[str, Any]:
        return {"backend": "multi", "combine": self.combine, "weights": self.weights,
                "targets": [{"name": n, **t.device} for n, t in zip(self.names, self.tables)]}

    def check_space(self, space: SearchSpace) -> None:
        for t in self.tables:
            t.check_space(space)

    def matrix(self, candidates: list[str] | None = None) -> torch.Tensor:
        """``[D, L, K]``: the per-device ``[L, K]`` medians, stacked."""
        return torch.stack([t.matrix(candidates or self.candidates) for t in self.tables])

    def _combine(self, per_device: torch.Tensor) -> torch.Tensor:
        """``[D]`` (or ``[D, ...]``) device latencies in ms -> the combined latency."""
        scale = torch.tensor([self.common_ms / r for r in self.ref_ms], dtype=per_device.dtype,
                             device=per_device.device).view(-1, *([1] * (per_device.dim() - 1)))
        norm = per_device * scale
        if self.combine == "max":
            return norm.max(dim=0).values
        w = torch.tensor(self.weights, dtype=per_device.dtype, device=per_device.device)
        w = w.view(-1, *([1] * (per_device.dim() - 1)))
        return torch.exp((w * torch.log(norm)).sum(dim=0))

    def device_latencies(self, weights: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """``[D]`` expected latency per device under ``weights [L, K]`` (differentiable)."""
        m = self.matrix().to(weights) if matrix is None else matrix
        sums = (weights.unsqueeze(0) * m).flatten(1).sum(dim=1)
        return torch.stack([torch.as_tensor(t.predict(s)) for t, s in zip(self.tables, sums)])

    def expected_latency(self, weights: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """The combined latency under ``weights [L, K]``; ``matrix`` is the cached ``[D, L, K]``."""
        return self._combine(self.device_latencies(weights, matrix))

    def per_target_latency(self, blocks: Sequence[int | str]) -> dict[str, float]:
        """``{device name: predicted ms}`` of one architecture (block name or index into
        :attr:`candidates` per layer; passed on by name, so the tables' own orders do not matter)."""
        names = [b if isinstance(b, str) else self.candidates[b] for b in blocks]
        return {n: t.architecture_latency(names) for n, t in zip(self.names, self.tables)}

    def architecture_latency(self, blocks: Sequence[int | str]) -> float:
        per = torch.tensor(list(self.per_target_latency(blocks).values()), dtype=torch.float64)
        return float(self._combine(per))

    def min_latency(self) -> float:
        """A lower bound of the combined latency over all architectures (for the unit choice)."""
        per = torch.tensor([t.min_latency() for t in self.tables], dtype=torch.float64)
        return float(self._combine(per))

    def max_latency(self) -> float:
        """An upper bound of the combined latency over all architectures."""
        per = torch.tensor([t.max_latency() for t in self.tables], dtype=torch.float64)
        return float(self._combine(per))

    @property
    def layers(self) -> list[dict[str, LatencyEntry]]:
        """Per entry, the devices' normalised values combined (for display, e.g. the search summary)."""
        m = self.matrix()
        comb = self._combine(m)
        return [{c: LatencyEntry.constant(float(comb[l, i])) for i, c in enumerate(self.candidates)}
                for l in range(comb.shape[0])]

    @property
    def fixed_ms(self) -> float:
        return float(self._combine(torch.tensor([t.fixed_ms for t in self.tables], dtype=torch.float64)))

    # ---- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": MULTI_SCHEMA, "schema_version": 1, "combine": self.combine, "weights": self.weights,
                "names": self.names, "tables": [t.to_dict() for t in self.tables]}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<dict>",
                  space: SearchSpace | None = None) -> "MultiTargetLatency":
        tabs = d.get("tables")
        if not isinstance(tabs, list) or len(tabs) < 2:
            raise LUTError(f"{source}: field 'tables' must list at least 2 LUTs")
        tables = [LatencyTable.from_dict(t, source=f"{source}: tables[{i}]", space=space) for i, t in enumerate(tabs)]
        return cls(tables, weights=d.get("weights"), combine=d.get("combine", "mean"), names=d.get("names"))


def _default_name(t: LatencyTable, i: int) -> str:
    dev = t.device or {}
    name = str(dev.get("backend", f"lut{i}"))
    if dev.get("dtype", "fp32") != "fp32":  # executorch fp32 and int8 are two targets
        name += f"-{dev['dtype']}"
    if dev.get("threads"):
        name += f"-{dev['threads']}t"
    return name


def load_latency_model(spec: str | Path, space: SearchSpace | None = None, *, weights: str | None = None,
                       combine: str = "mean") -> LatencyTable | MultiTargetLatency:
    """One LUT file, a saved multi-target file, or ``"a.json,b.json"`` (combined with
    ``weights``/``combine``); validated against ``space`` when given."""
    spec = str(spec)
    paths = [p for p in spec.split(",") if p]
    if len(paths) > 1:
        tables = [LatencyTable.load(p, space) for p in paths]
        return MultiTargetLatency(tables, weights=weights, combine=combine)
    path = Path(paths[0] if paths else spec)
    try:
        head = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        head = None  # LatencyTable.load gives the precise error
    if isinstance(head, dict) and head.get("schema") == MULTI_SCHEMA:
        return MultiTargetLatency.from_dict(head, source=str(path), space=space)
    if weights:
        raise ConfigError("LUT weights need several LUTs (--lut a.json,b.json)")
    return LatencyTable.load(path, space)
