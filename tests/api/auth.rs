//! Authentication over HTTP: register, login, refresh rotation and reuse detection, logout,
//! token verification.

use std::time::{Duration, Instant};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    helpers::{TestApp, assert_error, assert_error_parts, expect_error, send},
    mail::{SmtpServer, part},
};

const REGISTER: &str = "/api/v1/auth/register";
const LOGIN: &str = "/api/v1/auth/login";
const REFRESH: &str = "/api/v1/auth/refresh";
const LOGOUT: &str = "/api/v1/auth/logout";
const LOGOUT_ALL: &str = "/api/v1/auth/logout-all";
const PROFILE: &str = "/api/v1/users/profile";

async fn refresh(app: &TestApp, token: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    send(app.request(Method::POST, REFRESH).json(&json!({"refreshToken": token}))).await
}

#[sqlx::test]
async fn register_creates_a_user_and_returns_tokens_without_caching(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (status, headers, body) = send(app.request(Method::POST, REGISTER).json(&json!({
        "email": "  Ann.Lee@Example.COM ", "password": "password123", "firstName": "Ann", "lastName": "Lee"
    })))
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let data = &body["data"];
    assert_eq!(body["success"], true);
    assert_eq!(data["expiresIn"], 900);
    assert!(data["token"].as_str().unwrap().split('.').count() == 3);
    assert!(data["refreshToken"].as_str().unwrap().len() >= 43);
    let user = &data["user"];
    assert_eq!(user["email"], "ann.lee@example.com");
    assert_eq!(user["firstName"], "Ann");
    assert_eq!(user["role"], "user");
    assert!(user.get("passwordHash").is_none() && user.get("password").is_none());
    // The token works.
    let (status, _, me) = send(app.authed(Method::GET, PROFILE, data["token"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(me["data"]["id"], user["id"]);
}

#[sqlx::test]
async fn register_rejects_bad_fields_naming_each(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let cases = [
        (json!({"email": "not-an-email", "password": "password123"}), "email"),
        (json!({"email": "a@example.com", "password": "short"}), "password"),
        (json!({"email": "a@example.com", "password": "x".repeat(129)}), "password"),
        (json!({"email": "a@example.com", "password": "password123", "firstName": ""}), "firstName"),
        (json!({"email": "a@example.com", "password": "password123", "role": "admin"}), "role"),
        (json!({"password": "password123"}), "email"),
    ];
    for (body, field) in cases {
        let res = app.post_json(REGISTER, &body).await;
        let err = assert_error(res, 400, "VALIDATION_ERROR").await;
        assert!(err["error"]["fields"][field].is_array(), "{field}: {err}");
    }
    // Nothing was created: the address is still free.
    app.user().email("a@example.com").signed_in().await;
}

#[sqlx::test]
async fn an_email_differing_only_in_case_is_a_conflict(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.user().email("ann@example.com").signed_in().await;
    let res = app.post_json(REGISTER, &json!({"email": "ANN@Example.com", "password": "password456"})).await;
    assert_error(res, 409, "CONFLICT").await;
}

#[sqlx::test]
async fn login_returns_tokens_and_bad_credentials_are_one_uniform_401(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.user().email("ann@example.com").signed_in().await;

    let ok = app.login("ANN@example.com ", "password123").await;
    assert_eq!(ok.email, "ann@example.com");

    let (s1, h1, wrong) = send(
        app.request(Method::POST, LOGIN).json(&json!({"email": "ann@example.com", "password": "nope-nope"})),
    )
    .await;
    let (s2, h2, unknown) = send(
        app.request(Method::POST, LOGIN)
            .json(&json!({"email": "bob@example.com", "password": "password123"})),
    )
    .await;
    assert_error_parts(s1, &h1, &wrong, 401, "UNAUTHORIZED");
    assert_error_parts(s2, &h2, &unknown, 401, "UNAUTHORIZED");
    assert_eq!(wrong["error"]["message"], unknown["error"]["message"]);
    assert_eq!(h1["www-authenticate"], "Bearer");
    assert_eq!(h2["www-authenticate"], "Bearer");
    assert_eq!(h1["cache-control"], "no-store");
}

#[sqlx::test]
async fn an_unknown_email_costs_about_as_much_as_a_wrong_password(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.user().email("ann@example.com").signed_in().await;
    let time = |email: &'static str| {
        let app = &app;
        async move {
            let mut total = Duration::ZERO;
            for _ in 0..3 {
                let started = Instant::now();
                let res = app.post_json(LOGIN, &json!({"email": email, "password": "wrong-password"})).await;
                assert_eq!(res.status(), 401);
                total += started.elapsed();
            }
            total
        }
    };
    let _warm_up = time("nobody@example.com").await;
    let wrong_password = time("ann@example.com").await;
    let unknown_email = time("nobody@example.com").await;
    // Both pay for an argon2 verification; without the dummy hash the unknown e-mail
    // would answer in well under a tenth of the time.
    assert!(unknown_email * 10 > wrong_password * 4, "unknown {unknown_email:?} vs wrong {wrong_password:?}");
}

#[sqlx::test]
async fn login_validation_errors_are_400(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let err =
        assert_error(app.post_json(LOGIN, &json!({"email": "a@example.com"})).await, 400, "VALIDATION_ERROR")
            .await;
    assert!(err["error"]["fields"]["password"].is_array());
}

#[sqlx::test]
async fn refresh_rotates_and_the_old_token_is_then_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;

    let (status, headers, body) = refresh(&app, &ann.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let rotated = body["data"]["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(rotated, ann.refresh_token);
    assert_eq!(body["data"]["expiresIn"], 900);
    let new_access = body["data"]["token"].as_str().unwrap();
    assert_eq!(send(app.authed(Method::GET, PROFILE, new_access)).await.0, 200);

    let (s, h, b) = refresh(&app, &ann.refresh_token).await;
    assert_error_parts(s, &h, &b, 401, "UNAUTHORIZED");
    assert_eq!(h["www-authenticate"], "Bearer");
}

#[sqlx::test]
async fn presenting_a_rotated_token_revokes_its_whole_family(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let other_device = app.login("ann@example.com", "password123").await;

    let (_, _, first) = refresh(&app, &ann.refresh_token).await;
    let second = first["data"]["refreshToken"].as_str().unwrap().to_owned();
    let (_, _, second_body) = refresh(&app, &second).await;
    let third = second_body["data"]["refreshToken"].as_str().unwrap().to_owned();

    // A thief replays the first token: refused, and the family is burned.
    assert_eq!(refresh(&app, &ann.refresh_token).await.0, 401);
    assert_eq!(refresh(&app, &third).await.0, 401, "the newest descendant is revoked too");
    // Another login (another family) is untouched.
    assert_eq!(refresh(&app, &other_device.refresh_token).await.0, 200);
}

#[sqlx::test]
async fn concurrent_refreshes_of_one_token_let_at_most_one_through(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let attempts = (0..5).map(|_| refresh(&app, &ann.refresh_token));
    let statuses: Vec<u16> =
        futures::future::join_all(attempts).await.into_iter().map(|(s, _, _)| s.as_u16()).collect();
    // One rotation wins; the losers' attempts count as reuse and burn the family.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 401), "{statuses:?}");
}

#[sqlx::test]
async fn logout_revokes_the_session_and_unknown_tokens_are_fine(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;

    let (status, headers, body) =
        send(app.request(Method::POST, LOGOUT).json(&json!({"refreshToken": ann.refresh_token}))).await;
    assert_eq!(status, 204);
    assert_eq!(body, Value::Null);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(refresh(&app, &ann.refresh_token).await.0, 401);

    let (status, _, _) =
        send(app.request(Method::POST, LOGOUT).json(&json!({"refreshToken": "never-issued"}))).await;
    assert_eq!(status, 204);
    assert_error(app.post_json(LOGOUT, &json!({})).await, 400, "VALIDATION_ERROR").await;
}

#[sqlx::test]
async fn logout_all_revokes_every_session_of_the_caller(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let phone = app.login("ann@example.com", "password123").await;
    let bob = app.user().signed_in().await;

    assert_error(app.request(Method::POST, LOGOUT_ALL).send().await.unwrap(), 401, "UNAUTHORIZED").await;
    let (status, _, _) = send(app.authed(Method::POST, LOGOUT_ALL, &ann.token)).await;
    assert_eq!(status, 204);

    assert_eq!(refresh(&app, &ann.refresh_token).await.0, 401);
    assert_eq!(refresh(&app, &phone.refresh_token).await.0, 401);
    assert_eq!(refresh(&app, &bob.refresh_token).await.0, 200, "other users keep their sessions");
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[sqlx::test]
async fn forged_expired_and_misaddressed_tokens_are_401(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let settings = &app.state.config;
    let secret = secrecy::ExposeSecret::expose_secret(&settings.jwt_secret).to_owned();
    let now = chrono::Utc::now().timestamp();
    // The session id the real token was issued with: forged tokens differ only where tested.
    let payload = ann.token.split('.').nth(1).unwrap();
    let real: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let jti = real["jti"].clone();
    let claims = |aud: &str, iss: &str, exp: i64| {
        json!({"sub": ann.id, "email": ann.email, "role": "admin", "iat": now, "exp": exp,
               "iss": iss, "aud": aud, "jti": jti})
    };
    let sign = |claims: &Value, key: &[u8]| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(key)).unwrap()
    };
    let good = claims("storefront-api", "storefront", now + 600);
    // Sanity: a correctly signed token with these claims is accepted.
    assert_eq!(send(app.authed(Method::GET, PROFILE, &sign(&good, secret.as_bytes()))).await.0, 200);

    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good));
    // Signed right, with the server's secret, but as HS512 (made by hand: the server's
    // token crypto serves HS256 alone).
    let hs512 = {
        use hmac::{KeyInit, Mac};
        let signed = format!("{}.{}", b64(&json!({"alg": "HS512", "typ": "JWT"})), b64(&good));
        let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    };
    let forged = [
        ("alg none", alg_none),
        ("alg HS512", hs512),
        ("foreign secret", sign(&good, b"another-secret-another-secret-another")),
        ("wrong aud", sign(&claims("someone-else", "storefront", now + 600), secret.as_bytes())),
        ("wrong iss", sign(&claims("storefront-api", "evil", now + 600), secret.as_bytes())),
        ("expired", sign(&claims("storefront-api", "storefront", now - 3600), secret.as_bytes())),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (what, token) in forged {
        let (s, h, b) = send(app.authed(Method::GET, PROFILE, &token)).await;
        assert_eq!(s, 401, "{what}");
        assert_error_parts(s, &h, &b, 401, "UNAUTHORIZED");
        assert_eq!(h["www-authenticate"], "Bearer", "{what}");
    }
    // Wrong scheme and no header.
    expect_error(
        app.request(Method::GET, PROFILE).header("authorization", format!("Basic {}", ann.token)),
        401,
        "UNAUTHORIZED",
    )
    .await;
    assert_error(app.get(PROFILE).await, 401, "UNAUTHORIZED").await;
}

#[sqlx::test]
async fn a_user_calling_an_admin_endpoint_is_403(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().signed_in().await;
    for (method, path) in [
        (Method::GET, "/api/v1/users".to_owned()),
        (Method::GET, format!("/api/v1/users/{}", ann.id)),
        (Method::DELETE, format!("/api/v1/users/{}", ann.id)),
    ] {
        expect_error(app.authed(method.clone(), &path, &ann.token), 403, "FORBIDDEN").await;
    }
    expect_error(
        app.authed(Method::PATCH, &format!("/api/v1/users/{}", ann.id), &ann.token)
            .json(&json!({"role": "admin"})),
        403,
        "FORBIDDEN",
    )
    .await;
}

#[sqlx::test]
async fn a_soft_deleted_user_can_neither_log_in_nor_refresh_nor_use_a_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let ann = app.user().email("ann@example.com").signed_in().await;

    let (status, _, _) =
        send(app.authed(Method::DELETE, &format!("/api/v1/users/{}", ann.id), &admin.token)).await;
    assert_eq!(status, 204);

    let res = app.post_json(LOGIN, &json!({"email": "ann@example.com", "password": "password123"})).await;
    assert_error(res, 401, "UNAUTHORIZED").await;
    assert_eq!(refresh(&app, &ann.refresh_token).await.0, 401);
    assert_eq!(send(app.authed(Method::GET, PROFILE, &ann.token)).await.0, 401);
}

