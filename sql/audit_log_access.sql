-- audit_log_access.sql — who searched the audit log itself.
--
-- Purpose:    oversight of investigators ("who looked up alice's activity,
--             and with which query?").
-- Parameters: :since  optional lower bound, quoted timestamp; default 30 days ago
-- Controls:   SOC 2 CC7.2 (monitoring), CC4.1 (monitoring of controls);
--             ISO 27001 A.8.15 (protection of log information), A.5.33 (protection of records).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -f sql/audit_log_access.sql

\if :{?since}
\else
\set since 'now() - interval ''30 days'''
\endif

select time, org_id, actor_id, action, outcome, source_ip, attributes
from audit_events
where category = 'audit_access'
  and time >= :since
order by time, seq;
