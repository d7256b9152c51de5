//! Several nodes on one PostgreSQL: a client watching `/v1/events` on node A
//! sees the calls that run on node B, live, and every event is stored once
//! (by the node the call ran on). PostgreSQL only (`VOXBRIDGE_TEST_PG_URL`).

use crate::helpers::{
    API_KEY, AUTH_TOKEN, Backend, callee_script, eventually, fresh_database, sim_config,
    skip_without_postgres,
};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use voxbridge::config::Config;
use voxbridge::hub::{CallEventKind, Speaker};
use voxbridge::{App, AppState, app};
use voxbridge_sim::caller::{CallEnd, CallerConfig, CallerStep, run_call};
use voxbridge_sim::realtime::RealtimeSim;
use voxbridge_store::Store;

/// One `voxbridge serve` on `db`, with its own pool, model simulator and port.
struct Node {
    port: u16,
    public_url: String,
    state: AppState,
    store: Store,
    _sim: RealtimeSim,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Node {
    async fn start(db: &str) -> Node {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let sim = RealtimeSim::start(sim_config())
            .await
            .expect("simulator starts");
        let store = Store::connect(db).await.expect("store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let vars: Vec<(String, String)> = vec![
            ("PUBLIC_URL".into(), format!("http://127.0.0.1:{port}")),
            ("PORT".into(), port.to_string()),
            ("OPENAI_API_KEY".into(), API_KEY.into()),
            ("OPENAI_REALTIME_URL".into(), sim.ws_url()),
            ("TWILIO_AUTH_TOKEN".into(), AUTH_TOKEN.into()),
            ("DATABASE_URL".into(), db.to_owned()),
        ];
        let config = Config::from_sources(None, |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .expect("config");
        let public_url = config.public_url.clone();
        let state = App::build_with(config, Some(store.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app::run(state.clone(), listener, async {
            let _ = rx.await;
        }));
        Node {
            port,
            public_url,
            state,
            store,
            _sim: sim,
            stop: Some(tx),
        }
    }

    fn listening(&self) -> bool {
        self.state
            .cluster
            .as_ref()
            .is_some_and(|c| c.is_listening())
    }

    /// An inbound caller dialing this node.
    fn caller(&self, script: Vec<CallerStep>) -> CallerConfig {
        CallerConfig {
            voice_url: format!("http://127.0.0.1:{}/twilio/voice", self.port),
            public_url: self.public_url.clone(),
            auth_token: Some(AUTH_TOKEN.into()),
            connect_base: Some(format!("ws://127.0.0.1:{}", self.port)),
            script,
            ..CallerConfig::default()
        }
    }

    /// `/v1/events` on this node: every JSON message, in order.
    async fn events(&self, api_key: &str) -> mpsc::UnboundedReceiver<Value> {
        let mut req = format!("ws://127.0.0.1:{}/v1/events", self.port)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {api_key}")).expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("events socket");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (_, mut read) = ws.split();
            while let Some(Ok(m)) = read.next().await {
                if let Message::Text(t) = m
                    && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        rx
    }
}

/// Events of `call_id` until (and with) its `ended`.
async fn until_ended(rx: &mut mpsc::UnboundedReceiver<Value>, call_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("no `ended` within 30 s")
            .expect("events socket open");
        if v["call_id"] != call_id {
            continue;
        }
        let ended = v["type"] == "ended";
        out.push(v);
        if ended {
            return out;
        }
    }
}

/// The next event on the socket.
async fn next_event(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an event within 30 s")
        .expect("events socket open")
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// What the origin node's writer stores for a live event stream: transcript
/// lines and usage go to their own tables, everything else is an event row.
fn stored_kinds(events: &[Value]) -> Vec<String> {
    kinds(events)
        .into_iter()
        .filter(|k| k != "transcript" && k != "usage")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_call_on_node_b_reach_node_a_live_and_are_stored_once() {
    if skip_without_postgres() {
        return;
    }
    let db = fresh_database(Backend::Postgres).await;
    let a = Node::start(&db).await;
    let b = Node::start(&db).await;
    let (_, key) = a.store.create_api_key("cluster").await.expect("api key");
    assert!(
        eventually(Duration::from_secs(15), || a.listening() && b.listening()).await,
        "both nodes LISTEN"
    );
    let mut on_a = a.events(&key).await;
    let mut on_b = b.events(&key).await;

    // A real inbound call, answered by node B.
    let report = run_call(b.caller(callee_script())).await.expect("call");
    assert_eq!(report.end, CallEnd::Hangup);
    let first = next_event(&mut on_b).await;
    let id = first["call_id"].as_str().expect("call id").to_owned();
    let mut seen_on_b = vec![first];
    seen_on_b.extend(until_ended(&mut on_b, &id).await);
    let seen_on_a = until_ended(&mut on_a, &id).await;
    let k = kinds(&seen_on_a);
    for want in ["answered", "stream_started", "transcript", "ended"] {
        assert!(
            k.contains(&want.to_owned()),
            "{want} missing on node A: {k:?}"
        );
    }
    // A gets exactly B's events, once each, in B's order.
    assert_eq!(seen_on_a, seen_on_b);

    // Stored once, by node B (node A only relays).
    let expected = stored_kinds(&seen_on_a);
    let stored = |s: Store, id: String| async move {
        let ev: Vec<String> = s
            .events(&id)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        let tr = s.transcript(&id).await.expect("transcript").len();
        (ev, tr)
    };
    let transcripts = k.iter().filter(|k| *k == "transcript").count();
    for _ in 0..100 {
        let (ev, tr) = stored(b.store.clone(), id.clone()).await;
        if ev.len() >= expected.len() && tr >= transcripts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a duplicate write, if any node were to make one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (events, items) = stored(a.store.clone(), id.clone()).await;
    assert_eq!(events, expected, "each event stored once");
    assert_eq!(items, transcripts, "each transcript line stored once");
    assert_eq!(
        events.iter().filter(|k| *k == "ended").count(),
        1,
        "{events:?}"
    );

    // No echo: nothing more of this call arrives on either node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for rx in [&mut on_a, &mut on_b] {
        while let Ok(v) = rx.try_recv() {
            assert_ne!(v["call_id"], id.as_str(), "event delivered twice: {v}");
        }
    }

    // A transcript longer than a NOTIFY payload may be arrives cut, not lost.
    let huge = "word ".repeat(4_000);
    b.state.hub.publish(
        "cluster-oversized",
        CallEventKind::Transcript {
            speaker: Speaker::Agent,
            text: huge.clone(),
        },
    );
    let v = loop {
        let v = tokio::time::timeout(Duration::from_secs(10), on_a.recv())
            .await
            .expect("oversized event relayed")
            .expect("socket open");
        if v["call_id"] == "cluster-oversized" {
            break v;
        }
    };
    let text = v["text"].as_str().expect("text");
    assert!(text.ends_with('…'), "marked as cut");
    assert!(text.len() < 8000 && text.len() > 7000, "{}", text.len());
    assert!(huge.starts_with(text.trim_end_matches('…')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_nodes_run_without_cluster_events() {
    let db = fresh_database(Backend::Sqlite).await;
    let node = Node::start(&db).await;
    assert!(node.state.cluster.is_none());
}
