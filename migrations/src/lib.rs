//! The leadgate schema, owned here and nowhere else.
//!
//! Migrations run at gateway start-up and with `leadgate migrate`; the same
//! statements serve PostgreSQL and SQLite. Applied migrations are never
//! edited: a change to the schema is a new migration.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_jobs;
mod m20261122_000002_leads;
mod m20261203_000003_lead_search_words;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_jobs::Migration),
            Box::new(m20261122_000002_leads::Migration),
            Box::new(m20261203_000003_lead_search_words::Migration),
        ]
    }
}
