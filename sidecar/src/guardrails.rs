//! Guardrails: a route's policies (detectors, an action, a phase, the roles
//! read) applied to prompts before the cache, the upstream and the logs see
//! them, and to answers — complete or streamed — before the cache and the app do.

pub mod detect;
pub mod injection;
pub mod moderation;
pub mod pii;
pub mod secrets;
pub mod stream;

use std::sync::Arc;

use bytes::Bytes;
use llmesh_crds::config::GuardrailConfig;
use llmesh_crds::resources::{Detector, GuardrailAction, MessageRole};
use parking_lot::Mutex;
use serde_json::Value;

use crate::api::chat::{ChatRequest, Content, Role};
use crate::api::embeddings::{EmbeddingInput, EmbeddingsRequest};
use crate::providers::Deps;
use detect::{Detect, Kind, Scanner, Span};
use moderation::{Moderator, Verdict};

/// Where a finding was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// In the prompt.
    Request,
    /// In the answer.
    Response,
}

impl Phase {
    /// As written in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

/// One finding, as logs and metrics show it: never the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The policy's name.
    pub policy: Arc<str>,
    /// What was found.
    pub kind: Kind,
    /// What the policy did.
    pub action: GuardrailAction,
    /// Prompt or answer.
    pub phase: Phase,
}

/// The findings of one request, shared by its record and its stream.
#[derive(Clone, Debug, Default)]
pub struct Findings(Arc<Mutex<Vec<Finding>>>);

impl Findings {
    fn note(&self, finding: Finding) {
        self.0.lock().push(finding);
    }

    /// Everything found so far.
    pub fn take(&self) -> Vec<Finding> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Why a guardrail refused a request or ended an answer. The message names
/// the policy and the kind of finding, never the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// A `block` policy found something.
    #[error("guardrail policy {policy:?} blocked the {phase}: it contains {kind}")]
    Finding {
        /// The policy.
        policy: String,
        /// The kind of finding.
        kind: String,
        /// `request` or `response`.
        phase: &'static str,
    },
    /// A fail-closed moderation step got no verdict.
    #[error(
        "guardrail policy {policy:?}: the moderation endpoint gave no verdict ({reason}) and the policy fails closed"
    )]
    ModerationUnavailable {
        /// The policy.
        policy: String,
        /// What went wrong.
        reason: String,
    },
}

/// A route's guardrails could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A user pattern does not compile.
    #[error("guardrail {policy}: pattern {pattern}: {error}")]
    Pattern {
        /// The policy.
        policy: String,
        /// The pattern's name.
        pattern: String,
        /// Why.
        error: regex::Error,
    },
    /// The word list cannot be built.
    #[error("guardrail {policy}: words: {error}")]
    Words {
        /// The policy.
        policy: String,
        /// Why.
        error: aho_corasick::BuildError,
    },
}

/// One policy, ready to run.
#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    on_request: bool,
    on_response: bool,
    action: GuardrailAction,
    roles: Vec<MessageRole>,
    scanner: Scanner,
    moderation: Option<Moderator>,
}

impl Policy {
    fn reads(&self, role: MessageRole) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }
}

/// The built-in detectors a `detect` entry stands for.
fn builtin(detector: Detector) -> Vec<Box<dyn Detect>> {
    match detector {
        Detector::Email => pii::email(),
        Detector::Phone => pii::phone_numbers(),
        Detector::CreditCard => pii::credit_card(),
        Detector::Iban => pii::iban(),
        Detector::NationalId => pii::national_id(),
        Detector::IpAddress => pii::ip_address(),
        Detector::Secret => secrets::secrets(),
        Detector::PromptInjection => vec![Box::new(injection::PromptInjection)],
    }
}

/// A scanner with every built-in PII and secret detector: what the access
/// log's content redaction uses.
pub fn all_builtin_detectors() -> Scanner {
    use Detector::{CreditCard, Email, Iban, IpAddress, NationalId, Phone, Secret};
    // Secrets first: a key's digits must not be taken for a card number.
    let detectors = [Secret, Email, CreditCard, Iban, NationalId, Phone, IpAddress]
        .into_iter()
        .flat_map(builtin)
        .collect();
    Scanner::new(detectors)
}

/// A route's policies.
#[derive(Debug, Default)]
pub struct Guardrails {
    policies: Vec<Policy>,
}

