//! One suite, two backends: every test below runs on SQLite (a temp file) always, and on
//! PostgreSQL when `VOXBRIDGE_TEST_PG_URL` is set (an admin URL; each test creates and then
//! drops its own database). Start a local server with `eval "$(scripts/pg.sh start)"`.

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::json;
use sqlx::Connection as _;
use voxbridge_store::{CallFilter, NewCall, NewToolCall, StatusChange, Store, StoreError};

type TestResult = Result<(), StoreError>;

/// A fresh database for one test.
#[derive(Clone)]
struct TestDb {
    store: Store,
    url: String,
}

enum Cleanup {
    Sqlite(PathBuf),
    Postgres { admin_url: String, db: String },
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn sqlite_db() -> (TestDb, Cleanup) {
    let path = std::env::temp_dir().join(format!("voxbridge-store-test-{}.db", random_suffix()));
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url).await.expect("connect sqlite");
    (TestDb { store, url }, Cleanup::Sqlite(path))
}

/// `admin` with its database name replaced by `db` (query string kept).
fn pg_url_for(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let (scheme, rest) = base.split_once("://").expect("a postgres:// URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut url = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

async fn pg_db() -> Option<(TestDb, Cleanup)> {
    let admin_url = std::env::var("VOXBRIDGE_TEST_PG_URL")
        .ok()
        .filter(|v| !v.is_empty())?;
    let db = format!("vbtest_{}", random_suffix());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to VOXBRIDGE_TEST_PG_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    admin.close().await.ok();
    let url = pg_url_for(&admin_url, &db);
    let store = Store::connect(&url).await.expect("connect postgres");
    Some((TestDb { store, url }, Cleanup::Postgres { admin_url, db }))
}

async fn cleanup(db: TestDb, c: Cleanup) {
    db.store.close().await;
    match c {
        Cleanup::Sqlite(path) => {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
        Cleanup::Postgres { admin_url, db } => {
            if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                let sql = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                {
                    eprintln!("could not drop {db}: {e}");
                }
                admin.close().await.ok();
            }
        }
    }
}

/// Runs a test on a spawned task so that a panic still lets the database be cleaned up.
async fn run<F, Fut>(db: TestDb, c: Cleanup, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = TestResult> + Send + 'static,
{
    let outcome = tokio::spawn(test(db.clone())).await;
    cleanup(db, c).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("test failed: {e}"),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (db, c) = super::sqlite_db().await;
                    super::run(db, c, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some((db, c)) = super::pg_db().await else {
                        eprintln!("VOXBRIDGE_TEST_PG_URL is not set: skipping the PostgreSQL \
                                   variant (start one with scripts/pg.sh start)");
                        return;
                    };
                    super::run(db, c, super::$name).await;
                }
            )*
        }
    };
}

suite!(
    create_and_get,
    idempotency_conflict_and_lookup,
    duplicate_id_conflicts,
    twilio_and_stream_sids,
    status_history_and_terminal_rule,
    finish_call_first_reason_wins,
    usage_increments,
    recording_and_answered_by,
    updates_on_unknown_call_are_not_found,
    list_calls_filters,
    list_calls_pagination_with_equal_timestamps,
    list_calls_bad_cursor_and_limit_clamp,
    transcript_concurrent_inserts,
    events_round_trip,
    tool_calls_round_trip,
    api_keys_lifecycle,
    migrations_are_idempotent,
    campaign_create_and_counts,
    dispatch_dials_defers_refuses,
    dispatch_respects_concurrency_and_pacing,
    concurrent_dispatchers_dial_each_contact_once,
    finish_attempt_retry_final_and_idempotent,
    concurrent_last_finishes_complete_the_campaign,
    campaign_paused_through_its_last_call_completes_on_resume,
    not_placed_and_expired_leases,
    dnc_closes_waiting_contacts,
    cancel_and_complete,
    survey_responses_round_trip,
);

// ---------------------------------------------------------------------------------------------

fn new_call(id: &str, created_at_ms: i64) -> NewCall {
    NewCall {
        id: id.to_owned(),
        direction: "outbound".to_owned(),
        from_number: "+15550001111".to_owned(),
        to_number: "+15550002222".to_owned(),
        agent: "support".to_owned(),
        task: None,
        status: "queued".to_owned(),
        api_key_id: None,
        idempotency_key: None,
        twilio_call_sid: None,
        created_at_ms,
    }
}

