//! The sidecar-injecting admission webhook and what keeps it honest.
//!
//! - [`mutate`]: the pure injection, pod in, JSON patch out.
//! - [`review`]: AdmissionReview in, AdmissionReview out, never an error.
//! - [`namespaces`]: the namespace settings the injection reads, from watch caches.
//! - [`server`]: HTTPS on [`PORT`] with the certificate [`tls`] keeps fresh.
//! - [`missed`]: annotated pods that came up without the sidecar.
//! - [`version`]: native sidecar or plain container, from the API server's version.

pub mod metrics;
pub mod missed;
pub mod mutate;
pub mod namespaces;
pub mod review;
pub mod server;
pub mod tls;
pub mod version;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;
use thiserror::Error;
use tokio::net::TcpListener;

use self::metrics::WebhookMetrics;
use self::missed::Missed;
use self::mutate::{InjectionSettings, Resources};
use self::namespaces::Cached;
use self::review::Injector;
use self::tls::{CertResolver, CertSettings};
use crate::scope::WatchScope;

/// The webhook's HTTPS port (controller-runtime's customary 9443, so it
/// clashes with nothing the operator or the sidecar listens on).
pub const PORT: u16 = 9443;
/// The path the API server posts pod AdmissionReviews to.
pub const MUTATE_PATH: &str = "/mutate-pods";
/// The `MutatingWebhookConfiguration` the operator keeps the CA bundle of (`charts/llmesh/templates/webhook.yaml`).
pub const CONFIGURATION_NAME: &str = "llmesh-sidecar-injector";
/// The webhook's name inside that configuration.
pub const WEBHOOK_NAME: &str = "sidecar-injector.llmesh.io";

