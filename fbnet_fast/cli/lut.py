"""``fbnet-fast lut``: measure, show, diff and validate latency look-up tables.

* ``lut measure``  time every (layer, candidate) block on a back end and write the LUT
  (resumes from ``OUTPUT.partial`` after an interruption).
* ``lut show``     the LUT as a table (median, or ``--spread`` for p10/p90).
* ``lut diff``     two LUTs of one space side by side (two devices, or two runs of
  one device): per-layer candidate order and which candidate pairs flip it, as in
  the paper's iPhone X vs Samsung S8 depthwise figure.
* ``lut validate`` the additivity study (:mod:`fbnet_fast.measure.additivity`): end-to-end
  latency of sampled architectures vs the LUT sum, and a fitted correction stored
  in the LUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "diff_tables"]



# Whole networks are timed as one interleaved group for many rounds, each sample warm, one pass
# (additivity.validate_lut says why); the LUT's own repeats and passes are for blocks, so `lut validate` / `lut fit` use these.
NETWORK_REPEATS, NETWORK_PASSES = 100, 1


def _add_backend_args(p: argparse.ArgumentParser, *, defaults_from_lut: bool, networks: bool = False) -> None:
    note = " (default: the LUT's)" if defaults_from_lut else ""
    from ..measure import BACKENDS

    g = p.add_argument_group("back end")
    g.add_argument("--backend", choices=list(BACKENDS), default=None if defaults_from_lut else "torch-cpu",
                   help="torch-cpu (PyTorch eager), onnxruntime (host CPU), executorch (host CPU, XNNPACK delegate: "
                   "the phone runtime; optional install), cuda (GPU, CUDA events), ssh (a remote board)"
                   + (note or " (default: %(default)s)"))
    g.add_argument("--dtype", default=None, metavar="{fp32,int8}",
                   help="numeric format of the timed blocks: fp32, or int8 (statically quantized, calibrated on "
                   "generated data; onnxruntime, executorch, and ssh with --remote-runtime onnxruntime or executorch)"
                   + (note or " (default: fp32)"))
    g.add_argument("--threads", type=int, default=None, help="intra-op threads while measuring" +
                   (note or " (default: 1, the stable choice on a shared host)"))
    g.add_argument("--repeats", type=int, default=None, help=(
        f"timing rounds over all networks, one sample of each per round (default: {NETWORK_REPEATS})" if networks
        else "timing samples per block" + (note or " (default: 30)")))
    g.add_argument("--warmup", type=int, default=None, help="untimed calls per block first" + (note or " (default: 3)"))
    g.add_argument("--min-sample-ms", type=float, default=None,
                   help="each sample averages enough calls to last this long" + (note or " (default: 1.0)"))
    g.add_argument("--passes", type=int, default=None, help=(
        f"passes over all networks; each network's latency is its best pass (default: {NETWORK_PASSES})"
        if networks else "passes over all blocks; each entry is the pass with the lowest median" +
        (note or " (default: 2)")))
    if networks:
        g.add_argument("--group-size", type=int, default=None,
                       help="time the networks in groups of this many, for a device that cannot hold them all at "
                       "once (default: all in one interleaved group, which cancels the machine's drift)")
        from ..measure.additivity import STATISTICS

        g.add_argument("--statistic", choices=STATISTICS, default=STATISTICS[0],
                       help="a network's latency from its samples: p10, the machine's quiet state (other work only "
                       "adds time), or the median (default: %(default)s)")
    g.add_argument("--clock", choices=("auto", "wall", "cpu"), default=None,
                   help="auto: process CPU time with 1 thread (robust to other work on the host), wall time with "
                   "more" + (note or " (default: auto)"))
    for cls in BACKENDS.values():  # each back end's own options, once per class that defines them
        if "add_cli_options" in vars(cls):
            cls.add_cli_options(p)


def _make_backend(args: argparse.Namespace, device: dict[str, Any] | None = None, *, networks: bool = False) -> Any:
    """The back end the options name; with a LUT's ``device`` record of the same back end, every
    option not given on the command line comes from that record (:meth:`Backend.device_kwargs`),
    except, for timing whole networks (``networks``), the repeats and passes (:data:`NETWORK_REPEATS`)."""
    from ..measure import get_backend_class

    device = device or {}
    name = args.backend or device.get("backend", "torch-cpu")
    cls = get_backend_class(name)
    kw: dict[str, Any] = {"threads": 1, "repeats": 30, "warmup": 3, "min_sample_ms": 1.0, "passes": 2}
    if name == device.get("backend"):
        kw.update(cls.device_kwargs(device))
    if networks:
        kw.update(repeats=NETWORK_REPEATS, passes=NETWORK_PASSES)
    kw.update({k: getattr(args, k) for k in cls.SHARED_OPTIONS if getattr(args, k, None) is not None})
    kw.update(cls.cli_kwargs(args))
    return cls(**kw)


def _same_dtype(path: str, table: Any, backend: Any, who: str) -> None:
    """Networks measured in another numeric format than the LUT's blocks compare nothing."""
    from ..errors import LUTError

    have, got = table.device.get("dtype", "fp32"), getattr(backend, "dtype", "fp32")
    if have != got:
        raise LUTError(f"{path}: the LUT's blocks are {have}; {who} must measure the networks in {have} too "
                       f"(got --dtype {got})")


