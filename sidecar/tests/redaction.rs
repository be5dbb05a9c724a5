//! The redaction hook: an embedder's own [`Redact`] decides what of a
//! prompt and an answer reaches the access log of a route that logs content.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use llmesh_sidecar::access_log::AccessLines;
use llmesh_sidecar::redact::Redact;
use llmesh_test_support::harness::{Sidecar, provider, route};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Hides a customer's project code name, which no generic rule knows.
#[derive(Debug)]
struct CodeNames;

impl Redact for CodeNames {
    fn redact(&self, text: &str) -> String {
        text.replace("Bluebird", "[project]")
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn access_lines(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["target"] == "llmesh::access")
            .collect()
    }
}

#[tokio::test]
async fn a_custom_redactor_rewrites_logged_prompts_and_answers() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .map_event_format(AccessLines)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber in this test binary");

    let manifests = [
        provider("mock", "{provider: mock}"),
        route(
            "logged",
            "{targets: [{provider: mock, model: m}], logContent: true}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start_customized(&manifests, Vec::new(), |settings| {
        settings.redactor = Arc::new(CodeNames);
    })
    .await;
    let ask = json!({"model": "logged", "messages": [{"role": "user", "content": "Status of Bluebird?"}]});
    let response = sidecar.post("/v1/chat/completions", &ask).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let answer = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("text")
        .to_owned();

    // The line is written once the answer has been handed over.
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = captured.access_lines();
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [line] = lines.as_slice() else {
        panic!("one access line: {lines:?}");
    };
    assert_eq!(line["prompt"], "Status of [project]?");
    assert_eq!(line["answer"], CodeNames.redact(&answer));
    let all = String::from_utf8_lossy(&captured.0.lock()).into_owned();
    assert!(!all.contains("Bluebird"), "{all}");
}
