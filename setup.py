"""Install openmm-cgml: learned coarse-grained molecular dynamics for OpenMM."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin_kernels"


def build_plugin():
    """Build plugin_kernels/ (the compiled OpenMM plugin) against the target environment's torch and OpenMM.

    pip runs this file in an isolated build environment without torch, so the build runs in a subprocess of the
    same interpreter with pip's build-environment path removed: it sees the environment being installed into.
    Prints one line; never raises (without torch yet, a compiler, CMake or SWIG, openmm_cgml.plugin builds on
    first use or the Python integrator is used). Returns the folder of the built module, or None.
    """
    if os.environ.get("CGML_SKIP_PLUGIN_BUILD") or not (PLUGIN_DIR / "build.py").is_file():
        return None
    env = dict(os.environ)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and "pip-build-env" not in p]
    if path != [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]:
        env.pop("PYTHONNOUSERSITE", None)  # set by pip's isolation, not by the user
    env["PYTHONPATH"] = os.pathsep.join(path)
    try:
        done = subprocess.run([sys.executable, str(PLUGIN_DIR / "build.py")], env=env, capture_output=True,
                              text=True, timeout=3600)
        lines = (done.stdout or "").strip().splitlines()
        print(lines[-1] if lines else f"openmm-cgml plugin: not built (exit status {done.returncode})")
        return PLUGIN_DIR / "build" / "python" if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError) as err:
        print(f"openmm-cgml plugin: not built ({err}); the Python integrator will be used")
        return None


class BuildPyWithPlugin(build_py):
    """build_py that also builds the compiled plugin; a regular (non-editable) install gets a copy of it in
    openmm_cgml/_native/, an editable one uses plugin_kernels/build/ in place."""

    def run(self):
        super().run()
        built = build_plugin()
        if built is None or getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "openmm_cgml" / "_native"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for item in list(built.glob("*")) + list(built.parent.glob("libOpenMMCGML*.so*")):
                if item.is_file():
                    shutil.copy2(item, target / item.name)
        except OSError as err:
            print(f"openmm-cgml plugin: not installed ({err}); the Python integrator will be used")


setup(
    name="openmm-cgml",
    version="0.1.0",
    description="Learned coarse-grained molecular dynamics (dynamics + score GNNs, DiG sampler) for OpenMM",
    packages=find_packages(include=["openmm_cgml", "openmm_cgml.*"]),
    package_data={
        "openmm_cgml": [
            "systems/data/*.xml",
            "systems/data/*.pdb",
            "systems/data/default_box/*",  # the shipped default box (openmm_cgml.systems.default_box)
            "pretrained/*/*",
            "pretrained/*.json",
        ]
    },
    python_requires=">=3.11",
    install_requires=[
        # Pinned: the CPU wheel of 2.13.0 is on disk; any range would pull the newest CUDA build (several GB).
        "torch==2.13.0",
        "openmm>=8.5",
        "pymetis",
        "mdtraj",
        "h5py",
        "numpy",
        "scipy",
        "tqdm",
        "matplotlib",
        "pyyaml",
        "safetensors",
        # Ensembles of reference / replica runs as Dask tasks (openmm_cgml.cluster); dask comes with it.
        "distributed",
        # The SWIG binary that wraps plugin_kernels/ as a real openmm.Integrator (build time / first use only).
        "swig",
    ],
    # `pip install -e ".[test]"` adds what the test suite needs on top of the package.
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["cgml=openmm_cgml.cli:main"]},
    # Builds plugin_kernels/ (never fails the install; see build_plugin).
    cmdclass={"build_py": BuildPyWithPlugin},
)
