-- The TOTP clock drift (in time steps) an imported file carried for each token of a create chunk,
-- beside `time_steps`. Chunks stored before this column existed have none: their tokens start at
-- drift 0, as JSON tokens do.
alter table oath_job_chunks add column drifts integer[];