impl Guardrails {
    /// Builds the policies of a route.
    ///
    /// # Errors
    /// A pattern or word list does not build (the compiler checked them, so
    /// only a hand-written config gets here).
    pub fn build(configs: &[GuardrailConfig], deps: &Deps) -> Result<Self, BuildError> {
        let policies = configs
            .iter()
            .map(|config| {
                let mut detectors: Vec<Box<dyn Detect>> =
                    config.detect.iter().copied().flat_map(builtin).collect();
                for pattern in &config.patterns {
                    let built = detect::Pattern::new(&pattern.name, &pattern.regex).map_err(|error| {
                        BuildError::Pattern {
                            policy: config.name.clone(),
                            pattern: pattern.name.clone(),
                            error,
                        }
                    })?;
                    detectors.push(Box::new(built));
                }
                if !config.words.is_empty() {
                    let words = detect::Words::new(&config.words).map_err(|error| BuildError::Words {
                        policy: config.name.clone(),
                        error,
                    })?;
                    detectors.push(Box::new(words));
                }
                Ok(Policy {
                    name: config.name.as_str().into(),
                    on_request: config.phase.on_request(),
                    on_response: config.phase.on_response(),
                    action: config.action,
                    roles: config.roles.clone(),
                    scanner: Scanner::new(detectors),
                    moderation: config.moderation.as_ref().map(|m| Moderator::new(m, deps)),
                })
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(Self { policies })
    }

    /// Whether answers are checked (complete ones with
    /// [`Self::screen_answer`], streams with [`stream::guard`]).
    pub fn on_response(&self) -> bool {
        self.answer_policies().next().is_some()
    }

    fn answer_policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies
            .iter()
            .filter(|p| p.on_response && !p.scanner.is_empty())
    }

    /// Checks a prompt: detector policies first (redacting in place), then
    /// moderation on what is left, so a moderation endpoint never sees what
    /// a policy redacts.
    ///
    /// # Errors
    /// A `block` policy found something, or fail-closed moderation got no verdict.
    pub async fn screen_request(
        &self,
        request: &mut dyn Inspect,
        findings: &Findings,
    ) -> Result<(), Blocked> {
        let scanning: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| p.on_request && !p.scanner.is_empty())
            .collect();
        if !scanning.is_empty() {
            let mut outcome = Ok(());
            let mut rewritten = false;
            request.visit(&mut |role, text| {
                if outcome.is_err() {
                    return;
                }
                let reading: Vec<&Policy> = scanning.iter().copied().filter(|p| p.reads(role)).collect();
                match settle(&reading, text, text.len(), Phase::Request, findings) {
                    Ok(settled) => {
                        if let Some(redacted) = settled.replacement {
                            *text = redacted;
                            rewritten = true;
                        }
                    }
                    Err(blocked) => outcome = Err(blocked),
                }
            });
            outcome?;
            if rewritten {
                request.rewritten();
            }
        }
        for policy in self.policies.iter().filter(|p| p.on_request) {
            let Some(moderator) = &policy.moderation else {
                continue;
            };
            let mut prompt = String::new();
            request.visit(&mut |role, text| {
                if policy.reads(role) {
                    prompt.push_str(text);
                    prompt.push('\n');
                }
            });
            let finding = |kind| Finding {
                policy: policy.name.clone(),
                kind: Kind::Builtin(kind),
                action: policy.action,
                phase: Phase::Request,
            };
            match moderator.check(&prompt).await {
                Verdict::Allowed => {}
                Verdict::Flagged => {
                    findings.note(finding("moderation"));
                    if policy.action == GuardrailAction::Block {
                        return Err(Blocked::Finding {
                            policy: policy.name.to_string(),
                            kind: "moderation".to_owned(),
                            phase: Phase::Request.as_str(),
                        });
                    }
                }
                Verdict::Unavailable(reason) => {
                    tracing::warn!(policy = %policy.name, reason = %reason, fail_open = moderator.fail_open, "moderation gave no verdict");
                    if !moderator.fail_open {
                        return Err(Blocked::ModerationUnavailable {
                            policy: policy.name.to_string(),
                            reason,
                        });
                    }
                    findings.note(Finding {
                        action: GuardrailAction::Flag,
                        ..finding("moderation_unavailable")
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks a complete chat answer (OpenAI's JSON): the text and tool-call
    /// arguments of every choice. Returns the body, redacted if a policy redacts.
    ///
    /// # Errors
    /// A `block` policy found something.
    pub fn screen_answer(&self, body: Bytes, findings: &Findings) -> Result<Bytes, Blocked> {
        let policies: Vec<&Policy> = self.answer_policies().collect();
        if policies.is_empty() {
            return Ok(body);
        }
        let Ok(mut answer) = serde_json::from_slice::<Value>(&body) else {
            return Ok(body);
        };
        let mut changed = false;
        let mut outcome = Ok(());
        answer_texts(&mut answer, &mut |text| {
            if outcome.is_err() {
                return;
            }
            match settle(&policies, text, text.len(), Phase::Response, findings) {
                Ok(Settled {
                    replacement: Some(redacted),
                    ..
                }) => {
                    *text = redacted;
                    changed = true;
                }
                Ok(_) => {}
                Err(blocked) => outcome = Err(blocked),
            }
        });
        outcome?;
        Ok(if changed {
            crate::providers::to_json_bytes(&answer)
        } else {
            body
        })
    }
}

/// The strings of a chat answer guardrails read.
fn answer_texts(answer: &mut Value, visit: &mut dyn FnMut(&mut String)) {
    let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        let Some(message) = choice.get_mut("message") else {
            continue;
        };
        if let Some(Value::String(text)) = message.get_mut("content") {
            visit(text);
        }
        if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls {
                if let Some(Value::String(arguments)) = call.pointer_mut("/function/arguments") {
                    visit(arguments);
                }
            }
        }
    }
}

/// The outcome of settling text against policies.
#[derive(Debug, Default)]
struct Settled {
    /// What replaces the settled part, when it is not the input's own bytes
    /// (a policy redacted, or only part of the input is settled).
    replacement: Option<String>,
    /// How many bytes of the input are settled.
    settled: usize,
}

/// Applies `policies` to `text`: findings that end by `hold_from` are
/// settled; one that reaches past it (it may still grow) holds back the
/// text from its start.
fn settle(
    policies: &[&Policy],
    text: &str,
    hold_from: usize,
    phase: Phase,
    findings: &Findings,
) -> Result<Settled, Blocked> {
    let found: Vec<Vec<Span>> = policies.iter().map(|p| p.scanner.scan(text)).collect();
    let mut cut = floor_boundary(text, hold_from);
    // Spans of different policies may overlap, so holding one back can
    // unsettle another: repeat until nothing moves.
    loop {
        let held = found
            .iter()
            .flatten()
            .filter(|s| s.end > cut && s.start < cut)
            .map(|s| s.start)
            .min();
        match held {
            Some(start) => cut = start,
            None => break,
        }
    }
    let mut redact = Vec::new();
    for (policy, spans) in policies.iter().zip(found) {
        let spans: Vec<Span> = spans.into_iter().filter(|s| s.end <= cut).collect();
        for span in &spans {
            findings.note(Finding {
                policy: policy.name.clone(),
                kind: span.kind.clone(),
                action: policy.action,
                phase,
            });
        }
        match (policy.action, spans.first()) {
            (GuardrailAction::Block, Some(span)) => {
                return Err(Blocked::Finding {
                    policy: policy.name.to_string(),
                    kind: span.kind.to_string(),
                    phase: phase.as_str(),
                });
            }
            (GuardrailAction::Redact, Some(_)) => redact.push(spans),
            _ => {}
        }
    }
    let spans = detect::merge(redact);
    let replacement = if spans.is_empty() {
        (cut < text.len()).then(|| text[..cut].to_owned())
    } else {
        Some(detect::redact(&text[..cut], &spans).into_owned())
    };
    Ok(Settled {
        replacement,
        settled: cut,
    })
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A request whose texts guardrails read and may rewrite, by role.
pub trait Inspect: Send {
    /// Calls `visit` with each text and the role it speaks for.
    fn visit(&mut self, visit: &mut dyn FnMut(MessageRole, &mut String));

    /// A text was rewritten: what the request carries of its original body
    /// must not be sent any more.
    fn rewritten(&mut self) {}
}

impl Inspect for ChatRequest {
    fn visit(&mut self, visit: &mut dyn FnMut(MessageRole, &mut String)) {
        for message in &mut self.messages {
            let role = match message.role {
                Role::System => MessageRole::System,
                Role::Developer => MessageRole::Developer,
                Role::User => MessageRole::User,
                Role::Assistant => MessageRole::Assistant,
                Role::Tool => MessageRole::Tool,
            };
            match &mut message.content {
                Some(Content::Text(text)) => visit(role, text),
                Some(Content::Parts(parts)) => {
                    for text in parts.iter_mut().filter_map(|p| p.text.as_mut()) {
                        visit(role, text);
                    }
                }
                None => {}
            }
            for call in message.tool_calls.iter_mut().flatten() {
                visit(MessageRole::Assistant, &mut call.function.arguments);
            }
        }
    }

    /// A Messages app's original body would go to an Anthropic target as it
    /// came (same-family passthrough): after a redaction the translation of
    /// the redacted request goes instead.
    fn rewritten(&mut self) {
        self.anthropic = None;
    }
}

impl Inspect for EmbeddingsRequest {
    fn visit(&mut self, visit: &mut dyn FnMut(MessageRole, &mut String)) {
        match &mut self.input {
            EmbeddingInput::One(text) => visit(MessageRole::User, text),
            EmbeddingInput::Many(texts) => texts.iter_mut().for_each(|t| visit(MessageRole::User, t)),
            EmbeddingInput::Tokens(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
