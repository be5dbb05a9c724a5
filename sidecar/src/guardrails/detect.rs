//! What every detector shares: spans of text with a finding kind, the
//! scanner that runs a policy's detectors, and typed-placeholder redaction.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

/// The kind of a finding: a built-in name (`email`) or a user pattern's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A built-in detector's kind.
    Builtin(&'static str),
    /// A user pattern's name.
    Named(Arc<str>),
}

impl Kind {
    /// The kind as written in errors, logs and metrics.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Builtin(name) => name,
            Self::Named(name) => name,
        }
    }

    /// The placeholder that replaces a finding of this kind: `[EMAIL]`.
    pub fn placeholder(&self) -> String {
        format!("[{}]", self.as_str().to_ascii_uppercase())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a finding is: byte offsets into the scanned text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// What was found.
    pub kind: Kind,
}

/// One detector: appends what it finds in `text` to `out`.
pub trait Detect: Send + Sync + fmt::Debug {
    /// Finds spans.
    fn find(&self, text: &str, out: &mut Vec<Span>);
}

/// A regex whose matches are findings once `valid` accepts them.
pub struct Checked {
    /// The finding kind.
    pub kind: &'static str,
    /// Candidates.
    pub regex: &'static Regex,
    /// Accepts a candidate (checksums, ranges).
    pub valid: fn(&str) -> bool,
}

impl fmt::Debug for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Detect for Checked {
    fn find(&self, text: &str, out: &mut Vec<Span>) {
        for m in self.regex.find_iter(text) {
            if (self.valid)(m.as_str()) {
                out.push(Span {
                    start: m.start(),
                    end: m.end(),
                    kind: Kind::Builtin(self.kind),
                });
            }
        }
    }
}

/// Any match is a finding.
pub fn always(_: &str) -> bool {
    true
}

/// A user regular expression.
#[derive(Debug)]
pub struct Pattern {
    kind: Kind,
    regex: Regex,
}

impl Pattern {
    /// Compiles a pattern named `name`.
    ///
    /// # Errors
    /// The expression does not compile.
    pub fn new(name: &str, regex: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            kind: Kind::Named(name.into()),
            regex: Regex::new(regex)?,
        })
    }
}

impl Detect for Pattern {
    fn find(&self, text: &str, out: &mut Vec<Span>) {
        out.extend(
            self.regex
                .find_iter(text)
                .filter(|m| !m.is_empty())
                .map(|m| Span {
                    start: m.start(),
                    end: m.end(),
                    kind: self.kind.clone(),
                }),
        );
    }
}

/// A word list, matched case-insensitively on word boundaries.
#[derive(Debug)]
pub struct Words(AhoCorasick);

impl Words {
    /// Builds the matcher.
    ///
    /// # Errors
    /// The list is too large for the automaton.
    pub fn new(words: &[String]) -> Result<Self, aho_corasick::BuildError> {
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(words.iter().map(|w| w.trim()))?;
        Ok(Self(automaton))
    }
}

impl Detect for Words {
    fn find(&self, text: &str, out: &mut Vec<Span>) {
        let word_char = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        for m in self.0.find_iter(text) {
            if word_char(text[..m.start()].chars().next_back()) || word_char(text[m.end()..].chars().next()) {
                continue;
            }
            out.push(Span {
                start: m.start(),
                end: m.end(),
                kind: Kind::Builtin("word"),
            });
        }
    }
}

/// A policy's detectors, run together.
#[derive(Debug, Default)]
pub struct Scanner {
    detectors: Vec<Box<dyn Detect>>,
}

impl Scanner {
    /// A scanner over `detectors`, earlier ones winning ties.
    pub fn new(detectors: Vec<Box<dyn Detect>>) -> Self {
        Self { detectors }
    }

    /// Whether it has no detector.
    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    /// The findings in `text`, in order and without overlaps: of two that
    /// overlap, the one starting first (then the longer) is kept.
    pub fn scan(&self, text: &str) -> Vec<Span> {
        let mut spans = Vec::new();
        for detector in &self.detectors {
            detector.find(text, &mut spans);
        }
        spans.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut kept: Vec<Span> = Vec::with_capacity(spans.len());
        for span in spans {
            if kept.last().is_none_or(|last| span.start >= last.end) {
                kept.push(span);
            }
        }
        kept
    }
}

/// `text` with each span replaced by its placeholder; spans must be sorted
/// and disjoint.
pub fn redact<'t>(text: &'t str, spans: &[Span]) -> Cow<'t, str> {
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push_str(&span.kind.placeholder());
        at = span.end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// Merges several sorted span lists into one sorted disjoint list.
pub fn merge(lists: impl IntoIterator<Item = Vec<Span>>) -> Vec<Span> {
    let mut all: Vec<Span> = lists.into_iter().flatten().collect();
    all.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut kept: Vec<Span> = Vec::with_capacity(all.len());
    for span in all {
        match kept.last_mut() {
            Some(last) if span.start < last.end => last.end = last.end.max(span.end),
            _ => kept.push(span),
        }
    }
    kept
}
