"""Builds modelreg's extension module with the project's CMake build.

`pip install --no-build-isolation ./python` lands here. The extension
`modelreg._modelreg` is the C++ library plus pybind11 bindings; it is built by
CMake in the repository's build tree, so after `make` only the module is
linked:

* MODELREG_BUILD_DIR: the CMake build tree to use (default: <repo>/build,
  configured here with the Makefile's defaults when it does not exist yet).
* MODELREG_BUILD_JOBS: parallel build jobs (default: number of CPUs).

The interpreter running pip must be the one the module is built for
(Debian's /usr/bin/python3, or a virtual environment made from it).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if not (ROOT / "CMakeLists.txt").exists():
            raise RuntimeError(f"modelreg: the C++ sources are not at {ROOT}: install from the "
                               "repository (pip install --no-build-isolation ./python)")
        build_dir = Path(os.environ.get("MODELREG_BUILD_DIR") or ROOT / "build")
        jobs = os.environ.get("MODELREG_BUILD_JOBS") or str(os.cpu_count() or 2)
        if not (build_dir / "CMakeCache.txt").exists():
            subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir),
                                   "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                                   "-DMODELREG_BUILD_PYTHON=ON",
                                   f"-DPython3_EXECUTABLE={sys.executable}"])
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "_modelreg",
                               "-j", jobs])
        built = sorted((build_dir / "python" / "modelreg").glob("_modelreg*.so"))
        if not built:
            raise RuntimeError(f"modelreg: CMake built no _modelreg module in {build_dir}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], dest)
        # The installed module carries no debug information (a quarter of
        # its size); the build tree keeps it for debugging.
        if shutil.which("strip"):
            subprocess.check_call(["strip", "--strip-debug", str(dest)])


def project_version():
    """The version, written once: project(modelreg VERSION x.y.z) in CMake."""
    text = (ROOT / "CMakeLists.txt").read_text()
    match = re.search(r"project\(modelreg VERSION ([0-9.]+)", text)
    if not match:
        raise RuntimeError("modelreg: no project(modelreg VERSION ...) in CMakeLists.txt")
    return match.group(1)


setup(version=project_version(), ext_modules=[Extension("modelreg._modelreg", sources=[])],
      cmdclass={"build_ext": CMakeBuild})
