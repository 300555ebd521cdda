"""Search spaces and architectures as data.

A search space is a fixed macro-architecture (stem, stages of searchable layers,
head) plus the list of candidate blocks every searchable layer chooses from. It is
plain data: a dict that reads like the paper's Table 1, loadable from JSON or YAML,
with a grammar for candidate names that round-trips (``parse_candidate(name).name
== name``).

Candidate grammar (one token per candidate)::

    k{K}_e{E}[_g{G}]   inverted-residual block, depthwise kernel K (odd), expansion
                       E (a positive number, e.g. 1, 3, 6 or 0.5), 1x1 conv groups G
    skip               identity where shapes allow, else 1x1 conv + BN + ReLU

References: Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via
Differentiable Neural Architecture Search", CVPR 2019 (Tables 1 and 2);
facebookresearch/mobile-vision ``fbnet_building_blocks`` for the skip choice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import SpaceError

__all__ = [
    "Candidate",
    "Stage",
    "LayerSpec",
    "SearchSpace",
    "Architecture",
    "parse_candidate",
    "FBNET_CANDIDATES",
    "builtin_spaces",
    "load_space",
    "make_divisible",
]

FBNET_CANDIDATES: tuple[str, ...] = (
    "k3_e1", "k3_e1_g2", "k3_e3", "k3_e6",
    "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6",
    "skip",
)

_IR_RE = re.compile(r"^k(?P<k>[1-9][0-9]*)_e(?P<e>[0-9]+(?:\.[0-9]+)?)(?:_g(?P<g>[1-9][0-9]*))?$")


@dataclass(frozen=True)
class Candidate:
    """One candidate block kind: ``kind`` is ``"ir"`` or ``"skip"``."""

    kind: str
    kernel: int = 0
    expansion: float = 0.0
    groups: int = 1

    @property
    def name(self) -> str:
        """The grammar token; ``parse_candidate(c.name) == c``."""
        if self.kind == "skip":
            return "skip"
        e = int(self.expansion) if float(self.expansion).is_integer() else self.expansion
        g = f"_g{self.groups}" if self.groups != 1 else ""
        return f"k{self.kernel}_e{e}{g}"

    def mid_channels(self, c_in: int) -> int:
        """Channels after the 1x1 expansion for input width ``c_in``."""
        return int(round(c_in * self.expansion))

    def to_kwargs(self) -> dict[str, Any]:
        if self.kind == "skip":
            return {"kind": "skip"}
        return {"kind": "ir", "kernel": self.kernel, "expansion": self.expansion, "groups": self.groups}


def parse_candidate(token: str) -> Candidate:
    """Decode a candidate token (``"k5_e6"``, ``"k3_e1_g2"``, ``"skip"``).

    Raises :class:`SpaceError` naming the token for anything else.
    """
    if not isinstance(token, str):
        raise SpaceError(f"candidate block name must be a string, got {token!r}")
    if token == "skip":
        return Candidate("skip")
    m = _IR_RE.match(token)
    if m is None:
        raise SpaceError(
            f"unknown block name {token!r}: expected 'skip' or 'k<kernel>_e<expansion>[_g<groups>]' "
            f"such as 'k3_e6' or 'k5_e1_g2'"
        )
    k, e, g = int(m["k"]), float(m["e"]), int(m["g"] or 1)
    if k % 2 == 0:
        raise SpaceError(f"block {token!r}: depthwise kernel must be odd (same padding), got {k}")
    if e <= 0:
        raise SpaceError(f"block {token!r}: expansion must be > 0")
    cand = Candidate("ir", k, e, g)
    if cand.name != token:
        # e.g. 'k3_e1_g1' or 'k3_e06': accept only the canonical spelling so names stay unique keys.
        raise SpaceError(f"block {token!r} is not in canonical form; write {cand.name!r}")
    return cand


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing > 10%.

    The MobileNet convention, so width-multiplied nets keep SIMD-friendly widths.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


@dataclass(frozen=True)
class Stage:
    """``repeats`` searchable layers of width ``filters``; the first has ``stride``."""

    filters: int
    repeats: int
    stride: int


@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer, resolved: shapes are for a single image (batch excluded)."""

    index: int
    stage: int
    c_in: int
    c_out: int
    stride: int
    in_size: int  # input height == width
    out_size: int

    def shape_key(self) -> tuple[int, int, int, int]:
        """Two layers with the same key have identical candidate blocks (same cost)."""
        return (self.c_in, self.c_out, self.stride, self.in_size)


