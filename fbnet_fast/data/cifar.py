"""CIFAR-10 in its python-batches form (``"cifar10:PATH"``), read without unpickling code."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

# ---------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CIFAR10Arrays:
    """CIFAR-10 in memory: images uint8 ``[N, 3, 32, 32]``, labels int64 ``[N]``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]


class _ArrayUnpickler(pickle.Unpickler):
    # The batches are pickles; unpickling runs any callable the file names. Only the few
    # numpy reconstructors a pickled ndarray needs are allowed, so a tampered download
    # cannot execute code.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path} is missing")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"CIFAR-10 batch {path} is corrupt or not a python pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 batch {path} holds a {type(obj).__name__}, expected a dict")
    # Python-2 pickles read with latin1 have str keys; python-3 re-pickles keep bytes keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    if "fine_labels" in d and "labels" not in d:
        raise DataError(f"{path} is a CIFAR-100 batch; only CIFAR-10 is supported")
    if "data" not in d or "labels" not in d:
        raise DataError(f"CIFAR-10 batch {path} lacks the 'data' or 'labels' entry (has {sorted(map(str, d))})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR-10 batch {path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"CIFAR-10 batch {path}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {path}: labels must be in [0, 9], got [{labels.min()}, {labels.max()}]")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(path: str | os.PathLike) -> CIFAR10Arrays:
    """Read the CIFAR-10 *python* batches into uint8 tensors.

    ``path`` is the ``cifar-10-batches-py`` folder of ``cifar-10-python.tar.gz`` or its
    parent. Reads ``data_batch_1`` .. ``data_batch_5`` (train, ``[50000, 3, 32, 32]``),
    ``test_batch`` (``[10000, 3, 32, 32]``) and ``batches.meta`` (class names; the official
    names are used if it is absent). Only numpy arrays are unpickled (no code runs).
    Raises DataError naming the folder or batch that is missing or corrupt.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"CIFAR-10 folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; expected the cifar-10-batches-py folder or its parent")
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    if not (folder / "data_batch_1").exists() and not (folder / "test_batch").exists():
        hint = ""
        if (folder / "data_batch_1.bin").exists() or (root / "cifar-10-batches-bin").is_dir():
            hint = " (found the binary version; the python version cifar-10-python.tar.gz is needed)"
        raise DataError(
            f"{root} holds no CIFAR-10 python batches{hint}; expected data_batch_1..5 and "
            "test_batch, i.e. the cifar-10-batches-py folder or its parent"
        )
    train = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = _cifar_batch(folder / "test_batch")
    names = CIFAR10_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.exists():
        meta = _unpickle(meta_path)
        raw = meta.get("label_names")
        if not isinstance(raw, (list, tuple)) or len(raw) != 10:
            raise DataError(f"{meta_path}: 'label_names' must be a list of 10 names, got {raw!r:.80}")
        names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw)
    return CIFAR10Arrays(
        train_images=torch.cat([b[0] for b in train]),
        train_labels=torch.cat([b[1] for b in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=names,
    )


