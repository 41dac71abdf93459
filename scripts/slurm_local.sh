#!/usr/bin/env bash
# slurm_local.sh - a REAL Slurm cluster on this one machine (munged + slurmctld + slurmd from Debian's
# packages, started as plain background daemons: no systemd), to try and test jobs/*.sbatch.
# One node by default. FEDMRN_SLURM_NODES=N (N > 1) runs one slurmd per node name on this host (node1 ...
# nodeN, each on its own port), so multi-node jobs (srun across nodes, mpirun's Slurm launcher) really run.
# Every node also declares fake GPUs (GRES gpu on dummy device nodes under $FEDMRN_SLURM_DIR/gpu), so job
# scripts that ask for GPUs are scheduled as written; there is no real GPU: run CPU configs (device=cpu).
# Needs root (SlurmUser=root, SlurmdUser=root) and Debian/Ubuntu packages. The measured facts behind the
# settings: /work/shared/notes/slurm-local.md (cred_expire, bf_interval, config_overrides, ...).
#
# Usage: scripts/slurm_local.sh COMMAND
#   install               apt-get install what is missing: slurmctld slurmd slurm-client munge libpmix-dev
#                         (libpmix-dev: slurm's mpi/pmix plugin dlopens .../pmix2/lib/libpmix.so, which only
#                         the -dev package ships; without it every srun under MpiDefault=pmix fails), plus
#                         $FEDMRN_SLURM_EXTRA_PKGS (e.g. "openmpi-bin" to run Open MPI programs with srun)
#   up                    install if needed, write the config, start the daemons that are not running and
#                         wait until every node is idle; idempotent. Prints on stdout what clients need:
#                             export SLURM_CONF=$FEDMRN_SLURM_DIR/slurm.conf
#   down                  cancel this cluster's jobs, stop slurmd(s), slurmctld, munged (by their pid files),
#                         then end leftover processes of this cluster's jobs (slurmstepd, tasks) by pid
#   status                pids, sinfo, squeue and the export line; exit 1 when slurmctld is not running
#   wait JOBID [TIMEOUT]  poll `scontrol show job` every 0.2 s until the job (every task of an array) is
#                         finished (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...; a requeued job is followed through
#                         its restarts); prints "JOBID STATE EXITCODE" per job/task. Exit 0 when all COMPLETED,
#                         1 when not, 124 when TIMEOUT seconds (default 600) passed first.
#   env                   print the export line
#
# Environment (all optional):
#   FEDMRN_SLURM_DIR        all state: config, munge key and socket, spool, logs (default /tmp/fedmrn-slurm)
#   FEDMRN_SLURM_NODES      number of nodes (default 1, named `hostname -s`; N > 1: node1..nodeN)
#   FEDMRN_SLURM_CPUS       CPUs each node claims (default 16; more than the cores is fine: config_overrides)
#   FEDMRN_SLURM_GPUS       fake GPUs each node claims (default 4; 0 = no GRES)
#   FEDMRN_SLURM_MEM        RealMemory in MB per node (default 90% of MemTotal / nodes)
#   FEDMRN_SLURMCTLD_PORT   (default 6817)
#   FEDMRN_SLURMD_PORT      first slurmd port; node i uses FEDMRN_SLURMD_PORT+i-1 (default 6818)
#   FEDMRN_SLURM_NO_INSTALL=1   never run apt-get (fail when a package is missing)
#   FEDMRN_SLURM_EXTRA_PKGS     more packages for `install`
# Clients (sbatch, srun, squeue, scontrol, scancel, sinfo) need SLURM_CONF exported: no /etc/slurm/slurm.conf
# is written, on purpose. Jobs get SLURM_CONF from slurmd.
set -euo pipefail

