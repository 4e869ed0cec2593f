# Sourced by every command double: appends one line to $DOUBLES_LOG, the double's name and its
# arguments separated by the ASCII unit separator (0x1f), so a test reads back each argument exactly.
double_name=$(basename "$0")
{
  printf '%s' "$double_name"
  printf '\037%s' "$@"
  printf '\n'
} >> "${DOUBLES_LOG:?DOUBLES_LOG must name the call log}"
