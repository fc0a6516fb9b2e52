#!/usr/bin/env bash
# Import and export throughput: N generated CloudTrail events (gzip S3
# deliveries, bench/cloudtrail_gen.py) imported with `auditlake import`,
# then read back with `auditlake export` (JSON Lines and Parquet, from the
# data directory) and through the HTTP cursor API (pages of 1,000 with a
# read token). Each figure is events per second of wall time.
#   bash bench/import_export.sh [N]     (default 1,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
N=${1:-1000000}
WORK=${BENCH_DIR:-/tmp/auditlake-import-export-$N}
# With the example, so features resolve as in the other bench builds.
cargo build --release --quiet --bin auditlake --example ingest_bench
B=$CARGO_TARGET_DIR/release/auditlake
if [ ! -d "$WORK/cloudtrail" ]; then
  python3 bench/cloudtrail_gen.py "$N" "$WORK/cloudtrail"
fi
rm -rf "$WORK/data" "$WORK"/export.*
echo "input: $(ls "$WORK/cloudtrail" | wc -l) files, $(du -sb "$WORK/cloudtrail" | cut -f1) bytes gzip"

# import (the command reports its own events/s)
/usr/bin/time -f "import: %e s wall, %M KiB max RSS" \
  $B import --format cloudtrail --org acme --data-dir "$WORK/data" "$WORK"/cloudtrail/*.json.gz | tail -1

# export from the data directory, both formats
for format in jsonl parquet; do
  /usr/bin/time -f "export $format: %e s wall, %M KiB max RSS" \
    $B export --org acme --format $format --data-dir "$WORK/data" --out "$WORK/export.$format"
  ls -l "$WORK/export.$format" | awk '{print "  " $5 " bytes"}'
done

# the HTTP cursor API, pages of 1,000, over the first HTTP_EVENTS events
# (default: all of them)
TOKEN=$($B token create --org acme --scope read --data-dir "$WORK/data" 2>/dev/null)
$B serve --data-dir "$WORK/data" --pg-listen 127.0.0.1:55451 --http-listen 127.0.0.1:58101 --insecure-trust-loopback > "$WORK/serve.log" 2>&1 &
PID=$!
trap 'kill $PID' EXIT
for _ in $(seq 1 100); do grep -q "auditlake ready" "$WORK/serve.log" && break; sleep 0.2; done
HTTP_EVENTS=${HTTP_EVENTS:-$N} TOKEN=$TOKEN python3 - <<'PY'
import json, os, time, urllib.request
token = os.environ["TOKEN"]
cursor, events, started = None, 0, time.time()
wanted = int(os.environ["HTTP_EVENTS"])
while events < wanted:
    url = "http://127.0.0.1:58101/v1/orgs/acme/events?limit=1000" + (f"&cursor={cursor}" if cursor else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    page = json.load(urllib.request.urlopen(request))
    events += len(page["events"])
    cursor = page["next_cursor"]
    if not page["more"]:
        break
elapsed = time.time() - started
print(f"HTTP cursor export: {events} events in {elapsed:.1f} s ({events / elapsed:,.0f} events/s)")
PY
