#!/usr/bin/env bash
# The integration suite (tests marked `mpi`) under Debian's Open MPI, the MPI most clusters run, in a second
# environment beside the main one: .venv-ompi, whose mpi4py is compiled against that Open MPI (setup.sh with
# MPI_FROM_PYPI=0). The tests find Open MPI's mpirun and its settings through tests/launchers.py.
#   bash scripts/test_openmpi.sh [PYTEST ARGS...]      (default: -m mpi tests)
# Environment: VENV_OMPI (default .venv-ompi); SHARE_FROM (default .venv, the main environment; empty: share
# nothing).
#
# Only mpi4py depends on the MPI. A new .venv-ompi therefore sees the main environment's packages (torch,
# Triton, NumPy, h5py, the test tools) through a .pth file, after its own: pip finds them installed and adds
# only what differs, mpi4py compiled here and this package. That saves a second copy of torch and Triton
# (1.8 GB of the 2.3 GB a full environment takes), which matters on a CI machine with little disk. The main
# environment's mpi4py is shadowed by this one (the check below proves it), and its `mpich` wheel is never
# loaded: nothing imports it, and its `mpirun` lies in .venv/bin, not beside this interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_OMPI=${VENV_OMPI:-.venv-ompi}
SHARE_FROM=${SHARE_FROM-.venv}

if ! command -v mpicc >/dev/null || ! mpirun --version 2>/dev/null | grep -q "Open MPI"; then
  [ "$(id -u)" = "0" ] || { echo "test_openmpi.sh: install Open MPI first: sudo apt-get install openmpi-bin libopenmpi-dev" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null; }
fi
if [ ! -x "$VENV_OMPI/bin/python" ] && [ -n "$SHARE_FROM" ] && [ -x "$SHARE_FROM/bin/python" ]; then
  python3 -m venv "$VENV_OMPI"
  shared=$("$SHARE_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  own=$("$VENV_OMPI/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$shared" > "$own/fedmrn-shared-from-main-env.pth"
  echo "test_openmpi.sh: $VENV_OMPI shares the packages of $SHARE_FROM ($shared) except mpi4py"
fi
MPI_FROM_PYPI=0 VENV="$VENV_OMPI" bash setup.sh --test
"$VENV_OMPI/bin/python" - <<'PY'
from mpi4py import MPI
import mpi4py
lib = MPI.Get_library_version()
assert "Open MPI" in lib, f"{mpi4py.__file__} is not using Open MPI: {lib[:80]!r}"
from importlib import metadata
tags = [t.split()[-1] for t in metadata.distribution("mpi4py").read_text("WHEEL").splitlines() if t.startswith("Tag")]
assert not any("manylinux" in t for t in tags), f"mpi4py is PyPI's binary wheel ({tags}), not built here"
print(f"test_openmpi.sh: mpi4py {mpi4py.__version__} built here ({tags[0]}) -> {lib.splitlines()[0].rstrip(chr(0))}")
PY
[ $# -gt 0 ] || set -- -m mpi tests
exec "$VENV_OMPI/bin/python" -m pytest -q "$@"
