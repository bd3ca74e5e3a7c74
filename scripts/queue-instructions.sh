#!/usr/bin/env bash
# Instructions per job of the queue throughput bench's two sides, platform-queue and
# apalis-redis used directly, as callgrind counts them: one end-to-end run of each side
# (the bench binary with PQ_BENCH_SIDE, see crates/platform-queue/benches/throughput.rs)
# against a redis-server of its own, both under valgrind. Counts do not move with the
# machine's load: the ratio repeats to within about 0.5 %, where the criterion bench's
# wall-clock ratio moves by 10 % and more between runs on a shared machine.
#
# Usage: scripts/queue-instructions.sh [jobs per run, default 3000]
# Needs valgrind and redis-server (both on this project's machines); takes ~1 min.
# The Redis server listens on 127.0.0.1:${PQ_CALLGRIND_PORT:-6391} while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-3000}
port=${PQ_CALLGRIND_PORT:-6391}
out=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

for tool in valgrind redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "queue-instructions: needs $tool" >&2; exit 1; }
done
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "queue-instructions: port $port is taken (set PQ_CALLGRIND_PORT)" >&2
  exit 1
fi
bench=$(cargo bench -p platform-queue --bench throughput --locked --no-run 2>&1 |
  sed -n 's/.*Executable .*(\(.*throughput-[0-9a-f]*\)).*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "queue-instructions: bench binary not found" >&2; exit 1; }

# Total instructions in a callgrind output file.
total() { sed -n 's/^\(summary\|totals\): *//p' "$1" | head -1; }

declare -A per_job
for side in apalis_redis_direct platform_queue; do
  valgrind --tool=callgrind --callgrind-out-file="$out/redis-$side" \
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    >"$out/redis-$side.log" 2>&1 &
  server=$!
  for _ in $(seq 1 300); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  PQ_BENCH_SIDE=$side PQ_BENCH_JOBS=$jobs REDIS_URL="redis://127.0.0.1:$port" \
    valgrind --tool=callgrind --callgrind-out-file="$out/bench-$side" "$bench" \
    2>"$out/bench-$side.log" || { cat "$out/bench-$side.log" >&2; exit 1; }
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$server" || true
  client=$(total "$out/bench-$side")
  server_ir=$(total "$out/redis-$side")
  per_job[$side]=$(((client + server_ir) / jobs))
  printf '%-20s bench process %8d + redis-server %8d = %8d instructions per job\n' \
    "$side" $((client / jobs)) $((server_ir / jobs)) "${per_job[$side]}"
done
awk -v a="${per_job[apalis_redis_direct]}" -v o="${per_job[platform_queue]}" \
  'BEGIN { printf "platform_queue costs %.3fx the instructions of apalis-redis direct (throughput-equivalent ratio %.2fx)\n", o / a, a / o }'
