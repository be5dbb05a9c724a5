//! The running controller against a fake API server that misbehaves on a
//! script: conflicts, 429s with `Retry-After`, 500s, calls that never
//! answer, connection resets, dropped and expired watches. It must converge
//! to the right ConfigMap, Secrets and statuses, with no duplicate or
//! regenerated Secret and no status lost; and a leader that loses its Lease
//! mid-reconcile must write nothing more while the new leader converges.
//!
//! Tokio's clock is paused: backoffs, `Retry-After` and timeouts take no
//! real time, and the bounds below are in the controller's own time.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use llmesh_crds::SidecarConfig;
use llmesh_crds::config::key_hash;
use llmesh_operator::controller::{self, Context};
use llmesh_operator::lease::{Elector, Fence, LeaseSettings};
use llmesh_operator::metrics::Metrics;
use llmesh_operator::probes::Health;
use serde_json::{Value, json};
use support::cluster::{FakeCluster, Fault};
use support::{BUDGETS, CONFIG_MAP, KEYS, PROVIDERS, ROUTES, SECRETS, secret_path};
use tokio::time::Instant;

const NAMESPACES: &str = "/api/v1/namespaces";
const ALL_SECRETS: &str = "/api/v1/secrets";
const ALL_CONFIG_MAPS: &str = "/api/v1/configmaps";
const ALL_ROUTES: &str = "/apis/llmesh.io/v1alpha1/llmroutes";
const ALL_PROVIDERS: &str = "/apis/llmesh.io/v1alpha1/providersecrets";
const ALL_KEYS: &str = "/apis/llmesh.io/v1alpha1/virtualkeys";
const ALL_BUDGETS: &str = "/apis/llmesh.io/v1alpha1/budgets";
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/llmesh-system/leases/llmesh-operator";

/// What the namespaces should converge to.
struct Expected {
    /// Route name → model of its target.
    routes: Vec<(&'static str, &'static str)>,
    /// The generated virtual keys.
    keys: Vec<&'static str>,
}

/// Two namespaces: `team-a` with a provider, a route, a generated key and
/// a budget; `team-b` with a route to a provider that does not exist.
fn seed(cluster: &FakeCluster) {
    for ns in ["team-a", "team-b", "llmesh-system"] {
        cluster.put(NAMESPACES, json!({"metadata": {"name": ns}}));
    }
    cluster.put(
        ALL_SECRETS,
        json!({"metadata": {"name": "openai-key", "namespace": "team-a"}, "data": {"apiKey": "c2stdGVzdA=="}}),
    );
    cluster.put(
        ALL_PROVIDERS,
        json!({"metadata": {"name": "openai", "namespace": "team-a"},
            "spec": {"provider": "openai", "secretRef": {"name": "openai-key"}}}),
    );
    put_route(cluster, "team-a", "smart", "openai", "gpt-4o-mini");
    put_key(cluster, "team-key");
    cluster.put(
        ALL_BUDGETS,
        json!({"metadata": {"name": "team", "namespace": "team-a"}, "spec": {"limitUsd": 100.0}}),
    );
    put_route(cluster, "team-b", "lost", "nowhere", "gpt-4o-mini");
}

fn put_route(cluster: &FakeCluster, ns: &str, name: &str, provider: &str, model: &str) {
    cluster.put(
        ALL_ROUTES,
        json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"targets": [{"provider": provider, "model": model}]}}),
    );
}

fn put_key(cluster: &FakeCluster, name: &str) {
    cluster.put(
        ALL_KEYS,
        json!({"metadata": {"name": name, "namespace": "team-a"}, "spec": {"team": "a"}}),
    );
}

fn context(client: kube::Client) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        Metrics::new().expect("metrics"),
        Arc::new(Health::default()),
        None,
    ))
}

/// The `Ready` condition of a stored object's status, with its generation check.
fn ready(object: &Value) -> Result<&Value, String> {
    let name = &object["metadata"]["name"];
    let status = &object["status"];
    if status["observedGeneration"] != object["metadata"]["generation"] {
        return Err(format!(
            "{name}: status observed generation {} of {}",
            status["observedGeneration"], object["metadata"]["generation"]
        ));
    }
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .ok_or_else(|| format!("{name}: no Ready condition"))
}

