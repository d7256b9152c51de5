//! The CLI commands that are not the server itself.

use crate::{CallsCommand, KeysCommand};
use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use std::path::Path;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use voxbridge::config::Config;
use voxbridge_store::{CallFilter, Store};

async fn open_store(config: Option<&Path>) -> anyhow::Result<Store> {
    let config = Config::load(config)?;
    Store::connect(&config.database_url)
        .await
        .with_context(|| format!("opening {}", config.database_url))
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub async fn keys(config: Option<&Path>, cmd: KeysCommand) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        KeysCommand::Create { name } => {
            let (key, secret) = store.create_api_key(&name).await?;
            println!("created API key {} ({})", key.id, key.name);
            println!("secret (shown once, store it now): {secret}");
        }
        KeysCommand::List => {
            println!(
                "{:<38} {:<16} {:<14} {:<26} status",
                "id", "name", "prefix", "created"
            );
            for k in store.list_api_keys().await? {
                let status = if k.revoked_at_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<38} {:<16} {:<14} {:<26} {status}",
                    k.id,
                    k.name,
                    k.prefix,
                    iso(k.created_at_ms)
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if store.revoke_api_key(&id).await? {
                println!("revoked {id}");
            } else {
                bail!("no active key {id:?}");
            }
        }
    }
    Ok(())
}

pub async fn calls(config: Option<&Path>, cmd: CallsCommand) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        CallsCommand::List { status, limit } => {
            let filter = CallFilter {
                status,
                ..CallFilter::default()
            };
            let page = store.list_calls(&filter, None, limit).await?;
            println!(
                "{:<38} {:<9} {:<16} {:<16} {:<12} {:>6}  created",
                "id", "direction", "from", "to", "status", "secs"
            );
            for c in page.calls {
                println!(
                    "{:<38} {:<9} {:<16} {:<16} {:<12} {:>6}  {}",
                    c.id,
                    c.direction,
                    c.from_number,
                    c.to_number,
                    c.status,
                    c.duration_s.map_or("-".into(), |d| d.to_string()),
                    iso(c.created_at_ms)
                );
            }
        }
        CallsCommand::Show { id } => {
            let Some(c) = store.get_call(&id).await? else {
                bail!("no call {id:?}");
            };
            println!("call {} ({}, agent {})", c.id, c.direction, c.agent);
            println!("  {} -> {}", c.from_number, c.to_number);
            println!(
                "  status {} ({})",
                c.status,
                c.end_reason.as_deref().unwrap_or("-")
            );
            for s in &c.status_history {
                println!("    {}  {}", iso(s.at_ms), s.status);
            }
            println!(
                "  duration {} s, tokens {} in / {} out ({} cached)",
                c.duration_s.map_or("-".into(), |d| d.to_string()),
                c.input_tokens,
                c.output_tokens,
                c.cached_tokens
            );
            if let Some(url) = &c.recording_url {
                println!("  recording {url}");
            }
            println!("transcript");
            for t in store.transcript(&id).await? {
                println!("  [{}] {:<6} {}", iso(t.at_ms), t.speaker, t.text);
            }
        }
        CallsCommand::Export => {
            let mut cursor = None;
            loop {
                let page = store
                    .list_calls(&CallFilter::default(), cursor.as_deref(), 200)
                    .await?;
                for c in &page.calls {
                    let transcript = store.transcript(&c.id).await?;
                    let line = serde_json::json!({"call": c, "transcript": transcript});
                    println!("{line}");
                }
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct CallArgs {
    /// The number to call (E.164).
    pub to: String,
    /// Agent name.
    #[arg(long)]
    pub agent: Option<String>,
    /// Task type (appointment_reminder, survey, notification, custom…).
    #[arg(long = "type", default_value = "custom")]
    pub kind: String,
    /// What the agent must do.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Facts for the agent, `key=value` (repeatable).
    #[arg(long = "context", value_parser = crate::parse_kv)]
    pub context: Vec<(String, String)>,
    /// Caller id (default: the server's TWILIO_PHONE_NUMBER).
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub voice: Option<String>,
    /// Server base URL.
    #[arg(long, env = "VOXBRIDGE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (create one with `voxbridge keys create`).
    #[arg(long, env = "VOXBRIDGE_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

/// Place a call through the REST API and print its events until it ends.
pub async fn call(args: CallArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_owned();
    // Subscribe first so no event of the new call is missed.
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        bail!("--url must start with http:// or https://");
    };
    let mut request = format!("{ws_base}/v1/events").into_client_request()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {}", args.api_key).parse()?);
    let (mut events, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("connecting to /v1/events")?;
    let body = serde_json::json!({
        "to": args.to,
        "from": args.from,
        "agent": args.agent,
        "voice": args.voice,
        "task": {
            "type": args.kind,
            "prompt": args.prompt,
            "context": args.context.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        },
    });
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/calls"))
        .bearer_auth(&args.api_key)
        .json(&body)
        .send()
        .await
        .context("POST /v1/calls")?;
    let status = resp.status();
    let value: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{} {}: {}",
            status.as_u16(),
            value["code"].as_str().unwrap_or("ERROR"),
            value["error"].as_str().unwrap_or("")
        );
    }
    let id = value["id"].as_str().unwrap_or_default().to_owned();
    println!("call {id} {}", value["status"].as_str().unwrap_or(""));
    while let Some(msg) = events.next().await {
        let Ok(Message::Text(text)) = msg else {
            if msg.is_err() {
                bail!("event stream closed");
            }
            continue;
        };
        let ev: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        if ev["call_id"] != id.as_str() {
            continue;
        }
        match ev["type"].as_str().unwrap_or("") {
            "status" => {
                let s = ev["status"].as_str().unwrap_or("");
                println!("status  {s}");
                if matches!(
                    s,
                    "busy" | "no-answer" | "failed" | "canceled" | "completed"
                ) {
                    return Ok(());
                }
            }
            "transcript" => println!(
                "{:<7} {}",
                ev["speaker"].as_str().unwrap_or(""),
                ev["text"].as_str().unwrap_or("")
            ),
            "dtmf" => println!("dtmf    {}", ev["digit"].as_str().unwrap_or("")),
            "ended" => {
                println!("ended   {}", ev["reason"].as_str().unwrap_or(""));
            }
            _ => {}
        }
    }
    Ok(())
}
