"""Published FBNet architectures as presets of the ``fbnet`` space.

Each preset is a literal that reads like the paper's per-stage table: one tuple of
block names per stage of FBNet's Table 1 (1, 4, 4, 4, 4, 4, 1 searchable layers), plus
the head width it was published with. The head is a field of the space
(``SearchSpace.head_filters``), so a preset carries its own: 1504 for FBNet-A, 1984 for
FBNet-B/-C (the official model definitions), 1984 for FBNet-S8/-iPhoneX (the paper's
Table 1 macro-architecture, in which they were searched).

    >>> from fbnet_fast.presets import build_preset
    >>> model = build_preset("fbnet_c")                    # 224x224, 1000 classes
    >>> small = build_preset("fbnet_c", input_size=32, num_classes=10)

:func:`preset_space` gives the space (with that head) and :meth:`Preset.architecture`
the :class:`~fbnet_fast.space.Architecture` (fingerprint included), so a preset goes
wherever a sampled architecture goes (``fbnet-fast sample --preset fbnet_c``, then
``train``, ``export``).

Differences from the official model zoo that we keep on purpose: its IR blocks carry
conv biases (``use_bias``) and its ``*_g2`` blocks of FBNet-A group only the projection
(``pwl_groups``); here every conv is bias-free (BN follows) and ``_g2`` groups both 1x1
convs, as in the paper's Table 2. ``published_stats`` holds the figures to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import SpaceError
from .space import Architecture, SearchSpace, load_space

__all__ = ["Preset", "PRESETS", "get_preset", "preset_names", "preset_space", "build_preset", "fitting_presets",
           "FBNET_A", "FBNET_B", "FBNET_C", "FBNET_S8", "FBNET_IPHONEX"]

_PAPER = ('Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural '
          'Architecture Search", CVPR 2019, arXiv:1812.03443')


@dataclass(frozen=True)
class Preset:
    """One published architecture: blocks per stage of the ``fbnet`` space, head width, sources.

    ``published`` holds the paper's figures (``top1``, ``params_m``, ``mflops`` as the paper
    counts them: multiply-adds, ``latency_ms`` and ``latency_device``) and, where the model
    zoo re-trained the model, ``zoo_*`` figures.
    """

    name: str
    title: str
    stages: tuple[tuple[str, ...], ...]
    head_filters: int
    doc: str
    published: dict[str, Any]
    base_space: str = "fbnet"

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(b for stage in self.stages for b in stage)

    def space(self, **overrides: Any) -> SearchSpace:
        """The ``fbnet`` space with this preset's head; ``overrides`` as in :func:`load_space`."""
        return preset_space(self, **overrides)

    def architecture(self, space: SearchSpace | None = None) -> Architecture:
        """The :class:`Architecture` in ``space`` (default: :meth:`space`), validated."""
        space = space or self.space()
        arch = Architecture(self.blocks, space.name, space.fingerprint)
        arch.check(space)
        return arch


FBNET_A = Preset(
    name="fbnet_a", title="FBNet-A", head_filters=1504,
    stages=(
        ("skip",),
        ("k3_e3", "k3_e1", "skip", "skip"),
        ("k5_e6", "k3_e3", "k5_e1", "k3_e3"),
        ("k5_e6", "k5_e3", "k5_e1_g2", "k5_e6"),
        ("k3_e6", "k5_e1_g2", "k5_e3", "k3_e1_g2"),
        ("k5_e6", "k5_e6", "k5_e3", "k5_e6"),
        ("k5_e6",),
    ),
    doc=f"FBNet-A, the smallest of the three searched ImageNet models. {_PAPER}, Fig. 4 / Table 3; "
        "blocks and head width 1504 from facebookresearch/mobile-vision fbnet_modeldef_cls_fbnet ('fbnet_a').",
    published={"top1": 73.0, "params_m": 4.3, "mflops": 249, "latency_ms": 19.8, "latency_device": "Samsung S8",
               "zoo_top1": 73.3, "zoo_params_m": 4.27, "zoo_mflops": 244.5},
)

