"""GPU benchmarks of the Triton path: the fused mixed op vs eager PyTorch on CUDA.

Skips without a CUDA device. On a GPU machine (command recorded in BENCHMARKS.md,
section "GPU (Triton)")::

    pytest bench/gpu/bench_triton.py --benchmark-only

Cases: those of ``bench/cpu/bench_mixed_op.py`` (fbnet-cifar layers at batch 32, three
fbnet (224) layers at batch 8), every candidate active (soft Gumbel weights).
Providers: ``eager_nchw``, ``eager_cl`` (reference, channels_last) and ``fused``
(:func:`~fbnet_fast.ops.mixed_op_fused.mixed_op_fused`, Triton kernels + cuBLAS).
Rows land in ``bench/results/triton.csv`` (suite ``triton``): time (median, q1, q3
of CUDA-synchronised rounds), ``saved`` (bytes autograd keeps, parameters excluded)
and ``peak_alloc`` (``torch.cuda.max_memory_allocated`` over one forward+backward,
above what was allocated before it). Before timing a case, the fused op is checked
against eager on the GPU (the 2x-eager-error rule against an fp64 run), so a number
is never quoted for a wrong kernel. ``python bench/report.py bench/results/triton.csv``
prints the ratio tables.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import record_timing
from fbnet_fast.ops.mixed_op_fused import mixed_op_fused
from fbnet_fast.ops.mixed_op_ref import mixed_op_ref
from fbnet_fast.space import FBNET_CANDIDATES, load_space
from fbnet_fast.supernet import MixedOp

from fbnet_fast.ops.testing import assert_close_to_ref
from traffic_triton import CASES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton path)")

SUITE = "triton"
ROUNDS, WARMUP = 20, 3  # GPU rounds are milliseconds; the warmup rounds absorb Triton's JIT

PROVIDERS = {
    # name: (function, channels_last)
    "eager_nchw": (mixed_op_ref, False),
    "eager_cl": (mixed_op_ref, True),
    "fused": (mixed_op_fused, True),
}


def _setup(space_name, layer, batch, channels_last, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    spec = load_space(space_name).layers[layer]
    op = MixedOp(spec, FBNET_CANDIDATES).to("cuda", dtype)
    # drawn in fp32 and cast, so the fp64 oracle of _check_once sees the same numbers
    x = torch.randn(batch, spec.c_in, spec.in_size, spec.in_size, device="cuda").to(dtype)
    if channels_last:
        op = op.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.softmax(torch.randn(len(FBNET_CANDIDATES), device="cuda"), 0).to(dtype).requires_grad_(True)
    return op, x, w


_checked: set[str] = set()


def _check_once(case, space, layer, batch):
    """Fused vs eager fp32 vs eager fp64 on this GPU: output and the grads of x and the weights."""
    if case in _checked:
        return
    res = {}
    for name, fn, dtype in (("fused", mixed_op_fused, torch.float32), ("eager", mixed_op_ref, torch.float32),
                            ("f64", mixed_op_ref, torch.float64)):
        op, x, w = _setup(space, layer, batch, True, dtype=dtype)
        x.requires_grad_(True)
        y = fn(x, w, op.candidates)
        go = torch.randn(y.shape, generator=torch.Generator(device="cuda").manual_seed(3), device="cuda",
                         dtype=torch.float64)
        y.backward(go.to(y.dtype))
        res[name] = (y.detach(), x.grad, w.grad)
    for i, what in enumerate(("output", "grad x", "grad weights")):
        assert_close_to_ref(f"{case} {what}", res["fused"][i], res["eager"][i], res["f64"][i])
    _checked.add(case)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("case,space,layer,batch", CASES, ids=[c[0] for c in CASES])
def test_triton_mixed_op_time(benchmark, record, case, space, layer, batch, mode, provider):
    _check_once(case, space, layer, batch)
    fn, cl = PROVIDERS[provider]
    op, x, w = _setup(space, layer, batch, cl)
    go = None

    def step():
        nonlocal go
        xx = x.detach().requires_grad_(mode == "fwd_bwd")
        if mode == "fwd":
            with torch.no_grad():
                y = fn(xx, w, op.candidates)
        else:
            y = fn(xx, w, op.candidates)
            go = torch.ones_like(y) if go is None else go
            y.backward(go)
        torch.cuda.synchronize()

    benchmark.group = f"triton {case} {mode}"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)
    record_timing(record, benchmark, SUITE, case, provider, mode)


def _saved_bytes(fn, params) -> int:
    """Bytes of distinct storages autograd saves for backward, parameters excluded."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in skip:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case,space,layer,batch", CASES, ids=[c[0] for c in CASES])
def test_triton_mixed_op_memory(benchmark, record, case, space, layer, batch, provider):
    # One timed round through the benchmark fixture, so --benchmark-only keeps it.
    fn, cl = PROVIDERS[provider]
    op, x, w = _setup(space, layer, batch, cl)
    xx = x.detach().requires_grad_(True)
    fresh = copy.deepcopy(op)
    saved = _saved_bytes(lambda: fn(xx, w, fresh.candidates), fresh.parameters())

    def peak():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = fn(xx, w, op.candidates)
        y.backward(torch.ones_like(y))
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    benchmark.group = "triton memory probes"
    peak_bytes = benchmark.pedantic(peak, rounds=1, iterations=1)
    record(SUITE, case, provider, "fwd_bwd", "saved", saved, "B")
    record(SUITE, case, provider, "fwd_bwd", "peak_alloc", peak_bytes, "B")
