#!/bin/bash
# SEW ResNet-19 at width 0.125 on the main job's recipe: the full-precision and T-SNN arms.
PY="PYTHONPATH=/work/c33/code/src /work/main/.venv/bin/python -m twinsnn"
T="$PY train --quiet --out-dir /work/c33/runs"
R=/work/c33/runs
j() { echo "$1|$2|$3"; }
for s in 0 1 2; do
  j r-fp-e1-s$s "" "$T --config fmnist-cpu-fast-resnet19 --seed $s --set train.epochs=1 --name fp-e1-seed$s"
  j r-fp-s$s r-fp-e1-s$s "$T --config fmnist-cpu-fast-resnet19 --seed $s --name fp-seed$s --branch-from $R/fp-e1-seed$s/checkpoint.pt"
  j r-tsnn-s$s r-fp-e1-s$s "$T --config fmnist-cpu-fast-resnet19 --seed $s --set mode=ternary --set start_epoch=1 --set delta_rule=mean_abs --set delta=0.5 --set lr_at_switch=0.002 --name tsnn-seed$s --branch-from $R/fp-e1-seed$s/checkpoint.pt"
done
