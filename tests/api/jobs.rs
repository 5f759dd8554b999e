//! The outbox relay: rows written by business transactions move to the Redis
//! queues, once, woken by LISTEN/NOTIFY sent after the writers' commits, and wait in
//! Postgres while Redis is down. And
//! the retention of finished jobs in Redis.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;
use storefront::platform::{
    jobs::{QueuedJob, Queues, outbox, relay, store},
    redis::Redis,
};

use crate::helpers::{TestApp, expect_error, send, test_settings};

async fn unsent(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from outbox where sent_at is null")
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

/// The jobs stored in the `emails` queue's data hash.
async fn queued_emails(app: &TestApp) -> Vec<QueuedJob> {
    let key = app.state.queues.get("emails").unwrap().get_config().job_data_hash();
    let mut conn = app.state.redis.conn();
    let raw: Vec<Vec<u8>> = conn.hvals(&key).await.unwrap();
    raw.iter().map(|bytes| serde_json::from_slice(bytes).expect("a queued job")).collect()
}

/// A registration and an order: three outbox rows (two welcomes, one confirmation).
async fn business(app: &TestApp) {
    let ann = app.user().signed_in().await;
    app.user().signed_in().await;
    let mug = app.product().stock(5).create().await;
    let order = json!({"items": [{"productId": mug.id, "quantity": 1}]});
    let (status, _, _) = send(app.authed(Method::POST, "/api/v1/orders", &ann.token).json(&order)).await;
    assert_eq!(status, 201);
}

/// Waits (at most 10 s) until a session of this database has run `LISTEN outbox`: the
/// relay's, once it can be woken.
async fn relay_listening(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listening: bool = sqlx::query_scalar(
            "select exists(select 1 from pg_stat_activity
                           where datname = current_database() and query ilike 'listen%outbox%')",
        )
        .fetch_one(&app.state.db)
        .await
        .unwrap();
        if listening {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the relay never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test]
async fn outbox_rows_move_to_their_queue_once_keyed_by_outbox_id(pool: PgPool) {
    // Arrange
    let app = TestApp::spawn(pool).await;
    business(&app).await;
    assert_eq!(unsent(&app).await, 3);
    // Act
    let moved = relay::move_batch(&app.state.db, &app.state.queues).await.unwrap();
    // Assert
    assert_eq!(moved, 3);
    assert_eq!(unsent(&app).await, 0);
    let mut kinds: Vec<String> = queued_emails(&app).await.into_iter().map(|j| j.kind).collect();
    kinds.sort();
    assert_eq!(kinds, ["order-confirmation", "welcome", "welcome"]);
    assert_eq!(relay::move_batch(&app.state.db, &app.state.queues).await.unwrap(), 0, "nothing left");

    // A row pushed again (Redis accepted, the commit was lost) is still one job.
    sqlx::query("update outbox set sent_at = null").execute(&app.state.db).await.unwrap();
    assert_eq!(relay::move_batch(&app.state.db, &app.state.queues).await.unwrap(), 3);
    let jobs = queued_emails(&app).await;
    assert_eq!(jobs.len(), 3, "idempotency keys keep one task per outbox row");
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("select id from outbox").fetch_all(&app.state.db).await.unwrap();
    assert!(jobs.iter().all(|j| ids.contains(&j.outbox_id)));
}

/// Waits until every outbox row is sent, for at most 3 s (far below the relays' poll).
async fn drained(app: &TestApp, what: &str) {
    let started = Instant::now();
    while unsent(app).await > 0 {
        assert!(started.elapsed() < Duration::from_secs(3), "{what}: the relay did not wake up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test]
async fn every_writer_wakes_the_relay_after_its_commit_without_waiting_for_the_poll(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // A poll interval far beyond the test: only a wake-up can move the rows in time.
    let relay = tokio::spawn(relay::run(
        app.state.db.clone(),
        app.state.queues.clone(),
        Duration::from_secs(600),
        stop,
    ));
    relay_listening(&app).await;

    let ann = app.user().signed_in().await;
    drained(&app, "welcome").await;
    let mug = app.product().stock(5).create().await;
    let order = json!({"items": [{"productId": mug.id, "quantity": 1}]});
    let (status, _, _) = send(app.authed(Method::POST, "/api/v1/orders", &ann.token).json(&order)).await;
    assert_eq!(status, 201);
    drained(&app, "order confirmation").await;
    let res = app.post_json("/api/v1/auth/password/forgot", &json!({"email": ann.email})).await;
    assert_eq!(res.status(), 202);
    drained(&app, "password reset").await;
    let admin = app.user().admin().signed_in().await;
    let (status, _, _) =
        send(app.authed(Method::POST, "/api/v1/reports", &admin.token).json(&json!({"type": "inventory"})))
            .await;
    assert_eq!(status, 202);
    drained(&app, "report").await;

    let kinds: Vec<String> = sqlx::query_scalar("select kind from outbox order by created_at")
        .fetch_all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(kinds, ["welcome", "order-confirmation", "reset-password", "report"]);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay).await.expect("relay stops").unwrap();
}

#[sqlx::test]
async fn an_outbox_commit_notifies_no_one_and_wake_ups_coalesce(pool: PgPool) {
    // The writer's transaction sends no NOTIFY (which would make its commit wait for
    // every other notifying commit): a row written without a wake-up notifies no one.
    let app = TestApp::spawn(pool).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.state.db).await.unwrap();
    listener.listen(outbox::CHANNEL).await.unwrap();
    outbox::push(
        &app.state.db,
        &storefront::shared::jobs::Job::Welcome { user_id: uuid::Uuid::new_v4() }.into(),
    )
    .await
    .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "a commit notified the relays by itself");

    // A burst of wake-ups becomes a notification or two, not one per commit.
    for _ in 0..500 {
        app.state.wakeup.committed();
    }
    let first = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await;
    assert_eq!(first.expect("a wake-up notifies").unwrap().channel(), outbox::CHANNEL);
    let mut more = 0;
    while tokio::time::timeout(outbox::WAKEUP_GAP * 10, listener.recv()).await.is_ok() {
        more += 1;
    }
    assert!(more <= 1, "500 wake-ups sent {} notifications", more + 1);

    // And the next wake-up, after a quiet spell, notifies again.
    app.state.wakeup.committed();
    let again = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await;
    assert!(again.is_ok(), "a later wake-up notified no one");
}

#[sqlx::test]
async fn while_redis_is_down_rows_wait_in_the_outbox_and_move_once_it_is_back(pool: PgPool) {
    // Arrange: the business transactions succeed without Redis.
    let app = TestApp::spawn(pool).await;
    business(&app).await;
    let mut down = test_settings();
    down.redis_url = "redis://127.0.0.1:1".to_owned().into(); // nothing listens there
    down.redis_prefix = app.state.redis.prefix().to_owned();
    let unreachable =
        Queues::new(&Redis::connect_lazy(&down).unwrap(), &down, storefront::shared::jobs::QUEUES);
    // A row for a queue this release does not serve neither moves nor blocks the others.
    sqlx::query("insert into outbox (queue, kind, payload) values ('future-queue', 'x', '{}')")
        .execute(&app.state.db)
        .await
        .unwrap();
    // Act: the relay fails and leaves every row unsent.
    assert!(relay::move_batch(&app.state.db, &unreachable).await.is_err());
    assert_eq!(unsent(&app).await, 4);
    assert!(queued_emails(&app).await.is_empty());
    // Redis back: everything moves, once.
    assert_eq!(relay::move_batch(&app.state.db, &app.state.queues).await.unwrap(), 3);
    assert_eq!(unsent(&app).await, 1, "only the unknown queue's row waits");
    assert_eq!(queued_emails(&app).await.len(), 3);
}

#[sqlx::test]
async fn trimming_removes_finished_and_dead_jobs_past_their_retention_only(pool: PgPool) {
    // Arrange: in each of the done and dead sets, one job finished long ago and one just now.
    let app = TestApp::spawn(pool).await;
    let config = app.state.queues.get("emails").unwrap().get_config().clone();
    let mut conn = app.state.redis.conn();
    let now = chrono::Utc::now().timestamp();
    let mut ids = Vec::new();
    for (set, finished_at) in [
        (config.done_jobs_set(), now - 3 * 86_400),
        (config.done_jobs_set(), now),
        (config.dead_jobs_set(), now - 20 * 86_400),
        (config.dead_jobs_set(), now - 86_400),
    ] {
        let id = ulid::Ulid::generate().to_string();
        let _: () = conn.sadd(&set, &id).await.unwrap();
        let _: () = conn.hset(config.job_data_hash(), &id, "{}").await.unwrap();
        let _: () =
            conn.hset(format!("{}:{id}", config.job_meta_hash()), "done_at", finished_at).await.unwrap();
        ids.push(id);
    }
    // Act: done jobs kept a day, dead ones 14 days.
    let day = chrono::Duration::days(1);
    let trimmed =
        store::trim(&app.state.queues, chrono::Utc::now() - day, chrono::Utc::now() - day * 14, u64::MAX)
            .await
            .unwrap();
    // Assert
    assert_eq!((trimmed.done, trimmed.dead), (1, 1));
    let done: Vec<String> = conn.smembers(config.done_jobs_set()).await.unwrap();
    let dead: Vec<String> = conn.smembers(config.dead_jobs_set()).await.unwrap();
    assert_eq!((done, dead), (vec![ids[1].clone()], vec![ids[3].clone()]));
    let data: Vec<String> = conn.hkeys(config.job_data_hash()).await.unwrap();
    assert_eq!(data.len(), 2, "payloads of trimmed jobs are gone");
    let meta_left: bool = conn.exists(format!("{}:{}", config.job_meta_hash(), ids[0])).await.unwrap();
    assert!(!meta_left);
}

#[sqlx::test]
async fn dead_jobs_are_capped_and_listed_page_by_page_or_by_cursor_from_redis(pool: PgPool) {
    // Arrange: 25 dead e-mail jobs, written as apalis leaves them (the index knows none).
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let config = app.state.queues.get("emails").unwrap().get_config().clone();
    let mut conn = app.state.redis.conn();
    let now = chrono::Utc::now().timestamp();
    let mut ids = Vec::new();
    for _ in 0..25 {
        let id = ulid::Ulid::generate().to_string();
        let _: () = conn.sadd(config.dead_jobs_set(), &id).await.unwrap();
        let job = serde_json::json!({"outboxId": uuid::Uuid::new_v4(), "kind": "welcome", "payload": {}});
        let _: () = conn.hset(config.job_data_hash(), &id, job.to_string()).await.unwrap();
        let _: () = conn.hset(format!("{}:{id}", config.job_meta_hash()), "done_at", now).await.unwrap();
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Act: the trim indexes them and keeps the newest 20.
    let trimmed = store::trim(
        &app.state.queues,
        chrono::Utc::now(),
        chrono::Utc::now() - chrono::Duration::days(14),
        20,
    )
    .await
    .unwrap();
    assert_eq!(trimmed.dead, 5);
    let newest: Vec<String> = ids.iter().rev().take(20).cloned().collect();
    // Page mode: the newest first, with the total.
    let (status, _, body) =
        send(app.authed(Method::GET, "/api/v1/admin/jobs/dead?limit=10&page=2", &admin.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pagination"]["total"], 20);
    let page_two: Vec<&str> =
        body["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(page_two, newest[10..20].iter().map(String::as_str).collect::<Vec<_>>());
    // Cursor mode: the same order, the same cost at any depth, no total.
    let mut seen = Vec::new();
    let mut path = "/api/v1/admin/jobs/dead?limit=8&cursor=".to_owned();
    let (_, _, first) = send(app.authed(Method::GET, "/api/v1/admin/jobs/dead?limit=8", &admin.token)).await;
    let mut body = first;
    loop {
        seen.extend(body["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        let Some(next) = body["pagination"]["nextCursor"].as_str() else { break };
        path.truncate("/api/v1/admin/jobs/dead?limit=8&cursor=".len());
        path.push_str(next);
        let (status, _, next_body) = send(app.authed(Method::GET, &path, &admin.token)).await;
        assert_eq!(status, 200, "{next_body}");
        assert!(next_body["pagination"]["total"].is_null());
        body = next_body;
    }
    assert_eq!(seen, newest);
    // A cursor is bound to its filter.
    let cursor = {
        let (_, _, b) = send(app.authed(Method::GET, "/api/v1/admin/jobs/dead?limit=1", &admin.token)).await;
        b["pagination"]["nextCursor"].as_str().unwrap().to_owned()
    };
    let other = format!("/api/v1/admin/jobs/dead?queue=reports&cursor={cursor}");
    expect_error(app.authed(Method::GET, &other, &admin.token), 400, "VALIDATION_ERROR").await;
    // Retried: off the list at once.
    let retry = format!("/api/v1/admin/jobs/dead/{}/retry", newest[0]);
    assert_eq!(send(app.authed(Method::POST, &retry, &admin.token)).await.0, 202);
    let (_, _, body) = send(app.authed(Method::GET, "/api/v1/admin/jobs/dead?limit=1", &admin.token)).await;
    assert_eq!(body["data"][0]["id"], newest[1].as_str());
    assert_eq!(body["pagination"]["total"], 19);
}

#[sqlx::test]
async fn under_load_the_relay_polls_and_back_at_rest_it_listens_without_stalling(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // A poll interval far beyond the test: only notifications or the busy-mode poll move rows.
    let relay = tokio::spawn(relay::run(
        app.state.db.clone(),
        app.state.queues.clone(),
        Duration::from_secs(600),
        stop,
    ));
    relay_listening(&app).await;
    // Written as the services write: commit, then wake the relays.
    let insert = async |n: i64| {
        sqlx::query(
            "insert into outbox (queue, kind, payload)
             select 'emails', 'welcome', jsonb_build_object('userId', gen_random_uuid()) from generate_series(1, $1)",
        )
        .bind(n)
        .execute(&app.state.db)
        .await
        .unwrap();
        app.state.wakeup.committed();
    };
    // A burst: a big drain switches the relay to polling.
    insert(300).await;
    drained(&app, "burst").await;
    // While polling, a single row still moves; that small drain makes it listen again.
    insert(1).await;
    drained(&app, "polling").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Listening again: a commit wakes it.
    insert(1).await;
    drained(&app, "listening again").await;
    assert_eq!(queued_emails(&app).await.len(), 302);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay).await.expect("relay stops").unwrap();
}
