//! The llmesh sidecar: an OpenAI- and Anthropic-compatible gateway that runs next to each app.
//!
//! A request flows through one module per step:
//! [`inbound`] (accept) → [`convert`] (the app's format to the internal one) → [`admission`]
//! ([`auth`], [`routing`], [`budget`], [`limits`]) → [`cache`] → [`attempts`] (attempt(s),
//! through [`providers`]) → [`access_log`] (account) → [`respond`] (back in the app's format).
//! [`handlers`] strings them together per endpoint; [`reload`] keeps the
//! configuration they read current.

pub mod access_log;
pub mod admission;
pub mod api;
pub mod app;
pub mod attempts;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod convert;
pub mod credentials;
pub mod drills;
pub mod edge;
pub mod error;
pub mod eval;
pub mod guardrails;
pub mod handlers;
pub mod health;
pub mod inbound;
pub mod limits;
pub mod log_output;
pub mod metrics;
pub mod pricing;
pub mod providers;
pub mod redact;
pub mod reload;
pub mod respond;
pub mod routing;
pub mod settings;
pub mod settle;
pub mod shadow;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod unsaved;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{App, Limits, LocalState};
use crate::budget::SystemClock;
use crate::cache::ResponseCache;
use crate::credentials::CredentialStore;
use crate::health::HealthRegistry;
use crate::metrics::Metrics;
use crate::providers::{Deps, UpstreamClient};
use crate::reload::{Reloader, WatchGuard};
use crate::settings::Settings;
use crate::sync::SyncClient;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The outbound HTTP client could not be built.
    #[error("cannot build the upstream client: {0}")]
    Client(providers::ProviderError),
    /// The state file cannot be used.
    #[error("cannot restore budget spend: {0}")]
    State(#[from] state::StateError),
    /// The configuration source cannot be watched.
    #[error("cannot watch the configuration: {0}")]
    Watch(#[from] notify::Error),
    /// The sync channel's client could not be built.
    #[error("cannot build the sync client: {0}")]
    Sync(providers::ProviderError),
}

/// A running gateway: both listeners, the config watch, and a way to stop.
#[derive(Debug)]
pub struct Gateway {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where metrics and probes listen.
    pub admin_addr: SocketAddr,
    /// The shared state (for tests and embedding).
    pub app: Arc<App>,
    /// Reloads configuration on demand.
    pub reloader: Arc<Reloader>,
    state: Arc<LocalState>,
    sync: Option<Arc<SyncClient>>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    _watch: WatchGuard,
}

impl Gateway {
    /// Loads the configuration, binds both listeners and starts serving.
    /// A configuration that fails to load leaves the gateway running but
    /// not ready, watching for a good one.
    ///
    /// # Errors
    /// A listener cannot bind, or the config source cannot be watched.
    pub async fn start(
        settings: &Settings,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StartError> {
        let client = UpstreamClient::new(&settings.upstream).map_err(StartError::Client)?;
        let credentials = Arc::new(CredentialStore::new(settings.secrets_dir.clone(), env));
        let metrics = Arc::new(Metrics::for_workload(settings.workload.as_ref()));
        let health = Arc::new(HealthRegistry::new(metrics.clone()));
        let deps = Deps {
            client,
            credentials,
            drills: Arc::default(),
        };
        let limits = Limits {
            max_body_bytes: settings.max_body_bytes,
            body_read_timeout: settings.body_read_timeout,
            max_concurrent_requests: settings.max_concurrent_requests,
            drills_enabled: settings.drills_enabled,
            default_key: settings.default_key.clone(),
            redactor: settings.redactor.clone(),
            pod_routes: settings.pod_routes.clone(),
        };
        let state = LocalState::open(
            settings.state_file.clone(),
            Arc::new(SystemClock),
            metrics.clone(),
            settings.sync.is_some(),
        )?;
        let state = Arc::new(state);
        let cache = Arc::new(ResponseCache::new(settings.cache_max_bytes, metrics.clone()));
        let tracer = match &settings.traces {
            None => None,
            Some(traces) => {
                let post = match traces.protocol {
                    telemetry::Protocol::HttpProtobuf => poster(
                        &deps.client,
                        &traces.endpoint,
                        &traces.headers,
                        "application/x-protobuf",
                    ),
                    telemetry::Protocol::Grpc => {
                        let tls = providers::client_tls(&settings.upstream).map_err(StartError::Client)?;
                        telemetry::grpc::post(
                            &traces.endpoint,
                            export_headers(&traces.headers),
                            tls,
                            settings.upstream.connect_timeout,
                        )
                    }
                };
                Some(telemetry::Tracer::start(traces, post, metrics.clone()))
            }
        };
        let eval_post = settings
            .eval
            .url
            .as_ref()
            .map(|url| poster(&deps.client, url, &[], "application/x-ndjson"));
        let eval = eval::Sink::start(&settings.eval, eval_post, &metrics);
        let app = Arc::new(App::new(
            limits,
            metrics,
            deps,
            health,
            cache,
            &state,
            app::Reporting { tracer, eval },
        ));

        let reloader = Arc::new(Reloader::new(app.clone(), settings.source.clone()));
        let first = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || first.reload()).await;
        let watch_guard = reloader.clone().watch()?;

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|error| StartError::Bind { addr, error })
        };
        let api = bind(settings.listen).await?;
        let admin = bind(settings.admin_listen).await?;
        let api_addr = api.local_addr().map_err(|error| StartError::Bind {
            addr: settings.listen,
            error,
        })?;
        let admin_addr = admin.local_addr().map_err(|error| StartError::Bind {
            addr: settings.admin_listen,
            error,
        })?;

        let (shutdown, signal) = watch::channel(false);
        let mut servers = vec![
            edge::serve(
                api,
                handlers::api_router(app.clone()),
                settings.connections,
                signal.clone(),
            ),
            edge::serve(
                admin,
                handlers::admin_router(app.clone()),
                settings.connections,
                signal.clone(),
            ),
        ];
        // Without a file, shutdown's flush is all there is to do.
        if state.has_file() {
            servers.push(flush_state(state.clone(), signal.clone()));
        }
        // After the mounted configuration is in force: the operator only
        // ever replaces a configuration that already serves.
        let sync = match &settings.sync {
            None => None,
            Some(sync) => {
                let client = SyncClient::new(
                    sync.clone(),
                    app.budgets.clone(),
                    reloader.clone(),
                    app.metrics.clone(),
                    settings.upstream.connect_timeout,
                )
                .map_err(StartError::Sync)?;
                servers.extend(client.start(signal));
                Some(client)
            }
        };
        let pod = settings.pod.as_deref().unwrap_or_default();
        tracing::info!(%api_addr, %admin_addr, pod, "llmesh sidecar serving");
        Ok(Self {
            api_addr,
            admin_addr,
            app,
            reloader,
            shutdown,
            servers,
            state,
            sync,
            _watch: watch_guard,
        })
    }

    /// Stops accepting, lets in-flight requests (streams included) finish
    /// for up to `drain`, then returns.
    pub async fn shutdown(self, drain: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + drain;
        let _ = self.shutdown.send(true);
        let servers = futures::future::join_all(self.servers);
        if tokio::time::timeout(drain, servers).await.is_err() {
            tracing::warn!(?drain, "in-flight requests did not finish in time; closing them");
        }
        // The last requests' spend, to the operator within what is left of
        // the drain (at least a moment, so a slow drain still tries once).
        if let Some(sync) = &self.sync {
            let deadline = deadline.max(tokio::time::Instant::now() + SYNC_FLUSH_AT_LEAST);
            if !sync.flush(deadline).await {
                tracing::warn!("the last usage report was not acknowledged; it stays in the state file");
            }
        }
        // The last requests' spend and rate-limit use, settled while draining.
        if let Err(error) = self.state.flush() {
            tracing::error!(%error, "cannot write the state file at shutdown");
        }
    }
}

