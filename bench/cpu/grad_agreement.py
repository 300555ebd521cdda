"""Do the fused kernels give a search the reference's gradients in the states the search passes through?

    python bench/cpu/grad_agreement.py RUN_DIR [--steps 3] [--threads 2] [--out FILE]

``RUN_DIR`` is a finished or stopped ``fbnet-fast search`` folder (its ``config.json`` and
``checkpoints/``: ``warmup.pt`` and the newest ``ckpt-*.pt``). For each checkpoint four copies of the
search load it: ``fused`` (``--kernel auto``, float32), ``reference`` (eager, float32), ``perturbed`` (the
float32 reference with every weight moved by one ulp, half up and half down, seeded) and ``float64`` (the
eager reference run in float64: the exact gradient for this comparison's purpose). Each copy runs the search's
own step (``Searcher._train_step``: same batch, augmentation, Gumbel noise, loss, budget and commitment terms;
the float64 copy's logits are rounded to float32 for the loss, as every copy's are) for ``--steps`` weight
steps and ``--steps`` theta steps at the checkpoint's position, with the optimiser steps switched off, so
every step sees the checkpoint's parameters. Then, against the float64 gradient:

* the weights, all together: ``||g - g64|| / ||g64||`` for fused, reference and perturbed;
* theta, over the undecided layers together and per layer: the same distance (median and maximum over the
  layers), and on how many layers the candidate the gradient pushes up most (``argmin g``) is float64's.
  (A decided layer's theta is pinned, its gradient ~1e-15: left out.)

Both float32 paths round, in other orders: neither is the exact gradient. If the fused kernels computed
another function (a bug) or rounded with a bias, the fused copy would sit far further from float64 than the
float32 reference does; if they differ by rounding alone, both sit at distances of one order (the
``perturbed`` copy shows how far a 1-ulp change of the weights alone moves the float32 reference). The
divergence study (``divergence.py``) shows why this is the question to ask: the search is chaotic in its
weights, so whole runs' architectures and held-out accuracies differ for rounding alone, and a few seeds of
whole searches cannot tell a bias from that spread. Run it alone on the machine; it prints a table and writes
JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from divergence import perturb_weights  # noqa: E402  (bench/cpu is on sys.path when run as a script)
from fbnet_fast.measure.core import cpu_name

ROOT = Path(__file__).resolve().parents[2]


def _searchers(run_dir: Path, tmp: Path):
    from fbnet_fast.search import SearchConfig, Searcher

    d = json.loads((run_dir / "config.json").read_text())["search"]
    lut = d.get("lut")
    if lut and not Path(lut).exists() and (ROOT / lut).exists():
        d = {**d, "lut": str(ROOT / lut)}  # a relative path as recorded by a search run from the repository root
    out = {}
    for name, kernel in (("fused", "auto"), ("reference", "reference"), ("perturbed", "reference"),
                         ("float64", "reference")):
        cfg = SearchConfig.from_dict({**d, "kernel": kernel, "progress": False, "plots": False})
        out[name] = Searcher(cfg, tmp / name, log=lambda msg: None)
    return out


def _to_float64(s) -> None:
    """The copy's model, latency matrix and batches in float64 (after its checkpoint is loaded)."""
    s.model.double()  # in place: the parameter objects (s._w_params, s._a_params) stay the same
    s.lut_matrix = s.lut_matrix.double()
    for split in (s.w_split, s.t_split):
        batch = split.batch

        def batch64(*a, batch=batch, **k):
            x, y = batch(*a, **k)
            return x.double(), y
        split.batch = batch64


def _freeze_updates(s) -> None:
    """The step computes its gradients; nothing the comparison reads is changed by it."""
    s.w_opt.step = lambda *a, **k: None
    s.t_opt.step = lambda *a, **k: None
    s.w_sched.step = lambda *a, **k: None
    s._decide = lambda *a, **k: None


def _grads(s, phase: str, step: int) -> list[torch.Tensor]:
    s.phase, s.step = phase, step
    s._train_step()
    params = s._w_params if phase == "w" else s._a_params
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    nb = float(b.norm())
    return float((a - b).norm()) / nb if nb > 0 else float((a - b).norm())


