#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh
# Debian machine: the real `psql` client the integration tests drive.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v psql >/dev/null 2>&1; then
  echo "installing postgresql-client (psql) for the integration tests" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
psql --version >&2
