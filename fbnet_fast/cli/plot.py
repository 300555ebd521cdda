"""``fbnet-fast plot RUN_DIR``: redraw a search run folder's pictures (:mod:`fbnet_fast.plots`)."""

from __future__ import annotations

import argparse

__all__ = ["COMMANDS"]


def _add_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a search run folder (holds metrics.jsonl)")


def _run_plot(args: argparse.Namespace) -> int:
    from ..plots import write_plots

    for path in write_plots(args.run_dir):
        print(f"wrote {path}")
    return 0


COMMANDS = {"plot": ("redraw the pictures of a search run folder", _add_plot, _run_plot)}
