"""The Triton (GPU) kernels, checked twice without a GPU.

(a) Numerics: ``test_interpreter_numerics`` runs ``tests/_triton_interp_cases.py`` in a
    subprocess with ``TRITON_INTERPRET=1`` (Triton reads the variable when ``@triton.jit``
    decorates a kernel, so it must be set before the kernels are imported, and setting
    it here would leak into every other test of this process). That module compares
    every launcher's outputs and gradients, the fused mixed op and one supernet step
    against the eager ``_ref`` oracles (fp32 vs fp64, the 2x-eager rule).
(b) Validity on real hardware: ``test_compiles_for_gpu`` compiles every specialisation
    the launchers can request (``<family>_triton.aot_specs()``) ahead of time for
    ``GPUTarget("cuda", 80, 32)`` and ``GPUTarget("cuda", 90, 32)`` down to a cubin with
    the ptxas bundled in the triton wheel, so a kernel only the interpreter accepts
    fails here. sm_80 gets the generic specialisation (no alignment known), sm_90 the
    one a launch with fresh torch tensors gets (pointers and integers divisible by 16,
    hence vectorised accesses); both must compile without register spills.

Both parts run in the plain ``python -m pytest -q``; together about 2 minutes of one core.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INNER = Path(__file__).with_name("_triton_interp_cases.py")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'fbnet-fast[triton]')")


# ------------------------------------------------------------------ (a) interpreter
@pytest.mark.parametrize("group", ["bn_act", "dwconv", "mixed_op"])
def test_interpreter_numerics(group):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", str(INNER),
           "-k", group]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, f"interpreter cases '{group}' failed (rc {r.returncode}):\n{tail}"
    assert re.search(r"\d+ passed", r.stdout) and "skipped" not in r.stdout, f"nothing ran:\n{tail}"


# ------------------------------------------------------------ (b) ahead of time, cubin
TARGETS = {80: "generic", 90: "aligned"}
# Shared memory per block on the targets (A100: 163 KB, H100: 227 KB).
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}


def _specs():
    if not HAS_TRITON or INTERPRETED:
        return []
    from fbnet_fast.ops import bn_act_triton, dwconv_bn_triton

    return [s for mod in (bn_act_triton, dwconv_bn_triton) for s in mod.aot_specs()]


SPECS = _specs()


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A new Triton cache: every spec really reaches ptxas (whose log reports spills)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton-cache")))
        mp.setenv("TRITON_DUMP_PTXAS_LOG", "1")
        yield


def _attrs(spec, aligned: bool) -> dict:
    if not aligned:
        return {}
    return {(i,): [["tt.divisibility", 16]] for i, t in enumerate(spec.signature.values()) if t in ("*fp32", "*i64", "i32")}


@pytest.mark.skipif(INTERPRETED, reason="TRITON_INTERPRET=1 replaces the kernels by interpreted functions")
@pytest.mark.parametrize("cc", sorted(TARGETS), ids=lambda cc: f"sm{cc}")
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_compiles_for_gpu(spec, cc, fresh_cache, capsys):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fbnet_fast.ops.bn_act_triton import LAUNCH_OPTS

    src = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs,
                    attrs=_attrs(spec, TARGETS[cc] == "aligned"))
    try:
        k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=LAUNCH_OPTS)
    except Exception as e:  # noqa: BLE001 - report the compiler's own message
        if "ptxas" in str(e) and ("No such file" in str(e) or "not found" in str(e)):
            pytest.skip(f"ptxas missing from this triton install: {e}")
        raise
    assert k.asm.get("cubin"), f"{spec.name}: no cubin for sm_{cc}"
    assert k.metadata.shared <= MAX_SHARED[cc], f"{spec.name}: {k.metadata.shared} B shared memory on sm_{cc}"
    log = capsys.readouterr().out
    spills = re.findall(r"(\d+) bytes spill stores", log)
    assert spills, f"no ptxas -v report for {spec.name}:\n{log[-2000:]}"
    assert all(s == "0" for s in spills), f"{spec.name} spills registers on sm_{cc}:\n{log[-2000:]}"


def test_package_imports_without_triton():
    """``fbnet_fast`` and its ops import with triton hidden; the Triton modules are lazy."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import fbnet_fast, fbnet_fast.ops, fbnet_fast.ops.mixed_op_fused, fbnet_fast.ops.bn_act\n"
        "from fbnet_fast.ops._launch import triton_family\n"
        "from fbnet_fast.errors import ConfigError\n"
        "try:\n    triton_family('bn_act')\nexcept ConfigError as e:\n    print('ConfigError', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ConfigError no GPU kernels for 'bn_act'" in r.stdout, r.stdout


# ------------------------------------------------------------- on a real GPU, if any
def _cuda() -> bool:
    import torch

    return HAS_TRITON and torch.cuda.is_available() and not INTERPRETED


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (the kernels' numerics are checked above without one)")
@pytest.mark.parametrize("n,c_in,c_out,stride,h", [(4, 16, 16, 1, 14), (3, 24, 32, 2, 15), (1, 32, 16, 1, 7)])
def test_fused_mixed_op_on_gpu(n, c_in, c_out, stride, h):
    """The Function on CUDA (Triton + cuBLAS) vs eager fp32 and fp64 on the same GPU; bit-identical reruns."""
    import copy

    import torch

    from fbnet_fast.ops import mixed_op
    from fbnet_fast.ops.mixed_op_ref import mixed_op_ref
    from fbnet_fast.space import FBNET_CANDIDATES, LayerSpec
    from fbnet_fast.supernet import MixedOp

    from fbnet_fast.ops.testing import assert_close_to_ref

    torch.manual_seed(0)
    op = MixedOp(LayerSpec(0, 0, c_in, c_out, stride, h, (h - 1) // stride + 1), FBNET_CANDIDATES).cuda()
    x0 = torch.randn(n, c_in, h, h, device="cuda").contiguous(memory_format=torch.channels_last)
    w0 = torch.softmax(torch.randn(len(FBNET_CANDIDATES), device="cuda"), 0)
    runs = {}
    for name, dtype in (("fused", torch.float32), ("fused again", torch.float32), ("eager", torch.float32),
                        ("f64", torch.float64)):
        o = copy.deepcopy(op).to(dtype)
        x = x0.to(dtype).requires_grad_(True)
        w = w0.to(dtype).requires_grad_(True)
        y = mixed_op(x, w, o, impl="triton") if name.startswith("fused") else mixed_op_ref(x, w, o.candidates)
        go = torch.randn(y.shape, generator=torch.Generator(device="cuda").manual_seed(3), device="cuda")
        y.backward(go.to(dtype))
        runs[name] = [y.detach(), x.grad, w.grad] + [p.grad for p in o.parameters()] + list(o.buffers())
    for i, (a, b, e, r) in enumerate(zip(runs["fused"], runs["fused again"], runs["eager"], runs["f64"])):
        if a is None:
            assert e is None, f"tensor {i}: no gradient from the fused op, eager has one"
            continue
        assert torch.equal(a, b), f"tensor {i}: two identical fused runs differ (non-deterministic reduction?)"
        if a.dtype.is_floating_point:
            assert_close_to_ref(f"tensor {i}", a, e, r)
