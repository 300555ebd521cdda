"""One Python module of the library at another git revision against this checkout's, step by step in one process.

    python bench/cpu/ab_module.py --baseline-rev REV [--module fbnet_fast.ops.mixed_op_fused] [--as-avx2]
                                  [--threads 1] [--rounds 21] [--steps weight theta single] [--arch ARCH_JSON]

For changes to the Python around the kernels (the same compiled ``_C``): the module's source at ``REV`` (``git
show REV:path``) is loaded as a second module inside its package, and the benchmark switches ``sys.modules`` and
the package attribute between the two before every step, so the callers that import it at call time
(``fbnet_fast.ops._mixed`` imports ``mixed_op_fused`` on every call) run one or the other: the same process,
supernet, batch, Gumbel draw and kernels. That resolves differences of 1-3 % that fresh processes lose in this
machine's drift. A caller that bound a name from the module at import time keeps this checkout's (for
``mixed_op_fused``: ``head_fused`` binds ``fold_module_bn`` and ``module_bn_backward``), so the A/B covers
what goes through the module at call time.

The steps (batch 64 unless ``--batch``, fbnet-cifar width 0.25 as the default search, forward + cross-entropy + backward):
``weight``: every candidate soft, every weight wanting a gradient, theta none (a warm-up / search weight step);
``theta``: the same with the weights frozen (a theta step); ``single``: every layer the exact one-hot of
``--arch`` (a search's ``arch.json``; default: the twenty-third session's emulated-AVX2 seed-0 result), as the
epochs after every layer is decided run. It checks that both give the same bits (loss and every gradient of the
first round, ``torch.equal``), then times rounds alternating the order; prints medians and ratios
(``baseline / this``: above 1, this checkout is faster). ``--as-avx2``: torch, oneDNN and MKL held to AVX2 and
our kernels' ``v3`` variant (an emulation on a wider CPU, named so). ``--baseline-so PATH``: the baseline module
calls that build of ``_C`` (a copy of REV's ``_C.cpython-*.so``, saved before rebuilding) wherever it names
``cpu_ext`` itself, so a change to the Python and the bindings together (another ABI) is timed against REV as a
whole; the launchers it reaches through other modules keep this checkout's build. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_wall import prepare  # noqa: E402  (the whole-search benchmark's AVX2 restriction, threads, malloc)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARCH = ROOT / "bench" / "results" / "session23" / "arch_fusedavx2_s0.json"


def load_baseline(module: str, rev: str):
    """``module``'s source at ``rev`` as a module of the same package (relative imports resolve as the original's)."""
    path = module.replace(".", "/") + ".py"
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True,
                         text=True).stdout
    name = module + "_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=f"{rev}:{path}")
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = module.rpartition(".")[0]
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
    return mod


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-rev", required=True)
    p.add_argument("--module", default="fbnet_fast.ops.mixed_op_fused")
    p.add_argument("--as-avx2", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--steps", nargs="+", choices=("weight", "theta", "single"), default=["weight", "theta", "single"])
    p.add_argument("--arch", type=Path, default=DEFAULT_ARCH)
    p.add_argument("--batch", type=int, default=64,
                   help="images a step (default 64, the search's); a small one leaves the work around the kernels")
    p.add_argument("--baseline-so", type=Path, default=None,
                   help="REV's build of _C, for the baseline module's own cpu_ext() calls")
    args = p.parse_args(argv)
    if args.baseline_so is not None and not args.baseline_so.is_file():
        raise SystemExit(f"--baseline-so {args.baseline_so}: no such file")
    ext = prepare(args.as_avx2, args.threads)
    import torch

    from fbnet_fast.measure.core import cpu_name
    from fbnet_fast.runs import load_architecture_file
    from fbnet_fast.space import load_space
    from fbnet_fast.supernet import Supernet

    this = importlib.import_module(args.module)
    mods = {"baseline": load_baseline(args.module, args.baseline_rev), "this": this}
    if args.baseline_so is not None:
        import tempfile

        from ab_so import baseline_beside

        if not hasattr(mods["baseline"], "cpu_ext"):
            raise SystemExit(f"--baseline-so: {args.module} at {args.baseline_rev} calls no cpu_ext() of its own")
        old = baseline_beside(args.baseline_so, tempfile.mkdtemp(), ext, same_abi=False)
        if args.as_avx2:
            old.set_isa("v3")
        mods["baseline"].cpu_ext = lambda: old
    package, _, leaf = args.module.rpartition(".")

    def use(name: str) -> None:
        sys.modules[args.module] = mods[name]
        setattr(sys.modules[package], leaf, mods[name])

    space = load_space("fbnet-cifar", width_mult=0.25)
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(2))
    steps = {}
    for kind in args.steps:
        torch.manual_seed(0)
        net = Supernet(space, impl="cpp").to(memory_format=torch.channels_last)
        # as Searcher._train_step: a weight step freezes theta (its Gumbel weights are constants), a theta step
        # the weights
        for prm in (net.weight_parameters() if kind == "theta" else net.arch_parameters()):
            prm.requires_grad_(False)
        if kind == "single":
            aspace, arch = load_architecture_file(args.arch)
            if aspace.name != space.name or aspace.num_layers != space.num_layers:
                raise SystemExit(f"--arch {args.arch}: not an fbnet-cifar architecture")
            w = torch.zeros(space.num_layers, len(space.candidates))
            w[range(space.num_layers), arch.indices(space)] = 1.0  # constants, as in the search's weight steps
        else:
            w = None
        steps[kind] = (net, w)

    def run(kind: str) -> tuple[torch.Tensor, list]:
        net, w = steps[kind]
        for prm in net.parameters():
            prm.grad = None
        wt = w if w is not None else net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        loss = torch.nn.functional.cross_entropy(net(x, wt), y)
        loss.backward()
        return loss.detach(), [q.grad for q in net.parameters() if q.grad is not None]

    for kind in args.steps:  # same bits; the BN running statistics move the same way in both
        use("baseline")
        lb, gb = run(kind)
        use("this")
        lt, gt = run(kind)
        same = torch.equal(lb, lt) and len(gb) == len(gt) and all(torch.equal(a, b) for a, b in zip(gb, gt))
        print(f"{kind}: same bits (loss and {len(gt)} gradients): {same}")
        for name in ("baseline", "this", "baseline", "this"):
            use(name)
            run(kind)
    ts = {(k, n): [] for k in args.steps for n in mods}
    for r in range(args.rounds):
        for kind in args.steps:
            for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
                use(name)
                t0 = time.perf_counter()
                run(kind)
                ts[kind, name].append(time.perf_counter() - t0)
    use("this")
    print(f"cpu {cpu_name()}, torch {torch.backends.cpu.get_cpu_capability()}, fused ISA {ext.isa()}"
          f"{' (emulated AVX2)' if args.as_avx2 else ''}, threads {args.threads}, batch {args.batch}, "
          f"{args.rounds} rounds; "
          f"{args.module} at {args.baseline_rev}{' with ' + str(args.baseline_so) if args.baseline_so else ''} "
          f"(baseline) vs this checkout")
    for kind in args.steps:
        b, t = (statistics.median(ts[kind, n]) * 1e3 for n in ("baseline", "this"))
        per = sorted(bb / tt for bb, tt in zip(ts[kind, "baseline"], ts[kind, "this"]))
        print(f"  {kind:6s} step: baseline {b:7.1f} ms, this {t:7.1f} ms, {b / t:.3f}x (per-round ratios "
              f"{per[0]:.2f}-{per[-1]:.2f})")


if __name__ == "__main__":
    main()
