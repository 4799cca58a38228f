#!/bin/bash
# The ReLU CIFARNet in the data-limited regime, single and TNA (alpha 1e-5, chosen on seed 0),
# seeds 0-4 on one machine at commit 0b1ac67; seed 0 repeats the choice run as a check.
PY="PYTHONPATH=/work/c36/code/src /work/main/.venv/bin/python"
T="$PY -m twinsnn train --quiet --out-dir /work/c36/runs"
TEST="$PY -c \"import sys; from pathlib import Path; from twinsnn.sweep import final_test; final_test(Path(sys.argv[1]))\""
R=/work/c36/runs
ANN="--set model.neuron=relu --set model.timesteps=1"
j() { echo "$1|$2|$3"; }
for s in 0 3 4 1 2; do
  j ann-sub-s$s "" "$T --config fmnist-cpu-subset $ANN --seed $s --name ann-sub-seed$s"
  j ann-subtna-a1e-5-s$s "" "$T --config fmnist-cpu-subset $ANN --seed $s --set strategy=tna --set alpha=1e-5 --name ann-subtna-a1e-5-seed$s"
done
for s in 0 3 4 1 2; do
  j test-ann-sub-s$s ann-sub-s$s "$TEST $R/ann-sub-seed$s"
  j test-ann-subtna-a1e-5-s$s ann-subtna-a1e-5-s$s "$TEST $R/ann-subtna-a1e-5-seed$s"
done
