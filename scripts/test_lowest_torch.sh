#!/usr/bin/env bash
# The unit tests under the lowest torch this package supports (docs/torch_versions.md), in a second
# environment, so that setup.py's lower bound is a tested fact and not a guess.
#   bash scripts/test_lowest_torch.sh [PYTEST ARGS...]     (default args: -q -m "not mpi" tests)
# Environment: VENV (default .venv-torch-lowest), PYTHON (default python3; the interpreter the venv is made
# from), TORCH_LOWEST (default: TORCH_LOWEST in fedmrn_mpi/compat.py, e.g. 2.11.0).
#
# The torch comes from PyPI: its Linux x86-64 wheels are CUDA builds (torch 2.11: CUDA 13, Triton 3.6), the
# very build a GPU image ships, and they import and run on a machine without a GPU (about 4.5 GB with the
# nvidia-* libraries). The CPU-only wheels of download.pytorch.org would be smaller but are not reachable
# from every CI machine. A re-run reuses the environment: nothing is installed when its torch is already the
# right version and neither setup.py nor fedmrn_mpi/compat.py has changed since the last install.
#
# Disk: the environment takes 5.0 GB. pip keeps every wheel it downloads until its command ends (and may keep
# another copy in its cache), so one `pip install torch==2.11.0 ...` peaked at 6.7 GB here. Installing the
# large wheels (torch, triton, the CUDA libraries) one command each, without pip's cache, peaked at 5.1 GB:
# the environment plus the largest single wheel. MIN_FREE_GB (default 7) is checked first, so that a full
# disk is a clear message and not an OSError in the middle of pip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-torch-lowest}
PYTHON=${PYTHON:-python3}
# one source for the lowest version: compat.py (setup.py's bound is checked against it by a unit test)
TORCH_LOWEST=${TORCH_LOWEST:-$(sed -n 's/^TORCH_LOWEST *= *"\([0-9.]*\)".*/\1/p' fedmrn_mpi/compat.py)}
[ -n "$TORCH_LOWEST" ] || { echo "test_lowest_torch.sh: no TORCH_LOWEST in fedmrn_mpi/compat.py" >&2; exit 2; }

py="$VENV/bin/python"
# what the last install was made from: the torch pin, setup.py (dependencies, extras) and compat.py (pins)
stamp_file="$VENV/.fedmrn-install-stamp"
stamp="torch==$TORCH_LOWEST $(cat setup.py fedmrn_mpi/compat.py | sha256sum | cut -d' ' -f1)"

installed_torch() {
  # the public version only: PyPI's wheel says 2.11.0, a local build may say 2.11.0+cu130
  "$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true
}

if [ -x "$py" ] && [ "$(installed_torch)" = "$TORCH_LOWEST" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
  echo "test_lowest_torch.sh: reusing $VENV (torch $TORCH_LOWEST)"
else
  echo "test_lowest_torch.sh: installing torch==$TORCH_LOWEST and this package into $VENV"
  [ -x "$py" ] || "$PYTHON" -m venv "$VENV"
  free_gb=$(df -P -BG "$VENV" | awk 'NR==2 {sub("G", "", $4); print $4}')
  if [ "$(installed_torch)" != "$TORCH_LOWEST" ] && [ "$free_gb" -lt "${MIN_FREE_GB:-7}" ]; then
    echo "test_lowest_torch.sh: $VENV needs about ${MIN_FREE_GB:-7} GB free on its disk (torch $TORCH_LOWEST with" \
         "its CUDA libraries, installed one wheel at a time); only $free_gb GB are free" >&2
    exit 1
  fi
  "$py" -m pip install -q --no-cache-dir --upgrade pip >/dev/null 2>&1 || true
  # torch pinned next to the package, so that the resolver never trades it for a newer one; the test extra's
  # unpinned triton then resolves to the one this torch pins (torch 2.11: triton==3.6.0). No mpich extra: the
  # unit tests start no MPI job and any MPI library serves them (a site Open MPI or MPICH).
  reqs=("torch==$TORCH_LOWEST" -e ".[test,report]")
  # what pip would install, resolved without downloading a wheel (PyPI serves each wheel's metadata apart)
  "$py" -m pip install -q --no-cache-dir --dry-run --ignore-installed --report "$VENV/.install-report.json" "${reqs[@]}"
  large=$("$py" - "$VENV/.install-report.json" <<'PY'
import json, re, sys
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if re.match(r"(torch|triton|nvidia[-_]|cuda[-_])", name, re.IGNORECASE):
        print(f"{name}=={version}")
PY
)
  for req in $large; do
    "$py" -m pip install -q --no-cache-dir --no-deps "$req"
  done
  # the rest, and a check that the large ones already installed are what the resolver wants
  "$py" -m pip install -q --no-cache-dir "${reqs[@]}"
  # mpi4py's wheel finds no MPI library of its own: its import then raises (RuntimeError "cannot load MPI
  # library") and nothing of this package imports. Only then take the mpich wheel (37 MB installed).
  if ! "$py" -c 'from mpi4py import MPI' >/dev/null 2>&1; then
    echo "test_lowest_torch.sh: no MPI library found by mpi4py; installing the mpich wheel"
    "$py" -m pip install -q --no-cache-dir mpich
  fi
  # Triton < 3.7's CPU interpreter (the kernel tests without a GPU) fails under NumPy >= 2.4; compat.py knows
  # which combinations and names the NumPy to use (it is a test-tool limit: compiled kernels are unaffected)
  pin=$("$py" -c 'from fedmrn_mpi import compat
print(compat.interpreter_numpy_pin() if compat.triton_interpreter_problem() else "")')
  if [ -n "$pin" ]; then
    echo "test_lowest_torch.sh: this Triton's interpreter needs $pin (fedmrn_mpi/compat.py)"
    "$py" -m pip install -q --no-cache-dir "$pin"
  fi
  got=$(installed_torch)
  if [ "$got" != "$TORCH_LOWEST" ]; then
    echo "test_lowest_torch.sh: installed torch is '$got', not $TORCH_LOWEST" >&2
    exit 1
  fi
  echo "$stamp" > "$stamp_file"
fi

"$py" -c 'import sys, numpy, torch, triton
print("test_lowest_torch.sh: python", sys.version.split()[0], "torch", torch.__version__,
      "triton", triton.__version__, "numpy", numpy.__version__)'
if [ $# -eq 0 ]; then
  set -- -q -m "not mpi" tests
fi
exec "$py" -m pytest "$@"