fn call_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn create_and_get(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    let mut new = new_call(&id, 1_000);
    new.task = Some(json!({"goal": "book a table", "party": 4, "names": ["Ann", "Bo"]}));
    new.direction = "inbound".into();
    let created = s.create_call(&new).await?;
    assert_eq!(created.id, id);
    assert_eq!(created.direction, "inbound");
    assert_eq!(created.task, new.task);
    assert_eq!(created.status, "queued");
    assert_eq!(
        created.status_history,
        vec![StatusChange {
            status: "queued".into(),
            at_ms: 1_000
        }]
    );
    assert_eq!(created.created_at_ms, 1_000);
    assert_eq!(
        (
            created.input_tokens,
            created.output_tokens,
            created.cached_tokens
        ),
        (0, 0, 0)
    );
    assert!(created.twilio_call_sid.is_none() && created.ended_at_ms.is_none());

    let got = s.get_call(&id).await?.expect("stored");
    assert_eq!(got, created);
    assert!(s.get_call("no-such-call").await?.is_none());

    let mut bad = new_call(&call_id(), 1);
    bad.direction = "sideways".into();
    assert!(matches!(
        s.create_call(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    Ok(())
}

async fn idempotency_conflict_and_lookup(db: TestDb) -> TestResult {
    let s = &db.store;
    let mut a = new_call(&call_id(), 10);
    a.api_key_id = Some("key-1".into());
    a.idempotency_key = Some("idem-1".into());
    let first = s.create_call(&a).await?;

    let mut b = new_call(&call_id(), 11);
    b.api_key_id = Some("key-1".into());
    b.idempotency_key = Some("idem-1".into());
    match s.create_call(&b).await {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("idempotency"), "{msg}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(s.get_call(&b.id).await?.is_none());

    // same idempotency key under another API key, and calls without keys: fine
    b.api_key_id = Some("key-2".into());
    s.create_call(&b).await?;
    s.create_call(&new_call(&call_id(), 12)).await?;
    s.create_call(&new_call(&call_id(), 13)).await?;

    assert_eq!(
        s.call_by_idempotency_key("key-1", "idem-1").await?,
        Some(first)
    );
    assert_eq!(
        s.call_by_idempotency_key("key-2", "idem-1")
            .await?
            .map(|c| c.id),
        Some(b.id)
    );
    assert!(
        s.call_by_idempotency_key("key-3", "idem-1")
            .await?
            .is_none()
    );
    Ok(())
}

async fn duplicate_id_conflicts(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    assert!(matches!(
        s.create_call(&new_call(&id, 2)).await,
        Err(StoreError::Conflict(_))
    ));
    Ok(())
}

async fn twilio_and_stream_sids(db: TestDb) -> TestResult {
    let s = &db.store;
    let (a, b) = (call_id(), call_id());
    s.create_call(&new_call(&a, 1)).await?;
    s.create_call(&new_call(&b, 2)).await?;
    s.set_twilio_sid(&a, "CA123").await?;
    s.set_stream_sid(&a, "MZ456").await?;
    let got = s.call_by_twilio_sid("CA123").await?.expect("by sid");
    assert_eq!(got.id, a);
    assert_eq!(got.stream_sid.as_deref(), Some("MZ456"));
    assert!(s.call_by_twilio_sid("CA999").await?.is_none());
    assert!(matches!(
        s.set_twilio_sid(&b, "CA123").await,
        Err(StoreError::Conflict(_))
    ));
    // Known at creation (an inbound webhook): written by the insert, and a second call
    // with the same sid is a Conflict that names the sid, with no row written.
    let c = call_id();
    let created = s
        .create_call(&NewCall {
            twilio_call_sid: Some("CA777".into()),
            ..new_call(&c, 3)
        })
        .await?;
    assert_eq!(created.twilio_call_sid.as_deref(), Some("CA777"));
    assert_eq!(s.call_by_twilio_sid("CA777").await?.map(|r| r.id), Some(c));
    let d = call_id();
    match s
        .create_call(&NewCall {
            twilio_call_sid: Some("CA777".into()),
            ..new_call(&d, 4)
        })
        .await
    {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("CA777"), "{msg}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(s.get_call(&d).await?.is_none());
    Ok(())
}

async fn status_history_and_terminal_rule(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 100)).await?;
    let r = s.update_status(&id, "ringing", 200).await?;
    assert_eq!(r.status, "ringing");
    assert!(r.answered_at_ms.is_none());
    let r = s.update_status(&id, "in-progress", 300).await?;
    assert_eq!(r.status, "in-progress");
    assert_eq!(r.answered_at_ms, Some(300));
    // a second in-progress does not move answered_at_ms
    let r = s.update_status(&id, "in-progress", 350).await?;
    assert_eq!(r.answered_at_ms, Some(300));
    let r = s.update_status(&id, "completed", 400).await?;
    assert_eq!(r.status, "completed");
    // terminal: history grows, status stays
    let r = s.update_status(&id, "ringing", 500).await?;
    assert_eq!(r.status, "completed");
    let r = s.update_status(&id, "failed", 600).await?;
    assert_eq!(r.status, "completed");
    let hist: Vec<(&str, i64)> = r
        .status_history
        .iter()
        .map(|c| (c.status.as_str(), c.at_ms))
        .collect();
    assert_eq!(
        hist,
        vec![
            ("queued", 100),
            ("ringing", 200),
            ("in-progress", 300),
            ("in-progress", 350),
            ("completed", 400),
            ("ringing", 500),
            ("failed", 600),
        ]
    );
    assert_eq!(s.get_call(&id).await?.expect("call"), r);

    // in-progress after a terminal status does not set answered_at_ms
    let id2 = call_id();
    s.create_call(&new_call(&id2, 1)).await?;
    s.update_status(&id2, "no-answer", 2).await?;
    let r = s.update_status(&id2, "in-progress", 3).await?;
    assert_eq!((r.status.as_str(), r.answered_at_ms), ("no-answer", None));

    // strings that need escaping survive the JSON history on both backends
    let r = s.update_status(&id2, "we\"ird\\ one", 4).await?;
    assert_eq!(
        r.status_history.last().map(|c| c.status.as_str()),
        Some("we\"ird\\ one")
    );

    assert!(matches!(
        s.update_status("missing", "ringing", 1).await,
        Err(StoreError::NotFound)
    ));

    // concurrent updates: none lost
    let id3 = call_id();
    s.create_call(&new_call(&id3, 0)).await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = s.clone();
        let id3 = id3.clone();
        tasks.push(tokio::spawn(async move {
            s.update_status(&id3, "ringing", i + 1).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("join")?;
    }
    let r = s.get_call(&id3).await?.expect("call");
    assert_eq!(r.status_history.len(), 11);
    Ok(())
}

async fn finish_call_first_reason_wins(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    s.finish_call(&id, Some("agent_hangup"), 5_000, None)
        .await?;
    s.finish_call(&id, Some("twilio_completed"), 6_000, Some(42))
        .await?;
    s.finish_call(&id, None, 7_000, None).await?;
    let r = s.get_call(&id).await?.expect("call");
    assert_eq!(r.end_reason.as_deref(), Some("agent_hangup"));
    assert_eq!(r.ended_at_ms, Some(5_000));
    assert_eq!(r.duration_s, Some(42));

    // a first finish without a reason lets a later one set it
    let id2 = call_id();
    s.create_call(&new_call(&id2, 1)).await?;
    s.finish_call(&id2, None, 10, None).await?;
    s.finish_call(&id2, Some("caller_hangup"), 20, None).await?;
    let r = s.get_call(&id2).await?.expect("call");
    assert_eq!(r.end_reason.as_deref(), Some("caller_hangup"));
    assert_eq!(r.ended_at_ms, Some(10));
    assert_eq!(r.duration_s, None);
    Ok(())
}

async fn usage_increments(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    s.add_usage(&id, 100, 50, 10).await?;
    s.add_usage(&id, 1, 2, 3).await?;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = s.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move { s.add_usage(&id, 1, 1, 1).await }));
    }
    for t in tasks {
        t.await.expect("join")?;
    }
    let r = s.get_call(&id).await?.expect("call");
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.cached_tokens),
        (111, 62, 23)
    );
    // large values stay exact (i64 on both backends)
    s.add_usage(&id, 5_000_000_000, 0, 0).await?;
    let r = s.get_call(&id).await?.expect("call");
    assert_eq!(r.input_tokens, 5_000_000_111);
    Ok(())
}

