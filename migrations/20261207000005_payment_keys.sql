-- Idempotency keys of calls to the payment provider. A provider stores the answer to a
-- key, errors included, and replays it; so after an error answer the next call uses a
-- fresh key (`-<n>` appended), while a call that got no answer (a timeout) is retried
-- with the same key, which the provider will not apply twice.

-- The n of `order-<order id>-payment[-<n>]`; also moves on when a new intent is needed.
alter table orders add column payment_key_seq integer not null default 0;

-- The n of `refund-<intent id>[-<n>]` and `cancel-<intent id>[-<n>]`.
alter table payments add column call_key_seq integer not null default 0;

-- When the refund was asked for: it is retried for PAYMENT_RETRY_WINDOW from then.
alter table payments add column refund_requested_at timestamptz;

-- Refunds waiting for the provider, for the dead-refund gauge and the invariants.
create index payments_refund_pending_idx on payments (refund_requested_at) where status = 'refund_pending';

-- When the refund's job gave up (after PAYMENT_RETRY_WINDOW): staff must refund by hand.
-- The `payment_refunds_dead` gauge counts these.
alter table payments add column refund_failed_at timestamptz;
