//! The webhook and the sidecar agree: the real sidecar binary, started with
//! exactly the env, args and files the operator's injection gives a pod,
//! comes up, passes its probes and serves a chat request with the
//! credential from its mounted Secret.
//!
//! A small stand-in for the kubelet does what the kubelet would: mounts the
//! volumes (under a temporary root instead of `/`), resolves the downward
//! API, and starts the container's command. The only other rewrite: listen
//! ports become 0, since fixed ports clash on a shared test machine.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, Secret};
use llmesh_crds::compile::SecretKeys;
use llmesh_crds::injection::{self, ADMIN_ADDR, LISTEN_ADDR};
use llmesh_crds::{Inputs, LLMRoute, ProviderSecret, compile};
use llmesh_operator::configmap;
use llmesh_operator::webhook::mutate::{InjectionSettings, Mutation, NamespaceSettings, Resources, mutate};
use llmesh_test_support::harness::http_client;
use llmesh_test_support::openai;
use serde_json::{Value, json};

const NS: &str = "team-a";
const API_KEY: &str = "sk-from-the-mounted-secret";

/// The namespace's objects as the cluster holds them.
struct Cluster {
    config_map: ConfigMap,
    secret: Secret,
}

fn cluster(upstream: &str) -> Cluster {
    let provider: ProviderSecret = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "ProviderSecret",
        "metadata": {"name": "openai", "namespace": NS},
        "spec": {"provider": "openai", "baseUrl": format!("{upstream}/v1"), "secretRef": {"name": "openai-key"}}
    }))
    .expect("provider");
    let route: LLMRoute = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "LLMRoute",
        "metadata": {"name": "smart", "namespace": NS},
        "spec": {"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    }))
    .expect("route");
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "openai-key", "namespace": NS},
        "data": {"apiKey": ByteString(API_KEY.as_bytes().to_vec())}
    }))
    .expect("secret");
    let compiled = compile(Inputs {
        providers: &[provider],
        routes: &[route],
        keys: &[],
        budgets: &[],
        secrets: &SecretKeys::from_secrets([&secret]),
        previous: None,
    });
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(NS.to_owned());
    Cluster {
        // The very ConfigMap the operator writes.
        config_map: configmap::desired(&namespace, &compiled.config).expect("ConfigMap"),
        secret,
    }
}

/// The pod the webhook returns for a Deployment's pod in the namespace.
fn injected_pod(cluster: &Cluster) -> Pod {
    let original = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "chat-api-6d4cf56db6-x2x9q", "namespace": NS,
            "labels": {"pod-template-hash": "6d4cf56db6"},
            "annotations": {"llmesh.io/inject": "enabled"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chat-api-6d4cf56db6",
                                 "uid": "rs", "controller": true}]
        },
        "spec": {"containers": [{"name": "app", "image": "example/chat-api"}]}
    });
    let pod: Pod = serde_json::from_value(original.clone()).expect("pod");
    let config = configmap::stored_config(&cluster.config_map).expect("config");
    let namespace = NamespaceSettings {
        name: NS.to_owned(),
        inject: false,
        restart_on_miss: false,
        credential_secrets: injection::credential_secrets(&config),
    };
    let settings = InjectionSettings {
        image: "ghcr.io/llmesh/llmesh-sidecar:test".to_owned(),
        image_pull_policy: None,
        native_sidecar: true,
        operator_namespace: "llmesh-system".to_owned(),
        resources: Resources::default(),
        sync: None,
        otel_endpoint: None,
        otel_protocol: None,
    };
    let Mutation::Inject { patch, warnings } = mutate(&pod, &namespace, &settings) else {
        panic!("the pod asks for the sidecar");
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut object = original;
    json_patch::patch(&mut object, &patch).expect("the patch applies");
    serde_json::from_value(object).expect("still a pod")
}

/// Mounts the sidecar's volumes under `root`, as the kubelet would at `/`.
fn mount(pod: &Pod, sidecar: &Container, cluster: &Cluster, root: &Path) {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for mount in sidecar.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .expect("a volume for each mount");
        let files: BTreeMap<String, Vec<u8>> = if let Some(source) = &volume.config_map {
            assert_eq!(source.name, configmap::NAME);
            let data = cluster.config_map.data.clone().unwrap_or_default();
            data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
        } else if let Some(source) = &volume.secret {
            assert_eq!(
                source.secret_name.as_deref(),
                cluster.secret.metadata.name.as_deref()
            );
            let data = cluster.secret.data.clone().unwrap_or_default();
            data.into_iter().map(|(k, v)| (k, v.0)).collect()
        } else if volume.empty_dir.is_some() {
            // Scratch space the sidecar writes (its state file): starts empty.
            BTreeMap::new()
        } else {
            panic!("unexpected volume {volume:?}");
        };
        let dir = under(root, &mount.mount_path);
        std::fs::create_dir_all(&dir).expect("mount dir");
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).expect("file");
        }
    }
}

fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// The sidecar's environment as the kubelet resolves it.
fn environment(pod: &Pod, sidecar: &Container, root: &Path) -> Vec<(String, String)> {
    let mut resolved = Vec::new();
    for var in sidecar.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => {
                let field = from.field_ref.as_ref().expect("only the downward API is used");
                assert_eq!(field.field_path, "metadata.name");
                pod.metadata.name.clone().expect("name")
            }
            other => panic!("{}: {other:?}", var.name),
        };
        // Paths in the container's filesystem live under the stand-in root.
        let value = if value.starts_with('/') {
            under(root, &value).display().to_string()
        } else if var.name == LISTEN_ADDR || var.name == ADMIN_ADDR {
            let (host, _) = value.rsplit_once(':').expect("host:port");
            format!("{host}:0")
        } else {
            value
        };
        resolved.push((var.name.clone(), value));
    }
    resolved
}

struct Running {
    child: Child,
    api: String,
    admin: String,
    log: Value,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(sidecar: &Container, env: &[(String, String)]) -> Running {
    assert_eq!(
        sidecar.command, None,
        "the image's entrypoint: the sidecar binary"
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmesh-sidecar"));
    command
        .args(sidecar.args.iter().flatten())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let log = loop {
        let line = lines.next().expect("the sidecar logs its start").expect("utf-8");
        let event: Value = serde_json::from_str(&line).expect("JSON log lines");
        if event["message"] == "llmesh sidecar serving" {
            break event;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Running {
        child,
        api: format!("http://{}", log["api_addr"].as_str().expect("api")),
        admin: format!("http://{}", log["admin_addr"].as_str().expect("admin")),
        log,
    }
}

fn probe_path(probe: &Option<k8s_openapi::api::core::v1::Probe>) -> String {
    let get = probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("HTTP probe");
    assert_eq!(
        serde_json::to_value(&get.port).expect("port"),
        json!(injection::ADMIN_PORT)
    );
    get.path.clone().expect("path")
}

#[tokio::test]
async fn the_sidecar_runs_from_exactly_what_the_webhook_injects() {
    let upstream = openai::start().await;
    let cluster = cluster(&upstream.url());
    let pod = injected_pod(&cluster);
    let spec = pod.spec.as_ref().expect("spec");
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == injection::CONTAINER_NAME)
        .expect("the sidecar");
    let root = tempfile::tempdir().expect("root");
    mount(&pod, sidecar, &cluster, root.path());
    let env = environment(&pod, sidecar, root.path());
    let running = start(sidecar, &env);
    assert_eq!(
        running.log["pod"], "chat-api-6d4cf56db6-x2x9q",
        "the downward API pod name is read"
    );
    let client = http_client();

    // The startup probe, as the kubelet runs it: until it passes the app does not start.
    let startup = format!("{}{}", running.admin, probe_path(&sidecar.startup_probe));
    let mut ready = false;
    for _ in 0..100 {
        if client.get(&startup).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the startup probe passes");
    for probe in [&sidecar.readiness_probe, &sidecar.liveness_probe] {
        let url = format!("{}{}", running.admin, probe_path(probe));
        assert_eq!(client.get(url).send().await.expect("probe").status(), 200);
    }

    // The app calls the base URL it was given (on the port the sidecar really bound).
    let app = &spec.containers[0];
    let base = app
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "OPENAI_BASE_URL")
        .and_then(|e| e.value.clone())
        .expect("OPENAI_BASE_URL");
    let port = running.api.rsplit(':').next().expect("port");
    let base = base.replace(&format!(":{}", injection::API_PORT), &format!(":{port}"));
    let response = client
        .post(format!("{base}/chat/completions"))
        .json(&json!({"model": "smart", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("sent");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
    let calls = upstream.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str()),
        "the key comes from the Secret mounted into the sidecar"
    );

    let metrics = client
        .get(format!("{}{}", running.admin, injection::METRICS_PATH))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("workload_name=\"chat-api\""),
        "the Deployment's name labels every metric"
    );
}
