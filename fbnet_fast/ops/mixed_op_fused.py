"""The fused mixed op: one autograd Function per layer, recomputing in backward.

``mixed_op_fused(x, weights, blocks) == mixed_op_ref(x, weights, blocks)`` (forward
value, every gradient, BN running statistics) with a fraction of the memory: eager
autograd keeps every candidate's intermediates (~80 input-sized tensors for the FBNet
table); :class:`MixedOpFunction` keeps the layer input and a few ``[C]`` vectors.

Per IR candidate ``i`` (internally channels-last ``[M, C]`` rows, ``M = N*H*W``)::

    z1 = x @ W1^T; bn_stats(z1)           GEMM (gemm.mm_stats: small_gemm, statistics from its
                                          output blocks in cache; or torch + bn_act); g=2 as
                                          block-diagonal; channel shuffle folded into W1's rows
    z2 = dwconv(relu(bn1(z1)))            dwconv_bn     (+ BN2 statistics, h1 never stored)
    z3 = relu(bn2(z2)) @ W3^T; stats(z3)  GEMM with BN2 + ReLU as its prologue (h2 never stored
                                          where small_gemm runs; else written by bn_act, or
                                          beside z2 by the dwconv pass in the recomputation)
    out += w_i * bn3(z3)                  bn_act        (weighted sum in place)

The backward's weight gradient of W3 reads h2 the same way (``mm_tn`` with the prologue).

Each BatchNorm's per-channel finish is one launcher call (``bn_fold`` forward, ``bn_grad_fold``
backward: scale/shift/invstd, running statistics, k1..k3, gamma/beta grads, the Gumbel dot).

plus ``out += (sum of w_i over residual candidates) * x`` once. A layer whose only active candidates are
identity skips (a decided skip layer, a sampled net's skip) is :class:`_IdentityScale` instead: ``r * x``, and
with ``r`` exactly 1 a view of ``x`` with no copy either way. The Gumbel weights' gradient is made only when
they want one (a weight step's are constants).

Without autograd and with every BN on its running statistics (evaluation), BN3 is an affine known
before the product: ``w_i * bn3(z3) = h2 @ (w_i * scale3 * W3)^T + w_i * shift3``, so each IR
candidate's last product adds straight into the output (``_eval_forward``: no z3, no weighted-sum
pass). A backward whose input wants no gradient skips it, and stops at BN3 when no weight below
it wants one either (the first layer of a theta step: only the Gumbel weight's gradient is left).

On CPU, an IR candidate whose BNs all normalise with batch statistics runs its forward as one C++ call
(``_C.ir_forward``) and, from the kept intermediates, its backward as another (``_C.ir_backward``,
csrc/ir_block.cpp): the same kernels in the same order as the launches above, so the same bits, without the
Python and the thread fork/join around each of the 7 + 11 launches (:func:`_ir_cpp_applies`,
:func:`_ir_bwd_cpp_applies`). Both take the weights in the module's layouts and make the kernels' themselves
(:func:`_ir_weights` is the launches' only), and the backward writes the weights' gradients in the module's.
The products the launches leave to torch (:func:`.gemm.small_rule`) run there
through torch's own BLAS (``sgemm_``, found at import: ``_ext.torch_sgemm``) with torch.mm's arguments, so
they keep torch's bits too; without an exported sgemm_ such candidates keep the launches. In evaluation the same holds
for the three launches of an IR candidate (``_C.ir_eval``, :func:`_ir_eval_cpp`), which also runs them image
by image in cache instead of writing z1 and z2 to memory.

``skip`` is the identity or 1x1 conv (+stride) + BN + ReLU. Candidates with ``w_i == 0`` (hard
Gumbel) are skipped in forward and backward; their weight gradient is 0, as in the
reference, where they are not in the graph.

Backend per device: the Function is device-agnostic; its kernels are the family
launchers (:mod:`.bn_act`, :mod:`.dwconv_bn`), which run ``fbnet_fast._C`` for CPU
tensors and ``fbnet_fast.ops.<family>_triton`` for CUDA tensors. GEMMs: :func:`.gemm.mm` (the small-product
kernel for narrow CPU products, torch elsewhere).
Float32 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..blocks import IRBlock, SkipBlock
from ..errors import ConfigError
from .bn_act import (act_grad_apply, act_grad_sums, affine_act, affine_act_accumulate_, bn_fold, bn_grad_fold,
                     bn_stats)
from .dwconv_bn import conv_out_size, dwconv_bn_backward, dwconv_bn_forward
from ._launch import cpu_ext, launches_unchecked, ptr
from .gemm import Rules, mm, mm_stats, mm_tn, rules
from .mixed_op_ref import active_candidates

__all__ = ["FUSED_KINDS", "KEEP_ENV", "MixedOpFunction", "fold_module_bn", "keep_budget_bytes", "kept_bytes",
           "mixed_op_fused", "module_bn_backward", "supports"]

# The block classes the fused kernels implement, by kind: exact classes, not subclasses and
# not look-alikes (a block with a depthwise conv plus, say, squeeze-excite is not an IR
# block to these kernels). Any other candidate sends the layer to the eager reference
# under impl="auto" and is refused under "cpp"/"triton" (supports()).
FUSED_KINDS: dict[str, type[nn.Module]] = {"ir": IRBlock, "skip": SkipBlock}


# ---------------------------------------------------------------------------- helpers
class _BN(NamedTuple):
    """A BatchNorm folded for one call: ``y = scale * z + shift`` (internal channel order)."""

    scale: torch.Tensor
    shift: torch.Tensor
    mean: torch.Tensor  # batch mean (training) or running mean (eval)
    var: torch.Tensor  # biased batch variance (training) or running variance (eval)
    invstd: torch.Tensor
    batch: bool  # normalised with batch statistics (gradients flow through mean/var)


@dataclass(frozen=True)
class _Cand:
    index: int  # position in the layer's candidate list (and in ``weights``)
    kind: str  # "ir" | "skip_id" | "skip_conv"
    block: nn.Module
    nparams: int
    perm: torch.Tensor | None = None  # channel shuffle folded into conv_pw's rows (g > 1), int64 on x's device
    inv_perm: torch.Tensor | None = None


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` (any memory format) -> contiguous ``[N, H, W, C]``; free for channels_last."""
    return t.permute(0, 2, 3, 1).contiguous()


def _uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    buf = bn._buffers  # not Module.__getattr__: ~0.7 us a read, several reads a candidate and step
    return bn.training or (buf.get("running_mean") is None and buf.get("running_var") is None)


