//! The redaction hook: prompt and answer text passes through it before a
//! route that opts in (`logContent`) writes it to the access log.

/// Rewrites text before it is logged.
pub trait Redact: Send + Sync + std::fmt::Debug {
    /// The text as it may be logged.
    fn redact(&self, text: &str) -> String;
}

/// The default hook: words that look like credentials or card numbers become
/// `[REDACTED]` — `sk-…` API keys, `AKIA…` AWS key ids, `eyJ…` JWTs, and
/// runs of 12 or more digits. A platform with stricter rules embeds the
/// sidecar with its own [`Redact`] ([`crate::settings::Settings::redactor`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct MaskSecrets;

impl Redact for MaskSecrets {
    fn redact(&self, text: &str) -> String {
        text.split_inclusive(char::is_whitespace)
            .map(|piece| {
                let word = piece.trim_end();
                if looks_secret(word) {
                    format!("[REDACTED]{}", &piece[word.len()..])
                } else {
                    piece.to_owned()
                }
            })
            .collect()
    }
}

/// Shortest credential-looking word masked: shorter ones are ordinary text.
const MIN_SECRET_LEN: usize = 12;

fn looks_secret(word: &str) -> bool {
    let word = word.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    if word.len() < MIN_SECRET_LEN {
        return false;
    }
    let digits = word.chars().filter(char::is_ascii_digit).count();
    ["sk-", "AKIA", "eyJ"]
        .iter()
        .any(|prefix| word.starts_with(prefix))
        || (digits >= MIN_SECRET_LEN && word.chars().all(|c| c.is_ascii_digit() || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_card_numbers_are_masked_and_the_rest_kept() {
        let text = "my key is sk-proj-abcdef123456, card 4111-1111-1111-1111\nthanks AKIAIOSFODNN7EXAMPLE ok";
        assert_eq!(
            MaskSecrets.redact(text),
            "my key is [REDACTED] card [REDACTED]\nthanks [REDACTED] ok"
        );
        assert_eq!(MaskSecrets.redact("order 12345 is fine"), "order 12345 is fine");
    }
}
