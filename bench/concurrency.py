"""Connection set-up and concurrent investigations: auditlake vs PostgreSQL.

Both systems get the same psycopg driver, SCRAM logins on loopback and the
same queries with the same parameters; rounds alternate between systems.
Answers to a sample of queries are compared first. Prints a table and one
JSON line.
"""
import argparse
import json
import random
import statistics
import threading
import time

import psycopg

QUERIES = [
    ("one_actor_7d", "actor",
     "select time, action, source_ip, content_id from audit_events "
     "where actor_id = %s and time > %s::timestamptz - interval '7 days' and time <= %s::timestamptz order by time, seq"),
    ("one_content_90d", "content",
     "select time, actor_id, action from audit_events "
     "where content_id = %s and time > %s::timestamptz - interval '90 days' and time <= %s::timestamptz order by time, seq"),
]


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def connection_setup(dsn, n):
    times = []
    for _ in range(n):
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select 1").fetchone()
        times.append((time.perf_counter() - started) * 1000)
    return times


PREPARE_THRESHOLD = 5  # psycopg's default


def concurrent(dsn, work, clients):
    """Each client opens its own connection and runs its share of `work`."""
    latencies, errors = [], []
    lock = threading.Lock()
    shares = [work[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(share):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.prepare_threshold = PREPARE_THRESHOLD
            barrier.wait()
            mine = []
            for sql, params in share:
                started = time.perf_counter()
                try:
                    conn.execute(sql, params).fetchall()
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    errors.append(str(e))
                mine.append((time.perf_counter() - started) * 1000)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} queries failed, e.g. {errors[0]}")
    return len(work) / elapsed, latencies


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--auditlake", required=True)
    parser.add_argument("--postgres", required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--queries-per-client", type=int, default=20)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-prepare", action="store_true",
                        help="never prepare statements server-side (psycopg prepares a statement run 5 times; "
                             "PostgreSQL may then plan it generically, without the parameters' values)")
    parser.add_argument("--query", choices=[q[0] for q in QUERIES], help="only this query (default: both, mixed)")
    args = parser.parse_args()
    queries = [q for q in QUERIES if args.query in (None, q[0])]
    global PREPARE_THRESHOLD
    PREPARE_THRESHOLD = None if args.no_prepare else 5
    systems = {"auditlake": args.auditlake, "postgres": args.postgres}
    rng = random.Random(args.seed)

    with psycopg.connect(args.postgres, autocommit=True) as pg:
        newest = pg.execute("select max(time) from audit_events").fetchone()[0]
        actors = [r[0] for r in pg.execute(
            "select distinct actor_id from audit_events where time > %s - interval '7 days'", [newest])]
        contents = [r[0] for r in pg.execute(
            "select distinct content_id from audit_events where content_id is not null "
            "and time > %s - interval '90 days' limit 20000", [newest])]
    pool = {"actor": sorted(actors), "content": sorted(contents)}
    work = []
    for _ in range(args.clients * args.queries_per_client):
        name, kind, sql = rng.choice(queries)
        work.append((sql, [rng.choice(pool[kind]), newest, newest]))

    # Same answers first, on a sample.
    with psycopg.connect(args.auditlake, autocommit=True) as al, psycopg.connect(args.postgres, autocommit=True) as pg:
        for sql, params in work[:40]:
            a = [tuple(r) for r in al.execute(sql, params).fetchall()]
            p = [tuple(r) for r in pg.execute(sql, params).fetchall()]
            if a != p:
                raise SystemExit(f"answers differ for {params}: {len(a)} vs {len(p)} rows")

    setup = {s: [] for s in systems}
    rate = {s: [] for s in systems}
    lat = {s: [] for s in systems}
    for round_ in range(args.rounds):
        order = list(systems) if round_ % 2 == 0 else list(reversed(systems))
        for system in order:
            setup[system] += connection_setup(systems[system], args.connections // args.rounds)
            qps, latencies = concurrent(systems[system], work, args.clients)
            rate[system].append(qps)
            lat[system] += latencies
    results = {}
    for system in systems:
        results[system] = {
            "connect_p50_ms": round(statistics.median(setup[system]), 2),
            "connect_p99_ms": round(percentile(setup[system], 99), 2),
            "queries_per_s": round(statistics.median(rate[system]), 1),
            "query_p50_ms": round(statistics.median(lat[system]), 2),
            "query_p99_ms": round(percentile(lat[system], 99), 2),
        }
        r = results[system]
        print(f"{system:10} connect+select 1 p50 {r['connect_p50_ms']:7.2f} ms p99 {r['connect_p99_ms']:7.2f} | "
              f"{args.clients} clients: {r['queries_per_s']:8.1f} queries/s, p50 {r['query_p50_ms']:7.2f} ms "
              f"p99 {r['query_p99_ms']:8.2f} ms", flush=True)
    print(json.dumps({"clients": args.clients, "queries": len(work), "results": results}))


if __name__ == "__main__":
    main()
