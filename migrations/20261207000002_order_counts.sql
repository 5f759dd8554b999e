-- Exact order counts that cost the same at any number of orders, for the `total` of the
-- order lists in page mode. Every change writes delta rows in its own transaction
-- (a trigger on `orders`); nothing updates one shared row, so orders of different users,
-- and of one user, never queue behind a counter. A roll-up folds deltas into
-- `order_counts`, which only it writes. A count is `order_counts` plus the deltas not yet
-- folded, read in one statement (one snapshot), so it is exact at every moment.
--
-- `user_id` is the owner, or the nil UUID for the count over every user.

create table order_count_deltas (
    id       bigint generated always as identity constraint order_count_deltas_pkey primary key,
    user_id  uuid not null,
    status   order_status not null,
    n        integer not null
);

create index order_count_deltas_scope_idx on order_count_deltas (user_id, status) include (n);

create table order_counts (
    user_id  uuid not null,
    status   order_status not null,
    n        bigint not null,
    constraint order_counts_pkey primary key (user_id, status)
);

create function order_count_deltas_write() returns trigger language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        insert into order_count_deltas (user_id, status, n)
        values (old.user_id, old.status, -1), ('00000000-0000-0000-0000-000000000000', old.status, -1);
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into order_count_deltas (user_id, status, n)
        values (new.user_id, new.status, 1), ('00000000-0000-0000-0000-000000000000', new.status, 1);
    end if;
    return null;
end
$$;

-- The trigger exists before the counts are taken: creating it locks out concurrent
-- writes to `orders` until this migration commits, so no order is counted twice or lost.
create trigger orders_count_insert after insert or delete on orders
    for each row execute function order_count_deltas_write();
create trigger orders_count_status after update of status, user_id on orders
    for each row when (old.status is distinct from new.status or old.user_id is distinct from new.user_id)
    execute function order_count_deltas_write();

insert into order_counts (user_id, status, n)
select user_id, status, count(*) from orders group by user_id, status;
insert into order_counts (user_id, status, n)
select '00000000-0000-0000-0000-000000000000', status, count(*) from orders group by status;
