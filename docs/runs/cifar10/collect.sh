#!/bin/bash
# Copies the campaign's records from $C (default /work/c41) into this folder (or $DEST): every run's
# run.json, metrics.jsonl and test.json (never a checkpoint or model), progress.txt, and each
# choice with the candidates it was made from; the shipped export's log and test evaluation.
set -e
C=${C:-/work/c41}
cd "${DEST:-$(dirname "$0")}"
for run in "$C"/runs/*/; do
  name=$(basename "$run")
  [ -f "$run/model.safetensors" ] || continue  # finished runs only
  mkdir -p "$name"
  for f in run.json metrics.jsonl test.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$name/$f"
  done
done
cp "$C/progress.txt" progress.txt
mkdir -p choice
for f in "$C"/choice/*; do
  [ -f "$f" ] || continue
  k=$(basename "$f")
  { echo "chosen: $(cat "$f")"; cat "$C/logs/choose-${k%%-*}.log" 2>/dev/null || true; } > "choice/$k.txt"
done
# the packed chosen TNA T-SNN of seed 0: its export log and its test evaluation (not the file)
if [ -f "$C/export/cifar10-jpeg-tna-tsnn.eval-test.json" ]; then
  mkdir -p export
  cp "$C/logs/export-tnatsnn-s0.log" export/export.log
  cp "$C/export/cifar10-jpeg-tna-tsnn.eval-test.json" export/eval-test.json
fi
