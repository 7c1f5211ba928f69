#!/usr/bin/env bash
# Smoke test of scripts/slurm_cluster.sh: a real single-node Slurm cluster in a temporary
# directory runs
#   1. a job array (--array=0-2) whose tasks write SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT
#      to files, and a job with --dependency=afterok on that array that writes a marker: the three
#      files and the marker exist, the marker comes after the three, everything COMPLETED;
#   2. the same with one task that fails: the array task is FAILED with its exit code, the
#      dependent job never runs (pending, Reason=DependencyNeverSatisfied) and is cancelled here.
# The cluster is stopped on any exit. Prints the wall time of each phase; exits non-zero on the
# first failed check (the temporary directory, with the daemons' logs, is then kept).
# Knobs: SLURM_SMOKE_TIMEOUT (seconds to wait for jobs, default 60), SLURM_SMOKE_KEEP=1 (keep the
# temporary directory).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTER=$HERE/slurm_cluster.sh
TIMEOUT=${SLURM_SMOKE_TIMEOUT:-60}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mg3d-slurm-smoke.XXXXXX")
CDIR=$TMP/cluster
OUT=$TMP/out
mkdir -p "$OUT"
ok=0
cleanup() {
  local rc=$?
  "$CLUSTER" stop "$CDIR" >/dev/null 2>&1 || echo "slurm_smoke: warning: stopping the cluster failed" >&2
  if [ "$ok" != 1 ]; then
    echo "slurm_smoke: FAILED; kept $TMP (logs in $CDIR/log)" >&2
  elif [ -n "${SLURM_SMOKE_KEEP:-}" ]; then
    echo "slurm_smoke: kept $TMP (SLURM_SMOKE_KEEP)" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show() { local l; while IFS= read -r l; do echo "slurm_smoke:   $l"; done <<<"$1"; }
fail() { echo "slurm_smoke: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# Every record of job (or array) $1 as "ID STATE EXITCODE REASON", one a line, ID being
# ARRAYJOBID_TASKID for array tasks (slurmctld keeps finished jobs for MinJobAge seconds).
job_states() {
  scontrol show job -o "$1" 2>/dev/null | awk '{
    delete v
    for (i = 1; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v[k] = substr($i, length(k) + 2) }
    id = v["JobId"]; if (v["ArrayTaskId"] != "") id = v["ArrayJobId"] "_" v["ArrayTaskId"]
    print id, v["JobState"], v["ExitCode"], v["Reason"]
  }' | sort
}

# Wait until none of the jobs $@ (job ids or array job ids) is pending, running or completing.
wait_gone() {
  local t0 ids
  t0=$(now)
  ids=$(IFS=,; echo "$*")
  while [ -n "$(squeue -h -j "$ids" -o '%i' 2>/dev/null || true)" ]; do
    awk -v a="$t0" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }' &&
      fail "jobs $ids still queued after ${TIMEOUT}s: $(squeue -h -j "$ids" 2>&1 | tr '\n' ';')"
    sleep 0.2
  done
}

# ---- start
t=$(now)
"$CLUSTER" start "$CDIR" >"$TMP/env.out"
# shellcheck disable=SC1091
source "$CDIR/env.sh"
echo "slurm_smoke: cluster started in $(since "$t") s (SLURM_CONF=$SLURM_CONF)"

cat >"$TMP/task.sh" <<'EOF'
#!/bin/bash
# array task: "<id> <count> <start> <end>" in task-<id>; task FAIL_TASK exits 3
start=$(date +%s.%N)
sleep 1
if [ "${SLURM_ARRAY_TASK_ID}" = "${FAIL_TASK:-none}" ]; then exit 3; fi
echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $start $(date +%s.%N)" >"$OUT_DIR/task-$SLURM_ARRAY_TASK_ID"
EOF
chmod +x "$TMP/task.sh"

# ---- 1: array + afterok dependent job, all succeed
t=$(now)
mkdir -p "$OUT/ok"
arr=$(OUT_DIR=$OUT/ok sbatch --parsable --array=0-2 -o "$OUT/ok/slurm-%A_%a.out" "$TMP/task.sh")
dep=$(sbatch --parsable --dependency="afterok:$arr" -o "$OUT/ok/dep.out" \
  --wrap "date +%s.%N >'$OUT/ok/marker'")
