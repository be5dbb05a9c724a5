//! Settings, from the environment the webhook injects (and, for standalone
//! use, command-line flags that override it). Each variable name is defined
//! once: the ones the operator's webhook injects in `llmesh_crds::injection`
//! (re-exported here), the rest here.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use llmesh_crds::injection::{
    ADMIN_ADDR, CONFIG_FILE, DEFAULT_VIRTUAL_KEY, LISTEN_ADDR, POD_NAME, POD_ROUTES, SECRETS_DIR, STATE_FILE,
    SYNC_CA, SYNC_TOKEN_FILE, SYNC_URL, WORKLOAD_NAME, WORKLOAD_NAMESPACE,
};
use llmesh_crds::injection::{ADMIN_PORT, API_PORT, SECRETS_MOUNT_DIR, parse_route_list};

use crate::edge::ConnectionLimits;
use crate::eval::SinkSettings;
use crate::metrics::Workload;
use crate::providers::UpstreamSettings;
use crate::redact::{MaskSecrets, Redact};
use crate::telemetry::TraceSettings;

/// Directory of YAML manifests (standalone mode).
pub const MANIFESTS_DIR: &str = "LLMESH_MANIFESTS";
/// Largest accepted request body, in bytes.
pub const MAX_BODY_BYTES: &str = "LLMESH_MAX_BODY_BYTES";
/// How long a client may take to send a request's headers, in milliseconds.
pub const HEADER_READ_TIMEOUT_MS: &str = "LLMESH_HEADER_READ_TIMEOUT_MS";
/// How long a client may take to send a request's body, in milliseconds.
pub const BODY_READ_TIMEOUT_MS: &str = "LLMESH_BODY_READ_TIMEOUT_MS";
/// Connections open at once per port; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: &str = "LLMESH_MAX_CONNECTIONS";
/// Requests served at once; past it, 503 with `Retry-After`.
pub const MAX_CONCURRENT_REQUESTS: &str = "LLMESH_MAX_CONCURRENT_REQUESTS";
/// Threads serving requests (default 1: one thread, no hand-off between threads).
pub const WORKER_THREADS: &str = "LLMESH_WORKER_THREADS";
/// Largest complete answer read from an upstream, in bytes.
pub const MAX_ANSWER_BYTES: &str = "LLMESH_MAX_ANSWER_BYTES";
/// Upstream connect timeout, in milliseconds.
pub const CONNECT_TIMEOUT_MS: &str = "LLMESH_CONNECT_TIMEOUT_MS";
/// Upper bound for one upstream request when its route sets none, in milliseconds.
pub const UPSTREAM_TIMEOUT_MS: &str = "LLMESH_UPSTREAM_TIMEOUT_MS";
/// How long in-flight requests may finish after a shutdown signal, in milliseconds.
pub const DRAIN_TIMEOUT_MS: &str = "LLMESH_DRAIN_TIMEOUT_MS";
/// `true` lets `POST /debug/faults` on the admin port inject faults into
/// mock providers (default off: the admin port is reachable in the cluster).
pub const ENABLE_DRILLS: &str = "LLMESH_ENABLE_DRILLS";
/// Memory for cached answers, in bytes, shared by every caching route.
pub const CACHE_MAX_BYTES: &str = "LLMESH_CACHE_MAX_BYTES";
/// The JSON-lines file eval records (and shadow answers) are appended to.
pub const EVAL_FILE: &str = "LLMESH_EVAL_FILE";
/// The eval file's size, in bytes, at which it is rotated (default 64 MiB).
pub const EVAL_FILE_MAX_BYTES: &str = "LLMESH_EVAL_FILE_MAX_BYTES";
/// Rotated eval files kept (default 3).
pub const EVAL_FILE_KEEP: &str = "LLMESH_EVAL_FILE_KEEP";
/// The HTTP endpoint eval records are posted to, as batches of JSON lines.
pub const EVAL_URL: &str = "LLMESH_EVAL_URL";
/// Records each eval outlet holds at most (default 1000); more are dropped.
pub const EVAL_QUEUE: &str = "LLMESH_EVAL_QUEUE";
/// Records per post to the eval endpoint at most (default 100).
pub const EVAL_BATCH: &str = "LLMESH_EVAL_BATCH";
/// Log filter, `tracing` syntax (default `info`).
pub const LOG: &str = "LLMESH_LOG";
/// `json` (default) or `text`.
pub const LOG_FORMAT: &str = "LLMESH_LOG_FORMAT";

