"""Shared tolerance helper for the kernel tests (the flash-attention rule).

A fused result passes when its max error against a float64 reference is at most
``2x`` the error of eager PyTorch float32 on the same inputs, plus a floor of
``1e-6 * max|ref|`` for tensors where eager happens to be exact.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


def runnable_isas(ext: Any) -> Iterator[str]:
    """Switch the extension to each compiled ISA variant this CPU runs, yielding its name;
    the variant in use before is restored afterwards (also when an assertion fails)."""
    start = ext.isa()
    try:
        for isa in ext.compiled_isas():
            try:
                ext.set_isa(isa)
            except ValueError:  # this CPU lacks it
                continue
            yield isa
    finally:
        ext.set_isa(start)


def assert_close_to_ref(name: str, fused: torch.Tensor, eager32: torch.Tensor, ref64: torch.Tensor,
                        *, factor: float = 2.0, floor: float = 1e-6) -> None:
    ref = ref64.double()
    if fused.shape != ref.shape:
        raise AssertionError(f"{name}: shape {list(fused.shape)} != reference {list(ref.shape)}")
    err = (fused.double() - ref).abs()
    eager_err = (eager32.double() - ref).abs().max().item()
    bound = factor * eager_err + floor * max(ref.abs().max().item(), 1.0)
    if err.max().item() > bound:
        idx = tuple(int(i) for i in torch.nonzero(err > bound)[0])
        raise AssertionError(
            f"{name}: max error {err.max().item():.3e} > bound {bound:.3e} (eager fp32 error {eager_err:.3e}); "
            f"first mismatch at {idx}: fused {fused[idx].item():.8g} vs fp64 {ref[idx].item():.8g}"
        )
