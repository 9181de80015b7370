-- Fair scheduling: when each environment last had a chunk of one of its jobs committed. A runner
-- that has committed a chunk takes its next one from the environment served least recently.
-- One row per environment that ever ran a job; the claim joins it to the runnable jobs only.
create table environment_schedule (
    environment_id uuid        not null,
    last_served_at timestamptz not null,
    constraint environment_schedule_pkey primary key (environment_id)
);

-- Claims that took a job over from a runner whose lease had expired (it died or stalled). Runners
-- give jobs back between chunks to serve other environments; those claims are not counted, so
-- jobs.max_attempts fails jobs that keep killing runners, never a long job for being fair.
alter table oath_jobs add column takeovers integer not null default 0;

-- Retention: finished jobs by completion time, for the purge.
create index oath_jobs_finished_idx on oath_jobs (completed_at)
    where status in ('DONE', 'FAILED');
