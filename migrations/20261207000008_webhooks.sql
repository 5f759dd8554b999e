-- Outbound webhooks: endpoints other systems register, the order events they follow, and
-- one delivery per endpoint and event. Owned by the webhooks feature.
create table webhook_endpoints (
    id                  uuid primary key,
    url                 text not null
        constraint webhook_endpoints_url_length check (char_length(url) between 1 and 2048),
    events              text[] not null
        constraint webhook_endpoints_events_known check (
            cardinality(events) between 1 and 6
            and events <@ array['order.created', 'order.paid', 'order.shipped', 'order.delivered',
                                'order.cancelled', 'order.refunded']),
    description         text
        constraint webhook_endpoints_description_length check (char_length(description) <= 500),
    enabled             boolean not null default true,
    -- ChaCha20-Poly1305 of the `whsec_` secret: nonce || ciphertext, the id as associated data.
    secret_sealed       bytea not null,
    -- The secret before the last rotation, still signing until `previous_until`.
    previous_sealed     bytea,
    previous_until      timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint webhook_endpoints_previous_pair check ((previous_sealed is null) = (previous_until is null))
);

create index webhook_endpoints_created_idx on webhook_endpoints (created_at desc, id desc);

-- What happened, as the body every delivery of it carries; kept 30 days.
create table webhook_events (
    id          uuid primary key,
    type        text not null,
    body        jsonb not null,
    created_at  timestamptz not null default now()
);

create index webhook_events_created_idx on webhook_events (created_at);

create type webhook_delivery_status as enum ('pending', 'delivered', 'failed');

create table webhook_deliveries (
    id               uuid primary key,
    endpoint_id      uuid not null references webhook_endpoints (id) on delete cascade,
    event_id         uuid not null references webhook_events (id) on delete cascade,
    status           webhook_delivery_status not null default 'pending',
    attempts         integer not null default 0 constraint webhook_deliveries_attempts check (attempts >= 0),
    last_status_code integer,
    last_error       text constraint webhook_deliveries_last_error_length check (char_length(last_error) <= 500),
    -- When the next attempt is due (pending only).
    next_attempt_at  timestamptz,
    -- An attempt handed to the queue is leased until then; a lost one comes due again.
    leased_until     timestamptz,
    created_at       timestamptz not null default now(),
    delivered_at     timestamptz,
    constraint webhook_deliveries_once unique (endpoint_id, event_id)
);

create index webhook_deliveries_endpoint_idx on webhook_deliveries (endpoint_id, created_at desc, id desc);
create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_event_idx on webhook_deliveries (event_id);
