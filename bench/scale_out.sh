#!/usr/bin/env bash
# Scale-out reads on this 2-core machine, every process pinned with taskset:
# single-node auditlake on one core against a coordinator with 1 and 2
# workers, and DuckDB (one thread) over the same segment files.
#   [QUERIES="one_actor_7d ..."] bash bench/scale_out.sh [N] [DAYS] [REPETITIONS] [STORE] [SHAPE]
# STORE is `file` (the default: the "bucket" is a directory every process
# reads through object_store's file backend, as a shared filesystem) or `s3`
# (moto's S3 server on loopback, from the venv; it keeps every object in its
# own memory, so mind N). SHAPE is `realistic` (the demo generator's
# benchmark shape, the default) or `independent` (bench/independent_events.py,
# a generator sharing nothing with auditlake's, imported as NDJSON through a
# pipe; its time span is its own 180 days).
# One coordinator process (core 0) serves both sides: `SET auditlake.engine =
# local` is the single node. Worker 1 is pinned to core 1, worker 2 to core 0
# (beside the coordinator, which only plans and merges while they scan). The
# 1-worker runs come after worker 2 is stopped (the coordinator plans over
# the workers that answer).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
N=${1:-100000000}
DAYS=${2:-180}
REPETITIONS=${3:-5}
STORE=${4:-file}
SHAPE=${5:-realistic}
DATA=${BENCH_DATA_DIR:-/tmp/auditlake-scale-$SHAPE-$STORE-$N}
bash scripts/setup.sh >/dev/null
cargo build --release --quiet --bin auditlake --example ingest_bench
B=$CARGO_TARGET_DIR/release/auditlake
VENV=$HOME/.cache/auditlake-venv
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
case "$STORE" in
  file)
    BUCKET=$DATA-bucket
    URL=file://$BUCKET ;;
  s3)
    $VENV/bin/moto_server -H 127.0.0.1 -p 55470 >/dev/null 2>&1 &
    pids+=($!)
    until curl -sf -X PUT http://127.0.0.1:55470/bench >/dev/null; do sleep 0.2; done
    export AWS_ENDPOINT=http://127.0.0.1:55470 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench \
      AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
    rm -rf "$DATA"
    BUCKET=$DATA-copy
    URL=s3://bench/scale ;;
  *) echo "STORE is file or s3, not $STORE" >&2; exit 2 ;;
esac
if [ ! -d "$DATA" ]; then
  case "$SHAPE" in
    realistic)
      /usr/bin/time -f "load: %e s %M KiB" $B demo --no-serve --shape realistic --events "$N" --days "$DAYS" \
        --segments-url "$URL" --data-dir "$DATA" ;;
    independent)
      rm -f "$DATA.ndjson" && mkfifo "$DATA.ndjson"
      python3 bench/independent_events.py "$N" "$DATA.ndjson" --end "$(date -u +%Y-%m-%dT%H:%M:%SZ)" &
      /usr/bin/time -f "load: %e s %M KiB" $B import --format ndjson --segments-url "$URL" --data-dir "$DATA" \
        "$DATA.ndjson"
      wait
      rm -f "$DATA.ndjson" ;;
    *) echo "SHAPE is realistic or independent, not $SHAPE" >&2; exit 2 ;;
  esac
fi
if [ "$STORE" = s3 ]; then
  # DuckDB cannot reach the bucket here (its S3 support is an extension
  # fetched from the internet): it reads a copy of the same files.
  mkdir -p "$BUCKET/segments"
  python3 - "$BUCKET/segments" <<'PY'
import sys, urllib.request, re
listing = urllib.request.urlopen("http://127.0.0.1:55470/bench?list-type=2&prefix=scale/segments/").read().decode()
for key in re.findall(r"<Key>([^<]+)</Key>", listing):
    urllib.request.urlretrieve(f"http://127.0.0.1:55470/bench/{key}", f"{sys.argv[1]}/{key.rsplit('/', 1)[1]}")
PY
fi
du -sb "$BUCKET/segments"
# DuckDB reads the segments as they are now, hard-linked (segment files are
# never changed, only replaced): the server's own records of the statements
# are sealed and compacted while it runs, and a file DuckDB listed could go.
rm -rf "$DATA-duckdb"
cp -al "$BUCKET/segments" "$DATA-duckdb"
# Enough working memory for the all-organisation aggregates on every node
# (DuckDB has no such limit by default), and an hour per statement (a
# session cannot raise its timeout past the server's, 60 s by default).
MEMORY="--query-memory-bytes 4294967296 --total-query-memory-bytes 8589934592"
# A worker holds a statement's partial and final aggregates at once (the
# single node aggregates in one step): with one worker, the mass-export
# screening's final aggregate outgrew 4 GiB beside its partial ones.
WORKER_MEMORY="--query-memory-bytes 8589934592 --total-query-memory-bytes 8589934592"
KEY=$DATA.cluster-key
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$KEY"
taskset -c 1 $B worker --listen 127.0.0.1:55461 --segments-url "$URL" --cluster-key-file "$KEY" $WORKER_MEMORY >"$DATA.worker1.log" 2>&1 &
pids+=($!)
taskset -c 0 $B worker --listen 127.0.0.1:55462 --segments-url "$URL" --cluster-key-file "$KEY" $WORKER_MEMORY >"$DATA.worker2.log" 2>&1 &
worker2=$!
pids+=($worker2)
taskset -c 0 $B serve --data-dir "$DATA" --segments-url "$URL" --insecure-trust-loopback \
  --workers 127.0.0.1:55461,127.0.0.1:55462 --cluster-key-file "$KEY" $MEMORY --statement-timeout-ms 3600000 \
  --pg-listen 127.0.0.1:55460 --http-listen 127.0.0.1:58160 >"$DATA.log" 2>&1 &
pids+=($!)
until grep -q "ready" "$DATA.log" 2>/dev/null; do sleep 0.2; done
# QUERIES (bench/scale_out.py's names) runs some of the queries only.
chosen=()
for query in ${QUERIES:-}; do chosen+=(--query "$query"); done
run() {
  taskset -c 0 $VENV/bin/python bench/scale_out.py --repetitions "$REPETITIONS" "${chosen[@]}" \
    --system single-node-1-core=pg:55460:local "$@"
}
echo "== coordinator + 2 workers"
run --system coordinator+2-workers=pg:55460:distributed --system duckdb-1-thread="duckdb:$DATA-duckdb/*.parquet" \
  --system auto=pg:55460:auto
kill $worker2
sleep 2
echo "== coordinator + 1 worker"
run --system coordinator+1-worker=pg:55460:distributed --system duckdb-1-thread="duckdb:$DATA-duckdb/*.parquet"
