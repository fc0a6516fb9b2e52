#!/usr/bin/env bash
# Durable HTTP ingest, bytes per event, and query latency of auditlake, plus the
# size of DuckDB's own zstd Parquet of the same events, in one run.
#   bash bench/ingest.sh [--events N] [--clients N] [--batch N]
#   bash bench/ingest.sh --events 6000000 --heavy-clients 8 --rounds 3   # ingest beside heavy queries
# Results (JSON) go to bench-out/ingest.json; BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
mkdir -p bench-out

# DuckDB from PyPI, in a venv the script owns.
if [ ! -x bench-out/venv/bin/python ]; then
  python3 -m venv bench-out/venv
  bench-out/venv/bin/pip install -q 'duckdb>=1.1'
fi

cargo build --release --quiet --bin auditlake --example ingest_bench
"$CARGO_TARGET_DIR/release/examples/ingest_bench" --binary "$CARGO_TARGET_DIR/release/auditlake" \
  --data-dir bench-out/data "$@" | tee bench-out/auditlake.json

bench-out/venv/bin/python bench/duckdb_size.py bench-out/data/segments bench-out/duckdb | tee bench-out/duckdb.json
