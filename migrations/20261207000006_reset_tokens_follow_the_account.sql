-- A password change (by the owner, a reset or an admin) and a soft delete end every
-- outstanding reset link of the account: a link mailed before the change must not undo it.
-- The tokens' owner (the auth feature) reacts to the users row here, whichever path
-- changed it.
create function password_reset_tokens_end_for_account() returns trigger
language plpgsql as $$
begin
    update password_reset_tokens set used_at = now()
     where user_id = new.id and used_at is null;
    return null;
end;
$$;

create trigger users_end_reset_tokens
    after update of password_hash, deleted_at on users
    for each row
    when (old.password_hash is distinct from new.password_hash
          or (old.deleted_at is null and new.deleted_at is not null))
    execute function password_reset_tokens_end_for_account();
