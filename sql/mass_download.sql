-- mass_download.sql — actors who viewed, exported or downloaded many items in one hour.
--
-- Purpose:    exfiltration detection ("someone exported forty pages at 2 am").
-- Parameters: :threshold  optional, events per actor and hour; default 50
--             :since      optional lower bound, quoted timestamp; default 7 days ago
-- Controls:   SOC 2 CC7.2 (anomaly monitoring), CC6.7 (data transmission);
--             ISO 27001 A.8.16 (monitoring activities), A.8.12 (data leakage prevention).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -v threshold=20 -f sql/mass_download.sql

\if :{?threshold}
\else
\set threshold 50
\endif
\if :{?since}
\else
\set since 'now() - interval ''7 days'''
\endif

select org_id, actor_id, date_bin(interval '1 hour', time) as hour,
       count(*) as events, count(distinct content_id) as items,
       min(source_ip) as first_ip, max(source_ip) as last_ip
from audit_events
where (action like '%.viewed' or action like '%.exported' or action like '%.downloaded')
  and time >= :since
group by org_id, actor_id, date_bin(interval '1 hour', time)
having count(*) >= :threshold
order by events desc, hour, actor_id;
