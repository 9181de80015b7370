-- Create chunks: the positions (in the token arrays, from 0) of tokens whose serial number an
-- earlier item of the same job has, found when the job is stored. Such a token is a duplicate of
-- that item and is never written, so two chunks of one job can be written at the same time
-- without both taking one serial's index entry (the later would wait for the earlier's commit,
-- which waits for it).
alter table oath_job_chunks add column repeated integer[] not null default '{}';

-- Chunks of jobs stored before, still waiting: the serials an earlier waiting chunk of their job
-- has. (A processed chunk's serials are in oath_tokens, where a later chunk finds them; repeats
-- within one chunk are found when it is processed.)
update oath_job_chunks c
set repeated = r.positions
from (select w.environment_id, w.job_id, w.first_idx,
             array_agg((s.n - 1)::integer order by s.n) as positions
      from oath_job_chunks w
      cross join lateral unnest(w.serial_numbers) with ordinality s(serial, n)
      where exists (select 1
                    from oath_job_chunks e
                    cross join lateral unnest(e.serial_numbers) es(serial)
                    where e.environment_id = w.environment_id and e.job_id = w.job_id
                      and e.first_idx < w.first_idx and es.serial = s.serial)
      group by w.environment_id, w.job_id, w.first_idx) r
where c.environment_id = r.environment_id and c.job_id = r.job_id and c.first_idx = r.first_idx;
