//! `voxbridge loadtest`: many concurrent emulated calls against one bridge.
//!
//! Each emulated call goes through the real Twilio flow (signed voice
//! webhook, TwiML, signed media socket) with the Twilio caller emulator, and
//! the Realtime simulator plays the model. The server is either started in
//! this process (on its own runtime, threads named `vb-server`, so its CPU
//! can be told apart from the load generator's) or is a separately started
//! `voxbridge serve` (`--target`), whose `OPENAI_REALTIME_URL` points at the
//! simulator this process starts on `--model-port`.
//!
//! # The conversation
//!
//! The caller sends a media frame every 20 ms for the whole call: low-level
//! noise, plus a 600 ms speech burst every 6 s (the first 4.5-5.5 s in, after
//! the greeting). The simulator's VAD answers each burst with a 2-3 s reply.
//! The caller never talks while the agent talks, so no barge-in drops audio.
//! The last burst starts at least 5.5 s before the call hangs up, so every
//! reply has been played out when the caller sends `stop`.
//!
//! # Measurements (see [`voxbridge_sim::realtime::probe`])
//!
//! * uplink latency: every caller frame is tagged (call, sequence, send
//!   time); the simulator reads the tag of each `input_audio_buffer.append`
//!   and checks the sequence per connection (lost, duplicated, reordered);
//! * downlink latency: the first delta of each response is tagged with its
//!   send time; the caller measures when that frame arrives;
//! * downlink loss: audio bytes the simulator sent vs the caller received,
//!   per call, after hang-up;
//! * late frames: the caller's underruns (a frame arriving after its
//!   playback deadline inside a burst);
//! * "arriving" is when the kernel received a message's bytes (`SO_TIMESTAMPNS`,
//!   [`voxbridge_sim::stamp`]), so the load generator's own backlog is not the
//!   bridge's latency; `--read-clock` takes the time the message was read instead;
//! * the load generator's punctuality: caller ticks served > 5 ms late (its frames
//!   then reach the bridge in bunches);
//! * CPU and RSS from `/proc`; pre-connect: voice webhook POST ->
//!   `session.updated` sent by the model.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use voxbridge_sim::caller::{self, CallEnd, CallerConfig, CallerReport, CallerStep, RunOptions};
use voxbridge_sim::realtime::probe::{Probe, ProbeEvent};
use voxbridge_sim::realtime::{RealtimeSim, RealtimeSimConfig, SimReply};

use crate::app::{self, App};
use crate::config::Config;

/// Bytes of a 20 ms µ-law frame.
const FRAME: u64 = 160;
/// The caller's speech bursts.
const SPEECH_MS: u64 = 600;
const CYCLE_MS: u64 = 6_000;
const FIRST_SPEECH_MS: u64 = 4_500;
/// A burst must start at least this long before the hang-up (reply drained).
const TAIL_MS: u64 = 5_500;
/// Frames of a call's first second.
const STARTUP_FRAMES: u32 = 50;
/// A latency failure is flagged as partly the load generator's when more than this
/// share of caller ticks (in %) were served more than 5 ms late.
const MAX_LATE_TICK_PCT: f64 = 1.0;
/// Name prefix of the in-process server's threads.
const SERVER_THREAD: &str = "vb-server";

/// A separately started `voxbridge serve`.
#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The server's PUBLIC_URL (signatures are computed over it); default `base_url`.
    pub public_url: String,
    /// The simulator listens on `127.0.0.1:model_port`.
    pub model_port: u16,
    /// The server's TWILIO_AUTH_TOKEN.
    pub auth_token: String,
    /// The server's pid, for CPU and RSS.
    pub server_pid: Option<u32>,
}

/// When a frame "arrives" at an emulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RxClock {
    /// When the kernel received its bytes (`SO_TIMESTAMPNS`), so the load generator's
    /// own queue near saturation is not counted as the bridge's latency.
    #[default]
    Kernel,
    /// When the load generator read it (the method before 2026-11-22).
    Read,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadtestOptions {
    /// `None`: start the server in this process.
    pub target: Option<Target>,
    /// Concurrent calls of each step.
    pub ramp: Vec<usize>,
    /// Steady state per step, all calls up.
    pub hold: Duration,
    /// The calls of a step start spread over this time.
    pub ramp_up: Duration,
    /// Limit on the p99 latency added in each direction.
    pub max_p99_ms: f64,
    /// Also judge latency (false: correctness only, e.g. `--smoke`).
    pub check_latency: bool,
    /// Stop at the first step that fails.
    pub stop_on_fail: bool,
    /// Progress on stderr.
    pub progress: bool,
    /// When a frame "arrives" at an emulator (see [`RxClock`]).
    pub rx_clock: RxClock,
}

impl Default for LoadtestOptions {
    fn default() -> Self {
        Self {
            target: None,
            ramp: vec![50, 100, 250],
            hold: Duration::from_secs(20),
            ramp_up: Duration::from_secs(5),
            max_p99_ms: 10.0,
            check_latency: true,
            stop_on_fail: true,
            progress: true,
            rx_clock: RxClock::Kernel,
        }
    }
}

