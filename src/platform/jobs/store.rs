//! What apalis-redis keeps per queue, read and changed directly: counts per state, the
//! dead-letter list, re-enqueueing a dead job, and trimming finished ones.
//!
//! apalis 1.0 has no working API for these (its stats queries count the wrong key
//! types, its task listing paginates before it filters, and its vacuum deletes jobs
//! still waiting for a retry; see `docs/apalis-notes.md`), so each is one Lua script
//! or one pipeline over the keys its scripts use:
//! `{q}:active` (LIST of due ids), `{q}:scheduled` (ZSET by run-at second),
//! `{q}:inflight:{worker}` (SET), `{q}:workers` (ZSET of heartbeats), `{q}:data` (HASH id →
//! payload), `{q}:meta:{id}` (HASH: attempts, status, result, done_at), `{q}:done` and
//! `{q}:dead` (SETs). Ids are ULIDs, so they sort by enqueue time.
//!
//! **Exit plan.** When apalis-redis offers counts, a paginated dead list, re-enqueueing
//! and trimming that keep jobs still waiting for a retry, use them and delete this module;
//! `tests/api/jobs.rs` holds the behaviour they must keep.

use std::collections::HashMap;

use apalis_redis::{Config, RedisStorage};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde_json::Value;

use crate::platform::jobs::{QueuedJob, Queues};

/// Longest error text kept in a listing (errors carry no secrets, but may be long).
const MAX_ERROR_CHARS: usize = 500;
/// Ids examined per trim round trip.
const TRIM_BATCH: usize = 500;

/// Jobs of one queue by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub queue: &'static str,
    /// Due now, waiting for a worker.
    pub pending: u64,
    /// Fetched by a live worker (running or about to).
    pub running: u64,
    /// Failed an attempt and waiting for the next, or scheduled for later.
    pub retrying: u64,
    /// Finished, not yet trimmed.
    pub done: u64,
    /// Failed every attempt (or could never succeed): listed, retryable by an admin.
    pub dead: u64,
}

/// A dead job, as an admin sees it: identifiers and failure, never the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadJob {
    pub id: String,
    pub queue: &'static str,
    pub kind: Option<String>,
    pub outbox_id: Option<uuid::Uuid>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
}

/// One page of dead jobs, newest first, and how many there are in all.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadPage {
    pub jobs: Vec<DeadJob>,
    pub total: u64,
}

/// Entries removed by one [`trim`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub done: u64,
    pub dead: u64,
}

/// The meta hash field where the worker notes when a job first ran.
pub const FIRST_ATTEMPT_FIELD: &str = "first_attempt_at";

const COUNTS: &str = r"
local now = ARGV[1]
local running = 0
for _, worker in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
    running = running + redis.call('SCARD', KEYS[6] .. ':' .. worker)
end
return {
    redis.call('LLEN', KEYS[1]) + redis.call('ZCOUNT', KEYS[2], '-inf', now),
    running,
    redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
    redis.call('SCARD', KEYS[3]),
    redis.call('SCARD', KEYS[4]),
}";

/// Moves a dead job back to the due list with fresh attempts: 1 moved, 0 not dead here.
const REQUEUE: &str = r"
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local meta = KEYS[3] .. ':' .. ARGV[1]
redis.call('HSET', meta, 'status', 'Pending', 'attempts', '0')
redis.call('HDEL', meta, 'result', 'done_at', 'first_attempt_at', 'locked_at', 'locked_by')
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1";

/// Deletes the given ids of a done/dead set finished at or before ARGV[1] (unix s).
const TRIM: &str = r"
local removed = 0
for i = 2, #ARGV do
    local id = ARGV[i]
    local meta = KEYS[3] .. ':' .. id
    local done_at = tonumber(redis.call('HGET', meta, 'done_at') or '0') or 0
    if done_at <= tonumber(ARGV[1]) then
        redis.call('SREM', KEYS[1], id)
        redis.call('HDEL', KEYS[2], id)
        redis.call('DEL', meta)
        removed = removed + 1
    end
end
return removed";

fn storages(queues: &Queues) -> impl Iterator<Item = (&'static str, &RedisStorage<QueuedJob>)> {
    queues.iter()
}

fn connection(storage: &RedisStorage<QueuedJob>) -> ConnectionManager {
    storage.clone().get_connection().clone()
}

