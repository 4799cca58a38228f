#!/bin/bash
# TNA beyond spiking networks: CIFARNet with ReLU units at T = 1, full data (the main job's
# recipe) and data-limited (1,280 images); alpha chosen on validation, seed 0.
PY="PYTHONPATH=/work/c35/code/src /work/main/.venv/bin/python -m twinsnn"
T="$PY train --quiet --out-dir /work/c35/runs"
ANN="--set model.neuron=relu --set model.timesteps=1"
j() { echo "$1|$2|$3"; }
j ann-fp-s0 "" "$T --config fmnist-cpu-fast $ANN --seed 0 --name ann-fp-seed0"
j ann-sub-s0 "" "$T --config fmnist-cpu-subset $ANN --seed 0 --name ann-sub-seed0"
for a in 1e-2 1e-3 1e-4 1e-5 1e-6; do
  j ann-tna-a$a-s0 "" "$T --config fmnist-cpu-fast $ANN --seed 0 --set strategy=tna --set alpha=$a --name ann-tna-a$a-seed0"
  j ann-subtna-a$a-s0 "" "$T --config fmnist-cpu-subset $ANN --seed 0 --set strategy=tna --set alpha=$a --name ann-subtna-a$a-seed0"
done
