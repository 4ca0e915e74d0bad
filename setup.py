"""Builds jit_embedding's native parts with CMake (see CMakeLists.txt for the targets and options).

Install against the torch that is already installed, never a freshly downloaded one:

    pip install --no-build-isolation -e .     # development (what `make build` does)
    pip install --no-build-isolation .

Environment:
    JIT_BUILD_TYPE   CMake build type (default Release)
    JIT_BUILD_DIR    CMake build directory (default build/cmake for editable installs, build/cmake-wheel
                     otherwise; kept for incremental rebuilds)
    JIT_CMAKE_ARGS   extra CMake arguments, e.g. "-DJIT_BUILD_TESTS=ON -DJIT_WITH_CUDA=OFF"
    JIT_JOBS         parallel build jobs (default: the number of CPUs)
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _torch_args() -> list[str]:
    """The installed torch's folder (LibTorch) and whether torch has CUDA; empty when torch is not importable."""
    try:
        import torch
    except ImportError:
        return []
    return [
        f"-DJIT_TORCH_DIR={Path(torch.__file__).parent}",
        f"-DJIT_TORCH_CUDA={'ON' if torch.version.cuda else 'OFF'}",
    ]


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # Editable installs build straight into the source tree, so that later `cmake --build`
        # runs (make build) update the module that Python imports.
        editable = bool(getattr(self, "editable_mode", False) or self.inplace)
        outdir = ROOT / "jit_embedding" if editable else extdir
        # Wheels get a build directory of their own, so they never redirect the editable build's output.
        build_dir = Path(os.environ.get("JIT_BUILD_DIR", ROOT / "build" / ("cmake" if editable else "cmake-wheel")))
        jobs = os.environ.get("JIT_JOBS") or str(os.cpu_count() or 1)
        args = [
            f"-DCMAKE_BUILD_TYPE={os.environ.get('JIT_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={outdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            *_torch_args(),
            *shlex.split(os.environ.get("JIT_CMAKE_ARGS", "")),
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            args.append("-GNinja")
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args])
        subprocess.check_call(
            ["cmake", "--build", str(build_dir), "--target", "_C", "jit-embedding-server", "-j", jobs]
        )
        if outdir != extdir:
            extdir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(outdir / Path(self.get_ext_filename(ext.name)).name, extdir)
        # The standalone server ships inside the package, where jit_embedding.server_binary() finds it.
        bindir = extdir / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / "jit-embedding-server", bindir / "jit-embedding-server")


setup(ext_modules=[CMakeExtension("jit_embedding._C")], cmdclass={"build_ext": CMakeBuild})
