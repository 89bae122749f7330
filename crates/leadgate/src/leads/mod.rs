//! Leads for browsers (seed 000): the same conversation on Socket.IO
//! namespace `/leads` ([`sio`], through [`answer`]) and on the plain
//! WebSocket `/ws/leads/` ([`ws`]).
//!
//! Every connected client is registered with the page and filter it looks
//! at. When leads change (a crawler's `leads_updated`), the pusher groups the
//! clients by page and filter and reads each distinct page once; a page is
//! serialized once and the same frame goes to every client of its group.
//! Pages are also cached between changes, so connecting clients that look at
//! the same page share one query. A page asked for after a change has been
//! noted is read afresh, and a query that started before the change cannot
//! serve it (single flight per change).
//!
//! Which leads make a page, and how many match, come from an in-memory
//! index of the table ([`LeadSearch`]), brought up to date at each change
//! before any page is read; the database then reads only the page's rows,
//! one statement per page. Until the index has been read at start-up (a
//! few seconds at a million leads), or when it is turned off, one SQL
//! statement answers each page instead.

pub mod sio;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use leadgate_protocol::leads::{
    LeadDetailsMessage, LeadFilter, LeadsErrorMessage, LeadsPage, LeadsQuery, LeadsRequest,
    Pagination, SyncAccepted,
};
use leadgate_store::{CRAWL_QUEUED, LeadSearch, LeadsVersion, Store};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::App;
use crate::auth::Principal;
use crate::fanout::Fanout;
use crate::limits::Bucket;
use crate::metrics::Metrics;
use crate::session::TokenExpiry;
use socketioxide::extract::SocketRef;

/// How long the pusher waits after a change for more changes, so that a
/// burst of crawler updates costs one round of queries.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Pages read at once while pushing.
const PUSH_CONCURRENCY: usize = 8;
/// Distinct pages cached between changes; past this the cache starts over.
/// A page holds up to 500 leads, so this bounds the cache to tens of MB.
const CACHE_LIMIT: usize = 256;

/// One message, serialized once: JSON for Socket.IO, text for WebSocket.
#[derive(Clone)]
pub struct Frame {
    /// The `type` field, which is the Socket.IO event name.
    pub kind: &'static str,
    pub json: Arc<RawValue>,
    pub text: Utf8Bytes,
}

impl Frame {
    fn new<T: Serialize>(kind: &'static str, message: &T) -> Frame {
        let text = serde_json::to_string(message).expect("leads messages always serialize");
        let json = RawValue::from_string(text.clone()).expect("serde_json output is JSON");
        Frame {
            kind,
            json: Arc::from(json),
            text: text.into(),
        }
    }

    pub fn error(detail: impl Into<String>) -> Frame {
        Frame::new("error", &LeadsErrorMessage::new(detail))
    }

    /// The answer to `refresh_token`.
    pub fn token_refreshed(expires_at: i64) -> Frame {
        Frame::new(
            "token_refreshed",
            &serde_json::json!({ "type": "token_refreshed", "expires_at": expires_at }),
        )
    }
}

/// Where a client's frames go.
pub enum Sink {
    /// A socket of namespace `/leads`.
    Socket(SocketRef),
    WebSocket(mpsc::Sender<Frame>),
}

impl Sink {
    /// Sends without waiting; a client whose queue is full misses this
    /// frame (it is a page it will be sent again at the next change).
    fn push(&self, frame: &Frame, metrics: &Metrics) -> bool {
        match self {
            Sink::Socket(socket) => {
                let sent = socket.emit(frame.kind, &*frame.json).is_ok();
                metrics.message(frame.kind, sent);
                sent
            }
            // Counted as sent by the connection's writer.
            Sink::WebSocket(tx) => {
                let queued = tx.try_send(frame.clone()).is_ok();
                if !queued {
                    metrics.message(frame.kind, false);
                }
                queued
            }
        }
    }
}

struct Client {
    query: LeadsQuery,
    sink: Sink,
}

/// A client of namespace `/leads`: its registration, user and request rate.
pub struct LeadsSession {
    pub id: u64,
    pub principal: Principal,
    requests: Mutex<Bucket>,
    /// The user's connection slot, given back when the client is let go.
    slot: Mutex<Option<Arc<crate::UserSlot>>>,
}

