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

-- The order as the API answers it (GET /orders/{id}), as JSON: the body's `data`.
create function webhook_order_json(order_id uuid) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'id', o.id,
        'userId', o.user_id,
        'status', o.status,
        'items', (select coalesce(jsonb_agg(jsonb_build_object(
                      'productId', i.product_id, 'sku', i.sku, 'name', i.name,
                      'unitPriceCents', i.unit_price_cents, 'quantity', i.quantity,
                      'lineTotalCents', i.line_total_cents) order by i.position), '[]'::jsonb)
                  from order_items i where i.order_id = o.id),
        'totalCents', o.total_cents,
        'currency', o.currency,
        'shippingAddress', o.shipping_address,
        'payment', (select jsonb_build_object(
                        'status', p.status, 'provider', p.provider,
                        'providerPaymentId', p.provider_payment_id, 'amountCents', p.amount_cents,
                        'currency', p.currency, 'updatedAt', p.updated_at)
                    from payments p where p.order_id = o.id
                    order by p.created_at desc, p.id desc limit 1),
        'expiresAt', case when o.status = 'pending' then o.expires_at end,
        'createdAt', o.created_at,
        'updatedAt', o.updated_at)
    from orders o where o.id = order_id
$$;

-- Each change an order's history records becomes a webhook event when it is one of the
-- six, in the change's own transaction, with one delivery per endpoint enabled and
-- subscribed at that moment. No endpoint follows it: nothing is written.
create function webhook_events_from_order_history() returns trigger
language plpgsql as $$
declare
    kind text := case
        when new.type = 'created' then 'order.created'
        when new.type = 'refunded' then 'order.refunded'
        when new.to_status = 'paid' then 'order.paid'
        when new.to_status = 'shipped' then 'order.shipped'
        when new.to_status = 'delivered' then 'order.delivered'
        when new.to_status = 'cancelled' then 'order.cancelled'
    end;
    event_id uuid;
begin
    if kind is null or not exists (
        select 1 from webhook_endpoints where enabled and kind = any(events)) then
        return null;
    end if;
    event_id := new.id;
    insert into webhook_events (id, type, body)
    values (event_id, kind, jsonb_build_object(
        'type', kind,
        'timestamp', to_char(new.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', webhook_order_json(new.order_id)));
    insert into webhook_deliveries (id, endpoint_id, event_id, next_attempt_at)
    select gen_random_uuid(), e.id, event_id, now()
    from webhook_endpoints e where e.enabled and kind = any(e.events);
    return null;
end;
$$;

create trigger order_events_to_webhooks
    after insert on order_events
    for each row execute function webhook_events_from_order_history();
