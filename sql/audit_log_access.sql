-- audit_log_access.sql — who used the audit log itself: logins (failed ones
-- too) and every statement, with its SQL, rows returned and outcome.
--
-- Purpose:    oversight of investigators ("who looked up alice's activity,
--             and with which query?", "who keeps failing to log in?").
--             auditlake writes these records itself (category 'audit_access');
--             an org user sees its own org's, an admin also the system org's
--             ('_auditlake': admins, and names no user has).
-- Parameters: :actor  optional database user, quoted: -v actor="'erin'"
--             :since  optional lower bound, quoted timestamp; default 30 days ago
-- Controls:   SOC 2 CC7.2 (monitoring), CC4.1 (monitoring of controls), CC6.1 (logical access);
--             ISO 27001 A.8.15 (protection of log information), A.5.33 (protection of records).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -v actor="'erin'" -f sql/audit_log_access.sql

\if :{?actor}
\else
\set actor null
\endif
\if :{?since}
\else
\set since 'now() - interval ''30 days'''
\endif

select time, org_id, actor_id, action, outcome, source_ip,
       attributes->>'sql' as sql,
       json_get_int(attributes, 'rows') as rows,
       attributes->>'error' as error
from audit_events
where category = 'audit_access'
  and (:actor is null or actor_id = :actor)
  and time >= :since
order by time, seq;
