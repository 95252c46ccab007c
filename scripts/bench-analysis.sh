#!/usr/bin/env bash
# Analysis speed and memory on a long recording: records the tokio demo under keep-alive load
# for DURATION (default 60s), then times `iotrace report --json` (the one streaming pass: thread
# states, tasks, warnings) with /usr/bin/time -v, and also `timeline` and `export` for reference.
# Targets (issue "timelines"): report <= 5 s and <= 500 MB peak RSS, with >= 1 million span events.
#   usage: scripts/bench-analysis.sh [DURATION] [CONNECTIONS]   (default 60s 64)
# Needs root (README.md: what less gets), /usr/bin/time (Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60s}
conns=${2:-64}
cargo build --release -q --workspace
bin=target/release
out=$(mktemp -d)
trap 'kill "$rec" 2>/dev/null || true; rm -rf "$out"' EXIT

"$bin/iotrace" record -q -o "$out/t.data" -- "$bin/tokio" --port 0 >"$out/server.out" 2>"$out/record.err" &
rec=$!
for _ in $(seq 100); do grep -q '^listening on' "$out/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$out/server.out")
[ -n "$addr" ] || { echo "the tokio demo did not start:"; cat "$out/record.err"; exit 1; }
"$bin/iotrace" load "http://$addr/work?io_ms=1&cpu_us=20" -c "$conns" -d "$duration" --json >"$out/load.json"
kill -TERM "$rec"
wait "$rec" || true

# shellcheck source=lib/measure.sh
. scripts/lib/measure.sh

echo "recording:            $(du -h "$out/t.data" | cut -f1) for $duration of load, $(jq -r '.requests' "$out/load.json") requests"
measure report "$bin/iotrace" report --json "$out/t.data"
events=$(jq -r '.spans.events' "$out/report.stdout")
echo "span events:          $events"
echo "tasks, polls:         $(jq -r '"\(.task_summary.tasks), \(.task_summary.polls)"' "$out/report.stdout")"
echo "warnings:             $(jq -r '.warnings | length' "$out/report.stdout")"
measure timeline "$bin/iotrace" timeline "$out/t.data" -o "$out/timeline.html"
measure export "$bin/iotrace" export "$out/t.data" -o "$out/trace.json"
awk -v s="$report_secs" -v kb="$report_kb" -v ev="$events" 'BEGIN {
  ok = (s <= 5 && kb / 1024 <= 500 && ev >= 1000000)
  printf "report target:        <= 5 s and <= 500 MB with >= 1M span events: %s\n", ok ? "met" : "NOT met"
  exit ok ? 0 : 1
}'