async fn recording_and_answered_by(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    s.set_answered_by(&id, "machine_end_beep").await?;
    s.set_recording(&id, "RE1", "https://api.twilio.com/rec/RE1", Some(93))
        .await?;
    let r = s.get_call(&id).await?.expect("call");
    assert_eq!(r.answered_by.as_deref(), Some("machine_end_beep"));
    assert_eq!(r.recording_sid.as_deref(), Some("RE1"));
    assert_eq!(
        r.recording_url.as_deref(),
        Some("https://api.twilio.com/rec/RE1")
    );
    assert_eq!(r.recording_duration_s, Some(93));
    Ok(())
}

async fn updates_on_unknown_call_are_not_found(db: TestDb) -> TestResult {
    let s = &db.store;
    let nf = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NotFound));
    assert!(nf(s.set_twilio_sid("x", "CA1").await));
    assert!(nf(s.set_stream_sid("x", "MZ1").await));
    assert!(nf(s.set_answered_by("x", "human").await));
    assert!(nf(s.finish_call("x", Some("r"), 1, None).await));
    assert!(nf(s.add_usage("x", 1, 1, 1).await));
    assert!(nf(s.set_recording("x", "RE", "u", None).await));
    assert!(nf(s
        .add_transcript("x", "agent", "hi", None, None, 1)
        .await));
    assert!(nf(s.add_event("x", "k", &json!({}), 1).await));
    let t = NewToolCall {
        name: "n".into(),
        arguments: "{}".into(),
        result: "{}".into(),
        ok: true,
        duration_ms: 1,
        at_ms: 1,
    };
    assert!(nf(s.add_tool_call("x", &t).await));
    Ok(())
}

async fn list_calls_filters(db: TestDb) -> TestResult {
    let s = &db.store;
    let mut ids = Vec::new();
    for i in 0..6i64 {
        let id = format!("call-{i}");
        let mut c = new_call(&id, 1_000 + i * 10);
        if i % 2 == 0 {
            c.direction = "inbound".into();
        }
        if i == 3 {
            c.from_number = "+15559990000".into();
        }
        if i == 4 {
            c.to_number = "+15559990000".into();
        }
        s.create_call(&c).await?;
        ids.push(id);
    }
    s.update_status("call-1", "completed", 2_000).await?;
    s.update_status("call-2", "completed", 2_000).await?;

    let list = |f: CallFilter| async move {
        let page = s.list_calls(&f, None, 200).await?;
        assert!(page.next_cursor.is_none());
        Ok::<_, StoreError>(page.calls.into_iter().map(|c| c.id).collect::<Vec<_>>())
    };
    assert_eq!(
        list(CallFilter::default()).await?,
        ["call-5", "call-4", "call-3", "call-2", "call-1", "call-0"]
    );
    assert_eq!(
        list(CallFilter {
            status: Some("completed".into()),
            ..Default::default()
        })
        .await?,
        ["call-2", "call-1"]
    );
    assert_eq!(
        list(CallFilter {
            direction: Some("inbound".into()),
            ..Default::default()
        })
        .await?,
        ["call-4", "call-2", "call-0"]
    );
    assert_eq!(
        list(CallFilter {
            number: Some("+15559990000".into()),
            ..Default::default()
        })
        .await?,
        ["call-4", "call-3"]
    );
    assert_eq!(
        list(CallFilter {
            created_after_ms: Some(1_020),
            created_before_ms: Some(1_040),
            ..Default::default()
        })
        .await?,
        ["call-3", "call-2"]
    );
    assert_eq!(
        list(CallFilter {
            status: Some("completed".into()),
            direction: Some("inbound".into()),
            ..Default::default()
        })
        .await?,
        ["call-2"]
    );
    assert!(
        list(CallFilter {
            number: Some("+10000000000".into()),
            ..Default::default()
        })
        .await?
        .is_empty()
    );
    Ok(())
}

async fn list_calls_pagination_with_equal_timestamps(db: TestDb) -> TestResult {
    let s = &db.store;
    // 23 calls, many sharing a timestamp: 7 at t=100, 9 at t=200, 7 at t=300
    let mut expected = Vec::new();
    for i in 0..23 {
        let ts = match i {
            0..7 => 100,
            7..16 => 200,
            _ => 300,
        };
        let id = format!("c{:02}-{}", (i * 7) % 23, call_id());
        s.create_call(&new_call(&id, ts)).await?;
        expected.push((ts, id));
    }
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    for page_size in [1u32, 4, 5, 7, 23, 50] {
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = s
                .list_calls(&CallFilter::default(), cursor.as_deref(), page_size)
                .await?;
            assert!(page.calls.len() <= page_size as usize);
            got.extend(page.calls.into_iter().map(|c| c.id));
            pages += 1;
            assert!(pages <= 30, "pagination does not terminate");
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(got, expected, "page size {page_size}");
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), 23);
    }

    // pagination combined with a filter
    let f = CallFilter {
        created_before_ms: Some(300),
        ..Default::default()
    };
    let p1 = s.list_calls(&f, None, 10).await?;
    assert_eq!(p1.calls.len(), 10);
    let p2 = s.list_calls(&f, p1.next_cursor.as_deref(), 10).await?;
    assert_eq!(p2.calls.len(), 6);
    assert!(p2.next_cursor.is_none());
    Ok(())
}

