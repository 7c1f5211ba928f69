#!/usr/bin/env bash
# kill -9 at random instants of a full pipeline run, each followed by a rerun: after every round
# (runs killed until one finishes), the outputs must be byte-identical to an uninterrupted run's.
#
#   scripts/kill_rerun.sh                 # 20 kills of pipelines/demo.toml
#   KILLS=5 MAX_DELAY=10 scripts/kill_rerun.sh
#
# Compared: every file of every stage output and mg3d.lock.json (not the item store .items/,
# the .tmp/ scratch or the .mg3d.lock lock file). Needs `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${KILLS:-20}
MAX_DELAY=${MAX_DELAY:-20}
PIPELINE=${PIPELINE:-pipelines/demo.toml}
MG3D=${MG3D:-target/debug/mg3d}
BASE=${BASE:-work/kill-base}
TEST=${TEST:-work/kill-test}
SEED=${SEED:-1}
RANDOM=$SEED

digest() {
  (cd "$1" && find . -type f ! -path './.items/*' ! -path './.tmp/*' ! -name '.mg3d.lock' -print0 \
    | sort -z | xargs -0 sha256sum)
}

rm -rf "$BASE" "$TEST"
start=$(date +%s)
"$MG3D" run "$PIPELINE" --work-dir "$BASE" --quiet >/dev/null
echo "uninterrupted run: $(( $(date +%s) - start )) s"
digest "$BASE" > "$BASE.sha256"

kills=0 rounds=0
while [ "$kills" -lt "$KILLS" ]; do
  "$MG3D" run "$PIPELINE" --work-dir "$TEST" --quiet >/dev/null 2>&1 &
  pid=$!
  # A delay of 0.1 to MAX_DELAY seconds, in tenths.
  delay=$(( RANDOM % (MAX_DELAY * 10) + 1 ))
  sleep "$(( delay / 10 )).$(( delay % 10 ))"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$(( kills + 1 ))
    echo "kill $kills after $(( delay / 10 )).$(( delay % 10 )) s"
    continue
  fi
  # The run finished before its kill: the outputs must be the uninterrupted run's.
  wait "$pid"
  rounds=$(( rounds + 1 ))
  if ! diff <(digest "$TEST") "$BASE.sha256" >/dev/null; then
    echo "round $rounds: outputs differ from the uninterrupted run:" >&2
    diff <(digest "$TEST") "$BASE.sha256" >&2 || true
    exit 1
  fi
  echo "round $rounds: identical after its kills; starting over"
  rm -rf "$TEST"
done
"$MG3D" run "$PIPELINE" --work-dir "$TEST" --quiet >/dev/null
rounds=$(( rounds + 1 ))
if ! diff <(digest "$TEST") "$BASE.sha256"; then
  echo "round $rounds: outputs differ from the uninterrupted run" >&2
  exit 1
fi
echo "$kills kills in $rounds round(s): every round's outputs are byte-identical to the uninterrupted run's"
