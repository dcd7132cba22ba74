#!/usr/bin/env bash
# A one-node SLURM on this machine, for testing the workflow's SLURM profile for real.
#
#   scripts/slurm-local.sh start   install slurmctld/slurmd/munge if missing (Debian, root), write
#                                  /etc/slurm/slurm.conf for this machine (CPUs and memory read
#                                  now, one fake GPU), start munged, slurmctld and slurmd, and
#                                  wait until the node is idle
#   scripts/slurm-local.sh stop    cancel the jobs, end exactly the daemons `start` started (by
#                                  their pid files), then any process a job left behind; remove
#                                  the configuration `start` wrote
#   scripts/slurm-local.sh status  sinfo of the node
#   scripts/slurm-local.sh leftovers  pids of processes of this cluster's jobs still running
#   scripts/slurm-local.sh check   exit 4 (and say why) when this machine has a SLURM of its own,
#                                  which start would never touch
#
# No accounting database, so tell the SLURM profile to ask squeue for job states:
#   snakemake --workflow-profile profiles/slurm --slurm-status-command squeue \
#     --slurm-init-seconds-before-status-checks 2 --jobs 2 results/tables/table1.csv
# State, logs and pid files live in $SLURM_LOCAL_DIR (default /tmp/mega-slurm). The configuration
# must be /etc/slurm/slurm.conf: the jobstep plugin drops SLURM_CONF before its srun.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/mega-slurm}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf

say() { echo "slurm-local: $*"; }

install_packages() {
  local missing=()
  for p in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "cannot install ${missing[*]}: needs root and apt-get" >&2
    return 3
  fi
  say "installing ${missing[*]} (a few minutes)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

MARK="# Written by scripts/slurm-local.sh"

foreign_slurm() {  # prints why this machine's SLURM is not ours to replace, if it is not
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "$CONF exists and was not written by this script (a real SLURM?)"
  elif pgrep -x slurmctld >/dev/null && [ ! -f "$DIR/pids/started" ]; then
    echo "a slurmctld this script did not start is running"
  fi
}

write_config() {
  local cpus mem_mb
  cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it obeys OMP_NUM_THREADS
  # Leave 2 GB to the system; SLURM refuses jobs asking for more than RealMemory.
  mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))
  mkdir -p /etc/slurm "$DIR"/{state,spool,log,pids}
  cat > "$CONF" <<EOF
$MARK: a one-node test cluster on this machine.
ClusterName=megalocal
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# pgid: a cancelled job's whole process group is signalled (linuxproc let orphans escape).
ProctrackType=proctrack/pgid
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd.pid
SlurmdSpoolDir=$DIR/spool
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
InactiveLimit=0
KillWait=10
Waittime=0
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=500
EOF
  # A fake GPU, so that rules asking for one can be scheduled (File= is needed, or the node goes INVAL).
  cat > "$GRES_CONF" <<EOF
$MARK
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
EOF
}

start_daemon() {  # name, pid file, command...
  local name=$1 pidfile=$2
  shift 2
  "$@" > "$DIR/log/$name.out" 2>&1 &
  echo $! > "$pidfile"
}

start() {
  local foreign
  foreign=$(foreign_slurm)
  if [ -n "$foreign" ]; then
    say "refusing to start: $foreign" >&2
    return 4
  fi
  install_packages
  if [ -f "$DIR/pids/started" ]; then
    say "already started (run stop first)"
    return 0
  fi
  write_config
  install -d -o munge -g munge -m 755 /run/munge
  [ -f /etc/munge/munge.key ] || { say "no /etc/munge/munge.key (reinstall munge)" >&2; return 1; }
  start_daemon munged "$DIR/pids/munged.fg" runuser -u munge -- /usr/sbin/munged --foreground
  for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
  rm -rf "$DIR/state"/*
  start_daemon slurmctld "$DIR/pids/slurmctld.fg" /usr/sbin/slurmctld -D -i
  start_daemon slurmd "$DIR/pids/slurmd.fg" /usr/sbin/slurmd -D -N localhost
  touch "$DIR/pids/started"
  for _ in $(seq 300); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      say "node idle: $(sinfo -h -o '%P %a %D %T %N')"
      return 0
    fi
    sleep 0.2
  done
  say "the node did not become idle in 60 s; logs in $DIR/log" >&2
  sinfo -N -l >&2 || true
  return 1
}

job_processes() {  # pids of processes that belong to a job of this cluster (by their environment)
  local env
  for env in /proc/[0-9]*/environ; do
    { tr '\0' '\n' < "$env"; } 2>/dev/null | grep -qx "SLURM_CLUSTER_NAME=megalocal" && basename "$(dirname "$env")"
  done
  return 0
}

stop() {
  local pidfile pid left
  # Jobs first: cancelled while the daemons still run, so that SLURM ends their processes.
  if [ -f "$DIR/pids/started" ] && squeue -h -o %i 2>/dev/null | grep -q .; then
    scancel --partition=debug 2>/dev/null || true
    for _ in $(seq 150); do squeue -h -o %i 2>/dev/null | grep -q . || break; sleep 0.2; done
  fi
  for name in slurmd slurmctld munged; do
    pidfile="$DIR/pids/$name.fg"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  rm -f "$DIR/pids/started"
  # Anything of a job that outlived it (a process that left its process group).
  left=$(job_processes)
  if [ -n "$left" ]; then
    say "ending job processes left behind: $(echo $left)"
    kill -9 $left 2>/dev/null || true
  fi
  # The configuration goes with the daemons: left in place, it names a controller that is gone,
  # and every SLURM client waits ~9 s for it (snakemake's SLURM plugin asks `scontrol show
  # config` whenever it is imported, i.e. in every snakemake run on this machine).
  local conf
  for conf in "$CONF" "$GRES_CONF"; do
    if [ -f "$conf" ] && grep -qF "$MARK" "$conf"; then rm -f "$conf"; fi
  done
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  leftovers) job_processes ;;
  check) foreign=$(foreign_slurm); [ -z "$foreign" ] || { echo "$foreign"; exit 4; } ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
