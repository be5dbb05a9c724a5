//! PLACEHOLDER: being written.

use llmesh_crds::config::ProviderConfig;
use llmesh_crds::resources::ProviderKind;

use super::{ChatReply, Deps, Provider, ProviderError};
use crate::api::chat::ChatRequest;

/// PLACEHOLDER.
#[derive(Debug)]
pub struct Anthropic;

impl Anthropic {
    /// PLACEHOLDER.
    ///
    /// # Errors
    /// Never yet.
    pub fn new(_config: &ProviderConfig, _deps: &Deps) -> Result<Self, ProviderError> {
        Ok(Self)
    }
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    async fn chat(&self, _request: &ChatRequest, _model: &str) -> Result<ChatReply, ProviderError> {
        Err(ProviderError::unsupported("not yet"))
    }
}
