//! Prometheus metrics (SPEC §9): request count and latency histogram by method, route
//! template and status, plus database pool gauges, served as text at `GET /metrics`.
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
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use sqlx::PgPool;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Labels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Default)]
struct Series {
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Non-cumulative counts per bucket; the last slot is `+Inf` only.
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

/// The process's metrics; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    series: Arc<RwLock<HashMap<Labels, Arc<Series>>>>,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, method: &str, route: &str, status: u16, latency: Duration) {
        let labels = Labels { method: method.to_owned(), route: route.to_owned(), status };
        let existing = self.series.read().ok().and_then(|m| m.get(&labels).cloned());
        let series = match existing {
            Some(s) => s,
            None => match self.series.write() {
                Ok(mut map) => map.entry(labels).or_default().clone(),
                Err(_) => return,
            },
        };
        let secs = latency.as_secs_f64();
        let slot = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        series.buckets[slot].fetch_add(1, Relaxed);
        series.count.fetch_add(1, Relaxed);
        series.sum_micros.fetch_add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, pool: &PgPool) -> String {
        let mut out = String::with_capacity(4096);
        let mut rows: Vec<(Labels, Arc<Series>)> = match self.series.read() {
            Ok(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        rows.sort_by(|a, b| a.0.cmp(&b.0));

        out.push_str("# HELP http_requests_total HTTP requests by method, route template and status.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        for (l, s) in &rows {
            let _ = writeln!(out, "http_requests_total{{{}}} {}", label_set(l), s.count.load(Relaxed));
        }
        out.push_str("# HELP http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (l, s) in &rows {
            let labels = label_set(l);
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += s.buckets[BUCKETS.len()].load(Relaxed);
            let _ =
                writeln!(out, "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let sum = s.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "http_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ =
                writeln!(out, "http_request_duration_seconds_count{{{labels}}} {}", s.count.load(Relaxed));
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
        out
    }
}

fn label_set(l: &Labels) -> String {
    format!("method=\"{}\",route=\"{}\",status=\"{}\"", escape(&l.method), escape(&l.route), l.status)
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Middleware: times every request and records it under its route template (unmatched
/// paths share one label, so scanners cannot blow up the series count).
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Clients may invent methods; only the standard ones become label values.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "OTHER",
    }
    .to_owned();
    let route = req.extensions().get::<MatchedPath>().map_or("<unmatched>", MatchedPath::as_str).to_owned();
    let res = next.run(req).await;
    metrics.observe(&method, &route, res.status().as_u16(), started.elapsed());
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
        let text = m.render(&pool);
        let labels = r#"method="GET",route="/api/v1/products",status="200""#;
        assert!(text.contains(&format!("http_requests_total{{{labels}}} 3")), "{text}");
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="0.005"}} 1"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="0.05"}} 2"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="10"}} 2"#)));
        assert!(text.contains(&format!(r#"http_request_duration_seconds_bucket{{{labels},le="+Inf"}} 3"#)));
        assert!(text.contains("db_pool_connections{state=\"idle\"} 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
