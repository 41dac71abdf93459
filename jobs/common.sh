# shellcheck shell=bash
# jobs/common.sh: what every jobs/*.sbatch script shares. It holds the site settings (checkout, modules, Python
# environment, MPI launcher), the settings of the run, and functions for the environment set-up, the fedmrn_mpi
# command line and the launch. sbatch runs a COPY of a script from slurmd's spool directory, so a script cannot
# find this file through its own path ($0). Each script finds it through the checkout instead:
#     FEDMRN_DIR=${FEDMRN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}     # default: the directory sbatch was called from
#     . "$FEDMRN_DIR/jobs/common.sh"
# Sourcing it only reads the settings and defines the functions; it changes no shell option (each script sets its
# own: requeue.sbatch runs without -e). The script then reads its own settings and calls
#     fedmrn_setup                                   # cd, modules, venv, PYTHON
#     fedmrn_args CONFIG OUT [RESUME]                # fedmrn_mpi's command line in the array `args`
#     fedmrn_launch NTASKS "$PYTHON" -m fedmrn_mpi "${args[@]}"   # exec srun / mpirun
# and the job arrays over a directory of configs, before fedmrn_args:
#     fedmrn_array_config DIR [SELECT] [TAG]         # this task's config of DIR: `config`, `stem`, `task`
#
# Every variable below can be set in the environment of `sbatch` (it exports the environment to the job), which
# overrides the default for that submission. Edit a default here to change it for every script.

# ---- site settings ------------------------------------------------------------------------------------------
FEDMRN_DIR=${FEDMRN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}   # the fedmrn_mpi checkout
MODULES=${MODULES:-}                      # e.g. "openmpi/4.1.6 cuda/12.4": `module load $MODULES` when set
                                          # (no `module` in batch shells? make line 1 of the script `#!/bin/bash -l`)
VENV=${VENV:-$FEDMRN_DIR/.venv}           # activated when it exists
PYTHON=${PYTHON:-}                        # default: python of $VENV, else python3
LAUNCHER=${LAUNCHER:-srun}                # srun | mpirun
SRUN_MPI=${SRUN_MPI:-pmix}                # srun --mpi=...: pmix | pmi2 (MPICH without PMIx)
SRUN_ARGS=${SRUN_ARGS:-}                  # more srun options
MPIRUN=${MPIRUN:-mpirun}                  # the MPI's launcher (LAUNCHER=mpirun; requeue.sbatch: it must forward
                                          # USR1/TERM to the ranks)
MPIRUN_ARGS=${MPIRUN_ARGS:-}              # more mpirun options, e.g. "--bind-to none" (Open MPI)
# ---- the run (scaling_array.sbatch reads CONFIGS and RESULTS instead of CONFIG and OUT) -------------------------
CONFIG=${CONFIG:-configs/paper/fmnist_cnn4_iid_fedmrn-binary.yaml}
OVERRIDES=${OVERRIDES:-}                  # "key.sub=value ..." (see docs/config.md)
DATA_DIR=${DATA_DIR:-}                    # adds data.dir=$DATA_DIR when set
OUT=${OUT:-results/${SLURM_JOB_NAME:-fedmrn}-${SLURM_JOB_ID:-local}.h5}
# ----------------------------------------------------------------------------------------------------------------

# fedmrn_setup: the environment of the run. It does `cd $FEDMRN_DIR`, runs `module load $MODULES`, activates $VENV,
# picks $PYTHON and exports SRUN_CPUS_PER_TASK. The scripts call it after reading their own settings.
fedmrn_setup() {
  cd "$FEDMRN_DIR" || exit 1
  # shellcheck disable=SC2086  # MODULES is a list of module names
  if [ -n "$MODULES" ]; then set +u; module load $MODULES; set -u; fi   # module scripts may read unset variables
  # shellcheck disable=SC1091  # the venv is the site's
  if [ -f "$VENV/bin/activate" ]; then . "$VENV/bin/activate"; fi
  if [ -z "$PYTHON" ]; then PYTHON=$(command -v python || command -v python3); fi
  # srun does not inherit --cpus-per-task from the job since Slurm 22.05
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
}

