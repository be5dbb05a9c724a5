//! The webhook's certificate: the operator's own CA and a serving
//! certificate it signs, kept in one Secret (`kubernetes.io/tls`, with
//! `ca.crt` beside `tls.crt`/`tls.key`, the layout cert-manager writes too),
//! renewed before expiry, and served through a resolver that swaps it live.
//!
//! Every replica serves what the Secret holds; whichever replica finds it
//! missing or due creates or replaces it, guarded by `resourceVersion`, so
//! two replicas never end up serving different certificates for long.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use parking_lot::RwLock;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;

use super::Error;

/// The CA lives ten years: rotating it means every caBundle changes, so rarely.
const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(10 * 365 * 24);
/// A new CA is made this long before the old one expires; both are trusted meanwhile.
const CA_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(365 * 24);
/// The serving certificate lives 90 days, like an ACME one.
const SERVING_VALIDITY: SignedDuration = SignedDuration::from_hours(90 * 24);
/// It is renewed with a third of its life left, so a week-long operator outage is survivable.
const SERVING_RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);
/// The CA's common name; re-signing needs the same subject to chain to it.
const CA_COMMON_NAME: &str = "llmesh webhook CA";

/// Secret keys of the `kubernetes.io/tls` layout (and the CA key, which only this Secret holds).
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
/// Annotations recording what was issued, so renewal needs no certificate parsing.
const NOT_AFTER_ANNOTATION: &str = "llmesh.io/not-after";
const CA_NOT_AFTER_ANNOTATION: &str = "llmesh.io/ca-not-after";
const NAMES_ANNOTATION: &str = "llmesh.io/dns-names";

/// A CA and a serving certificate, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The CAs clients trust: the current one first, then the previous one during a CA rotation.
    pub trust_pem: String,
    /// The current CA's certificate.
    pub ca_pem: String,
    /// The current CA's private key (absent when certificates come from cert-manager).
    pub ca_key_pem: Option<String>,
    /// The serving certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// When the serving certificate expires (unknown for cert-manager's).
    pub not_after: Option<Timestamp>,
    /// When the CA expires.
    pub ca_not_after: Option<Timestamp>,
    /// The names the serving certificate is for.
    pub names: Vec<String>,
}

impl std::fmt::Debug for Issued {
    // Private keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &self.not_after)
            .field("ca_not_after", &self.ca_not_after)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// The DNS names of the webhook Service `service` in `namespace`, as the API server calls it.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn offset(at: Timestamp) -> Result<time::OffsetDateTime, Error> {
    time::OffsetDateTime::from_unix_timestamp(at.as_second())
        .map_err(|e| Error::StoredCertificate("(clock)".to_owned(), e.to_string()))
}

fn ca_params(now: Timestamp, not_after: Timestamp) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = offset(now)?;
    params.not_after = offset(not_after)?;
    Ok(params)
}

/// Issues what is due at `now` for `names`: a serving certificate signed by
/// the previous CA while that CA has more than a year left, else a new CA
/// (trusted together with the previous one) and a certificate it signs.
///
/// # Errors
/// Key generation or signing failed, or the previous CA key does not parse.
pub fn issue(names: &[String], now: Timestamp, previous: Option<&Issued>) -> Result<Issued, Error> {
    let reusable = previous.and_then(|p| {
        let key = p.ca_key_pem.as_ref()?;
        let expires = p.ca_not_after?;
        (expires.duration_since(now) > CA_RENEW_BEFORE).then_some((p, key, expires))
    });
    let (ca_pem, ca_key, ca_not_after, trust_pem) = match reusable {
        Some((previous, key, expires)) => (
            previous.ca_pem.clone(),
            KeyPair::from_pem(key)?,
            expires,
            previous.trust_pem.clone(),
        ),
        None => {
            let key = KeyPair::generate()?;
            let expires = now + CA_VALIDITY;
            let cert = ca_params(now, expires)?.self_signed(&key)?.pem();
            let trust = match previous {
                Some(old) => format!("{cert}{}", old.ca_pem),
                None => cert.clone(),
            };
            (cert, key, expires, trust)
        }
    };
    // The issuer only needs the CA's subject and key: the same subject as it was made with.
    let issuer = Issuer::new(ca_params(now, ca_not_after)?, &ca_key);
    let serving_key = KeyPair::generate()?;
    let not_after = now + SERVING_VALIDITY;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("llmesh-webhook", String::as_str),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(now)?;
    params.not_after = offset(not_after)?;
    let cert = params.signed_by(&serving_key, &issuer)?;
    Ok(Issued {
        trust_pem,
        ca_pem,
        ca_key_pem: Some(ca_key.serialize_pem()),
        cert_pem: cert.pem(),
        key_pem: serving_key.serialize_pem(),
        not_after: Some(not_after),
        ca_not_after: Some(ca_not_after),
        names: names.to_vec(),
    })
}

