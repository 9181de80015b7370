-- no-transaction
-- Finding the tokens paired to a user (filter=user.id eq "X"), a page in id order. Built without
-- blocking writes to oath_tokens (validations write on every check), hence outside a
-- transaction and alone in its file. Should the build fail, an invalid index of this name is
-- left behind: drop it (drop index concurrently oath_tokens_user_idx) before starting again.
create index concurrently oath_tokens_user_idx on oath_tokens (environment_id, user_id, id)
    where user_id is not null;
