"""Investigation latencies over the Postgres wire, with DuckDB over the same
Parquet segments side by side, alternating, in one run.

    python bench/investigations.py --pg-port P --segments DIR [--repetitions N]

Each query runs N times per system with varied parameters (actors and
content ids drawn from the data), alternating auditlake and DuckDB, and
every answer is compared between the two. The targets are for a hot cache,
so each query first runs once untimed per system and parameter. Prints a table and one JSON line.
"""

import argparse
import json
import random
import statistics
import time

import duckdb
import psycopg

QUERIES = {
    "one_actor_7d": (
        "actor",
        "select time, action, source_ip, content_id from audit_events "
        "where actor_id = '{p}' and time > {anchor} - interval '7 days' order by time, seq",
    ),
    "one_content_90d": (
        "content",
        "select time, actor_id, action from audit_events "
        "where content_id = '{p}' and time > {anchor} - interval '90 days' order by time, seq",
    ),
    "actions_last_day": (
        None,
        "select action, count(*) as n from audit_events "
        # Bounded above too: the server records each of these queries as an
        # event of its own, which DuckDB over the segments does not see.
        "where time > {anchor} - interval '1 day' and time <= {anchor} group by action order by action",
    ),
    "actor_last_20": (
        "actor",
        "select time, action from audit_events where actor_id = '{p}' order by time desc, seq desc limit 20",
    ),
}


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def normalise(rows):
    # Both engines return the same values; types differ (e.g. timezone objects).
    return [tuple(v.timestamp() if hasattr(v, "timestamp") else v for v in row) for row in rows]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--segments", required=True)
    parser.add_argument("--repetitions", type=int, default=51)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    duck = duckdb.connect()
    duck.execute("set threads = 2")
    duck.execute(f"create view audit_events as select * from read_parquet('{args.segments}/*.parquet')")
    rng = random.Random(args.seed)
    # Windows end at the newest event, not at now(): both systems see the same
    # window whenever they run.
    newest = duck.execute("select max(time) from audit_events").fetchone()[0]
    anchor = f"timestamptz '{newest.isoformat()}'"
    # Parameters active in the windows queried, drawn from the data itself.
    actors = [r[0] for r in duck.execute(
        f"select distinct actor_id from audit_events where time > {anchor} - interval '7 days' "
        "order by actor_id").fetchall()]
    contents = [r[0] for r in duck.execute(
        "select distinct content_id from audit_events where content_id is not null "
        f"and time > {anchor} - interval '90 days' order by content_id").fetchall()]
    params = {"actor": actors, "content": contents, None: [None]}

    pg = psycopg.connect(host="127.0.0.1", port=args.pg_port, dbname="auditlake", user="bench", autocommit=True)
    results = {}
    for name, (kind, template) in QUERIES.items():
        chosen = [rng.choice(params[kind]) for _ in range(args.repetitions)]
        for p in chosen:
            sql = template.format(p=p, anchor=anchor)
            with pg.cursor() as cur:
                cur.execute(sql, prepare=False)
                cur.fetchall()
            duck.execute(sql).fetchall()
        times = {"auditlake": [], "duckdb": []}
        rows_returned = []
        for i, p in enumerate(chosen):
            sql = template.format(p=p, anchor=anchor)
            order = ["auditlake", "duckdb"] if i % 2 == 0 else ["duckdb", "auditlake"]
            answers = {}
            for system in order:
                started = time.perf_counter()
                if system == "auditlake":
                    with pg.cursor() as cur:
                        cur.execute(sql, prepare=False)
                        answers[system] = cur.fetchall()
                else:
                    answers[system] = duck.execute(sql).fetchall()
                times[system].append((time.perf_counter() - started) * 1000)
            if normalise(answers["auditlake"]) != normalise(answers["duckdb"]):
                raise SystemExit(f"{name}: answers differ for {p!r}: "
                                 f"{len(answers['auditlake'])} vs {len(answers['duckdb'])} rows")
            rows_returned.append(len(answers["auditlake"]))
        results[name] = {
            system: {"p50_ms": round(statistics.median(t), 2), "p99_ms": round(percentile(t, 99), 2)}
            for system, t in times.items()
        }
        results[name]["median_rows"] = statistics.median(rows_returned)
        a, d = results[name]["auditlake"], results[name]["duckdb"]
        print(f"{name:18} rows~{results[name]['median_rows']:<7} auditlake p50 {a['p50_ms']:8.2f} ms p99 "
              f"{a['p99_ms']:8.2f} | duckdb p50 {d['p50_ms']:8.2f} ms p99 {d['p99_ms']:8.2f} "
              f"| ratio {a['p50_ms'] / d['p50_ms']:.2f}x", flush=True)
    print(json.dumps({"repetitions": args.repetitions, "results": results}))


if __name__ == "__main__":
    main()
