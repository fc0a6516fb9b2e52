"""Size of DuckDB's own zstd Parquet of the same events auditlake sealed.

Reads auditlake's segments (plain Parquet) with DuckDB, turns them back into
the events as clients sent them (ids as text, as in the JSON), writes those
with DuckDB's Parquet writer (zstd, same sort order), and prints both sizes as
JSON. For transparency it also writes the segments' own columns (UUID-shaped
ids already packed into 16-byte UUIDs by auditlake) with DuckDB's writer.
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
PACKED = ["id", "request_id"]
con.execute(
    f"create view segments as select * from read_parquet('{segments_dir}/*.parquet')"
)
unpacked = ", ".join(f"coalesce({c}_text, cast({c}_uuid as varchar)) as {c}" for c in PACKED)
packed_columns = ", ".join(f"{c}_uuid, {c}_text" for c in PACKED)
con.execute(f"create view events as select * exclude ({packed_columns}), {unpacked} from segments")
out = os.path.join(out_dir, "events.parquet")
started = time.time()
con.execute(f"copy (select * from events order by org_id, actor_id, time) to '{out}' (format parquet, compression zstd)")
theirs = os.path.getsize(out)
write_seconds = time.time() - started
out_packed = os.path.join(out_dir, "segments_columns.parquet")
con.execute(
    f"copy (select * from segments order by org_id, actor_id, time) to '{out_packed}' (format parquet, compression zstd)"
)
theirs_packed = os.path.getsize(out_packed)


def column_bytes(files):
    # Compressed bytes per column over all row groups (Parquet footer metadata).
    return dict(con.execute(
        f"select path_in_schema, sum(total_compressed_size) from parquet_metadata({files}) group by 1"
    ).fetchall())


ours_by_column = column_bytes(f"'{segments_dir}/*.parquet'")
for c in PACKED:
    # Both halves of a packed column count as that column.
    ours_by_column[c] = ours_by_column.pop(f"{c}_uuid") + ours_by_column.pop(f"{c}_text")
theirs_by_column = column_bytes(f"'{out}'")
print(json.dumps({
    "rows": rows,
    "auditlake_bytes": ours,
    "auditlake_bytes_per_event": ours / rows,
    "duckdb_zstd_bytes": theirs,
    "duckdb_zstd_bytes_per_event": theirs / rows,
    "ratio": ours / theirs,
    "duckdb_write_seconds": write_seconds,
    "duckdb_zstd_of_packed_columns_bytes_per_event": theirs_packed / rows,
    "duckdb_version": duckdb.__version__,
    "bytes_per_event_by_column": {
        c: {"auditlake": round(ours_by_column[c] / rows, 3), "duckdb": round(theirs_by_column.get(c, 0) / rows, 3)}
        for c in sorted(ours_by_column, key=ours_by_column.get, reverse=True)
    },
}, indent=2))
