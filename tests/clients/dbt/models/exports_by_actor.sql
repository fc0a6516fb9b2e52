-- Who exported pages, how many and when last: the start of an
-- exfiltration investigation.
select
    actor_id,
    count(*) as exports,
    max(time) as last_export
from {{ source('auditlake', 'audit_events') }}
where action = 'confluence.page.exported'
group by actor_id
order by exports desc, actor_id
