-- What `storefront check` needs to prove that stock is conserved and keys are single-use:
-- the stock staff put in, and the Idempotency-Key each order was placed with.

-- Stock set by staff: a product's initial stock and each later change of it through the
-- API ('adjust'), and the units a cancel could not give back because the product had been
-- raised to the stock cap meanwhile ('cap', negative). Orders and cancels are not written
-- here otherwise: their lines are the record of units sold. For every product,
-- stock = Σ adjustments − Σ quantities of orders not cancelled (`storefront check`).
create table stock_adjustments (
    id          bigint generated always as identity primary key,
    product_id  uuid not null references products (id),
    delta       integer not null constraint stock_adjustments_delta_check check (delta <> 0),
    reason      text not null constraint stock_adjustments_reason_check check (reason in ('initial', 'adjust', 'cap')),
    created_at  timestamptz not null default now()
);

create index stock_adjustments_product_id_idx on stock_adjustments (product_id);

-- Initial stock, whoever inserts (the API, the seed command): one statement-level
-- trigger per insert statement, so a bulk seed pays one insert … select.
create function products_initial_stock() returns trigger language plpgsql as $$
begin
    insert into stock_adjustments (product_id, delta, reason)
    select id, stock, 'initial' from new_rows where stock <> 0;
    return null;
end $$;

create trigger products_initial_stock after insert on products
    referencing new table as new_rows for each statement execute function products_initial_stock();

-- Products that exist already: what they hold now plus what their live orders took.
insert into stock_adjustments (product_id, delta, reason)
select p.id, p.stock + coalesce(sold.quantity, 0), 'initial'
from products p
left join (
    select i.product_id, sum(i.quantity)::integer as quantity
    from order_items i join orders o on o.id = i.order_id
    where o.status <> 'cancelled'
    group by i.product_id
) sold on sold.product_id = p.id
where p.stock + coalesce(sold.quantity, 0) <> 0;

-- The key an order was placed with, kept after its idempotency record expires (24 h), so
-- `storefront check` can prove no key placed two orders within that window. Not unique:
-- after 24 h the same key may place a new order (SPEC §6).
alter table orders add column idempotency_key text
    constraint orders_idempotency_key_check check (char_length(idempotency_key) between 1 and 255);
