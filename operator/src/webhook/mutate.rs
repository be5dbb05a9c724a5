//! The injection itself: a pure function from a pod, its namespace's
//! settings and the operator's injection settings to a JSON patch. No I/O,
//! so every case is a fixture test.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use llmesh_crds::injection::{
    ADMIN_ADDR, ADMIN_PORT, ADMIN_PORT_NAME, API_PORT, CONFIG_FILE, CONFIG_KEY, CONFIG_MOUNT_DIR,
    CONTAINER_NAME, CPU_LIMIT_ANNOTATION, CPU_REQUEST_ANNOTATION, DEFAULT_VIRTUAL_KEY, DISABLED, ENABLED,
    HEALTHZ_PATH, INJECT_ANNOTATION, INJECTED_LABEL, LISTEN_ADDR, MEMORY_LIMIT_ANNOTATION,
    MEMORY_REQUEST_ANNOTATION, METRICS_PATH, OTEL_ENDPOINT_ANNOTATION, OTEL_PROTOCOL_ANNOTATION, POD_NAME,
    POD_ROUTES, PORT_ANNOTATION, READYZ_PATH, ROUTES_ANNOTATION, SECRETS_DIR, SECRETS_MOUNT_DIR,
    SIDECAR_HASH_ANNOTATION, STATE_FILE, STATE_FILE_NAME, STATE_MOUNT_DIR, SYNC_CA, SYNC_TOKEN_FILE,
    SYNC_TOKEN_KEY, SYNC_TOKEN_MOUNT_DIR, SYNC_TOKEN_SECONDS, SYNC_URL, VIRTUAL_KEY_ANNOTATION,
    WORKLOAD_NAME, WORKLOAD_NAMESPACE, parse_route_list,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::configmap;

/// Namespaces that are never injected, whatever they say: the cluster's own.
pub const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];
/// The sidecar's user id when the image does not set a numeric one:
/// `runAsNonRoot` needs a number to check, and 65532 is distroless' `nonroot`.
const SIDECAR_UID: i64 = 65532;
/// The volume holding the namespace's compiled configuration.
const CONFIG_VOLUME: &str = "llmesh-config";
/// The projected sync token, mounted into the sidecar only.
const SYNC_TOKEN_VOLUME: &str = "llmesh-sync-token";
/// The sidecar's writable volume (the state file).
const STATE_VOLUME: &str = "llmesh-state";
/// Prefix of the credential volumes (one per Secret; the name is hashed to
/// fit the 63-character volume-name limit whatever the Secret is called).
const CREDENTIAL_VOLUME_PREFIX: &str = "llmesh-cred-";

/// Settings of the injection that are the same for every pod (operator flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectionSettings {
    /// The sidecar image.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; unset: Kubernetes' default for the tag.
    pub image_pull_policy: Option<String>,
    /// Inject as a native sidecar (an init container with `restartPolicy:
    /// Always`): the API server is 1.29 or newer.
    pub native_sidecar: bool,
    /// The operator's namespace, never injected.
    pub operator_namespace: String,
    /// Sidecar resources when the pod's annotations name none.
    pub resources: Resources,
    /// The OTLP collector every sidecar exports traces to, unless its pod's
    /// annotation names another; `None`: no tracing.
    pub otel_endpoint: Option<String>,
    /// How sidecars export traces (`http/protobuf` or `grpc`), unless the
    /// pod's annotation says; `None`: the sidecar's default, `http/protobuf`.
    pub otel_protocol: Option<String>,
    /// The sync channel the sidecar connects to (none: no sync).
    pub sync: Option<SyncInjection>,
}

/// An OTLP trace collector and how the pod's sidecar reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OtelEndpoint {
    /// Its `http(s)://` URL.
    url: String,
    /// `http/protobuf` or `grpc`; `None` leaves the sidecar's default.
    protocol: Option<String>,
}

/// The OTLP protocols the sidecar exports with.
pub const OTEL_PROTOCOLS: [&str; 2] = ["http/protobuf", "grpc"];

