//! Compiles `spec.guardrails`: names unique, each policy detecting something,
//! regexes that compile, moderation keys resolved to a credential reference.

use std::collections::BTreeSet;

use super::{Errors, RouteScope};
use crate::config::{Credentials, GuardrailConfig, ModerationConfig};
use crate::resources::{Guardrail, GuardrailAction, GuardrailPhase};

/// How long a moderation verdict may take when the policy names no `timeout`.
const DEFAULT_MODERATION_TIMEOUT_MS: u64 = 2_000;

/// The route's policies, validated; problems go to `errors`.
pub(super) fn compile(
    guardrails: &[Guardrail],
    scope: &RouteScope<'_>,
    errors: &mut Errors,
) -> Vec<GuardrailConfig> {
    let mut names = BTreeSet::new();
    guardrails
        .iter()
        .enumerate()
        .map(|(i, policy)| {
            let field = format!("spec.guardrails[{i}]");
            if !names.insert(policy.name.as_str()) {
                errors.push(
                    format!("{field}.name"),
                    format!("{:?} is used twice", policy.name),
                );
            }
            if policy.detect.is_empty()
                && policy.patterns.is_empty()
                && policy.words.is_empty()
                && policy.moderation.is_none()
            {
                errors.push(
                    field.as_str(),
                    "needs something to look for: detect, patterns, words or moderation",
                );
            }
            let phase = policy.phase.unwrap_or_default();
            for (j, pattern) in policy.patterns.iter().enumerate() {
                if let Err(e) = regex::Regex::new(&pattern.regex) {
                    errors.push(format!("{field}.patterns[{j}].regex"), e.to_string());
                }
            }
            if policy.words.iter().any(|w| w.trim().is_empty()) {
                errors.push(format!("{field}.words"), "words must not be empty");
            }
            let moderation = policy.moderation.as_ref().map(|m| {
                let field = format!("{field}.moderation");
                if policy.action == GuardrailAction::Redact {
                    errors.push(
                        field.as_str(),
                        "a moderation verdict has nothing to redact: use action block or flag",
                    );
                }
                if phase != GuardrailPhase::Request {
                    errors.push(
                        field.as_str(),
                        "moderation runs on prompts only: set phase: request",
                    );
                }
                let api_key = m.provider.as_ref().and_then(|name| {
                    match scope.providers.get(name).map(|p| &p.credentials) {
                        Some(Credentials::ApiKey { api_key }) => Some(api_key.clone()),
                        Some(_) => {
                            errors.push(
                                format!("{field}.provider"),
                                format!("ProviderSecret {name} has no single API key to send"),
                            );
                            None
                        }
                        None => {
                            errors.push(
                                format!("{field}.provider"),
                                format!("ProviderSecret {name} does not exist or is not ready"),
                            );
                            None
                        }
                    }
                });
                ModerationConfig {
                    url: m.url.clone(),
                    api_key,
                    model: m.model.clone(),
                    timeout_ms: errors
                        .positive_millis(&format!("{field}.timeout"), m.timeout.as_deref())
                        .unwrap_or(DEFAULT_MODERATION_TIMEOUT_MS),
                    failure_mode: m.failure_mode.unwrap_or_default(),
                }
            });
            let mut roles = policy.roles.clone();
            roles.sort_unstable();
            roles.dedup();
            let mut detect = policy.detect.clone();
            detect.sort_unstable();
            detect.dedup();
            GuardrailConfig {
                name: policy.name.clone(),
                phase,
                action: policy.action,
                roles,
                detect,
                patterns: policy.patterns.clone(),
                words: policy.words.clone(),
                moderation,
            }
        })
        .collect()
}
