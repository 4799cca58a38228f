#!/bin/bash
# Writes the campaign's jobs.txt (plan.md): name|dependencies|command, for run_jobs.py.
# Every run: the commit's own checkout and venv in $C/code, one thread, the real archive
# found through $TWINSNN_DATA (so that no data path is recorded in the runs' configs).
C=${C:-/work/c41}
R=$C/runs
K=$C/choice
T="cd $C && TWINSNN_DATA=/work/shared/data OMP_NUM_THREADS=1 $C/code/.venv/bin/twinsnn train --quiet --out-dir $R"
PY="$C/code/.venv/bin/python"
CHOOSE="$PY $C/code/docs/runs/cifar10/choose.py"
TEST="$PY -c 'import sys; from pathlib import Path; from twinsnn.sweep import final_test; final_test(Path(sys.argv[1]))'"
LR='$(cat '$K'/fp-lr)'
ALPHA='$(cat '$K'/tna-alpha)'
j() { echo "$1|$2|$3 > $C/logs/$1.log 2>&1"; }
jt() { echo "$1|$2|cd $C && TWINSNN_DATA=/work/shared/data OMP_NUM_THREADS=1 $TEST $R/$3 > $C/logs/$1.log 2>&1"; }
sw() { [ "$1" = none ] && echo null || echo "$1"; }  # lr_at_switch: none = keep the decayed lr

# FP-SNN grid, seed 0: the learning rate
for lr in 0.002 0.001 0.004; do
  j fp-e2-lr$lr-s0 "" "$T --config cifar10-jpeg-cpu --seed 0 --set train.lr=$lr --set train.epochs=2 --name fp-e2-lr$lr-seed0"
done
for lr in 0.002 0.001 0.004; do
  j fp-lr$lr-s0 fp-e2-lr$lr-s0 "$T --config cifar10-jpeg-cpu --seed 0 --set train.lr=$lr --name fp-lr$lr-seed0 --branch-from $R/fp-e2-lr$lr-seed0/checkpoint.pt"
done
j choose-fp fp-lr0.002-s0,fp-lr0.001-s0,fp-lr0.004-s0 "$CHOOSE $K/fp-lr 0.002=$R/fp-lr0.002-seed0 0.001=$R/fp-lr0.001-seed0 0.004=$R/fp-lr0.004-seed0"

# TNA FP-SNN grid, seed 0: alpha, at FP-SNN's learning rate
for a in 1e-4 1e-3 1e-5; do
  j tna-e2-a$a-s0 choose-fp "$T --config cifar10-jpeg-cpu-tna --seed 0 --set train.lr=$LR --set loss.alpha=$a --set train.epochs=2 --name tna-e2-a$a-seed0"
done
# T-SNN grid, seed 0: the learning rate at the switch, from FP-SNN's chosen first two epochs
for s in none 0.001 0.002; do
  j tsnn-sw$s-s0 choose-fp "$T --config cifar10-jpeg-cpu-tsnn --seed 0 --set train.lr=$LR --set quant.lr_at_switch=$(sw $s) --name tsnn-sw$s-seed0 --branch-from $R/fp-e2-lr$LR-seed0/checkpoint.pt"
done
for a in 1e-4 1e-3 1e-5; do
  j tna-a$a-s0 tna-e2-a$a-s0 "$T --config cifar10-jpeg-cpu-tna --seed 0 --set train.lr=$LR --set loss.alpha=$a --name tna-a$a-seed0 --branch-from $R/tna-e2-a$a-seed0/checkpoint.pt"
done
j choose-tsnn tsnn-swnone-s0,tsnn-sw0.001-s0,tsnn-sw0.002-s0 "$CHOOSE $K/tsnn-sw none=$R/tsnn-swnone-seed0 0.001=$R/tsnn-sw0.001-seed0 0.002=$R/tsnn-sw0.002-seed0"
j choose-tna tna-a1e-4-s0,tna-a1e-3-s0,tna-a1e-5-s0 "$CHOOSE $K/tna-alpha 1e-4=$R/tna-a1e-4-seed0 1e-3=$R/tna-a1e-3-seed0 1e-5=$R/tna-a1e-5-seed0"
# TNA T-SNN grid, seed 0: the learning rate at the switch, from TNA FP-SNN's chosen first two epochs
for s in none 0.001 0.002; do
  j tnatsnn-sw$s-s0 choose-tna "$T --config cifar10-jpeg-cpu-tna-tsnn --seed 0 --set train.lr=$LR --set loss.alpha=$ALPHA --set quant.lr_at_switch=$(sw $s) --name tnatsnn-sw$s-seed0 --branch-from $R/tna-e2-a$ALPHA-seed0/checkpoint.pt"
