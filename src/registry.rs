//! Resolving warmed tags to the digests their registries serve now, for digest-aware refresh.
//!
//! A manifest `HEAD` per tag through oci-client (which follows the registry's token auth), with
//! the credentials of the pull secrets the holders get, at most [`PER_REGISTRY`] requests at a
//! time to one registry, and a [`Backoff`] per registry after throttling or server errors. A
//! failure is a [`Resolution::Failed`]: reported, never a reason to roll anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use futures::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Serialize;

/// Manifest requests in flight to one registry at most.
pub const PER_REGISTRY: usize = 4;
/// First wait after a registry throttled or failed; doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(30);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What a registry answered for one tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Resolution {
    /// The digest the tag points to (`sha256:…`; for a multi-arch image, the index's).
    Digest {
        digest: String,
    },
    Failed {
        reason: FailureReason,
        message: String,
    },
}

impl Resolution {
    pub fn digest(&self) -> Option<&str> {
        match self {
            Resolution::Digest { digest } => Some(digest),
            Resolution::Failed { .. } => None,
        }
    }
}

/// Why a tag could not be resolved, for metrics and status (bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureReason {
    /// No connection, timeout, TLS.
    Unreachable,
    /// 401/403: credentials missing or refused.
    Auth,
    /// The tag does not exist (any more).
    NotFound,
    /// 429, or a wait after one.
    Throttled,
    /// 5xx.
    Server,
    Other,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Unreachable => "unreachable",
            FailureReason::Auth => "auth",
            FailureReason::NotFound => "not_found",
            FailureReason::Throttled => "throttled",
            FailureReason::Server => "server",
            FailureReason::Other => "other",
        }
    }

    /// Whether the registry asked to be left alone for a while.
    fn backs_off(self) -> bool {
        matches!(self, FailureReason::Throttled | FailureReason::Server | FailureReason::Unreachable)
    }
}

/// Exponential backoff of one registry: after `n` failures in a row, no request for
/// `BACKOFF_BASE * 2^(n-1)` (at most [`BACKOFF_MAX`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    until: Option<SystemTime>,
}

impl Backoff {
    pub fn blocked_until(&self, now: SystemTime) -> Option<SystemTime> {
        self.until.filter(|u| *u > now)
    }

    pub fn failed(&mut self, now: SystemTime) {
        self.failures = self.failures.saturating_add(1);
        let wait = BACKOFF_BASE.saturating_mul(1 << self.failures.saturating_sub(1).min(16)).min(BACKOFF_MAX);
        self.until = now.checked_add(wait);
    }

    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

/// Registry credentials from `.dockerconfigjson` pull secrets: registry host → user and password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials(BTreeMap<String, (String, String)>);

impl Credentials {
    /// Adds the entries of one `.dockerconfigjson` (`{"auths": {host: {auth | username, password}}}`);
    /// entries already known (from an earlier secret) win, as the kubelet tries secrets in order.
    pub fn add_docker_config(&mut self, json: &[u8]) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        let config: Config =
            serde_json::from_slice(json).map_err(|e| format!("not a .dockerconfigjson: {e}"))?;
        for (host, entry) in config.auths {
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format!("{host}: auth is not base64: {e}"))?;
                    let text = String::from_utf8(decoded).map_err(|_| format!("{host}: auth is not text"))?;
                    let (user, password) =
                        text.split_once(':').ok_or_else(|| format!("{host}: auth is not user:password"))?;
                    (user.to_string(), password.to_string())
                }
                (_, Some(user), Some(password)) => (user, password),
                _ => continue,
            };
            self.0.entry(registry_host(&host)).or_insert(pair);
        }
        Ok(())
    }

    /// The auth for `registry` (as in an image reference: `docker.io`, `quay.io`, `host:5000`).
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self.0.get(&registry_host(registry)) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// A docker config key or an image's registry reduced to its host: the scheme and path go
/// (`https://index.docker.io/v1/`), Docker Hub's names become `docker.io`.
pub fn registry_host(key: &str) -> String {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

/// The images worth resolving, by registry: tags only (a digest-pinned image cannot change), or
/// with `pinned` every reference (an access check asks for pinned ones too).
pub fn by_registry<'a>(
    images: impl IntoIterator<Item = &'a String>,
    pinned: bool,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for image in images {
        let Ok(parts) = crate::holder::reference::parse(image) else { continue };
        if parts.digest.is_some() && !pinned {
            continue;
        }
        out.entry(registry_host(&parts.registry)).or_default().push(image.clone());
    }
    out
}

