//! The outbox relay: moves unsent `outbox` rows to their Redis queues.
//!
//! - Woken by `LISTEN outbox` (writers ring [`crate::platform::jobs::outbox::Wakeup`] after they commit, which
//!   sends one `NOTIFY` per process at most every 10 ms), and polling every
//!   `RELAY_POLL_INTERVAL` as a fallback (a lost connection, a notification missed while
//!   reconnecting, transaction-mode poolers, a row nobody announced).
//! - A batch is claimed with `FOR UPDATE SKIP LOCKED`, so several relays (one per
//!   instance) share the work without waiting on each other and never move a row twice
//!   at the same time.
//! - Rows are marked sent only after Redis accepted them, in the transaction holding
//!   their locks. If the commit then fails, the rows are pushed again later; the outbox id
//!   is the task's idempotency key, so Redis keeps one task. Delivery is at-least-once
//!   either way, and the job handlers are idempotent.
//! - Under sustained load (drains of 16 rows or more) the relay stops listening and polls
//!   every 20 ms, sparing its connection the notifications; it listens again once drains
//!   are small.
//! - While Redis is unreachable the relay backs off (doubling up to 30 s) and the rows
//!   wait in Postgres: nothing is lost.

use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskSink};
use futures::stream;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;

use crate::platform::jobs::outbox::CHANNEL;
use crate::platform::jobs::{QueuedJob, Queues};

/// Rows moved per transaction.
pub const BATCH: i64 = 200;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the relay lets commits gather after a notification before it moves them.
const COALESCE: Duration = Duration::from_millis(20);
/// A drain this big means commits keep coming: poll instead of listening.
const BUSY_BATCH: usize = 16;

/// Moves one batch; returns how many rows it moved (0: nothing to do).
///
/// One statement claims the batch (`FOR UPDATE SKIP LOCKED`) and marks it sent; the
/// transaction commits only after Redis accepted every job, and rolls back (the rows
/// stay unsent) if it did not.
pub async fn move_batch(pool: &PgPool, queues: &Queues) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    // Only queues this process serves: a row for another queue (a newer release's) is
    // left to a relay that knows it, instead of blocking every batch at its head.
    let served: Vec<String> = queues.names().into_iter().map(str::to_owned).collect();
    let rows = sqlx::query!(
        "update outbox set sent_at = now()
         where id in (select id from outbox
                      where sent_at is null and queue = any($2) order by created_at, id limit $1
                      for update skip locked)
         returning id, queue, kind, payload",
        BATCH,
        &served[..]
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let moved = rows.len();
    let mut by_queue: Vec<(String, Vec<QueuedJob>)> = Vec::new();
    for row in rows {
        let job = QueuedJob { outbox_id: row.id, kind: row.kind, payload: row.payload };
        match by_queue.iter_mut().find(|(q, _)| *q == row.queue) {
            Some((_, jobs)) => jobs.push(job),
            None => by_queue.push((row.queue, vec![job])),
        }
    }
    for (queue, jobs) in by_queue {
        let mut storage = queues.get(&queue).cloned().expect("only served queues are selected");
        let tasks = jobs.into_iter().map(|job| {
            let key = job.outbox_id.to_string();
            TaskBuilder::new(job).idempotency_key(key).build()
        });
        storage
            .push_all(&mut stream::iter(tasks))
            .await
            .map_err(|e| anyhow::anyhow!("pushing to queue {queue}: {e}"))?;
    }
    tx.commit().await?;
    Ok(moved)
}

/// Runs until `stop` turns true: drains the outbox, then sleeps until a notification,
/// the poll interval or the stop signal.
pub async fn run(pool: PgPool, queues: Queues, poll: Duration, mut stop: watch::Receiver<bool>) {
    let mut listener = None::<PgListener>;
    // Polling every COALESCE instead of listening (sustained load).
    let mut polling = false;
    let mut backoff = Duration::from_millis(250);
    tracing::info!(poll_ms = poll.as_millis() as u64, "outbox relay started");
    while !*stop.borrow() {
        if listener.is_none() {
            polling = false;
            listener = match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "relay cannot LISTEN; polling only");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot LISTEN; polling only");
                    None
                }
            };
        }
        // Drain: full batch after full batch; a partial one means the outbox is empty
        // (rows committed since then wake us again).
        let mut failed = false;
        let mut moved = 0;
        loop {
            match move_batch(&pool, &queues).await {
                Ok(n) => {
                    moved += n;
                    backoff = Duration::from_millis(250);
                    if n < BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        retry_in_ms = backoff.as_millis() as u64,
                        "outbox relay failed; retrying"
                    );
                    failed = true;
                    break;
                }
            }
        }
        if moved > 0 {
            tracing::debug!(rows = moved, "outbox rows moved to Redis");
        }
        // Under sustained load notifications say what a short poll says anyway: poll
        // every COALESCE while batches stay big, listen again once they are small.
        if let Some(l) = listener.as_mut().filter(|_| !failed) {
            let switch = if !polling && moved >= BUSY_BATCH {
                l.unlisten(CHANNEL).await.map(|()| true)
            } else if polling && moved < BUSY_BATCH / 4 {
                l.listen(CHANNEL).await.map(|()| true)
            } else {
                Ok(false)
            };
            match switch {
                Ok(true) => {
                    polling = !polling;
                    while l.next_buffered().is_some() {}
                    if !polling {
                        // Rows committed before LISTEN took effect notified no one.
                        continue;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "relay lost its LISTEN connection; reconnecting");
                    listener = None;
                    polling = false;
                }
            }
        }
        let wait = if failed {
            backoff
        } else if polling {
            COALESCE
        } else {
            poll
        };
        if failed {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            changed = stop.changed() => {
                // A dropped sender means nobody can stop us any more: stop now.
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep(wait) => {}
            notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            }, if !failed && !polling => {
                match notified {
                    Ok(()) => {
                        // Under load commits arrive in bursts: let a few more land, then
                        // take one batch for all of them instead of one per commit, and
                        // forget the notifications that batch answers.
                        tokio::time::sleep(COALESCE).await;
                        if let Some(l) = listener.as_mut() {
                            while l.next_buffered().is_some() {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "relay lost its LISTEN connection; reconnecting");
                        listener = None;
                    }
                }
            }
        }
    }
    tracing::info!("outbox relay stopped");
}
