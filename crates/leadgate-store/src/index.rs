//! An in-memory index of the leads: which leads match a filter, how many,
//! and which of them make a page, in a millisecond or two at a million
//! leads. The database then reads just the page's rows, by id.
//!
//! A database alone cannot do this in a few milliseconds for every filter:
//! the total is an exact count, and counting 100,000 matches of a word or
//! a skill, or finding the newest 100 leads of a rare combination, visits
//! every match (BENCHMARKS.md, "Leads at scale"). Here each provider,
//! `remote` value, skill key and word of `search_text` has a compressed
//! bitmap of the leads that have it: a filter is the intersection of its
//! bitmaps (a `q` word: the union of the words it begins), the total its
//! size. The page order (`posted_at DESC NULLS LAST, id DESC`) is kept as
//! a list, with each lead's position in it.
//!
//! [`LeadSearch`] keeps an index up to date with the table: it reads the
//! rows whose `updated_at` moved since its last read (and those of the
//! [`OVERLAP`] before it, for writes that committed late), and reads
//! everything again when the number of leads tells that rows went missing
//! or were deleted.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use leadgate_protocol::leads::LeadFilter;
use roaring::RoaringBitmap;

use crate::{Store, StoreError};

/// How far before its last read the index reads again: a write whose
/// transaction committed up to this long after it set `updated_at` is
/// still seen.
pub const OVERLAP: Duration = Duration::from_secs(120);

/// Rows read per statement when the index reads the whole table.
const LOAD_BATCH: u64 = 20_000;

/// What the index needs to know of a lead.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedLead {
    pub id: i64,
    pub posted_at: Option<DateTime<Utc>>,
    pub provider: String,
    pub remote: Option<bool>,
    pub skill_keys: Vec<String>,
    pub search_text: String,
    pub updated_at: DateTime<Utc>,
}

/// The leads' filters as bitmaps over document numbers (one per lead,
/// given in the order leads are first seen), and the page order.
#[derive(Default)]
pub struct LeadIndex {
    /// Lead id and order key of each document.
    ids: Vec<i64>,
    keys: Vec<i128>,
    docs: HashMap<i64, u32>,
    providers: HashMap<String, RoaringBitmap>,
    /// On site, remote.
    remote: [RoaringBitmap; 2],
    skills: HashMap<String, RoaringBitmap>,
    words: BTreeMap<String, RoaringBitmap>,
    /// Every document, in page order, and each document's position in it.
    order: Vec<u32>,
    rank: Vec<u32>,
}

/// `posted_at` as a number that sorts the same way (nanoseconds, every
/// date chrono holds); undated leads get the smallest, so they come last.
fn order_key(posted_at: Option<DateTime<Utc>>) -> i128 {
    posted_at.map_or(i128::MIN, |t| {
        i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos())
    })
}

fn add(map: &mut HashMap<String, RoaringBitmap>, key: &str, doc: u32) {
    match map.get_mut(key) {
        Some(docs) => {
            docs.insert(doc);
        }
        None => {
            map.insert(key.to_owned(), RoaringBitmap::from_iter([doc]));
        }
    }
}

