"""Class-per-subfolder image trees (``"folder:PATH"``): listing, decoding, resizing, train/val splits."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DataError
from .batching import TensorImageDataset, check_int

# Share of a class-per-subfolder tree used for training when it has no train/ and val/.
FOLDER_TRAIN_FRACTION = 0.8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# ---------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------

def _is_hidden(name: str) -> bool:
    # ".DS_Store", ".ipynb_checkpoints", and the "__MACOSX" folder macOS zips add, which
    # would otherwise become a class full of unreadable "._x.png" resource forks.
    return name.startswith(".") or name.startswith("__")


def _list_dir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not _is_hidden(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc.strerror or exc}") from exc


def _image_files(folder: Path, _seen: set[str] | None = None) -> tuple[list[Path], int]:
    """Image files under *folder* (recursive, sorted) and the count of other files."""
    # Symlinked folders are followed, once each, so a link cycle cannot recurse forever.
    seen = set() if _seen is None else _seen
    real = os.path.realpath(folder)
    if real in seen:
        return [], 0
    seen.add(real)
    found: list[Path] = []
    other = 0
    for entry in _list_dir(folder):
        if entry.is_dir():
            sub, sub_other = _image_files(Path(entry.path), seen)
            found.extend(sub)
            other += sub_other
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            found.append(Path(entry.path))
        else:
            other += 1
    return found, other


def _read_image(path: Path, size: int) -> np.ndarray:
    """Decode *path* to uint8 ``[size, size, 3]``: shorter side resized, centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly, so a large photo read for a
        # 32 px target never materialises at full size; the resize below still antialiases.
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        if w < 1 or h < 1:
            raise OSError("image has zero size")
        r = size / min(w, h)
        nw, nh = max(size, round(w * r)), max(size, round(h * r))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8)


class ImageFolderDataset(TensorImageDataset):
    """Images in a class-per-subfolder tree, decoded once into memory.

    Memory is ``N x 3 x image_size^2`` bytes (100,000 images at 32 px: 300 MB); meant for
    the small proxy sets a search runs on, not for ImageNet-sized folders.

    Layout ``root/<class>/<...>/<image>``; classes are the non-hidden subfolders of
    ``root`` sorted by name (``classes``, ``class_to_idx``). Files with an extension in
    :data:`IMAGE_EXTENSIONS` (any case) are read recursively with Pillow, converted to RGB,
    resized so the shorter side is ``image_size`` and centre-cropped: ``images`` uint8
    ``[N, 3, image_size, image_size]``, ``labels`` int64 ``[N]``, ``paths`` ``[N]``. Files
    at the top level and files with other extensions are ignored.

    The folder is only read; nothing (no cache, no index) is written inside it.

    An image file Pillow cannot decode is an error naming the file, unless
    ``skip_bad_files=True``: then it is left out, listed in ``skipped`` and reported in one
    warning. Raises DataError for a missing root, a root that is not a directory, no class
    subfolders, a single class, a class folder with no (readable) images, or a bad file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 32,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        skip_bad_files: bool = False,
    ) -> None:
        image_size = check_int("image_size", image_size, 1, 4096)
        self.root = Path(root)
        classes = _class_folders(self.root)
        self.classes = [c.name for c in classes]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.skipped: list[Path] = []
        self.paths: list[Path] = []
        arrays: list[np.ndarray] = []
        labels: list[int] = []
        for idx, cdir in enumerate(classes):
            files, other = _image_files(cdir)
            if not files:
                extra = f" ({other} file(s) with other extensions)" if other else ""
                raise DataError(
                    f"class folder {cdir} has no image files{extra}; expected files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)}"
                )
            good = 0
            for path in files:
                try:
                    arr = _read_image(path, image_size)
                except Exception as exc:  # noqa: BLE001
                    # Pillow reports corrupt data through many exception types (OSError,
                    # SyntaxError, DecompressionBombError, struct.error ...); all mean the
                    # same thing to the user: this file is not a usable image.
                    if not skip_bad_files:
                        raise DataError(
                            f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
                            "remove or replace the file"
                        ) from exc
                    self.skipped.append(path)
                    continue
                arrays.append(arr)
                labels.append(idx)
                self.paths.append(path)
                good += 1
            if good == 0:
                raise DataError(
                    f"class folder {cdir} has no readable images ({len(files)} file(s) "
                    "could not be decoded)"
                )
        if self.skipped:
            shown = ", ".join(str(p) for p in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable image file(s) under {self.root}: {shown}{more}",
                stacklevel=2,
            )
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        super().__init__(images, torch.tensor(labels, dtype=torch.int64),
                         transform=transform, mean=mean, std=std)


def _class_folders(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; expected a folder with one subfolder per class")
    classes = [Path(e.path) for e in _list_dir(root) if e.is_dir()]
    if not classes:
        raise DataError(
            f"data folder {root} has no class subfolders; expected {root}/<class name>/<image files>"
        )
    if len(classes) == 1:
        raise DataError(
            f"data folder {root} has only one class subfolder ({classes[0].name}); "
            "classification needs at least 2"
        )
    return classes


