-- The outbox relay (SPEC §7) sleeps on LISTEN outbox; every transaction that writes
-- outbox rows wakes it at commit (a NOTIFY inside a transaction is delivered when, and
-- only if, it commits). One notification per statement, not per row: the relay drains
-- in batches anyway. The relay also polls, in case a notification is missed.
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('outbox', '');
    return null;
end;
$$;

create trigger outbox_notify_after_insert
    after insert on outbox
    for each statement execute function outbox_notify();