echo "slurm_smoke: submitted array $arr and dependent job $dep"
wait_gone "$arr" "$dep"
for i in 0 1 2; do
  f=$OUT/ok/task-$i
  [ -s "$f" ] || fail "array task $i wrote no $f ($(cat "$OUT/ok/slurm-${arr}_$i.out" 2>/dev/null))"
  read -r id count _ _ <"$f"
  { [ "$id" = "$i" ] && [ "$count" = 3 ]; } || fail "$f says id=$id count=$count, wanted $i 3"
done
[ -s "$OUT/ok/marker" ] || fail "the dependent job wrote no marker ($(cat "$OUT/ok/dep.out" 2>/dev/null))"
last_end=$(awk '{ print $4 }' "$OUT"/ok/task-* | sort -g | tail -1)
awk -v m="$(cat "$OUT/ok/marker")" -v e="$last_end" 'BEGIN { exit !(m > e) }' ||
  fail "marker $(cat "$OUT/ok/marker") is not after the last task's end $last_end"
# at least two tasks overlapped in time (2 CPUs, 1 CPU each)
overlap=$(awk '{ s[NR] = $3; e[NR] = $4 } END { n = 0; for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++) if (s[i] < e[j] && s[j] < e[i]) n++; print n }' "$OUT"/ok/task-*)
states=$(job_states "$arr"; job_states "$dep")
show "$states"
[ "$(echo "$states" | grep -c ' COMPLETED 0:0 ')" = 4 ] || fail "not all 4 jobs COMPLETED with 0:0"
gap=$(awk -v m="$(cat "$OUT/ok/marker")" -v e="$last_end" 'BEGIN { printf "%.2f", m - e }')
echo "slurm_smoke: 1. array + afterok: ok in $(since "$t") s (overlapping task pairs: $overlap; dependent started ${gap} s after the last task)"
[ "$overlap" -ge 1 ] || fail "no two array tasks ran at the same time"

# ---- 2: a failing array task keeps the afterok job from running
t=$(now)
mkdir -p "$OUT/bad"
arr=$(OUT_DIR=$OUT/bad FAIL_TASK=1 sbatch --parsable --array=0-2 -o "$OUT/bad/slurm-%A_%a.out" "$TMP/task.sh")
dep=$(sbatch --parsable --dependency="afterok:$arr" -o "$OUT/bad/dep.out" \
  --wrap "date +%s.%N >'$OUT/bad/marker'")
echo "slurm_smoke: submitted array $arr (task 1 exits 3) and dependent job $dep"
wait_gone "$arr"
t1=$(now)
while :; do
  reason=$(job_states "$dep" | awk '{ print $2 "/" $4 }')
  [ "$reason" = "PENDING/DependencyNeverSatisfied" ] && break
  case $reason in PENDING/*) ;; *) fail "dependent job $dep is $reason, wanted PENDING/DependencyNeverSatisfied" ;; esac
  awk -v a="$t1" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }' &&
    fail "dependent job $dep still $reason after ${TIMEOUT}s"
  sleep 0.2
done
states=$(job_states "$arr")
show "$states"
[ "$(echo "$states" | grep -c ' COMPLETED 0:0 ')" = 2 ] || fail "tasks 0 and 2 should be COMPLETED 0:0"
[ "$(echo "$states" | grep -c ' FAILED 3:0 ')" = 1 ] || fail "task 1 should be FAILED 3:0"
{ [ -s "$OUT/bad/task-0" ] && [ -s "$OUT/bad/task-2" ] && [ ! -e "$OUT/bad/task-1" ]; } || fail "wrong task files in $OUT/bad"
echo "slurm_smoke:   $dep PENDING Reason=DependencyNeverSatisfied: cancelling it"
scancel "$dep"
wait_gone "$dep"
st=$(job_states "$dep")
echo "slurm_smoke:   $st"
case $st in "$dep CANCELLED "*) ;; *) fail "dependent job $dep is not CANCELLED: $st" ;; esac
[ ! -e "$OUT/bad/marker" ] || fail "the dependent job ran although a task failed"
echo "slurm_smoke: 2. failing task blocks afterok: ok in $(since "$t") s"

# ---- stop
t=$(now)
"$CLUSTER" stop "$CDIR" 2>/dev/null
echo "slurm_smoke: cluster stopped in $(since "$t") s"
ok=1
echo "slurm_smoke: 2 passed, 0 failed"