impl LeadsSession {
    /// A session with a fresh client id, not yet registered.
    pub fn new(app: &App, principal: Principal, slot: Arc<crate::UserSlot>) -> Self {
        LeadsSession {
            id: app.leads.new_id(),
            principal,
            requests: Mutex::new(Bucket::new(app.limits.event_rate)),
            slot: Mutex::new(Some(slot)),
        }
    }

    /// Gives the user's connection slot back, when the gateway lets the
    /// client go before its socket is gone.
    pub fn release(&self) {
        lock(&self.slot).take();
    }

    /// Takes one request from the client's rate; the refusal when it is
    /// spent.
    pub fn allow_request(&self, app: &App, event: &str) -> Result<(), Frame> {
        if lock(&self.requests).take(app.limits.event_rate) {
            return Ok(());
        }
        tracing::info!(
            client = self.id,
            event,
            "Refused a leads request over the rate."
        );
        Err(Frame::error(app.limits.too_many_requests()))
    }
}

/// Answers one event of a `/leads` socket, already counted against its rate
/// ([`LeadsSession::allow_request`]): the `type` is the event name, the
/// argument the rest of the request.
pub async fn answer(
    app: &App,
    client: &LeadsSession,
    expiry: &TokenExpiry,
    event: &str,
    data: Option<serde_json::Value>,
) -> Frame {
    if event == "refresh_token" {
        return match crate::session::refresh_token(
            app,
            Some(expiry),
            &client.principal,
            data.unwrap_or_default(),
        ) {
            Ok(expires_at) => Frame::token_refreshed(expires_at),
            Err(e) => Frame::error(e.to_string()),
        };
    }
    // An event sent without a payload (`emit('sync')`) has nothing to
    // deserialize; it means the same as an empty object.
    let data = data.unwrap_or(serde_json::Value::Null);
    match LeadsRequest::from_event(event, data) {
        Ok(request) => {
            app.leads
                .handle(client.id, &client.principal, request)
                .await
        }
        Err(e) => {
            tracing::info!(client = client.id, event, detail = %e, "Refused a leads request.");
            Frame::error(e.0)
        }
    }
}

/// Sends a frame to a `/leads` socket as the event of its `type`.
pub fn send(app: &App, socket: &SocketRef, frame: &Frame) {
    let result = socket.emit(frame.kind, &*frame.json);
    app.metrics.message(frame.kind, result.is_ok());
    if let Err(e) = result {
        warn!(sid = %socket.id, error = %e, "Dropped a leads message for a socket.");
    }
}

/// A page as read once, with its two messages.
struct CachedPage {
    init: Frame,
    updated: Frame,
}

type PageCell = Arc<OnceCell<Result<Arc<CachedPage>, String>>>;

/// The pages read since the change `noted` (a count of
/// [`Leads::changed`]) was noted.
#[derive(Default)]
struct PageCache {
    noted: u64,
    pages: HashMap<LeadsQuery, PageCell>,
}

/// Which leads changed since the last push.
#[derive(Default)]
struct Changes {
    all: bool,
    providers: HashSet<String>,
}

impl Changes {
    fn affects(&self, filter: &LeadFilter) -> bool {
        self.all
            || filter
                .provider
                .as_ref()
                .is_none_or(|p| self.providers.contains(p))
    }
}

