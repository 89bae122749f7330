//! `crawl_requests`: the durable queue of "Sync" clicks for crawlers.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "crawl_requests")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub requested_by: String,
    pub provider: Option<String>,
    pub state: String,
    pub claimed_by: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
