"""The one place that imports the compiled CPU kernels (``fbnet_fast._C``).

Everything else asks :func:`load` (raises :class:`~fbnet_fast.errors.ExtensionError`
with the build command) or :func:`available` (never raises). The module is built
by ``pip install .`` / ``pip install -e .`` through CMake (see ``setup.py``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ExtensionError

__all__ = ["load", "available", "torch_sgemm", "BUILD_HINT", "ABI_VERSION"]

# Must equal kAbiVersion in csrc/common.h; a mismatch means a stale in-place build.
ABI_VERSION = 11

BUILD_HINT = (
    "build it from the repository root with `pip install -e .` (or `pip install .`); "
    "this needs a C++17 compiler with OpenMP, cmake and ninja "
    "(`pip install cmake ninja pybind11` if they are missing)"
)

_module: ModuleType | None = None
_error: ExtensionError | None = None


def load() -> ModuleType:
    """The compiled module, imported once; raises :class:`ExtensionError` if unusable."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise _error
    # torch first: its bundled libgomp.so.1 is then the OpenMP runtime our kernels
    # bind to, so torch and the extension share one thread pool configuration.
    import torch  # noqa: F401

    try:
        mod = importlib.import_module("fbnet_fast._C")
    except ImportError as e:
        _error = ExtensionError(f"the fused CPU kernels (fbnet_fast._C) are not importable ({e}); {BUILD_HINT}")
        raise _error from None
    abi = getattr(mod, "ABI_VERSION", None)
    if abi != ABI_VERSION:
        _error = ExtensionError(
            f"fbnet_fast._C at {getattr(mod, '__file__', '?')} was built from other sources "
            f"(ABI {abi}, expected {ABI_VERSION}); rebuild it: {BUILD_HINT}"
        )
        raise _error
    mod.set_blas(torch_sgemm())
    _module = mod
    return mod


def torch_sgemm() -> int:
    """The address of the Fortran BLAS ``sgemm_`` in the torch library already loaded (MKL in the x86 wheels), or 0.

    torch.mm hands its float32 CPU products to it; the one-call C++ paths of the mixed op call it with the same
    arguments for the products torch would run (csrc/ir_block.cpp), so they give the same bits without a
    Python round trip per product. 0 (a torch without an exported sgemm_): those candidates keep the Python path.
    """
    import ctypes
    import os
    from pathlib import Path

    import torch

    lib_dir = Path(torch.__file__).parent / "lib"
    for lib in sorted(lib_dir.glob("libtorch_cpu.*")):
        try:  # RTLD_NOLOAD: the copy torch loaded, never a second one
            handle = ctypes.CDLL(str(lib), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            return ctypes.cast(handle.sgemm_, ctypes.c_void_p).value or 0
        except (OSError, AttributeError):
            continue
    return 0


def available() -> bool:
    """Whether :func:`load` succeeds (never raises)."""
    try:
        load()
    except ExtensionError:
        return False
    return True