/// Resolves tags with one HTTP client (its token cache kept between rounds) and a backoff per
/// registry.
pub struct Resolver {
    /// `None` when no HTTP client could be built: every check then fails (and is reported).
    client: Option<Client>,
    /// The credentials the client was used with: the client keeps the first credentials it is
    /// given for a registry (and the tokens they bought), so other credentials get a new client.
    used_with: Option<Credentials>,
    insecure: BTreeSet<String>,
    backoff: BTreeMap<String, Backoff>,
    /// Whether digest-pinned references are asked for too (access checks), not only tags.
    pinned: bool,
}

impl Resolver {
    /// A resolver of tags, for digest checks.
    pub fn new(insecure_registries: &BTreeSet<String>) -> Resolver {
        Resolver::build(insecure_registries, false)
    }

    /// A resolver of every reference, pinned ones included: whether given credentials can read
    /// an image's manifest.
    pub fn for_access(insecure_registries: &BTreeSet<String>) -> Resolver {
        Resolver::build(insecure_registries, true)
    }

    fn build(insecure_registries: &BTreeSet<String>, pinned: bool) -> Resolver {
        let client = Resolver::client(insecure_registries);
        Resolver {
            client,
            used_with: None,
            insecure: insecure_registries.clone(),
            backoff: BTreeMap::new(),
            pinned,
        }
    }

    fn client(insecure_registries: &BTreeSet<String>) -> Option<Client> {
        // reqwest (under oci-client) takes the process-wide provider; kube brings its own. An
        // error means one is installed already, which is what is needed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(
                insecure_registries.iter().cloned().collect(),
            ),
            tls_certs_only: if system_ca_store() { Vec::new() } else { bundled_roots() },
            read_timeout: Some(REQUEST_TIMEOUT),
            connect_timeout: Some(Duration::from_secs(5)),
            user_agent: concat!("kwarm/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        // oci-client builds a default HTTP client besides the configured one, and that panics
        // where the system has no CA store: contained here, the checks are then off.
        let client = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || Client::new(config))).ok();
        if client.is_none() {
            tracing::error!(
                "Digest checks are off: no HTTPS client without a system CA store (set SSL_CERT_FILE)"
            );
        }
        client
    }

    /// Resolves every tag among `images` (digest-pinned ones are skipped): registries in
    /// parallel, [`PER_REGISTRY`] at a time within one; a registry backing off is not asked.
    pub async fn resolve(
        &mut self,
        images: &BTreeSet<String>,
        credentials: &Credentials,
        now: SystemTime,
    ) -> BTreeMap<String, Resolution> {
        let groups = by_registry(images, self.pinned);
        // New or rotated credentials: a client of their own (see `used_with`).
        if self.used_with.as_ref().is_some_and(|used| used != credentials) {
            self.client = Resolver::client(&self.insecure);
        }
        self.used_with = Some(credentials.clone());
        let Some(client) = &self.client else {
            let failed = Resolution::Failed {
                reason: FailureReason::Unreachable,
                message: "no HTTPS client: the system has no CA store (set SSL_CERT_FILE)".into(),
            };
            return groups.into_values().flatten().map(|i| (i, failed.clone())).collect();
        };
        let backoff = &self.backoff;
        let rounds = groups.into_iter().map(|(registry, images)| async move {
            if let Some(until) = backoff.get(&registry).and_then(|b| b.blocked_until(now)) {
                let message = format!(
                    "registry {registry} is backed off until {} after errors",
                    humantime::format_rfc3339_seconds(until)
                );
                let failed = Resolution::Failed { reason: FailureReason::Throttled, message };
                return (registry, None, images.into_iter().map(|i| (i, failed.clone())).collect::<Vec<_>>());
            }
            let auth = credentials.for_registry(&registry);
            let results: Vec<(String, Resolution)> = futures::stream::iter(images)
                .map(|image| {
                    let auth = auth.clone();
                    async move {
                        let resolution = resolve_one(client, &image, &auth).await;
                        (image, resolution)
                    }
                })
                .buffer_unordered(PER_REGISTRY)
                .collect()
                .await;
            let backs_off = results
                .iter()
                .any(|(_, r)| matches!(r, Resolution::Failed { reason, .. } if reason.backs_off()));
            (registry, Some(!backs_off), results)
        });
        let mut out = BTreeMap::new();
        for (registry, healthy, results) in futures::future::join_all(rounds).await {
            match healthy {
                Some(true) => self.backoff.entry(registry).or_default().succeeded(),
                Some(false) => self.backoff.entry(registry).or_default().failed(now),
                None => {}
            }
            out.extend(results);
        }
        out
    }
}

