//! Authenticate: which virtual key a request carries, and whether that key
//! may use the route it asks for.
//!
//! Keys are known only by their hash ([`key_hash`]); a presented key is
//! hashed and compared with every configured hash in constant time, so the
//! time an answer takes says nothing about how close a guess was.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use llmesh_crds::config::{KeyConfig, key_hash};
use subtle::ConstantTimeEq;

/// Why a request was refused before routing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key in any of the accepted headers, and no pod default key.
    #[error(
        "no API key: send your llmesh virtual key as `Authorization: Bearer <key>` (or `x-api-key`, `api-key`)"
    )]
    Missing,
    /// The presented key is not one of this gateway's virtual keys.
    #[error("the API key is not a virtual key of this gateway")]
    Unknown,
    /// The pod's default key (`llmesh.io/virtual-key`) names no configured key.
    #[error("the pod's default virtual key {0} is not configured; check the VirtualKey's status")]
    DefaultMissing(String),
    /// The key is switched off.
    #[error("virtual key {0} is disabled")]
    Disabled(String),
    /// The key's `expiresAt` has passed.
    #[error("virtual key {key} expired at {at}")]
    Expired {
        /// The key's name.
        key: String,
        /// When, RFC 3339.
        at: String,
    },
    /// The key's allowlist does not include the route.
    #[error("virtual key {key} may not use route {route}; it may use: {allowed}")]
    RouteNotAllowed {
        /// The key's name.
        key: String,
        /// The route asked for.
        route: String,
        /// The routes it may use, comma-separated.
        allowed: String,
    },
}

impl AuthError {
    /// True for the one refusal that is about permission, not identity (403, not 401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::RouteNotAllowed { .. })
    }
}

/// A configured virtual key. Its name is the short id used in logs and metrics.
#[derive(Debug)]
pub struct Key {
    /// The `VirtualKey` name.
    pub name: String,
    /// Its configuration.
    pub config: KeyConfig,
}

impl Key {
    /// Whether this key may call `route`.
    ///
    /// # Errors
    /// [`AuthError::RouteNotAllowed`] naming the route and the allowlist.
    pub fn allow_route(&self, route: &str) -> Result<(), AuthError> {
        let allowed = &self.config.allowed_routes;
        if allowed.is_empty() || allowed.iter().any(|r| r == route) {
            return Ok(());
        }
        Err(AuthError::RouteNotAllowed {
            key: self.name.clone(),
            route: route.to_owned(),
            allowed: allowed.join(", "),
        })
    }

    fn check_usable(&self, now_unix: i64) -> Result<(), AuthError> {
        if self.config.disabled {
            return Err(AuthError::Disabled(self.name.clone()));
        }
        match self.config.expires_at_unix {
            Some(at) if now_unix >= at => Err(AuthError::Expired {
                key: self.name.clone(),
                at: jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string()),
            }),
            _ => Ok(()),
        }
    }
}

/// The keys of one configuration.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<Arc<Key>>,
}

impl Keys {
    /// The keys of a configuration.
    pub fn new(config: &BTreeMap<String, KeyConfig>) -> Self {
        let keys = config
            .iter()
            .map(|(name, config)| {
                Arc::new(Key {
                    name: name.clone(),
                    config: config.clone(),
                })
            })
            .collect();
        Self { keys }
    }

    /// Who is calling. With no keys configured the gateway is open and this
    /// is `None`. A key the app presents wins; otherwise the pod's default key
    /// applies — also when the app presents something that is no llmesh key
    /// (an SDK insists on some key, and an app without key handling sends a
    /// placeholder), so such apps are still attributed and limited.
    ///
    /// # Errors
    /// The key is missing, unknown, disabled or expired.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        default_key: Option<&str>,
        now_unix: i64,
    ) -> Result<Option<Arc<Key>>, AuthError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let presented = presented_key(headers);
        let by_secret = presented.and_then(|raw| self.by_secret(raw, now_unix));
        let key = match (by_secret, default_key) {
            (Some(key), _) => key,
            (None, Some(name)) => self
                .keys
                .iter()
                .find(|k| k.name == name)
                .cloned()
                .ok_or_else(|| AuthError::DefaultMissing(name.to_owned()))?,
            (None, None) if presented.is_some() => return Err(AuthError::Unknown),
            (None, None) => return Err(AuthError::Missing),
        };
        key.check_usable(now_unix)?;
        Ok(Some(key))
    }

    /// The key whose hash, or a rotated-out hash still in its grace period,
    /// equals the presented key's. Every hash is compared, match or not, in
    /// constant time.
    fn by_secret(&self, raw: &[u8], now_unix: i64) -> Option<Arc<Key>> {
        let presented = key_hash(raw);
        let matches = |hash: &str| bool::from(hash.as_bytes().ct_eq(presented.as_bytes()));
        let mut found = None;
        for key in &self.keys {
            let current = matches(&key.config.key_hash);
            let mut previous = false;
            for old in &key.config.previous_key_hashes {
                previous |= matches(&old.hash) && now_unix < old.valid_until_unix;
            }
            if current || previous {
                found = Some(key.clone());
            }
        }
        found
    }
}

