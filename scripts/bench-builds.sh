#!/usr/bin/env bash
# Two builds of iotrace on the same recording: is a refactor's analysis as fast as before?
# For `report --json`, `timeline` and `export --format pftrace`: the median wall time and peak
# RSS over ROUNDS alternating runs (noisy on a shared machine), the instructions counted by
# callgrind (one run each, repeatable whatever the machine is doing), the ratio new/old, and
# whether the two outputs are byte-identical.
#   usage: scripts/bench-builds.sh OLD_IOTRACE NEW_IOTRACE TRACE [ROUNDS]   (default 5 rounds)
# e.g. git worktree add /tmp/old REV && (cd /tmp/old && cargo build --release -p iotrace-cli)
#      scripts/bench-analysis.sh keeps no trace; record one with `iotrace record` under load.
# Needs /usr/bin/time (Debian package `time`); valgrind for the instruction counts.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,9p' "$0"; exit 2; }
old=$1
new=$2
trace=$3
rounds=${4:-5}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# run WHICH BIN NAME ARGS... -> "secs kb" for one run; its output is $out/WHICH.NAME (report
# writes to stdout, the others to -o)
run() {
  local which=$1 bin=$2 name=$3
  shift 3
  if [ "$name" = report ]; then
    /usr/bin/time -f "%e %M" "$bin" "$@" "$trace" >"$out/$which.$name" 2>"$out/time"
  else
    /usr/bin/time -f "%e %M" "$bin" "$@" -o "$out/$which.$name" "$trace" >/dev/null 2>"$out/time"
  fi
  tail -1 "$out/time"
}

# instructions BIN NAME ARGS... -> instructions callgrind counted (n/a without valgrind)
instructions() {
  local bin=$1 name=$2
  shift 2
  command -v valgrind >/dev/null || { echo "n/a"; return; }
  local o=()
  [ "$name" = report ] || o=(-o "$out/cg")
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" "${o[@]}" "$trace" 2>&1 >/dev/null |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '%-9s %22s %22s %8s %28s %s\n' command "old s (MB)" "new s (MB)" new/old "instructions old / new" same
for cmd in report timeline pftrace; do
  case $cmd in
    report) args=(report --json) ;;
    timeline) args=(timeline) ;;
    pftrace) args=(export --format pftrace) ;;
  esac
  : >"$out/old.times"
  : >"$out/new.times"
  for ((i = 0; i < rounds; i++)); do
    run old "$old" "$cmd" "${args[@]}" >>"$out/old.times"
    run new "$new" "$cmd" "${args[@]}" >>"$out/new.times"
  done
  same=yes
  cmp -s "$out/old.$cmd" "$out/new.$cmd" || same=no
  io=$(instructions "$old" "$cmd" "${args[@]}")
  in=$(instructions "$new" "$cmd" "${args[@]}")
  python3 - "$cmd" "$out/old.times" "$out/new.times" "$io" "$in" "$same" <<'PY'
import statistics, sys
cmd, old, new, io, inn, same = sys.argv[1:]
def col(f):
    rows = [l.split() for l in open(f) if l.strip()]
    return statistics.median(float(r[0]) for r in rows), max(int(r[1]) for r in rows) // 1024
(os_, om), (ns, nm) = col(old), col(new)
ins = f"{int(io)/1e9:.3f} G / {int(inn)/1e9:.3f} G ({int(inn)/int(io):.3f})" if io.isdigit() and inn.isdigit() else "n/a"
print(f"{cmd:9s} {os_:14.2f} ({om:4d}) {ns:14.2f} ({nm:4d}) {ns/os_:8.3f} {ins:>28s} {same}")
PY
done
