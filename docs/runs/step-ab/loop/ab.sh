#!/bin/bash
# A/B of the main job's TNA step (benchmarks/train_step.py) and of one epoch of its loop
# (epoch.py): before (BEFORE, the main commit the loop change lands on) against after (AFTER,
# the commit that lands it), each a `git archive` of its commit in $AB/{before,after}, run
# alternately (before, after, before, after ...), four rounds each, torch's default threads
# (2 on this VM), on the shared machine as it was (nothing paused: the training campaigns ran
# alongside). Writes step-{before,after}.json and epoch-{before,after}.jsonl beside this script.
# Usage: BEFORE=<commit> AFTER=<commit> ab.sh
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
lscpu | grep -E "^(Model name|CPU family|Model|Flags)" | cut -c1-200
for i in 1 2 3 4; do
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
