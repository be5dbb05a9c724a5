//! The prompt-injection screen against the small labelled set in
//! `tests/data/prompt_injection.tsv`: its false-positive and false-negative
//! rates stay within what `docs/configuration.md` states.

use llmesh_sidecar::guardrails::detect::Detect;
use llmesh_sidecar::guardrails::injection::PromptInjection;

/// The documented ceilings: no benign prompt of the 30 flagged, at most
/// 4 in 30 attacks missed (the misses are paraphrases with no known wording).
const MAX_FALSE_NEGATIVES: usize = 4;

#[test]
fn the_injection_screen_meets_its_documented_rates_on_the_labelled_set() {
    let set = include_str!("data/prompt_injection.tsv");
    let (mut attacks, mut benign, mut false_negatives, mut false_positives) = (0, 0, Vec::new(), Vec::new());
    for line in set
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (label, prompt) = line.split_once('\t').expect("label<TAB>prompt");
        let mut found = Vec::new();
        PromptInjection.find(prompt, &mut found);
        match label {
            "attack" => {
                attacks += 1;
                if found.is_empty() {
                    false_negatives.push(prompt);
                }
            }
            "benign" => {
                benign += 1;
                if !found.is_empty() {
                    false_positives.push(prompt);
                }
            }
            other => panic!("unknown label {other}"),
        }
    }
    println!(
        "prompt injection: {attacks} attacks, {} missed; {benign} benign, {} flagged",
        false_negatives.len(),
        false_positives.len()
    );
    assert_eq!((attacks, benign), (30, 30));
    assert!(false_positives.is_empty(), "flagged: {false_positives:#?}");
    assert!(
        false_negatives.len() <= MAX_FALSE_NEGATIVES,
        "missed: {false_negatives:#?}"
    );
}
