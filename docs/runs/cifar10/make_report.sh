#!/bin/bash
# Writes family.json (the plan's four comparisons, seed 0 as the chosen grid runs), then
# report.md and report.json beside this script: `twinsnn report` of the four chosen arms and
# of each grid, and `twinsnn report --family family.json` (Holm over the four).
set -e
cd "$(dirname "$0")"
TWINSNN=${TWINSNN:-twinsnn}
chosen() { sed -n 's/^chosen: //p' "choice/$1.txt"; }
FP="fp-lr$(chosen fp-lr)-seed0"; TNA="tna-a$(chosen tna-alpha)-seed0"
TS="tsnn-sw$(chosen tsnn-sw)-seed0"; TT="tnatsnn-sw$(chosen tnatsnn-sw)-seed0"
side() { echo "[\"$1\", \"$2-seed[1-4]\"]"; }
cat > family.json <<JSON
{
 "title": "CIFAR-10 (JPEG q75 copy) at CPU scale, test split: the plan's four comparisons",
 "comparisons": [
  {"comparison": "TNA FP-SNN - FP-SNN (the paper: +0.82)", "metric": "test_acc",
   "baseline": $(side $FP fp), "other": $(side $TNA tna)},
  {"comparison": "T-SNN - FP-SNN (the paper: -0.62)", "metric": "test_acc",
   "baseline": $(side $FP fp), "other": $(side $TS tsnn)},
  {"comparison": "TNA T-SNN - T-SNN (the paper: +0.28)", "metric": "test_acc",
   "baseline": $(side $TS tsnn), "other": $(side $TT tnatsnn)},
  {"comparison": "TNA T-SNN - FP-SNN (the paper: -0.34)", "metric": "test_acc",
   "baseline": $(side $FP fp), "other": $(side $TT tnatsnn)}
 ]
}
JSON
S="{1,2,3,4}"
. ../report_section.sh  # section TITLE RUN_FOLDERS...
{
echo "# CIFAR-10 (JPEG q75 copy) at CPU scale: report"; echo
echo "Made by \`make_report.sh\` from the records in this folder ([plan](plan.md))."; echo
section "The four arms, seeds 0-4, against FP-SNN" $FP "fp-seed$S" $TNA "tna-seed$S" $TS "tsnn-seed$S" $TT "tnatsnn-seed$S"
$TWINSNN report --family family.json; echo
section "Grid: FP-SNN, seed 0" "fp-lr{0.002,0.001,0.004}-seed0"
section "Grid: TNA FP-SNN, seed 0" "tna-a{1e-4,1e-3,1e-5}-seed0"
section "Grid: T-SNN, seed 0" "tsnn-sw{none,0.001,0.002}-seed0"
section "Grid: TNA T-SNN, seed 0" "tnatsnn-sw{none,0.001,0.002}-seed0"
} > report.md.tmp
mv report.md.tmp report.md
$TWINSNN report --family family.json --json > report.json.tmp && mv report.json.tmp report.json