/// The final usage report's time when the drain used up its timeout.
const SYNC_FLUSH_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(1);

/// How often changed spend and rate-limit buckets are written to the state
/// file: a crash loses at most this much accounting, and the disk sees one
/// small fsynced write per interval however busy the sidecar is.
const STATE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Posts batches (spans, eval records) to `url` with the upstream client
/// (its proxy settings apply), each with `headers`. A failure that may
/// pass (no connection, 429, 502-504) is marked for another try.
fn poster(
    client: &UpstreamClient,
    url: &str,
    extra_headers: &[(String, String)],
    content_type: &'static str,
) -> telemetry::export::Post {
    use telemetry::export::PostError;
    let client = client.clone();
    let endpoint = url.to_owned();
    let mut headers = export_headers(extra_headers);
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Arc::new(move |body| {
        let client = client.clone();
        let request = client.post(endpoint.as_str()).headers(headers.clone()).body(body);
        Box::pin(async move {
            match client.send(request).await {
                Ok(providers::Answer::Success(response)) => {
                    UpstreamClient::body(response)
                        .await
                        .map_err(|e| PostError::passing(e.to_string()))?;
                    Ok(())
                }
                Ok(providers::Answer::Failure { status, .. }) => {
                    let message = format!("it answered {status}");
                    Err(match status {
                        429 | 502..=504 => PostError::passing(message),
                        _ => PostError::refused(message),
                    })
                }
                Err(error) => Err(PostError::passing(error.to_string())),
            }
        })
    })
}

