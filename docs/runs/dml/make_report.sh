#!/bin/bash
# Writes family.json (the plan's one comparison: DML - TNA, paired by seed, seed 0 as each
# arm's chosen grid run), then report.md and report.json beside this script: `twinsnn report`
# of both arms, of each grid, and `twinsnn report --family family.json`.
# Records first: C=/work/dml-campaign DEST=docs/runs/dml bash docs/runs/cifar10/collect.sh
set -e
cd "$(dirname "$0")"
TWINSNN=${TWINSNN:-twinsnn}
chosen() { sed -n 's/^chosen: //p' "choice/$1.txt"; }
TNA="$(chosen tna)-seed0"; DML="$(chosen dml)-seed0"
cat > family.json <<JSON
{
 "title": "DML against TNA on the main job's recipe, Fashion-MNIST test split",
 "comparisons": [
  {"comparison": "DML - TNA", "metric": "test_accuracy",
   "baseline": ["$TNA", "tna-seed[1-4]"], "other": ["$DML", "dml-seed[1-4]"]}
 ]
}
JSON
. ../report_section.sh  # section TITLE RUN_FOLDERS...
{
echo "# DML against TNA on the main job's recipe: report"; echo
echo "Made by \`make_report.sh\` from the records in this folder ([plan](plan.md))."; echo
section "Both arms, seeds 0-4 (TNA the baseline)" $TNA "tna-seed{1,2,3,4}" $DML "dml-seed{1,2,3,4}"
$TWINSNN report --family family.json; echo
section "Grid: TNA, seed 0 (validation)" "tna-{a1e-5,a1e-4,late1e-4,late1e-3}-seed0"
section "Grid: DML, seed 0 (validation)" "dml-{w1-t1,w3-t1,w1-t3,w3-t3}-seed0"
} > report.md.tmp
mv report.md.tmp report.md
$TWINSNN report --family family.json --json > report.json.tmp && mv report.json.tmp report.json
