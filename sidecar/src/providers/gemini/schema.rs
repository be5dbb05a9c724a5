//! JSON Schema → the OpenAPI 3.0 subset Gemini accepts in function parameters and `responseSchema`.
//!
//! Gemini rejects a request whose schema has a keyword it does not know, so
//! the translation keeps only known keywords and rewrites the common JSON
//! Schema idioms it can express:
//! - `$ref` into `$defs`/`definitions` is inlined (recursion and size bounded);
//! - `type: [T, "null"]` and `anyOf: [S, {type: null}]` become `nullable: true`;
//! - `oneOf` becomes `anyOf`, single-entry `allOf` is merged into its parent;
//! - `const` becomes a one-value `enum`; a non-string `enum` is dropped (Gemini
//!   takes string enums only) and its values are named in the description;
//! - `exclusiveMinimum`/`exclusiveMaximum` become inclusive bounds, and the
//!   first of `examples` becomes `example`;
//! - `format` is kept only where Gemini knows it (`enum`, `date-time`, `int32`,
//!   `int64`, `float`, `double`).
//!
//! Dropped: `additionalProperties`, `patternProperties`, `uniqueItems`,
//! `multipleOf`, `not`, `if`/`then`/`else`, tuple `items`/`prefixItems`,
//! `$schema`, `$id`, `$comment`, and any other keyword not listed in `KEPT`.
//! They constrain rather than shape the answer, so the model still gets a
//! usable schema; the app should validate what it needs.

use serde_json::{Map, Value};

use super::super::{ErrorKind, ProviderError};

/// Keywords copied as they are.
const KEPT: &[&str] = &[
    "title",
    "description",
    "nullable",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "default",
    "example",
    "propertyOrdering",
];

/// How many `$ref`s may be expanded inside one another. Recursive schemas
/// (trees, linked lists) cannot be inlined whole; this many levels is deeper
/// than any answer a model gives.
const MAX_REF_DEPTH: usize = 8;

/// Schema nodes the translation may produce: a bound on what inlining refs can
/// multiply a small schema into.
const MAX_NODES: usize = 10_000;

/// Translates `schema` into Gemini's dialect.
///
/// # Errors
/// `Unsupported` when inlining its `$ref`s nests deeper than [`MAX_REF_DEPTH`]
/// or grows past [`MAX_NODES`].
pub(super) fn to_gemini(schema: &Value) -> Result<Value, ProviderError> {
    let definitions = ["$defs", "definitions"]
        .iter()
        .filter_map(|key| schema.get(key)?.as_object())
        .collect();
    let mut translator = Translator {
        definitions,
        nodes: 0,
    };
    translator.schema(schema, 0).map(Value::Object)
}

struct Translator<'a> {
    /// The root's `$defs` and `definitions`, where `$ref`s point.
    definitions: Vec<&'a Map<String, Value>>,
    nodes: usize,
}

