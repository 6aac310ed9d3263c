"""Install openmm-cgml: learned coarse-grained molecular dynamics for OpenMM."""
from setuptools import find_packages, setup

setup(
    name="openmm-cgml",
    version="0.1.0",
    description="Learned coarse-grained molecular dynamics (dynamics + score GNNs, DiG sampler) for OpenMM",
    packages=find_packages(include=["openmm_cgml", "openmm_cgml.*"]),
    package_data={
        "openmm_cgml": [
            "systems/data/*.xml",
            "systems/data/*.pdb",
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
        "torch-geometric",
        "mdtraj",
        "h5py",
        "numpy",
        "scipy",
        "tqdm",
        "matplotlib",
        "pyyaml",
        "safetensors",
        "packmol",
        "pytest",
    ],
    entry_points={"console_scripts": ["cgml=openmm_cgml.cli:main"]},
)
