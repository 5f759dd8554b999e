-- Each claim of an idempotency key gets a token; completing or releasing a claim must
-- present it. A request whose claim was taken over (presumed dead, then finishing late)
-- can therefore neither commit a second order nor erase the new owner's claim.
alter table idempotency_keys add column claim_token uuid not null default gen_random_uuid();

-- `truncate products` bypasses row and statement triggers on UPDATE/DELETE.
create function products_counts_after_truncate() returns trigger
language plpgsql as $$
begin
    update product_counts set live = 0, in_stock = 0;
    return null;
end;
$$;

create trigger products_counts_truncate after truncate on products
    for each statement execute function products_counts_after_truncate();
