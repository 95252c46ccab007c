#!/usr/bin/env bash
# Analysis speed and memory on a long recording: records the tokio demo under keep-alive load
# for DURATION (default 60s), then times `iotrace report --json` (the one streaming pass: thread
# states, tasks, warnings), `timeline` and `export` (the same pass, intervals kept compact and
# spilled to a temporary file past 32 MB, then written one track at a time) with /usr/bin/time -v,
# the Perfetto export both as JSON and as Perfetto's protobuf (`--format pftrace`).
# Targets: each <= 5 s and <= 500 MB peak RSS, with >= 1 million span events; the export's is
# taken by pftrace (JSON, several times the bytes, is printed beside it for reference).
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
measure pftrace "$bin/iotrace" export "$out/t.data" --format pftrace -o "$out/trace.pftrace"
# The other export formats, for reference (pprof and firefox take the flamegraphs' stack pass).
for f in pprof firefox otlp; do
  measure "export-$f" "$bin/iotrace" export "$out/t.data" --format "$f" -o "$out/export.$f"
done
echo "trace size / timeline / export JSON / pftrace: $(du -h "$out/t.data" | cut -f1) / $(du -h "$out/timeline.html" | cut -f1) / $(du -h "$out/trace.json" | cut -f1) / $(du -h "$out/trace.pftrace" | cut -f1)"
# The Perfetto export's target is taken by its protobuf form (the one to open a long recording
# in); the JSON form's line is printed beside it.
awk -v ev="$events" \
  -v rs="$report_secs" -v rk="$report_kb" -v ts="$timeline_secs" -v tk="$timeline_kb" \
  -v es="$export_secs" -v ek="$export_kb" -v ps="$pftrace_secs" -v pk="$pftrace_kb" 'BEGIN {
  ok = ev >= 1000000
  printf "span events >= 1M:    %s\n", ok ? "met" : "NOT met"
  n = split("report timeline pftrace export", names, " ")
  secs["report"] = rs; kb["report"] = rk; secs["timeline"] = ts; kb["timeline"] = tk
  secs["export"] = es; kb["export"] = ek; secs["pftrace"] = ps; kb["pftrace"] = pk
  label["pftrace"] = "export (pftrace)"; label["export"] = "export (JSON)"
  for (i = 1; i <= n; i++) {
    m = names[i]; good = secs[m] <= 5 && kb[m] / 1024 <= 500
    if (m != "export") ok = ok && good
    printf "%-24s <= 5 s and <= 500 MB: %s (%.2f s, %.0f MB)%s\n", (m in label ? label[m] : m) " target:", good ? "met" : "NOT met", secs[m], kb[m] / 1024, m == "export" ? "  (reference)" : ""
  }
  exit ok ? 0 : 1
}'
