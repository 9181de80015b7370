-- Create chunks as one value each: the chunk's items encoded by the service (the format is
-- described in src/store/batch/encoding.rs), so that PostgreSQL receives, stores and sends one
-- datum per chunk instead of some twenty arrays it takes apart and rebuilds element by element.
-- The secrets in it are ciphertexts sealed for each token's id, as in oath_tokens. Revoke chunks
-- keep their token_ids array.
alter table oath_job_chunks
    add column input bytea,
    -- What `keys status` counts of a chunk stored as `input`, without reading it: the key ids
    -- that seal its secrets, and how many each seals (one key id, as a rule).
    add column input_key_ids text[],
    add column input_key_items integer[];

-- Ciphertexts are random and the rest is small: compressing the value gains little and costs a
-- pglz pass per chunk. External: stored out of line, uncompressed.
alter table oath_job_chunks alter column input set storage external;

-- A chunk stored as `input` leaves the arrays empty, not null: a binary of before this migration
-- (a rollback) that meets such a chunk reads an empty chunk, which does not have the job's item
-- count, and fails the job as having its input missing, instead of failing on a null in every
-- step it retries. The arrays a create chunk no longer needs are nullable.
alter table oath_job_chunks
    alter column offsets drop not null,
    alter column token_ids drop not null,
    alter column row_numbers drop not null,
    alter column drifts drop not null,
    alter column invalid_offsets drop not null,
    alter column invalid_row_numbers drop not null,
    alter column invalid_serials drop not null,
    alter column invalid_messages drop not null,
    alter column repeated drop not null,
    alter column offsets set default '{}',
    alter column token_ids set default '{}',
    alter column row_numbers set default '{}',
    alter column serial_numbers set default '{}',
    alter column token_types set default '{}',
    alter column otp_lengths set default '{}',
    alter column hash_algorithms set default '{}',
    alter column counters set default '{}',
    alter column time_steps set default '{}',
    alter column secret_ciphertexts set default '{}',
    alter column secret_key_ids set default '{}',
    alter column masked_secrets set default '{}';

alter table oath_job_chunks
    add constraint oath_job_chunks_input_keys
    check (cardinality(input_key_ids) = cardinality(input_key_items));
