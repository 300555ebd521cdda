"""How far the fused kernels take a search from the reference, against how far float32 rounding alone does.

    python bench/cpu/divergence.py [--steps 100] [--threads 2] [--out bench/results/divergence.json]

Three copies of the default search (fbnet-cifar at width 0.25, batch 64, seed 0, a constant LUT) run the
same warm-up weight steps on the same batches, as ``Searcher._train_step`` runs them:

* ``fused``: the fused kernels (``--kernel auto``);
* ``reference``: the eager reference;
* ``perturbed``: the eager reference with every weight moved by one float32 ulp at the start (half of
  them up, half down, seeded): a change no larger than the rounding of one product.

After each step it records each copy's training cross-entropy and the relative distance of the weights,
``||w_a - w_b|| / ||w_b||``, of fused and of perturbed from the reference. If the fused kernels computed a
different function (a bug, a biased rounding), fused would leave the reference faster than the perturbed
copy does; if they differ only by rounding, both distances grow alike: the search is chaotic in its
weights, and which architecture a run ends on (and its held-out accuracy) is then a draw either way.
Prints a table every ``--every`` steps and writes all of it to ``--out``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fbnet_fast.measure.core import cpu_name

sys.path.insert(0, str(Path(__file__).parent))
from profile_search import _lut  # noqa: E402  (the constant LUT the step profile uses)


def _flat(s) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in s._w_params])


def perturb_weights(searcher, seed: int = 12345) -> None:
    """Move every weight of ``searcher`` (a ``Searcher``) by one float32 ulp, half up and half down (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in searcher._w_params:
            up = torch.rand(prm.shape, generator=gen) < 0.5
            prm.copy_(torch.where(up, torch.nextafter(prm, torch.full_like(prm, float("inf"))),
                                  torch.nextafter(prm, torch.full_like(prm, float("-inf")))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/divergence.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fbnet_fast.malloc import tune_malloc

    tune_malloc()
    from fbnet_fast.search import SearchConfig, Searcher
    from fbnet_fast.space import load_space

    space = load_space("fbnet-cifar", width_mult=0.25)
    lut = _lut(space)
    tmp = Path(tempfile.mkdtemp(prefix="fbnet-divergence-"))
    runs = {}
    for name, kernel in (("fused", "auto"), ("reference", "reference"), ("perturbed", "reference")):
        cfg = SearchConfig(kernel=kernel, seed=args.seed, progress=False, plots=False)
        runs[name] = Searcher(cfg, tmp / name, space=space, lut=lut, log=lambda msg: None)
    perturb_weights(runs["perturbed"])
    ref0 = _flat(runs["reference"])
    if not torch.equal(_flat(runs["fused"]), ref0):
        raise SystemExit("the fused and reference copies do not start from the same weights")
    w_steps = runs["reference"].w_steps
    limit = runs["reference"].cfg.warmup_epochs * w_steps
    if args.steps > limit:
        raise SystemExit(f"--steps {args.steps}: the warm-up has {limit} weight steps (theta steps come after)")
    rows = []
    print(f"{'step':>5s} {'CE fused':>9s} {'CE ref':>9s} {'CE pert':>9s} {'|fused-ref|':>12s} {'|pert-ref|':>12s}")
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        ce = {}
        for name, s in runs.items():
            s.phase = "w"
            ce[name] = s._train_step()["ce"]
            s.step += 1
            if s.step == w_steps:  # the next warm-up epoch: its own batch order, as the search runs it
                s.epoch, s.step = s.epoch + 1, 0
        ref = _flat(runs["reference"])
        nref = float(ref.norm())
        row = {"step": step, **{f"ce_{k}": v for k, v in ce.items()},
               "dist_fused": float((_flat(runs["fused"]) - ref).norm()) / nref,
               "dist_perturbed": float((_flat(runs["perturbed"]) - ref).norm()) / nref}
        rows.append(row)
        if step % args.every == 0 or step == 1:
            print(f"{step:5d} {ce['fused']:9.4f} {ce['reference']:9.4f} {ce['perturbed']:9.4f} "
                  f"{row['dist_fused']:12.3e} {row['dist_perturbed']:12.3e}", flush=True)
    info = {"steps": args.steps, "threads": args.threads, "seed": args.seed, "seconds": time.perf_counter() - t0,
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}
    try:
        from fbnet_fast.ops import _ext

        info["isa"] = _ext.load().isa()
    except Exception as e:  # noqa: BLE001 - the figures stand without these
        info.setdefault("isa", f"unavailable ({e})")
    info["cpu"] = cpu_name()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
