//! The webhook's serving certificate when kwarm keeps it itself (WEBHOOK_SECRET): a CA of its
//! own (10 years) signs a serving certificate (1 year) for the webhook's host names. The
//! serving certificate is renewed 30 days before it expires, or when the host names change; the
//! CA a year before it expires, and then the old CA stays in the caBundle until it expires, so
//! replicas still serving a certificate of the old CA stay trusted. (Until the leader applies
//! the new bundle, at most a minute, an API server may refuse a certificate of the new CA: the
//! webhook fails open, and those pods are admitted ungated.)
//!
//! Pure apart from key generation: the clock comes in; what to store goes out.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::rollout::Endpoint;

const DAY: Duration = Duration::from_secs(24 * 3600);
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The serving certificate is renewed when less than this is left.
pub const SERVING_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The CA is replaced when less than this is left.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);

const NOT_AFTER: &str = "kwarm.io/not-after";
const CA_NOT_AFTER: &str = "kwarm.io/ca-not-after";
const PREVIOUS_CA_NOT_AFTER: &str = "kwarm.io/previous-ca-not-after";
const HOSTS: &str = "kwarm.io/hosts";

/// Everything kept in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub ca_not_after: SystemTime,
    /// The CA this one replaced, while it has not expired.
    pub previous_ca: Option<(String, SystemTime)>,
    pub cert: String,
    pub key: String,
    pub not_after: SystemTime,
    pub hosts: Vec<String>,
}

impl Bundle {
    /// The serving chain: the certificate, then its CA.
    pub fn chain(&self) -> String {
        format!("{}{}", self.cert, self.ca_cert)
    }

    /// The caBundle of the webhook configuration: the CA, and the previous one while it lasts.
    pub fn ca_bundle(&self, now: SystemTime) -> String {
        match &self.previous_ca {
            Some((pem, until)) if *until > now => format!("{}{pem}", self.ca_cert),
            _ => self.ca_cert.clone(),
        }
    }
}

/// What a bundle needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Keep,
    /// A new serving certificate from the same CA.
    Serving,
    /// A new CA (the old one stays trusted while it lasts) and a serving certificate from it.
    Ca,
}

/// The host names the serving certificate must name.
pub fn hosts(endpoint: &Endpoint) -> Vec<String> {
    match endpoint {
        Endpoint::Service { name, namespace } => vec![
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
            format!("{name}.{namespace}"),
            name.clone(),
        ],
        Endpoint::Url(url) => {
            let rest = url.trim_start_matches("https://");
            let authority = rest.split('/').next().unwrap_or_default();
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            };
            vec![host.to_string()]
        }
    }
}

pub fn renewal(bundle: Option<&Bundle>, hosts: &[String], now: SystemTime) -> Renewal {
    let Some(b) = bundle else { return Renewal::Ca };
    if b.ca_not_after < now + CA_RENEW_BEFORE {
        Renewal::Ca
    } else if b.not_after < now + SERVING_RENEW_BEFORE || b.hosts != hosts {
        Renewal::Serving
    } else {
        Renewal::Keep
    }
}

/// A bundle renewed as `renewal` says (`Keep` returns a copy).
pub fn renew(
    bundle: Option<&Bundle>,
    what: Renewal,
    hosts: &[String],
    now: SystemTime,
) -> Result<Bundle, String> {
    let e = |e: rcgen::Error| e.to_string();
    // Certificates and the Secret's annotations keep whole seconds: so does the bundle, so that
    // what is read back from the Secret is what was issued.
    let now = whole_seconds(now);
    let (ca_cert, ca_key, ca_not_after, previous_ca) = match (what, bundle) {
        (Renewal::Keep, Some(b)) => return Ok(b.clone()),
        (Renewal::Serving, Some(b)) => {
            (b.ca_cert.clone(), b.ca_key.clone(), b.ca_not_after, b.previous_ca.clone())
        }
        (_, old) => {
            let key = KeyPair::generate().map_err(e)?;
            let not_after = now + CA_VALIDITY;
            let cert = ca_params(now, not_after).self_signed(&key).map_err(e)?;
            let previous = old.filter(|b| b.ca_not_after > now).map(|b| (b.ca_cert.clone(), b.ca_not_after));
            (cert.pem(), key.serialize_pem(), not_after, previous)
        }
    };
    let ca_key_pair = KeyPair::from_pem(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca_params(now, ca_not_after), ca_key_pair);
    let key = KeyPair::generate().map_err(e)?;
    let not_after = (now + SERVING_VALIDITY).min(ca_not_after);
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(e)?;
    params.distinguished_name.push(DnType::CommonName, hosts.first().cloned().unwrap_or_default());
    params.not_before = offset(now - DAY);
    params.not_after = offset(not_after);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        ca_not_after,
        previous_ca,
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after,
        hosts: hosts.to_vec(),
    })
}

/// The CA's parameters: the same name and key usages every time, so that a CA kept in the
/// Secret signs again without parsing its certificate (the signer is its name and key).
fn ca_params(now: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "kwarm rollout gate CA");
    params.distinguished_name.push(DnType::OrganizationName, "kwarm");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = offset(now - DAY);
    params.not_after = offset(not_after);
    params
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs())
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The Secret's content (type kubernetes.io/tls, so other tools read it too).
pub fn to_secret(bundle: &Bundle, name: &str, namespace: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut data = BTreeMap::from([
        ("tls.crt".to_string(), bytes(&bundle.chain())),
        ("tls.key".to_string(), bytes(&bundle.key)),
        ("ca.crt".to_string(), bytes(&bundle.ca_cert)),
        ("ca.key".to_string(), bytes(&bundle.ca_key)),
    ]);
    let mut annotations = BTreeMap::from([
        (NOT_AFTER.to_string(), rfc3339(bundle.not_after)),
        (CA_NOT_AFTER.to_string(), rfc3339(bundle.ca_not_after)),
        (HOSTS.to_string(), bundle.hosts.join(",")),
    ]);
    if let Some((pem, until)) = &bundle.previous_ca {
        data.insert("previous-ca.crt".into(), bytes(pem));
        annotations.insert(PREVIOUS_CA_NOT_AFTER.into(), rfc3339(*until));
    }
    let mut secret =
        Secret { type_: Some("kubernetes.io/tls".into()), data: Some(data), ..Default::default() };
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    secret.metadata.annotations = Some(annotations);
    secret.metadata.labels =
        Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "kwarm".to_string())]));
    secret
}

/// The bundle kept in a Secret; `None` when something is missing or unreadable (then a new one
/// is issued).
pub fn from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let annotations = secret.metadata.annotations.as_ref()?;
    let time = |k: &str| annotations.get(k).and_then(|t| humantime::parse_rfc3339(t).ok());
    let ca_cert = text("ca.crt")?;
    let chain = text("tls.crt")?;
    let cert = chain.strip_suffix(ca_cert.as_str())?.to_string();
    let previous_ca = match (text("previous-ca.crt"), time(PREVIOUS_CA_NOT_AFTER)) {
        (Some(pem), Some(until)) => Some((pem, until)),
        _ => None,
    };
    Some(Bundle {
        ca_cert,
        ca_key: text("ca.key")?,
        ca_not_after: time(CA_NOT_AFTER)?,
        previous_ca,
        cert,
        key: text("tls.key")?,
        not_after: time(NOT_AFTER)?,
        hosts: annotations.get(HOSTS)?.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect(),
    })
}

#[cfg(test)]
mod tests;
