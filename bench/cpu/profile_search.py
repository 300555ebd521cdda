"""Where a search step and a search epoch spend their time, by phase, fused vs reference.

    python bench/cpu/profile_search.py [--threads 1 2] [--rounds 5] [--out bench/results/profile_search.json]

Builds the default search (``SearchConfig()``: fbnet-cifar at width 0.25, batch 64, generated
data, a given constant LUT so nothing is measured) once per kernel (``fused``, ``reference``) and
times, in interleaved rounds (kernel x threads, medians over ``--rounds``):

* one weight step, split into its parts: ``data`` (indexing, crop/flip, normalise,
  channels_last), ``sample`` (Gumbel weights), the forward of ``stem``, of the 22 ``mixed ops``
  and of the ``head`` + CE, their backward in reverse order (each part is run on a detached copy of
  its input, so its backward is timed alone), and ``optimiser`` (grad norm, clip, SGD, LR step);
* one whole weight step and one whole theta step as the search runs them (``Searcher._train_step``);
* the per-epoch work: ``evaluate supernet`` (1,000 held-out images), ``evaluate argmax`` (BN
  recalibration on 8 batches + 1,000 images) and ``checkpoint`` (one atomic save).

From these it prints an epoch budget: steps per epoch x the step times + the per-epoch work.
Run it alone on the machine (nothing else on the cores). As an AVX2-only CPU runs it (emulated on a
wider one): ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python
bench/cpu/profile_search.py --isa v3``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fbnet_fast.lut import LatencyTable
from fbnet_fast.measure.core import cpu_name
from fbnet_fast.ops import head_op, stem_op
from fbnet_fast.search import SearchConfig, Searcher, tau_at
from fbnet_fast.space import load_space


def _lut(space) -> LatencyTable:
    import numpy as np

    rng = np.random.default_rng(0)
    ms = rng.uniform(0.05, 0.3, size=(space.num_layers, len(space.candidates)))
    ms[:, list(space.candidates).index("skip")] = 0.001
    return LatencyTable.from_matrix(space, ms, fixed_ms=0.2)


def _staged_weight_step(s: Searcher) -> dict[str, float]:
    """One weight step, part by part (see the module docstring)."""
    cfg, m = s.cfg, s.model
    t: dict[str, float] = {}
    clock = time.perf_counter
    s.phase, s.step = "w", 0
    data_gen, gumbel_gen = s._step_generators()
    t0 = clock()
    x, y = s.w_split.batch(s._batch_indices(s.w_split), data_gen, s.device, s.channels_last)
    t["data"] = clock() - t0
    m.train()
    for p in m.weight_parameters():
        p.requires_grad_(True)
    for p in m.arch_parameters():
        p.requires_grad_(False)
    t0 = clock()
    w = m.sample_weights(tau_at(cfg, s.epoch), generator=gumbel_gen)
    t["sample"] = clock() - t0
    # the stem and head as Supernet.forward runs them (the fused Functions unless the kernel is the reference)
    fused = m.impl != "reference"
    stem = (lambda v: stem_op(v, m.stem, impl=m.impl)) if fused else m.stem
    head = (lambda v: head_op(v, m.head, impl=m.impl)) if fused else m.head
    parts = [("stem", stem)] + [("mixed ops", (lambda op, wi: lambda v: op(v, wi))(op, w[i]))
                                for i, op in enumerate(m.layers)] + [("head", head)]
    ins, outs = [], []
    cur = x
    for name, f in parts:
        inp = cur.detach().requires_grad_(name != "stem")
        t0 = clock()
        out = f(inp)
        if name == "head":
            out = F.cross_entropy(out, y)
        t["fwd " + name] = t.get("fwd " + name, 0.0) + clock() - t0
        ins.append(inp)
        outs.append(out)
        cur = out
    s.w_opt.zero_grad(set_to_none=True)
    grad = None
    for (name, _), inp, out in reversed(list(zip(parts, ins, outs))):
        t0 = clock()
        out.backward(grad)
        t["bwd " + name] = t.get("bwd " + name, 0.0) + clock() - t0
        grad = inp.grad
    t0 = clock()
    grads = [p.grad for p in m.weight_parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    torch.nn.utils.clip_grads_with_norm_(grads, cfg.w_grad_clip, norm, foreach=True)
    s.w_opt.step()
    t["optimiser"] = clock() - t0
    return t


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kernels", nargs="+", default=["fused", "reference"])
    p.add_argument("--out", default="bench/results/profile_search.json")
    p.add_argument("--isa", default=None, help="run the fused kernels' variant of this ISA (v3 = AVX2+FMA); with "
                   "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 in the environment "
                   "this profiles an AVX2-only CPU's instruction mix (as bench/cpu/search_wall.py --as-avx2)")
    args = p.parse_args(argv)
    from fbnet_fast.malloc import tune_malloc

    tune_malloc()  # as the fbnet-fast commands run
    if args.isa:
        from fbnet_fast.ops import _ext

        _ext.load().set_isa(args.isa)

    space = load_space("fbnet-cifar", width_mult=0.25)
    lut = _lut(space)
    tmp = Path(tempfile.mkdtemp(prefix="fbnet-profile-"))
    searchers = {}
    for k in args.kernels:
        cfg = SearchConfig(kernel=k, progress=False, plots=False)
        s = Searcher(cfg, tmp / k, space=space, lut=lut, log=lambda msg: None)
        s.epoch = cfg.warmup_epochs  # a search epoch: theta steps exist, tau at its first search value
        searchers[k] = s
    res: dict[str, dict[str, list[float]]] = {}

    def add(key: str, name: str, v: float) -> None:
        res.setdefault(key, {}).setdefault(name, []).append(v * 1000)

    for r in range(args.rounds + 1):  # round 0 warms up (allocator, oneDNN primitives)
        for th in args.threads:
            torch.set_num_threads(th)
            for k, s in searchers.items():
                key = f"{k} {th}t"
                parts = _staged_weight_step(s)
                s.phase, s.step = "w", 1
                w_step = _timed(s._train_step)
                s.phase, s.step = "theta", 0
                t_step = _timed(s._train_step)
                tau = tau_at(s.cfg, s.epoch)
                ev_sup = _timed(lambda: s.evaluate(torch.softmax(s.model.theta.detach() / tau, -1), recalibrate=False))
                ev_arg = _timed(s.evaluate)
                ck = _timed(s.save_checkpoint)
                if r == 0:
                    continue
                for name, v in parts.items():
                    add(key, name, v)
                for name, v in (("weight step", w_step), ("theta step", t_step), ("evaluate supernet", ev_sup),
                                ("evaluate argmax", ev_arg), ("checkpoint", ck)):
                    add(key, name, v)
    s0 = next(iter(searchers.values()))
    med = {key: {n: statistics.median(v) for n, v in d.items()} for key, d in res.items()}
    for key, d in med.items():
        d["epoch (estimate)"] = (s0.w_steps * d["weight step"] + s0.t_steps * d["theta step"]
                                 + d["evaluate supernet"] + d["evaluate argmax"] + d["checkpoint"])
    names = list(next(iter(med.values())).keys())
    keys = list(med)
    print(f"median ms over {args.rounds} interleaved rounds; {s0.w_steps} weight + {s0.t_steps} theta steps an epoch")
    print(f"{'phase':20s}" + "".join(f"{k:>16s}" for k in keys))
    for n in names:
        print(f"{n:20s}" + "".join(f"{med[k][n]:16.1f}" for k in keys))
    info = {"cpu": cpu_name(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "rounds": args.rounds,
            "w_steps": s0.w_steps, "t_steps": s0.t_steps}
    try:
        from fbnet_fast.ops import _ext

        info["isa"] = _ext.load().isa()
    except Exception as e:  # noqa: BLE001 - the extension may be missing; the figures still stand
        info["isa"] = f"unavailable ({e})"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"info": info, "median_ms": med, "samples_ms": res}, indent=1))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
