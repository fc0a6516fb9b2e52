-- dormant_accounts.sql — accounts active again after a long silence.
--
-- Purpose:    stale-account and takeover screening ("a contractor who left in
--             spring logged in yesterday").
-- Parameters: :since    optional start of the period checked, quoted timestamp; default 7 days ago
--             :dormant  optional, quoted interval of silence that counts; default '90 days'
-- Controls:   SOC 2 CC6.2 (removal of access), CC7.2 (monitoring);
--             ISO 27001 A.5.18 (access rights review), A.8.16 (monitoring activities).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -f sql/dormant_accounts.sql

\if :{?since}
\else
\set since 'now() - interval ''7 days'''
\endif
\if :{?dormant}
\else
\set dormant '''90 days'''
\endif

with returned as (
  select org_id, actor_id, min(time) as returned_at
  from audit_events where time >= :since
  group by org_id, actor_id
), before as (
  select org_id, actor_id, max(time) as last_seen
  from audit_events where time < :since
  group by org_id, actor_id
)
select r.org_id, r.actor_id, b.last_seen, r.returned_at
from returned r join before b on b.org_id = r.org_id and b.actor_id = r.actor_id
where b.last_seen < r.returned_at - cast(:dormant as interval)
order by r.returned_at, r.actor_id;
