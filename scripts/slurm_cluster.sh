#!/usr/bin/env bash
# A throwaway single-node Slurm cluster for tests: Debian's slurm-wlm and munge (`make slurm`),
# no systemd, no cgroups, everything (config, munge key and socket, state, spool, logs, pid files)
# under one directory.
#
#   scripts/slurm_cluster.sh start DIR    start munged, slurmctld and slurmd; wait until the node
#                                         is idle; print the client environment (also in DIR/env.sh)
#   scripts/slurm_cluster.sh stop DIR     cancel the cluster's jobs, stop its daemons (and the
#                                         slurmstepd of any job still running); only processes
#                                         started for DIR are ever signalled
#   scripts/slurm_cluster.sh status DIR   exit 0 when all three daemons of DIR are running
#
# Clients: `source DIR/env.sh` (it sets SLURM_CONF=DIR/slurm.conf; slurm.conf's AuthInfo names the
# munge socket under DIR, so sbatch/squeue/scontrol/scancel/srun need nothing else).
# Environment knobs: SLURM_TEST_CPUS (CPUs of the node, default: nproc; more than nproc
# oversubscribes), SLURM_TEST_TIMEOUT (seconds to wait for the node to be idle, default 60).
set -euo pipefail

PROG=$(basename "$0")
MARK=MG3D_SLURM_CLUSTER_DIR # set in the daemons' environment

