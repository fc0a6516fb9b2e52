"""auditlake, PostgreSQL 15 and DuckDB side by side, in one run, on the same
events: load throughput, bytes on disk per event, and investigation latency.

    python bench/run.py --binary target/release/auditlake --pg-bin /usr/lib/postgresql/15/bin \
        [--events N] [--days D] [--repetitions R] [--work-dir DIR] [--out FILE] [--smoke]
        [--ndjson FILE]

(`bash bench/run.sh` installs what this needs and runs it.)

1. auditlake generates and bulk-loads N events of the realistic demo shape
   (50 organisations, 20,018 actors, 500,000 content ids over D days), or,
   with --ndjson, imports a file of events from another generator (e.g.
   `bench/independent_events.py`, so that nothing is tuned to one shape),
   then serves them. They are exported once, through auditlake's own COPY,
   to CSV.
2. PostgreSQL loads the CSV with COPY, then gets btree indexes on actor_id,
   content_id, time and (org_id, time), and ANALYZE; load time includes both.
3. DuckDB loads the same CSV into a native table (a database file), and also
   reads auditlake's Parquet segments directly.
4. Each investigation query runs R times per system with parameters drawn
   from the data, systems alternating in rotating order, after one untimed
   pass (hot cache). Every system's answer must equal auditlake's: this is
   also a correctness check of auditlake against two trusted engines.

Prints a table (p50/p99 in ms, and auditlake / best other) and writes JSON.
With --smoke it only checks that all systems agree (no figures are kept).
"""

import argparse
import datetime
import decimal
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg

COLUMNS = [
    ("time", "timestamptz"), ("received_at", "timestamptz"), ("id", "text"), ("org_id", "text"),
    ("actor_id", "text"), ("actor_name", "text"), ("actor_type", "text"), ("action", "text"),
    ("category", "text"), ("outcome", "text"), ("product", "text"), ("content_type", "text"),
    ("content_id", "text"), ("content_title", "text"), ("container_id", "text"), ("source_ip", "text"),
    ("user_agent", "text"), ("location", "text"), ("session_id", "text"), ("request_id", "text"),
    ("attributes", "text"), ("seq", "bigint"),
]

# Every query is bounded above by the newest demo event (`anchor`): the
# auditlake server records each query as an event of its own, which the
# other systems do not hold.
QUERIES = {
    "one_actor_7d": (
        "actor",
        "select time, action, source_ip, content_id from audit_events "
        "where actor_id = '{p}' and time > {anchor} - interval '7 days' and time <= {anchor} order by time, seq",
    ),
    "one_content_90d": (
        "content",
        "select time, actor_id, action from audit_events "
        "where content_id = '{p}' and time > {anchor} - interval '90 days' and time <= {anchor} order by time, seq",
    ),
    "top_actions_per_day_one_org": (
        "org",
        "select cast(floor(extract(epoch from time) / 86400) as bigint) as day, action, count(*) as n "
        "from audit_events where org_id = '{p}' and time > {anchor} - interval '7 days' and time <= {anchor} "
        "group by 1, 2 order by day, n desc, action",
    ),
    "one_org_actions_last_day": (
        "org",
        "select action, count(*) as n from audit_events where org_id = '{p}' "
        "and time > {anchor} - interval '1 day' and time <= {anchor} group by action order by n desc, action",
    ),
    "failed_logins_per_ip_last_hour": (
        "failed_action",
        "select source_ip, count(*) as n from audit_events where action = '{p}' "
        "and time > {anchor} - interval '1 hour' and time <= {anchor} group by source_ip order by n desc, source_ip",
    ),
    "full_table_aggregate": (
        None,
        "select category, outcome, count(*) as n, count(distinct actor_id) as actors from audit_events "
        "where time <= {anchor} group by category, outcome order by category, outcome",
    ),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * p / 100))]


def normalise(rows):
    def value(v):
        if isinstance(v, datetime.datetime):
            return v.astimezone(datetime.timezone.utc).isoformat()
        if isinstance(v, (float, decimal.Decimal)):
            return round(float(v), 6)
        return v
    return [tuple(value(v) for v in row) for row in rows]


