"""The oracle every fused kernel is tested against: fp32 results checked against fp64 with a derived bound.

Used by the kernel and mixed-op tests (CPU, and Triton under ``TRITON_INTERPRET=1``) and by
the benchmarks that check a result before they time it, so it lives in the package (like
``torch.testing``), not in ``tests/``.

1. The rule (:func:`assert_close_to_ref`)
-----------------------------------------
Shared tolerance helper for the kernel tests (the flash-attention rule).

A fused result passes when its max error against a float64 reference is at most
``2x`` the error of eager PyTorch float32 on the same inputs, plus a floor of
``1e-6 * max|ref|`` for tensors where eager happens to be exact. Gradients through ReLUs
may add a per-element slack for the branches a rounding can flip (section 2).

2. ReLU kinks (:class:`ReluRecorder`, :func:`relu_flip_slack`)
--------------------------------------------------------------
ReLU kinks in the "<= 2x eager fp32's error" rule: which gradient differences a rounding may cause.

Why the plain rule is not enough for a network with ReLUs
----------------------------------------------------------
A gradient through ``relu(z)`` is discontinuous at ``z = 0``. When the fp64 value of a
pre-activation lies closer to 0 than an fp32 implementation's rounding error of it, that
implementation may take either branch, and the two branches' gradients differ by the whole
upstream gradient at that position, not by a rounding. Which fp32 implementation flips is
luck: the summation order decides. Measured on this project's supernet step
(tests/test_mixed_op.py, AMD EPYC): the head's 1x1 conv + BN + ReLU has 1.5 M
pre-activations, 15 of them within 1e-5 of 0 in fp64, while fp32 rounds them by up to
3.7e-6. The fused mixed op's output (max error 2.0e-6 against fp64, eager's: 2.0e-6) moved
one head pre-activation at ``|z| = 2.4e-8`` across 0; eager's rounding moved none. That one
flip changes the stem's weight gradient by 9e-5, 70x the old 2x-eager bound. The bound,
not the kernel, was ill-founded.

The bound used instead
----------------------
Every ReLU input of the fp64 reference is recorded (:class:`ReluRecorder`, a
``TorchFunctionMode``), and so is the same input in the eager fp32 runs (same code, same
call order). A position ``j`` of ReLU call ``k`` is *ambiguous* when

    |z64_j| <= RADIUS * max(max_i |z32_i - z64_i|, eps32 * max_i |z64_i|)        (RADIUS = 2)

with the max over the eager ensemble (section 3): within twice fp32's worst
rounding of that tensor, the same factor the fused results are held to. (The flip above sat
far inside: 2.4e-8 against a radius of about 1e-5.) Flipping such a position's branch changes
a gradient ``dL/dp`` by ``+- g_j dz_j/dp`` to first order, where ``g_j`` is the upstream
gradient at the ReLU's output (backward is linear in the upstream gradient once the forward
is fixed; the forward value moves by ``|z_j| <= t``, a second-order effect).
:func:`relu_flip_slack` computes ``|g_j dz_j/dp|`` exactly in fp64 (one
vector-Jacobian product per ambiguous position; the soft supernet step has about 90) and
sums them per element, so a gradient element's bound is

    factor * eager_err + floor * max(|ref|, 1) + sum_j |g_j dz_j/dp|.

The slack is zero wherever no ReLU input is near its kink, so everything else keeps the
plain rule; a real defect (a wrong sum, a lost term) is no sum of a few branch flips and
still fails.

3. The mixed op, end to end (:func:`compare_mixed_op`, :func:`compare_supernet_step`)
------------------------------------------------------------------------------------
One oracle for the fused mixed op, used by the CPU tests and the Triton interpreter cases.

Copies of the same layer (or supernet) run side by side: the fused fp32 path, eager fp32
and eager fp64. Every output, gradient (x, theta, each conv/BN parameter) and BN running
statistic of the fused run must satisfy :func:`assert_close_to_ref`:

    |fused - fp64| <= 2 * (eager fp32's error) + 1e-6 * max(|fp64|, 1) [+ ReLU-kink slack]

**Eager fp32's error is taken over an ensemble, not one run.** One eager run is one sample
of fp32's error, and on an ill-conditioned quantity one sample can be far below what fp32
arithmetic gives with another summation order. The case that showed it: 2x2 -> 1x1 at batch
2, where BN normalises two values a channel and its input gradient is ``invstd * (1 - a^2) *
(dy1 - dy2) / 2`` with ``1 - a^2 = eps / (var + eps)``, a cancellation that leaves ~1e-4
relative error in any fp32 result. For ``candidates.2.conv_pw.weight`` eager's error there was
1.3e-5 (1 thread), 2.9e-5 (2 threads), 6.9e-5 (channels_last) and 1.1e-5 to 6.9e-5 over eight
1-ulp input perturbations; the fused kernels gave 5.9e-5 (base x86-64) and 8.9e-5 (AVX2,
AVX-512), failing a bound built on the 1.3e-5 sample. So the eager reference runs as given,
in the other memory format (other ATen/oneDNN kernels, other summation orders), and on
inputs, parameters and BN buffers each multiplied by ``1 + eps32 * U(-1, 1)`` (three seeds):
a backward-stable fp32 algorithm returns the exact result of inputs that close, so the spread
of these runs is the error the fused path may have too, measured on the case at hand.

The same reasoning once made the old test use ad-hoc allowances for small-count BatchNorm
(factor 4 at <= 16 values a channel, a floor of 2e-5 x max at <= 4); the ensemble measures
what they guessed, so they are gone.

Gradients also get the exact fp64 effect of the ReLU branches an fp32 rounding may flip
(section 2); the ambiguity radius comes from the worst ensemble member's error at each
ReLU input.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..space import FBNET_CANDIDATES, LayerSpec
from ..supernet import MixedOp, Supernet, gumbel_weights
from .mixed_op_ref import mixed_op_ref

__all__ = ["runnable_isas", "at_thread_counts", "assert_close_to_ref", "RADIUS", "ReluRecorder", "relu_flip_slack", "make_mixed_op",
           "eager_variants", "compare_mixed_op", "compare_supernet_step", "compare_net_step", "EAGER_VARIANTS"]


# -------------------------------------------------------------------------------------- the rule
@contextlib.contextmanager
def use_isa(ext: Any, isa: str) -> Iterator[str]:
    """Run the block with the extension switched to ``isa``; the variant in use before comes back
    afterwards (also when an assertion fails). ``ValueError`` when this CPU cannot run ``isa``."""
    start = ext.isa()
    ext.set_isa(isa)
    try:
        yield isa
    finally:
        ext.set_isa(start)


def at_thread_counts(f: Callable[[], Any], counts: Sequence[int]) -> list[Any]:
    """``f()`` once at each torch intra-op thread count in ``counts`` (the kernels' OpenMP teams follow it), in
    order; the thread count in use before comes back afterwards (also when ``f`` raises)."""
    start = torch.get_num_threads()
    try:
        runs = []
        for t in counts:
            torch.set_num_threads(t)
            runs.append(f())
        return runs
    finally:
        torch.set_num_threads(start)


def runnable_isas(ext: Any) -> Iterator[str]:
    """Switch the extension to each compiled ISA variant this CPU runs, yielding its name;
    the variant in use before is restored afterwards (also when an assertion fails)."""
    for isa in ext.compiled_isas():
        try:
            ctx = use_isa(ext, isa)
            ctx.__enter__()
        except ValueError:  # this CPU lacks it
            continue
        try:
            yield isa
        finally:
            ctx.__exit__(None, None, None)


def assert_close_to_ref(name: str, fused: torch.Tensor, eager32: torch.Tensor | Sequence[torch.Tensor],
                        ref64: torch.Tensor,
                        *, factor: float = 2.0, floor: float = 1e-6, slack: torch.Tensor | None = None) -> None:
    """``|fused - ref64| <= factor * max|eager32 - ref64| + floor * max(max|ref64|, 1) (+ slack)`` everywhere.

    ``slack`` (float64, ``ref64``'s shape): per-element allowance for effects rounding may
    legitimately cause beyond a rounding, i.e. ReLU branches (section 2).
    ``eager32`` may be several eager fp32 results of the same quantity (other layouts,
    1-ulp perturbed inputs: section 3); the worst of their errors is used.
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


# ----------------------------------------------------------------------------------- ReLU kinks
RADIUS = 2.0
_RELUS = (torch.relu, F.relu, torch.Tensor.relu)
_INPLACE = (torch.relu_, torch.Tensor.relu_)


class ReluRecorder(TorchFunctionMode):
    """Records ``(input, output)`` of every out-of-place ReLU called while it is active, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INPLACE or (func is F.relu and (kwargs.get("inplace") or (len(args) > 1 and args[1]))):
            raise AssertionError("in-place ReLU under ReluRecorder: its input is overwritten and cannot be kept")
        out = func(*args, **kwargs)
        if func in _RELUS:  # F.relu calls torch.relu inside: the mode is off in here, so one record per call
            self.calls.append((args[0], out))
        return out


def relu_flip_slack(loss64: torch.Tensor, rec64: ReluRecorder, recs32: Sequence[ReluRecorder],
                    targets: Mapping[str, torch.Tensor], *, radius: float = RADIUS) -> dict[str, torch.Tensor]:
    """Per-element gradient slack from the ReLU positions an fp32 rounding may flip.

    Args:
        loss64: the fp64 reference's scalar loss, its graph still alive (backward with
            ``retain_graph=True`` first, or not at all).
        rec64: the fp64 forward's ReLU calls.
        recs32: the ReLU calls of one or more eager fp32 forward passes of the same code
            (the worst error over them sets each call's ambiguity radius).
        targets: the fp64 leaves whose gradients are compared (parameters, inputs).

    Returns:
        ``{name: sum over ambiguous positions j of |g_j dz_j/d target|}`` (float64, the
        target's shape; zeros where no ReLU input is near its kink).
    """
    for rec in recs32:
        if len(rec.calls) != len(rec64.calls):
            raise AssertionError(f"fp64 and fp32 runs made {len(rec64.calls)} vs {len(rec.calls)} ReLU calls")
    names = [n for n, t in targets.items() if t.requires_grad]
    leaves = [targets[n] for n in names]
    slack = {n: torch.zeros(t.shape, dtype=torch.float64) for n, t in targets.items()}
    outs = [o for _, o in rec64.calls]
    if not outs:
        return slack
    ups = torch.autograd.grad(loss64, outs, retain_graph=True, allow_unused=True)
    eps32 = torch.finfo(torch.float32).eps
    for k, ((z64, _), g) in enumerate(zip(rec64.calls, ups)):
        if g is None or not z64.requires_grad:
            continue
        zd = z64.detach()
        err = 0.0
        for rec in recs32:
            z32 = rec.calls[k][0]
            if z32.shape != zd.shape:
                raise AssertionError(f"ReLU call {k}: fp32 input {list(z32.shape)} vs fp64 {list(zd.shape)}")
            err = max(err, (z32.detach().double() - zd).abs().max().item())
        t = radius * max(err, eps32 * zd.abs().max().item())
        for j in torch.nonzero((zd.abs() <= t) & (g != 0)).tolist():
            j = tuple(j)
            v = torch.zeros_like(zd)
            v[j] = g[j]  # the upstream gradient at position j alone
            grads = torch.autograd.grad(z64, leaves, grad_outputs=v, retain_graph=True, allow_unused=True)
            for n, d in zip(names, grads):
                if d is not None:
                    slack[n] += d.detach().double().abs()
    return slack


# -------------------------------------------------------------------------------- the mixed op
PERTURB_SEEDS = (11, 12, 13)
EAGER_VARIANTS = ("as given", "other memory format") + tuple(f"perturbed {s}" for s in PERTURB_SEEDS)


def make_mixed_op(c_in: int, c_out: int, stride: int, h: int, seed: int = 0) -> MixedOp:
    """A mixed op of every FBNet candidate with non-trivial BN affine parameters and running stats."""
    torch.manual_seed(seed)
    op = MixedOp(LayerSpec(0, 0, c_in, c_out, stride, h, (h - 1) // stride + 1), FBNET_CANDIDATES)
    for m in op.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return op


def _other_format(x: torch.Tensor) -> torch.Tensor:
    other = torch.contiguous_format if _format_of(x) == torch.channels_last else torch.channels_last
    return x.contiguous(memory_format=other)


def _perturb(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``t * (1 + eps32 * U(-1, 1))``: a 1-ulp relative perturbation, same dtype and layout."""
    r = torch.rand(t.shape, generator=gen, dtype=torch.float64).mul_(2).sub_(1)
    return (t.double() * (1 + torch.finfo(torch.float32).eps * r)).to(t.dtype)


def eager_variants(module: nn.Module, inputs: list[torch.Tensor]):
    """Yield ``(name, module copy, inputs)`` for each member of the eager fp32 ensemble."""
    for name in EAGER_VARIANTS:
        m = copy.deepcopy(module)
        xs = list(inputs)
        if name == "other memory format":
            xs[0] = _other_format(xs[0])
        elif name.startswith("perturbed"):
            gen = torch.Generator().manual_seed(int(name.split()[1]))
            with torch.no_grad():
                for t in list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]:
                    t.copy_(_perturb(t, gen))
            xs = [_perturb(t, gen).contiguous(memory_format=_format_of(t)) for t in xs]
        yield name, m, xs


def _format_of(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _run_op(op: MixedOp, x, theta, hard: bool, fn: Callable, go, *, seed: int = 7):
    """``sum(fn(x, w, candidates) * go)`` forward and backward (graph kept).

    Returns ``(y, grad x, grad theta, loss, {"x": leaf, "theta": leaf})``.
    """
    x = x.detach().clone().requires_grad_(True)
    theta = theta.detach().clone().requires_grad_(True)
    w = gumbel_weights(theta, 1.0, hard=hard, generator=torch.Generator().manual_seed(seed))
    y = fn(x, w, op.candidates)
    loss = (y * go.to(y.dtype)).sum()
    loss.backward(retain_graph=True)
    return y.detach(), x.grad, theta.grad, loss, {"x": x, "theta": theta}


def compare_mixed_op(op: MixedOp, x: torch.Tensor, theta: torch.Tensor, hard: bool, fused_fn: Callable, *,
                     train: bool = True) -> dict[str, MixedOp]:
    """Fused fp32 vs the eager fp32 ensemble vs eager fp64 on copies of ``op``; asserts on every result.

    Returns the fused, first eager and fp64 copies after their step (``{"fused", "eager", "f64"}``).
    """
    n, _, h, w = x.shape
    s = op.layer.stride
    go = torch.randn(n, op.layer.c_out, (h - 1) // s + 1, (w - 1) // s + 1,
                     generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    op = copy.deepcopy(op).train(train)
    fused = copy.deepcopy(op)
    res_fused = _run_op(fused, x, theta, hard, fused_fn, go)
    f64 = copy.deepcopy(op).double()
    rec64 = ReluRecorder()
    with rec64:
        res64 = _run_op(f64, x.double(), theta.double(), hard, mixed_op_ref, go)
    eagers, recs, results = [], [], []
    for _, m, (xx, th) in eager_variants(op, [x, theta]):
        rec = ReluRecorder()
        with rec:
            results.append(_run_op(m, xx, th, hard, mixed_op_ref, go))
        eagers.append(m)
        recs.append(rec)
    _, _, _, loss64, leaves64 = res64
    slack = relu_flip_slack(loss64, rec64, recs, {**leaves64, **dict(f64.named_parameters())})
    assert_close_to_ref("output", res_fused[0], [r[0] for r in results], res64[0])
    for i, name in ((1, "x"), (2, "theta")):
        assert_close_to_ref(f"grad {name}", res_fused[i], [r[i] for r in results], res64[i], slack=slack[name])
    _check_params_and_buffers(fused, eagers, f64, slack)
    return {"fused": fused, "eager": eagers[0], "f64": f64}


def compare_supernet_step(ref: Supernet, x: torch.Tensor, y: torch.Tensor, hard: bool,
                          forward: Callable[[str, Supernet, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """One training step (cross-entropy forward + backward) of copies of ``ref``, checked like a layer.

    ``forward(kind, net, x, weights)`` runs ``net`` with the mixed-op implementation ``kind``
    stands for ("fused", "eager" or "f64"); the stem and head are eager in all of them.
    """

    def fwd(kind: str, net: Supernet, xx: torch.Tensor) -> torch.Tensor:
        w = net.sample_weights(1.0, hard=hard, generator=torch.Generator().manual_seed(3))
        return forward(kind, net, xx, w)

    compare_net_step(ref, x, y, fwd)


def compare_net_step(ref: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     forward: Callable[[str, nn.Module, torch.Tensor], torch.Tensor]) -> None:
    """One cross-entropy step of copies of any network ``ref``: the loss, every parameter's gradient and
    every buffer (BN running statistics) of the ``"fused"`` run held to the rule against fp64, with the
    eager ensemble and the ReLU-kink slack of the layer tests. ``forward(kind, net, x) -> logits``
    runs ``net`` the way ``kind`` ("fused", "eager", "f64") stands for.
    """

    def step(kind: str, net: nn.Module, xx: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(forward(kind, net, xx), y)
        loss.backward(retain_graph=kind == "f64")
        return loss

    fused = copy.deepcopy(ref)
    loss_fused = step("fused", fused, x)
    f64 = copy.deepcopy(ref).double()
    rec64 = ReluRecorder()
    with rec64:
        loss64 = step("f64", f64, x.double())
    eagers, recs, losses = [], [], []
    for _, m, (xx,) in eager_variants(ref, [x]):
        rec = ReluRecorder()
        with rec:
            losses.append(step("eager", m, xx))
        eagers.append(m)
        recs.append(rec)
    slack = relu_flip_slack(loss64, rec64, recs, dict(f64.named_parameters()))
    assert_close_to_ref("loss", loss_fused.detach(), [l.detach() for l in losses], loss64.detach())
    _check_params_and_buffers(fused, eagers, f64, slack)


def _check_params_and_buffers(fused: nn.Module, eagers: list[nn.Module], f64: nn.Module,
                              slack: dict[str, torch.Tensor]) -> None:
    named = [dict(m.named_parameters()) for m in eagers]
    named64 = dict(f64.named_parameters())
    for pname, p in fused.named_parameters():
        pe = [d[pname] for d in named]
        assert (p.grad is None) == (pe[0].grad is None), f"{pname}: grad presence differs from the reference"
        if p.grad is not None:
            assert_close_to_ref(f"grad {pname}", p.grad, [q.grad for q in pe], named64[pname].grad,
                                slack=slack[pname])
    bufs = [dict(m.named_buffers()) for m in eagers]
    bufs64 = dict(f64.named_buffers())
    for bname, b in fused.named_buffers():
        if b.dtype == torch.long:
            assert torch.equal(b, bufs[0][bname]), f"{bname}: {b} != {bufs[0][bname]}"
        else:
            assert_close_to_ref(bname, b, [d[bname] for d in bufs], bufs64[bname])
