"""One lookup repeated against a running auditlake server, for profiling and
for A/B runs of two servers side by side (one port each, alternating runs).

    python bench/lookup_loop.py --pg-port P [--kind actor|content|select1|sql]
        [--sql "SELECT ..."] [--repetitions N] [--gap-ms G] [--set "SQL"]...

Parameters are actors (or content ids) active in the last 7 (90) days of the
data, reused in turn; each statement is sent as literal SQL, as psql would.
`--kind sql` repeats the one statement of `--sql` (e.g. a dashboard panel).
`--gap-ms` sleeps between statements: an idle server runs the same statement
markedly slower than one answering back to back (caches and the virtual CPU
go cold), so the two tell apart what a lookup costs from what idling costs.
"""

import argparse
import statistics
import time

import psycopg


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--kind", choices=["actor", "content", "select1", "sql"], default="actor")
    parser.add_argument("--sql", help="the statement --kind sql repeats")
    parser.add_argument("--repetitions", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    parser.add_argument("--set", action="append", default=[], help="a SET statement run first")
    args = parser.parse_args()

    pg = psycopg.connect(host="127.0.0.1", port=args.pg_port, user="bench", dbname="auditlake", autocommit=True)
    for statement in args.set:
        pg.execute(statement)
    newest = pg.execute("select max(time) from audit_events where category <> 'audit_access'").fetchone()[0]
    anchor = f"timestamptz '{newest.isoformat()}'"
    if args.kind == "actor":
        params = [r[0] for r in pg.execute(
            f"select distinct actor_id from audit_events where time > {anchor} - interval '7 days' "
            f"and time <= {anchor} order by 1 limit 60").fetchall()]
        template = ("select time, action, source_ip, content_id from audit_events where actor_id = '{p}' "
                    f"and time > {anchor} - interval '7 days' and time <= {anchor} order by time, seq")
    elif args.kind == "content":
        params = [r[0] for r in pg.execute(
            f"select content_id from audit_events where time > {anchor} - interval '90 days' "
            "and content_id is not null limit 60").fetchall()]
        template = ("select time, actor_id, action from audit_events where content_id = '{p}' "
                    f"and time > {anchor} - interval '90 days' and time <= {anchor} order by time, seq")
    elif args.kind == "sql":
        params, template = ["-"], args.sql.replace("{", "{{").replace("}", "}}")
    else:
        params, template = ["1"], "select {p}"

    for p in params[:10]:
        pg.execute(template.format(p=p), prepare=False).fetchall()
    times = []
    for i in range(args.repetitions):
        if args.gap_ms:
            time.sleep(args.gap_ms / 1000)
        sql = template.format(p=params[i % len(params)])
        started = time.perf_counter()
        pg.execute(sql, prepare=False).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f"{args.kind}: p50 {statistics.median(times):.2f} ms, p10 {times[len(times) // 10]:.2f}, "
          f"p90 {times[len(times) * 9 // 10]:.2f} ({args.repetitions} runs, gap {args.gap_ms:g} ms)")


if __name__ == "__main__":
    main()
