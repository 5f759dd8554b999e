-- A webhook event records, in the order's transaction, only what of the order can still
-- change: its status, shipping address, expiry, last update and payment, as they stand
-- after the change. The rest of the order (its id, owner, items, total, currency and
-- creation time) never changes once placed, so each attempt reads it from the order and
-- lays the recorded part over it: the body a consumer receives is still the order as
-- committed by that change, at under a third of the bytes written with the order. Events
-- written before keep their `body`.
alter table webhook_events
    alter column body drop not null,
    add column order_id uuid,
    add column order_status order_status,
    add column shipping_address jsonb,
    add column expires_at timestamptz,
    add column order_updated_at timestamptz,
    -- The order's payment as the API shows it (null: none yet).
    add column payment jsonb,
    add constraint webhook_events_body_or_order
        check (body is not null or (order_id is not null and order_status is not null
                                    and order_updated_at is not null));

-- Retention reads events by age; events are written in time order, so a block range
-- index (a few pages, next to nothing written per event) finds the old ones.
drop index webhook_events_created_idx;
create index webhook_events_created_idx on webhook_events using brin (created_at);

-- The fan-out queue is emptied within seconds, by one dispatcher at a time, a batch at a
-- time in no particular order, and its rows are only ever joined to their event: a heap
-- with no index and no foreign key (whose check is a row lock, logged, on every
-- placement). How long an event has waited is its own `created_at`.
alter table webhook_fanout drop constraint webhook_fanout_event_id_fkey;
alter table webhook_fanout drop constraint webhook_fanout_pkey;
alter table webhook_fanout drop column created_at;

-- One delivery per event and endpoint, looked up by event: the unique index leads with the
-- event, and the separate index on the event goes (one index entry less per delivery).
alter table webhook_deliveries drop constraint webhook_deliveries_once;
alter table webhook_deliveries add constraint webhook_deliveries_once unique (event_id, endpoint_id);
drop index webhook_deliveries_event_idx;

-- The dispatcher takes each endpoint's due deliveries, oldest first, and counts those in
-- flight (leased), endpoint by endpoint: both read only what they take, so a backlog of
-- any length costs a round nothing (one index over every due delivery made each round
-- sort the whole backlog).
drop index webhook_deliveries_due_idx;
create index webhook_deliveries_due_idx
    on webhook_deliveries (endpoint_id, next_attempt_at, id) where status = 'pending';
create index webhook_deliveries_leased_idx
    on webhook_deliveries (endpoint_id) where status = 'pending' and leased_until is not null;

-- The order's latest payment as the API shows it, or null.
create function webhook_order_payment(order_id uuid) returns jsonb
language plpgsql stable as $$
begin
    return (
        select jsonb_build_object(
            'status', p.status, 'provider', p.provider,
            'providerPaymentId', p.provider_payment_id, 'amountCents', p.amount_cents,
            'currency', p.currency, 'updatedAt', webhook_time(p.updated_at))
        from payments p where p.order_id = webhook_order_payment.order_id
        order by p.created_at desc, p.id desc limit 1);
end;
$$;

-- A time as the API writes it: RFC 3339 in UTC with `Z`, and as many fraction digits as
-- it needs (none, 3 or 6), so a consumer comparing strings sees the API's.
create function webhook_time(t timestamptz) returns text
language sql immutable as $$
    select case
        when t is null then null
        when extract(microseconds from t)::bigint % 1000000 = 0
            then to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        when extract(microseconds from t)::bigint % 1000 = 0
            then to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
        else to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    end
$$;

-- The order as the API answers it (GET /orders/{id}), as JSON: the body's `data`.
create or replace function webhook_order_json(order_id uuid) returns jsonb
language plpgsql stable as $$
begin
    return (
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
            'payment', webhook_order_payment(o.id),
            'expiresAt', case when o.status = 'pending' then webhook_time(o.expires_at) end,
            'createdAt', webhook_time(o.created_at),
            'updatedAt', webhook_time(o.updated_at))
        from orders o where o.id = webhook_order_json.order_id);
end;
$$;

-- The body every delivery of an event carries: `{type, timestamp, data}`, `data` the order
-- as the API answers it, as that change committed it. Null when the order is gone.
create function webhook_event_body(ev webhook_events) returns jsonb
language plpgsql stable as $$
declare
    data jsonb;
begin
    if ev.body is not null then
        return ev.body;
    end if;
    data := webhook_order_json(ev.order_id);
    if data is null then
        return null;
    end if;
    return jsonb_build_object(
        'type', ev.type,
        'timestamp', to_char(ev.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', data || jsonb_build_object(
            'status', ev.order_status,
            'shippingAddress', ev.shipping_address,
            'payment', ev.payment,
            'expiresAt', webhook_time(ev.expires_at),
            'updatedAt', webhook_time(ev.order_updated_at)));
end;
$$;

create or replace function webhook_events_from_order_history() returns trigger
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
    targets uuid[];
begin
    if kind is null then
        return null;
    end if;
    select array_agg(e.id) into targets
    from webhook_endpoints e where e.enabled and kind = any(e.events);
    if targets is null then
        return null;
    end if;
    insert into webhook_events (id, type, order_id, order_status, shipping_address, expires_at,
                                order_updated_at, payment, endpoint_ids, created_at)
    select new.id, kind, o.id, o.status, o.shipping_address,
           case when o.status = 'pending' then o.expires_at end, o.updated_at,
           webhook_order_payment(o.id), targets, new.created_at
    from orders o where o.id = new.order_id;
    insert into webhook_fanout (event_id) values (new.id);
    return null;
end;
$$;
