//! Prometheus metrics, kept in a `prometheus-client` registry: request count and latency
//! histogram by method, route template and status, requests in flight, database pool
//! gauges, job durations by queue and kind, e-mails sent and failed by template, webhook
//! attempts by outcome and their lag, and the gauges read at scrape time ([`Gauges`]: jobs
//! per queue and state, outbox lag, dead refunds, webhook deliveries pending and endpoints
//! failing).
//!
//! Served in the OpenMetrics text format by the metrics listener (`METRICS_PORT`, see
//! [`crate::app`]), never through the API port. The registry is an object, not a global:
//! each application state has its own, so tests that start several apps in one process
//! see only their own series.

use std::{
    collections::HashSet,
    sync::{Arc, OnceLock, RwLock, atomic::AtomicU64},
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    response::Response,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use sqlx::PgPool;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Upper bounds of the webhook lag buckets, in seconds: from under a second (the
/// dispatcher's tick) to the day a delivery may spend retrying.
const LAG_BUCKETS: [f64; 14] =
    [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21_600.0, 86_400.0];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Labels of the request series. The route is an interned template (see [`intern`]), so
/// a lookup allocates nothing.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EmailLabels {
    template: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// No labels: a family of one series, so a gauge can be left out when its source does
/// not answer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Gauges read when the metrics are scraped (from Redis and Postgres), not kept in memory.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Per queue: jobs waiting (due or scheduled for a retry), running, dead.
    pub queues: Vec<QueueGauge>,
    /// Age in seconds of the oldest outbox row not yet moved to Redis (0 when none).
    pub outbox_lag_seconds: Option<f64>,
    /// Refunds whose job gave up: money owed to customers that staff must refund by hand.
    pub refunds_dead: Option<i64>,
    /// Webhook deliveries not yet made (due, in flight or waiting for a retry).
    pub webhook_deliveries_pending: Option<i64>,
    /// Webhook endpoints with deliveries waiting for a retry: their last attempt failed.
    pub webhook_endpoints_failing: Option<i64>,
}

/// One queue's job counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueGauge {
    pub queue: &'static str,
    pub pending: u64,
    pub running: u64,
    pub dead: u64,
}

/// The process's metrics. One `Arc` inside: the tracking layer clones it per request.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: Histograms<HttpLabels>,
    in_flight: Gauge,
    jobs: Histograms<JobLabels>,
    emails: Family<EmailLabels, Counter>,
    pool: Family<StateLabel, Gauge>,
    pool_max: Gauge,
    queue_jobs: Family<QueueLabels, Gauge>,
    outbox_lag: Family<NoLabels, Gauge<f64, AtomicU64>>,
    refunds_dead: Family<NoLabels, Gauge>,
    webhook_deliveries: Family<OutcomeLabel, Counter>,
    webhook_lag: Histogram,
    webhook_pending: Family<NoLabels, Gauge>,
    webhook_failing: Family<NoLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        let latency: Histograms<HttpLabels> = Family::new_with_constructor(latency_histogram);
        registry.register("http_request_duration_seconds", "HTTP request latency", latency.clone());
        let in_flight = Gauge::default();
        registry.register("http_requests_in_flight", "HTTP requests being served", in_flight.clone());
        let pool = Family::<StateLabel, Gauge>::default();
        registry.register("db_pool_connections", "Database pool connections by state", pool.clone());
        let pool_max = Gauge::default();
        registry.register("db_pool_max_connections", "Configured pool maximum", pool_max.clone());
        let jobs: Histograms<JobLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "job_duration_seconds",
            "Duration of job runs (each attempt) by queue and kind",
            jobs.clone(),
        );
        let emails = Family::<EmailLabels, Counter>::default();
        registry.register(
            "emails",
            "E-mails handed to the transport by template and outcome",
            emails.clone(),
        );
        let queue_jobs = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs per queue and state (pending includes retries waiting their turn)",
            queue_jobs.clone(),
        );
        let outbox_lag = Family::<NoLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "outbox_lag_seconds",
            "Age of the oldest outbox row not yet moved to Redis",
            outbox_lag.clone(),
        );
        let refunds_dead = Family::<NoLabels, Gauge>::default();
        registry.register(
            "payment_refunds_dead",
            "Refunds the provider kept refusing for the whole retry window: refund them by hand",
            refunds_dead.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retrying (failed, another attempt is due) or failed (given up)",
            webhook_deliveries.clone(),
        );
        let webhook_lag = Histogram::new(LAG_BUCKETS);
        registry.register(
            "webhook_delivery_lag_seconds",
            "Time from the order change that caused a webhook event to the receiver's 2xx, retries included",
            webhook_lag.clone(),
        );
        let webhook_pending = Family::<NoLabels, Gauge>::default();
        registry.register(
            "webhook_deliveries_pending",
            "Webhook deliveries not yet made: due, in flight or waiting for a retry",
            webhook_pending.clone(),
        );
        let webhook_failing = Family::<NoLabels, Gauge>::default();
        registry.register(
            "webhook_endpoints_failing",
            "Webhook endpoints whose last attempt failed and that have deliveries waiting for a retry",
            webhook_failing.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            requests,
            latency,
            in_flight,
            jobs,
            emails,
            pool,
            pool_max,
            queue_jobs,
            outbox_lag,
            refunds_dead,
            webhook_deliveries,
            webhook_lag,
            webhook_pending,
            webhook_failing,
        }))
    }
}

