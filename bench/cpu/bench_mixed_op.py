"""Mixed-op benchmarks: fused vs eager (NCHW, channels_last), checkpointing, compile.

Run: ``pytest bench/ --benchmark-only`` (add ``--bench-compile`` for torch.compile,
``-k cifar`` / ``-k fbnet224`` / ``-k supernet`` for a subset). Times come from
pytest-benchmark (median, q1, q3); memory rows are "saved" (bytes autograd keeps for
backward, parameters excluded, via saved_tensors_hooks) and "peak_rss" (a fresh
subprocess's peak RSS increase over one forward+backward). All land in
bench/results/mixed_op.csv; ``python bench/report.py`` prints the ratio tables.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from conftest import record_timing
from fbnet_fast.ops.mixed_op_fused import mixed_op_fused
from fbnet_fast.ops.mixed_op_ref import active_candidates, mixed_op_ref
from fbnet_fast.space import FBNET_CANDIDATES, load_space
from fbnet_fast.supernet import MixedOp, Supernet

SUITE = "mixed_op"
ROUNDS, WARMUP = 3, 1

# (case id, space, layer index, batch): 4 fbnet-cifar layers at batch 32, 3 fbnet layers at batch 8.
CASES = [
    ("cifar-L02-24x32-s1", "fbnet-cifar", 2, 32),
    ("cifar-L05-24to32x32-s2", "fbnet-cifar", 5, 32),
    ("cifar-L10-64x8-s1", "fbnet-cifar", 10, 32),
    ("cifar-L18-184x4-s1", "fbnet-cifar", 18, 32),
    ("fbnet224-L01-16to24x112-s2", "fbnet", 1, 8),
    ("fbnet224-L06-32x28-s1", "fbnet", 6, 8),
    ("fbnet224-L14-112x14-s1", "fbnet", 14, 8),
]


def _ckpt_op(x, w, cands):
    return checkpoint(mixed_op_ref, x, w, cands, use_reentrant=False)


def _ckpt_cand(x, w, cands):
    out = None
    for i in active_candidates(w):
        y = w[i] * checkpoint(cands[i], x, use_reentrant=False)
        out = y if out is None else out + y
    return out


PROVIDERS = {
    # name: (function, channels_last)
    "eager_nchw": (mixed_op_ref, False),
    "eager_cl": (mixed_op_ref, True),
    "ckpt_op": (_ckpt_op, True),
    "ckpt_cand": (_ckpt_cand, True),
    "fused": (mixed_op_fused, True),
}


def _setup(space_name, layer, batch, channels_last, seed=0):
    torch.manual_seed(seed)
    spec = load_space(space_name).layers[layer]
    op = MixedOp(spec, FBNET_CANDIDATES)
    x = torch.randn(batch, spec.c_in, spec.in_size, spec.in_size)
    if channels_last:
        op = op.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    # Soft Gumbel weights of a fresh search (every candidate active): the worst case.
    w = torch.softmax(torch.randn(len(FBNET_CANDIDATES)), 0).requires_grad_(True)
    return op, x, w


def _providers(request):
    names = list(PROVIDERS)
    if request.config.getoption("--bench-compile"):
        names.append("compile")
    return names


def _fn(provider):
    if provider == "compile":
        return torch.compile(mixed_op_ref, dynamic=False), True
    return PROVIDERS[provider]


@pytest.mark.parametrize("provider", list(PROVIDERS) + ["compile"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("case,space,layer,batch", CASES, ids=[c[0] for c in CASES])
def test_mixed_op_time(benchmark, record, request, case, space, layer, batch, mode, provider):
    if provider == "compile" and not request.config.getoption("--bench-compile"):
        pytest.skip("torch.compile provider needs --bench-compile")
    fn, cl = _fn(provider)
    op, x, w = _setup(space, layer, batch, cl)

    def step():
        xx = x.detach().requires_grad_(mode == "fwd_bwd")
        if mode == "fwd":
            with torch.no_grad():
                return fn(xx, w, op.candidates)
        y = fn(xx, w, op.candidates)
        y.backward(torch.ones_like(y))
        return y

    benchmark.group = f"{case} {mode}"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)
    record_timing(record, benchmark, SUITE, case, provider, mode)


def saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd saves for backward, parameters excluded."""
    seen, total = set(), 0
    params = set()

    def pack(t):
        nonlocal total
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in seen and key not in params and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total += st.nbytes()
        return t

    def run(params_of):
        params.update(p.untyped_storage().data_ptr() for p in params_of)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()

    return run, lambda: total


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case,space,layer,batch", CASES, ids=[c[0] for c in CASES])
def test_mixed_op_saved_bytes(benchmark, record, case, space, layer, batch, provider):
    # Memory "benchmarks" take the benchmark fixture (one timed round) so that
    # --benchmark-only keeps them.
    fn, cl = _fn(provider)
    op, x, w = _setup(space, layer, batch, cl)
    xx = x.detach().requires_grad_(True)
    run, total = saved_bytes(lambda: fn(xx, w, op.candidates))
    benchmark.group = "memory probes"
    benchmark.pedantic(run, args=(op.parameters(),), rounds=1, iterations=1)
    record(SUITE, case, provider, "fwd_bwd", "saved", total(), "B")


