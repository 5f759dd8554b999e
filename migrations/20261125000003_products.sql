-- Catalogue (SPEC §5). Money is integer minor units; every bound is a named constraint.

create table products (
    id           uuid primary key default gen_random_uuid(),
    sku          text not null constraint products_sku_check check (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    name         text not null constraint products_name_check check (char_length(name) between 1 and 200),
    description  text constraint products_description_check check (char_length(description) <= 5000),
    price_cents  bigint not null constraint products_price_cents_check check (price_cents between 0 and 100000000),
    stock        integer not null constraint products_stock_check check (stock between 0 and 1000000),
    -- Bumped on every change; the ETag is derived from it.
    version      integer not null default 1,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    -- Archived products leave the catalogue but stay referenced by old orders.
    archived_at  timestamptz
);

-- An SKU identifies one product forever, archived or not.
create unique index products_sku_key on products (sku);

-- One index per sort order of the public list, on live products only, each ending in id
-- so pages are stable and the page query can be answered from the index alone.
create index products_created_at_idx on products (created_at desc, id desc) where archived_at is null;
create index products_name_idx on products (name, id) where archived_at is null;
create index products_price_idx on products (price_cents, id) where archived_at is null;
-- `inStock=true`, newest first.
create index products_in_stock_created_at_idx on products (created_at desc, id desc)
    where archived_at is null and stock > 0;
-- `q`: case-insensitive substring search over name and description.
create index products_search_trgm_idx on products
    using gin ((name || ' ' || coalesce(description, '')) gin_trgm_ops)
    where archived_at is null;

create trigger products_set_updated_at before update on products
    for each row execute function set_updated_at();

-- Exact catalogue totals without counting 100 000 rows per request: one row maintained by
-- a trigger on every insert, archive and stock change.
create table product_counts (
    singleton  boolean primary key default true constraint product_counts_singleton_check check (singleton),
    live       bigint not null default 0 constraint product_counts_live_check check (live >= 0),
    in_stock   bigint not null default 0 constraint product_counts_in_stock_check check (in_stock >= 0)
);
insert into product_counts default values;

create or replace function products_maintain_counts() returns trigger
language plpgsql as $$
declare
    old_live boolean := tg_op <> 'INSERT' and old.archived_at is null;
    new_live boolean := tg_op <> 'DELETE' and new.archived_at is null;
    old_in   boolean := old_live and old.stock > 0;
    new_in   boolean := new_live and new.stock > 0;
begin
    if old_live is distinct from new_live or old_in is distinct from new_in then
        update product_counts set
            live     = live + (new_live::int - old_live::int),
            in_stock = in_stock + (new_in::int - old_in::int);
    end if;
    return null;
end;
$$;

create trigger products_counts after insert or update or delete on products
    for each row execute function products_maintain_counts();
