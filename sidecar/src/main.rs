//! `llmesh-sidecar`: parse settings, start, serve, drain on a signal.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use llmesh_sidecar::Gateway;
use llmesh_sidecar::access_log::AccessLines;
use llmesh_sidecar::log_output;
use llmesh_sidecar::settings::{self, LogFormat, Overlay, ProcessEnv, Settings};
use tracing_subscriber::EnvFilter;

/// The llmesh sidecar: an OpenAI-compatible LLM gateway next to your app.
///
/// Every flag can also be set by its environment variable.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Standalone mode: serve the llmesh resources in this directory of YAML
    /// manifests, recompiling when they change.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// Serve a compiled configuration file (what the operator writes).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// API address [env: LLMESH_LISTEN_ADDR, default 127.0.0.1:4000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Metrics and probes address [env: LLMESH_ADMIN_ADDR, default 0.0.0.0:9464].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
}

impl Cli {
    fn overrides(&self) -> HashMap<String, String> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            (settings::MANIFESTS_DIR, path(&self.manifests)),
            (settings::CONFIG_FILE, path(&self.config)),
            (settings::LISTEN_ADDR, self.listen.clone()),
            (settings::ADMIN_ADDR, self.admin_listen.clone()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect()
    }
}

/// The glibc allocator's malloc and free were an eighth of the CPU time per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env(&Overlay {
        over: cli.overrides(),
        under: &ProcessEnv,
    })?;

    let (writer, _flush_on_exit) = log_output::batched(
        std::io::stdout(),
        log_output::FLUSH_INTERVAL,
        log_output::MAX_BUFFERED_BYTES,
    )
    .context("cannot start the log writer")?;
    let filter = EnvFilter::try_new(&settings.log_filter).context("invalid LLMESH_LOG filter")?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match settings.log_format {
        LogFormat::Json => subscriber
            .json()
            .flatten_event(true)
            .map_event_format(AccessLines)
            .init(),
        LogFormat::Text => subscriber.map_event_format(AccessLines).init(),
    }

    let mut runtime = if settings.worker_threads.get() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut pool = tokio::runtime::Builder::new_multi_thread();
        pool.worker_threads(settings.worker_threads.get());
        pool
    };
    runtime.enable_all().build()?.block_on(async {
        let gateway = Gateway::start(&settings, std::env::vars()).await?;
        shutdown_signal().await;
        tracing::info!("shutting down; draining in-flight requests");
        gateway.shutdown(settings.drain_timeout).await;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return interrupt.await.unwrap_or_default(),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or_default();
}