/// Where the sidecar finds the operator's sync channel and how it trusts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncInjection {
    /// `LLMESH_SYNC_URL`.
    pub url: String,
    /// The CA bundle (PEM) the sync server's certificate chains to.
    pub ca_pem: String,
}

/// Requests and limits of the sidecar container (Kubernetes quantities).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// CPU request.
    pub cpu_request: Option<String>,
    /// CPU limit (none by default: a throttled proxy adds latency to every call).
    pub cpu_limit: Option<String>,
    /// Memory request.
    pub memory_request: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        // Idle RSS is under 20 MiB; 128 MiB leaves room for the default 32 MiB cache and bursts.
        Self {
            cpu_request: Some("50m".to_owned()),
            cpu_limit: None,
            memory_request: Some("32Mi".to_owned()),
            memory_limit: Some("128Mi".to_owned()),
        }
    }
}

/// What the injection needs to know about the pod's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceSettings {
    /// The namespace's name.
    pub name: String,
    /// The namespace asks for injection (label or annotation `llmesh.io/inject: enabled`).
    pub inject: bool,
    /// The namespace lets the operator restart workloads whose pods missed the sidecar.
    pub restart_on_miss: bool,
    /// The Secrets the namespace's configuration reads credentials from.
    pub credential_secrets: BTreeSet<String>,
}

/// Why a pod gets no sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `kube-system`, `kube-public` or the operator's own namespace.
    ProtectedNamespace,
    /// Neither the pod nor its namespace asks for injection.
    NotRequested,
    /// The pod says `llmesh.io/inject: disabled`.
    OptedOut,
    /// The pod already has the sidecar.
    AlreadyInjected,
    /// The pod uses the node's network: the sidecar's ports would clash
    /// with every other such pod on the node, and its admin port would be the node's.
    HostNetwork,
}

impl Skip {
    /// A short fixed label, for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::ProtectedNamespace => "protected_namespace",
            Self::NotRequested => "not_requested",
            Self::OptedOut => "opted_out",
            Self::AlreadyInjected => "already_injected",
            Self::HostNetwork => "host_network",
        }
    }
}

/// The injection's result for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Mutation {
    /// Leave the pod as it is.
    Skip(Skip),
    /// Apply `patch`; `warnings` name annotations that were ignored.
    Inject {
        /// The JSON patch against the pod as sent.
        patch: Patch,
        /// Messages for the client (`kubectl` prints them).
        warnings: Vec<String>,
    },
}

/// Whether a pod with `metadata` in a namespace with `namespace` settings
/// should get the sidecar; `injected` says whether it already has it. Shared
/// by the injection and by the watch for pods that missed it.
pub fn decide(
    metadata: &ObjectMeta,
    injected: bool,
    namespace: &NamespaceSettings,
    settings: &InjectionSettings,
) -> Result<(), Skip> {
    if SYSTEM_NAMESPACES.contains(&namespace.name.as_str()) || namespace.name == settings.operator_namespace {
        return Err(Skip::ProtectedNamespace);
    }
    match annotation(metadata, INJECT_ANNOTATION) {
        Some(DISABLED) => return Err(Skip::OptedOut),
        Some(ENABLED) => {}
        _ if namespace.inject => {}
        _ => return Err(Skip::NotRequested),
    }
    if injected {
        return Err(Skip::AlreadyInjected);
    }
    Ok(())
}

/// Why the pod's spec rules the sidecar out, if it does (what [`decide`],
/// which sees metadata only, cannot tell).
pub fn spec_skip(pod: &Pod) -> Option<Skip> {
    pod.spec
        .as_ref()
        .is_some_and(|spec| spec.host_network == Some(true))
        .then_some(Skip::HostNetwork)
}

/// Whether the pod carries the sidecar (as a container or an init container).
pub fn is_injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == CONTAINER_NAME)
    })
}

