//! OTLP/protobuf encoding of finished spans (`ExportTraceServiceRequest`),
//! written field by field: the few messages a span needs do not justify a
//! code generator and its build time.

use super::{Attribute, SpanData, Value};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field << 3 | u32::from(wire)));
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, LEN);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A string field; empty strings are the default and left out.
    fn string(&mut self, field: u32, text: &str) {
        if !text.is_empty() {
            self.bytes(field, text.as_bytes());
        }
    }

    fn message(&mut self, field: u32, message: &Message) {
        self.bytes(field, &message.0);
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, VARINT);
            self.varint(value);
        }
    }
}

/// `AnyValue`.
fn any_value(value: &Value) -> Message {
    let mut any = Message::default();
    match value {
        Value::Str(text) => any.bytes(1, text.as_bytes()),
        Value::Bool(flag) => {
            any.key(2, VARINT);
            any.varint(u64::from(*flag));
        }
        Value::Int(number) => {
            any.key(3, VARINT);
            // Two's complement, as protobuf's int64 is written.
            any.varint(*number as u64);
        }
        Value::Double(number) => {
            any.fixed64(4, number.to_bits());
        }
        Value::StrArray(items) => {
            let mut array = Message::default();
            for item in items {
                array.message(1, &any_value(&Value::Str(item.clone())));
            }
            any.message(5, &array);
        }
    }
    any
}

/// `KeyValue`.
fn key_value(attribute: &Attribute) -> Message {
    let mut pair = Message::default();
    pair.string(1, attribute.0);
    pair.message(2, &any_value(&attribute.1));
    pair
}

/// `Span`.
fn span(data: &SpanData) -> Message {
    let mut span = Message::default();
    span.bytes(1, &data.context.trace_id);
    span.bytes(2, &data.context.span_id);
    span.string(3, &data.context.trace_state);
    if let Some(parent) = &data.parent {
        span.bytes(4, parent);
    }
    span.string(5, &data.name);
    span.uint(6, data.kind as u64);
    span.fixed64(7, data.start_ns);
    span.fixed64(8, data.end_ns);
    for attribute in &data.attributes {
        span.message(9, &key_value(attribute));
    }
    for event in &data.events {
        let mut message = Message::default();
        message.fixed64(1, event.time_ns);
        message.string(2, event.name);
        for attribute in &event.attributes {
            message.message(3, &key_value(attribute));
        }
        span.message(11, &message);
    }
    let mut status = Message::default();
    match &data.error {
        Some(message) => {
            status.string(2, message);
            status.uint(3, 2);
        }
        None => status.uint(3, 0),
    }
    span.message(15, &status);
    span
}

/// An `ExportTraceServiceRequest` with one resource and one scope.
pub fn encode(resource: &[Attribute], spans: &[SpanData]) -> Vec<u8> {
    let mut resource_message = Message::default();
    for attribute in resource {
        resource_message.message(1, &key_value(attribute));
    }
    let mut scope = Message::default();
    scope.string(1, "llmesh");
    scope.string(2, env!("CARGO_PKG_VERSION"));
    let mut scope_spans = Message::default();
    scope_spans.message(1, &scope);
    for data in spans {
        scope_spans.message(2, &span(data));
    }
    let mut resource_spans = Message::default();
    resource_spans.message(1, &resource_message);
    resource_spans.message(2, &scope_spans);
    let mut request = Message::default();
    request.message(1, &resource_spans);
    request.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_negative_ints_are_written_as_protobuf_does() {
        let mut message = Message::default();
        message.varint(300);
        assert_eq!(message.0, [0xac, 0x02]);
        let encoded = any_value(&Value::Int(-1)).0;
        // Field 3 varint, then ten bytes of two's complement.
        assert_eq!(encoded.len(), 11);
        assert_eq!(encoded[0], 3 << 3);
        assert_eq!(encoded[10], 0x01);
    }
}
