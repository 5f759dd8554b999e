-- Payments, expiry of unpaid orders, and the history of every order change.

-- When an unpaid pending order is cancelled by the expiry task; null while expiry is off
-- or the order is no longer pending. Orders that exist when expiry is turned on get
-- theirs from the task's first run, one timeout later.
alter table orders add column expires_at timestamptz;

create index orders_expiry_idx on orders (expires_at) where status = 'pending' and expires_at is not null;

create type payment_status as enum ('requires_payment', 'succeeded', 'failed', 'refund_pending', 'refunded');

-- One row per payment attempt at the provider (a Stripe PaymentIntent); an order's
-- current payment is its newest row.
create table payments (
    id                  uuid primary key,
    order_id            uuid not null references orders (id) on delete cascade,
    provider            text not null,
    provider_payment_id text not null,
    status              payment_status not null default 'requires_payment',
    amount_cents        bigint not null constraint payments_amount_cents_check check (amount_cents >= 0),
    currency            text not null constraint payments_currency_check check (currency ~ '^[A-Z]{3}$'),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint payments_provider_payment_id_key unique (provider, provider_payment_id)
);

create index payments_order_id_idx on payments (order_id, created_at desc, id desc);

create trigger payments_set_updated_at before update on payments
    for each row execute function set_updated_at();

-- Each provider event takes effect once: its id is written in the transaction that
-- applies it.
create table payment_events (
    provider    text not null,
    event_id    text not null,
    type        text not null,
    received_at timestamptz not null default now(),
    constraint payment_events_pkey primary key (provider, event_id)
);

create index payment_events_received_at_idx on payment_events (received_at);

create type order_event_type as enum (
    'created', 'status_changed', 'address_changed', 'payment_started', 'payment_succeeded',
    'payment_failed', 'payment_mismatch', 'refund_requested', 'refunded', 'expired'
);

create type actor_kind as enum ('user', 'admin', 'system', 'provider');

-- One row per change, written in the transaction of the change. `seq` orders an
-- order's events (several may be written in one transaction, at one `now()`).
create table order_events (
    id            uuid primary key,
    seq           bigint generated always as identity,
    order_id      uuid not null references orders (id) on delete cascade,
    type          order_event_type not null,
    from_status   order_status,
    to_status     order_status,
    actor_kind    actor_kind not null,
    actor_user_id uuid references users (id),
    detail        jsonb not null default '{}'
        constraint order_events_detail_check check (jsonb_typeof(detail) = 'object'),
    created_at    timestamptz not null default now(),
    constraint order_events_actor_check
        check ((actor_kind in ('user', 'admin')) = (actor_user_id is not null))
);

create index order_events_order_id_seq_idx on order_events (order_id, seq);
