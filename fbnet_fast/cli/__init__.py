"""The ``fbnet-fast`` command line.

``fbnet-fast search`` runs a search (default: the generated data on ``fbnet-cifar``
at width 0.25, about ten minutes on 2 CPU cores); ``fbnet-fast lut ...`` measures and
inspects latency tables; ``fbnet-fast space`` prints a search space. Every error a
user can cause ends the command with one line ``fbnet-fast: error: ...`` and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..errors import FBNetError

__all__ = ["main", "build_parser"]

# Modules that bring their own sub-commands: each has ``COMMANDS = {name: (help,
# add_arguments, run)}``. A new command is a new module listed here, not an edit of
# this file's parser; modules are imported lazily so ``--help`` stays fast.
_COMMAND_MODULES = ("fbnet_fast.cli.search", "fbnet_fast.cli.lut", "fbnet_fast.cli.deploy", "fbnet_fast.cli.plot",
                    "fbnet_fast.cli.study", "fbnet_fast.cli.research")


def _all_commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                                       Callable[[argparse.Namespace], int | None]]]:
    import importlib

    commands = {}
    for mod in _COMMAND_MODULES:
        commands.update(importlib.import_module(mod).COMMANDS)
    return commands


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fbnet-fast",
        description="Hardware-aware neural architecture search (FBNet, Wu et al. CVPR 2019) with fused kernels.",
    )
    parser.add_argument("--version", action="version", version=f"fbnet-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add, _) in _all_commands().items():
        sp = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                            )
        add(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _, _, run = _all_commands()[args.command]
    from ..malloc import tune_malloc

    tune_malloc()  # the training steps' tensors reused from the heap, not mapped anew (fbnet_fast/malloc.py)
    try:
        return int(run(args) or 0)
    except FBNetError as e:
        print(f"fbnet-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fbnet-fast: interrupted; run the same command again to continue"
              f"{' (with --resume)' if args.command == 'search' else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
