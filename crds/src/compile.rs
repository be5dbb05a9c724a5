//! The compiler: resources in, one sidecar configuration out.
//!
//! Pure and total: every invalid resource becomes a [`Problem`] naming the
//! field, and is left out (or, when an earlier good version of it is known,
//! that version stays in force). Valid resources always compile.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::config::PreviousKey;
use crate::config::{
    AzureConfig, BreakerConfig, BudgetConfig, CacheConfig, CredentialRef, Credentials, EvalSamplingConfig,
    FallbackConfig, KeyConfig, MirrorConfig, MockConfig, ProviderConfig, RetriesConfig, RouteConfig,
    RuleConfig, SemanticCacheConfig, SharedCacheConfig, SidecarConfig, TargetConfig, TimeoutsConfig,
    key_hash,
};
use crate::resources::{
    Budget, BudgetAction, CacheMode, CacheSettings, ErrorClass, Fallback, LLMRoute, ProviderKind,
    ProviderSecret, RouteTarget, RuleMatch, VirtualKey,
};
use crate::{duration, generated_key};

/// Everything the compiler reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The namespace's `ProviderSecret`s.
    pub providers: &'a [ProviderSecret],
    /// The namespace's `LLMRoute`s.
    pub routes: &'a [LLMRoute],
    /// The namespace's `VirtualKey`s.
    pub keys: &'a [VirtualKey],
    /// The namespace's `Budget`s.
    pub budgets: &'a [Budget],
    /// Which keys each referenced Secret has (values are never read here).
    pub secrets: &'a SecretKeys,
    /// The configuration in force, whose entries stand in for resources that
    /// are now invalid.
    pub previous: Option<&'a SidecarConfig>,
}

/// Secret name → the keys it holds, each with the [`key_hash`] of its value
/// when the value was at hand (virtual keys need it; provider credentials
/// only need to exist), and the replaced keys still in their grace period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretKeys {
    keys: BTreeMap<String, BTreeMap<String, Option<String>>>,
    previous: BTreeMap<String, Vec<PreviousKey>>,
}

impl SecretKeys {
    /// Indexes the keys of Secrets (both `data` and `stringData`), with the
    /// hashes of their values.
    pub fn from_secrets<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut index = Self::default();
        for secret in secrets {
            let name = secret.name_any();
            let binary = secret.data.iter().flatten().map(|(k, v)| (k, v.0.as_slice()));
            let text = secret
                .string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k, v.as_bytes()));
            for (key, value) in binary.chain(text) {
                index.insert_hashed(&name, key, key_hash(value));
            }
            let previous = generated_key::previous_keys(
                secret
                    .annotations()
                    .get(generated_key::PREVIOUS_KEYS_ANNOTATION)
                    .map(String::as_str),
            );
            if !previous.is_empty() {
                index.previous.insert(name, previous);
            }
        }
        index
    }

    /// Drops replaced keys whose grace period has ended by `now_unix`, so they
    /// leave the configuration; returns the earliest end still to come.
    pub fn expire_previous(&mut self, now_unix: i64) -> Option<i64> {
        for previous in self.previous.values_mut() {
            previous.retain(|p| p.valid_until_unix > now_unix);
        }
        self.previous.retain(|_, previous| !previous.is_empty());
        self.previous.values().flatten().map(|p| p.valid_until_unix).min()
    }

    /// Records that Secret `name` holds `key`, value unknown.
    pub fn insert(&mut self, name: &str, key: &str) {
        let keys = self.keys.entry(name.to_owned()).or_default();
        keys.entry(key.to_owned()).or_insert(None);
    }

    /// Records that Secret `name` holds `key` whose value hashes to `hash`.
    pub fn insert_hashed(&mut self, name: &str, key: &str, hash: String) {
        let keys = self.keys.entry(name.to_owned()).or_default();
        keys.insert(key.to_owned(), Some(hash));
    }

    /// The hash of a value, or why it is not known.
    fn hash_of(&self, reference: &CredentialRef) -> Result<&str, String> {
        self.check(reference)?;
        self.keys
            .get(&reference.secret)
            .and_then(|keys| keys.get(&reference.key))
            .and_then(Option::as_deref)
            .ok_or_else(|| {
                format!(
                    "Secret {} key {} has no readable value",
                    reference.secret, reference.key
                )
            })
    }

    fn check(&self, reference: &CredentialRef) -> Result<(), String> {
        match self.keys.get(&reference.secret) {
            None => Err(format!("Secret {} not found", reference.secret)),
            Some(keys) if !keys.contains_key(&reference.key) => Err(format!(
                "Secret {} has no key {}",
                reference.secret, reference.key
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The compiler's output.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The configuration to serve, sealed with its version.
    pub config: SidecarConfig,
    /// Why some resources are not (or not newly) in force.
    pub problems: Vec<Problem>,
}

impl Compiled {
    /// The problems of one resource, for its status condition.
    pub fn problems_of<'a>(&'a self, kind: &'a str, name: &'a str) -> impl Iterator<Item = &'a Problem> {
        self.problems
            .iter()
            .filter(move |p| p.kind == kind && p.name == name)
    }
}

/// Why one resource is not in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `ProviderSecret`, `LLMRoute`, `VirtualKey` or `Budget`.
    pub kind: &'static str,
    /// The resource's name.
    pub name: String,
    /// The path of the offending field, e.g. `spec.targets[0].provider`.
    pub field: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
    /// Whether the previous good version of the resource is still served.
    pub kept_previous: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}: {}", self.kind, self.name, self.field, self.message)?;
        if self.kept_previous {
            f.write_str(" (the previous version stays in force)")?;
        }
        Ok(())
    }
}

