//! Every CEL rule (`x-kubernetes-validations`) in the committed CRDs, run
//! against objects it must accept and objects it must reject, with the `cel`
//! interpreter: the API server evaluates the same expressions on `kubectl
//! apply`. A rule added to a type without cases here fails the test.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Each rule's `self` objects: (CRD file, rule, accepted, rejected).
fn cases() -> Vec<(&'static str, &'static str, Vec<Value>, Vec<Value>)> {
    let target = |weight: Option<u32>| match weight {
        Some(w) => json!({"provider": "p", "model": "m", "weight": w}),
        None => json!({"provider": "p", "model": "m"}),
    };
    vec![
        (
            "llmroutes.llmesh.io.yaml",
            "self.targets.exists(t, !has(t.weight) || t.weight > 0)",
            vec![
                json!({"targets": [target(None)]}),
                json!({"targets": [target(Some(0)), target(Some(3))]}),
            ],
            vec![json!({"targets": [target(Some(0)), target(Some(0))]})],
        ),
        (
            "llmroutes.llmesh.io.yaml",
            "has(self.route) != has(self.target)",
            vec![
                json!({"route": "cheap"}),
                json!({"target": target(None), "on": ["timeout"]}),
            ],
            vec![
                json!({"on": ["timeout"]}),
                json!({"route": "cheap", "target": target(None)}),
            ],
        ),
        (
            "providersecrets.llmesh.io.yaml",
            "self.provider in ['mock', 'openai-compatible'] || has(self.secretRef)",
            vec![
                json!({"provider": "mock"}),
                json!({"provider": "openai-compatible", "baseUrl": "http://vllm:8000"}),
                json!({"provider": "openai", "secretRef": {"name": "k"}}),
            ],
            vec![json!({"provider": "anthropic"})],
        ),
        (
            "providersecrets.llmesh.io.yaml",
            "self.provider != 'mock' || !has(self.secretRef)",
            vec![
                json!({"provider": "mock"}),
                json!({"provider": "openai", "secretRef": {"name": "k"}}),
            ],
            vec![json!({"provider": "mock", "secretRef": {"name": "k"}})],
        ),
        (
            "providersecrets.llmesh.io.yaml",
            "!(self.provider in ['openai-compatible', 'azure-openai']) || has(self.baseUrl)",
            vec![
                json!({"provider": "openai"}),
                json!({"provider": "openai-compatible", "baseUrl": "http://vllm:8000"}),
            ],
            vec![
                json!({"provider": "openai-compatible"}),
                json!({"provider": "azure-openai", "azure": {"apiVersion": "2024-10-21"}}),
            ],
        ),
        (
            "providersecrets.llmesh.io.yaml",
            "(self.provider == 'azure-openai') == has(self.azure)",
            vec![
                json!({"provider": "openai"}),
                json!({"provider": "azure-openai", "azure": {"apiVersion": "2024-10-21"}}),
            ],
            vec![
                json!({"provider": "azure-openai"}),
                json!({"provider": "openai", "azure": {"apiVersion": "2024-10-21"}}),
            ],
        ),
        (
            "providersecrets.llmesh.io.yaml",
            "self.provider != 'bedrock' || has(self.region)",
            vec![
                json!({"provider": "bedrock", "region": "eu-west-1"}),
                json!({"provider": "openai"}),
            ],
            vec![json!({"provider": "bedrock"})],
        ),
        (
            "budgets.llmesh.io.yaml",
            "has(self.action) && self.action == 'downgrade' ? has(self.downgradeTo) : !has(self.downgradeTo)",
            vec![
                json!({"limitUsd": 10}),
                json!({"limitUsd": 10, "action": "block"}),
                json!({"limitUsd": 10, "action": "downgrade", "downgradeTo": "cheap"}),
            ],
            vec![
                json!({"limitUsd": 10, "action": "downgrade"}),
                json!({"limitUsd": 10, "downgradeTo": "cheap"}),
                json!({"limitUsd": 10, "action": "alert", "downgradeTo": "cheap"}),
            ],
        ),
    ]
}

/// Every rule in a schema tree, with its message.
fn rules_in(schema: &Value, found: &mut BTreeMap<String, String>) {
    match schema {
        Value::Object(node) => {
            for rule in node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = |key: &str| rule[key].as_str().unwrap_or_default().to_owned();
                found.insert(text("rule"), text("message"));
            }
            node.values().for_each(|v| rules_in(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| rules_in(v, found)),
        _ => {}
    }
}

fn committed_rules(file: &str) -> BTreeMap<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).expect("committed CRD");
    let crd: Value = serde_norway::from_str(&text).expect("CRD YAML");
    let mut found = BTreeMap::new();
    rules_in(&crd["spec"], &mut found);
    found
}

fn evaluate(rule: &str, object: &Value) -> bool {
    let program = cel::Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    let mut context = cel::Context::default();
    context.add_variable("self", object).expect("self");
    match program.execute(&context) {
        Ok(cel::Value::Bool(result)) => result,
        other => panic!("{rule} on {object}: {other:?}"),
    }
}

#[test]
fn every_cel_rule_accepts_good_objects_and_rejects_bad_ones() {
    let cases = cases();
    for (file, rule, accepted, rejected) in &cases {
        let committed = committed_rules(file);
        let message = committed
            .get(*rule)
            .unwrap_or_else(|| panic!("{file} has no rule {rule:?}; regenerate the CRDs"));
        assert!(!message.is_empty(), "{rule}: a message tells people what to fix");
        for object in accepted {
            assert!(evaluate(rule, object), "{file}: {rule} rejects {object}");
        }
        for object in rejected {
            assert!(!evaluate(rule, object), "{file}: {rule} accepts {object}");
        }
    }
    for file in [
        "llmroutes.llmesh.io.yaml",
        "providersecrets.llmesh.io.yaml",
        "budgets.llmesh.io.yaml",
        "virtualkeys.llmesh.io.yaml",
    ] {
        for rule in committed_rules(file).keys() {
            assert!(
                cases.iter().any(|(f, r, ..)| f == &file && r == rule),
                "{file}: rule {rule:?} has no test cases"
            );
        }
    }
}
