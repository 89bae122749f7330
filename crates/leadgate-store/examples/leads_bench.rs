//! How fast a filtered page of leads comes back from PostgreSQL with 100,000
//! leads: fills a fresh database, runs each filter of the leads API many
//! times through `Store::leads_page` (the count and the page, as the gateway
//! does) and prints the latency per filter.
//!
//! ```sh
//! cargo run --release -p leadgate-store --example leads_bench -- \
//!     [postgres://postgres@127.0.0.1:5432/postgres] [leads=100000] [runs=200]
//! ```
//!
//! The first argument is a server where the user may create databases; the
//! benchmark creates `leadgate_bench_<pid>` there and drops it afterwards.

use std::time::{Duration, Instant};

use leadgate_protocol::leads::{LeadFilter, LeadInput, LeadsQuery};
use leadgate_store::Store;
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let admin_url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let count: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let keep = args.next().as_deref() == Some("keep");

    let name = format!("leadgate_bench_{}", std::process::id());
    let admin = Database::connect(&admin_url).await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let server = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(s, _)| s);
    let result = run(&format!("{server}/{name}"), count, runs).await;
    if keep {
        println!("Kept the database {name}.");
        return result;
    }
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    result
}

async fn run(url: &str, count: usize, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(url).await?;
    store.migrate().await?;

    let started = Instant::now();
    let mut rng = Lcg(42);
    for provider in PROVIDERS {
        let leads: Vec<LeadInput> = (0..count / PROVIDERS.len())
            .map(|i| {
                let skills: Vec<&str> = (0..3).map(|_| rng.pick(&SKILLS)).collect();
                let title = format!("{} {} {}", rng.pick(&LEVELS), skills[0], rng.pick(&ROLES));
                let day = rng.next() % 365;
                let value = json!({
                    "project_id": format!("{provider}-{i}"),
                    "title": title.trim(),
                    "company": rng.pick(&COMPANIES),
                    "location": "Berlin",
                    "remote": rng.next().is_multiple_of(2),
                    "rate": format!("{} €/h", 60 + rng.next() % 80),
                    "skills": skills,
                    "posted_at": format!("2026-{:02}-{:02}T{:02}:00:00Z", 1 + day / 31 % 12, 1 + day % 28, day % 24),
                    "description": "Projektbeschreibung",
                });
                LeadInput::from_value(value, i).expect("generated leads are valid")
            })
            .collect();
        store.upsert_leads(provider, leads).await?;
    }
    println!(
        "Inserted {count} leads over {} providers in {:.1} s.",
        PROVIDERS.len(),
        started.elapsed().as_secs_f64()
    );
    // The steady state of a live table: autovacuum has run (statistics, and
    // the visibility map that lets counts read only the indexes).
    store_analyze(url).await?;

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
            "two skills",
            query(filter(json!({ "skills": ["python", "django"] }))),
        ),
        ("q one word", query(filter(json!({ "q": "kubernetes" })))),
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
        "{:<28} {:>8} {:>9} {:>9} {:>9}",
        "filter (100 per page)", "total", "p50 ms", "p95 ms", "max ms"
    );
    for (name, query) in cases {
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        let mut total = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let (page, n) = store.leads_page(&query).await?;
            times.push(t.elapsed());
            total = n;
            assert!(page.len() <= query.page_size as usize);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<28} {:>8} {:>9.2} {:>9.2} {:>9.2}",
            name,
            total,
            ms(times[runs / 2]),
            ms(times[runs * 95 / 100]),
            ms(times[runs - 1])
        );
    }
    store.close().await?;
    Ok(())
}

fn query(filter: LeadFilter) -> LeadsQuery {
    LeadsQuery {
        filter,
        ..LeadsQuery::default()
    }
}

async fn store_analyze(url: &str) -> Result<(), sea_orm::DbErr> {
    let db = Database::connect(url).await?;
    db.execute_unprepared("VACUUM ANALYZE leads").await?;
    db.close().await
}
