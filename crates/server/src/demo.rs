//! `voxbridge demo`: a whole phone call, offline.
//!
//! Starts the real server on an ephemeral loopback port, the Realtime
//! simulator as the model, and the Twilio caller emulator as the phone. The
//! caller goes through the real flow (signed voice webhook, TwiML, signed
//! media socket) and a scripted conversation: the agent greets, the caller
//! asks something, interrupts the agent's long answer, presses a key, and
//! says goodbye. The live transcript is printed as it happens, then a
//! summary. No credentials, nothing beyond loopback.

use crate::app::{self, App};
use crate::config::Config;
use crate::hub::{CallEvent, CallEventKind, Speaker};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use voxbridge_sim::caller::{self, CallerConfig, CallerStep};
use voxbridge_sim::realtime::{RealtimeSim, RealtimeSimConfig, SimNotice, SimReply};

/// Options of the demo.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Write every client event the model received to this JSONL file.
    pub record_path: Option<PathBuf>,
    /// Print nothing but the summary.
    pub quiet: bool,
}

/// What the demo observed.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    pub transcript: Vec<(Speaker, String)>,
    pub turns: Vec<(u64, Option<u64>)>,
    pub barge_ins: u64,
    pub truncates_accepted: u64,
    pub truncates_rejected: Vec<String>,
    pub dtmf: Vec<String>,
    pub end_reason: Option<String>,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub agent_audio_ms: u64,
    pub max_buffered_ms: u64,
    pub underruns: u64,
    pub clears: usize,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub warnings: Vec<String>,
}

impl DemoReport {
    /// The demo did what it is meant to show.
    pub fn passed(&self) -> bool {
        self.end_reason.as_deref() == Some("twilio_stop")
            && self.barge_ins >= 1
            && self.truncates_accepted >= 1
            && self.truncates_rejected.is_empty()
            && !self.dtmf.is_empty()
            && self.turns.len() >= 2
            && self.transcript.iter().any(|(s, _)| *s == Speaker::Caller)
            && self.transcript.iter().any(|(s, _)| *s == Speaker::Agent)
    }
}

fn reply(text: &str, audio_ms: u32) -> SimReply {
    SimReply {
        text: text.into(),
        audio_ms,
    }
}

/// The simulated model's side of the conversation.
pub fn demo_model_config() -> RealtimeSimConfig {
    RealtimeSimConfig {
        api_key: Some("sk-demo".into()),
        caller_transcripts: vec![
            "Hi, I'd like to move my dentist appointment to next week.".into(),
            "Sorry, actually Thursday would be better for me.".into(),
            "Great, that works. Thanks, goodbye!".into(),
        ],
        replies: vec![
            reply(
                "Hello, this is Ava, an AI assistant calling for Acme Dental. How can I help?",
                2600,
            ),
            reply(
                "Of course. Next week we have openings on Monday at nine, Tuesday at eleven, \
                 Wednesday at two in the afternoon, and Friday at four. Which of those works best?",
                6000,
            ),
            reply(
                "No problem. Thursday at ten is free. Shall I book it? Press 5 to confirm.",
                2400,
            ),
            reply("Thank you, you're booked for Thursday at ten.", 1600),
            reply("You're welcome. Goodbye!", 1000),
        ],
        ..RealtimeSimConfig::default()
    }
}

/// The caller's script.
pub fn demo_script() -> Vec<CallerStep> {
    vec![
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 400,
            timeout_ms: 15_000,
        },
        CallerStep::Speak { ms: 1_400 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        // Let the agent talk for a second, then talk over it.
        CallerStep::Silence { ms: 1_200 },
        CallerStep::Speak { ms: 1_000 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 400,
            timeout_ms: 15_000,
        },
        CallerStep::Dtmf { digit: '5' },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 400,
            timeout_ms: 15_000,
        },
        CallerStep::Speak { ms: 1_000 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 500,
            timeout_ms: 15_000,
        },
        CallerStep::Hangup,
    ]
}