/// The patch that injects the sidecar into `pod`, or why not.
pub fn mutate(pod: &Pod, namespace: &NamespaceSettings, settings: &InjectionSettings) -> Mutation {
    if let Err(skip) = decide(&pod.metadata, is_injected(pod), namespace, settings) {
        return Mutation::Skip(skip);
    }
    if let Some(skip) = spec_skip(pod) {
        return Mutation::Skip(skip);
    }
    let mut warnings = Vec::new();
    let overrides = Overrides::read(pod, settings, &mut warnings);
    let workload = workload_name(&pod.metadata);
    let container = sidecar_container(settings, namespace, &overrides, &workload);
    let mut patch = Vec::new();
    let spec = pod.spec.clone().unwrap_or_default();
    // The sidecar shares the pod's network namespace: an app on the same port
    // fails to bind (or the sidecar does). Said at admission, where it is cheap to fix.
    for port in [overrides.api_port, ADMIN_PORT] {
        let clash = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.container_port == i32::from(port));
        if clash {
            warnings.push(format!(
                "llmesh: an app container declares port {port}, which the sidecar uses; \
                 set {PORT_ANNOTATION} to another API port, or move the app"
            ));
        }
    }

    // App env before the sidecar is inserted: these paths use the original container indices.
    for (index, app) in spec.containers.iter().enumerate() {
        let index = index.to_string();
        let wanted = base_urls(overrides.api_port)
            .into_iter()
            .filter(|var| !app.env.iter().flatten().any(|e| e.name == var.name))
            .collect::<Vec<_>>();
        match (&app.env, wanted.is_empty()) {
            (_, true) => {}
            (None, false) => patch.push(add(&["spec", "containers", &index, "env"], to_value(&wanted))),
            (Some(_), false) => patch.extend(
                wanted
                    .iter()
                    .map(|var| add(&["spec", "containers", &index, "env", "-"], to_value(var))),
            ),
        }
    }

    // The sidecar goes first, so it is up before init containers and apps that call it.
    let container_value = to_value(&container);
    if settings.native_sidecar {
        insert_first(
            &mut patch,
            &["spec", "initContainers"],
            spec.init_containers.is_some(),
            container_value,
        );
    } else {
        insert_first(&mut patch, &["spec", "containers"], true, container_value);
    }

    let volumes = volumes(settings, namespace);
    match spec.volumes {
        Some(_) => patch.extend(
            volumes
                .iter()
                .map(|v| add(&["spec", "volumes", "-"], to_value(v))),
        ),
        None => patch.push(add(&["spec", "volumes"], to_value(&volumes))),
    }

    let existing = pod.metadata.annotations.as_ref();
    let mut annotations = vec![(SIDECAR_HASH_ANNOTATION, settings.template_hash())];
    // An app that is scraped by annotation already keeps its own; the
    // PodMonitor label then covers the sidecar.
    let scraped = existing.is_some_and(|a| a.keys().any(|k| k.starts_with("prometheus.io/")));
    if !scraped {
        annotations.extend([
            ("prometheus.io/scrape", "true".to_owned()),
            ("prometheus.io/port", ADMIN_PORT.to_string()),
            ("prometheus.io/path", METRICS_PATH.to_owned()),
        ]);
    }
    add_to_map(&mut patch, "annotations", existing.is_some(), &annotations);
    let labels = [(INJECTED_LABEL, "true".to_owned())];
    add_to_map(&mut patch, "labels", pod.metadata.labels.is_some(), &labels);

    Mutation::Inject {
        patch: Patch(patch),
        warnings,
    }
}

