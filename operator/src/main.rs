//! `llmesh-operator`: parses flags, connects to the cluster (in-cluster, or
//! `KUBECONFIG` for development), serves the admin endpoints and the
//! sidecar-injecting webhook, and runs the controller until SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use llmesh_operator::controller::{self, Context};
use llmesh_operator::lease::{Elector, Fence, LeaseSettings};
use llmesh_operator::metrics::Metrics;
use llmesh_operator::probes::{self, Health};
use llmesh_operator::scope::WatchScope;
use llmesh_operator::sync::ledger::Ledger;
use llmesh_operator::sync::metrics::SyncMetrics;
use llmesh_operator::sync::server::SyncServer;
use llmesh_operator::sync::standalone::{self, SharedToken};
use llmesh_operator::sync::status::StatusWriter;
use llmesh_operator::sync::tokenreview::TokenReviewer;
use llmesh_operator::sync::{cluster, server};
use llmesh_operator::webhook::mutate::SyncInjection;
use llmesh_operator::webhook::tls::{self, CertResolver};
use llmesh_operator::webhook::{self, Webhook, WebhookArgs};

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
    /// Watch, reconcile and report only in these namespaces (comma-separated;
    /// empty: every namespace). Rights are then needed only there.
    #[arg(long, env = "LLMESH_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
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
    /// In a cluster: do not serve the sync channel nor inject its URL (sidecars
    /// then enforce budgets on their own spend and read only the ConfigMap).
    #[arg(long, conflicts_with = "manifests")]
    no_sync: bool,
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
    /// Print what a deployment must provide for these flags (ports, names,
    /// the environment read, the RBAC rules) as JSON, and exit.
    #[arg(long)]
    contract: bool,
}

