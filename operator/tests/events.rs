//! Events reach the Event API with the reason and note a person reads in
//! `kubectl describe`, and a failed publish does not fail anything.

mod support;

use kube::runtime::events::{Recorder, Reporter};
use llmesh_operator::events::{self, Notice};
use serde_json::json;
use support::{ApiServer, NS, play, route};

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

#[tokio::test]
async fn a_notice_becomes_an_event_on_its_resource() {
    let (client, mut server) = ApiServer::start();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "llmesh-operator".into(),
            instance: Some("pod-1".into()),
        },
    );
    let broken = route("broken", "nowhere");
    let notices = vec![
        Notice::ready_changed(
            &broken,
            false,
            "spec.targets[0].provider: ProviderSecret nowhere does not exist",
        ),
        Notice::ready_changed(&broken, true, "serving model broken"),
    ];
    play(async move { events::publish(&recorder, notices).await }, async {
        let call = server
            .expect_with("POST", EVENTS, |call| (201, call.body.clone()))
            .await;
        assert_eq!(call.body["type"], "Warning");
        assert_eq!(call.body["reason"], "Invalid");
        assert_eq!(
            call.body["note"],
            "spec.targets[0].provider: ProviderSecret nowhere does not exist"
        );
        assert_eq!(call.body["reportingController"], "llmesh-operator");
        assert_eq!(
            [&call.body["regarding"]["kind"], &call.body["regarding"]["name"]],
            [&json!("LLMRoute"), &json!("broken")]
        );
        assert_eq!(call.body["regarding"]["namespace"], NS);
        // The API server refuses the second Event: logged, not an error.
        server
            .expect(
                "POST",
                EVENTS,
                403,
                json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Forbidden", "code": 403}),
            )
            .await;
    })
    .await;
}