async fn list_calls_bad_cursor_and_limit_clamp(db: TestDb) -> TestResult {
    let s = &db.store;
    for i in 0..3 {
        s.create_call(&new_call(&call_id(), i)).await?;
    }
    for bad in ["not base64!", "bm9jb2xvbg", "YWJjOmRlZg", ""] {
        // "nocolon", "abc:def"
        assert!(
            matches!(
                s.list_calls(&CallFilter::default(), Some(bad), 10).await,
                Err(StoreError::InvalidCursor)
            ),
            "{bad:?}"
        );
    }
    // limit 0 is clamped to 1
    let page = s.list_calls(&CallFilter::default(), None, 0).await?;
    assert_eq!(page.calls.len(), 1);
    assert!(page.next_cursor.is_some());
    // huge limits are clamped to 200 (and still return everything here)
    let page = s.list_calls(&CallFilter::default(), None, u32::MAX).await?;
    assert_eq!(page.calls.len(), 3);
    Ok(())
}

async fn transcript_concurrent_inserts(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    let other = call_id();
    s.create_call(&new_call(&other, 1)).await?;
    s.add_transcript(&other, "caller", "other call", None, None, 1)
        .await?;

    let mut tasks = Vec::new();
    for t in 0..10i64 {
        let s = s.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..5i64 {
                let speaker = if t % 2 == 0 { "caller" } else { "agent" };
                s.add_transcript(
                    &id,
                    speaker,
                    &format!("task {t} line {k}"),
                    Some(k * 100),
                    Some(k * 100 + 50),
                    t * 1_000 + k,
                )
                .await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await.expect("join")?;
    }
    let items = s.transcript(&id).await?;
    assert_eq!(items.len(), 50);
    let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    // each task's own lines keep their order
    for t in 0..10 {
        let mine: Vec<&str> = items
            .iter()
            .filter(|i| i.text.starts_with(&format!("task {t} ")))
            .map(|i| i.text.as_str())
            .collect();
        let want: Vec<String> = (0..5).map(|k| format!("task {t} line {k}")).collect();
        assert_eq!(mine, want);
    }
    let first = items
        .iter()
        .find(|i| i.text == "task 3 line 2")
        .expect("line");
    assert_eq!(
        (
            first.speaker.as_str(),
            first.start_ms,
            first.end_ms,
            first.at_ms
        ),
        ("agent", Some(200), Some(250), 3_002)
    );

    let o = s.transcript(&other).await?;
    assert_eq!(o.len(), 1);
    assert_eq!((o[0].seq, o[0].text.as_str()), (1, "other call"));
    assert!(s.transcript("missing").await?.is_empty());
    assert!(matches!(
        s.add_transcript(&id, "robot", "x", None, None, 1).await,
        Err(StoreError::Invalid(_))
    ));
    Ok(())
}

async fn events_round_trip(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    let d1 = json!({"type": "stream_started", "stream_sid": "MZ1", "n": 1.5, "nested": {"a": [1, null, "x"]}});
    let d2 = json!("just a string with \"quotes\" and unicode é ☎");
    s.add_event(&id, "stream_started", &d1, 10).await?;
    s.add_event(&id, "note", &d2, 5).await?;
    s.add_event(&id, "empty", &json!(null), 20).await?;
    let ev = s.events(&id).await?;
    assert_eq!(ev.len(), 3);
    assert_eq!(
        (ev[0].kind.as_str(), &ev[0].data, ev[0].at_ms),
        ("stream_started", &d1, 10)
    );
    assert_eq!(
        (ev[1].kind.as_str(), &ev[1].data, ev[1].at_ms),
        ("note", &d2, 5)
    );
    assert_eq!(ev[2].data, json!(null));
    assert!(s.events("missing").await?.is_empty());
    Ok(())
}

async fn tool_calls_round_trip(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    let a = NewToolCall {
        name: "end_call".into(),
        arguments: r#"{"reason":"done"}"#.into(),
        result: r#"{"ok":true}"#.into(),
        ok: true,
        duration_ms: 3,
        at_ms: 100,
    };
    let b = NewToolCall {
        name: "http_lookup".into(),
        arguments: "{}".into(),
        result: "timeout".into(),
        ok: false,
        duration_ms: 5_000,
        at_ms: 200,
    };
    s.add_tool_call(&id, &a).await?;
    s.add_tool_call(&id, &b).await?;
    let got = s.tool_calls(&id).await?;
    assert_eq!(got.len(), 2);
    assert!(got[0].id < got[1].id);
    for (g, w) in got.iter().zip([&a, &b]) {
        assert_eq!(
            (
                &g.name,
                &g.arguments,
                &g.result,
                g.ok,
                g.duration_ms,
                g.at_ms
            ),
            (
                &w.name,
                &w.arguments,
                &w.result,
                w.ok,
                w.duration_ms,
                w.at_ms
            )
        );
    }
    assert!(s.tool_calls("missing").await?.is_empty());
    Ok(())
}

async fn api_keys_lifecycle(db: TestDb) -> TestResult {
    let s = &db.store;
    let (k1, secret1) = s.create_api_key("ci").await?;
    let (k2, secret2) = s.create_api_key("dashboard").await?;
    assert!(secret1.starts_with("vbk_"));
    assert_eq!(secret1.len(), 4 + 43);
    assert_eq!(k1.prefix, &secret1[..12]);
    assert_ne!(secret1, secret2);
    assert_ne!(k1.id, k2.id);
    assert_eq!(k1.name, "ci");
    assert!(k1.revoked_at_ms.is_none() && k1.last_used_at_ms.is_none());

    // verify, and last_used_at_ms is set once, then not rewritten within a minute
    let v = s.verify_api_key(&secret1).await?.expect("valid key");
    assert_eq!(v.id, k1.id);
    let used = v.last_used_at_ms.expect("last used set");
    let v2 = s.verify_api_key(&secret1).await?.expect("valid key");
    assert_eq!(v2.last_used_at_ms, Some(used));

    // unknown, malformed and near-miss secrets fail
    assert!(s.verify_api_key("vbk_nope").await?.is_none());
    assert!(s.verify_api_key("").await?.is_none());
    assert!(
        s.verify_api_key(&secret1[..secret1.len() - 1])
            .await?
            .is_none()
    );
    assert!(s.verify_api_key(&secret1.to_uppercase()).await?.is_none());
    assert!(s.verify_api_key(&"vbk_x".repeat(1000)).await?.is_none());

    // list: both, no secrets
    let keys = s.list_api_keys().await?;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].id, k1.id);
    assert_eq!(keys[0].last_used_at_ms, Some(used));
    assert_eq!(keys[1].id, k2.id);
    let listed = serde_json::to_string(&keys).map_err(|e| StoreError::Invalid(e.to_string()))?;
    assert!(!listed.contains(&secret1) && !listed.contains(&secret2));

    // revoke by prefix, then by id
    assert!(s.revoke_api_key(&k1.prefix).await?);
    assert!(s.verify_api_key(&secret1).await?.is_none());
    assert!(!s.revoke_api_key(&k1.prefix).await?, "already revoked");
    assert!(s.verify_api_key(&secret2).await?.is_some());
    assert!(s.revoke_api_key(&k2.id).await?);
    assert!(s.verify_api_key(&secret2).await?.is_none());
    assert!(!s.revoke_api_key("vbk_unknown").await?);

    let keys = s.list_api_keys().await?;
    assert!(keys.iter().all(|k| k.revoked_at_ms.is_some()));
    Ok(())
}