#[sqlx::test]
async fn a_rotated_family_stays_burned_after_concurrent_refreshes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let attempts = (0..5).map(|_| refresh(&app, &ann.refresh_token));
    let results = futures::future::join_all(attempts).await;
    // Whatever the winner received is dead too: concurrent use of one token is reuse.
    for (status, _, body) in results {
        if status == 200 {
            let newer = body["data"]["refreshToken"].as_str().unwrap();
            assert_eq!(refresh(&app, newer).await.0, 401);
        }
    }
}

#[sqlx::test]
async fn access_tokens_die_with_their_sessions(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let laptop = app.user().email("ann@example.com").signed_in().await;
    let phone = app.login("ann@example.com", "password123").await;
    let tablet = app.login("ann@example.com", "password123").await;

    // Logout of one session ends that session's access token only.
    send(app.request(Method::POST, LOGOUT).json(&json!({"refreshToken": phone.refresh_token}))).await;
    assert_eq!(send(app.authed(Method::GET, PROFILE, &phone.token)).await.0, 401);
    assert_eq!(send(app.authed(Method::GET, PROFILE, &laptop.token)).await.0, 200);

    // Reuse detection ends the family's access tokens.
    refresh(&app, &tablet.refresh_token).await;
    refresh(&app, &tablet.refresh_token).await;
    assert_eq!(send(app.authed(Method::GET, PROFILE, &tablet.token)).await.0, 401);

    // Logout-all ends everything, the caller's own token included.
    assert_eq!(send(app.authed(Method::POST, LOGOUT_ALL, &laptop.token)).await.0, 204);
    assert_eq!(send(app.authed(Method::GET, PROFILE, &laptop.token)).await.0, 401);
}

