#!/usr/bin/env bash
# jobs/run_local.sh: run a set of configs one after another on this machine, for a workstation without Slurm.
#
#   jobs/run_local.sh -n P CONFIG...
#   RESULTS=results/study jobs/run_local.sh -n 3 configs/study/*.yaml
#
# Each CONFIG runs as  $MPIRUN -n P $MPIRUN_ARGS $PYTHON -m fedmrn_mpi run -c CONFIG -o $RESULTS/<stem>.h5 --resume
# $OVERRIDES  (<stem>: the config's file name without .yaml), in the order given. --resume makes the command
# idempotent: a complete results file is left alone (the run exits 0 at once), an interrupted one continues from
# its newest checkpoint (configs with checkpoint_every > 0 lose at most that many rounds), a missing one starts;
# an unfinished one with no checkpoint yet (killed before its first) is moved aside to <file>.unresumable-<time>
# and starts over.
# So after any stop or failure, running the same command again continues where the set stopped.
#
# It stops at the first config that fails, naming it and its exit status, and exits with that status.
# Stopping it: SIGINT (Ctrl-C), SIGTERM or SIGUSR1 to this script is forwarded to mpirun as SIGUSR1 (the one stop
# signal every mpirun passes on to the ranks). The run finishes its round, writes a checkpoint and exits 75; this
# script then exits 75 and prints the command that continues. A second signal stops sooner: the run checkpoints
# the last completed round. mpirun runs in its own process group, so Ctrl-C at the terminal reaches only this
# script, and the ranks get the stop request instead of an interrupt. (Started in the background by another
# script, bash ignores SIGINT for good: stop it with `kill -USR1 PID` or `kill PID` there.)
#
# Exit status: 0 every config complete; 75 stopped on request (checkpointed; run the same command again);
# 2 bad arguments; else the status of the config that failed (124: a rank stopped making progress, the last
# completed round is checkpointed; 2: a config error).
#
# Environment (defaults in brackets):
#   VENV         [<checkout>/.venv]  its python is the default PYTHON
#   PYTHON       [$VENV/bin/python, else python3 on PATH]  the interpreter of every rank
#   MPIRUN       [the mpirun beside $PYTHON (the mpich wheel's), else mpirun on PATH]
#   MPIRUN_ARGS  []  more mpirun options. Open MPI: "--oversubscribe" for more ranks than cores, "--allow-run-as-root"
#                    as root (or their variables, docs/mpi.md; OMPI_MCA_mpi_yield_when_idle=1 when ranks share cores)
#   RESULTS      [results]  the directory of the results files (created)
#   OVERRIDES    []  "key.sub=value ..." added to every run, e.g. "data.dir=/data/fmnist"; keep them the same
#                    when continuing (a results file only continues under the config it was started with)
set -uo pipefail   # no -e: every exit status is handled below

EXIT_STOPPED=75    # fedmrn_mpi: stopped on request after writing a checkpoint
EXIT_ROUND_TIMEOUT=124   # fedmrn_mpi: a rank stopped making progress; the last completed round is checkpointed

say() { echo "[run_local $(date +%H:%M:%S)] $*"; }
die() { echo "run_local.sh: $*" >&2; exit 2; }
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

command_line=$(printf '%q ' "$0" "$@"); command_line=${command_line% }
nprocs=""
while [ $# -gt 0 ]; do
  case $1 in
    -n) [ $# -ge 2 ] || die "-n needs the number of ranks"; nprocs=$2; shift 2 ;;
    -n*) nprocs=${1#-n}; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (usage: jobs/run_local.sh -n P CONFIG...)" ;;
    *) break ;;
  esac
done
[ -n "$nprocs" ] || die "-n P is missing (usage: jobs/run_local.sh -n P CONFIG...)"
[[ $nprocs =~ ^[1-9][0-9]*$ ]] || die "-n takes a positive number of ranks, not '$nprocs'"
[ $# -gt 0 ] || die "no config given (usage: jobs/run_local.sh -n P CONFIG...)"
configs=("$@")

FEDMRN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$FEDMRN_DIR/.venv}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x "$VENV/bin/python" ]; then PYTHON=$VENV/bin/python; else PYTHON=$(command -v python3 || true); fi
fi
[ -n "$PYTHON" ] || die "no python found: set PYTHON or VENV"
MPIRUN=${MPIRUN:-}
if [ -z "$MPIRUN" ]; then
  # the launcher of the MPI that PYTHON's mpi4py uses: the mpich wheel puts its own beside the interpreter
  if [ -x "$(dirname "$PYTHON")/mpirun" ]; then MPIRUN=$(dirname "$PYTHON")/mpirun
  else MPIRUN=$(command -v mpirun || true); fi
fi
[ -n "$MPIRUN" ] || die "no mpirun found: set MPIRUN"
MPIRUN_ARGS=${MPIRUN_ARGS:-}
RESULTS=${RESULTS:-results}
OVERRIDES=${OVERRIDES:-}

