#!/usr/bin/env bash
# The whole test suite, in two tiers.
# 1. `cargo test`: unit, property and integration tests that need only the
#    Rust toolchain (the integration tests start the real binary and talk to
#    it with tokio-postgres and HTTP). It runs on a machine with nothing else.
# 2. The tests that drive programs outside Rust (psql, PostgreSQL 15, DuckDB,
#    moto, psycopg, node `pg`, JDBC), marked `#[ignore = "tier 2: ..."]`:
#    `scripts/setup.sh` installs those programs first.
# The kill -9 soak is ignored as well; `scripts/soak.sh` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
bash scripts/setup.sh
cargo test --test it "$@" -- --ignored --skip crash::crash_soak
