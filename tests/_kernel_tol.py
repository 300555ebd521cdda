"""Shared tolerance helper for the kernel tests (the flash-attention rule).

A fused result passes when its max error against a float64 reference is at most
``2x`` the error of eager PyTorch float32 on the same inputs, plus a floor of
``1e-6 * max|ref|`` for tensors where eager happens to be exact. Gradients through ReLUs
may add a per-element slack for the branches a rounding can flip (tests/_relu_kinks.py).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

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


def assert_close_to_ref(name: str, fused: torch.Tensor, eager32: torch.Tensor | Sequence[torch.Tensor],
                        ref64: torch.Tensor,
                        *, factor: float = 2.0, floor: float = 1e-6, slack: torch.Tensor | None = None) -> None:
    """``|fused - ref64| <= factor * max|eager32 - ref64| + floor * max(max|ref64|, 1) (+ slack)`` everywhere.

    ``slack`` (float64, ``ref64``'s shape): per-element allowance for effects rounding may
    legitimately cause beyond a rounding, i.e. ReLU branches (tests/_relu_kinks.py).
    ``eager32`` may be several eager fp32 results of the same quantity (other layouts,
    1-ulp perturbed inputs: ``_mixed_op_check``); the worst of their errors is used.
    """
    ref = ref64.double()
    if fused.shape != ref.shape:
        raise AssertionError(f"{name}: shape {list(fused.shape)} != reference {list(ref.shape)}")
    err = (fused.double() - ref).abs()
    eagers = [eager32] if isinstance(eager32, torch.Tensor) else list(eager32)
    eager_err = max((e.double() - ref).abs().max().item() for e in eagers)
    base = factor * eager_err + floor * max(ref.abs().max().item(), 1.0)
    bound = base + (slack.reshape(ref.shape) if slack is not None else 0.0)
    bad = err > bound
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        kink = "" if slack is None else f" + ReLU-kink slack {slack.reshape(ref.shape)[idx].item():.3e} there"
        raise AssertionError(
            f"{name}: max error {err.max().item():.3e}; bound {base:.3e} ({factor:g}x eager fp32 error {eager_err:.3e} + floor"
            f"{kink}); first mismatch at {idx}: error {err[idx].item():.3e}, fused {fused[idx].item():.8g} "
            f"vs fp64 {ref[idx].item():.8g}"
        )
