//! Credential detectors: provider and cloud keys by their documented
//! prefixes, PEM private keys, JWTs, and generic high-entropy tokens.

use std::sync::LazyLock;

use regex::Regex;

use super::detect::{Checked, Detect, always};

#[allow(clippy::unwrap_used)] // constant expressions, covered by the tests
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap()
}

static ANTHROPIC: LazyLock<Regex> = LazyLock::new(|| regex(r"\bsk-ant-[a-z]{3,6}\d{2}-[A-Za-z0-9_-]{20,}"));
static OPENAI: LazyLock<Regex> =
    LazyLock::new(|| regex(r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}"));
static AWS: LazyLock<Regex> = LazyLock::new(|| regex(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"));
static GCP: LazyLock<Regex> = LazyLock::new(|| regex(r"\bAIza[0-9A-Za-z_-]{35}"));
static AZURE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)\b(?:AccountKey|SharedAccessKey|SharedAccessSignature)=[A-Za-z0-9+/%=&:._-]{20,}")
});
static GITHUB: LazyLock<Regex> =
    LazyLock::new(|| regex(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})"));
static SLACK: LazyLock<Regex> = LazyLock::new(|| regex(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"));
/// An unterminated key runs to the end of the text, so a stream holds it
/// back until its end line arrives.
static PEM: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?s)-----BEGIN[A-Z ]{0,20} PRIVATE KEY-----.*?(?:-----END[A-Z ]{0,20} PRIVATE KEY-----|\z)")
});
static JWT: LazyLock<Regex> =
    LazyLock::new(|| regex(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"));
static TOKEN: LazyLock<Regex> = LazyLock::new(|| regex(r"[A-Za-z0-9+/_-]{32,}={0,2}"));

/// Shortest run of token characters judged on entropy.
const TOKEN_MIN_LEN: usize = 32;
/// Bits per character above which a mixed run reads as random: English
/// words and identifiers stay under it, base64 and random keys go over.
const TOKEN_MIN_ENTROPY: f64 = 4.0;

/// Letter-digit alternations a random run has and an identifier
/// (`UserName2024`) does not.
const TOKEN_MIN_ALTERNATIONS: usize = 4;

/// A long run of mixed upper case, lower case and digits with high entropy.
pub fn high_entropy(candidate: &str) -> bool {
    let bytes = candidate.as_bytes();
    let alternations = bytes
        .windows(2)
        .filter(|w| w[0].is_ascii_digit() != w[1].is_ascii_digit())
        .count();
    if alternations < TOKEN_MIN_ALTERNATIONS {
        return false;
    }
    let classes = [
        bytes.iter().any(u8::is_ascii_lowercase),
        bytes.iter().any(u8::is_ascii_uppercase),
        bytes.iter().any(u8::is_ascii_digit),
    ];
    if bytes.len() < TOKEN_MIN_LEN || classes.iter().filter(|&&c| c).count() < 3 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let len = bytes.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum();
    entropy >= TOKEN_MIN_ENTROPY
}

/// Every credential detector, most specific first (they win ties).
pub fn secrets() -> Vec<Box<dyn Detect>> {
    let exact = |kind, regex| -> Box<dyn Detect> {
        Box::new(Checked {
            kind,
            regex,
            valid: always,
        })
    };
    vec![
        exact("private_key", &PEM),
        exact("anthropic_key", &ANTHROPIC),
        exact("openai_key", &OPENAI),
        exact("aws_access_key", &AWS),
        exact("gcp_api_key", &GCP),
        exact("azure_key", &AZURE),
        exact("github_token", &GITHUB),
        exact("slack_token", &SLACK),
        exact("jwt", &JWT),
        Box::new(Checked {
            kind: "secret_token",
            regex: &TOKEN,
            valid: high_entropy,
        }),
    ]
}
