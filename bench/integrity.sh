#!/usr/bin/env bash
# The cost of tamper evidence, in one run, alternating: durable HTTP ingest
# (ingest_bench) and bulk load (`demo --no-serve`) with and without a signing
# key, then `auditlake verify` over the signed data.
#   bash bench/integrity.sh [EVENTS] [ROUNDS]      (default 1,000,000 and 2)
# Results: bench-out/integrity.json; BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
N=${1:-1000000}
ROUNDS=${2:-2}
cargo build --release --quiet --bin auditlake --example ingest_bench
B=$CARGO_TARGET_DIR/release/auditlake
OUT=bench-out/integrity
rm -rf "$OUT" && mkdir -p "$OUT/keys"
$B keygen --signing-key "$OUT/keys/signing.key" > /dev/null
results=()
for round in $(seq 1 "$ROUNDS"); do
  for mode in plain signed; do
    key=(); [ "$mode" = signed ] && key=(--signing-key "$OUT/keys/signing.key")
    rm -rf "$OUT/load-$mode"
    line=$($B demo --no-serve --events "$N" --data-dir "$OUT/load-$mode" "${key[@]}" 2>/dev/null | grep '^Loaded')
    rate=$(echo "$line" | sed -E 's/.*\(([0-9]+) events\/s\).*/\1/')
    echo "round $round bulk load $mode: $line"
    results+=("{\"round\":$round,\"path\":\"bulk_load\",\"mode\":\"$mode\",\"events_per_second\":$rate}")
    json=$("$CARGO_TARGET_DIR/release/examples/ingest_bench" --binary "$B" --data-dir "$OUT/http-$mode" \
      --events "$N" --repetitions 3 "${key[@]}")
    http=$(echo "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["ingest_events_per_second"]), round(d["sealed_after_ingest_seconds"], 2))')
    echo "round $round HTTP ingest $mode: $http (events/s, seconds to sealed after the last ack)"
    set -- $http
    results+=("{\"round\":$round,\"path\":\"http_ingest\",\"mode\":\"$mode\",\"events_per_second\":$1,\"sealed_after_ingest_seconds\":$2}")
  done
done
start=$(date +%s%N)
$B verify --data-dir "$OUT/load-signed" --signing-key "$OUT/keys/signing.key"
secs=$(python3 -c "print(round(($(date +%s%N) - $start) / 1e9, 2))")
echo "verify of $N events: $secs s"
results+=("{\"path\":\"verify\",\"events\":$N,\"seconds\":$secs}")
(IFS=,; echo "[${results[*]}]") > bench-out/integrity.json
