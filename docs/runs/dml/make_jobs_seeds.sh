#!/bin/bash
# The jobs after the grids (plan.md), for run_jobs.py (name|dependencies|command): each arm's
# choice by the plan's rule (../cifar10/choose.py: the highest val_acc/0 after the last epoch,
# a tie to the setting listed first) once its four grid runs have ended, seeds 1-4 of the
# chosen setting, and the test of the ten chosen runs only after both choices are written.
# A setting's training flags are in $C/settings/<setting> (written here, from the grid's).
C=/work/dml-campaign
R=$C/runs
K=$C/choice
PY=$C/code/.venv/bin/python
T="OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $PY -m twinsnn train --quiet --out-dir $R --config fmnist-cpu-fast-tna-tsnn"
TEST="OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $PY -c 'import sys; from pathlib import Path; from twinsnn.sweep import final_test; final_test(Path(sys.argv[1]))'"
mkdir -p "$C/settings" "$C/logs"
setting() { echo "$2" > "$C/settings/$1"; }
setting tna-a1e-5 "--set strategy=tna --set alpha=1e-5 --set loss.alpha_compressed=null"
setting tna-a1e-4 "--set strategy=tna --set alpha=1e-4 --set loss.alpha_compressed=null"
setting tna-late1e-4 "--set strategy=tna --set alpha=0 --set loss.alpha_compressed=1e-4"
setting tna-late1e-3 "--set strategy=tna --set alpha=0 --set loss.alpha_compressed=1e-3"
setting dml-w1-t1 "--set strategy=dml --set alpha=1 --set temperature=1 --set loss.alpha_compressed=null"
setting dml-w3-t1 "--set strategy=dml --set alpha=3 --set temperature=1 --set loss.alpha_compressed=null"
setting dml-w1-t3 "--set strategy=dml --set alpha=1 --set temperature=3 --set loss.alpha_compressed=null"
setting dml-w3-t3 "--set strategy=dml --set alpha=3 --set temperature=3 --set loss.alpha_compressed=null"
choose() {  # arm, its settings in the plan's order
  local arm=$1; shift
  local deps args
  deps=$(printf "%s-seed0," "$@"); args=$(for s in "$@"; do printf "%s=%s " "$s" "$R/$s-seed0"; done)
  echo "choose-$arm|${deps%,}|$PY /work/main/docs/runs/cifar10/choose.py $K/$arm $args> $C/logs/choose-$arm.log 2>&1"
}
choose tna tna-a1e-5 tna-a1e-4 tna-late1e-4 tna-late1e-3
choose dml dml-w1-t1 dml-w3-t1 dml-w1-t3 dml-w3-t3
for seed in 1 2 3 4; do
  for arm in tna dml; do
    echo "$arm-seed$seed|choose-$arm|$T --seed $seed \$(cat $C/settings/\$(cat $K/$arm)) --name $arm-seed$seed > $C/logs/$arm-seed$seed.log 2>&1"
  done
done
for arm in tna dml; do
  echo "test-$arm-seed0|choose-tna,choose-dml|$TEST $R/\$(cat $K/$arm)-seed0 > $C/logs/test-$arm-seed0.log 2>&1"
  for seed in 1 2 3 4; do
    echo "test-$arm-seed$seed|choose-tna,choose-dml,$arm-seed$seed|$TEST $R/$arm-seed$seed > $C/logs/test-$arm-seed$seed.log 2>&1"
  done
done