done
j choose-tnatsnn tnatsnn-swnone-s0,tnatsnn-sw0.001-s0,tnatsnn-sw0.002-s0 "$CHOOSE $K/tnatsnn-sw none=$R/tnatsnn-swnone-seed0 0.001=$R/tnatsnn-sw0.001-seed0 0.002=$R/tnatsnn-sw0.002-seed0"
SWT='$(sed s/none/null/ '$K'/tsnn-sw)'
SWTT='$(sed s/none/null/ '$K'/tnatsnn-sw)'

# Seeds 1-4 of the chosen settings
for s in 1 2 3 4; do
  j fp-e2-s$s choose-fp "$T --config cifar10-jpeg-cpu --seed $s --set train.lr=$LR --set train.epochs=2 --name fp-e2-seed$s"
  j fp-s$s fp-e2-s$s "$T --config cifar10-jpeg-cpu --seed $s --set train.lr=$LR --name fp-seed$s --branch-from $R/fp-e2-seed$s/checkpoint.pt"
  j tsnn-s$s fp-e2-s$s,choose-tsnn "$T --config cifar10-jpeg-cpu-tsnn --seed $s --set train.lr=$LR --set quant.lr_at_switch=$SWT --name tsnn-seed$s --branch-from $R/fp-e2-seed$s/checkpoint.pt"
  j tna-e2-s$s choose-tna "$T --config cifar10-jpeg-cpu-tna --seed $s --set train.lr=$LR --set loss.alpha=$ALPHA --set train.epochs=2 --name tna-e2-seed$s"
  j tna-s$s tna-e2-s$s "$T --config cifar10-jpeg-cpu-tna --seed $s --set train.lr=$LR --set loss.alpha=$ALPHA --name tna-seed$s --branch-from $R/tna-e2-seed$s/checkpoint.pt"
  j tnatsnn-s$s tna-e2-s$s,choose-tnatsnn "$T --config cifar10-jpeg-cpu-tna-tsnn --seed $s --set train.lr=$LR --set loss.alpha=$ALPHA --set quant.lr_at_switch=$SWTT --name tnatsnn-seed$s --branch-from $R/tna-e2-seed$s/checkpoint.pt"
done

# Test accuracy, once per chosen run (seed 0: the chosen grid run)
jt test-fp-s0 choose-fp "fp-lr$LR-seed0"
jt test-tsnn-s0 choose-tsnn "tsnn-sw\$(cat $K/tsnn-sw)-seed0"
jt test-tna-s0 choose-tna "tna-a$ALPHA-seed0"
jt test-tnatsnn-s0 choose-tnatsnn "tnatsnn-sw\$(cat $K/tnatsnn-sw)-seed0"
for s in 1 2 3 4; do
  jt test-fp-s$s fp-s$s fp-seed$s
  jt test-tsnn-s$s tsnn-s$s tsnn-seed$s
  jt test-tna-s$s tna-s$s tna-seed$s
  jt test-tnatsnn-s$s tnatsnn-s$s tnatsnn-seed$s
done

# The chosen TNA T-SNN of seed 0, packed for shipping, and the packed file's test accuracy
j export-tnatsnn-s0 choose-tnatsnn,test-tnatsnn-s0 "cd $C && mkdir -p export && OMP_NUM_THREADS=1 $C/code/.venv/bin/twinsnn export $R/tnatsnn-sw\$(cat $K/tnatsnn-sw)-seed0/checkpoint.pt -o $C/export/cifar10-jpeg-tna-tsnn.tnn"
echo "eval-export-tnatsnn-s0|export-tnatsnn-s0|cd $C && TWINSNN_DATA=/work/shared/data OMP_NUM_THREADS=1 $C/code/.venv/bin/twinsnn eval $C/export/cifar10-jpeg-tna-tsnn.tnn --json > $C/export/cifar10-jpeg-tna-tsnn.eval-test.json 2> $C/logs/eval-export-tnatsnn-s0.log"
