"""``fbnet-fast search`` (an FBNet architecture search) and ``fbnet-fast space`` (print a space)."""

from __future__ import annotations

import argparse
import dataclasses

__all__ = ["COMMANDS"]


def _add_search(p: argparse.ArgumentParser) -> None:
    from ..budget import BUDGET_MODES
    from ..ops import KERNEL_CHOICES
    from ..precision import PRECISIONS
    from ..search import LUT_BACKENDS, SearchConfig

    d = SearchConfig()
    g = p.add_argument_group("what to search")
    g.add_argument("--space", default=d.space, help="built-in space name (fbnet, fbnet-cifar) or a JSON/YAML file "
                   "(default: %(default)s)")
    g.add_argument("--width-mult", type=float, default=d.width_mult,
                   help="width multiplier for every stage (default: %(default)s; 1.0 is the paper's widths)")
    g.add_argument("--data", default=d.data, help="'synthetic' (generated, default), 'cifar10:PATH' (python "
                   "batches) or 'folder:PATH' (class-per-subfolder images)")
    g.add_argument("--num-train", type=int, default=None, help="training images to use (default: all; "
                   "4000 of the synthetic set)")
    g.add_argument("--num-val", type=int, default=None, help="held-out images (default: all; synthetic: 1000)")
    g.add_argument("--lut", default=None, help="latency table JSON to use, or several comma-separated for a "
                   "multi-target search (default: measure one on this CPU "
                   "at the start)")
    g.add_argument("--lut-weights", default=d.lut_weights, help="multi-target search (--lut a.json,b.json): weight per "
                   "LUT, e.g. 1,2 (default: equal)")
    g.add_argument("--lut-combine", choices=("mean", "max"), default=d.lut_combine, help="multi-target: 'mean' "
                   "sums the weighted per-device log latencies, 'max' takes the worst device (default: %(default)s)")
    g.add_argument("--lut-repeats", type=int, default=d.lut_repeats,
                   help="timing samples per block when measuring the LUT (default: %(default)s)")
    g.add_argument("--lut-backend", choices=LUT_BACKENDS, default=d.lut_backend,
                   help="the host back end that measures the LUT when no --lut is given (default: %(default)s; "
                   "README, 'Which back end the default search measures')")
    g = p.add_argument_group("schedule (the paper's defaults, scaled down)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="total epochs (default: %(default)s; paper: 90)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="epochs training only the weights (default: %(default)s; paper: 10)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size; under torchrun it is split across the ranks (default: %(default)s)")
    g.add_argument("--w-fraction", type=float, default=d.w_fraction,
                   help="share of the training data for the weights; the rest trains theta (default: %(default)s)")
    g.add_argument("--w-lr", type=float, default=d.w_lr, help="SGD learning rate, cosine decay (default: %(default)s)")
    g.add_argument("--w-lr-ramp-steps", type=int, default=d.w_lr_ramp_steps,
                   help="linear warm-up of the weight LR over this many steps, then cosine (default: %(default)s)")
    g.add_argument("--w-grad-clip", type=float, default=d.w_grad_clip,
                   help="clip the weight gradient's global norm to this (default: %(default)s; 0: off)")
    g.add_argument("--no-zero-init-residual", dest="zero_init_residual", action="store_false",
                   help="initialise residual blocks' last BN scale to 1 (default: 0, so each starts as the identity)")
    g.add_argument("--w-momentum", type=float, default=d.w_momentum, help="SGD momentum (default: %(default)s)")
    g.add_argument("--w-weight-decay", type=float, default=d.w_weight_decay,
                   help="SGD weight decay (default: %(default)s)")
    g.add_argument("--theta-lr", type=float, default=d.theta_lr, help="Adam learning rate for theta "
                   "(default: %(default)s)")
    g.add_argument("--theta-weight-decay", type=float, default=d.theta_weight_decay,
                   help="Adam weight decay for theta (default: %(default)s)")
    g.add_argument("--tau0", type=float, default=d.tau0, help="initial Gumbel temperature (default: %(default)s)")
    g.add_argument("--tau-decay", type=float, default=d.tau_decay,
                   help="tau is multiplied by exp(-tau_decay) every epoch (default: %(default)s)")
    g.add_argument("--tau-schedule", choices=("paper", "anneal"), default=d.tau_schedule,
                   help="paper: tau0*exp(-tau_decay*epoch); anneal: tau0 through the warm-up, then down to --tau-end "
                   "at the last epoch whatever the run's length (default: %(default)s)")
    g.add_argument("--tau-end", type=float, default=d.tau_end, help="the anneal schedule's last temperature "
                   "(default: %(default)s)")
    g = p.add_argument_group("latency budget (instead of alpha/beta)")
    g.add_argument("--target-ms", type=float, default=None, help="the budget T in ms on the LUT's device (on its "
                   "corrected scale when the LUT has a fitted correction); the search adapts the latency term's weight "
                   "itself (fbnet_fast.budget)")
    g.add_argument("--target-fraction", type=float, default=None, help="instead of --target-ms: T is this "
                   "fraction of the LUT latency under uniform theta, printed at the start (default: "
                   f"{d.target_fraction:g} unless --target-ms, --no-budget or --alpha/--beta/--loss-form is given)")
    g.add_argument("--no-budget", dest="budget", action="store_false",
                   help="no budget: the paper's alpha/beta latency loss (--alpha, --beta, --loss-form)")
    g.add_argument("--budget-mode", choices=BUDGET_MODES, default=d.budget_mode,
                   help="ceiling: at most T and spend it (the net lands in [T(1-2 tol), T]); target: land on T "
                   "(within tol); under: at most T, nothing pulls the latency up (default: %(default)s)")
    g.add_argument("--budget-tol", type=float, default=d.budget_tol,
                   help="tol: the target window is T(1 +- tol), the ceiling's [T(1 - 2 tol), T] "
                   "(default: %(default)s)")
    g.add_argument("--dual-lr", type=float, default=d.dual_lr,
                   help="step of the Lagrange multiplier per theta step, per unit of relative miss "
                   "(default: %(default)s)")
    g.add_argument("--budget-rho", type=float, default=d.budget_rho,
                   help="weight of the augmented Lagrangian's square term, which damps the multiplier "
                   "(default: %(default)s; 0: plain dual ascent)")
    g.add_argument("--no-measure-result", dest="measure_result", action="store_false",
                   help="do not time the returned net end to end, even when the LUT's back end runs on this host")
    g = p.add_argument_group("loss without a budget (giving one of these turns the default budget off)")
    g.add_argument("--alpha", type=float, default=None, help=f"latency weight alpha (default: {d.alpha:g})")
    g.add_argument("--beta", type=float, default=None, help=f"latency exponent beta (default: {d.beta:g})")
    g.add_argument("--loss-form", choices=("mul", "add"), default=None,
                   help="'mul': CE*alpha*log(LAT)^beta (the paper; under Adam alpha only rescales theta's "
                   "gradient, which Adam divides out); 'add': CE + alpha*log(LAT)^beta (default: "
                   f"{d.loss_form})")
    g.add_argument("--latency-unit", choices=("auto", "ms", "us"), default=d.latency_unit,
                   help="unit of LAT inside the log; auto: ms when every architecture exceeds e ms, else us")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="label smoothing of the CE (default: %(default)s)")
    g.add_argument("--gumbel", choices=("soft", "hard"), default=d.gumbel,
                   help="soft: weighted sum of all candidates (the paper); hard: straight-through, one "
                   "candidate per layer in forward")
    g.add_argument("--hard-epochs", type=int, default=d.hard_epochs,
                   help="the last N epochs sample one candidate per layer (straight-through hard Gumbel): the "
                   "weights train the single paths theta draws, so the most likely architecture is what the "
                   "supernet learned, at ~1/7 of a soft step's cost (default: %(default)s; 0: soft to the end)")
    g.add_argument("--commit", type=float, default=d.commit, metavar="H",
                   help="every layer's entropy of P_theta (share of the uniform's) must fall linearly to H by the "
                   "last soft theta step, so the most likely architecture is the net the weights trained and the "
                   "budget holds for it (default: %(default)s)")
    g.add_argument("--commit-by", type=float, default=d.commit_by, metavar="S",
                   help="share of the search's theta steps by which the ceiling reaches H; it holds there after, "
                   "so the weights train the committed net before the end (default: %(default)s)")
    g.add_argument("--commit-lr", type=float, default=d.commit_lr,
                   help="the ceiling multiplier's step (default: %(default)s)")
    g.add_argument("--commit-rho", type=float, default=d.commit_rho,
                   help="the ceiling's quadratic penalty (default: %(default)s)")
    g.add_argument("--decide-by", type=float, default=d.decide_by, metavar="S",
                   help="fix the layers greedily, most certain first, at the end of each search epoch, so that every "
                   "layer is decided by this share of the theta steps (the last decisions land the net in the "
                   "budget); the epochs after train the returned net alone (default: %(default)s)")
    g.add_argument("--no-decide", dest="decide_by", action="store_const", const=None,
                   help="no decisions during the search: theta soft to the end, the argmax taken at the end (the paper)")
    g.add_argument("--no-commit", dest="commit", action="store_const", const=None,
                   help="no entropy ceiling: theta free to stay spread (the paper)")
    g = p.add_argument_group("execution")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: autocast bf16 for the supernet (fp32 master weights, theta, loss and latency term); "
                   "only on CPUs with AVX512-BF16 and CUDA GPUs with bf16, refused elsewhere (default: %(default)s)")
    g.add_argument("--kernel", choices=KERNEL_CHOICES, default=d.kernel,
                   help="mixed-op implementation: fused kernels when built (auto/fused) or the eager reference")
    g.add_argument("--device", default=d.device, help="torch device (default: %(default)s)")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also checkpoint every N steps (default: epoch ends only)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="checkpoints kept (default: %(default)s)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g = p.add_argument_group("output")
    g.add_argument("--no-plots", dest="plots", action="store_false",
                   help="write no PNGs and sample no architectures at the end")
    g.add_argument("--plot-samples", type=int, default=d.plot_samples,
                   help="architectures drawn from P_theta and evaluated for the accuracy-vs-latency scatter "
                   "(default: %(default)s)")
    g.add_argument("--out", "-o", default="runs/search", help="run folder (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue the search in --out from its last checkpoint")
    g.add_argument("--warmup-from", metavar="RUN_DIR", default=None,
                   help="skip the warm-up: start from the end of RUN_DIR's (its checkpoints/warmup.pt). Only alpha, "
                   "beta, the loss form and theta's optimiser may differ from RUN_DIR's options; the result is "
                   "the same as running the warm-up again (for alpha sweeps)")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --out")


