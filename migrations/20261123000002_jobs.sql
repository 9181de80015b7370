-- Bulk jobs: the job, its input items (consumed chunk by chunk), and per-item results.

create table oath_jobs (
    environment_id   uuid        not null,
    id               uuid        not null,
    type             text        not null,
    async            boolean     not null,
    force_unpair     boolean     not null default false,
    status           text        not null default 'PENDING',
    reason           text,
    total            integer     not null,
    -- Items per stored chunk, fixed when the job is submitted.
    chunk_size       integer     not null,
    -- Items [0, processed) are done; the next chunk starts at `processed`.
    processed        integer     not null default 0,
    created          integer     not null default 0,
    duplicates       integer     not null default 0,
    revoked          integer     not null default 0,
    not_found        integer     not null default 0,
    skipped_paired   integer     not null default 0,
    failed           integer     not null default 0,
    -- Fencing token: incremented by every claim; a chunk commits only under the attempt that
    -- claimed it, so a runner that lost its lease cannot write.
    attempt          integer     not null default 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    completed_at     timestamptz,
    constraint oath_jobs_pkey primary key (environment_id, id),
    constraint oath_jobs_type_check check (type in ('CREATE_OATH_TOKENS', 'REVOKE_OATH_TOKENS')),
    constraint oath_jobs_status_check
        check (status in ('PENDING', 'IN_PROGRESS', 'DONE', 'FAILED')),
    constraint oath_jobs_progress_check check (processed between 0 and total)
);

-- What runners look for: pending jobs, and running ones whose lease may have expired.
create index oath_jobs_runnable_idx on oath_jobs (created_at)
    where status in ('PENDING', 'IN_PROGRESS');

-- Job input, one row per chunk of `chunk_size` items (as the job was submitted), deleted when the
-- chunk commits. Create chunks carry the tokens to write, their secrets already sealed for their
-- pre-assigned ids, and the rows of an imported file that could not be read as tokens; revoke
-- chunks carry token ids only. Arrays keep the chunk one row, so storing a job writes a hundred
-- rows, not a hundred thousand.
create table oath_job_chunks (
    environment_id     uuid       not null,
    job_id             uuid       not null,
    -- Index of the chunk's first item in the job.
    first_idx          integer    not null,
    -- Position within the chunk of each token below.
    offsets            integer[]  not null,
    token_ids          uuid[]     not null,
    row_numbers        bigint[]   not null,
    serial_numbers     text[],
    token_types        text[],
    otp_lengths        smallint[],
    hash_algorithms    text[],
    counters           bigint[],
    time_steps         integer[],
    -- TOTP clock drift in time steps, as an imported file may state it (0 for JSON tokens).
    drifts             integer[]  not null default '{}',
    secret_ciphertexts bytea[],
    secret_key_ids     text[],
    masked_secrets     text[],
    -- Items that are not tokens (unreadable rows of an imported file): position, row, message.
    invalid_offsets    integer[]  not null default '{}',
    invalid_row_numbers bigint[]  not null default '{}',
    invalid_serials    text[]     not null default '{}',
    invalid_messages   text[]     not null default '{}',
    constraint oath_job_chunks_pkey primary key (environment_id, job_id, first_idx)
);

-- Chunks are written once and read once: compressing them costs more than it saves.
alter table oath_job_chunks
    alter column offsets set storage external,
    alter column token_ids set storage external,
    alter column row_numbers set storage external,
    alter column serial_numbers set storage external,
    alter column token_types set storage external,
    alter column otp_lengths set storage external,
    alter column hash_algorithms set storage external,
    alter column counters set storage external,
    alter column time_steps set storage external,
    alter column drifts set storage external,
    alter column secret_ciphertexts set storage external,
    alter column secret_key_ids set storage external,
    alter column masked_secrets set storage external;

create table job_results (
    environment_id uuid    not null,
    job_id         uuid    not null,
    idx            integer not null,
    row_number     bigint,
    serial_number  text,
    token_id       uuid,
    outcome        text    not null,
    masked_secret  text,
    message        text,
    constraint job_results_pkey primary key (environment_id, job_id, idx),
    constraint job_results_outcome_check check (outcome in (
        'CREATED', 'DUPLICATE', 'REVOKED', 'NOT_FOUND', 'SKIPPED_PAIRED', 'LIMIT_EXCEEDED', 'INVALID'))
);

-- Responses of POST requests that carried an Idempotency-Key, kept 24 hours.
create table idempotency_keys (
    environment_id uuid        not null,
    key            text        not null,
    request_hash   bytea       not null,
    status         smallint    not null,
    location       text,
    body           bytea       not null,
    created_at     timestamptz not null default now(),
    constraint idempotency_keys_pkey primary key (environment_id, key)
);
create index idempotency_keys_created_at_idx on idempotency_keys (created_at);
