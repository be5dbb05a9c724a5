//! `llmesh-operator`: parses flags, connects to the cluster (in-cluster, or
//! `KUBECONFIG` for development), serves the admin endpoints and the
//! sidecar-injecting webhook, and runs the controller until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use llmesh_operator::controller::{self, Context};
use llmesh_operator::lease::{Elector, LeaseSettings};
use llmesh_operator::metrics::Metrics;
use llmesh_operator::probes::{self, Health};
use llmesh_operator::sync::ledger::Ledger;
use llmesh_operator::sync::metrics::SyncMetrics;
use llmesh_operator::sync::server::SyncServer;
use llmesh_operator::sync::standalone::{self, SharedToken};
use llmesh_operator::webhook::{Webhook, WebhookArgs};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Compiles llmesh resources into per-namespace sidecar configuration"
)]
struct Args {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "LLMESH_OPERATOR_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "llmesh-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "llmesh-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconcile without holding the Lease (development with a single process only).
    #[arg(long)]
    no_leader_election: bool,
    #[command(flatten)]
    webhook: WebhookArgs,
    /// Serve only the sync channel, from this folder of YAML manifests (no
    /// cluster): standalone sidecars on several machines share budgets and
    /// configuration.
    #[arg(long, env = "LLMESH_OPERATOR_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Address of the sync channel.
    #[arg(long, env = "LLMESH_SYNC_ADDR", default_value = "0.0.0.0:9444")]
    sync_addr: SocketAddr,
    /// With `--manifests`: the file holding the token every sidecar presents.
    #[arg(long, env = "LLMESH_SYNC_TOKEN_FILE", requires = "manifests")]
    sync_token_file: Option<PathBuf>,
    /// With `--manifests`: where acknowledged spend is kept across restarts
    /// (unset: in memory only).
    #[arg(long, env = "LLMESH_SYNC_STATE_FILE", requires = "manifests")]
    sync_state_file: Option<PathBuf>,
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

    if let Some(dir) = args.manifests.clone() {
        return standalone_sync(args, dir).await;
    }
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
    // Every replica serves the webhook (the Service picks any ready one); it
    // is serving before this replica reports ready below.
    let webhook = Webhook::start(
        &client,
        args.webhook,
        args.lease_namespace.clone(),
        metrics.registry(),
    )
    .await
    .context("registering webhook metrics")?;
    let serving = webhook.bind(&client).await.context("starting the webhook")?;
    tokio::spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "webhook server stopped");
        }
    });
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "llmesh-operator".to_owned());
        format!("{host}-{}", std::process::id())
    });
    // Only the leader reports and restarts missed pods, so nothing is done twice.
    let missed = Arc::new(webhook.missed(client.clone(), identity.clone()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        Arc::clone(&health),
        Some(identity.clone()),
    ));
    if args.no_leader_election {
        tokio::select! {
            () = controller::run(ctx) => {}
            () = missed.run() => {}
        }
    } else {
        let elector = Elector::new(
            client,
            LeaseSettings {
                namespace: args.lease_namespace,
                name: args.lease_name,
                identity,
                duration: Duration::from_secs(15),
            },
        );
        tokio::select! {
            // A standby that reaches the API server is ready: a rolling update
            // must not wait for a pod that only becomes leader later.
            () = elector.acquire(|| health.set_ready()) => {}
            () = shutdown_signal() => return Ok(()),
        }
        tracing::info!("holding the leader Lease; reconciling");
        tokio::select! {
            () = controller::run(ctx) => {}
            () = missed.run() => {}
            () = elector.hold() => {
                anyhow::bail!("lost the leader Lease; exiting so the restarted pod rejoins as a candidate")
            }
        }
    }
    tracing::info!("llmesh-operator stopped");
    Ok(())
}

/// `--manifests DIR`: the sync channel from a folder, until SIGTERM.
async fn standalone_sync(args: Args, dir: PathBuf) -> anyhow::Result<()> {
    let token_file = args
        .sync_token_file
        .context("--manifests needs --sync-token-file (the token sidecars present)")?;
    let auth = SharedToken::read(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let ledger = Ledger::open(args.sync_state_file).context("opening the sync state file")?;
    let metrics = Metrics::new().context("registering metrics")?;
    let sync_metrics = SyncMetrics::register(metrics.registry()).context("registering sync metrics")?;
    let server = SyncServer::new(ledger.clone(), Arc::new(auth), sync_metrics);
    let health = Arc::new(Health::default());
    health.set_ready();
    let admin = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding {}", args.admin_addr))?;
    let sync = tokio::net::TcpListener::bind(args.sync_addr)
        .await
        .with_context(|| format!("binding {}", args.sync_addr))?;
    tracing::info!(
        sync = %sync.local_addr().unwrap_or(args.sync_addr),
        admin = %admin.local_addr().unwrap_or(args.admin_addr),
        manifests = %dir.display(),
        "llmesh-operator serving the sync channel from manifests"
    );
    let router = server.router();
    tokio::select! {
        result = axum::serve(admin, probes::router(health, metrics)) => result.context("admin server")?,
        result = axum::serve(sync, router) => result.context("sync server")?,
        () = standalone::follow(dir, server) => {}
        () = ledger.write_changes() => {}
        () = shutdown_signal() => {}
    }
    tracing::info!("llmesh-operator stopped");
    Ok(())
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C (development).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
