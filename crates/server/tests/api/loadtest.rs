//! The load generator's smoke logic, small: 20 in-process calls for 5 s.
//! A correctness check (no frame lost, duplicated or reordered; both
//! directions measured), never a speed check.

use std::time::Duration;
use voxbridge::loadtest::{self, LoadtestOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_twenty_calls_lose_nothing() {
    let opts = LoadtestOptions {
        ramp: vec![20],
        hold: Duration::from_secs(5),
        ramp_up: Duration::from_secs(1),
        progress: false,
        ..LoadtestOptions::smoke()
    };
    let report = loadtest::run(opts).await.expect("loadtest runs");
    assert_eq!(report.steps.len(), 1);
    let s = &report.steps[0];
    let table = loadtest::markdown(&report);
    assert_eq!(s.calls, 20);
    assert_eq!(s.failed_calls, 0, "{table}");
    assert_eq!(s.unmatched_calls, 0, "{table}");
    assert_eq!(s.abnormal_ends, 0, "{table}");
    assert!(s.up_frames_sent > 20 * 200, "{table}");
    assert_eq!(s.up_frames_received, s.up_frames_sent, "{table}");
    assert_eq!(s.down_frames_received, s.down_frames_sent, "{table}");
    assert!(s.down_frames_sent > 0, "{table}");
    assert_eq!((s.up_lost, s.down_lost), (0, 0), "{table}");
    assert_eq!((s.up_duplicated, s.down_duplicated), (0, 0), "{table}");
    assert_eq!(s.up_reordered, 0, "{table}");
    assert_eq!(s.protocol_errors, 0, "{table}");
    assert!(s.uplink.samples >= s.up_frames_sent, "{table}");
    assert!(s.downlink.samples >= 20, "{table}");
    assert_eq!(s.preconnect.samples, 20, "{table}");
    assert!(table.contains("| 20 |"));
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["steps"][0]["calls"], 20);
    // Arrivals come from the kernel's receive timestamps by default.
    assert_eq!(json["rx_clock"], "kernel");
    // Every caller measured its ticks (a tick is never served at its exact nanosecond).
    assert!(s.loadgen_max_tick_lag_ms > 0.0, "{table}");
    assert!((0.0..=100.0).contains(&s.loadgen_late_tick_pct), "{table}");
}
