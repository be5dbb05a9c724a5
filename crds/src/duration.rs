//! Durations as people write them in manifests (`500ms`, `30s`, `2m`, `1h`).

use std::time::Duration;

/// The pattern the CRD schema enforces, so `kubectl apply` rejects a bad
/// duration before the compiler sees it.
pub const PATTERN: &str = r"^[0-9]+(ms|s|m|h)$";

/// Parses `<digits><unit>` with unit `ms`, `s`, `m` or `h`.
///
/// # Errors
/// A message naming the expected form, for a status condition.
pub fn parse(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m or h)"))?;
    let (digits, unit) = text.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} must start with a whole number"))?;
    let millis = match unit {
        "ms" => Some(amount),
        "s" => amount.checked_mul(1_000),
        "m" => amount.checked_mul(60_000),
        "h" => amount.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "duration {text:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_rejects_the_rest() {
        let cases = [
            ("250ms", Ok(Duration::from_millis(250))),
            ("30s", Ok(Duration::from_secs(30))),
            ("2m", Ok(Duration::from_secs(120))),
            ("1h", Ok(Duration::from_secs(3600))),
            ("10", Err("no unit")),
            ("s", Err("whole number")),
            ("5d", Err("unknown unit")),
            ("-5s", Err("whole number")),
            ("99999999999999999h", Err("too large")),
        ];
        for (input, expected) in cases {
            match (parse(input), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }
}
