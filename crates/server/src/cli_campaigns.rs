//! `voxbridge campaigns …`: campaigns and the do-not-call list, through a running server's
//! REST API (the server's worker does the dialing).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the server is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// Server base URL.
    #[arg(
        long,
        env = "VOXBRIDGE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key (create one with `voxbridge keys create`).
    #[arg(long, env = "VOXBRIDGE_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CampaignsCommand {
    /// Create a campaign from a CSV (phone,name,timezone,consent,…) or JSON contact file.
    Create {
        #[arg(long)]
        name: String,
        /// CSV file with a header row (`-` reads stdin).
        #[arg(long, conflicts_with = "json")]
        csv: Option<PathBuf>,
        /// JSON file: an array of {phone, name?, timezone?, consent?, context?}.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        agent: Option<String>,
        /// Task type: appointment_reminder, survey, notification, transit_booking, custom.
        #[arg(long = "type", default_value = "custom")]
        kind: String,
        /// What the agent does on each call.
        #[arg(long, default_value = "")]
        prompt: String,
        /// Calling policy, a TOML or JSON file (window_start, window_end, retry_times, …).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        max_concurrent: Option<u32>,
        #[arg(long)]
        calls_per_minute: Option<u32>,
        /// Caller id (default: the server's TWILIO_PHONE_NUMBER).
        #[arg(long)]
        from: Option<String>,
        /// Then follow its progress.
        #[arg(long)]
        watch: bool,
    },
    /// Every campaign with its counts.
    List,
    /// One campaign's status; `--watch` shows a progress bar until it is done.
    Status {
        id: String,
        #[arg(long)]
        watch: bool,
    },
    /// The contacts of a campaign, with why each is in its state.
    Contacts {
        id: String,
        #[arg(long)]
        state: Option<String>,
    },
    /// Stop starting calls (calls in progress finish).
    Pause { id: String },
    /// Start calling again (also after the circuit breaker paused it).
    Resume { id: String },
    /// Cancel the contacts still waiting (calls in progress finish).
    Cancel { id: String },
    /// The do-not-call list.
    Dnc {
        #[command(subcommand)]
        command: DncCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DncCommand {
    /// Add a number (its waiting contacts in every campaign are closed).
    Add {
        phone: String,
        #[arg(long)]
        reason: Option<String>,
    },
    Remove {
        phone: String,
    },
    List,
}

struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    fn new(r: &Remote) -> anyhow::Result<Self> {
        let Some(key) = r.api_key.clone() else {
            bail!("an API key is needed: --api-key or VOXBRIDGE_API_KEY (voxbridge keys create)");
        };
        if !r.url.starts_with("http://") && !r.url.starts_with("https://") {
            bail!("--url must start with http:// or https://");
        }
        Ok(Client {
            base: r.url.trim_end_matches('/').to_owned(),
            key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("reaching {}", self.base))?;
        let status = resp.status();
        let body: Value = if status == reqwest::StatusCode::NO_CONTENT {
            Value::Null
        } else {
            resp.json().await.context("reading the server's answer")?
        };
        if !status.is_success() {
            bail!(
                "{} ({}): {}",
                status,
                body["code"].as_str().unwrap_or("?"),
                body["error"].as_str().unwrap_or("no detail")
            );
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        use std::io::Read as _;
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_policy(path: &PathBuf) -> anyhow::Result<Value> {
    let text = read_input(path)?;
    if path.extension().is_some_and(|e| e == "toml") {
        let v: toml::Value =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(serde_json::to_value(v)?)
    } else {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

fn counts_line(c: &Value) -> String {
    let n = |k: &str| c["counts"][k].as_i64().unwrap_or(0);
    format!(
        "{} total: {} pending, {} deferred, {} dialing, {} in call, {} completed, {} failed, {} opted out, {} refused, {} canceled",
        n("total"),
        n("pending"),
        n("deferred"),
        n("dialing"),
        n("in_call"),
        n("completed"),
        n("failed"),
        n("opted_out"),
        n("refused"),
        n("canceled")
    )
}

pub async fn run(remote: Remote, cmd: CampaignsCommand) -> anyhow::Result<()> {
    let c = Client::new(&remote)?;
    match cmd {
        CampaignsCommand::Create {
            name,
            csv,
            json: json_file,
            agent,
            kind,
            prompt,
            policy,
            max_concurrent,
            calls_per_minute,
            from,
            watch,
        } => {
            let mut body = json!({
                "name": name,
                "agent": agent,
                "from": from,
                "task": {"type": kind, "prompt": prompt},
                "max_concurrent": max_concurrent,
                "calls_per_minute": calls_per_minute,
            });
            if let Some(p) = &policy {
                body["policy"] = read_policy(p)?;
            }
            if let Some(p) = &csv {
                body["csv"] = Value::String(read_input(p)?);
            }
            if let Some(p) = &json_file {
                body["contacts"] = serde_json::from_str(&read_input(p)?)
                    .with_context(|| format!("parsing {}", p.display()))?;
            }
            let v = c.post("/v1/campaigns", &body).await?;
            let id = v["campaign"]["id"].as_str().unwrap_or_default().to_owned();
            let r = &v["import"];
            println!("created campaign {id}");
            println!(
                "imported {} of {} contacts ({} rejected)",
                r["accepted"], r["received"], r["rejected"]
            );
            for e in r["errors"].as_array().into_iter().flatten() {
                println!(
                    "  row {}: {} {} ({}): {}",
                    e["row"],
                    e["field"].as_str().unwrap_or(""),
                    e["phone"].as_str().unwrap_or(""),
                    e["code"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
            }
            if watch {
                follow(&c, &id).await?;
            }
        }
        CampaignsCommand::List => {
            let v = c.get("/v1/campaigns").await?;
            for k in v.as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10} {:<24} {}",
                    k["id"].as_str().unwrap_or(""),
                    k["status"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or(""),
                    counts_line(k)
                );
            }
        }
        CampaignsCommand::Status { id, watch } => {
            if watch {
                follow(&c, &id).await?;
            } else {
                let v = c.get(&format!("/v1/campaigns/{id}")).await?;
                print_status(&v);
            }
        }
        CampaignsCommand::Contacts { id, state } => {
            let q = state.map(|s| format!("?state={s}")).unwrap_or_default();
            let v = c.get(&format!("/v1/campaigns/{id}/contacts{q}")).await?;
            for k in v.as_array().into_iter().flatten() {
                println!(
                    "{:>5} {:<16} {:<10} attempts={} next={} {}",
                    k["row"],
                    k["phone"].as_str().unwrap_or(""),
                    k["state"].as_str().unwrap_or(""),
                    k["attempts"],
                    k["next_run_at"].as_str().unwrap_or(""),
                    k["reason"].as_str().unwrap_or("")
                );
            }
        }
        CampaignsCommand::Pause { id } => print_status(
            &c.post(&format!("/v1/campaigns/{id}/pause"), &json!({}))
                .await?,
        ),
        CampaignsCommand::Resume { id } => print_status(
            &c.post(&format!("/v1/campaigns/{id}/resume"), &json!({}))
                .await?,
        ),
        CampaignsCommand::Cancel { id } => print_status(
            &c.post(&format!("/v1/campaigns/{id}/cancel"), &json!({}))
                .await?,
        ),
        CampaignsCommand::Dnc { command } => match command {
            DncCommand::Add { phone, reason } => {
                let v = c
                    .post("/v1/dnc", &json!({"phone": phone, "reason": reason}))
                    .await?;
                println!(
                    "{} is on the do-not-call list",
                    v["phone"].as_str().unwrap_or("")
                );
            }
            DncCommand::Remove { phone } => {
                let path = format!("/v1/dnc/{}", phone.replace('+', "%2B"));
                c.send(c.http.delete(format!("{}{path}", c.base))).await?;
                println!("{phone} removed from the do-not-call list");
            }
            DncCommand::List => {
                let v = c.get("/v1/dnc").await?;
                for d in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<16} {:<8} {}  {}",
                        d["phone"].as_str().unwrap_or(""),
                        d["source"].as_str().unwrap_or(""),
                        d["added_at"].as_str().unwrap_or(""),
                        d["reason"].as_str().unwrap_or("")
                    );
                }
            }
        },
    }
    Ok(())
}

fn print_status(v: &Value) {
    println!(
        "{} {} [{}]{}",
        v["id"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["status_reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    println!("  {}", counts_line(v));
    if let Some(eta) = v["eta"].as_str() {
        println!("  eta {eta}");
    }
}

/// A progress bar over the contacts that are done, until the campaign completes, is
/// canceled, or pauses (then the reason is printed and the command fails).
async fn follow(c: &Client, id: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} contacts done  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let v = c.get(&format!("/v1/campaigns/{id}")).await?;
        let n = |k: &str| v["counts"][k].as_u64().unwrap_or(0);
        let done = n("completed") + n("failed") + n("opted_out") + n("refused") + n("canceled");
        bar.set_length(n("total"));
        bar.set_position(done);
        bar.set_message(format!(
            "{} in call, {} dialing, {} waiting{}",
            n("in_call"),
            n("dialing"),
            n("pending") + n("deferred"),
            v["eta"]
                .as_str()
                .map(|e| format!(", eta {e}"))
                .unwrap_or_default()
        ));
        match v["status"].as_str().unwrap_or("") {
            "completed" | "canceled" => {
                bar.finish();
                print_status(&v);
                return Ok(());
            }
            "paused" => {
                bar.abandon();
                print_status(&v);
                bail!(
                    "campaign paused: {}",
                    v["status_reason"].as_str().unwrap_or("no reason given")
                );
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
