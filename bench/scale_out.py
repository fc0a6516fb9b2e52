"""Scale-out reads: one statement on single-node auditlake, on a coordinator
with its workers, and on DuckDB over the same segment files, alternating
systems within each repetition, in a fresh order each time (this machine is
noisy).

Run by bench/scale_out.sh, which starts the servers pinned with taskset.
Each system is a name and how to run a statement:
  pg:PORT:ENGINE   auditlake over pgwire, `SET auditlake.engine = ENGINE`
  duckdb:GLOB      DuckDB (one thread) over read_parquet(GLOB)
Prints a table (median and p95 seconds) and one JSON line.
"""

import argparse
import json
import random
import statistics
import time

import duckdb
import psycopg

QUERIES = {
    # Per organisation, actions per day over 180 days: a full aggregate.
    "org_actions_per_day": (
        "select org_id, date_trunc('day', time) as day, action, count(*) as n from audit_events "
        "where time > {anchor} - interval '180 days' and time <= {anchor} group by 1, 2, 3"
    ),
    # Every organisation's mass-export screening (sql/mass_download.sql's shape).
    "all_org_mass_export": (
        "select org_id, actor_id, date_trunc('hour', time) as hour, count(*) as items from audit_events "
        "where time > {anchor} - interval '180 days' and time <= {anchor} "
        "and (action like '%download%' or action like '%export%' or action like '%viewed') "
        "group by 1, 2, 3 having count(*) >= 20"
    ),
    # One actor's week: a lookup.
    "one_actor_7d": (
        "select time, action, source_ip, content_id from audit_events "
        "where actor_id = '{actor}' and time > {anchor} - interval '7 days' and time <= {anchor} order by time"
    ),
}


def runner(system):
    kind, _, rest = system.partition(":")
    if kind == "pg":
        port, engine = rest.split(":")
        conn = psycopg.connect(host="127.0.0.1", port=int(port), dbname="auditlake", user="bench", autocommit=True)
        conn.execute(f"set auditlake.engine = '{engine}'")
        conn.execute("set statement_timeout = 3600000")
        return lambda sql: conn.execute(sql).fetchall()
    duck = duckdb.connect()
    duck.execute("set threads = 1")
    duck.execute(f"create view audit_events as select * from read_parquet('{rest}')")
    return lambda sql: duck.execute(sql).fetchall()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", action="append", required=True, help="NAME=pg:PORT:ENGINE or NAME=duckdb:GLOB")
    parser.add_argument("--query", action="append", help="which of the queries (default: all)")
    parser.add_argument("--anchor", help="the newest event's time, ISO 8601 (default: from the first DuckDB system)")
    parser.add_argument("--actor", help="whose week to read (default: the busiest actor of the last week)")
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()

    specs = [s.split("=", 1) for s in args.system]
    systems = [(name, runner(spec)) for name, spec in specs]
    if args.anchor is None or args.actor is None:
        duck = next(run for (name, run), (_, spec) in zip(systems, specs) if spec.startswith("duckdb:"))
        newest = duck("select max(time) from audit_events")[0][0]
        args.anchor = args.anchor or newest.isoformat()
        week = f"time > timestamptz '{args.anchor}' - interval '7 days'"
        busiest = f"select actor_id from audit_events where {week} group by 1 order by count(*) desc limit 1"
        args.actor = args.actor or duck(busiest)[0][0]
    anchor = f"timestamptz '{args.anchor}'"
    results = {}
    shuffler = random.Random(0)
    for query in args.query or list(QUERIES):
        sql = QUERIES[query].format(anchor=anchor, actor=args.actor)
        rows = {}
        for name, run in systems:  # warm-up, and the row counts to compare
            rows[name] = len(run(sql))
        times = {name: [] for name, _ in systems}
        for _ in range(args.repetitions):
            # A fresh order each round: a system run after DuckDB (in this
            # process, on the coordinator's core) finds its caches cold.
            order = list(systems)
            shuffler.shuffle(order)
            for name, run in order:
                started = time.perf_counter()
                run(sql)
                times[name].append(time.perf_counter() - started)
        for name, _ in systems:
            values = sorted(times[name])
            p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
            results[f"{query}/{name}"] = {"median_s": statistics.median(values), "p95_s": p95, "rows": rows[name]}
            print(f"{query:22} {name:26} median {statistics.median(values):8.3f} s  p95 {p95:8.3f} s  rows {rows[name]}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