pub struct Leads {
    store: Store,
    fanout: Arc<Fanout>,
    metrics: Arc<Metrics>,
    clients: Mutex<HashMap<u64, Client>>,
    next_client: AtomicU64,
    cache: Mutex<PageCache>,
    changes: Mutex<Changes>,
    changed: tokio::sync::Notify,
    /// `None` when the index is turned off.
    search: Option<LeadSearch>,
    /// Changes noted so far, and how many of them the index has read.
    changes_noted: AtomicU64,
    index_read: AtomicU64,
    index_refresh: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Leads {
    pub fn new(store: Store, fanout: Arc<Fanout>, metrics: Arc<Metrics>, index: bool) -> Self {
        Leads {
            search: index.then(LeadSearch::new),
            changes_noted: AtomicU64::new(0),
            index_read: AtomicU64::new(0),
            index_refresh: tokio::sync::Mutex::new(()),
            store,
            fanout,
            metrics,
            clients: Mutex::default(),
            next_client: AtomicU64::new(1),
            cache: Mutex::default(),
            changes: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Registers a client looking at page 1 without a filter.
    pub fn register(&self, sink: Sink) -> u64 {
        let id = self.new_id();
        self.register_as(id, sink);
        id
    }

    /// A client id, for a client registered later with `register_as`.
    pub fn new_id(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register_as(&self, id: u64, sink: Sink) {
        let client = Client {
            query: LeadsQuery::default(),
            sink,
        };
        lock(&self.clients).insert(id, client);
    }

    /// Forgets a client; `false` if it was not registered.
    pub fn unregister(&self, id: u64) -> bool {
        lock(&self.clients).remove(&id).is_some()
    }

    /// Clients on the plain WebSocket (those on `/leads` are counted with
    /// the Socket.IO sockets).
    pub fn websocket_clients(&self) -> usize {
        lock(&self.clients)
            .values()
            .filter(|c| matches!(c.sink, Sink::WebSocket(_)))
            .count()
    }

    /// `leads_init` for the client's current page.
    pub async fn current_page(&self, id: u64) -> Frame {
        let query = lock(&self.clients).get(&id).map(|c| c.query.clone());
        match query {
            Some(query) => self
                .page(&query)
                .await
                .map_or_else(Frame::error, |p| p.init.clone()),
            None => Frame::error("not connected"),
        }
    }

    /// Answers one request of a client.
    pub async fn handle(&self, id: u64, user: &Principal, request: LeadsRequest) -> Frame {
        debug!(client = id, user = %user.sub, request = ?request, "Leads request.");
        match &request {
            LeadsRequest::GetLeads { .. } => {
                let next = {
                    let mut clients = lock(&self.clients);
                    let Some(client) = clients.get_mut(&id) else {
                        return Frame::error("not connected");
                    };
                    match LeadsRequest::next_query(&client.query, &request) {
                        // Remembered before the page is read, so a change
                        // meanwhile pushes this page, not the old one.
                        Ok(next) => {
                            client.query = next.clone();
                            next
                        }
                        Err(e) => return Frame::error(e.0),
                    }
                };
                self.page(&next)
                    .await
                    .map_or_else(Frame::error, |p| p.init.clone())
            }
            LeadsRequest::GetLeadDetails {
                project_id,
                provider,
            } => match self
                .store
                .lead_details(project_id, provider.as_deref())
                .await
            {
                Ok(Some(details)) => Frame::new(
                    "lead_details",
                    &LeadDetailsMessage {
                        kind: "lead_details",
                        project_id,
                        details: &details,
                    },
                ),
                Ok(None) => Frame::error(format!("lead {project_id} not found")),
                Err(e) => {
                    error!(error = %e, "Could not read a lead.");
                    Frame::error("could not read the lead; try again")
                }
            },
            LeadsRequest::Sync { provider } => match self.sync(user, provider.as_deref()).await {
                Ok(accepted) => Frame::new("sync_accepted", &accepted),
                Err(detail) => Frame::error(detail),
            },
        }
    }

    /// Records a crawl request (or finds the same one still queued) and
    /// tells the crawlers.
    pub async fn sync(
        &self,
        user: &Principal,
        provider: Option<&str>,
    ) -> Result<SyncAccepted, String> {
        let provider = provider.map(str::trim).filter(|p| !p.is_empty());
        if provider.is_some_and(|p| p.chars().count() > leadgate_protocol::leads::MAX_NAME_LEN) {
            return Err("provider is too long".into());
        }
        match self.store.request_crawl(&user.sub, provider).await {
            Ok((request_id, created)) => {
                if created {
                    self.fanout.announce_crawl(request_id, provider).await;
                }
                debug!(request_id, created, user = %user.sub, provider, "Crawl requested.");
                Ok(sync_accepted(request_id, provider))
            }
            Err(e) => {
                error!(error = %e, "Could not record a crawl request.");
                Err("could not record the sync request; try again".into())
            }
        }
    }

    /// Notes that leads of `provider` (or of every provider) changed; the
    /// pusher sends fresh pages to the clients concerned.
    pub fn changed(&self, provider: Option<String>) {
        {
            let mut changes = lock(&self.changes);
            match provider {
                Some(p) => {
                    changes.providers.insert(p);
                }
                None => changes.all = true,
            }
        }
        self.changes_noted.fetch_add(1, Ordering::SeqCst);
        self.metrics.leads_changes.inc();
        self.changed.notify_one();
    }

    /// The page for `query`, read once per change however many ask.
    async fn page(&self, query: &LeadsQuery) -> Result<Arc<CachedPage>, String> {
        let noted = self.changes_noted.load(Ordering::SeqCst);
        let cell = {
            let mut cache = lock(&self.cache);
            if cache.noted < noted
                || (cache.pages.len() >= CACHE_LIMIT && !cache.pages.contains_key(query))
            {
                cache.pages.clear();
                cache.noted = cache.noted.max(noted);
            }
            cache.pages.entry(query.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                let started = std::time::Instant::now();
                let page = self.read_page(query).await;
                self.metrics.query("leads_page", started.elapsed());
                match page {
                    Ok((projects, total)) => {
                        let pagination = Pagination {
                            page: query.page,
                            page_size: query.page_size,
                            total,
                        };
                        let page = |kind| LeadsPage {
                            kind,
                            projects: &projects,
                            pagination,
                        };
                        Ok(Arc::new(CachedPage {
                            init: Frame::new("leads_init", &page("leads_init")),
                            updated: Frame::new("leads_updated", &page("leads_updated")),
                        }))
                    }
                    Err(e) => {
                        error!(error = %e, "Could not read a page of leads.");
                        Err("could not read the leads; try again".to_owned())
                    }
                }
            })
            .await
            .clone();
        if result.is_err() {
            // Do not keep a failure: the next request reads again. Only this
            // cell: a newer one may have replaced it after a change.
            let mut cache = lock(&self.cache);
            if cache
                .pages
                .get(query)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                cache.pages.remove(query);
            }
        }
        result
    }

    /// A page and its total: from the index and one read of the page's rows
    /// when the index is there, otherwise one SQL statement.
    async fn read_page(
        &self,
        query: &LeadsQuery,
    ) -> Result<(Vec<leadgate_protocol::leads::Lead>, u64), leadgate_store::StoreError> {
        // Decided once: an index read for the first time while this page
        // is asked for may not have read a change noted meanwhile.
        let loaded = self.search.as_ref().filter(|search| search.is_loaded());
        if loaded.is_some() {
            self.index_up_to_date().await;
        }
        let found = loaded.and_then(|search| {
            search.page(&query.filter, query.offset(), u64::from(query.page_size))
        });
        match found {
            Some((ids, total)) => Ok((self.store.leads_by_ids(&ids).await?, total)),
            None => self.store.leads_page(query).await,
        }
    }

    /// Brings the index up to date when a change was noted since it was
    /// last: a page read after an announcement shows what was announced,
    /// whether or not the pusher got to it first. Once per change,
    /// however many wait.
    async fn index_up_to_date(&self) {
        // Before its first read the index is not used (SQL answers), and
        // nothing waits for that read.
        if !self.search.as_ref().is_some_and(LeadSearch::is_loaded) {
            return;
        }
        let wanted = self.changes_noted.load(Ordering::SeqCst);
        if self.index_read.load(Ordering::SeqCst) >= wanted {
            return;
        }
        let _one_at_a_time = self.index_refresh.lock().await;
        if self.index_read.load(Ordering::SeqCst) >= wanted {
            return;
        }
        let noted = self.changes_noted.load(Ordering::SeqCst);
        if self.refresh_index(false).await.is_some() {
            self.index_read.fetch_max(noted, Ordering::SeqCst);
        }
    }

    /// Brings the index up to date with the table (reads it whole the
    /// first time; with `check`, also when it no longer holds every lead;
    /// see [`LeadSearch::refresh`]); `None` if that failed, which leaves
    /// the index as it was, or if there is no index.
    pub async fn refresh_index(&self, check: bool) -> Option<leadgate_store::Refreshed> {
        let search = self.search.as_ref()?;
        let started = std::time::Instant::now();
        match search.refresh(&self.store, check).await {
            Ok(done) => {
                let label = if check && !done.whole {
                    "leads_index_check"
                } else {
                    "leads_index"
                };
                self.metrics.query(label, started.elapsed());
                let took_ms = started.elapsed().as_millis() as u64;
                if done.whole {
                    info!(leads = done.leads, took_ms, "Read the leads index.");
                } else {
                    debug!(
                        rows = done.rows,
                        leads = done.leads,
                        check,
                        took_ms,
                        "Leads index brought up to date."
                    );
                }
                Some(done)
            }
            Err(e) => {
                error!(error = %e, "Could not bring the leads index up to date.");
                None
            }
        }
    }

    /// Sends `leads_updated` to every client concerned by each change, until
    /// `cancel`.
    pub async fn run_pusher(self: Arc<Self>, cancel: CancellationToken) {
        let mut pushed = 0;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.changed.notified() => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
            // Every change counted here is in `changes` (noted after it).
            let noted = self.changes_noted.load(Ordering::SeqCst);
            let changes = std::mem::take(&mut *lock(&self.changes));
            let started = std::time::Instant::now();
            // The index first (pages read from the cache started over when
            // the change was noted).
            self.index_up_to_date().await;
            let index_ms = started.elapsed().as_millis() as u64;
            let mut groups: HashMap<LeadsQuery, Vec<u64>> = HashMap::new();
            for (id, client) in lock(&self.clients).iter() {
                if changes.affects(&client.query.filter) {
                    groups.entry(client.query.clone()).or_default().push(*id);
                }
            }
            let queries = groups.len();
            futures_util::stream::iter(groups)
                .for_each_concurrent(PUSH_CONCURRENCY, |(query, ids)| {
                    let this = self.clone();
                    async move {
                        let Ok(page) = this.page(&query).await else {
                            return;
                        };
                        let clients = lock(&this.clients);
                        for id in ids {
                            // A client that moved to another page since it
                            // was grouped gets its own page at the next
                            // change; it just asked for it anyway.
                            let Some(client) = clients.get(&id).filter(|c| c.query == query) else {
                                continue;
                            };
                            if !client.sink.push(&page.updated, &this.metrics) {
                                warn!(
                                    client = id,
                                    "Dropped leads_updated for a client that is not reading."
                                );
                            }
                        }
                    }
                })
                .await;
            debug!(
                queries,
                index_ms,
                took_ms = started.elapsed().as_millis() as u64,
                "Pushed leads_updated."
            );
            self.metrics.leads_changes_pushed.inc_by(noted - pushed);
            pushed = noted;
            // Off the way of the pages: whether the index still holds every
            // lead. When it had to read the table again (leads deleted, or
            // written too late to be read), the pages just pushed may be
            // wrong: push again.
            if self
                .refresh_index(true)
                .await
                .is_some_and(|done| done.whole)
            {
                self.changed(None);
            }
        }
    }

    /// For the single-instance mode, where crawlers have no Redis to tell
    /// us: notices changes to the leads table by polling its size and
    /// latest update, until `cancel`. `last` is the table as it was before
    /// the index was first read (`None`: unknown, the first poll counts as
    /// a change), so that a write in between is noticed too.
    pub async fn run_watcher(
        self: Arc<Self>,
        every: Duration,
        mut last: Option<LeadsVersion>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.store.leads_version().await {
                Ok(version) if Some(&version) != last.as_ref() => {
                    last = Some(version);
                    self.changed(None);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "Could not check the leads table for changes."),
            }
        }
    }
}

pub fn sync_accepted(request_id: i64, provider: Option<&str>) -> SyncAccepted {
    SyncAccepted {
        kind: "sync_accepted".into(),
        request_id,
        provider: provider.map(str::to_owned),
        state: CRAWL_QUEUED.into(),
    }
}