/// A problem before it is attached to a resource.
type FieldError = (String, String);

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    (field.into(), message.into())
}

/// Compiles a namespace's resources into one sidecar configuration.
pub fn compile(inputs: Inputs<'_>) -> Compiled {
    let mut config = SidecarConfig::default();
    let mut problems = Vec::new();
    // Why each invalid provider is invalid, so routes naming it can say so.
    let mut unready = BTreeMap::new();

    for provider in sorted_by_name(inputs.providers) {
        let name = provider.name_any();
        match compile_provider(provider, inputs.secrets) {
            Ok(compiled) => {
                config.providers.insert(name, compiled);
            }
            Err(errors) => {
                let previous = inputs.previous.and_then(|p| p.providers.get(&name));
                if let Some(previous) = previous {
                    config.providers.insert(name.clone(), previous.clone());
                }
                if let Some((field, message)) = errors.first() {
                    unready.insert(name.clone(), format!("{field}: {message}"));
                }
                problems.extend(attach("ProviderSecret", &name, errors, previous.is_some()));
            }
        }
    }

    let aliases: BTreeSet<String> = inputs.routes.iter().map(alias_of).collect();
    for route in sorted_by_name(inputs.routes) {
        let name = route.name_any();
        let alias = alias_of(route);
        let result = match config.routes.get(&alias) {
            Some(taken) => Err(vec![field_error(
                "spec.model",
                format!("alias {alias} is already served by LLMRoute {}", taken.resource),
            )]),
            None => {
                let scope = RouteScope {
                    providers: &config.providers,
                    unready: &unready,
                    aliases: &aliases,
                };
                compile_route(route, &name, &alias, &scope)
            }
        };
        match result {
            Ok(compiled) => {
                config.routes.insert(alias, compiled);
            }
            Err(errors) => {
                let previous = inputs
                    .previous
                    .and_then(|p| p.routes.get(&alias))
                    .filter(|r| r.resource == name && !config.routes.contains_key(&alias))
                    .filter(|r| {
                        r.targets
                            .iter()
                            .all(|t| config.providers.contains_key(&t.provider))
                    });
                if let Some(previous) = previous {
                    config.routes.insert(alias, previous.clone());
                }
                problems.extend(attach("LLMRoute", &name, errors, previous.is_some()));
            }
        }
    }

    for budget in sorted_by_name(inputs.budgets) {
        let name = budget.name_any();
        let result = compile_budget(budget, &aliases);
        let previous = inputs.previous.map(|p| &p.budgets);
        if let Some((errors, kept)) = settle(&mut config.budgets, name.clone(), result, previous) {
            problems.extend(attach("Budget", &name, errors, kept));
        }
    }
    for key in sorted_by_name(inputs.keys) {
        let name = key.name_any();
        let scope = KeyScope {
            secrets: inputs.secrets,
            budgets: &config.budgets,
            aliases: &aliases,
        };
        let result = compile_key(key, &scope);
        let previous = inputs.previous.map(|p| &p.keys);
        if let Some((errors, kept)) = settle(&mut config.keys, name.clone(), result, previous) {
            problems.extend(attach("VirtualKey", &name, errors, kept));
        }
    }

    Compiled {
        config: config.seal(),
        problems,
    }
}