/// Decrements the in-flight counts when the request ends, however it ends.
struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl Metrics {
    /// Records one finished request under its route template.
    pub fn observe(&self, method: &'static str, route: &str, status: u16, latency: Duration) {
        let labels = HttpLabels { method, route: intern(route), status };
        self.0.requests.get_or_create(&labels).inc();
        self.0.latency.get_or_create(&labels).observe(latency.as_secs_f64());
    }

    /// HTTP requests being served right now (background work yields to them).
    pub fn http_in_flight(&self) -> u64 {
        u64::try_from(self.0.in_flight.get()).unwrap_or(0)
    }

    fn begin(&self) -> InFlight<'_> {
        self.0.in_flight.inc();
        InFlight(&self.0)
    }

    /// Counts a request in flight until the guard is dropped (what [`track`] does).
    #[cfg(test)]
    pub(crate) fn begin_request(&self) -> impl Drop + Send + 'static {
        struct Guard(Metrics);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.0.in_flight.dec();
            }
        }
        self.0.in_flight.inc();
        Guard(self.clone())
    }

    /// Records one run (attempt) of a job, whatever its outcome.
    pub fn observe_job(&self, queue: &str, kind: &str, took: Duration) {
        let labels = JobLabels { queue: queue.to_owned(), kind: kind.to_owned() };
        self.0.jobs.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts one e-mail handed to the transport: accepted (`sent`) or not.
    pub fn count_email(&self, template: &str, sent: bool) {
        let outcome = if sent { "sent" } else { "failed" };
        self.0.emails.get_or_create(&EmailLabels { template: template.to_owned(), outcome }).inc();
    }

    /// Counts one e-mail not sent because its address's hourly budget was spent.
    pub fn count_email_suppressed(&self, template: &str) {
        self.0
            .emails
            .get_or_create(&EmailLabels { template: template.to_owned(), outcome: "suppressed" })
            .inc();
    }

    /// Counts one webhook delivery attempt by outcome (`delivered`, `retrying`, `failed`).
    pub fn count_webhook_attempt(&self, outcome: &'static str) {
        self.0.webhook_deliveries.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Records the time from a webhook event to its delivery.
    pub fn observe_webhook_lag(&self, lag: Duration) {
        self.0.webhook_lag.observe(lag.as_secs_f64());
    }

    /// The OpenMetrics text exposition, with the pool and `gauges` read just now.
    pub fn render(&self, pool: &PgPool, gauges: &Gauges) -> String {
        let m = &self.0;
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        m.pool.get_or_create(&StateLabel { state: "idle" }).set(i64::from(idle));
        m.pool.get_or_create(&StateLabel { state: "in_use" }).set(i64::from(size.saturating_sub(idle)));
        m.pool_max.set(i64::from(pool.options().get_max_connections()));
        // A source that did not answer leaves its gauges out rather than stale.
        m.queue_jobs.clear();
        for q in &gauges.queues {
            for (state, n) in [("pending", q.pending), ("running", q.running), ("dead", q.dead)] {
                m.queue_jobs.get_or_create(&QueueLabels { queue: q.queue, state }).set(n as i64);
            }
        }
        m.outbox_lag.clear();
        if let Some(lag) = gauges.outbox_lag_seconds {
            m.outbox_lag.get_or_create(&NoLabels {}).set(lag);
        }
        m.refunds_dead.clear();
        if let Some(n) = gauges.refunds_dead {
            m.refunds_dead.get_or_create(&NoLabels {}).set(n);
        }
        for (family, value) in [
            (&m.webhook_pending, gauges.webhook_deliveries_pending),
            (&m.webhook_failing, gauges.webhook_endpoints_failing),
        ] {
            family.clear();
            if let Some(n) = value {
                family.get_or_create(&NoLabels {}).set(n);
            }
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &m.registry);
        out
    }
}

/// The `&'static` copy of a route template. Templates come from the router (a finite
/// set), and unmatched paths share one label, so the set stays small whatever clients
/// send.
fn intern(route: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(found) = routes.read().ok().and_then(|set| set.get(route).copied()) {
        return found;
    }
    let Ok(mut set) = routes.write() else { return "<unmatched>" };
    if let Some(found) = set.get(route) {
        return found;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// Times a request and records it under its route template (unmatched paths share one
/// label, so scanners cannot blow up the series count), counting it in flight meanwhile.
pub async fn track<F: Future<Output = Response>>(
    metrics: &Metrics,
    req: Request,
    next: impl FnOnce(Request) -> F,
) -> Response {
    let started = Instant::now();
    // Clients may invent methods; only the standard ones become label values.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    // The template's `Arc<str>`, not a copy of it.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let _in_flight = metrics.begin();
    let res = next(req).await;
    let route = route.as_ref().map_or("<unmatched>", MatchedPath::as_str);
    metrics.observe(method, route, res.status().as_u16(), started.elapsed());
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn observations_render_as_cumulative_histograms() {
        let m = Metrics::default();
        m.observe("GET", "/api/v1/products", 200, Duration::from_millis(3));
        m.observe("GET", "/api/v1/products", 200, Duration::from_millis(30));
        m.observe("GET", "/api/v1/products", 200, Duration::from_secs(60));
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://x@127.0.0.1:1/x").unwrap();
        m.observe_job("emails", "welcome", Duration::from_millis(20));
        m.count_email("welcome", true);
        m.count_email("welcome", false);
        m.count_email("welcome", true);
        m.count_webhook_attempt("retrying");
        m.count_webhook_attempt("delivered");
        m.observe_webhook_lag(Duration::from_millis(700));
        let gauges = Gauges {
            queues: vec![QueueGauge { queue: "emails", pending: 3, running: 1, dead: 2 }],
            outbox_lag_seconds: Some(1.5),
            refunds_dead: Some(2),
            webhook_deliveries_pending: Some(4),
            webhook_endpoints_failing: Some(1),
        };
        let text = m.render(&pool, &gauges);
        let labels = r#"method="GET",route="/api/v1/products",status="200""#;
        assert!(text.contains(&format!("http_requests_total{{{labels}}} 3")), "{text}");
        assert!(
            text.contains(&format!(r#"http_request_duration_seconds_bucket{{le="0.005",{labels}}} 1"#)),
            "{text}"
        );
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{le="0.05",{labels}}} 2"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{le="10.0",{labels}}} 2"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{le="+Inf",{labels}}} 3"#)));
        assert!(text.contains("db_pool_connections{state=\"idle\"} 0"), "{text}");
        assert!(
            text.contains(r#"job_duration_seconds_bucket{le="0.025",queue="emails",kind="welcome"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"emails_total{template="welcome",outcome="sent"} 2"#), "{text}");
        assert!(text.contains(r#"emails_total{template="welcome",outcome="failed"} 1"#), "{text}");
        assert!(text.contains(r#"jobs{queue="emails",state="dead"} 2"#), "{text}");
        assert!(text.contains("outbox_lag_seconds 1.5"), "{text}");
        assert!(text.contains("payment_refunds_dead 2"), "{text}");
        assert!(text.contains(r#"webhook_deliveries_total{outcome="retrying"} 1"#), "{text}");
        assert!(text.contains(r#"webhook_delivery_lag_seconds_bucket{le="1.0"} 1"#), "{text}");
        assert!(text.contains(r#"webhook_delivery_lag_seconds_bucket{le="0.5"} 0"#), "{text}");
        assert!(text.contains("webhook_deliveries_pending 4"), "{text}");
        assert!(text.contains("webhook_endpoints_failing 1"), "{text}");

        // A source that stops answering drops its gauges instead of showing stale ones.
        let text = m.render(&pool, &Gauges::default());
        assert!(!text.contains("jobs{") && !text.contains("outbox_lag_seconds "), "{text}");
    }

    #[tokio::test]
    async fn label_values_are_escaped() {
        let m = Metrics::default();
        m.count_email("a\"b\\c\nd", true);
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://x@127.0.0.1:1/x").unwrap();
        let text = m.render(&pool, &Gauges::default());
        assert!(text.contains(r#"template="a\"b\\c\nd""#), "{text}");
    }

    #[test]
    fn routes_are_interned_once() {
        let a = intern("/api/v1/things/{id}");
        let b = intern(&String::from("/api/v1/things/{id}"));
        assert!(std::ptr::eq(a, b));
    }
}
