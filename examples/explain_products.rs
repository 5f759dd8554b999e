//! `EXPLAIN ANALYZE` of every filter and sort combination of `GET /products` at 100 000
//! products, with the statements the server runs (`repository::total_query` and
//! `page_query`):
//!
//! ```sh
//! eval "$(scripts/services env)"
//! cargo run --release --example explain_products [-- --plans]
//! ```
//!
//! Combinations: six searches (none, a rare word, a word in 9 % of rows, a phrase in
//! 1.4 %, a word in every row, and a phrase whose trigrams are in every row but which
//! matches none) × five price filters × three stock filters × six sorts × the first and
//! the last page. It prints, per search and filter, the slowest count and page statement
//! over the sorts and depths with the plan nodes used, and writes every combination with
//! its plan to `target/explain/products.md` (`--plans` also prints the plans). It works in
//! a scratch database `storefront_explain` (dropped and re-created).

use std::{collections::BTreeSet, fmt::Write as _, time::Instant};

use anyhow::Context;
use serde_json::Value;
use sqlx::{Connection, PgPool, Postgres, QueryBuilder};
use storefront::{
    features::products::{
        domain::ProductSort,
        repository::{ListQuery, SEARCH_TOTAL_CAP, Total, page_query, total_query},
    },
    platform::db::{self, contains_pattern},
};

const DB: &str = "storefront_explain";
const PRODUCTS: u32 = 100_000;
const LIMIT: i64 = 20;
/// Node timing off: with it, a node of 100 000 rows reports several times its real cost.
const EXPLAIN: &str = "explain (analyze, timing off, format json) ";

const SEARCHES: [(&str, Option<&str>); 6] = [
    ("none", None),
    ("rare word", Some("zzz")),
    ("word in 9 %", Some("Teapot")),
    ("phrase in 1.4 %", Some("vintage oak")),
    ("word in 100 %", Some("ships")),
    ("common trigrams, no match", Some("safe ships")),
];
const PRICES: [(&str, Option<i64>, Option<i64>); 5] = [
    ("any price", None, None),
    ("minPrice=50000", Some(50_000), None),
    ("maxPrice=2000", None, Some(2_000)),
    ("20000..=21000", Some(20_000), Some(21_000)),
    ("0..=100000000", Some(0), Some(100_000_000)),
];
const STOCK: [(&str, Option<bool>); 3] =
    [("", None), ("inStock=true", Some(true)), ("inStock=false", Some(false))];
const SORTS: [ProductSort; 6] = [
    ProductSort::CreatedDesc,
    ProductSort::CreatedAsc,
    ProductSort::NameAsc,
    ProductSort::NameDesc,
    ProductSort::PriceAsc,
    ProductSort::PriceDesc,
];

/// One explained statement: its execution time and the plan's scan nodes.
struct Explained {
    ms: f64,
    nodes: BTreeSet<String>,
    text: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let show_plans = std::env::args().any(|a| a == "--plans");
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL (eval \"$(scripts/services env)\")")?;
    let server = url.rsplit_once('/').map_or(url.as_str(), |(s, _)| s).to_owned();
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {DB} with (force)")))
        .execute(&mut admin)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {DB}"))).execute(&mut admin).await?;
    let pool = PgPool::connect(&format!("{server}/{DB}")).await?;
    db::migrate(&pool).await?;
    storefront::seed::run(&pool, PRODUCTS, 0).await?;
    sqlx::raw_sql("vacuum analyze products").execute(&pool).await?;

