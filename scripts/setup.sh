#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh
# Debian machine:
# - the real `psql` client the integration tests drive;
# - a Python venv with DuckDB (PyPI), which the tests use to prove segments are
#   plain Parquet that other engines read, moto's S3 server (PyPI), the
#   S3-compatible bucket the object-storage tests keep segments in, and the
#   Python clients the client tests drive (psycopg 3, psycopg2, SQLAlchemy,
#   pandas) and pgcli; dbt-postgres and Apache Superset in venvs of their own;
# - node `pg` (npm) in ~/.cache/auditlake-node, with playwright-core and
#   axe-core for the web view's test in Debian's Chromium (installed here too);
#   and the PostgreSQL JDBC driver
#   (Debian's libpostgresql-jdbc-java) with a JDK to compile the JDBC client;
# - the PostgreSQL 15 server, which `bench/run.py` (smoke-tested in the suite)
#   compares auditlake with.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v psql >/dev/null 2>&1; then
  echo "installing postgresql-client (psql) for the integration tests" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
psql --version >&2

# The PostgreSQL 15 server the side-by-side benchmark (and its smoke test)
# compares against; started only by them, on a throwaway data directory.
if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  echo "installing postgresql-15 for the side-by-side benchmark" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi

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
if ! "$venv/bin/python" -c 'import psycopg, psycopg2, sqlalchemy, pandas' >/dev/null 2>&1; then
  echo "installing psycopg, psycopg2, SQLAlchemy and pandas into $venv for the client tests" >&2
  "$venv/bin/pip" install -q 'psycopg[binary]>=3.1,<4' 'psycopg2-binary>=2.9,<3' 'sqlalchemy>=2,<3' 'pandas>=2,<3'
fi
"$venv/bin/python" -c 'import psycopg, psycopg2, sqlalchemy, pandas; print("psycopg", psycopg.__version__, "psycopg2", psycopg2.__version__, "sqlalchemy", sqlalchemy.__version__, "pandas", pandas.__version__)' >&2
if [ ! -x "$venv/bin/pgcli" ]; then
  echo "installing pgcli into $venv for the tools tests" >&2
  "$venv/bin/pip" install -q 'pgcli>=4,<5'
fi
"$venv/bin/pgcli" --version >&2

# dbt pins its own dependencies, so it gets a venv of its own. dbt-core 1.10
# is the newest whose install needs nothing from outside PyPI (1.11 fetches
# a parser wheel from GitHub while installing).
dbt_venv="${AUDITLAKE_DBT_VENV:-$HOME/.cache/auditlake-dbt}"
if [ ! -x "$dbt_venv/bin/dbt" ]; then
  echo "creating $dbt_venv with dbt-postgres for the tools tests" >&2
  python3 -m venv "$dbt_venv"
  "$dbt_venv/bin/pip" install -q 'dbt-core>=1.10,<1.11' 'dbt-postgres>=1.9,<1.10'
fi
"$dbt_venv/bin/python" -c 'import importlib.metadata as m; print("dbt-core", m.version("dbt-core"), "dbt-postgres", m.version("dbt-postgres"))' >&2

# Apache Superset pins SQLAlchemy 1.4, so it too gets a venv of its own.
# Its PyPI metadata misses two modules its CLI and engine specs import (rich,
# cachetools) and allows a Flask-Caching (2.4+) whose cache factory its
# metastore cache does not accept: those are named here.
superset_venv="${AUDITLAKE_SUPERSET_VENV:-$HOME/.cache/auditlake-superset}"
if ! "$superset_venv/bin/python" -c 'import superset, psycopg2, rich, cachetools' >/dev/null 2>&1; then
  echo "creating $superset_venv with Apache Superset for the tools tests" >&2
  python3 -m venv "$superset_venv"
  "$superset_venv/bin/pip" install -q 'apache-superset>=6,<7' 'psycopg2-binary>=2.9,<3' rich cachetools \
    'flask-caching>=2.1,<2.4'
fi
"$superset_venv/bin/python" -c 'import importlib.metadata as m; print("apache-superset", m.version("apache-superset"), "sqlalchemy", m.version("sqlalchemy"))' >&2

node_dir="$HOME/.cache/auditlake-node"
if [ ! -d "$node_dir/node_modules/pg" ]; then
  echo "installing node pg into $node_dir for the client tests" >&2
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund 'pg@8' >/dev/null)
fi
node -e "console.log('node pg', require('$node_dir/node_modules/pg/package.json').version)" >&2

# The web view's browser test: Debian's headless Chromium (no browser
# download by a test tool), driven by playwright-core, checked by axe-core.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium for the web view's browser test" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d "$node_dir/node_modules/playwright-core" ] || [ ! -d "$node_dir/node_modules/axe-core" ]; then
  echo "installing playwright-core and axe-core into $node_dir for the browser test" >&2
  (cd "$node_dir" && npm install --silent --no-audit --no-fund 'playwright-core@1.65' 'axe-core@4' >/dev/null)
fi
node -e "console.log('playwright-core', require('$node_dir/node_modules/playwright-core/package.json').version, 'axe-core', require('$node_dir/node_modules/axe-core/package.json').version)" >&2

if [ ! -f /usr/share/java/postgresql.jar ] || ! command -v javac >/dev/null 2>&1; then
  echo "installing the PostgreSQL JDBC driver and a JDK for the client tests" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java default-jdk-headless >/dev/null
fi
ls /usr/share/java/postgresql.jar >&2
