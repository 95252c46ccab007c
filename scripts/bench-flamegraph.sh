#!/usr/bin/env bash
# One run of the tokio demo under load, recorded at the same time by `iotrace record` (999 Hz
# on-CPU stacks, off-CPU stacks, spans) and by `perf record -g -F 999 -e cpu-clock -p PID`.
# Then times writing the on-CPU SVG both ways, best of 3:
#   iotrace flamegraph TRACE -o iotrace.svg
#   perf script | inferno-collapse-perf | inferno-flamegraph > perf.svg
# and prints the ratio (target <= 0.5), the cost of inlined frames (vs --no-inline; target <= 2) and the bytes per sample of each file (target <= 200
# for iotrace's stack records). Needs root (README.md: what less gets) and perf; installs
# inferno's binaries once into target/bench-tools (cargo install, for this bench only).
#   usage: scripts/bench-flamegraph.sh [SECONDS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
cargo build --release -q -p iotrace-cli -p iotrace-demos
iotrace=$PWD/target/release/iotrace
tools=$PWD/target/bench-tools
if [[ ! -x $tools/bin/inferno-flamegraph ]]; then
  echo "installing inferno's binaries into $tools (once) ..." >&2
  cargo install -q --locked --root "$tools" inferno
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$iotrace" record -q -o "$out/t.iotrace" -- target/release/tokio --port 0 >"$out/server.out" &
rec=$!
for _ in $(seq 100); do grep -q '^listening on' "$out/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$out/server.out")
server=$(pgrep -P "$rec")
perf record -q -e cpu-clock -F 999 -g -p "$server" -o "$out/perf.data" 2>/dev/null &
perf=$!
sleep 0.5
"$iotrace" load "http://$addr/work?io_ms=1&cpu_us=50" -c 64 -d "${secs}s" --json >"$out/load.json"
kill -INT "$perf"; wait "$perf" || true
kill -TERM "$rec"; wait "$rec" || true

now() { date +%s%N; }
best() { # best wall time in ms of 3 runs of "$@"
  local b=0
  for _ in 1 2 3; do
    local s e; s=$(now); "$@" >/dev/null 2>&1; e=$(now)
    local t=$(((e - s) / 1000000))
    if ((b == 0 || t < b)); then b=$t; fi
  done
  echo "$b"
}
perf_pipeline() {
  perf script -i "$out/perf.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" |
    "$tools/bin/inferno-flamegraph" >"$out/perf.svg"
}
t_iot=$(best "$iotrace" flamegraph "$out/t.iotrace" -o "$out/iotrace.svg")
t_plain=$(best "$iotrace" --no-inline flamegraph "$out/t.iotrace" -o "$out/plain.svg")
t_perf=$(best perf_pipeline)
stats=$("$iotrace" flamegraph "$out/t.iotrace" -o "$out/iotrace.svg" 2>&1)
samples=$(sed -n 's/.*(trace: \([0-9]*\) on-CPU samples, \([0-9]*\) off-CPU.*/\1 \2/p' <<<"$stats")
per_sample=$(sed -n 's/.* \([0-9]*\) bytes each.*/\1/p' <<<"$stats")
perf_samples=$(perf report -i "$out/perf.data" --stats 2>/dev/null | awk '/SAMPLE events:/ {print $3; exit}')
trace_bytes=$(stat -c %s "$out/t.iotrace")
perf_bytes=$(stat -c %s "$out/perf.data")
requests=$(sed -n 's/.*"requests": *\([0-9]*\).*/\1/p' "$out/load.json")
read -r on off <<<"$samples"
awk -v ti="$t_iot" -v tpl="$t_plain" -v tp="$t_perf" -v on="$on" -v off="$off" -v ps="$per_sample" \
  -v tb="$trace_bytes" -v pb="$perf_bytes" -v pn="$perf_samples" -v req="$requests" -v secs="$secs" 'BEGIN {
  printf "load:                         %d s, 64 connections, %d requests\n", secs, req
  printf "iotrace flamegraph (on-CPU):  %d ms   (%d on-CPU samples, %d off-CPU stacks in the trace)\n", ti, on, off
  printf "the same with --no-inline:    %d ms   (inlined frames and file:line cost %.2fx; target <= 2)\n", tpl, ti / tpl
  printf "perf script | inferno:        %d ms   (%d samples)\n", tp, pn
  printf "ratio iotrace/perf:           %.3f   (target <= 0.5)\n", ti / tp
  printf "iotrace bytes per sample:     %d   (stack records only; target <= 200)\n", ps
  printf "iotrace trace, whole:         %d bytes = %.0f per sample (with switches, syscalls, spans)\n", tb, tb / (on + off)
  printf "perf.data:                    %d bytes = %.0f per sample\n", pb, pb / pn
}'
echo "$stats" | sed 's/^/  /'