stem_of() { local s=${1##*/}; s=${s%.yaml}; echo "${s%.yml}"; }
# every config readable, and no two with the same stem (they would write the same results file)
for ((i = 0; i < ${#configs[@]}; i++)); do
  cfg=${configs[$i]}
  { [ -f "$cfg" ] && [ -r "$cfg" ]; } || die "no config file '$cfg'"
  for ((j = 0; j < i; j++)); do
    [ "$(stem_of "${configs[$j]}")" != "$(stem_of "$cfg")" ] ||
      die "'${configs[$j]}' and '$cfg' would both write $RESULTS/$(stem_of "$cfg").h5"
  done
done
mkdir -p "$RESULTS" || die "cannot create the results directory '$RESULTS'"

mpirun_pid=""
got=""
# shellcheck disable=SC2317  # called from the traps below
forward() {   # a stop request: pass it to the running mpirun as SIGUSR1, and start no further config
  got="$got $1"
  if [ -n "$mpirun_pid" ]; then   # the signal first: a Ctrl-C may also have ended a `| tee` this prints to
    kill -s USR1 "$mpirun_pid" 2>/dev/null || true
    say "got SIG$1: asked the run to stop with a checkpoint (SIGUSR1 to mpirun, pid $mpirun_pid)"
  else
    say "got SIG$1: stopping before the next config"
  fi
}
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward USR1' USR1

# A results file that is neither complete nor has a checkpoint beside it (the run was killed before its first
# checkpoint) cannot be resumed: --resume refuses to overwrite it. Move it aside, never delete it, and start over.
set_aside_unresumable() {   # $1: the results file
  local out=$1 ckdir=${1%.h5}.ckpt aside
  [ -e "$out" ] || return 0
  compgen -G "$ckdir/*.pt" >/dev/null && return 0
  "$PYTHON" -c 'import sys, h5py; f = h5py.File(sys.argv[1], "r"); sys.exit(0 if "final_model_sha256" in f.attrs else 3)' \
    "$out" 2>/dev/null && return 0
  aside="$out.unresumable-$(date +%Y%m%d-%H%M%S)"
  mv "$out" "$aside" || die "cannot move the unresumable $out aside"
  say "  $out was unfinished and has no checkpoint (killed before its first one): moved to $aside; starting over"
}

stopped() {   # $1: the exit status; says how to continue, then exits with it
  say "stopped: $done_count of $total configs complete. Continue with the same command:"
  say "  ${OVERRIDES:+OVERRIDES='$OVERRIDES' }RESULTS=$RESULTS $command_line"
  exit "$1"
}

total=${#configs[@]}
done_count=0
for cfg in "${configs[@]}"; do
  [ -z "$got" ] || stopped "$EXIT_STOPPED"   # a stop request between two configs
  out=$RESULTS/$(stem_of "$cfg").h5
  set_aside_unresumable "$out"
  # shellcheck disable=SC2206  # OVERRIDES and MPIRUN_ARGS are lists of words on purpose
  cmd=("$MPIRUN" -n "$nprocs" $MPIRUN_ARGS "$PYTHON" -m fedmrn_mpi run -c "$cfg" -o "$out" --resume $OVERRIDES)
  say "[$((done_count + 1))/$total] $cfg -> $out"
  say "  ${cmd[*]}"
  t0=$SECONDS
  # in the background and in its own process group (set -m), so that this shell runs its traps while mpirun
  # runs and a Ctrl-C at the terminal does not reach the ranks; stdin from /dev/null (a background process
  # group must not read the terminal)
  set -m
  "${cmd[@]}" </dev/null &
  mpirun_pid=$!
  set +m
  # a signal caught during the start, before mpirun_pid was set: pass it on now
  if [ -n "$got" ]; then kill -s USR1 "$mpirun_pid" 2>/dev/null || true; fi
  # a trapped signal interrupts `wait` (status > 128): keep waiting until mpirun itself has exited
  while kill -0 "$mpirun_pid" 2>/dev/null; do wait "$mpirun_pid"; done
  wait "$mpirun_pid"; rc=$?
  mpirun_pid=""
  if [ "$rc" = 0 ]; then
    done_count=$((done_count + 1))
    say "[$done_count/$total] $cfg complete ($((SECONDS - t0)) s)"
    continue
  fi
  if [ "$rc" = "$EXIT_STOPPED" ] || [ -n "$got" ]; then   # on request: ours, or a signal sent to the ranks
    if [ "$rc" = "$EXIT_STOPPED" ]; then what="stopped with a checkpoint"
    else what="ended after the stop request without a new checkpoint"; fi
    say "$cfg $what (exit $rc)${got:+ (signals:$got)}"
    stopped "$rc"
  fi
  if [ "$rc" = "$EXIT_ROUND_TIMEOUT" ]; then
    say "FAILED: $cfg exited with status $rc: a rank stopped making progress (the last completed round is" \
        "checkpointed; the same command continues from it)"
  else
    say "FAILED: $cfg exited with status $rc"
  fi
  exit "$rc"
done
say "all $total configs complete; results in $RESULTS/"
exit 0
