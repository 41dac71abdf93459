"""fedmrn_mpi: an MPI runner for communication-efficient federated learning (FedMRN and baselines)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("fedmrn_mpi/__init__.py").read_text()).group(1)

setup(
    name="fedmrn_mpi",
    version=version,
    description="FedMRN (masked random noise) federated learning over MPI with real 1-bit uploads",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fedmrn_mpi", "fedmrn_mpi.*"]),
    python_requires=">=3.10",
    # torch is not pinned here: a cluster user installs the CUDA build matching the site (see README);
    # the set-up script pins the CPU wheel on machines without a GPU.
    install_requires=["torch>=2.1", "numpy>=1.24", "mpi4py>=3.1", "h5py>=3.8", "pyyaml>=6"],
    extras_require={
        "mpich": ["mpich"],          # an MPI library + mpirun from PyPI, for machines without a site MPI
        # scipy: the SVHN reader tests; triton: its interpreter runs the CUDA kernels on the CPU, bit for bit;
        # hypothesis: the fuzzing tests (configs, overrides, message bytes, damaged files)
        "test": ["pytest>=7", "scipy", "triton", "hypothesis>=6"],
        "svhn": ["scipy"],           # SVHN ships MATLAB .mat files
        "report": ["matplotlib"],
    },
    entry_points={"console_scripts": ["fedmrn-mpi=fedmrn_mpi.__main__:main"]},
    package_data={"fedmrn_mpi": ["py.typed"]},
)
