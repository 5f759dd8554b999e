-- Every filter and sort of the public product list is served by an index (audit item 6).
--
-- The three sort indexes carry `price_cents` and `stock` as included columns, so a price
-- range or `inStock` filter under any sort is checked inside the index: an index-only scan
-- of the sort order, never a heap visit per skipped row. The `inStock=true` partial index
-- becomes redundant. Counts of a price range are index-only scans of `products_price_idx`.
drop index products_created_at_idx;
drop index products_name_idx;
drop index products_price_idx;
drop index products_in_stock_created_at_idx;
create index products_created_at_idx on products (created_at desc, id desc)
    include (price_cents, stock) where archived_at is null;
create index products_name_idx on products (name, id)
    include (price_cents, stock) where archived_at is null;
create index products_price_idx on products (price_cents, id)
    include (stock) where archived_at is null;

-- `q` matches a lowercased copy of name and description with LIKE: the trigram index is on
-- that column, and the recheck of a candidate row is a plain byte comparison instead of a
-- case-folding ILIKE (about three times cheaper when a common trigram makes every row a
-- candidate). Adding a stored column rewrites the table once.
drop index products_search_trgm_idx;
alter table products add column search_text text
    generated always as (lower(name || ' ' || coalesce(description, ''))) stored;
create index products_search_trgm_idx on products using gin (search_text gin_trgm_ops)
    where archived_at is null;
