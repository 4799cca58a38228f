#!/bin/bash
# SEW ResNet-19 at width 0.125: the TNA (alpha 1e-5, chosen for CIFARNet) and TNA T-SNN (late
# matching at 1e-4 from the switch, chosen for CIFARNet) arms, seeds 0-2, and the final tests of
# all four arms.
PY="PYTHONPATH=/work/c33/code/src /work/main/.venv/bin/python"
T="$PY -m twinsnn train --quiet --out-dir /work/c33/runs --config fmnist-cpu-fast-resnet19"
TEST="$PY -c \"import sys; from pathlib import Path; from twinsnn.sweep import final_test; final_test(Path(sys.argv[1]))\""
R=/work/c33/runs
TERN="--set mode=ternary --set start_epoch=1 --set delta_rule=mean_abs --set delta=0.5 --set lr_at_switch=0.002"
j() { echo "$1|$2|$3"; }
for s in 0 1 2; do
  j r-tna-e1-s$s "" "$T --seed $s --set strategy=tna --set alpha=1e-5 --set train.epochs=1 --name tna-e1-seed$s"
  j r-tna-e1-a0-s$s "" "$T --seed $s --set strategy=tna --set alpha=0 --set train.epochs=1 --name tna-e1-a0-seed$s"
  j r-tna-s$s r-tna-e1-s$s "$T --seed $s --set strategy=tna --set alpha=1e-5 --name tna-seed$s --branch-from $R/tna-e1-seed$s/checkpoint.pt"
  j r-tnatsnn-s$s r-tna-e1-a0-s$s "$T --seed $s --set strategy=tna --set alpha=0 --set loss.alpha_compressed=1e-4 $TERN --name tnatsnn-seed$s --branch-from $R/tna-e1-a0-seed$s/checkpoint.pt"
done
for s in 0 1 2; do
  for a in fp tsnn tna tnatsnn; do
    j r-test-$a-s$s r-$a-s$s "$TEST $R/$a-seed$s"
  done
done
