-- actor_timeline.sql — everything one account did, in order, with where from.
--
-- Purpose:    compromised-account investigation ("alice was phished on Tuesday:
--             what did her account do since Monday, from which IPs?").
-- Parameters: :actor  the actor_id, quoted: -v actor="'acme-u007'"
--             :since  optional lower bound, quoted timestamp; default 7 days ago
-- Controls:   SOC 2 CC7.3/CC7.4 (incident evaluation and response),
--             ISO 27001 A.8.15 (logging), A.5.25 (assessment of security events).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -v actor="'acme-u007'" -f sql/actor_timeline.sql

\if :{?since}
\else
\set since 'now() - interval ''7 days'''
\endif

select time, org_id, action, outcome, source_ip, location, user_agent,
       content_type, content_id, content_title
from audit_events
where actor_id = :actor
  and time >= :since
order by time, seq;
