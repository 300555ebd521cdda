"""Data-parallel search across processes started by ``torchrun``.

``torchrun --nproc_per_node=K -m fbnet_fast search ...`` starts K copies of the CLI
with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment; :func:`init_from_env`
joins them into one process group (``gloo`` on CPU, ``nccl`` on CUDA, device
``cuda:LOCAL_RANK``). Without those variables everything here is a no-op for a
single process, so the search has one code path.

Why not the ``DistributedDataParallel`` wrapper: the search alternates which
parameters train (weights, then theta) by toggling ``requires_grad``, and theta
reaches the loss outside ``Supernet.forward`` (through the Gumbel weights and the
latency term). DDP's reducer fixes its buckets at construction and expects every
bucketed parameter to get a gradient in ``forward``; both break here. Instead one
flat buffer per step (the phase's gradients, the BN running statistics and the
step's metrics) is all-reduced in a fixed order: one collective per step, the same
result on every rank, so weights and theta stay bit-identical across ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

from . import errors
from .errors import ConfigError, FBNetError

__all__ = ["Dist", "SINGLE", "init_from_env", "shutdown", "flat_params", "unflatten_into"]

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: ``rank`` in ``[0, world)``."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, plots and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce_sum_(self, flat: torch.Tensor) -> torch.Tensor:
        """Sum ``flat`` over ranks in place (identical result on every rank)."""
        if self.active:
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        return flat

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def share(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank.

        An :class:`FBNetError` raised by ``fn`` is raised on every rank with the same
        type and message, so no rank is left waiting in a later collective.
        """
        if not self.active:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except FBNetError as e:
                box[0] = ("err", type(e).__name__, str(e))
                torch.distributed.broadcast_object_list(box, src=0)
                raise
            except BaseException as e:
                box[0] = ("err", "FBNetError", f"rank 0 failed: {type(e).__name__}: {e}")
                torch.distributed.broadcast_object_list(box, src=0)
                raise
        torch.distributed.broadcast_object_list(box, src=0)
        msg = box[0]
        if msg[0] == "err":
            if self.is_main:  # pragma: no cover - rank 0 raised above
                raise FBNetError(msg[2])
            cls = getattr(errors, msg[1], FBNetError)
            raise cls(msg[2])
        return msg[1]


SINGLE = Dist()


def init_from_env(device: str) -> tuple[Dist, str]:
    """Join the ``torchrun`` process group if the environment names one.

    Returns the process's :class:`Dist` and the device it should use (``cuda`` becomes
    ``cuda:LOCAL_RANK`` so each rank drives its own GPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE, device
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            device = f"cuda:{local}"
        torch.cuda.set_device(torch.device(device))
        backend = "nccl"
    else:
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world=world), device


def shutdown(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def flat_params(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one contiguous 1-D buffer (logical element order)."""
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy ``flat`` back into ``tensors`` (inverse of :func:`flat_params`)."""
    o = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[o:o + n].view(t.shape))
        o += n
