//! Helpers shared by the function-call and SIP tests: a WebSocket client,
//! and the official Python packages as oracles (when installed).

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect with `Authorization: Bearer key` (when given); the HTTP status of
/// a refused upgrade as the error.
pub async fn connect(url: &str, key: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().expect("request");
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().expect("hv"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
    }
}

pub enum Recv {
    Event(Value),
    Closed(Option<CloseFrame>),
    Timeout,
}

pub async fn recv_any(ws: &mut Ws, timeout_ms: u64) -> Recv {
    loop {
        let m = match tokio::time::timeout(Duration::from_millis(timeout_ms), ws.next()).await {
            Err(_) => return Recv::Timeout,
            Ok(None) => return Recv::Closed(None),
            Ok(Some(m)) => m,
        };
        match m {
            Ok(Message::Text(t)) => {
                return Recv::Event(serde_json::from_str(t.as_str()).expect("JSON event"));
            }
            Ok(Message::Close(f)) => return Recv::Closed(f),
            Err(_) => return Recv::Closed(None),
            Ok(_) => continue,
        }
    }
}

pub async fn recv(ws: &mut Ws, timeout_ms: u64) -> Option<Value> {
    match recv_any(ws, timeout_ms).await {
        Recv::Event(v) => Some(v),
        _ => None,
    }
}

/// Events until one of type `ty` (inclusive).
pub async fn until(ws: &mut Ws, ty: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let ev = recv(ws, 5_000)
            .await
            .unwrap_or_else(|| panic!("no {ty}; got {:?}", types(&got)));
        let done = ev["type"] == ty;
        got.push(ev);
        if done {
            return got;
        }
    }
}

pub fn types(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

pub fn of_type<'a>(evs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == ty).collect()
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with the official `openai` and `standardwebhooks` packages
/// (`VOXBRIDGE_PYTHON`, else the repository's `.venv`), if any.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VOXBRIDGE_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = repo_root().join(".venv/bin/python");
    p.exists().then_some(p)
}

/// Validate server events against the openai package's models (strict,
/// unknown fields fail) with `conformance/check_realtime_events.py`.
/// Skipped (with a note) when no Python is available.
///
/// `session.created` / `session.updated` are left out: the simulator sends
/// the session's `object`, `id` and `expires_at` as the service does, which
/// the package's `RealtimeSessionCreateRequest` model does not declare.
pub fn check_server_events_with_openai(events: &[Value], name: &str) {
    let events: Vec<&Value> = events
        .iter()
        .filter(|e| {
            !matches!(
                e["type"].as_str(),
                Some("session.created" | "session.updated")
            )
        })
        .collect();
    let Some(py) = python() else {
        eprintln!("skipped: no Python with the openai package (set VOXBRIDGE_PYTHON)");
        return;
    };
    let path =
        std::env::temp_dir().join(format!("voxbridge-sim-{name}-{}.jsonl", std::process::id()));
    let mut text = String::new();
    for e in &events {
        text.push_str(&e.to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write events");
    let out = std::process::Command::new(py)
        .arg(repo_root().join("conformance/check_realtime_events.py"))
        .arg(&path)
        .arg("--server")
        .output()
        .expect("run python");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "openai models reject the events:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a Python snippet (argv after it); its stdout. Panics on failure.
/// `None` when no Python is available.
pub fn run_python(code: &str, args: &[&str]) -> Option<String> {
    let Some(py) = python() else {
        eprintln!("skipped: no Python with the openai package (set VOXBRIDGE_PYTHON)");
        return None;
    };
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
