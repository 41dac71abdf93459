#!/bin/bash
# Fills a folder with the wheels benchmarks/gpu_check.sh may need on a GPU node that has its own python3,
# torch and Triton but perhaps no MPI, no mpi4py, no pyyaml/pytest, and no network:
#     bash scripts/gpu_wheels.sh [DIR]                    (default: .whl in the checkout)
#     PYTHON_VERSION=3.11 bash scripts/gpu_wheels.sh DIR   (wheels for another CPython; default 3.12)
# PIP_PYTHON: the Python whose pip downloads (default .venv/bin/python, else python3); PyPI access needed.
# Copy the checkout together with DIR to the node and run `WHEELS=DIR bash benchmarks/gpu_check.sh` there
# (docs/gpu.md). The check installs from DIR only what the node lacks, with pip --no-index, into a temporary
# prefix; nothing here is installed on this machine.
#
# Every wheel is pinned (--no-deps: the list below is the whole closure the check can need, less numpy,
# which the node's torch image brings); they are the versions the project's venv runs and tests/integration/
# test_gpu_tools.py installs and launches. Binary wheels are for CPython $PYTHON_VERSION on manylinux x86-64;
# the pure ones are py3-none-any. pip itself is included so that a node whose python3 lacks pip can still
# install (gpu_check.sh runs `python3 DIR/pip-*.whl/pip`).
#
# DIR gets SHA256SUMS (gpu_check.sh verifies the copy before installing) and PINS; when PINS and the sums
# already match, nothing is downloaded (so a cached folder needs no network). The total must stay under
# 40 MB; it is printed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/.whl}
PYV=${PYTHON_VERSION:-3.12}
LIMIT_BYTES=40000000

case "$PYV" in
  3.1[1-9]) ;;
  *) echo "gpu_wheels: PYTHON_VERSION=$PYV is not supported (3.11 or newer: pytest's extra deps for 3.10 are not pinned)" >&2
     exit 2 ;;
esac

PINS=(
  mpich==5.0.2          # MPI library + hydra mpirun/mpiexec (bin/, lib/libmpi.so.12); any CPython
  mpi4py==4.1.2         # finds libmpi at run time (MPI4PY_LIBMPI), so it works with the wheel's MPICH or a site MPI
  PyYAML==6.0.4         # configs
  h5py==3.16.0          # results files (needs numpy, which the node has)
  pytest==9.2.0         # the CUDA tests, with its dependencies:
  pluggy==1.7.0
  iniconfig==2.3.1
  packaging==26.4
  Pygments==2.21.0
  hypothesis==6.170.17  # not imported by the CUDA tests today; installed only if they start to
  sortedcontainers==2.4.0
  pip==26.3             # for a python3 without pip
)

PY=${PIP_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# Two callers filling the same cached folder at once (two test runs) would delete each other's files.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DIR/.lock"
  flock 9
fi

want_pins=$(printf 'python %s\n' "$PYV"; printf '%s\n' "${PINS[@]}")
listed() { awk '{print $2}' "$DIR/SHA256SUMS" | sort; }
present() { (cd "$DIR" && shopt -s nullglob && printf '%s\n' *.whl | sort); }
if [ -f "$DIR/PINS" ] && [ "$(cat "$DIR/PINS")" = "$want_pins" ] && [ -f "$DIR/SHA256SUMS" ] \
   && [ "$(listed)" = "$(present)" ] && (cd "$DIR" && sha256sum --quiet -c SHA256SUMS >/dev/null 2>&1); then
  echo "gpu_wheels: $DIR is up to date (PINS and SHA256SUMS match), nothing downloaded"
else
  rm -f "$DIR/PINS" "$DIR/SHA256SUMS"
  # --platform: the tags a manylinux x86-64 node accepts (newest first); py3-none-any wheels always match.
  if ! "$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
       --python-version "$PYV" --implementation cp \
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
       --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
       -d "$DIR" "${PINS[@]}"; then
    echo "gpu_wheels: pip download failed (no network or no package index?); $DIR is incomplete" >&2
    exit 1
  fi
  # Keep exactly one wheel per pin: an older pin's file left in DIR would be a second candidate there.
  keep=()
  for pin in "${PINS[@]}"; do
    name=${pin%%==*}; ver=${pin#*==}
    norm=$(echo "$name" | tr 'A-Z-.' 'a-z__')           # wheel file names use the normalised name
    found=$(cd "$DIR" && shopt -s nocaseglob nullglob && printf '%s\n' "${norm}-${ver}-"*.whl)
    if [ "$(echo "$found" | grep -c .)" != 1 ]; then
      echo "gpu_wheels: expected one wheel for $pin in $DIR, found: ${found:-none}" >&2
      exit 1
    fi
    keep+=("$found")
  done
  for f in "$DIR"/*.whl; do
    base=${f##*/}
    printf '%s\n' "${keep[@]}" | grep -qxF "$base" || { echo "gpu_wheels: removing stale $base"; rm -f "$f"; }
  done
  (cd "$DIR" && sha256sum "${keep[@]}" > SHA256SUMS)
  printf '%s\n' "$want_pins" > "$DIR/PINS"
fi

total=$(cat "$DIR"/*.whl | wc -c)
for f in "$DIR"/*.whl; do printf '  %10d  %s\n' "$(stat -c %s "$f")" "${f##*/}"; done
echo "gpu_wheels: $(present | wc -l) wheels for CPython $PYV, total $total bytes ($((total / 1000000)) MB) in $DIR"
if [ "$total" -ge "$LIMIT_BYTES" ]; then
  echo "gpu_wheels: total $total bytes is over the 40 MB limit" >&2
  exit 1
fi
