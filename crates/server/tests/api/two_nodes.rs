//! The two-node test: two servers on one PostgreSQL run a 200-contact campaign.
//! Each contact is dialed exactly once (one create request per number at Twilio, one attempt
//! per contact), both nodes share the work, each call's callbacks reach the node that
//! placed it, a client watching `/v1/events` on node A sees the calls that node B placed,
//! and every event is stored once. PostgreSQL only (`VOXBRIDGE_TEST_PG_URL`).

use crate::campaign::zone_at_local_hour;
use crate::helpers::{
    Backend, TestApp, eventually, fresh_database, sim_config, skip_without_postgres, spawn_node,
    start_twilio,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use voxbridge_sim::caller::{CallerStep, RunOptions};
use voxbridge_sim::realtime::RealtimeSim;
use voxbridge_sim::twilio_api::TwilioEmulatorConfig;
use voxbridge_store::{AttemptRecord, Store};

const CONTACTS: usize = 200;
const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";
/// Per node; the two together are exactly the campaign's limit.
const NODE_MAX: &str = "15";
const CAMPAIGN_MAX: u32 = 30;
/// The status events Twilio's callbacks (and the worker's `dialing`) give a campaign call
/// that is answered, in order.
const STATUSES: [&str; 5] = [
    "dialing",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
];

fn number(i: usize) -> String {
    format!("+1212555{:04}", 1000 + i)
}

/// Everything `/v1/events` on `app` sends from now on, collected in order.
async fn watch_events(app: &TestApp, api_key: &str) -> Arc<Mutex<Vec<Value>>> {
    let mut req = app.ws("/v1/events").into_client_request().expect("request");
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {api_key}")).expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("events socket");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let (_, mut read) = ws.split();
        while let Some(Ok(m)) = read.next().await {
            if let Message::Text(t) = m
                && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
            {
                sink.lock().expect("events").push(v);
            }
        }
    });
    seen
}

fn listening(app: &TestApp) -> bool {
    app.state.cluster.as_ref().is_some_and(|c| c.is_listening())
}

