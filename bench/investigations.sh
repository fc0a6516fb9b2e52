#!/usr/bin/env bash
# Investigation latencies at benchmark scale: bulk-loads N events of the
# realistic shape (50 orgs, 20,018 actors, 500,000 content ids) over D days,
# serves them, and times the investigation queries through the Postgres wire
# (psycopg) against DuckDB over the same Parquet segments, alternating.
#   bash bench/investigations.sh [N] [DAYS]     (default 10,000,000 over 180)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
N=${1:-10000000}
DAYS=${2:-180}
DATA=${BENCH_DATA_DIR:-/tmp/auditlake-investigations-$N}
bash scripts/setup.sh
venv="${AUDITLAKE_TEST_VENV:-$HOME/.cache/auditlake-venv}"
"$venv/bin/python" -c 'import psycopg' 2>/dev/null || "$venv/bin/pip" install -q 'psycopg[binary]>=3.1,<4'
# With the example, so features resolve as in the other bench builds and the
# release build is shared rather than redone.
cargo build --release --quiet --bin auditlake --example ingest_bench
B=$CARGO_TARGET_DIR/release/auditlake
if [ ! -f "$DATA/manifest.json" ]; then
  /usr/bin/time -f "%e s %M KiB" $B demo --no-serve --shape realistic --events "$N" --days "$DAYS" --data-dir "$DATA"
fi
du -sb "$DATA/segments"
$B serve --data-dir "$DATA" --pg-listen 127.0.0.1:55441 --http-listen 127.0.0.1:58091 --insecure-trust-loopback > "$DATA.log" 2>&1 &
PID=$!
trap 'kill $PID' EXIT
for _ in $(seq 1 50); do grep -q "auditlake ready" "$DATA.log" && break; sleep 0.2; done
"$venv/bin/python" bench/investigations.py --pg-port 55441 --segments "$DATA/segments" "${@:3}"
