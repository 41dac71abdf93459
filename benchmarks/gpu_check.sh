#!/bin/bash
# The GPU check: runs on one NVIDIA GPU with the node's own python3, torch and Triton, in at most 6 minutes.
#     WHEELS=.whl OUT=/some/dir bash benchmarks/gpu_check.sh
#     bash benchmarks/gpu_check.sh [OUT_DIR]            (OUT, else OUT_DIR, else results/gpu_check-<date>)
#     bash benchmarks/gpu_check.sh --setup-only [OUT_DIR]   (only the set-up below; needs no GPU)
# Environment: PYTHON (default python3), MPIRUN (default mpirun), WHEELS (default .whl when it exists; fill it
# with `bash scripts/gpu_wheels.sh`), GPU_CHECK_SECONDS (the deadline for every step, default 340).
# docs/gpu.md has the commands, what each step checks and the expected figures.
#
#   0. No GPU (no nvidia-smi and no /dev/nvidia*, nvidia-smi lists none, or torch sees none): one line saying
#      why, exit 77, within seconds. Nothing else runs.
#   1. Set-up (setup.txt): what the node has is used. Whatever of mpi4py, an MPI library + mpirun, pyyaml,
#      h5py, pytest (+ deps) is missing or does not work is installed from the wheels in $WHEELS with
#      pip --no-index --no-deps into a temporary prefix, and put on PYTHONPATH/PATH (MPI4PY_LIBMPI names the
#      wheel's libmpi). mpirun must then start 2 ranks that see each other. Launcher flags follow
#      `mpirun --version` (Open MPI: --oversubscribe, and --allow-run-as-root as root; MPICH's hydra: none).
#   2. CUDA vs CPU noise, one line (noise.txt).
#   3. The CUDA tests: compiled Triton kernels against the CPU reference, bit for bit; crop+flip and bit
#      packing on the GPU (tests.txt).
#   4. The default job (3 rounds; synthetic data when FashionMNIST's files are absent) at -n 2 and -n 3 on the
#      one GPU, whose final-model digests must be equal (run_n2/run_n3.h5/.txt, digests.txt).
#   5. The codec micro-benchmarks at 11.2M parameters, K = 32 (codec_cuda.json/.txt).
#   6. Batched vs sequential client training, CNN4 and CNN8 at K = 1, 16, 32 (batched_cuda.json/.txt).
# Each step has its own timeout, cut so that every later step keeps a minimum slot before the deadline; a step
# with no time left is skipped and counted as failed. Every step runs even if an earlier one fails; the exit
# status is the number of failed steps (77 only for "no GPU").
set -uo pipefail
CALLER_PWD=$PWD
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2

SETUP_ONLY=0
if [ "${1:-}" = "--setup-only" ]; then SETUP_ONLY=1; shift; fi
PY=${PYTHON:-python3}
MPIRUN=${MPIRUN:-mpirun}
DEADLINE=${GPU_CHECK_SECONDS:-340}   # s after start; + one step's kill grace + the summary stays under 6 min
KILL_GRACE=5                         # timeout -k: SIGKILL this long after SIGTERM
SETUP_DEADLINE=$((DEADLINE / 3))     # s after start by which the set-up's own commands are cut off (~20 s is usual)

# --- 0. a GPU, or exit 77 with one line -------------------------------------------------------------------
# nvidia-smi first (milliseconds); torch only when there may be a GPU (importing it takes seconds).
no_gpu() { echo "gpu_check: no GPU: $*; nothing was run (exit 77)"; exit 77; }
if [ "$SETUP_ONLY" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 && ! compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
    no_gpu "no nvidia-smi on PATH and no /dev/nvidia[0-9]* device"
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    smi=$(timeout -k 2 8 nvidia-smi -L 2>&1) || no_gpu "nvidia-smi -L failed: $(head -n 1 <<<"$smi")"
    grep -q '^GPU ' <<<"$smi" || no_gpu "nvidia-smi lists no GPU"
  fi
  gpu=$(timeout -k 2 60 "$PY" -c '
import sys
try:
    import torch
except Exception as exc:
    print(f"{sys.executable} cannot import torch: {exc}"); sys.exit(2)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"); sys.exit(3)
print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")' 2>&1)
  case $? in
    0) ;;
    3) no_gpu "$(tail -n 1 <<<"$gpu")" ;;
    *) echo "gpu_check: $PY cannot run the check: $(tail -n 1 <<<"$gpu")"; exit 1 ;;
  esac
fi

