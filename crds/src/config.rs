//! The sidecar configuration contract: what the compiler writes and the
//! sidecar reads. JSON, versioned by content hash, and free of secret values —
//! credentials are named by Secret and key, and the sidecar resolves them
//! from its own mounts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::resources::{MockFault, ProviderKind};

/// One namespace's compiled configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// Content hash of everything below; equal versions mean equal behaviour.
    pub version: String,
    /// Provider accounts by `ProviderSecret` name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routes by the alias apps send as `model`.
    pub routes: BTreeMap<String, RouteConfig>,
}

impl SidecarConfig {
    /// Sets `version` to the hash of the content, so that two configs with the
    /// same routes and providers carry the same version whoever compiled them.
    pub fn seal(mut self) -> Self {
        self.version.clear();
        let canonical = serde_json::to_vec(&self).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        self.version = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self
    }

    /// Parses a config file strictly; the error names the path of the bad field.
    ///
    /// # Errors
    /// The JSON is malformed or does not match the contract.
    pub fn from_json(text: &[u8]) -> Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("at {path}: {}", e.into_inner())
        })
    }
}

/// One provider account.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// The API to speak.
    pub kind: ProviderKind,
    /// Endpoint override; `None` means the provider's public endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Where the credential is; never the credential itself.
    pub credentials: Credentials,
    /// Static headers for every upstream request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// AWS region (Bedrock) or residency label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Azure OpenAI settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureConfig>,
    /// Mock provider behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockConfig>,
}

/// References to credentials held in Secrets.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields,
    tag = "type"
)]
pub enum Credentials {
    /// No credential (the mock provider, or a keyless local server).
    None,
    /// One API key.
    ApiKey {
        /// The key.
        api_key: CredentialRef,
    },
    /// AWS credentials for SigV4 signing.
    Aws {
        /// Access key id.
        access_key_id: CredentialRef,
        /// Secret access key.
        secret_access_key: CredentialRef,
        /// Session token for temporary credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<CredentialRef>,
    },
}

/// One key of one Secret.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRef {
    /// The Secret's name.
    pub secret: String,
    /// The key inside it.
    pub key: String,
}

/// Azure OpenAI deployment naming.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureConfig {
    /// The `api-version` query parameter.
    pub api_version: String,
    /// Model → deployment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
}

/// Mock provider behaviour with durations resolved.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockConfig {
    /// Delay before the first token.
    #[serde(default)]
    pub time_to_first_token_ms: u64,
    /// Delay between tokens.
    #[serde(default)]
    pub per_token_ms: u64,
    /// Fixed reply instead of the echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Injected faults, checked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<MockFault>,
}

/// One route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// The `LLMRoute` this came from (for headers, logs and metrics).
    pub resource: String,
    /// The targets, in order.
    pub targets: Vec<TargetConfig>,
    /// Time limits.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
}

/// One upstream model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetConfig {
    /// Key into [`SidecarConfig::providers`].
    pub provider: String,
    /// The upstream model name.
    pub model: String,
    /// Limit for one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Route time limits in milliseconds; `None` means no limit of that kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// The whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Until the first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    /// Between chunks of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}
