-- A data test (rows returned are failures): no account in scope has more
-- failed logins than `max_failed_logins` (default 10: a password-spraying
-- alarm, not a typo).
select actor_id, count(*) as failures
from {{ source('auditlake', 'audit_events') }}
where action = 'auth.login.failed'
group by actor_id
having count(*) > {{ var('max_failed_logins', 10) }}
