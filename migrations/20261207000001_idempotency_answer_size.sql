-- Stored answers of Idempotency-Key requests are bounded: an error answer (status 400 and
-- above) at most 4 KiB, any answer at most 256 KiB. The largest legal 201 is an order of
-- 100 lines, each with a 64-character SKU and a 200-character name that JSON may escape to
-- 6 bytes a character, plus a shipping address: under 160 KiB.
-- Answers stored before these bounds that break them are dropped (their keys are at most
-- 24 hours old; a retry is then served afresh).
delete from idempotency_keys
where response_body is not null
  and (octet_length(response_body::text) > 262144
       or (response_status >= 400 and octet_length(response_body::text) > 4096));

alter table idempotency_keys
    add constraint idempotency_keys_error_size_check
        check (response_status is null or response_status < 400 or octet_length(response_body::text) <= 4096),
    add constraint idempotency_keys_answer_size_check
        check (response_body is null or octet_length(response_body::text) <= 262144);
