-- admin_grants.sql — grants of roles and privileges.
--
-- Purpose:    privilege-escalation review ("who was made admin this quarter,
--             by whom, and did anyone grant themselves a role?").
-- Parameters: :since  optional lower bound, quoted timestamp; default 90 days ago
-- Controls:   SOC 2 CC6.2/CC6.3 (access provisioning and changes);
--             ISO 27001 A.5.18 (access rights), A.8.2 (privileged access rights).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -f sql/admin_grants.sql

\if :{?since}
\else
\set since 'now() - interval ''90 days'''
\endif

select time, org_id, actor_id, action, content_id as granted_to, attributes,
       actor_id = content_id as self_granted, source_ip
from audit_events
where action like '%.granted'
  and time >= :since
order by time, seq;