/// Puts a compiled entry in force, or on failure its previous version if
/// there is one; returns the errors and whether the previous one was kept.
fn settle<T: Clone>(
    entries: &mut BTreeMap<String, T>,
    name: String,
    result: Result<T, Vec<FieldError>>,
    previous: Option<&BTreeMap<String, T>>,
) -> Option<(Vec<FieldError>, bool)> {
    match result {
        Ok(compiled) => {
            entries.insert(name, compiled);
            None
        }
        Err(errors) => {
            let previous = previous.and_then(|p| p.get(&name)).cloned();
            let kept = previous.is_some();
            if let Some(previous) = previous {
                entries.insert(name, previous);
            }
            Some((errors, kept))
        }
    }
}

/// The `model` apps send for a route: `spec.model`, or the resource's name.
pub fn alias_of(route: &LLMRoute) -> String {
    route.spec.model.clone().unwrap_or_else(|| route.name_any())
}

fn sorted_by_name<K: kube::Resource>(resources: &[K]) -> Vec<&K> {
    let mut sorted: Vec<&K> = resources.iter().collect();
    sorted.sort_by_key(|r| r.meta().name.clone());
    sorted
}

fn attach(kind: &'static str, name: &str, errors: Vec<FieldError>, kept_previous: bool) -> Vec<Problem> {
    errors
        .into_iter()
        .map(|(field, message)| Problem {
            kind,
            name: name.to_owned(),
            field,
            message,
            kept_previous,
        })
        .collect()
}

