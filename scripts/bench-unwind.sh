#!/usr/bin/env bash
# What each `record --call-graph` mode costs a server: the threads demo (a switch-out per
# request, so an off-CPU stack copy per request) and the tokio demo, each under the same load
# bare and recorded with fp, fp-cfi and dwarf. Prints requests per second, the recorder's own
# CPU time, lost records, the trace's bytes per stack sample and the frames left unnamed or
# cut short. Needs root (README.md: what less gets).
#   usage: scripts/bench-unwind.sh [SECONDS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
cargo build --release -q -p iotrace-cli -p iotrace-demos
iotrace=$PWD/target/release/iotrace
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

wait_addr() { # wait_addr FILE: the demo's `listening on ADDR`
  for _ in $(seq 200); do grep -q '^listening on' "$1" 2>/dev/null && break; sleep 0.05; done
  sed -n 's/^listening on //p' "$1"
}
load() { # load ADDR: requests per second
  "$iotrace" load "http://$1/work?io_ms=1&cpu_us=50" -c 64 -d "${secs}s" --json >"$out/load.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f %d" % (d["req_per_s"], d.get("errors", 0)))' "$out/load.json"
}
cpu_s() { # cpu_s PID: user+system CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

printf '%-8s %-7s %10s %7s %12s %8s %10s  %s\n' demo mode "req/s" errors "recorder CPU" lost "B/sample" "unnamed frames"
for demo in threads tokio; do
  bin=target/release/$demo
  "$bin" --port 0 >"$out/server.out" 2>&1 &
  srv=$!
  addr=$(wait_addr "$out/server.out")
  read -r rps errs <<<"$(load "$addr")"
  kill -TERM "$srv"; wait "$srv" 2>/dev/null || true
  printf '%-8s %-7s %10s %7s %12s %8s %10s\n' "$demo" bare "$rps" "$errs" - - -
  for mode in fp fp-cfi dwarf; do
    "$iotrace" record -q --call-graph "$mode" -o "$out/t.data" -- "$bin" --port 0 >"$out/server.out" 2>"$out/rec.err" &
    rec=$!
    addr=$(wait_addr "$out/server.out")
    read -r rps errs <<<"$(load "$addr")"
    cpu=$(cpu_s "$rec")
    kill -TERM "$rec"; wait "$rec" 2>/dev/null || true
    lost=$("$iotrace" report --json "$out/t.data" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("lost_events", "?"))')
    stats=$("$iotrace" flamegraph "$out/t.data" --kind wall --folded -o /dev/null 2>&1 | grep 'flamegraph,' || true)
    per=$(sed -n 's/.* \([0-9]*\) bytes each.*/\1/p' <<<"$stats")
    unnamed=$(sed -n 's/.*frames, \(.*\)$/\1/p' <<<"$stats")
    printf '%-8s %-7s %10s %7s %11.2fs %8s %10s  %s\n' "$demo" "$mode" "$rps" "$errs" "$cpu" "$lost" "$per" "$unnamed"
  done
done