/// The first way the stored state differs from `expected`, if any.
fn mismatch(cluster: &FakeCluster, expected: &Expected) -> Result<(), String> {
    let config_map = cluster
        .get("/api/v1/configmaps", "team-a", "llmesh-config")
        .ok_or("no ConfigMap in team-a")?;
    let text = config_map["data"]["config.json"]
        .as_str()
        .ok_or("no config.json")?;
    let config = SidecarConfig::from_json(text.as_bytes()).map_err(|e| e.to_string())?;
    let routes: Vec<(&str, &str)> = config
        .routes
        .iter()
        .map(|(name, route)| (name.as_str(), route.targets[0].model.as_str()))
        .collect();
    if routes != expected.routes {
        return Err(format!("routes {routes:?}"));
    }
    let keys: Vec<&str> = config.keys.keys().map(String::as_str).collect();
    if keys != expected.keys {
        return Err(format!("keys {keys:?}"));
    }
    for name in &expected.keys {
        let secret = cluster
            .get(ALL_SECRETS, "team-a", name)
            .ok_or(format!("no Secret {name}"))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["key"].as_str().ok_or("no key in the Secret")?)
            .map_err(|e| e.to_string())?;
        if config.keys[*name].key_hash != key_hash(&value) {
            return Err(format!("key {name}: the config's hash is not the Secret's key"));
        }
    }
    for collection in [ALL_PROVIDERS, ALL_ROUTES, ALL_KEYS, ALL_BUDGETS] {
        for object in cluster.list(collection, "team-a") {
            let ready = ready(&object)?;
            if ready["status"] != "True" {
                return Err(format!(
                    "{} not Ready: {}",
                    object["metadata"]["name"], ready["message"]
                ));
            }
        }
    }
    let lost = cluster.get(ALL_ROUTES, "team-b", "lost").ok_or("no route lost")?;
    if ready(&lost)?["reason"] != "Invalid" {
        return Err("team-b's route is not Invalid".to_owned());
    }
    Ok(())
}

