//! The `reports` queue's [`JobHandler`]: generates one report.
//!
//! The rows are read as a stream (one connection) and written as CSV into chunks of
//! [`CHUNK_BYTES`] inside a transaction (another connection) that also marks the report
//! completed and queues its `report-ready` e-mail, so memory stays bounded whatever the
//! report's size, and a report is either complete with its whole file or not at all.

use std::{
    borrow::Cow,
    io,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    domain::{ReportType, safe_cell},
    repository,
};
use crate::platform::jobs::{
    QueuedJob,
    outbox::{self, Wakeup},
    worker::{JobError, JobHandler},
};
use crate::shared::jobs::Job;

/// Bytes of CSV per stored chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// What a failed report says (the cause is in the logs and the dead-letter list).
const FAILED: &str = "the report could not be generated; request it again";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportPayload {
    report_id: Uuid,
}

/// Generates reports; cheap to clone.
#[derive(Clone)]
pub struct ReportJobs {
    db: PgPool,
    wakeup: Wakeup,
    currency: Arc<str>,
}

impl ReportJobs {
    pub fn new(db: PgPool, wakeup: Wakeup, currency: &str) -> Self {
        Self { db, wakeup, currency: Arc::from(currency) }
    }
}

fn transient(e: impl std::fmt::Display) -> JobError {
    JobError::Transient(format!("database: {e}"))
}

fn payload(job: &QueuedJob) -> Result<ReportPayload, JobError> {
    if job.kind != "report" {
        return Err(JobError::Permanent(format!("no report job of kind `{}`", job.kind)));
    }
    serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::Permanent(format!("malformed payload: {e}")))
}

/// An `io::Write` the CSV writer fills and the chunk writer drains.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().map_err(|_| io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// CSV records into numbered chunks of the report's file.
struct ChunkedCsv<'c> {
    csv: csv::Writer<Sink>,
    sink: Sink,
    conn: &'c mut PgConnection,
    report: Uuid,
    seq: i32,
    rows: i32,
}

impl<'c> ChunkedCsv<'c> {
    fn new(conn: &'c mut PgConnection, report: Uuid) -> Self {
        let sink = Sink::default();
        Self { csv: csv::Writer::from_writer(sink.clone()), sink, conn, report, seq: 0, rows: 0 }
    }

    fn header(&mut self, fields: &[&str]) -> Result<(), JobError> {
        self.csv.write_record(fields).map_err(|e| JobError::Permanent(format!("csv: {e}")))
    }

    /// Writes one data row; stores a chunk whenever enough bytes have gathered.
    async fn row<const N: usize>(&mut self, fields: [&str; N]) -> Result<(), JobError> {
        self.csv
            .write_record(fields.iter().map(|f| match safe_cell(f) {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            }))
            .map_err(|e| JobError::Permanent(format!("csv: {e}")))?;
        self.rows += 1;
        if self.rows % 64 == 0 {
            self.store(false).await?;
        }
        Ok(())
    }

    /// Stores what has gathered as the next chunk (everything when `all`, else only
    /// once a chunk's worth is there).
    async fn store(&mut self, all: bool) -> Result<(), JobError> {
        self.csv.flush().map_err(|e| JobError::Transient(format!("csv: {e}")))?;
        let data = {
            let mut buf = self.sink.0.lock().map_err(|_| JobError::Transient("poisoned buffer".into()))?;
            if buf.is_empty() || (!all && buf.len() < CHUNK_BYTES) {
                return Ok(());
            }
            std::mem::replace(&mut *buf, Vec::with_capacity(CHUNK_BYTES + 4096))
        };
        repository::insert_chunk(&mut *self.conn, self.report, self.seq, &data).await.map_err(transient)?;
        self.seq += 1;
        Ok(())
    }

    async fn finish(mut self) -> Result<i32, JobError> {
        self.store(true).await?;
        Ok(self.rows)
    }
}

