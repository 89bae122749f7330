//! `jobs`: one row per background job, holding its latest state.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: String,
    pub status: String,
    pub progress: i16,
    pub total_leads: i64,
    pub processed_leads: i64,
    pub enriched_leads: i64,
    pub high_score_leads: i64,
    pub error_message: Option<String>,
    pub results: Option<Json>,
    pub seq: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::job_log::Entity")]
    JobLog,
}

impl Related<super::job_log::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::JobLog.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