fn compile_provider(
    resource: &ProviderSecret,
    secrets: &SecretKeys,
) -> Result<ProviderConfig, Vec<FieldError>> {
    let spec = &resource.spec;
    let kind = spec.provider;
    let mut errors = Errors::default();

    if let Some(url) = &spec.base_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(
                "spec.baseUrl",
                format!("{url:?} must start with http:// or https://"),
            );
        }
    } else if matches!(kind, ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenai) {
        errors.push("spec.baseUrl", format!("required for provider {}", kind.as_str()));
    }

    for (header, value) in &spec.headers {
        if header.is_empty() || !header.bytes().all(is_header_name_byte) {
            errors.push(format!("spec.headers.{header}"), "not a valid HTTP header name");
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            errors.push(
                format!("spec.headers.{header}"),
                "value contains control characters",
            );
        }
    }

    let credentials = match (&spec.secret_ref, kind) {
        (None, ProviderKind::Mock | ProviderKind::OpenaiCompatible) => Credentials::None,
        (None, _) => {
            errors.push(
                "spec.secretRef",
                format!("required for provider {}", kind.as_str()),
            );
            Credentials::None
        }
        (Some(_), ProviderKind::Mock) => {
            errors.push("spec.secretRef", "the mock provider takes no credential");
            Credentials::None
        }
        (Some(secret_ref), ProviderKind::Bedrock) => {
            let reference = |key: &Option<String>, default: &str| CredentialRef {
                secret: secret_ref.name.clone(),
                key: key.clone().unwrap_or_else(|| default.to_owned()),
            };
            let access_key_id = reference(&secret_ref.access_key_id_key, "accessKeyId");
            let secret_access_key = reference(&secret_ref.secret_access_key_key, "secretAccessKey");
            let session_token = secret_ref
                .session_token_key
                .as_ref()
                .map(|key| reference(&Some(key.clone()), key));
            for reference in [
                Some(&access_key_id),
                Some(&secret_access_key),
                session_token.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if let Err(message) = secrets.check(reference) {
                    errors.push("spec.secretRef", message);
                }
            }
            Credentials::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            }
        }
        (Some(secret_ref), _) => {
            let api_key = CredentialRef {
                secret: secret_ref.name.clone(),
                key: secret_ref.key.clone().unwrap_or_else(|| "apiKey".to_owned()),
            };
            if let Err(message) = secrets.check(&api_key) {
                errors.push("spec.secretRef", message);
            }
            Credentials::ApiKey { api_key }
        }
    };

    if kind == ProviderKind::Bedrock && spec.region.is_none() {
        errors.push("spec.region", "required for provider bedrock (the AWS region)");
    }

    let azure = match (&spec.azure, kind) {
        (Some(azure), ProviderKind::AzureOpenai) => Some(AzureConfig {
            api_version: azure.api_version.clone(),
            deployments: azure.deployments.clone(),
        }),
        (None, ProviderKind::AzureOpenai) => {
            errors.push("spec.azure", "required for provider azure-openai (apiVersion)");
            None
        }
        (Some(_), _) => {
            errors.push("spec.azure", "only valid for provider azure-openai");
            None
        }
        (None, _) => None,
    };

    let mock = match (&spec.mock, kind) {
        (settings, ProviderKind::Mock) => {
            let settings = settings.clone().unwrap_or_default();
            let time_to_first_token_ms = errors
                .millis(
                    "spec.mock.timeToFirstToken",
                    settings.time_to_first_token.as_deref(),
                )
                .unwrap_or(0);
            let per_token_ms = errors
                .millis("spec.mock.perToken", settings.per_token.as_deref())
                .unwrap_or(0);
            for (i, fault) in settings.faults.iter().enumerate() {
                if fault.rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
                    errors.push(format!("spec.mock.faults[{i}].rate"), "must be between 0 and 1");
                }
                if fault.status.is_some_and(|s| !(400..=599).contains(&s)) {
                    errors.push(
                        format!("spec.mock.faults[{i}].status"),
                        "must be between 400 and 599",
                    );
                }
            }
            Some(MockConfig {
                time_to_first_token_ms,
                per_token_ms,
                reply: settings.reply,
                faults: settings.faults,
            })
        }
        (Some(_), _) => {
            errors.push("spec.mock", "only valid for provider mock");
            None
        }
        (None, _) => None,
    };

    match (&spec.prompt_caching, kind) {
        (Some(caching), ProviderKind::Anthropic) if caching.min_prefix_tokens == 0 => {
            errors.push("spec.promptCaching.minPrefixTokens", "must be greater than zero");
        }
        (Some(_), ProviderKind::Anthropic) | (None, _) => {}
        (Some(_), _) => errors.push(
            "spec.promptCaching",
            format!(
                "prompt caching breakpoints are not supported yet for provider {}",
                kind.as_str()
            ),
        ),
    }

    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    Ok(ProviderConfig {
        kind,
        base_url: spec.base_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()),
        credentials,
        headers: spec.headers.clone(),
        region: spec.region.clone(),
        azure,
        mock,
        prompt_caching: spec.prompt_caching.clone(),
    })
}

/// RFC 9110 token characters.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Collects a resource's field errors while its parts are compiled.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(field_error(field, message));
    }

    /// A duration in milliseconds (zero allowed), or an error on `field`.
    fn millis(&mut self, field: &str, value: Option<&str>) -> Option<u64> {
        match value.map(duration::parse)? {
            Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(message) => {
                self.push(field, message);
                None
            }
        }
    }

    /// A positive duration in milliseconds, or an error on `field`.
    fn positive_millis(&mut self, field: &str, value: Option<&str>) -> Option<u64> {
        match self.millis(field, value) {
            Some(0) => {
                self.push(field, "must be greater than zero");
                None
            }
            other => other,
        }
    }
}

/// What a route may refer to.
struct RouteScope<'a> {
    providers: &'a BTreeMap<String, ProviderConfig>,
    unready: &'a BTreeMap<String, String>,
    aliases: &'a BTreeSet<String>,
}

/// Failures that move on to the next step when a fallback names none.
const DEFAULT_FALLBACK_ON: [ErrorClass; 5] = [
    ErrorClass::RateLimit,
    ErrorClass::ServerError,
    ErrorClass::Timeout,
    ErrorClass::ConnectError,
    ErrorClass::ContextWindowExceeded,
];

