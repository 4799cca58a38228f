#!/bin/bash
# A/B of the main job's TNA step (benchmarks/train_step.py) and of one epoch of its loop
# (epoch.py): before (main at e9022de) against after (loop at d477fe6), each a `git archive`
# of its commit, run alternately, four times each, on the shared machine as it was (nothing
# paused). Writes step-{before,after}.json and epoch-{before,after}.jsonl beside this script.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-/work/wt/loop/.venv/bin/python}
for i in 1 2 3 4; do
  for side in before after; do
    cd /tmp/loop/ab/$side
    echo "round $i $side $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    PYTHONPATH=src:. $PY -m benchmarks.train_step --config fmnist-cpu-fast-tna-tsnn \
      --image 1x28x28 --widths 0.125 --modes tna --batches 64 --timesteps 2 \
      --impls twinsnn --steps 20 --rounds 2 --out "$HERE/step-$side.json" --label r$i \
      | grep -E "^round|wrote"
    PYTHONPATH=src:. $PY "$HERE/epoch.py" r$i 2>/dev/null | tail -1 >> "$HERE/epoch-$side.jsonl"
    tail -1 "$HERE/epoch-$side.jsonl"
  done
done
