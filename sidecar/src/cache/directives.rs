//! What a request asks of the cache in its headers: `Cache-Control:
//! no-cache` (refresh: do not read, do write), `no-store` (do not write),
//! `x-llmesh-cache: bypass` (neither) and `x-llmesh-cache-ttl` (this entry's
//! lifetime). A route with `allowOverrides: false` ignores them all.

use std::time::Duration;

use http::HeaderMap;

/// `x-llmesh-cache`: `bypass` on a request; the cache's verdict on a response.
pub const CACHE_HEADER: &str = "x-llmesh-cache";
/// `x-llmesh-cache-ttl`: how long this request's answer may be served (`30s`, `10m`).
pub const CACHE_TTL_HEADER: &str = "x-llmesh-cache-ttl";

/// A cache header of the request has a value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("header {name}: {reason}")]
pub struct InvalidDirective {
    /// The header.
    pub name: &'static str,
    /// Why.
    pub reason: String,
}

/// How the cache treats one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directives {
    /// Serve a stored answer if there is one.
    pub read: bool,
    /// Store the answer.
    pub write: bool,
    /// The entry's lifetime instead of the route's.
    pub ttl: Option<Duration>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            read: true,
            write: true,
            ttl: None,
        }
    }
}

impl Directives {
    /// The request's directives, or the defaults when the route forbids overrides.
    ///
    /// # Errors
    /// [`InvalidDirective`] for an `x-llmesh-cache` value other than
    /// `bypass`, or a TTL that is not a positive duration.
    pub fn from_headers(headers: &HeaderMap, allow_overrides: bool) -> Result<Self, InvalidDirective> {
        let mut directives = Self::default();
        if !allow_overrides {
            return Ok(directives);
        }
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            for part in value.to_str().unwrap_or_default().split(',') {
                match part.trim().to_ascii_lowercase().as_str() {
                    "no-cache" => directives.read = false,
                    "no-store" => directives.write = false,
                    _ => {}
                }
            }
        }
        if let Some(value) = headers.get(CACHE_HEADER) {
            match value.to_str().map(str::trim) {
                Ok(v) if v.eq_ignore_ascii_case("bypass") => {
                    directives.read = false;
                    directives.write = false;
                }
                _ => {
                    return Err(InvalidDirective {
                        name: CACHE_HEADER,
                        reason: "the only value a request may send is bypass".to_owned(),
                    });
                }
            }
        }
        if let Some(value) = headers.get(CACHE_TTL_HEADER) {
            let invalid = |reason: String| InvalidDirective {
                name: CACHE_TTL_HEADER,
                reason,
            };
            let text = value.to_str().map_err(|_| invalid("not ASCII".to_owned()))?;
            match llmesh_crds::duration::parse(text.trim()) {
                Ok(ttl) if ttl.is_zero() => {
                    return Err(invalid(
                        "must be greater than zero; send Cache-Control: no-store instead".to_owned(),
                    ));
                }
                Ok(ttl) => directives.ttl = Some(ttl),
                Err(reason) => return Err(invalid(reason)),
            }
        }
        Ok(directives)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn headers_steer_reads_writes_and_lifetime() {
        // (request headers, (read, write, ttl in seconds))
        type Case<'a> = (&'a [(&'static str, &'static str)], (bool, bool, Option<u64>));
        let cases: &[Case<'_>] = &[
            (&[], (true, true, None)),
            (&[("cache-control", "no-cache")], (false, true, None)),
            (&[("cache-control", "max-age=0, No-Store")], (true, false, None)),
            (&[("cache-control", "no-cache, no-store")], (false, false, None)),
            (&[("x-llmesh-cache", "bypass")], (false, false, None)),
            (&[("x-llmesh-cache-ttl", "90s")], (true, true, Some(90))),
        ];
        for (pairs, (read, write, ttl)) in cases {
            let directives = Directives::from_headers(&headers(pairs), true).expect("valid");
            assert_eq!(
                (
                    directives.read,
                    directives.write,
                    directives.ttl.map(|t| t.as_secs())
                ),
                (*read, *write, *ttl),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn a_route_that_forbids_overrides_ignores_them() {
        let asked = headers(&[("cache-control", "no-cache"), ("x-llmesh-cache", "nonsense")]);
        assert_eq!(
            Directives::from_headers(&asked, false).expect("ignored"),
            Directives::default()
        );
    }

    #[test]
    fn unusable_values_are_refused_naming_the_header() {
        for (pairs, header) in [
            (&[("x-llmesh-cache", "hit")], CACHE_HEADER),
            (&[("x-llmesh-cache-ttl", "0s")], CACHE_TTL_HEADER),
            (&[("x-llmesh-cache-ttl", "soon")], CACHE_TTL_HEADER),
        ] {
            let error = Directives::from_headers(&headers(pairs), true).expect_err("refused");
            assert!(
                error.to_string().starts_with(&format!("header {header}")),
                "{error}"
            );
        }
    }
}
