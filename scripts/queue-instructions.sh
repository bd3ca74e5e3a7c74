#!/usr/bin/env bash
# Instructions per job of the queue throughput bench's two sides, platform-queue and
# apalis-redis used directly, as callgrind counts them: one end-to-end run of each side
# (the bench binary with PQ_BENCH_SIDE, see crates/platform-queue/benches/throughput.rs)
# against a redis-server of its own, both under valgrind. Counts do not move with the
# machine's load: the ratio repeats to within about 0.5 %, where the criterion bench's
# wall-clock ratio moves by 10 % and more between runs on a shared machine. The server
# runs with `--hz 1`, so that its timer work, which grows with the run's length rather
# than with the jobs, stays out of the counts.
#
# Usage: scripts/queue-instructions.sh [jobs per run, default 3000]
# Needs valgrind and redis-server (both on this project's machines); takes ~1 min once
# the bench is built. The server listens on 127.0.0.1:${PQ_CALLGRIND_PORT:-6391}.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-3000}
port=${PQ_CALLGRIND_PORT:-6391}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "queue-instructions: jobs must be a positive number, not '$jobs'" >&2; exit 2; }
for tool in valgrind redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "queue-instructions: needs $tool" >&2; exit 1; }
done
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "queue-instructions: port $port is taken (set PQ_CALLGRIND_PORT)" >&2
  exit 1
fi

out=$(mktemp -d)
server=
# Stops only the server this script started.
cleanup() {
  if [ -n "$server" ]; then
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$out"
}
trap cleanup EXIT

if ! cargo bench -p platform-queue --bench throughput --locked --no-run >"$out/build.log" 2>&1; then
  cat "$out/build.log" >&2
  exit 1
fi
bench=$(sed -n 's/.*Executable .*(\(.*throughput-[0-9a-f]*\)).*/\1/p' "$out/build.log" | tail -n 1)
[ -x "$bench" ] || { cat "$out/build.log" >&2; echo "queue-instructions: bench binary not found" >&2; exit 1; }

# Total instructions in a callgrind output file.
total() {
  local n
  n=$(sed -n '/^\(summary\|totals\): */{s///;p;q}' "$1")
  [ -n "$n" ] || { echo "queue-instructions: no total in $1" >&2; exit 1; }
  echo "$n"
}

declare -A per_job
for side in apalis_redis_direct platform_queue; do
  valgrind --tool=callgrind --callgrind-out-file="$out/redis-$side" \
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --hz 1 \
    >"$out/redis-$side.log" 2>&1 &
  server=$!
  up=
  for _ in $(seq 1 300); do
    kill -0 "$server" 2>/dev/null || break # ours exited (the port was taken meanwhile?)
    if redis-cli -p "$port" ping >/dev/null 2>&1; then up=1; break; fi
    sleep 0.2
  done
  [ -n "$up" ] || { cat "$out/redis-$side.log" >&2; echo "queue-instructions: redis-server did not start" >&2; exit 1; }
  PQ_BENCH_SIDE=$side PQ_BENCH_JOBS=$jobs REDIS_URL="redis://127.0.0.1:$port" \
    valgrind --tool=callgrind --callgrind-out-file="$out/bench-$side" "$bench" \
    2>"$out/bench-$side.log" || { cat "$out/bench-$side.log" >&2; exit 1; }
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$server" 2>/dev/null || true
  wait "$server" || true
  server=
  client=$(total "$out/bench-$side")
  server_ir=$(total "$out/redis-$side")
  per_job[$side]=$(((client + server_ir) / jobs))
  printf '%-20s bench process %8d + redis-server %8d = %8d instructions per job\n' \
    "$side" $((client / jobs)) $((server_ir / jobs)) "${per_job[$side]}"
done
awk -v a="${per_job[apalis_redis_direct]}" -v o="${per_job[platform_queue]}" \
  'BEGIN { printf "platform_queue costs %.3fx the instructions of apalis-redis direct (throughput-equivalent ratio %.2fx)\n", o / a, a / o }'