async fn migrations_are_idempotent(db: TestDb) -> TestResult {
    let s = &db.store;
    let id = call_id();
    s.create_call(&new_call(&id, 1)).await?;
    s.migrate().await?;
    let again = Store::connect(&db.url).await?;
    assert_eq!(again.backend(), s.backend());
    again.migrate().await?;
    assert!(again.get_call(&id).await?.is_some());
    again.close().await;
    Ok(())
}

#[test]
fn pg_url_replaces_the_database() {
    assert_eq!(
        pg_url_for("postgres://postgres@127.0.0.1:55432/postgres", "vbtest_x"),
        "postgres://postgres@127.0.0.1:55432/vbtest_x"
    );
    assert_eq!(
        pg_url_for("postgresql://u:p@h/db?sslmode=disable", "t"),
        "postgresql://u:p@h/t?sslmode=disable"
    );
    assert_eq!(pg_url_for("postgres://h:1", "t"), "postgres://h:1/t");
}

// -- campaigns --------------------------------------------------------------------------------

use voxbridge_store::{
    ContactFilter, ContactNext, DialTicket, DispatchChoice, DispatchLimits, FinishInput,
    NewCampaign, NewContact,
};

/// A campaign `id` of `n` contacts, all dialed at once.
async fn dialed_campaign(s: &Store, id: &str, n: usize) -> Result<Vec<DialTicket>, StoreError> {
    s.create_campaign(&new_campaign(id, 10, 0), &contacts(n))
        .await?;
    let t = s
        .dispatch(id, &limits(5_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert_eq!(t.len(), n);
    Ok(t)
}

/// The decision for a call that reached the person.
fn talked(_: &FinishInput<'_>) -> ContactNext {
    ContactNext::Final {
        state: "completed",
        code: "COMPLETED".into(),
        message: "talked".into(),
    }
}

fn new_campaign(id: &str, max_concurrent: i64, calls_per_minute: i64) -> NewCampaign {
    NewCampaign {
        id: id.into(),
        name: format!("campaign {id}"),
        agent: "default".into(),
        task: Some(json!({"prompt": "remind them"})),
        from_number: "+15550000000".into(),
        policy: json!({}),
        max_concurrent,
        calls_per_minute,
        failure_threshold: 0.5,
        api_key_id: None,
        created_at_ms: 1_000,
    }
}

fn contacts(n: usize) -> Vec<NewContact> {
    (0..n)
        .map(|i| NewContact {
            row_number: i as i64 + 2,
            phone: format!("+1212555{:04}", i),
            name: Some(format!("Person {i}")),
            timezone: None,
            consent: true,
            context: json!({"i": i}),
        })
        .collect()
}

fn limits(now_ms: i64, node: &str) -> DispatchLimits {
    DispatchLimits {
        now_ms,
        node: node.into(),
        lease_ms: 30_000,
        node_free: 1_000,
    }
}

async fn campaign_create_and_counts(db: TestDb) -> TestResult {
    let s = &db.store;
    let c = s
        .create_campaign(&new_campaign("c1", 5, 0), &contacts(3))
        .await?;
    assert_eq!(c.status, "active");
    assert_eq!(c.task, Some(json!({"prompt": "remind them"})));
    let counts = s.campaign_counts("c1").await?;
    assert_eq!((counts.total, counts.pending), (3, 3));
    assert_eq!(counts.next_due_at_ms, Some(1_000));
    // a duplicate number in one import: nothing is written
    let mut dup = contacts(2);
    dup.push(dup[0].clone());
    assert!(matches!(
        s.create_campaign(&new_campaign("c2", 5, 0), &dup).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.get_campaign("c2").await?.is_none());
    // adding a number already in the campaign: Conflict, nothing added
    let again = vec![contacts(4)[3].clone(), contacts(1)[0].clone()];
    assert!(matches!(
        s.add_contacts("c1", &again, 2_000).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.campaign_counts("c1").await?.total, 3);
    assert_eq!(s.add_contacts("c1", &contacts(5)[3..], 2_000).await?, 2);
    assert_eq!(s.campaign_phones("c1").await?.len(), 5);
    assert!(matches!(
        s.add_contacts("nope", &contacts(1), 2_000).await,
        Err(StoreError::NotFound)
    ));
    Ok(())
}

async fn dispatch_dials_defers_refuses(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_campaign(&new_campaign("c1", 10, 0), &contacts(3))
        .await?;
    let tickets = s
        .dispatch("c1", &limits(5_000, "n1"), |inp| {
            match inp.contact.row_number {
                2 => DispatchChoice::Dial,
                3 => DispatchChoice::Defer {
                    until_ms: 90_000,
                    code: "OUTSIDE_WINDOW".into(),
                    message: "too early".into(),
                },
                _ => DispatchChoice::Refuse {
                    state: "refused",
                    code: "NO_CONSENT".into(),
                    message: "no consent".into(),
                },
            }
        })
        .await?;
    assert_eq!(tickets.len(), 1);
    let t = &tickets[0];
    assert_eq!(t.attempt.state, "dialing");
    assert_eq!(t.attempt.seq, 1);
    assert_eq!(t.contact.state, "dialing");
    assert_eq!(t.contact.attempts, 1);
    let call = s.get_call(&t.attempt.call_id).await?.expect("call row");
    assert_eq!(call.status, "queued");
    assert_eq!(call.to_number, t.contact.phone);
    assert_eq!(
        call.task
            .as_ref()
            .and_then(|v| v["task"]["context"]["i"].as_str()),
        Some("0")
    );
    assert_eq!(
        call.task.as_ref().map(|v| v["task"]["prompt"].clone()),
        Some(json!("remind them"))
    );
    let all = s.list_contacts("c1", &ContactFilter::default()).await?;
    assert_eq!(all[1].state, "deferred");
    assert_eq!(all[1].next_run_at_ms, 90_000);
    assert_eq!(all[1].reason_code.as_deref(), Some("OUTSIDE_WINDOW"));
    assert_eq!(all[2].state, "refused");
    let log = s.contact_log(&all[1].id).await?;
    assert_eq!(log.last().map(|l| l.kind.as_str()), Some("deferred"));
    // the deferred contact is not due before 90 s; nothing else is due
    let again = s
        .dispatch("c1", &limits(60_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert!(again.is_empty());
    // history reaches decide(): the dialing attempt is visible for that number
    s.create_campaign(&new_campaign("c2", 10, 0), &contacts(1))
        .await?;
    let mut seen = 0;
    let t2 = s
        .dispatch("c2", &limits(6_000, "n1"), |inp| {
            seen = inp.history.len();
            DispatchChoice::Dial
        })
        .await?;
    assert_eq!(seen, 1);
    // …and a second live call to the same number is deferred, not dialed
    assert!(t2.is_empty());
    let c2 = s.list_contacts("c2", &ContactFilter::default()).await?;
    assert_eq!(c2[0].reason_code.as_deref(), Some("NUMBER_BUSY_HERE"));
    Ok(())
}

async fn dispatch_respects_concurrency_and_pacing(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_campaign(&new_campaign("c1", 2, 0), &contacts(5))
        .await?;
    let t = s
        .dispatch("c1", &limits(5_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert_eq!(t.len(), 2, "max_concurrent = 2");
    let t = s
        .dispatch("c1", &limits(5_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert!(t.is_empty(), "two calls live");
    // node limit
    s.create_campaign(&new_campaign("c2", 10, 0), &contacts(20)[10..])
        .await?;
    let mut lim = limits(5_000, "n1");
    lim.node_free = 1;
    assert_eq!(
        s.dispatch("c2", &lim, |_| DispatchChoice::Dial)
            .await?
            .len(),
        1
    );
    // pacing: 6 calls per minute = one per 10 s, no burst after idle time
    s.create_campaign(&new_campaign("c3", 10, 6), &contacts(40)[30..])
        .await?;
    assert_eq!(
        s.dispatch("c3", &limits(100_000, "n1"), |_| DispatchChoice::Dial)
            .await?
            .len(),
        1
    );
    assert_eq!(
        s.dispatch("c3", &limits(105_000, "n1"), |_| DispatchChoice::Dial)
            .await?
            .len(),
        0
    );
    assert_eq!(
        s.dispatch("c3", &limits(110_000, "n1"), |_| DispatchChoice::Dial)
            .await?
            .len(),
        1
    );
    // idle for 21 s: no burst to catch up…
    assert_eq!(
        s.dispatch("c3", &limits(131_000, "n1"), |_| DispatchChoice::Dial)
            .await?
            .len(),
        1
    );
    // …and a fast campaign (600/min) gets one second's worth per tick
    s.create_campaign(&new_campaign("c4", 100, 600), &contacts(80)[50..])
        .await?;
    assert_eq!(
        s.dispatch("c4", &limits(200_000, "n1"), |_| DispatchChoice::Dial)
            .await?
            .len(),
        11
    );
    assert_eq!(
        s.dispatch("c4", &limits(200_500, "n1"), |_| DispatchChoice::Dial)
            .await?
            .len(),
        5
    );
    Ok(())
}

async fn concurrent_dispatchers_dial_each_contact_once(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_campaign(&new_campaign("c1", 1_000, 0), &contacts(120))
        .await?;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for round in 0..40 {
                let mut lim = limits(5_000 + round, &format!("n{w}"));
                lim.node_free = 3;
                let t = store.dispatch("c1", &lim, |_| DispatchChoice::Dial).await?;
                got.extend(t.into_iter().map(|t| t.contact.id));
            }
            Ok::<_, StoreError>(got)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task")?);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 120, "every contact dialed");
    assert_eq!(unique.len(), 120, "no contact dialed twice");
    assert_eq!(s.campaign_attempts("c1").await?.len(), 120);
    Ok(())
}

async fn finish_attempt_retry_final_and_idempotent(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_campaign(&new_campaign("c1", 10, 0), &contacts(2))
        .await?;
    let t = s
        .dispatch("c1", &limits(5_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert_eq!(t.len(), 2);
    assert!(
        s.attempt_placed(&t[0].attempt.id, "CA0001", 400_000, 5_100)
            .await?
    );
    assert!(
        !s.attempt_placed(&t[0].attempt.id, "CA0001", 400_000, 5_100)
            .await?
    );
    assert_eq!(
        s.get_call(&t[0].attempt.call_id)
            .await?
            .and_then(|c| c.twilio_call_sid)
            .as_deref(),
        Some("CA0001")
    );
    let (contact, next) = s
        .finish_attempt(&t[0].attempt.id, "busy", None, 9_000, |inp| {
            assert_eq!(inp.outcome, "busy");
            assert_eq!(inp.history.len(), 1);
            assert_eq!(inp.history[0].outcome.as_deref(), Some("busy"));
            ContactNext::Retry {
                at_ms: 50_000,
                message: "retry at 10:00".into(),
            }
        })
        .await?
        .expect("finished");
    assert_eq!(contact.state, "deferred");
    assert_eq!(contact.next_run_at_ms, 50_000);
    assert_eq!(contact.last_outcome.as_deref(), Some("busy"));
    assert!(matches!(next, ContactNext::Retry { .. }));
    // a second report of the same end changes nothing
    assert!(
        s.finish_attempt(
            &t[0].attempt.id,
            "completed",
            None,
            9_500,
            |_| unreachable!()
        )
        .await?
        .is_none()
    );
    // the retry is a new attempt with seq 2
    let t2 = s
        .dispatch("c1", &limits(50_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert_eq!(t2.len(), 1);
    assert_eq!(t2[0].attempt.seq, 2);
    assert_eq!(t2[0].contact.attempts, 2);
    let (c, _) = s
        .finish_attempt(
            &t2[0].attempt.id,
            "completed",
            Some("human"),
            60_000,
            |_| ContactNext::Final {
                state: "completed",
                code: "COMPLETED".into(),
                message: "talked".into(),
            },
        )
        .await?
        .expect("finished");
    assert_eq!(c.state, "completed");
    s.finish_attempt(&t[1].attempt.id, "opted_out", None, 61_000, |_| {
        ContactNext::Final {
            state: "opted_out",
            code: "OPTED_OUT".into(),
            message: "asked not to be called".into(),
        }
    })
    .await?;
    let camp = s.get_campaign("c1").await?.expect("campaign");
    assert_eq!(camp.status, "completed", "no open contacts left");
    assert_eq!(
        s.recent_outcomes("c1", 0, 10).await?,
        vec!["opted_out", "completed", "busy"]
    );
    Ok(())
}

/// Two nodes finishing a campaign's last calls at the same moment: each transaction used to
/// see the other's contact still in a call, so neither marked the campaign completed and it
/// stayed `active` with nothing left to do (seen once in the two-node end-to-end test).
async fn concurrent_last_finishes_complete_the_campaign(db: TestDb) -> TestResult {
    let s = &db.store;
    for round in 0..8 {
        let id = format!("c{round}");
        let mut tasks = Vec::new();
        for ticket in dialed_campaign(s, &id, 4).await? {
            let store = s.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .finish_attempt(&ticket.attempt.id, "completed", None, 9_000, talked)
                    .await
            }));
        }
        for task in tasks {
            assert!(task.await.expect("task")?.is_some(), "finished once");
        }
        let camp = s.get_campaign(&id).await?.expect("campaign");
        assert_eq!(camp.status, "completed", "round {round}: {camp:?}");
    }
    Ok(())
}

/// A campaign paused while its last call was running: the finish leaves it paused (only an
/// active campaign completes), and the worker's sweep completes it once it is resumed.
async fn campaign_paused_through_its_last_call_completes_on_resume(db: TestDb) -> TestResult {
    let s = &db.store;
    let t = dialed_campaign(s, "c1", 1).await?;
    s.set_campaign_status("c1", "paused", None, &["active"], 6_000)
        .await?;
    s.finish_attempt(&t[0].attempt.id, "completed", None, 9_000, talked)
        .await?
        .expect("finished");
    assert_eq!(s.get_campaign("c1").await?.expect("c1").status, "paused");
    assert_eq!(s.complete_finished_campaigns(9_500).await?, 0, "paused");
    s.set_campaign_status("c1", "active", None, &["paused"], 10_000)
        .await?;
    assert_eq!(s.complete_finished_campaigns(10_500).await?, 1);
    let c1 = s.get_campaign("c1").await?.expect("c1");
    assert_eq!(c1.status, "completed", "{c1:?}");
    Ok(())
}

async fn not_placed_and_expired_leases(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_campaign(&new_campaign("c1", 10, 0), &contacts(3))
        .await?;
    let t = s
        .dispatch("c1", &limits(5_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert_eq!(t.len(), 3);
    // Twilio refused one outright
    assert!(
        s.attempt_not_placed(&t[0].attempt.id, "Twilio 21215", 8_000, 6_000)
            .await?
    );
    let c0 = s.get_contact(&t[0].contact.id).await?.expect("contact");
    assert_eq!(
        (c0.state.as_str(), c0.attempts, c0.first_attempt_at_ms),
        ("pending", 0, None)
    );
    // one placed (lease to 400 s), one left dialing (lease to 35 s): the node died
    s.attempt_placed(&t[1].attempt.id, "CA1", 400_000, 5_100)
        .await?;
    assert!(
        s.claim_expired_attempts(30_000, "n2", 30_000, 10)
            .await?
            .is_empty()
    );
    let claimed = s.claim_expired_attempts(36_000, "n2", 30_000, 10).await?;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, t[2].attempt.id);
    assert_eq!(claimed[0].node, "n2");
    assert!(
        s.claim_expired_attempts(36_000, "n3", 30_000, 10)
            .await?
            .is_empty(),
        "n2 owns it now"
    );
    let stale = s.claim_expired_attempts(401_000, "n3", 30_000, 10).await?;
    assert_eq!(
        stale.len(),
        2,
        "the stale in_call one and n2's expired claim"
    );
    assert_eq!(
        s.known_call_sids(&["CA1".into(), "CA2".into()]).await?,
        HashSet::from(["CA1".to_string()])
    );
    // the redialed contact gets seq 2 (seq 1 stays not_placed)
    let again = s
        .dispatch("c1", &limits(8_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt.seq, 2);
    assert_eq!(again[0].contact.attempts, 1);
    Ok(())
}

async fn dnc_closes_waiting_contacts(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_campaign(&new_campaign("c1", 10, 0), &contacts(2))
        .await?;
    let phone = contacts(1)[0].phone.clone();
    assert!(s.add_dnc(&phone, Some("asked"), "api", 2_000).await?);
    assert!(!s.add_dnc(&phone, None, "api", 2_001).await?);
    assert!(s.is_dnc(&phone).await?);
    let all = s.list_contacts("c1", &ContactFilter::default()).await?;
    assert_eq!(all[0].state, "opted_out");
    assert_eq!(all[1].state, "pending");
    let mut saw_dnc = Vec::new();
    s.dispatch("c1", &limits(5_000, "n1"), |inp| {
        saw_dnc.push(inp.do_not_call);
        DispatchChoice::Dial
    })
    .await?;
    assert_eq!(saw_dnc, vec![false]);
    assert_eq!(s.list_dnc().await?.len(), 1);
    assert!(s.remove_dnc(&phone).await?);
    assert!(!s.remove_dnc(&phone).await?);
    // The do-not-call list closing a campaign's last waiting contact leaves nothing to do:
    // the worker's sweep completes it (and leaves active and paused campaigns with work alone).
    s.create_campaign(&new_campaign("c2", 10, 0), &contacts(1))
        .await?;
    s.create_campaign(&new_campaign("c3", 10, 0), &contacts(2))
        .await?;
    s.set_campaign_status("c3", "paused", None, &["active"], 2_500)
        .await?;
    let other = contacts(2)[1].phone.clone();
    s.create_campaign(
        &new_campaign("c4", 10, 0),
        &[NewContact {
            phone: other,
            ..contacts(1)[0].clone()
        }],
    )
    .await?;
    assert_eq!(s.complete_finished_campaigns(2_900).await?, 0);
    assert!(s.add_dnc(&phone, None, "api", 3_000).await?);
    assert_eq!(s.get_campaign("c2").await?.expect("c2").status, "active");
    assert_eq!(s.complete_finished_campaigns(3_100).await?, 1);
    let c2 = s.get_campaign("c2").await?.expect("c2");
    assert_eq!(c2.status, "completed", "{c2:?}");
    assert_eq!(s.get_campaign("c3").await?.expect("c3").status, "paused");
    assert_eq!(s.get_campaign("c4").await?.expect("c4").status, "active");
    assert_eq!(s.complete_finished_campaigns(3_200).await?, 0);
    Ok(())
}

async fn cancel_and_complete(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_campaign(&new_campaign("c1", 1, 0), &contacts(3))
        .await?;
    let paused = s
        .set_campaign_status("c1", "paused", Some("by hand"), &["active"], 2_000)
        .await?;
    assert_eq!(paused.status, "paused");
    assert!(
        s.dispatch("c1", &limits(5_000, "n1"), |_| DispatchChoice::Dial)
            .await?
            .is_empty()
    );
    assert!(matches!(
        s.set_campaign_status("c1", "paused", None, &["active"], 2_000)
            .await,
        Err(StoreError::Conflict(_))
    ));
    s.set_campaign_status("c1", "active", None, &["paused"], 3_000)
        .await?;
    assert_eq!(s.due_campaigns(5_000).await?, vec!["c1".to_string()]);
    let t = s
        .dispatch("c1", &limits(5_000, "n1"), |_| DispatchChoice::Dial)
        .await?;
    assert_eq!(t.len(), 1);
    let c = s
        .set_campaign_status(
            "c1",
            "canceled",
            Some("by hand"),
            &["active", "paused"],
            6_000,
        )
        .await?;
    assert_eq!(c.status, "canceled");
    let counts = s.campaign_counts("c1").await?;
    assert_eq!((counts.canceled, counts.dialing), (2, 1));
    assert!(s.due_campaigns(10_000).await?.is_empty());
    Ok(())
}

async fn survey_responses_round_trip(db: TestDb) -> TestResult {
    let s = &db.store;
    s.create_call(&new_call("call-s", 1_000)).await?;
    s.add_survey_response("call-s", "How satisfied are you?", "very", 2_000)
        .await?;
    s.add_survey_response("call-s", "Would you recommend us?", "yes", 3_000)
        .await?;
    let r = s.survey_responses("call-s").await?;
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].question.as_str(), r[0].answer.as_str()),
        ("How satisfied are you?", "very")
    );
    assert!(matches!(
        s.add_survey_response("nope", "q", "a", 1).await,
        Err(StoreError::NotFound)
    ));
    Ok(())
}