die() { echo "$PROG: error: $*" >&2; exit 1; }
note() { echo "$PROG: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

need_tools() {
  local t missing=()
  for t in munged slurmctld slurmd sinfo squeue scancel scontrol; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: run \`make slurm\` (Debian's slurm-wlm and munge)"
}

# ---- processes ---------------------------------------------------------------------------------

# Does pid $1 belong to the cluster in $DIR? Its command line names a path under DIR (the daemons
# are started with -f DIR/slurm.conf or --socket=DIR/munge.sock), or its environment carries the
# marker they are started with. Guards against pid reuse and other clusters or system daemons.
ours() {
  local pid=$1
  [[ $pid =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || return 1
  if { tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$DIR/"; then return 0; fi
  { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF -- "$MARK=$DIR"
}

# The pid recorded in pid file $1 when that process is alive and ours, else nothing.
pid_of() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(tr -dc '0-9' <"$f")
  if ours "$pid"; then echo "$pid"; fi
}

# Is pid $1 a slurmstepd of this cluster? slurmstepd wipes its environment and command line
# (setproctitle), but it runs in the directory of SlurmdLogFile (DIR/log) and holds that log open.
our_stepd() {
  local pid=$1 exe cwd fd
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  case ${exe##*/} in slurmstepd*) ;; *) return 1 ;; esac
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || cwd=""
  case $cwd/ in "$DIR"/*) return 0 ;; esac
  for fd in /proc/"$pid"/fd/*; do
    case $(readlink "$fd" 2>/dev/null) in "$DIR"/*) return 0 ;; esac
  done 2>/dev/null
  return 1
}

# This cluster's slurmstepd processes (which slurmd reparents to init, so they outlive it when
# slurmd is killed) and all their descendants (the jobs' processes); also anything carrying the
# marker that the daemons were started with.
stray_pids() {
  local p roots=() all=() ppid
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    if our_stepd "$p" || { tr '\0' '\n' <"/proc/$p/environ"; } 2>/dev/null | grep -qxF -- "$MARK=$DIR"; then
      roots+=("$p")
    fi
  done
  ((${#roots[@]})) || return 0
  # descendants, breadth first, from one scan of /proc/*/stat ("pid (comm) state ppid ...")
  declare -A kids=()
  while read -r p ppid; do
    kids[$ppid]+="$p "
  done < <(awk '{ pid = $1; sub(/^.*\) /, ""); print pid, $2 }' /proc/[0-9]*/stat 2>/dev/null || true)
  all=("${roots[@]}")
  local i=0
  while ((i < ${#all[@]})); do
    for p in ${kids[${all[$i]}]:-}; do all+=("$p"); done
    i=$((i + 1))
  done
  for p in "${all[@]}"; do [ "$p" != "$$" ] && echo "$p"; done | sort -un
}

# Signal pids ($2...) with TERM, wait up to $1 seconds, then KILL what is left; returns when all
# are gone (or after another 5 s).
terminate() {
  local wait_s=$1 p left t
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((t = 0; t < wait_s * 10; t++)); do
    left=()
    for p in "$@"; do [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null && left+=("$p"); done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  note "still running after ${wait_s}s, sending KILL to ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
  for ((t = 0; t < 50; t++)); do
    left=()
    for p in "$@"; do [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null && left+=("$p"); done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  note "warning: ${left[*]} did not exit"
}

# ---- start -------------------------------------------------------------------------------------

port_free() {
  local p=$1
  if command -v ss >/dev/null; then
    [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]
  else
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 1; fi
  fi
}

# Two distinct free TCP ports from 20000-31999 (below Linux's ephemeral range, away from Slurm's
# defaults 6817/6818 that a system cluster would use).
pick_ports() {
  local a b n=0
  while :; do
    a=$((20000 + RANDOM % 12000)); b=$((a + 1))
    port_free "$a" && port_free "$b" && break
    ((++n < 200)) || die "found no two free TCP ports in 20000-31999"
  done
  echo "$a $b"
}

log_tails() {
  local f
  for f in "$DIR"/log/*.log "$DIR"/log/*.stderr; do
    [ -s "$f" ] || continue
    [ "$f" = "$DIR/log/jobcomp.log" ] && continue
    echo "----- $f (last 25 lines)" >&2
    tail -n 25 "$f" >&2
  done
}

fail_start() {
  echo "$PROG: error: $*" >&2
  log_tails
  echo "$PROG: stopping what was started under $DIR" >&2
  do_stop >/dev/null 2>&1 || true
  exit 1
}

write_conf() {
  local host=$1 ctld_port=$2 slurmd_port=$3 cpus mem_mb topo=""
  cpus=${SLURM_TEST_CPUS:-$(nproc)}
  # A bit under the real memory (slurmd drains a node that has less than it is configured with).
  mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
  [ "${mem_mb:-0}" -gt 0 ] || mem_mb=1024
  # The real topology when the CPU count is the real one, so that CR_Core counts cores right.
  if [ "$cpus" = "$(nproc)" ]; then
    topo=$(slurmd -C 2>/dev/null | head -1 | grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' || true)
    # Hyperthreads would make CR_Core hand out a whole core per 1-CPU task: use flat topology then.
    case $topo in *ThreadsPerCore=1) ;; *) topo="" ;; esac
  fi
  cat >"$DIR/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: a single-node test cluster, everything under $DIR.
ClusterName=mg3dtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.sock
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd, no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# finished jobs' end state and exit code stay readable here after slurmctld forgets them (MinJobAge)
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MinJobAge=300
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
# slurmd reports the configured CPUs and memory, not what it detects (no drain on a mismatch)
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus${topo:+ $topo} RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# Is DIR/munge.sock bound by a live process? (/proc/net/unix lists bound sockets by path)
sock_bound() { awk -v s="$DIR/munge.sock" '$NF == s { f = 1 } END { exit !f }' /proc/net/unix 2>/dev/null; }

node_state() { SLURM_CONF="$DIR/slurm.conf" sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -1; }

do_start() {
  need_tools
  [[ ${SLURM_TEST_CPUS:-1} =~ ^[1-9][0-9]*$ ]] || die "SLURM_TEST_CPUS must be a positive integer, not '$SLURM_TEST_CPUS'"
  [[ ${SLURM_TEST_TIMEOUT:-1} =~ ^[1-9][0-9]*$ ]] || die "SLURM_TEST_TIMEOUT must be a positive integer, not '$SLURM_TEST_TIMEOUT'"
  mkdir -p "$DIR" || die "cannot create $DIR"
  DIR=$(cd "$DIR" && pwd -P)
  local sock="$DIR/munge.sock" host ctld_port slurmd_port t state timeout
  ((${#sock} < 100)) || die "$DIR is too long a path for a unix socket (${#sock} > 100 bytes); use a shorter DIR"
  host=$(hostname -s 2>/dev/null || hostname)
  host=${host%%.*}
  [ -n "$host" ] || die "no hostname"

  # Already running (second start): keep it, when it is whole and answers.
  local m c d
  m=$(pid_of "$DIR/run/munged.pid"); c=$(pid_of "$DIR/run/slurmctld.pid"); d=$(pid_of "$DIR/run/slurmd.pid")
  if [ -n "$m" ] && [ -n "$c" ] && [ -n "$d" ] && [ -f "$DIR/env.sh" ] &&
    [[ "$(node_state "$host")" =~ ^(idle|mixed|allocated) ]]; then
    note "already running under $DIR (munged $m, slurmctld $c, slurmd $d)"
    cat "$DIR/env.sh"
    return 0
  fi
  # Leftovers of a killed or half-started run: stop what is ours, drop stale pid files and sockets.
  if [ -n "$m$c$d" ] || [ -n "$(stray_pids)" ]; then
    note "stopping the leftovers of an earlier run under $DIR"
    do_stop >/dev/null
  fi
  sock_bound && die "$sock is bound by a process that is not this cluster's munged (another munged in $DIR?)"
  rm -f "$DIR"/run/*.pid "$DIR/env.sh"
  # Cold start: a previous run's jobs are not recovered.
  rm -rf "$DIR/state" "$DIR"/spool/*
  mkdir -p "$DIR/state" "$DIR/spool/slurmd" "$DIR/log" "$DIR/run"
  # The previous run's logs are kept once, as *.prev; fail_start shows the current ones.
  local f
  for f in "$DIR"/log/*.log "$DIR"/log/*.stderr; do [ -f "$f" ] && mv -f "$f" "$f.prev"; done
  # munged wants its socket's directory writable by its owner only and searchable by all
  chmod 755 "$DIR"

  read -r ctld_port slurmd_port < <(pick_ports)
  write_conf "$host" "$ctld_port" "$slurmd_port"
  : >"$DIR/log/jobcomp.log"

  # munged: its own key, socket, pid, log and seed files; never /etc/munge or the system socket.
  if [ ! -s "$DIR/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none)
  fi
  chmod 400 "$DIR/munge.key"
  # munged also wants every directory above its socket searchable by all (mktemp -d makes 0700
  # ones): --force turns that check into a warning (then only root can use this cluster).
  local force=() up=$DIR
  while up=$(dirname "$up"); [ "$up" != / ]; do
    if [ "$(($(stat -c '%#a' "$up") & 1))" = 0 ]; then
      note "$up is not searchable by others: munged runs with --force, only root can use this cluster"
      force=(--force)
      break
    fi
  done
  env "$MARK=$DIR" munged "${force[@]}" --key-file="$DIR/munge.key" --socket="$sock" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge.seed" --num-threads=2 >"$DIR/log/munged.stderr" 2>&1 ||
    fail_start "munged did not start"
  for ((t = 0; t < 50; t++)); do [ -S "$sock" ] && [ -n "$(pid_of "$DIR/run/munged.pid")" ] && break; sleep 0.1; done
  [ -S "$sock" ] || fail_start "munged did not create $sock"

  # -c: cold start (no state recovered); -i: ignore state errors. Both daemonize, pid files in run/.
  env "$MARK=$DIR" slurmctld -c -i -f "$DIR/slurm.conf" >"$DIR/log/slurmctld.stderr" 2>&1 ||
    fail_start "slurmctld did not start"
  env "$MARK=$DIR" slurmd -f "$DIR/slurm.conf" -N "$host" >"$DIR/log/slurmd.stderr" 2>&1 ||
    fail_start "slurmd did not start"

  timeout=${SLURM_TEST_TIMEOUT:-60}
  state=""
  local t0=$SECONDS
  while ((SECONDS - t0 < timeout)); do
    if ((SECONDS - t0 >= 3)); then # each daemon has had time to write its pid file
      [ -n "$(pid_of "$DIR/run/slurmctld.pid")" ] || fail_start "slurmctld exited"
      [ -n "$(pid_of "$DIR/run/slurmd.pid")" ] || fail_start "slurmd exited"
    fi
    state=$(node_state "$host")
    case $state in idle*) break ;; esac
    sleep 0.2
  done
  case $state in idle*) ;; *) fail_start "node $host is not idle after ${timeout}s (state: '${state:-no answer}')" ;; esac

  cat >"$DIR/env.sh" <<EOF
export SLURM_CONF=$DIR/slurm.conf
export MG3D_SLURM_DIR=$DIR
EOF
  note "cluster mg3dtest up under $DIR: node $host ($(grep -o 'CPUs=[0-9]*' "$DIR/slurm.conf")), partition debug, slurmctld port $ctld_port, slurmd port $slurmd_port"
  cat "$DIR/env.sh"
}

# ---- stop --------------------------------------------------------------------------------------

do_stop() {
  [ -d "$DIR" ] || { note "nothing to stop: $DIR does not exist"; return 0; }
  DIR=$(cd "$DIR" && pwd -P)
  local m c d ids stray t
  m=$(pid_of "$DIR/run/munged.pid"); c=$(pid_of "$DIR/run/slurmctld.pid"); d=$(pid_of "$DIR/run/slurmd.pid")

  # Cancel the jobs first, while slurmctld, slurmd and munged still run, so that slurmd ends them.
  if [ -n "$c" ] && [ -n "$m" ] && [ -f "$DIR/slurm.conf" ]; then
    ids=$(SLURM_CONF="$DIR/slurm.conf" timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${ids// /}" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF="$DIR/slurm.conf" timeout 10 scancel $ids 2>/dev/null || true
      t=$SECONDS # KillWait=5: a job that ignores SIGTERM is killed after 5 s
      while ((SECONDS - t < 15)); do
        [ -z "$(SLURM_CONF="$DIR/slurm.conf" timeout 5 squeue -h -o '%A' 2>/dev/null || true)" ] && break
        sleep 0.1
      done
    fi
  fi

  # slurmd first (no new steps), then slurmctld, then munged (both need it while stopping).
  # shellcheck disable=SC2086
  terminate 10 $d
  # shellcheck disable=SC2086
  terminate 10 $c
  # shellcheck disable=SC2086
  terminate 5 $m
  # slurmstepd of steps that outlived slurmd, and their jobs' processes.
  stray=$(stray_pids | tr '\n' ' ')
  if [ -n "${stray// /}" ]; then
    note "ending leftover step processes: $stray"
    # shellcheck disable=SC2086
    terminate 2 $stray
  fi
  rm -f "$DIR"/run/*.pid
  sock_bound || rm -f "$DIR/munge.sock" "$DIR/munge.sock.lock"
  if [ -n "$m$c$d" ]; then
    note "stopped the cluster under $DIR${c:+ (slurmctld $c)}${d:+ (slurmd $d)}${m:+ (munged $m)}"
  else
    note "no daemon of $DIR was running"
  fi
}

do_status() {
  DIR=$(cd "$DIR" 2>/dev/null && pwd -P) || die "$DIR does not exist"
  local name pid rc=0
  for name in munged slurmctld slurmd; do
    pid=$(pid_of "$DIR/run/$name.pid")
    if [ -n "$pid" ]; then echo "$name running ($pid)"; else echo "$name not running"; rc=1; fi
  done
  return $rc
}

(($# == 2)) || usage
DIR=$2
[ -n "$DIR" ] || usage
case $1 in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
