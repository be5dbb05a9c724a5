//! The sync server under simulated sidecars on loopback: 1,000 watches held
//! open, a configuration change pushed to all 1,000, then 1,000 and 10,000
//! sidecars reporting once a second each (every report persisted in the
//! state file before it is acknowledged). Prints memory per connected
//! sidecar, push-to-all latency (p50/p99), and per load the acknowledged
//! rate, reports per state-file write, acknowledgement latency and the
//! server's CPU per report.
//!
//! `cargo bench -p llmesh-operator --bench sync` (`SYNC_BENCH_SIDECARS`: the
//! watches, default 1000; `SYNC_BENCH_SECONDS`: each load's length, default
//! 5). The server runs on a runtime of its own with one worker thread, and
//! its CPU is read from its threads alone; the simulated sidecars share the
//! process, so the memory figure includes their side: an upper bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use llmesh_crds::SidecarConfig;
use llmesh_crds::sync::{BudgetDelta, Report};
use llmesh_operator::sync::ledger::Ledger;
use llmesh_operator::sync::metrics::SyncMetrics;
use llmesh_operator::sync::server::SyncServer;
use llmesh_operator::sync::standalone::{NAMESPACE, SharedToken};
use tokio::sync::{Notify, Semaphore};

const TOKEN: &str = "bench-token";

/// The server's runtime threads (one worker, its blocking pool for the
/// state file): their CPU is the server's, apart from the simulated sidecars'.
const SERVER_THREADS: &str = "sync-server";

/// CPU seconds (user + system) used by this process's threads whose name
/// starts with `prefix` (all of them for "").
fn cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0.0;
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields 14 and 15 (utime, stime) of the whole line; 11 and 12 after the name.
        ticks += field(11) + field(12);
    }
    ticks / 100.0
}

/// Resident memory in bytes.
fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn config(version: usize) -> SidecarConfig {
    SidecarConfig {
        version: format!("bench-{version}"),
        ..SidecarConfig::default()
    }
}

/// In-flight reports the simulated sidecars share (their connections).
const IN_FLIGHT: usize = 2000;

