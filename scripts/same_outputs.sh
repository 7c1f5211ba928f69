#!/usr/bin/env bash
# Checks that a change (a refactoring) leaves every output of a pipeline byte-identical: runs the
# pipeline with the current build into NEW and compares every output file and the lockfile with
# REF, a work dir of the same pipeline made before the change.
#
#   make build && target/debug/mg3d run pipelines/demo.toml --work-dir work/before   # before
#   ... change, make build ...
#   scripts/same_outputs.sh work/before [work/after]
#
# Compared as in scripts/kill_rerun.sh: every file but the item store (.items/), scratch (.tmp/)
# and the lock file. Exit status 1 lists the files that differ.
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${1:?usage: scripts/same_outputs.sh REF_WORK_DIR [NEW_WORK_DIR]}
NEW=${2:-work/same-outputs}
PIPELINE=${PIPELINE:-pipelines/demo.toml}
MG3D=${MG3D:-target/debug/mg3d}

digest() {
  (cd "$1" && find . -type f ! -path './.items/*' ! -path './.tmp/*' ! -name '.mg3d.lock' -print0 \
    | sort -z | xargs -0 sha256sum)
}

rm -rf "$NEW"
"$MG3D" run "$PIPELINE" --work-dir "$NEW" --quiet >/dev/null
if diff <(digest "$REF") <(digest "$NEW") >/dev/null; then
  echo "$(digest "$NEW" | wc -l) files byte-identical to $REF"
else
  echo "outputs differ from $REF:"
  diff <(digest "$REF") <(digest "$NEW") | grep '^[<>]' | awk '{print $1, $3}' | sort -k2 | uniq
  exit 1
fi
