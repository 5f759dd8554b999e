-- Deleting a session clears `replaced_by` of the session it replaced (on delete set
-- null): without an index that is a scan of the whole table per deleted row, and the
-- nightly cleanup of N sessions scans the table N times. Partial: only rotated sessions
-- have one.
create index sessions_replaced_by_idx on sessions (replaced_by) where replaced_by is not null;
