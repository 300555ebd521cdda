"""Shared fixtures: tiny spaces and LUTs that keep every test fast on 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run several torch processes side by side (CLI subprocesses); one intra-op
# thread each avoids oversubscribing the 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from fbnet_fast.lut import LatencyTable  # noqa: E402
from fbnet_fast.space import SearchSpace, Stage  # noqa: E402


def _executorch_skip():
    """Skip ExecuTorch tests where it is not installed, unless FBNET_FAST_REQUIRE_EXECUTORCH=1 (CI sets it:
    there the tests then run and fail with the install recipe instead of skipping unseen). Only looked
    up, not imported: importing ExecuTorch's runtime takes seconds, which every session would pay."""
    import importlib.util

    from fbnet_fast.runtimes import EXECUTORCH_INSTALL

    required = os.environ.get("FBNET_FAST_REQUIRE_EXECUTORCH") == "1"
    return pytest.mark.skipif(not required and importlib.util.find_spec("executorch") is None,
                              reason=f"ExecuTorch is not installed ({EXECUTORCH_INSTALL})")


needs_executorch = _executorch_skip()


def make_tiny_space(**overrides) -> SearchSpace:
    """5 searchable layers over 16x16 input: a channel change, a stride 2, groups 2 all covered."""
    kw = dict(
        name="tiny",
        input_size=16,
        stem_filters=8,
        stem_stride=1,
        stages=[Stage(8, 1, 1), Stage(16, 2, 2), Stage(24, 2, 2)],
        head_filters=32,
        num_classes=10,
        candidates=["k3_e1", "k3_e1_g2", "k3_e3", "k5_e6", "skip"],
    )
    kw.update(overrides)
    return SearchSpace(**kw)


@pytest.fixture
def tiny_space() -> SearchSpace:
    return make_tiny_space()


@pytest.fixture
def tiny_lut(tiny_space) -> LatencyTable:
    """Latency grows with expansion and kernel; skip is cheapest."""
    base = torch.tensor([2.0, 2.5, 4.0, 9.0, 1.0], dtype=torch.float64)
    m = base.repeat(tiny_space.num_layers, 1) * torch.linspace(1.0, 1.5, tiny_space.num_layers)[:, None]
    return LatencyTable.from_matrix(tiny_space, m, fixed_ms=3.0)


def _compiled_isas() -> list[str]:
    from fbnet_fast.ops import _ext

    return list(_ext.load().compiled_isas()) if _ext.available() else ["unbuilt"]


@pytest.fixture(params=_compiled_isas())
def isa(request):
    """Run the test once per ISA variant the extension carries (base x86-64, AVX2, AVX-512).

    A variant this CPU cannot execute is skipped with its name; the variant active
    before is restored afterwards, also when the test fails.
    """
    if request.param == "unbuilt":  # the test's own needs_ext marker reports the missing build
        yield None
        return
    from fbnet_fast.ops import _ext
    from fbnet_fast.ops.testing import use_isa

    ctx = use_isa(_ext.load(), request.param)
    try:
        ctx.__enter__()
    except ValueError as e:
        pytest.skip(f"this CPU cannot run the {request.param} variant: {e}")
    try:
        yield request.param
    finally:
        ctx.__exit__(None, None, None)