fn compile_route(
    route: &LLMRoute,
    name: &str,
    alias: &str,
    scope: &RouteScope<'_>,
) -> Result<RouteConfig, Vec<FieldError>> {
    let spec = &route.spec;
    let mut errors = Errors::default();

    if spec.targets.is_empty() {
        errors.push("spec.targets", "at least one target is required");
    }
    if spec.targets.iter().all(|t| t.weight == Some(0)) && !spec.targets.is_empty() {
        errors.push("spec.targets", "weights must not all be zero");
    }
    let percent_field = |field: &str, percent: f64, errors: &mut Errors| {
        if !(0.0..=100.0).contains(&percent) {
            errors.push(field, "must be from 0 to 100");
        }
    };
    let eval_sampling = spec.eval_sampling.as_ref().map(|sampling| {
        percent_field("spec.evalSampling.percent", sampling.percent, &mut errors);
        EvalSamplingConfig {
            percent: sampling.percent,
            max_per_minute: sampling.max_per_minute,
        }
    });
    let mirror = spec.mirror.as_ref().map(|mirror| {
        percent_field("spec.mirror.percent", mirror.percent, &mut errors);
        MirrorConfig {
            target: compile_target(&mirror.target, "spec.mirror.target", scope, &mut errors),
            percent: mirror.percent,
            count_budget: mirror.count_budget.unwrap_or(false),
        }
    });

    let targets = compile_targets(&spec.targets, "spec.targets", scope, &mut errors);
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let field = format!("spec.rules[{i}]");
            if rule.matches == RuleMatch::default() {
                errors.push(format!("{field}.match"), "needs at least one condition");
            }
            RuleConfig {
                matches: rule.matches.clone(),
                targets: compile_targets(&rule.targets, &format!("{field}.targets"), scope, &mut errors),
            }
        })
        .collect();
    let fallbacks = spec
        .fallbacks
        .iter()
        .enumerate()
        .map(|(i, step)| compile_fallback(step, &format!("spec.fallbacks[{i}]"), alias, scope, &mut errors))
        .collect();

    let retries = spec.retries.as_ref().map_or_else(RetriesConfig::default, |r| {
        let defaults = RetriesConfig::default();
        RetriesConfig {
            attempts: r.attempts.max(1),
            backoff_ms: errors
                .millis("spec.retries.backoff", r.backoff.as_deref())
                .unwrap_or(defaults.backoff_ms),
            max_backoff_ms: errors
                .millis("spec.retries.maxBackoff", r.max_backoff.as_deref())
                .unwrap_or(defaults.max_backoff_ms),
            honor_retry_after: r.honor_retry_after.unwrap_or(defaults.honor_retry_after),
            max_retry_after_ms: errors
                .millis("spec.retries.maxRetryAfter", r.max_retry_after.as_deref())
                .unwrap_or(defaults.max_retry_after_ms),
        }
    });
    if spec
        .retries
        .as_ref()
        .is_some_and(|r| r.attempts == 0 || r.attempts > 10)
    {
        errors.push("spec.retries.attempts", "must be between 1 and 10");
    }

    let cache = spec
        .cache
        .as_ref()
        .and_then(|settings| compile_cache(settings, scope, &mut errors));

    let timeouts = spec.timeouts.clone().unwrap_or_default();
    let timeouts = TimeoutsConfig {
        total_ms: errors.positive_millis("spec.timeouts.total", timeouts.total.as_deref()),
        first_token_ms: errors.positive_millis("spec.timeouts.firstToken", timeouts.first_token.as_deref()),
        idle_ms: errors.positive_millis("spec.timeouts.idle", timeouts.idle.as_deref()),
    };

    let breaker = spec.circuit_breaker.clone().unwrap_or_default();
    let defaults = BreakerConfig::default();
    if breaker.error_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        errors.push("spec.circuitBreaker.errorRatio", "must be between 0 and 1");
    }
    if breaker.consecutive_failures == Some(0) || breaker.min_requests == Some(0) {
        errors.push(
            "spec.circuitBreaker",
            "consecutiveFailures and minRequests must be at least 1",
        );
    }
    let circuit_breaker = BreakerConfig {
        enabled: breaker.enabled.unwrap_or(defaults.enabled),
        consecutive_failures: breaker
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        error_ratio: breaker.error_ratio.unwrap_or(defaults.error_ratio),
        window_ms: errors
            .millis("spec.circuitBreaker.window", breaker.window.as_deref())
            .unwrap_or(defaults.window_ms),
        min_requests: breaker.min_requests.unwrap_or(defaults.min_requests),
        cooldown_ms: errors
            .millis("spec.circuitBreaker.cooldown", breaker.cooldown.as_deref())
            .unwrap_or(defaults.cooldown_ms),
    };

    let guardrails = guardrails::compile(&spec.guardrails, scope, &mut errors);

    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    Ok(RouteConfig {
        resource: name.to_owned(),
        strategy: spec.strategy.unwrap_or_default(),
        targets,
        rules,
        fallbacks,
        retries,
        timeouts,
        circuit_breaker,
        log_content: spec.log_content.unwrap_or(false),
        cache,
        guardrails,
        eval_sampling,
        mirror,
    })
}

