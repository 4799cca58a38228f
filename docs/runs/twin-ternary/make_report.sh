#!/bin/bash
# Writes report.md beside this script: `twinsnn report` over the campaign's chosen runs, each
# section with the command that made it (run from the repository root or anywhere).
set -e
cd "$(dirname "$0")"
TWINSNN=${TWINSNN:-twinsnn}
S="{0,1,2,3,4}"
section() {  # title, baseline (or ""), run-folder globs
  local title=$1 base=$2; shift 2
  local dirs; dirs=$(eval echo "$@")
  echo "## $title"
  echo
  echo "\`twinsnn report $*${base:+ --baseline $base}\`:"
  echo
  $TWINSNN report $dirs ${base:+--baseline $base}
  echo
}
{
section "Table 2 at the main job's recipe, against FP-SNN" "" fp-seed$S tna-a1e-5-seed$S bsnn-lr2e-3-seed$S tsnn-lrnone-seed$S tnatsnn-late1e-4-seed$S
section "Against T-SNN" tsnn-lrnone tsnn-lrnone-seed$S tnatsnn-late1e-4-seed$S bsnn-lr2e-3-seed$S
section "Fig. 3 at the main job's recipe, against the single FP-SNN" "" fp-seed$S tna-a1e-5-seed$S kd+ce-a1e-5-seed$S kd-a1e-4-seed$S
section "Against KD+CE" kd+ce-a1e-5 kd+ce-a1e-5-seed$S tna-a1e-5-seed$S kd-a1e-4-seed$S
section "ReLU network (ANN), full data" "" ann-fp-seed$S ann-tna-a1e-6-seed$S
section "ReLU network (ANN), 1,280 images, seeds 0-2" "" "ann-sub-seed{0,1,2}" "ann-subtna-a1e-5-seed{0,1,2}"
echo "Seeds 0-4 of these two arms, on another machine at the same commit (seeds 0-2 bit for bit as here): [ann-1280-seeds0-4/report.md](ann-1280-seeds0-4/report.md)."
} > report.md.tmp
mv report.md.tmp report.md