/// Waits until the state is `expected`; returns how long that took in the
/// controller's time. Fails with the last difference after `limit`.
async fn converge(cluster: &FakeCluster, expected: &Expected, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match mismatch(cluster, expected) {
            Ok(()) => return started.elapsed(),
            Err(difference) if started.elapsed() > limit => {
                panic!("not converged after {limit:?}: {difference}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The generated Secrets of `team-a`, by name.
fn generated_secrets(cluster: &FakeCluster) -> Vec<String> {
    cluster
        .list(ALL_SECRETS, "team-a")
        .iter()
        .filter(|s| s["metadata"]["ownerReferences"][0]["kind"] == "VirtualKey")
        .map(|s| s["metadata"]["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `reconcile_errors_total` for `reason`.
fn errors(ctx: &Context, reason: &str) -> u64 {
    let prefix = format!("llmesh_operator_reconcile_errors_total{{reason=\"{reason}\"}} ");
    ctx.metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn the_controller_converges_through_a_scripted_storm() {
    let cluster = FakeCluster::default();
    seed(&cluster);
    let route_status = format!("{ROUTES}/smart/status");
    let key_status = format!("{KEYS}/team-key/status");
    // The watches' initial lists fail once, and one watch cannot start.
    cluster.fault("GET", ALL_SECRETS, 1, Fault::Status(500));
    cluster.fault("GET", ALL_ROUTES, 1, Fault::TooMany(3));
    cluster.fault("GET", ALL_CONFIG_MAPS, 2, Fault::Reset);
    // One reconcile after another meets a fault, in the order it makes its calls.
    cluster.fault("GET", ROUTES, 1, Fault::Status(500));
    cluster.fault("GET", PROVIDERS, 1, Fault::Hang);
    cluster.fault("GET", &secret_path("openai-key"), 1, Fault::Reset);
    // The key's Secret is created but the answer is lost: kube retries the
    // 504 and gets AlreadyExists; the next reconcile must keep that key.
    cluster.fault("POST", SECRETS, 1, Fault::DoneButStatus(504));
    cluster.fault("PATCH", CONFIG_MAP, 1, Fault::Status(409));
    cluster.fault("PATCH", &route_status, 2, Fault::TooMany(2));
    cluster.fault("PATCH", &key_status, 1, Fault::Status(500));
    cluster.fault("PATCH", &format!("{BUDGETS}/team/status"), 1, Fault::Status(503));

    let ctx = context(cluster.client("operator-a"));
    let operator = tokio::spawn(controller::run(Arc::clone(&ctx)));
    let mut expected = Expected {
        routes: vec![("smart", "gpt-4o-mini")],
        keys: vec!["team-key"],
    };
    let took = converge(&cluster, &expected, Duration::from_secs(600)).await;
    assert_eq!(
        cluster.unplayed_faults(),
        Vec::<String>::new(),
        "every fault was met"
    );
    assert!(
        took >= controller::RECONCILE_TIMEOUT,
        "the call that never answered was cut by the reconcile deadline ({took:?})"
    );
    assert_eq!(errors(&ctx, "timeout"), 1);
    assert!(errors(&ctx, "write_secret") >= 1, "the lost create was retried");
    let key = cluster
        .get(ALL_SECRETS, "team-a", "team-key")
        .expect("the key's Secret");

    // Once all is quiet, every watch expires (410 Gone) while a route
    // changes and a key is added: the watches list again, each after its
    // own short backoff, and the changes are reconciled.
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.expire_watches();
    put_route(&cluster, "team-a", "smart", "openai", "gpt-4o");
    put_key(&cluster, "second-key");
    expected = Expected {
        routes: vec![("smart", "gpt-4o")],
        keys: vec!["second-key", "team-key"],
    };
    let took = converge(&cluster, &expected, Duration::from_secs(60)).await;
    assert!(
        took < Duration::from_secs(5),
        "the watches, not the resync, saw it: {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let open = cluster.open_watches();
    assert_eq!(open, 7, "one watch per kind is open again");

    // Every watch ends (an API server restart) and a route is added while
    // they are down: they resume from their resource version.
    cluster.drop_watches();
    put_route(&cluster, "team-a", "fast", "openai", "gpt-4o-mini");
    expected.routes.insert(0, ("fast", "gpt-4o-mini"));
    let took = converge(&cluster, &expected, Duration::from_secs(60)).await;
    assert!(took < Duration::from_secs(5), "{took:?}");

    assert_eq!(
        generated_secrets(&cluster),
        ["second-key", "team-key"],
        "one Secret per key"
    );
    assert_eq!(
        cluster.get(ALL_SECRETS, "team-a", "team-key").expect("Secret")["data"],
        key["data"],
        "the key an app may already hold was never regenerated"
    );
    let replaced: Vec<_> = cluster
        .writes()
        .into_iter()
        .filter(|w| w.method == "PUT")
        .collect();
    assert!(replaced.is_empty(), "no Secret was overwritten: {replaced:?}");
    operator.abort();
}

fn elector(client: kube::Client, identity: &str) -> Elector {
    Elector::new(
        client,
        LeaseSettings {
            namespace: "llmesh-system".to_owned(),
            name: "llmesh-operator".to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
        },
    )
}

/// Replica `identity` as `main` runs it: the Lease, and a controller whose
/// client is fenced by it.
fn replica(cluster: &FakeCluster, identity: &str) -> (Elector, Arc<Context>) {
    let elector = elector(cluster.client(identity), identity);
    let fenced = cluster.fenced_client(identity, Fence::new(elector.leadership()));
    (elector, context(fenced))
}

#[tokio::test(start_paused = true)]
async fn a_leader_losing_its_lease_mid_reconcile_writes_nothing_more() {
    let cluster = FakeCluster::default();
    seed(&cluster);
    let (elector_a, ctx_a) = replica(&cluster, "operator-a");
    elector_a.acquire(|| {}).await;
    // From now on the API server does not answer A's renewals, and A's
    // reconcile of team-a stalls between its reads and its writes.
    cluster.fault_for("operator-a", "GET", LEASE, usize::MAX, Fault::Hang);
    cluster.fault_for(
        "operator-a",
        "GET",
        &secret_path("team-key"),
        1,
        Fault::Delay(Duration::from_secs(30)),
    );
    let a_since = Instant::now();
    // Renewing and reconciling run side by side here (in `main`, losing the
    // Lease also stops the controller): the fence alone must stop the writes.
    let holding = tokio::spawn(async move { elector_a.hold().await });
    let operator_a = tokio::spawn(controller::run(Arc::clone(&ctx_a)));

    // A writes team-b's configuration while it leads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let early = cluster.writes();
    assert!(
        early
            .iter()
            .any(|w| w.identity == "operator-a" && w.path.contains("team-b")),
        "{early:?}"
    );
    // The Lease runs out (its renew time is moved back, as the clock would
    // have moved it) and B takes it over.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut lease = cluster
        .get(LEASES, "llmesh-system", "llmesh-operator")
        .expect("Lease");
    let expired = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(20);
    lease["spec"]["renewTime"] = json!(expired.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    cluster.put(LEASES, lease);
    let taken_over = Instant::now();
    let (elector_b, ctx_b) = replica(&cluster, "operator-b");
    assert!(
        elector_b.try_lead().await.expect("B reaches the API"),
        "B takes the Lease over"
    );
    let holding_b = tokio::spawn(async move { elector_b.hold().await });
    let operator_b = tokio::spawn(controller::run(Arc::clone(&ctx_b)));

    let expected = Expected {
        routes: vec![("smart", "gpt-4o-mini")],
        keys: vec!["team-key"],
    };
    converge(&cluster, &expected, Duration::from_secs(120)).await;
    // A's stalled reconcile went on after the takeover and tried to write.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let late: Vec<_> = cluster
        .writes()
        .into_iter()
        .filter(|w| w.identity == "operator-a" && w.at >= a_since + Duration::from_secs(10))
        .collect();
    assert!(late.is_empty(), "A wrote after its renew deadline: {late:?}");
    assert!(
        errors(&ctx_a, "write_secret") + errors(&ctx_a, "write_configmap") >= 1,
        "A's stalled reconcile tried to write and was refused"
    );
    assert!(
        holding.is_finished(),
        "A's renewal loop noticed it lost the Lease"
    );
    assert!(taken_over >= a_since + Duration::from_secs(10));
    assert_eq!(
        generated_secrets(&cluster),
        ["team-key"],
        "one Secret, written by B"
    );
    let secret_writes: Vec<_> = cluster
        .writes()
        .into_iter()
        .filter(|w| w.path == SECRETS)
        .map(|w| w.identity)
        .collect();
    assert_eq!(secret_writes, ["operator-b"]);
    assert!(!holding_b.is_finished(), "B still leads");
    for task in [operator_a, operator_b] {
        task.abort();
    }
}
