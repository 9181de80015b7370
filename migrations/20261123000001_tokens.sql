-- OATH tokens and per-environment usage.
-- Every table holding tenant data leads its primary key and unique constraints with
-- environment_id, so the schema can be distributed by it (e.g. Citus) without change.

create table oath_tokens (
    environment_id    uuid        not null,
    id                uuid        not null,
    serial_number     text        not null,
    type              text        not null,
    otp_length        smallint    not null,
    hash_algorithm    text        not null,
    -- HOTP: the next counter value expected.
    counter           bigint,
    -- TOTP: seconds per step, and the clock drift in steps learned from validations.
    time_step         integer,
    drift             integer     not null default 0,
    -- TOTP: the last accepted time step, never accepted again.
    last_time_step    bigint,
    fail_count        integer     not null default 0,
    status            text        not null default 'AVAILABLE',
    user_id           text,
    -- AES-256-GCM: nonce || ciphertext || tag, sealed with key secret_key_id.
    secret_ciphertext bytea       not null,
    secret_key_id     text        not null,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    constraint oath_tokens_pkey primary key (environment_id, id),
    constraint oath_tokens_serial_number_key unique (environment_id, serial_number),
    constraint oath_tokens_type_check check (type in ('HOTP', 'TOTP')),
    constraint oath_tokens_otp_length_check check (otp_length in (6, 8)),
    constraint oath_tokens_hash_algorithm_check
        check (hash_algorithm in ('HmacSHA1', 'HmacSHA256', 'HmacSHA512')),
    constraint oath_tokens_kind_check check (
        (type = 'HOTP' and counter is not null and counter >= 0 and time_step is null
            and hash_algorithm = 'HmacSHA1')
        or (type = 'TOTP' and counter is null and time_step between 10 and 300)
    ),
    constraint oath_tokens_status_check check (
        (status = 'AVAILABLE' and user_id is null) or (status = 'PAIRED' and user_id is not null)
    )
);

-- Tokens per environment, kept in step with oath_tokens in the same transactions. The quota check
-- is a conditional increment of this row, so concurrent creates serialise on it and never pass
-- the limit.
create table environment_usage (
    environment_id uuid   not null,
    token_count    bigint not null default 0,
    constraint environment_usage_pkey primary key (environment_id),
    constraint environment_usage_token_count_check check (token_count >= 0)
);
