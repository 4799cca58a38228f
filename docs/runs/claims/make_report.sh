#!/bin/bash
# Writes report.md and report.json beside this script: `twinsnn report --family` over
# family.json, every paired comparison the README and docs/index.md state, Holm-adjusted over all of them.
set -e
cd "$(dirname "$0")"
TWINSNN=${TWINSNN:-twinsnn}
$TWINSNN report --family family.json > report.md.tmp && mv report.md.tmp report.md
$TWINSNN report --family family.json --json > report.json.tmp && mv report.json.tmp report.json