def _conv_out(size: int, stride: int) -> int:
    # 'same' padding with an odd kernel: out = ceil(in / stride).
    return (size - 1) // stride + 1


@dataclass
class SearchSpace:
    """A macro-architecture with searchable layers; see the module docstring.

    Widths given here are the *base* widths; ``width_mult`` scales the stem, every
    stage and the head (rounded with :func:`make_divisible`). Everything derived
    (``layers``, ``fingerprint``) uses the scaled widths.
    """

    name: str
    input_size: int
    stem_filters: int
    stem_stride: int
    stages: list[Stage]
    head_filters: int
    candidates: list[str] = field(default_factory=lambda: list(FBNET_CANDIDATES))
    in_channels: int = 3
    num_classes: int = 1000
    width_mult: float = 1.0
    head_scales: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        self.validate()

    # ---- validation -------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`SpaceError` naming the field for anything inconsistent."""
        where = f"search space {self.name!r}"
        for fname in ("input_size", "stem_filters", "stem_stride", "head_filters", "in_channels", "num_classes"):
            v = getattr(self, fname)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SpaceError(f"{where}: field {fname!r} must be a positive integer, got {v!r}")
        if not (isinstance(self.width_mult, (int, float)) and math.isfinite(self.width_mult) and self.width_mult > 0):
            raise SpaceError(f"{where}: width_mult must be a positive number, got {self.width_mult!r}")
        if not self.stages:
            raise SpaceError(f"{where}: 'stages' is empty; at least one stage of searchable layers is needed")
        for i, s in enumerate(self.stages):
            for fname in ("filters", "repeats", "stride"):
                v = getattr(s, fname)
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise SpaceError(f"{where}: stage {i} field {fname!r} must be a positive integer, got {v!r}")
        if not self.candidates:
            raise SpaceError(f"{where}: 'candidates' is empty")
        if len(set(self.candidates)) != len(self.candidates):
            dup = sorted({c for c in self.candidates if self.candidates.count(c) > 1})
            raise SpaceError(f"{where}: duplicate candidates {dup}")
        cands = [parse_candidate(c) for c in self.candidates]
        size = _conv_out(self.input_size, self.stem_stride)
        for s in self.stages:
            size = _conv_out(size, s.stride)
        if size < 1 or self.input_size < self.stem_stride * math.prod(s.stride for s in self.stages):
            raise SpaceError(
                f"{where}: input_size {self.input_size} is too small for the total stride "
                f"{self.stem_stride * math.prod(s.stride for s in self.stages)}"
            )
        for layer in self.layers:
            for c in cands:
                if c.kind != "ir" or c.groups == 1:
                    continue
                mid = c.mid_channels(layer.c_in)
                for what, ch in (("input", layer.c_in), ("expanded", mid), ("output", layer.c_out)):
                    if ch % c.groups:
                        raise SpaceError(
                            f"{where}: candidate {c.name!r} has groups={c.groups}, which does not divide "
                            f"the {what} channels ({ch}) of layer {layer.index}"
                        )
            for c in cands:
                if c.kind == "ir" and c.mid_channels(layer.c_in) < 1:
                    raise SpaceError(f"{where}: candidate {c.name!r} expands layer {layer.index} to 0 channels")

    # ---- derived structure --------------------------------------------------------------
    def scaled(self, channels: int, *, head: bool = False) -> int:
        if head and not self.head_scales:
            return channels
        if self.width_mult == 1.0:
            return channels
        return make_divisible(channels * self.width_mult)

    @property
    def stem_channels(self) -> int:
        return self.scaled(self.stem_filters)

    @property
    def head_channels(self) -> int:
        # MobileNet keeps the head width when shrinking (it is cheap and carries the
        # classifier's capacity); scale it only when widening.
        if self.width_mult < 1.0:
            return self.head_filters
        return self.scaled(self.head_filters, head=True)

    @property
    def candidate_blocks(self) -> list[Candidate]:
        return [parse_candidate(c) for c in self.candidates]

    @property
    def layers(self) -> list[LayerSpec]:
        out: list[LayerSpec] = []
        c = self.stem_channels
        size = _conv_out(self.input_size, self.stem_stride)
        idx = 0
        for si, st in enumerate(self.stages):
            width = self.scaled(st.filters)
            for r in range(st.repeats):
                stride = st.stride if r == 0 else 1
                o = _conv_out(size, stride)
                out.append(LayerSpec(idx, si, c, width, stride, size, o))
                c, size, idx = width, o, idx + 1
        return out

    @property
    def num_layers(self) -> int:
        return sum(s.repeats for s in self.stages)

    @property
    def final_size(self) -> int:
        return self.layers[-1].out_size

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "width_mult": self.width_mult,
            "head_scales": self.head_scales,
            "stem": {"filters": self.stem_filters, "stride": self.stem_stride},
            "stages": [{"filters": s.filters, "repeats": s.repeats, "stride": s.stride} for s in self.stages],
            "head": {"filters": self.head_filters},
            "candidates": list(self.candidates),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> "SearchSpace":
        """Build from the dict form (as in ``spaces/*.yaml``); errors name ``source``."""
        if not isinstance(d, Mapping):
            raise SpaceError(f"{source}: a search space must be a mapping, got {type(d).__name__}")
        known = {"name", "description", "input_size", "in_channels", "num_classes", "width_mult",
                 "head_scales", "stem", "stages", "head", "candidates"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpaceError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(known)}")
        for req in ("input_size", "stem", "stages", "head"):
            if req not in d:
                raise SpaceError(f"{source}: missing required field {req!r}")
        stem, head = d["stem"], d["head"]
        if not isinstance(stem, Mapping) or "filters" not in stem:
            raise SpaceError(f"{source}: 'stem' must be a mapping with 'filters' (and optional 'stride')")
        if not isinstance(head, Mapping) or "filters" not in head:
            raise SpaceError(f"{source}: 'head' must be a mapping with 'filters'")
        stages = d["stages"]
        if not isinstance(stages, Sequence) or isinstance(stages, str):
            raise SpaceError(f"{source}: 'stages' must be a list of {{filters, repeats, stride}}")
        parsed = []
        for i, s in enumerate(stages):
            if isinstance(s, Mapping):
                extra = sorted(set(s) - {"filters", "repeats", "stride"})
                missing = sorted({"filters", "repeats", "stride"} - set(s))
                if extra or missing:
                    raise SpaceError(
                        f"{source}: stage {i} must have exactly filters, repeats, stride "
                        f"(missing {missing}, unknown {extra})"
                    )
                parsed.append(Stage(s["filters"], s["repeats"], s["stride"]))
            elif isinstance(s, Sequence) and len(s) == 3:
                parsed.append(Stage(*s))
            else:
                raise SpaceError(f"{source}: stage {i} must be {{filters, repeats, stride}} or [filters, repeats, stride]")
        try:
            return cls(
                name=str(d.get("name", Path(source).stem)),
                description=str(d.get("description", "")),
                input_size=d["input_size"],
                in_channels=d.get("in_channels", 3),
                num_classes=d.get("num_classes", 1000),
                width_mult=d.get("width_mult", 1.0),
                head_scales=bool(d.get("head_scales", True)),
                stem_filters=stem["filters"],
                stem_stride=stem.get("stride", 2),
                stages=parsed,
                head_filters=head["filters"],
                candidates=list(d.get("candidates", FBNET_CANDIDATES)),
            )
        except SpaceError as e:
            raise SpaceError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> "SearchSpace":
        """A copy with fields changed (validated), e.g. ``space.replace(width_mult=0.5)``."""
        d = copy.deepcopy(self.__dict__)
        d.update(changes)
        return SearchSpace(**d)

    @property
    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of everything a block's latency depends on.

        Covers the resolved layer shapes (after the width multiplier), the candidate
        list in order, stem and head widths and the input size; not the name, the
        description or ``num_classes`` (the classifier is outside the searched layers,
        so a LUT stays valid for another label set).
        """
        payload = {
            "v": 1,
            "input": [self.in_channels, self.input_size],
            "stem": [self.stem_channels, self.stem_stride],
            "layers": [[l.c_in, l.c_out, l.stride, l.in_size] for l in self.layers],
            "head": self.head_channels,
            "candidates": list(self.candidates),
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def summary(self) -> str:
        """A table of the resolved layers, like the paper's Table 1."""
        rows = [f"{self.name}: input {self.in_channels}x{self.input_size}x{self.input_size}, "
                f"width x{self.width_mult:g}, fingerprint {self.fingerprint}",
                f"  stem  3x3 conv  {self.in_channels:>4} -> {self.stem_channels:>4}  stride {self.stem_stride}"]
        for l in self.layers:
            rows.append(f"  L{l.index:02d}   stage {l.stage + 1}  {l.c_in:>4} -> {l.c_out:>4}  stride {l.stride}  "
                        f"{l.in_size}x{l.in_size} -> {l.out_size}x{l.out_size}")
        rows.append(f"  head  1x1 conv  {self.layers[-1].c_out:>4} -> {self.head_channels:>4}, avg pool, fc {self.num_classes}")
        rows.append(f"  candidates: {', '.join(self.candidates)}")
        return "\n".join(rows)