impl LoadtestOptions {
    /// `--smoke`: 50 calls for 10 s in-process, correctness only.
    pub fn smoke() -> Self {
        Self {
            ramp: vec![50],
            hold: Duration::from_secs(10),
            ramp_up: Duration::from_secs(2),
            check_latency: false,
            ..Self::default()
        }
    }
}

/// Latency percentiles of one direction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Pre-connect: voice webhook POST -> the model's `session.updated`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PreConnect {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Calls whose `session.updated` was sent before Twilio's `start`.
    pub before_start: u64,
}

/// One ramp step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepReport {
    pub calls: usize,
    /// Calls that never got a media session (webhook or upgrade failed).
    pub failed_calls: u64,
    /// Calls whose frames never reached the model.
    pub unmatched_calls: u64,
    /// Calls that did not end by the caller's hang-up.
    pub abnormal_ends: u64,
    pub errors: Vec<String>,
    pub uplink: Latency,
    /// The first second (50 frames) of each call only (also in `uplink`):
    /// frames sent while the model socket may still be opening.
    pub uplink_first_second: Latency,
    /// Every frame after the first second of its call.
    pub uplink_after_first_second: Latency,
    pub downlink: Latency,
    /// Caller media frames sent / distinct tagged frames the model received.
    pub up_frames_sent: u64,
    pub up_frames_received: u64,
    pub up_lost: u64,
    pub up_duplicated: u64,
    pub up_reordered: u64,
    /// Bridge silence-fill appends (no tag).
    pub up_fill_appends: u64,
    /// 160-byte frames of model audio sent by the model / received by the callers.
    pub down_frames_sent: u64,
    pub down_frames_received: u64,
    pub down_lost: u64,
    pub down_duplicated: u64,
    /// Agent responses with a tagged first delta.
    pub responses: u64,
    /// Frames that arrived after their playback deadline (caller underruns).
    pub late: u64,
    /// Caller ticks served more than 5 ms late (the load generator falling behind, so
    /// its frames reach the bridge in bunches), in % of the frames sent, and the
    /// latest one.
    pub loadgen_late_tick_pct: f64,
    pub loadgen_max_tick_lag_ms: f64,
    /// `clear`s received (barge-ins; none expected).
    pub clears: u64,
    pub protocol_errors: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Length of the CPU window (the hold, all calls up).
    pub window_s: f64,
    /// Server CPU, % of one core.
    pub server_cpu_pct: f64,
    pub server_cpu_pct_per_call: f64,
    /// `server_cpu_pct_per_call` split into user space and kernel (`/proc` utime and
    /// stime): a change to either shows in its own column, not diluted in the total.
    pub server_user_pct_per_call: f64,
    pub server_sys_pct_per_call: f64,
    pub loadgen_cpu_pct: f64,
    pub loadgen_cpu_pct_per_call: f64,
    pub loadgen_user_pct_per_call: f64,
    pub loadgen_sys_pct_per_call: f64,
    /// Server RSS at the end of the hold, and (that − idle RSS) / calls.
    pub server_rss_kib: u64,
    pub server_rss_kib_per_call: f64,
    pub preconnect: PreConnect,
    pub pass: bool,
    pub fail_reasons: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// `in-process` or `target <url>`.
    pub mode: String,
    /// When a frame counted as received.
    pub rx_clock: RxClock,
    pub note: String,
    pub server_pid: Option<u32>,
    pub loadgen_pid: u32,
    pub clk_tck: u64,
    pub cores: usize,
    pub ramp: Vec<usize>,
    pub hold_s: f64,
    pub ramp_up_s: f64,
    pub max_p99_ms: f64,
    pub check_latency: bool,
    /// Server RSS before the first step.
    pub idle_rss_kib: u64,
    pub steps: Vec<StepReport>,
    /// The largest step that passed.
    pub max_clean_calls: Option<usize>,
    /// Every step run passed.
    pub pass: bool,
}

// ---------------------------------------------------------------------------
// Latency histogram (lock-free)

/// 10 µs buckets up to 50 ms, 1 ms buckets up to 2 s, then one overflow bucket.
struct Hist {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

const FINE_US: u64 = 10;
const FINE_N: u64 = 5_000;
const COARSE_US: u64 = 1_000;
const COARSE_N: u64 = 1_950;

impl Hist {
    fn new() -> Self {
        Self {
            buckets: (0..FINE_N + COARSE_N + 1)
                .map(|_| AtomicU64::new(0))
                .collect(),
            max_us: AtomicU64::new(0),
        }
    }

    fn index(us: u64) -> usize {
        let fine_end = FINE_US * FINE_N;
        let i = if us < fine_end {
            us / FINE_US
        } else {
            (FINE_N + (us - fine_end) / COARSE_US).min(FINE_N + COARSE_N)
        };
        i as usize
    }

    /// Upper bound of bucket `i`, µs.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < FINE_N {
            (i + 1) * FINE_US
        } else {
            FINE_US * FINE_N + (i - FINE_N + 1) * COARSE_US
        }
    }

    fn record(&self, us: u64) {
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.max_us.store(0, Ordering::Relaxed);
    }

    fn summary(&self) -> Latency {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        let max_us = self.max_us.load(Ordering::Relaxed);
        let pct = |q: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
            let mut acc = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= rank {
                    return Self::upper(i).min(max_us) as f64 / 1000.0;
                }
            }
            max_us as f64 / 1000.0
        };
        Latency {
            samples: n,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: max_us as f64 / 1000.0,
        }
    }
}

