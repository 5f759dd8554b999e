-- Users and refresh-token sessions (SPEC §3, §4).

create extension if not exists pg_trgm;

create type user_role as enum ('admin', 'user');

create table users (
    id            uuid primary key default gen_random_uuid(),
    -- Stored normalised (trimmed, lower-cased) so equality is case-insensitive.
    email         text not null
        constraint users_email_check check (email = lower(btrim(email)) and length(email) between 3 and 254),
    password_hash text not null,
    first_name    text constraint users_first_name_check check (char_length(first_name) between 1 and 100),
    last_name     text constraint users_last_name_check check (char_length(last_name) between 1 and 100),
    phone         text constraint users_phone_check check (phone ~ '^\+?[1-9][0-9]{1,14}$'),
    role          user_role not null default 'user',
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    -- Soft delete: the row (and its orders) stays; the e-mail becomes free again.
    deleted_at    timestamptz
);

-- Unique among live users only, so a deleted user's address can register again.
create unique index users_email_key on users (email) where deleted_at is null;
-- Admin list: newest first, filtered by role.
create index users_created_at_idx on users (created_at desc, id desc) where deleted_at is null;
create index users_role_created_at_idx on users (role, created_at desc, id desc) where deleted_at is null;
-- Admin search `q` over e-mail and names (ILIKE '%q%').
create index users_search_trgm_idx on users
    using gin ((email || ' ' || coalesce(first_name, '') || ' ' || coalesce(last_name, '')) gin_trgm_ops)
    where deleted_at is null;

create trigger users_set_updated_at before update on users
    for each row execute function set_updated_at();

create table sessions (
    id           uuid primary key,
    user_id      uuid not null references users (id) on delete cascade,
    -- Every rotation stays in the family of the login that started it; presenting a
    -- rotated token revokes the whole family.
    family_id    uuid not null,
    -- SHA-256 of the opaque refresh token: the token itself is never stored.
    token_hash   bytea not null constraint sessions_token_hash_key unique
        constraint sessions_token_hash_check check (length(token_hash) = 32),
    expires_at   timestamptz not null,
    revoked_at   timestamptz,
    replaced_by  uuid references sessions (id) on delete set null,
    user_agent   text,
    ip           text,
    created_at   timestamptz not null default now(),
    constraint sessions_replaced_revoked_check check (replaced_by is null or revoked_at is not null)
);

create index sessions_user_id_idx on sessions (user_id) where revoked_at is null;
create index sessions_family_id_idx on sessions (family_id) where revoked_at is null;
-- Nightly cleanup of expired sessions.
create index sessions_expires_at_idx on sessions (expires_at);