FBNET_B = Preset(
    name="fbnet_b", title="FBNet-B", head_filters=1984,
    stages=(
        ("k3_e1",),
        ("k3_e6", "k5_e1", "k3_e1", "k3_e1"),
        ("k5_e6", "k5_e3", "k3_e6", "k5_e6"),
        ("k5_e6", "k5_e6", "skip", "k5_e3"),
        ("k5_e6", "k3_e1", "k5_e1", "k5_e3"),
        ("k5_e6", "k5_e1", "k5_e6", "k5_e6"),
        ("k3_e6",),
    ),
    doc=f"FBNet-B. {_PAPER}, Fig. 4 / Table 3; blocks and head width 1984 from "
        "facebookresearch/mobile-vision fbnet_modeldef_cls_fbnet ('fbnet_b').",
    published={"top1": 74.1, "params_m": 4.5, "mflops": 295, "latency_ms": 23.1, "latency_device": "Samsung S8",
               "zoo_top1": 74.5, "zoo_params_m": 4.77, "zoo_mflops": 291.1},
)

FBNET_C = Preset(
    name="fbnet_c", title="FBNet-C", head_filters=1984,
    stages=(
        ("k3_e1",),
        ("k3_e6", "skip", "k3_e1", "k3_e1"),
        ("k5_e6", "k5_e3", "k5_e6", "k3_e6"),
        ("k5_e6", "k5_e3", "k5_e6", "k5_e6"),
        ("k5_e6", "k5_e6", "k5_e6", "k5_e3"),
        ("k5_e6", "k5_e6", "k5_e6", "k5_e6"),
        ("k3_e6",),
    ),
    doc=f"FBNet-C, the largest of the three. {_PAPER}, Fig. 4 / Table 3; blocks and head width 1984 "
        "from facebookresearch/mobile-vision fbnet_modeldef_cls_fbnet ('fbnet_c').",
    published={"top1": 74.9, "params_m": 5.5, "mflops": 375, "latency_ms": 28.1, "latency_device": "Samsung S8",
               "zoo_top1": 75.3, "zoo_params_m": 5.53, "zoo_mflops": 378.2},
)

FBNET_S8 = Preset(
    name="fbnet_s8", title="FBNet-S8", head_filters=1984,
    stages=(
        ("k3_e1",),
        ("k3_e3", "k3_e1", "skip", "skip"),
        ("k5_e6", "k3_e3", "k3_e3", "k3_e6"),
        ("k5_e6", "k5_e3", "k5_e3", "k5_e3"),
        ("k3_e6", "k5_e3", "k5_e3", "k5_e3"),
        ("k5_e6", "k5_e6", "k5_e3", "k5_e6"),
        ("k5_e6",),
    ),
    doc=f"FBNet-S8, searched for the Samsung S8 (the device-specific study). {_PAPER}, Fig. 5 and Table 4 "
        "(22.12 ms on S8, 27.53 ms on iPhone X); blocks as transcribed from the paper's figure by a public "
        "reimplementation, head 1984 of the paper's Table 1.",
    published={"latency_ms": 22.12, "latency_device": "Samsung S8", "latency_other_ms": 27.53,
               "latency_other_device": "iPhone X"},
)

FBNET_IPHONEX = Preset(
    name="fbnet_iphonex", title="FBNet-iPhoneX", head_filters=1984,
    stages=(
        ("skip",),
        ("k3_e6", "k3_e1", "k3_e1", "k3_e1"),
        ("k3_e6", "k3_e6", "k3_e6", "k3_e6"),
        ("k3_e6", "k3_e6", "k3_e3", "k3_e6"),
        ("k3_e6", "k3_e3", "k3_e3", "k3_e3"),
        ("k5_e6", "k5_e6", "k5_e6", "k5_e3"),
        ("k5_e6",),
    ),
    doc=f"FBNet-iPhoneX, searched for the iPhone X. {_PAPER}, Fig. 5 and Table 4 (19.84 ms on iPhone X, "
        "23.33 ms on S8); blocks as transcribed from the paper's figure by a public reimplementation, "
        "head 1984 of the paper's Table 1.",
    published={"latency_ms": 19.84, "latency_device": "iPhone X", "latency_other_ms": 23.33,
               "latency_other_device": "Samsung S8"},
)

