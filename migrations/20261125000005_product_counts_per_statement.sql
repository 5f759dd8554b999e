-- Keep `product_counts` with statement-level triggers over transition tables instead of a
-- row trigger: a bulk insert (seeding 100 000 products) or a multi-row stock update costs
-- one counter update per statement, and a statement that does not change either count
-- (most orders) does not touch the counter row at all, so orders do not queue on it.

drop trigger products_counts on products;
drop function products_maintain_counts();

create function products_counts_apply(live_delta bigint, in_stock_delta bigint) returns void
language sql as $$
    update product_counts
    set live = live + live_delta, in_stock = in_stock + in_stock_delta
    where live_delta <> 0 or in_stock_delta <> 0;
$$;

create function products_counts_after_insert() returns trigger
language plpgsql as $$
begin
    perform products_counts_apply(
        (select count(*) from new_rows where archived_at is null),
        (select count(*) from new_rows where archived_at is null and stock > 0));
    return null;
end;
$$;

create function products_counts_after_update() returns trigger
language plpgsql as $$
begin
    perform products_counts_apply(
        (select count(*) from new_rows where archived_at is null)
            - (select count(*) from old_rows where archived_at is null),
        (select count(*) from new_rows where archived_at is null and stock > 0)
            - (select count(*) from old_rows where archived_at is null and stock > 0));
    return null;
end;
$$;

create function products_counts_after_delete() returns trigger
language plpgsql as $$
begin
    perform products_counts_apply(
        -(select count(*) from old_rows where archived_at is null),
        -(select count(*) from old_rows where archived_at is null and stock > 0));
    return null;
end;
$$;

create trigger products_counts_insert after insert on products
    referencing new table as new_rows
    for each statement execute function products_counts_after_insert();
create trigger products_counts_update after update on products
    referencing old table as old_rows new table as new_rows
    for each statement execute function products_counts_after_update();
create trigger products_counts_delete after delete on products
    referencing old table as old_rows
    for each statement execute function products_counts_after_delete();
