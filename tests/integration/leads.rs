//! Leads over the plain WebSocket `/ws/leads/`: filters, ordering, pushes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use leadgate_protocol::leads::LeadInput;
use leadgate_tests::{Backend, Gateway, TestDb};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

on_every_backend!(
    filters_pages_and_order_match_a_model,
    each_client_is_pushed_its_own_page,
    a_page_asked_for_after_an_announcement_shows_it,
    the_migration_rewrites_earlier_search_texts,
    the_index_answers_as_sql_does,
);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gateway, user: &str) -> Ws {
    let url = format!("ws://{}/ws/leads/?token={}", gw.addr, gw.token(user));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn ask(ws: &mut Ws, request: Value) -> Value {
    ws.send(Message::text(request.to_string())).await.unwrap();
    next(ws).await
}

fn ids(page: &Value) -> Vec<String> {
    page["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["project_id"].as_str().unwrap().to_owned())
        .collect()
}

/// 40 leads over two providers with every combination the filters look at.
fn fixture() -> Vec<(String, Value)> {
    let skills = [
        vec!["Rust", "Tokio"],
        vec!["Python", "Django"],
        vec!["rust", "WebSocket"],
        vec!["Go"],
    ];
    let titles = [
        "Rust-Entwickler Gateway",
        "Backend Python",
        "Realtime Engineer",
        "Go Microservices",
    ];
    (0..40)
        .map(|i| {
            let provider = if i % 2 == 0 { "freelance.de" } else { "xing" };
            let mut lead = json!({
                "project_id": format!("p{i:02}"),
                "title": titles[i % 4],
                "company": if i % 5 == 0 { "Nordlicht IT" } else { "Muster AG" },
                "remote": i % 3 == 0,
                "skills": skills[i % 4],
                "extra": i,
            });
            // Every seventh lead has no date: those come last.
            if i % 7 != 0 {
                lead["posted_at"] =
                    json!(format!("2026-11-{:02}T{:02}:00:00Z", 1 + i % 20, i % 24));
            }
            (provider.to_owned(), lead)
        })
        .collect()
}

async fn import(gw: &Gateway, leads: Vec<(String, Value)>) {
    let store = leadgate_store::Store::connect(gw.database_url())
        .await
        .unwrap();
    for provider in ["freelance.de", "xing"] {
        let batch: Vec<LeadInput> = leads
            .iter()
            .filter(|(p, _)| p == provider)
            .enumerate()
            .map(|(i, (_, v))| LeadInput::from_value(v.clone(), i).unwrap())
            .collect();
        store.upsert_leads(provider, batch).await.unwrap();
    }
    store.close().await.unwrap();
}

/// The expected answer: the leads in import order (row ids grow in that
/// order) that pass `filter`, newest `posted_at` first, undated last, ties
/// broken by the newest row.
fn model(leads: &[(String, Value)], filter: impl Fn(&Value, &str) -> bool) -> Vec<String> {
    let mut rows: Vec<(Option<&str>, usize, String)> = leads
        .iter()
        .enumerate()
        .filter(|(_, (p, v))| filter(v, p))
        .map(|(row, (_, v))| {
            (
                v["posted_at"].as_str(),
                row,
                v["project_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => y.cmp(x).then(b.1.cmp(&a.1)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.1.cmp(&a.1),
    });
    rows.into_iter().map(|r| r.2).collect()
}

fn has_skill(v: &Value, skill: &str) -> bool {
    v["skills"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.as_str().unwrap().eq_ignore_ascii_case(skill))
}

async fn filters_pages_and_order_match_a_model(backend: Backend) {
    let gw = Gateway::start(backend).await;
    // Imported provider by provider, so rows are numbered in this order.
    let mut leads = fixture();
    leads.sort_by_key(|(p, _)| p.clone());
    import(&gw, leads.clone()).await;
    // As a crawler does after writing: the gateway's index reads the
    // import before any page is answered.
    let (code, body) = gw
        .post("/api/v1/leads/events", json!({ "type": "leads_updated" }))
        .await;
    assert_eq!(code, 202, "{body}");
    let model = |f: &dyn Fn(&Value, &str) -> bool| model(&leads, f);

    let mut ws = connect(&gw, "alice").await;
    let init = next(&mut ws).await;
    assert_eq!(init["type"], "leads_init");
    assert_eq!(
        init["pagination"],
        json!({ "page": 1, "page_size": 100, "total": 40 })
    );
    assert_eq!(ids(&init), model(&|_, _| true));

    let cases: Vec<(Value, Vec<String>)> = vec![
        (
            json!({ "remote": true }),
            model(&|v, _| v["remote"] == json!(true)),
        ),
        (json!({ "provider": "xing" }), model(&|_, p| p == "xing")),
        (
            json!({ "skills": ["RUST"] }),
            model(&|v, _| has_skill(v, "rust")),
        ),
        (
            json!({ "skills": ["rust", "websocket"] }),
            model(&|v, _| has_skill(v, "rust") && has_skill(v, "websocket")),
        ),
        (
            json!({ "q": "python" }),
            model(&|v, _| v["title"] == "Backend Python"),
        ),
        (
            json!({ "q": "nordlicht" }),
            model(&|v, _| v["company"] == "Nordlicht IT"),
        ),
        (
            json!({ "q": "rust-entw" }),
            model(&|v, _| v["title"] == "Rust-Entwickler Gateway"),
        ),
        (
            json!({ "q": "tokio", "remote": false, "provider": "freelance.de" }),
            model(&|v, p| {
                has_skill(v, "tokio") && v["remote"] == json!(false) && p == "freelance.de"
            }),
        ),
        (json!({ "q": "nothingmatches" }), vec![]),
        // A word of q begins a word, on both databases: after a hyphen
        // too, never inside one.
        (
            json!({ "q": "entw" }),
            model(&|v, _| v["title"] == "Rust-Entwickler Gateway"),
        ),
        (
            json!({ "q": "Gate RUST" }),
            model(&|v, _| v["title"] == "Rust-Entwickler Gateway"),
        ),
        (json!({ "q": "wickler" }), vec![]),
        (json!({ "q": "ordlicht" }), vec![]),
        (json!({ "q": "ust" }), vec![]),
        (json!({ "q": "sock" }), vec![]),
        (
            json!({ "q": "websock" }),
            model(&|v, _| has_skill(v, "websocket")),
        ),
    ];
    for (filter, expected) in cases {
        let page = ask(&mut ws, json!({ "type": "get_leads", "filter": filter })).await;
        assert_eq!(page["type"], "leads_init", "{page}");
        assert_eq!(ids(&page), expected, "filter {filter}");
        assert_eq!(
            page["pagination"]["total"],
            json!(expected.len()),
            "filter {filter}"
        );
        for lead in page["projects"].as_array().unwrap() {
            assert!(
                lead["provider"].is_string() && lead.get("description").is_none(),
                "{lead}"
            );
        }
    }

    // Paging through remote leads, 4 at a time; the filter is remembered.
    let all_remote = model(&|v, _| v["remote"] == json!(true));
    let first = ask(
        &mut ws,
        json!({ "type": "get_leads", "page_size": 4, "filter": { "remote": true } }),
    )
    .await;
    assert_eq!(ids(&first), all_remote[..4]);
    let second = ask(&mut ws, json!({ "type": "get_leads", "page": 2 })).await;
    assert_eq!(ids(&second), all_remote[4..8]);
    assert_eq!(
        second["pagination"],
        json!({ "page": 2, "page_size": 4, "total": all_remote.len() })
    );
    let last_page = all_remote.len().div_ceil(4) as u32 + 1;
    let beyond = ask(&mut ws, json!({ "type": "get_leads", "page": last_page })).await;
    assert_eq!(ids(&beyond), Vec::<String>::new());

    let details = ask(
        &mut ws,
        json!({ "type": "get_lead_details", "project_id": "p05", "provider": "xing" }),
    )
    .await;
    assert_eq!(details["type"], "lead_details");
    assert_eq!(details["details"]["raw"], json!({ "extra": 5 }));
    let missing = ask(
        &mut ws,
        json!({ "type": "get_lead_details", "project_id": "p05", "provider": "freelance.de" }),
    )
    .await;
    assert_eq!(
        missing,
        json!({ "type": "error", "detail": "lead p05 not found" })
    );
    gw.shutdown().await;
}

async fn each_client_is_pushed_its_own_page(backend: Backend) {
    // Without polling, only the announcement below tells of the import.
    let db = leadgate_tests::TestDb::new(backend).await;
    let gw = Gateway::start_on(db, &["--leads-poll", "0"]).await;
    let mut all = connect(&gw, "alice").await;
    let mut xing = connect(&gw, "bob").await;
    let mut freelance = connect(&gw, "carol").await;
    for ws in [&mut all, &mut xing, &mut freelance] {
        assert_eq!(next(ws).await["pagination"]["total"], 0);
    }
    assert_eq!(
        ids(&ask(
            &mut xing,
            json!({ "type": "get_leads", "provider": "xing" })
        )
        .await)
        .len(),
        0
    );
    ask(
        &mut freelance,
        json!({ "type": "get_leads", "filter": { "provider": "freelance.de" } }),
    )
    .await;

    import(&gw, fixture()).await;
    let (code, body) = gw
        .post(
            "/api/v1/leads/events",
            json!({ "type": "leads_updated", "provider": "xing" }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let pushed = next(&mut all).await;
    assert_eq!(
        (
            pushed["type"].clone(),
            pushed["pagination"]["total"].clone()
        ),
        (json!("leads_updated"), json!(40))
    );
    let pushed = next(&mut xing).await;
    assert_eq!(pushed["pagination"]["total"], 20);
    assert!(
        pushed["projects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["provider"] == "xing")
    );
    // A client that filters another provider is not concerned by xing news.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), freelance.next())
            .await
            .is_err()
    );
    gw.shutdown().await;
}

/// Pages are cached between changes; one asked for the moment an
/// announcement was accepted, before the push that follows it, is read
/// afresh rather than taken from the cache.
async fn a_page_asked_for_after_an_announcement_shows_it(backend: Backend) {
    let db = leadgate_tests::TestDb::new(backend).await;
    let gw = Gateway::start_on(db, &["--leads-poll", "0"]).await;
    let mut first = connect(&gw, "alice").await;
    assert_eq!(next(&mut first).await["pagination"]["total"], 0);
    let remote = json!({ "type": "get_leads", "filter": { "remote": true } });
    assert_eq!(
        ask(&mut first, remote.clone()).await["pagination"]["total"],
        0
    );

    import(&gw, fixture()).await;
    let (code, body) = gw
        .post("/api/v1/leads/events", json!({ "type": "leads_updated" }))
        .await;
    assert_eq!(code, 202, "{body}");
    let mut second = connect(&gw, "bob").await;
    let init = next(&mut second).await;
    assert_eq!(
        (init["type"].clone(), init["pagination"]["total"].clone()),
        (json!("leads_init"), json!(40))
    );
    let asked = ask(&mut second, remote).await;
    assert_eq!(
        (asked["type"].clone(), asked["pagination"]["total"].clone()),
        (json!("leads_init"), json!(14))
    );
    gw.shutdown().await;
}

/// Leads written before `q` matched word starts on both databases kept
/// their punctuation in `search_text`; the migration rewrites them (in
/// batches, so more than one batch here) to the words `q` matches.
async fn the_migration_rewrites_earlier_search_texts(backend: Backend) {
    use leadgate_migration::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;

    let mut db = TestDb::new(backend).await;
    let conn = sea_orm::Database::connect(&db.url).await.unwrap();
    Migrator::up(&conn, Some(2)).await.unwrap();
    for n in 0..1_001 {
        conn.execute_unprepared(&format!(
            "INSERT INTO leads (provider, project_id, title, company, skills, skill_keys, \
             search_text, created_at, updated_at) VALUES ('xing', 'p{n}', \
             'Rust-Entwickler (Senior)', 'Nordlicht IT', '[\"Rust\",\"C++\"]', \
             '[\"rust\",\"c++\"]', 'rust-entwickler (senior) nordlicht it rust c++', \
             '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z')"
        ))
        .await
        .unwrap();
    }
    Migrator::up(&conn, None).await.unwrap();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n, MIN(search_text) AS lo, MAX(search_text) AS hi FROM leads",
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    let lo: String = row.try_get("", "lo").unwrap();
    let hi: String = row.try_get("", "hi").unwrap();
    assert_eq!(n, 1_001);
    assert_eq!(lo, "rust entwickler senior nordlicht it rust c");
    assert_eq!(hi, lo);
    conn.close().await.unwrap();
    db.drop_now().await;
}

/// The gateway answers pages from its in-memory index; the one SQL
/// statement for page and total is what it must agree with, on both
/// databases: for every kind of filter and page, after the first read,
/// after a crawl of new and changed leads, after a write that committed
/// late, and after deletions (which make it read the table again).
async fn the_index_answers_as_sql_does(backend: Backend) {
    use leadgate_protocol::leads::LeadFilter;
    use leadgate_store::{LeadSearch, Store};
    use sea_orm::ConnectionTrait;

    let mut db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();

    const SKILLS: [&str; 6] = ["Rust", "Go", "Python", "Django", "C++", "Node.js"];
    const WORDS: [&str; 8] = [
        "Senior",
        "Rust-Entwickler",
        "Architekt",
        "Über",
        "Backend",
        "Lead",
        "Go",
        "Straße",
    ];
    let mut seed: u64 = 11;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let mut lead = |n: usize, generation: usize| -> LeadInput {
        let skills: Vec<&str> = (0..next() % 4)
            .map(|_| SKILLS[next() % SKILLS.len()])
            .collect();
        let title: Vec<&str> = (0..1 + next() % 3)
            .map(|_| WORDS[next() % WORDS.len()])
            .collect();
        // Few distinct dates, so that many leads share one; some undated.
        let posted_at = match next() % 5 {
            0 => Value::Null,
            d => json!(format!("2026-0{d}-0{}T12:00:00Z", 1 + generation)),
        };
        let remote = match next() % 3 {
            0 => Value::Null,
            r => json!(r == 1),
        };
        LeadInput::from_value(
            json!({
                "project_id": format!("p{n}"),
                "title": title.join(" "),
                "company": if n.is_multiple_of(4) { json!("Nordlicht IT") } else { Value::Null },
                "remote": remote,
                "skills": skills,
                "posted_at": posted_at,
            }),
            n,
        )
        .unwrap()
    };
    for (provider, range) in [("xing", 0..700), ("gulp", 700..1300), ("malt", 1300..1500)] {
        let leads: Vec<LeadInput> = range.map(|n| lead(n, 0)).collect();
        store.upsert_leads(provider, leads).await.unwrap();
    }

    let filters: Vec<Value> = vec![
        json!({}),
        json!({ "provider": "xing" }),
        json!({ "provider": "nobody" }),
        json!({ "remote": true }),
        json!({ "remote": false, "provider": "gulp" }),
        json!({ "skills": ["rust"] }),
        json!({ "skills": ["python", "django"] }),
        json!({ "skills": ["c++"], "remote": true }),
        json!({ "skills": ["cobol"] }),
        json!({ "q": "senior" }),
        json!({ "q": "ENTW" }),
        json!({ "q": "rust archi" }),
        json!({ "q": "stra über" }),
        json!({ "q": "node", "provider": "malt" }),
        json!({ "q": "nordlicht go", "skills": ["go"], "remote": false }),
        json!({ "q": "wickler" }),
    ];
    let search = LeadSearch::new();
    let done = search.refresh(&store, true).await.unwrap();
    assert!(done.whole && done.leads == 1500, "{done:?}");
    agree(&store, &search, &filters, "first read").await;

    // A crawl: new leads, and leads with new dates, skills and titles.
    let crawl: Vec<LeadInput> = (0..300)
        .map(|i| {
            if i < 150 {
                lead(1500 + i, 1)
            } else {
                lead((i - 150) * 4, 1)
            }
        })
        .collect();
    store.upsert_leads("xing", crawl).await.unwrap();
    let done = search.refresh(&store, false).await.unwrap();
    assert!(!done.whole && done.leads == 1650, "{done:?}");
    let done = search.refresh(&store, true).await.unwrap();
    assert!(!done.whole && done.leads == 1650, "counted: {done:?}");
    agree(&store, &search, &filters, "after a crawl").await;

    // A writer whose transaction committed a minute after it stamped its
    // rows: older than the last read, still read. It repeats a skill, which
    // must not repeat the lead on a page.
    let conn = sea_orm::Database::connect(&db.url).await.unwrap();
    let a_minute_ago = (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339();
    conn.execute_unprepared(&format!(
        "UPDATE leads SET skill_keys = '[\"cobol\",\"rust\",\"cobol\",\"rust\"]', search_text = 'cobol', \
         updated_at = '{a_minute_ago}' WHERE project_id LIKE 'p2%'"
    ))
    .await
    .unwrap();
    let done = search.refresh(&store, false).await.unwrap();
    assert!(!done.whole, "{done:?}");
    agree(&store, &search, &filters, "after a late write").await;
    let cobol: LeadFilter = serde_json::from_value(json!({ "skills": ["cobol"] })).unwrap();
    // p2, p20–p29 and p200–p299, all of xing.
    assert_eq!(search.page(&cobol, 0, 10).unwrap().1, 111);

    // Deleted leads: not seen by reading what changed; the check that
    // counts them reads the table again.
    conn.execute_unprepared("DELETE FROM leads WHERE project_id LIKE 'p1%'")
        .await
        .unwrap();
    let done = search.refresh(&store, false).await.unwrap();
    assert!(!done.whole, "{done:?}");
    let done = search.refresh(&store, true).await.unwrap();
    assert!(done.whole, "{done:?}");
    agree(&store, &search, &filters, "after deletions").await;

    conn.close().await.unwrap();
    store.close().await.unwrap();
    db.drop_now().await;
}

/// Every filter at several pages and page sizes: the same leads in the
/// same order, and the same total, from the index as from SQL.
async fn agree(
    store: &leadgate_store::Store,
    search: &leadgate_store::LeadSearch,
    filters: &[Value],
    when: &str,
) {
    use leadgate_protocol::leads::{LeadFilter, LeadsQuery};

    for f in filters {
        let filter: LeadFilter = serde_json::from_value::<LeadFilter>(f.clone())
            .unwrap()
            .normalized()
            .unwrap();
        for (page, page_size) in [(1, 100), (2, 7), (3, 50), (40, 1), (1, 500), (99, 100)] {
            let query = LeadsQuery {
                page,
                page_size,
                filter: filter.clone(),
            };
            let (sql_page, sql_total) = store.leads_page(&query).await.unwrap();
            let (ids, total) = search
                .page(&query.filter, query.offset(), u64::from(page_size))
                .expect("the index was read");
            let index_page = store.leads_by_ids(&ids).await.unwrap();
            assert_eq!(
                total, sql_total,
                "{when}: total of {f}, page {page} of {page_size}"
            );
            assert!(
                index_page == sql_page,
                "{when}: page {page} of {page_size} of {f}: index {:?}, SQL {:?}",
                index_page.iter().map(|l| &l.project_id).collect::<Vec<_>>(),
                sql_page.iter().map(|l| &l.project_id).collect::<Vec<_>>()
            );
        }
    }
}
