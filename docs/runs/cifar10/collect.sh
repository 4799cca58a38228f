#!/bin/bash
# Copies the campaign's records from $C (default /work/c41) into this folder: every run's
# run.json, metrics.jsonl and test.json (never a checkpoint or model), progress.txt, and each
# choice with the candidates it was made from.
set -e
C=${C:-/work/c41}
cd "$(dirname "$0")"
for run in "$C"/runs/*/; do
  name=$(basename "$run")
  [ -f "$run/metrics.jsonl" ] || continue
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
