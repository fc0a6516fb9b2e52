"""Size of DuckDB's own zstd Parquet of the same events auditlake sealed.

Reads auditlake's segments (plain Parquet) with DuckDB, writes them back with
DuckDB's Parquet writer (zstd, same sort order), and prints both sizes as JSON.
"""
import json
import os
import sys
import time

import duckdb

segments_dir, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir, exist_ok=True)
ours = sum(os.path.getsize(os.path.join(segments_dir, f)) for f in os.listdir(segments_dir))
con = duckdb.connect()
rows = con.execute(f"select count(*) from read_parquet('{segments_dir}/*.parquet')").fetchone()[0]
out = os.path.join(out_dir, "events.parquet")
started = time.time()
con.execute(
    f"copy (select * from read_parquet('{segments_dir}/*.parquet') order by org_id, time) "
    f"to '{out}' (format parquet, compression zstd)"
)
theirs = os.path.getsize(out)


def column_bytes(files):
    # Compressed bytes per column over all row groups (Parquet footer metadata).
    return dict(con.execute(
        f"select path_in_schema, sum(total_compressed_size) from parquet_metadata({files}) group by 1"
    ).fetchall())


ours_by_column = column_bytes(f"'{segments_dir}/*.parquet'")
theirs_by_column = column_bytes(f"'{out}'")
print(json.dumps({
    "rows": rows,
    "auditlake_bytes": ours,
    "auditlake_bytes_per_event": ours / rows,
    "duckdb_zstd_bytes": theirs,
    "duckdb_zstd_bytes_per_event": theirs / rows,
    "duckdb_write_seconds": time.time() - started,
    "duckdb_version": duckdb.__version__,
    "bytes_per_event_by_column": {
        c: {"auditlake": round(ours_by_column[c] / rows, 3), "duckdb": round(theirs_by_column.get(c, 0) / rows, 3)}
        for c in sorted(ours_by_column, key=ours_by_column.get, reverse=True)
    },
}, indent=2))
