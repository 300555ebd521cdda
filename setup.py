"""Build the fused CPU kernels (``fbnet_fast._C``) with CMake + ninja.

Everything but the extension is declared in ``pyproject.toml``. The extension is
plain pybind11 + OpenMP and needs no torch headers (tensors cross as raw pointers),
so the build environment stays small: setuptools, pybind11, cmake, ninja.

Environment knobs (all optional):
  FBNET_BUILD_TYPE   CMake build type, default ``Release``
  FBNET_NATIVE       ``1`` (default) tunes for the build machine: on x86-64 ``-mtune=native``
                     only (the kernels are compiled for x86-64, AVX2 and AVX-512 and the
                     widest the CPU runs is picked at import, so the binary stays portable);
                     elsewhere ``-march=native``. ``0``: no tuning flags (a wheel).
  CMAKE_ARGS         extra arguments passed to the CMake configure step
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import pybind11

        # get_ext_fullpath honours --inplace / editable installs, so the .so lands
        # inside fbnet_fast/ in the source tree for `pip install -e .`.
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("FBNET_BUILD_TYPE", "Release")
        args = [
            "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFBNET_NATIVE={'OFF' if os.environ.get('FBNET_NATIVE', '1') == '0' else 'ON'}",
        ]
        try:  # the `ninja` wheel puts its binary beside the module, maybe not on PATH
            import ninja

            args.append(f"-DCMAKE_MAKE_PROGRAM={Path(ninja.BIN_DIR) / 'ninja'}")
        except ImportError:
            pass
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        subprocess.run(["cmake", ext.source_dir, *args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg], cwd=build_temp, check=True)


setup(
    ext_modules=[CMakeExtension("fbnet_fast._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
)
