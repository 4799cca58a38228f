#!/bin/bash
# Runs the jobs of a jobs file ("name|command" per line, # comments) two at a time, one
# thread each; start, end, seconds and exit code of each in progress.txt beside it, each
# job's output in logs/<name>.log.
set -u
jobs=$1
here=$(cd "$(dirname "$jobs")" && pwd)
mkdir -p "$here/logs"
one() {
  name=${1%%|*}; cmd=${1#*|}
  echo "$(date -u +%FT%T%z) start $name" >> "$here/progress.txt"
  s=$(date +%s)
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 bash -c "$cmd" > "$here/logs/$name.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%T%z) done $name $(( $(date +%s) - s ))s rc=$rc" >> "$here/progress.txt"
}
export -f one
export here
grep -v '^#' "$jobs" | grep . | tr '\n' '\0' | xargs -0 -P 2 -I{} bash -c 'one "$1"' _ {}
