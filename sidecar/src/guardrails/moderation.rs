//! External moderation: the prompt goes to an OpenAI-style moderation
//! endpoint (`POST {input, model}` → `{results: [{flagged}]}`) with a time
//! limit; a failed or late call is an unavailable verdict the policy fails
//! open or closed on.

use std::sync::Arc;
use std::time::Duration;

use llmesh_crds::config::{CredentialRef, ModerationConfig};
use llmesh_crds::resources::ModerationFailureMode;
use serde::Deserialize;
use serde_json::json;

use crate::credentials::CredentialStore;
use crate::providers::Deps;
use crate::providers::{Answer, UpstreamClient};

/// A configured moderation endpoint.
#[derive(Debug)]
pub struct Moderator {
    url: String,
    api_key: Option<CredentialRef>,
    model: Option<String>,
    timeout: Duration,
    /// Whether an unavailable verdict lets the request through.
    pub fail_open: bool,
    client: UpstreamClient,
    credentials: Arc<CredentialStore>,
}

/// What the endpoint said.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing flagged.
    Allowed,
    /// At least one result flagged.
    Flagged,
    /// No verdict: the reason (never the prompt).
    Unavailable(String),
}

#[derive(Deserialize)]
struct Results {
    results: Vec<Flag>,
}

#[derive(Deserialize)]
struct Flag {
    flagged: bool,
}

impl Moderator {
    /// The endpoint of a policy.
    pub fn new(config: &ModerationConfig, deps: &Deps) -> Self {
        Self {
            url: config.url.clone(),
            api_key: config.api_key.clone(),
            model: config.model.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            fail_open: config.failure_mode == ModerationFailureMode::Open,
            client: deps.client.clone(),
            credentials: deps.credentials.clone(),
        }
    }

    /// Asks for a verdict on `input`.
    pub async fn check(&self, input: &str) -> Verdict {
        match tokio::time::timeout(self.timeout, self.ask(input)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(reason)) => Verdict::Unavailable(reason),
            Err(_) => Verdict::Unavailable(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    async fn ask(&self, input: &str) -> Result<Verdict, String> {
        let mut body = json!({ "input": input });
        if let Some(model) = &self.model {
            body["model"] = json!(model);
        }
        let mut request = self
            .client
            .post(self.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(reference) = &self.api_key {
            let key = self.credentials.resolve(reference).map_err(|e| e.to_string())?;
            request = request.bearer_auth(key.expose());
        }
        let answer = self
            .client
            .send(request.body(body.to_string().into_bytes()))
            .await
            .map_err(|e| e.to_string())?;
        let response = match answer {
            Answer::Success(response) => response,
            Answer::Failure { status, .. } => return Err(format!("status {status}")),
        };
        let bytes = UpstreamClient::body(response).await.map_err(|e| e.to_string())?;
        let results: Results =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a moderation answer: {e}"))?;
        Ok(if results.results.iter().any(|r| r.flagged) {
            Verdict::Flagged
        } else {
            Verdict::Allowed
        })
    }
}
