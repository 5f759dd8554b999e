//! The nightly cleanup (SPEC §8). It runs inside the transaction that claims its
//! `scheduled_runs` slot ([`schedule::claim`]), so with several instances a slot runs
//! exactly once and a failure leaves nothing half done (and the slot free for a retry).

use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::shared::schedule;

/// Rows removed by one cleanup run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub sessions: u64,
    pub reset_tokens: u64,
    pub idempotency_keys: u64,
    pub outbox: u64,
}

/// Daily: deletes sessions whose whole family is dead (revoked or expired throughout; a
/// rotated session of a live family is kept, however old, so presenting a stolen rotated
/// token is still recognised as reuse), used or expired reset tokens, idempotency records
/// older than 24 h, outbox rows sent more than 7 days ago, and reset-password jobs older
/// than a day whatever their state (their links expired long before).
pub async fn cleanup(pool: &PgPool, slot: DateTime<Utc>) -> sqlx::Result<Option<CleanupReport>> {
    let started = Instant::now();
    let Some(mut tx) = schedule::claim(pool, "cleanup", slot).await? else {
        return Ok(None);
    };
    let sessions = sqlx::query!(
        "delete from sessions s
         where not exists (select 1 from sessions live
                           where live.family_id = s.family_id and live.revoked_at is null
                             and live.expires_at > now())"
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let reset_tokens =
        sqlx::query!("delete from password_reset_tokens where used_at is not null or expires_at < now()")
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let idempotency_keys =
        sqlx::query!("delete from idempotency_keys where created_at < now() - interval '24 hours'")
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let outbox = sqlx::query!(
        "delete from outbox
         where sent_at < now() - interval '7 days'
            or (kind = 'reset-password' and created_at < now() - interval '1 day')"
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    let report = CleanupReport { sessions, reset_tokens, idempotency_keys, outbox };
    tracing::info!(
        task = "cleanup",
        deleted.sessions = sessions,
        deleted.reset_tokens = reset_tokens,
        deleted.idempotency_keys = idempotency_keys,
        deleted.outbox = outbox,
        duration_ms = started.elapsed().as_millis() as u64,
        "cleanup finished"
    );
    Ok(Some(report))
}
