-- off_hours_activity.sql — who was active outside business hours or at weekends.
--
-- Purpose:    insider-threat and compromised-account screening ("who works
--             at 3 am or on Saturdays, and how much?").
-- Parameters: :start_hour  optional, first business hour (UTC); default 8
--             :end_hour    optional, end of business hours (UTC); default 18
--             :since       optional lower bound, quoted timestamp; default 7 days ago
-- Controls:   SOC 2 CC7.2 (anomaly monitoring);
--             ISO 27001 A.8.16 (monitoring activities), A.6.7 (remote working).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -v start_hour=7 -f sql/off_hours_activity.sql

\if :{?start_hour}
\else
\set start_hour 8
\endif
\if :{?end_hour}
\else
\set end_hour 18
\endif
\if :{?since}
\else
\set since 'now() - interval ''7 days'''
\endif

select org_id, actor_id, count(*) as events, min(time) as first_event, max(time) as last_event
from audit_events
where time >= :since
  -- Product activity only: use of the log itself is in audit_log_access.sql.
  and (category is distinct from 'audit_access')
  and (date_part('hour', time) < :start_hour
       or date_part('hour', time) >= :end_hour
       or date_part('dow', time) in (0, 6))
group by org_id, actor_id
order by events desc, org_id, actor_id;