_RSS_SCRIPT = r"""
import json, resource, sys, torch
sys.path[:0] = [{bench!r}, {bench_root!r}]
import bench_mixed_op as b
torch.set_num_threads({threads})
fn, cl = b._fn({provider!r})
op, x, w = b._setup({space!r}, {layer}, {batch}, cl)
xx = x.detach().requires_grad_(True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y = fn(xx, w, op.candidates); y.backward(torch.ones_like(y))
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024))
"""


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case,space,layer,batch", CASES, ids=[c[0] for c in CASES])
def test_mixed_op_peak_rss(benchmark, record, case, space, layer, batch, provider):
    from pathlib import Path

    code = _RSS_SCRIPT.format(bench=str(Path(__file__).parent), bench_root=str(Path(__file__).parents[1]), threads=torch.get_num_threads(), provider=provider,
                              space=space, layer=layer, batch=batch)
    benchmark.group = "memory probes"
    out = benchmark.pedantic(subprocess.run, args=([sys.executable, "-c", code],),
                             kwargs=dict(capture_output=True, text=True, check=True), rounds=1, iterations=1)
    record(SUITE, case, provider, "fwd_bwd", "peak_rss", json.loads(out.stdout.strip().splitlines()[-1]), "B")


# ------------------------------------------------------------------ whole supernet step
SUPERNET_BATCH = 32


def _supernet(impl, cl):
    torch.manual_seed(0)
    net = Supernet(load_space("fbnet-cifar"), impl=impl)
    x = torch.randn(SUPERNET_BATCH, 3, 32, 32)
    if cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (SUPERNET_BATCH,))
    return net, x, y


SUPERNET_PROVIDERS = {"eager_nchw": ("reference", False), "eager_cl": ("reference", True), "fused": ("cpp", True)}


@pytest.mark.parametrize("provider", list(SUPERNET_PROVIDERS))
def test_supernet_step_time(benchmark, record, provider):
    impl, cl = SUPERNET_PROVIDERS[provider]
    net, x, y = _supernet(impl, cl)

    def step():
        net.zero_grad(set_to_none=True)
        w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(net(x, w), y).backward()

    benchmark.group = "supernet fbnet-cifar step"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)
    record_timing(record, benchmark, SUITE, f"supernet-fbnet-cifar-b{SUPERNET_BATCH}", provider, "fwd_bwd")


@pytest.mark.parametrize("provider", list(SUPERNET_PROVIDERS))
def test_supernet_step_saved_bytes(benchmark, record, provider):
    impl, cl = SUPERNET_PROVIDERS[provider]
    net, x, y = _supernet(impl, cl)
    w = net.sample_weights(5.0, generator=torch.Generator().manual_seed(0))
    run, total = saved_bytes(lambda: torch.nn.functional.cross_entropy(net(x, w), y))
    benchmark.group = "memory probes"
    benchmark.pedantic(run, args=(net.parameters(),), rounds=1, iterations=1)
    record(SUITE, f"supernet-fbnet-cifar-b{SUPERNET_BATCH}", provider, "fwd_bwd", "saved", total(), "B")
