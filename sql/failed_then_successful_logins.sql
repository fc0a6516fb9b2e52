-- failed_then_successful_logins.sql — successful logins right after a run of failures.
--
-- Purpose:    password-guessing and credential-stuffing detection ("three
--             failures, then a success from the same account").
-- Parameters: :failures  optional, failures before the success; default 3
--             :window    optional, quoted interval to look back; default '15 minutes'
--             :since     optional lower bound, quoted timestamp; default 7 days ago
-- Controls:   SOC 2 CC6.1 (authentication), CC7.2 (anomaly monitoring);
--             ISO 27001 A.8.5 (secure authentication), A.8.16 (monitoring activities).
--
-- psql -h 127.0.0.1 -p 5433 -d auditlake -v failures=5 -f sql/failed_then_successful_logins.sql

\if :{?failures}
\else
\set failures 3
\endif
\if :{?window}
\else
\set window '''15 minutes'''
\endif
\if :{?since}
\else
\set since 'now() - interval ''7 days'''
\endif

select s.time as succeeded_at, s.org_id, s.actor_id, s.source_ip, s.location,
       count(*) as failures_before, min(f.time) as first_failure
from audit_events s
join audit_events f
  on f.org_id = s.org_id and f.actor_id = s.actor_id
 and f.action = 'auth.login.failed'
 and f.time < s.time and f.time >= s.time - cast(:window as interval)
where s.action = 'auth.login.succeeded'
  and s.time >= :since
group by s.time, s.seq, s.org_id, s.actor_id, s.source_ip, s.location
having count(*) >= :failures
order by succeeded_at, s.actor_id;
