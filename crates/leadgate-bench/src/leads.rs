//! `leadgate-bench leads`: the leads view at scale, on the filled
//! databases of each size.
//!
//! For each PostgreSQL size, it fills a fresh database with generated
//! leads, then:
//! - runs each filter of the leads API many times both ways the gateway
//!   answers a page (its in-memory index and one read of the page's rows;
//!   one SQL statement for page and total, as before the index is read),
//!   checks that they agree and prints one table of latencies;
//! - times bringing the index up to date after a crawl;
//! - with a leadgate binary, starts two instances on that database and
//!   measures how soon a crawler's announcement refreshes thousands of open
//!   lead views ([`crate::views`]).
//!
//! Then the same table for SQLite, the embedded default, at its own size.
//!
//! `--postgres` names a server where the user may create databases; each
//! size gets `leadgate_bench_<pid>_<size>` there, dropped afterwards unless
//! `--keep`. `--existing URL` measures a database kept by an earlier run.

use std::time::{Duration, Instant};

use anyhow::Context;
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

#[derive(clap::Args)]
pub struct Args {
    /// A PostgreSQL server where the user may create databases (any
    /// database of it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Numbers of leads PostgreSQL is measured with.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    sizes: Vec<usize>,
    /// Number of leads SQLite is measured with (0: not measured).
    #[arg(long, default_value_t = 100_000)]
    sqlite: usize,
    /// Runs of each filter through the index.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Runs of each filter through SQL, which takes up to a second a run at
    /// a million leads.
    #[arg(long, default_value_t = 30)]
    sql_runs: usize,
    /// Keep the databases filled.
    #[arg(long)]
    keep: bool,
    /// Measure this database, filled by an earlier run, instead.
    #[arg(long)]
    existing: Option<String>,
    /// Open lead views for the refresh after a crawl (0: not measured).
    #[arg(long, default_value_t = 10_000)]
    views: usize,
    /// The leadgate binary the views are served by; by default the one
    /// beside this program.
    #[arg(long)]
    leadgate_bin: Option<std::path::PathBuf>,
    /// A short run of everything at small sizes, to check that the
    /// benchmark works (the figures mean little).
    #[arg(long)]
    quick: bool,
    /// Redis for the two instances of the views.
    #[arg(
        long,
        env = "LEADGATE_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
}

