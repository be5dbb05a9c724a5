//! Table-driven tests of the compiler: manifests in, config or problems out.

use super::*;
use crate::manifests::Manifests;
use crate::resources::{Detector, GuardrailPhase, MessageRole, ModerationFailureMode};

const MOCK: &str = "
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {name: mock}
spec: {provider: mock}
";

const OPENAI: &str = "
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {name: openai}
spec: {provider: openai, secretRef: {name: openai-key}}
---
apiVersion: v1
kind: Secret
metadata: {name: openai-key}
stringData: {apiKey: sk-test}
";

fn route(name: &str, spec: &str) -> String {
    format!(
        "\n---\napiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn compile_yaml(yaml: &str, previous: Option<&SidecarConfig>) -> Compiled {
    let mut manifests = Manifests::default();
    let errors = manifests.add_yaml("test.yaml", yaml);
    assert_eq!(errors, vec![], "fixture must parse");
    let secrets = SecretKeys::from_secrets(&manifests.secrets);
    compile(Inputs {
        providers: &manifests.providers,
        routes: &manifests.routes,
        keys: &manifests.keys,
        budgets: &manifests.budgets,
        secrets: &secrets,
        previous,
    })
}

fn messages(compiled: &Compiled) -> Vec<String> {
    compiled.problems.iter().map(ToString::to_string).collect()
}

#[test]
fn invalid_resources_are_reported_with_their_field() {
    // (case, manifests, expected problem substrings; empty means valid)
    let cases: &[(&str, String, &[&str])] = &[
        ("mock route", format!("{MOCK}{}", route("smart", "{targets: [{provider: mock, model: m}]}")), &[]),
        ("openai route", format!("{OPENAI}{}", route("smart", "{targets: [{provider: openai, model: gpt-4o}]}")), &[]),
        (
            "missing provider",
            route("smart", "{targets: [{provider: nope, model: m}]}"),
            &["LLMRoute smart: spec.targets[0].provider: ProviderSecret nope does not exist"],
        ),
        (
            "route on a provider whose Secret is missing",
            format!("apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {{name: a}}\nspec: {{provider: anthropic, secretRef: {{name: gone}}}}{}", route("smart", "{targets: [{provider: a, model: m}]}")),
            &[
                "ProviderSecret a: spec.secretRef: Secret gone not found",
                "LLMRoute smart: spec.targets[0].provider: ProviderSecret a is not ready (spec.secretRef: Secret gone not found)",
            ],
        ),
        (
            "missing secret",
            "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {name: a}\nspec: {provider: anthropic, secretRef: {name: gone}}".into(),
            &["ProviderSecret a: spec.secretRef: Secret gone not found"],
        ),
        (
            "missing secret key",
            format!("{OPENAI}\n---\napiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {{name: b}}\nspec: {{provider: openai, secretRef: {{name: openai-key, key: token}}}}"),
            &["ProviderSecret b: spec.secretRef: Secret openai-key has no key token"],
        ),
        (
            "no secretRef",
            "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {name: g}\nspec: {provider: gemini}".into(),
            &["spec.secretRef: required for provider gemini"],
        ),
        (
            "bedrock needs region and both keys",
            "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {name: br}\nspec: {provider: bedrock, secretRef: {name: aws}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: aws}\nstringData: {accessKeyId: AKID}".into(),
            &["spec.secretRef: Secret aws has no key secretAccessKey", "spec.region: required"],
        ),
        (
            "azure needs settings and a base url",
            format!("{OPENAI}\n---\napiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {{name: az}}\nspec: {{provider: azure-openai, secretRef: {{name: openai-key}}}}"),
            &["spec.baseUrl: required for provider azure-openai", "spec.azure: required"],
        ),
        (
            "bad base url and header",
            "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {name: m}\nspec: {provider: mock, baseUrl: 'ftp://x', headers: {'bad header': x}}".into(),
            &["spec.baseUrl: \"ftp://x\" must start with http", "spec.headers.bad header: not a valid HTTP header name"],
        ),
        (
            "mock settings on a real provider",
            format!("{OPENAI}\n---\napiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {{name: o2}}\nspec: {{provider: openai, secretRef: {{name: openai-key}}, mock: {{}}}}"),
            &["spec.mock: only valid for provider mock"],
        ),
        (
            "bad mock duration",
            "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {name: m}\nspec: {provider: mock, mock: {perToken: 5d}}".into(),
            &["spec.mock.perToken: duration \"5d\" has unknown unit"],
        ),
        (
            "mirror and eval sampling shares and candidates are checked",
            format!("{MOCK}{}", route("smart", "{targets: [{provider: mock, model: a}], mirror: {target: {provider: nope, model: d}, percent: 101}, evalSampling: {percent: -1}}")),
            &[
                "spec.evalSampling.percent: must be from 0 to 100",
                "spec.mirror.percent: must be from 0 to 100",
                "spec.mirror.target.provider: ProviderSecret nope does not exist",
            ],
        ),
        (
            "prompt caching is for anthropic",
            "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {name: m}\nspec: {provider: mock, promptCaching: {minPrefixTokens: 1024}}".into(),
            &["spec.promptCaching: prompt caching breakpoints are not supported yet for provider mock"],
        ),
        (
            "semantic cache mistakes name their field",
            format!("{MOCK}{}{}",
                route("a", "{targets: [{provider: mock, model: a}], cache: {mode: semantic}}"),
                route("b", "{targets: [{provider: mock, model: a}], cache: {mode: semantic, similarityThreshold: 0, embeddings: {provider: nope, model: e}}}"),
            ),
            &[
                "LLMRoute a: spec.cache.embeddings: required for mode semantic",
                "LLMRoute b: spec.cache.similarityThreshold: must be greater than 0 and at most 1",
                "LLMRoute b: spec.cache.embeddings.provider: ProviderSecret nope does not exist",
            ],
        ),
        (
            "cache mistakes name their field",
            format!("{MOCK}{}", route("smart", "{targets: [{provider: mock, model: a}], cache: {mode: exact, ttl: 0s, similarityThreshold: 0.9}}")),
            &["spec.cache.similarityThreshold: only valid for mode semantic", "spec.cache.ttl: must be greater than zero"],
        ),
        (
            "shared cache mistakes name their field",
            format!("{MOCK}{}{}{}",
                route("a", "{targets: [{provider: mock, model: a}], cache: {mode: exact, shared: {redisUrl: 'http://redis:6379'}}}"),
                route("b", "{targets: [{provider: mock, model: a}], cache: {mode: exact, shared: {redisUrl: 'redis://u:p@redis:6379', timeout: 0ms}}}"),
                route("c", "{targets: [{provider: mock, model: a}], cache: {mode: exact, shared: {redisUrl: 'rediss://redis:6379'}}}"),
            ),
            &[
                "LLMRoute a: spec.cache.shared.redisUrl: \"http://redis:6379\" must start with redis://",
                "LLMRoute b: spec.cache.shared.redisUrl: credentials in the URL are not supported yet",
                "LLMRoute b: spec.cache.shared.timeout: must be greater than zero",
                "LLMRoute c: spec.cache.shared.redisUrl: TLS to Redis is not supported yet",
            ],
        ),
        ("exact cache", format!("{MOCK}{}", route("smart", "{targets: [{provider: mock, model: m}], cache: {mode: exact, ttl: 1h, scope: route}}")), &[]),
        (
            "routing mistakes name their field",
            format!(
                "{MOCK}{}",
                route(
                    "smart",
                    "{targets: [{provider: mock, model: a, weight: 0, price: {input: -1, output: 1}}], fallbacks: [{route: cheap}, {route: smart}, {route: x, target: {provider: mock, model: b}}], retries: {attempts: 0}, circuitBreaker: {errorRatio: 2}, rules: [{match: {}, targets: [{provider: nope, model: c}]}]}"
                )
            ),
            &[
                "spec.targets: weights must not all be zero",
                "spec.targets[0].price: prices must be finite and not negative",
                "spec.fallbacks[0].route: fallback route cheap does not exist",
                "spec.fallbacks[1].route: a route cannot fall back to itself",
                "spec.fallbacks[2]: name exactly one of route or target",
                "spec.retries.attempts: must be between 1 and 10",
                "spec.circuitBreaker.errorRatio: must be between 0 and 1",
                "spec.rules[0].match: needs at least one condition",
                "spec.rules[0].targets[0].provider: ProviderSecret nope does not exist",
            ],
        ),
        ("cache off is fine", format!("{MOCK}{}", route("smart", "{targets: [{provider: mock, model: m}], cache: {mode: off}}")), &[]),
        (
            "bad timeouts",
            format!("{MOCK}{}", route("smart", "{targets: [{provider: mock, model: m, timeout: 0s, idleTimeout: 5q}], timeouts: {total: 10x}}")),
            &[
                "spec.timeouts.total: duration \"10x\" has unknown unit",
                "spec.targets[0].timeout: must be greater than zero",
                "spec.targets[0].idleTimeout: duration \"5q\" has unknown unit",
            ],
        ),
        (
            "duplicate alias",
            format!(
                "{MOCK}{}{}",
                route("a", "{model: smart, targets: [{provider: mock, model: m}]}"),
                route("b", "{model: smart, targets: [{provider: mock, model: m}]}")
            ),
            &["LLMRoute b: spec.model: alias smart is already served by LLMRoute a"],
        ),
    ];

    for (case, yaml, expected) in cases {
        let compiled = compile_yaml(yaml, None);
        let got = messages(&compiled);
        assert_eq!(got.len(), expected.len(), "{case}: {got:#?}");
        for want in *expected {
            assert!(
                got.iter().any(|g| g.contains(want)),
                "{case}: no problem contains {want:?} in {got:#?}"
            );
        }
    }
}

#[test]
fn valid_resources_compile_beside_invalid_ones() {
    let yaml = format!(
        "{MOCK}{}{}",
        route(
            "good",
            "{targets: [{provider: mock, model: m, timeout: 5s}], timeouts: {total: 1m, firstToken: 500ms, idle: 2s}}"
        ),
        route("bad", "{targets: [{provider: nope, model: m}]}"),
    );
    let compiled = compile_yaml(&yaml, None);
    assert_eq!(compiled.problems.len(), 1);
    let good = &compiled.config.routes["good"];
    assert_eq!(good.resource, "good");
    assert_eq!(good.targets[0].timeout_ms, Some(5_000));
    assert_eq!(good.timeouts.total_ms, Some(60_000));
    assert_eq!(good.timeouts.first_token_ms, Some(500));
    assert_eq!(good.timeouts.idle_ms, Some(2_000));
    assert!(!compiled.config.routes.contains_key("bad"));
}

#[test]
fn alias_defaults_to_the_resource_name_and_credentials_are_references() {
    let compiled = compile_yaml(
        &format!(
            "{OPENAI}{}",
            route("smart", "{targets: [{provider: openai, model: gpt-4o}]}")
        ),
        None,
    );
    let json = serde_json::to_string(&compiled.config).expect("config serializes");
    assert!(
        !json.contains("sk-test"),
        "secret value leaked into config: {json}"
    );
    assert_eq!(
        compiled.config.providers["openai"].credentials,
        Credentials::ApiKey {
            api_key: CredentialRef {
                secret: "openai-key".into(),
                key: "apiKey".into()
            }
        }
    );
    assert!(compiled.config.routes.contains_key("smart"));
}

#[test]
fn the_last_good_version_of_a_broken_resource_stays_in_force() {
    let good = compile_yaml(
        &format!(
            "{OPENAI}{}",
            route("smart", "{targets: [{provider: openai, model: gpt-4o}]}")
        ),
        None,
    );
    assert_eq!(good.problems, vec![]);

    // The route now names a missing model field value and the Secret lost its key.
    let broken_yaml = format!(
        "apiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {{name: openai}}\nspec: {{provider: openai, secretRef: {{name: openai-key}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: openai-key}}\nstringData: {{other: x}}{}",
        route("smart", "{targets: [{provider: openai, model: ''}]}")
    );
    let broken = compile_yaml(&broken_yaml, Some(&good.config));
    assert!(
        broken.problems.iter().all(|p| p.kept_previous),
        "{:#?}",
        broken.problems
    );
    assert_eq!(broken.config, good.config, "the served config is unchanged");

    // Without a previous config the same input serves nothing.
    let fresh = compile_yaml(&broken_yaml, None);
    assert!(fresh.config.routes.is_empty() && fresh.config.providers.is_empty());
}

#[test]
fn version_follows_content_only() {
    let yaml = format!(
        "{MOCK}{}",
        route("smart", "{targets: [{provider: mock, model: m}]}")
    );
    let a = compile_yaml(&yaml, None).config;
    let b = compile_yaml(&yaml, None).config;
    assert_eq!(a.version, b.version);
    assert_eq!(a.version.len(), 16);
    let c = compile_yaml(
        &format!(
            "{MOCK}{}",
            route("smart", "{targets: [{provider: mock, model: n}]}")
        ),
        None,
    )
    .config;
    assert_ne!(a.version, c.version);
    let reparsed = SidecarConfig::from_json(&serde_json::to_vec(&a).expect("serializes")).expect("parses");
    assert_eq!(reparsed, a);
}

/// The operator re-reads the config in force from its ConfigMap and seals
/// it again: a price that did not parse back to the same number would change
/// the version of an unchanged config and rewrite the ConfigMap every time.
#[test]
fn a_re_read_config_keeps_its_version() {
    let yaml = format!(
        "{MOCK}{}",
        route(
            "smart",
            "{targets: [{provider: mock, model: m, price: {input: 0.00042300000000000004, output: 2.0000000000000004e-7}}]}"
        )
    );
    let compiled = compile_yaml(&yaml, None).config;
    let text = serde_json::to_vec(&compiled).expect("serializes");
    let reread = SidecarConfig::from_json(&text).expect("parses");
    assert_eq!(reread, compiled);
    assert_eq!(reread.seal().version, compiled.version);
}

#[test]
fn config_files_are_parsed_strictly() {
    let err = SidecarConfig::from_json(
        br#"{"version":"x","providers":{},"routes":{"r":{"resource":"r","targets":[],"surprise":1}}}"#,
    )
    .expect_err("unknown field rejected");
    assert!(err.contains("routes.r"), "{err}");
    assert!(err.contains("surprise"), "{err}");
}

#[test]
fn the_config_contract_reads_as_documented() {
    let compiled = compile_yaml(
        &format!(
            "{OPENAI}{}",
            route(
                "smart",
                "{targets: [{provider: openai, model: gpt-4o-mini}], timeouts: {firstToken: 10s}}"
            )
        ),
        None,
    );
    let json = serde_json::to_value(&compiled.config).expect("json");
    assert_eq!(
        json["providers"]["openai"],
        serde_json::json!({"kind": "openai", "credentials": {"type": "apiKey", "apiKey": {"secret": "openai-key", "key": "apiKey"}}})
    );
    assert_eq!(
        json["routes"]["smart"],
        serde_json::json!({
            "resource": "smart", "strategy": "weighted",
            "targets": [{"provider": "openai", "model": "gpt-4o-mini", "weight": 1}],
            "retries": {"attempts": 1, "backoffMs": 200, "maxBackoffMs": 5000, "honorRetryAfter": true, "maxRetryAfterMs": 10000},
            "timeouts": {"firstTokenMs": 10000},
            "circuitBreaker": {"enabled": true, "consecutiveFailures": 5, "errorRatio": 0.5, "windowMs": 30000, "minRequests": 20, "cooldownMs": 30000}
        })
    );
}

#[test]
fn a_full_routing_spec_compiles_with_defaults_filled_in() {
    use crate::resources::{ErrorClass, Strategy};
    let yaml = format!(
        "{MOCK}{}{}",
        route(
            "smart",
            "{strategy: cheapest, targets: [{provider: mock, model: a, weight: 3, price: {input: 1, output: 2}, contextWindow: 8000}, {provider: mock, model: b}], rules: [{match: {headers: {x-llmesh-tier: premium}}, targets: [{provider: mock, model: p}]}], fallbacks: [{route: cheap, on: [rate-limit]}, {target: {provider: mock, model: z}}], retries: {attempts: 3, backoff: 100ms}, circuitBreaker: {consecutiveFailures: 2, cooldown: 5s}}"
        ),
        route("cheap", "{targets: [{provider: mock, model: c}]}"),
    );
    let compiled = compile_yaml(&yaml, None);
    assert_eq!(compiled.problems, vec![]);
    let smart = &compiled.config.routes["smart"];
    assert_eq!(smart.strategy, Strategy::Cheapest);
    assert_eq!((smart.targets[0].weight, smart.targets[1].weight), (3, 1));
    assert_eq!(smart.targets[0].context_window, Some(8000));
    assert_eq!(smart.rules[0].targets[0].model, "p");
    assert_eq!(smart.fallbacks[0].on, vec![ErrorClass::RateLimit]);
    assert_eq!(smart.fallbacks[1].on.len(), 5, "the default classes");
    assert_eq!(
        (
            smart.retries.attempts,
            smart.retries.backoff_ms,
            smart.retries.max_retry_after_ms
        ),
        (3, 100, 10_000)
    );
    assert_eq!(
        (
            smart.circuit_breaker.consecutive_failures,
            smart.circuit_breaker.cooldown_ms
        ),
        (2, 5_000)
    );
    assert_eq!(compiled.config.routes["cheap"].strategy, Strategy::Weighted);
}

fn key(name: &str, spec: &str) -> String {
    format!(
        "\n---\napiVersion: llmesh.io/v1alpha1\nkind: VirtualKey\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn budget(name: &str, spec: &str) -> String {
    format!("\n---\napiVersion: llmesh.io/v1alpha1\nkind: Budget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

fn key_secret(name: &str, value: &str) -> String {
    format!("\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{key: {value}}}\n")
}

#[test]
fn keys_and_budgets_report_their_bad_fields() {
    let base = format!(
        "{MOCK}{}{}{}",
        route("smart", "{targets: [{provider: mock, model: m}]}"),
        route("cheap", "{targets: [{provider: mock, model: c}]}"),
        key_secret("team-a", "sk-llmesh-a"),
    );
    let cases: &[(&str, String, &[&str])] = &[
        ("minimal key", key("team-a", "{}"), &[]),
        (
            "full key and budget",
            format!(
                "{}{}",
                budget(
                    "monthly",
                    "{limitUsd: 100, period: monthly, timeZone: Europe/Berlin, thresholds: [80, 50], action: downgrade, downgradeTo: cheap, maxTokensPerRequest: 1000, maxTokensPerSession: 5000}"
                ),
                key(
                    "k",
                    "{secretRef: {name: team-a}, allowedRoutes: [smart], rateLimits: {requestsPerMinute: 60, tokensPerMinute: 10000}, budget: monthly, team: a, feature: chat, expiresAt: '2030-01-01T00:00:00Z', disabled: true}"
                )
            ),
            &[],
        ),
        (
            "key whose Secret is missing",
            key("nobody", "{}"),
            &["VirtualKey nobody: spec.secretRef: Secret nobody not found"],
        ),
        (
            "key naming missing routes and budget",
            key(
                "team-a",
                "{allowedRoutes: [smart, gone], budget: nope, rateLimits: {requestsPerMinute: 0}, expiresAt: tomorrow}",
            ),
            &[
                "spec.allowedRoutes[1]: route gone does not exist",
                "spec.budget: Budget nope does not exist or is not ready",
                "spec.rateLimits: limits must be greater than zero",
                "spec.expiresAt: \"tomorrow\" is not an RFC 3339 instant",
            ],
        ),
        (
            "rotation grace period without a unit",
            key("team-a", "{rotationGracePeriod: '90'}"),
            &["VirtualKey team-a: spec.rotationGracePeriod: duration \"90\" has no unit"],
        ),
        (
            "budget mistakes",
            budget(
                "b",
                "{limitUsd: -1, timeZone: Mars/Olympus, thresholds: [0, 120], action: downgrade, maxTokensPerSession: 0}",
            ),
            &[
                "Budget b: spec.limitUsd: must be a finite, non-negative number",
                "spec.timeZone: unknown time zone \"Mars/Olympus\"",
                "spec.thresholds: each threshold is a percentage from 1 to 100",
                "spec.downgradeTo: required with action downgrade",
                "spec: token ceilings must be greater than zero",
            ],
        ),
        (
            "downgrade target must exist and only downgrade takes one",
            format!(
                "{}{}",
                budget("a", "{limitUsd: 1, action: downgrade, downgradeTo: gone}"),
                budget("b", "{limitUsd: 1, downgradeTo: cheap}")
            ),
            &[
                "Budget a: spec.downgradeTo: route gone does not exist",
                "Budget b: spec.downgradeTo: only valid with action downgrade",
            ],
        ),
        (
            "a key on an invalid budget says so",
            format!(
                "{}{}",
                budget("b", "{limitUsd: -5}"),
                key("team-a", "{budget: b}")
            ),
            &[
                "Budget b: spec.limitUsd",
                "VirtualKey team-a: spec.budget: Budget b does not exist or is not ready",
            ],
        ),
    ];
    for (case, yaml, expected) in cases {
        let compiled = compile_yaml(&format!("{base}{yaml}"), None);
        let got = messages(&compiled);
        assert_eq!(got.len(), expected.len(), "{case}: {got:#?}");
        for want in *expected {
            assert!(
                got.iter().any(|g| g.contains(want)),
                "{case}: no problem contains {want:?} in {got:#?}"
            );
        }
    }
}

#[test]
fn only_the_hash_of_a_key_enters_the_config() {
    let yaml = format!(
        "{MOCK}{}{}{}{}",
        route("smart", "{targets: [{provider: mock, model: m}]}"),
        key_secret("team-a", "sk-llmesh-secret-value"),
        budget("b", "{limitUsd: 2.5, period: daily, thresholds: [90, 50, 90]}"),
        key(
            "team-a",
            "{budget: b, team: a, feature: chat, expiresAt: '2030-01-01T00:00:00Z', rateLimits: {tokensPerMinute: 500}}"
        ),
    );
    let compiled = compile_yaml(&yaml, None);
    assert_eq!(messages(&compiled), Vec::<String>::new());
    let json = serde_json::to_string(&compiled.config).expect("config serializes");
    assert!(
        !json.contains("sk-llmesh-secret-value"),
        "key leaked into config: {json}"
    );
    let key = &compiled.config.keys["team-a"];
    assert_eq!(key.key_hash, crate::config::key_hash(b"sk-llmesh-secret-value\n"));
    assert_eq!(key.expires_at_unix, Some(1_893_456_000));
    assert_eq!(key.tokens_per_minute, Some(500));
    assert_eq!(key.team.as_deref(), Some("a"));
    let budget = &compiled.config.budgets["b"];
    assert_eq!(budget.thresholds, [50, 90], "sorted and deduplicated");
    assert_eq!(budget.time_zone, "UTC");
    assert_eq!(budget.action, crate::resources::BudgetAction::Block);
    assert_eq!(budget.period, crate::resources::BudgetPeriod::Daily);
}

#[test]
fn a_rotated_out_key_stays_in_the_config_until_its_grace_period_ends() {
    let yaml = format!(
        "{MOCK}{}{}",
        route("smart", "{targets: [{provider: mock, model: m}]}"),
        key("team-a", "{}"),
    );
    let mut manifests = Manifests::default();
    assert_eq!(manifests.add_yaml("keys.yaml", &yaml), vec![]);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "team-a", "annotations": {
            "llmesh.io/previous-key-hashes":
                r#"[{"hash":"old-1","validUntilUnix":100},{"hash":"old-2","validUntilUnix":200}]"#
        }},
        "stringData": {"key": "sk-new"}
    }))
    .expect("secret");
    let compile_at = |now: i64| {
        let mut secrets = SecretKeys::from_secrets([&secret]);
        let next = secrets.expire_previous(now);
        let compiled = compile(Inputs {
            providers: &manifests.providers,
            routes: &manifests.routes,
            keys: &manifests.keys,
            budgets: &[],
            secrets: &secrets,
            previous: None,
        });
        let hashes: Vec<String> = compiled.config.keys["team-a"]
            .previous_key_hashes
            .iter()
            .map(|p| p.hash.clone())
            .collect();
        (hashes, next)
    };
    assert_eq!(compile_at(50), (vec!["old-1".into(), "old-2".into()], Some(100)));
    assert_eq!(compile_at(100), (vec!["old-2".into()], Some(200)));
    assert_eq!(compile_at(200), (vec![], None));
}

