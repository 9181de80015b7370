-- The token quota as a named constraint. Every write that adds tokens stores the limit it was
-- made under, so a write past the limit fails with environment_usage_within_limit (a count that
-- only goes down never violates it).
alter table environment_usage add column token_limit bigint;
alter table environment_usage add constraint environment_usage_within_limit
    check (token_limit is null or token_count <= token_limit);
