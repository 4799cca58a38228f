#!/bin/bash
# The validation grids of plan.md, seed 0: TNA over its alpha schedule, DML over its weight
# and temperature, 4 settings each, interleaved so both arms finish together.
T="/work/dml-campaign/code/.venv/bin/python -m twinsnn train --quiet --out-dir /work/dml-campaign/runs --config fmnist-cpu-fast-tna-tsnn --seed 0"
tna() { echo "$1-seed0|$T --set strategy=tna --set alpha=$2 --set loss.alpha_compressed=$3 --name $1-seed0"; }
dml() { echo "$1-seed0|$T --set strategy=dml --set alpha=$2 --set temperature=$3 --set loss.alpha_compressed=null --name $1-seed0"; }
tna tna-a1e-5 1e-5 null
dml dml-w1-t1 1 1
tna tna-a1e-4 1e-4 null
dml dml-w3-t1 3 1
tna tna-late1e-4 0 1e-4
dml dml-w1-t3 1 3
tna tna-late1e-3 0 1e-3
dml dml-w3-t3 3 3
