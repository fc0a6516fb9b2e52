#!/usr/bin/env bash
# Two builds of auditlake side by side, alternating, on the same data: the
# check that a refactoring left the figures within noise.
#   bash bench/compare_binaries.sh OLD_BINARY NEW_BINARY [EVENTS] [ROUNDS]
# (defaults: 2,000,000 demo events, 2 rounds). Per round and binary: the
# demo bulk load, an NDJSON import through the WAL (group commit), and the
# p50 of four investigations over psql (21 runs each). Needs psql
# (scripts/setup.sh installs it).
set -euo pipefail
OLD=$1 NEW=$2 N=${3:-2000000} ROUNDS=${4:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/import.ndjson" <<'PY'
import json, sys
with open(sys.argv[1], "w") as out:
    for i in range(200_000):
        out.write(json.dumps({"time": "2026-11-%02dT%02d:%02d:00Z" % (1 + i % 28, i % 24, i % 60),
                              "id": "imp-%d" % i, "org_id": "org-%d" % (i % 7), "actor_id": "u%d" % (i % 997),
                              "action": "page.viewed", "content_id": "c%d" % (i % 5003),
                              "attributes": {"n": i}}) + "\n")
PY
seconds() { local t0=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(date +%s.%N) - $t0" | bc; }
p50() {
  local port=$1 sql=$2
  { echo '\timing on'; for _ in $(seq 1 21); do echo "$sql"; done; } |
    psql -h 127.0.0.1 -p "$port" -d auditlake -U b -X -q -o /dev/null 2>&1 | grep '^Time' | awk '{print $2}' |
    sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'
}
for round in $(seq 1 "$ROUNDS"); do
  # Alternate which goes first: the machine is noisy.
  if [ $((round % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
  for which in $order; do
    if [ "$which" = old ]; then bin=$OLD; else bin=$NEW; fi
    dir=$work/$which
    rm -rf "$dir" "$dir-import"
    load=$(seconds "$bin" demo --no-serve --events "$N" --data-dir "$dir")
    import=$(seconds "$bin" import --format ndjson --data-dir "$dir-import" "$work/import.ndjson")
    "$bin" serve --data-dir "$dir" --pg-listen 127.0.0.1:55450 --http-listen 127.0.0.1:58095 \
      --insecure-trust-loopback > "$work/serve.log" 2>&1 &
    pid=$!
    until grep -q "auditlake ready" "$work/serve.log"; do sleep 0.2; done
    actor=$(p50 55450 "select time, action, source_ip from audit_events where actor_id = 'acme-u007' and time > now() - interval '7 days' order by time;")
    content=$(p50 55450 "select time, actor_id, action from audit_events where content_id = '10123' and time > now() - interval '90 days' order by time;")
    day=$(p50 55450 "select action, count(*) from audit_events where time > now() - interval '1 day' group by action;")
    count=$(p50 55450 "select count(*) from audit_events;")
    kill "$pid"; wait "$pid" 2> /dev/null || true
    printf "round %d %s: load %.1f s, import 200k %.1f s, one_actor_7d %s ms, one_content_90d %s ms, actions_one_day %s ms, count_all %s ms\n" \
      "$round" "$which" "$load" "$import" "$actor" "$content" "$day" "$count"
  done
done
