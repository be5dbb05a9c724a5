//! Azure OpenAI: OpenAI's wire format, addressed by deployment and
//! `api-version`, authenticated with an `api-key` header.

use llmesh_crds::config::ProviderConfig;

use super::openai::{AuthStyle, Endpoint, OpenAi};
use super::{Deps, ErrorKind, ProviderError};

/// Builds the adapter.
///
/// # Errors
/// No base URL or Azure settings, or a configured header is not valid HTTP.
pub fn new(config: &ProviderConfig, deps: &Deps) -> Result<OpenAi, ProviderError> {
    let (Some(base), Some(azure)) = (&config.base_url, &config.azure) else {
        return Err(ProviderError::new(
            ErrorKind::BadRequest,
            "azure-openai provider needs baseUrl and azure settings",
        ));
    };
    let endpoint = Endpoint::Azure {
        base: base.clone(),
        api_version: azure.api_version.clone(),
        deployments: azure.deployments.clone(),
    };
    OpenAi::with_endpoint(config, deps, endpoint, AuthStyle::ApiKeyHeader)
}
