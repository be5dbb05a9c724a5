//! Server-sent events decoding, shared by every adapter whose upstream streams SSE.
//!
//! Incremental: bytes arrive in arbitrary pieces and each complete event is
//! handed on at once, so streaming never waits for more than one event.

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::ProviderError;

/// The longest line accepted from an upstream. A provider's event is a few
/// KiB at most; the bound keeps a broken upstream from growing the buffer
/// without end.
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with newlines.
    pub data: String,
}

/// Incremental SSE parser (the WHATWG event-stream format).
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
    skip_leading_lf: bool,
}

impl SseDecoder {
    /// Feeds bytes and returns the events they complete.
    ///
    /// # Errors
    /// A line longer than the bound.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, ProviderError> {
        let mut events = Vec::new();
        let mut input = bytes;
        if self.skip_leading_lf && input.first() == Some(&b'\n') {
            input = &input[1..];
        }
        self.skip_leading_lf = false;
        self.buffer.extend_from_slice(input);

        let mut start = 0;
        while let Some(offset) = self.buffer[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + offset;
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            let mut next = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.skip_leading_lf = true,
                    Some(_) => {}
                }
            }
            start = next;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE_BYTES {
            return Err(ProviderError::invalid_response(
                "upstream sent an over-long stream line",
            ));
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.has_data.then(|| SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
            self.event = None;
            self.has_data = false;
            return event;
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// Turns an upstream body into a stream of SSE events. The body's own
/// failures (a broken answer, a read timeout) pass through with their class;
/// the caller decides whether a clean end of the body was a complete stream.
pub fn events<S>(body: S) -> impl Stream<Item = Result<SseEvent, ProviderError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, ProviderError>> + Send + 'static,
{
    let mut decoder = SseDecoder::default();
    body.flat_map(move |piece| {
        let items: Vec<Result<SseEvent, ProviderError>> = match piece {
            Ok(bytes) => match decoder.push(&bytes) {
                Ok(events) => events.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            },
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(items)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(text: &str, piece: usize) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in text.as_bytes().chunks(piece) {
            events.extend(decoder.push(chunk).expect("no over-long line"));
        }
        events
    }

    #[test]
    fn events_are_the_same_however_the_bytes_are_split() {
        let text = "event: message_start\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: line1\r\ndata: line2\r\n\r\ndata:[DONE]\r\r";
        let expected = vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                data: "line1\nline2".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in 1..=text.len() {
            assert_eq!(decode_in_pieces(text, piece), expected, "piece size {piece}");
        }
    }

    #[test]
    fn an_event_without_its_blank_line_is_not_dispatched() {
        assert_eq!(decode_in_pieces("data: partial\n", 4), vec![]);
    }

    #[test]
    fn an_endless_line_is_an_error_not_unbounded_memory() {
        let mut decoder = SseDecoder::default();
        let big = vec![b'x'; MAX_LINE_BYTES + 1];
        assert!(decoder.push(&big).is_err());
    }
}