/// The headers an exporter sends with every batch (collector credentials).
fn export_headers(pairs: &[(String, String)]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in pairs {
        match (
            http::HeaderName::try_from(name.as_str()),
            http::HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(mut value)) => {
                // Likely a credential: kept out of HTTP/2 header tables.
                value.set_sensitive(true);
                headers.append(name, value);
            }
            // The value may be a credential: name the header only.
            _ => tracing::warn!(header = %name, "an export header is not valid HTTP; left out"),
        }
    }
    headers
}

/// Writes the state file within `STATE_FLUSH_INTERVAL` of a change until
/// shutdown, then once more (after the servers' in-flight requests, which
/// share the signal, had their turn). The timer is armed by the first change
/// after a write, so an idle sidecar does not wake for the file.
fn flush_state(state: Arc<LocalState>, mut signal: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                () = state.changed() => false,
                _ = signal.wait_for(|stop| *stop) => true,
            };
            // What changes within the interval goes into the same write.
            let stopping = stopping
                || tokio::select! {
                    () = tokio::time::sleep(STATE_FLUSH_INTERVAL) => false,
                    _ = signal.wait_for(|stop| *stop) => true,
                };
            let writer = state.clone();
            match tokio::task::spawn_blocking(move || writer.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "cannot write the state file; will retry"),
                Err(error) => tracing::error!(%error, "state file writer failed"),
            }
            if stopping {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use tempfile::TempDir;

    use super::*;

    /// A route whose in-process upstream produces a chunk every 5 ms.
    const PACED: &str = "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {name: paced}\nspec: {provider: mock, mock: {timeToFirstToken: 1ms, perToken: 5ms}}\n---\napiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata: {name: paced}\nspec: {targets: [{provider: paced, model: m}]}\n";

    async fn start(manifests: &str) -> (Gateway, TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("manifests.yaml"), manifests).expect("write");
        let env: HashMap<String, String> = [
            (settings::MANIFESTS_DIR, dir.path().display().to_string()),
            (settings::LISTEN_ADDR, "127.0.0.1:0".to_owned()),
            (settings::ADMIN_ADDR, "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let settings = Settings::from_env(&env).expect("settings");
        (Gateway::start(&settings, []).await.expect("start"), dir)
    }

    #[tokio::test]
    async fn stream_chunks_leave_as_they_come_on_a_kept_alive_connection() {
        let (gateway, _dir) = start(PACED).await;
        let url = format!("http://{}/v1/chat/completions", gateway.api_addr);
        let body = r#"{"model":"paced","stream":true,"messages":[{"role":"user","content":"one two three four five six"}]}"#;
        let client = reqwest::Client::new();

        // Nagle's algorithm shows from the second stream on a connection:
        // a chunk then waits for the delayed ACK of the one before, ~40 ms,
        // every time. A busy machine delays a chunk now and then, so the
        // typical gap is what tells the two apart, not the longest.
        let mut gaps = Vec::new();
        for _ in 0..3 {
            let response = client.post(&url).body(body).send().await.expect("send");
            let mut chunks = response.bytes_stream();
            let mut last: Option<Instant> = None;
            while let Some(chunk) = chunks.next().await {
                chunk.expect("chunk");
                let now = Instant::now();
                if let Some(last) = last {
                    gaps.push(now - last);
                }
                last = Some(now);
            }
        }
        gaps.sort();
        let median = gaps[gaps.len() / 2];
        assert!(
            median < Duration::from_millis(25),
            "chunks were held back: median gap {median:?} of {gaps:?}"
        );
        gateway.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn reading_the_configuration_does_not_set_off_another_reload() {
        let (gateway, dir) = start(PACED).await;
        let reloads = |result: &str| {
            gateway
                .app
                .metrics
                .config_reloads
                .with_label_values(&[result])
                .get()
        };
        let changed = PACED.replace("perToken: 5ms", "perToken: 6ms");
        std::fs::write(dir.path().join("manifests.yaml"), changed).expect("write");
        for _ in 0..100 {
            if reloads("applied") == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reloads("applied"), 2, "the first load and the change");
        // Long enough for several debounced reloads, had reading set one off.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            reloads("unchanged") + reloads("applied"),
            2,
            "no reload without a change"
        );
        gateway.shutdown(Duration::from_secs(1)).await;
    }
}
