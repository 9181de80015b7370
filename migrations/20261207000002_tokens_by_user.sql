-- Finding the tokens paired to a user (filter=user.id eq "X"), a page in id order. Built in the
-- migration's transaction, not concurrently: a concurrent build waits for every transaction
-- that could see the table, among them those of other replicas waiting for the migration lock,
-- which deadlocks replicas that start together. Token writes wait while it builds; it holds
-- paired tokens only.
create index oath_tokens_user_idx on oath_tokens (environment_id, user_id, id)
    where user_id is not null;