#[test]
fn an_invalid_key_keeps_its_previous_version() {
    let good = format!(
        "{MOCK}{}{}{}",
        route("smart", "{targets: [{provider: mock, model: m}]}"),
        key_secret("team-a", "sk-a"),
        key("team-a", "{team: a}"),
    );
    let first = compile_yaml(&good, None);
    let broken = good.replace("{team: a}", "{team: a, expiresAt: never}");
    let second = compile_yaml(&broken, Some(&first.config));
    assert_eq!(second.problems.len(), 1);
    assert!(second.problems[0].kept_previous);
    assert_eq!(second.config.keys, first.config.keys);
}

#[test]
fn cache_settings_compile_with_defaults_and_off_means_absent() {
    use crate::config::{CacheConfig, SemanticCacheConfig, SharedCacheConfig};
    use crate::resources::CacheScope;
    let cases: &[(&str, Option<CacheConfig>)] = &[
        ("{mode: off, ttl: 1m}", None),
        (
            "{mode: exact}",
            Some(CacheConfig {
                ttl_ms: 300_000,
                scope: CacheScope::Key,
                allow_overrides: true,
                shared: None,
                semantic: None,
            }),
        ),
        (
            "{mode: exact, ttl: 90s, scope: route, allowOverrides: false, shared: {redisUrl: 'redis://r:6379/2'}}",
            Some(CacheConfig {
                ttl_ms: 90_000,
                scope: CacheScope::Route,
                allow_overrides: false,
                shared: Some(SharedCacheConfig {
                    redis_url: "redis://r:6379/2".into(),
                    timeout_ms: 50,
                }),
                semantic: None,
            }),
        ),
        (
            "{mode: semantic, embeddings: {provider: mock, model: e}}",
            Some(CacheConfig {
                ttl_ms: 300_000,
                scope: CacheScope::Key,
                allow_overrides: true,
                shared: None,
                semantic: Some(SemanticCacheConfig {
                    similarity_threshold: 0.95,
                    embeddings_provider: "mock".into(),
                    embeddings_model: "e".into(),
                }),
            }),
        ),
    ];
    for (settings, expected) in cases {
        let yaml = format!(
            "{MOCK}{}",
            route(
                "smart",
                &format!("{{targets: [{{provider: mock, model: m}}], cache: {settings}}}")
            )
        );
        let compiled = compile_yaml(&yaml, None);
        assert_eq!(compiled.problems, vec![], "{settings}");
        assert_eq!(&compiled.config.routes["smart"].cache, expected, "{settings}");
    }
}