impl InjectionSettings {
    /// A hash of the sidecar container as these settings and this operator
    /// build inject it (for a fixed reference pod), written on every injected
    /// pod: a pod whose hash differs runs an older sidecar template or image.
    pub fn template_hash(&self) -> String {
        let reference = NamespaceSettings {
            name: "reference".to_owned(),
            inject: true,
            ..NamespaceSettings::default()
        };
        let overrides = Overrides {
            api_port: API_PORT,
            resources: self.resources.clone(),
            virtual_key: None,
            routes: None,
            otel_endpoint: self.otel_endpoint.clone().map(|url| OtelEndpoint {
                url,
                protocol: self.otel_protocol.clone(),
            }),
        };
        let container = sidecar_container(self, &reference, &overrides, "reference");
        let digest = Sha256::digest(serde_json::to_vec(&container).unwrap_or_default());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a pod's annotations change about its sidecar.
#[derive(Clone, Debug)]
struct Overrides {
    api_port: u16,
    resources: Resources,
    virtual_key: Option<String>,
    /// The pod's route aliases, comma-separated, as the sidecar reads them.
    routes: Option<String>,
    /// Where its sidecar exports traces.
    otel_endpoint: Option<OtelEndpoint>,
}

impl Overrides {
    /// Reads the pod's annotations; an unusable value is ignored with a
    /// warning, because a patch the API server rejects would fail the pod's creation.
    fn read(pod: &Pod, settings: &InjectionSettings, warnings: &mut Vec<String>) -> Self {
        let api_port = match annotation(&pod.metadata, PORT_ANNOTATION) {
            None => API_PORT,
            Some(value) => match value.parse::<u16>() {
                Ok(port) if port != 0 && port != ADMIN_PORT => port,
                _ => {
                    warnings.push(format!(
                        "llmesh: {PORT_ANNOTATION}={value:?} is not a usable port; using {API_PORT}"
                    ));
                    API_PORT
                }
            },
        };
        let mut resources = settings.resources.clone();
        for (key, field) in [
            (CPU_REQUEST_ANNOTATION, &mut resources.cpu_request),
            (CPU_LIMIT_ANNOTATION, &mut resources.cpu_limit),
            (MEMORY_REQUEST_ANNOTATION, &mut resources.memory_request),
            (MEMORY_LIMIT_ANNOTATION, &mut resources.memory_limit),
        ] {
            match annotation(&pod.metadata, key) {
                None => {}
                Some(value) if is_quantity(value) => *field = Some(value.to_owned()),
                Some(value) => warnings.push(format!(
                    "llmesh: {key}={value:?} is not a Kubernetes quantity; using the default"
                )),
            }
        }
        let routes =
            annotation(&pod.metadata, ROUTES_ANNOTATION).and_then(|value| match parse_route_list(value) {
                Ok(routes) => Some(routes.into_iter().collect::<Vec<_>>().join(",")),
                Err(reason) => {
                    warnings.push(format!(
                        "llmesh: {ROUTES_ANNOTATION}={value:?}: {reason}; the pod may call every route"
                    ));
                    None
                }
            });
        let url = match annotation(&pod.metadata, OTEL_ENDPOINT_ANNOTATION) {
            None => settings.otel_endpoint.clone(),
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url.to_owned()),
            Some(value) => {
                warnings.push(format!(
                    "llmesh: {OTEL_ENDPOINT_ANNOTATION}={value:?} is not an http(s) URL; using the default"
                ));
                settings.otel_endpoint.clone()
            }
        };
        let protocol = match annotation(&pod.metadata, OTEL_PROTOCOL_ANNOTATION) {
            None => settings.otel_protocol.clone(),
            Some(protocol) if OTEL_PROTOCOLS.contains(&protocol) => Some(protocol.to_owned()),
            Some(value) => {
                warnings.push(format!(
                    "llmesh: {OTEL_PROTOCOL_ANNOTATION}={value:?} is not http/protobuf or grpc; using the default"
                ));
                settings.otel_protocol.clone()
            }
        };
        let otel_endpoint = url.map(|url| OtelEndpoint { url, protocol });
        Self {
            api_port,
            resources,
            otel_endpoint,
            virtual_key: annotation(&pod.metadata, VIRTUAL_KEY_ANNOTATION)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
            routes,
        }
    }
}

/// The workload a pod belongs to, as its controller owner reference names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// `Deployment` (for a ReplicaSet a Deployment made), `StatefulSet`, `Job`, …
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// The pod's owning workload: for a ReplicaSet a Deployment made (its name
/// is the Deployment's plus `-<pod-template-hash>`), the Deployment.
pub fn owner(metadata: &ObjectMeta) -> Option<Owner> {
    let owner = metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let template_hash = metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
    let deployment = (owner.kind == "ReplicaSet")
        .then(|| {
            owner
                .name
                .strip_suffix(template_hash?.as_str())?
                .strip_suffix('-')
        })
        .flatten();
    Some(match deployment {
        Some(name) => Owner {
            kind: "Deployment".to_owned(),
            name: name.to_owned(),
        },
        None => Owner {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        },
    })
}

/// The name the sidecar's metrics carry: the owning workload's, else the pod's own.
pub fn workload_name(metadata: &ObjectMeta) -> String {
    owner(metadata)
        .map(|o| o.name)
        .or_else(|| metadata.name.clone())
        .or_else(|| {
            metadata
                .generate_name
                .as_ref()
                .map(|g| g.trim_end_matches('-').to_owned())
        })
        .unwrap_or_default()
}

fn sidecar_container(
    settings: &InjectionSettings,
    namespace: &NamespaceSettings,
    overrides: &Overrides,
    workload: &str,
) -> Container {
    let mut env = vec![
        value_env(LISTEN_ADDR, format!("127.0.0.1:{}", overrides.api_port)),
        value_env(ADMIN_ADDR, format!("0.0.0.0:{ADMIN_PORT}")),
        value_env(CONFIG_FILE, format!("{CONFIG_MOUNT_DIR}/{CONFIG_KEY}")),
        value_env(SECRETS_DIR, SECRETS_MOUNT_DIR.to_owned()),
        value_env(STATE_FILE, format!("{STATE_MOUNT_DIR}/{STATE_FILE_NAME}")),
        value_env(WORKLOAD_NAMESPACE, namespace.name.clone()),
        value_env(WORKLOAD_NAME, workload.to_owned()),
        // The downward API: a pod with `generateName` has no name at admission yet.
        EnvVar {
            name: POD_NAME.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
            value: None,
        },
    ];
    if let Some(key) = &overrides.virtual_key {
        env.push(value_env(DEFAULT_VIRTUAL_KEY, key.clone()));
    }
    if let Some(routes) = &overrides.routes {
        env.push(value_env(POD_ROUTES, routes.clone()));
    }
    if let Some(sync) = &settings.sync {
        env.push(value_env(SYNC_URL, sync.url.clone()));
        env.push(value_env(
            SYNC_TOKEN_FILE,
            format!("{SYNC_TOKEN_MOUNT_DIR}/{SYNC_TOKEN_KEY}"),
        ));
        env.push(value_env(SYNC_CA, sync.ca_pem.clone()));
    }
    if let Some(endpoint) = &overrides.otel_endpoint {
        // Spans name the workload and pod; `$(…)` is the kubelet's expansion
        // of the variable set above.
        env.push(value_env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.url.clone()));
        if let Some(protocol) = &endpoint.protocol {
            env.push(value_env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.clone()));
        }
        env.push(value_env("OTEL_SERVICE_NAME", workload.to_owned()));
        env.push(value_env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("k8s.namespace.name={},k8s.pod.name=$({POD_NAME})", namespace.name),
        ));
    }
    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.to_owned(),
            mount_path: CONFIG_MOUNT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: STATE_VOLUME.to_owned(),
            mount_path: STATE_MOUNT_DIR.to_owned(),
            ..VolumeMount::default()
        },
    ];
    if settings.sync.is_some() {
        mounts.push(VolumeMount {
            name: SYNC_TOKEN_VOLUME.to_owned(),
            mount_path: SYNC_TOKEN_MOUNT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    mounts.extend(namespace.credential_secrets.iter().map(|secret| VolumeMount {
        name: credential_volume(secret),
        mount_path: format!("{SECRETS_MOUNT_DIR}/{secret}"),
        read_only: Some(true),
        ..VolumeMount::default()
    }));
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_owned()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Checked every second for up to two minutes: the app starts as soon
        // as the configuration is loaded, and a missing ConfigMap is visible
        // as a failing probe rather than a silent hang.
        startup_probe: Some(probe(READYZ_PATH, 1, 120)),
        readiness_probe: Some(probe(READYZ_PATH, 5, 3)),
        liveness_probe: Some(probe(HEALTHZ_PATH, 10, 3)),
        resources: Some(resource_requirements(&overrides.resources)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        restart_policy: settings.native_sidecar.then(|| "Always".to_owned()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn volumes(settings: &InjectionSettings, namespace: &NamespaceSettings) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.to_owned(),
            // Not optional: without its configuration the sidecar serves nothing,
            // and a pending mount says why in the pod's events.
            config_map: Some(ConfigMapVolumeSource {
                name: configmap::NAME.to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // Outlives container restarts (a crash, an OOM kill), so budgets and
        // rate limits carry on; a rescheduled pod starts from zero.
        Volume {
            name: STATE_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if settings.sync.is_some() {
        // A projected token for the sync audience only: it cannot call the
        // API server, and it is mounted into the sidecar, never the app.
        volumes.push(Volume {
            name: SYNC_TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(llmesh_crds::sync::AUDIENCE.to_owned()),
                        expiration_seconds: Some(SYNC_TOKEN_SECONDS),
                        path: SYNC_TOKEN_KEY.to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes.extend(namespace.credential_secrets.iter().map(|secret| Volume {
        name: credential_volume(secret),
        // Optional: one missing provider Secret fails that provider's calls, not the pod.
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.clone()),
            optional: Some(true),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }));
    volumes
}

fn credential_volume(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{CREDENTIAL_VOLUME_PREFIX}{hex}")
}

fn base_urls(port: u16) -> [EnvVar; 2] {
    [
        value_env("OPENAI_BASE_URL", format!("http://127.0.0.1:{port}/v1")),
        // The Anthropic SDKs append `/v1/messages` themselves.
        value_env("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}")),
    ]
}

fn resource_requirements(resources: &Resources) -> ResourceRequirements {
    let map = |cpu: &Option<String>, memory: &Option<String>| {
        let map: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(name, q)| Some((name.to_owned(), Quantity(q.clone()?))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: map(&resources.cpu_request, &resources.memory_request),
        limits: map(&resources.cpu_limit, &resources.memory_limit),
        ..ResourceRequirements::default()
    }
}

/// Whether `value` is a Kubernetes quantity (`100m`, `1.5`, `64Mi`, `1e3`).
pub fn is_quantity(value: &str) -> bool {
    let number_end = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(value.len(), |(i, _)| i);
    let (number, suffix) = value.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let number_ok = digits > 0 && number.matches('.').count() <= 1;
    let suffix_ok = match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        exponent => exponent
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())),
    };
    number_ok && suffix_ok
}

fn annotation<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // Serialising k8s-openapi types into a `Value` cannot fail: no maps with non-string keys.
    serde_json::to_value(value).unwrap_or_default()
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

/// Inserts `value` first in the list at `path`, creating the list when absent.
fn insert_first(patch: &mut Vec<PatchOperation>, path: &[&str], exists: bool, value: Value) {
    if exists {
        let mut first = path.to_vec();
        first.push("0");
        patch.push(add(&first, value));
    } else {
        patch.push(add(path, Value::Array(vec![value])));
    }
}

/// Adds `entries` to the pod's `metadata.<field>` map, creating it when absent.
fn add_to_map(patch: &mut Vec<PatchOperation>, field: &str, exists: bool, entries: &[(&str, String)]) {
    if exists {
        patch.extend(
            entries
                .iter()
                .map(|(key, value)| add(&["metadata", field, key], Value::from(value.as_str()))),
        );
    } else {
        let map: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(key, value)| ((*key).to_owned(), Value::from(value.as_str())))
            .collect();
        patch.push(add(&["metadata", field], Value::Object(map)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_checked_before_they_reach_the_api_server() {
        for good in ["100m", "1", "1.5", "64Mi", "2Gi", "1e3", "0.5", "500k"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "lots", "64MB", "1..5", "m", "1e", "-1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn an_app_on_the_sidecars_port_is_warned_about() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {"llmesh.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 4000}]}]}
        }))
        .expect("pod");
        let namespace = NamespaceSettings {
            name: "team-a".to_owned(),
            ..NamespaceSettings::default()
        };
        let Mutation::Inject { warnings, .. } = mutate(&pod, &namespace, &settings()) else {
            panic!("injected");
        };
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("port 4000"), "{warnings:?}");
    }

    #[test]
    fn host_network_pods_are_left_alone() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {"llmesh.io/inject": "enabled"}},
            "spec": {"hostNetwork": true, "containers": [{"name": "agent"}]}
        }))
        .expect("pod");
        let namespace = NamespaceSettings {
            name: "monitoring".to_owned(),
            ..NamespaceSettings::default()
        };
        assert_eq!(
            mutate(&pod, &namespace, &settings()),
            Mutation::Skip(Skip::HostNetwork)
        );
    }

    fn settings() -> InjectionSettings {
        InjectionSettings {
            image: "ghcr.io/llmesh/llmesh-sidecar:0.1.0".to_owned(),
            image_pull_policy: None,
            native_sidecar: true,
            operator_namespace: "llmesh-system".to_owned(),
            resources: Resources::default(),
            sync: None,
            otel_endpoint: None,
            otel_protocol: None,
        }
    }

    #[test]
    fn the_trace_protocol_comes_from_the_pod_or_the_operator_and_a_bad_one_is_ignored() {
        let injected = |annotations: serde_json::Value, settings: &InjectionSettings| {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": "app"}]}
            }))
            .expect("pod");
            let mut warnings = Vec::new();
            let overrides = Overrides::read(&pod, settings, &mut warnings);
            let container = sidecar_container(settings, &NamespaceSettings::default(), &overrides, "chat");
            let env = |name: &str| {
                let env = container.env.iter().flatten().find(|e| e.name == name)?;
                env.value.clone()
            };
            (
                env("OTEL_EXPORTER_OTLP_ENDPOINT"),
                env("OTEL_EXPORTER_OTLP_PROTOCOL"),
                warnings.len(),
            )
        };
        let grpc_default = InjectionSettings {
            otel_endpoint: Some("http://collector:4317".to_owned()),
            otel_protocol: Some("grpc".to_owned()),
            ..settings()
        };
        let url = |u: &str| Some(u.to_owned());
        assert_eq!(
            injected(serde_json::json!({}), &grpc_default),
            (url("http://collector:4317"), url("grpc"), 0)
        );
        let http_pod = serde_json::json!({
            "llmesh.io/otel-endpoint": "http://agent:4318",
            "llmesh.io/otel-protocol": "http/protobuf"
        });
        assert_eq!(
            injected(http_pod, &grpc_default),
            (url("http://agent:4318"), url("http/protobuf"), 0)
        );
        let bad = serde_json::json!({"llmesh.io/otel-protocol": "http/json"});
        assert_eq!(
            injected(bad, &grpc_default),
            (url("http://collector:4317"), url("grpc"), 1)
        );
        // A protocol without any collector injects nothing.
        let grpc_only = serde_json::json!({"llmesh.io/otel-protocol": "grpc"});
        assert_eq!(injected(grpc_only, &settings()), (None, None, 0));
    }

    #[test]
    fn credential_volume_names_fit_the_volume_name_limit() {
        let long = "a".repeat(253);
        let name = credential_volume(&long);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(credential_volume("a"), credential_volume("b"));
    }

    #[test]
    fn the_template_hash_follows_the_image() {
        let settings = settings();
        let newer = InjectionSettings {
            image: "ghcr.io/llmesh/llmesh-sidecar:0.2.0".to_owned(),
            ..settings.clone()
        };
        assert_eq!(settings.template_hash(), settings.clone().template_hash());
        assert_ne!(settings.template_hash(), newer.template_hash());
        assert_eq!(settings.template_hash().len(), 16);
    }
}
