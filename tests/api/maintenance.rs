//! The scheduled tasks and the analytics endpoint.

use std::time::Duration;

use axum::Router;
use chrono::{DurationRound, TimeDelta, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use storefront::{
    features::{analytics, maintenance},
    platform::schedule,
};

use crate::helpers::{TestApp, expect_error, send};

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.state.db).await.unwrap()
}

async fn exec(app: &TestApp, sql: &'static str) {
    sqlx::query(sql).execute(&app.state.db).await.unwrap();
}

#[sqlx::test]
async fn cleanup_removes_dead_rows_keeps_live_ones_and_runs_once_per_slot(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Sessions: one logged out (dead family), one rotated in a live family, one expired.
    let ann = app.user().email("ann@example.com").signed_in().await;
    let bob = app.user().email("bob@example.com").signed_in().await;
    send(app.request(Method::POST, "/api/v1/auth/logout").json(&json!({"refreshToken": ann.refresh_token})))
        .await;
    send(app.request(Method::POST, "/api/v1/auth/refresh").json(&json!({"refreshToken": bob.refresh_token})))
        .await;
    app.login("ann@example.com", "password123").await;
    exec(&app, "update sessions set expires_at = now() - interval '1 minute' where id = (select id from sessions where revoked_at is null and user_id = (select id from users where email = 'ann@example.com'))").await;
    // Reset tokens, idempotency records, outbox and ledger rows, fresh and old.
    exec(&app, "insert into password_reset_tokens (user_id, token_hash, expires_at, used_at) select id, sha256('used'), now() + interval '1 hour', now() from users where email = 'bob@example.com'").await;
    exec(&app, "insert into password_reset_tokens (user_id, token_hash, expires_at) select id, sha256('live'), now() + interval '1 hour' from users where email = 'bob@example.com'").await;
    exec(&app, "insert into sent_emails (outbox_id, template, sent_at) values (gen_random_uuid(), 'welcome', now() - interval '31 days'), (gen_random_uuid(), 'welcome', now() - interval '1 day')").await;
    exec(&app, "insert into idempotency_keys (user_id, key, request_hash, created_at) select id, 'old', '\\x00', now() - interval '25 hours' from users where email = 'ann@example.com'").await;
    exec(&app, "insert into idempotency_keys (user_id, key, request_hash) select id, 'new', '\\x00' from users where email = 'ann@example.com'").await;
    exec(&app, "insert into outbox (queue, kind, payload, sent_at) values ('emails', 'x', '{}', now() - interval '8 days'), ('emails', 'x', '{}', now() - interval '1 day')").await;
    let outbox_before = count(&app, "select count(*) from outbox").await;

    let slot = schedule::slot(Utc::now(), TimeDelta::days(1));
    // Bob: a rotated session of a live family whose own token has not expired yet (kept
    // for reuse detection), and a copy of it expired long ago (dropped: it can sign no
    // one in any more).
    exec(&app, "insert into sessions (id, user_id, family_id, family_started_at, token_hash, expires_at, revoked_at, replaced_by) select gen_random_uuid(), user_id, family_id, family_started_at, sha256(token_hash), now() - interval '30 days', revoked_at, replaced_by from sessions where revoked_at is not null and user_id = (select id from users where email = 'bob@example.com')").await;
    // Reports: one older than 30 days (its file goes with it), one fresh.
    exec(&app, "insert into reports (type, range_from, range_to, requested_by, created_at) select 'sales', now() - interval '40 days', now() - interval '35 days', id, now() - interval '31 days' from users where email = 'ann@example.com'").await;
    exec(&app, "insert into report_chunks (report_id, seq, data) select id, 0, '\\x00' from reports").await;
    exec(&app, "insert into reports (type, range_from, range_to, requested_by) select 'inventory', now() - interval '1 day', now(), id from users where email = 'ann@example.com'").await;
    exec(&app, "insert into payment_events (provider, event_id, type, received_at) values ('stripe', 'evt_old', 'charge.refunded', now() - interval '31 days'), ('stripe', 'evt_new', 'charge.refunded', now() - interval '2 days')").await;
    // An unsent job is never deleted, however old.
    exec(&app, "insert into outbox (queue, kind, payload, created_at) values ('emails', 'reset-password', '{}', now() - interval '20 days')").await;
    let outbox_before = outbox_before + 1;
    let report = maintenance::cleanup(&app.state.db, &app.state.queues, &app.state.config, slot)
        .await
        .unwrap()
        .expect("first run");

    assert_eq!(report.sessions, 3, "ann's two and bob's expired rotated one: {report:?}");
    assert_eq!(count(&app, "select count(*) from sessions where user_id = (select id from users where email = 'bob@example.com')").await, 2, "rotated token of a live family kept for reuse detection");
    assert_eq!(count(&app, "select count(*) from sessions where user_id = (select id from users where email = 'ann@example.com')").await, 0);
    assert_eq!(report.reset_tokens, 1, "the used token");
    assert_eq!(count(&app, "select count(*) from password_reset_tokens").await, 1, "the live token stays");
    assert_eq!(report.idempotency_keys, 1);
    assert_eq!(count(&app, "select count(*) from idempotency_keys where key = 'new'").await, 1);
    assert_eq!(report.outbox, 1, "the row sent long ago");
    assert_eq!(count(&app, "select count(*) from outbox").await, outbox_before - 1);
    assert_eq!(report.sent_emails, 1, "the ledger row older than 30 days");
    assert_eq!(report.reports, 1, "the report older than 30 days");
    assert_eq!(count(&app, "select count(*) from reports").await, 1);
    assert_eq!(count(&app, "select count(*) from report_chunks").await, 0, "its file went with it");
    assert_eq!(report.payment_events, 1, "the provider event older than 30 days");
    assert_eq!(count(&app, "select count(*) from payment_events where event_id = 'evt_new'").await, 1);
    assert_eq!(count(&app, "select count(*) from sent_emails").await, 1);
    assert_eq!((report.jobs_done, report.jobs_dead), (Some(0), Some(0)), "Redis answered; nothing to trim");

    // Another instance firing for the same slot does nothing.
    assert_eq!(
        maintenance::cleanup(&app.state.db, &app.state.queues, &app.state.config, slot).await.unwrap(),
        None
    );
}

