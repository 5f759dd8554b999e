-- Orders, their items, the outbox and idempotency records (SPEC §6, §7).

create type order_status as enum ('pending', 'paid', 'shipped', 'delivered', 'cancelled');

create table orders (
    id               uuid primary key default gen_random_uuid(),
    -- Users are soft-deleted, so their orders keep a valid owner.
    user_id          uuid not null references users (id),
    status           order_status not null default 'pending',
    total_cents      bigint not null constraint orders_total_cents_check check (total_cents >= 0),
    currency         text not null constraint orders_currency_check check (currency ~ '^[A-Z]{3}$'),
    shipping_address jsonb constraint orders_shipping_address_check
        check (shipping_address is null or jsonb_typeof(shipping_address) = 'object'),
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now()
);

-- A user's own list, optionally by status; the admin list, optionally by status.
create index orders_user_id_created_at_idx on orders (user_id, created_at desc, id desc);
create index orders_user_id_status_created_at_idx on orders (user_id, status, created_at desc, id desc);
create index orders_created_at_idx on orders (created_at desc, id desc);
create index orders_status_created_at_idx on orders (status, created_at desc, id desc);

create trigger orders_set_updated_at before update on orders
    for each row execute function set_updated_at();

create table order_items (
    order_id         uuid not null references orders (id) on delete cascade,
    -- Archived products stay referenced: their name and price are snapshotted here.
    product_id       uuid not null references products (id),
    position         smallint not null,
    sku              text not null,
    name             text not null,
    unit_price_cents bigint not null constraint order_items_unit_price_cents_check check (unit_price_cents >= 0),
    quantity         integer not null constraint order_items_quantity_check check (quantity between 1 and 1000),
    line_total_cents bigint not null,
    -- A product appears at most once per order.
    constraint order_items_pkey primary key (order_id, product_id),
    constraint order_items_line_total_cents_check check (line_total_cents = unit_price_cents * quantity)
);

create index order_items_product_id_idx on order_items (product_id);

-- Jobs written in the same transaction as the business change; a relay moves them to
-- Redis, so nothing is lost while Redis is down.
create table outbox (
    id          uuid primary key default gen_random_uuid(),
    queue       text not null,
    kind        text not null,
    payload     jsonb not null,
    created_at  timestamptz not null default now(),
    sent_at     timestamptz,
    attempts    integer not null default 0,
    last_error  text
);

create index outbox_unsent_idx on outbox (created_at) where sent_at is null;
create index outbox_sent_at_idx on outbox (sent_at) where sent_at is not null;

-- `Idempotency-Key` on POST /orders: one row per caller and key. The primary key makes
-- the first claim win under any concurrency; `completed_at` null means "in flight".
create table idempotency_keys (
    user_id          uuid not null references users (id),
    key              text not null constraint idempotency_keys_key_check check (char_length(key) between 1 and 255),
    request_hash     bytea not null,
    response_status  smallint,
    response_body    jsonb,
    created_at       timestamptz not null default now(),
    completed_at     timestamptz,
    constraint idempotency_keys_pkey primary key (user_id, key),
    constraint idempotency_keys_response_check check ((completed_at is null) = (response_status is null))
);

create index idempotency_keys_created_at_idx on idempotency_keys (created_at);
