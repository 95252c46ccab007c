# Sourced by the bench and soak scripts (which set $out):
#   measure NAME COMMAND...
# runs COMMAND under /usr/bin/time -v, prints its wall time and peak RSS on one line, and sets
# NAME_secs and NAME_kb (dashes in NAME become underscores).
measure() {
  local name=$1; shift
  /usr/bin/time -v "$@" >"$out/$name.stdout" 2>"$out/$name.time" || { cat "$out/$name.time"; exit 1; }
  local secs kb
  secs=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$out/$name.time" |
    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
  kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/$name.time")
  printf '%-22s %8.2f s   %8.1f MB peak RSS\n' "$name" "$secs" "$(echo "$kb / 1024" | bc -l)"
  eval "${name//-/_}_secs=$secs; ${name//-/_}_kb=$kb"
}