def _read_mapping(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpaceError(f"cannot read search space file {str(path)!r}: {e.strerror}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError carry the position
        raise SpaceError(f"search space file {str(path)!r} is not valid {path.suffix[1:].upper()}: {e}") from None


def builtin_spaces() -> list[str]:
    """Names of the spaces shipped in ``fbnet_fast/spaces/``."""
    files = resources.files("fbnet_fast") / "spaces"
    return sorted(p.name.rsplit(".", 1)[0] for p in files.iterdir() if p.name.endswith((".yaml", ".yml", ".json")))


def load_space(name_or_path: str | Path, **overrides: Any) -> SearchSpace:
    """Load a shipped space by name (``"fbnet"``, ``"fbnet-cifar"``) or a JSON/YAML file.

    ``overrides`` replace fields after loading (``width_mult=0.5``, ``num_classes=100``).
    """
    path = Path(name_or_path)
    if not path.is_file():
        for ext in (".yaml", ".yml", ".json"):
            cand = resources.files("fbnet_fast") / "spaces" / f"{name_or_path}{ext}"
            if cand.is_file():
                path = Path(str(cand))
                break
        else:
            raise SpaceError(
                f"search space {str(name_or_path)!r} is neither a file nor a built-in space "
                f"(built-in: {', '.join(builtin_spaces())})"
            )
    space = SearchSpace.from_dict(_read_mapping(path), source=str(path))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return space.replace(**overrides) if overrides else space


@dataclass(frozen=True)
class Architecture:
    """One block name per searchable layer of a space: what a search produces.

    Serialised as ``{"space": name, "fingerprint": ..., "blocks": [...]}`` so it can be
    written by hand, versioned and passed to later commands.
    """

    blocks: tuple[str, ...]
    space_name: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        for i, b in enumerate(self.blocks):
            try:
                parse_candidate(b)
            except SpaceError as e:
                raise SpaceError(f"architecture layer {i}: {e}") from None

    @classmethod
    def from_indices(cls, space: SearchSpace, indices: Iterable[int]) -> "Architecture":
        idx = list(indices)
        return cls(tuple(space.candidates[i] for i in idx), space.name, space.fingerprint)

    def indices(self, space: SearchSpace) -> list[int]:
        """Candidate index per layer in ``space``; validates the layer count and names."""
        self.check(space)
        return [space.candidates.index(b) for b in self.blocks]

    def check(self, space: SearchSpace) -> None:
        if len(self.blocks) != space.num_layers:
            raise SpaceError(
                f"architecture has {len(self.blocks)} layers but space {space.name!r} has {space.num_layers}"
            )
        if self.fingerprint and self.fingerprint != space.fingerprint:
            raise SpaceError(
                f"architecture was made for space fingerprint {self.fingerprint} but space {space.name!r} "
                f"has fingerprint {space.fingerprint} (different widths, input size or candidates)"
            )
        for i, b in enumerate(self.blocks):
            if b not in space.candidates:
                raise SpaceError(f"architecture layer {i}: block {b!r} is not a candidate of space {space.name!r}")

    def to_dict(self, space: "SearchSpace | None" = None) -> dict[str, Any]:
        """The architecture file format; with ``space``, also ``space_def`` (the resolved space:
        widths, input size, classes), so the file alone rebuilds the network."""
        d: dict[str, Any] = {"space": self.space_name, "fingerprint": self.fingerprint, "blocks": list(self.blocks)}
        if space is not None:
            d["space_def"] = space.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> "Architecture":
        if not isinstance(d, Mapping) or not isinstance(d.get("blocks"), list):
            raise SpaceError(f"{source}: an architecture is a mapping with a 'blocks' list")
        try:
            return cls(tuple(d["blocks"]), str(d.get("space", "")), str(d.get("fingerprint", "")))
        except SpaceError as e:
            raise SpaceError(f"{source}: {e}") from None

    def __str__(self) -> str:
        return " ".join(self.blocks)