#[test]
fn guardrails_report_their_bad_fields() {
    // (case, guardrails, expected problem substrings; empty means valid)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "pii redaction",
            "[{name: pii, action: redact, detect: [email, creditCard]}]",
            &[],
        ),
        (
            "moderation with a provider key",
            "[{name: mod, phase: request, action: block, moderation: {url: 'http://m/v1/moderations', provider: openai, timeout: 300ms, failureMode: open}}]",
            &[],
        ),
        (
            "nothing to look for",
            "[{name: empty, action: flag}]",
            &["spec.guardrails[0]: needs something to look for"],
        ),
        (
            "duplicate names",
            "[{name: a, action: flag, words: [x]}, {name: a, action: block, words: [y]}]",
            &["spec.guardrails[1].name: \"a\" is used twice"],
        ),
        (
            "bad regex",
            "[{name: p, action: redact, patterns: [{name: ticket, regex: 'TCK-[0-9'}]}]",
            &["spec.guardrails[0].patterns[0].regex"],
        ),
        (
            "empty word",
            "[{name: w, action: block, words: ['  ']}]",
            &["spec.guardrails[0].words: words must not be empty"],
        ),
        (
            "moderation on answers",
            "[{name: m, action: block, moderation: {url: 'http://m/x'}}]",
            &["spec.guardrails[0].moderation: moderation runs on prompts only"],
        ),
        (
            "moderation key from a missing provider",
            "[{name: m, phase: request, action: block, moderation: {url: 'http://m/x', provider: nope}}]",
            &["spec.guardrails[0].moderation.provider: ProviderSecret nope does not exist"],
        ),
        (
            "moderation cannot redact",
            "[{name: m, phase: request, action: redact, moderation: {url: 'http://m/x'}}]",
            &["spec.guardrails[0].moderation: a moderation verdict has nothing to redact"],
        ),
        (
            "moderation timeout zero",
            "[{name: m, phase: request, action: block, moderation: {url: 'http://m/x', timeout: 0s}}]",
            &["spec.guardrails[0].moderation.timeout: must be greater than zero"],
        ),
    ];
    for (case, guardrails, expected) in cases {
        let spec = format!("{{targets: [{{provider: openai, model: m}}], guardrails: {guardrails}}}");
        let compiled = compile_yaml(&format!("{OPENAI}{}", route("guarded", &spec)), None);
        let got = messages(&compiled);
        assert_eq!(got.len(), expected.len(), "{case}: {got:#?}");
        for want in *expected {
            assert!(
                got.iter().any(|g| g.contains(want)),
                "{case}: no problem contains {want:?} in {got:#?}"
            );
        }
    }
}

