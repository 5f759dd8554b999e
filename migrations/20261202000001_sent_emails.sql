-- The e-mail jobs' ledger (SPEC §7): one row per outbox id whose e-mail an SMTP server
-- (or the file transport) accepted. A job delivered twice finds its row and sends
-- nothing. The row is inserted in a transaction that stays open while the message is
-- sent and commits only after the transport accepted it, so a concurrent duplicate
-- waits on the primary key and then skips.
create table sent_emails (
    outbox_id  uuid primary key,
    template   text not null constraint sent_emails_template_check check (char_length(template) between 1 and 64),
    sent_at    timestamptz not null default now()
);

-- Nightly cleanup of old ledger rows.
create index sent_emails_sent_at_idx on sent_emails (sent_at);

-- Job payloads carry ids only (no addresses, no links): the e-mail job reads the
-- recipient at send time, and the reset-password job mints its token when it sends.
-- Strip what earlier releases wrote into rows not yet cleaned up.
update outbox set payload = payload - 'email' - 'resetUrl' - 'expiresAt'
where kind in ('welcome', 'reset-password')
  and (payload ? 'email' or payload ? 'resetUrl' or payload ? 'expiresAt');
