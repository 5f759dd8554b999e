-- Stock changes with every order; nothing else on a product does. While `stock` was an
-- included column of the three sort indexes, no stock update could be HOT (an indexed
-- column changed), so every order line wrote a new entry into all six indexes of
-- `products`, the trigram GIN index included (pg_stat_user_tables: 0 HOT updates out of
-- 654 000 in a benchmark run). Without it, a stock update rewrites the row in place on
-- its page and touches no index: pgbench's order placement went from 1 680-1 930 to
-- 1 970-2 230 tx/s, the server's from about 1 000 to 1 120-1 270 orders/s.
--
-- What it costs: an `inStock=true` page deep in a sort order now checks stock in the
-- table, row by row, instead of inside the index: at offset 80 000 of 100 000 products,
-- 8 ms became 44-73 ms (median of 15, one run). Pages without `inStock`, price ranges,
-- and the counts (`product_counts`, or index-only scans of the price index) are unchanged.
--
-- A fillfactor of 90 leaves room on each page for the new row versions of HOT updates
-- (pages written from now on; a page fills up again only as its old versions are pruned).
drop index products_created_at_idx;
drop index products_name_idx;
drop index products_price_idx;
create index products_created_at_idx on products (created_at desc, id desc)
    include (price_cents) where archived_at is null;
create index products_name_idx on products (name, id)
    include (price_cents) where archived_at is null;
create index products_price_idx on products (price_cents, id) where archived_at is null;
alter table products set (fillfactor = 90);