/// Our index of a queue's dead set, which apalis keeps as a plain set: the same ids in a
/// sorted set of equal scores, ordered by the ids themselves (ULIDs: by time), so a page
/// of the newest is one range read at any depth instead of reading the whole set. Written
/// when a job dies (the worker), kept in step by the trim (every 5 minutes), which also
/// adds dead jobs the index missed.
pub fn dead_index(c: &Config) -> String {
    format!("{}:index", c.dead_jobs_set())
}

/// Counts per state of every queue.
pub async fn counts(queues: &Queues) -> redis::RedisResult<Vec<QueueCounts>> {
    let now = Utc::now().timestamp();
    let mut out = Vec::with_capacity(2);
    for (queue, storage) in storages(queues) {
        let c = storage.get_config();
        let [pending, running, retrying, done, dead]: [u64; 5] = redis::Script::new(COUNTS)
            .key(c.active_jobs_list())
            .key(c.scheduled_jobs_set())
            .key(c.done_jobs_set())
            .key(c.dead_jobs_set())
            .key(c.workers_set())
            .key(c.inflight_jobs_set())
            .arg(now)
            .invoke_async(&mut connection(storage))
            .await?;
        out.push(QueueCounts { queue, pending, running, retrying, done, dead });
    }
    Ok(out)
}

/// Where a page of dead jobs starts: page mode's offset, or after the id a cursor holds.
#[derive(Debug, Clone)]
pub enum DeadFrom {
    Offset(u64),
    After(String),
}