/// Whether `issued` must be replaced at `now` to serve `names`.
pub fn renewal_due(issued: &Issued, names: &[String], now: Timestamp) -> bool {
    let soon =
        |at: Option<Timestamp>, before: SignedDuration| at.is_none_or(|at| at.duration_since(now) <= before);
    issued.names != names
        || issued.ca_key_pem.is_none()
        || soon(issued.not_after, SERVING_RENEW_BEFORE)
        || soon(issued.ca_not_after, CA_RENEW_BEFORE)
}

/// The Secret holding `issued`.
pub fn to_secret(issued: &Issued, namespace: &str, name: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut data = BTreeMap::from([
        (TLS_CRT.to_owned(), bytes(&issued.cert_pem)),
        (TLS_KEY.to_owned(), bytes(&issued.key_pem)),
        (CA_CRT.to_owned(), bytes(&issued.trust_pem)),
    ]);
    if let Some(key) = &issued.ca_key_pem {
        data.insert(CA_KEY.to_owned(), bytes(key));
    }
    let mut annotations = BTreeMap::from([(NAMES_ANNOTATION.to_owned(), issued.names.join(","))]);
    for (key, at) in [
        (NOT_AFTER_ANNOTATION, issued.not_after),
        (CA_NOT_AFTER_ANNOTATION, issued.ca_not_after),
    ] {
        if let Some(at) = at {
            annotations.insert(key.to_owned(), at.to_string());
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            annotations: Some(annotations),
            labels: Some(BTreeMap::from([(
                crate::configmap::MANAGED_BY_LABEL.to_owned(),
                crate::configmap::MANAGED_BY.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// What a Secret holds, when it has at least a certificate and key (an
/// operator-made Secret, or cert-manager's).
pub fn from_secret(secret: &Secret) -> Option<Issued> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| data.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let annotations = secret.annotations();
    let at = |key: &str| annotations.get(key).and_then(|v| v.parse::<Timestamp>().ok());
    let trust_pem = text(CA_CRT).unwrap_or_default();
    // The current CA is the first certificate of the trust bundle.
    let ca_pem = trust_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap_or_default()
        .to_owned();
    Some(Issued {
        ca_pem,
        trust_pem,
        ca_key_pem: text(CA_KEY),
        cert_pem: text(TLS_CRT)?,
        key_pem: text(TLS_KEY)?,
        not_after: at(NOT_AFTER_ANNOTATION),
        ca_not_after: at(CA_NOT_AFTER_ANNOTATION),
        names: annotations
            .get(NAMES_ANNOTATION)
            .map(|n| n.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// The rustls key for `issued`.
///
/// # Errors
/// The certificate or key does not parse, or the key type is not supported.
pub fn certified_key(issued: &Issued) -> Result<Arc<CertifiedKey>, Error> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| Error::StoredCertificate(what.to_owned(), e.to_string());
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(TLS_CRT, &e))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(|e| bad(TLS_KEY, &e))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// Serves whichever certificate was set last; renewals swap it without a restart.
#[derive(Debug)]
pub struct CertResolver(RwLock<Arc<CertifiedKey>>);

impl CertResolver {
    /// A resolver serving `issued`.
    ///
    /// # Errors
    /// As [`certified_key`].
    pub fn new(issued: &Issued) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self(RwLock::new(certified_key(issued)?))))
    }

    /// Serves `issued` from now on.
    ///
    /// # Errors
    /// As [`certified_key`]; the previous certificate keeps serving.
    pub fn set(&self, issued: &Issued) -> Result<(), Error> {
        *self.0.write() = certified_key(issued)?;
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read()))
    }
}

/// The TLS configuration of the webhook server: ring, like the rest of the
/// operator, and HTTP/1.1 (what the API server speaks to webhooks).
///
/// # Errors
/// The crypto provider supports none of the default protocol versions (a build problem).
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, Error> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Where the certificate lives and what it is for.
#[derive(Clone, Debug)]
pub struct CertSettings {
    /// The Secret's namespace (the operator's).
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The names the serving certificate must cover.
    pub names: Vec<String>,
    /// `false`: the Secret is cert-manager's, only read, never written.
    pub self_managed: bool,
}

/// Reads the certificate Secret and, when self-managed, creates or renews
/// it as due. Returns what the Secret holds afterwards.
///
/// # Errors
/// An API call failed, issuing failed, or (cert-manager) the Secret is missing or incomplete.
pub async fn ensure(client: &Client, settings: &CertSettings, now: Timestamp) -> Result<Issued, Error> {
    let api = Api::<Secret>::namespaced(client.clone(), &settings.namespace);
    let what = || format!("Secret {}/{}", settings.namespace, settings.secret);
    let existing = api
        .get_opt(&settings.secret)
        .await
        .map_err(|e| Error::api(format!("reading {}", what()), e))?;
    let current = existing.as_ref().and_then(from_secret);
    if !settings.self_managed {
        return current.ok_or_else(|| Error::StoredCertificate(what(), "no tls.crt/tls.key yet".to_owned()));
    }
    if let Some(current) = &current
        && !renewal_due(current, &settings.names, now)
    {
        return Ok(current.clone());
    }
    let issued = issue(&settings.names, now, current.as_ref())?;
    let mut secret = to_secret(&issued, &settings.namespace, &settings.secret);
    let written = match existing {
        None => api.create(&PostParams::default(), &secret).await,
        Some(existing) => {
            // A replica that renewed in between wins; this one reads its result next time.
            secret.metadata.resource_version = existing.resource_version();
            api.replace(&settings.secret, &PostParams::default(), &secret)
                .await
        }
    };
    match written {
        Ok(_) => {
            tracing::info!(secret = %what(), not_after = ?issued.not_after, "webhook certificate issued");
            Ok(issued)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let winner = api
                .get(&settings.secret)
                .await
                .map_err(|e| Error::api(format!("reading {}", what()), e))?;
            from_secret(&winner).ok_or_else(|| Error::StoredCertificate(what(), "incomplete".to_owned()))
        }
        Err(e) => Err(Error::api(format!("writing {}", what()), e)),
    }
}

/// Points every webhook of the `MutatingWebhookConfiguration` `name` at the
/// operator with `trust_pem` as its CA bundle: the in-cluster Service as
/// registered, or `url` (development mode, operator outside the cluster).
/// Writes only what differs.
///
/// # Errors
/// Reading or patching the configuration failed.
pub async fn publish_ca_bundle(
    client: &Client,
    name: &str,
    trust_pem: &str,
    url: Option<&str>,
) -> Result<bool, Error> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {name}");
    let config = api
        .get(name)
        .await
        .map_err(|e| Error::api(format!("reading {what}"), e))?;
    let bundle = ByteString(trust_pem.as_bytes().to_vec());
    let mut operations = Vec::new();
    for (index, webhook) in config.webhooks.iter().flatten().enumerate() {
        let mut client_config = webhook.client_config.clone();
        if let Some(url) = url {
            client_config.url = Some(url.to_owned());
            client_config.service = None;
        }
        client_config.ca_bundle = Some(bundle.clone());
        if client_config != webhook.client_config {
            // The `test` guards against the list changing between the read and this patch.
            operations.push(
                json!({"op": "test", "path": format!("/webhooks/{index}/name"), "value": webhook.name}),
            );
            operations.push(json!({"op": "replace", "path": format!("/webhooks/{index}/clientConfig"), "value": client_config}));
        }
    }
    if operations.is_empty() {
        return Ok(false);
    }
    let patch: json_patch::Patch = serde_json::from_value(json!(operations))
        .map_err(|e| Error::StoredCertificate(what.clone(), e.to_string()))?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|e| Error::api(format!("patching {what}"), e))?;
    tracing::info!(configuration = %name, "webhook CA bundle published");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        service_names("llmesh-webhook", "llmesh-system")
    }

    #[test]
    fn serving_certificates_are_renewed_under_the_same_ca_until_it_ages() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let first = issue(&names(), now, None).expect("issued");
        assert!(!renewal_due(&first, &names(), now));
        let later = now + SignedDuration::from_hours(61 * 24);
        assert!(renewal_due(&first, &names(), later), "30 days before expiry");
        let renewed = issue(&names(), later, Some(&first)).expect("renewed");
        assert_eq!(renewed.ca_pem, first.ca_pem, "same CA");
        assert_ne!(renewed.cert_pem, first.cert_pem);

        let ca_aging = now + SignedDuration::from_hours(9 * 365 * 24 + 24);
        let rotated = issue(&names(), ca_aging, Some(&renewed)).expect("rotated");
        assert_ne!(rotated.ca_pem, first.ca_pem, "a new CA");
        assert!(
            rotated.trust_pem.ends_with(&first.ca_pem),
            "the old CA is still trusted"
        );
        assert!(
            renewal_due(&first, &["other.example".to_owned()], now),
            "names changed"
        );
    }

    #[test]
    fn the_secret_round_trips_and_its_debug_hides_keys() {
        let now = Timestamp::now();
        let issued = issue(&names(), now, None).expect("issued");
        let secret = to_secret(&issued, "llmesh-system", "llmesh-webhook-tls");
        let back = from_secret(&secret).expect("complete");
        assert_eq!(back.cert_pem, issued.cert_pem);
        assert_eq!(back.ca_pem, issued.ca_pem);
        assert_eq!(back.names, issued.names);
        assert_eq!(
            back.not_after.map(|t| t.as_second()),
            issued.not_after.map(|t| t.as_second())
        );
        let debug = format!("{issued:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        certified_key(&issued).expect("rustls accepts it");
    }
}
