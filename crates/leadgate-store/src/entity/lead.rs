//! `leads`: one row per project of a provider.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "leads")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub provider: String,
    pub project_id: String,
    pub title: String,
    pub company: Option<String>,
    pub location: Option<String>,
    pub remote: Option<bool>,
    pub rate: Option<String>,
    pub skills: Json,
    pub skill_keys: Json,
    pub search_text: String,
    pub url: Option<String>,
    pub posted_at: Option<DateTimeUtc>,
    pub description: Option<String>,
    pub raw: Option<Json>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
