"""``fbnet-fast crossdeploy | prune``: the experiments beyond the paper.

    fbnet-fast crossdeploy --lut A.json --lut B.json [--arch a.json --arch b.json] --out DIR
    fbnet-fast prune ARCH.json | --preset fbnet_c [--rounds 4 --sparsity 0.8 --scope global] --out DIR

``crossdeploy`` searches one architecture per LUT (or takes ``--arch`` files, one per LUT,
in the same order), measures each end to end on every LUT's target and writes the N x N
table and bar plot (:mod:`fbnet_fast.research.crossdeploy`). ``prune`` runs iterative magnitude
pruning with rewinding, the random re-initialisation control and structured channel
pruning, and measures every net (:mod:`fbnet_fast.research.prune`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["COMMANDS"]


# ---- crossdeploy --------------------------------------------------------------------------------

def _add_crossdeploy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lut", action="append", required=True, metavar="LUT",
                   help="a target's LUT (from 'fbnet-fast lut measure'); give it once per target (>= 2). "
                   "The target is measured with the back end and settings recorded in the LUT")
    p.add_argument("--arch", action="append", default=None, metavar="ARCH",
                   help="use this architecture file for the LUT in the same position instead of searching "
                   "(give one per --lut)")
    p.add_argument("--name", action="append", default=None, help="a label per target (default: back end + threads)")
    p.add_argument("--space", default=None, help="space name or file (default: the LUTs' space name)")
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier (default: the one whose "
                   "fingerprint matches the LUT)")
    g = p.add_argument_group("search (when no --arch is given)")
    g.add_argument("--data", default="synthetic", help="search data (default: %(default)s)")
    g.add_argument("--num-train", type=int, default=None, help="training images (default: all)")
    g.add_argument("--num-val", type=int, default=None, help="held-out images (default: all)")
    g.add_argument("--epochs", type=int, default=8, help="search epochs (default: %(default)s)")
    g.add_argument("--warmup-epochs", type=int, default=2, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    g.add_argument("--alpha", type=float, default=0.2, help="latency weight (default: %(default)s)")
    g.add_argument("--beta", type=float, default=0.6, help="latency exponent (default: %(default)s)")
    g.add_argument("--theta-lr", type=float, default=0.01, help="Adam LR for theta (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--kernel", choices=("auto", "reference"), default="auto",
                   help="supernet mixed op: fused kernels when built, or the eager reference (default: %(default)s)")
    g = p.add_argument_group("measurement")
    g.add_argument("--passes", type=int, default=None, help="passes over the nets per target (default: the LUT's)")
    g.add_argument("--repeats", type=int, default=None, help="samples per net (default: the LUT's)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--out", "-o", default="runs/crossdeploy", help="output folder (default: %(default)s)")


def _run_crossdeploy(args: argparse.Namespace) -> int:
    from ..research.crossdeploy import cross_deploy
    from ..runs import load_architecture_file
    from ..errors import ConfigError
    from ..lut import LatencyTable

    if len(args.lut) < 2:
        raise ConfigError("give at least two --lut files (one per target)")
    luts = [LatencyTable.load(p) for p in args.lut]
    space = luts[0].find_space(args.space, args.width_mult)
    for t in luts:
        t.check_space(space)
    archs = None
    if args.arch:
        if len(args.arch) != len(luts):
            raise ConfigError(f"{len(args.arch)} --arch file(s) for {len(luts)} --lut file(s); give one per LUT")
        archs = []
        for a in args.arch:
            _, arch = load_architecture_file(a, space_name=args.space or space.name, width_mult=space.width_mult)
            archs.append(arch)
    search = None
    if archs is None:
        from ..search import SearchConfig

        search = SearchConfig(space=space.name, width_mult=space.width_mult, data=args.data, num_train=args.num_train,
                              num_val=args.num_val, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                              batch_size=args.batch_size, alpha=args.alpha, beta=args.beta, theta_lr=args.theta_lr,
                              target_fraction=None,  # each device's own search trades by alpha, as the paper's Table 4
                              seed=args.seed, kernel=args.kernel, progress=args.progress, plots=False)
        search.validate()
    overrides = {k: v for k, v in (("passes", args.passes), ("repeats", args.repeats)) if v is not None}
    res = cross_deploy(space, luts, args.out, archs=archs, search=search, names=args.name,
                       backend_overrides=overrides, progress=args.progress)
    print(res.markdown(), end="")
    wins = res.diagonal_wins()
    for j, t in enumerate(res.targets):
        print(f"on {t}: its own architecture is {'the fastest' if wins[j] else 'NOT the fastest'}")
    print(f"wrote crossdeploy.json, crossdeploy.md, crossdeploy.png in {args.out}")
    return 0


# ---- prune ----------------------------------------------------------------------------------------

def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_prune(p: argparse.ArgumentParser) -> None:
    from ..research.prune import PruneConfig

    d = PruneConfig()
    p.add_argument("arch", metavar="ARCH", nargs="?", help="architecture file (from 'fbnet-fast sample' or a "
                   "search's arch.json); or --preset")
    p.add_argument("--preset", default=None, help="a published architecture (fbnet_a ... fbnet_iphonex)")
    p.add_argument("--space", default=None, help="space of ARCH (default: the file's)")
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier (ARCH's space or the preset)")
    p.add_argument("--input-size", type=int, default=None, help="with --preset: input resolution (default: the "
                   "data's image size, 32 for the generated set)")
    g = p.add_argument_group("pruning")
    g.add_argument("--rounds", type=int, default=d.rounds, help="pruning rounds n (default: %(default)s)")
    g.add_argument("--sparsity", type=float, default=d.sparsity, help="fraction of prunable weights removed after "
                   "all rounds; each round removes 1-(1-p)^(1/n) of the rest (default: %(default)s)")
    g.add_argument("--scope", choices=("global", "layer"), default=d.scope, help="(default: %(default)s)")
    g.add_argument("--rewind-step", type=int, default=d.rewind_step, help="rewind survivors to their values after "
                   "this many training steps (0: to initialisation; default: %(default)s)")
    g.add_argument("--no-control", dest="control", action="store_false", help="skip the random re-init control")
    g.add_argument("--channel-fractions", type=_floats, default=d.channel_fractions,
                   help="structured variant: fractions of middle channels removed (default: 0.25,0.5,0.75)")
    g = p.add_argument_group("training")
    g.add_argument("--data", default="synthetic", help="(default: %(default)s)")
    g.add_argument("--num-train", type=int, default=None, help="training images (default: all)")
    g.add_argument("--num-val", type=int, default=None, help="held-out images (default: all)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs per round (default: %(default)s)")
    g.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs,
                   help="structured fine-tuning epochs (default: --epochs)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="(default: %(default)s)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip")
    g.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    g = p.add_argument_group("latency")
    g.add_argument("--backend", choices=("torch-cpu", "onnxruntime", "executorch"), default=d.backend,
                   help="(default: %(default)s)")
    g.add_argument("--threads", type=int, default=d.threads, help="(default: %(default)s)")
    g.add_argument("--repeats", type=int, default=d.repeats, help="samples per net (default: %(default)s)")
    g.add_argument("--passes", type=int, default=d.passes, help="(default: %(default)s)")
    p.add_argument("--out", "-o", default="runs/prune", help="output folder (default: %(default)s)")


def _run_prune(args: argparse.Namespace) -> int:
    import dataclasses

    from ..data import build_datasets
    from ..errors import ConfigError
    from ..research.prune import PruneConfig, run_pruning

    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    cfg = PruneConfig(**{k: v for k, v in vars(args).items() if k in fields})
    cfg.validate()
    if bool(args.preset) == bool(args.arch):
        raise ConfigError("give an architecture file or --preset NAME (one of them)")
    if args.preset:
        from ..presets import get_preset, preset_space

        data = build_datasets(args.data, image_size=args.input_size or 32, seed=cfg.seed, num_train=args.num_train,
                              num_val=args.num_val)
        preset = get_preset(args.preset)
        space = preset_space(preset, input_size=data.image_size, num_classes=data.num_classes,
                             width_mult=args.width_mult)
        arch = preset.architecture(space)
    else:
        from ..runs import load_architecture_file

        space, arch = load_architecture_file(args.arch, space_name=args.space, width_mult=args.width_mult)
        data = build_datasets(args.data, image_size=space.input_size, seed=cfg.seed, num_train=args.num_train,
                              num_val=args.num_val)
    run_pruning(space, arch, cfg, args.out, data=data)
    print((Path(args.out) / "prune.md").read_text(), end="")
    print(f"wrote prune.json, prune.md, prune.png in {args.out}")
    return 0


COMMANDS = {
    "crossdeploy": ("search (or take) one architecture per LUT and measure each on every LUT's target "
                    "(the paper's cross-device table)", _add_crossdeploy, _run_crossdeploy),
    "prune": ("lottery tickets: iterative magnitude pruning with rewinding, a random re-init control, channel "
              "pruning, and the measured latency of every pruned net", _add_prune, _run_prune),
}
