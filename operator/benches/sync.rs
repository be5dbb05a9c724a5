//! The sync server under simulated sidecars on loopback: 1,000 watches held
//! open, usage reports at 1,000 and 10,000 a second (each persisted in the
//! state file before it is acknowledged), and a configuration change pushed
//! to all 1,000. Prints CPU per report, memory per connected sidecar and
//! push-to-all latency (p50/p99).
//!
//! `cargo bench -p llmesh-operator --bench sync` (`SYNC_BENCH_SIDECARS` sets
//! the number of sidecars, default 1000). The simulated sidecars run in the
//! same process, so CPU and memory include their side too: upper bounds.

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
use tokio::sync::Notify;

const TOKEN: &str = "bench-token";

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) of the whole line; 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
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

async fn report_load(
    url: &str,
    client: &reqwest::Client,
    sidecars: usize,
    per_second: usize,
    seconds: u64,
    seq: &Arc<AtomicU64>,
) {
    let interval = Duration::from_secs_f64(sidecars as f64 / per_second as f64);
    let sent = Arc::new(AtomicU64::new(0));
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..sidecars {
        let (client, url, sent, seq) = (client.clone(), url.to_owned(), sent.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            let end = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < end {
                ticks.tick().await;
                let report = Report {
                    instance: format!("sidecar-{index}"),
                    seq: seq.fetch_add(1, Ordering::Relaxed),
                    config_version: "bench-0".to_owned(),
                    budgets: [(
                        "team".to_owned(),
                        BudgetDelta {
                            period_start: 0,
                            spent_usd: 0.001,
                            tokens: 100,
                        },
                    )]
                    .into(),
                    ..Report::default()
                };
                let answer = client
                    .post(format!("{url}/v1/sync/report"))
                    .bearer_auth(TOKEN)
                    .json(&report)
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status().is_success()) {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let took = started.elapsed().as_secs_f64();
    let reports = sent.load(Ordering::Relaxed) as f64;
    let used = cpu_seconds() - cpu;
    println!(
        "reports at {per_second}/s target: {reports:.0} acknowledged in {took:.1} s ({:.0}/s); \
         CPU {:.1} µs per report (server and clients), {:.0}% of one core",
        reports / took,
        used / reports * 1e6,
        used / took * 100.0
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
    tokio::spawn(ledger.clone().write_changes());
    let registry = prometheus::Registry::new();
    let server = SyncServer::new(
        ledger,
        Arc::new(auth),
        SyncMetrics::register(&registry).expect("metrics"),
    );
    server.publish(NAMESPACE, config(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = server.router();
    tokio::spawn(async move { axum::serve(listener, router).await });

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

    let seq = Arc::new(AtomicU64::new(1));
    report_load(&url, &client, sidecars, 1000, 5, &seq).await;
    report_load(&url, &client, sidecars, 10_000, 5, &seq).await;
}
