-- Shared database helpers used by every feature's tables.

-- Keeps `updated_at` honest without relying on every UPDATE statement to set it.
create or replace function set_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at = now();
    return new;
end;
$$;