/// What a deployment of the operator with `args` must provide; the chart's
/// tests compare the rendered manifests with it.
fn contract(args: &Args) -> serde_json::Value {
    let env: Vec<String> = Args::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    serde_json::json!({
        "adminPort": args.admin_addr.port(),
        "webhook": {
            "port": args.webhook.webhook_addr.port(),
            "path": webhook::MUTATE_PATH,
            "configuration": webhook::CONFIGURATION_NAME,
            "name": webhook::WEBHOOK_NAME,
            "service": args.webhook.webhook_service,
            "secret": args.webhook.webhook_secret,
        },
        "leaseName": args.lease_name,
        "sync": {
            "port": args.sync_addr.port(),
            "service": cluster::SERVICE,
            "leaderLabel": cluster::LEADER_LABEL,
            "stateConfigMap": cluster::STATE_CONFIG_MAP,
        },
        "env": env,
        "rbac": llmesh_operator::rbac::RULES,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.contract {
        // Written, not `println!`: a closed pipe (`| head`) is an error, not a panic.
        writeln!(std::io::stdout().lock(), "{:#}", contract(&args)).context("printing the contract")?;
        return Ok(());
    }
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
    let config = kube::Config::infer()
        .await
        .context("connecting to the cluster (in-cluster service account, or KUBECONFIG)")?;
    let client = kube::Client::try_from(config.clone()).context("building the API client")?;
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
    let scope = WatchScope::from_list(args.watch_namespaces);
    tracing::info!(?scope, "watching");
    let mut webhook = Webhook::start(
        &client,
        args.webhook,
        args.lease_namespace.clone(),
        scope.clone(),
        metrics.registry(),
    )
    .await
    .context("registering webhook metrics")?;
    if !args.no_sync {
        webhook = webhook.with_extra_names(cluster::service_names(&args.lease_namespace));
    }
    let issued = webhook.certificate(&client).await;
    if !args.no_sync {
        webhook.inject_sync(SyncInjection {
            url: cluster::url(&args.lease_namespace),
            ca_pem: issued.trust_pem.clone(),
        });
    }
    // One certificate for both ports: the renewal loop swaps it for both.
    let resolver = CertResolver::new(&issued).context("the webhook certificate")?;
    let serving = webhook
        .serve(&client, issued, Arc::clone(&resolver))
        .await
        .context("starting the webhook")?;
    tokio::spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(%error, "webhook server stopped");
        }
    });
    let sync_metrics = SyncMetrics::register(metrics.registry()).context("registering sync metrics")?;
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "llmesh-operator".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let pod = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty());
    if let Some(pod) = &pod {
        // A label left by this pod's previous process must not draw sidecars here.
        if let Err(error) = cluster::label_pod(&client, &args.lease_namespace, pod, false).await {
            tracing::warn!(%error, "cannot clear the sync leader label");
        }
    }
    let elector = (!args.no_leader_election).then(|| {
        Elector::new(
            client.clone(),
            LeaseSettings {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                duration: Duration::from_secs(15),
            },
        )
    });
    // What only the leader does goes through a client whose writes stop as
    // soon as the leadership is not confirmed (a reconcile mid-way when the
    // Lease is lost writes nothing more).
    let leader_client = match &elector {
        Some(elector) => kube::client::ClientBuilder::try_from(config)
            .context("building the leader's API client")?
            .with_layer(&Fence::new(elector.leadership()))
            .build(),
        None => client.clone(),
    };
    // Only the leader reports and restarts missed pods, so nothing is done twice.
    let missed = Arc::new(webhook.missed(leader_client.clone(), identity.clone()));
    if let Some(elector) = &elector {
        tokio::select! {
            // A standby that reaches the API server is ready: a rolling update
            // must not wait for a pod that only becomes leader later.
            () = elector.acquire(|| health.set_ready()) => {}
            () = shutdown_signal() => return Ok(()),
        }
        tracing::info!("holding the leader Lease; reconciling");
    }
    metrics.set_leader(true);
    let mut context = Context::new(
        leader_client.clone(),
        metrics.clone(),
        Arc::clone(&health),
        Some(identity.clone()),
    )
    .with_scope(scope.clone());
    let sync = if args.no_sync {
        None
    } else {
        let leader = SyncLeader::start(
            &leader_client,
            &args.lease_namespace,
            &scope,
            sync_metrics,
            &identity,
        )
        .await?;
        context = context.with_sync(Arc::clone(&leader.server));
        Some(leader)
    };
    let ctx = Arc::new(context);
    let serve_sync = async {
        match &sync {
            Some(leader) => {
                leader
                    .serve(
                        args.sync_addr,
                        Arc::clone(&resolver),
                        &leader_client,
                        &args.lease_namespace,
                        pod.as_deref(),
                    )
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let hold = async {
        match &elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = controller::run(ctx) => {}
        () = missed.run() => {}
        result = serve_sync => result?,
        () = hold => {
            anyhow::bail!("lost the leader Lease; exiting so the restarted pod rejoins as a candidate")
        }
    }
    // Hand-off: the next leader resumes from what is written now.
    if let Some(leader) = &sync {
        leader
            .hand_off(&leader_client, &args.lease_namespace, pod.as_deref())
            .await;
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

/// The sync channel on the leader: the server, its ledger and the status writer.
struct SyncLeader {
    server: Arc<server::SyncServer>,
    ledger: Arc<Ledger>,
    writer: StatusWriter,
}

impl SyncLeader {
    /// Opens the ledger (the state ConfigMap, else the Budgets' statuses).
    async fn start(
        client: &kube::Client,
        namespace: &str,
        scope: &llmesh_operator::scope::WatchScope,
        metrics: SyncMetrics,
        identity: &str,
    ) -> anyhow::Result<Self> {
        let ledger = cluster::ConfigMapStore::new(client, namespace)
            .open()
            .await
            .context("reading the sync ledger")?
            .context("the sync ledger")?;
        let auth = TokenReviewer::new(client.clone(), scope.clone());
        let server = server::SyncServer::new(Arc::clone(&ledger), Arc::new(auth), metrics);
        let writer = StatusWriter::new(client.clone(), Arc::clone(&server), Some(identity.to_owned()));
        let resumed = writer
            .resume(scope, jiff::Timestamp::now())
            .await
            .context("resuming spend from the Budgets' status")?;
        tracing::info!(resumed, "sync ledger opened");
        Ok(Self {
            server,
            ledger,
            writer,
        })
    }

    /// Serves the channel on `addr` with the webhook's certificate, labels
    /// this pod as the one the sync Service selects, and writes statuses.
    async fn serve(
        &self,
        addr: SocketAddr,
        resolver: Arc<CertResolver>,
        client: &kube::Client,
        namespace: &str,
        pod: Option<&str>,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let tls = Arc::new(tls::server_config(resolver).context("sync TLS")?);
        match pod {
            Some(pod) => cluster::label_pod(client, namespace, pod, true)
                .await
                .context("labelling this pod as the sync leader")?,
            None => tracing::warn!("POD_NAME unset: the llmesh-sync Service cannot select this replica"),
        }
        tracing::info!(%addr, "serving the sync channel");
        tokio::select! {
            served = webhook::server::serve(listener, tls, self.server.router(), std::future::pending()) => {
                served.context("sync server")
            }
            () = Arc::clone(&self.ledger).write_changes() => Ok(()),
            () = self.writer.run() => Ok(()),
        }
    }

    /// Writes the statuses one last time and removes the leader label.
    async fn hand_off(&self, client: &kube::Client, namespace: &str, pod: Option<&str>) {
        if let Err(error) = self.writer.write(jiff::Timestamp::now()).await {
            tracing::warn!(%error, "writing the budgets' status at hand-off failed");
        }
        if let Some(pod) = pod
            && let Err(error) = cluster::label_pod(client, namespace, pod, false).await
        {
            tracing::warn!(%error, "removing the sync leader label failed");
        }
    }
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
