//! Users over HTTP: profile, password change, admin user management, create-admin.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_error, expect_error, send, url_of};

const PROFILE: &str = "/api/v1/users/profile";
const PASSWORD: &str = "/api/v1/users/profile/password";

fn user_path(id: impl std::fmt::Display) -> String {
    format!("/api/v1/users/{id}")
}

#[sqlx::test]
async fn the_profile_shows_the_caller_without_secrets(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let (status, _, body) = send(app.authed(Method::GET, PROFILE, &ann.token)).await;
    assert_eq!(status, 200);
    let data = &body["data"];
    assert_eq!(data["id"], ann.id.to_string());
    assert_eq!(data["email"], ann.email);
    assert_eq!(data["role"], "user");
    for key in ["firstName", "lastName", "phone", "createdAt", "updatedAt"] {
        assert!(data.get(key).is_some(), "{key}");
    }
    assert!(!body.to_string().contains("argon2"));
    assert_error(app.get(PROFILE).await, 401, "UNAUTHORIZED").await;
}

#[sqlx::test]
async fn patch_profile_sets_clears_and_leaves_fields_alone(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let patch = |body: Value| app.authed(Method::PATCH, PROFILE, &ann.token).json(&body);

    let (status, _, body) =
        send(patch(json!({"firstName": "Ann", "lastName": "Lee", "phone": "+14155550123"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["phone"], "+14155550123");

    // Absent = unchanged, null = cleared.
    let (_, _, body) = send(patch(json!({"lastName": null}))).await;
    assert_eq!(body["data"]["firstName"], "Ann");
    assert_eq!(body["data"]["lastName"], Value::Null);
    assert_eq!(body["data"]["phone"], "+14155550123");

    for (bad, field) in [
        (json!({"phone": "555-1234"}), "phone"),
        (json!({"firstName": ""}), "firstName"),
        (json!({"lastName": "x".repeat(101)}), "lastName"),
        (json!({"firstName": 7}), "firstName"),
    ] {
        let err = expect_error(patch(bad), 400, "VALIDATION_ERROR").await;
        assert!(err["error"]["fields"][field].is_array(), "{field}: {err}");
    }
    let (_, _, after) = send(app.authed(Method::GET, PROFILE, &ann.token)).await;
    assert_eq!(after["data"]["firstName"], "Ann", "failed patches changed nothing");
}

#[sqlx::test]
async fn mass_assignment_on_the_profile_is_a_400_and_changes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    let (_, _, before) = send(app.authed(Method::GET, PROFILE, &ann.token)).await;
    for attempt in [
        json!({"role": "admin"}),
        json!({"email": "evil@example.com"}),
        json!({"id": uuid::Uuid::new_v4()}),
        json!({"firstName": "Eve", "role": "admin"}),
        json!({"passwordHash": "x"}),
    ] {
        expect_error(app.authed(Method::PATCH, PROFILE, &ann.token).json(&attempt), 400, "VALIDATION_ERROR")
            .await;
    }
    let (_, _, after) = send(app.authed(Method::GET, PROFILE, &ann.token)).await;
    assert_eq!(before, after);
    // Still not an admin.
    assert_eq!(send(app.authed(Method::GET, "/api/v1/users", &ann.token)).await.0, 403);
}

#[sqlx::test]
async fn changing_the_password_keeps_this_session_and_revokes_the_others(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let laptop = app.user().email("ann@example.com").signed_in().await;
    let phone = app.login("ann@example.com", "password123").await;

    let err = expect_error(
        app.authed(Method::POST, PASSWORD, &laptop.token)
            .json(&json!({"currentPassword": "wrong-one", "newPassword": "new-password-1"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(err["error"]["fields"]["currentPassword"].is_array());

    let err = expect_error(
        app.authed(Method::POST, PASSWORD, &laptop.token)
            .json(&json!({"currentPassword": "password123", "newPassword": "short"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(err["error"]["fields"]["newPassword"].is_array());

    let (status, _, _) = send(
        app.authed(Method::POST, PASSWORD, &laptop.token)
            .json(&json!({"currentPassword": "password123", "newPassword": "new-password-1"})),
    )
    .await;
    assert_eq!(status, 204);

    let refresh =
        |token: &str| app.request(Method::POST, "/api/v1/auth/refresh").json(&json!({"refreshToken": token}));
    assert_eq!(send(refresh(&phone.refresh_token)).await.0, 401, "other session revoked");
    assert_eq!(send(refresh(&laptop.refresh_token)).await.0, 200, "this session kept");
    let res = app
        .post_json("/api/v1/auth/login", &json!({"email": "ann@example.com", "password": "password123"}))
        .await;
    assert_error(res, 401, "UNAUTHORIZED").await;
    app.login("ann@example.com", "new-password-1").await;
}

#[sqlx::test]
async fn admins_list_users_with_pagination_search_and_role_filter(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    for (email, first) in
        [("ann@example.com", "Ann"), ("bob@example.com", "Bob"), ("carla@shop.test", "Carla")]
    {
        let s = app.user().email(email).signed_in().await;
        send(app.authed(Method::PATCH, PROFILE, &s.token).json(&json!({"firstName": first}))).await;
    }
    let list = |query: &str| app.authed(Method::GET, &format!("/api/v1/users?{query}"), &admin.token);

    let (status, _, body) = send(list("page=1&limit=2")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let mut pagination = body["pagination"].clone();
    let next = pagination.as_object_mut().unwrap().remove("nextCursor").unwrap();
    assert_eq!(pagination, json!({"page": 1, "limit": 2, "total": 4, "pages": 2}));
    assert!(next.is_string(), "page 1 of 2 names the next page: {next}");
    // Newest first: carla was registered last.
    assert_eq!(body["data"][0]["email"], "carla@shop.test");

    let (_, _, body) = send(list("q=CARL")).await;
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(body["data"][0]["firstName"], "Carla");
    let (_, _, body) = send(list("q=example.com")).await;
    assert_eq!(body["pagination"]["total"], 3, "matches e-mail too: ann, bob and the admin");
    let (_, _, body) = send(list("q=%25")).await;
    assert_eq!(body["pagination"]["total"], 0, "LIKE wildcards are literal");

    let (_, _, body) = send(list("role=admin")).await;
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(body["data"][0]["email"], admin.email);

    let (_, _, body) = send(list("page=9")).await;
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["pagination"]["total"], 4);

    for bad in ["limit=0", "limit=101", "page=0", "role=superuser", "page=x"] {
        assert_error(list(bad).send().await.unwrap(), 400, "VALIDATION_ERROR").await;
    }
}

#[sqlx::test]
async fn admins_get_users_by_id(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    let (status, _, body) = send(app.authed(Method::GET, &user_path(ann.id), &admin.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["email"], ann.email);
    expect_error(app.authed(Method::GET, &user_path(uuid::Uuid::new_v4()), &admin.token), 404, "NOT_FOUND")
        .await;
    expect_error(app.authed(Method::GET, &user_path("not-a-uuid"), &admin.token), 400, "VALIDATION_ERROR")
        .await;
}

#[sqlx::test]
async fn a_role_change_applies_to_existing_tokens_at_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().signed_in().await;
    assert_eq!(send(app.authed(Method::GET, "/api/v1/users", &ann.token)).await.0, 403);

    let (status, _, body) =
        send(app.authed(Method::PATCH, &user_path(ann.id), &admin.token).json(&json!({"role": "admin"})))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["role"], "admin");
    assert_eq!(send(app.authed(Method::GET, "/api/v1/users", &ann.token)).await.0, 200);

    expect_error(
        app.authed(Method::PATCH, &user_path(ann.id), &admin.token).json(&json!({"role": "owner"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    expect_error(
        app.authed(Method::PATCH, &user_path(ann.id), &admin.token).json(&json!({"email": "x@y.z"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    expect_error(
        app.authed(Method::PATCH, &user_path(uuid::Uuid::new_v4()), &admin.token)
            .json(&json!({"role": "user"})),
        404,
        "NOT_FOUND",
    )
    .await;
}

#[sqlx::test]
async fn the_last_admin_can_be_neither_demoted_nor_deleted(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;

    expect_error(
        app.authed(Method::PATCH, &user_path(admin.id), &admin.token).json(&json!({"role": "user"})),
        409,
        "CONFLICT",
    )
    .await;
    expect_error(app.authed(Method::DELETE, &user_path(admin.id), &admin.token), 409, "CONFLICT").await;

    // With a second admin, the first may step down.
    let second = app.user().admin().signed_in().await;
    let (status, _, _) =
        send(app.authed(Method::PATCH, &user_path(admin.id), &second.token).json(&json!({"role": "user"})))
            .await;
    assert_eq!(status, 200);
    expect_error(app.authed(Method::DELETE, &user_path(second.id), &second.token), 409, "CONFLICT").await;
}

#[sqlx::test]
async fn a_deleted_user_is_gone_but_the_email_can_register_again(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().email("ann@example.com").signed_in().await;

    app.login("ann@example.com", "password123").await;
    let (status, _, _) = send(app.authed(Method::DELETE, &user_path(ann.id), &admin.token)).await;
    assert_eq!(status, 204);
    let live: i64 =
        sqlx::query_scalar("select count(*) from sessions where user_id = $1 and revoked_at is null")
            .bind(ann.id)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(live, 0, "every session revoked");
    expect_error(app.authed(Method::GET, &user_path(ann.id), &admin.token), 404, "NOT_FOUND").await;
    expect_error(app.authed(Method::DELETE, &user_path(ann.id), &admin.token), 404, "NOT_FOUND").await;

    let again = app.user().email("ann@example.com").password("another-password").signed_in().await;
    assert_ne!(again.id, ann.id);
    // The old row is kept (orders will keep pointing at it).
    let kept: i64 = sqlx::query_scalar("select count(*) from users where email = 'ann@example.com'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(kept, 2);
}

fn create_admin(pool: &PgPool, email: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_storefront"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_DOTENV", "1")
        .env("APP_ENV", "test")
        .env("DATABASE_URL", url_of(pool))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["create-admin", "--email", email]);
    cmd
}

#[sqlx::test]
async fn create_admin_takes_the_password_from_env_or_stdin_and_promotes_only_when_asked(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;

    // From ADMIN_PASSWORD.
    let out =
        create_admin(&pool, "Root@Example.com").env("ADMIN_PASSWORD", "root-password").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = app.login("root@example.com", "root-password").await;
    let (_, _, me) = send(app.authed(Method::GET, PROFILE, &root.token)).await;
    assert_eq!(me["data"]["role"], "admin");

    // From stdin.
    let mut child = create_admin(&pool, "ops@example.com")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ops-password\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    app.login("ops@example.com", "ops-password").await;

    // An existing account is not promoted without --promote: nothing changes.
    let ann = app.user().email("ann@example.com").signed_in().await;
    let out = create_admin(&pool, "ann@example.com").env("ADMIN_PASSWORD", "operator-pass").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--promote"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(send(app.authed(Method::GET, "/api/v1/users", &ann.token)).await.0, 403, "still a user");
    app.login("ann@example.com", "password123").await;

    // With --promote the account gets the operator's password and loses its sessions.
    let out = create_admin(&pool, "ann@example.com")
        .arg("--promote")
        .env("ADMIN_PASSWORD", "operator-pass")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        send(app.authed(Method::GET, "/api/v1/users", &ann.token)).await.0,
        401,
        "old sessions revoked"
    );
    let res = app
        .post_json("/api/v1/auth/login", &json!({"email": "ann@example.com", "password": "password123"}))
        .await;
    assert_error(res, 401, "UNAUTHORIZED").await;
    let admin = app.login("ann@example.com", "operator-pass").await;
    assert_eq!(send(app.authed(Method::GET, "/api/v1/users", &admin.token)).await.0, 200);

    // Too short a password is refused, and nothing is created.
    let out = create_admin(&pool, "weak@example.com").env("ADMIN_PASSWORD", "short").output().unwrap();
    assert!(!out.status.success());
    let res =
        app.post_json("/api/v1/auth/login", &json!({"email": "weak@example.com", "password": "short"})).await;
    assert_error(res, 401, "UNAUTHORIZED").await;
}

#[sqlx::test]
async fn two_admins_demoting_each_other_at_once_leave_one_admin(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let first = app.user().admin().signed_in().await;
    let second = app.user().admin().signed_in().await;
    let demote = |actor: &crate::helpers::Session, target: uuid::Uuid| {
        send(app.authed(Method::PATCH, &user_path(target), &actor.token).json(&json!({"role": "user"})))
    };
    let (a, b) = tokio::join!(demote(&first, second.id), demote(&second, first.id));
    let mut statuses = [a.0.as_u16(), b.0.as_u16()];
    statuses.sort_unstable();
    // The loser may also be refused as no longer an admin (403) if the winner committed first.
    assert!(statuses == [200, 409] || statuses == [200, 403], "{statuses:?}");
    let admins: i64 =
        sqlx::query_scalar("select count(*) from users where role = 'admin' and deleted_at is null")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(admins, 1);
}
