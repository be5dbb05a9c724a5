//! The prompt-injection screen: known attack phrasings (override the
//! instructions, reveal the system prompt, unrestricted personas) and
//! structure that has no business in a user's text (chat-template tokens,
//! forged role headers). Each hit is a `prompt_injection` finding.

use std::sync::LazyLock;

use regex::RegexSet;

use super::detect::{Detect, Kind, Span};

/// Phrasings and structures; a hit on any is a finding. Gaps between words
/// are bounded so that a long, harmless sentence does not join the words.
const SIGNS: &[&str] = &[
    // Override the instructions in force.
    r"(?i)\b(?:ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}?\b(?:previous|prior|preceding|above|earlier|original|system|initial|all)\b[^.\n]{0,25}?\b(?:instructions?|prompts?|rules|directions|directives|guidelines|context|constraints)\b",
    r"(?i)\b(?:do not|don't|stop)\s+(?:follow|obey)(?:ing)?\b[^.\n]{0,30}?\b(?:instructions?|rules|guidelines)\b",
    // Reveal what the app told the model.
    r"(?i)\b(?:reveal|show|print|repeat|output|leak|display|dump|tell me|what (?:is|are|was|were))\b[^.\n]{0,40}?\b(?:system prompt|system message|hidden (?:instructions?|prompt)|initial (?:instructions?|prompt)|developer (?:message|instructions?)|your (?:instructions|rules|prompt))\b",
    // Personas without limits.
    r"(?i)\byou are (?:now|no longer)\b[^.\n]{0,40}?\b(?:DAN|unrestricted|unfiltered|jailbroken|uncensored|bound by|free (?:of|from))\b",
    r"(?i)\b(?:do anything now|developer mode (?:enabled|activated)|jailbreak(?:ed)? mode|DAN mode|god mode enabled)\b",
    r"(?i)\b(?:pretend|act|behave|roleplay)\b[^.\n]{0,30}?\b(?:without|no|free of)\s+(?:any\s+)?(?:restrictions|rules|filters|limits|guidelines|censorship)\b",
    r"(?i)\b(?:new|updated|real|true) (?:system )?instructions?\s*:",
    // Chat-template tokens and forged turns inside a message.
    r"<\|(?:im_start|im_end|system|endoftext|start_header_id)\|>|\[/?INST\]|<</?SYS>>|</?(?:system|instructions)>",
    r"(?im)^\s*#{0,3}\s*(?:system|assistant)\s*(?:message|prompt)?\s*:\s*\S",
];

static SET: LazyLock<(RegexSet, Vec<regex::Regex>)> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // constant expressions, covered by the tests
    let set = RegexSet::new(SIGNS).unwrap();
    #[allow(clippy::unwrap_used)]
    let each = SIGNS.iter().map(|s| regex::Regex::new(s).unwrap()).collect();
    (set, each)
});

/// The screen as a detector.
#[derive(Debug)]
pub struct PromptInjection;

impl Detect for PromptInjection {
    fn find(&self, text: &str, out: &mut Vec<Span>) {
        let (set, each) = &*SET;
        // One pass over the text says whether anything matched; only then
        // are the spans located.
        for i in set.matches(text).iter() {
            out.extend(each[i].find_iter(text).map(|m| Span {
                start: m.start(),
                end: m.end(),
                kind: Kind::Builtin("prompt_injection"),
            }));
        }
    }
}
