//! PLACEHOLDER: being written.

use llmesh_crds::config::ProviderConfig;
use llmesh_crds::resources::ProviderKind;

use super::{ChatReply, Deps, Provider, ProviderError};
use crate::api::chat::ChatRequest;

/// PLACEHOLDER.
#[derive(Debug)]
pub struct Gemini;

impl Gemini {
    /// PLACEHOLDER.
    ///
    /// # Errors
    /// Never yet.
    pub fn new(_config: &ProviderConfig, _deps: &Deps) -> Result<Self, ProviderError> {
        Ok(Self)
    }
}

#[async_trait::async_trait]
impl Provider for Gemini {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }

    async fn chat(&self, _request: &ChatRequest, _model: &str) -> Result<ChatReply, ProviderError> {
        Err(ProviderError::unsupported("not yet"))
    }
}
