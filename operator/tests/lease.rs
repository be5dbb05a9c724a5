//! Leader election against a mocked API server: the exact Lease calls.

mod support;

use std::time::Duration;

use kube::Client;
use llmesh_operator::lease::{Elector, LeaseSettings};
use serde_json::{Value, json};
use support::{ApiServer, play};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/llmesh-system/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/llmesh-system/leases/llmesh-operator";

fn elector(client: Client) -> Elector {
    Elector::new(
        client,
        LeaseSettings {
            namespace: "llmesh-system".to_owned(),
            name: "llmesh-operator".to_owned(),
            identity: "operator-a".to_owned(),
            duration: Duration::from_secs(15),
        },
    )
}

async fn try_lead(client: Client) -> bool {
    elector(client).try_lead().await.expect("no API error")
}

/// A Lease held by `holder`, renewed `seconds_ago`.
fn lease(holder: &str, seconds_ago: i64, transitions: i32) -> Value {
    let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(seconds_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "llmesh-operator", "namespace": "llmesh-system", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        }
    })
}

#[tokio::test]
async fn a_missing_lease_is_created_for_us() {
    let (client, mut server) = ApiServer::start();
    let leads = play(try_lead(client), async {
        server.expect_missing(LEASE).await;
        let call = server
            .expect_with("POST", LEASES, |call| (201, call.body.clone()))
            .await;
        assert_eq!(call.body["spec"]["holderIdentity"], "operator-a");
        assert_eq!(call.body["spec"]["leaseDurationSeconds"], 15);
    })
    .await;
    assert!(leads);
}

#[tokio::test]
async fn our_lease_is_renewed_guarded_by_its_resource_version() {
    let (client, mut server) = ApiServer::start();
    let leads = play(try_lead(client), async {
        server.expect("GET", LEASE, 200, lease("operator-a", 5, 2)).await;
        let call = server
            .expect_with("PUT", LEASE, |call| (200, call.body.clone()))
            .await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            call.body["spec"]["leaseTransitions"], 2,
            "a renewal is not a transition"
        );
        assert_eq!(
            call.body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z",
            "kept from the Lease"
        );
    })
    .await;
    assert!(leads);
}

#[tokio::test]
async fn a_live_holder_is_left_alone() {
    let (client, mut server) = ApiServer::start();
    let leads = play(try_lead(client), async {
        server.expect("GET", LEASE, 200, lease("operator-b", 5, 2)).await;
    })
    .await;
    assert!(!leads);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_unless_another_candidate_wins() {
    let (client, mut server) = ApiServer::start();
    let leads = play(try_lead(client), async {
        server.expect("GET", LEASE, 200, lease("operator-b", 60, 2)).await;
        let conflict = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the object has been modified", "reason": "Conflict", "code": 409
        });
        let call = server.expect("PUT", LEASE, 409, conflict).await;
        assert_eq!(call.body["spec"]["holderIdentity"], "operator-a");
        assert_eq!(call.body["spec"]["leaseTransitions"], 3);
    })
    .await;
    assert!(!leads, "the conflict means another candidate won the race");
}
