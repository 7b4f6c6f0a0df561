//! The rollout gate's mutating admission webhook, on WEBHOOK_BIND_ADDRESS over TLS. Every
//! replica serves it from its own watches (followers answer as well as the leader). It only ever
//! adds kwarm's scheduling gate to a pod being created ([`crate::rollout::admit`]); anything it
//! cannot read is let through unchanged, and the webhook configuration fails open too
//! (`failurePolicy: Ignore`, a short timeout).
//!
//! The serving certificate is swapped in place when it is renewed ([`CertStore`]), without
//! restarting the listener.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::WatchConfig;
use crate::error::{Error, Result};
use crate::http::Shared;
use crate::metrics::ResultLabel;
use crate::rollout::{Admission, WarmView, admit, gate_patch};

pub mod certs;

/// Connections served at once (the API server keeps a few open and reuses them).
const MAX_CONNECTIONS: usize = 64;
/// Time a client has for the TLS handshake and for each request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle kept-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The largest AdmissionReview read (a pod is at most ~1.5 MiB in etcd; the review holds it once
/// with `oldObject` empty on CREATE).
const MAX_BODY: usize = 4 << 20;

/// The serving certificate, replaceable while serving.
#[derive(Debug, Default)]
pub struct CertStore(RwLock<Option<Arc<CertifiedKey>>>);

impl CertStore {
    /// Installs a certificate chain and its key (PEM). Fails on PEM or keys rustls refuses.
    pub fn install(&self, chain_pem: &str, key_pem: &str) -> std::result::Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        if chain.is_empty() {
            return Err("certificate: no PEM certificate found".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        match self.0.write() {
            Ok(mut slot) => *slot = Some(certified),
            Err(poisoned) => *poisoned.into_inner() = Some(certified),
        }
        Ok(())
    }

    pub fn ready(&self) -> bool {
        self.0.read().map(|s| s.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok()?.clone()
    }
}

/// What the handler reads.
struct Ctx {
    view: watch::Receiver<Arc<WarmView>>,
    watch: WatchConfig,
    shared: Arc<Shared>,
    /// Reads Deployments the watch has not shown yet (`None`: never, e.g. in unit tests).
    lookup: Option<Lookup>,
}

/// Reading a Deployment the manager has not seen: one just created, whose first pods arrive
/// before the watch event does. Deployments found not watched are remembered for a while, so the
/// pods of unwatched Deployments cost one read per Deployment per [`UNWATCHED_TTL`].
struct Lookup {
    client: kube::Client,
    mode: crate::rollout::GateMode,
    unwatched: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

const UNWATCHED_TTL: Duration = Duration::from_secs(30);
const UNWATCHED_MAX: usize = 10_000;
/// A read that takes longer lets the pod through ungated (the API server waits at most
/// [`TIMEOUT_SECONDS`] in all).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

impl Lookup {
    /// The template's container names when `namespace/name` is a gated Deployment.
    async fn gated(
        &self,
        watch: &WatchConfig,
        namespace: &str,
        name: &str,
    ) -> Option<std::collections::BTreeSet<String>> {
        let key = (namespace.to_string(), name.to_string());
        let now = std::time::Instant::now();
        if let Ok(mut unwatched) = self.unwatched.lock() {
            match unwatched.get(&key) {
                Some(at) if now.duration_since(*at) < UNWATCHED_TTL => return None,
                _ => {}
            }
            if unwatched.len() >= UNWATCHED_MAX {
                unwatched.clear();
            }
        }
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.client.clone(), namespace);
        let deployment = match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(%namespace, deployment = %name, error = %e, "Could not read the pod's Deployment; not gated");
                return None;
            }
            Err(_) => return None,
        };
        let labels = deployment.metadata.labels.clone().unwrap_or_default();
        let summary = crate::images::summarize_deployment(&deployment, watch)
            .filter(|_| watch.enabled && watch.selector.matches(&labels))
            .filter(|s| self.mode.gates(s.rollout_gate));
        if summary.is_none()
            && let Ok(mut unwatched) = self.unwatched.lock()
        {
            unwatched.insert(key, now);
        }
        summary.map(|s| s.containers.iter().cloned().collect())
    }
}

/// Binds WEBHOOK_BIND_ADDRESS (a taken port fails at start) and serves until shutdown. The
/// handshake fails until `certs` holds a certificate.
pub async fn serve(
    address: SocketAddr,
    certs: Arc<CertStore>,
    view: watch::Receiver<Arc<WarmView>>,
    config: &crate::config::Config,
    client: Option<kube::Client>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let watch = config.watch.clone();
    let lookup = match (client, &config.rollout_gate) {
        (Some(client), Some(gate)) => Some(Lookup { client, mode: gate.mode, unwatched: Default::default() }),
        _ => None,
    };
    let listener = TcpListener::bind(address).await.map_err(|source| Error::Listen { address, source })?;
    tracing::info!(%address, "Webhook listening");
    let mut tls = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = Router::new()
        .fallback(post(mutate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(Ctx { view, watch, shared, lookup }));
    tokio::spawn(accept_loop(listener, acceptor, app, shutdown));
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    stop: watch::Receiver<bool>,
) {
    crate::http::accept_bounded(listener, MAX_CONNECTIONS, stop, move |stream| {
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            let _ = connection.await;
        }
    })
    .await
}

