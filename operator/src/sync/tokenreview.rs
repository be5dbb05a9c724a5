//! TokenReview authentication of the projected service-account tokens
//! sidecars present (audience [`sync::AUDIENCE`]): the API server says
//! whose token it is; the answer binds the connection to the token's
//! namespace and pod, and is cached until the token expires.

use std::collections::HashMap;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use llmesh_crds::sync;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{Authenticator, Identified, Identity, Refused};
use crate::scope::WatchScope;

/// The `extra` key of a TokenReview answer naming the pod a projected token was made for.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Username prefix of service-account tokens.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// A token whose expiry cannot be read is re-checked this often.
const UNKNOWN_EXPIRY_TTL: SignedDuration = SignedDuration::from_secs(300);
/// Cached answers beyond this many are pruned of expired ones first.
const PRUNE_ABOVE: usize = 4096;

/// Asks the API server about each new token.
pub struct TokenReviewer {
    client: Client,
    scope: WatchScope,
    cache: Mutex<HashMap<[u8; 32], (Identity, Timestamp)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// Reviews through `client`; tokens of namespaces outside `scope` are refused.
    pub fn new(client: Client, scope: WatchScope) -> Self {
        Self {
            client,
            scope,
            cache: Mutex::default(),
        }
    }

    fn cached(&self, digest: &[u8; 32], now: Timestamp) -> Option<Identity> {
        let cache = self.cache.lock();
        let (identity, until) = cache.get(digest)?;
        (*until > now).then(|| identity.clone())
    }

    fn remember(&self, digest: [u8; 32], identity: Identity, until: Timestamp, now: Timestamp) {
        let mut cache = self.cache.lock();
        if cache.len() >= PRUNE_ABOVE {
            cache.retain(|_, (_, until)| *until > now);
        }
        cache.insert(digest, (identity, until));
    }

    async fn review(&self, token: &str) -> Result<Identity, Refused> {
        let now = Timestamp::now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.cached(&digest, now) {
            return Ok(identity);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![sync::AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let identity = identity_of(&answer)?;
        if !self.scope.contains(&identity.namespace) {
            return Err(Refused::OtherNamespace {
                token: identity.namespace,
                asked: "a namespace this operator watches".to_owned(),
            });
        }
        let until = expiry(token).unwrap_or(now + UNKNOWN_EXPIRY_TTL);
        self.remember(digest, identity.clone(), until, now);
        Ok(identity)
    }
}

impl Authenticator for TokenReviewer {
    fn identify<'a>(&'a self, token: &'a str) -> Identified<'a> {
        Box::pin(self.review(token))
    }
}

/// The identity an answered TokenReview grants: a service account's
/// namespace (and pod), when the token is valid for our audience.
///
/// # Errors
/// Not authenticated, not for [`sync::AUDIENCE`], or not a service account.
pub fn identity_of(review: &TokenReview) -> Result<Identity, Refused> {
    let status = review.status.as_ref().ok_or(Refused::BadToken)?;
    if status.authenticated != Some(true) {
        return Err(Refused::BadToken);
    }
    // An API server that ignores the audience answers without it: refused too.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == sync::AUDIENCE) {
        return Err(Refused::BadToken);
    }
    let user = status.user.as_ref().ok_or(Refused::BadToken)?;
    let namespace = user
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix(SERVICE_ACCOUNT_PREFIX))
        .and_then(|rest| rest.split_once(':'))
        .map(|(namespace, _account)| namespace.to_owned())
        .filter(|ns| !ns.is_empty())
        .ok_or(Refused::BadToken)?;
    let pod = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|names| names.first().cloned());
    Ok(Identity { namespace, pod })
}

/// When a JWT expires (its `exp` claim), read without checking the
/// signature: only called after the API server accepted the token.
fn expiry(token: &str) -> Option<Timestamp> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Timestamp::from_second(claims.get("exp")?.as_i64()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: i64) -> String {
        let encode = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).expect("json"))
        };
        format!(
            "{}.{}.signature",
            encode(serde_json::json!({"alg": "RS256"})),
            encode(serde_json::json!({"exp": exp, "aud": ["llmesh-sync"]}))
        )
    }

    #[test]
    fn the_expiry_is_the_tokens_exp_claim() {
        assert_eq!(
            expiry(&jwt(1_900_000_000)).map(Timestamp::as_second),
            Some(1_900_000_000)
        );
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry("a.%%%.c"), None);
    }
}
