-- new_ip_logins.sql — logins from an address the account had not used before.
--
-- Purpose:    account-takeover detection ("alice always logs in from the
--             office; today from abroad").
-- Parameters: :since     optional start of the period checked, quoted timestamp; default 7 days ago
--             :baseline  optional, quoted interval before :since that counts as usual; default '90 days'
-- Controls:   SOC 2 CC6.1 (authentication), CC7.2 (anomaly monitoring);
--             ISO 27001 A.8.16 (monitoring activities), A.5.16 (identity management).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -f sql/new_ip_logins.sql

\if :{?since}
\else
\set since 'now() - interval ''7 days'''
\endif
\if :{?baseline}
\else
\set baseline '''90 days'''
\endif

select l.time, l.org_id, l.actor_id, l.source_ip, l.location
from audit_events l
where l.action = 'auth.login.succeeded'
  and l.time >= :since
  and not exists (
    select 1 from audit_events p
    where p.org_id = l.org_id and p.actor_id = l.actor_id and p.source_ip = l.source_ip
      and p.time < :since and p.time >= cast(:since as timestamp) - cast(:baseline as interval)
  )
order by l.time, l.seq;