impl<'a> Translator<'a> {
    fn schema(&mut self, schema: &'a Value, refs: usize) -> Result<Map<String, Value>, ProviderError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(unsupported(format!(
                "a schema that expands to more than {MAX_NODES} nodes"
            )));
        }
        // `true` and other non-object schemas allow anything: no constraint to express.
        let Value::Object(source) = schema else {
            return Ok(Map::new());
        };
        let mut out = Map::new();

        if let Some(reference) = source.get("$ref").and_then(Value::as_str) {
            if refs >= MAX_REF_DEPTH {
                return Err(unsupported(format!(
                    "$ref nested deeper than {MAX_REF_DEPTH} levels"
                )));
            }
            let name = reference.rsplit('/').next().unwrap_or_default();
            let definitions = self.definitions.clone();
            let Some(target) = definitions.iter().find_map(|defs| defs.get(name)) else {
                return Err(ProviderError::new(
                    ErrorKind::BadRequest,
                    format!("schema $ref {reference} names no definition"),
                ));
            };
            merge(&mut out, self.schema(target, refs + 1)?);
        }
        for sub in source
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            merge(&mut out, self.schema(sub, refs)?);
        }
        if let Some(variants) = source
            .get("anyOf")
            .or_else(|| source.get("oneOf"))
            .and_then(Value::as_array)
        {
            self.variants(variants, refs, &mut out)?;
        }

        for (key, value) in source {
            match key.as_str() {
                "type" => set_type(value, &mut out),
                "properties" => {
                    if let Value::Object(properties) = value {
                        let mut translated = Map::new();
                        for (name, property) in properties {
                            translated.insert(name.clone(), Value::Object(self.schema(property, refs)?));
                        }
                        out.insert("properties".into(), Value::Object(translated));
                    }
                }
                "items" if value.is_object() => {
                    out.insert("items".into(), Value::Object(self.schema(value, refs)?));
                }
                "required" => {
                    out.insert("required".into(), value.clone());
                }
                "exclusiveMinimum" if value.is_number() => {
                    out.insert("minimum".into(), value.clone());
                }
                "exclusiveMaximum" if value.is_number() => {
                    out.insert("maximum".into(), value.clone());
                }
                "examples" => {
                    if let Some(first) = value.as_array().and_then(|e| e.first()) {
                        out.insert("example".into(), first.clone());
                    }
                }
                "enum" | "const" | "format" => {}
                key if KEPT.contains(&key) => {
                    out.insert(key.to_owned(), value.clone());
                }
                _ => {}
            }
        }
        let constant = source.get("const").map(std::slice::from_ref);
        if let Some(values) = source
            .get("enum")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .or(constant)
        {
            set_enum(values, &mut out);
        }
        if let Some(format) = source.get("format").and_then(Value::as_str) {
            set_format(format, &mut out);
        }
        keep_known_required(&mut out);
        Ok(out)
    }

    /// `anyOf`/`oneOf`: null variants become `nullable`, one remaining variant
    /// is merged into the parent, several stay an `anyOf`.
    fn variants(
        &mut self,
        variants: &'a [Value],
        refs: usize,
        out: &mut Map<String, Value>,
    ) -> Result<(), ProviderError> {
        let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
        if variants.iter().any(is_null) {
            out.insert("nullable".into(), Value::Bool(true));
        }
        let mut translated = Vec::new();
        for variant in variants.iter().filter(|v| !is_null(v)) {
            translated.push(self.schema(variant, refs)?);
        }
        if translated.len() == 1 {
            if let Some(only) = translated.pop() {
                merge(out, only);
            }
        } else if !translated.is_empty() {
            out.insert(
                "anyOf".into(),
                Value::Array(translated.into_iter().map(Value::Object).collect()),
            );
        }
        Ok(())
    }
}

fn unsupported(what: String) -> ProviderError {
    ProviderError::unsupported(format!("Gemini cannot take {what} in a tool or response schema"))
}

/// Adds `from`'s keys to `into`; keys `into` already has win, except that
/// `properties` and `required` are unioned (the `allOf` idiom).
fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (key.as_str(), into.get_mut(&key), value) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (name, property) in theirs {
                    mine.entry(name).or_insert(property);
                }
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for name in theirs {
                    if !mine.contains(&name) {
                        mine.push(name);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// `type`: a name, or a list whose `null` becomes `nullable`.
fn set_type(value: &Value, out: &mut Map<String, Value>) {
    match value {
        Value::String(name) => {
            out.insert("type".into(), Value::String(name.clone()));
        }
        Value::Array(names) => {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            if names.contains(&"null") {
                out.insert("nullable".into(), Value::Bool(true));
            }
            let concrete: Vec<&str> = names.into_iter().filter(|n| *n != "null").collect();
            match concrete.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".into(), Value::String((*one).to_owned()));
                }
                several => {
                    let variants = several.iter().map(|n| serde_json::json!({ "type": n })).collect();
                    out.insert("anyOf".into(), Value::Array(variants));
                }
            }
        }
        _ => {}
    }
}

/// Gemini takes string enums only; other values are described instead.
fn set_enum(values: &[Value], out: &mut Map<String, Value>) {
    if values.iter().all(Value::is_string) {
        out.insert("enum".into(), Value::Array(values.to_vec()));
        out.entry("type")
            .or_insert_with(|| Value::String("string".into()));
        return;
    }
    let listed = values.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
    let description = match out.get("description").and_then(Value::as_str) {
        Some(text) => format!("{text} (one of: {listed})"),
        None => format!("One of: {listed}"),
    };
    out.insert("description".into(), Value::String(description));
}

