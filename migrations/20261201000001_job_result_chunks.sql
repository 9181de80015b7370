-- Job results as column arrays, one row per chunk of items, written in the chunk's transaction
-- as its input was stored (oath_job_chunks): a 100k-item job writes a hundred result rows and
-- index entries, not a hundred thousand. Item first_idx + i is element i + 1 of every array; an
-- array that would hold only nulls (a revoke job's masked secrets) is null.
create table job_result_chunks (
    environment_id uuid     not null,
    job_id         uuid     not null,
    -- Index of the chunk's first item in the job.
    first_idx      integer  not null,
    -- One byte per item: C CREATED, D DUPLICATE, R REVOKED, N NOT_FOUND, P SKIPPED_PAIRED,
    -- L LIMIT_EXCEEDED, I INVALID.
    outcomes       "char"[] not null,
    -- The token created or revoked (create jobs: CREATED items only; revoke jobs: the id asked for).
    token_ids      uuid[],
    serial_numbers text[],
    row_numbers    bigint[],
    masked_secrets text[],
    -- INVALID items: why the row could not be read as a token.
    messages       text[],
    constraint job_result_chunks_pkey primary key (environment_id, job_id, first_idx),
    constraint job_result_chunks_outcomes_check check (
        array_ndims(outcomes) = 1 and outcomes <@ '{C,D,R,N,P,L,I}'::"char"[]),
    constraint job_result_chunks_lengths_check check (
        coalesce(cardinality(token_ids), cardinality(outcomes)) = cardinality(outcomes)
        and coalesce(cardinality(serial_numbers), cardinality(outcomes)) = cardinality(outcomes)
        and coalesce(cardinality(row_numbers), cardinality(outcomes)) = cardinality(outcomes)
        and coalesce(cardinality(masked_secrets), cardinality(outcomes)) = cardinality(outcomes)
        and coalesce(cardinality(messages), cardinality(outcomes)) = cardinality(outcomes))
);

-- The results stored so far, chunk by chunk (every chunk's results were committed whole). A chunk
-- that a purge had begun to delete is left out: its job is past its retention.
insert into job_result_chunks
    (environment_id, job_id, first_idx, outcomes, token_ids, serial_numbers, row_numbers,
     masked_secrets, messages)
select r.environment_id, r.job_id, r.idx - r.idx % j.chunk_size,
       array_agg((case r.outcome
                      when 'CREATED' then 'C' when 'DUPLICATE' then 'D' when 'REVOKED' then 'R'
                      when 'NOT_FOUND' then 'N' when 'SKIPPED_PAIRED' then 'P'
                      when 'LIMIT_EXCEEDED' then 'L' when 'INVALID' then 'I'
                  end)::"char" order by r.idx),
       array_agg(r.token_id order by r.idx),
       array_agg(r.serial_number order by r.idx),
       array_agg(r.row_number order by r.idx),
       array_agg(r.masked_secret order by r.idx),
       array_agg(r.message order by r.idx)
from job_results r
join oath_jobs j on j.environment_id = r.environment_id and j.id = r.job_id
group by r.environment_id, r.job_id, r.idx - r.idx % j.chunk_size
having min(r.idx) = r.idx - r.idx % j.chunk_size
   and count(*) = max(r.idx) - min(r.idx) + 1;

drop table job_results;

-- One row per item, as job_results was, for reading by hand and in tests; the service reads
-- job_result_chunks.
create view job_results as
select c.environment_id, c.job_id, c.first_idx + (r.n - 1)::integer as idx, r.row_number,
       r.serial_number, r.token_id,
       case r.outcome
           when 'C' then 'CREATED' when 'D' then 'DUPLICATE' when 'R' then 'REVOKED'
           when 'N' then 'NOT_FOUND' when 'P' then 'SKIPPED_PAIRED'
           when 'L' then 'LIMIT_EXCEEDED' when 'I' then 'INVALID'
       end as outcome,
       r.masked_secret, r.message
from job_result_chunks c
cross join lateral unnest(c.outcomes, c.token_ids, c.serial_numbers, c.row_numbers,
                          c.masked_secrets, c.messages)
    with ordinality as r(outcome, token_id, serial_number, row_number, masked_secret, message, n);
