-- Scheduled tasks (SPEC §8).

-- One row per task run slot: inserted in the same transaction as the task's work, so with
-- several instances each slot runs exactly once (the others hit the primary key and skip).
create table scheduled_runs (
    task        text not null,
    slot        timestamptz not null,
    finished_at timestamptz not null default now(),
    constraint scheduled_runs_pkey primary key (task, slot)
);

-- Hourly roll-up served at GET /api/v1/admin/analytics.
create table analytics_hourly (
    hour           timestamptz primary key
        constraint analytics_hourly_hour_check check (hour = date_trunc('hour', hour)),
    orders         integer not null,
    items          integer not null,
    revenue_cents  bigint not null,
    new_users      integer not null,
    computed_at    timestamptz not null default now()
);

-- The roll-up reads orders and users by creation time.
create index users_created_at_all_idx on users (created_at);
