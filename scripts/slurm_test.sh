#!/usr/bin/env bash
# The demo's stages on a real Slurm cluster (run by `make test`): starts a single-node cluster
# (scripts/slurm_cluster.sh) in a temporary directory, submits tests/pipelines/partitions.toml (the
# demo up to the shards, smaller) with `mg3d slurm --partitions 3 --submit` (ingest, preprocess,
# reports, entities, tokens and shards as job arrays of 3 with their merge jobs; synth, graph and
# curate as single jobs; chained by --dependency), waits for every job, requires each COMPLETED,
# compares every stage's output and the lockfile with a local unpartitioned run, byte for byte,
# and stops the cluster (only the processes it started). Prints the wall times.
#
#   scripts/slurm_test.sh [MG3D_BINARY]      (default target/debug/mg3d)
#
# Knobs: SLURM_TEST_JOB_TIMEOUT (seconds for all jobs, default 600), SLURM_TEST_KEEP=1 (keep the
# temporary directory).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MG3D=$(realpath "${1:-$ROOT/target/debug/mg3d}")
PIPELINE=$ROOT/tests/pipelines/partitions.toml
TIMEOUT=${SLURM_TEST_JOB_TIMEOUT:-600}
[ -x "$MG3D" ] || { echo "slurm_test: no mg3d binary at $MG3D (cargo build first)" >&2; exit 1; }

# A short path: the munge socket's path must stay under 100 bytes.
TMP=$(mktemp -d /tmp/mg3d-st.XXXXXX)
chmod 755 "$TMP"
CDIR=$TMP/c
ok=0
cleanup() {
  local rc=$?
  "$HERE/slurm_cluster.sh" stop "$CDIR" >/dev/null 2>&1 || echo "slurm_test: warning: stopping the cluster failed" >&2
  if [ "$ok" != 1 ]; then
    echo "slurm_test: FAILED; kept $TMP (job logs in $TMP/w/.slurm/logs, daemon logs in $CDIR/log)" >&2
  elif [ -n "${SLURM_TEST_KEEP:-}" ]; then
    echo "slurm_test: kept $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "slurm_test: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t_all=$(now)
t=$(now)
"$HERE/slurm_cluster.sh" start "$CDIR" >/dev/null
# shellcheck disable=SC1091
source "$CDIR/env.sh"
echo "slurm_test: cluster up in $(since "$t") s"

# The reference: the same pipeline in one process, no partitions.
t=$(now)
(cd "$TMP" && "$MG3D" run "$PIPELINE" --work-dir "$TMP/ref" --quiet >/dev/null)
echo "slurm_test: local unpartitioned run in $(since "$t") s"

t=$(now)
jobs=$(cd "$TMP" && "$MG3D" slurm "$PIPELINE" --work-dir "$TMP/w" --partitions 3 \
  --sbatch-args "--cpus-per-task=1" --submit)
echo "$jobs" | sed 's/^/slurm_test:   /'
ids=$(echo "$jobs" | awk '{ print $3 }' | paste -sd, -)
arrays=$(echo "$jobs" | grep -c '_array ' || true)
[ "$arrays" = 6 ] || fail "expected 6 job arrays (ingest, preprocess, reports, entities, tokens, shards), got $arrays"
while [ -n "$(squeue -h -j "$ids" -o '%i' 2>/dev/null || true)" ]; do
  if awk -v a="$t" -v b="$(now)" -v l="$TIMEOUT" 'BEGIN { exit !(b - a > l) }'; then
    fail "jobs still queued after ${TIMEOUT}s: $(squeue -h -j "$ids" -o '%i %T %r' | tr '\n' ';')"
  fi
  # A job left pending because an input job failed never runs: stop waiting.
  if squeue -h -j "$ids" -o '%r' 2>/dev/null | grep -q DependencyNeverSatisfied; then
    scancel "${ids//,/ }" 2>/dev/null || true
    fail "a job failed, so its dependents can never run: $(scontrol show job -o "$ids" 2>/dev/null | grep -o 'JobId=[^ ]* JobName=[^ ]*\|JobState=[^ ]*' | paste -sd' ' -)"
  fi
  sleep 0.3
done
echo "slurm_test: all jobs finished in $(since "$t") s"
states=$(for id in ${ids//,/ }; do scontrol show job -o "$id"; done |
  awk '{ n = ""; s = ""; for (i = 1; i <= NF; i++) { if ($i ~ /^JobName=/) n = $i; if ($i ~ /^JobState=/) s = $i } print n, s }')
tasks=$(echo "$states" | wc -l)
bad=$(echo "$states" | grep -vc 'JobState=COMPLETED' || true)
[ "$bad" = 0 ] || fail "not every job COMPLETED: $(echo "$states" | grep -v COMPLETED | tr '\n' ';')"
echo "slurm_test: $tasks jobs and array tasks COMPLETED"

for stage in synth ingest preprocess reports entities tokens graph curate shards; do
  diff -r "$TMP/ref/$stage" "$TMP/w/$stage" >/dev/null || fail "stage $stage differs from the local run"
done
cmp -s "$TMP/ref/mg3d.lock.json" "$TMP/w/mg3d.lock.json" || fail "the lockfile differs from the local run"
status=$(cd "$TMP" && "$MG3D" status "$PIPELINE" --work-dir "$TMP/w")
echo "$status" | grep -qv ' fresh ' && fail "not every stage is fresh: $status"
echo "slurm_test: every stage byte-identical to the local run and fresh"
ok=1
echo "slurm_test: ok in $(since "$t_all") s"
