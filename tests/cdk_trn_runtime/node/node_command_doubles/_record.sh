# Sourced by every command double: appends "<name> <args...>" to $DOUBLES_LOG, then exits 1 when
# the double's name is listed in $DOUBLES_FAILING (space-separated), so a test can make any
# command fail. Doubles with output print it after sourcing this file.
double_name=$(basename "$0")
printf '%s\n' "$double_name $*" >> "${DOUBLES_LOG:?DOUBLES_LOG must name the call log}"
case " ${DOUBLES_FAILING:-} " in
  *" $double_name "*) exit 1 ;;
esac