#[sqlx::test]
async fn text_postgres_cannot_store_is_a_400_not_a_500(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.user().admin().signed_in().await;
    let res = app.post_json(LOGIN, &json!({"email": "a\u{0}b@example.com", "password": "password123"})).await;
    assert_error(res, 400, "VALIDATION_ERROR").await;
    let res = app
        .post_json(
            REGISTER,
            &json!({"email": "nul@example.com", "password": "password123", "lastName": "a\u{0}"}),
        )
        .await;
    assert_error(res, 400, "VALIDATION_ERROR").await;
    expect_error(app.authed(Method::GET, "/api/v1/users?q=%00", &admin.token), 400, "VALIDATION_ERROR").await;
    expect_error(app.request(Method::GET, "/api/v1/products?q=%00"), 400, "VALIDATION_ERROR").await;
    let res = app
        .post_json(
            REGISTER,
            &json!({"email": "blank@example.com", "password": "password123", "firstName": "   "}),
        )
        .await;
    let err = assert_error(res, 400, "VALIDATION_ERROR").await;
    assert!(err["error"]["fields"]["firstName"].is_array());
}

const FORGOT: &str = "/api/v1/auth/password/forgot";
const RESET: &str = "/api/v1/auth/password/reset";

/// The tokens of the reset e-mails `smtp` received for `email`, once there are at least
/// `expected` (the forgot work runs after the 202, then relay and worker deliver).
async fn reset_tokens(smtp: &SmtpServer, email: &str, expected: usize) -> Vec<String> {
    let started = std::time::Instant::now();
    loop {
        let tokens: Vec<String> = smtp
            .messages()
            .iter()
            .filter(|m| {
                m.contains("Subject: Reset your Storefront password") && m.contains(&format!("To: {email}"))
            })
            .map(|m| {
                let text = part(m, "text/plain");
                let link =
                    text.split_whitespace().find(|w| w.contains("/reset-password#token=")).expect("a link");
                link.split("token=").nth(1).unwrap().to_owned()
            })
            .collect();
        if tokens.len() >= expected {
            return tokens;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "no reset e-mail for {email}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

async fn reset_token(smtp: &SmtpServer, email: &str) -> String {
    reset_tokens(smtp, email, 1).await.remove(0)
}

#[sqlx::test]
async fn forgot_password_answers_202_whether_or_not_the_account_exists(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    app.user().email("ann@example.com").signed_in().await;
    let (known, known_headers, known_body) =
        send(app.request(Method::POST, FORGOT).json(&json!({"email": " ANN@example.com"}))).await;
    let (unknown, _, unknown_body) =
        send(app.request(Method::POST, FORGOT).json(&json!({"email": "nobody@example.com"}))).await;
    assert_eq!((known.as_u16(), unknown.as_u16()), (202, 202));
    assert_eq!(known_body, unknown_body, "nothing tells the two apart");
    assert_eq!(known_headers["cache-control"], "no-store");
    let token = reset_token(&smtp, "ann@example.com").await;
    assert!(token.len() >= 43);
    let reset_mail =
        smtp.messages().into_iter().find(|m| m.contains("Reset your Storefront password")).unwrap();
    let link = format!("{}/reset-password#token={token}", app.state.config.public_url);
    assert!(part(&reset_mail, "text/plain").contains(&link), "{reset_mail}");
    assert!(part(&reset_mail, "text/html").replace("&#x2f;", "/").replace("&#x3d;", "=").contains(&token));
    // The unknown address got nothing; nothing queued names it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(smtp.messages().iter().all(|m| !m.contains("nobody@example.com")));
    let unknown: i64 = sqlx::query_scalar("select count(*) from outbox where payload::text like '%nobody%'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(unknown, 0);
    expect_error(app.request(Method::POST, FORGOT).json(&json!({})), 400, "VALIDATION_ERROR").await;
}

#[sqlx::test]
async fn a_reset_token_sets_the_password_once_and_ends_every_session(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    send(app.request(Method::POST, FORGOT).json(&json!({"email": "ann@example.com"}))).await;
    let token = reset_token(&smtp, "ann@example.com").await;

    // A bad password is refused without spending the token.
    let err = expect_error(
        app.request(Method::POST, RESET).json(&json!({"token": token, "password": "short"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(err["error"]["fields"]["password"].is_array());

    let (status, _, _) =
        send(app.request(Method::POST, RESET).json(&json!({"token": token, "password": "brand-new-pass"})))
            .await;
    assert_eq!(status, 204);
    app.login("ann@example.com", "brand-new-pass").await;
    expect_error(
        app.request(Method::POST, LOGIN)
            .json(&json!({"email": "ann@example.com", "password": "password123"})),
        401,
        "UNAUTHORIZED",
    )
    .await;
    assert_eq!(refresh(&app, &ann.refresh_token).await.0, 401, "sessions revoked");
    assert_eq!(send(app.authed(Method::GET, PROFILE, &ann.token)).await.0, 401);

    let err = expect_error(
        app.request(Method::POST, RESET).json(&json!({"token": token, "password": "another-pass"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(err["error"]["fields"]["token"].is_array(), "single use: {err}");
    let err = expect_error(
        app.request(Method::POST, RESET).json(&json!({"token": "made-up", "password": "another-pass"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(err["error"]["fields"]["token"].is_array());
}

#[sqlx::test]
async fn expired_and_superseded_reset_tokens_are_refused(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    app.user().email("ann@example.com").signed_in().await;
    send(app.request(Method::POST, FORGOT).json(&json!({"email": "ann@example.com"}))).await;
    let first = reset_token(&smtp, "ann@example.com").await;
    // A new request within a minute of the link leaves it alone and mails nothing.
    send(app.request(Method::POST, FORGOT).json(&json!({"email": "ann@example.com"}))).await;
    wait_for_outbox_drained(&app).await;
    assert_eq!(reset_tokens(&smtp, "ann@example.com", 1).await, std::slice::from_ref(&first));
    let live: i64 = sqlx::query_scalar("select count(*) from password_reset_tokens where used_at is null")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(live, 1);
    // A minute later a new request supersedes it.
    sqlx::query("update password_reset_tokens set created_at = created_at - interval '61 seconds'")
        .execute(&app.state.db)
        .await
        .unwrap();
    send(app.request(Method::POST, FORGOT).json(&json!({"email": "ann@example.com"}))).await;
    let second = reset_tokens(&smtp, "ann@example.com", 2).await.into_iter().find(|t| *t != first).unwrap();
    expect_error(
        app.request(Method::POST, RESET).json(&json!({"token": first, "password": "new-password"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;

    sqlx::query("update password_reset_tokens set expires_at = now() - interval '1 minute'")
        .execute(&app.state.db)
        .await
        .unwrap();
    expect_error(
        app.request(Method::POST, RESET).json(&json!({"token": second, "password": "new-password"})),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    app.login("ann@example.com", "password123").await;
}

/// Waits until every outbox row is relayed and its job has run (or 10 s pass).
async fn wait_for_outbox_drained(app: &TestApp) {
    let started = std::time::Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "select count(*) from outbox where kind = 'reset-password' and sent_at is null",
        )
        .fetch_one(&app.state.db)
        .await
        .unwrap();
        if pending == 0 {
            // The relayed job still has to run: give the worker a moment.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            return;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "outbox not drained");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[sqlx::test]
async fn a_password_change_or_a_deletion_ends_outstanding_reset_links(pool: PgPool) {
    let smtp = SmtpServer::start();
    let app = TestApp::spawn_mailing(pool, &smtp, |_| {}).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let bob = app.user().email("bob@example.com").signed_in().await;
    let admin = app.user().admin().signed_in().await;
    send(app.request(Method::POST, FORGOT).json(&json!({"email": "ann@example.com"}))).await;
    send(app.request(Method::POST, FORGOT).json(&json!({"email": "bob@example.com"}))).await;
    let ann_link = reset_token(&smtp, "ann@example.com").await;
    let bob_link = reset_token(&smtp, "bob@example.com").await;
    // Ann changes her password herself; bob's account is deleted by an admin.
    let change = json!({"currentPassword": "password123", "newPassword": "changed-password"});
    assert_eq!(
        send(app.authed(Method::POST, "/api/v1/users/profile/password", &ann.token).json(&change)).await.0,
        204
    );
    let path = format!("/api/v1/users/{}", bob.id);
    assert_eq!(send(app.authed(Method::DELETE, &path, &admin.token)).await.0, 204);
    for link in [ann_link, bob_link] {
        let err = expect_error(
            app.request(Method::POST, RESET).json(&json!({"token": link, "password": "attacker-password"})),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err["error"]["fields"]["token"].is_array(), "{err}");
    }
    app.login("ann@example.com", "changed-password").await;
}

#[sqlx::test]
async fn registering_queues_a_welcome_email_in_the_same_transaction(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let queued: i64 = sqlx::query_scalar(
        "select count(*) from outbox where kind = 'welcome' and queue = 'emails' and payload->>'userId' = $1",
    )
    .bind(ann.id.to_string())
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(queued, 1);
    // A refused duplicate queues nothing.
    let res = app.post_json(REGISTER, &json!({"email": "ANN@example.com", "password": "password123"})).await;
    assert_error(res, 409, "CONFLICT").await;
    let all: i64 = sqlx::query_scalar("select count(*) from outbox where kind = 'welcome'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(all, 1);
}

#[sqlx::test]
async fn forgot_writes_its_job_before_answering(pool: PgPool) {
    // No background roles here: what the 202 promises is already in the outbox.
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    for email in ["ann@example.com", "nobody@example.com"] {
        let (status, _, _) = send(app.request(Method::POST, FORGOT).json(&json!({"email": email}))).await;
        assert_eq!(status, 202);
    }
    let payloads: Vec<Value> =
        sqlx::query_scalar("select payload from outbox where kind = 'reset-password' and queue = 'emails'")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    let job = storefront::shared::jobs::Job::ResetPassword { user_id: ann.id };
    assert_eq!(payloads, [job.payload()], "one job, for the account, written before the 202");
}

#[sqlx::test]
async fn a_login_session_is_only_stored_while_the_checked_password_holds(pool: PgPool) {
    use storefront::shared::sessions::{NewSession, insert_for_login};
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let checked: String = sqlx::query_scalar("select password_hash from users where id = $1")
        .bind(ann.id)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let session = |n: u8| NewSession {
        id: uuid::Uuid::new_v4(),
        user_id: ann.id,
        family_id: uuid::Uuid::new_v4(),
        family_started_at: chrono::Utc::now(),
        token_hash: [n; 32],
        expires_at: chrono::Utc::now() + chrono::Duration::days(1),
        user_agent: None,
        ip: None,
    };
    assert!(insert_for_login(&app.state.db, &session(1), &checked).await.unwrap());
    // A password reset lands between the login's check and its insert.
    sqlx::query("update users set password_hash = 'changed' where id = $1")
        .bind(ann.id)
        .execute(&app.state.db)
        .await
        .unwrap();
    assert!(
        !insert_for_login(&app.state.db, &session(2), &checked).await.unwrap(),
        "stale check: no session"
    );
    let stored: i64 = sqlx::query_scalar("select count(*) from sessions where token_hash = $1")
        .bind(&[2u8; 32][..])
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[sqlx::test]
async fn a_session_family_ends_at_its_absolute_lifetime_however_often_it_is_refreshed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ann = app.user().email("ann@example.com").signed_in().await;
    let bob = app.user().email("bob@example.com").signed_in().await;
    let age = |user: uuid::Uuid, days: i32| {
        sqlx::query(
            "update sessions set family_started_at = now() - make_interval(days => $2) where user_id = $1",
        )
        .bind(user)
        .bind(days)
        .execute(&app.state.db)
    };
    // 29 days into a 30-day family: the refresh works, and the new token ends with the family.
    age(ann.id, 29).await.unwrap();
    let (status, _, body) = refresh(&app, &ann.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let expires_in_hours: f64 = sqlx::query_scalar(
        "select extract(epoch from expires_at - now())::float8 / 3600 from sessions
         where user_id = $1 and revoked_at is null",
    )
    .bind(ann.id)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert!(expires_in_hours < 25.0, "capped at the family's end, not 7 days: {expires_in_hours} h");
    // Past 30 days: no more refreshes.
    age(bob.id, 31).await.unwrap();
    assert_eq!(refresh(&app, &bob.refresh_token).await.0, 401);
    app.login("bob@example.com", "password123").await;
}
