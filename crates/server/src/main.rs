//! The `voxbridge` binary.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use voxbridge::config::Config;
use voxbridge::{App, app, demo};

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
    /// Run a whole call offline: emulated Twilio caller, simulated model.
    Demo {
        /// Write every client event the model received to this JSONL file.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS provider for every rustls user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        Command::Serve => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(cli.config).await,
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
    let state = App::build(config);
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
