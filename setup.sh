#!/usr/bin/env bash
# Set up fedmrn_mpi on a fresh machine: the FashionMNIST data (Debian package, where apt exists),
# a virtual environment in .venv with torch (CPU wheel), an MPI library with its own mpirun, and this package.
#   bash setup.sh          everything needed to run the main job
#   bash setup.sh --test   the same plus the test tools
# Environment: VENV (default .venv), TORCH_SPEC (default torch==2.13.0; e.g. "torch" with a CUDA index
# on a GPU machine), MPI_FROM_PYPI=0 to use a site MPI instead of the mpich wheel: mpi4py is then compiled
# against the MPI whose `mpicc` is on PATH (load the site's MPI module first; pip caches the built wheel, so
# only the first set-up on a machine pays the few minutes of compiling).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MPI_FROM_PYPI=${MPI_FROM_PYPI:-1}
extras="report"
[ "${1:-}" = "--test" ] && extras="report,test"
[ "$MPI_FROM_PYPI" = "1" ] && extras="$extras,mpich"

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; }) \
      || echo "setup.sh: could not install dataset-fashion-mnist; set data.dir to your FashionMNIST folder" >&2
  else
    echo "setup.sh: run 'sudo apt-get install dataset-fashion-mnist' for the default dataset" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$MPI_FROM_PYPI" != "1" ]; then
  command -v mpicc >/dev/null ||
    { echo "setup.sh: MPI_FROM_PYPI=0 needs the site MPI's mpicc on PATH (e.g. module load openmpi)" >&2; exit 1; }
  # an mpi4py from PyPI (a manylinux wheel, e.g. from an earlier set-up) is replaced by one built here
  "$VENV/bin/python" -c 'from importlib import metadata as m; import sys
sys.exit("manylinux" in m.distribution("mpi4py").read_text("WHEEL"))' 2>/dev/null ||
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps --no-binary=mpi4py "mpi4py>=3.1"
fi
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" -e ".[$extras]"
echo "setup.sh: ready ($("$VENV/bin/python" -c 'import torch, mpi4py; print("torch", torch.__version__, "mpi4py", mpi4py.__version__)'))"
