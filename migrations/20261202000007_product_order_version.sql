-- Deep pages of the unfiltered catalogue start from an anchor (SPEC §5, issue 11): every
-- instance keeps the ids at ranks 1 000, 2 000, … of each sort, read at an order version,
-- and a page at offset N walks from the nearest anchor instead of from the first row.
-- `order_version` changes whenever the order of live products could: a product inserted,
-- deleted, archived or restored, renamed or repriced. A stock change (every order) leaves
-- it alone. A page is served from anchors only in a statement that sees the version they
-- were read at.

alter table product_counts add column order_version bigint not null default 0;

drop function products_counts_apply(bigint, bigint);

create function products_counts_apply(live_delta bigint, in_stock_delta bigint, reordered boolean)
returns void language sql as $$
    update product_counts
    set live = live + live_delta,
        in_stock = in_stock + in_stock_delta,
        order_version = order_version + reordered::int
    where live_delta <> 0 or in_stock_delta <> 0 or reordered;
$$;

create or replace function products_counts_after_insert() returns trigger
language plpgsql as $$
begin
    perform products_counts_apply(
        (select count(*) from new_rows where archived_at is null),
        (select count(*) from new_rows where archived_at is null and stock > 0),
        exists (select 1 from new_rows where archived_at is null));
    return null;
end;
$$;

create or replace function products_counts_after_update() returns trigger
language plpgsql as $$
begin
    perform products_counts_apply(
        (select count(*) from new_rows where archived_at is null)
            - (select count(*) from old_rows where archived_at is null),
        (select count(*) from new_rows where archived_at is null and stock > 0)
            - (select count(*) from old_rows where archived_at is null and stock > 0),
        exists (
            select 1 from old_rows o join new_rows n on n.id = o.id
            where (o.archived_at is null) <> (n.archived_at is null)
               or (n.archived_at is null and (o.name <> n.name or o.price_cents <> n.price_cents
                                              or o.created_at <> n.created_at))));
    return null;
end;
$$;

create or replace function products_counts_after_delete() returns trigger
language plpgsql as $$
begin
    perform products_counts_apply(
        -(select count(*) from old_rows where archived_at is null),
        -(select count(*) from old_rows where archived_at is null and stock > 0),
        exists (select 1 from old_rows where archived_at is null));
    return null;
end;
$$;

create or replace function products_counts_after_truncate() returns trigger
language plpgsql as $$
begin
    update product_counts set live = 0, in_stock = 0, order_version = order_version + 1;
    return null;
end;
$$;
