#!/usr/bin/env bash
# Investigation latencies over the demo data set (4 orgs, 127 actors, 30 days),
# through psql: bulk-load N events, serve them, time each query 21 times.
#   bash bench/demo_queries.sh [N]        (default 10,000,000; release build)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditlake-target}"
# With the example, so features resolve as in the other bench builds and the
# release build is shared rather than redone.
cargo build --release --quiet --bin auditlake --example ingest_bench
B=$CARGO_TARGET_DIR/release/auditlake
N=${1:-10000000}
rm -rf /tmp/q10m
/usr/bin/time -f "%e s %M KiB" $B demo --no-serve --events $N --data-dir /tmp/q10m 2>&1 | grep -E "Loaded|KiB|Generated"
$B serve --data-dir /tmp/q10m --pg-listen 127.0.0.1:55440 --http-listen 127.0.0.1:58090 --insecure-trust-loopback > /tmp/q10m.log 2>&1 &
PID=$!
sleep 3
run() {
  local name=$1 sql=$2
  { echo '\timing on'; for i in $(seq 1 21); do echo "$sql"; done; } |
    psql -h 127.0.0.1 -p 55440 -d auditlake -U b -X -q -o /dev/null 2>&1 | grep '^Time' | awk '{print $2}' | sort -n |
    awk -v name="$name" '{a[NR]=$1} END {printf "%s: p50 %.1f ms, max %.1f ms (%d runs)\n", name, a[int((NR+1)/2)], a[NR], NR}'
}
run one_actor_7d "select time, action, source_ip from audit_events where actor_id = 'acme-u007' and time > now() - interval '7 days' order by time;"
run one_content_90d "select time, actor_id, action from audit_events where content_id = '10123' and time > now() - interval '90 days' order by time;"
run actions_one_day "select action, count(*) from audit_events where time > now() - interval '1 day' group by action;"
run count_all "select count(*) from audit_events;"
psql -h 127.0.0.1 -p 55440 -d auditlake -U b -X -A -t -c "explain select time from audit_events where actor_id = 'acme-u007' and time > now() - interval '7 days'" | grep -o "AuditEventsScanExec[^,]*, segments_pruned=[0-9]*"
psql -h 127.0.0.1 -p 55440 -d auditlake -U b -X -A -t -c "select count(*) from audit_events where actor_id = 'acme-u007' and time > now() - interval '7 days'"
kill $PID
