//! SQL for `analytics_hourly`.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// One stored hour.
#[derive(Debug)]
pub struct HourRow {
    pub hour: DateTime<Utc>,
    pub orders: i32,
    pub items: i32,
    pub revenue_cents: i64,
    pub new_users: i32,
}

/// Stored hours in `[from, to)`, oldest first.
pub async fn hours(
    db: impl PgExecutor<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<HourRow>> {
    sqlx::query_as!(
        HourRow,
        "select hour, orders, items, revenue_cents, new_users from analytics_hourly
         where hour >= $1 and hour < $2 order by hour",
        from,
        to
    )
    .fetch_all(db)
    .await
}

/// Upserts the 24 hours before `until` from `orders` (cancelled excluded), their items
/// and `users`. Returns the hours written.
pub async fn rollup_day_before(db: impl PgExecutor<'_>, until: DateTime<Utc>) -> sqlx::Result<u64> {
    sqlx::query!(
        r#"insert into analytics_hourly (hour, orders, items, revenue_cents, new_users, computed_at)
           select h.hour,
                  coalesce(o.orders, 0), coalesce(o.items, 0), coalesce(o.revenue, 0), coalesce(u.new_users, 0), now()
           from generate_series($1::timestamptz - interval '24 hours', $1::timestamptz - interval '1 hour',
                                interval '1 hour') as h(hour)
           left join lateral (
               select count(*)::int as orders, sum(ord.total_cents)::bigint as revenue,
                      sum((select sum(quantity) from order_items i where i.order_id = ord.id))::int as items
               from orders ord
               where ord.created_at >= h.hour and ord.created_at < h.hour + interval '1 hour'
                 and ord.status <> 'cancelled'
           ) o on true
           left join lateral (
               select count(*)::int as new_users from users
               where created_at >= h.hour and created_at < h.hour + interval '1 hour'
           ) u on true
           on conflict (hour) do update set
               orders = excluded.orders, items = excluded.items, revenue_cents = excluded.revenue_cents,
               new_users = excluded.new_users, computed_at = excluded.computed_at"#,
        until
    )
    .execute(db)
    .await
    .map(|r| r.rows_affected())
}