def _add_lut(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lut_command", metavar="{measure,show,diff,validate,fit}", required=True)
    m = sub.add_parser("measure", help="measure a LUT", description="Time every (layer, candidate) block of a "
                       "space alone at its real input shape (identical blocks once) and write the LUT JSON. An "
                       "interrupted run resumes from OUTPUT.partial.")
    m.add_argument("--space", default="fbnet-cifar", help="space name or file (default: %(default)s)")
    m.add_argument("--width-mult", type=float, default=0.25, help="width multiplier (default: %(default)s)")
    m.add_argument("--batch-size", type=int, default=1, help="images per call (default: %(default)s)")
    m.add_argument("--output", "-o", required=True, help="LUT JSON file to write")
    m.add_argument("--restart", dest="resume", action="store_false",
                   help="ignore OUTPUT.partial and measure everything again")
    m.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_backend_args(m, defaults_from_lut=False)

    s = sub.add_parser("show", help="print a LUT as a table", description="Validate a LUT and print it.")
    s.add_argument("path", help="LUT JSON file")
    s.add_argument("--space", default=None, help="also check the LUT covers this space")
    s.add_argument("--width-mult", type=float, default=None, help="width multiplier of --space")
    s.add_argument("--spread", action="store_true", help="print p10-p90 instead of the median")

    d = sub.add_parser("diff", help="compare two LUTs side by side",
                       description="Two LUTs of the same space (two devices, or two runs): per layer both "
                       "latencies and the candidate pairs whose order flips between them.")
    d.add_argument("a", help="first LUT JSON")
    d.add_argument("b", help="second LUT JSON")
    d.add_argument("--min-gap", type=float, default=5.0,
                   help="count a flip only when the two candidates differ by more than this %% in both LUTs "
                   "(default: %(default)s; 0 counts every flip)")
    d.add_argument("--json", default=None, help="also write the comparison as JSON here")

    v = sub.add_parser("validate", help="additivity study: LUT sum vs end-to-end latency",
                       description="Sample architectures (uniform and from a theta file), measure each built as a "
                       "plain model end to end on the LUT's back end, compare with the LUT sum, plot it, and "
                       "store a fitted correction (scale, offset) in the LUT for the search.")
    v.add_argument("lut", help="LUT JSON file (the correction is written back into it unless --no-write)")
    v.add_argument("--space", default=None, help="space name or file (default: the LUT's space name)")
    v.add_argument("--width-mult", type=float, default=None,
                   help="width multiplier (default: the one that matches the LUT's fingerprint)")
    v.add_argument("--num-archs", "-n", type=int, default=20, help="uniformly sampled architectures "
                   "(default: %(default)s)")
    v.add_argument("--num-searched", type=int, default=None,
                   help="also measure this many searched-like networks (each from a concentrated, latency-biased "
                        "P_theta; default: --num-archs for a fitted table, 0 for a block-wise one)")
    v.add_argument("--theta", default=None, help="a search's theta.json: also sample --num-theta from softmax(theta)")
    v.add_argument("--num-theta", type=int, default=None, help="architectures from theta (default: --num-archs)")
    v.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    v.add_argument("--plot", default=None, help="scatter PNG (default: LUT path with .additivity.png)")
    v.add_argument("--report", default=None, help="report JSON (default: LUT path with .additivity.json)")
    v.add_argument("--no-write", dest="write", action="store_false", help="do not store the correction in the LUT")
    v.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_backend_args(v, defaults_from_lut=True, networks=True)

    f = sub.add_parser("fit", help="fit the table to whole networks measured on its back end",
                       description="Measure N whole networks (uniform, biased to fast and to slow blocks, and the "
                       "presets that fit the space) end to end on the LUT's back end (all in one group, warm, in a "
                       "fresh order every round, each network's 10th percentile), fit additive entries to them "
                       "(bounded least squares regularised toward the block-wise table, the weight chosen by "
                       "cross-validation) on 80 %%, and report on the other 20 %% the block-wise sum, its scale + "
                       "offset correction and the fitted table side by side. Writes a new LUT that the search "
                       "takes like any other.")
    f.add_argument("lut", help="block-wise LUT JSON file (read only)")
    f.add_argument("--output", "-o", default=None, help="fitted LUT (default: LUT path with .fit.json)")
    f.add_argument("--space", default=None, help="space name or file (default: the LUT's space name)")
    f.add_argument("--width-mult", type=float, default=None,
                   help="width multiplier (default: the one that matches the LUT's fingerprint)")
    f.add_argument("-n", "--num-networks", type=int, default=200,
                   help="networks drawn for the fit and the held-out check (default: %(default)s)")
    f.add_argument("--heldout", type=float, default=0.2, help="share of them never used in the fit "
                   "(default: %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    f.add_argument("--per-layer", action="store_true", help="one unknown per (layer, candidate) instead of one per "
                   "(layer shape, candidate) as the block-wise LUT measures (default: shared by shape)")
    f.add_argument("--report", default=None, help="report JSON (default: output path with .report.json)")
    f.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_backend_args(f, defaults_from_lut=True, networks=True)


def _fmt_device(dev: dict[str, Any]) -> str:
    parts = [str(dev.get("backend", "?")), str(dev.get("device_name", "")), f"threads {dev.get('threads', '?')}",
             str(dev.get("runtime", "")), str(dev.get("dtype", "")), f"batch {dev.get('batch_size', '?')}"]
    if dev.get("board"):
        parts.append(f"board {dev['board']}")
    return ", ".join(p for p in parts if p)


def diff_tables(a: Any, b: Any, *, min_gap_pct: float = 5.0) -> dict[str, Any]:
    """Compare two :class:`LatencyTable` s entry by entry.

    Returns ``{"layers": [{"index", "a", "b", "order_a", "order_b", "flips": [[c1, c2], ...]}],
    "ratio_median", "ratio_max_abs_pct", "flipped_pairs", "layers_with_flips", "kendall_tau_mean"}``;
    a pair ``(c1, c2)`` is listed when ``c1`` is faster than ``c2`` in ``a`` but slower in
    ``b``, both by more than ``min_gap_pct`` % (so noise on near-ties is not a flip).
    """
    from ..measure.additivity import kendall_tau
    from ..errors import LUTError

    if set(a.candidates) != set(b.candidates) or len(a.layers) != len(b.layers):
        raise LUTError(f"cannot compare {a.source} and {b.source}: different candidates or layer counts "
                       f"({len(a.layers)}x{len(a.candidates)} vs {len(b.layers)}x{len(b.candidates)})")
    cands = list(a.candidates)  # entries are read by name: b may list them in another order
    gap = 1.0 + min_gap_pct / 100.0
    rows, ratios, taus = [], [], []
    for l, (la, lb) in enumerate(zip(a.layers, b.layers)):
        va = {c: la[c].median_ms for c in cands}
        vb = {c: lb[c].median_ms for c in cands}
        flips = []
        for i, c1 in enumerate(cands):
            for c2 in cands[i + 1:]:
                x1, x2, y1, y2 = va[c1], va[c2], vb[c1], vb[c2]
                if (x1 * gap < x2 and y2 * gap < y1) or (x2 * gap < x1 and y1 * gap < y2):
                    flips.append(sorted((c1, c2), key=lambda c: va[c]))
        ratios += [vb[c] / va[c] for c in cands if va[c] > 0]
        taus.append(kendall_tau([va[c] for c in cands], [vb[c] for c in cands]))
        rows.append({"index": l, "a": va, "b": vb, "order_a": sorted(cands, key=va.get),
                     "order_b": sorted(cands, key=vb.get), "flips": flips})
    rs = sorted(ratios)
    return {"a": a.source, "b": b.source, "layers": rows,
            "ratio_median": rs[len(rs) // 2] if rs else float("nan"),
            "abs_pct_diff_median": sorted(abs(r - 1) * 100 for r in rs)[len(rs) // 2] if rs else float("nan"),
            "abs_pct_diff_max": max(abs(r - 1) * 100 for r in rs) if rs else float("nan"),
            "fixed_a_ms": a.fixed_ms, "fixed_b_ms": b.fixed_ms,
            "flipped_pairs": sum(len(r["flips"]) for r in rows),
            "layers_with_flips": sum(1 for r in rows if r["flips"]),
            "kendall_tau_mean": sum(taus) / len(taus), "min_gap_pct": min_gap_pct}


def _show(args: argparse.Namespace) -> int:
    from ..lut import LatencyTable
    from ..space import load_space

    space = load_space(args.space, width_mult=args.width_mult) if args.space else None
    table = LatencyTable.load(args.path, space)
    print(f"{args.path}: space {table.space_name} ({table.fingerprint}), {len(table.layers)} layers")
    print(f"device: {_fmt_device(table.device)}")
    extra = {k: v for k, v in table.device.items() if k in ("clock", "repeats", "passes", "warmup", "min_sample_ms",
                                                            "created",
                                                            "memory_format", "input_size")}
    if extra:
        print("        " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    cands = table.candidates
    w = 13 if args.spread else 9
    print(f"{'layer':>5} {'shape':<16} " + " ".join(f"{c:>{w}}" for c in cands))
    shapes = table.layer_shapes or [{} for _ in table.layers]
    for l, layer in enumerate(table.layers):
        sh = shapes[l]
        shape = f"{sh.get('c_in', '?')}->{sh.get('c_out', '?')} s{sh.get('stride', '?')} {sh.get('in_size', '?')}px"
        if args.spread:
            cells = [f"{layer[c].p10_ms:.3f}-{layer[c].p90_ms:.3f}" for c in cands]
        else:
            cells = [f"{layer[c].median_ms:.4f}" for c in cands]
        print(f"{l:>5} {shape:<16} " + " ".join(f"{x:>{w}}" for x in cells))
    fixed = ", ".join(f"{k} {e.median_ms:.4f}" for k, e in table.fixed.items())
    print(f"fixed: {fixed} (ms); fastest architecture {table.min_latency():.4f} ms")
    if table.correction:
        print(f"correction: predicted = {table.correction['scale']:.4f} x LUT sum + "
              f"{table.correction['offset_ms']:.4f} ms (fitted on {table.correction.get('fitted_on', '?')} nets)")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from ..lut import LatencyTable

    a, b = LatencyTable.load(args.a), LatencyTable.load(args.b)
    if a.fingerprint != b.fingerprint:
        print(f"note: the LUTs are for different space fingerprints ({a.fingerprint} vs {b.fingerprint}); "
              f"comparing layer by layer anyway")
    d = diff_tables(a, b, min_gap_pct=args.min_gap)
    print(f"A: {args.a}\n   {_fmt_device(a.device)}\nB: {args.b}\n   {_fmt_device(b.device)}")
    cands = a.candidates
    print(f"{'layer':>5}   " + " ".join(f"{c:>9}" for c in cands))
    prev = None
    for r in d["layers"]:
        key = (tuple(r["a"].values()), tuple(r["b"].values()))
        if key == prev:  # identical layers (same shape) repeat the row above
            print(f"{r['index']:>5}   (same as above)")
            continue
        prev = key
        print(f"{r['index']:>5} A " + " ".join(f"{r['a'][c]:>9.4f}" for c in cands))
        print(f"{'':>5} B " + " ".join(f"{r['b'][c]:>9.4f}" for c in cands))
        if r["flips"]:
            print(f"{'':>5}   flips (faster in A < slower in A, reversed in B): "
                  + ", ".join(f"{x}<{y}" for x, y in r["flips"]))
    print(f"fixed (stem+head): A {d['fixed_a_ms']:.4f} ms, B {d['fixed_b_ms']:.4f} ms")
    print(f"B/A per entry: median ratio {d['ratio_median']:.3f}, |B/A - 1| median {d['abs_pct_diff_median']:.1f}% "
          f"max {d['abs_pct_diff_max']:.1f}%; per-layer Kendall tau mean {d['kendall_tau_mean']:.3f}; "
          f"{d['flipped_pairs']} candidate pair(s) flip order (gap > {args.min_gap:g}% in both) in "
          f"{d['layers_with_flips']} of {len(d['layers'])} layers")
    if args.json:
        from ..runs import atomic_write_text

        atomic_write_text(args.json, json.dumps(d, indent=1) + "\n")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ..measure.additivity import apply_correction, load_theta, plot_scatter, sample_architectures, validate_lut
    from ..measure.fit import heldout_networks, heldout_report
    from ..errors import ConfigError, LUTError
    from ..lut import LatencyTable
    from ..runs import atomic_write_text

    table = LatencyTable.load(args.lut)
    space = table.find_space(args.space, args.width_mult)
    table.check_space(space)
    if args.num_archs < 0:
        raise ConfigError(f"--num-archs must be >= 0, got {args.num_archs}")
    backend = _make_backend(args, table.device, networks=True)
    if table.device.get("backend") and table.device["backend"] != backend.name:
        raise LUTError(f"{args.lut}: the LUT was measured with back end {table.device['backend']!r}; the study "
                       f"must use the same one (got --backend {backend.name})")
    _same_dtype(args.lut, table, backend, "the study")
    n_searched = (args.num_archs if table.fit else 0) if args.num_searched is None else args.num_searched
    exclude = list(table.fit.get("fit_networks") or []) if table.fit else []
    if table.fit and not exclude:
        print("note: this fitted table does not list its fit networks (made before they were recorded); the "
              "held-out draws cannot exclude them (a uniform draw repeats one with probability ~0)")
    if table.fit or n_searched:
        archs, sources = heldout_networks(space, table, args.num_archs, n_searched, seed=args.seed, exclude=exclude)
    else:
        archs = sample_architectures(space, args.num_archs, seed=args.seed)
        sources = ["uniform"] * len(archs)
    if args.theta:
        n_theta = args.num_archs if args.num_theta is None else args.num_theta
        theta_archs = sample_architectures(space, n_theta, theta=load_theta(args.theta, space), seed=args.seed + 1)
        archs += theta_archs
        sources += ["theta"] * len(theta_archs)
    report = validate_lut(table, space, archs, sources, backend, progress=args.progress, group_size=args.group_size,
                          statistic=args.statistic)
    s = report.summary()
    side = heldout_report(table, space, report.archs, report.measured_ms, report.sources)
    base = Path(args.lut)
    plot = args.plot or str(base.with_suffix("")) + ".additivity.png"
    rep = args.report or str(base.with_suffix("")) + ".additivity.json"
    plot_scatter(report, plot)
    atomic_write_text(rep, json.dumps({**report.to_dict(), "predictors": side,
                                       "excluded_fit_networks": len(exclude)}, indent=1) + "\n")
    print(f"{s['n']} architectures ({', '.join(f'{k} {v}' for k, v in s['sources'].items())}) on "
          f"{_fmt_device(report.device)}")
    print(f"measured {s['measured_ms_range'][0]:.3f}-{s['measured_ms_range'][1]:.3f} ms; LUT sum error: median "
          f"{s['median_abs_pct_error']:.1f}%, max {s['max_abs_pct_error']:.1f}%; measured/LUT mean "
          f"{s['mean_measured_over_lut']:.3f}; Kendall tau {s['kendall_tau']:.3f}"
          + "".join(f", {k} only {v:.3f}" for k, v in s["kendall_tau_by_source"].items()
                    if len(s["kendall_tau_by_source"]) > 1))
    held = s["holdout_median_abs_pct_error"]
    print(f"correction: measured ~= {report.scale:.4f} x LUT sum + {report.offset_ms:.4f} ms; error after: median "
          f"{s['corrected_median_abs_pct_error']:.1f}%, max {s['corrected_max_abs_pct_error']:.1f}%"
          + (f" (held-out halves: median {held:.1f}%, max {s['holdout_max_abs_pct_error']:.1f}%)" if held is not None
             else ""))
    if table.fit:
        print(f"held-out networks (none of the fit's {len(exclude)}), the three predictors side by side:")
        _print_predictors(side)
    print(f"wrote {plot} and {rep}")
    if args.write and table.fit:
        print("a fitted table carries no correction (the fit replaces it): nothing written")
    elif args.write:
        apply_correction(table, report)
        table.save(args.lut)
        print(f"stored the correction in {args.lut}; the search applies it (LatencyTable.predict)")
    return 0


def _print_predictors(side: dict[str, dict[str, dict[str, float]]]) -> None:
    """One row per (predictor, network set): median and max |% error|, within +-10 %, Kendall tau."""
    print(f"{'predictor':14s} {'networks':>16s} {'median |err|':>12s} {'max |err|':>10s} {'within 10%':>10s} "
          f"{'Kendall tau':>11s}")
    for name, by in side.items():
        for group, st in by.items():
            n = f" ({st['n']})" if "n" in st else ""
            print(f"{name:14s} {group + n:>16s} {st['median_abs_pct_error']:11.1f}% {st['max_abs_pct_error']:9.1f}% "
                  f"{st['share_within_10pct'] * 100:9.0f}% {st['kendall_tau']:11.3f}")


def _fit(args: argparse.Namespace) -> int:
    import time

    from ..errors import ConfigError, LUTError
    from ..lut import LatencyTable
    from ..measure.additivity import validate_lut
    from ..measure.fit import arch_key, compare, fit_networks, fit_table, fitted_lut, split_heldout
    from ..runs import atomic_write_text

    table = LatencyTable.load(args.lut)
    space = table.find_space(args.space, args.width_mult)
    table.check_space(space)
    if table.fit:
        raise LUTError(f"{args.lut} is already a fitted table; fit the block-wise LUT it came from")
    if not 0 < args.heldout < 1:
        raise ConfigError(f"--heldout must be a share in (0, 1), got {args.heldout}")
    backend = _make_backend(args, table.device, networks=True)
    if table.device.get("backend") and table.device["backend"] != backend.name:
        raise LUTError(f"{args.lut}: the LUT was measured with back end {table.device['backend']!r}; the fit must "
                       f"measure the networks with the same one (got --backend {backend.name})")
    _same_dtype(args.lut, table, backend, "the fit")
    archs, sources = fit_networks(space, table, args.num_networks, seed=args.seed)
    out = args.output or str(Path(args.lut).with_suffix("")) + ".fit.json"
    partial = out + ".networks.partial"
    t0 = time.perf_counter()
    try:
        report = validate_lut(table, space, archs, sources, backend, progress=args.progress, partial=partial,
                              group_size=args.group_size, statistic=args.statistic)
    except KeyboardInterrupt:
        print(f"interrupted: the networks measured so far are in {partial}; the same command resumes from it")
        raise
    t_measure = time.perf_counter() - t0
    fit_i, test_i = split_heldout(len(archs), args.heldout, seed=args.seed)
    pick = lambda xs, ii: [xs[i] for i in ii]  # noqa: E731
    t0 = time.perf_counter()
    fit = fit_table(table, space, pick(archs, fit_i), pick(report.measured_ms, fit_i), seed=args.seed,
                    tie=not args.per_layer)
    t_solve = time.perf_counter() - t0
    held = compare(table, space, fit, pick(archs, test_i), pick(report.measured_ms, test_i))
    record = {"heldout": {"networks": len(test_i), "sources": sorted(set(pick(sources, test_i))), **held},
              # so that `lut validate` measures networks the fit never saw
              "fit_networks": [arch_key(a.indices(space)) for a in pick(archs, fit_i)],
              "measure_s": round(t_measure, 1), "solve_s": round(t_solve, 2), "measured_on": report.device}
    fitted = fitted_lut(table, space, fit, record)
    fitted.save(out)
    rep = args.report or str(Path(out).with_suffix("")) + ".report.json"
    atomic_write_text(rep, json.dumps({"fit": fitted.fit, "networks": report.to_dict()["archs"],
                                       "heldout_index": test_i}, indent=1) + "\n")
    print(f"{len(archs)} networks on {_fmt_device(report.device)}: {len(fit_i)} fitted, {len(test_i)} held out; "
          f"measured in {t_measure:.0f} s, solved in {t_solve:.1f} s (lambda {fit.lam:g} by 5-fold cross-validation)")
    _print_predictors({name: {"all": st} for name, st in held.items()})
    print(f"wrote {out} (the search takes it with --lut) and {rep}")
    return 0


def _run_lut(args: argparse.Namespace) -> int:
    if args.lut_command == "fit":
        return _fit(args)
    if args.lut_command == "show":
        return _show(args)
    if args.lut_command == "diff":
        return _diff(args)
    if args.lut_command == "validate":
        return _validate(args)
    from ..measure import measure_lut
    from ..space import load_space

    space = load_space(args.space, width_mult=args.width_mult)
    backend = _make_backend(args)
    try:
        table = measure_lut(space, backend=backend, batch_size=args.batch_size, progress=args.progress,
                            output=args.output, resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted: what was measured is in {args.output}.partial; the same command resumes from it")
        raise
    print(f"wrote {args.output}: {space.name} ({space.fingerprint}), {space.num_layers} layers x "
          f"{len(space.candidates)} candidates on {_fmt_device(table.device)}; stem+head {table.fixed_ms:.4f} ms, "
          f"fastest architecture {table.min_latency():.4f} ms")
    return 0


COMMANDS = {"lut": ("measure, show, compare or validate latency look-up tables", _add_lut, _run_lut)}