def search_config_from_args(args: argparse.Namespace):
    """The :class:`SearchConfig` of a command line: the budget is on by default (``target_fraction``);
    ``--target-ms`` replaces it; ``--no-budget`` or any of ``--alpha/--beta/--loss-form`` turns it off."""
    from ..errors import ConfigError
    from ..search import SearchConfig

    d = SearchConfig()
    v = dict(vars(args))
    loss_opts = [f"--{k.replace('_', '-')}" for k in ("alpha", "beta", "loss_form") if v.get(k) is not None]
    budget_opts = [o for o, k in (("--target-ms", "target_ms"), ("--target-fraction", "target_fraction"))
                   if v.get(k) is not None]
    if len(budget_opts) == 2:
        raise ConfigError("give --target-ms or --target-fraction, not both")
    if budget_opts and (loss_opts or not v.get("budget", True)):
        raise ConfigError(f"{budget_opts[0]} sets a budget, whose weight the search adapts itself; "
                          f"{', '.join(loss_opts) or '--no-budget'} is for the loss without one: give one or the other")
    if loss_opts or not v.get("budget", True):
        v["target_ms"] = v["target_fraction"] = None
    elif v.get("target_ms") is not None:
        v["target_fraction"] = None
    elif v.get("target_fraction") is None:
        v["target_fraction"] = d.target_fraction
    for k in ("alpha", "beta", "loss_form"):
        if v.get(k) is None:
            v[k] = getattr(d, k)
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    return SearchConfig(**{k: val for k, val in v.items() if k in fields})


