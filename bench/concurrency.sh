#!/usr/bin/env bash
# Connection set-up and 50 concurrent clients: auditlake against PostgreSQL 15
# holding the same events with btree indexes on actor_id, content_id, time and
# (org_id, time). Both log clients in with SCRAM-SHA-256 on loopback; the same
# psycopg driver runs the same investigation queries, systems alternating.
#   bash bench/concurrency.sh [N] [CLIENTS] [concurrency.py options...]
#       (default 1,000,000 realistic demo events, 50 clients)
#   BENCH_NDJSON=FILE bash bench/concurrency.sh 0 16 --query one_actor_7d
#       (the events of FILE instead, e.g. from bench/independent_events.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
N=${1:-1000000}
CLIENTS=${2:-50}
SET_NAME=$N
[ -n "${BENCH_NDJSON:-}" ] && SET_NAME=$(basename "$BENCH_NDJSON" .ndjson)
DATA=${BENCH_DATA_DIR:-/tmp/auditlake-concurrency-$SET_NAME}
PGDATA_DIR=/tmp/auditlake-concurrency-pg-$SET_NAME
PASSWORD=bench-password-1
AL_PORT=55451
PG_PORT=55452
bash scripts/setup.sh
venv="${AUDITLAKE_TEST_VENV:-$HOME/.cache/auditlake-venv}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PGBIN/postgres" ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi
cargo build --release --quiet --bin auditlake --example ingest_bench
B=$CARGO_TARGET_DIR/release/auditlake
if [ ! -f "$DATA/manifest.json" ]; then
  if [ -n "${BENCH_NDJSON:-}" ]; then
    $B import --format ndjson --data-dir "$DATA" "$BENCH_NDJSON" >/dev/null
  else
    $B demo --no-serve --shape realistic --events "$N" --days 180 --data-dir "$DATA"
  fi
  rm -rf "$PGDATA_DIR" # new events: PostgreSQL loads them afresh
fi
AUDITLAKE_PASSWORD=$PASSWORD $B user add bench --admin --data-dir "$DATA" >/dev/null
# The one-time export of every event to PostgreSQL is larger and longer than
# an investigation's default limits allow (past 1M events it was cut short).
$B serve --data-dir "$DATA" --pg-listen 127.0.0.1:$AL_PORT --http-listen 127.0.0.1:0 --max-pg-connections 200 \
  --max-result-rows 1000000000 --statement-timeout-ms 3600000 > "$DATA.log" 2>&1 &
AL_PID=$!
# PostgreSQL refuses to run as root: its cluster belongs to the postgres user.
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
trap 'kill $AL_PID; run_pg $PGBIN/pg_ctl -D "$PGDATA_DIR" stop -m fast >/dev/null 2>&1 || true' EXIT
fresh=0
if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
  fresh=1
  mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres "$PGDATA_DIR"
  echo "$PASSWORD" > /tmp/auditlake-bench-pwfile && chmod 644 /tmp/auditlake-bench-pwfile
  run_pg $PGBIN/initdb -D "$PGDATA_DIR" -U bench --pwfile=/tmp/auditlake-bench-pwfile --auth=scram-sha-256 >/dev/null
  rm -f /tmp/auditlake-bench-pwfile
fi
run_pg $PGBIN/pg_ctl -D "$PGDATA_DIR" -l "$PGDATA_DIR.log" -w start \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c max_connections=200 -c shared_buffers=1GB -k /tmp" >/dev/null
for _ in $(seq 1 100); do grep -q "auditlake ready" "$DATA.log" && break; sleep 0.2; done
export PGPASSWORD=$PASSWORD
AL="host=127.0.0.1 port=$AL_PORT dbname=auditlake user=bench"
PG="host=127.0.0.1 port=$PG_PORT dbname=postgres user=bench"
if [ "$fresh" = 1 ]; then
  psql "$PG" -q -v ON_ERROR_STOP=1 -c "create table audit_events (time timestamptz not null, id text not null,
    org_id text not null, actor_id text not null, action text not null, category text, outcome text,
    content_id text, content_title text, source_ip text, seq bigint not null)"
  # The same rows, exported by auditlake's COPY TO STDOUT.
  time psql "$AL" -q -v ON_ERROR_STOP=1 -c "\\copy (select time, id, org_id, actor_id, action, category, outcome,
    content_id, content_title, source_ip, seq from audit_events where org_id <> '_auditlake') to stdout" |
    psql "$PG" -q -v ON_ERROR_STOP=1 -c "\\copy audit_events from stdin"
  psql "$PG" -q -v ON_ERROR_STOP=1 -c "create index on audit_events (actor_id)" \
    -c "create index on audit_events (content_id)" -c "create index on audit_events (time)" \
    -c "create index on audit_events (org_id, time)" -c "analyze audit_events"
fi
"$venv/bin/python" bench/concurrency.py --auditlake "$AL" --postgres "$PG" --clients "$CLIENTS" "${@:3}"
