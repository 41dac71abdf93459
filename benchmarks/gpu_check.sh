#!/bin/bash
# One GPU check, on a machine with an NVIDIA GPU where torch (CUDA), Triton, Open MPI and mpi4py are already
# installed: it installs nothing. Run from the checkout:
#     bash benchmarks/gpu_check.sh [OUT_DIR]          (default: results/gpu_check-<date>)
# In about 5 minutes on one H200 it runs, each step's output in OUT_DIR:
#   1. the CUDA tests: compiled Triton kernels against the CPU reference, bit for bit (noise of every kind,
#      mask draws, final draw + packing, pack/unpack, decode/aggregate), batched vs sequential clients on the
#      GPU, crop+flip on the GPU (tests.txt);
#   2. the codec micro-benchmarks at 11.2M parameters, K = 32, with the H200 targets (codec_cuda.json/.txt);
#   3. batched vs sequential client training, CNN4 and CNN8, K = 1..32 (batched_cuda.json/.txt);
#   4. a short GPU run under mpirun: FedMRN on FashionMNIST (or synthetic data when the files are absent) at
#      -n 4 and -n 2, whose digests must agree (run_n4.h5, run_n2.h5, run.txt).
# Every step runs even if an earlier one fails; the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
MPIRUN=${MPIRUN:-mpirun}
export TRITON_INTERPRET=0            # compiled kernels, not the interpreter the CPU tests use
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
failed=0
step() {  # step NAME LOGFILE CMD...: run, tee into the log, count failures
  local name=$1 log=$2; shift 2
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - t0)) s (log: $OUT/$log)" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$log"
  [ $rc -eq 0 ] || failed=$((failed + 1))
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import torch, triton, mpi4py; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "mpi4py", mpi4py.__version__, "gpus", torch.cuda.device_count())'
  $MPIRUN --version | head -1; nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step "CUDA tests" tests.txt $PY -m pytest -q -m "not mpi" -p no:cacheprovider \
  tests/unit/test_triton_kernels.py tests/unit/test_batched.py tests/unit/test_augment.py \
  tests/unit/test_noise.py tests/unit/test_bits.py tests/unit/test_fedmrn.py -rs
step "codec benchmark" codec_cuda.txt $PY benchmarks/bench_codec.py --device cuda --out "$OUT/codec_cuda.json"
step "batched training benchmark" batched_cuda.txt $PY benchmarks/bench_batched.py --device cuda \
  --out "$OUT/batched_cuda.json"

data=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || data=(data.name=synthetic)
run_args=(-m fedmrn_mpi run -c configs/default.yaml rounds=3 eval_every=1 device=cuda clients_per_round=12
          "${data[@]}")
step "GPU run -n 4" run.txt $MPIRUN -n 4 $PY "${run_args[@]}" -o "$OUT/run_n4.h5"
step "GPU run -n 2" run_n2.txt $MPIRUN -n 2 $PY "${run_args[@]}" -o "$OUT/run_n2.h5"
$PY - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import sys, h5py
out = sys.argv[1]
try:
    a, b = (h5py.File(f"{out}/run_n{n}.h5", "r") for n in (4, 2))
    same = a.attrs["final_model_sha256"] == b.attrs["final_model_sha256"]
    print(f"-n 4 vs -n 2 on CUDA: digests {'equal' if same else 'DIFFER'}; s/round "
          f"{a['rounds/wall_seconds'][1:].mean():.3f} / {b['rounds/wall_seconds'][1:].mean():.3f}; "
          f"accuracy {a['rounds/test_accuracy'][-1]:.4f} / {b['rounds/test_accuracy'][-1]:.4f}")
except Exception as exc:  # a failed run is already counted above
    print(f"runs not comparable: {exc}")
EOF
echo "failed steps: $failed; everything is in $OUT" | tee -a "$OUT/summary.txt"
exit $failed