# fedmrn_args CONFIG OUT [RESUME]: sets the array `args` to fedmrn_mpi's command line:
#     run -c CONFIG -o OUT [--resume] $OVERRIDES [data.dir=$DATA_DIR]
# --resume is added when Slurm restarted the job (SLURM_RESTART_COUNT > 0: a requeue or a node failure) or when
# RESUME is 1. fedmrn_mpi then continues from the newest checkpoint, or starts fresh when there is none.
fedmrn_args() {
  args=(run -c "$1" -o "$2")
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] || [ "${3:-0}" = 1 ]; then args+=(--resume); fi
  # shellcheck disable=SC2206  # OVERRIDES is a list of words on purpose
  args+=($OVERRIDES)
  if [ -n "$DATA_DIR" ]; then args+=("data.dir=$DATA_DIR"); fi
}

# fedmrn_array_config DIR [SELECT] [TAG]: the config of this array task, for the scripts that run a directory of
# configs (compare_array, paper_array). The selection is DIR/*.yaml whose name without .yaml matches one of the shell
# globs in SELECT (default `*`; several separated by spaces), sorted by name, bytewise whatever the locale; array task
# i (SLURM_ARRAY_TASK_ID; outside Slurm TASK, default 0) takes the i-th. Sets `config` (its path), `stem` (its name
# without .yaml), `task` (i) and the array `selected` (every selected path, in task order). An empty selection, or a
# task index that is not a number or is beyond the selection, prints why (prefixed with [TAG]) and exits 2.
fedmrn_array_config() {
  local dir=$1 select=${2:-*} tag=${3:-array} f name pat pats=() found=() all=0
  task=${SLURM_ARRAY_TASK_ID:-${TASK:-0}}
  read -r -a pats <<< "$select"   # split on spaces, no pathname expansion
  for f in "$dir"/*.yaml; do
    [ -e "$f" ] || continue
    all=$((all + 1)); name=${f##*/}; name=${name%.yaml}
    for pat in "${pats[@]}"; do
      # shellcheck disable=SC2053  # the right-hand side is a glob on purpose
      if [[ $name == ${pat%.yaml} ]]; then found+=("$f"); break; fi
    done
  done
  selected=()
  if [ "${#found[@]}" -gt 0 ]; then mapfile -t selected < <(printf '%s\n' "${found[@]}" | LC_ALL=C sort); fi
  if [ "${#selected[@]}" -eq 0 ]; then
    echo "[$tag] SELECT='$select' picks none of the $all config(s) in $dir: nothing to run" >&2; exit 2
  fi
  if ! [[ $task =~ ^[0-9]+$ ]]; then echo "[$tag] the array task index '$task' is not a number" >&2; exit 2; fi
  task=$((10#$task))
  if [ "$task" -ge "${#selected[@]}" ]; then
    local what="$dir has $all config(s)"
    if [ "$select" != '*' ]; then what="SELECT='$select' picks ${#selected[@]} of the $all config(s) in $dir"; fi
    echo "[$tag] array task $task has nothing to do: $what, tasks 0-$((${#selected[@]} - 1))" \
         "(submit with --array=0-$((${#selected[@]} - 1)))" >&2
    exit 2
  fi
  config=${selected[$task]}
  stem=${config##*/}; stem=${stem%.yaml}
}

# fedmrn_launch NTASKS COMMAND [ARG...]: REPLACES this shell (exec) with $LAUNCHER running COMMAND on NTASKS ranks.
# Run it in the background (`fedmrn_launch ... &`) to keep the shell: $! is then the launcher's pid.
# An unknown LAUNCHER prints an error and exits 2.
fedmrn_launch() {
  local n=$1; shift
  case $LAUNCHER in
    srun)
      # shellcheck disable=SC2086  # SRUN_ARGS is a list of options
      exec srun --mpi="$SRUN_MPI" --ntasks="$n" $SRUN_ARGS "$@" ;;
    mpirun)
      # mpirun starts its daemons through srun, and they must not get a PMI server from Slurm (MpiDefault=pmix).
      # MPICH ranks abort when they see both PMI-1 and PMIx variables.
      # shellcheck disable=SC2086  # MPIRUN_ARGS is a list of options
      SLURM_MPI_TYPE=none exec "$MPIRUN" -n "$n" $MPIRUN_ARGS "$@" ;;
    *) echo "LAUNCHER must be srun or mpirun, not '$LAUNCHER'" >&2; exit 2 ;;
  esac
}
