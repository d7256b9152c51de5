//! The `voxbridge` binary.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use voxbridge::config::Config;
use voxbridge::{App, app, demo, loadtest};

/// mimalloc rather than glibc's malloc: calls allocate and free many small buffers (socket
/// frames, JSON) from one thread, and glibc kept far more of that freed memory resident
/// (see docs/BENCHMARKS.md, memory per call).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod cli_agents;
mod cli_campaigns;

#[derive(Parser, Debug)]
#[command(
    name = "voxbridge",
    version,
    about = "AI phone calls: Twilio <-> OpenAI Realtime"
)]
struct Cli {
    /// Configuration file (default: ./voxbridge.toml if it exists).
    #[arg(long, global = true, env = "VOXBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer Twilio calls and bridge them to the OpenAI Realtime API.
    Serve,
    /// Place a call through a running server and follow it live.
    Call(cli::CallArgs),
    /// Calls in the database.
    Calls {
        #[command(subcommand)]
        command: CallsCommand,
    },
    /// API keys for the REST API.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Outbound campaigns and the do-not-call list, through a running server.
    Campaigns {
        #[command(flatten)]
        remote: cli_campaigns::Remote,
        #[command(subcommand)]
        command: cli_campaigns::CampaignsCommand,
    },
    /// Agent profiles (AGENTS_DIR): check, list, show.
    Agents {
        #[command(subcommand)]
        command: cli_agents::AgentsCommand,
    },
    /// Create or upgrade the database schema (DATABASE_URL).
    Migrate,
    /// Run a whole call offline: emulated Twilio caller, simulated model.
    Demo {
        /// Write every client event the model received to this JSONL file.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
    },
    /// Drive many concurrent emulated calls against a server and measure
    /// what the bridge adds (latency each way, loss, late frames, CPU, RSS).
    Loadtest {
        /// Start the server inside this process (the default without --target).
        #[arg(long, conflicts_with = "target")]
        in_process: bool,
        /// A running `voxbridge serve`, e.g. http://127.0.0.1:8080 (its
        /// OPENAI_REALTIME_URL must be ws://127.0.0.1:<model-port>/v1/realtime).
        #[arg(long)]
        target: Option<String>,
        /// With --target: the model simulator listens on 127.0.0.1:PORT.
        #[arg(long, default_value_t = 9100)]
        model_port: u16,
        /// With --target: the server's TWILIO_AUTH_TOKEN.
        #[arg(long, hide_env_values = true)]
        auth_token: Option<String>,
        /// With --target: the server's PUBLIC_URL (default: the target).
        #[arg(long)]
        public_url: Option<String>,
        /// With --target: the server's pid, for CPU and RSS from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Concurrent calls of each step.
        #[arg(long, value_delimiter = ',', default_value = "50,100,250")]
        ramp: Vec<usize>,
        /// Seconds each step holds all its calls.
        #[arg(long, default_value_t = 20.0)]
        hold_s: f64,
        /// Seconds over which the calls of a step are started.
        #[arg(long, default_value_t = 5.0)]
        ramp_up_s: f64,
        /// Limit on the p99 added latency, each direction.
        #[arg(long, default_value_t = 10.0)]
        max_p99_ms: f64,
        /// Run every step even after one fails.
        #[arg(long)]
        no_stop: bool,
        /// A frame arrives at an emulator when the load generator reads it, not
        /// when the kernel received its bytes (the default), so the load
        /// generator's own delays count as latency.
        #[arg(long)]
        read_clock: bool,
        /// Where to write the JSON report.
        #[arg(long, default_value = "target/loadtest/report.json")]
        json: PathBuf,
        /// 50 calls for 10 s in-process; exit 1 on any lost, duplicated,
        /// reordered or late frame (correctness, not speed).
        #[arg(long, conflicts_with_all = ["target", "ramp"])]
        smoke: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CallsCommand {
    /// Newest calls first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One call with its transcript and events.
    Show { id: String },
    /// Every call as JSON lines (with transcripts) on stdout.
    Export,
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[arg(long, default_value = "default")]
        name: String,
    },
    List,
    /// Revoke a key by id or prefix.
    Revoke {
        id: String,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS provider for every rustls user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let default_filter = match cli.command {
        Command::Serve => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    // The load generator given one CPU (the pinned benchmark runs it under `taskset -c 1`)
    // gets a current-thread runtime: a multi-thread runtime there is one worker plus the
    // main thread handing tasks across, and measured 3-7 % more CPU per call
    // (docs/BENCHMARKS.md). With more CPUs it spreads over all of them.
    let single_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if single_cpu && matches!(cli.command, Command::Loadtest { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(cli.config).await,
            Command::Migrate => {
                let config = Config::load(cli.config.as_deref())?;
                let store = voxbridge_store::Store::connect(&config.database_url).await?;
                store.migrate().await?;
                println!("database {} is up to date", store.backend());
                Ok(())
            }
            Command::Agents { command } => cli_agents::run(cli.config.as_deref(), command),
            Command::Keys { command } => cli::keys(cli.config.as_deref(), command).await,
            Command::Calls { command } => cli::calls(cli.config.as_deref(), command).await,
            Command::Call(args) => cli::call(args).await,
            Command::Campaigns { remote, command } => cli_campaigns::run(remote, command).await,
            Command::Loadtest {
                in_process: _,
                target,
                model_port,
                auth_token,
                public_url,
                server_pid,
                ramp,
                hold_s,
                ramp_up_s,
                max_p99_ms,
                no_stop,
                read_clock,
                json,
                smoke,
            } => {
                let secs = |name: &str, v: f64| {
                    Duration::try_from_secs_f64(v)
                        .map_err(|_| anyhow::anyhow!("--{name} must be a number of seconds ≥ 0"))
                };
                let mut opts = if smoke {
                    loadtest::LoadtestOptions::smoke()
                } else {
                    loadtest::LoadtestOptions {
                        ramp,
                        hold: secs("hold-s", hold_s)?,
                        ramp_up: secs("ramp-up-s", ramp_up_s)?,
                        max_p99_ms,
                        ..loadtest::LoadtestOptions::default()
                    }
                };
                opts.stop_on_fail = !no_stop;
                if read_clock {
                    opts.rx_clock = loadtest::RxClock::Read;
                }
                if let Some(base) = target {
                    let auth_token = auth_token
                        .context("--target needs --auth-token (the server's TWILIO_AUTH_TOKEN)")?;
                    opts.target = Some(loadtest::Target {
                        public_url: public_url.unwrap_or_else(|| base.clone()),
                        base_url: base,
                        model_port,
                        auth_token,
                        server_pid,
                    });
                }
                let report = loadtest::run(opts).await?;
                print!("{}", loadtest::markdown(&report));
                loadtest::write_json(&report, &json)
                    .with_context(|| format!("writing {}", json.display()))?;
                println!("JSON report: {}", json.display());
                if smoke && !report.pass {
                    anyhow::bail!(
                        "loadtest smoke: frames were lost, duplicated, reordered or late"
                    );
                }
                Ok(())
            }
            Command::Demo { record, quiet } => {
                let report = demo::run(demo::DemoOptions {
                    record_path: record,
                    quiet,
                })
                .await?;
                print!("{}", demo::summary(&report));
                if report.passed() {
                    Ok(())
                } else {
                    anyhow::bail!("the demo call did not go as scripted")
                }
            }
        }
    })
}

async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    if config.openai_api_key.is_none() {
        anyhow::bail!("OPENAI_API_KEY is not set: voxbridge serve needs it to reach the model");
    }
    if config.twilio_auth_token.is_none() {
        tracing::warn!(
            "TWILIO_AUTH_TOKEN is not set: Twilio webhook and media socket signatures are NOT checked"
        );
    }
    let addr = format!("{}:{}", config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, public_url = %config.public_url, model = %config.openai_model, "voxbridge serving");
    let store = voxbridge_store::Store::connect(&config.database_url)
        .await
        .with_context(|| "opening DATABASE_URL".to_string())?;
    tracing::info!(backend = store.backend(), "database ready");
    let state = App::build_with(config, Some(store));
    app::run(state, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
