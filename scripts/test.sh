#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests (the latter start
# the real binary and talk to it with tokio-postgres, psql and HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --all-targets "$@"
