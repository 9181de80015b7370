-- Helpdesk actions and a lockout without denial of service. New columns carry defaults and the
-- job status check only widens, so the previous release keeps working against this schema.
alter table oath_tokens
    -- A disabled token answers DISABLED to every check, without checking or counting it.
    add column enabled      boolean     not null default true,
    -- Lockout policy "throttle": checks are refused until then; null when not throttled.
    add column locked_until timestamptz,
    -- The last check the token passed; null before the first.
    add column last_used_at timestamptz;

-- CANCELED: a job stopped on request, finished like DONE and FAILED.
alter table oath_jobs drop constraint oath_jobs_status_check;
alter table oath_jobs add constraint oath_jobs_status_check
    check (status in ('PENDING', 'IN_PROGRESS', 'DONE', 'FAILED', 'CANCELED'));

-- Retention of every finished job by completion time. oath_jobs_finished_idx (DONE and FAILED
-- only) stays for the previous release's purge.
create index oath_jobs_ended_idx on oath_jobs (completed_at)
    where status in ('DONE', 'FAILED', 'CANCELED');
