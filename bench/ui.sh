#!/usr/bin/env bash
# The web view in Chromium over N events: an actor's 7-day timeline (from
# navigation to its first 100 rows visible), a new event from POST to
# visible, and the JS + CSS bytes gzipped (bench/ui_bench.js).
#   bash bench/ui.sh [N] [DAYS] [SHAPE] [REPETITIONS]
# SHAPE is `realistic` (the demo generator's benchmark shape, the default) or
# `independent` (bench/independent_events.py, a generator sharing nothing with
# auditlake's, imported as NDJSON).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
N=${1:-10000000}
DAYS=${2:-180}
SHAPE=${3:-realistic}
REPETITIONS=${4:-31}
DATA=${BENCH_DATA_DIR:-/tmp/auditlake-ui-$SHAPE-$N}
bash scripts/setup.sh
# With the example, so features resolve as in the other bench builds and the
# release build is shared rather than redone.
cargo build --release --quiet --bin auditlake --example ingest_bench
B=$CARGO_TARGET_DIR/release/auditlake
if [ ! -f "$DATA/manifest.json" ]; then
  case "$SHAPE" in
    realistic)
      /usr/bin/time -f "%e s %M KiB" $B demo --no-serve --shape realistic --events "$N" --days "$DAYS" --data-dir "$DATA" ;;
    independent)
      end=$(date -u +%Y-%m-%dT%H:%M:%SZ)
      python3 bench/independent_events.py "$N" "$DATA.ndjson" --end "$end"
      /usr/bin/time -f "%e s %M KiB" $B import --format ndjson --data-dir "$DATA" "$DATA.ndjson"
      rm -f "$DATA.ndjson" ;;
    *) echo "SHAPE is realistic or independent, not $SHAPE" >&2; exit 2 ;;
  esac
fi
du -sb "$DATA/segments"
password=bench-password-0
AUDITLAKE_PASSWORD=$password $B user add bench --admin --data-dir "$DATA" >/dev/null
token=$($B token create --any-org --data-dir "$DATA")
$B serve --data-dir "$DATA" --pg-listen 127.0.0.1:55451 --http-listen 127.0.0.1:58101 > "$DATA.log" 2>&1 &
PID=$!
trap 'kill $PID' EXIT
for _ in $(seq 1 100); do grep -q "auditlake ready" "$DATA.log" && break; sleep 0.2; done
NODE_PATH="$HOME/.cache/auditlake-node/node_modules" node bench/ui_bench.js http://127.0.0.1:58101 \
  "postgres://bench:$password@127.0.0.1:55451/auditlake" bench "$password" "$token" "$REPETITIONS"
