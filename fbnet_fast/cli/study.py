"""``fbnet-fast study pareto``: searched vs uniformly random architectures (see :mod:`fbnet_fast.research.study`)."""

from __future__ import annotations

import argparse
import math

from ..errors import ConfigError

__all__ = ["COMMANDS"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_study(p: argparse.ArgumentParser) -> None:
    from ..research.study import PHASES, StudyConfig

    d = StudyConfig()
    p.add_argument("kind", choices=("pareto",), help="the study to run: 'pareto' (accuracy vs latency, searched "
                   "architectures against random ones; --compare-one-path adds soft against one-path search)")
    g = p.add_argument_group("what to study")
    g.add_argument("--space", default=d.space, help="space name or file (default: %(default)s)")
    g.add_argument("--width-mult", type=float, default=d.width_mult, help="width multiplier (default: %(default)s)")
    g.add_argument("--input-size", type=int, default=None,
                   help="input resolution, overriding the space's (fbnet-cifar: 32); the generated data follows it")
    g.add_argument("--data", default=d.data, help="data spec as for 'search' (default: %(default)s)")
    g.add_argument("--num-train", type=int, default=None, help="training images (default: all; synthetic: 6000)")
    g.add_argument("--num-val", type=int, default=None, help="held-out images (default: all; synthetic: 2000)")
    g.add_argument("--alphas", type=_floats, default=None,
                   help="latency weights, one search each with the alpha/beta loss (default: %s; none when "
                   "--targets is given)" % ",".join(f"{a:g}" for a in d.alphas))
    g.add_argument("--targets", type=_floats, default=d.targets,
                   help="latency budgets, one search each: fractions of the LUT latency under uniform theta, "
                   "e.g. 0.6,0.75,0.9; each searched net is compared with random nets of the same LUT latency")
    g.add_argument("--budget-mode", choices=("target", "ceiling", "under"), default=d.budget_mode,
                   help="the searches' --budget-mode (default: %(default)s)")
    g.add_argument("--band", type=float, default=d.band,
                   help="per target, random nets count when their latency measured on this host lies within this "
                   "fraction of the searched nets' (their median) (default: %(default)s)")
    g.add_argument("--band-random", type=int, default=d.band_random,
                   help="random nets per target's band: drawn (on the LUT, then confirmed by measurement) until the "
                   "band holds this many (default: %(default)s)")
    g.add_argument("--num-random", type=int, default=d.num_random,
                   help="uniformly random architectures trained for comparison (default: %(default)s)")
    g.add_argument("--no-presets", dest="presets", action="store_false",
                   help="leave out the FBNet presets (only used when their block list fits the space)")
    g.add_argument("--cost-alphas", type=_floats, default=None,
                   help="alphas searched a second time with --kernel reference to time the fused kernels "
                   "against (default: %s, none without alphas; '' for none)" % ",".join(f"{a:g}" for a in d.cost_alphas))
    g.add_argument("--seed", type=int, default=d.seed, help="first seed of searches, trainings and data; the random "
                   "architectures use seed+1 (default: %(default)s)")
    g.add_argument("--search-seeds", type=int, default=d.search_seeds, metavar="N",
                   help="searches per searched point, seeds --seed, --seed+1, ... (default: %(default)s)")
    g.add_argument("--train-seeds", type=int, default=d.train_seeds, metavar="M",
                   help="trainings per architecture (searched, random, preset), seeds --seed, --seed+1, ...; a "
                   "training seed also draws the generated data, the same M data sets for every architecture "
                   "(default: %(default)s)")
    g.add_argument("--bootstrap", type=int, default=d.bootstrap, metavar="B",
                   help="bootstrap resamples per 95 %% interval (default: %(default)s)")
    g.add_argument("--compare-one-path", type=float, default=None, metavar="TARGET",
                   help="at this target (one of --targets), match each soft search with a one-path search "
                   "(--gumbel hard) given the soft search's measured wall time, trained and compared the same way")
    g = p.add_argument_group("schedules (one for every search, one for every training)")
    g.add_argument("--search-epochs", type=int, default=d.search_epochs, help="search epochs (default: %(default)s)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="search warm-up epochs (default: %(default)s)")
    g.add_argument("--theta-lr", type=float, default=d.theta_lr,
                   help="Adam learning rate of theta in every search (default: the search's)")
    g.add_argument("--gumbel", choices=("soft", "hard"), default=d.gumbel,
                   help="Gumbel-softmax of every search, as 'search --gumbel' (default: %(default)s)")
    g.add_argument("--loss-form", choices=("mul", "add"), default=d.loss_form,
                   help="'mul': CE*alpha*log(LAT)^beta (the paper; under Adam alpha only rescales theta's gradient), "
                   "'add': CE + alpha*log(LAT)^beta (alpha trades accuracy for latency) (default: %(default)s)")
    g.add_argument("--warmup-from", metavar="SEARCH_DIR", default=None,
                   help="a finished search (same seed, data, schedule and LUT) whose warm-up every search outside "
                   "--cost-alphas starts from (default: the study's first full search)")
    g.add_argument("--no-share-warmup", dest="share_warmup", action="store_false",
                   help="every search runs its own warm-up (default: alphas outside --cost-alphas start after "
                   "the warm-up of the first full search, which gives the same result, since the warm-up "
                   "does not read alpha)")
    g.add_argument("--train-epochs", type=int, default=d.train_epochs,
                   help="epochs of every training from scratch (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size (default: %(default)s)")
    g = p.add_argument_group("latency")
    g.add_argument("--lut", default=None, help="latency table to use (default: measure one on this host)")
    from ..search import LUT_BACKENDS

    g.add_argument("--backend", choices=LUT_BACKENDS, default=d.backend,
                   help="back end of this host that measures the LUT (without --lut) and times every architecture "
                   "end to end (default: %(default)s, the default search's; a folder from before this option "
                   "was measured with torch-cpu and continues only with --backend torch-cpu)")
    g.add_argument("--lut-repeats", type=int, default=d.lut_repeats,
                   help="timing samples per block when measuring the LUT (default: %(default)s)")
    g.add_argument("--latency-repeats", type=int, default=d.latency_repeats,
                   help="timing samples per architecture end to end (default: %(default)s)")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="torch intra-op threads everywhere (default: %(default)s)")
    g.add_argument("--jobs", "-j", type=int, default=d.jobs,
                   help="searches and trainings run at once, each a process with --threads threads; the fused "
                   "and reference searches of --cost-alphas then run side by side, under the same load "
                   "(default: %(default)s; on N cores: N / threads)")
    g = p.add_argument_group("output")
    g.add_argument("--out", "-o", default="runs/study-pareto",
                   help="study folder (run folders, checkpoints, logs); a rerun with the same options reuses what is "
                   "finished (default: %(default)s)")
    g.add_argument("--results", default=None, metavar="DIR",
                   help="results folder to commit (small JSON per search and per architecture, the LUT, the "
                   "report): a run on another machine with the same options and this folder continues instead "
                   "of restarting; other options are refused (default: the study folder)")
    g.add_argument("--skip", action="append", default=[], metavar="PHASE",
                   help=f"leave out a phase ({', '.join(PHASES)}; repeat or comma-separate); the report covers "
                   "what exists")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _run_study(args: argparse.Namespace) -> int:
    from ..research.study import StudyConfig, run_study

    skip = [s.strip() for item in args.skip for s in item.split(",") if s.strip()]
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    d = StudyConfig()
    alphas = args.alphas if args.alphas is not None else (() if args.targets else d.alphas)
    cost_alphas = args.cost_alphas if args.cost_alphas is not None else (d.cost_alphas if alphas else ())
    cfg = StudyConfig(space=args.space, width_mult=args.width_mult, input_size=args.input_size, data=args.data,
                      num_train=args.num_train, num_val=args.num_val, alphas=tuple(alphas), num_random=args.num_random,
                      targets=tuple(args.targets), budget_mode=args.budget_mode, band=args.band,
                      band_random=args.band_random,
                      presets=args.presets, cost_alphas=tuple(cost_alphas), seed=args.seed,
                      search_epochs=args.search_epochs, warmup_epochs=args.warmup_epochs,
                      theta_lr=args.theta_lr, gumbel=args.gumbel, loss_form=args.loss_form,
                      warmup_from=args.warmup_from, share_warmup=args.share_warmup, jobs=args.jobs,
                      train_epochs=args.train_epochs, batch_size=args.batch_size, lut=args.lut,
                      backend=args.backend,
                      lut_repeats=args.lut_repeats, latency_repeats=args.latency_repeats, threads=args.threads,
                      progress=args.progress, search_seeds=args.search_seeds, train_seeds=args.train_seeds,
                      bootstrap=args.bootstrap, compare_one_path=args.compare_one_path, results=args.results)
    s = run_study(cfg, args.out, skip=skip, command=_command(args))
    f = s["figures"]["measured_ms"]
    frac, gap = f["random_dominated_by_searched_front"], f["mean_accuracy_gap"]
    print(f"{s['trained']}/{s['points']} points trained; study folder {s['out']}")
    print("random architectures dominated by the searched front: "
          + ("n/a" if frac is None or math.isnan(frac) else f"{frac:.1%}")
          + f" ({f['num_random']} random, {f['num_searched']} searched)")
    print("mean accuracy gap at matched latency: "
          + ("n/a" if gap is None else f"{gap * 100:+.2f} points")
          + f" ({f['searched_points_in_random_latency_range']} searched point(s) inside the random latency range)")
    def pct(v):
        return "n/a" if v is None else f"{100 * v:+.1f} %"

    def iv(d, points=False):
        if not d:
            return "n/a"
        scale, sign = 100, "+" if points else ""
        ci = "" if d["lo"] is None else f" [{scale * d['lo']:{sign}.1f}, {scale * d['hi']:{sign}.1f}]"
        return f"{scale * d['median']:{sign}.1f}{' pts' if points else ' %'}{ci}"

    for t in s["figures"].get("targets", []):
        srch, band = t["searched"], t["band"]
        dr = band["draws"]
        print(f"target {t['fraction']:g} x uniform = {t['target_ms']:.4f} ms ({t['budget_mode']}): searched "
              f"LUT {pct(t.get('searched_lut_error'))}, {iv(srch['accuracy'])} ({srch['searches']} search(es)); "
              f"random in band median {iv(band['accuracy'])} ({band['trained_archs']} nets, "
              f"{dr.get('measured_until_full')} measured draws); gain {iv(t['gain'], True)}")
        if t.get("one_path"):
            op = t["one_path"]
            print(f"  one-path at the same wall time: {iv(op['accuracy'])}, gain {iv(op['gain'], True)}; "
                  f"soft minus one-path {iv(op['soft_minus_one_path'], True)}")
    n = s["figures"]["noise"]
    if n["within_arch_sd"] is not None:
        print(f"random nets: sd across training seeds {100 * n['within_arch_sd']:.1f} pts, across architectures "
              + ("n/a" if n["between_arch_sd"] is None else f"{100 * n['between_arch_sd']:.1f} pts"))
    print(f"table for RESULTS.md: {s['results']}/report.md")
    for c in s["search_cost"]["fused_vs_reference"]:
        print(f"search alpha={c['alpha']:g}: fused {c['fused_wall_s']:.1f} s / {c['fused_peak_rss_mib']:.0f} MiB, "
              f"reference {c['reference_wall_s']:.1f} s / {c['reference_peak_rss_mib']:.0f} MiB "
              f"({c['wall_speedup']:.2f}x)")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The ``fbnet-fast study`` command line of ``args``, every option that is not its default (report.md)."""
    import shlex

    p = argparse.ArgumentParser()
    _add_study(p)
    words = ["fbnet-fast", "study", args.kind]
    for a in p._actions:
        if not a.option_strings or a.dest in ("help", "progress"):
            continue
        v = getattr(args, a.dest, None)
        if v == a.default or (a.dest == "skip" and not v):
            continue
        flag = max(a.option_strings, key=len)
        if a.nargs == 0:
            words.append(flag)
        elif isinstance(v, list):
            words += [w for item in v for w in (flag, str(item))]
        elif isinstance(v, tuple):
            words += [flag, ",".join(f"{x:g}" for x in v)]
        else:
            words += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    return shlex.join(words)


COMMANDS = {"study": ("run a study (pareto: searched vs random architectures, accuracy vs latency)",
                      _add_study, _run_study)}