/// `instances` simulated sidecars, each reporting once a second (as a real
/// one does while it has traffic, the next report after the last one's
/// acknowledgement) for `seconds`: `instances` reports a second offered.
async fn report_load(url: &str, client: &reqwest::Client, instances: usize, seconds: u64, ledger: &Ledger) {
    let acknowledged = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let (server_cpu, all_cpu, writes) = (cpu_seconds(SERVER_THREADS), cpu_seconds(""), ledger.writes());
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for index in 0..instances {
        let (client, url) = (client.clone(), url.to_owned());
        let (acknowledged, latencies, in_flight) =
            (acknowledged.clone(), latencies.clone(), in_flight.clone());
        tasks.push(tokio::spawn(async move {
            // Spread over the second, as sidecars started at different times are.
            tokio::time::sleep(Duration::from_secs_f64(index as f64 / instances as f64)).await;
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let delta = BudgetDelta {
                period_start: 0,
                spent_usd: 0.001,
                tokens: 100,
            };
            let mut seq = 0;
            while Instant::now() < end {
                ticks.tick().await;
                seq += 1;
                let report = Report {
                    instance: format!("load-{instances}-{index}"),
                    seq,
                    config_version: "bench-0".to_owned(),
                    budgets: [("team".to_owned(), delta)].into(),
                    keys: [(format!("key-{}", index % 50), delta)].into(),
                };
                let _permit = in_flight.acquire().await.expect("semaphore");
                let sent = Instant::now();
                let answer = client
                    .post(format!("{url}/v1/sync/report"))
                    .bearer_auth(TOKEN)
                    .json(&report)
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status().is_success()) {
                    latencies.lock().push(sent.elapsed());
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let took = started.elapsed().as_secs_f64();
    let reports = acknowledged.load(Ordering::Relaxed) as f64;
    let server = cpu_seconds(SERVER_THREADS) - server_cpu;
    let all = cpu_seconds("") - all_cpu;
    let writes = (ledger.writes() - writes).max(1) as f64;
    let mut latencies = latencies.lock().clone();
    latencies.sort_unstable();
    println!(
        "{instances} sidecars reporting once a second: {reports:.0} acknowledged in {took:.1} s ({:.0}/s), \
         {:.0} reports per state-file write, ack p50 {:?} p99 {:?}; server {:.1} µs CPU per report \
         ({:.0}% of its one core), whole process {:.1} µs",
        reports / took,
        reports / writes,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        server / reports * 1e6,
        server / took * 100.0,
        all / reports * 1e6,
    );
}

#[tokio::main]
async fn main() {
    // reqwest is built without a default TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sidecars: usize = std::env::var("SYNC_BENCH_SIDECARS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let auth = SharedToken::read(&dir.path().join("token")).expect("token");
    let ledger = Ledger::open(Some(dir.path().join("state.json"))).expect("ledger");
    // The server on one core: a runtime of its own with one worker thread.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .expect("server runtime");
    server_runtime.spawn(ledger.clone().write_changes());
    let registry = prometheus::Registry::new();
    let server = SyncServer::new(
        ledger.clone(),
        Arc::new(auth),
        SyncMetrics::register(&registry).expect("metrics"),
    );
    server.publish(NAMESPACE, config(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = server.router();
    server_runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        axum::serve(listener, router).await
    });

    // Open the watches; each notes when it receives a config frame.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(sidecars * 2)
        .build()
        .expect("client");
    let rss_before = rss_bytes();
    let received = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Notify::new());
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let pushed_at = Arc::new(parking_lot::Mutex::new(Instant::now()));
    let mut open = Vec::new();
    for index in 0..sidecars {
        let (client, url) = (client.clone(), url.clone());
        let (received, all, latencies, pushed_at) = (
            received.clone(),
            all.clone(),
            latencies.clone(),
            pushed_at.clone(),
        );
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        open.push(ready_rx);
        tokio::spawn(async move {
            let hello =
                serde_json::json!({"instance": format!("sidecar-{index}"), "configVersion": "bench-0"});
            let response = client
                .post(format!("{url}/v1/sync/watch"))
                .bearer_auth(TOKEN)
                .json(&hello)
                .send()
                .await
                .expect("watch");
            let _ = ready_tx.send(());
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                if chunk.windows(15).any(|w| w == b"\"type\":\"config\"") {
                    latencies.lock().push(pushed_at.lock().elapsed());
                    if received.fetch_add(1, Ordering::AcqRel) + 1 == sidecars as u64 {
                        all.notify_one();
                    }
                }
            }
        });
    }
    for ready in open {
        let _ = ready.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection = (rss_bytes() - rss_before) / sidecars as f64;
    println!(
        "{sidecars} watches open: {:.1} KiB resident per connected sidecar (server and client side)",
        per_connection / 1024.0
    );

    // Push-to-all: a new configuration version, until every watch has it.
    let mut to_all = Vec::new();
    for round in 1..=30 {
        received.store(0, Ordering::Release);
        *pushed_at.lock() = Instant::now();
        let started = Instant::now();
        server.publish(NAMESPACE, config(round));
        all.notified().await;
        to_all.push(started.elapsed());
    }
    to_all.sort_unstable();
    let mut each = latencies.lock().clone();
    each.sort_unstable();
    println!(
        "config push to all {sidecars} sidecars: p50 {:?}, p99 {:?} (each sidecar's frame: p50 {:?}, p99 {:?})",
        percentile(&to_all, 0.5),
        percentile(&to_all, 0.99),
        percentile(&each, 0.5),
        percentile(&each, 0.99)
    );

    let seconds = std::env::var("SYNC_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for instances in [1000, 10_000] {
        report_load(&url, &client, instances, seconds, &ledger).await;
    }
    server_runtime.shutdown_background();
}
