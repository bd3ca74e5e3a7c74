#!/usr/bin/env bash
# Starts the local services the test suite needs, reusing any that already answer:
#   PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379 and (via moto.sh) an
#   S3-compatible server with lifecycle support (moto) on 127.0.0.1:9000.
# Installs them from Debian packages when missing. Idempotent; under a second when
# everything already runs. Prints the variables to export (`eval "$(scripts/services.sh)"`).
# Everything binds to loopback only.
set -euo pipefail

PG_PORT=5432
REDIS_PORT=6379
TEST_DB=platform_test
log() { echo "services: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $*"
  if [ -z "${APT_UPDATED:-}" ]; then
    as_root apt-get update -qq >&2
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

pg_up() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

# --- PostgreSQL -------------------------------------------------------------
if ! command -v pg_isready >/dev/null || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  pg_up || apt_install postgresql postgresql-client
fi
if ! pg_up; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || { log "PostgreSQL did not start"; exit 1; }
fi

# A password lets the same URL work against trust (this machine) and scram
# (Debian's default) clusters.
PG_URL_BASE="postgres://postgres:postgres@127.0.0.1:$PG_PORT"
psql_admin() {
  if PGPASSWORD=postgres psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc "select 1" >/dev/null 2>&1; then
    PGPASSWORD=postgres psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atqc "$1"
  else
    as_root su postgres -c "psql -p $PG_PORT -d postgres -v ON_ERROR_STOP=1 -Atqc \"$1\""
  fi
}
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc "select 1" >/dev/null 2>&1; then
  log "setting the postgres user's password for TCP logins"
  as_root su postgres -c "psql -p $PG_PORT -Atqc \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
fi
if [ "$(psql_admin "select 1 from pg_database where datname = '$TEST_DB'")" != "1" ]; then
  log "creating database $TEST_DB"
  psql_admin "create database $TEST_DB" >&2
fi

# --- Redis ------------------------------------------------------------------
if ! redis_up; then
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server redis-tools
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/platform.log >&2
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { log "Redis did not start"; exit 1; }
fi

# --- S3-compatible server with lifecycle support (moto), for platform-storage ----
# s3s-fs runs in-process inside the storage tests; moto covers bucket lifecycle.
if [ -f "$(dirname "$0")/moto.sh" ]; then
  # moto installs into a venv: Debian's python3 needs python3-venv for that.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3 python3-venv
  bash "$(dirname "$0")/moto.sh"
fi

echo "export DATABASE_URL=$PG_URL_BASE/$TEST_DB"
echo "export PLATFORM_TEST_DATABASE_URL=$PG_URL_BASE/$TEST_DB"
echo "export REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
