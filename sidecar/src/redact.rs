//! The redaction hook: prompt and answer text passes through it before a
//! route that opts in (`logContent`) writes it to the access log. The
//! default is the guardrails' own detectors, not a second set of rules.

use crate::guardrails::detect::{self, Scanner};

/// Rewrites text before it is logged.
pub trait Redact: Send + Sync + std::fmt::Debug {
    /// The text as it may be logged.
    fn redact(&self, text: &str) -> String;
}

/// The default hook: every built-in PII and secret detector of the
/// guardrails (emails, phone numbers, cards, IBANs, national ids, IP
/// addresses, keys, tokens) replaced by its typed placeholder, such as
/// `[EMAIL]`. A platform with stricter rules embeds the sidecar with its own
/// [`Redact`] ([`crate::settings::Settings::redactor`]).
#[derive(Debug)]
pub struct MaskSecrets(Scanner);

impl Default for MaskSecrets {
    fn default() -> Self {
        Self(crate::guardrails::all_builtin_detectors())
    }
}

impl Redact for MaskSecrets {
    fn redact(&self, text: &str) -> String {
        detect::redact(text, &self.0.scan(text)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_card_numbers_are_masked_and_the_rest_kept() {
        let mask = MaskSecrets::default();
        let text = "my key is sk-proj-abcdef1234567890abcdef, card 4111-1111-1111-1111\nthanks AKIAIOSFODNN7EXAMPLE, mail ann@example.org";
        assert_eq!(
            mask.redact(text),
            "my key is [OPENAI_KEY], card [CREDIT_CARD]\nthanks [AWS_ACCESS_KEY], mail [EMAIL]"
        );
        assert_eq!(mask.redact("order 12345 is fine"), "order 12345 is fine");
    }
}