impl LeadIndex {
    /// How many leads it holds.
    pub fn len(&self) -> u64 {
        self.order.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// About how much memory it takes, in bytes.
    pub fn heap_bytes(&self) -> usize {
        let bitmaps = |docs: &RoaringBitmap| docs.serialized_size() + 32;
        let named = self
            .providers
            .iter()
            .chain(self.skills.iter())
            .map(|(name, docs)| name.capacity() + 24 + bitmaps(docs))
            .sum::<usize>()
            + self
                .words
                .iter()
                .map(|(word, docs)| word.capacity() + 24 + 16 + bitmaps(docs))
                .sum::<usize>();
        self.ids.capacity() * 8
            + self.keys.capacity() * 16
            + self.order.capacity() * 4
            + self.rank.capacity() * 4
            + self.docs.capacity() * 17
            + self.remote.iter().map(bitmaps).sum::<usize>()
            + named
    }

    /// Adds leads, or replaces what it knew of them.
    pub fn apply(&mut self, leads: Vec<IndexedLead>) {
        let mut changed = RoaringBitmap::new();
        // Documents that are new or whose order key moved.
        let mut moved = RoaringBitmap::new();
        let mut placed = Vec::with_capacity(leads.len());
        for lead in leads {
            let key = order_key(lead.posted_at);
            let doc = match self.docs.get(&lead.id) {
                Some(&doc) => {
                    changed.insert(doc);
                    if self.keys[doc as usize] != key {
                        self.keys[doc as usize] = key;
                        moved.insert(doc);
                    }
                    doc
                }
                None => {
                    let doc = u32::try_from(self.ids.len()).expect("fewer than 2^32 leads");
                    self.ids.push(lead.id);
                    self.keys.push(key);
                    self.rank.push(u32::MAX);
                    self.docs.insert(lead.id, doc);
                    moved.insert(doc);
                    doc
                }
            };
            placed.push((doc, lead));
        }
        if !changed.is_empty() {
            for docs in self
                .providers
                .values_mut()
                .chain(self.skills.values_mut())
                .chain(self.words.values_mut())
                .chain(self.remote.iter_mut())
            {
                *docs -= &changed;
            }
            self.providers.retain(|_, docs| !docs.is_empty());
            self.skills.retain(|_, docs| !docs.is_empty());
            self.words.retain(|_, docs| !docs.is_empty());
        }
        for (doc, lead) in placed {
            add(&mut self.providers, &lead.provider, doc);
            if let Some(remote) = lead.remote {
                self.remote[usize::from(remote)].insert(doc);
            }
            for skill in &lead.skill_keys {
                add(&mut self.skills, skill, doc);
            }
            for word in lead.search_text.split(' ').filter(|w| !w.is_empty()) {
                match self.words.get_mut(word) {
                    Some(docs) => {
                        docs.insert(doc);
                    }
                    None => {
                        self.words
                            .insert(word.to_owned(), RoaringBitmap::from_iter([doc]));
                    }
                }
            }
        }
        if !moved.is_empty() {
            self.reorder(&moved);
        }
    }

    /// Puts `moved` documents (new, or with a new order key) in their
    /// places: a merge of the few into the many, or a sort when they are
    /// many.
    fn reorder(&mut self, moved: &RoaringBitmap) {
        let keys = &self.keys;
        let ids = &self.ids;
        let later = |a: &u32, b: &u32| {
            let (a, b) = (*a as usize, *b as usize);
            (keys[b], ids[b]).cmp(&(keys[a], ids[a]))
        };
        let mut fresh: Vec<u32> = moved.iter().collect();
        let order = if moved.len() > self.order.len() as u64 / 8 {
            let mut all: Vec<u32> = self
                .order
                .iter()
                .copied()
                .filter(|d| !moved.contains(*d))
                .chain(fresh)
                .collect();
            all.sort_unstable_by(later);
            all
        } else {
            fresh.sort_unstable_by(later);
            let mut all = Vec::with_capacity(self.order.len() + fresh.len());
            let mut fresh = fresh.into_iter().peekable();
            for doc in self.order.iter().copied().filter(|d| !moved.contains(*d)) {
                while let Some(next) = fresh.next_if(|f| later(f, &doc).is_lt()) {
                    all.push(next);
                }
                all.push(doc);
            }
            all.extend(fresh);
            all
        };
        for (position, doc) in order.iter().enumerate() {
            self.rank[*doc as usize] = position as u32;
        }
        self.order = order;
    }

    /// The documents with a word that begins with `prefix`.
    fn prefixed(&self, prefix: &str) -> RoaringBitmap {
        let mut docs = RoaringBitmap::new();
        for (word, with) in self
            .words
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        {
            if !word.starts_with(prefix) {
                break;
            }
            docs |= with;
        }
        docs
    }

    /// The ids of the leads on a page of `filter` (`limit` from `offset`,
    /// in page order) and how many leads match in all.
    pub fn page(&self, filter: &LeadFilter, offset: u64, limit: u64) -> (Vec<i64>, u64) {
        let mut sets: Vec<Cow<'_, RoaringBitmap>> = Vec::new();
        if let Some(provider) = &filter.provider {
            match self.providers.get(provider) {
                Some(docs) => sets.push(Cow::Borrowed(docs)),
                None => return (Vec::new(), 0),
            }
        }
        if let Some(remote) = filter.remote {
            sets.push(Cow::Borrowed(&self.remote[usize::from(remote)]));
        }
        for skill in &filter.skills {
            match self.skills.get(skill) {
                Some(docs) => sets.push(Cow::Borrowed(docs)),
                None => return (Vec::new(), 0),
            }
        }
        for word in filter.words() {
            sets.push(Cow::Owned(self.prefixed(&word)));
        }
        let everything = self.order.len() as u64;
        if sets.is_empty() {
            let start = offset.min(everything) as usize;
            let end = (offset + limit).min(everything) as usize;
            let ids = self.order[start..end]
                .iter()
                .map(|d| self.ids[*d as usize])
                .collect();
            return (ids, everything);
        }
        sets.sort_by_key(|docs| docs.len());
        let mut sets = sets.into_iter();
        let mut matching = sets.next().expect("one set at least").into_owned();
        for docs in sets {
            if matching.is_empty() {
                break;
            }
            matching &= docs.as_ref();
        }
        let total = matching.len();
        if offset >= total {
            return (Vec::new(), total);
        }
        let end = (offset + limit).min(total);
        // Walking the order visits about end × everything / total
        // documents; sorting the matches' positions costs about total.
        let ids = if end.saturating_mul(everything) / total <= total {
            self.order
                .iter()
                .filter(|d| matching.contains(**d))
                .skip(offset as usize)
                .take((end - offset) as usize)
                .map(|d| self.ids[*d as usize])
                .collect()
        } else {
            let mut ranks: Vec<u32> = matching.iter().map(|d| self.rank[d as usize]).collect();
            let end = end as usize;
            if end < ranks.len() {
                ranks.select_nth_unstable(end - 1);
                ranks.truncate(end);
            }
            ranks.sort_unstable();
            ranks[offset as usize..]
                .iter()
                .map(|r| self.ids[self.order[*r as usize] as usize])
                .collect()
        };
        (ids, total)
    }
}

/// A [`LeadIndex`] kept up to date with the leads table.
#[derive(Default)]
pub struct LeadSearch {
    index: RwLock<Option<Arc<RwLock<LeadIndex>>>>,
    /// One refresh at a time; holds the `updated_at` read up to.
    refreshing: tokio::sync::Mutex<Option<DateTime<Utc>>>,
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    /// Rows read.
    pub rows: usize,
    /// Whether it read the whole table.
    pub whole: bool,
    /// Leads in the index afterwards.
    pub leads: u64,
}

impl LeadSearch {
    pub fn new() -> LeadSearch {
        LeadSearch::default()
    }

