//! Hourly mail budgets per recipient address, counted in Redis so they hold across
//! processes: mail a stranger can trigger (register someone's address, order and cancel
//! in a loop) must not flood that address from the shop's domain. Two buckets: the
//! account mails (password reset, verification) have their own small one, so a flood of
//! order mail cannot use it up, and they cannot flood either.
//!
//! Past a budget a message is suppressed: not sent, counted, never dead-lettered, and
//! logged once an hour per address with a hash of the address, never the address.

use redis::Script;

use crate::platform::{mail::address_hash, redis::Redis};

/// Account mails (reset, verification) one address may get an hour.
pub const ACCOUNT_MAILS_PER_HOUR: u32 = 5;

const HOUR_MS: u64 = 60 * 60 * 1000;

/// `INCR` with the window's expiry set on first use; the count.
const TAKE: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
";

/// Which budget a message draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Password reset and verification links.
    Account,
    /// Everything else (welcome, orders, payments, reports).
    General,
}

/// What a budget check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    Send,
    /// Over budget: not sent. `first` is true for the first suppression of this address
    /// in the hour (the one that is logged).
    Suppress {
        first: bool,
    },
}

/// The hourly budgets; cheap to clone.
#[derive(Clone)]
pub struct MailBudget {
    redis: Redis,
    general_per_hour: u32,
    take: std::sync::Arc<Script>,
}

impl MailBudget {
    /// `general_per_hour`: `MAIL_MAX_PER_RECIPIENT_PER_HOUR` (0: no general budget).
    pub fn new(redis: Redis, general_per_hour: u32) -> Self {
        Self { redis, general_per_hour, take: std::sync::Arc::new(Script::new(TAKE)) }
    }

    /// Spends one message of `address`'s budget in `bucket`. Redis failing sends (an
    /// outage must not stop mail), logged.
    pub async fn spend(&self, bucket: Bucket, address: &str) -> Spend {
        let (name, max) = match bucket {
            Bucket::Account => ("account", ACCOUNT_MAILS_PER_HOUR),
            Bucket::General if self.general_per_hour == 0 => return Spend::Send,
            Bucket::General => ("general", self.general_per_hour),
        };
        let hash = address_hash(address);
        let mut conn = self.redis.conn();
        let key = self.redis.key(&format!("mail:{name}:{hash}"));
        let count = match self.take.key(&key).arg(HOUR_MS).invoke_async::<u64>(&mut conn).await {
            Ok(count) => count,
            Err(e) => {
                tracing::warn!(error = %e, "mail budget: Redis did not answer; sending without counting");
                return Spend::Send;
            }
        };
        if count <= u64::from(max) {
            return Spend::Send;
        }
        let logged = self.redis.key(&format!("mail:suppressed:{hash}"));
        let first = redis::cmd("SET")
            .arg(&logged)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(HOUR_MS)
            .query_async::<Option<String>>(&mut conn)
            .await
            .map(|set| set.is_some())
            .unwrap_or(false);
        Spend::Suppress { first }
    }
}