#[test]
fn guardrails_compile_with_defaults_and_key_references_only() {
    let spec = "{targets: [{provider: openai, model: m}], guardrails: [
        {name: pii, action: redact, detect: [iban, email, email], roles: [user, tool]},
        {name: mod, phase: request, action: block, moderation: {url: 'http://m/v1/moderations', provider: openai}}]}";
    let compiled = compile_yaml(&format!("{OPENAI}{}", route("guarded", spec)), None);
    assert_eq!(messages(&compiled), Vec::<String>::new());
    let guardrails = &compiled.config.routes["guarded"].guardrails;
    assert_eq!(guardrails[0].phase, GuardrailPhase::Both);
    assert_eq!(guardrails[0].detect, vec![Detector::Email, Detector::Iban]);
    assert_eq!(guardrails[0].roles, vec![MessageRole::User, MessageRole::Tool]);
    let moderation = guardrails[1].moderation.as_ref().expect("moderation");
    assert_eq!(moderation.timeout_ms, 2_000);
    assert_eq!(moderation.failure_mode, ModerationFailureMode::Closed);
    assert_eq!(
        moderation.api_key,
        Some(CredentialRef {
            secret: "openai-key".into(),
            key: "apiKey".into()
        })
    );
    let json = serde_json::to_string(&compiled.config).expect("json");
    assert!(
        !json.contains("sk-test"),
        "the key's value never enters the config"
    );
}