/// Run the demo call. Errors are setup failures (ports, sockets).
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    let mut sim_cfg = demo_model_config();
    sim_cfg.record_path = opts.record_path.clone();
    let sim = RealtimeSim::start(sim_cfg).await?;
    let mut notices = sim.notices();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let auth_token = "demo-twilio-auth-token";
    let vars = [
        ("PUBLIC_URL".to_owned(), format!("http://127.0.0.1:{port}")),
        ("PORT".to_owned(), port.to_string()),
        ("OPENAI_API_KEY".to_owned(), "sk-demo".to_owned()),
        ("OPENAI_REALTIME_URL".to_owned(), sim.ws_url()),
        ("TWILIO_AUTH_TOKEN".to_owned(), auth_token.to_owned()),
    ];
    let config = Config::from_sources(None, |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })?;
    let public_url = config.public_url.clone();
    let state = App::build(config);
    let mut events = state.hub.subscribe();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::run(state.clone(), listener, async {
        let _ = stop_rx.await;
    }));

    let t0 = Instant::now();
    let quiet = opts.quiet;
    let printer = tokio::spawn(async move {
        let mut report = DemoReport::default();
        loop {
            match events.recv().await {
                Ok(ev) => {
                    let done = matches!(ev.kind, CallEventKind::Ended { .. });
                    record(&mut report, &ev, t0, quiet);
                    if done {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        report
    });

    if !quiet {
        println!(
            "voxbridge demo: server on 127.0.0.1:{port}, simulated model and caller on loopback\n"
        );
    }
    let cfg = CallerConfig {
        voice_url: format!("http://127.0.0.1:{port}/twilio/voice"),
        public_url,
        auth_token: Some(auth_token.into()),
        connect_base: Some(format!("ws://127.0.0.1:{port}")),
        from: "+14155550100".into(),
        to: "+14155550199".into(),
        script: demo_script(),
        ..CallerConfig::default()
    };
    let caller_report = caller::run_call(cfg).await?;
    let mut report = tokio::time::timeout(Duration::from_secs(5), printer)
        .await
        .map_err(|_| anyhow::anyhow!("the call never ended on the server"))??;
    while let Ok(n) = notices.try_recv() {
        match n {
            SimNotice::TruncateAccepted { .. } => report.truncates_accepted += 1,
            SimNotice::TruncateRejected { message, .. } => report.truncates_rejected.push(message),
            _ => {}
        }
    }
    report.frames_sent = caller_report.frames_sent;
    report.frames_received = caller_report.received_frames.len() as u64;
    report.agent_audio_ms = (caller_report.heard.len() / 8) as u64;
    report.max_buffered_ms = caller_report.max_buffered_ms;
    report.underruns = caller_report.underruns;
    report.clears = caller_report.clears.len();
    let _ = stop_tx.send(());
    let _ = server.await;
    sim.shutdown().await;
    Ok(report)
}

fn record(report: &mut DemoReport, ev: &CallEvent, t0: Instant, quiet: bool) {
    let at = t0.elapsed().as_secs_f64();
    let line = match &ev.kind {
        CallEventKind::Answered { from, to } => Some(format!("call from {from} to {to} answered")),
        CallEventKind::StreamStarted { .. } => Some("media stream started".to_owned()),
        CallEventKind::Transcript { speaker, text } => {
            report.transcript.push((*speaker, text.clone()));
            Some(match speaker {
                Speaker::Agent => format!("AGENT : {text}"),
                Speaker::Caller => format!("CALLER: {text}"),
            })
        }
        CallEventKind::Dtmf { digit } => {
            report.dtmf.push(digit.clone());
            Some(format!("CALLER: pressed {digit}"))
        }
        CallEventKind::BargeIn {
            truncated_ms,
            dropped_ms,
        } => {
            report.barge_ins += 1;
            Some(format!(
                "  (caller interrupted: agent audio cut at {} ms, {dropped_ms} ms never played)",
                truncated_ms.map_or("-".to_owned(), |t| t.to_string())
            ))
        }
        CallEventKind::Turn { model_ms, heard_ms } => {
            report.turns.push((*model_ms, *heard_ms));
            None
        }
        CallEventKind::Usage {
            input_tokens,
            output_tokens,
            ..
        } => {
            report.input_tokens += input_tokens;
            report.output_tokens += output_tokens;
            None
        }
        CallEventKind::Warning { message } => {
            report.warnings.push(message.clone());
            Some(format!("  warning: {message}"))
        }
        CallEventKind::Ended { reason } => {
            report.end_reason = Some(reason.clone());
            Some(format!("call ended ({reason})"))
        }
        CallEventKind::ToolCall { name, ok, .. } => Some(format!(
            "  (tool {name}: {})",
            if *ok { "ok" } else { "error" }
        )),
        CallEventKind::SurveyAnswer { question, answer } => {
            Some(format!("  (survey: {question} -> {answer})"))
        }
        CallEventKind::OptedOut { number } => Some(format!("  ({number} opted out)")),
        CallEventKind::Transferred { to, .. } => Some(format!("  (transferred to {to})")),
        CallEventKind::ModelReady { .. }
        | CallEventKind::Status { .. }
        | CallEventKind::AnsweredBy { .. }
        | CallEventKind::Recording { .. } => None,
    };
    if let Some(line) = line
        && !quiet
    {
        println!("[{at:6.2}s] {line}");
        let _ = std::io::stdout().flush();
    }
}

/// The summary printed after the call.
pub fn summary(r: &DemoReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nsummary");
    let _ = writeln!(
        s,
        "  turns answered        {} (caller stopped speaking -> agent audio from model / heard by caller)",
        r.turns.len()
    );
    for (i, (model, heard)) in r.turns.iter().enumerate() {
        let _ = writeln!(
            s,
            "    turn {}: {model} ms / {} ms",
            i + 1,
            heard.map_or("-".into(), |h| h.to_string())
        );
    }
    let _ = writeln!(
        s,
        "  barge-ins             {} (truncates accepted by the model: {}, rejected: {})",
        r.barge_ins,
        r.truncates_accepted,
        r.truncates_rejected.len()
    );
    let _ = writeln!(s, "  DTMF                  {}", r.dtmf.join(", "));
    let _ = writeln!(
        s,
        "  caller frames sent    {}   agent frames received {} ({} ms heard, {} clear)",
        r.frames_sent, r.frames_received, r.agent_audio_ms, r.clears
    );
    let _ = writeln!(
        s,
        "  pacing                at most {} ms buffered at Twilio, {} underruns",
        r.max_buffered_ms, r.underruns
    );
    let _ = writeln!(
        s,
        "  tokens                {} in, {} out",
        r.input_tokens, r.output_tokens
    );
    let _ = writeln!(
        s,
        "  result                {}",
        if r.passed() { "ok" } else { "FAILED" }
    );
    s
}