/// How long a cached answer is served when the route names no `ttl`: short
/// enough that a changed prompt template or model upgrade shows within minutes.
const DEFAULT_CACHE_TTL_MS: u64 = 5 * 60 * 1000;

/// The similarity a semantic hit needs when the route names none: high,
/// because a wrong hit serves one question's answer to another.
const DEFAULT_SIMILARITY_THRESHOLD: f64 = 0.95;

/// The route's cache settings, or `None` when caching is off.
fn compile_cache(
    settings: &CacheSettings,
    scope: &RouteScope<'_>,
    errors: &mut Errors,
) -> Option<CacheConfig> {
    let semantic = match settings.mode {
        CacheMode::Off => return None,
        CacheMode::Exact => {
            if settings.similarity_threshold.is_some() {
                errors.push("spec.cache.similarityThreshold", "only valid for mode semantic");
            }
            if settings.embeddings.is_some() {
                errors.push("spec.cache.embeddings", "only valid for mode semantic");
            }
            None
        }
        CacheMode::Semantic => compile_semantic(settings, scope, errors),
    };
    let ttl_ms = errors
        .positive_millis("spec.cache.ttl", settings.ttl.as_deref())
        .unwrap_or(DEFAULT_CACHE_TTL_MS);
    let shared = settings.shared.as_ref().map(|shared| {
        let url = &shared.redis_url;
        let field = "spec.cache.shared.redisUrl";
        if url.starts_with("rediss://") {
            errors.push(field, "TLS to Redis is not supported yet; use redis://");
        } else if !url.starts_with("redis://") {
            errors.push(field, format!("{url:?} must start with redis://"));
        } else if url.contains('@') {
            errors.push(
                field,
                "credentials in the URL are not supported yet (they would be written into the ConfigMap)",
            );
        }
        SharedCacheConfig {
            redis_url: url.clone(),
            timeout_ms: errors
                .positive_millis("spec.cache.shared.timeout", shared.timeout.as_deref())
                .unwrap_or(DEFAULT_SHARED_CACHE_TIMEOUT_MS),
        }
    });
    Some(CacheConfig {
        ttl_ms,
        scope: settings.scope.unwrap_or_default(),
        allow_overrides: settings.allow_overrides.unwrap_or(true),
        shared,
        semantic,
    })
}

fn compile_semantic(
    settings: &CacheSettings,
    scope: &RouteScope<'_>,
    errors: &mut Errors,
) -> Option<SemanticCacheConfig> {
    let threshold = settings
        .similarity_threshold
        .unwrap_or(DEFAULT_SIMILARITY_THRESHOLD);
    if !(threshold.is_finite() && threshold > 0.0 && threshold <= 1.0) {
        errors.push(
            "spec.cache.similarityThreshold",
            "must be greater than 0 and at most 1",
        );
    }
    let Some(embeddings) = &settings.embeddings else {
        errors.push(
            "spec.cache.embeddings",
            "required for mode semantic (the provider and model that embed questions)",
        );
        return None;
    };
    if !scope.providers.contains_key(&embeddings.provider) {
        let why = match scope.unready.get(&embeddings.provider) {
            Some(reason) => format!("is not ready ({reason})"),
            None => "does not exist".to_owned(),
        };
        errors.push(
            "spec.cache.embeddings.provider",
            format!("ProviderSecret {} {why}", embeddings.provider),
        );
    }
    Some(SemanticCacheConfig {
        similarity_threshold: threshold,
        embeddings_provider: embeddings.provider.clone(),
        embeddings_model: embeddings.model.clone(),
    })
}

