//! Queries on leads and crawl requests.
//!
//! Pages are ordered newest first (`posted_at DESC NULLS LAST, id DESC`),
//! the order the indexes of the leads migration are built for. Word search
//! and skill containment use PostgreSQL's GIN indexes; on SQLite, the
//! embedded default for small data sets, they are plain scans. `q` matches
//! the same leads on both: each of its words begins a word of the lead's
//! `search_text` ([`search_text`]).

use chrono::{DateTime, Utc};
use leadgate_protocol::leads::{Lead, LeadDetails, LeadFilter, LeadInput, LeadsQuery, search_text};
use leadgate_protocol::now_millis;
use std::collections::HashMap;

use sea_orm::sea_query::{Asterisk, Expr, Func, NullOrdering, OnConflict, Order, Query};
use sea_orm::{
    AccessMode, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait,
    FromQueryResult, IsolationLevel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, TransactionTrait,
};
use serde_json::Value;

use crate::entity::{crawl_request, lead};
use crate::index::IndexedLead;
use crate::{Store, StoreError};

/// Leads written per INSERT statement.
const UPSERT_BATCH: usize = 500;

/// A crawl request's state.
pub const CRAWL_QUEUED: &str = "queued";

/// How many leads there are and when one last changed (see
/// [`Store::leads_version`]).
pub type LeadsVersion = (u64, Option<DateTime<Utc>>);

