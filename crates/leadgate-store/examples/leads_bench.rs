//! How fast a filtered page of leads comes back: for each size, fills a
//! fresh database, runs each filter of the leads API many times through
//! `Store::leads_page` (the count and the page, as the gateway does) and
//! prints a table of latencies per filter. PostgreSQL at every size given,
//! then SQLite (the embedded default) at its own size.
//!
//! ```sh
//! cargo run --release -p leadgate-store --example leads_bench -- \
//!     [--postgres postgres://postgres@127.0.0.1:5432/postgres] \
//!     [--sizes 100000,1000000] [--sqlite 100000] [--runs 200] [--keep]
//! cargo run --release -p leadgate-store --example leads_bench -- --existing URL
//! ```
//!
//! `--postgres` names a server where the user may create databases; each
//! size gets `leadgate_bench_<pid>_<size>` there, dropped afterwards unless
//! `--keep`. `--sqlite 0` skips SQLite; `--sizes ''` skips PostgreSQL.

use std::time::{Duration, Instant};

use leadgate_protocol::leads::{LeadFilter, LeadInput, LeadsQuery};
use leadgate_store::{LeadSearch, Store};
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;

const PROVIDERS: [&str; 5] = ["freelance.de", "xing", "gulp", "malt", "freelancermap"];
const SKILLS: [&str; 24] = [
    "Rust",
    "Python",
    "Django",
    "Go",
    "Java",
    "Spring",
    "Kotlin",
    "TypeScript",
    "React",
    "Vue",
    "Angular",
    "Node.js",
    "PostgreSQL",
    "Redis",
    "Kafka",
    "Kubernetes",
    "Terraform",
    "AWS",
    "Azure",
    "SAP",
    "C++",
    "Scala",
    "Elixir",
    "PHP",
];
const ROLES: [&str; 8] = [
    "Entwickler",
    "Engineer",
    "Architekt",
    "Consultant",
    "Lead",
    "Berater",
    "Developer",
    "Admin",
];
const LEVELS: [&str; 4] = ["Senior", "Junior", "Principal", ""];
const COMPANIES: [&str; 10] = [
    "Acme Digital GmbH",
    "Nordlicht IT",
    "Muster AG",
    "Blau Consulting",
    "Datenwerk KG",
    "Hanse Software",
    "Alpen Systems",
    "Rhein Data",
    "Spree Labs",
    "Elbe Tech",
];

/// A small deterministic generator, so every run measures the same data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

struct Options {
    postgres: String,
    sizes: Vec<usize>,
    sqlite: usize,
    runs: usize,
    keep: bool,
    existing: Option<String>,
}

