-- Single-use password reset tokens (SPEC §3): only the SHA-256 of the token is stored.
create table password_reset_tokens (
    id          uuid primary key default gen_random_uuid(),
    user_id     uuid not null references users (id) on delete cascade,
    token_hash  bytea not null constraint password_reset_tokens_token_hash_key unique
        constraint password_reset_tokens_token_hash_check check (length(token_hash) = 32),
    expires_at  timestamptz not null,
    used_at     timestamptz,
    created_at  timestamptz not null default now()
);

create index password_reset_tokens_user_id_idx on password_reset_tokens (user_id) where used_at is null;
-- Nightly cleanup of used and expired tokens.
create index password_reset_tokens_expires_at_idx on password_reset_tokens (expires_at);
