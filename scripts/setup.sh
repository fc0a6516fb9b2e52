#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh
# Debian machine:
# - the real `psql` client the integration tests drive;
# - a Python venv with DuckDB (PyPI), which the tests use to prove segments are
#   plain Parquet that other engines read, and moto's S3 server (PyPI), the
#   S3-compatible bucket the object-storage tests keep segments in.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v psql >/dev/null 2>&1; then
  echo "installing postgresql-client (psql) for the integration tests" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
psql --version >&2

venv="${AUDITLAKE_TEST_VENV:-$HOME/.cache/auditlake-venv}"
if ! "$venv/bin/python" -c 'import duckdb' >/dev/null 2>&1; then
  echo "creating $venv with duckdb for the open-layout tests" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'duckdb>=1.1,<3'
fi
"$venv/bin/python" -c 'import duckdb; print("duckdb", duckdb.__version__)' >&2
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "installing moto's S3 server into $venv for the object-storage tests" >&2
  "$venv/bin/pip" install -q 'moto[server]>=5,<6'
fi
"$venv/bin/python" -c 'import moto; print("moto", moto.__version__)' >&2
