#!/usr/bin/env bash
# Fuzz every decoder that reads outside input (trace files, single frames with fixed-up
# checksums, the span wire, perf records) with the in-process mutation fuzzer (fuzz/).
# Seeds: the committed traces in fuzz/seeds, plus traces recorded now with the release
# iotrace (a fixture, and the tokio demo under a little load, so span batches are real).
# Prints one line per target, then `N inputs, P panics, peak RSS X MB`.
# Targets (issue 12): >= 1,000,000 inputs, 0 panics, peak RSS <= 200 MB.
# Failing inputs go to fuzz/crashes/; exit status 1 if there were any.
#   usage: scripts/fuzz.sh [INPUTS] [RNG_SEED]     (default 1000000 inputs, seed 1)
set -euo pipefail
cd "$(dirname "$0")/.."
inputs=${1:-1000000}
rng=${2:-1}
cargo build --release -q -p iotrace-fuzz -p iotrace-cli -p iotrace-demos -p iotrace-tests
bin=target/release
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"; kill $(jobs -p) 2>/dev/null || true' EXIT

# Fresh seeds. Recording needs perf for the richest traces; without it, --no-perf ones.
perf_flags=()
[ "$(id -u)" = 0 ] || perf_flags+=(--no-perf)
"$bin/iotrace" record -q "${perf_flags[@]}" -o "$seeds/threads.iotrace" -- "$bin/fixture" threads 4 || true
"$bin/iotrace" record -q "${perf_flags[@]}" -F 300 -o "$seeds/spin.iotrace" -- "$bin/fixture" spinners 2 50 || true
fifo=$seeds/fifo
mkfifo "$fifo"
"$bin/iotrace" record -q "${perf_flags[@]}" --no-samples -o "$seeds/tokio.iotrace" -- "$bin/tokio" --port 0 >"$fifo" 2>/dev/null &
rec=$!
exec 3<"$fifo"
read -r line <&3
"$bin/iotrace" load "http://${line#listening on }/work?io_ms=1&cpu_us=20" -c 4 -n 200 >/dev/null
kill -TERM "$rec"
wait "$rec" || true
exec 3<&-

"$bin/iotrace-fuzz" "$inputs" --rng "$rng" --seeds "$seeds" --crashes fuzz/crashes