/// Reads variables; tests pass a map instead of touching the process.
pub trait Env {
    /// The variable's value, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// Flags layered over another environment (the command line over the process).
#[derive(Debug)]
pub struct Overlay<'a, E: Env> {
    /// Values that win.
    pub over: HashMap<String, String>,
    /// Everything else.
    pub under: &'a E,
}

impl<E: Env> Env for Overlay<'_, E> {
    fn get(&self, name: &str) -> Option<String> {
        self.over.get(name).cloned().or_else(|| self.under.get(name))
    }
}

/// Where configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A compiled JSON file (in a pod: the operator's ConfigMap).
    File(PathBuf),
    /// A directory of YAML manifests, compiled here (standalone mode).
    Manifests(PathBuf),
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// Everything the sidecar is started with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// API address.
    pub listen: SocketAddr,
    /// Metrics and probes address.
    pub admin_listen: SocketAddr,
    /// Configuration source.
    pub source: ConfigSource,
    /// Mounted Secrets.
    pub secrets_dir: Option<PathBuf>,
    /// Body size limit.
    pub max_body_bytes: usize,
    /// Body read limit.
    pub body_read_timeout: Duration,
    /// Connection cap and header read timeout, per port.
    pub connections: ConnectionLimits,
    /// Requests served at once.
    pub max_concurrent_requests: usize,
    /// Outbound client settings.
    pub upstream: UpstreamSettings,
    /// Shutdown grace period.
    pub drain_timeout: Duration,
    /// Whether failure drills may be started from the admin port.
    pub drills_enabled: bool,
    /// The pod's default virtual key.
    pub default_key: Option<String>,
    /// The route aliases the pod's apps may call (`None`: every route).
    pub pod_routes: Option<BTreeSet<String>>,
    /// Where spans are exported (`None`: no tracing).
    pub traces: Option<TraceSettings>,
    /// Where eval records go.
    pub eval: SinkSettings,
    /// Where budget spend and rate-limit buckets are kept.
    pub state_file: Option<PathBuf>,
    /// The operator's sync channel (`None`: this sidecar enforces its own
    /// spend alone and reads its configuration only from its source).
    pub sync: Option<SyncSettings>,
    /// The workload every metric is labelled with.
    pub workload: Option<Workload>,
    /// The pod's name, for the start-up log line.
    pub pod: Option<String>,
    /// Bytes of cached answers held at most.
    pub cache_max_bytes: u64,
    /// Threads serving requests: 1 runs everything on one thread (tokio's
    /// current-thread runtime), more a work-stealing pool of that many.
    pub worker_threads: NonZeroUsize,
    /// Log filter.
    pub log_filter: String,
    /// Log format.
    pub log_format: LogFormat,
    /// What prompts and answers pass through before a route that opts in
    /// (`logContent`) logs them. Not an environment setting: a platform
    /// with stricter rules embeds the sidecar and sets its own.
    pub redactor: Arc<dyn Redact>,
}

/// Where the sync channel is and how to authenticate on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSettings {
    /// Base URL of the operator's sync server.
    pub url: String,
    /// The file holding the bearer token (re-read on every connection).
    pub token_file: PathBuf,
    /// The CA bundle (PEM) the server's certificate chains to, besides the system's roots.
    pub ca_pem: Option<String>,
    /// The pod's namespace, sent so the operator refuses a token of another.
    pub namespace: Option<String>,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value does not parse.
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// Neither a config file nor a manifests directory was given.
    #[error("no configuration source: set {CONFIG_FILE} (or --config) or {MANIFESTS_DIR} (or --manifests)")]
    NoSource,
}

