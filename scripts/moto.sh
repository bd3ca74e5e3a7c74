#!/usr/bin/env bash
# Starts moto (an S3-compatible server with bucket lifecycle support) on 127.0.0.1:9000
# for the platform-storage tests, reusing one that already answers there.
# Idempotent: installs moto[server] (pinned) into a venv under the cache directory only when
# missing, starts it in the background (log in the cache directory), waits until it
# answers, and prints the variable to export. Binds to loopback only.
#   eval "$(scripts/moto.sh)"
set -euo pipefail

HOST=127.0.0.1
PORT="${PLATFORM_MOTO_PORT:-9000}"
URL="http://$HOST:$PORT"
CACHE="${PLATFORM_CACHE:-$HOME/.cache/platform}"
VENV="$CACHE/moto-venv"
LOG="$CACHE/moto.log"
log() { echo "moto: $*" >&2; }

up() {
  if command -v curl >/dev/null; then
    curl -s -o /dev/null -m 2 "$URL/"
  else
    python3 - "$HOST" "$PORT" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.close()
PY
  fi
}

if ! up 2>/dev/null; then
  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/moto_server" ]; then
    log "installing moto[server] into $VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' >&2
  fi
  log "starting moto_server on $URL (log: $LOG)"
  nohup "$VENV/bin/moto_server" -H "$HOST" -p "$PORT" >"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 100); do up 2>/dev/null && break; sleep 0.1; done
  up 2>/dev/null || { log "moto did not start; see $LOG"; tail -n 20 "$LOG" >&2 || true; exit 1; }
fi

echo "export PLATFORM_TEST_MOTO_URL=$URL"
