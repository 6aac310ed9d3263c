"""Build the openmm-cgml OpenMM plugin against the torch and OpenMM of the running interpreter.

    python plugin_kernels/build.py            # builds into plugin_kernels/build/ (a few minutes the first time)

Needs CMake >= 3.18, a C++17 compiler and SWIG (``pip install swig``). The result is ``build/python/``:
``openmm_cgml_native.py``, ``_openmm_cgml_native*.so`` and ``libOpenMMCGML.so``, plus ``build/stamp.json``,
which records the torch, OpenMM and Python versions and a hash of the sources; ``openmm_cgml.plugin`` rebuilds
when any of them changes, so the plugin never runs against a torch whose C++ ABI it was not compiled for.

This file uses only the standard library at import time (setup.py runs it in a subprocess of the target
interpreter, outside pip's isolated build environment, which has no torch).
"""
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
BUILD_DIR = SOURCE_DIR / "build"
MODULE_NAME = "openmm_cgml_native"


class BuildError(RuntimeError):
    """The plugin could not be built; the message is one line."""


def _sources():
    patterns = ("CMakeLists.txt", "include/*.h", "src/*.h", "src/*.cpp", "python/*.i")
    return sorted(p for pattern in patterns for p in SOURCE_DIR.glob(pattern))


def stamp() -> dict:
    """What a build depends on: versions of torch, OpenMM and Python, and a hash of the plugin sources."""
    import openmm.version
    import torch

    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.relative_to(SOURCE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return {
        "torch": torch.__version__,
        "openmm": openmm.version.full_version,
        "python": sys.version.split()[0],
        "sources": digest.hexdigest(),
    }


def module_dir(build_dir: Path = BUILD_DIR) -> Path:
    """Folder holding the built Python module and libraries."""
    return Path(build_dir) / "python"


def is_current(build_dir: Path = BUILD_DIR) -> bool:
    """True when ``build_dir`` holds a finished build for the current torch, OpenMM, Python and sources."""
    path = Path(build_dir) / "stamp.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return recorded == stamp() and any(module_dir(build_dir).glob(f"_{MODULE_NAME}*.so"))


def _tool(name: str):
    """A program on PATH or next to the interpreter (pip puts the swig and cmake wheels' launchers there)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    return found


def toolchain() -> dict:
    """Paths of cmake, swig and a C++ compiler; raises BuildError naming the first one missing."""
    tools = {"cmake": _tool("cmake"), "swig": _tool("swig"),
             "cxx": os.environ.get("CXX") or _tool("c++") or _tool("g++") or _tool("clang++")}
    missing = [name for name, path in tools.items() if not path]
    if missing:
        hint = {"cmake": "install CMake >= 3.18", "swig": "pip install swig", "cxx": "install a C++17 compiler"}
        raise BuildError(f"cannot build the compiled plugin: no {missing[0]} found ({hint[missing[0]]})")
    return tools


def build(build_dir: Path = BUILD_DIR, jobs: int = 0, force: bool = False) -> Path:
    """Configure and build the plugin in ``build_dir``; returns :func:`module_dir`. Raises BuildError (one line).

    ``jobs``: parallel compile jobs (0: ``CMAKE_BUILD_PARALLEL_LEVEL`` or up to 4). The compiler output goes to
    ``build_dir/build.log``. Without ``force``, a build that another process finished meanwhile is reused.
    """
    import openmm.version
    import torch.utils

    tools = toolchain()
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    jobs = jobs or int(os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", min(4, os.cpu_count() or 1)))
    configure = [
        tools["cmake"], "-S", str(SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CXX_COMPILER={tools['cxx']}", f"-DSWIG_EXECUTABLE={tools['swig']}",
        f"-DOPENMM_DIR={Path(openmm.version.openmm_library_path).parent}",
        f"-DTorch_DIR={Path(torch.utils.cmake_prefix_path) / 'Torch'}",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]
    compile_ = [tools["cmake"], "--build", str(build_dir), "--parallel", str(jobs)]
    log_path = build_dir / "build.log"
    # One build at a time per folder (parallel test workers, or an install next to a running script).
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and is_current(build_dir):
            return module_dir(build_dir)
        _run(configure, compile_, log_path)
        fd, tmp = tempfile.mkstemp(dir=build_dir, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(stamp(), f, indent=1)
        os.replace(tmp, build_dir / "stamp.json")
    return module_dir(build_dir)


def _run(configure, compile_, log_path: Path):
    with open(log_path, "w") as out:
        for command in (configure, compile_):
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise BuildError(f"building the compiled plugin failed (see {log_path})")


def main(argv=None) -> int:
    """Build unless current; prints one line; exit status 0 on success, 1 on failure."""
    force = "--force" in (argv if argv is not None else sys.argv[1:])
    try:
        if not force and is_current():
            print(f"openmm-cgml plugin: up to date in {module_dir()}")
            return 0
        start = time.perf_counter()
        where = build(force=force)
    except BuildError as err:
        print(f"openmm-cgml plugin: {err}; the Python integrator will be used")
        return 1
    except ImportError as err:
        print(f"openmm-cgml plugin: not built ({err}); the Python integrator will be used")
        return 1
    print(f"openmm-cgml plugin: built in {time.perf_counter() - start:.0f} s into {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
