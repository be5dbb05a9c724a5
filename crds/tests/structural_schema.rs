//! Every committed CRD schema is structural: the API server rejects (or, for
//! `v1`, refuses to serve with pruning) schemas that are not. The rules are
//! Kubernetes' "structural schema" rules, checked on the YAML under `crds/`.

use serde_json::Value;

/// Junctors under which the rules restrict what a schema may say.
const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];
/// Keywords a schema may not set inside a junctor.
const FORBIDDEN_IN_JUNCTORS: [&str; 5] = [
    "description",
    "type",
    "default",
    "additionalProperties",
    "nullable",
];
/// Keywords the API server does not accept at all in a CRD schema.
const UNSUPPORTED: [&str; 5] = ["$ref", "definitions", "$defs", "$schema", "patternProperties"];

/// Violations of the rules in the schema at `path`.
fn check(schema: &Value, path: &str, in_junctor: bool, violations: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        violations.push(format!("{path}: a schema must be an object"));
        return;
    };
    let escapes_typing = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let has_type = node
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !in_junctor && !has_type && !escapes_typing {
        violations.push(format!("{path}: no type"));
    }
    if node.get("type").is_some_and(|t| !t.is_string()) {
        violations.push(format!("{path}: type must be a single string"));
    }
    for keyword in UNSUPPORTED {
        if node.contains_key(keyword) {
            violations.push(format!("{path}: {keyword} is not supported in CRD schemas"));
        }
    }
    if in_junctor {
        for keyword in FORBIDDEN_IN_JUNCTORS {
            if node.contains_key(keyword) {
                violations.push(format!("{path}: {keyword} inside allOf/anyOf/oneOf/not"));
            }
        }
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        violations.push(format!("{path}: properties and additionalProperties together"));
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            check(property, &format!("{path}.{name}"), in_junctor, violations);
        }
    }
    match node.get("additionalProperties") {
        Some(Value::Bool(_)) | None => {}
        Some(schema) => check(schema, &format!("{path}.*"), in_junctor, violations),
    }
    match node.get("items") {
        Some(Value::Array(_)) => violations.push(format!("{path}.items: must be one schema, not a tuple")),
        Some(items) => check(items, &format!("{path}[]"), in_junctor, violations),
        None => {}
    }
    for junctor in JUNCTORS {
        let branches = match node.get(junctor) {
            Some(Value::Array(branches)) => branches.iter().collect(),
            Some(branch) => vec![branch],
            None => continue,
        };
        for (i, branch) in branches.into_iter().enumerate() {
            check_junctor_fields(node, branch, &format!("{path}.{junctor}[{i}]"), violations);
            check(branch, &format!("{path}.{junctor}[{i}]"), true, violations);
        }
    }
}

/// A field or item named inside a junctor must also be specified outside it.
fn check_junctor_fields(
    outside: &serde_json::Map<String, Value>,
    branch: &Value,
    path: &str,
    violations: &mut Vec<String>,
) {
    for name in branch
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.keys())
    {
        let specified = outside.get("properties").and_then(|p| p.get(name)).is_some();
        if !specified {
            violations.push(format!("{path}.{name}: only specified inside a junctor"));
        }
    }
    if branch.get("items").is_some() && !outside.contains_key("items") {
        violations.push(format!("{path}[]: items only specified inside a junctor"));
    }
}

/// `metadata` may only restrict `name` and `generateName`.
fn check_metadata(root: &Value, path: &str, violations: &mut Vec<String>) {
    let Some(metadata) = root.pointer("/properties/metadata").and_then(Value::as_object) else {
        return;
    };
    for (keyword, value) in metadata {
        let allowed = match keyword.as_str() {
            "type" | "description" => true,
            "properties" => value
                .as_object()
                .is_some_and(|p| p.keys().all(|k| k == "name" || k == "generateName")),
            _ => false,
        };
        if !allowed {
            violations.push(format!("{path}.metadata: {keyword} is not allowed on metadata"));
        }
    }
}

fn committed_crds() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut crds: Vec<(String, Value)> = std::fs::read_dir(dir)
        .expect("crds/ is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("CRD file");
            let crd: Value = serde_norway::from_str(&text).expect("CRD YAML parses");
            (
                path.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                crd,
            )
        })
        .collect();
    crds.sort_by(|a, b| a.0.cmp(&b.0));
    crds
}

#[test]
fn every_committed_crd_schema_is_structural() {
    let crds = committed_crds();
    assert!(
        crds.len() >= 2,
        "the CRDs are found: {:?}",
        crds.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    let mut violations = Vec::new();
    for (file, crd) in &crds {
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .expect("spec.versions");
        for version in versions {
            let name = version["name"].as_str().unwrap_or("?");
            let path = format!("{file} {name}");
            let root = version
                .pointer("/schema/openAPIV3Schema")
                .expect("openAPIV3Schema");
            check(root, &path, false, &mut violations);
            check_metadata(root, &path, &mut violations);
            if root.pointer("/properties/status").is_some()
                && version.pointer("/subresources/status").is_none()
            {
                violations.push(format!("{path}: a status field needs the status subresource"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "non-structural CRD schemas:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_catches_non_structural_schemas() {
    let schema: Value = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "free": {"x-kubernetes-preserve-unknown-fields": true},
            "choice": {"type": "object", "anyOf": [{"type": "object", "properties": {"hidden": {}}}]},
            "list": {"type": "array", "items": {"properties": {}}},
            "referenced": {"$ref": "#/definitions/x"}
        }
    });
    let mut violations = Vec::new();
    check(&schema, "root", false, &mut violations);
    let expected = [
        "root.both: properties and additionalProperties together",
        "root.choice.anyOf[0].hidden: only specified inside a junctor",
        "root.choice.anyOf[0]: type inside allOf/anyOf/oneOf/not",
        "root.list[]: no type",
        "root.referenced: no type",
        "root.referenced: $ref is not supported in CRD schemas",
        "root.untyped: no type",
    ];
    let mut found = violations.clone();
    found.sort();
    let mut expected = expected.map(str::to_owned).to_vec();
    expected.sort();
    assert_eq!(found, expected);
}
