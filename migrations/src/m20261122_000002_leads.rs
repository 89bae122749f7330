//! Leads and crawl requests (seed 000).

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Leads {
    Table,
    Id,
    Provider,
    ProjectId,
    Title,
    Company,
    Location,
    Remote,
    Rate,
    Skills,
    SkillKeys,
    SearchText,
    Url,
    PostedAt,
    Description,
    Raw,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum CrawlRequests {
    Table,
    Id,
    RequestedBy,
    Provider,
    State,
    ClaimedBy,
    CreatedAt,
    UpdatedAt,
}

/// Indexes that serve the page queries: the default order, the order within
/// a provider and within remote/on-site, skill containment and word search.
const POSTGRES_INDEXES: &[&str] = &[
    "CREATE INDEX leads_order_idx ON leads (posted_at DESC NULLS LAST, id DESC)",
    "CREATE INDEX leads_provider_order_idx ON leads (provider, posted_at DESC NULLS LAST, id DESC)",
    "CREATE INDEX leads_remote_order_idx ON leads (remote, posted_at DESC NULLS LAST, id DESC)",
    "CREATE INDEX leads_skill_keys_idx ON leads USING GIN (skill_keys jsonb_path_ops)",
    // A stored tsvector: matching a row is then cheap even when the planner
    // walks the order index, and ANALYZE keeps word statistics for it.
    "ALTER TABLE leads ADD COLUMN search tsvector \
     GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED",
    "CREATE INDEX leads_search_idx ON leads USING GIN (search)",
    "CREATE INDEX leads_updated_at_idx ON leads (updated_at)",
];

/// SQLite sorts NULL first ascending, so DESC puts leads without a date
/// last, as PostgreSQL's NULLS LAST does.
const SQLITE_INDEXES: &[&str] = &[
    "CREATE INDEX leads_order_idx ON leads (posted_at DESC, id DESC)",
    "CREATE INDEX leads_provider_order_idx ON leads (provider, posted_at DESC, id DESC)",
    "CREATE INDEX leads_remote_order_idx ON leads (remote, posted_at DESC, id DESC)",
    "CREATE INDEX leads_updated_at_idx ON leads (updated_at)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Leads::Table)
                    .col(big_pk_auto(Leads::Id))
                    .col(string_len(Leads::Provider, 100))
                    .col(string_len(Leads::ProjectId, 255))
                    .col(text(Leads::Title))
                    .col(text_null(Leads::Company))
                    .col(text_null(Leads::Location))
                    .col(boolean_null(Leads::Remote))
                    .col(text_null(Leads::Rate))
                    .col(json_binary(Leads::Skills))
                    // Lowercased skills, for case-insensitive filtering.
                    .col(json_binary(Leads::SkillKeys))
                    // Lowercased title, company and skills, for `q`.
                    .col(text(Leads::SearchText))
                    .col(text_null(Leads::Url))
                    .col(timestamp_with_time_zone_null(Leads::PostedAt))
                    .col(text_null(Leads::Description))
                    .col(json_null(Leads::Raw))
                    .col(timestamp_with_time_zone(Leads::CreatedAt))
                    .col(timestamp_with_time_zone(Leads::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("leads_provider_project_id_key")
                    .table(Leads::Table)
                    .col(Leads::Provider)
                    .col(Leads::ProjectId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        let indexes = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES_INDEXES,
            _ => SQLITE_INDEXES,
        };
        let db = manager.get_connection();
        for statement in indexes {
            db.execute_unprepared(statement).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(CrawlRequests::Table)
                    .col(big_pk_auto(CrawlRequests::Id))
                    .col(string_len(CrawlRequests::RequestedBy, 255))
                    .col(string_len_null(CrawlRequests::Provider, 100))
                    // queued → running → done | failed
                    .col(string_len(CrawlRequests::State, 16).default("queued"))
                    .col(text_null(CrawlRequests::ClaimedBy))
                    .col(timestamp_with_time_zone(CrawlRequests::CreatedAt))
                    .col(timestamp_with_time_zone(CrawlRequests::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("crawl_requests_state_idx")
                    .table(CrawlRequests::Table)
                    .col(CrawlRequests::State)
                    .col(CrawlRequests::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(CrawlRequests::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Leads::Table).to_owned())
            .await
    }
}