#[sqlx::test]
async fn analytics_roll_up_hourly_and_are_served_to_admins(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let mug = app.product().sku("MUG").name("Mug").price_cents(1000).stock(50).create().await;
    let order = |quantity: i32| json!({"items": [{"productId": mug.id, "quantity": quantity}]});
    send(app.authed(Method::POST, "/api/v1/orders", &ann.token).json(&order(2))).await;
    send(app.authed(Method::POST, "/api/v1/orders", &ann.token).json(&order(3))).await;
    let (_, _, cancelled) =
        send(app.authed(Method::POST, "/api/v1/orders", &ann.token).json(&order(4))).await;
    send(app.authed(
        Method::POST,
        &format!("/api/v1/orders/{}/cancel", cancelled["data"]["id"].as_str().unwrap()),
        &ann.token,
    ))
    .await;
    // Everything happened "two hours ago".
    let hour = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(2);
    sqlx::query("update orders set created_at = $1 + interval '10 minutes'")
        .bind(hour)
        .execute(&app.state.db)
        .await
        .unwrap();
    sqlx::query("update users set created_at = $1 + interval '20 minutes'")
        .bind(hour)
        .execute(&app.state.db)
        .await
        .unwrap();

    let slot = schedule::slot(Utc::now(), TimeDelta::hours(1));
    assert_eq!(analytics::rollup(&app.state.db, slot).await.unwrap(), Some(24));
    assert_eq!(analytics::rollup(&app.state.db, slot).await.unwrap(), None, "once per slot");

    // An explicit range: the default ("the last 24 h") moves if the clock crosses an hour.
    let day =
        |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).replace('+', "%2B");
    let path = format!("/api/v1/admin/analytics?from={}&to={}", day(slot - TimeDelta::hours(24)), day(slot));
    let (status, _, body) = send(app.authed(Method::GET, &path, &admin.token)).await;
    assert_eq!(status, 200, "{body}");
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows.len(), 24);
    let busy: Vec<&Value> = rows.iter().filter(|r| r["orders"] != 0 || r["newUsers"] != 0).collect();
    assert_eq!(busy.len(), 1, "{body}");
    assert_eq!(busy[0]["hour"], json!(hour.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    assert_eq!(
        (&busy[0]["orders"], &busy[0]["items"], &busy[0]["revenueCents"], &busy[0]["newUsers"]),
        (&json!(2), &json!(5), &json!(5000), &json!(2))
    );

    let from = (hour - TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (hour + TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let q = |from: &str, to: &str| {
        format!("/api/v1/admin/analytics?from={}&to={}", from.replace('+', "%2B"), to.replace('+', "%2B"))
    };
    let (_, _, narrow) = send(app.authed(Method::GET, &q(&from, &to), &admin.token)).await;
    assert_eq!(narrow["data"].as_array().unwrap().len(), 2);
    expect_error(app.authed(Method::GET, &q(&to, &from), &admin.token), 400, "VALIDATION_ERROR").await;
    expect_error(
        app.authed(Method::GET, "/api/v1/admin/analytics?from=yesterday", &admin.token),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    let ancient = "/api/v1/admin/analytics?from=-10000-01-01T00:00:00Z&to=-10000-01-02T00:00:00Z";
    expect_error(app.authed(Method::GET, ancient, &admin.token), 400, "VALIDATION_ERROR").await;
    let far = "/api/v1/admin/analytics?to=-262143-01-01T00:00:00Z";
    expect_error(app.authed(Method::GET, far, &admin.token), 400, "VALIDATION_ERROR").await;
    expect_error(app.authed(Method::GET, "/api/v1/admin/analytics", &ann.token), 403, "FORBIDDEN").await;
}

#[sqlx::test]
async fn cleanup_of_many_rotated_sessions_finishes_within_the_statement_timeout(pool: PgPool) {
    // 40 000 dead sessions in rotation chains of 10 (each replaced by the next). Deleting
    // one clears `replaced_by` of its predecessor: without an index on it, and in one
    // statement, that is a scan of the table per row, far past a 3 s statement timeout.
    let app =
        TestApp::spawn_with(pool, |s| s.db_statement_timeout = Duration::from_secs(3), Router::new()).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    sqlx::query(
        "insert into sessions (id, user_id, family_id, token_hash, expires_at, revoked_at, replaced_by)
         select md5(f || '-' || k)::uuid, $1, md5('family-' || f)::uuid, sha256((f || '-' || k)::bytea),
                now() - interval '1 day', now() - interval '2 days',
                case when k < 10 then md5(f || '-' || (k + 1))::uuid end
         from generate_series(1, 4000) f, generate_series(1, 10) k",
    )
    .bind(ann.id)
    .execute(&app.state.db)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let slot = schedule::slot(Utc::now(), TimeDelta::days(1));
    let report = maintenance::cleanup(&app.state.db, &app.state.queues, &app.state.config, slot)
        .await
        .unwrap()
        .expect("first run");
    assert_eq!(report.sessions, 40_000, "{report:?}");
    assert_eq!(count(&app, "select count(*) from sessions where user_id = (select id from users where email = 'ann@example.com')").await, 1, "the live login stays");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[sqlx::test]
async fn two_schedulers_every_second_run_each_tick_once(pool: PgPool) {
    use storefront::features::maintenance;
    let app = TestApp::spawn(pool).await;
    let mut settings = (*app.state.config).clone();
    settings.schedule_cleanup = "* * * * * *".to_owned();
    settings.schedule_analytics = "* * * * * *".to_owned();
    // Two processes' schedulers on one database.
    let first = maintenance::start(app.state.db.clone(), app.state.queues.clone(), &settings).await.unwrap();
    let second = maintenance::start(app.state.db.clone(), app.state.queues.clone(), &settings).await.unwrap();
    // Until both tasks have run for three ticks (at most 15 s on a starved machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let fewest: i64 = sqlx::query_scalar(
            "select coalesce(min(n), 0) from (select count(*) as n from scheduled_runs group by task) t
             where (select count(distinct task) from scheduled_runs) = 2",
        )
        .fetch_one(&app.state.db)
        .await
        .unwrap();
        if fewest >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the schedulers ran fewer than 3 ticks in 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut s in [first, second] {
        s.shutdown().await.unwrap();
    }
    for task in ["cleanup", "analytics"] {
        let slots: Vec<chrono::DateTime<Utc>> =
            sqlx::query_scalar("select slot from scheduled_runs where task = $1 order by slot")
                .bind(task)
                .fetch_all(&app.state.db)
                .await
                .unwrap();
        // A slot per tick, each a whole second, each claimed once although both
        // schedulers fired for every tick.
        assert!(slots.len() >= 3, "{task}: {slots:?}");
        assert!(slots.iter().all(|s| s.timestamp_subsec_nanos() == 0), "{task}: {slots:?}");
        assert!(slots.windows(2).all(|w| w[1] - w[0] >= TimeDelta::seconds(1)), "{task}: {slots:?}");
    }
}

/// `storefront run-task TASK` against the test database: exit status and output.
fn run_task(app: &TestApp, task: &str) -> (bool, String) {
    run_task_with(app, task, &[])
}

/// [`run_task`] with extra environment variables.
pub fn run_task_with(app: &TestApp, task: &str, env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_DOTENV", "1")
        .env("APP_ENV", "test")
        .env("DATABASE_URL", crate::helpers::url_of(&app.state.db))
        .env("REDIS_URL", std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()))
        .env("REDIS_PREFIX", app.state.redis.prefix())
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run-task", task])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[sqlx::test]
async fn run_task_runs_the_cleanup_and_the_roll_up_now_and_says_what_it_did(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.user().email("ann@example.com").signed_in().await;
    exec(&app, "insert into idempotency_keys (user_id, key, request_hash, created_at) select id, 'old', '\\x00', now() - interval '25 hours' from users where email = 'ann@example.com'").await;
    exec(&app, "insert into idempotency_keys (user_id, key, request_hash) select id, 'new', '\\x00' from users where email = 'ann@example.com'").await;

    let (ok, out) = run_task(&app, "cleanup");
    assert!(ok, "{out}");
    assert!(out.contains("Cleanup done in") && out.contains("idempotency_keys: 1"), "{out}");
    assert_eq!(count(&app, "select count(*) from idempotency_keys").await, 1);
    assert_eq!(count(&app, "select count(*) from scheduled_runs where task = 'cleanup'").await, 1);

    let (ok, out) = run_task(&app, "analytics");
    assert!(ok, "{out}");
    assert!(out.contains("Analytics done in") && out.contains("24 hours rolled up"), "{out}");
    assert_eq!(count(&app, "select count(*) from analytics_hourly").await, 24);

    let (ok, out) = run_task(&app, "nonsense");
    assert!(!ok && out.contains("invalid value"), "{out}");
}
