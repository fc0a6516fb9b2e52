-- How many events each organisation in scope sent (the audit log's own
-- records of its readers left out): one row per organisation the user may see.
select
    org_id,
    count(*) as events
from {{ source('auditlake', 'audit_events') }}
where category is distinct from 'audit_access'
group by org_id
order by org_id
