"""Data sets the search trains on: a generated default, CIFAR-10 and image folders.

Everything here produces uint8 image tensors ``[N, 3, H, W]`` and int64 labels ``[N]``
held in memory; :class:`TensorImageDataset` turns one image into a normalised float
tensor ``[3, H, W]`` on the fly. The CLI only calls :func:`build_datasets`.

Modules: :mod:`.generated` (the default), :mod:`.folder`, :mod:`.cifar`, and
:mod:`.batching` (normalisation, the one augmentation, data sets, splits, loaders).

The generated default (``"synthetic"``, :mod:`.generated`) needs no download: procedural
shapes, ten classes, whose difficulty and generation speed its docstring gives
(``python -m fbnet_fast.data --calibrate`` re-measures them).

Errors
------
Anything a user's data can get wrong raises :class:`~fbnet_fast.errors.DataError`
naming the path and what was expected; a bad option value (an unknown spec, a
negative count) raises :class:`~fbnet_fast.errors.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .batching import (DataBundle, RandomCropFlip, TensorImageDataset, channel_stats, check_int, make_loader,
                       random_crop_flip, split_indices)
from .cifar import CIFAR10_CLASSES, CIFAR10Arrays, load_cifar10
from .folder import FOLDER_TRAIN_FRACTION, IMAGE_EXTENSIONS, ImageFolderDataset
from .generated import SHAPE_FAMILIES, SYNTHETIC_NUM_TRAIN, SYNTHETIC_NUM_VAL, make_synthetic

__all__ = [
    "SYNTHETIC_NUM_TRAIN",
    "SYNTHETIC_NUM_VAL",
    "FOLDER_TRAIN_FRACTION",
    "IMAGE_EXTENSIONS",
    "SHAPE_FAMILIES",
    "CIFAR10_CLASSES",
    "make_synthetic",
    "channel_stats",
    "RandomCropFlip",
    "random_crop_flip",
    "TensorImageDataset",
    "ImageFolderDataset",
    "CIFAR10Arrays",
    "load_cifar10",
    "DataBundle",
    "build_datasets",
    "split_indices",
    "make_loader",
]

def _subsample(
    images: torch.Tensor, labels: torch.Tensor, count: int | None, seed: int, what: str, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if count is None:
        return images, labels
    count = check_int(f"num_{what}", count, 1)
    if count > len(labels):
        raise DataError(f"asked for {count} {what} images but {source} has only {len(labels)}")
    if count == len(labels):
        return images, labels
    idx, _ = split_indices(len(labels), count / len(labels), seed=seed, labels=labels)
    # Stratified rounding can miss the exact count by a few; trim or top up deterministically.
    if len(idx) != count:
        g = torch.Generator().manual_seed(seed)
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[idx] = False
        others = torch.nonzero(rest).flatten()
        if len(idx) > count:
            idx = idx[torch.randperm(len(idx), generator=g)[:count]].sort().values
        else:
            extra = others[torch.randperm(len(others), generator=g)[: count - len(idx)]]
            idx = torch.cat([idx, extra]).sort().values
    return images[idx], labels[idx]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _bundle(
    train_images: torch.Tensor, train_labels: torch.Tensor,
    val_images: torch.Tensor, val_labels: torch.Tensor,
    class_names: Sequence[str], image_size: int, seed: int, description: str,
) -> DataBundle:
    mean, std = channel_stats(train_images)
    aug = RandomCropFlip(padding=max(1, round(image_size / 8)),
                         generator=torch.Generator().manual_seed(seed))
    return DataBundle(
        train=TensorImageDataset(train_images, train_labels, transform=aug, mean=mean, std=std),
        val=TensorImageDataset(val_images, val_labels, mean=mean, std=std),
        num_classes=len(class_names),
        image_size=image_size,
        class_names=tuple(class_names),
        mean=mean,
        std=std,
        description=description,
    )


def build_datasets(
    spec: str,
    *,
    image_size: int = 32,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    skip_bad_files: bool = False,
) -> DataBundle:
    """Build train (augmented) and val data sets from a spec string.

    Specs:
      * ``"synthetic"``: :func:`make_synthetic` shapes; ``num_train`` defaults to
        :data:`SYNTHETIC_NUM_TRAIN` (6000), ``num_val`` to :data:`SYNTHETIC_NUM_VAL` (2000);
        the val images come from a separate seeded stream, so they never overlap train.
      * ``"cifar10:PATH"``: :func:`load_cifar10`; train is the 50,000 training images, val
        the 10,000 test images, resized if ``image_size != 32``.
      * ``"folder:PATH"``: :class:`ImageFolderDataset`. If PATH has ``train/`` and ``val/``
        subfolders they are used (same class folders required); otherwise a stratified
        split seeded by ``seed`` puts :data:`FOLDER_TRAIN_FRACTION` (80 %) in train.

    For cifar10 and folder, ``num_train``/``num_val`` take a seeded stratified subset.
    ``skip_bad_files`` is passed to :class:`ImageFolderDataset` (folder specs only).
    Raises ConfigError for a malformed spec, DataError for unusable data.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data spec must be 'synthetic', 'cifar10:PATH' or 'folder:PATH', got {spec!r}")
    image_size = check_int("image_size", image_size, 8, 1024)
    seed = check_int("seed", seed, 0)
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "synthetic":
        if sep:
            raise ConfigError(f"data spec 'synthetic' takes no argument, got {spec!r}")
        n_tr = SYNTHETIC_NUM_TRAIN if num_train is None else check_int("num_train", num_train, 1)
        n_va = SYNTHETIC_NUM_VAL if num_val is None else check_int("num_val", num_val, 1)
        tr_x, tr_y = make_synthetic(n_tr, seed=seed, image_size=image_size, split="train")
        va_x, va_y = make_synthetic(n_va, seed=seed, image_size=image_size, split="val")
        desc = (f"synthetic shapes (seed {seed}): {n_tr} train / {n_va} val, "
                f"10 classes, {image_size}x{image_size}")
        return _bundle(tr_x, tr_y, va_x, va_y, SHAPE_FAMILIES, image_size, seed, desc)
    if kind not in ("cifar10", "folder"):
        raise ConfigError(f"unknown data spec {spec!r}; expected 'synthetic', 'cifar10:PATH' or 'folder:PATH'")
    if not arg:
        raise ConfigError(f"data spec {spec!r} needs a path, e.g. '{kind}:/data/{kind}'")
    path = Path(arg).expanduser()
    if kind == "cifar10":
        c = load_cifar10(path)
        tr_x, tr_y = _subsample(c.train_images, c.train_labels, num_train, seed, "train", f"CIFAR-10 at {path}")
        va_x, va_y = _subsample(c.test_images, c.test_labels, num_val, seed + 1, "val", f"CIFAR-10 at {path}")
        tr_x, va_x = _resize(tr_x, image_size), _resize(va_x, image_size)
        names = c.class_names
        desc = f"CIFAR-10 at {path}: {len(tr_y)} train / {len(va_y)} val (test batch), {image_size}x{image_size}"
    else:
        train_dir, val_dir = path / "train", path / "val"
        if train_dir.is_dir() != val_dir.is_dir():
            have, missing = (train_dir, val_dir) if train_dir.is_dir() else (val_dir, train_dir)
            raise DataError(f"{path} has {have.name}/ but no {missing.name}/; provide both or neither "
                            "(then a seeded 80/20 split is made)")
        if train_dir.is_dir():
            tr = ImageFolderDataset(train_dir, image_size, skip_bad_files=skip_bad_files)
            va = ImageFolderDataset(val_dir, image_size, skip_bad_files=skip_bad_files)
            if tr.classes != va.classes:
                only_tr = sorted(set(tr.classes) - set(va.classes))
                only_va = sorted(set(va.classes) - set(tr.classes))
                raise DataError(f"class folders differ between {train_dir} and {val_dir}: "
                                f"only in train {only_tr}, only in val {only_va}")
            tr_x, tr_y, va_x, va_y = tr.images, tr.labels, va.images, va.labels
            how = "train/ and val/ folders"
        else:
            full = ImageFolderDataset(path, image_size, skip_bad_files=skip_bad_files)
            a, b = split_indices(len(full), FOLDER_TRAIN_FRACTION, seed=seed, labels=full.labels)
            tr_x, tr_y, va_x, va_y = full.images[a], full.labels[a], full.images[b], full.labels[b]
            tr = full
            how = f"seeded {round(FOLDER_TRAIN_FRACTION * 100)}/{round(100 - FOLDER_TRAIN_FRACTION * 100)} split"
        tr_x, tr_y = _subsample(tr_x, tr_y, num_train, seed, "train", f"folder {path}")
        va_x, va_y = _subsample(va_x, va_y, num_val, seed + 1, "val", f"folder {path}")
        names = tuple(tr.classes)
        desc = (f"image folder {path} ({how}): {len(tr_y)} train / {len(va_y)} val, "
                f"{len(names)} classes, {image_size}x{image_size}")
    return _bundle(tr_x, tr_y, va_x, va_y, names, image_size, seed, desc)


