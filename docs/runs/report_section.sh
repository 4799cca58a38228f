# section TITLE RUN_FOLDERS...: a Markdown section of a campaign's report, the `twinsnn report`
# command as given (brace patterns unexpanded) and its table. Sourced by the campaigns'
# make_report.sh; $TWINSNN is the command to run (default twinsnn).
section() {
  local title=$1; shift
  echo "## $title"; echo
  echo "\`twinsnn report $*\`:"; echo
  ${TWINSNN:-twinsnn} report $(eval echo "$@"); echo
}
