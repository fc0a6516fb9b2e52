"""How a server describes each `pg_catalog` table's columns, through
psycopg 3 on both protocols: without parameters it sends a simple query,
`prepare=True` parses and describes a prepared statement.

Usage: catalog_types.py URL TABLE... Prints one line per table and protocol,
`TABLE PROTOCOL [column type, ...]` (types by their name in the server's own
`pg_type`), or `TABLE PROTOCOL an error`.
"""
import sys

import psycopg

URL, TABLES = sys.argv[1], sys.argv[2:]

with psycopg.connect(URL, autocommit=True) as connection:
    names = dict(connection.execute("select oid::int8, typname::text from pg_catalog.pg_type").fetchall())
    for table in TABLES:
        for protocol, prepare in (("simple", False), ("prepared", True)):
            try:
                cursor = connection.execute(f"select * from pg_catalog.{table} limit 0", prepare=prepare)
            except psycopg.Error:
                print(table, protocol, "an error")
                continue
            columns = ", ".join(f"{c.name} {names.get(c.type_code, c.type_code)}" for c in cursor.description)
            print(table, protocol, f"[{columns}]")
