-- permission_changes.sql — changes to permissions and sharing of content.
--
-- Purpose:    access-control change review ("which spaces were opened up,
--             to whom, by whom?").
-- Parameters: :since  optional lower bound, quoted timestamp; default 30 days ago
-- Controls:   SOC 2 CC6.1/CC6.3 (access changes), CC8.1 (change management);
--             ISO 27001 A.5.15 (access control), A.8.3 (information access restriction).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -f sql/permission_changes.sql

\if :{?since}
\else
\set since 'now() - interval ''30 days'''
\endif

select time, org_id, actor_id, action, content_type, content_id, attributes, source_ip
from audit_events
where (action like '%permission%' or action like '%shar%')
  and time >= :since
order by time, seq;
