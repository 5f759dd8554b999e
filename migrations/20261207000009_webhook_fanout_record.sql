-- Each webhook event records the endpoints it was fanned out to, so that `storefront
-- check` can prove every one of them got its delivery (an endpoint deleted since takes its
-- deliveries with it and is skipped).
alter table webhook_events add column endpoint_ids uuid[] not null default '{}';

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
    select coalesce(array_agg(e.id), '{}') into targets
    from webhook_endpoints e where e.enabled and kind = any(e.events);
    if cardinality(targets) = 0 then
        return null;
    end if;
    insert into webhook_events (id, type, body, endpoint_ids)
    values (new.id, kind, jsonb_build_object(
        'type', kind,
        'timestamp', to_char(new.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', webhook_order_json(new.order_id)), targets);
    insert into webhook_deliveries (id, endpoint_id, event_id, next_attempt_at)
    select gen_random_uuid(), t, new.id, now() from unnest(targets) as t;
    return null;
end;
$$;

-- An endpoint's deliveries filtered by status, newest first (the deliveries list).
create index webhook_deliveries_endpoint_status_idx
    on webhook_deliveries (endpoint_id, status, created_at desc, id desc);
