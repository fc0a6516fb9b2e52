-- deletions.sql — everything deleted, by whom.
--
-- Purpose:    destructive-change review and recovery ("which pages and
--             issues were deleted this week, and by whom?").
-- Parameters: :since  optional lower bound, quoted timestamp; default 7 days ago
-- Controls:   SOC 2 CC7.2 (monitoring), A1.2 (recovery);
--             ISO 27001 A.8.15 (logging), A.8.13 (information backup).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -f sql/deletions.sql

\if :{?since}
\else
\set since 'now() - interval ''7 days'''
\endif

select time, org_id, actor_id, action, content_type, content_id, content_title, source_ip
from audit_events
where action like '%.deleted'
  and time >= :since
order by time, seq;