    let mut report = String::from("# `GET /products` at 100 000 products: every combination\n\n");
    let mut summary = String::new();
    writeln!(
        summary,
        "| search | price | stock | slowest count | count plan | slowest page | page plans |\n|---|---|---|---|---|---|---|"
    )?;
    let started = Instant::now();
    let mut worst = (0.0_f64, String::new());
    for (search, q) in SEARCHES {
        for (price, min_price, max_price) in PRICES {
            for (stock, in_stock) in STOCK {
                let (mut count_ms, mut count_nodes) = (0.0_f64, BTreeSet::new());
                let (mut page_ms, mut page_nodes) = (0.0_f64, BTreeSet::new());
                for sort in SORTS {
                    let mut f = ListQuery {
                        pattern: q.map(|q| contains_pattern(&q.to_lowercase())),
                        min_price,
                        max_price,
                        in_stock,
                        sort,
                        limit: LIMIT,
                        offset: 0,
                    };
                    let (total, capped) = count(&pool, &f).await?;
                    let counted = match total_query(&f, EXPLAIN) {
                        Total::Counter => None,
                        Total::Exact(qb) | Total::Capped(qb) => Some(explain(&pool, qb).await?),
                    };
                    if let Some(c) = &counted {
                        count_ms = count_ms.max(c.ms);
                        count_nodes.extend(c.nodes.iter().cloned());
                    }
                    // As the server: no page statement for an empty result.
                    let pages = if total == 0 { vec![] } else { vec![0, ((total - 1) / LIMIT) * LIMIT] };
                    if total == 0
                        && let Some(c) = &counted
                    {
                        worst = worst_of(worst, c.ms, format!("q={q:?} {price} {stock} (total 0)"));
                    }
                    for offset in pages {
                        f.offset = offset;
                        f.limit = LIMIT.min(total - offset);
                        let page = explain(&pool, page_query(&f, !capped, EXPLAIN)).await?;
                        let label =
                            format!("q={q:?} {price} {stock} sort={sort:?} offset={offset} (total {total})");
                        worst =
                            worst_of(worst, page.ms + counted.as_ref().map_or(0.0, |c| c.ms), label.clone());
                        writeln!(report, "## {label}\n")?;
                        if let Some(c) = &counted {
                            writeln!(report, "count: {:.2} ms\n```\n{}```\n", c.ms, c.text)?;
                        } else {
                            writeln!(report, "count: `product_counts`\n")?;
                        }
                        writeln!(report, "page: {:.2} ms\n```\n{}```\n", page.ms, page.text)?;
                        if show_plans {
                            println!("{label}\n{}", page.text);
                        }
                        page_ms = page_ms.max(page.ms);
                        page_nodes.extend(page.nodes);
                    }
                }
                let count_cell =
                    if count_nodes.is_empty() { "`product_counts`".to_owned() } else { join(&count_nodes) };
                writeln!(
                    summary,
                    "| {search} | {price} | {stock} | {count_ms:.1} ms | {count_cell} | {page_ms:.1} ms | {} |",
                    join(&page_nodes)
                )?;
            }
        }
    }
    writeln!(
        summary,
        "\n{} combinations × 2 pages in {:.0?}; slowest request (count + page): {:.1} ms, {}",
        SEARCHES.len() * PRICES.len() * STOCK.len() * SORTS.len(),
        started.elapsed(),
        worst.0,
        worst.1
    )?;
    println!("{summary}");
    report.push_str("\n# Summary\n\n");
    report.push_str(&summary);
    std::fs::create_dir_all("target/explain")?;
    std::fs::write("target/explain/products.md", report)?;
    println!("every plan: target/explain/products.md");
    Ok(())
}

fn join(nodes: &BTreeSet<String>) -> String {
    nodes.iter().map(String::as_str).collect::<Vec<_>>().join("; ")
}

fn worst_of(worst: (f64, String), ms: f64, label: String) -> (f64, String) {
    if ms > worst.0 { (ms, label) } else { worst }
}

/// The total the server would answer, and whether it is the search cap.
async fn count(pool: &PgPool, f: &ListQuery) -> anyhow::Result<(i64, bool)> {
    Ok(match total_query(f, "") {
        Total::Counter => {
            let (live, in_stock): (i64, i64) =
                sqlx::query_as("select live, in_stock from product_counts").fetch_one(pool).await?;
            let total = match f.in_stock {
                None => live,
                Some(true) => in_stock,
                Some(false) => live - in_stock,
            };
            (total, false)
        }
        Total::Exact(mut qb) => (qb.build_query_scalar::<i64>().fetch_one(pool).await?, false),
        Total::Capped(mut qb) => {
            let n: i64 = qb.build_query_scalar().fetch_one(pool).await?;
            (n.min(SEARCH_TOTAL_CAP), n > SEARCH_TOTAL_CAP)
        }
    })
}

async fn explain(pool: &PgPool, mut qb: QueryBuilder<Postgres>) -> anyhow::Result<Explained> {
    let plan: Value = qb.build_query_scalar().fetch_one(pool).await?;
    let top = &plan[0];
    let mut out = Explained {
        ms: top["Execution Time"].as_f64().unwrap_or_default(),
        nodes: BTreeSet::new(),
        text: String::new(),
    };
    walk(&top["Plan"], 0, &mut out);
    Ok(out)
}

/// Collects the scan nodes of `node` and its children and renders the tree.
fn walk(node: &Value, depth: usize, out: &mut Explained) {
    let kind = node["Node Type"].as_str().unwrap_or("?");
    let target = node["Index Name"].as_str().or(node["Relation Name"].as_str()).unwrap_or("");
    let rows =
        node["Actual Rows"].as_f64().unwrap_or_default() * node["Actual Loops"].as_f64().unwrap_or(1.0);
    let mut line = format!("{:indent$}{kind}", "", indent = depth * 2);
    if !target.is_empty() {
        let _ = write!(line, " on {target}");
    }
    let _ = write!(line, " (rows {rows:.0}");
    if let Some(fetches) = node["Heap Fetches"].as_f64() {
        let _ = write!(line, ", heap fetches {fetches:.0}");
    }
    if let Some(removed) = node["Rows Removed by Filter"].as_f64() {
        let _ = write!(line, ", removed by filter {removed:.0}");
    }
    if let Some(removed) = node["Rows Removed by Index Recheck"].as_f64() {
        let _ = write!(line, ", removed by recheck {removed:.0}");
    }
    if let Some(ms) = node["Actual Total Time"].as_f64() {
        let _ = write!(line, ", {ms:.2} ms");
    }
    line.push_str(")\n");
    out.text.push_str(&line);
    if kind.contains("Scan") && target != "page" {
        out.nodes.insert(if target.is_empty() { kind.to_owned() } else { format!("{kind} {target}") });
    }
    if let Some(children) = node["Plans"].as_array() {
        for child in children {
            walk(child, depth + 1, out);
        }
    }
}
