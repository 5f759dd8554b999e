-- Webhook events are written lighter in the order's transaction: the event records the
-- endpoints it is for (enabled and subscribed at that moment) and joins the fan-out
-- queue; the dispatcher writes the deliveries, in batches, within a second. So a
-- placement writes one event row and one queue row however many endpoints follow it,
-- and `storefront check` can prove every recorded endpoint got its delivery (an endpoint
-- deleted since takes its deliveries with it and is skipped).
alter table webhook_events add column endpoint_ids uuid[] not null default '{}';

-- Events whose deliveries are not written yet.
create table webhook_fanout (
    event_id   uuid primary key references webhook_events (id) on delete cascade,
    created_at timestamptz not null default now()
);

-- The order as the API answers it, as JSON. PL/pgSQL rather than SQL: its query plans are
-- cached for the session, where a SQL function's are made again on every call.
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
            'payment', (select jsonb_build_object(
                            'status', p.status, 'provider', p.provider,
                            'providerPaymentId', p.provider_payment_id, 'amountCents', p.amount_cents,
                            'currency', p.currency, 'updatedAt', p.updated_at)
                        from payments p where p.order_id = o.id
                        order by p.created_at desc, p.id desc limit 1),
            'expiresAt', case when o.status = 'pending' then o.expires_at end,
            'createdAt', o.created_at,
            'updatedAt', o.updated_at)
        from orders o where o.id = webhook_order_json.order_id);
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
    insert into webhook_events (id, type, body, endpoint_ids)
    values (new.id, kind, jsonb_build_object(
        'type', kind,
        'timestamp', to_char(new.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', webhook_order_json(new.order_id)), targets);
    insert into webhook_fanout (event_id) values (new.id);
    return null;
end;
$$;

-- An endpoint's deliveries filtered by status, newest first (the deliveries list).
create index webhook_deliveries_endpoint_status_idx
    on webhook_deliveries (endpoint_id, status, created_at desc, id desc);
