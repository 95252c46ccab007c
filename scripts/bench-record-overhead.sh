#!/usr/bin/env bash
# Times `dd if=/dev/zero of=/dev/null bs=1 count=20000` under `iotrace record` and under
# `perf stat` with the same syscall events, alternating runs, and prints the ratio of means.
# Target (issue "record"): ratio <= 1.10. Needs root (README.md: what less gets) and perf.
#   usage: scripts/bench-record-overhead.sh [RUNS]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
cargo build --release -q -p iotrace-cli
iotrace=target/release/iotrace
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
dd=(dd if=/dev/zero of=/dev/null bs=1 count=20000)

now() { date +%s%N; }
t_iot=0; t_perf=0
for ((i = 0; i < runs; i++)); do
  s=$(now); "$iotrace" record -q -o "$out/t.data" -- "${dd[@]}" 2>/dev/null; e=$(now)
  t_iot=$((t_iot + e - s))
  s=$(now); perf stat -e syscalls:sys_enter_read,syscalls:sys_enter_write -- "${dd[@]}" >/dev/null 2>&1; e=$(now)
  t_perf=$((t_perf + e - s))
done
bytes=$(stat -c %s "$out/t.data")
awk -v a="$t_iot" -v b="$t_perf" -v n="$runs" -v bytes="$bytes" 'BEGIN {
  printf "runs:                 %d each, alternating\n", n
  printf "iotrace record:       %.1f ms mean\n", a / n / 1e6
  printf "perf stat:            %.1f ms mean\n", b / n / 1e6
  printf "ratio iotrace/perf:   %.3f   (target <= 1.10)\n", a / b
  printf "trace size:           %d bytes\n", bytes
}'