def _compare(args, ck_dir: Path, names: list[str], tmp: Path) -> list[dict]:
    """Every checkpoint's float32 gradients against float64's (the table rows; printed as they come)."""
    rows = []
    f32 = ("fused", "reference", "perturbed")
    print(f"{'checkpoint':>18s} {'phase':>5s} {'step':>4s} | distance to float64, all: " + " ".join(f"{k:>10s}" for k in f32)
          + " | theta per layer, median/max: " + " ".join(f"{k:>19s}" for k in f32) + " | argmin as float64's")
    for name in names:
        runs = _searchers(args.run_dir, tmp / name)
        state = torch.load(ck_dir / name, map_location="cpu", weights_only=False)
        for s in runs.values():
            s.load_state_dict(state, source=name)
            _freeze_updates(s)
        perturb_weights(runs["perturbed"])
        _to_float64(runs["float64"])
        epoch = runs["reference"].epoch
        for phase in ("w", "theta"):
            n_steps = runs["reference"].w_steps if phase == "w" else runs["reference"].t_steps
            for step in range(min(args.steps, n_steps)):
                g = {k: _grads(s, phase, step) for k, s in runs.items()}
                keep = range(len(g["float64"])) if phase == "w" else [
                    i for i, d in enumerate(runs["reference"].decided) if d < 0]
                if not keep:
                    continue  # every layer decided: no theta gradient left to compare
                flat = {k: torch.cat([v[i].double().reshape(-1) for i in keep]) for k, v in g.items()}
                row = {"checkpoint": name, "epoch": epoch, "phase": phase, "step": step,
                       **{k: _rel(flat[k], flat["float64"]) for k in f32},
                       "fused_vs_reference": _rel(flat["fused"], flat["reference"])}
                cell = ""
                if phase == "theta":
                    # a decided layer's theta is pinned (P one-hot to e^-30): its gradient is ~1e-15, rounding only
                    live = [i for i, (t, d) in enumerate(zip(g["float64"], runs["reference"].decided))
                            if d < 0 and float(t.norm()) > 0]
                    per = {k: [_rel(g[k][i], g["float64"][i]) for i in live] for k in f32}
                    agree = {k: sum(int(g[k][i].argmin() == g["float64"][i].argmin()) for i in live) for k in f32}
                    row.update(layers=len(live), per_layer=per, argmin_agrees=agree)
                    if live:
                        cell = " ".join(f"{statistics.median(per[k]):9.2e}/{max(per[k]):9.2e}" for k in f32)
                        cell += " | " + "/".join(str(agree[k]) for k in f32) + f" of {len(live)}"
                rows.append(row)
                print(f"{name:>18s} {phase:>5s} {step:4d} | {'':26s}" + " ".join(f"{row[k]:10.3e}" for k in f32)
                      + f" | {cell}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--steps", type=int, default=3, help="weight steps and theta steps per checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoints", nargs="*", default=None, help="file names in RUN_DIR/checkpoints "
                   "(default: warmup.pt and the newest ckpt-*.pt)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tn-narrow", type=int, default=None, help="override fbnet_fast.ops.gemm.TN_MAX_NARROW (the "
                   "weight-gradient routing) for the fused copy, e.g. 32 as the sixteenth session ran it on v4")
    args = p.parse_args(argv)
    from fbnet_fast.ops import gemm

    if args.tn_narrow is not None:
        gemm.TN_MAX_NARROW = args.tn_narrow
    torch.set_num_threads(args.threads)
    from fbnet_fast.malloc import tune_malloc

    tune_malloc()
    ck_dir = args.run_dir / "checkpoints"
    names = args.checkpoints
    if names is None:
        ckpts = sorted(ck_dir.glob("ckpt-*.pt"))
        names = [n for n in ["warmup.pt", ckpts[-1].name if ckpts else None] if n and (ck_dir / n).exists()]
    if not names:
        raise SystemExit(f"no checkpoints in {ck_dir}")
    with tempfile.TemporaryDirectory(prefix="fbnet-gradagree-") as tmp:  # the copies' run folders (nothing kept)
        rows = _compare(args, ck_dir, names, Path(tmp))
    from fbnet_fast.ops import _ext

    info = {"run_dir": str(args.run_dir), "threads": args.threads, "tn_narrow": gemm.TN_MAX_NARROW, "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name(),
            "isa": _ext.load().isa() if _ext.available() else None}
    print(json.dumps(info))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
