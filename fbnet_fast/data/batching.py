"""What every source shares: normalisation, the one crop + flip augmentation, in-memory data sets,
splits, loaders and argument checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return int(value)


# ---------------------------------------------------------------------------------------
# Normalisation, augmentation, tensor data set
# ---------------------------------------------------------------------------------------

def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 images ``[N, C, H, W]``.

    The std is floored at 1/255 so a constant channel does not divide by zero.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"images must be a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}")
    c = images.shape[1]
    x = images.transpose(0, 1).reshape(c, -1).to(torch.float64) / 255.0
    mean = x.mean(dim=1)
    std = x.std(dim=1, unbiased=False).clamp_min(1.0 / 255.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None, *, padding: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """The training augmentation, for a batch ``[B, C, H, W]`` of any dtype: zero-pad by ``padding``,
    crop a random ``H x W`` window per image, and (``flip``) mirror each image with probability 0.5.

    Draws, from ``generator``: ``B`` row offsets, ``B`` column offsets, then ``B`` flip coins (only
    with ``flip``). The search and the trainer augment whole uint8 batches with it;
    :class:`RandomCropFlip` is the same for one float image inside a ``DataLoader``.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, c, h, w + 2 * padding)
    cols = dx[:, None] + torch.arange(w)[None]
    if flip:
        coin = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(coin[:, None], cols.flip(1), cols)
    cols = cols.view(b, 1, 1, w).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


class RandomCropFlip:
    """:func:`random_crop_flip` on one image ``[C, H, W]`` (a ``DataLoader`` transform).

    Zero-pads by ``padding`` pixels, crops a random ``H x W`` window, and flips
    horizontally with probability 0.5. Output ``[C, H, W]``, same dtype.

    Randomness: drawn from ``generator`` when given (the same generator state and the
    same call order give the same crops; save ``generator.get_state()`` to resume),
    otherwise from torch's global RNG. Inside a DataLoader worker a copied generator would
    repeat the same draws in every worker, so there a private generator is seeded from the
    worker's seed, which the loader derives from its own seeded generator
    (see :func:`make_loader`): still reproducible, different per worker.
    """

    def __init__(self, *, padding: int = 4, flip: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.padding = check_int("padding", padding, 0)
        self.flip = bool(flip)
        self.generator = generator
        self._worker_seed: int | None = None
        self._worker_generator: torch.Generator | None = None

    def _rng(self) -> torch.Generator | None:
        info = torch.utils.data.get_worker_info()
        if info is None or self.generator is None:
            return self.generator
        if self._worker_seed != info.seed:
            self._worker_seed = info.seed
            self._worker_generator = torch.Generator().manual_seed(info.seed)
        return self._worker_generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(image[None], self._rng(), padding=self.padding, flip=self.flip)[0].contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class TensorImageDataset(Dataset):
    """In-memory images with labels; item ``i`` is ``(image float [C, H, W], label int)``.

    ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``. An item is scaled to
    [0, 1], passed through ``transform`` (if any, on the float image) and normalised by
    per-channel ``mean``/``std`` (sequences of C floats in [0, 1] units; by default the
    statistics of ``images`` themselves). Padding in the transform is therefore black.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"images must be a uint8 tensor [N, C, H, W], got {got}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise DataError(f"labels must be a tensor [N] with N = {images.shape[0]} (images), got {got}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise DataError(f"labels must be an integer tensor, got {labels.dtype}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform
        if mean is None or std is None:
            m, s = channel_stats(images) if len(images) else ((0.0,) * images.shape[1], (1.0,) * images.shape[1])
            mean = m if mean is None else mean
            std = s if std is None else std
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise DataError(f"mean and std must have {c} values (one per channel), got {len(mean)} and {len(std)}")
        if any(float(s) <= 0 for s in std):
            raise DataError(f"std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(c, 1, 1)
        self._inv_std = 1.0 / torch.tensor(self.std, dtype=torch.float32).view(c, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return (x - self._mean) * self._inv_std, int(self.labels[index])



# ---------------------------------------------------------------------------------------
# Splits, loaders, the CLI entry point
# ---------------------------------------------------------------------------------------

def split_indices(
    n: int, fraction: float, *, seed: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint split of ``range(n)``: ``(idx_a, idx_b)``, int64, each sorted.

    ``idx_a`` holds ``round(n * fraction)`` indices (at least one, leaving at least one
    for ``idx_b``), chosen by a generator seeded with ``seed``. With ``labels`` ``[n]`` the
    split is stratified: each class is split by ``fraction`` on its own (a class with one
    image goes to ``idx_a``).
    """
    n = check_int("n", n, 0)
    if not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"split fraction must be in (0, 1), got {fraction!r}")
    if n < 2:
        raise DataError(f"cannot split a data set of {n} image(s) into two non-empty parts")
    g = torch.Generator().manual_seed(check_int("seed", seed, 0))
    if labels is None:
        groups = [torch.arange(n)]
    else:
        if labels.shape != (n,):
            raise DataError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
        groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    part_a, part_b = [], []
    for grp in groups:
        perm = grp[torch.randperm(len(grp), generator=g)]
        k = round(len(grp) * float(fraction))
        k = min(max(k, 1), len(grp) - 1) if len(grp) > 1 else len(grp)
        part_a.append(perm[:k])
        part_b.append(perm[k:])
    a, b = torch.cat(part_a), torch.cat(part_b)
    if len(b) == 0:  # only single-image classes: move one over so both parts are usable
        a, b = a[:-1], a[-1:]
    return a.sort().values, b.sort().values


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader whose order is reproducible: shuffling and worker seeds come from a
    ``torch.Generator`` seeded with ``seed``.

    Iterating it again continues that generator, so epoch ``k``'s order depends on
    ``(seed, k)``: two runs agree epoch by epoch. Batches are ``(images float [B, C, H, W],
    labels int64 [B])``.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    num_workers = check_int("num_workers", num_workers, 0)
    g = torch.Generator().manual_seed(check_int("seed", seed, 0))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=g,
        persistent_workers=False,
    )


@dataclass
class DataBundle:
    """What the search and the trainer need from a data set.

    ``train`` yields augmented items, ``val`` plain ones; both are
    ``(image float [C, image_size, image_size], label)``, normalised by ``mean``/``std``
    (per-channel statistics of the training images).
    """

    train: TensorImageDataset
    val: TensorImageDataset
    num_classes: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