    fn current(&self) -> Option<Arc<RwLock<LeadIndex>>> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the index has been read a first time.
    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }

    /// About how much memory the index takes, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.current().map_or(0, |index| {
            index.read().unwrap_or_else(|p| p.into_inner()).heap_bytes()
        })
    }

    /// A page of `filter` as [`LeadIndex::page`]; `None` until the index
    /// has been read a first time, and while it is being brought up to
    /// date (a caller does not wait for that: SQL gives the same answer).
    pub fn page(&self, filter: &LeadFilter, offset: u64, limit: u64) -> Option<(Vec<i64>, u64)> {
        let index = self.current()?;
        let index = match index.try_read() {
            Ok(index) => index,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(index.page(filter, offset, limit))
    }

    /// Brings the index up to date with the table: the rows changed since
    /// the last refresh, or the whole table the first time. With `check`,
    /// it also counts the leads (about 50 ms at a million) and reads the
    /// whole table again when the index holds another number: leads were
    /// deleted, or written by a transaction that committed too late to be
    /// read. The gateway checks after it has pushed the pages of a change.
    pub async fn refresh(&self, store: &Store, check: bool) -> Result<Refreshed, StoreError> {
        let mut read_up_to = self.refreshing.lock().await;
        if let (Some(index), Some(since)) = (self.current(), *read_up_to) {
            let since = since - chrono::Duration::from_std(OVERLAP).expect("a short duration");
            let (rows, count) = store.lead_index_changes(since, check).await?;
            let read = rows.len();
            let latest = rows.iter().map(|r| r.updated_at).max();
            // Off the threads that serve connections: a crawl that rewrote
            // many leads takes a while. Pages asked for meanwhile come from
            // SQL (see `page`).
            let writing = index.clone();
            let leads = match tokio::task::spawn_blocking(move || {
                let mut index = writing.write().unwrap_or_else(|p| p.into_inner());
                index.apply(rows);
                index.len()
            })
            .await
            {
                Ok(leads) => leads,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            if count.is_none_or(|count| count == leads) {
                if let Some(latest) = latest {
                    let previous = read_up_to.unwrap_or(latest);
                    *read_up_to = Some(previous.max(latest.min(Utc::now())));
                }
                return Ok(Refreshed {
                    rows: read,
                    whole: false,
                    leads,
                });
            }
            tracing::info!(
                indexed = leads,
                in_table = count,
                "Leads were deleted or missed; reading the whole table again."
            );
        }
        let started = Utc::now();
        let mut index = LeadIndex::default();
        let mut after = i64::MIN;
        let mut rows = 0;
        loop {
            let batch = store.lead_index_batch(after, LOAD_BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            rows += batch.len();
            // Tens of milliseconds a batch, seconds in all at a million
            // leads: not on a thread that serves connections.
            index = match tokio::task::spawn_blocking(move || {
                index.apply(batch);
                index
            })
            .await
            {
                Ok(index) => index,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
        }
        let leads = index.len();
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(RwLock::new(index)));
        // Rows written while the table was read are read again next time.
        *read_up_to = Some(started);
        Ok(Refreshed {
            rows,
            whole: true,
            leads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(
        id: i64,
        day: Option<u32>,
        provider: &str,
        remote: Option<bool>,
        skills: &[&str],
        text: &str,
    ) -> IndexedLead {
        IndexedLead {
            id,
            posted_at: day.map(|d| {
                DateTime::from_timestamp(1_760_000_000 + i64::from(d) * 86_400, 0).unwrap()
            }),
            provider: provider.into(),
            remote,
            skill_keys: skills.iter().map(|s| s.to_string()).collect(),
            search_text: text.into(),
            updated_at: DateTime::from_timestamp(1_760_000_000, 0).unwrap(),
        }
    }

    fn filter(json: serde_json::Value) -> LeadFilter {
        serde_json::from_value::<LeadFilter>(json)
            .unwrap()
            .normalized()
            .unwrap()
    }

    #[test]
    fn pages_follow_the_order_and_filters_intersect() {
        let mut index = LeadIndex::default();
        index.apply(vec![
            lead(1, Some(3), "xing", Some(true), &["rust"], "rust dev acme"),
            lead(2, Some(5), "xing", Some(false), &["go"], "go dev"),
            lead(
                3,
                None,
                "gulp",
                Some(true),
                &["rust", "go"],
                "rustacean lead",
            ),
            lead(4, Some(5), "gulp", None, &["rust"], "senior rust"),
        ]);
        let all = filter(serde_json::json!({}));
        // Same day: the larger id first; undated last.
        assert_eq!(index.page(&all, 0, 10), (vec![4, 2, 1, 3], 4));
        assert_eq!(index.page(&all, 1, 2), (vec![2, 1], 4));
        assert_eq!(index.page(&all, 9, 2), (vec![], 4));
        let rust = filter(serde_json::json!({ "skills": ["Rust"] }));
        assert_eq!(index.page(&rust, 0, 10), (vec![4, 1, 3], 3));
        let q = filter(serde_json::json!({ "q": "rust", "remote": true }));
        assert_eq!(index.page(&q, 0, 10), (vec![1, 3], 2));
        let none = filter(serde_json::json!({ "provider": "malt" }));
        assert_eq!(index.page(&none, 0, 10), (vec![], 0));

        // An update moves a lead and changes what it matches.
        index.apply(vec![lead(
            3,
            Some(9),
            "xing",
            Some(false),
            &["go"],
            "go lead",
        )]);
        assert_eq!(index.page(&all, 0, 10), (vec![3, 4, 2, 1], 4));
        assert_eq!(index.page(&rust, 0, 10), (vec![4, 1], 2));
        let xing_go = filter(serde_json::json!({ "provider": "xing", "skills": ["go"] }));
        assert_eq!(index.page(&xing_go, 0, 10), (vec![3, 2], 2));
        let gone = filter(serde_json::json!({ "q": "rustacean" }));
        assert_eq!(index.page(&gone, 0, 10), (vec![], 0));
    }

    #[test]
    fn dates_far_from_now_keep_their_order() {
        let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let mut index = LeadIndex::default();
        let mut old = lead(1, None, "p", None, &[], "a");
        old.posted_at = at("0001-01-01T00:00:00Z");
        let mut far = lead(2, None, "p", None, &[], "a");
        far.posted_at = at("2999-12-31T00:00:00Z");
        let mut later = lead(3, None, "p", None, &[], "a");
        later.posted_at = at("3000-01-01T00:00:00Z");
        let undated = lead(4, None, "p", None, &[], "a");
        index.apply(vec![old, far, later, undated]);
        let all = filter(serde_json::json!({}));
        assert_eq!(index.page(&all, 0, 10), (vec![3, 2, 1, 4], 4));
    }

    #[test]
    fn both_ways_to_a_page_agree() {
        let mut index = LeadIndex::default();
        let leads: Vec<IndexedLead> = (0..5000)
            .map(|i| {
                let skills: &[&str] = if i % 7 == 0 { &["rare"] } else { &["common"] };
                lead(
                    i,
                    (i % 11 != 0).then_some((i % 97) as u32),
                    "p",
                    Some(i % 2 == 0),
                    skills,
                    "w",
                )
            })
            .collect();
        index.apply(leads);
        // A common skill walks the order; a rare one sorts its matches.
        for skill in ["common", "rare"] {
            let f = filter(serde_json::json!({ "skills": [skill] }));
            let (_, total) = index.page(&f, 0, 1);
            let all = index.page(&filter(serde_json::json!({})), 0, 5000).0;
            let expected: Vec<i64> = all
                .into_iter()
                .filter(|id| (id % 7 == 0) == (skill == "rare"))
                .collect();
            assert_eq!(expected.len() as u64, total);
            for (offset, limit) in [(0, 10), (37, 100), (total - 3, 10)] {
                let (ids, _) = index.page(&f, offset, limit);
                let end = (offset + limit).min(total) as usize;
                assert_eq!(ids, expected[offset as usize..end], "{skill} {offset}");
            }
        }
    }
}
