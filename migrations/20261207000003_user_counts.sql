-- The number of live users per role, for the `total` of the users list in page mode: read
-- from here instead of counting every live user on each request. Statement-level
-- triggers keep it exact in the transaction of every change (registrations, soft deletes,
-- role changes): one update per statement and role, however many rows it wrote, so a
-- bulk import costs one counter update, not one per row.

create table user_counts (
    role  user_role primary key,
    live  bigint not null default 0 constraint user_counts_live_check check (live >= 0)
);

create function user_counts_apply() returns trigger language plpgsql as $$
begin
    update user_counts c set live = c.live + d.n
    from (
        select role, sum(n) as n from (
            select role, 1 as n from new_rows where deleted_at is null
            union all
            select role, -1 as n from old_rows where deleted_at is null
        ) changes group by role
    ) d
    where c.role = d.role and d.n <> 0;
    return null;
end
$$;

create function user_counts_inserted() returns trigger language plpgsql as $$
begin
    update user_counts c set live = c.live + d.n
    from (select role, count(*) as n from new_rows where deleted_at is null group by role) d
    where c.role = d.role;
    return null;
end
$$;

create function user_counts_deleted() returns trigger language plpgsql as $$
begin
    update user_counts c set live = c.live - d.n
    from (select role, count(*) as n from old_rows where deleted_at is null group by role) d
    where c.role = d.role;
    return null;
end
$$;

-- The triggers exist before the counts are taken: creating them locks out concurrent
-- writes to `users` until this migration commits, so no user is counted twice or lost.
create trigger users_count_insert after insert on users
    referencing new table as new_rows for each statement execute function user_counts_inserted();
create trigger users_count_delete after delete on users
    referencing old table as old_rows for each statement execute function user_counts_deleted();
-- Every update statement (a transition table cannot go with a column list); one that
-- changes no role and deletes no one updates no count.
create trigger users_count_update after update on users
    referencing old table as old_rows new table as new_rows for each statement execute function user_counts_apply();

insert into user_counts (role, live)
select r.role, (select count(*) from users u where u.role = r.role and u.deleted_at is null)
from unnest(enum_range(null::user_role)) as r(role);
