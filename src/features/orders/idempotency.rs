//! `Idempotency-Key` for `POST /orders`: the `idempotency_keys` table. A key is
//! scoped to the caller; the first request claims it with an insert that the primary key
//! makes race-free, and its final answer is stored (a 201 inside the order's own
//! transaction) and replayed for 24 hours. The flow itself is `OrderService::place_idempotent`.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::platform::http::{error::AppError, response::ApiOk};

/// A key sent with a request and the fingerprint of the request body it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: Vec<u8>,
}

impl IdempotencyKey {
    /// `key` (already checked by the header extractor) bound to a parsed request,
    /// serialized canonically: a client that re-encodes the same request on retry (other
    /// key order, other spacing, `2.0` for `2`) still matches.
    pub fn for_request(key: String, request: &impl Serialize) -> Self {
        // Through a `Value`, whose maps are sorted: the same request in any key order
        // hashes alike.
        let canonical =
            serde_json::to_value(request).and_then(|v| serde_json::to_vec(&v)).unwrap_or_default();
        Self { key, request_hash: Sha256::digest(&canonical).to_vec() }
    }

    /// `key` bound to a body that is not a request at all (it did not parse): its bytes.
    pub fn for_bytes(key: String, body: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"unparsed:");
        hash.update(body);
        Self { key, request_hash: hash.finalize().to_vec() }
    }
}

/// A final answer as stored for replay: the status and the body exactly as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The 201 of a created resource, in the success envelope.
    pub fn created<T: Serialize>(data: &T) -> Self {
        Self { status: 201, body: serde_json::to_value(ApiOk::new(data)).unwrap_or_default() }
    }

    /// A final error answer, in the error envelope (with the first request's id).
    pub fn failed(error: &AppError) -> Self {
        Self {
            status: error.status().as_u16(),
            body: serde_json::to_value(error.envelope()).unwrap_or_default(),
        }
    }
}

/// A key this request holds; `token` proves the claim is still its own.
#[derive(Debug, Clone)]
pub struct ClaimedKey {
    pub key: String,
    pub token: Uuid,
}

/// What a request found when it tried to claim its key.
#[derive(Debug)]
pub enum Claim {
    /// This request owns the key and must complete or release it.
    Acquired(ClaimedKey),
    /// A finished request with the same key and body: answer with its response.
    Replay(Answer),
    /// The key was used with a different body.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

/// Claims `key` for `user`. An in-flight claim older than `abandoned_after` (its request
/// died without an answer) is taken over; a record past retention is replaced.
pub async fn claim(
    pool: &PgPool,
    user: Uuid,
    key: &IdempotencyKey,
    abandoned_after: Duration,
) -> sqlx::Result<Claim> {
    let abandoned_secs = abandoned_after.as_secs_f64();
    let token = Uuid::new_v4();
    let acquired = || Claim::Acquired(ClaimedKey { key: key.key.clone(), token });
    // Two rounds: a record removed between our insert and our read gets a second try.
    for _ in 0..2 {
        let inserted = sqlx::query!(
            "insert into idempotency_keys (user_id, key, request_hash, claim_token) values ($1, $2, $3, $4)
             on conflict (user_id, key) do nothing",
            user,
            key.key,
            key.request_hash,
            token,
        )
        .execute(pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(acquired());
        }
        let Some(found) = sqlx::query!(
            r#"select request_hash, response_status, response_body,
                      created_at < now() - interval '24 hours' as "expired!",
                      completed_at is null and created_at < now() - make_interval(secs => $3) as "abandoned!"
               from idempotency_keys where user_id = $1 and key = $2"#,
            user,
            key.key,
            abandoned_secs,
        )
        .fetch_optional(pool)
        .await?
        else {
            continue;
        };
        if found.expired {
            sqlx::query!(
                "delete from idempotency_keys where user_id = $1 and key = $2
                 and created_at < now() - interval '24 hours'",
                user,
                key.key,
            )
            .execute(pool)
            .await?;
            continue;
        }
        if found.request_hash != key.request_hash {
            return Ok(Claim::Mismatch);
        }
        if let (Some(status), Some(body)) = (found.response_status, found.response_body) {
            return Ok(Claim::Replay(Answer { status: u16::try_from(status).unwrap_or(500), body }));
        }
        if found.abandoned {
            let taken = sqlx::query!(
                "update idempotency_keys set created_at = now(), claim_token = $4
                 where user_id = $1 and key = $2 and completed_at is null
                   and created_at < now() - make_interval(secs => $3)",
                user,
                key.key,
                abandoned_secs,
                token,
            )
            .execute(pool)
            .await?
            .rows_affected();
            if taken == 1 {
                return Ok(acquired());
            }
        }
        return Ok(Claim::InFlight);
    }
    Ok(Claim::InFlight)
}

/// Stores the final response of a claimed key. `false` when the claim is no longer ours
/// (taken over after we were presumed dead): the caller must then not commit.
pub async fn complete(
    db: impl PgExecutor<'_>,
    user: Uuid,
    claim: &ClaimedKey,
    answer: &Answer,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update idempotency_keys set response_status = $4, response_body = $5, completed_at = now()
         where user_id = $1 and key = $2 and claim_token = $3 and completed_at is null",
        user,
        claim.key,
        claim.token,
        i16::try_from(answer.status).unwrap_or(500),
        &answer.body,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives up our claim without an answer (a server error), so a retry may run again.
pub async fn release(db: impl PgExecutor<'_>, user: Uuid, claim: &ClaimedKey) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from idempotency_keys
         where user_id = $1 and key = $2 and claim_token = $3 and completed_at is null",
        user,
        claim.key,
        claim.token
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Nightly cleanup: records older than 24 hours, in batches; how many.
pub async fn delete_expired(pool: &PgPool) -> sqlx::Result<u64> {
    crate::platform::db::delete_in_batches(pool, |n| {
        sqlx::query!(
            "delete from idempotency_keys where ctid = any(array(
                 select ctid from idempotency_keys where created_at < now() - interval '24 hours' limit $1))",
            n
        )
    })
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[sqlx::test(migrations = "./migrations")]
    async fn a_claim_taken_over_cannot_be_completed_or_released_by_its_first_owner(db: PgPool) {
        let user: Uuid = sqlx::query_scalar(
            "insert into users (email, password_hash) values ('ann@example.com', 'x') returning id",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let key = IdempotencyKey::for_bytes("k".to_owned(), br#"{"items": []}"#);
        let Claim::Acquired(first) = claim(&db, user, &key, Duration::from_secs(60)).await.unwrap() else {
            panic!("first claim")
        };
        // The first request stalls past the takeover threshold; a retry takes the key over.
        let Claim::Acquired(second) = claim(&db, user, &key, Duration::ZERO).await.unwrap() else {
            panic!("takeover")
        };
        assert_ne!(first.token, second.token);
        let answer = |body: Value| Answer { status: 201, body };
        assert!(!complete(&db, user, &first, &answer(json!({}))).await.unwrap());
        release(&db, user, &first).await.unwrap();
        assert!(complete(&db, user, &second, &answer(json!({"ok": true}))).await.unwrap());
        let stored: Value = sqlx::query_scalar("select response_body from idempotency_keys where key = 'k'")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(stored, json!({"ok": true}));
    }
}
