//! Jobs and their log lines (seed 001).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    UserId,
    Status,
    Progress,
    TotalLeads,
    ProcessedLeads,
    EnrichedLeads,
    HighScoreLeads,
    ErrorMessage,
    Results,
    Seq,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum JobLogs {
    Table,
    JobId,
    Seq,
    Level,
    Message,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(uuid(Jobs::Id).primary_key())
                    .col(string_len(Jobs::UserId, 255))
                    .col(string_len(Jobs::Status, 32).default("pending"))
                    .col(small_integer(Jobs::Progress).default(0))
                    .col(big_integer(Jobs::TotalLeads).default(0))
                    .col(big_integer(Jobs::ProcessedLeads).default(0))
                    .col(big_integer(Jobs::EnrichedLeads).default(0))
                    .col(big_integer(Jobs::HighScoreLeads).default(0))
                    .col(text_null(Jobs::ErrorMessage))
                    .col(json_null(Jobs::Results))
                    // The number of events applied to the job: every event
                    // takes the next value, so it orders delivery.
                    .col(big_integer(Jobs::Seq).default(0))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone(Jobs::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("jobs_user_id_idx")
                    .table(Jobs::Table)
                    .col(Jobs::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobLogs::Table)
                    .col(uuid(JobLogs::JobId))
                    // The seq of the log event, so "recent logs up to seq N"
                    // reads a consistent snapshot through the primary key.
                    .col(big_integer(JobLogs::Seq))
                    .col(string_len(JobLogs::Level, 16))
                    .col(text(JobLogs::Message))
                    .col(timestamp_with_time_zone(JobLogs::CreatedAt))
                    .primary_key(Index::create().col(JobLogs::JobId).col(JobLogs::Seq))
                    .foreign_key(
                        ForeignKey::create()
                            .name("job_logs_job_id_fkey")
                            .from(JobLogs::Table, JobLogs::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JobLogs::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}