def _running_update(bn: nn.BatchNorm2d, count: int, counters: list | None = None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
    """``(running_mean, running_var, momentum)`` for a fold with batch statistics over ``count`` values per
    channel: ``nn.BatchNorm2d``'s update in training (``num_batches_tracked`` counted here, momentum ``None``:
    the cumulative average), ``(None, None, 0.0)`` when the module keeps no running statistics or is in eval.
    With ``counters`` (a list) and a fixed momentum, ``num_batches_tracked`` is appended there instead, for the
    caller to count the layer's BNs in one call (``torch._foreach_add_``) rather than one add a BN."""
    if not (bn.training and bn.track_running_stats):
        return None, None, 0.0
    if count < 2:
        raise ConfigError(f"BatchNorm in training needs more than 1 value per channel, got {count}")
    buf = bn._buffers
    nbt = buf["num_batches_tracked"]
    if counters is not None and bn.momentum is not None:
        counters.append(nbt)
        return buf["running_mean"], buf["running_var"], bn.momentum
    nbt.add_(1)
    f = bn.momentum if bn.momentum is not None else 1.0 / float(nbt)
    return buf["running_mean"], buf["running_var"], f


def fold_module_bn(bn: nn.BatchNorm2d, gamma, beta, z2d: torch.Tensor, stats, perm) -> _BN:
    """Fold ``bn`` into scale/shift; with batch statistics, update running stats as nn.BatchNorm2d does.

    ``stats`` is ``(mean, var)`` already computed (by a fused kernel) or ``None`` to
    compute them from ``z2d [M, C]``. ``perm`` maps internal to module channel order.
    One :func:`bn_fold` launch does the per-channel arithmetic and the running update.
    """
    if _uses_batch_stats(bn):
        mean, var = stats if stats is not None else bn_stats(z2d)
        count = z2d.shape[0]
        rm, rv, f = _running_update(bn, count)
        run = {} if rm is None else dict(running_mean=rm, running_var=rv, momentum=f, count=count)
        fold = bn_fold(mean, var, gamma, beta, eps=bn.eps, perm=perm, **run)
        return _BN(fold.scale, fold.shift, mean, var, fold.invstd, True)
    mean, var = bn.running_mean, bn.running_var
    if perm is not None:
        mean, var = mean[perm], var[perm]
    else:  # saved for backward: a snapshot, not the module's buffer
        mean, var = mean.clone(), var.clone()
    fold = bn_fold(mean, var, gamma, beta, eps=bn.eps, perm=perm)
    return _BN(fold.scale, fold.shift, mean, var, fold.invstd, False)


class _BNGrad(NamedTuple):
    grad_z: torch.Tensor  # [M, C] gradient w.r.t. the BN input
    grad_gamma: torch.Tensor  # [C] module order
    grad_beta: torch.Tensor
    weight_dot: torch.Tensor  # scalar: sum(grad_y * y), the Gumbel weight's gradient


def module_bn_backward(bn: _BN, gamma, beta, grad_y, z, *, relu: bool, alpha: float = 1.0,
                 out: torch.Tensor | None = None, grad_z: bool = True) -> _BNGrad:
    """Backward of ``y = act(bn(z))`` scaled by ``alpha``; ``gamma, beta`` module order (no perm).

    ``grad_z=False``: only the ``[C]`` results (nothing below this BN wants a gradient), ``grad_z`` is None
    and its elementwise pass is skipped."""
    s_g, s_gz = act_grad_sums(grad_y, z, bn.scale, bn.shift, bn.mean, relu=relu)
    gf = bn_grad_fold(s_g, s_gz, gamma, beta, bn.invstd, count=z.shape[0], batch=bn.batch, alpha=alpha)
    if not grad_z:
        return _BNGrad(None, gf.grad_gamma, gf.grad_beta, gf.weight_dot)
    grad_z = act_grad_apply(grad_y, z, bn.scale, bn.shift, bn.mean, gf.k1, gf.k2, gf.k3, relu=relu, out=out)
    return _BNGrad(grad_z, gf.grad_gamma, gf.grad_beta, gf.weight_dot)


def _dense_1x1(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``[Cout, Cin/g, 1, 1]`` grouped 1x1 weight -> dense block-diagonal ``[Cout, Cin]``.

    g = 2 candidates are the two cheapest (e = 1); doubling their GEMM flops costs
    less than two small GEMMs and keeps one code path.
    """
    co, ci = w.shape[0], w.shape[1]
    w2 = w.reshape(co, ci)
    if groups == 1:
        return w2
    return torch.block_diag(*w2.reshape(groups, co // groups, ci).unbind(0))


def _undense_1x1(gd: torch.Tensor, groups: int, shape: torch.Size) -> torch.Tensor:
    if groups == 1:
        return gd.reshape(shape)
    co, ci = gd.shape[0] // groups, gd.shape[1] // groups
    blocks = [gd[i * co:(i + 1) * co, i * ci:(i + 1) * ci] for i in range(groups)]
    return torch.cat(blocks, 0).reshape(shape)


@lru_cache(maxsize=256)
def _shuffle_perm_on(c: int, groups: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_shuffle_perm` on ``device``, built once per shape (it was 5 tiny ops, i.e. GPU launches, a call)."""
    return tuple(t.to(device) for t in _shuffle_perm(c, groups))


def _shuffle_perm(c: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``perm[j]`` = pre-shuffle channel that :func:`channel_shuffle` moves to ``j``."""
    j = torch.arange(c)
    perm = (j % groups) * (c // groups) + j // groups
    return perm, torch.argsort(perm)


# An IR block's parameters in the order the Function takes them: (submodule, parameter) names, read from the
# modules' dicts (Module.__getattr__ is ~0.7 us a lookup, 18 a candidate and step).
_IR_PARAMS = (("conv_pw", "weight"), ("bn1", "weight"), ("bn1", "bias"), ("conv_dw", "weight"), ("bn2", "weight"),
              ("bn2", "bias"), ("conv_pwl", "weight"), ("bn3", "weight"), ("bn3", "bias"))


def _plan(weights: torch.Tensor, blocks: Sequence[nn.Module]) -> tuple[list[_Cand], list[torch.Tensor]]:
    active = active_candidates(weights)
    if not active:
        raise ConfigError("mixed op: every candidate weight is zero")
    cands, params = [], []
    for i in active:
        b = blocks[i]
        if b.kind == "ir":
            mods = b._modules
            ps = [mods[m]._parameters[n] for m, n in _IR_PARAMS]
            perm = inv = None
            if b.groups > 1:
                perm, inv = _shuffle_perm_on(b.mid, b.groups, str(weights.device))
            cands.append(_Cand(i, "ir", b, len(ps), perm, inv))
        elif b.identity:
            ps = []
            cands.append(_Cand(i, "skip_id", b, 0))
        else:
            ps = [b.conv.weight, b.bn.weight, b.bn.bias]
            cands.append(_Cand(i, "skip_conv", b, len(ps)))
        params += ps
    return cands, params


# --------------------------------------------------------------------- per candidate
class _IRWeights(NamedTuple):
    """An IR candidate's weights in kernel layout, built once per step (forward) and reused in backward."""

    w1: torch.Tensor  # [mid, C_in] dense (block-diagonal for g > 1), rows in internal (shuffled) order
    wt: torch.Tensor  # [k*k, mid] depthwise taps major
    w3: torch.Tensor  # [C_out, mid] dense


def _ir_weights(c: _Cand, ps) -> _IRWeights:
    b = c.block
    w1, wd, w3 = ps[0], ps[3], ps[6]
    w1d = _dense_1x1(w1, b.groups)
    if c.perm is not None:
        w1d = w1d[c.perm]
    return _IRWeights(w1d, wd.reshape(b.mid, -1).t().contiguous(), _dense_1x1(w3, b.groups))


class _MMBN(NamedTuple):
    out: torch.Tensor
    stats: tuple[torch.Tensor, torch.Tensor] | None  # (mean, var) of out when bn normalises with batch statistics


def _mm_bn(bn: nn.BatchNorm2d, a, b, a_scale=None, a_shift=None) -> _MMBN:
    """``a @ b`` (with the prologue) for the BatchNorm ``bn`` after it: its batch statistics from the same pass."""
    if _uses_batch_stats(bn):
        r = mm_stats(a, b, a_scale=a_scale, a_shift=a_shift)
        return _MMBN(r.out, (r.mean, r.var))
    return _MMBN(mm(a, b, a_scale=a_scale, a_shift=a_shift), None)


def _ir_forward(c: _Cand, ps, wts: _IRWeights, x2, shape, out2, alpha, keep: bool, first: bool, r: Rules,
                counters: list):
    """Adds ``alpha * block(x)`` into ``out2`` (writes it, ``first``); returns the three BN folds (for the backward)
    and, with ``keep``, ``[z1, z2, z3]``. (``r``, ``counters``: :func:`_ir_forward_cpp`'s; the launches here read
    the rules themselves and count each BN's batches as it folds.)"""
    b = c.block
    _, g1, b1, _, g2, b2, _, g3, b3 = ps
    n, h, w, _ = shape
    r1 = _mm_bn(b.bn1, x2, wts.w1.t())
    bn1 = fold_module_bn(b.bn1, g1, b1, r1.out, r1.stats, c.perm)
    z1 = r1.out
    batch2 = _uses_batch_stats(b.bn2)
    fw = dwconv_bn_forward(z1.view(n, h, w, b.mid), bn1.scale, bn1.shift, wts.wt, b.stride, stats=batch2)
    z2 = fw.out.view(-1, b.mid)
    bn2 = fold_module_bn(b.bn2, g2, b2, z2, (fw.mean, fw.var) if batch2 else None, None)
    # h2 = relu(bn2(z2)) as the product's prologue: never written where the small kernel runs
    r3 = _mm_bn(b.bn3, z2, wts.w3.t(), bn2.scale, bn2.shift)
    z3 = r3.out
    bn3 = fold_module_bn(b.bn3, g3, b3, z3, r3.stats, None)
    affine_act_accumulate_(out2, z3, bn3.scale, bn3.shift, relu=False, alpha=alpha, assign=first)
    return [bn1, bn2, bn3], [z1, z2, z3] if keep else []


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself where its memory is row-major (a conv weight in either memory format: its 1x1 or single-channel
    dimensions have no stride that matters), else a contiguous copy."""
    return t if t.is_contiguous() else t.contiguous()


def _ir_forward_cpp(c: _Cand, ps, wts: _IRWeights | None, x2, shape, out2, alpha, keep: bool, first: bool,
                    r: Rules, counters: list):
    """:func:`_ir_forward` as one C++ call (``_C.ir_forward``: the same kernels in the same order, so the same
    bits), where it applies (:func:`_ir_cpp_applies`). With :func:`_ir_backward_cpp`: the default search's weight
    step 594 -> 512 ms at 2 threads (AMD EPYC Zen 4, AVX-512, fresh processes; BENCHMARKS.md). It takes the
    parameters in the module's layouts and makes the kernels' itself (``wts`` unused: None where only the C++
    calls need them).

    z1, z2 and z3 are written into one buffer (kept as ``[zs]``: :func:`_kept_z` makes the views where the Python
    backward wants them) and the three folds into another (:class:`_Folds`); ``num_batches_tracked`` goes to
    ``counters`` (the caller counts the layer's BNs in one call)."""
    b = c.block
    _, g1, b1, _, g2, b2, _, g3, b3 = ps
    n, h, w, cin = shape
    mid, cout = b.mid, b.c_out
    m, mo = n * h * w, n * conv_out_size(h, b.stride) * conv_out_size(w, b.stride)
    zs = x2.new_empty(m * mid + mo * (mid + cout))
    folds = x2.new_empty(10 * mid + 5 * cout)
    bn1, bn2, bn3 = b.bn1, b.bn2, b.bn3
    rm1, rv1, f1 = _running_update(bn1, m, counters)
    rm2, rv2, f2 = _running_update(bn2, mo, counters)
    rm3, rv3, f3 = _running_update(bn3, mo, counters)
    p = ptr
    z1p = zs.data_ptr()
    z2p = z1p + 4 * m * mid
    w1, wd, w3 = _row_major(ps[0]), _row_major(ps[3]), _row_major(ps[6])
    cpu_ext().ir_forward(x2.data_ptr(), n, h, w, cin, w1.data_ptr(), mid, wd.data_ptr(), b.kernel, b.stride,
                         w3.data_ptr(), cout, b.groups, g1.data_ptr(), b1.data_ptr(), p(c.perm), g2.data_ptr(),
                         b2.data_ptr(), g3.data_ptr(), b3.data_ptr(), p(rm1), p(rv1), p(rm2), p(rv2), p(rm3), p(rv3),
                         float(bn1.eps), float(bn2.eps), float(bn3.eps), float(f1), float(f2), float(f3),
                         z1p, z2p, z2p + 4 * mo * mid, folds.data_ptr(), out2.data_ptr(),
                         float(alpha), bool(first), _fwd_blas(b, x2, m, mo, r))
    return _Folds(folds, mid, cout), [zs] if keep else []


class _Folds(NamedTuple):
    """The one-call forward's three BatchNorm folds in one float32 buffer: per BN (BN1 and BN2 over ``mid``
    channels, BN3 over ``cout``) scale, shift, mean, var, invstd; every one on batch statistics. The one-call
    backward reads them by address (:func:`_fold_ptrs`); the Python one as :class:`_BN` views (:meth:`bns`)."""

    buf: torch.Tensor
    mid: int
    cout: int

    def bns(self) -> list[_BN]:
        v = self.buf.split_with_sizes([self.mid] * 10 + [self.cout] * 5)
        return [_BN(*v[i:i + 5], True) for i in (0, 5, 10)]


def _fold_ptrs(folds) -> tuple:
    """``_C.ir_backward``'s fold arguments, BN1..BN3 each (scale, shift, mean, invstd), then the three ``batch``
    flags, from a :class:`_Folds` or a list of three :class:`_BN`."""
    if isinstance(folds, _Folds):
        mid, cout = folds.mid, folds.cout
        a = folds.buf.data_ptr()
        b = a + 20 * mid
        c = a + 40 * mid
        return (a, a + 4 * mid, a + 8 * mid, a + 16 * mid, b, b + 4 * mid, b + 8 * mid, b + 16 * mid,
                c, c + 4 * cout, c + 8 * cout, c + 16 * cout, True, True, True)
    bn1, bn2, bn3 = folds
    return (bn1.scale.data_ptr(), bn1.shift.data_ptr(), bn1.mean.data_ptr(), bn1.invstd.data_ptr(),
            bn2.scale.data_ptr(), bn2.shift.data_ptr(), bn2.mean.data_ptr(), bn2.invstd.data_ptr(),
            bn3.scale.data_ptr(), bn3.shift.data_ptr(), bn3.mean.data_ptr(), bn3.invstd.data_ptr(),
            bn1.batch, bn2.batch, bn3.batch)


def _kept_z(kept, m: int, mo: int, mid: int, cout: int) -> list[torch.Tensor]:
    """``[z1, z2, z3]`` (``[m, mid]``, ``[mo, mid]``, ``[mo, cout]``) from what a forward kept: themselves, or views
    of the one buffer :func:`_ir_forward_cpp` wrote them into."""
    if len(kept) == 3:
        return list(kept)
    return [t.view(-1, c) for t, c in zip(kept[0].split_with_sizes([m * mid, mo * mid, mo * cout]), (mid, mid, cout))]


def _kept_ptrs(kept, m: int, mo: int, mid: int) -> tuple[int, int, int]:
    """The addresses of z1, z2, z3 in what a forward kept (:func:`_kept_z`)."""
    if len(kept) == 3:
        return kept[0].data_ptr(), kept[1].data_ptr(), kept[2].data_ptr()
    a = kept[0].data_ptr()
    return a, a + 4 * m * mid, a + 4 * (m + mo) * mid


# Bits of the one-call paths' ``blas`` argument (csrc/ir_block.cpp): the products that torch would run (the rules
# of .gemm.small_rule / small_tn_rule say so), run there through torch's own BLAS with torch.mm's arguments.
_BLAS_W1, _BLAS_W3, _BLAS_GW3, _BLAS_GH2, _BLAS_GW1, _BLAS_GX = 1, 2, 4, 8, 16, 32


def _fwd_blas(b: nn.Module, x2: torch.Tensor, m: int, mo: int, r: Rules) -> int:
    """The ``blas`` bits of the IR candidate ``b``'s forward products (``x W1^T``, ``h2 W3^T``) on CPU, by the
    rules ``r`` (:func:`.gemm.rules` of x2's device)."""
    return ((0 if r.small(m, x2.shape[1], b.mid) else _BLAS_W1)
            | (0 if r.small(mo, b.mid, b.c_out) else _BLAS_W3))


def _bwd_blas(b: nn.Module, x2: torch.Tensor, gx2, needs, m: int, mo: int, r: Rules) -> int:
    """The ``blas`` bits of the kept backward's products on CPU, as :func:`_ir_backward` sends them to torch:
    W3's gradient (with h2 written first), gz3 W3, W1's gradient, gz1 W1."""
    mid, cout, cin = b.mid, b.c_out, x2.shape[1]
    return ((_BLAS_GW3 if needs[6] and not r.small_tn(cout, mid, mo) else 0)
            | (0 if r.small(mo, cout, mid) else _BLAS_GH2)
            | (_BLAS_GW1 if needs[0] and not r.small_tn(mid, cin, m) else 0)
            | (_BLAS_GX if gx2 is not None and not r.small(m, mid, cin) else 0))


def _ir_cpp_applies(c: _Cand, x2: torch.Tensor, m: int, mo: int, r: Rules) -> bool:
    """Whether :func:`_ir_forward_cpp` runs this candidate: a CPU tensor and every BN on batch statistics
    (training, or no running statistics kept); products torch would run go through its BLAS from C++, so
    without one found (``_C.has_blas()``) both products must be on the small-product kernel."""
    b = c.block
    return (x2.device.type == "cpu" and _uses_batch_stats(b.bn1) and _uses_batch_stats(b.bn2)
            and _uses_batch_stats(b.bn3) and (cpu_ext().has_blas() or _fwd_blas(b, x2, m, mo, r) == 0))


def _ir_backward_cpp(c: _Cand, ps, wts: _IRWeights | None, folds, kept, x2, gx2, shape, go2, alpha, needs, first,
                     r: Rules):
    """:func:`_ir_backward`'s kept path with the products' prologue as one C++ call (``_C.ir_backward``: the same
    launches in the same order, so the same bits), where :func:`_ir_bwd_cpp_applies` says so. It takes the
    parameters in the module's layouts (``wts`` unused) and writes every gradient in the module's layout into one
    buffer; the returned ones are views of it."""
    b = c.block
    _, g1, b1, _, g2, b2, _, g3, b3 = ps
    n, h, w, cin = shape
    mid, cout = b.mid, b.c_out
    m, mo = n * h * w, n * conv_out_size(h, b.stride) * conv_out_size(w, b.stride)
    w1, wd, w3 = _row_major(ps[0]), _row_major(ps[3]), _row_major(ps[6])
    sizes = [w1.numel() if needs[0] else 0, wd.numel() if needs[3] else 0, w3.numel() if needs[6] else 0,
             mid, mid, mid, mid, cout, cout, 1]
    out = x2.new_empty(sum(sizes))
    gw1, gwd, gw3, gg1, gb1, gg2, gb2, gg3, gb3, dot = out.split_with_sizes(sizes)
    p = ptr
    cpu_ext().ir_backward(go2.data_ptr(), *_kept_ptrs(kept, m, mo, mid), x2.data_ptr(), n, h, w, cin,
                          mid, cout, b.kernel, b.stride, w1.data_ptr(), wd.data_ptr(), w3.data_ptr(), b.groups,
                          g1.data_ptr(), b1.data_ptr(), p(c.perm), g2.data_ptr(), b2.data_ptr(), g3.data_ptr(),
                          b3.data_ptr(), *_fold_ptrs(folds), float(alpha), gg1.data_ptr(),
                          gw1.data_ptr() if needs[0] else 0, gwd.data_ptr() if needs[3] else 0,
                          gw3.data_ptr() if needs[6] else 0, p(gx2), not first, _bwd_blas(b, x2, gx2, needs, m, mo, r))
    # the weights' gradients come in the module's layouts
    return [gw1.view(ps[0].shape) if needs[0] else None, gg1 if needs[1] else None, gb1 if needs[2] else None,
            gwd.view(ps[3].shape) if needs[3] else None, gg2 if needs[4] else None, gb2 if needs[5] else None,
            gw3.view(ps[6].shape) if needs[6] else None, gg3 if needs[7] else None, gb3 if needs[8] else None], dot


def _ir_bwd_cpp_applies(c: _Cand, kept, x2, gx2, needs, m: int, mo: int, r: Rules) -> bool:
    """Whether :func:`_ir_backward_cpp` runs this candidate: CPU, z1..z3 kept, a gradient below BN3 wanted, and
    torch's BLAS found for the products torch would run (without one, every product of the backward must be on
    the small kernels; :func:`_ir_backward` runs the others)."""
    return (bool(kept) and x2.device.type == "cpu" and (gx2 is not None or any(needs[:6]))
            and (cpu_ext().has_blas() or _bwd_blas(c.block, x2, gx2, needs, m, mo, r) == 0))


def _ir_backward(c: _Cand, ps, wts: _IRWeights, folds, kept, x2, gx2, shape, go2, alpha, needs, first, r: Rules):
    """``gx2`` None: x wants no gradient. With neither it nor a parameter below W3 wanting one (a theta step's
    first layer), the backward stops at BN3: its sums give the Gumbel weight's gradient."""
    b = c.block
    deep = gx2 is not None or any(needs[:6])
    w1, g1, b1, wd, g2, b2, w3, g3, b3 = ps
    n, h, w, _ = shape
    # the forward's (its parameters are saved tensors: changed in place, backward refuses)
    bn1, bn2, bn3 = folds.bns() if isinstance(folds, _Folds) else folds
    # h2 = relu(bn2(z2)) feeds W3's product (recomputed z3) and its weight gradient: read from z2 through the
    # kernels' prologue where the small kernels run both (h2 None), else written once.
    m_out = n * conv_out_size(h, b.stride) * conv_out_size(w, b.stride)
    prologue = (r.small(m_out, b.mid, wts.w3.shape[0]) or bool(kept)) and (
        not needs[6] or r.small_tn(wts.w3.shape[0], b.mid, m_out))
    if kept:
        # Kept by the forward (the layer fit the keep budget).
        z1, z2, z3 = _kept_z(kept, n * h * w, m_out, b.mid, wts.w3.shape[0])
        z1_4 = z1.view(n, h, w, b.mid)
        h2 = None if prologue else affine_act(z2, bn2.scale, bn2.shift, relu=True)
    else:
        # Recompute this candidate's intermediates (the only ones alive at a time).
        z1 = mm(x2, wts.w1.t())
        z1_4 = z1.view(n, h, w, b.mid)
        # Without the prologue, BN2 is known here, so h2 comes out of the conv pass too (no extra read of z2).
        act = {} if prologue else dict(scale2=bn2.scale, shift2=bn2.shift)
        fw = dwconv_bn_forward(z1_4, bn1.scale, bn1.shift, wts.wt, b.stride, stats=False, **act)
        z2 = fw.out.view(-1, b.mid)
        h2 = None if prologue else fw.act.view(-1, b.mid)
        del fw
        z3 = mm(z2, wts.w3.t(), a_scale=bn2.scale, a_shift=bn2.shift) if prologue else mm(h2, wts.w3.t())
    # In place over a recomputed z3; a kept one stays intact (a second backward with retain_graph).
    r3 = module_bn_backward(bn3, g3, b3, go2, z3, relu=False, alpha=alpha, out=None if kept else z3,
                            grad_z=deep or needs[6])
    gz3 = r3.grad_z
    # Frozen weights (a theta step of the search): their GEMMs and the depthwise weight
    # gradient are skipped, as eager autograd skips them.
    gw3 = None
    if needs[6]:
        gw3 = mm_tn(gz3, z2, y_scale=bn2.scale, y_shift=bn2.shift) if prologue else mm_tn(gz3, h2)
    if not deep:
        grads = [None] * 6 + [_undense_1x1(gw3, b.groups, w3.shape) if needs[6] else None, r3.grad_gamma,
                              r3.grad_beta]
        return [g if need else None for g, need in zip(grads, needs)], r3.weight_dot
    gh2 = mm(gz3, wts.w3)
    del h2, z3, gz3
    r2 = module_bn_backward(bn2, g2, b2, gh2, z2, relu=True, out=gh2)
    del z2
    ho, wo = conv_out_size(h, b.stride), conv_out_size(w, b.stride)
    bw = dwconv_bn_backward(r2.grad_z.view(n, ho, wo, b.mid), z1_4, bn1.scale, bn1.shift, wts.wt, b.stride,
                            bn1.mean, weight_grad=needs[3])
    r2 = r2._replace(grad_z=None)
    gu1 = bw.grad_in.view(-1, b.mid)
    # BN1's sums came out of the dwconv backward pass; only the fold and the elementwise pass remain.
    gf1 = bn_grad_fold(bw.sum_g, bw.sum_gz, g1, b1, bn1.invstd, count=gu1.shape[0], batch=bn1.batch, perm=c.perm)
    gz1 = act_grad_apply(gu1, z1, bn1.scale, bn1.shift, bn1.mean, gf1.k1, gf1.k2, gf1.k3, relu=False, out=gu1)
    del z1
    gw1d = mm_tn(gz1, x2) if needs[0] else None
    if gx2 is not None:
        mm(gz1, wts.w1, gx2, accumulate=not first)  # first: gx2 is written, not read (no zero fill)
    return _ir_grads(c, ps, needs, gw1d, gf1.grad_gamma, gf1.grad_beta, bw.grad_weight, r2.grad_gamma,
                     r2.grad_beta, gw3, r3.grad_gamma, r3.grad_beta), r3.weight_dot


def _ir_grads(c: _Cand, ps, needs, gw1d, gg1, gb1, gwt, gg2, gb2, gw3, gg3, gb3) -> list[torch.Tensor | None]:
    """The IR candidate's parameter gradients in module layout (None where not wanted) from the kernels': ``gw1d``
    ``[mid, C_in]`` dense with rows in internal (shuffled) order, ``gwt`` ``[k*k, mid]``, ``gw3`` dense."""
    b = c.block
    w1, wd, w3 = ps[0], ps[3], ps[6]
    gw1 = None
    if needs[0]:
        if c.inv_perm is not None:
            gw1d = gw1d[c.inv_perm]
        gw1 = _undense_1x1(gw1d, b.groups, w1.shape)
    grads = [gw1, gg1, gb1, gwt.t().reshape(wd.shape) if needs[3] else None, gg2, gb2,
             _undense_1x1(gw3, b.groups, w3.shape) if needs[6] else None, gg3, gb3]
    return [g if need else None for g, need in zip(grads, needs)]


def _skip_input(c: _Cand, x4):
    s = c.block.stride
    xs = x4 if s == 1 else x4[:, ::s, ::s, :]
    return xs.reshape(-1, x4.shape[3])


def _skip_forward(c: _Cand, ps, x4, out2, alpha, first: bool):
    wc, g, bb = ps
    z = mm(_skip_input(c, x4), wc.reshape(wc.shape[0], -1).t())
    bn = fold_module_bn(c.block.bn, g, bb, z, None, None)
    affine_act_accumulate_(out2, z, bn.scale, bn.shift, relu=True, alpha=alpha, assign=first)
    return [bn]


def _skip_backward(c: _Cand, ps, folds, x4, gx4, go2, alpha, needs, first):
    wc, g, bb = ps
    s = c.block.stride
    w2 = wc.reshape(wc.shape[0], -1)
    xs = _skip_input(c, x4)
    z = mm(xs, w2.t())
    bn = folds[0]
    r = module_bn_backward(bn, g, bb, go2, z, relu=True, alpha=alpha, out=z, grad_z=gx4 is not None or needs[0])
    if gx4 is not None:  # x wants a gradient
        gxs = mm(r.grad_z, w2)
        if s == 1:
            if first:
                gx4.view(-1, gx4.shape[3]).copy_(gxs)
            else:
                gx4.view(-1, gx4.shape[3]).add_(gxs)
        else:
            if first:
                gx4.zero_()  # only every s-th pixel gets a gradient here
            gx4[:, ::s, ::s, :] += gxs.view(gx4.shape[0], -1, gx4[:, ::s, ::s, :].shape[2], gx4.shape[3])
    gwc = mm_tn(r.grad_z, xs).reshape(wc.shape) if needs[0] else None
    return [gwc, r.grad_gamma if needs[1] else None, r.grad_beta if needs[2] else None], r.weight_dot


# ------------------------------------------------------------------------ keep budget
KEEP_ENV = "FBNET_FAST_KEEP_MIB"
DEFAULT_KEEP_MIB = 256.0


def keep_budget_bytes() -> float:
    """Bytes of intermediates one layer may keep for backward instead of recomputing them.

    ``$FBNET_FAST_KEEP_MIB`` (MiB, default 256; ``0`` always recomputes, ``inf`` always keeps).
    Recomputing costs the forward's GEMMs and depthwise pass again in backward (about a third
    of the backward at the default search's width 0.25); keeping costs z1, z2, z3 of every IR
    candidate (:func:`kept_bytes`), still a fraction of what eager autograd keeps. The default
    keeps the default search's layers (at most ~110 MiB each at batch 64) and recomputes the
    wide, high-resolution layers of an ImageNet-size search, where memory is the constraint.
    """
    import os

    raw = os.environ.get(KEEP_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_KEEP_MIB * 2**20
    try:
        mib = float(raw)
    except ValueError:
        mib = -1.0
    if not mib >= 0:  # also NaN
        raise ConfigError(f"{KEEP_ENV} must be a number of MiB >= 0 (0: always recompute, inf: always keep), "
                          f"got {raw!r}")
    return mib * 2**20


def kept_bytes(cands: Sequence[_Cand], m_in: int, m_out: int) -> int:
    """float32 bytes of z1 ``[m_in, mid]``, z2 ``[m_out, mid]`` and z3 ``[m_out, C_out]`` over the IR candidates."""
    return 4 * sum(c.block.mid * (m_in + m_out) + c.block.c_out * m_out for c in cands if c.kind == "ir")


# --------------------------------------------------------------------------- Function
class MixedOpFunction(torch.autograd.Function):
    """``sum_i w_i * block_i(x)`` over the active candidates, recomputing in backward.

    Saved: x ``[N, C_in, H, W]``, weights ``[K]``, the active candidates' parameters; off the
    autograd record, per BatchNorm the forward's fold (scale, shift, mean, variance, invstd ``[C]``: 3 per
    IR candidate, 1 per skip conv; the backward reuses it, and a parameter changed in place in between makes
    autograd refuse the backward, as the parameters are saved) and, for an IR candidate run by the launches
    (not the one-call C++ path, which takes the module's layouts), its weights in kernel layout (parameter-sized).
    Recomputed: every intermediate (z1, z2, h2, z3, one candidate at a time in backward), unless
    the layer's z1, z2 and z3 together fit the keep budget (:func:`keep_budget_bytes`): then
    they are saved too and the backward reads h2 from z2 through the products' prologue (or rebuilds it
    in one elementwise pass where torch multiplies).
    """

    @staticmethod
    def forward(ctx, x, weights, cands, grad, *params):
        wl = weights.detach().tolist()
        x4 = _nhwc(x)
        n, h, w, cin = x4.shape
        c_out = cands[0].block.c_out
        stride = cands[0].block.stride
        ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
        out4 = x4.new_empty(n, ho, wo, c_out)  # written by the first candidate that adds to it
        out2, x2 = out4.view(-1, c_out), x4.view(-1, cin)
        # ``grad``: a backward can follow (grad mode on and an input requiring grad), known only to the caller:
        # under no_grad, ctx.needs_input_grad still says True.
        keep = grad and kept_bytes(cands, n * h * w, n * ho * wo) <= keep_budget_bytes()
        folds, wts, kept, nkept, residual, k, first = [], [], [], [], 0.0, 0, True
        r, counters = rules(x.device), []
        m, mo = n * h * w, n * ho * wo
        for c in cands:
            ps, k = params[k:k + c.nparams], k + c.nparams
            alpha = wl[c.index]
            wt = None  # an IR candidate's weights in kernel layout, where the launches (not the one-call path) run it
            if c.kind == "ir":
                # made in C++ where the one-call paths run, else here (kept for the backward: the Python one needs
                # them, a one-call one does not)
                cpp = _ir_cpp_applies(c, x2, m, mo, r)
                wt = None if cpp else _ir_weights(c, ps)
                run = _ir_forward_cpp if cpp else _ir_forward
                f, kp = run(c, ps, wt, x2, x4.shape, out2, alpha, keep, first, r, counters)
                kept += kp
                nkept.append(len(kp))
                residual += alpha if c.block.residual else 0.0
                first = False
            elif c.kind == "skip_conv":
                f = _skip_forward(c, ps, x4, out2, alpha, first)
                first = False
            else:
                f = []
                residual += alpha
            folds.append(f)
            wts.append(wt)
        if first:  # identity skips only: one pass (a one-hot skip layer of a single-path step)
            torch.mul(x2, residual, out=out2)
        elif residual:
            out2.add_(x2, alpha=residual)
        if counters:  # the one-call candidates' BNs: num_batches_tracked += 1, one call for the layer
            torch._foreach_add_(counters, 1)
        ctx.cands, ctx.folds, ctx.nparams, ctx.wts = cands, folds, len(params), wts
        ctx.nkept = nkept  # per IR candidate: 3 tensors kept (z1, z2, z3), 1 (the one-call forward's buffer) or 0
        ctx.save_for_backward(x, weights, *params, *kept)
        return out4.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        with launches_unchecked():  # every launcher argument below is built here from checked inputs
            return MixedOpFunction._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        x, weights, *rest = ctx.saved_tensors
        params, kept = rest[:ctx.nparams], rest[ctx.nparams:]  # kept: what each IR candidate kept (ctx.nkept)
        wl = weights.tolist()
        x4 = _nhwc(x)
        n, h, w, cin = x4.shape
        go4 = _nhwc(grad)
        go2, x2 = go4.view(-1, go4.shape[3]), x4.view(-1, cin)
        # written by the first candidate's input gradient; None when x wants none (a theta step's first layer)
        gx4 = torch.empty_like(x4) if ctx.needs_input_grad[0] else None
        gx2 = gx4.view(-1, cin) if gx4 is not None else None
        stride = ctx.cands[0].block.stride  # one per layer, as in forward
        m, mo = n * h * w, n * conv_out_size(h, stride) * conv_out_size(w, stride)
        dots, grads, residual, x_dot, k, i_ir, j, first = [], [], 0.0, None, 0, 0, 0, True
        r, want_w = rules(x.device), ctx.needs_input_grad[1]
        for c, fo, wts in zip(ctx.cands, ctx.folds, ctx.wts):
            ps, k = params[k:k + c.nparams], k + c.nparams
            alpha = wl[c.index]
            dot = None
            needs = ctx.needs_input_grad[4 + k - c.nparams:4 + k]
            if c.kind == "ir":
                nk = ctx.nkept[i_ir]
                kp, j, i_ir = kept[j:j + nk] if nk else None, j + nk, i_ir + 1
                if _ir_bwd_cpp_applies(c, kp, x2, gx2, needs, m, mo, r):
                    run = _ir_backward_cpp
                else:  # the Python backward reads the kernels' weight layouts (made now if the forward did not)
                    run, wts = _ir_backward, wts if wts is not None else _ir_weights(c, ps)
                g, dot = run(c, ps, wts, fo, kp, x2, gx2, x4.shape, go2, alpha, needs, first, r)
                is_res, first = c.block.residual, False
            elif c.kind == "skip_conv":
                g, dot = _skip_backward(c, ps, fo, x4, gx4, go2, alpha, needs, first)
                is_res, first = False, False
            else:
                g, is_res = [], True
            if is_res:
                residual += alpha
                if want_w:
                    if x_dot is None:
                        x_dot = torch.dot(go2.reshape(-1), x2.reshape(-1))
                    dot = x_dot if dot is None else dot + x_dot
            if want_w:
                dots.append(dot.reshape(()))
            grads += g
        if gx2 is not None and first:  # identity skips only: one pass
            torch.mul(go2, residual, out=gx2)
        elif gx2 is not None and residual:
            gx2.add_(go2, alpha=residual)
        gweights = None
        if want_w:  # not wanted: a step whose weights are constants (a decided layer's, or a benchmark's)
            index = torch.tensor([c.index for c in ctx.cands], device=weights.device)
            gweights = torch.zeros_like(weights).index_copy_(0, index, torch.stack(dots))
        return (gx4.permute(0, 3, 1, 2) if gx4 is not None else None, gweights, None, None, *grads)


_BN_SLOTS = {"ir": ("bn1", "bn2", "bn3"), "skip": ("bn",)}  # an identity skip has none


def _block_bns(b: nn.Module) -> list[nn.Module]:
    """A fused-kind block's BN modules, read from ``_modules`` (``hasattr`` on a module raises inside: ~1/3 of
    :func:`supports`' time, and it runs on every call)."""
    return [m for m in map(b._modules.get, _BN_SLOTS[b.kind]) if m is not None]


def supports(x: torch.Tensor, weights: torch.Tensor, blocks: Sequence[nn.Module]) -> str | None:
    """``None`` if the fused op handles this call, else the reason (for ``impl="auto"``)."""
    if x.dtype != torch.float32:
        return f"x is {x.dtype}; the fused kernels are float32 only"
    if x.dim() != 4:
        return f"x must be [N, C, H, W], got shape {list(x.shape)}"
    for i, b in enumerate(blocks):
        kind = getattr(b, "kind", None)
        if FUSED_KINDS.get(kind) is not type(b):
            return (f"candidate {i} is a {type(b).__name__} (kind {kind!r}); the fused kernels implement only "
                    + ", ".join(f"{c.__name__} ({k!r})" for k, c in FUSED_KINDS.items()))
        bns = _block_bns(b)
        if any(not isinstance(bn, nn.BatchNorm2d) for bn in bns):
            return "a candidate's batch norm is not an nn.BatchNorm2d (folded into its conv?)"
        if any(not bn.affine for bn in bns):
            return "a candidate has a BatchNorm without affine parameters"
        if getattr(b, "stride", 1) not in (1, 2):
            return f"stride {b.stride} is not supported (1 or 2)"
    return None


# ------------------------------------------------------------------------- evaluation
def _frozen(cands: Sequence[_Cand]) -> bool:
    """Every BatchNorm of the active candidates normalises with its running statistics (eval mode)."""
    return not any(_uses_batch_stats(bn) for c in cands for bn in _block_bns(c.block))


def _eval_forward(x: torch.Tensor, weights: torch.Tensor, cands: Sequence[_Cand], params) -> torch.Tensor:
    """The mixed op's value without autograd, every BN with running statistics (evaluation, BN recalibrated or
    not): an affine BN3 and the Gumbel weight go into W3's rows, ``w_i * bn3(h2 @ W3^T) = h2 @ (w_i * scale3 *
    W3)^T + w_i * shift3``, so each IR candidate's last product adds straight into the output (no z3 written,
    no weighted-sum pass), after one pass that starts it at ``residual * x + sum_i w_i * shift3_i``.
    The same function as :class:`MixedOpFunction`'s forward; float32 rounding differs (W3 scaled first).
    """
    wl = weights.detach().tolist()
    x4 = _nhwc(x)
    n, h, w, cin = x4.shape
    c_out, stride = cands[0].block.c_out, cands[0].block.stride
    ho, wo = conv_out_size(h, stride), conv_out_size(w, stride)
    x2 = x4.view(-1, cin)
    out4 = x4.new_empty(n, ho, wo, c_out)
    out2 = out4.view(-1, c_out)
    bias = x4.new_zeros(c_out)
    residual, k, irs, skips = 0.0, 0, [], []
    for c in cands:  # the per-channel folds first: they make the output's starting value
        ps, k = params[k:k + c.nparams], k + c.nparams
        alpha = wl[c.index]
        if c.kind == "ir":
            b = c.block
            _, g1, b1, _, g2, b2, _, g3, b3 = ps
            wts = _ir_weights(c, ps)
            bn1 = fold_module_bn(b.bn1, g1, b1, x2, None, c.perm)
            bn2 = fold_module_bn(b.bn2, g2, b2, x2, None, None)
            bn3 = fold_module_bn(b.bn3, g3, b3, x2, None, None)
            bias.add_(bn3.shift, alpha=alpha)
            irs.append((b, wts, bn1, bn2, (bn3.scale * alpha).unsqueeze(1) * wts.w3))
            residual += alpha if b.residual else 0.0
        elif c.kind == "skip_conv":
            skips.append((c, ps, alpha))
        else:
            residual += alpha
    if residual:
        torch.add(bias, x2, alpha=residual, out=out2)
    else:
        out2.copy_(bias.expand_as(out2))
    m, mo, r = n * h * w, n * ho * wo, rules(x.device)
    for b, wts, bn1, bn2, w3 in irs:
        if _ir_eval_cpp_applies(b, x2, m, mo, r):
            _ir_eval_cpp(b, wts, bn1, bn2, w3, x2, x4.shape, out2)
            continue
        z1 = mm(x2, wts.w1.t())
        z2 = dwconv_bn_forward(z1.view(n, h, w, b.mid), bn1.scale, bn1.shift, wts.wt, b.stride, stats=False).out
        del z1
        mm(z2.view(-1, b.mid), w3.t(), out2, accumulate=True, a_scale=bn2.scale, a_shift=bn2.shift)
    for c, ps, alpha in skips:
        _skip_forward(c, ps, x4, out2, alpha, False)
    return out4.permute(0, 3, 1, 2)


def _ir_eval_cpp_applies(b: nn.Module, x2: torch.Tensor, m: int, mo: int, r: Rules) -> bool:
    """Whether :func:`_eval_forward` runs this IR candidate as one C++ call (:func:`_ir_eval_cpp`): a CPU tensor
    and both forward products (``x W1^T``, ``h2 W3^T``) on the small-product kernel, whose row routine the call
    runs image by image (a product torch would run keeps the launches here)."""
    return x2.device.type == "cpu" and _fwd_blas(b, x2, m, mo, r) == 0


def _ir_eval_cpp(b: nn.Module, wts: _IRWeights, bn1: _BN, bn2: _BN, w3: torch.Tensor, x2, shape, out2) -> None:
    """:func:`_eval_forward`'s three launches for one IR candidate (z1 = x W1^T, the depthwise pass, the last
    product added into ``out2``) as one C++ call (``_C.ir_eval``, csrc/ir_block.cpp): each image's rows go
    through all three while in cache, instead of two ``[M, mid]`` tensors written to memory and read back; the
    same sums in the same order, so the same bits."""
    n, h, w, cin = shape  # wts.w1 and w3 are contiguous: built by _ir_weights and by _eval_forward's product
    cpu_ext().ir_eval(x2.data_ptr(), n, h, w, cin, wts.w1.data_ptr(), b.mid, wts.wt.data_ptr(), b.kernel, b.stride,
                      w3.data_ptr(), b.c_out, bn1.scale.data_ptr(), bn1.shift.data_ptr(), bn2.scale.data_ptr(),
                      bn2.shift.data_ptr(), out2.data_ptr())


# ------------------------------------------------------------- identity skips alone
def _identity_residual(weights: torch.Tensor, cands: Sequence[_Cand]) -> float:
    """The sum of the identity skips' weights, in candidate order (as :class:`MixedOpFunction` sums it)."""
    wl = weights.detach().tolist()
    residual = 0.0
    for c in cands:
        residual += wl[c.index]
    return residual


class _IdentityScale(torch.autograd.Function):
    """A layer whose active candidates are identity skips only (a skip layer of a single-path step, a layer a
    search decided for the skip): ``r * x`` with ``r`` the sum of their weights, as :class:`MixedOpFunction`
    computes it (the same bits), without its copies where ``r`` is exactly 1: the output is a view of ``x`` and
    ``x``'s gradient is the incoming one. The weights' gradient ``<grad, x>`` (the same sum in the same order)
    is made only when they want one."""

    @staticmethod
    def forward(ctx, x, weights, index, residual):
        ctx.residual, ctx.index = residual, index
        ctx.save_for_backward(x, weights)
        # returned as-is, autograd hands out a view of x (the output is x, bit for bit, as x * 1.0)
        return x if residual == 1.0 else torch.mul(x, residual)

    @staticmethod
    def backward(ctx, grad):
        x, weights = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = grad if ctx.residual == 1.0 else torch.mul(grad, ctx.residual)
        if ctx.needs_input_grad[1]:
            dot = torch.dot(_nhwc(grad).view(-1), _nhwc(x).view(-1))
            gw = torch.zeros_like(weights)
            gw[ctx.index] = dot
        return gx, gw, None, None


def mixed_op_fused(x: torch.Tensor, weights: torch.Tensor, blocks: Sequence[nn.Module], *,
                   checked: bool = False) -> torch.Tensor:
    """Fused :func:`~fbnet_fast.ops.mixed_op_ref.mixed_op_ref`.

    Args:
        x: ``[N, C_in, H, W]`` float32, any memory format.
        weights: ``[K]`` Gumbel weights (differentiable); exact zeros are skipped.
        blocks: the ``K`` candidates (``IRBlock`` / ``SkipBlock``).
        checked: the caller has just run :func:`supports` on these arguments (it is not run again).

    Returns:
        ``[N, C_out, H', W']`` in channels_last memory format.
    """
    why = None if checked else supports(x, weights, blocks)
    if why is not None:
        raise ConfigError(f"fused mixed op: {why}")
    cands, params = _plan(weights, blocks)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weights, *params))
    if all(c.kind == "skip_id" for c in cands) and x.is_contiguous(memory_format=torch.channels_last):
        r = _identity_residual(weights, cands)  # exactly 1: x itself (a view), x * 1.0 bit for bit
        if grad:
            return _IdentityScale.apply(x, weights, [c.index for c in cands], r)
        return x.view_as(x) if r == 1.0 else torch.mul(x, r)
    with launches_unchecked():  # supports() has checked x and the blocks; the op builds every other argument
        if not grad and _frozen(cands):
            return _eval_forward(x, weights, cands, params)
        return MixedOpFunction.apply(x, weights, cands, grad, *params)
