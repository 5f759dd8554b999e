//! Prometheus metrics (SPEC §9): request count and latency histogram by method, route
//! template and status, database pool gauges, job durations by queue and kind, e-mails
//! sent and failed by template, and the gauges read at scrape time ([`Gauges`]: jobs per
//! queue and state, outbox lag), served as text at `GET /metrics`.
//!
//! Hand-rolled rather than a registry crate: one read lock and a few relaxed atomic adds
//! per request, and the exposition format is a dozen lines.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    response::Response,
};
use sqlx::PgPool;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Labels {
    method: &'static str,
    route: Box<str>,
    status: u16,
}

/// The request series, found without allocating: the key `"{method} {status} {route}"` is
/// written into a reused per-thread buffer and looked up under a read lock; only a new
/// label set takes the write lock and allocates.
#[derive(Default)]
struct HttpSeries(RwLock<SeriesByKey>);

type SeriesByKey = HashMap<Box<str>, Arc<(Labels, Series)>>;

impl HttpSeries {
    fn observe(&self, method: &'static str, route: &str, status: u16, took: Duration) {
        thread_local! {
            static KEY: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(128));
        }
        KEY.with_borrow_mut(|key| {
            key.clear();
            let _ = write!(key, "{method} {status} {route}");
            if let Ok(map) = self.0.read()
                && let Some(series) = map.get(key.as_str())
            {
                series.1.observe(took);
                return;
            }
            if let Ok(mut map) = self.0.write() {
                let labels = Labels { method, route: route.into(), status };
                map.entry(key.as_str().into())
                    .or_insert_with(|| Arc::new((labels, Series::default())))
                    .1
                    .observe(took);
            }
        });
    }

    fn sorted(&self) -> Vec<Arc<(Labels, Series)>> {
        let mut rows: Vec<_> = match self.0.read() {
            Ok(map) => map.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

#[derive(Default)]
struct Series {
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Non-cumulative counts per bucket; the last slot is `+Inf` only.
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

impl Series {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// `name_bucket`, `name_sum` and `name_count` lines for one label set.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count.load(Relaxed));
    }
}

/// A map of label sets to shared values, read-locked on the hot path and write-locked
/// only when a label set is new.
struct Family<K, V>(RwLock<HashMap<K, Arc<V>>>);

impl<K: std::hash::Hash + Eq + Clone + Ord, V: Default> Family<K, V> {
    fn get(&self, key: &K) -> Option<Arc<V>> {
        if let Some(v) = self.0.read().ok()?.get(key) {
            return Some(v.clone());
        }
        Some(self.0.write().ok()?.entry(key.clone()).or_default().clone())
    }

    fn sorted(&self) -> Vec<(K, Arc<V>)> {
        let mut rows: Vec<(K, Arc<V>)> = match self.0.read() {
            Ok(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

impl<K, V> Default for Family<K, V> {
    fn default() -> Self {
        Self(RwLock::new(HashMap::new()))
    }
}

/// Gauges read when `/metrics` is scraped (from Redis and Postgres), not kept in memory.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Per queue: jobs waiting (due or scheduled for a retry), running, dead.
    pub queues: Vec<QueueGauge>,
    /// Age in seconds of the oldest outbox row not yet moved to Redis (0 when none).
    pub outbox_lag_seconds: Option<f64>,
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
#[derive(Clone, Default)]
pub struct Metrics(Arc<Registry>);

impl std::ops::Deref for Metrics {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.0
    }
}

/// What [`Metrics`] holds.
#[derive(Default)]
pub struct Registry {
    series: HttpSeries,
    /// Job run durations by (queue, kind).
    jobs: Arc<Family<(String, String), Series>>,
    /// E-mails by (template, "sent" | "failed").
    emails: Arc<Family<(String, &'static str), AtomicU64>>,
    /// HTTP requests being served right now.
    in_flight: Arc<AtomicU64>,
}

/// Decrements the in-flight count when the request ends, however it ends (borrowing the
/// counter rather than cloning its `Arc`).
struct InFlightRef<'a>(&'a AtomicU64);

impl Drop for InFlightRef<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, method: &'static str, route: &str, status: u16, latency: Duration) {
        self.series.observe(method, route, status, latency);
    }

    /// HTTP requests being served right now (background work yields to them).
    pub fn http_in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request in flight until the guard is dropped (what [`track`] does).
    #[cfg(test)]
    pub(crate) fn begin_request(&self) -> impl Drop + Send + 'static {
        struct InFlight(Arc<AtomicU64>);
        impl Drop for InFlight {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// Records one run (attempt) of a job, whatever its outcome.
    pub fn observe_job(&self, queue: &str, kind: &str, took: Duration) {
        if let Some(series) = self.jobs.get(&(queue.to_owned(), kind.to_owned())) {
            series.observe(took);
        }
    }

    /// Counts one e-mail handed to the transport: accepted (`sent`) or not.
    pub fn count_email(&self, template: &str, sent: bool) {
        let outcome = if sent { "sent" } else { "failed" };
        if let Some(counter) = self.emails.get(&(template.to_owned(), outcome)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, pool: &PgPool, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let rows = self.series.sorted();
        out.push_str("# HELP http_requests_total HTTP requests by method, route template and status.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        for row in &rows {
            let (l, s) = &**row;
            let _ = writeln!(out, "http_requests_total{{{}}} {}", label_set(l), s.count.load(Relaxed));
        }
        out.push_str("# HELP http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for row in &rows {
            let (l, s) = &**row;
            s.write(&mut out, "http_request_duration_seconds", &label_set(l));
        }
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        out.push_str("# HELP db_pool_connections Database pool connections by state.\n");
        out.push_str("# TYPE db_pool_connections gauge\n");
        let _ = writeln!(out, "db_pool_connections{{state=\"idle\"}} {idle}");
        let _ = writeln!(out, "db_pool_connections{{state=\"in_use\"}} {}", size.saturating_sub(idle));
        out.push_str("# HELP db_pool_max_connections Configured pool maximum.\n");
        out.push_str("# TYPE db_pool_max_connections gauge\n");
        let _ = writeln!(out, "db_pool_max_connections {}", pool.options().get_max_connections());
        out.push_str("# HELP http_requests_in_flight HTTP requests being served.\n");
        out.push_str("# TYPE http_requests_in_flight gauge\n");
        let _ = writeln!(out, "http_requests_in_flight {}", self.http_in_flight());
        self.render_jobs(&mut out, gauges);
        out
    }

    fn render_jobs(&self, out: &mut String, gauges: &Gauges) {
        out.push_str("# HELP job_duration_seconds Duration of job runs (each attempt) by queue and kind.\n");
        out.push_str("# TYPE job_duration_seconds histogram\n");
        for ((queue, kind), s) in self.jobs.sorted() {
            s.write(
                out,
                "job_duration_seconds",
                &format!("queue=\"{}\",kind=\"{}\"", escape(&queue), escape(&kind)),
            );
        }
        out.push_str("# HELP emails_total E-mails handed to the transport by template and outcome.\n");
        out.push_str("# TYPE emails_total counter\n");
        for ((template, outcome), n) in self.emails.sorted() {
            let _ = writeln!(
                out,
                "emails_total{{template=\"{}\",outcome=\"{outcome}\"}} {}",
                escape(&template),
                n.load(Relaxed)
            );
        }
        if !gauges.queues.is_empty() {
            out.push_str(
                "# HELP jobs Jobs per queue and state (pending includes retries waiting their turn).\n",
            );
            out.push_str("# TYPE jobs gauge\n");
            for q in &gauges.queues {
                for (state, n) in [("pending", q.pending), ("running", q.running), ("dead", q.dead)] {
                    let _ = writeln!(out, "jobs{{queue=\"{}\",state=\"{state}\"}} {n}", q.queue);
                }
            }
        }
        if let Some(lag) = gauges.outbox_lag_seconds {
            out.push_str("# HELP outbox_lag_seconds Age of the oldest outbox row not yet moved to Redis.\n");
            out.push_str("# TYPE outbox_lag_seconds gauge\n");
            let _ = writeln!(out, "outbox_lag_seconds {lag}");
        }
    }
}

fn label_set(l: &Labels) -> String {
    format!("method=\"{}\",route=\"{}\",status=\"{}\"", escape(l.method), escape(&l.route), l.status)
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
    metrics.in_flight.fetch_add(1, Relaxed);
    let _in_flight = InFlightRef(&metrics.in_flight);
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
        let gauges = Gauges {
            queues: vec![QueueGauge { queue: "emails", pending: 3, running: 1, dead: 2 }],
            outbox_lag_seconds: Some(1.5),
        };
        let text = m.render(&pool, &gauges);
        let labels = r#"method="GET",route="/api/v1/products",status="200""#;
        assert!(text.contains(&format!("http_requests_total{{{labels}}} 3")), "{text}");
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="0.005"}} 1"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="0.05"}} 2"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="10"}} 2"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="+Inf"}} 3"#)));
        assert!(text.contains("db_pool_connections{state=\"idle\"} 0"));
        assert!(
            text.contains(r#"job_duration_seconds_bucket{queue="emails",kind="welcome",le="0.025"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"emails_total{template="welcome",outcome="sent"} 2"#), "{text}");
        assert!(text.contains(r#"emails_total{template="welcome",outcome="failed"} 1"#), "{text}");
        assert!(text.contains(r#"jobs{queue="emails",state="dead"} 2"#), "{text}");
        assert!(text.contains("outbox_lag_seconds 1.5"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
