//! The read pool: connections come back without a ping, yet a connection left in an
//! unknown state (a cancelled or failed read) is never reused, and one that died while
//! idle is replaced without the caller noticing.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use storefront::platform::db::read_pool::{ReadPool, ReadPoolOptions};

fn pool(main: &PgPool, max_connections: u32) -> ReadPool {
    ReadPool::new(
        main,
        ReadPoolOptions {
            max_connections,
            acquire_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(600),
            statement_timeout: Duration::from_secs(2),
        },
    )
}

async fn backend_pid(reads: &ReadPool) -> i32 {
    reads
        .read(&|c: &mut PgConnection| {
            Box::pin(
                async move { sqlx::query_scalar::<_, i32>("select pg_backend_pid()").fetch_one(c).await },
            )
        })
        .await
        .expect("read")
}

#[sqlx::test]
async fn a_connection_is_reused_read_after_read(main: PgPool) {
    let reads = pool(&main, 4);
    let first = backend_pid(&reads).await;
    for _ in 0..50 {
        assert_eq!(backend_pid(&reads).await, first, "one warm connection serves sequential reads");
    }
    assert_eq!(reads.idle(), 1);

    // Concurrent reads open at most max_connections.
    let pids = futures::future::join_all((0..40).map(|_| backend_pid(&reads))).await;
    let distinct: std::collections::HashSet<i32> = pids.into_iter().collect();
    assert!(distinct.len() <= 4, "{distinct:?}");
    assert!(reads.idle() <= 4);
}

#[sqlx::test]
async fn a_cancelled_or_failed_read_never_hands_its_connection_on(main: PgPool) {
    let reads = pool(&main, 1);
    let before = backend_pid(&reads).await;

    // A read dropped mid-statement: its connection still owes Postgres a reply.
    let slow = reads.read(&|c: &mut PgConnection| {
        Box::pin(async move { sqlx::query("select pg_sleep(1)").execute(c).await.map(|_| ()) })
    });
    assert!(tokio::time::timeout(Duration::from_millis(200), slow).await.is_err());
    let after_cancel = backend_pid(&reads).await;
    assert_ne!(after_cancel, before, "the cancelled read's connection was closed, not reused");

    // A failed statement: the connection is closed too.
    let failed = reads
        .read(&|c: &mut PgConnection| {
            Box::pin(async move { sqlx::query_scalar::<_, i32>("select 1 / 0").fetch_one(c).await })
        })
        .await;
    assert!(matches!(failed, Err(sqlx::Error::Database(_))), "{failed:?}");
    assert_ne!(backend_pid(&reads).await, after_cancel);
}

#[sqlx::test]
async fn a_connection_that_died_while_idle_is_replaced_transparently(main: PgPool) {
    let reads = pool(&main, 2);
    let idle_pid = backend_pid(&reads).await;
    // Postgres ends the idle session (as a restart or a network cut would).
    let ended: bool =
        sqlx::query_scalar("select pg_terminate_backend($1)").bind(idle_pid).fetch_one(&main).await.unwrap();
    assert!(ended);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let pid = backend_pid(&reads).await;
    assert_ne!(pid, idle_pid, "the read ran on a new connection, without an error");
}

#[sqlx::test]
async fn closing_the_main_pool_closes_the_read_pool(main: PgPool) {
    let reads = pool(&main, 2);
    let pid = backend_pid(&reads).await;
    main.close().await;
    let refused = reads
        .read(&|c: &mut PgConnection| {
            Box::pin(async move { sqlx::query_scalar::<_, i32>("select 1").fetch_one(c).await })
        })
        .await;
    assert!(matches!(refused, Err(sqlx::Error::PoolClosed)), "{refused:?}");
    assert_eq!(reads.idle(), 0);

    // Its idle connection ended with a Terminate: the session is gone from the server.
    let mut probe = PgConnection::connect_with(&main.connect_options()).await.unwrap();
    let mut alive = true;
    for _ in 0..50 {
        alive = sqlx::query_scalar("select exists (select 1 from pg_stat_activity where pid = $1)")
            .bind(pid)
            .fetch_one(&mut probe)
            .await
            .unwrap();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive, "backend {pid} still connected");
}

#[sqlx::test]
async fn reads_run_under_the_short_read_statement_timeout(main: PgPool) {
    let reads = pool(&main, 1);
    let shown: String = reads
        .read(&|c: &mut PgConnection| {
            Box::pin(async move { sqlx::query_scalar("show statement_timeout").fetch_one(c).await })
        })
        .await
        .unwrap();
    assert_eq!(shown, "2s");
    let slow = reads
        .read(&|c: &mut PgConnection| {
            Box::pin(async move { sqlx::query("select pg_sleep(3)").execute(c).await })
        })
        .await
        .unwrap_err();
    assert_eq!(slow.as_database_error().and_then(|d| d.code()).as_deref(), Some("57014"), "{slow}");
}
