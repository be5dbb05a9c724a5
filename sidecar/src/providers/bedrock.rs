//! PLACEHOLDER: being written.

use llmesh_crds::config::ProviderConfig;
use llmesh_crds::resources::ProviderKind;

use super::{ChatReply, Deps, Provider, ProviderError};
use crate::api::chat::ChatRequest;

/// PLACEHOLDER.
#[derive(Debug)]
pub struct Bedrock;

impl Bedrock {
    /// PLACEHOLDER.
    ///
    /// # Errors
    /// Never yet.
    pub fn new(_config: &ProviderConfig, _deps: &Deps) -> Result<Self, ProviderError> {
        Ok(Self)
    }
}

#[async_trait::async_trait]
impl Provider for Bedrock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bedrock
    }

    async fn chat(&self, _request: &ChatRequest, _model: &str) -> Result<ChatReply, ProviderError> {
        Err(ProviderError::unsupported("not yet"))
    }
}