/// Why a webhook task failed. Admission itself never fails: a review that
/// cannot be handled is allowed unchanged, with a warning.
#[derive(Debug, Error)]
pub enum Error {
    /// Generating or signing a certificate failed.
    #[error("generating the webhook certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A stored certificate or key does not parse.
    #[error("the webhook certificate Secret {0} is unusable: {1}")]
    StoredCertificate(String, String),
    /// Building the TLS configuration failed.
    #[error("webhook TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A call to the API server failed.
    #[error("{what}: {source}")]
    Api {
        /// What was called, e.g. `reading Secret llmesh-system/llmesh-webhook-tls`.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Binding or serving the HTTPS port failed.
    #[error("serving the webhook: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// An API error with what was being done.
    pub fn api(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Api {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Where the webhook's certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertSource {
    /// The operator's own CA; it also writes the CA bundle into the registration.
    SelfSigned,
    /// cert-manager writes the Secret and injects the CA bundle; the operator only reads it.
    CertManager,
}

/// The webhook's flags.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address of the HTTPS admission webhook.
    #[arg(long, env = "LLMESH_WEBHOOK_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], PORT)))]
    pub webhook_addr: SocketAddr,
    /// The sidecar image injected into pods.
    #[arg(long, env = "LLMESH_SIDECAR_IMAGE", default_value = concat!("ghcr.io/llmesh/llmesh-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// The injected container's `imagePullPolicy` (default: Kubernetes' default for the tag).
    #[arg(long, env = "LLMESH_SIDECAR_IMAGE_PULL_POLICY")]
    pub sidecar_image_pull_policy: Option<String>,
    /// The OTLP collector injected sidecars export traces to (a pod's
    /// `llmesh.io/otel-endpoint` annotation overrides it); unset: no tracing.
    #[arg(long, env = "LLMESH_SIDECAR_OTEL_ENDPOINT")]
    pub sidecar_otel_endpoint: Option<String>,
    /// How injected sidecars export traces: `http/protobuf` (the sidecar's
    /// default) or `grpc` (a pod's `llmesh.io/otel-protocol` annotation
    /// overrides it).
    #[arg(long, env = "LLMESH_SIDECAR_OTEL_PROTOCOL", value_parser = mutate::OTEL_PROTOCOLS)]
    pub sidecar_otel_protocol: Option<String>,
    /// Native sidecar (init container, Kubernetes ≥ 1.29), plain container, or decided from the API server's version.
    #[arg(long, value_enum, default_value = "auto")]
    pub sidecar_mode: version::SidecarMode,
    /// The Service in front of the webhook (the certificate's name).
    #[arg(long, default_value = "llmesh-webhook")]
    pub webhook_service: String,
    /// The Secret holding the webhook's certificate, in the operator's namespace.
    #[arg(long, default_value = "llmesh-webhook-tls")]
    pub webhook_secret: String,
    /// Who issues the webhook's certificate.
    #[arg(long, value_enum, default_value = "self-signed")]
    pub webhook_certs: CertSource,
    /// Development: the URL the API server calls the webhook at (the operator
    /// running on your machine), e.g. `https://192.168.1.20:9443/mutate-pods`.
    /// The registration is pointed at it and the certificate is made for its host.
    #[arg(long)]
    pub webhook_url: Option<String>,
}

/// How often the certificate Secret is re-read (and renewed when due): far
/// inside the 30 days a serving certificate is renewed ahead of expiry.
const CERT_CHECK: Duration = Duration::from_secs(3600);
/// The wait between attempts when the certificate cannot be had at start.
const CERT_RETRY: Duration = Duration::from_secs(5);

/// The webhook, started: settings decided, caches filling.
#[derive(Clone)]
pub struct Webhook {
    injector: Injector,
    args: WebhookArgs,
    namespace: String,
    healthy: Arc<AtomicBool>,
    metrics: WebhookMetrics,
    scope: WatchScope,
    /// More names for the certificate (the sync Service's).
    extra_names: Vec<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("injector", &self.injector)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Decides the injection settings (reading the API server's version for
    /// the sidecar mode), registers the metrics and starts the namespace
    /// caches. `namespace` is the operator's own; `scope` the namespaces
    /// whose ConfigMaps and pods it watches.
    ///
    /// # Errors
    /// The metrics cannot be registered.
    pub async fn start(
        client: &Client,
        args: WebhookArgs,
        namespace: String,
        scope: WatchScope,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let server = match client.apiserver_version().await {
            Ok(info) => Some(info),
            Err(error) => {
                tracing::warn!(%error, "cannot read the API server version; assuming no native sidecars");
                None
            }
        };
        let settings = InjectionSettings {
            image: args.sidecar_image.clone(),
            image_pull_policy: args.sidecar_image_pull_policy.clone(),
            native_sidecar: args.sidecar_mode.native(server.as_ref()),
            operator_namespace: namespace.clone(),
            resources: Resources::default(),
            sync: None,
            otel_endpoint: args.sidecar_otel_endpoint.clone(),
            otel_protocol: args.sidecar_otel_protocol.clone(),
        };
        tracing::info!(
            native_sidecar = settings.native_sidecar,
            image = %settings.image,
            hash = %settings.template_hash(),
            "sidecar injection settings"
        );
        let metrics = WebhookMetrics::register(registry)?;
        let (cached, watch) = Cached::watch(client, &scope);
        tokio::spawn(watch);
        cached.ready().await;
        Ok(Self {
            injector: Injector {
                settings: Arc::new(settings),
                namespaces: Arc::new(cached),
                metrics: Some(metrics.clone()),
            },
            args,
            namespace,
            healthy: Arc::default(),
            metrics,
            scope,
            extra_names: Vec::new(),
        })
    }

    /// Also makes the certificate for `names` (the sync Service's), so the
    /// sync channel is served with the same CA.
    #[must_use]
    pub fn with_extra_names(mut self, names: Vec<String>) -> Self {
        self.extra_names = names;
        self
    }

    /// Injects `sync` into every sidecar from now on.
    pub fn inject_sync(&mut self, sync: mutate::SyncInjection) {
        let mut settings = (*self.injector.settings).clone();
        settings.sync = Some(sync);
        self.injector.settings = Arc::new(settings);
    }

    fn cert_settings(&self) -> CertSettings {
        let mut names = match self.args.webhook_url.as_deref().and_then(url_host) {
            Some(host) => vec![host],
            None => tls::service_names(&self.args.webhook_service, &self.namespace),
        };
        names.extend(self.extra_names.iter().cloned());
        CertSettings {
            namespace: self.namespace.clone(),
            secret: self.args.webhook_secret.clone(),
            names,
            self_managed: self.args.webhook_certs == CertSource::SelfSigned,
        }
    }

    /// Gets the certificate (retrying until it can), binds the port and
    /// publishes the CA bundle; returns the server and renewal loop to run.
    ///
    /// # Errors
    /// The port cannot be bound, or the certificate cannot be served.
    pub async fn bind(
        &self,
        client: &Client,
    ) -> Result<impl Future<Output = Result<(), Error>> + use<>, Error> {
        let issued = self.certificate(client).await;
        let resolver = CertResolver::new(&issued)?;
        self.serve(client, issued, resolver).await
    }

    /// The certificate the Secret holds (issued when due), retrying until it can be had.
    pub async fn certificate(&self, client: &Client) -> tls::Issued {
        let certs = self.cert_settings();
        loop {
            match tls::ensure(client, &certs, Timestamp::now()).await {
                Ok(issued) => return issued,
                Err(error) => {
                    tracing::warn!(%error, "webhook certificate not available yet; retrying");
                    tokio::time::sleep(CERT_RETRY).await;
                }
            }
        }
    }

    /// Binds the port and serves `issued` through `resolver` (which the
    /// renewal loop updates; the sync server may share it); returns the
    /// server and renewal loop to run.
    ///
    /// # Errors
    /// The port cannot be bound, or the certificate cannot be served.
    pub async fn serve(
        &self,
        client: &Client,
        issued: tls::Issued,
        resolver: Arc<CertResolver>,
    ) -> Result<impl Future<Output = Result<(), Error>> + use<>, Error> {
        let certs = self.cert_settings();
        let listener = TcpListener::bind(self.args.webhook_addr).await?;
        tracing::info!(addr = %self.args.webhook_addr, names = ?certs.names, "webhook serving");
        let this = self.clone();
        let client = client.clone();
        let tls_config = Arc::new(tls::server_config(Arc::clone(&resolver))?);
        Ok(async move {
            let router = server::router(this.injector.clone());
            let renew = this.keep_certificate(client, certs, issued, resolver);
            tokio::select! {
                served = server::serve(listener, tls_config, router, std::future::pending()) => served,
                () = renew => Ok(()),
            }
        })
    }

    /// Publishes the CA bundle and re-reads (renews) the certificate every [`CERT_CHECK`].
    async fn keep_certificate(
        &self,
        client: Client,
        certs: CertSettings,
        mut issued: tls::Issued,
        resolver: Arc<CertResolver>,
    ) {
        loop {
            let published = if certs.self_managed {
                tls::publish_ca_bundle(
                    &client,
                    CONFIGURATION_NAME,
                    &issued.trust_pem,
                    self.args.webhook_url.as_deref(),
                )
                .await
                .map(|_| ())
            } else {
                Ok(())
            };
            match published {
                Ok(()) => self.healthy.store(true, Ordering::Relaxed),
                Err(error) => tracing::warn!(%error, "publishing the webhook CA bundle failed; retrying"),
            }
            tokio::time::sleep(if self.healthy.load(Ordering::Relaxed) {
                CERT_CHECK
            } else {
                CERT_RETRY
            })
            .await;
            match tls::ensure(&client, &certs, Timestamp::now()).await {
                Ok(next) if next != issued => match resolver.set(&next) {
                    Ok(()) => issued = next,
                    Err(error) => tracing::error!(%error, "the renewed webhook certificate cannot be served"),
                },
                Ok(_) => {}
                Err(error) => {
                    self.metrics.certificate_error();
                    tracing::warn!(%error, "checking the webhook certificate failed");
                }
            }
        }
    }

    /// The watch for pods that missed the sidecar; run it on the leader only.
    pub fn missed(&self, client: Client, instance: String) -> Missed {
        Missed::new(
            client,
            instance,
            Arc::clone(&self.injector.namespaces),
            Arc::clone(&self.injector.settings),
            self.metrics.clone(),
            Arc::clone(&self.healthy),
        )
        .with_scope(self.scope.clone())
    }
}

/// The host of a URL (without IPv6 brackets).
fn url_host(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(
        uri.host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}