def _run_search(args: argparse.Namespace) -> int:
    from ..search import run_search

    cfg = search_config_from_args(args)
    result = run_search(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    hist = result["history"]
    last = hist[-1] if hist else {}
    if "target_ms" in result:
        print(f"argmax of theta: {result['argmax']} ({result['argmax_latency_ms']:.4f} ms LUT)")
        if result["repaired_layers"]:
            print(f"repaired in layer(s) {', '.join(map(str, result['repaired_layers']))} to meet the "
                  f"{result['budget_mode']} of {result['target_ms']:g} ms")
        print(f"architecture: {result['arch']}")
    else:
        print(f"most likely architecture: {result['arch']}")
    for target, ms in result.get("latency_per_target_ms", {}).items():
        print(f"  on {target}: {ms:.4f} ms (LUT)")
    budget = ""
    if "target_ms" in result:
        budget = f" ({result['budget_mode']} {result['target_ms']:g} ms" + (
            f", measured here {result['measured_ms']:.4f} ms" if "measured_ms" in result else "") + ")"
    print(f"LUT latency {result['latency_ms']:.4f} ms{budget}; supernet val acc {last.get('val_acc', float('nan')):.4f}; "
          f"run folder {result['run_dir']}")
    return 0


def _add_space(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", nargs="?", default="fbnet-cifar", help="space name or file (default: %(default)s)")
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier")


def _run_space(args: argparse.Namespace) -> int:
    from ..space import load_space

    print(load_space(args.space, width_mult=args.width_mult).summary())
    return 0


COMMANDS = {
    "search": ("run an FBNet architecture search", _add_search, _run_search),
    "space": ("print a search space's resolved layers", _add_space, _run_space),
}
