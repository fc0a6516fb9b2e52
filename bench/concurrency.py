"""Connection set-up and concurrent investigations: auditlake vs PostgreSQL.

Both systems get the same psycopg driver, SCRAM logins on loopback and the
same queries with the same parameters; rounds alternate between systems.
Answers to a sample of queries are compared first. Prints a table and one
JSON line.

With --dashboard: a Grafana-style dashboard instead. Each of --users users
(one organisation each, the largest among them) looks at ten panels
(PANELS) and refreshes them every --refresh-s seconds, the ten at once on
ten connections of its own, with the panel's SQL and time range inlined as
Grafana's PostgreSQL data source sends it (simple protocol); users start at
random offsets within the first interval. Every panel's answer is compared
between the systems first; then per-panel latencies (p50, p95) over
--duration-s per system and round.
"""
import argparse
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

QUERIES = [
    ("one_actor_7d", "actor",
     "select time, action, source_ip, content_id from audit_events "
     "where actor_id = %s and time > %s::timestamptz - interval '7 days' and time <= %s::timestamptz order by time, seq"),
    ("one_content_90d", "content",
     "select time, actor_id, action from audit_events "
     "where content_id = %s and time > %s::timestamptz - interval '90 days' and time <= %s::timestamptz order by time, seq"),
]


# A dashboard over one organisation's audit log; {org} and {now} are the
# dashboard variable and the end of the time range picker.
def window(span, where=""):
    return (f"from audit_events where {where}org_id = '{{org}}' and time > timestamptz '{{now}}' "
            f"- interval '{span}' and time <= timestamptz '{{now}}'")


def per_bin(width, span, where=""):
    """A time series panel: events per bin of `width`."""
    return (f"select date_bin(interval '{width}', time, timestamptz '2000-01-01 00:00:00+00') as t, count(*) as n "
            f"{window(span, where)} group by 1 order by 1")


def top(column, span, where="", limit=" limit 10"):
    """A bar chart panel: events per value of `column`, most first."""
    return (f"select {column}, count(*) as n {window(span, where)} "
            f"group by {column} order by n desc, {column}{limit}")


def latest(columns, span, where, rows):
    """A table panel: the newest events."""
    return f"select time, {columns} {window(span, where)} order by time desc, seq desc limit {rows}"


PANELS = [
    ("events per 5 min, 6 h", per_bin("5 minutes", "6 hours")),
    ("top actions, 24 h", top("action", "24 hours")),
    ("failures per hour, 24 h", per_bin("1 hour", "24 hours", "outcome = 'failure' and ")),
    ("top actors, 24 h", top("actor_id", "24 hours")),
    ("active actors, 7 d", f"select count(distinct actor_id) as actors {window('7 days')}"),
    ("events by category, 7 d", top("category", "7 days", limit="")),
    ("failing source IPs, 7 d", top("source_ip", "7 days", "outcome = 'failure' and ")),
    ("latest events", latest("actor_id, action, content_id", "30 days", "", 20)),
    ("access changes, 30 d", latest("actor_id, action", "30 days", "category = 'access' and ", 50)),
    ("events per day, 30 d", per_bin("1 day", "30 days")),
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


def dashboard_sql(panel, org, now):
    return PANELS[panel][1].replace("{org}", org).replace("{now}", now.isoformat())


def dashboard(dsn, users, refresh_s, duration_s, seed):
    """Per panel, the latencies (ms) of every refresh of every user."""
    latencies = {i: [] for i in range(len(PANELS))}
    errors = []
    lock = threading.Lock()
    rng = random.Random(seed)
    offsets = [rng.uniform(0, refresh_s) for _ in users]
    barrier = threading.Barrier(len(users) + 1)

    def user(org, offset, now):
        connections = [psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) for _ in PANELS]

        def panel(i):
            started = time.perf_counter()
            try:
                connections[i].execute(dashboard_sql(i, org, now), prepare=False).fetchall()
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                errors.append(f"{PANELS[i][0]}: {e}")
            return i, (time.perf_counter() - started) * 1000

        with ThreadPoolExecutor(len(PANELS)) as pool:
            barrier.wait()
            start = time.perf_counter()
            next_refresh = start + offset
            while next_refresh < start + duration_s:
                time.sleep(max(0.0, next_refresh - time.perf_counter()))
                done = list(pool.map(panel, range(len(PANELS))))
                with lock:
                    for i, ms in done:
                        latencies[i].append(ms)
                next_refresh += refresh_s
        for c in connections:
            c.close()

    threads = [threading.Thread(target=user, args=(org, off, now)) for (org, now), off in zip(users, offsets)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} panel queries failed, e.g. {errors[0]}")
    return latencies


def run_dashboard(args, systems):
    with psycopg.connect(args.postgres, autocommit=True) as pg:
        orgs = [r[0] for r in pg.execute("select org_id from audit_events group by org_id order by count(*) desc")]
        newest = {o: t for o, t in pg.execute("select org_id, max(time) from audit_events group by org_id")}
    rng = random.Random(args.seed)
    chosen = [orgs[0]] + rng.sample(orgs[1:], min(len(orgs) - 1, args.users - 1))
    users = [(org, newest[org]) for org in chosen]
    # Plain SQL, as Grafana sends it: psycopg's client-side cursors.
    plain = {"autocommit": True, "cursor_factory": psycopg.ClientCursor}
    with psycopg.connect(args.auditlake, **plain) as al, psycopg.connect(args.postgres, **plain) as pg:
        for org, now in users:
            for i in range(len(PANELS)):
                sql = dashboard_sql(i, org, now)
                a = [tuple(r) for r in al.execute(sql, prepare=False).fetchall()]
                p = [tuple(r) for r in pg.execute(sql, prepare=False).fetchall()]
                if a != p:
                    raise SystemExit(f"answers differ for {PANELS[i][0]} of {org}: {a[:3]} vs {p[:3]}")
    lat = {s: {i: [] for i in range(len(PANELS))} for s in systems}
    for round_ in range(args.rounds):
        order = list(systems) if round_ % 2 == 0 else list(reversed(systems))
        for system in order:
            for i, ms in dashboard(systems[system], users, args.refresh_s, args.duration_s, args.seed + round_).items():
                lat[system][i] += ms
    results = {}
    print(f"{len(users)} users x {len(PANELS)} panels, refresh every {args.refresh_s} s "
          f"(orgs {', '.join(o for o, _ in users)}), p50 / p95 ms:")
    print(f"{'panel':28} " + " ".join(f"{s:>22}" for s in systems))
    for i, (name, _) in enumerate(PANELS):
        cells = []
        for system in systems:
            values = lat[system][i]
            results.setdefault(system, {})[name] = {
                "p50_ms": round(statistics.median(values), 2), "p95_ms": round(percentile(values, 95), 2),
                "refreshes": len(values)}
            cells.append(f"{statistics.median(values):9.2f} / {percentile(values, 95):9.2f}")
        print(f"{name:28} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    print(json.dumps({"users": len(users), "panels": len(PANELS), "refresh_s": args.refresh_s, "results": results}))


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
    parser.add_argument("--dashboard", action="store_true", help="the Grafana-style dashboard instead (see above)")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--refresh-s", type=float, default=5.0)
    parser.add_argument("--duration-s", type=float, default=60.0)
    args = parser.parse_args()
    if args.dashboard:
        run_dashboard(args, {"auditlake": args.auditlake, "postgres": args.postgres})
        return
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