fn set_format(format: &str, out: &mut Map<String, Value>) {
    let allowed = match out.get("type").and_then(Value::as_str) {
        Some("string") => ["enum", "date-time"].contains(&format),
        Some("integer") => ["int32", "int64"].contains(&format),
        Some("number") => ["float", "double"].contains(&format),
        _ => false,
    };
    if allowed {
        out.insert("format".into(), Value::String(format.to_owned()));
    }
}

/// Gemini rejects `required` names that are not among the `properties`.
fn keep_known_required(out: &mut Map<String, Value>) {
    let known: Vec<String> = match out.get("properties") {
        Some(Value::Object(properties)) => properties.keys().cloned().collect(),
        _ => Vec::new(),
    };
    if let Some(Value::Array(required)) = out.get_mut("required") {
        required.retain(|name| name.as_str().is_some_and(|n| known.iter().any(|k| k == n)));
        if required.is_empty() {
            out.remove("required");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn common_json_schema_idioms_become_gemini_schema() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "city": {"type": "string", "description": "City name", "format": "hostname", "examples": ["Paris"]},
                "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                "days": {"type": "integer", "exclusiveMinimum": 0, "format": "int32", "multipleOf": 1},
                "mode": {"const": "fast"},
                "level": {"type": "integer", "enum": [1, 2, 3], "description": "Detail"},
                "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
                "home": {"$ref": "#/$defs/Place"},
                "work": {"anyOf": [{"$ref": "#/$defs/Place"}, {"type": "null"}]},
                "either": {"oneOf": [{"type": "string"}, {"type": "number"}]}
            },
            "required": ["city", "ghost"],
            "$defs": {"Place": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]}}
        });
        let translated = to_gemini(&schema).expect("translates");
        let place = json!({"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]});
        assert_eq!(
            translated,
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name", "example": "Paris"},
                    "unit": {"type": "string", "nullable": true, "enum": ["c", "f"]},
                    "days": {"type": "integer", "minimum": 0, "format": "int32"},
                    "mode": {"type": "string", "enum": ["fast"]},
                    "level": {"type": "integer", "description": "Detail (one of: 1, 2, 3)"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "home": place,
                    "work": {"type": "object", "nullable": true, "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
                    "either": {"anyOf": [{"type": "string"}, {"type": "number"}]}
                },
                "required": ["city"]
            })
        );
    }

    #[test]
    fn all_of_merges_properties_and_required() {
        let schema = json!({"allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "number"}}, "required": ["b"]}
        ]});
        assert_eq!(
            to_gemini(&schema).expect("translates"),
            json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}, "required": ["a", "b"]})
        );
    }

    #[test]
    fn recursive_and_exploding_refs_are_refused_not_followed_forever() {
        let recursive = json!({"$ref": "#/$defs/Node", "$defs": {"Node": {
            "type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}
        }}});
        assert_eq!(
            to_gemini(&recursive).expect_err("too deep").kind,
            ErrorKind::Unsupported
        );

        // Each level references the next one ten times: 10^6 nodes if inlined.
        let mut defs = Map::new();
        for level in 0..6 {
            let properties: Map<String, Value> = (0..10)
                .map(|i| {
                    (
                        format!("p{i}"),
                        json!({"$ref": format!("#/$defs/L{}", level + 1)}),
                    )
                })
                .collect();
            defs.insert(
                format!("L{level}"),
                json!({"type": "object", "properties": properties}),
            );
        }
        defs.insert("L6".into(), json!({"type": "string"}));
        let exploding = json!({"$ref": "#/$defs/L0", "$defs": defs});
        assert_eq!(
            to_gemini(&exploding).expect_err("too big").kind,
            ErrorKind::Unsupported
        );

        let dangling = json!({"$ref": "#/$defs/Missing"});
        assert_eq!(
            to_gemini(&dangling).expect_err("dangling").kind,
            ErrorKind::BadRequest
        );
    }
}
