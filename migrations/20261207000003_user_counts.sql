-- The number of live users per role, for the `total` of the users list in page mode: read
-- from here instead of counting every live user on each request. A trigger keeps it exact
-- in the transaction of every change (a registration, a soft delete, a role change).
-- Registrations are bounded by password hashing, so one row per role is no queue.

create table user_counts (
    role  user_role primary key,
    live  bigint not null default 0 constraint user_counts_live_check check (live >= 0)
);

create function user_counts_write() returns trigger language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') and old.deleted_at is null then
        update user_counts set live = live - 1 where role = old.role;
    end if;
    if tg_op in ('INSERT', 'UPDATE') and new.deleted_at is null then
        update user_counts set live = live + 1 where role = new.role;
    end if;
    return null;
end
$$;

-- The trigger exists before the counts are taken: creating it locks out concurrent
-- writes to `users` until this migration commits, so no user is counted twice or lost.
create trigger users_count_insert after insert or delete on users
    for each row execute function user_counts_write();
create trigger users_count_update after update of role, deleted_at on users
    for each row when (old.role is distinct from new.role or (old.deleted_at is null) <> (new.deleted_at is null))
    execute function user_counts_write();

insert into user_counts (role, live)
select r.role, (select count(*) from users u where u.role = r.role and u.deleted_at is null)
from unnest(enum_range(null::user_role)) as r(role);
