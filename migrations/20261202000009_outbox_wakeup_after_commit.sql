-- The relay is no longer notified from inside the writing transaction. A NOTIFY makes
-- its transaction's commit take a cluster-wide lock, held until the commit's WAL flush
-- is done, so every notifying commit waited for the one before it: orders reached the
-- disk one at a time (pgbench, the order transaction: 1 010-1 060 tx/s with this
-- trigger, 1 640-1 720 without it). Writers now wake the relays after their commit
-- (`outbox::Wakeup`: one NOTIFY per process at most every 10 ms, outside any business
-- transaction); the relays still poll every RELAY_POLL_INTERVAL for rows nobody
-- announced.
drop trigger outbox_notify_after_insert on outbox;
drop function outbox_notify();
