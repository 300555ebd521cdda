"""``fbnet-fast lut``: measure and inspect latency look-up tables."""

from __future__ import annotations

import argparse

__all__ = ["COMMANDS"]


def _add_lut(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lut_command", metavar="{measure,show}", required=True)
    m = sub.add_parser("measure", help="measure a LUT on the host CPU", description="Time every (layer, candidate) "
                       "block of a space alone at its real input shape and write the LUT JSON.")
    m.add_argument("--space", default="fbnet-cifar", help="space name or file (default: %(default)s)")
    m.add_argument("--width-mult", type=float, default=0.25, help="width multiplier (default: %(default)s)")
    m.add_argument("--threads", type=int, default=None, help="intra-op threads while measuring")
    m.add_argument("--repeats", type=int, default=20, help="timing samples per block (default: %(default)s)")
    m.add_argument("--batch-size", type=int, default=1, help="images per call (default: %(default)s)")
    m.add_argument("--output", "-o", required=True, help="LUT JSON file to write")
    m.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    s = sub.add_parser("show", help="print a LUT as a table", description="Validate a LUT and print it.")
    s.add_argument("path", help="LUT JSON file")
    s.add_argument("--space", default=None, help="also check the LUT covers this space")
    s.add_argument("--width-mult", type=float, default=None, help="width multiplier of --space")


def _run_lut(args: argparse.Namespace) -> int:
    from .lut import LatencyTable
    from .space import load_space

    if args.lut_command == "measure":
        from .measure import measure_lut

        space = load_space(args.space, width_mult=args.width_mult)
        table = measure_lut(space, threads=args.threads, repeats=args.repeats, batch_size=args.batch_size,
                            progress=args.progress)
        table.save(args.output)
        print(f"wrote {args.output}: {space.name} ({space.fingerprint}), {space.num_layers} layers x "
              f"{len(space.candidates)} candidates, stem+head {table.fixed_ms:.4f} ms")
        return 0
    space = load_space(args.space, width_mult=args.width_mult) if args.space else None
    table = LatencyTable.load(args.path, space)
    dev = table.device
    print(f"{args.path}: space {table.space_name} ({table.fingerprint}), device "
          f"{dev.get('backend', '?')} {dev.get('device_name', '')} threads {dev.get('threads', '?')}")
    cands = table.candidates
    print("layer " + " ".join(f"{c:>9}" for c in cands))
    for l, layer in enumerate(table.layers):
        print(f"{l:>5} " + " ".join(f"{layer[c].median_ms:>9.4f}" for c in cands))
    print(f"fixed (stem+head) {table.fixed_ms:.4f} ms; fastest architecture {table.min_latency():.4f} ms")
    return 0


COMMANDS = {"lut": ("measure or inspect latency look-up tables", _add_lut, _run_lut)}
