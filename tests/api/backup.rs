//! `scripts/backup` and `scripts/restore`: a dump restored into a fresh
//! database holds the data.

use std::process::Command;

use reqwest::Method;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{TestApp, send, url_of};

fn script(name: &str) -> Command {
    let mut cmd = Command::new(format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR")));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

#[sqlx::test]
async fn a_backup_restores_into_a_fresh_database_with_its_data(pool: PgPool) {
    // Arrange: a user, a product and an order.
    let app = TestApp::spawn(pool.clone()).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let mug = app.product().sku("MUG").name("Mug").price_cents(1250).stock(5).create().await;
    let order = json!({"items": [{"productId": mug.id, "quantity": 2}]});
    let (status, _, _) = send(app.authed(Method::POST, "/api/v1/orders", &ann.token).json(&order)).await;
    assert_eq!(status, 201);
    let dir = std::env::temp_dir().join(format!("storefront-backup-{}", uuid::Uuid::new_v4()));
    let dump = dir.join("test.dump");
    let fresh = format!("restore_{}", uuid::Uuid::new_v4().simple());
    // `fresh` is a hex UUID we generated: safe to splice into DDL.
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {fresh}"))).execute(&pool).await.unwrap();
    let source = url_of(&pool);
    let target = format!("{}/{fresh}", source.rsplit_once('/').unwrap().0);

    // Act
    let backup = script("backup").env("DATABASE_URL", &source).arg(&dump).output().unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dump).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the dump holds password hashes: owner-only, got {mode:o}");
    assert!(!dir.join("test.dump.partial").exists());
    let restore = script("restore").env("DATABASE_URL", &target).arg(&dump).output().unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));

    // Assert
    let mut restored = PgConnection::connect(&target).await.unwrap();
    let users: i64 = sqlx::query_scalar("select count(*) from users where email = 'ann@example.com'")
        .fetch_one(&mut restored)
        .await
        .unwrap();
    let stock: i32 = sqlx::query_scalar("select stock from products where sku = 'MUG'")
        .fetch_one(&mut restored)
        .await
        .unwrap();
    let lines: i64 =
        sqlx::query_scalar("select count(*) from order_items where sku = 'MUG' and quantity = 2")
            .fetch_one(&mut restored)
            .await
            .unwrap();
    let migrations: i64 =
        sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&mut restored).await.unwrap();
    let counts: i64 =
        sqlx::query_scalar("select live from product_counts").fetch_one(&mut restored).await.unwrap();
    restored.close().await.unwrap();
    assert_eq!((users, stock, lines, counts), (1, 3, 1, 1));
    assert_eq!(migrations, i64::try_from(storefront::platform::db::MIGRATOR.migrations.len()).unwrap());

    // Restoring again over existing data is clean (objects replaced, not duplicated).
    let again = script("restore").arg(&dump).arg(&target).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));

    sqlx::query(sqlx::AssertSqlSafe(format!("drop database {fresh} with (force)")))
        .execute(&pool)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn passwords_in_database_urls_are_percent_decoded_and_nothing_else() {
    // A literal backslash sequence must survive; %XX sequences (an encoded backslash,
    // @, % and a trailing newline) decode to their bytes.
    let out = Command::new("bash")
        .args(["-c", "source scripts/pg-url.sh; pg_url_split \"$1\"; printf '%s|%s' \"$PGPASSWORD\" \"$PG_URL_NO_PASSWORD\"", "_"])
        .arg(r"postgres://ops:a\nb%5Cc%40d%25e\t%0A@db.example:5432/shop")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\\nb\\c@d%e\\t\n|postgres://ops@db.example:5432/shop");
}