async fn get_json(http: &reqwest::Client, app: &TestApp, key: &str, path: &str) -> Value {
    let r = http
        .get(app.http(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("json")
}

/// The stored events of a call, as (kind, status if any).
async fn stored(store: &Store, call_id: &str) -> Vec<(String, Option<String>)> {
    store
        .events(call_id)
        .await
        .expect("events")
        .into_iter()
        .map(|e| {
            let status = e.data["status"].as_str().map(str::to_owned);
            (e.kind, status)
        })
        .collect()
}

fn stored_statuses(events: &[(String, Option<String>)]) -> Vec<&str> {
    events
        .iter()
        .filter(|(k, _)| k == "status")
        .filter_map(|(_, s)| s.as_deref())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_campaign_dial_each_contact_once_and_see_each_others_calls() {
    if skip_without_postgres() {
        return;
    }
    let twilio = start_twilio(TwilioEmulatorConfig {
        default_script: vec![CallerStep::Silence { ms: 200 }, CallerStep::Hangup],
        ring_ms: 100,
        run_options: RunOptions {
            record_audio: false,
            keep_log: false,
            ..RunOptions::default()
        },
        ..TwilioEmulatorConfig::default()
    })
    .await;
    let db = fresh_database(Backend::Postgres).await;
    // Migrates the fresh database before the nodes connect; the test's own view of it.
    let store = Store::connect(&db).await.expect("store");
    let (_, key) = store.create_api_key("two-nodes").await.expect("api key");
    let node = |id: &'static str| {
        [
            ("NODE_ID", id),
            ("CAMPAIGN_POLL_MS", "50"),
            ("CAMPAIGN_MAX_CONCURRENT", NODE_MAX),
        ]
    };
    let sim = || async {
        RealtimeSim::start(sim_config())
            .await
            .expect("simulator starts")
    };
    let a = spawn_node(&db, &twilio, sim().await, &node(NODE_A)).await;
    let b = spawn_node(&db, &twilio, sim().await, &node(NODE_B)).await;
    assert_eq!(a.state.node_id, NODE_A);
    assert_eq!(b.state.node_id, NODE_B);
    assert_ne!(a.public_url, b.public_url);
    assert!(
        eventually(Duration::from_secs(15), || listening(&a) && listening(&b)).await,
        "both nodes LISTEN"
    );
    let on_a = watch_events(&a, &key).await;
    let http = reqwest::Client::new();

    // The campaign is created on node A; both workers take from it.
    let zone = zone_at_local_hour(13);
    let contacts: Vec<Value> = (0..CONTACTS)
        .map(|i| json!({"phone": number(i), "timezone": zone, "consent": true}))
        .collect();
    let r = http
        .post(a.http("/v1/campaigns"))
        .bearer_auth(&key)
        .json(&json!({"name": "two nodes", "max_concurrent": CAMPAIGN_MAX,
                      "calls_per_minute": 0, "contacts": contacts}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("json");
    assert_eq!(created["import"]["accepted"], CONTACTS, "{created:#}");
    let id = created["campaign"]["id"]
        .as_str()
        .expect("campaign id")
        .to_owned();

    // Until no contact is waiting or in a call (no assertion on how fast).
    let path = format!("/v1/campaigns/{id}");
    let settled = async {
        loop {
            let c = get_json(&http, &a, &key, &path).await;
            let n = &c["counts"];
            let open = ["pending", "deferred", "dialing", "in_call"]
                .iter()
                .map(|s| n[*s].as_i64().unwrap_or(0))
                .sum::<i64>();
            if open == 0 {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let campaign = tokio::time::timeout(Duration::from_secs(120), settled)
        .await
        .expect("every contact settles within 120 s");
    assert_eq!(campaign["counts"]["completed"], CONTACTS, "{campaign:#}");
    assert_eq!(campaign["status"], "completed", "{campaign:#}");
    // Node B reads the same campaign.
    let on_b = get_json(&http, &b, &key, &path).await;
    assert_eq!(on_b["counts"]["completed"], CONTACTS);

    // Twilio got exactly one create request per number.
    let mut posts: HashMap<String, usize> = HashMap::new();
    for r in twilio.requests() {
        if r.method == "POST" && r.path.ends_with("/Calls.json") {
            let to = r
                .form
                .iter()
                .find(|(k, _)| k == "To")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            *posts.entry(to).or_default() += 1;
        }
    }
    assert_eq!(posts.values().sum::<usize>(), CONTACTS, "create requests");
    for i in 0..CONTACTS {
        assert_eq!(posts.get(&number(i)), Some(&1), "creates to {}", number(i));
    }

    // One attempt per contact, finished, tied to its own Twilio call, by one of the nodes.
    let attempts = store.campaign_attempts(&id).await.expect("attempts");
    assert_eq!(attempts.len(), CONTACTS);
    let per_contact: HashSet<&str> = attempts.iter().map(|a| a.contact_id.as_str()).collect();
    assert_eq!(per_contact.len(), CONTACTS, "one attempt per contact");
    let sids: HashSet<&str> = attempts
        .iter()
        .filter_map(|a| a.twilio_call_sid.as_deref())
        .collect();
    assert_eq!(sids.len(), CONTACTS, "each attempt has its own CallSid");
    for a in &attempts {
        assert_eq!(a.seq, 1, "{a:?}");
        assert_eq!(a.state, "done", "{a:?}");
        assert_eq!(a.outcome.as_deref(), Some("completed"), "{a:?}");
        assert!(a.node == NODE_A || a.node == NODE_B, "{a:?}");
    }
    let of_node =
        |n: &str| -> Vec<&AttemptRecord> { attempts.iter().filter(|a| a.node == n).collect() };
    let (by_a, by_b) = (of_node(NODE_A), of_node(NODE_B));
    eprintln!("attempts: {NODE_A} {}, {NODE_B} {}", by_a.len(), by_b.len());
    assert!(
        by_a.len() >= 20 && by_b.len() >= 20,
        "both nodes dial a fair share: {NODE_A} {}, {NODE_B} {}",
        by_a.len(),
        by_b.len()
    );

    // The contact API on either node shows the attempt with its node.
    for (app, att) in [(&b, by_a[0]), (&a, by_b[0])] {
        let d = get_json(
            &http,
            app,
            &key,
            &format!("/v1/campaigns/{id}/contacts/{}", att.contact_id),
        )
        .await;
        assert_eq!(d["contact"]["state"], "completed", "{d:#}");
        let list = d["attempts"].as_array().expect("attempts");
        assert_eq!(list.len(), 1, "{d:#}");
        assert_eq!(list[0]["node"], att.node.as_str());
        assert_eq!(list[0]["twilio_call_sid"], json!(att.twilio_call_sid));
    }

    // Each call's webhooks went to the node that placed it, and all were accepted.
    let node_url: HashMap<&str, &str> = [
        (NODE_A, a.public_url.as_str()),
        (NODE_B, b.public_url.as_str()),
    ]
    .into_iter()
    .collect();
    let by_sid: HashMap<&str, &AttemptRecord> = attempts
        .iter()
        .filter_map(|a| a.twilio_call_sid.as_deref().map(|s| (s, a)))
        .collect();
    let calls = twilio.calls();
    assert_eq!(calls.len(), CONTACTS);
    for c in &calls {
        let att = by_sid[c.sid.as_str()];
        assert_eq!(c.status, "completed", "{}: {:?}", c.sid, c.error);
        let base = node_url[att.node.as_str()];
        for cb in &c.callbacks {
            assert!(
                cb.url.starts_with(&format!("{base}/")),
                "{} (placed by {}) called back {}",
                c.sid,
                att.node,
                cb.url
            );
            assert!(
                cb.ok(),
                "{} callback {} failed: {:?}",
                c.sid,
                cb.url,
                cb.error
            );
        }
    }

    // Every event is stored once, by the node that had it (the other node only relays).
    let mut calls_stored: HashMap<&str, Vec<(String, Option<String>)>> = HashMap::new();
    let complete = |ev: &[(String, Option<String>)]| {
        stored_statuses(ev).contains(&"completed") && ev.iter().any(|(k, _)| k == "ended")
    };
    for _ in 0..200 {
        for att in &attempts {
            let done = calls_stored
                .get(att.call_id.as_str())
                .is_some_and(|e| complete(e));
            if !done {
                calls_stored.insert(&att.call_id, stored(&store, &att.call_id).await);
            }
        }
        if calls_stored.values().all(|e| complete(e)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a duplicate write, if any node were to make one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for att in &attempts {
        let ev = stored(&store, &att.call_id).await;
        assert_eq!(
            stored_statuses(&ev),
            STATUSES,
            "statuses of {} ({})",
            att.call_id,
            att.node
        );
        for kind in ["answered", "stream_started", "ended"] {
            let n = ev.iter().filter(|(k, _)| k == kind).count();
            assert_eq!(n, 1, "{kind} of {} ({}): {ev:?}", att.call_id, att.node);
        }
    }

    // Node A's socket: the calls node B placed, live; nothing twice.
    let seen = on_a.lock().expect("events").clone();
    let lagged: u64 = seen
        .iter()
        .filter(|v| v["type"] == "lagged")
        .map(|v| v["skipped"].as_u64().unwrap_or(0))
        .sum();
    let dropped = a.state.hub.cluster_dropped() + b.state.hub.cluster_dropped();
    let mut statuses_on_a: HashMap<&str, Vec<&str>> = HashMap::new();
    for v in &seen {
        if v["type"] == "status"
            && let (Some(call), Some(s)) = (v["call_id"].as_str(), v["status"].as_str())
        {
            statuses_on_a.entry(call).or_default().push(s);
        }
    }
    for (call, list) in &statuses_on_a {
        let distinct: HashSet<&&str> = list.iter().collect();
        assert_eq!(
            distinct.len(),
            list.len(),
            "{call}: a status twice on A: {list:?}"
        );
    }
    let b_calls_seen: Vec<&str> = by_b
        .iter()
        .map(|a| a.call_id.as_str())
        .filter(|c| statuses_on_a.contains_key(c))
        .collect();
    eprintln!(
        "events on {NODE_A}: {} ({} of {} {NODE_B} calls seen; lagged {lagged}, dropped {dropped})",
        seen.len(),
        b_calls_seen.len(),
        by_b.len()
    );
    let b_has = |status: &str| {
        by_b.iter().any(|att| {
            statuses_on_a
                .get(att.call_id.as_str())
                .is_some_and(|l| l.contains(&status))
        })
    };
    assert!(
        b_has("dialing") && b_has("completed"),
        "node A saw the dialing and the end of node B's calls"
    );
    if lagged == 0 && dropped == 0 {
        // Nothing was skipped on the way: every call of node B reached node A, whole.
        for att in &by_b {
            let list = statuses_on_a
                .get(att.call_id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert_eq!(list, STATUSES, "{} on {NODE_A}", att.call_id);
        }
    }
}