impl Store {
    /// One page of leads matching `query`, and how many match in all, in
    /// one statement. The gateway answers from its [`LeadSearch`] index
    /// and [`Store::leads_by_ids`]; this is what it does before the index
    /// is read, and what tests hold the index to.
    ///
    /// [`LeadSearch`]: crate::LeadSearch
    pub async fn leads_page(&self, query: &LeadsQuery) -> Result<(Vec<Lead>, u64), StoreError> {
        let backend = self.db.get_database_backend();
        let condition = self.lead_condition(&query.filter);
        let total = Query::select()
            .expr(Func::count(Expr::col(Asterisk)))
            .from(lead::Entity)
            .cond_where(condition.clone())
            .to_owned();
        // PostgreSQL cannot estimate how many rows a prefix word search
        // matches; assuming many, it walks the order index and tests every
        // row, which for a rare word means the whole table. Ordering by an
        // expression the index does not cover makes it use the word index
        // and sort the matches instead.
        let by_date = if backend == DbBackend::Postgres && !query.filter.words().is_empty() {
            Expr::cust("posted_at + interval '0 seconds'")
        } else {
            Expr::col(lead::Column::PostedAt)
        };
        let select = lead::Entity::find().filter(condition);
        let page = select
            .clone()
            .expr_as(total, "total")
            .order_by_with_nulls(by_date, Order::Desc, NullOrdering::Last)
            .order_by_desc(lead::Column::Id)
            .offset(query.offset())
            .limit(u64::from(query.page_size))
            .build(backend);
        let rows = self.db.query_all_raw(page).await?;
        let Some(first) = rows.first() else {
            // Past the last page: the count alone.
            return Ok((Vec::new(), select.count(&self.db).await?));
        };
        let total = first.try_get::<i64>("", "total")?.max(0) as u64;
        let leads = rows
            .iter()
            .map(|row| Ok(into_lead(lead::Model::from_query_result(row, "")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((leads, total))
    }

    /// The leads with these ids, in the order given; ids no longer in the
    /// table are left out.
    pub async fn leads_by_ids(&self, ids: &[i64]) -> Result<Vec<Lead>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = lead::Entity::find()
            .filter(lead::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?;
        let mut by_id: HashMap<i64, lead::Model> = rows.into_iter().map(|r| (r.id, r)).collect();
        Ok(ids
            .iter()
            .filter_map(|id| by_id.remove(id))
            .map(into_lead)
            .collect())
    }

    /// What the index needs of the leads written at or after `since`; with
    /// `count`, also how many leads there are, in the same snapshot of the
    /// table.
    pub async fn lead_index_changes(
        &self,
        since: DateTime<Utc>,
        count: bool,
    ) -> Result<(Vec<IndexedLead>, Option<u64>), StoreError> {
        let select = index_select()
            .filter(lead::Column::UpdatedAt.gte(since))
            .into_tuple::<IndexRow>();
        if !count {
            let rows = select.all(&self.db).await?;
            return Ok((rows.into_iter().map(indexed).collect(), None));
        }
        let txn = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                self.db
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await?
            }
            // SQLite's transactions see one snapshot already.
            _ => self.db.begin().await?,
        };
        let rows = select.all(&txn).await?;
        let count = lead::Entity::find().count(&txn).await?;
        txn.commit().await?;
        Ok((rows.into_iter().map(indexed).collect(), Some(count)))
    }

    /// What the index needs of up to `limit` leads with ids above `after`,
    /// by id.
    pub async fn lead_index_batch(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<Vec<IndexedLead>, StoreError> {
        let rows = index_select()
            .filter(lead::Column::Id.gt(after))
            .order_by_asc(lead::Column::Id)
            .limit(limit)
            .into_tuple::<IndexRow>()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(indexed).collect())
    }

    fn lead_condition(&self, filter: &LeadFilter) -> Condition {
        let postgres = self.db.get_database_backend() == DbBackend::Postgres;
        let mut all = Condition::all();
        if let Some(remote) = filter.remote {
            all = all.add(lead::Column::Remote.eq(remote));
        }
        if let Some(provider) = &filter.provider {
            all = all.add(lead::Column::Provider.eq(provider.as_str()));
        }
        let words = filter.words();
        if !words.is_empty() {
            if postgres {
                // Words hold letters and digits only, so they cannot form
                // tsquery syntax; `:*` makes each a prefix match.
                let tsquery: Vec<String> = words.iter().map(|w| format!("{w}:*")).collect();
                all = all.add(Expr::cust_with_values(
                    "search @@ to_tsquery('simple', $1)",
                    [tsquery.join(" & ")],
                ));
            } else {
                // The same match as PostgreSQL's prefix query: the word
                // begins a word of `search_text` (words are letters and
                // digits only, so they hold no LIKE wildcard).
                for word in words {
                    all = all.add(Expr::cust_with_values(
                        "(' ' || search_text) LIKE ?",
                        [format!("% {word}%")],
                    ));
                }
            }
        }
        if !filter.skills.is_empty() {
            if postgres {
                all = all.add(Expr::cust_with_values(
                    "skill_keys @> $1::jsonb",
                    [Value::from(filter.skills.clone()).to_string()],
                ));
            } else {
                // Not `EXISTS (… WHERE value = ?)`: SQLite 3.51 turns that
                // into a join, and a lead whose skills repeat one came
                // back twice.
                for skill in &filter.skills {
                    all = all.add(Expr::cust_with_values(
                        "? IN (SELECT value FROM json_each(leads.skill_keys))",
                        [skill.clone()],
                    ));
                }
            }
        }
        all
    }

    /// One lead with everything known about it. Without `provider`, the most
    /// recently updated lead with that project id.
    pub async fn lead_details(
        &self,
        project_id: &str,
        provider: Option<&str>,
    ) -> Result<Option<LeadDetails>, StoreError> {
        let mut select = lead::Entity::find().filter(lead::Column::ProjectId.eq(project_id));
        if let Some(provider) = provider {
            select = select.filter(lead::Column::Provider.eq(provider));
        }
        let row = select
            .order_by_desc(lead::Column::UpdatedAt)
            .one(&self.db)
            .await?;
        Ok(row.map(|row| {
            let description = row.description.clone();
            let raw = match row.raw.clone() {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            };
            let created_at = row.created_at;
            LeadDetails {
                lead: into_lead(row),
                description,
                raw,
                created_at,
            }
        }))
    }

    /// Inserts or updates leads of `provider` by project id; returns how
    /// many were written.
    pub async fn upsert_leads(
        &self,
        provider: &str,
        leads: Vec<LeadInput>,
    ) -> Result<usize, StoreError> {
        let now = now_millis();
        let count = leads.len();
        let rows: Vec<lead::ActiveModel> = leads
            .into_iter()
            .map(|input| {
                let mut keys: Vec<String> = Vec::with_capacity(input.skills.len());
                for key in input.skills.iter().map(|s| s.to_lowercase()) {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                let search_text = search_text(&input.title, input.company.as_deref(), &keys);
                lead::ActiveModel {
                    id: sea_orm::ActiveValue::NotSet,
                    provider: Set(provider.to_owned()),
                    project_id: Set(input.project_id),
                    title: Set(input.title),
                    company: Set(input.company),
                    location: Set(input.location),
                    remote: Set(input.remote),
                    rate: Set(input.rate),
                    skills: Set(Value::from(input.skills)),
                    skill_keys: Set(Value::from(keys)),
                    search_text: Set(search_text),
                    url: Set(input.url),
                    posted_at: Set(input.posted_at),
                    description: Set(input.description),
                    raw: Set((!input.raw.is_empty()).then_some(Value::Object(input.raw))),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
            })
            .collect();
        let on_conflict = OnConflict::columns([lead::Column::Provider, lead::Column::ProjectId])
            .update_columns([
                lead::Column::Title,
                lead::Column::Company,
                lead::Column::Location,
                lead::Column::Remote,
                lead::Column::Rate,
                lead::Column::Skills,
                lead::Column::SkillKeys,
                lead::Column::SearchText,
                lead::Column::Url,
                lead::Column::PostedAt,
                lead::Column::Description,
                lead::Column::Raw,
                lead::Column::UpdatedAt,
            ])
            .to_owned();
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let batch: Vec<_> = rows.by_ref().take(UPSERT_BATCH).collect();
            lead::Entity::insert_many(batch)
                .on_conflict(on_conflict.clone())
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(count)
    }

    /// How many leads there are and when one last changed: a cheap
    /// fingerprint of the table, for noticing crawlers' writes.
    pub async fn leads_version(&self) -> Result<LeadsVersion, StoreError> {
        let row: Option<(i64, Option<DateTime<Utc>>)> = lead::Entity::find()
            .select_only()
            .column_as(lead::Column::Id.count(), "count")
            .column_as(lead::Column::UpdatedAt.max(), "latest")
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(row.map_or((0, None), |(count, latest)| (count.max(0) as u64, latest)))
    }

    /// Records a crawl request, unless the same user's request for the same
    /// provider is still queued (clicking "Sync" twice asks for one crawl,
    /// and one user cannot fill the queue). Returns the request's id and
    /// whether it is new.
    pub async fn request_crawl(
        &self,
        requested_by: &str,
        provider: Option<&str>,
    ) -> Result<(i64, bool), StoreError> {
        let same_provider = match provider {
            Some(p) => crawl_request::Column::Provider.eq(p),
            None => crawl_request::Column::Provider.is_null(),
        };
        let queued = crawl_request::Entity::find()
            .filter(crawl_request::Column::State.eq(CRAWL_QUEUED))
            .filter(crawl_request::Column::RequestedBy.eq(requested_by))
            .filter(same_provider)
            .order_by_asc(crawl_request::Column::Id)
            .one(&self.db)
            .await?;
        match queued {
            Some(request) => Ok((request.id, false)),
            None => Ok((
                self.create_crawl_request(requested_by, provider).await?,
                true,
            )),
        }
    }

    /// Records a crawl request; returns its id.
    pub async fn create_crawl_request(
        &self,
        requested_by: &str,
        provider: Option<&str>,
    ) -> Result<i64, StoreError> {
        let now = now_millis();
        let row = crawl_request::ActiveModel {
            id: sea_orm::ActiveValue::NotSet,
            requested_by: Set(requested_by.to_owned()),
            provider: Set(provider.map(str::to_owned)),
            state: Set(CRAWL_QUEUED.to_owned()),
            claimed_by: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let result = crawl_request::Entity::insert(row).exec(&self.db).await?;
        Ok(result.last_insert_id)
    }

    /// Takes the oldest queued crawl request (for `provider`, or for every
    /// provider) and marks it `running` for `worker`. Concurrent crawlers
    /// never take the same request.
    pub async fn claim_crawl_request(
        &self,
        worker: &str,
        provider: Option<&str>,
    ) -> Result<Option<(i64, Option<String>)>, StoreError> {
        let backend = self.db.get_database_backend();
        // PostgreSQL: SKIP LOCKED lets concurrent crawlers pass each other.
        // SQLite serializes writers, so the subquery alone is enough.
        let (lock, p) = match backend {
            DbBackend::Postgres => (" FOR UPDATE SKIP LOCKED", ["$1", "$2", "$3"]),
            _ => ("", ["?", "?", "?"]),
        };
        let sql = format!(
            "UPDATE crawl_requests SET state = 'running', claimed_by = {}, updated_at = {} \
             WHERE id = (SELECT id FROM crawl_requests WHERE state = 'queued' \
             AND ({} IS NULL OR provider IS NULL OR provider = {}) \
             ORDER BY created_at, id LIMIT 1{lock}) RETURNING id, provider",
            p[0], p[1], p[2], p[2],
        );
        let values: Vec<sea_orm::Value> = match backend {
            DbBackend::Postgres => vec![
                worker.into(),
                now_millis().into(),
                provider.map(str::to_owned).into(),
            ],
            _ => vec![
                worker.into(),
                now_millis().into(),
                provider.map(str::to_owned).into(),
                provider.map(str::to_owned).into(),
            ],
        };
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                backend, sql, values,
            ))
            .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((row.try_get("", "id")?, row.try_get("", "provider")?))),
        }
    }

