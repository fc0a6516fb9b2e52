#!/usr/bin/env bash
# The crash soak: N cycles (default 100) of ingesting from concurrent writers,
# kill -9 at a random moment (before, during or after a seal or compaction),
# restart, and check that every acknowledged event is there exactly once and
# that seqs have no gap. CI runs it in reduced form (`scripts/soak.sh 10`).
#
#   bash scripts/soak.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100}"
export AUDITLAKE_CRASH_CYCLES="$cycles"
started=$(date +%s)
cargo test --test it -- --ignored --exact crash::crash_soak --nocapture
echo "crash soak: $cycles kill -9 cycles passed in $(( $(date +%s) - started )) s" >&2
