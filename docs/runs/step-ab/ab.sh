#!/bin/bash
# A/B of the main job's TNA step, old (f4c3f80) against new (HEAD), campaigns paused.
PIDS=$(pgrep -f "twinsnn train")
kill -STOP $PIDS
sleep 3
for i in 1 2; do
  for side in old main; do
    cd /work/$side && PYTHONPATH=/work/$side/src:/work/$side /work/main/.venv/bin/python -m benchmarks.train_step --config fmnist-cpu-fast-tna-tsnn --image 1x28x28 --widths 0.125 --modes tna --batches 64 --timesteps 2 --impls twinsnn --steps 20 --rounds 3 --out /tmp/ab-$side.json --label r$i 2>&1 | grep -E "samples|tna_step|wrote" | tail -3
  done
done
kill -CONT $PIDS
