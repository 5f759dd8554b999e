-- E-mail verification: when each account proved it receives mail at its address. The
-- accounts that exist now were created before verification, so they count as verified.
alter table users add column email_verified_at timestamptz;
update users set email_verified_at = created_at;

-- Single-use verification links (only the SHA-256 of the token is stored), owned by the
-- auth feature like the reset tokens.
create table email_verification_tokens (
    id          uuid primary key default gen_random_uuid(),
    user_id     uuid not null references users (id) on delete cascade,
    token_hash  bytea not null constraint email_verification_tokens_token_hash_key unique
        constraint email_verification_tokens_token_hash_check check (length(token_hash) = 32),
    expires_at  timestamptz not null,
    used_at     timestamptz,
    created_at  timestamptz not null default now()
);

create index email_verification_tokens_user_id_idx on email_verification_tokens (user_id) where used_at is null;
-- Nightly cleanup of used and expired tokens.
create index email_verification_tokens_expires_at_idx on email_verification_tokens (expires_at);