impl ReportJobs {
    async fn sales(
        &self,
        out: &mut ChunkedCsv<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(), JobError> {
        out.header(&["date", "orders", "items", "revenue_cents", "currency"])?;
        let mut rows = sqlx::query!(
            r#"with days as (
                   select d::date as day
                   from generate_series(($1::timestamptz at time zone 'UTC')::date,
                                        (($2::timestamptz - interval '1 microsecond') at time zone 'UTC')::date,
                                        interval '1 day') d),
               daily as (
                   select (o.created_at at time zone 'UTC')::date as day, count(*) as orders,
                          sum(i.items) as items, sum(o.total_cents) as revenue
                   from orders o
                   cross join lateral (select sum(quantity) as items from order_items where order_id = o.id) i
                   where o.created_at >= $1 and o.created_at < $2 and o.status <> 'cancelled'
                   group by 1)
               select days.day as "day!: NaiveDate", coalesce(daily.orders, 0) as "orders!",
                      coalesce(daily.items, 0)::bigint as "items!", coalesce(daily.revenue, 0)::bigint as "revenue!"
               from days left join daily using (day) order by days.day"#,
            from,
            to
        )
        .fetch(&self.db);
        while let Some(r) = rows.try_next().await.map_err(transient)? {
            let (day, orders, items, revenue) =
                (r.day.to_string(), r.orders.to_string(), r.items.to_string(), r.revenue.to_string());
            out.row([&day, &orders, &items, &revenue, &self.currency]).await?;
        }
        Ok(())
    }

    async fn inventory(
        &self,
        out: &mut ChunkedCsv<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(), JobError> {
        out.header(&[
            "product_id",
            "sku",
            "name",
            "archived",
            "stock",
            "price_cents",
            "currency",
            "units_sold",
        ])?;
        let mut rows = sqlx::query!(
            r#"select p.id, p.sku, p.name, p.archived_at is not null as "archived!", p.stock, p.price_cents,
                      coalesce(s.units, 0)::bigint as "units_sold!"
               from products p
               left join (select oi.product_id, sum(oi.quantity) as units
                          from order_items oi join orders o on o.id = oi.order_id
                          where o.created_at >= $1 and o.created_at < $2 and o.status <> 'cancelled'
                          group by oi.product_id) s on s.product_id = p.id
               order by p.sku"#,
            from,
            to
        )
        .fetch(&self.db);
        while let Some(r) = rows.try_next().await.map_err(transient)? {
            let (id, archived, stock, price, units) = (
                r.id.to_string(),
                r.archived.to_string(),
                r.stock.to_string(),
                r.price_cents.to_string(),
                r.units_sold.to_string(),
            );
            out.row([&id, &r.sku, &r.name, &archived, &stock, &price, &self.currency, &units]).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl JobHandler for ReportJobs {
    async fn handle(&self, job: &QueuedJob) -> Result<(), JobError> {
        let p = payload(job)?;
        // Completed (a duplicate delivery) or deleted: nothing to do.
        let Some(report) = repository::start(&self.db, p.report_id).await.map_err(transient)? else {
            tracing::info!(report.id = %p.report_id, "report already completed or gone; skipped");
            return Ok(());
        };
        let started = std::time::Instant::now();
        let mut tx = self.db.begin().await.map_err(transient)?;
        let mut out = ChunkedCsv::new(&mut tx, report.id);
        match report.kind {
            ReportType::Sales => self.sales(&mut out, report.range_from, report.range_to).await?,
            ReportType::Inventory => self.inventory(&mut out, report.range_from, report.range_to).await?,
        }
        let rows = out.finish().await?;
        repository::complete(&mut *tx, report.id, rows).await.map_err(transient)?;
        outbox::push(&mut *tx, &Job::ReportReady { report_id: report.id }.into()).await.map_err(transient)?;
        tx.commit().await.map_err(transient)?;
        self.wakeup.committed();
        tracing::info!(
            report.id = %report.id, report.kind = report.kind.as_str(), rows,
            duration_ms = started.elapsed().as_millis() as u64, "report completed"
        );
        Ok(())
    }

    async fn dead(&self, job: &QueuedJob, error: &str) {
        let Ok(p) = payload(job) else { return };
        tracing::warn!(report.id = %p.report_id, error, "report failed");
        if let Err(e) = repository::fail(&self.db, p.report_id, FAILED).await {
            tracing::error!(report.id = %p.report_id, error = %e, "could not mark the report failed");
        }
    }
}
