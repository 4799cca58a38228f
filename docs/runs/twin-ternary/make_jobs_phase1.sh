#!/bin/bash
# Phase 1 of the twin-and-ternary comparison: the choices on validation, seed 0.
PY="PYTHONPATH=/work/c35/code/src /work/main/.venv/bin/python -m twinsnn"
T="$PY train --quiet --out-dir /work/c35/runs"
R=/work/c35/runs
j() { echo "$1|$2|$3"; }
j fp-e1-s0 "" "$T --config fmnist-cpu-fast --seed 0 --set train.epochs=1 --name fp-e1-seed0"
j tna-e1-a1e-5-s0 "" "$T --config fmnist-cpu-fast-tna --seed 0 --set alpha=1e-5 --set train.epochs=1 --name tna-e1-a1e-5-seed0"
for lr in 2e-3 none; do
  v=$([ $lr = none ] && echo null || echo 0.002)
  j tsnn-lr$lr-s0 fp-e1-s0 "$T --config fmnist-cpu-fast-tsnn --seed 0 --set quant.lr_at_switch=$v --name tsnn-lr$lr-seed0 --branch-from $R/fp-e1-seed0/checkpoint.pt"
  j bsnn-lr$lr-s0 fp-e1-s0 "$T --config fmnist-cpu-fast-bsnn --seed 0 --set quant.lr_at_switch=$v --name bsnn-lr$lr-seed0 --branch-from $R/fp-e1-seed0/checkpoint.pt"
done
j fp-s0 fp-e1-s0 "$T --config fmnist-cpu-fast --seed 0 --name fp-seed0 --branch-from $R/fp-e1-seed0/checkpoint.pt"
for a in 1e-5 1e-3 1e-4 1e-2 1e-6 0; do
  [ $a != 1e-5 ] && j tna-e1-a$a-s0 "" "$T --config fmnist-cpu-fast-tna --seed 0 --set alpha=$a --set train.epochs=1 --name tna-e1-a$a-seed0"
  if [ $a != 0 ]; then
    j tnatsnn-a$a-s0 tna-e1-a$a-s0 "$T --config fmnist-cpu-fast-tna-tsnn --seed 0 --set alpha=$a --name tnatsnn-a$a-seed0 --branch-from $R/tna-e1-a$a-seed0/checkpoint.pt"
  fi
done
for b in 1e-2 1e-3 1e-4 1e-5 1e-6; do
  j tnatsnn-late$b-s0 tna-e1-a0-s0 "$T --config fmnist-cpu-fast-tna-tsnn --seed 0 --set alpha=0 --set loss.alpha_compressed=$b --name tnatsnn-late$b-seed0 --branch-from $R/tna-e1-a0-seed0/checkpoint.pt"
done
for a in 1e-5 1e-3 1e-4 1e-2 1e-6; do
  j tna-a$a-s0 tna-e1-a$a-s0 "$T --config fmnist-cpu-fast-tna --seed 0 --set alpha=$a --name tna-a$a-seed0 --branch-from $R/tna-e1-a$a-seed0/checkpoint.pt"
done
j fp-e1-s1 "" "$T --config fmnist-cpu-fast --seed 1 --set train.epochs=1 --name fp-e1-seed1"
j fp-s1 fp-e1-s1 "$T --config fmnist-cpu-fast --seed 1 --name fp-seed1 --branch-from $R/fp-e1-seed1/checkpoint.pt"
for s in kd kd+ce; do
  for a in 1e-2 1e-3 1e-4 1e-5 1e-6; do
    j $s-a$a-s0 fp-s1 "$T --config fmnist-cpu-fast --seed 0 --set strategy=$s --set alpha=$a --teacher $R/fp-seed1/model.safetensors --name $s-a$a-seed0"
  done
done