struct Plan {
    runs: usize,
    sql_runs: usize,
    views: usize,
    leadgate_bin: std::path::PathBuf,
    redis_url: String,
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.sizes = vec![20_000];
        args.sqlite = 5_000;
        args.runs = args.runs.min(20);
        args.sql_runs = args.sql_runs.min(5);
        args.views = args.views.min(1_000);
    }
    let leadgate_bin = match args.leadgate_bin.clone() {
        Some(path) => path,
        None => crate::beside_this_program("leadgate")?,
    };
    if args.views > 0 {
        anyhow::ensure!(
            leadgate_bin.exists(),
            "no leadgate binary at {} for the views; build it with `cargo build --release -p leadgate` (or --views 0)",
            leadgate_bin.display()
        );
        crate::scenarios::check_redis(&args.redis_url).await?;
        let (open_files, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        anyhow::ensure!(
            open_files > args.views as u64 + 200,
            "{} views need more open files than the limit of {open_files} (ulimit -n)",
            args.views
        );
    }
    let plan = Plan {
        runs: args.runs.max(1),
        sql_runs: args.sql_runs.max(1),
        views: args.views,
        leadgate_bin,
        redis_url: args.redis_url.clone(),
    };
    if let Some(url) = &args.existing {
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
        return measure(database, url, count as usize, &plan).await;
    }
    let admin = Database::connect(&args.postgres).await?;
    let server = args
        .postgres
        .rsplit_once('/')
        .map_or(args.postgres.as_str(), |(s, _)| s)
        .to_owned();
    for &count in &args.sizes {
        let name = format!("leadgate_bench_{}_{count}", std::process::id());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let result =
            fill_and_measure("PostgreSQL", &format!("{server}/{name}"), count, &plan).await;
        if args.keep {
            println!("Kept the database {name}.");
        } else {
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
        }
        result?;
    }
    admin.close().await?;
    if args.sqlite > 0 {
        let dir = std::env::temp_dir().join(format!("leadgate_bench_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}/leads.db?mode=rwc", dir.display());
        let sqlite = Plan { views: 0, ..plan };
        let result = fill_and_measure("SQLite", &url, args.sqlite, &sqlite).await;
        if args.keep {
            println!("Kept {}.", dir.display());
        } else {
            std::fs::remove_dir_all(&dir)?;
        }
        result?;
    }
    Ok(())
}

async fn fill_and_measure(
    database: &str,
    url: &str,
    count: usize,
    plan: &Plan,
) -> anyhow::Result<()> {
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
    // A table as it is a day later: nothing written lately (the index reads
    // again what was written in the last minutes), autovacuum has run
    // (statistics, and the visibility map that lets counts read only the
    // indexes).
    let db = Database::connect(url).await?;
    db.execute_unprepared(if database == "PostgreSQL" {
        "UPDATE leads SET created_at = created_at - interval '1 day', \
         updated_at = updated_at - interval '1 day'"
    } else {
        "UPDATE leads SET \
         created_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', created_at, '-1 day'), \
         updated_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', updated_at, '-1 day')"
    })
    .await?;
    db.close().await?;
    store_analyze(url).await?;
    store.close().await?;
    measure(database, url, count, plan).await
}

/// Reads the table into a [`LeadSearch`] index, runs every filter `runs`
/// times both ways (the index and a read of the page's rows by id, as the
/// gateway answers; and one SQL statement for page and total, as it
/// answers before its index is read), checks that both give the same page
/// and total, and prints the table. Then writes a crawl of new leads and
/// times bringing the index up to date.
async fn measure(database: &str, url: &str, count: usize, plan: &Plan) -> anyhow::Result<()> {
    let runs = plan.runs;
    let store = Store::connect(url).await?;
    let search = LeadSearch::new();
    let started = Instant::now();
    let loaded = search.refresh(&store, true).await?;
    let load = started.elapsed();
    println!();
    println!(
        "{database}: index of {} leads read in {:.2} s; it takes about {} MiB.",
        loaded.leads,
        load.as_secs_f64(),
        search.heap_bytes() / (1024 * 1024)
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
        let mut sql = Vec::with_capacity(plan.sql_runs);
        let mut by_sql = None;
        for _ in 0..plan.sql_runs {
            let t = Instant::now();
            let answer = store.leads_page(&query).await?;
            sql.push(t.elapsed());
            by_sql.get_or_insert(answer);
        }
        let mut indexed = Vec::with_capacity(runs);
        let mut by_index = None;
        for _ in 0..runs {
            let t = Instant::now();
            let (ids, total) = search
                .page(&query.filter, query.offset(), u64::from(query.page_size))
                .context("the index was read")?;
            let page = store.leads_by_ids(&ids).await?;
            indexed.push(t.elapsed());
            by_index.get_or_insert((page, total));
        }
        let ((sql_page, sql_total), (index_page, index_total)) =
            (by_sql.context("no run")?, by_index.context("no run")?);
        anyhow::ensure!(sql_total == index_total, "{name}: the totals differ");
        anyhow::ensure!(sql_page == index_page, "{name}: the pages differ");
        let stats = |times: &mut Vec<Duration>| {
            times.sort();
            let n = times.len();
            (
                ms(times[n / 2]),
                ms(times[(n * 99 / 100).min(n - 1)]),
                ms(times[n - 1]),
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
    let refreshed = search.refresh(&store, false).await?;
    let refresh = started.elapsed();
    let started = Instant::now();
    let checked = search.refresh(&store, true).await?;
    anyhow::ensure!(!checked.whole, "the index lost count after the crawl");
    println!();
    println!(
        "A crawl of 1,000 new and 1,000 updated leads: index brought up to date in {:.1} ms \
         ({} rows read); the check that it holds every lead (read again, and count) {:.1} ms.",
        ms(refresh),
        refreshed.rows,
        ms(started.elapsed())
    );
    let (_, total) = search
        .page(&LeadFilter::default(), 0, 1)
        .context("the index was read")?;
    anyhow::ensure!(
        total == store.leads_page(&LeadsQuery::default()).await?.1,
        "the index lost count after the crawl"
    );
    store.close().await?;

    if plan.views > 0 && database == "PostgreSQL" {
        // The next crawl: 200 new leads of every provider, announced once.
        let crawl: Vec<(String, Vec<LeadInput>)> = PROVIDERS
            .iter()
            .map(|provider| {
                let leads = (0..200)
                    .map(|i| generated_lead(&mut rng, provider, count + 10_000 + i, true))
                    .collect();
                (provider.to_string(), leads)
            })
            .collect();
        let refresh = crate::views::run(
            &plan.leadgate_bin,
            url,
            &plan.redis_url,
            plan.views,
            &PROVIDERS,
            &SKILLS
                .map(str::to_lowercase)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            crawl,
        )
        .await?;
        println!();
        println!(
            "{} lead views on two instances ({} opened in {:.1} s), a crawl of 1,000 new leads announced once:",
            refresh.views, refresh.views, refresh.connect_s
        );
        println!(
            "  memory of each instance with its index and views: {} / {} MiB",
            refresh.rss_mib[0], refresh.rss_mib[1]
        );
        println!(
            "  every view pushed its own fresh page (checked against the database): last after {:.0} ms, p50 {:.0} ms, p99 {:.0} ms",
            refresh.last_ms, refresh.p50_ms, refresh.p99_ms
        );
        for i in 0..2 {
            println!(
                "  instance {}: {} page queries for {} distinct pages, {} index refresh, {:.0} ms of CPU",
                i + 1,
                refresh.page_queries[i],
                refresh.distinct_pages[i],
                refresh.index_refreshes[i],
                refresh.cpu_ms[i]
            );
        }
    }
    Ok(())
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

async fn store_analyze(url: &str) -> anyhow::Result<()> {
    let db = Database::connect(url).await?;
    let statement = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => "VACUUM ANALYZE leads",
        _ => "ANALYZE",
    };
    db.execute_unprepared(statement).await?;
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        // The fill's writes reach the disk now rather than while the run
        // measures (a superuser's right; without it the run goes on).
        if let Err(e) = db.execute_unprepared("CHECKPOINT").await {
            eprintln!("no CHECKPOINT before measuring ({e}); figures may be noisier");
        }
    }
    Ok(db.close().await?)
}
