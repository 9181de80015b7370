-- Events: every change of a token or a job, written in the transaction of the change (an
-- outbox), kept as the environment's activity log and delivered to its webhook subscriptions.
--
-- Position: (xid, seq). A reader shows only events whose transaction id is below
-- events_horizon() (every transaction of this database that old has ended), in (xid, seq)
-- order; transactions that end later all have larger ids, so a cursor over this order never
-- skips an event that commits late, as a cursor over a sequence alone would.
create table events (
    environment_id uuid        not null,
    xid            xid8        not null default pg_current_xact_id(),
    seq            bigint      generated always as identity,
    id             uuid        not null default gen_random_uuid(),
    type           text        not null,
    occurred_at    timestamptz not null default now(),
    -- The JWT `sub` of the caller, or "system".
    actor          text        not null,
    request_id     text,
    -- One event: the token or job it is about.
    resource_id    uuid,
    serial_number  text,
    job_id         uuid,
    -- OATH_JOB.COMPLETED, FAILED, CANCELED: the job's result as the job resource shows it.
    result         jsonb,
    -- The tokens a job chunk created or revoked, one event each (element n has an id derived
    -- from `id` and n): a 1,000-item chunk writes one row, not a thousand.
    token_ids      uuid[],
    serial_numbers text[],
    -- Events the row holds: readers count them without reading the arrays.
    len            integer     generated always as (coalesce(cardinality(token_ids), 1)) stored,
    constraint events_pkey primary key (environment_id, xid, seq),
    constraint events_one_or_many_check check ((resource_id is null) <> (token_ids is null))
);

-- Written once and read a page at a time: random ids do not compress.
alter table events
    alter column token_ids set storage external,
    alter column serial_numbers set storage external;

-- filter=resource.id eq "...": the events of one token or job.
create index events_resource_idx on events (environment_id, resource_id)
    where resource_id is not null;
-- Retention, oldest first.
create index events_occurred_at_idx on events (occurred_at);

-- Who submitted a job: its events carry the submitter and the request.
alter table oath_jobs
    add column actor      text,
    add column request_id text;

-- Webhook subscriptions and where each stands in its environment's events.
create table subscriptions (
    environment_id     uuid        not null,
    id                 uuid        not null,
    name               text        not null,
    enabled            boolean     not null,
    url                text        not null,
    -- Header names as given; their values sealed together (JSON) like token secrets.
    header_names       text[]      not null,
    headers_ciphertext bytea       not null,
    headers_key_id     text        not null,
    -- The HMAC key of Oath-Signature, sealed.
    secret_ciphertext  bytea       not null,
    secret_key_id      text        not null,
    -- Null: every type.
    included_types     text[],
    -- The last event delivered (or passed over): element cursor_n (from 1) of row
    -- (cursor_xid, cursor_seq); 0 when none of that row.
    cursor_xid         xid8        not null,
    cursor_seq         bigint      not null default 0,
    cursor_n           integer     not null default 0,
    -- Delivery: backoff after consecutive failures, a lease like a job's.
    next_attempt_at    timestamptz not null default now(),
    failures           integer     not null default 0,
    attempt            integer     not null default 0,
    lease_owner        text,
    lease_expires_at   timestamptz,
    last_success_at    timestamptz,
    last_failure_at    timestamptz,
    last_failure       text,
    dropped            bigint      not null default 0,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    constraint subscriptions_pkey primary key (environment_id, id)
);

-- What delivery runners look at: enabled subscriptions by when they may be tried.
create index subscriptions_due_idx on subscriptions (next_attempt_at) where enabled;

-- The `result` of a job's COMPLETED, FAILED or CANCELED event: the job resource's counts (zero
-- counts left out beside the one each type always shows), and the reason of a FAILED job. The
-- list of duplicates stays with the job's results.
create function event_job_result(job_type text, created integer, duplicates integer,
                                 failed integer, revoked integer, not_found integer,
                                 skipped_paired integer, reason text)
returns jsonb language sql immutable as $$
    select jsonb_strip_nulls(jsonb_build_object(
        'created', case when job_type = 'CREATE_OATH_TOKENS' then created end,
        'duplicatesCount', nullif(duplicates, 0),
        'failed', nullif(failed, 0),
        'revoked', case when job_type = 'REVOKE_OATH_TOKENS' then revoked end,
        'notFound', nullif(not_found, 0),
        'skippedPaired', nullif(skipped_paired, 0),
        'reason', reason))
$$;

-- Events are ordered by transaction id. A transaction that took its id before it wrote a token
-- (a revoke chunk fences its job first) must not order its event of that token before the
-- event of a transaction that changed the token and committed in between: it fails with a
-- serialization failure instead, and is retried with a new id.
create function events_check_order(env uuid, ids uuid[]) returns void
language plpgsql as $$
begin
    if exists (select 1 from events
               where environment_id = env and resource_id = any(ids)
                 and xid > pg_current_xact_id()) then
        raise exception 'a token of this chunk changed in a later transaction'
            using errcode = '40001';
    end if;
end
$$;

-- The transaction id below which every transaction that could have written to this database
-- had ended when the caller's snapshot was taken: the snapshot's oldest running transaction,
-- leaving out those seen running in another database (the snapshot's xmin covers the whole
-- server, and a long transaction elsewhere must not hold events back). A transaction of the
-- snapshot's that is no longer running, or whose database is unknown, counts: what it wrote
-- is invisible to the snapshot, so the horizon stays below it. Call it once per statement:
-- `e.xid < (select events_horizon())`.
create function events_horizon() returns xid8 language sql stable as $$
    select coalesce(
        (select min(x) from pg_snapshot_xip(s) x
         where not exists (select 1 from pg_stat_activity a
                           where a.datname <> current_database() and a.backend_xid = xid(x))),
        pg_snapshot_xmax(s))
    from pg_current_snapshot() s
$$;