/// How long one Redis operation may take by default: a Redis in the same
/// cluster answers in about a millisecond, and a dead or overloaded one
/// should cost a request no more than this before the sidecar goes on alone.
const DEFAULT_SHARED_CACHE_TIMEOUT_MS: u64 = 50;

fn compile_targets(
    targets: &[RouteTarget],
    field: &str,
    scope: &RouteScope<'_>,
    errors: &mut Errors,
) -> Vec<TargetConfig> {
    if targets.is_empty() {
        errors.push(field, "at least one target is required");
    }
    targets
        .iter()
        .enumerate()
        .map(|(i, target)| compile_target(target, &format!("{field}[{i}]"), scope, errors))
        .collect()
}

fn compile_target(
    target: &RouteTarget,
    field: &str,
    scope: &RouteScope<'_>,
    errors: &mut Errors,
) -> TargetConfig {
    if target.model.is_empty() {
        errors.push(format!("{field}.model"), "must not be empty");
    }
    if !scope.providers.contains_key(&target.provider) {
        let why = match scope.unready.get(&target.provider) {
            Some(reason) => format!("is not ready ({reason})"),
            None => "does not exist".to_owned(),
        };
        errors.push(
            format!("{field}.provider"),
            format!("ProviderSecret {} {why}", target.provider),
        );
    }
    if let Some(price) = &target.price {
        let prices = [
            Some(price.input),
            Some(price.output),
            price.cached_input,
            price.cache_write,
        ];
        if prices.into_iter().flatten().any(|p| !p.is_finite() || p < 0.0) {
            errors.push(format!("{field}.price"), "prices must be finite and not negative");
        }
    }
    if target.context_window == Some(0) {
        errors.push(format!("{field}.contextWindow"), "must be greater than zero");
    }
    TargetConfig {
        provider: target.provider.clone(),
        model: target.model.clone(),
        weight: target.weight.unwrap_or(1),
        price: target.price.clone(),
        context_window: target.context_window,
        timeout_ms: errors.positive_millis(&format!("{field}.timeout"), target.timeout.as_deref()),
        idle_timeout_ms: errors
            .positive_millis(&format!("{field}.idleTimeout"), target.idle_timeout.as_deref()),
    }
}

fn compile_fallback(
    step: &Fallback,
    field: &str,
    alias: &str,
    scope: &RouteScope<'_>,
    errors: &mut Errors,
) -> FallbackConfig {
    let target = match (&step.route, &step.target) {
        (Some(route), None) => {
            if route == alias {
                errors.push(format!("{field}.route"), "a route cannot fall back to itself");
            } else if !scope.aliases.contains(route) {
                errors.push(
                    format!("{field}.route"),
                    format!("fallback route {route} does not exist"),
                );
            }
            None
        }
        (None, Some(target)) => Some(compile_target(target, &format!("{field}.target"), scope, errors)),
        _ => {
            errors.push(field, "name exactly one of route or target");
            None
        }
    };
    let on = if step.on.is_empty() {
        DEFAULT_FALLBACK_ON.to_vec()
    } else {
        step.on.clone()
    };
    FallbackConfig {
        route: step.route.clone(),
        target,
        on,
    }
}

/// Thresholds above this many percent of the limit would never be reached
/// usefully (and a typo like 800 for 80 should be caught).
const MAX_THRESHOLD_PERCENT: u32 = 100;