D=${FEDMRN_SLURM_DIR:-/tmp/fedmrn-slurm}
case $D in /*) ;; *) D=$PWD/$D ;; esac
NODES=${FEDMRN_SLURM_NODES:-1}
CPUS=${FEDMRN_SLURM_CPUS:-16}
GPUS=${FEDMRN_SLURM_GPUS:-4}
CTLD_PORT=${FEDMRN_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${FEDMRN_SLURMD_PORT:-6818}
H=$(hostname -s)   # slurmctld only starts when SlurmctldHost equals `hostname -s`
if [ "$NODES" -gt 1 ]; then NODE_NAMES=$(seq -f 'node%g' 1 "$NODES"); NODELIST="node[1-$NODES]"
else NODES=1; NODE_NAMES=$H; NODELIST=$H; fi
PKGS="slurmctld slurmd slurm-client munge libpmix-dev ${FEDMRN_SLURM_EXTRA_PKGS:-}"
export SLURM_CONF=$D/slurm.conf
MSOCK=$D/munge/munge.socket.2
# a job is finished when its state is none of these
ACTIVE_STATES="PENDING RUNNING CONFIGURING COMPLETING SUSPENDED REQUEUED REQUEUE_FED RESIZING SIGNALING STAGE_OUT"

log() { echo "[slurm_local] $*" >&2; }
die() { echo "[slurm_local] ERROR: $*" >&2; exit 1; }
# pid file -> a live munged/slurmctld/slurmd? (checks the name: never acts on a reused pid)
alive() { [ -s "$1" ] && grep -qxE 'munged|slurmctld|slurmd' "/proc/$(cat "$1")/comm" 2>/dev/null; }
port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root (the local cluster runs with SlurmUser=root)"; }

missing_pkgs() {
  local p m=""
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || m="$m $p"
  done
  echo "$m"
}

do_install() {
  local missing; missing=$(missing_pkgs)
  [ -z "${missing// /}" ] && return 0
  [ "${FEDMRN_SLURM_NO_INSTALL:-0}" = 1 ] && die "packages missing:$missing (FEDMRN_SLURM_NO_INSTALL=1)"
  need_root
  command -v apt-get >/dev/null || die "no apt-get: install$missing with your package manager"
  log "installing:$missing"
  # The packages' postinst scripts would start the daemons through invoke-rc.d; a policy-rc.d that exits
  # 101 forbids that. Add one for the install only, when the machine has none.
  local tmp_policy=0 rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; tmp_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null || rc=$?
  }
  [ $tmp_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get install$missing failed"
  missing=$(missing_pkgs)
  [ -z "${missing// /}" ] || die "still missing after apt-get install:$missing"
  log "installed"
}

write_conf() {
  mkdir -p "$D/ctld" "$D/log" "$D/munge"
  local n; for n in $NODE_NAMES; do mkdir -p "$D/spool/$n"; done   # must exist before slurmd starts
  local mem; mem=${FEDMRN_SLURM_MEM:-$(awk -v n="$NODES" '/MemTotal/ {printf "%d", $2/1024*0.9/n}' /proc/meminfo)}
  local gres="" grestypes="" port="Port=$SLURMD_PORT"
  if [ "$GPUS" -gt 0 ]; then gres=" Gres=gpu:$GPUS"; grestypes="GresTypes=gpu"; fi
  [ "$NODES" -gt 1 ] && port="Port=[$SLURMD_PORT-$((SLURMD_PORT + NODES - 1))]"
  local new=$D/slurm.conf.new
  cat > "$new" <<CONF
# generated by fedmrn_mpi scripts/slurm_local.sh: $NODES node(s) on localhost, root, no cgroups, no accounting
ClusterName=fedmrn-local
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
CredType=cred/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again;
# read at slurmctld start only
AuthInfo=socket=$MSOCK,cred_expire=10
StateSaveLocation=$D/ctld
# %n = node name: one slurmd per node name on this host
SlurmdSpoolDir=$D/spool/%n
SlurmdPidFile=$D/slurmd-%n.pid
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldPidFile=$D/slurmctld.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: /proc process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# react fast: no batch delay, main loop every 2 s, backfill every 1 s (defaults 60 s / 30 s)
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# trust CPUs= below although the machine has fewer cores
SlurmdParameters=config_overrides
# plain 'srun prog' uses PMIx (Open MPI, MPICH built with PMIx); MPICH without PMIx: srun --mpi=pmi2
MpiDefault=pmix
ReturnToService=2
JobRequeue=1
# reject, rather than keep pending forever, jobs that ask for more than the nodes have
EnforcePartLimits=ALL
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
Waittime=0
MailProg=/bin/true
$grestypes
NodeName=$NODELIST NodeAddr=127.0.0.1 NodeHostname=$H $port CPUs=$CPUS RealMemory=$mem$gres State=UNKNOWN
PartitionName=debug Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  # Fake GPUs: slurmd counts a gpu only with a File= that is a device node (Count= alone reports 0 and the
  # node goes INVAL), so make character devices with NVIDIA's major number that nothing ever opens
  # (a regular file also counts, with an error line per GPU in the log).
  if [ "$GPUS" -gt 0 ]; then
    mkdir -p "$D/gpu"
    local g
    for g in $(seq 0 $((GPUS - 1))); do
      [ -e "$D/gpu/nvidia$g" ] || mknod -m 600 "$D/gpu/nvidia$g" c 195 "$g" 2>/dev/null || touch "$D/gpu/nvidia$g"
    done
    echo "NodeName=$NODELIST Name=gpu File=$D/gpu/nvidia[0-$((GPUS - 1))]" > "$D/gres.conf"
  else
    rm -f "$D/gres.conf"
  fi
  if [ -f "$D/slurm.conf" ] && cmp -s "$new" "$D/slurm.conf"; then rm -f "$new"; return 0; fi
  mv "$new" "$D/slurm.conf"
  if alive "$D/slurmctld.pid"; then
    log "slurm.conf changed: scontrol reconfigure (nodes, ports, host or cred_expire changes need down + up)"
    scontrol reconfigure || true
  fi
}

start_munge() {
  # own key and socket under $D; the socket directory must be mode 0755 or munged refuses
  chmod 755 "$D" "$D/munge"
  if [ ! -s "$D/munge/munge.key" ]; then
    dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 2>/dev/null
    chmod 400 "$D/munge/munge.key"
  fi
  alive "$D/munge/munged.pid" && return 0
  # --origin: no "Failed to lookup origin" when the hostname does not resolve
  munged --force --origin=127.0.0.1 --key-file="$D/munge/munge.key" --socket="$MSOCK" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
  local i
  for i in $(seq 100); do
    munge -S "$MSOCK" -n 2>/dev/null | unmunge -S "$MSOCK" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged did not come up; see $D/munge/munged.log"
}

start_ctld() {
  alive "$D/slurmctld.pid" && return 0
  port_busy "$CTLD_PORT" && die "port $CTLD_PORT is in use by another process (set FEDMRN_SLURMCTLD_PORT)"
  slurmctld   # daemonizes; pid in $D/slurmctld.pid
  local i
  for i in $(seq 150); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
    sleep 0.1
  done
  die "slurmctld did not come up; see $D/log/slurmctld.log"
}

start_slurmd() {
  local n i=0 port st="" ok
  for n in $NODE_NAMES; do
    port=$((SLURMD_PORT + i)); i=$((i + 1))
    alive "$D/slurmd-$n.pid" && continue
    port_busy "$port" && die "port $port is in use by another process (set FEDMRN_SLURMD_PORT)"
    slurmd -N "$n"   # daemonizes; pid in $D/slurmd-$n.pid
  done
  for i in $(seq 200); do
    ok=1
    for n in $NODE_NAMES; do
      st=$(sinfo -h -n "$n" -o %T 2>/dev/null || true)
      case $st in
        idle|mixed|allocated|completing) ;;
        *drain*|down*|fail*) ok=0; scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
        *) ok=0 ;;
      esac
    done
    [ $ok = 1 ] && return 0
    sleep 0.2
  done
  die "nodes $NODELIST not idle (last state '$st'); see $D/log/slurmd-*.log"
}

pid_files() {   # munged, slurmctld, the slurmd(s)
  echo "$D/munge/munged.pid"
  echo "$D/slurmctld.pid"
  local f; for f in "$D"/slurmd-*.pid; do [ -e "$f" ] && echo "$f"; done
  return 0
}

pids() {
  local f
  for f in $(pid_files); do alive "$f" && printf '%s ' "$(cat "$f")"; done
  return 0
}

print_env() { echo "export SLURM_CONF=$D/slurm.conf"; }

do_up() {
  need_root
  local t0=$SECONDS
  do_install
  write_conf
  start_munge
  start_ctld
  start_slurmd
  log "cluster up in $((SECONDS - t0)) s: nodes $NODELIST ($CPUS CPUs, $GPUS GPUs each), partition debug, state in $D, pids $(pids)"
  print_env
}

# Processes left by this cluster's jobs: slurmstepd and job tasks carry SLURM_CONF=$D/slurm.conf in their
# environment (slurmd's and the job's); job tasks also carry SLURM_JOB_ID. Nothing else is touched.
leftover_pids() {
  local p env comm
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = $$ ] && continue
    env=$( { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null) || continue
    grep -qxF "SLURM_CONF=$D/slurm.conf" <<<"$env" || continue
    comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
    if [ "$comm" = slurmstepd ] || grep -q '^SLURM_JOB_ID=' <<<"$env"; then echo "$p"; fi
  done
  return 0
}

stop_pid() {   # PID NAME
  local p=$1 i
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null
  log "stopped $2 (pid $p)"
}

do_down() {
  local i f p left
  if alive "$D/slurmctld.pid"; then
    local jobs; jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      scancel $jobs 2>/dev/null || true
      for i in $(seq 75); do squeue -h 2>/dev/null | grep -q . || break; sleep 0.2; done
    fi
  fi
  for f in $(pid_files | tac); do   # slurmd(s), then slurmctld, then munged
    alive "$f" && stop_pid "$(cat "$f")" "$(basename "$f" .pid)"
  done
  left=$(leftover_pids)
  if [ -n "$left" ]; then
    for p in $left; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in $left; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    log "ended leftover job processes: $(echo $left)"
  fi
  log "down (state and logs kept in $D)"
}

do_status() {
  echo "state dir: $D"
  echo "pids: $(pids)"
  alive "$D/slurmctld.pid" || { echo "slurmctld not running"; return 1; }
  sinfo; squeue; print_env
}

do_wait() {
  local id=${1:?usage: slurm_local.sh wait JOBID [TIMEOUT]} timeout=${2:-600}
  local t0=$SECONDS out states="" line st ec jid all_done ok
  while :; do
    if ! out=$(scontrol show job -o "$id" 2>&1); then
      if grep -qi 'invalid job id' <<<"$out"; then echo "$id UNKNOWN -"; log "job $id is unknown (or purged)"; return 1; fi
      log "scontrol: $out (retrying)"
    else
      all_done=1; ok=1; states=""
      while IFS= read -r line; do
        [ -z "$line" ] && continue
        st=$(sed -n 's/.* JobState=\([A-Z_]*\).*/\1/p' <<<"$line")
        jid=$(sed -n 's/^JobId=\([0-9]*\).*/\1/p' <<<"$line")
        if grep -q ' ArrayTaskId=' <<<"$line"; then
          jid="$(sed -n 's/.* ArrayJobId=\([0-9]*\).*/\1/p' <<<"$line")_$(sed -n 's/.* ArrayTaskId=\([^ ]*\).*/\1/p' <<<"$line")"
        fi
        ec=$(sed -n 's/.* ExitCode=\([0-9]*:[0-9]*\).*/\1/p' <<<"$line")
        states="$states$jid $st $ec"$'\n'
        case " $ACTIVE_STATES " in *" $st "*) all_done=0 ;; esac
        [ "$st" = COMPLETED ] || ok=0
      done <<<"$out"
      if [ $all_done = 1 ] && [ -n "$states" ]; then
        printf '%s' "$states"
        [ $ok = 1 ] && return 0
        return 1
      fi
    fi
    if [ $((SECONDS - t0)) -ge "$timeout" ]; then
      printf '%s' "$states"
      log "timeout: job $id not finished after $timeout s"
      return 124
    fi
    sleep 0.2
  done
}

case ${1:-} in
  install) do_install ;;
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  wait) shift; do_wait "$@" ;;
  env) print_env ;;
  *) echo "usage: $0 {install|up|down|status|wait JOBID [TIMEOUT]|env}" >&2; exit 2 ;;
esac
