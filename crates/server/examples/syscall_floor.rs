//! The syscall floor of issue 4, measured: N loopback TCP sockets, one ~400-byte message
//! (the size of a Twilio media frame) on each every 20 ms, one process writing and one
//! reading, each on its own core. Each prints the share of its core it used. The bridge
//! reads and writes every 20 ms frame, so these two figures (per socket) are what one call
//! costs before any WebSocket or protocol work; docs/BENCHMARKS.md compares them with the
//! bridge's own figure measured the same day.
//!
//! ```sh
//! cargo build --release -p voxbridge --example syscall_floor
//! taskset -c 1 target/release/examples/syscall_floor recv 9300 500 10 &
//! taskset -c 0 target/release/examples/syscall_floor send 9300 500 10
//! ```
//!
//! A benchmark tool, not part of the server.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use voxbridge::loadtest::{clk_tck, stat_ticks};

/// Bytes per message: a Twilio `media` frame with 160 µ-law bytes is about this long.
const MESSAGE: usize = 400;
/// Every socket carries one message per 20 ms.
const PERIOD_MS: u64 = 20;
/// Ignored at the start of the window (connections settling).
const WARM_UP: Duration = Duration::from_secs(2);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: syscall_floor send|recv PORT SOCKETS SECONDS";
    let (mode, port, n, secs) = match args.as_slice() {
        [_, mode, port, n, secs] => (mode.clone(), port.parse()?, n.parse()?, secs.parse()?),
        _ => return Err(usage.into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match mode.as_str() {
            "send" => send(port, n, secs).await,
            "recv" => recv(port, n, secs).await,
            _ => Err(usage.into()),
        }
    })
}

/// User + system CPU time of this process, in clock ticks.
fn cpu_ticks() -> Result<u64, Box<dyn std::error::Error>> {
    let (_, ticks) = stat_ticks("/proc/self/stat").ok_or("cannot read /proc/self/stat")?;
    Ok(ticks)
}

/// Measure this process's CPU over `secs` after the warm-up, then report.
async fn measure(
    what: &str,
    n: usize,
    secs: u64,
    count: impl Fn() -> u64,
) -> Result<(), Box<dyn std::error::Error>> {
    tokio::time::sleep(WARM_UP).await;
    let (t0, c0, m0) = (Instant::now(), cpu_ticks()?, count());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (t1, c1, m1) = (Instant::now(), cpu_ticks()?, count());
    let wall = (t1 - t0).as_secs_f64();
    let cpu = (c1 - c0) as f64 / clk_tck() as f64 / wall * 100.0;
    let rate = (m1 - m0) as f64 / wall;
    println!(
        "{what}: {n} sockets, {rate:.0} messages/s, {cpu:.1} % of a core, {:.4} % per socket, {:.2} µs per message",
        cpu / n as f64,
        cpu / 100.0 * 1e6 / rate.max(1.0)
    );
    Ok(())
}

async fn send(port: u16, n: usize, secs: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    // One tick a millisecond, each writing to the sockets whose turn it is: every socket
    // once per 20 ms, spread evenly (as independent calls would be).
    let writer = tokio::spawn(async move {
        let msg = [b'x'; MESSAGE];
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut k: usize = 0;
        loop {
            tick.tick().await;
            let slot = k % PERIOD_MS as usize;
            for s in socks.iter_mut().skip(slot).step_by(PERIOD_MS as usize) {
                if s.write_all(&msg).await.is_err() {
                    return;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            k += 1;
        }
    });
    measure("send", n, secs, || {
        sent.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await?;
    writer.abort();
    Ok(())
}

async fn recv(port: u16, n: usize, secs: u64) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..n {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let counter = received.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(k) = s.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                counter.fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let count = || received.load(std::sync::atomic::Ordering::Relaxed) / MESSAGE as u64;
    measure("recv", n, secs, count).await
}
