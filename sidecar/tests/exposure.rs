//! What each port answers to whom (docs/security.md): the API only inside
//! the pod; on the admin port, metrics and probes to the cluster but the
//! debug endpoints only inside the pod, drills enabled or not.

use std::net::{IpAddr, UdpSocket};

use llmesh_sidecar::settings;
use llmesh_test_support::harness::{Sidecar, provider, route};

/// This machine's address on its network (what another pod would reach
/// the sidecar's pod IP at), found without sending anything.
fn pod_ip() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    socket.connect("192.0.2.254:9").expect("a route off the machine");
    let ip = socket.local_addr().expect("address").ip();
    assert!(
        !ip.is_loopback(),
        "the test needs a network interface besides loopback"
    );
    ip
}

#[tokio::test]
async fn debug_endpoints_answer_only_inside_the_pod_and_the_api_only_on_loopback() {
    let yaml = [
        provider("mock", "{provider: mock, mock: {timeToFirstToken: 1ms}}"),
        route("smart", "{targets: [{provider: mock, model: m}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start_with(
        &yaml,
        vec![
            (settings::ADMIN_ADDR.into(), "0.0.0.0:0".into()),
            (settings::ENABLE_DRILLS.into(), "true".into()),
        ],
    )
    .await;
    let gateway = sidecar.gateway.as_ref().expect("running");
    let admin_port = gateway.admin_addr.port();
    let api_port = gateway.api_addr.port();
    let client = reqwest::Client::new();
    let outside = pod_ip();

    let drill = r#"{"provider": "mock", "faults": [{"kind": "status", "status": 503}]}"#;
    for (host, inside) in [("127.0.0.1".to_owned(), true), (outside.to_string(), false)] {
        let admin = format!("http://{host}:{admin_port}");
        let metrics = client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(metrics.status(), 200, "metrics from {host}");
        let ready = client.get(format!("{admin}/readyz")).send().await.expect("probe");
        assert_eq!(ready.status(), 200, "probe from {host}");

        let targets = client
            .get(format!("{admin}/debug/targets"))
            .send()
            .await
            .expect("sent");
        let faults = client
            .post(format!("{admin}/debug/faults"))
            .header("content-type", "application/json")
            .body(drill)
            .send()
            .await
            .expect("sent");
        let expected = if inside { 200 } else { 403 };
        assert_eq!(targets.status(), expected, "/debug/targets from {host}");
        assert_eq!(faults.status(), expected, "/debug/faults from {host}");
        if !inside {
            let text = faults.text().await.expect("text");
            assert!(text.contains("kubectl port-forward"), "{text}");
        }
    }

    // The API listens on loopback only: from the pod IP there is nothing to connect to.
    let refused = client
        .get(format!("http://{outside}:{api_port}/v1/models"))
        .send()
        .await;
    assert!(refused.is_err(), "the API port answered on the pod IP");
    sidecar.stop(std::time::Duration::from_secs(1)).await;
}
