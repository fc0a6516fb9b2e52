-- content_access.sql — who viewed, exported or downloaded one content item.
--
-- Purpose:    data-exposure investigation ("the pricing page leaked: who
--             opened or exported it, when, from where?").
-- Parameters: :content  the content_id, quoted: -v content="'p1'"
--             :since    optional lower bound, quoted timestamp; default 90 days ago
-- Controls:   SOC 2 CC6.1 (logical access), CC7.2 (monitoring);
--             ISO 27001 A.8.15 (logging), A.5.12 (classification of information).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -v content="'p1'" -f sql/content_access.sql

\if :{?since}
\else
\set since 'now() - interval ''90 days'''
\endif

select time, org_id, actor_id, actor_name, action, source_ip, location
from audit_events
where content_id = :content
  and (action like '%.viewed' or action like '%.exported' or action like '%.downloaded')
  and time >= :since
order by time, seq;