fn parsed<T: std::str::FromStr>(env: &impl Env, name: &'static str, default: T) -> Result<T, SettingsError>
where
    T::Err: std::fmt::Display,
{
    match env.get(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| SettingsError::Invalid {
            name,
            reason: e.to_string(),
            value,
        }),
    }
}

fn millis(env: &impl Env, name: &'static str, default: Duration) -> Result<Duration, SettingsError> {
    let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    parsed(env, name, default).map(Duration::from_millis)
}

impl Settings {
    /// Reads every setting.
    ///
    /// # Errors
    /// A value does not parse, or no configuration source is named.
    pub fn from_env(env: &impl Env) -> Result<Self, SettingsError> {
        let source = match (env.get(MANIFESTS_DIR), env.get(CONFIG_FILE)) {
            (Some(dir), _) => ConfigSource::Manifests(dir.into()),
            (None, Some(file)) => ConfigSource::File(file.into()),
            (None, None) => return Err(SettingsError::NoSource),
        };
        let secrets_dir = env
            .get(SECRETS_DIR)
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from(SECRETS_MOUNT_DIR)).filter(|p| p.is_dir()));
        let defaults = UpstreamSettings::default();
        let log_format = match env.get(LOG_FORMAT).as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(SettingsError::Invalid {
                    name: LOG_FORMAT,
                    value: other.to_owned(),
                    reason: "use json or text".to_owned(),
                });
            }
        };
        Ok(Self {
            listen: parsed(env, LISTEN_ADDR, SocketAddr::from(([127, 0, 0, 1], API_PORT)))?,
            admin_listen: parsed(env, ADMIN_ADDR, SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)))?,
            source,
            secrets_dir,
            // Large enough for a few base64 images in one request.
            max_body_bytes: parsed(env, MAX_BODY_BYTES, 20 * 1024 * 1024)?,
            // Generous for a 20 MiB body from a local app; a stalled client is cut off.
            body_read_timeout: millis(env, BODY_READ_TIMEOUT_MS, Duration::from_secs(30))?,
            connections: ConnectionLimits {
                // Above the concurrency cap: refused requests still get their 503.
                max_connections: parsed(env, MAX_CONNECTIONS, 16_384)?,
                header_read_timeout: millis(env, HEADER_READ_TIMEOUT_MS, Duration::from_secs(10))?,
            },
            // 10,000 slow streams measured within a sidecar's memory (docs/performance.md).
            max_concurrent_requests: parsed(env, MAX_CONCURRENT_REQUESTS, 10_000)?,
            // A sidecar gets a fraction of a core: one thread serves its app's
            // rates with no wake-up of a second thread per request.
            worker_threads: parsed(env, WORKER_THREADS, NonZeroUsize::MIN)?,
            upstream: UpstreamSettings {
                connect_timeout: millis(env, CONNECT_TIMEOUT_MS, defaults.connect_timeout)?,
                request_timeout: millis(env, UPSTREAM_TIMEOUT_MS, defaults.request_timeout)?,
                pool_idle_timeout: defaults.pool_idle_timeout,
                extra_roots_pem: None,
                max_answer_bytes: parsed(env, MAX_ANSWER_BYTES, defaults.max_answer_bytes)?,
            },
            // Below Kubernetes' default 30 s termination grace period.
            drain_timeout: millis(env, DRAIN_TIMEOUT_MS, Duration::from_secs(25))?,
            drills_enabled: parsed(env, ENABLE_DRILLS, false)?,
            default_key: env.get(DEFAULT_VIRTUAL_KEY).filter(|k| !k.is_empty()),
            pod_routes: match env.get(POD_ROUTES).filter(|r| !r.trim().is_empty()) {
                None => None,
                Some(value) => Some(parse_route_list(&value).map_err(|reason| SettingsError::Invalid {
                    name: POD_ROUTES,
                    value,
                    reason,
                })?),
            },
            traces: TraceSettings::from_env(|name| env.get(name)).map_err(|e| SettingsError::Invalid {
                name: e.name,
                value: e.value,
                reason: e.reason,
            })?,
            eval: SinkSettings {
                file: env.get(EVAL_FILE).filter(|f| !f.is_empty()).map(PathBuf::from),
                file_max_bytes: parsed(env, EVAL_FILE_MAX_BYTES, 64 * 1024 * 1024)?,
                file_keep: parsed(env, EVAL_FILE_KEEP, 3)?,
                url: env.get(EVAL_URL).filter(|u| !u.trim().is_empty()),
                queue: parsed(env, EVAL_QUEUE, 1000)?,
                batch: parsed(env, EVAL_BATCH, 100)?,
            },
            state_file: env.get(STATE_FILE).filter(|f| !f.is_empty()).map(PathBuf::from),
            sync: match env.get(SYNC_URL).filter(|u| !u.trim().is_empty()) {
                None => None,
                Some(url) => Some(SyncSettings {
                    url: url.trim().trim_end_matches('/').to_owned(),
                    token_file: env
                        .get(SYNC_TOKEN_FILE)
                        .filter(|f| !f.is_empty())
                        .map(PathBuf::from)
                        .ok_or_else(|| SettingsError::Invalid {
                            name: SYNC_TOKEN_FILE,
                            value: String::new(),
                            reason: format!("required with {SYNC_URL}"),
                        })?,
                    ca_pem: env.get(SYNC_CA).filter(|c| !c.trim().is_empty()),
                    namespace: env.get(WORKLOAD_NAMESPACE).filter(|n| !n.is_empty()),
                }),
            },
            workload: env.get(WORKLOAD_NAME).map(|name| Workload {
                namespace: env.get(WORKLOAD_NAMESPACE).unwrap_or_default(),
                name,
            }),
            pod: env.get(POD_NAME).filter(|p| !p.is_empty()),
            // A modest share of a sidecar's usual 128 MiB limit; only used by routes that cache.
            cache_max_bytes: parsed(env, CACHE_MAX_BYTES, 32 * 1024 * 1024)?,
            log_filter: env.get(LOG).unwrap_or_else(|| "info".to_owned()),
            log_format,
            redactor: Arc::new(MaskSecrets::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_keep_the_api_on_loopback() {
        let settings =
            Settings::from_env(&env(&[(CONFIG_FILE, "/etc/llmesh/config/config.json")])).expect("valid");
        assert_eq!(settings.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(settings.admin_listen.port(), 9464);
        assert_eq!(
            settings.source,
            ConfigSource::File("/etc/llmesh/config/config.json".into())
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let error =
            Settings::from_env(&env(&[(MANIFESTS_DIR, "m"), (MAX_BODY_BYTES, "lots")])).expect_err("bad");
        assert!(
            error.to_string().starts_with("LLMESH_MAX_BODY_BYTES=\"lots\""),
            "{error}"
        );
        assert!(matches!(
            Settings::from_env(&env(&[])),
            Err(SettingsError::NoSource)
        ));
    }

    #[test]
    fn one_worker_thread_unless_told_otherwise() {
        let source = (MANIFESTS_DIR, "m");
        let default = Settings::from_env(&env(&[source])).expect("valid");
        assert_eq!(default.worker_threads.get(), 1);
        let four = Settings::from_env(&env(&[source, (WORKER_THREADS, "4")])).expect("valid");
        assert_eq!(four.worker_threads.get(), 4);
        let error = Settings::from_env(&env(&[source, (WORKER_THREADS, "0")])).expect_err("none");
        assert!(
            error.to_string().starts_with("LLMESH_WORKER_THREADS=\"0\""),
            "{error}"
        );
    }

    #[test]
    fn flags_override_the_environment() {
        let under = env(&[(LISTEN_ADDR, "127.0.0.1:1"), (CONFIG_FILE, "c.json")]);
        let overlay = Overlay {
            over: env(&[(LISTEN_ADDR, "127.0.0.1:2"), (MANIFESTS_DIR, "m")]),
            under: &under,
        };
        let settings = Settings::from_env(&overlay).expect("valid");
        assert_eq!(settings.listen.port(), 2);
        assert_eq!(settings.source, ConfigSource::Manifests("m".into()));
    }
}