def du(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def timed(step):
    started = time.perf_counter()
    result = step()
    return result, time.perf_counter() - started


class Postgres:
    """A throwaway PostgreSQL cluster on loopback (run as `postgres` when we are root)."""

    def __init__(self, bin_dir, data_dir):
        self.bin, self.data, self.port = Path(bin_dir), Path(data_dir), free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, *args):
        subprocess.run([*self.as_postgres, *args], check=True, stdout=subprocess.DEVNULL)

    def start(self):
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.data, "postgres")
        self.run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "bench", "--auth=trust")
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", f"{self.data}.log", "-w", "start", "-o",
                 f"-c listen_addresses=127.0.0.1 -p {self.port} -k /tmp -c shared_buffers=1GB -c fsync=on")

    def stop(self):
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def connect(self):
        return psycopg.connect(host="127.0.0.1", port=self.port, dbname="postgres", user="bench", autocommit=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin")
    parser.add_argument("--ingest-bench", help="examples/ingest_bench: also time durable HTTP ingest of the events")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--repetitions", type=int, default=31)
    parser.add_argument("--work-dir", default="/tmp/auditlake-bench-run")
    parser.add_argument("--out", default="bench-out/run.json")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="check answers only; 3 repetitions")
    parser.add_argument("--ndjson", help="import these events (auditlake NDJSON) instead of generating the demo's")
    args = parser.parse_args()
    if args.smoke:
        args.repetitions = 3
    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")  # PostgreSQL reads the CSV as its own user
        work.chmod(0o755)
    results = {"events": args.events, "days": args.days, "repetitions": args.repetitions, "load": {}, "size": {},
               "queries": {}}

    # 1. auditlake: generate and bulk-load, then serve.
    data = work / "auditlake"
    if args.ndjson:
        args.events = sum(1 for _ in open(args.ndjson))
        results["events"], results["shape"] = args.events, f"imported from {Path(args.ndjson).name}"
        _, seconds = timed(lambda: subprocess.run(
            [args.binary, "import", "--format", "ndjson", "--data-dir", str(data), args.ndjson],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        results["load"]["auditlake (import: WAL, then segments)"] = args.events / seconds
    else:
        results["shape"] = "realistic demo"
        _, seconds = timed(lambda: subprocess.run(
            [args.binary, "demo", "--no-serve", "--shape", "realistic", "--events", str(args.events),
             "--days", str(args.days), "--data-dir", str(data)], check=True, stdout=subprocess.DEVNULL))
        results["load"]["auditlake (generate + bulk load)"] = args.events / seconds
    results["size"]["auditlake"] = du(data / "segments") / args.events
    port = free_port()
    log = open(work / "auditlake.log", "w")
    server = subprocess.Popen(
        [args.binary, "serve", "--data-dir", str(data), "--pg-listen", f"127.0.0.1:{port}",
         "--http-listen", "127.0.0.1:0", "--insecure-trust-loopback",
         # The one-time export of every event to CSV is larger and longer than
         # an investigation's default limits allow.
         "--max-result-rows", str(args.events + 1_000_000), "--statement-timeout-ms", "3600000"],
        stdout=log, stderr=log)
    pg = Postgres(args.pg_bin, work / "pg")
    try:
        for _ in range(300):
            if "auditlake ready" in (work / "auditlake.log").read_text():
                break
            time.sleep(0.1)
        al = psycopg.connect(host="127.0.0.1", port=port, dbname="auditlake", user="bench", autocommit=True)
        names = ", ".join(c for c, _ in COLUMNS)
        csv = work / "events.csv"
        with open(csv, "wb") as f, al.cursor() as cur:
            with cur.copy(f"copy (select {names} from audit_events where org_id <> '_auditlake') to stdout "
                          "(format csv)") as copy:
                for chunk in copy:
                    f.write(chunk)
        csv.chmod(0o644)

        # 2. PostgreSQL: COPY, indexes, ANALYZE.
        pg.start()
        pgc = pg.connect()
        schema = ", ".join(f"{c} {t}" for c, t in COLUMNS)
        pgc.execute("set timezone = 'UTC'")
        pgc.execute(f"create table audit_events ({schema})")

        def load_postgres():
            pgc.execute(f"copy audit_events from '{csv}' (format csv)")
            for index in ["actor_id", "content_id", "time", "org_id, time"]:
                pgc.execute(f"create index on audit_events ({index})")
            pgc.execute("analyze audit_events")
        _, seconds = timed(load_postgres)
        results["load"]["postgresql (COPY + indexes + ANALYZE)"] = args.events / seconds
        pgc.execute("checkpoint")
        size = pgc.execute("select pg_total_relation_size('audit_events')").fetchone()[0]
        results["size"]["postgresql (table + indexes)"] = size / args.events

        # 3. DuckDB: a native table from the same CSV, and views over the segments.
        duck_file = work / "duck.db"
        native = duckdb.connect(str(duck_file))
        native.execute("set threads = 2")
        native.execute("set TimeZone = 'UTC'")
        types = ", ".join(f"'{c}': '{'TIMESTAMPTZ' if t == 'timestamptz' else 'BIGINT' if t == 'bigint' else 'VARCHAR'}'"
                          for c, t in COLUMNS)
        _, seconds = timed(lambda: native.execute(
            f"create table audit_events as select * from read_csv('{csv}', header = false, columns = {{{types}}})"))
        native.execute("checkpoint")
        results["load"]["duckdb (native table from CSV)"] = args.events / seconds
        results["size"]["duckdb (native table)"] = duck_file.stat().st_size / args.events
        if args.ingest_bench:
            # auditlake's durable HTTP ingest of the same events, in a server of its own.
            ndjson = work / "events.ndjson"
            fields = ", ".join(c for c, _ in COLUMNS if c not in ("time", "received_at", "attributes", "seq"))
            native.execute(
                f"copy (select strftime(time, '%Y-%m-%dT%H:%M:%S.%fZ') as time, {fields}, json(attributes) as attributes "
                f"from audit_events order by seq) to '{ndjson}' (format json)")
            report = subprocess.run(
                [args.ingest_bench, "--binary", args.binary, "--data-dir", str(work / "auditlake-http"),
                 "--ndjson", str(ndjson), "--repetitions", "1"], check=True, capture_output=True, text=True)
            ingest = json.loads(report.stdout)
            results["load"]["auditlake (HTTP ingest, durable)"] = ingest["ingest_events_per_second"]
            shutil.rmtree(work / "auditlake-http")

        parquet = duckdb.connect()
        parquet.execute("set threads = 2")
        parquet.execute("set TimeZone = 'UTC'")
        parquet.execute(f"create view audit_events as select * from read_parquet('{data}/segments/*.parquet')")

        # 4. Queries, alternating, answers compared.
        newest = native.execute("select max(time) from audit_events").fetchone()[0]
        anchor = f"timestamptz '{newest.astimezone(datetime.timezone.utc).isoformat()}'"
        rng = random.Random(args.seed)
        params = {
            "actor": [r[0] for r in native.execute(
                f"select distinct actor_id from audit_events where time > {anchor} - interval '7 days' "
                "order by actor_id").fetchall()],
            "content": [r[0] for r in native.execute(
                f"select distinct content_id from audit_events where content_id is not null and "
                f"time > {anchor} - interval '90 days' order by content_id").fetchall()],
            "org": [r[0] for r in native.execute("select distinct org_id from audit_events order by 1").fetchall()],
            # The most frequent failed sign-in action (each shape names its own).
            "failed_action": [r[0] for r in native.execute(
                "select action from audit_events where action like '%fail%' and action like '%login%' "
                "group by action order by count(*) desc, action limit 1").fetchall()] or ["auth.login.failed"],
            None: [None],
        }
        systems = {
            "auditlake": lambda sql: al.execute(sql, prepare=False).fetchall(),
            "postgresql": lambda sql: pgc.execute(sql, prepare=False).fetchall(),
            "duckdb": lambda sql: native.execute(sql).fetchall(),
            "duckdb_over_auditlake_parquet": lambda sql: parquet.execute(sql).fetchall(),
        }
        order = list(systems)
        for name, (kind, template) in QUERIES.items():
            chosen = [rng.choice(params[kind]) for _ in range(args.repetitions)]
            times = {s: [] for s in systems}
            rows = []
            for i, p in enumerate(chosen):
                sql = template.format(p=p, anchor=anchor)
                answers = {}
                for system in order[i % len(order):] + order[:i % len(order)]:
                    systems[system](sql)  # untimed: hot cache
                    answer, seconds = timed(lambda: systems[system](sql))
                    times[system].append(seconds * 1000)
                    answers[system] = normalise(answer)
                for system, answer in answers.items():
                    if answer != answers["auditlake"]:
                        raise SystemExit(f"{name} ({p!r}): {system} answered {len(answer)} rows, auditlake "
                                         f"{len(answers['auditlake'])}; first difference: "
                                         f"{next((a, b) for a, b in zip(answer + [None] * 9, answers['auditlake'] + [None] * 9) if a != b)}")
                rows.append(len(answers["auditlake"]))
            results["queries"][name] = {
                s: {"p50_ms": round(statistics.median(t), 2), "p99_ms": round(percentile(t, 99), 2)}
                for s, t in times.items()
            }
            results["queries"][name]["median_rows"] = statistics.median(rows)
    finally:
        server.terminate()
        server.wait()
        pg.stop()

    print(f"{args.events:,} events ({results['shape']}); every answer equal across the four systems")
    for name, figures in results["queries"].items():
        print(f"  {name:32} median rows {figures['median_rows']}")
    if args.smoke:
        return
    print("\nload, events/s")
    for system, rate in results["load"].items():
        print(f"  {system:42} {rate:12,.0f}")
    print("\nbytes on disk per event")
    for system, size in results["size"].items():
        print(f"  {system:42} {size:12.1f}")
    print("\nlatency, p50 / p99 ms (auditlake / best other, p50)")
    header = "".join(f"{s[:26]:>28}" for s in systems)
    print(f"  {'query':32}{header}    ratio")
    for name, figures in results["queries"].items():
        cells = "".join(f"{figures[s]['p50_ms']:>13.2f} /{figures[s]['p99_ms']:>10.2f}  " for s in systems)
        best = min(figures[s]["p50_ms"] for s in systems if s != "auditlake")
        print(f"  {name:32}{cells}  {figures['auditlake']['p50_ms'] / best:6.2f}x")
        figures["auditlake_vs_best_other"] = round(figures["auditlake"]["p50_ms"] / best, 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
