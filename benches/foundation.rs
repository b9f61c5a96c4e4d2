//! Foundation figures: the time of one login (TCP + STARTTLS + SCRAM-SHA-256 + bind) and the server's
//! memory per idle bound session, plain and TLS. Runs the release server on loopback.
//!
//! `cargo bench --bench foundation` (optional: `-- LOGINS SESSIONS`, default 200 and 2000).
//! Prints one JSON line per figure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Options, Raw, TestServer};

/// Server CPU time (user + system) in seconds, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is field 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Resident memory of a process in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn login_figures(count: usize) {
    let server = TestServer::start_with(Options {
        scram_iterations: 10_000,
        log_level: "warn,rookery::server=info".into(),
        failure_delay_ms: 0,
        ..Default::default()
    });
    server.add_user("bench", "bench-password");
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        let mut c = Raw::connect(server.c2s).await;
        c.starttls().await;
        c.login(
            "SCRAM-SHA-256",
            "bench",
            "bench-password",
            Some(&format!("r{i}")),
        )
        .await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        c.send("</stream:stream>").await;
        c.expect_closed().await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"figure\":\"login_starttls_scram_sha256\",\"logins\":{count},\"ms_p50\":{:.2},\"ms_p90\":{:.2},\"ms_p99\":{:.2},\"logins_per_s_sequential\":{:.1},\"server_cpu_ms_per_login\":{:.3}}}",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        count as f64 / wall,
        cpu * 1000.0 / count as f64
    );
}

async fn idle_figures(count: usize, tls: bool) {
    let server = TestServer::start_with(Options {
        require_encryption: false,
        log_level: "warn,rookery::server=info".into(),
        max_connections: count + 100,
        ..Default::default()
    });
    server.add_user("idle", "idle-password");
    // Warm up: one session, so allocator arenas and lazily built state exist before the baseline.
    let mut warm = Vec::new();
    for i in 0..20 {
        warm.push(connect(&server, tls, &format!("warm{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.pid());
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        sessions.push(connect(&server, tls, &format!("s{i}")).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(server.pid());
    let per_session = (after.saturating_sub(before)) as f64 / count as f64;
    println!(
        "{{\"figure\":\"idle_session_memory\",\"transport\":\"{}\",\"sessions\":{count},\"server_rss_kib_before\":{before},\"server_rss_kib_after\":{after},\"kib_per_session\":{per_session:.2}}}",
        if tls { "starttls" } else { "plain" }
    );
    drop(sessions);
    drop(warm);
}

async fn connect(server: &TestServer, tls: bool, resource: &str) -> Raw {
    let mut c = Raw::connect(server.c2s).await;
    if tls {
        c.starttls().await;
        c.login("SCRAM-SHA-256", "idle", "idle-password", Some(resource))
            .await;
    } else {
        c.open().await;
        c.login("SCRAM-SHA-256", "idle", "idle-password", Some(resource))
            .await;
    }
    c
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes "--bench"; take the first two numeric arguments.
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let logins = numbers.first().copied().unwrap_or(200);
    let sessions = numbers.get(1).copied().unwrap_or(2000);
    login_figures(logins).await;
    idle_figures(sessions, false).await;
    idle_figures(sessions, true).await;
}
