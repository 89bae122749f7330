//! A job worker in Rust: it scores a batch of leads and reports each step
//! to every leadgate instance with `leadgate-worker`, which applies the
//! event to the database and publishes it through Redis in one call.
//!
//! ```sh
//! DATABASE_URL=postgres://… REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo run -p rust-worker -- --user alice --leads 20
//! ```

use std::time::Duration;

use clap::Parser;
use leadgate_worker::{JobState, LogLevel, Worker};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Owner of the new job.
    #[arg(long, default_value = "alice")]
    user: String,
    /// Report to this existing job instead of creating one.
    #[arg(long)]
    job: Option<uuid::Uuid>,
    #[arg(long, default_value_t = 20)]
    leads: u32,
    /// Pause between leads, in milliseconds.
    #[arg(long, default_value_t = 200)]
    delay: u64,
    /// Fail half-way, to see an `error` update.
    #[arg(long)]
    fail: bool,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, env = "LEADGATE_REDIS_PREFIX", default_value = "leadgate:")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let worker = Worker::connect(&args.database_url, &args.redis_url, &args.prefix).await?;
    let job = match args.job {
        Some(job) => job,
        None => worker.create_job(&args.user, args.leads).await?,
    };
    println!("{job}");

    worker
        .status(job, JobState::Processing, "Scoring started")
        .await?;
    let mut high_score = 0;
    for done in 1..=args.leads {
        tokio::time::sleep(Duration::from_millis(args.delay)).await;
        if done % 3 == 0 {
            high_score += 1;
        }
        let message = format!("Scored lead {done} of {}", args.leads);
        worker.log(job, LogLevel::Info, message).await?;
        let percent = (done * 100 / args.leads) as u8;
        worker.progress(job, percent, done, args.leads).await?;
        if args.fail && done == args.leads.div_ceil(2) {
            worker.fail(job, "Enrichment provider unreachable").await?;
            return Ok(());
        }
    }
    let results = json!({
        "processed_leads": args.leads,
        "enriched_leads": args.leads,
        "high_score_leads": high_score,
    });
    let serde_json::Value::Object(results) = results else {
        unreachable!("a JSON object literal");
    };
    worker.complete(job, results).await?;
    Ok(())
}