    /// Marks a crawl request `done` or `failed`.
    pub async fn finish_crawl_request(&self, id: i64, state: &str) -> Result<bool, StoreError> {
        let result = crawl_request::Entity::update_many()
            .col_expr(crawl_request::Column::State, Expr::value(state))
            .col_expr(crawl_request::Column::UpdatedAt, Expr::value(now_millis()))
            .filter(crawl_request::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// The state of a crawl request, for tests and tools.
    pub async fn crawl_request_state(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(crawl_request::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(|r| r.state))
    }
}

type IndexRow = (
    i64,
    String,
    Option<bool>,
    Option<DateTime<Utc>>,
    Value,
    String,
    DateTime<Utc>,
);

fn index_select() -> sea_orm::Select<lead::Entity> {
    lead::Entity::find().select_only().columns([
        lead::Column::Id,
        lead::Column::Provider,
        lead::Column::Remote,
        lead::Column::PostedAt,
        lead::Column::SkillKeys,
        lead::Column::SearchText,
        lead::Column::UpdatedAt,
    ])
}

fn indexed(row: IndexRow) -> IndexedLead {
    let (id, provider, remote, posted_at, skill_keys, search_text, updated_at) = row;
    // Only strings in the array: what the skills filter matches.
    let skill_keys = match skill_keys {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    IndexedLead {
        id,
        posted_at,
        provider,
        remote,
        skill_keys,
        search_text,
        updated_at,
    }
}

fn into_lead(row: lead::Model) -> Lead {
    let skills = match row.skills {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Lead {
        provider: row.provider,
        project_id: row.project_id,
        title: row.title,
        company: row.company,
        location: row.location,
        remote: row.remote,
        rate: row.rate,
        skills,
        url: row.url,
        posted_at: row.posted_at,
        updated_at: row.updated_at,
    }
}