/// Whether the system has a CA store the HTTPS client can load (`SSL_CERT_FILE`/`SSL_CERT_DIR`, or
/// a distribution's bundle). kwarm's own image has none.
fn system_ca_store() -> bool {
    const BUNDLES: &[&str] =
        &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
    std::env::var_os("SSL_CERT_FILE").is_some()
        || std::env::var_os("SSL_CERT_DIR").is_some()
        || BUNDLES.iter().any(|b| std::path::Path::new(b).is_file())
}

/// Mozilla's root certificates, compiled in.
fn bundled_roots() -> Vec<oci_client::client::Certificate> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Der,
            data: c.to_vec(),
        })
        .collect()
}

/// The client's form of `image`, built from its parts (the client's own parser is not used:
/// see [`crate::holder::reference`]).
fn oci_reference(image: &str) -> Result<Reference, String> {
    let p = crate::holder::reference::parse(image)?;
    Ok(match (p.tag, p.digest) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(p.registry, p.repository, tag, digest),
        (None, Some(digest)) => Reference::with_digest(p.registry, p.repository, digest),
        (tag, None) => Reference::with_tag(p.registry, p.repository, tag.unwrap_or_else(|| "latest".into())),
    })
}

async fn resolve_one(client: &Client, image: &str, auth: &RegistryAuth) -> Resolution {
    let reference = match oci_reference(image) {
        Ok(r) => r,
        Err(message) => return Resolution::Failed { reason: FailureReason::Other, message },
    };
    match tokio::time::timeout(REQUEST_TIMEOUT * 2, client.fetch_manifest_digest(&reference, auth)).await {
        Ok(Ok(digest)) => Resolution::Digest { digest },
        Ok(Err(e)) => Resolution::Failed { reason: classify(&e), message: e.to_string() },
        Err(_) => Resolution::Failed {
            reason: FailureReason::Unreachable,
            message: format!("no answer within {:?}", REQUEST_TIMEOUT * 2),
        },
    }
}

fn classify(e: &OciDistributionError) -> FailureReason {
    match e {
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => {
            FailureReason::Auth
        }
        OciDistributionError::ImageManifestNotFoundError(_) => FailureReason::NotFound,
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => FailureReason::Auth,
            404 => FailureReason::NotFound,
            429 => FailureReason::Throttled,
            500..=599 => FailureReason::Server,
            _ => FailureReason::Other,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
            if codes.iter().any(|c| c.contains("Unauthorized") || c.contains("Denied")) {
                FailureReason::Auth
            } else if codes.iter().any(|c| c.contains("Unknown")) {
                FailureReason::NotFound
            } else if codes.iter().any(|c| c.contains("TooManyRequests")) {
                FailureReason::Throttled
            } else {
                FailureReason::Other
            }
        }
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
            FailureReason::Unreachable
        }
        _ => FailureReason::Other,
    }
}

#[cfg(test)]
mod tests;