# --- where everything goes -----------------------------------------------------------------------------------
OUT=${OUT:-${1:-$ROOT/results/gpu_check-$(date +%Y%m%d-%H%M%S)}}
case "$OUT" in /*) ;; *) OUT=$CALLER_PWD/$OUT ;; esac   # relative to where it was started
mkdir -p "$OUT" || exit 2
: > "$OUT/summary.txt"
: > "$OUT/setup.txt"
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
[ "$SETUP_ONLY" = 1 ] || say "GPU: $gpu"

TMPD=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$TMPD"' EXIT
PREFIX=$TMPD/prefix                  # pip --prefix target of the wheels (removed at exit)
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export TRITON_INTERPRET=0            # compiled kernels, not the interpreter the CPU tests use
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
failed=0

# --- 1. set-up: use the node's packages and MPI; install from $WHEELS only what is missing --------------------
if [ -z "${WHEELS:-}" ] && [ -d "$ROOT/.whl" ]; then WHEELS=$ROOT/.whl; fi
if [ -n "${WHEELS:-}" ]; then
  case "$WHEELS" in /*) ;; *) WHEELS=$CALLER_PWD/$WHEELS ;; esac
fi
INSTALLED=()                         # distributions installed from $WHEELS
within() {  # within T: T seconds, or less so that no set-up command runs past SETUP_DEADLINE (at least 1)
  local left=$((SETUP_DEADLINE - SECONDS))
  [ "$left" -ge 1 ] || left=1
  echo $(($1 < left ? $1 : left))
}
SETUP_ERRORS=()
log() { echo "$*" >> "$OUT/setup.txt"; }

pip_wheels() {  # pip from $WHEELS (the tested version; works for a python3 without pip), else the node's
  local pipwhl
  pipwhl=$(shopt -s nullglob; printf '%s\n' "$WHEELS"/pip-*.whl | sort -V | tail -n 1)
  # --isolated: no PIP_* variables or pip.conf (index URLs, find-links) take part; --no-index: nothing to reach.
  if [ -n "$pipwhl" ]; then
    timeout -k 5 "$(within 90)" "$PY" "$pipwhl/pip" --isolated --disable-pip-version-check --no-input "$@"
  else
    timeout -k 5 "$(within 90)" "$PY" -m pip --isolated --disable-pip-version-check --no-input "$@"
  fi
}

# Which wheels to install for DIST...: those named plus their requirements that $PY lacks or has too old,
# read from the wheels' metadata (pip --no-deps resolves nothing). Prints one wheel path per line; says why on
# stderr; exit 1 if something needed has no wheel in $WHEELS that fits this python.
read -r -d '' RESOLVE_PY <<'EOF'
import glob, os, sys, zipfile
from importlib import metadata
wheels, wanted = sys.argv[1], sys.argv[2:]
pip_wheel = sorted(glob.glob(os.path.join(wheels, "pip-*.whl")))
if pip_wheel:
    sys.path.insert(0, pip_wheel[-1])  # pip's vendored packaging: the node's own may be absent or old
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.tags import sys_tags
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

here = set(sys_tags())
fits, misfits = {}, {}
for path in glob.glob(os.path.join(wheels, "*.whl")):
    name, version, _, tags = parse_wheel_filename(os.path.basename(path))
    pick = fits if tags & here else misfits
    if name not in pick or version > parse_wheel_filename(os.path.basename(pick[name]))[1]:
        pick[name] = path  # the newest, should a folder hold two versions
pyv = "%d.%d" % sys.version_info[:2]
plan, errors, queue = [], [], [(canonicalize_name(w), "asked for") for w in wanted]
while queue:
    name, why = queue.pop(0)
    if name in plan:
        continue
    if name not in fits:
        hint = (f"; {os.path.basename(misfits[name])} is for another Python: run "
                f"PYTHON_VERSION={pyv} bash scripts/gpu_wheels.sh" if name in misfits else "")
        errors.append(f"{name} ({why}): no wheel for Python {pyv} in {wheels}{hint}")
        continue
    plan.append(name)
    print(f"install {os.path.basename(fits[name])}: {why}", file=sys.stderr)
    with zipfile.ZipFile(fits[name]) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra, or another platform / Python
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            have = None
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        queue.append((canonicalize_name(req.name),
                      f"{name} needs {req}" + (f", this python has {have}" if have else ", this python has none")))
for name in plan:
    print(fits[name])
for err in errors:
    print("missing: " + err, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

refresh_paths() {  # after an install: its site directories on PYTHONPATH, its bin/ on PATH
  # Found, not assumed: pip's --prefix scheme differs between Pythons (lib/python3.12/site-packages,
  # local/lib/.../dist-packages on Debian's, lib64 for platlib on Fedora's).
  local d
  while read -r d; do
    case ":$PYTHONPATH:" in *":$d:"*) ;; *) PYTHONPATH=$d:$PYTHONPATH ;; esac
  done < <(find "$PREFIX" -name '*.dist-info' -prune -printf '%h\n' 2>/dev/null | sort -u)
  while read -r d; do
    case ":$PATH:" in *":$d:"*) ;; *) PATH=$d:$PATH ;; esac
  done < <(find "$PREFIX" -type d -name bin 2>/dev/null)
  export PYTHONPATH PATH
}

WHEELS_CHECKED=0
install_wheels() {  # install_wheels DIST...: from $WHEELS into $PREFIX, with whatever they need that $PY lacks
  if [ -z "${WHEELS:-}" ] || [ ! -d "$WHEELS" ]; then
    SETUP_ERRORS+=("needs $* but no wheels folder: make one with 'bash scripts/gpu_wheels.sh DIR' and run with WHEELS=DIR${WHEELS:+ ($WHEELS does not exist)}")
    log "cannot install $*: no wheels folder"
    return 1
  fi
  if [ "$WHEELS_CHECKED" = 0 ] && [ -f "$WHEELS/SHA256SUMS" ]; then  # a damaged copy fails here, not in pip
    if ! (cd "$WHEELS" && sha256sum --quiet -c SHA256SUMS) >> "$OUT/setup.txt" 2>&1; then
      SETUP_ERRORS+=("$WHEELS does not match its SHA256SUMS (damaged copy?): refill it with scripts/gpu_wheels.sh")
      return 1
    fi
    WHEELS_CHECKED=1
  fi
  local files rc
  files=$(timeout -k 2 "$(within 30)" "$PY" -c "$RESOLVE_PY" "$WHEELS" "$@" 2>>"$OUT/setup.txt"); rc=$?
  [ $rc -eq 0 ] || SETUP_ERRORS+=("cannot install all of $*: $(grep '^missing: ' "$OUT/setup.txt" | tail -n 1)")
  [ -n "$files" ] || return 1
  mapfile -t files <<<"$files"
  log "+ pip install --no-index --no-deps --ignore-installed --prefix $PREFIX ${files[*]##*/}"
  # --prefix, not --target: pip --target drops the data files under lib/ (the mpich wheel's libmpi.so.12),
  # because its temporary home scheme already has lib/python there. --ignore-installed: never touch (or
  # uninstall) what the node has; the prefix only adds.
  if ! pip_wheels install --no-index --no-deps --ignore-installed --no-compile --no-warn-script-location \
       --prefix "$PREFIX" "${files[@]}" >> "$OUT/setup.txt" 2>&1; then
    SETUP_ERRORS+=("pip install from $WHEELS failed (see setup.txt)")
    return 1
  fi
  local f
  for f in "${files[@]}"; do INSTALLED+=("$(basename "$f" | cut -d- -f1-2)"); done
  refresh_paths
  [ $rc -eq 0 ]
}