// Names as values: a lookup by string parses the name on every request.
static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
static API_KEY: http::HeaderName = http::HeaderName::from_static("api-key");

/// The key in `Authorization: Bearer`, `x-api-key` or `api-key` (the
/// OpenAI, Anthropic and Azure conventions), in that order.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
    bearer
        .or_else(|| headers.get(&X_API_KEY).map(|v| v.as_bytes()))
        .or_else(|| headers.get(&API_KEY).map(|v| v.as_bytes()))
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use llmesh_crds::config::PreviousKey;

    use super::*;

    fn keys() -> Keys {
        let key = |secret: &str| KeyConfig {
            key_hash: key_hash(secret.as_bytes()),
            previous_key_hashes: Vec::new(),
            allowed_routes: Vec::new(),
            requests_per_minute: None,
            tokens_per_minute: None,
            budget: None,
            team: None,
            feature: None,
            expires_at_unix: None,
            disabled: false,
        };
        let mut config = BTreeMap::new();
        config.insert("good".to_owned(), key("sk-good"));
        config.insert(
            "off".to_owned(),
            KeyConfig {
                disabled: true,
                ..key("sk-off")
            },
        );
        config.insert(
            "old".to_owned(),
            KeyConfig {
                expires_at_unix: Some(1_000),
                ..key("sk-old")
            },
        );
        config.insert(
            "rotated".to_owned(),
            KeyConfig {
                previous_key_hashes: vec![PreviousKey {
                    hash: key_hash(b"sk-replaced"),
                    valid_until_unix: 2_000,
                }],
                ..key("sk-new")
            },
        );
        config.insert(
            "narrow".to_owned(),
            KeyConfig {
                allowed_routes: vec!["cheap".into()],
                ..key("sk-narrow")
            },
        );
        Keys::new(&config)
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).expect("header"));
        headers
    }

    fn name(result: Result<Option<Arc<Key>>, AuthError>) -> Result<String, AuthError> {
        result.map(|k| k.map(|k| k.name.clone()).unwrap_or_default())
    }

    #[test]
    fn each_header_convention_identifies_the_key() {
        let keys = keys();
        for (header, value) in [
            ("authorization", "Bearer sk-good"),
            ("authorization", "bearer  sk-good "),
            ("x-api-key", "sk-good"),
            ("api-key", "sk-good"),
        ] {
            assert_eq!(
                name(keys.authenticate(&headers(header, value), None, 0)),
                Ok("good".into())
            );
        }
    }

    #[test]
    fn refusals_say_why() {
        let keys = keys();
        let auth = |value: &str, default: Option<&str>, now| {
            name(keys.authenticate(&headers("authorization", value), default, now))
        };
        assert_eq!(
            name(keys.authenticate(&HeaderMap::new(), None, 0)),
            Err(AuthError::Missing)
        );
        assert_eq!(auth("Bearer sk-nope", None, 0), Err(AuthError::Unknown));
        assert_eq!(
            auth("Bearer sk-off", None, 0),
            Err(AuthError::Disabled("off".into()))
        );
        assert_eq!(auth("Bearer sk-old", None, 999), Ok("old".into()));
        assert_eq!(
            auth("Bearer sk-old", None, 1_000),
            Err(AuthError::Expired {
                key: "old".into(),
                at: "1970-01-01T00:16:40Z".into()
            })
        );
        assert_eq!(auth("Bearer sk-placeholder", Some("good"), 0), Ok("good".into()));
        assert_eq!(
            auth("Bearer sk-narrow", Some("good"), 0),
            Ok("narrow".into()),
            "a real key wins"
        );
        assert_eq!(auth("", Some("off"), 0), Err(AuthError::Disabled("off".into())));
        assert_eq!(
            auth("", Some("gone"), 0),
            Err(AuthError::DefaultMissing("gone".into()))
        );
    }

    #[test]
    fn a_rotated_out_key_works_until_its_grace_period_ends() {
        let keys = keys();
        let auth = |value: &str, now| name(keys.authenticate(&headers("x-api-key", value), None, now));
        assert_eq!(auth("sk-new", 5_000), Ok("rotated".into()));
        assert_eq!(auth("sk-replaced", 1_999), Ok("rotated".into()));
        assert_eq!(auth("sk-replaced", 2_000), Err(AuthError::Unknown));
    }

    #[test]
    fn no_keys_configured_means_an_open_gateway() {
        let open = Keys::default();
        assert!(matches!(open.authenticate(&HeaderMap::new(), None, 0), Ok(None)));
    }

    #[test]
    fn the_allowlist_names_the_route() {
        let keys = keys();
        let narrow = keys
            .authenticate(&headers("x-api-key", "sk-narrow"), None, 0)
            .expect("valid")
            .expect("a key");
        assert_eq!(narrow.allow_route("cheap"), Ok(()));
        let refused = narrow.allow_route("smart").expect_err("not allowed");
        assert!(refused.is_forbidden());
        assert_eq!(
            refused.to_string(),
            "virtual key narrow may not use route smart; it may use: cheap"
        );
    }
}
