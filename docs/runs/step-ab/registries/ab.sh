#!/bin/bash
# A/B of the main job's TNA step (benchmarks/train_step.py) and of one epoch of its loop
# (epoch.py, loss.alpha 1e-5 at both commits): before (BEFORE) against after (AFTER), each a
# `git archive` of its commit in $AB/{before,after}, run alternately (before, after, before,
# after ...), ROUNDS rounds each (default 3), torch's default threads (2 on a 2-core VM). Every
# training process on the machine (`twinsnn train`) is paused (SIGSTOP) for the measurement and
# continued at the end, even when the script fails. Writes step-{before,after}.json and
# epoch-{before,after}.jsonl beside this script.
# Usage: BEFORE=<commit> AFTER=<commit> [PY=python] ab.sh
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel)
PY=${PY:-$REPO/.venv/bin/python}
AB=${AB:-/tmp/twinsnn-ab}
for side in before after; do
  commit=$([ $side = before ] && echo "$BEFORE" || echo "$AFTER")
  rm -rf "$AB/$side" && mkdir -p "$AB/$side"
  git -C "$REPO" archive "$commit" | tar -x -C "$AB/$side"
  echo "$side: $(git -C "$REPO" rev-parse --short "$commit")"
done
PAUSED=$(pgrep -f "twinsnn train" || true)
trap '[ -n "$PAUSED" ] && kill -CONT $PAUSED' EXIT
[ -n "$PAUSED" ] && kill -STOP $PAUSED && sleep 3
echo "paused: $(echo $PAUSED | wc -w) training processes"
lscpu | grep -E "^(Model name|CPU family|Model|Flags)" | cut -c1-200
for i in $(seq "${ROUNDS:-3}"); do
  for side in before after; do
    cd "$AB/$side"
    echo "round $i $side $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    PYTHONPATH=src:. $PY -m benchmarks.train_step --config fmnist-cpu-fast-tna-tsnn \
      --image 1x28x28 --widths 0.125 --modes tna --batches 64 --timesteps 2 \
      --impls twinsnn --steps 20 --rounds 2 --out "$HERE/step-$side.json" --label r$i \
      | grep -E "^round|wrote"
    PYTHONPATH=src:. $PY "$HERE/epoch.py" r$i 2>/dev/null | tail -1 >> "$HERE/epoch-$side.jsonl"
    tail -1 "$HERE/epoch-$side.jsonl"
  done
done
