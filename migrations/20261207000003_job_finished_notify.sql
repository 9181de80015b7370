-- A job that reaches a final status (DONE, FAILED, CANCELED) is announced on the channel
-- `oath_job_finished` with its id, when its transaction commits: an `"async": false` submission
-- waits for that instead of reading the job again and again. A trigger, so that every statement
-- that finishes a job announces it, present and future.
create function oath_job_finished_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('oath_job_finished', new.id::text);
    return null;
end
$$;

create trigger oath_job_finished
    after update of status on oath_jobs
    for each row
    when (new.status in ('DONE', 'FAILED', 'CANCELED') and old.status is distinct from new.status)
    execute function oath_job_finished_notify();
