//! `q` matches the same leads on PostgreSQL and SQLite: a lead's
//! `search_text` becomes the words of its title, company and skills (letters
//! and digits, lowercased) separated by single spaces, which both databases
//! match a word of `q` against at the start of a word. Rewrites the rows
//! written before, in batches.

use leadgate_protocol::leads::search_text;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, JsonValue, Statement, TransactionTrait};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Rows rewritten per statement.
const BATCH: usize = 500;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let param = |n: usize| match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        };
        let txn = manager.get_connection().begin().await?;
        let mut after: i64 = 0;
        loop {
            let rows = txn
                .query_all_raw(Statement::from_sql_and_values(
                    backend,
                    format!(
                        "SELECT id, title, company, skill_keys FROM leads WHERE id > {} ORDER BY id LIMIT {BATCH}",
                        param(1)
                    ),
                    [after.into()],
                ))
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("", "id")?;
            let mut values = Vec::with_capacity(rows.len() * 2);
            let mut tuples = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: i64 = row.try_get("", "id")?;
                let title: String = row.try_get("", "title")?;
                let company: Option<String> = row.try_get("", "company")?;
                let keys: JsonValue = row.try_get("", "skill_keys")?;
                let skills: Vec<String> = match keys {
                    JsonValue::Array(items) => items
                        .into_iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect(),
                    _ => Vec::new(),
                };
                tuples.push(format!(
                    "({}, {})",
                    param(values.len() + 1),
                    param(values.len() + 2)
                ));
                values.push(id.into());
                values.push(search_text(&title, company.as_deref(), &skills).into());
            }
            // VALUES names its columns column1, column2 on both databases.
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "UPDATE leads SET search_text = v.column2 FROM (VALUES {}) AS v WHERE leads.id = v.column1",
                    tuples.join(", ")
                ),
                values,
            ))
            .await?;
        }
        txn.commit().await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // The schema is unchanged, and earlier code matches the rewritten
        // text too: nothing to undo.
        Ok(())
    }
}
