#!/usr/bin/env bash
# auditlake against PostgreSQL 15 (btree indexes) and DuckDB (native table,
# and over auditlake's own Parquet), on the same realistic demo events, in
# one run: load, bytes per event, investigation latency, answers compared.
#   bash bench/run.sh [--events N] [--days D] [--repetitions R] [--smoke]
# (defaults: 1,000,000 events over 180 days, 31 repetitions). Installs
# PostgreSQL 15 (Debian package) and DuckDB (PyPI, in the test venv) itself.
# Results: a table on stdout and bench-out/run.json; BENCHMARKS.md records runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
bash scripts/setup.sh
cargo build --release --quiet --bin auditlake --example ingest_bench
venv="${AUDITLAKE_TEST_VENV:-$HOME/.cache/auditlake-venv}"
"$venv/bin/python" bench/run.py --binary "$CARGO_TARGET_DIR/release/auditlake" \
  --ingest-bench "$CARGO_TARGET_DIR/release/examples/ingest_bench" "$@"
# The pruning property that needs a million events to show whatever the
# machine's load (the top-k skipping older segments), outside the suite.
if [[ " $* " != *" --smoke "* ]]; then
  cargo test --quiet --lib the_newest_events_of_an_actor_read_a_handful_of_its_history -- --ignored
fi
