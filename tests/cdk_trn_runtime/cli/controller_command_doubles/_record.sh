# Sourced by every command double: appends one line to $DOUBLES_LOG, the double's name and its
# arguments separated by the ASCII unit separator (0x1f), so a test reads back each argument exactly.
# The line is written with one write: doubles in a pipeline (`aws s3 cp ... | docker exec ...`)
# record at the same time, and separate writes would interleave.
double_name=$(basename "$0")
double_line=$(printf '%s' "$double_name"; printf '\037%s' "$@")
printf '%s\n' "$double_line" >> "${DOUBLES_LOG:?DOUBLES_LOG must name the call log}"
