//! W3C Trace Context: the `traceparent` and `tracestate` headers.

use std::fmt::Write;

/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// The `sampled` bit of `trace-flags`.
const SAMPLED: u8 = 0x01;
/// The longest `tracestate` forwarded: 32 members of at most 256 bytes each
/// are allowed, and a longer one is dropped rather than cut mid-member.
const MAX_TRACESTATE: usize = 8192;

/// Where a span sits in a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace, never all zeros.
    pub trace_id: [u8; 16],
    /// The span, never all zeros.
    pub span_id: [u8; 8],
    /// Whether the trace is recorded.
    pub sampled: bool,
    /// Vendor state carried along unchanged (empty when none).
    pub trace_state: String,
}

impl SpanContext {
    /// Reads the caller's context from its headers; `None` when
    /// `traceparent` is absent or malformed (a new trace then starts, as the
    /// specification asks).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let parent = headers.get(TRACEPARENT)?.to_str().ok()?;
        let mut context = parse_traceparent(parent)?;
        let states: Vec<&str> = headers
            .get_all(TRACESTATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let state = states.join(",");
        if state.len() <= MAX_TRACESTATE && state.is_ascii() {
            context.trace_state = state;
        }
        Some(context)
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn traceparent(&self) -> String {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        hex(&mut text, &self.trace_id);
        text.push('-');
        hex(&mut text, &self.span_id);
        text.push_str(if self.sampled { "-01" } else { "-00" });
        text
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut text = String::with_capacity(32);
        hex(&mut text, &self.trace_id);
        text
    }
}

fn hex(text: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
}

/// Parses a `traceparent` value: `version-traceid-spanid-flags`, lowercase
/// hex. Version `00` must be exactly that; a later version may append
/// fields after a dash, which are ignored. Version `ff`, all-zero ids and
/// anything else malformed give `None`.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let version = decode::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
        return None;
    }
    let trace_id = decode::<16>(&value[3..35])?;
    let span_id = decode::<8>(&value[36..52])?;
    let flags = decode::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & SAMPLED != 0,
        trace_state: String::new(),
    })
}

/// Lowercase hex of exactly `N` bytes.
fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let context = parse_traceparent(VALID).expect("valid");
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(context.sampled);
        assert_eq!(context.traceparent(), VALID);
        let unsampled = parse_traceparent(&VALID.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.sampled);
    }

    #[test]
    fn malformed_values_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let future = format!("{}-what-comes-next", VALID.replacen("00", "01", 1));
        assert!(parse_traceparent(&future).is_some());
        let glued = format!("{}x", VALID.replacen("00", "01", 1));
        assert_eq!(parse_traceparent(&glued), None);
    }

    #[test]
    fn tracestate_is_carried_and_an_oversized_one_dropped() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, VALID.parse().expect("header"));
        headers.append(TRACESTATE, "congo=t61rcWkgMzE".parse().expect("header"));
        headers.append(TRACESTATE, "rojo=00f067aa0ba902b7".parse().expect("header"));
        let context = SpanContext::from_headers(&headers).expect("valid");
        assert_eq!(context.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        headers.insert(TRACESTATE, "a=".repeat(5000).parse().expect("header"));
        assert_eq!(
            SpanContext::from_headers(&headers).expect("valid").trace_state,
            ""
        );
    }
}
