//! `POST /v1/embeddings`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An embeddings request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct EmbeddingsRequest {
    /// The route alias.
    pub model: String,
    /// One text or several (token arrays are passed through to OpenAI-style upstreams).
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Output size, for models that allow shortening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// End-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `input`: text, texts, or token ids.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// Token ids (OpenAI-style upstreams only).
    Tokens(Value),
}

impl EmbeddingInput {
    /// The texts, or `None` for token-id input.
    pub fn texts(&self) -> Option<Vec<&str>> {
        match self {
            Self::One(s) => Some(vec![s.as_str()]),
            Self::Many(v) => Some(v.iter().map(String::as_str).collect()),
            Self::Tokens(_) => None,
        }
    }
}

/// An embeddings answer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: String,
    /// One per input.
    pub data: Vec<Embedding>,
    /// The upstream model.
    pub model: String,
    /// Input tokens.
    pub usage: EmbeddingsUsage,
}

/// One vector.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input.
    pub index: u32,
    /// The vector.
    pub embedding: Vec<f32>,
}

/// Embeddings token counts.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct EmbeddingsUsage {
    /// Input tokens.
    pub prompt_tokens: u64,
    /// The same number.
    pub total_tokens: u64,
}

/// A vector as OpenAI's `encoding_format: base64` sends it: the
/// little-endian bytes of its `f32`s, base64-encoded.
pub fn base64_vector(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl EmbeddingsResponse {
    /// The JSON body for an app that asked for `encoding_format` (`float` or `base64`).
    pub fn to_json(&self, encoding_format: Option<&str>) -> Value {
        let mut body = serde_json::to_value(self).unwrap_or_default();
        if encoding_format == Some("base64") {
            for (item, embedding) in body["data"].as_array_mut().into_iter().flatten().zip(&self.data) {
                item["embedding"] = Value::String(base64_vector(&embedding.embedding));
            }
        }
        body
    }

    /// Builds a response from vectors in input order.
    pub fn new(model: &str, vectors: Vec<Vec<f32>>, prompt_tokens: u64) -> Self {
        Self {
            object: "list".to_owned(),
            data: vectors
                .into_iter()
                .enumerate()
                .map(|(i, embedding)| Embedding {
                    object: "embedding".to_owned(),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    embedding,
                })
                .collect(),
            model: model.to_owned(),
            usage: EmbeddingsUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }
}