async fn mutate(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Response {
    let count = |result: &'static str| {
        ctx.shared.metrics.webhook_admissions.get_or_create(&ResultLabel { result }).inc();
    };
    if body.len() > MAX_BODY {
        count("error");
        return (StatusCode::PAYLOAD_TOO_LARGE, "AdmissionReview too large").into_response();
    }
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(e) => {
            count("error");
            return (StatusCode::BAD_REQUEST, format!("not an AdmissionReview of a Pod: {e}"))
                .into_response();
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            count("error");
            return (StatusCode::BAD_REQUEST, format!("AdmissionReview without a request: {e}"))
                .into_response();
        }
    };
    let response = answer(&ctx, &request, count).await;
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Allowed always; with the gate's patch when the pod waits for its images.
async fn answer(
    ctx: &Ctx,
    request: &AdmissionRequest<Pod>,
    count: impl Fn(&'static str),
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let Some(pod) = &request.object else {
        count("no_object");
        return allowed;
    };
    let namespace = request.namespace.as_deref().or(pod.metadata.namespace.as_deref()).unwrap_or_default();
    let view = ctx.view.borrow().clone();
    let mut admission = admit(pod, namespace, &view, &ctx.watch);
    if let (Admission::Unknown { deployment }, Some(lookup), Some(spec)) =
        (&admission, &ctx.lookup, &pod.spec)
    {
        admission = match lookup.gated(&ctx.watch, namespace, deployment).await {
            Some(template) => crate::rollout::admit_gated(spec, &view, &ctx.watch, Some(&template)),
            None => Admission::Pass("not_watched"),
        };
    }
    match admission {
        Admission::Unknown { .. } => {
            count("not_watched");
            allowed
        }
        Admission::Pass(why) => {
            count(why);
            allowed
        }
        Admission::Gate { not_warm } => {
            let Some(spec) = &pod.spec else { return allowed };
            match allowed.clone().with_patch(gate_patch(spec)) {
                Ok(gated) => {
                    count("gated");
                    let name = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref());
                    tracing::info!(pod = name.unwrap_or_default(), %namespace, images = %not_warm.join(", "),
                        "Pod gated until its images are warm");
                    gated
                }
                Err(e) => {
                    count("error");
                    tracing::warn!(error = %e, "Could not encode the gate patch; the pod goes ungated");
                    allowed
                }
            }
        }
    }
}

/// The one webhook of the configuration.
pub const WEBHOOK_NAME: &str = "image-warm.kwarm.io";
/// The API server waits this long for an answer, then admits the pod ungated.
pub const TIMEOUT_SECONDS: i32 = 3;
/// The path kwarm serves (any path is answered; this one is what the configuration names).
pub const PATH: &str = "/mutate";

/// The MutatingWebhookConfiguration kwarm keeps: pod CREATE in the watched namespaces (never
/// kube-system or kwarm's own), only pods a ReplicaSet controls that are not bound to a node yet;
/// fail open with a short timeout.
pub fn webhook_configuration(
    gate: &crate::rollout::RolloutGate,
    namespace: &str,
    watch: &WatchConfig,
    ca_bundle: Option<&str>,
) -> k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration {
    use k8s_openapi::api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
        WebhookClientConfig,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use crate::config::Namespaces;
    use crate::rollout::Endpoint;

    let mut client = WebhookClientConfig {
        ca_bundle: ca_bundle.map(|c| k8s_openapi::ByteString(c.as_bytes().to_vec())),
        ..Default::default()
    };
    match &gate.endpoint {
        Endpoint::Url(url) => client.url = Some(url.clone()),
        Endpoint::Service { name, namespace } => {
            client.service = Some(ServiceReference {
                name: name.clone(),
                namespace: namespace.clone(),
                path: Some(PATH.into()),
                port: Some(443),
            });
        }
    }
    let name_label = "kubernetes.io/metadata.name".to_string();
    let mut excluded: std::collections::BTreeSet<String> = watch.exclude_namespaces.clone();
    excluded.insert("kube-system".into());
    excluded.insert(namespace.into());
    excluded.insert(gate.namespace.clone());
    let mut expressions = vec![LabelSelectorRequirement {
        key: name_label.clone(),
        operator: "NotIn".into(),
        values: Some(excluded.into_iter().collect()),
    }];
    if let Namespaces::Only(list) = &watch.namespaces {
        expressions.push(LabelSelectorRequirement {
            key: name_label,
            operator: "In".into(),
            values: Some(list.iter().cloned().collect()),
        });
    }
    let condition =
        |name: &str, expression: &str| MatchCondition { name: name.into(), expression: expression.into() };
    let webhook = MutatingWebhook {
        name: WEBHOOK_NAME.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client,
        failure_policy: Some("Ignore".into()),
        match_policy: Some("Equivalent".into()),
        reinvocation_policy: Some("Never".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        namespace_selector: Some(LabelSelector { match_expressions: Some(expressions), match_labels: None }),
        object_selector: None,
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        match_conditions: Some(vec![
            condition(
                "replicaset-pods",
                "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(o, o.kind == 'ReplicaSet' && has(o.controller) && o.controller)",
            ),
            condition("not-bound", "!has(object.spec.nodeName) || object.spec.nodeName == ''"),
        ]),
    };
    let mut configuration =
        MutatingWebhookConfiguration { webhooks: Some(vec![webhook]), ..Default::default() };
    configuration.metadata.name = Some(gate.configuration.clone());
    configuration.metadata.labels = Some(std::collections::BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), "kwarm".to_string()),
        ("kwarm.io/namespace".to_string(), namespace.to_string()),
    ]));
    configuration
}

#[cfg(test)]
mod tests;