fn compile_budget(budget: &Budget, aliases: &BTreeSet<String>) -> Result<BudgetConfig, Vec<FieldError>> {
    let spec = &budget.spec;
    let mut errors = Errors::default();
    if !spec.limit_usd.is_finite() || spec.limit_usd < 0.0 {
        errors.push(
            "spec.limitUsd",
            "must be a finite, non-negative number of dollars",
        );
    }
    let time_zone = spec.time_zone.clone().unwrap_or_else(|| "UTC".to_owned());
    if let Err(error) = jiff::tz::TimeZone::get(&time_zone) {
        errors.push(
            "spec.timeZone",
            format!("unknown time zone {time_zone:?}: {error}"),
        );
    }
    let mut thresholds = spec.thresholds.clone();
    if thresholds.iter().any(|t| *t == 0 || *t > MAX_THRESHOLD_PERCENT) {
        errors.push("spec.thresholds", "each threshold is a percentage from 1 to 100");
    }
    thresholds.sort_unstable();
    thresholds.dedup();
    let action = spec.action.unwrap_or_default();
    match (action, &spec.downgrade_to) {
        (BudgetAction::Downgrade, None) => {
            errors.push(
                "spec.downgradeTo",
                "required with action downgrade (the cheaper route)",
            );
        }
        (BudgetAction::Downgrade, Some(route)) if !aliases.contains(route) => {
            errors.push("spec.downgradeTo", format!("route {route} does not exist"));
        }
        (BudgetAction::Block | BudgetAction::Alert, Some(_)) => {
            errors.push("spec.downgradeTo", "only valid with action downgrade");
        }
        _ => {}
    }
    if spec.max_tokens_per_request == Some(0) || spec.max_tokens_per_session == Some(0) {
        errors.push("spec", "token ceilings must be greater than zero");
    }
    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    Ok(BudgetConfig {
        limit_usd: spec.limit_usd,
        period: spec.period.unwrap_or_default(),
        time_zone,
        thresholds,
        action,
        downgrade_to: spec.downgrade_to.clone(),
        max_tokens_per_request: spec.max_tokens_per_request,
        max_tokens_per_session: spec.max_tokens_per_session,
        fail_mode: spec.fail_mode.unwrap_or_default(),
    })
}

/// What a key may refer to.
struct KeyScope<'a> {
    secrets: &'a SecretKeys,
    budgets: &'a BTreeMap<String, BudgetConfig>,
    aliases: &'a BTreeSet<String>,
}

fn compile_key(key: &VirtualKey, scope: &KeyScope<'_>) -> Result<KeyConfig, Vec<FieldError>> {
    let spec = &key.spec;
    let mut errors = Errors::default();
    let reference = CredentialRef {
        secret: key.secret_name(),
        key: spec
            .secret_ref
            .as_ref()
            .and_then(|r| r.key.clone())
            .unwrap_or_else(|| generated_key::SECRET_KEY.to_owned()),
    };
    let hash = match scope.secrets.hash_of(&reference) {
        Ok(hash) => hash.to_owned(),
        Err(message) => {
            errors.push("spec.secretRef", message);
            String::new()
        }
    };
    for (i, route) in spec.allowed_routes.iter().enumerate() {
        if !scope.aliases.contains(route) {
            errors.push(
                format!("spec.allowedRoutes[{i}]"),
                format!("route {route} does not exist"),
            );
        }
    }
    if let Some(budget) = &spec.budget
        && !scope.budgets.contains_key(budget)
    {
        errors.push(
            "spec.budget",
            format!("Budget {budget} does not exist or is not ready"),
        );
    }
    let limits = spec.rate_limits.clone().unwrap_or_default();
    if limits.requests_per_minute == Some(0) || limits.tokens_per_minute == Some(0) {
        errors.push(
            "spec.rateLimits",
            "limits must be greater than zero (omit a limit for none)",
        );
    }
    let expires_at_unix = spec
        .expires_at
        .as_ref()
        .and_then(|text| match text.parse::<jiff::Timestamp>() {
            Ok(instant) => Some(instant.as_second()),
            Err(error) => {
                errors.push(
                    "spec.expiresAt",
                    format!("{text:?} is not an RFC 3339 instant: {error}"),
                );
                None
            }
        });
    errors.millis("spec.rotationGracePeriod", spec.rotation_grace_period.as_deref());
    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    Ok(KeyConfig {
        key_hash: hash,
        previous_key_hashes: scope
            .secrets
            .previous
            .get(&reference.secret)
            .cloned()
            .unwrap_or_default(),
        allowed_routes: spec.allowed_routes.clone(),
        requests_per_minute: limits.requests_per_minute,
        tokens_per_minute: limits.tokens_per_minute,
        budget: spec.budget.clone(),
        team: spec.team.clone(),
        feature: spec.feature.clone(),
        expires_at_unix,
        disabled: spec.disabled,
    })
}

#[path = "compile/guardrails.rs"]
mod guardrails;

#[cfg(test)]
#[path = "compile/tests.rs"]
mod tests;
