//! Conversions between the formats apps speak and the internal one (OpenAI
//! Chat Completions): one module per format pair, each stream renderer
//! apart. Provider adapters convert the internal format outward.

pub mod messages;
pub mod messages_stream;
pub mod responses;
pub mod responses_stream;

use bytes::{BufMut, Bytes, BytesMut};

use crate::api::Usage;
use crate::api::chat::ChatChunk;
use crate::error::ApiError;

/// Writes an internal chunk stream as another format's server-sent events.
pub trait Render: Send {
    /// The frames for one chunk.
    fn chunk(&mut self, chunk: ChatChunk, frames: &mut Vec<Bytes>);
    /// Usage reported for accounting, which the format may show at the end.
    fn usage(&mut self, usage: &Usage);
    /// The frames that end the stream after a failure.
    fn failed(&mut self, error: &ApiError, frames: &mut Vec<Bytes>);
    /// The frames that end a complete stream.
    fn finish(&mut self, frames: &mut Vec<Bytes>);
}

/// One `event:`/`data:` frame.
pub fn sse_event(name: &str, json: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(name.len() + json.len() + 16);
    frame.put_slice(b"event: ");
    frame.put_slice(name.as_bytes());
    frame.put_slice(b"\ndata: ");
    frame.put_slice(json);
    frame.put_slice(b"\n\n");
    frame.freeze()
}
