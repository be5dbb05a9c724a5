//! Cost: what a response cost in USD, from its actual token usage and the
//! target's price — its own `price`, or the built-in table in
//! `pricing/prices.json` (list prices with the date they were checked).

use std::sync::LazyLock;

use llmesh_crds::resources::Price;
use serde::Deserialize;

use crate::api::Usage;

/// The built-in table, as shipped.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Table {
    /// When the prices were last compared with the providers' pages (for
    /// people reading the file; checked to be a date by a test).
    #[serde(rename = "checked")]
    _checked: String,
    /// Where they come from.
    #[serde(rename = "source")]
    _source: String,
    models: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Which provider lists the model (for people reading the file).
    #[serde(rename = "provider")]
    _provider: String,
    model: String,
    #[serde(flatten)]
    price: Price,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    serde_json::from_str(include_str!("pricing/prices.json")).unwrap_or_else(|e| panic!("prices.json: {e}"))
});

/// Cross-region inference profiles prefix Bedrock model ids with a geography.
const BEDROCK_GEOGRAPHIES: &[&str] = &["us.", "eu.", "apac.", "global."];

/// The built-in price of an upstream model: the table entry it names, or
/// that it names with a snapshot or version tag after it
/// (`gpt-4o-2024-08-06` is `gpt-4o`). Anything else after the name makes it
/// another model: `gpt-4o-mini` is not `gpt-4o`, and `claude-opus-4-5` —
/// a third of `claude-opus-4`'s price — is not `claude-opus-4`.
pub fn builtin(model: &str) -> Option<Price> {
    let model = BEDROCK_GEOGRAPHIES
        .iter()
        .find_map(|geo| model.strip_prefix(geo))
        .unwrap_or(model);
    TABLE
        .models
        .iter()
        .filter(|entry| {
            model
                .strip_prefix(entry.model.as_str())
                .is_some_and(is_snapshot_suffix)
        })
        .max_by_key(|entry| entry.model.len())
        .map(|entry| entry.price.clone())
}

/// Whether what follows a model's name only picks a snapshot of it: nothing;
/// a date (`-20250514`, `-2024-08-06`, Vertex's `@20250514`); `-latest`; a
/// three-digit revision (`-001`); or a Bedrock version (`-v1:0`). Whatever
/// comes after the first such tag is the snapshot's business.
fn is_snapshot_suffix(rest: &str) -> bool {
    let Some(tag) = rest.strip_prefix('-').or_else(|| rest.strip_prefix('@')) else {
        return rest.is_empty();
    };
    let digits = |text: &str, count: usize| text.len() == count && text.bytes().all(|b| b.is_ascii_digit());
    let mut parts = tag.split('-');
    let first = parts.next().unwrap_or_default();
    let first = first.split(':').next().unwrap_or_default();
    let iso_date = || {
        let mut date = tag.splitn(4, '-');
        let (year, month, day) = (date.next(), date.next(), date.next());
        [(year, 4), (month, 2), (day, 2)]
            .into_iter()
            .all(|(part, count)| part.is_some_and(|p| digits(p, count)))
    };
    digits(first, 8)
        || digits(first, 3)
        || first == "latest"
        || first
            .strip_prefix('v')
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        || iso_date()
}

/// USD for `usage` at `price`. Cached input and cache writes use their own
/// prices when the table or target has them, the input price otherwise.
pub fn cost(price: &Price, usage: &Usage) -> f64 {
    let cached = usage.cached_input();
    let written = usage.cache_write();
    let plain_input = usage.prompt_tokens.saturating_sub(cached).saturating_sub(written);
    #[allow(clippy::cast_precision_loss)]
    let per_million = |tokens: u64, price: f64| tokens as f64 * price;
    let total = per_million(plain_input, price.input)
        + per_million(cached, price.cached_input.unwrap_or(price.input))
        + per_million(written, price.cache_write.unwrap_or(price.input))
        + per_million(usage.completion_tokens, price.output);
    total / 1_000_000.0
}

/// A cost as the `x-llmesh-cost-usd` header writes it: plain decimal, at most
/// ten places (a millionth of a cent), no trailing zeros.
pub fn format_usd(cost: f64) -> String {
    let text = format!("{cost:.10}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_find_their_model_and_other_models_do_not() {
        let input = |model: &str| builtin(model).map(|p| p.input);
        let cases = [
            ("gpt-4o", Some(2.5)),
            ("gpt-4o-2024-08-06", Some(2.5)),
            ("gpt-4o-mini", Some(0.15)),
            ("gpt-4o-mini-2024-07-18", Some(0.15)),
            ("gpt-5-mini-2025-08-07", Some(0.25)),
            ("gpt-5.4-nano", Some(0.2)),
            ("claude-sonnet-4-20250514", Some(3.0)),
            ("claude-sonnet-4-5-20250929", Some(3.0)),
            ("claude-3-5-haiku-latest", Some(0.8)),
            ("claude-opus-4-20250514", Some(15.0)),
            ("claude-opus-4-5-20251101", Some(5.0)),
            ("claude-opus-4-5@20251101", Some(5.0)),
            ("us.anthropic.claude-sonnet-4-20250514-v1:0", Some(3.0)),
            ("amazon.nova-pro-v1:0", Some(0.8)),
            ("gemini-2.0-flash-001", Some(0.1)),
            // Unknown models and unknown variants are unpriced, not priced as a relative.
            ("claude-opus-4-9", None),
            ("o3-pro", None),
            ("gemini-2.5-flash-lite", None),
            ("gpt-4o-audio-preview", None),
            ("llama3.1:8b", None),
        ];
        for (model, expected) in cases {
            assert_eq!(input(model), expected, "{model}");
        }
    }

    #[test]
    fn every_entry_is_priced_sensibly() {
        assert!(
            TABLE._checked.parse::<jiff::civil::Date>().is_ok(),
            "{}",
            TABLE._checked
        );
        for entry in &TABLE.models {
            let p = &entry.price;
            let all = [Some(p.input), Some(p.output), p.cached_input, p.cache_write];
            assert!(
                all.into_iter().flatten().all(|v| v.is_finite() && v >= 0.0),
                "{}",
                entry.model
            );
        }
    }

    #[test]
    fn cached_and_written_input_use_their_prices() {
        let price = Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write: Some(3.75),
        };
        let usage = Usage::new(1_000_000, 100_000, 200_000, 100_000, 0);
        // 700k plain input, 200k cached, 100k written, 100k output.
        let expected = 2.1 + 0.06 + 0.375 + 1.5;
        assert!((cost(&price, &usage) - expected).abs() < 1e-9);
        let uncached = Price {
            cached_input: None,
            cache_write: None,
            ..price
        };
        assert!((cost(&uncached, &usage) - (3.0 + 1.5)).abs() < 1e-9);
    }

    #[test]
    fn header_values_are_plain_decimals() {
        assert_eq!(format_usd(0.0), "0");
        assert_eq!(format_usd(0.000_015), "0.000015");
        assert_eq!(format_usd(12.5), "12.5");
    }
}