/// Up to `limit` dead jobs of `queue` (or every queue), newest first, from `from`; the
/// total of dead jobs in page mode. Each queue's index is read as one range (`ZRANGE
/// BYLEX REV` with a limit), the queues' pages merged; an id no longer in the dead set
/// (retried or trimmed since) is left out.
pub async fn dead_page(
    queues: &Queues,
    queue: Option<&str>,
    from: DeadFrom,
    limit: u64,
) -> redis::RedisResult<DeadPage> {
    let Some((_, first)) = queues.iter().next() else {
        return Ok(DeadPage { total: 0, jobs: Vec::new() });
    };
    let mut conn = connection(first);
    let (offset, max) = match &from {
        DeadFrom::Offset(offset) => (*offset, "+".to_owned()),
        DeadFrom::After(id) => (0, format!("({id}")),
    };
    let mut ids: Vec<(String, &'static str, &Config)> = Vec::new();
    let mut total = 0;
    for (name, storage) in storages(queues) {
        if queue.is_some_and(|q| q != name) {
            continue;
        }
        let config = storage.get_config();
        let (members, count): (Vec<String>, u64) = redis::pipe()
            .cmd("ZRANGE")
            .arg(dead_index(config))
            .arg(&max)
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(offset + limit)
            .cmd("SCARD")
            .arg(config.dead_jobs_set())
            .query_async(&mut conn)
            .await?;
        total += count;
        ids.extend(members.into_iter().map(|id| (id, name, config)));
    }
    // ULIDs sort by creation time; ties (same millisecond) by their random part.
    ids.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let page_ids: Vec<_> = ids.into_iter().skip(start).take(limit as usize).collect();
    if page_ids.is_empty() {
        return Ok(DeadPage { jobs: Vec::new(), total });
    }
    let mut pipe = redis::pipe();
    for (id, _, config) in &page_ids {
        pipe.hgetall(format!("{}:{id}", config.job_meta_hash()));
        pipe.hget(config.job_data_hash(), id);
        pipe.sismember(config.dead_jobs_set(), id);
    }
    let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    let mut jobs = Vec::with_capacity(page_ids.len());
    for ((id, queue, _), reply) in page_ids.into_iter().zip(replies.chunks(3)) {
        let dead: bool = redis::FromRedisValue::from_redis_value(reply[2].clone())?;
        if !dead {
            continue;
        }
        let meta: HashMap<String, String> = redis::FromRedisValue::from_redis_value(reply[0].clone())?;
        let data: Option<Vec<u8>> = redis::FromRedisValue::from_redis_value(reply[1].clone())?;
        jobs.push(dead_job(id, queue, &meta, data.as_deref()));
    }
    Ok(DeadPage { jobs, total })
}

fn dead_job(id: String, queue: &'static str, meta: &HashMap<String, String>, data: Option<&[u8]>) -> DeadJob {
    let job: Option<QueuedJob> = data.and_then(|d| serde_json::from_slice(d).ok());
    let at = |field: &str| {
        meta.get(field).and_then(|s| s.parse::<i64>().ok()).and_then(|s| DateTime::from_timestamp(s, 0))
    };
    let enqueued_at = ulid::Ulid::from_string(&id)
        .ok()
        .and_then(|u| DateTime::from_timestamp_millis(i64::try_from(u.timestamp_ms()).ok()?));
    DeadJob {
        queue,
        kind: job.as_ref().map(|j| j.kind.clone()),
        outbox_id: job.as_ref().map(|j| j.outbox_id),
        attempts: meta.get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
        last_error: meta.get("result").and_then(|r| last_error(r, meta.get("status").map(String::as_str))),
        enqueued_at,
        first_attempt_at: at(FIRST_ATTEMPT_FIELD),
        last_attempt_at: at("done_at"),
        id,
    }
}

/// The error text of a stored result (`{"Err": "..."}`); a job that died still
/// `Running` was cut off by its timeout, a panic or a lost worker.
fn last_error(result: &str, status: Option<&str>) -> Option<String> {
    let text = match serde_json::from_str::<Value>(result).ok()? {
        Value::Object(map) => match map.get("Err") {
            Some(Value::String(e)) => e.clone(),
            Some(other) => other.to_string(),
            None if status == Some("Running") => "the attempt did not finish (timeout or crash)".to_owned(),
            None => return None,
        },
        _ => return None,
    };
    let text = text.strip_prefix("AbortError: ").unwrap_or(&text);
    Some(text.chars().take(MAX_ERROR_CHARS).collect())
}

/// Re-enqueues dead job `id` with fresh attempts; the queue it was in, or `None` when
/// no queue holds a dead job with that id.
pub async fn requeue_dead(queues: &Queues, id: &str) -> redis::RedisResult<Option<&'static str>> {
    if ulid::Ulid::from_string(id).is_err() {
        return Ok(None);
    }
    for (name, storage) in storages(queues) {
        let c = storage.get_config();
        let moved: i32 = redis::Script::new(REQUEUE)
            .key(c.dead_jobs_set())
            .key(c.active_jobs_list())
            .key(c.job_meta_hash())
            .arg(id)
            .invoke_async(&mut connection(storage))
            .await?;
        if moved == 1 {
            redis::cmd("ZREM").arg(dead_index(c)).arg(id).query_async::<()>(&mut connection(storage)).await?;
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Deletes done jobs finished before `done_before` and dead ones before `dead_before`
/// (payload, meta and set entry), a bounded batch per round trip, then the oldest dead
/// jobs past `dead_max` per queue, plus the metadata hashes apalis leaves behind for
/// workers that are gone. Keeps the dead-set index in step.
pub async fn trim(
    queues: &Queues,
    done_before: DateTime<Utc>,
    dead_before: DateTime<Utc>,
    dead_max: u64,
) -> redis::RedisResult<Trimmed> {
    let mut trimmed = Trimmed::default();
    for (_, storage) in storages(queues) {
        let c = storage.get_config();
        let mut conn = connection(storage);
        trimmed.done += trim_set(&mut conn, c, &c.done_jobs_set(), done_before).await?;
        trimmed.dead += trim_set(&mut conn, c, &c.dead_jobs_set(), dead_before).await?;
        sync_dead_index(&mut conn, c).await?;
        trimmed.dead += cap_dead(&mut conn, c, dead_max).await?;
        forget_gone_workers(&mut conn, c).await?;
    }
    Ok(trimmed)
}

/// Adds to the index every dead job it lacks, and drops from it every id no longer dead.
async fn sync_dead_index(conn: &mut ConnectionManager, c: &Config) -> redis::RedisResult<()> {
    let (set, index) = (c.dead_jobs_set(), dead_index(c));
    let mut cursor = 0u64;
    loop {
        let (next, ids): (u64, Vec<String>) =
            redis::cmd("SSCAN").arg(&set).arg(cursor).arg("COUNT").arg(TRIM_BATCH).query_async(conn).await?;
        if !ids.is_empty() {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&index).arg("NX");
            for id in &ids {
                zadd.arg(0).arg(id);
            }
            zadd.query_async::<()>(conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut cursor = 0u64;
    loop {
        let (next, pairs): (u64, Vec<String>) = redis::cmd("ZSCAN")
            .arg(&index)
            .arg(cursor)
            .arg("COUNT")
            .arg(TRIM_BATCH)
            .query_async(conn)
            .await?;
        let ids: Vec<&String> = pairs.iter().step_by(2).collect();
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.sismember(&set, *id);
            }
            let dead: Vec<bool> = pipe.query_async(conn).await?;
            let gone: Vec<&&String> = ids.iter().zip(dead).filter(|(_, d)| !d).map(|(id, _)| id).collect();
            if !gone.is_empty() {
                redis::cmd("ZREM").arg(&index).arg(gone).query_async::<()>(conn).await?;
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Deletes the oldest dead jobs beyond `max` (data, meta, set and index entries); how many.
async fn cap_dead(conn: &mut ConnectionManager, c: &Config, max: u64) -> redis::RedisResult<u64> {
    let index = dead_index(c);
    let count: u64 = redis::cmd("ZCARD").arg(&index).query_async(conn).await?;
    let mut removed = 0;
    let mut over = count.saturating_sub(max);
    while over > 0 {
        let batch = over.min(TRIM_BATCH as u64);
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg("-")
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(batch)
            .query_async(conn)
            .await?;
        if ids.is_empty() {
            break;
        }
        removed += redis::Script::new(TRIM)
            .key(c.dead_jobs_set())
            .key(c.job_data_hash())
            .key(c.job_meta_hash())
            .arg(i64::MAX)
            .arg(&ids)
            .invoke_async::<u64>(conn)
            .await?;
        redis::cmd("ZREM").arg(&index).arg(&ids).query_async::<()>(conn).await?;
        over -= ids.len() as u64;
    }
    Ok(removed)
}

async fn trim_set(
    conn: &mut ConnectionManager,
    c: &Config,
    set: &str,
    before: DateTime<Utc>,
) -> redis::RedisResult<u64> {
    let mut removed = 0;
    let mut cursor = 0u64;
    loop {
        let (next, ids): (u64, Vec<String>) =
            redis::cmd("SSCAN").arg(set).arg(cursor).arg("COUNT").arg(TRIM_BATCH).query_async(conn).await?;
        if !ids.is_empty() {
            let n: u64 = redis::Script::new(TRIM)
                .key(set)
                .key(c.job_data_hash())
                .key(c.job_meta_hash())
                .arg(before.timestamp())
                .arg(&ids)
                .invoke_async(conn)
                .await?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// Deletes `{q}:workers:metadata:{name}` of workers no longer in `{q}:workers` (apalis
/// writes one per worker name and never deletes it; names are unique per process).
async fn forget_gone_workers(conn: &mut ConnectionManager, c: &Config) -> redis::RedisResult<()> {
    let workers = c.workers_set();
    let prefix = format!("{workers}:metadata:");
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        for key in keys {
            let name = &key[prefix.len()..];
            let live: Option<f64> = redis::cmd("ZSCORE").arg(&workers).arg(name).query_async(conn).await?;
            if live.is_none() {
                redis::cmd("DEL").arg(&key).query_async::<()>(conn).await?;
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_strips_the_abort_wrapper_and_caps_the_length() {
        assert_eq!(
            last_error(r#"{"Err":"AbortError: the transport failed: refused"}"#, Some("Killed")).as_deref(),
            Some("the transport failed: refused")
        );
        let long = format!(r#"{{"Err":"{}"}}"#, "x".repeat(2000));
        assert_eq!(last_error(&long, Some("Failed")).unwrap().chars().count(), MAX_ERROR_CHARS);
        assert_eq!(last_error(r#"{"Ok":null}"#, Some("Done")), None);
        assert!(last_error(r#"{"Ok":null}"#, Some("Running")).unwrap().contains("did not finish"));
    }

    #[test]
    fn dead_jobs_show_identifiers_and_times_but_no_payload() {
        let id = ulid::Ulid::generate().to_string();
        let outbox_id = uuid::Uuid::new_v4();
        let data = serde_json::to_vec(&QueuedJob {
            outbox_id,
            kind: "welcome".into(),
            payload: serde_json::json!({"userId": "u"}),
        })
        .unwrap();
        let meta: HashMap<String, String> = [
            ("attempts", "3"),
            ("status", "Killed"),
            ("result", r#"{"Err":"AbortError: boom"}"#),
            ("done_at", "1764000000"),
            (FIRST_ATTEMPT_FIELD, "1763999990"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let job = dead_job(id.clone(), "emails", &meta, Some(&data));
        assert_eq!(job.id, id);
        assert_eq!(job.kind.as_deref(), Some("welcome"));
        assert_eq!(job.outbox_id, Some(outbox_id));
        assert_eq!(job.attempts, 3);
        assert_eq!(job.last_error.as_deref(), Some("boom"));
        assert_eq!(job.last_attempt_at.unwrap().timestamp(), 1_764_000_000);
        assert_eq!(job.first_attempt_at.unwrap().timestamp(), 1_763_999_990);
        assert!(job.enqueued_at.is_some());
    }
}