PRESETS: dict[str, Preset] = {p.name: p for p in (FBNET_A, FBNET_B, FBNET_C, FBNET_S8, FBNET_IPHONEX)}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """A preset by name; ``"FBNet-C"``, ``"fbnet-c"`` and ``"fbnet_c"`` all work."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in PRESETS:
        raise SpaceError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


def preset_space(preset: Preset | str, **overrides: Any) -> SearchSpace:
    """The preset's base space with its head width; ``overrides`` (``input_size=32``,
    ``num_classes=10``, ``width_mult=0.5``) change the space, never the blocks."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    over = {k: v for k, v in overrides.items() if v is not None}
    space = load_space(p.base_space).replace(**{"head_filters": p.head_filters, **over})
    if space.num_layers != len(p.blocks):
        raise SpaceError(f"preset {p.name!r} has {len(p.blocks)} layers, space {space.name!r} has {space.num_layers}")
    return space


def build_preset(name: str, *, dropout: float = 0.0, **space_overrides: Any):
    """The plain :class:`~fbnet_fast.model.FBNetModel` of a preset (see :func:`preset_space`)."""
    from .model import build_model

    p = get_preset(name)
    space = preset_space(p, **space_overrides)
    return build_model(space, p.architecture(space), dropout=dropout)


def preset_document(name: str, **space_overrides: Any) -> dict[str, Any]:
    """The architecture-file document of a preset (the format ``fbnet-fast sample`` writes):
    ``{space, fingerprint, blocks, space_def, stats: {params, flops, macs}, source}``."""
    from .model import model_stats

    p = get_preset(name)
    space = preset_space(p, **space_overrides)
    arch = p.architecture(space)
    stats = model_stats(space, arch)
    return {**arch.to_dict(space), "stats": stats.to_dict(),
            "source": {"preset": p.name, "title": p.title, "citation": p.doc, "published": p.published}}


def write_preset_file(name: str, out_dir: str, **space_overrides: Any) -> tuple[str, dict[str, Any]]:
    """Write ``OUT_DIR/<preset>.json`` (see :func:`preset_document`); returns ``(path, document)``."""
    import json
    from pathlib import Path

    from .runs import atomic_write_text

    doc = preset_document(name, **space_overrides)
    path = Path(out_dir) / f"{get_preset(name).name}.json"
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return str(path), doc


def run_preset_sample(args: Any) -> int:
    """``fbnet-fast sample --preset NAME [--input-size N --num-classes K -o DIR]``."""
    from .errors import ConfigError

    if not args.preset:
        raise ConfigError("give a search run folder (RUN_DIR) or --preset NAME")
    if args.run_dir:
        raise ConfigError("give either a search run folder or --preset, not both")
    out = args.out or "presets"
    path, doc = write_preset_file(args.preset, out, input_size=args.input_size, num_classes=args.num_classes)
    p, st, sd = get_preset(args.preset), doc["stats"], doc["space_def"]
    print(f"{p.title}: {' '.join(doc['blocks'])}")
    print(f"space {sd['name']} ({doc['fingerprint']}), {sd['input_size']}x{sd['input_size']} input, "
          f"head {sd['head']['filters']}, {sd['num_classes']} classes")
    print(f"{st['params']:,d} parameters, {st['macs'] / 1e6:.1f} M multiply-adds ({st['flops'] / 1e6:.1f} MFLOPs "
          f"by torch FlopCounterMode, 2 per multiply-add)")
    print(f"wrote {path}")
    return 0


def fitting_presets(space: SearchSpace) -> list[tuple[str, str, Architecture]]:
    """``(name, label, architecture)`` of every FBNet preset whose block list fits ``space``.

    A preset fits when the space has as many searchable layers as the preset and every
    block is a candidate; its blocks then run in this space's channels, strides and
    head (not the preset's ImageNet widths), hence the label "blocks in <space>".
    """
    out = []
    for name, p in PRESETS.items():
        if len(p.blocks) == space.num_layers and all(b in space.candidates for b in p.blocks):
            arch = Architecture(tuple(p.blocks), space.name, space.fingerprint)
            out.append((name, f"{p.title} (blocks in {space.name})", arch))
    return out