# Python packages the steps import, besides torch/triton/numpy (which come with the node's torch image).
# hypothesis only if the CUDA test files import it.
mapfile -t CUDA_TESTS < <(grep -l 'cuda.is_available' tests/unit/test_*.py)   # the files that hold CUDA tests
[ ${#CUDA_TESTS[@]} -gt 0 ] || CUDA_TESTS=(tests/unit/test_triton_kernels.py)  # never "no files": the whole suite
need_mods=(yaml:PyYAML h5py:h5py pytest:pytest)
if grep -qE '^\s*(import|from) hypothesis' "${CUDA_TESTS[@]}" tests/conftest.py 2>/dev/null; then
  need_mods+=(hypothesis:hypothesis)
fi
missing_dists() {  # the distributions of need_mods whose module does not import
  timeout -k 2 "$(within 60)" "$PY" - "${need_mods[@]}" <<'EOF' 2>>"$OUT/setup.txt"
import importlib, sys
for pair in sys.argv[1:]:
    mod, dist = pair.split(":")
    try:
        importlib.import_module(mod)
    except Exception as exc:
        print(dist)
        print(f"{mod}: {type(exc).__name__}: {exc}", file=sys.stderr)
EOF
}
mapfile -t miss < <(missing_dists)
if [ ${#miss[@]} -gt 0 ]; then
  log "python packages missing: ${miss[*]}"
  install_wheels "${miss[@]}"
  mapfile -t still < <(missing_dists)
  [ ${#still[@]} -eq 0 ] || SETUP_ERRORS+=("still not importable: ${still[*]} (setup.txt)")
fi

MPIFLAGS=()
launcher() {  # MPIKIND, MPIFLAGS from `$MPIRUN --version`: the flags differ between Open MPI and MPICH
  local v
  MPIFLAGS=()
  v=$(timeout -k 2 "$(within 10)" "$MPIRUN" --version 2>&1 | head -n 5)
  case "$v" in
    *"Open MPI"*|*OpenRTE*)
      MPIKIND="Open MPI: $(head -n 1 <<<"$v")"
      MPIFLAGS+=(--oversubscribe)          # 3 ranks on a node whose slots Open MPI counts as fewer
      if [ "$(id -u)" = 0 ]; then          # containers run as root; Open MPI refuses that unless told
        MPIFLAGS+=(--allow-run-as-root)
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      fi ;;
    *HYDRA*) MPIKIND="MPICH hydra $(sed -n 's/^ *Version: *//p' <<<"$v" | head -n 1)" ;;
    *) MPIKIND="unknown launcher: $(head -n 1 <<<"$v")" ;;
  esac
}
MPI_OK=0
MPI_DESC=
MPIKIND=
MPI_PROBE='import mpi4py, sys
from mpi4py import MPI
c = MPI.COMM_WORLD
n = c.allreduce(1)
assert c.Get_size() == 2 and n == 2, f"rank {c.Get_rank()} sees {c.Get_size()} ranks: launcher and libmpi differ"
if c.Get_rank() == 0:
    lib = MPI.Get_library_version().replace("\0", "").splitlines()[0].strip()  # Open MPI ends it in NUL
    print("2 ranks:", lib, "| mpi4py", mpi4py.__version__,
          mpi4py.__file__)'
mpi_ready() {  # mpi4py loads an MPI library, mpirun exists, and 2 ranks started by it see each other
  timeout -k 2 "$(within 30)" "$PY" -c 'import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI' \
    >> "$OUT/setup.txt" 2>&1 \
    || { log "mpi4py does not load an MPI library"; return 1; }
  command -v "$MPIRUN" >/dev/null 2>&1 || { log "no $MPIRUN on PATH"; return 1; }
  launcher
  log "+ $MPIRUN ${MPIFLAGS[*]} -n 2 $PY -c <probe>   ($MPIKIND)"
  timeout -k 5 "$(within 30)" "$MPIRUN" "${MPIFLAGS[@]}" -n 2 "$PY" -c "$MPI_PROBE" > "$TMPD/probe.txt" 2>&1
  local rc=$?
  cat "$TMPD/probe.txt" >> "$OUT/setup.txt"
  [ $rc -eq 0 ] && MPI_DESC=$(grep -a '^2 ranks:' "$TMPD/probe.txt" | head -n 1) && return 0
  log "probe failed (exit $rc)"
  return 1
}
use_wheel_mpich() {  # the wheel's MPICH: its libmpi for mpi4py, its hydra mpirun
  install_wheels mpich || return 1
  local lib run
  lib=$(find "$PREFIX" -name 'libmpi.so.12' | head -n 1)
  run=$(find "$PREFIX" -path '*/bin/mpirun' | head -n 1)
  [ -n "$lib" ] && [ -n "$run" ] || { SETUP_ERRORS+=("the mpich wheel installed no libmpi.so.12 or mpirun"); return 1; }
  # A wheel-built mpi4py would otherwise dlopen the first libmpi.so the loader finds (a system Open MPI, say)
  # and every rank would be a singleton under hydra.
  export MPI4PY_LIBMPI=$lib
  MPIRUN=$run
  log "using the wheel's MPICH: MPI4PY_LIBMPI=$lib MPIRUN=$run"
}
has_mpi4py() { timeout -k 2 "$(within 30)" "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("mpi4py") is None)' 2>/dev/null; }

# Escalate one piece at a time, so that only what is missing is installed: (a) mpi4py, if the node has none
# (its own MPI may then do); (b) the wheel's MPICH (no library, no mpirun, or one that does not start 2
# ranks); (c) the wheel's mpi4py over the node's (built for an MPI the node does not have).
if mpi_ready; then
  MPI_OK=1
else
  if ! has_mpi4py && install_wheels mpi4py && mpi_ready; then MPI_OK=1; fi
  if [ $MPI_OK = 0 ] && use_wheel_mpich && mpi_ready; then MPI_OK=1; fi
  if [ $MPI_OK = 0 ] && [ -n "${MPI4PY_LIBMPI:-}" ] && [[ " ${INSTALLED[*]} " != *" mpi4py-"* ]] && has_mpi4py \
     && install_wheels mpi4py && mpi_ready; then MPI_OK=1; fi
  [ $MPI_OK = 1 ] || SETUP_ERRORS+=("MPI does not start 2 ranks with $MPIRUN (setup.txt)")
fi

{ [ "$SETUP_ONLY" = 1 ] || timeout -k 2 10 nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  timeout -k 2 60 "$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for mod in ("torch", "triton", "numpy", "h5py", "yaml", "pytest", "mpi4py"):
    try:
        m = importlib.import_module(mod)
        extra = f" cuda {m.version.cuda}" if mod == "torch" else ""
        print(f"{mod} {getattr(m, '__version__', '?')}{extra} ({m.__file__})")
    except Exception as exc:
        print(f"{mod}: not importable ({type(exc).__name__}: {exc})")
EOF
  echo "mpirun: $(command -v "$MPIRUN") (${MPIKIND:-none}) ${MPIFLAGS[*]}"
  echo "MPI4PY_LIBMPI=${MPI4PY_LIBMPI:-}"
  echo "installed from ${WHEELS:-no wheels folder}: ${INSTALLED[*]:-nothing}"
  echo "cores: $(nproc)"; } > "$OUT/machine.txt" 2>&1
say "set-up: installed from wheels: ${INSTALLED[*]:-nothing} | MPI: ${MPI_DESC:-NOT WORKING} | launcher: ${MPIKIND:-none} ${MPIFLAGS[*]}"
for e in "${SETUP_ERRORS[@]}"; do say "   set-up problem: $e"; done
[ ${#SETUP_ERRORS[@]} -eq 0 ] || failed=$((failed + 1))
if [ "$SETUP_ONLY" = 1 ]; then
  cat "$OUT/machine.txt"
  say "set-up only: ${#SETUP_ERRORS[@]} problems; everything is in $OUT"
  exit $failed
fi

# --- the steps --------------------------------------------------------------------------------------------------
# Slots in seconds: CAP is a step's own limit; FLOOR the time kept back for it while earlier steps run (an
# earlier step that overruns eats into the later ones only down to their floors; when even the floors do not
# fit, the steps run in order and the last ones are skipped). The deadline, not the caps, holds the 6 minutes.
declare -A FLOOR=([noise]=15 [tests]=40 [run2]=35 [run3]=35 [digests]=10 [codec]=30 [batched]=30)
RESERVE=0; for k in "${!FLOOR[@]}"; do RESERVE=$((RESERVE + FLOOR[$k])); done
step() {  # step KEY NAME LOG CAP CMD...: run under its timeout, output in the log, count a failure
  local key=$1 name=$2 log=$3 cap=$4; shift 4
  RESERVE=$((RESERVE - FLOOR[$key]))
  local hard=$((DEADLINE - SECONDS - KILL_GRACE))     # never past the deadline
  local limit=$((hard - RESERVE))                     # what leaves every later step its floor,
  limit=$((limit > FLOOR[$key] ? limit : FLOOR[$key]))  # but this one gets its own floor first (in order)
  limit=$((limit < cap ? limit : cap))
  limit=$((limit < hard ? limit : hard))
  if [ "$limit" -lt 5 ]; then
    say "== $name: SKIPPED, no time left ($((DEADLINE - SECONDS)) s to the deadline)"
    failed=$((failed + 1)); return
  fi
  local shown=() a
  for a in "$@"; do [[ "$a" == *$'\n'* ]] && shown+=("<script>") || shown+=("$a"); done  # no inline code
  say "== $name (limit ${limit} s): ${shown[*]}"
  local t0=$SECONDS
  timeout -k "$KILL_GRACE" "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  local how="exit $rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && how="TIMED OUT (exit $rc)"
  say "   $how after $((SECONDS - t0)) s (log: $OUT/$log)"
  tail -n 15 "$OUT/$log"
  [ $rc -eq 0 ] || failed=$((failed + 1))
}

# 2. CUDA vs CPU noise: the kernels the runner uses on the GPU (Triton) against the CPU reference, bit for bit.
#    Gaussian noise may differ in the last bits (libdevice log/cos vs the CPU's): at most 2 ulp, as the tests.
read -r -d '' NOISE_PY <<'EOF'
import torch
import fedmrn_mpi.rng.noise as N
numel, seed, stream, sigma = 11_200_000, 20240601, N.make_stream(3, 7), 0.01
parts, bad = [], 0
for kind in N.NOISE_KINDS:
    gpu = N.noise(seed, stream, numel, kind, sigma, "cuda").cpu()
    cpu = N.noise(seed, stream, numel, kind, sigma, "cpu")
    a, b = gpu.view(torch.int32).long(), cpu.view(torch.int32).long()
    diff = int((a != b).sum())
    ulp = int((a - b).abs().max())   # same sign throughout (the noise has |n| >= 1e-8): ulp distance
    if diff == 0:
        parts.append(f"{kind} bit-identical")
    else:
        parts.append(f"{kind} {diff:,} differ (max {ulp} ulp)")
        bad += kind != "gaussian" or ulp > 2
print(f"noise cuda vs cpu: {len(N.NOISE_KINDS)} kinds x {numel:,} values (seed {seed}): " + ", ".join(parts))
raise SystemExit(1 if bad else 0)
EOF
step noise "noise CUDA vs CPU" noise.txt 45 "$PY" -c "$NOISE_PY"
grep -h '^noise cuda vs cpu' "$OUT/noise.txt" >> "$OUT/summary.txt"

# 3. Only the tests that need CUDA (the rest run in the CPU suite anyway).
step tests "CUDA tests" tests.txt 150 "$PY" -m pytest -q -p no:cacheprovider -m "not mpi" -k cuda -rs \
  "${CUDA_TESTS[@]}"

# 4. The default job on the GPU at -n 2 and -n 3: equal digests.
data=()
compgen -G '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte*' >/dev/null || data=(data.name=synthetic)
run_args=(-m fedmrn_mpi run -c configs/default.yaml rounds=3 eval_every=1 device=cuda ${data[@]+"${data[@]}"})
if [ "$MPI_OK" = 1 ]; then
  step run2 "GPU run -n 2" run_n2.txt 70 "$MPIRUN" "${MPIFLAGS[@]}" -n 2 "$PY" "${run_args[@]}" -o "$OUT/run_n2.h5"
  step run3 "GPU run -n 3" run_n3.txt 70 "$MPIRUN" "${MPIFLAGS[@]}" -n 3 "$PY" "${run_args[@]}" -o "$OUT/run_n3.h5"
else
  say "== GPU runs -n 2 / -n 3: SKIPPED, MPI does not work (see the set-up lines)"
  RESERVE=$((RESERVE - FLOOR[run2] - FLOOR[run3])); failed=$((failed + 2))
fi
read -r -d '' DIGESTS_PY <<'EOF'
import sys
from fedmrn_mpi.results.reader import load_run
a, b = (load_run(f"{sys.argv[1]}/run_n{n}.h5") for n in (2, 3))
same = a.final_model_sha256 is not None and a.final_model_sha256 == b.final_model_sha256
print(f"-n 2 vs -n 3 on CUDA: digests {'equal' if same else 'DIFFER'} ({a.final_model_sha256} / "
      f"{b.final_model_sha256}); s/round after the first {a.wall_seconds[1:].mean():.3f} / "
      f"{b.wall_seconds[1:].mean():.3f}; accuracy {a.test_accuracy[-1]:.4f} / {b.test_accuracy[-1]:.4f}")
raise SystemExit(0 if same else 1)
EOF
step digests "digests -n 2 vs -n 3" digests.txt 20 "$PY" -c "$DIGESTS_PY" "$OUT"
grep -h '^-n 2 vs -n 3' "$OUT/digests.txt" >> "$OUT/summary.txt"

# 5, 6. Benchmarks. The codec at its full size (its H200 targets apply only there); the batched one reduced
#       to two models and K = 1, 16, 32 (the target: >= 5x for CNN4 at >= 16 clients) to fit the 6 minutes.
step codec "codec benchmark" codec_cuda.txt 75 "$PY" benchmarks/bench_codec.py --device cuda \
  --out "$OUT/codec_cuda.json"
step batched "batched training benchmark" batched_cuda.txt 75 "$PY" benchmarks/bench_batched.py --device cuda \
  --clients 1,16,32 --configs cnn4:64,cnn8:64 --repeat 2 --out "$OUT/batched_cuda.json"

say "failed steps: $failed; total $SECONDS s; everything is in $OUT"
exit $failed
