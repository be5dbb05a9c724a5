//! Servers that speak OpenAI's API: vLLM, Ollama, Groq, Together, Mistral,
//! DeepSeek, OpenRouter. The same wire format as OpenAI; the base URL is
//! required and the API key optional (local servers often have none).

use llmesh_crds::config::ProviderConfig;

use super::openai::{AuthStyle, Endpoint, OpenAi};
use super::{Deps, ErrorKind, ProviderError};

/// Builds the adapter.
///
/// # Errors
/// No base URL, or a configured header is not valid HTTP.
pub fn new(config: &ProviderConfig, deps: &Deps) -> Result<OpenAi, ProviderError> {
    let base = config.base_url.clone().ok_or_else(|| {
        ProviderError::new(
            ErrorKind::BadRequest,
            "openai-compatible provider needs a baseUrl",
        )
    })?;
    OpenAi::with_endpoint(config, deps, Endpoint::plain(&base)?, AuthStyle::Bearer)
}