// ---------------------------------------------------------------------------
// The probe: what the simulator reports

#[derive(Debug, Clone, Copy, Default)]
struct ConnClosed {
    unique: u64,
    duplicates: u64,
    reordered: u64,
    untagged: u64,
    delta_bytes: u64,
}

#[derive(Debug, Default)]
struct ConnStats {
    call: Option<u32>,
    session_updated: Option<Instant>,
    closed: Option<ConnClosed>,
}

struct Meter {
    up: Hist,
    /// The first [`STARTUP_FRAMES`] frames of each call (also in `up`).
    up_startup: Hist,
    /// The other frames.
    up_steady: Hist,
    down: Hist,
    conns: Mutex<HashMap<u64, ConnStats>>,
}

impl Meter {
    fn on_event(&self, ev: &ProbeEvent) {
        match *ev {
            ProbeEvent::Uplink {
                latency_us, seq, ..
            } => {
                self.up.record(u64::from(latency_us));
                if seq < STARTUP_FRAMES {
                    self.up_startup.record(u64::from(latency_us));
                } else {
                    self.up_steady.record(u64::from(latency_us));
                }
            }
            ProbeEvent::SessionUpdated { conn, at } => {
                let mut m = lock(&self.conns);
                let c = m.entry(conn).or_default();
                c.session_updated.get_or_insert(at);
            }
            ProbeEvent::Identified { conn, call } => {
                lock(&self.conns).entry(conn).or_default().call = Some(call);
            }
            ProbeEvent::Closed {
                conn,
                call,
                unique_frames,
                duplicates,
                reordered,
                untagged_appends,
                delta_bytes,
                ..
            } => {
                let mut m = lock(&self.conns);
                let c = m.entry(conn).or_default();
                if c.call.is_none() {
                    c.call = call;
                }
                c.closed = Some(ConnClosed {
                    unique: unique_frames,
                    duplicates,
                    reordered,
                    untagged: untagged_appends,
                    delta_bytes,
                });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// /proc

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`, else 100).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// (comm, utime + stime) of a `/proc/.../stat` file.
pub fn stat_ticks(path: &str) -> Option<(String, u64)> {
    stat_times(path).map(|(comm, t)| (comm, t.user + t.sys))
}

/// CPU time in clock ticks, split: user space and kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ticks {
    pub user: u64,
    pub sys: u64,
}

impl Ticks {
    fn minus(self, other: Ticks) -> Ticks {
        Ticks {
            user: self.user.saturating_sub(other.user),
            sys: self.sys.saturating_sub(other.sys),
        }
    }
}

/// (comm, utime and stime) of a `/proc/.../stat` file.
pub fn stat_times(path: &str) -> Option<(String, Ticks)> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// `man 5 proc`, `/proc/pid/stat`: the command name is in parentheses and may itself
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(s: &str) -> Option<(String, Ticks)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let user: u64 = rest.get(11)?.parse().ok()?;
    let sys: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, Ticks { user, sys }))
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
enum ServerProc {
    /// Threads of this process named `vb-server*`.
    InProcess,
    External(Option<u32>),
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    server: Ticks,
    loadgen: Ticks,
}

impl ServerProc {
    fn sample(self) -> CpuSample {
        let at = Instant::now();
        let own = stat_times("/proc/self/stat").map_or(Ticks::default(), |(_, t)| t);
        match self {
            ServerProc::InProcess => {
                let mut server = Ticks::default();
                if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
                    for e in dir.flatten() {
                        let p = format!("{}/stat", e.path().display());
                        if let Some((comm, t)) = stat_times(&p)
                            && comm.starts_with(SERVER_THREAD)
                        {
                            server.user += t.user;
                            server.sys += t.sys;
                        }
                    }
                }
                CpuSample {
                    at,
                    server,
                    loadgen: own.minus(server),
                }
            }
            ServerProc::External(pid) => CpuSample {
                at,
                server: pid
                    .and_then(|p| stat_times(&format!("/proc/{p}/stat")))
                    .map_or(Ticks::default(), |(_, t)| t),
                loadgen: own,
            },
        }
    }

    fn rss(self) -> u64 {
        match self {
            ServerProc::InProcess => rss_kib("self"),
            ServerProc::External(Some(p)) => rss_kib(&p.to_string()),
            ServerProc::External(None) => 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Setup

/// Where the callers go.
#[derive(Debug, Clone)]
struct Endpoint {
    voice_url: String,
    public_url: String,
    connect_base: String,
    auth_token: String,
}

/// The in-process server, on its own runtime.
struct InProcess {
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        self.rt.shutdown_background();
    }
}

fn start_in_process(sim_url: &str, max_calls: usize) -> anyhow::Result<(InProcess, Endpoint)> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let port = std_listener.local_addr()?.port();
    let auth_token = "loadtest-twilio-auth-token".to_owned();
    let vars = [
        ("PUBLIC_URL".to_owned(), format!("http://127.0.0.1:{port}")),
        ("PORT".to_owned(), port.to_string()),
        ("OPENAI_API_KEY".to_owned(), "sk-load".to_owned()),
        ("OPENAI_REALTIME_URL".to_owned(), sim_url.to_owned()),
        ("TWILIO_AUTH_TOKEN".to_owned(), auth_token.clone()),
        ("MAX_CALLS".to_owned(), (max_calls * 2 + 16).to_string()),
    ];
    // Other settings (e.g. PACING_LEAD_MS) come from the environment.
    let config = Config::from_sources(None, |k| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(k).ok())
    })?;
    let public_url = config.public_url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(SERVER_THREAD)
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let done = rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let state = App::build(config);
        app::run(state, listener, async {
            let _ = stop_rx.await;
        })
        .await
    });
    Ok((
        InProcess {
            rt,
            stop: Some(stop_tx),
            done: Some(done),
        },
        Endpoint {
            voice_url: format!("http://127.0.0.1:{port}/twilio/voice"),
            public_url,
            connect_base: format!("ws://127.0.0.1:{port}"),
            auth_token,
        },
    ))
}

/// Replies of 2-3 s (multiples of 20 ms, so every delta is whole frames).
fn sim_replies() -> Vec<SimReply> {
    let lens = [2_400, 2_800, 2_200, 3_000, 2_600, 2_000];
    (0..64)
        .map(|i| {
            SimReply::new(
                "Sure, I can help with that. Let me check the calendar for you.",
                lens[i % lens.len()],
            )
        })
        .collect()
}

/// The caller's script for a call of `total_ms`: noise, a 600 ms burst every 6 s.
fn script(total_ms: u64, call: u32) -> Vec<CallerStep> {
    let mut steps = Vec::new();
    let mut t = 0u64;
    let mut next = FIRST_SPEECH_MS + (u64::from(call) * 397) % 1_000;
    while next + TAIL_MS <= total_ms {
        steps.push(CallerStep::Silence {
            ms: (next - t) as u32,
        });
        steps.push(CallerStep::Speak {
            ms: SPEECH_MS as u32,
        });
        t = next + SPEECH_MS;
        next += CYCLE_MS;
    }
    steps.push(CallerStep::Silence {
        ms: total_ms.saturating_sub(t).max(20) as u32,
    });
    steps.push(CallerStep::Hangup);
    steps
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------
// Run

struct CallOutcome {
    call: u32,
    webhook_at: Instant,
    result: Result<CallerReport, String>,
}

struct Ctx {
    endpoint: Endpoint,
    meter: Arc<Meter>,
    server: ServerProc,
    clk_tck: u64,
    idle_rss: u64,
    next_call: u32,
}

/// Run the ramp. Errors are setup failures (ports, sockets, configuration).
pub async fn run(opts: LoadtestOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        !opts.ramp.is_empty() && opts.ramp.iter().all(|&n| n > 0),
        "the ramp needs at least one step, each of at least one call"
    );
    let max_calls = opts.ramp.iter().copied().max().unwrap_or(1);
    let meter = Arc::new(Meter {
        up: Hist::new(),
        up_startup: Hist::new(),
        up_steady: Hist::new(),
        down: Hist::new(),
        conns: Mutex::new(HashMap::new()),
    });
    let probe_meter = meter.clone();
    let sim_cfg = RealtimeSimConfig {
        api_key: None,
        replies: sim_replies(),
        keep_events: false,
        probe: Some(Probe::new(move |ev| probe_meter.on_event(ev))),
        kernel_rx_stamps: opts.rx_clock == RxClock::Kernel,
        ..RealtimeSimConfig::default()
    };
    let (sim, in_process, endpoint, server, mode) = match &opts.target {
        None => {
            let sim = RealtimeSim::start(sim_cfg).await?;
            let (ip, ep) = start_in_process(&sim.ws_url(), max_calls)?;
            (
                sim,
                Some(ip),
                ep,
                ServerProc::InProcess,
                "in-process".to_owned(),
            )
        }
        Some(t) => {
            let sim = RealtimeSim::start_on(("127.0.0.1", t.model_port), sim_cfg)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "binding the model simulator on 127.0.0.1:{}: {e}",
                        t.model_port
                    )
                })?;
            let url = url::Url::parse(&t.base_url)
                .map_err(|e| anyhow::anyhow!("--target {}: {e}", t.base_url))?;
            anyhow::ensure!(url.scheme() == "http", "--target must be http://");
            let host = url.host_str().unwrap_or("127.0.0.1");
            let port = url.port_or_known_default().unwrap_or(80);
            let ep = Endpoint {
                voice_url: format!("{}/twilio/voice", t.base_url.trim_end_matches('/')),
                public_url: t.public_url.clone(),
                connect_base: format!("ws://{host}:{port}"),
                auth_token: t.auth_token.clone(),
            };
            (
                sim,
                None,
                ep,
                ServerProc::External(t.server_pid),
                format!("target {}", t.base_url),
            )
        }
    };
    check_fd_limit(max_calls, in_process.is_some());
    // Let the server come up before measuring its idle RSS.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clk_tck = clk_tck();
    let mut report = LoadReport {
        note: match server {
            ServerProc::InProcess => "in-process: the server, the model simulator and the callers share one process; \
server CPU counts the server runtime's threads (vb-server), loadgen CPU the rest of the process; RSS is the whole process"
                .to_owned(),
            ServerProc::External(None) => "no --server-pid: server CPU and RSS not measured".to_owned(),
            ServerProc::External(Some(_)) => "server CPU and RSS from /proc/<server-pid>, loadgen CPU from /proc/self".to_owned(),
        },
        mode,
        rx_clock: opts.rx_clock,
        server_pid: match server {
            ServerProc::InProcess => Some(std::process::id()),
            ServerProc::External(p) => p,
        },
        loadgen_pid: std::process::id(),
        clk_tck,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ramp: opts.ramp.clone(),
        hold_s: opts.hold.as_secs_f64(),
        ramp_up_s: opts.ramp_up.as_secs_f64(),
        max_p99_ms: opts.max_p99_ms,
        check_latency: opts.check_latency,
        idle_rss_kib: server.rss(),
        ..LoadReport::default()
    };
    let mut ctx = Ctx {
        endpoint,
        meter,
        server,
        clk_tck,
        idle_rss: report.idle_rss_kib,
        next_call: 1,
    };
    let mut all_pass = true;
    for &n in &opts.ramp {
        if opts.progress {
            eprintln!(
                "loadtest: {n} calls (ramp-up {:.1} s, hold {:.1} s)",
                opts.ramp_up.as_secs_f64(),
                opts.hold.as_secs_f64()
            );
        }
        let step = run_step(&mut ctx, &opts, n).await;
        if opts.progress {
            eprintln!("{}", markdown_row(&step));
        }
        let pass = step.pass;
        all_pass &= pass;
        if pass {
            report.max_clean_calls = Some(report.max_clean_calls.unwrap_or(0).max(n));
        }
        report.steps.push(step);
        if !pass && opts.stop_on_fail {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.pass = all_pass;
    if let Some(ip) = in_process {
        ip.shutdown().await;
    }
    sim.shutdown().await;
    Ok(report)
}

fn check_fd_limit(calls: usize, in_process: bool) {
    let need = calls * if in_process { 5 } else { 3 } + 64;
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        });
    if let Some(soft) = soft
        && soft < need
    {
        eprintln!(
            "loadtest: warning: {calls} calls need about {need} file descriptors, the limit is {soft} (ulimit -n)"
        );
    }
}

async fn run_step(ctx: &mut Ctx, opts: &LoadtestOptions, n: usize) -> StepReport {
    lock(&ctx.meter.conns).clear();
    ctx.meter.up.reset();
    ctx.meter.up_startup.reset();
    ctx.meter.up_steady.reset();
    ctx.meter.down.reset();
    let first_call = ctx.next_call;
    ctx.next_call = (ctx.next_call + n as u32 + 1) & voxbridge_sim::realtime::probe::SEQ_MASK;

    let t0 = tokio::time::Instant::now();
    let hold_start = t0 + opts.ramp_up;
    let hold_end = hold_start + opts.hold;
    let (hang_tx, hang_rx) = tokio::sync::watch::channel(false);
    let mut set = JoinSet::new();
    for i in 0..n {
        let call = (first_call + i as u32) & voxbridge_sim::realtime::probe::SEQ_MASK;
        let start_at = t0 + opts.ramp_up.mul_f64(i as f64 / n as f64);
        let ep = ctx.endpoint.clone();
        let hang = hang_rx.clone();
        let kernel_rx_stamps = opts.rx_clock == RxClock::Kernel;
        set.spawn(async move {
            tokio::time::sleep_until(start_at).await;
            let total = hold_end.saturating_duration_since(tokio::time::Instant::now());
            let cfg = CallerConfig {
                voice_url: ep.voice_url,
                public_url: ep.public_url,
                auth_token: Some(ep.auth_token),
                connect_base: Some(ep.connect_base),
                from: format!("+1415555{:04}", call % 10_000),
                to: "+14155550199".into(),
                script: script(total.as_millis() as u64, call),
                hangup: Some(hang),
                ..CallerConfig::default()
            };
            let run_opts = RunOptions {
                record_audio: false,
                keep_log: false,
                tag_call: Some(call),
                safety_timeout: Some(total + Duration::from_secs(30)),
                kernel_rx_stamps,
            };
            let webhook_at = Instant::now();
            let result = caller::run_call_with(cfg, run_opts)
                .await
                .map_err(|e| e.to_string());
            CallOutcome {
                call,
                webhook_at,
                result,
            }
        });
    }

    tokio::time::sleep_until(hold_start).await;
    let cpu0 = ctx.server.sample();
    tokio::time::sleep_until(hold_end).await;
    let cpu1 = ctx.server.sample();
    let rss = ctx.server.rss();

    // Collect the calls; a backstop hangs up what is still running.
    let mut outcomes = Vec::with_capacity(n);
    let backstop = tokio::time::sleep_until(hold_end + Duration::from_secs(15));
    tokio::pin!(backstop);
    let mut hung_up = false;
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(o)) => outcomes.push(o),
                Some(Err(e)) => outcomes.push(CallOutcome { call: u32::MAX, webhook_at: Instant::now(), result: Err(format!("call task: {e}")) }),
                None => break,
            },
            () = &mut backstop, if !hung_up => {
                hung_up = true;
                let _ = hang_tx.send(true);
            }
        }
    }
    // Wait for the model side of every call to close (its totals come then).
    let calls: std::collections::HashSet<u32> = outcomes.iter().map(|o| o.call).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = {
            let m = lock(&ctx.meter.conns);
            let closed_calls = m
                .values()
                .filter(|c| c.closed.is_some())
                .filter_map(|c| c.call)
                .filter(|c| calls.contains(c))
                .count();
            let open_conns = m.values().filter(|c| c.closed.is_none()).count();
            let expected = outcomes.iter().filter(|o| o.result.is_ok()).count();
            closed_calls < expected || open_conns > 0
        };
        if !open || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    aggregate(ctx, opts, n, outcomes, cpu0, cpu1, rss)
}

fn aggregate(
    ctx: &Ctx,
    opts: &LoadtestOptions,
    n: usize,
    outcomes: Vec<CallOutcome>,
    cpu0: CpuSample,
    cpu1: CpuSample,
    rss: u64,
) -> StepReport {
    let mut s = StepReport {
        calls: n,
        ..StepReport::default()
    };
    let mut late_ticks = 0u64;
    let conns = lock(&ctx.meter.conns);
    let mut by_call: HashMap<u32, (&ConnStats, usize)> = HashMap::new();
    for c in conns.values() {
        if let Some(call) = c.call {
            let e = by_call.entry(call).or_insert((c, 0));
            e.1 += 1;
        }
    }
    let mut pre = Vec::new();
    let mut down_bytes_sent = 0u64;
    let mut down_bytes_recv = 0u64;
    let mut down_lost_bytes = 0u64;
    let mut down_dup_bytes = 0u64;
    for o in &outcomes {
        let r = match &o.result {
            Ok(r) => r,
            Err(e) => {
                s.failed_calls += 1;
                if s.errors.len() < 5 {
                    s.errors.push(e.clone());
                }
                continue;
            }
        };
        s.up_frames_sent += r.frames_sent;
        s.late += r.underruns;
        late_ticks += r.late_ticks;
        s.loadgen_max_tick_lag_ms = s
            .loadgen_max_tick_lag_ms
            .max(r.max_tick_lag_us as f64 / 1000.0);
        s.clears += r.clears.len() as u64;
        s.protocol_errors += r.protocol_errors.len() as u64;
        if r.end != CallEnd::Hangup {
            s.abnormal_ends += 1;
            if s.errors.len() < 5 {
                s.errors.push(format!("call {} ended: {:?}", o.call, r.end));
            }
        }
        if let Some(e) = r.protocol_errors.first()
            && s.errors.len() < 5
        {
            s.errors.push(format!("call {}: {e}", o.call));
        }
        for &lat in &r.downlink_latency_us {
            ctx.meter.down.record(u64::from(lat));
        }
        down_bytes_recv += r.received_bytes;
        let Some((c, _)) = by_call.get(&o.call) else {
            s.unmatched_calls += 1;
            s.up_lost += r.frames_sent;
            continue;
        };
        let closed = c.closed.unwrap_or_default();
        if c.closed.is_none() && s.errors.len() < 5 {
            s.errors
                .push(format!("call {}: the model socket never closed", o.call));
        }
        s.up_frames_received += closed.unique;
        s.up_lost += r.frames_sent.saturating_sub(closed.unique);
        s.up_duplicated += closed.duplicates;
        s.up_reordered += closed.reordered;
        s.up_fill_appends += closed.untagged;
        down_bytes_sent += closed.delta_bytes;
        down_lost_bytes += closed.delta_bytes.saturating_sub(r.received_bytes);
        down_dup_bytes += r.received_bytes.saturating_sub(closed.delta_bytes);
        if let Some(at) = c.session_updated {
            pre.push(ms_between(o.webhook_at, at));
            if r.started_at.is_some_and(|st| at < st) {
                s.preconnect.before_start += 1;
            }
        }
    }
    drop(conns);
    if s.up_frames_sent > 0 {
        s.loadgen_late_tick_pct = late_ticks as f64 * 100.0 / s.up_frames_sent as f64;
    }
    s.down_frames_sent = down_bytes_sent.div_ceil(FRAME);
    s.down_frames_received = down_bytes_recv.div_ceil(FRAME);
    s.down_lost = down_lost_bytes.div_ceil(FRAME);
    s.down_duplicated = down_dup_bytes.div_ceil(FRAME);
    s.uplink = ctx.meter.up.summary();
    s.uplink_first_second = ctx.meter.up_startup.summary();
    s.uplink_after_first_second = ctx.meter.up_steady.summary();
    s.downlink = ctx.meter.down.summary();
    s.responses = s.downlink.samples;
    s.lost = s.up_lost + s.down_lost;
    s.duplicated = s.up_duplicated + s.down_duplicated;
    s.reordered = s.up_reordered;

    pre.sort_by(f64::total_cmp);
    s.preconnect.samples = pre.len() as u64;
    s.preconnect.p50_ms = percentile(&pre, 0.50);
    s.preconnect.p99_ms = percentile(&pre, 0.99);
    s.preconnect.max_ms = pre.last().copied().unwrap_or(0.0);

    let secs = cpu1.at.saturating_duration_since(cpu0.at).as_secs_f64();
    s.window_s = secs;
    if secs > 0.0 {
        let pct = |ticks: u64| ticks as f64 / ctx.clk_tck as f64 / secs * 100.0;
        let server = cpu1.server.minus(cpu0.server);
        let loadgen = cpu1.loadgen.minus(cpu0.loadgen);
        s.server_cpu_pct = pct(server.user + server.sys);
        s.loadgen_cpu_pct = pct(loadgen.user + loadgen.sys);
        s.server_cpu_pct_per_call = s.server_cpu_pct / n as f64;
        s.loadgen_cpu_pct_per_call = s.loadgen_cpu_pct / n as f64;
        s.server_user_pct_per_call = pct(server.user) / n as f64;
        s.server_sys_pct_per_call = pct(server.sys) / n as f64;
        s.loadgen_user_pct_per_call = pct(loadgen.user) / n as f64;
        s.loadgen_sys_pct_per_call = pct(loadgen.sys) / n as f64;
    }
    s.server_rss_kib = rss;
    s.server_rss_kib_per_call = rss.saturating_sub(ctx.idle_rss) as f64 / n as f64;

    s.fail_reasons = fail_reasons(&s, opts);
    s.pass = s.fail_reasons.is_empty();
    s
}

/// Why a measured step does not pass (empty: it passes).
fn fail_reasons(s: &StepReport, opts: &LoadtestOptions) -> Vec<String> {
    let mut why = Vec::new();
    if s.failed_calls > 0 {
        why.push(format!("{} calls failed", s.failed_calls));
    }
    if s.unmatched_calls > 0 {
        why.push(format!(
            "{} calls never reached the model",
            s.unmatched_calls
        ));
    }
    if s.abnormal_ends > 0 {
        why.push(format!("{} calls ended abnormally", s.abnormal_ends));
    }
    if s.lost > 0 {
        why.push(format!(
            "{} frames lost ({} up, {} down)",
            s.lost, s.up_lost, s.down_lost
        ));
    }
    if s.duplicated > 0 {
        why.push(format!("{} frames duplicated", s.duplicated));
    }
    if s.reordered > 0 {
        why.push(format!("{} frames reordered", s.reordered));
    }
    if s.late > 0 {
        why.push(format!("{} late frames", s.late));
    }
    if s.protocol_errors > 0 {
        why.push(format!("{} protocol errors", s.protocol_errors));
    }
    if s.uplink.samples == 0 || s.downlink.samples == 0 {
        why.push("no latency samples in one direction".to_owned());
    }
    if opts.check_latency {
        let before = why.len();
        if s.uplink.p99_ms > opts.max_p99_ms {
            why.push(format!(
                "uplink p99 {:.2} ms > {} ms",
                s.uplink.p99_ms, opts.max_p99_ms
            ));
        }
        if s.downlink.p99_ms > opts.max_p99_ms {
            why.push(format!(
                "downlink p99 {:.2} ms > {} ms",
                s.downlink.p99_ms, opts.max_p99_ms
            ));
        }
        // Frames sent in bunches are not the traffic the limit is about: say so, so
        // the failure is not read as the bridge's alone.
        if why.len() > before && s.loadgen_late_tick_pct > MAX_LATE_TICK_PCT {
            why.push(format!(
                "not the bridge's alone: the load generator was behind schedule ({:.1} % of caller ticks > 5 ms late)",
                s.loadgen_late_tick_pct
            ));
        }
    }
    why
}

// ---------------------------------------------------------------------------
// Output

const HEADER: &str = "| calls | up p50 / p99 / max ms | down p50 / p99 / max ms | up frames sent / recv | down frames sent / recv | up p99 1st s / rest ms | lost | dup | reord | late | server CPU % | CPU %/call (user / sys) | RSS MiB | RSS KiB/call | loadgen CPU % | loadgen %/call (user / sys) | loadgen ticks > 5 ms late % (max ms) | pre-connect p50 / p99 ms | pass |\n\
|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|";

fn markdown_row(s: &StepReport) -> String {
    format!(
        "| {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} / {} | {} / {} | {:.2} / {:.2} | {} | {} | {} | {} | {:.1} | {:.3} ({:.3} / {:.3}) | {:.1} | {:.1} | {:.1} | {:.3} ({:.3} / {:.3}) | {:.2} ({:.1}) | {:.1} / {:.1} ({}/{} before start) | {} |",
        s.calls,
        s.uplink.p50_ms,
        s.uplink.p99_ms,
        s.uplink.max_ms,
        s.downlink.p50_ms,
        s.downlink.p99_ms,
        s.downlink.max_ms,
        s.up_frames_sent,
        s.up_frames_received,
        s.down_frames_sent,
        s.down_frames_received,
        s.uplink_first_second.p99_ms,
        s.uplink_after_first_second.p99_ms,
        s.lost,
        s.duplicated,
        s.reordered,
        s.late,
        s.server_cpu_pct,
        s.server_cpu_pct_per_call,
        s.server_user_pct_per_call,
        s.server_sys_pct_per_call,
        s.server_rss_kib as f64 / 1024.0,
        s.server_rss_kib_per_call,
        s.loadgen_cpu_pct,
        s.loadgen_cpu_pct_per_call,
        s.loadgen_user_pct_per_call,
        s.loadgen_sys_pct_per_call,
        s.loadgen_late_tick_pct,
        s.loadgen_max_tick_lag_ms,
        s.preconnect.p50_ms,
        s.preconnect.p99_ms,
        s.preconnect.before_start,
        s.preconnect.samples,
        if s.pass {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", s.fail_reasons.join("; "))
        }
    )
}

/// The Markdown table of a run (one row per step), with its notes.
pub fn markdown(r: &LoadReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "voxbridge loadtest ({}), {} cores, hold {:.0} s, ramp-up {:.0} s, limit p99 {} ms{}\n",
        r.mode,
        r.cores,
        r.hold_s,
        r.ramp_up_s,
        r.max_p99_ms,
        if r.check_latency {
            ""
        } else {
            " (not judged: correctness only)"
        }
    );
    let _ = writeln!(out, "{HEADER}");
    for s in &r.steps {
        let _ = writeln!(out, "{}", markdown_row(s));
    }
    let _ = writeln!(
        out,
        "\nCPU in % of one core over the hold window; RSS at the end of the hold, per call = (RSS − idle {} KiB) / calls.",
        r.idle_rss_kib
    );
    let _ = writeln!(out, "{}.", r.note);
    let _ = writeln!(
        out,
        "Arrival time of a frame at the emulators: {}.",
        match r.rx_clock {
            RxClock::Kernel => "the kernel's receive timestamp of its bytes",
            RxClock::Read => "when the load generator read it",
        }
    );
    for s in r.steps.iter().filter(|s| !s.errors.is_empty()) {
        let _ = writeln!(out, "{} calls: {}", s.calls, s.errors.join(" | "));
    }
    let _ = writeln!(
        out,
        "largest clean step: {}",
        r.max_clean_calls
            .map_or("none".to_owned(), |n| format!("{n} calls"))
    );
    out
}

/// Write the JSON report, creating its directory.
pub fn write_json(r: &LoadReport, path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(r)?)?;
    Ok(())
}

/// Default `--json` path.
pub fn default_json_path() -> PathBuf {
    PathBuf::from("target/loadtest/report.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_failure_says_when_the_load_generator_was_late() {
        let opts = LoadtestOptions::default();
        let mut s = StepReport {
            calls: 10,
            uplink: Latency {
                samples: 100,
                ..Latency::default()
            },
            downlink: Latency {
                samples: 10,
                ..Latency::default()
            },
            loadgen_late_tick_pct: 0.5,
            ..StepReport::default()
        };
        assert!(fail_reasons(&s, &opts).is_empty());
        // A late load generator alone fails nothing: it only made the step harder.
        s.loadgen_late_tick_pct = 52.0;
        assert!(fail_reasons(&s, &opts).is_empty());
        // A latency failure with a late load generator says so.
        s.uplink.p99_ms = 30.0;
        let why = fail_reasons(&s, &opts);
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].starts_with("uplink p99 30.00 ms"), "{why:?}");
        assert!(why[1].contains("behind schedule (52.0 %"), "{why:?}");
        // ... and one with a punctual load generator does not.
        s.loadgen_late_tick_pct = 0.5;
        assert_eq!(fail_reasons(&s, &opts).len(), 1);
        // Correctness-only runs (--smoke) do not judge timing at all.
        let smoke = LoadtestOptions::smoke();
        assert!(fail_reasons(&s, &smoke).is_empty());
    }

    #[test]
    fn histogram_percentiles() {
        let h = Hist::new();
        for us in 1..=1000u64 {
            h.record(us * 10);
        }
        let s = h.summary();
        assert_eq!(s.samples, 1000);
        assert!((s.p50_ms - 5.0).abs() < 0.02, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.02, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 1e-9);
        h.record(3_000_000);
        assert_eq!(h.summary().max_ms, 3000.0);
        h.reset();
        assert_eq!(h.summary().samples, 0);
    }

    #[test]
    fn scripts_speak_every_six_seconds_and_end_quiet() {
        let s = script(20_000, 0);
        let mut t = 0u64;
        let mut bursts = Vec::new();
        for step in &s {
            match *step {
                CallerStep::Silence { ms } => t += u64::from(ms),
                CallerStep::Speak { ms } => {
                    bursts.push(t);
                    t += u64::from(ms);
                }
                CallerStep::Hangup => {}
                _ => panic!("unexpected step"),
            }
        }
        assert_eq!(t, 20_000);
        assert_eq!(bursts, vec![4_500, 10_500]);
        assert!(bursts.iter().all(|b| b + TAIL_MS <= 20_000));
        assert_eq!(script(3_000, 1).len(), 2);
    }

    #[test]
    fn proc_stat_parses() {
        let (comm, ticks) = stat_ticks("/proc/self/stat").expect("stat");
        assert!(!comm.is_empty());
        let _ = ticks;
        assert!(rss_kib("self") > 0);
        // utime (field 14) and stime (field 15), after a name with spaces and parens.
        let line = "4242 (vb (serve) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0";
        let (comm, t) = parse_stat(line).expect("parses");
        assert_eq!(comm, "vb (serve) 1");
        assert_eq!((t.user, t.sys), (1234, 567));
        assert!(parse_stat("4242 (x) S 1 2").is_none());
    }
}
