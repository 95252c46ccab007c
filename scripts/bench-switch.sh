#!/usr/bin/env bash
# What recording costs per context switch: a one-byte ping-pong over two pipes, both ends
# pinned to CPU 0, so every round trip is two switches. Two shapes:
#   pair:  both processes recorded (a parent and its fork), as in a forking server;
#   peer:  a recorded echo process and an unrecorded client, as a server and its load.
# Each is run bare, under `iotrace record` (default, and -F 0: no on-CPU samples), and under
# `perf record -F 999 -g` for reference, alternating, ROUNDS times; prints the median ns per
# round trip and its ratio to bare. No target: the figures explain where recording's cost goes
# (docs/DESIGN.md, "BPF syscall counter").
#   usage: [IOTRACE=path/to/iotrace] scripts/bench-switch.sh [ROUNDS] [ROUND_TRIPS]
#   (default 5 rounds of 100000; IOTRACE: another build, e.g. an older one, instead of this tree's)
# Needs root (perf, BPF) and gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
n=${2:-100000}
if [ -z "${IOTRACE:-}" ]; then
  cargo build --release -q -p iotrace-cli
fi
iotrace=${IOTRACE:-$PWD/target/release/iotrace}
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
cat >"$out/pp.c" <<'EOF'
/* pp pair N: parent and child ping-pong N times over two pipes.
   pp echo A B N: read a byte from fifo A, write it to fifo B, N times.
   pp client A B N: write to fifo A, read from fifo B, N times.
   The parent (pair) and the client print the ns per round trip. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}
static int pong(int r, int w, int n) {
  char c;
  for (int i = 0; i < n; i++)
    if (read(r, &c, 1) != 1 || write(w, &c, 1) != 1) return 1;
  return 0;
}
static int ping(int w, int r, int n) {
  char c = 0;
  double t0 = now();
  for (int i = 0; i < n; i++)
    if (write(w, &c, 1) != 1 || read(r, &c, 1) != 1) return 1;
  printf("%.0f\n", (now() - t0) / n);
  return 0;
}
int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "pair")) {
    int n = atoi(argv[2]), a[2], b[2];
    if (pipe(a) || pipe(b)) return 1;
    if (fork() == 0) return pong(a[0], b[1], n);
    int rc = ping(a[1], b[0], n);
    wait(NULL);
    return rc;
  }
  if (argc == 5 && !strcmp(argv[1], "echo")) {
    int r = open(argv[2], O_RDONLY), w = open(argv[3], O_WRONLY);
    return pong(r, w, atoi(argv[4]));
  }
  if (argc == 5 && !strcmp(argv[1], "client")) {
    int w = open(argv[2], O_WRONLY), r = open(argv[3], O_RDONLY);
    return ping(w, r, atoi(argv[4]));
  }
  return 2;
}
EOF
gcc -O2 -o "$out/pp" "$out/pp.c"
mkfifo "$out/a" "$out/b"
pp=$out/pp

# wrap MODE CMD...: CMD as bare, under iotrace (with flags) or under perf record
wrap() {
  local mode=$1
  shift
  case $mode in
    bare) "$@" ;;
    iotrace) "$iotrace" record -q -o "$out/t.data" -- "$@" 2>/dev/null ;;
    iotrace-F0) "$iotrace" record -q -F 0 -o "$out/t.data" -- "$@" 2>/dev/null ;;
    perf) perf record -q -F 999 -g -o "$out/perf.data" -- "$@" 2>/dev/null ;;
  esac
}
pair() { wrap "$1" taskset -c 0 "$pp" pair "$n" | tail -1; }
peer() {
  wrap "$1" taskset -c 0 "$pp" echo "$out/a" "$out/b" "$n" >/dev/null &
  taskset -c 0 "$pp" client "$out/a" "$out/b" "$n"
  wait
}

modes=(bare iotrace iotrace-F0 perf)
for shape in pair peer; do
  for m in "${modes[@]}"; do : >"$out/$shape.$m"; done
  for ((i = 0; i < rounds; i++)); do
    for m in "${modes[@]}"; do "$shape" "$m" >>"$out/$shape.$m"; done
  done
done
python3 - "$out" "${modes[@]}" <<'PY'
import statistics, sys
out, modes = sys.argv[1], sys.argv[2:]
labels = {"bare": "bare", "iotrace": "iotrace record", "iotrace-F0": "iotrace record -F 0",
          "perf": "perf record -F 999 -g"}
for shape, what in (("pair", "both ends recorded"), ("peer", "recorded echo, unrecorded client")):
    print(f"{shape}: {what}, ns per round trip (median)")
    med = {m: statistics.median(float(x) for x in open(f"{out}/{shape}.{m}").read().split()) for m in modes}
    for m in modes:
        print(f"  {labels[m]:24s} {med[m]:8.0f}   {med[m] / med['bare']:5.2f}x bare")
PY