fn options() -> Result<Options, Box<dyn std::error::Error>> {
    let mut options = Options {
        postgres: "postgres://postgres@127.0.0.1:5432/postgres".into(),
        sizes: vec![100_000, 1_000_000],
        sqlite: 100_000,
        runs: 200,
        keep: false,
        existing: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--postgres" => options.postgres = value()?,
            "--sizes" => {
                options.sizes = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--sqlite" => options.sqlite = value()?.parse()?,
            "--runs" => options.runs = value()?.parse()?,
            "--keep" => options.keep = true,
            "--existing" => options.existing = Some(value()?),
            other => return Err(format!("unknown argument {other} (see the file's header)").into()),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    if let Some(url) = &options.existing {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        store_analyze(url).await?;
        let (count, _) = store.leads_version().await?;
        store.close().await?;
        let database = if url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        };
        return measure(database, url, count as usize, options.runs).await;
    }
    let admin = Database::connect(&options.postgres).await?;
    let server = options
        .postgres
        .rsplit_once('/')
        .map_or(options.postgres.as_str(), |(s, _)| s)
        .to_owned();
    for &count in &options.sizes {
        let name = format!("leadgate_bench_{}_{count}", std::process::id());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let result = run(
            "PostgreSQL",
            &format!("{server}/{name}"),
            count,
            options.runs,
        )
        .await;
        if options.keep {
            println!("Kept the database {name}.");
        } else {
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
        }
        result?;
    }
    admin.close().await?;
    if options.sqlite > 0 {
        let dir = std::env::temp_dir().join(format!("leadgate_bench_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}/leads.db?mode=rwc", dir.display());
        let result = run("SQLite", &url, options.sqlite, options.runs).await;
        if options.keep {
            println!("Kept {}.", dir.display());
        } else {
            std::fs::remove_dir_all(&dir)?;
        }
        result?;
    }
    Ok(())
}

async fn run(
    database: &str,
    url: &str,
    count: usize,
    runs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(url).await?;
    store.migrate().await?;

    let started = Instant::now();
    let mut rng = Lcg(42);
    for provider in PROVIDERS {
        let leads: Vec<LeadInput> = (0..count / PROVIDERS.len())
            .map(|i| generated_lead(&mut rng, provider, i, false))
            .collect();
        store.upsert_leads(provider, leads).await?;
    }
    println!();
    println!(
        "{database}: inserted {count} leads over {} providers in {:.1} s.",
        PROVIDERS.len(),
        started.elapsed().as_secs_f64()
    );
    // The steady state of a live table: autovacuum has run (statistics, and
    // the visibility map that lets counts read only the indexes).
    store_analyze(url).await?;
    store.close().await?;
    measure(database, url, count, runs).await
}

/// Reads the table into a [`LeadSearch`] index, runs every filter `runs`
/// times both ways (the index and a read of the page's rows by id, as the
/// gateway answers; and one SQL statement for page and total, as it
/// answers before its index is read), checks that both give the same page
/// and total, and prints the table. Then writes a crawl of new leads and
/// times bringing the index up to date.
async fn measure(
    database: &str,
    url: &str,
    count: usize,
    runs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(url).await?;
    let search = LeadSearch::new();
    let rss_before = rss_kib();
    let started = Instant::now();
    let loaded = search.refresh(&store).await?;
    let load = started.elapsed();
    let rss_after = rss_kib();
    println!();
    println!(
        "{database}: index of {} leads read in {:.2} s; the process grew by {} MiB.",
        loaded.leads,
        load.as_secs_f64(),
        rss_after.saturating_sub(rss_before) / 1024
    );

    let filter = |f: serde_json::Value| -> LeadFilter {
        serde_json::from_value::<LeadFilter>(f)
            .unwrap()
            .normalized()
            .unwrap()
    };
    let cases: Vec<(&str, LeadsQuery)> = vec![
        ("default page", LeadsQuery::default()),
        (
            "page 50",
            LeadsQuery {
                page: 50,
                ..LeadsQuery::default()
            },
        ),
        ("remote", query(filter(json!({ "remote": true })))),
        ("provider", query(filter(json!({ "provider": "xing" })))),
        ("skill", query(filter(json!({ "skills": ["rust"] })))),
        (
            "skill, page 50",
            LeadsQuery {
                page: 50,
                ..query(filter(json!({ "skills": ["rust"] })))
            },
        ),
        (
            "two skills",
            query(filter(json!({ "skills": ["python", "django"] }))),
        ),
        ("q one word", query(filter(json!({ "q": "kubernetes" })))),
        (
            "q two words",
            query(filter(json!({ "q": "senior archit" }))),
        ),
        (
            "q two words + remote",
            query(filter(json!({ "q": "senior archit", "remote": true }))),
        ),
        (
            "provider + remote + skill",
            query(filter(
                json!({ "provider": "gulp", "remote": false, "skills": ["go"] }),
            )),
        ),
        (
            "q matching nothing",
            query(filter(json!({ "q": "cobolmainframe" }))),
        ),
    ];

    println!();
    println!(
        "{:<26} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8}",
        format!("{database}, {count} leads"),
        "total",
        "SQL p50",
        "p99",
        "max",
        "index p50",
        "p99",
        "max"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (name, query) in cases {
        let mut sql = Vec::with_capacity(runs);
        let mut indexed = Vec::with_capacity(runs);
        let mut answers = None;
        for _ in 0..runs {
            let t = Instant::now();
            let by_sql = store.leads_page(&query).await?;
            sql.push(t.elapsed());
            let t = Instant::now();
            let (ids, total) = search
                .page(&query.filter, query.offset(), u64::from(query.page_size))
                .expect("the index was read");
            let page = store.leads_by_ids(&ids).await?;
            indexed.push(t.elapsed());
            answers.get_or_insert((by_sql, (page, total)));
        }
        let ((sql_page, sql_total), (index_page, index_total)) = answers.expect("one run at least");
        assert_eq!(sql_total, index_total, "{name}: the totals differ");
        assert!(sql_page == index_page, "{name}: the pages differ");
        let stats = |times: &mut Vec<Duration>| {
            times.sort();
            (
                ms(times[runs / 2]),
                ms(times[(runs * 99 / 100).min(runs - 1)]),
                ms(times[runs - 1]),
            )
        };
        let (s50, s99, smax) = stats(&mut sql);
        let (i50, i99, imax) = stats(&mut indexed);
        println!(
            "{name:<26} {sql_total:>8} | {s50:>8.2} {s99:>8.2} {smax:>8.2} | {i50:>8.2} {i99:>8.2} {imax:>8.2}"
        );
    }

    // A crawl: 1,000 new leads of one provider and 1,000 updated ones.
    let mut rng = Lcg(7);
    let crawl: Vec<LeadInput> = (0..2000)
        .map(|i| {
            let id = if i < 1000 {
                count + i
            } else {
                i * 97 % (count / PROVIDERS.len()).max(1)
            };
            generated_lead(&mut rng, PROVIDERS[1], id, true)
        })
        .collect();
    store.upsert_leads(PROVIDERS[1], crawl).await?;
    let started = Instant::now();
    let refreshed = search.refresh(&store).await?;
    println!();
    println!(
        "A crawl of 1,000 new and 1,000 updated leads: index brought up to date in {:.1} ms \
         ({} rows read, whole table: {}).",
        ms(started.elapsed()),
        refreshed.rows,
        refreshed.whole
    );
    let (_, total) = search
        .page(&LeadFilter::default(), 0, 1)
        .expect("the index was read");
    assert_eq!(total, store.leads_page(&LeadsQuery::default()).await?.1);
    store.close().await?;
    Ok(())
}

/// The resident size of this process.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// A lead as a crawler might report it; `fresh` ones are dated after
/// every generated lead.
fn generated_lead(rng: &mut Lcg, provider: &str, i: usize, fresh: bool) -> LeadInput {
    let skills: Vec<&str> = (0..3).map(|_| rng.pick(&SKILLS)).collect();
    let title = format!("{} {} {}", rng.pick(&LEVELS), skills[0], rng.pick(&ROLES));
    let day = rng.next() % 365;
    let posted_at = if fresh {
        format!("2027-01-01T{:02}:{:02}:00Z", day % 24, i % 60)
    } else {
        format!(
            "2026-{:02}-{:02}T{:02}:00:00Z",
            1 + day / 31 % 12,
            1 + day % 28,
            day % 24
        )
    };
    let value = json!({
        "project_id": format!("{provider}-{i}"),
        "title": title.trim(),
        "company": rng.pick(&COMPANIES),
        "location": "Berlin",
        "remote": rng.next().is_multiple_of(2),
        "rate": format!("{} €/h", 60 + rng.next() % 80),
        "skills": skills,
        "posted_at": posted_at,
        "description": "Projektbeschreibung",
    });
    LeadInput::from_value(value, i).expect("generated leads are valid")
}

fn query(filter: LeadFilter) -> LeadsQuery {
    LeadsQuery {
        filter,
        ..LeadsQuery::default()
    }
}

async fn store_analyze(url: &str) -> Result<(), sea_orm::DbErr> {
    let db = Database::connect(url).await?;
    let statement = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => "VACUUM ANALYZE leads",
        _ => "ANALYZE",
    };
    db.execute_unprepared(statement).await?;
    db.close().await
}
