//! `llmesh-operator`: parses flags, connects to the cluster (in-cluster, or
//! `KUBECONFIG` for development), serves the admin endpoints and runs the
//! controller until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use llmesh_operator::controller::{self, Context};
use llmesh_operator::metrics::Metrics;
use llmesh_operator::probes::{self, Health};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Compiles llmesh resources into per-namespace sidecar configuration"
)]
struct Args {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "LLMESH_OPERATOR_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log filter, `tracing` syntax.
    #[arg(long, env = "LLMESH_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .init();
    // kube's TLS uses rustls with ring; rustls needs the provider chosen once per process.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;

    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (in-cluster service account, or KUBECONFIG)")?;
    let metrics = Metrics::new().context("registering metrics")?;
    let health = Arc::new(Health::default());
    let admin = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding {}", args.admin_addr))?;
    let router = probes::router(Arc::clone(&health), metrics.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(admin, router).await {
            tracing::error!(%error, "admin server stopped");
        }
    });

    tracing::info!(admin = %args.admin_addr, "llmesh-operator starting");
    controller::run(Arc::new(Context::new(client, metrics, health))).await;
    tracing::info!("llmesh-operator stopped");
    Ok(())
}
