//! The webhook without a cluster: the configuration kwarm applies, the certificate store, the
//! handler's answers, and the real listener over TLS on 127.0.0.1.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta, OwnerReference};
use pretty_assertions::assert_eq;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::config::Config;
use crate::rollout::{Endpoint, RolloutGate, SCHEDULING_GATE};
use certs::Renewal;

const NGINX: &str = "docker.io/library/nginx:1.25";

fn config(pairs: &[(&str, &str)]) -> Config {
    let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_vars(vars, None).unwrap_or_else(|e| panic!("{pairs:?}:\n{e}"))
}

/// `ROLLOUT_GATE=true` in namespace `kwarm`, and these variables.
fn gate_config(more: &[(&str, &str)]) -> Config {
    let mut pairs = vec![("ROLLOUT_GATE", "true"), ("NAMESPACE", "kwarm")];
    pairs.extend_from_slice(more);
    config(&pairs)
}

fn gate(c: &Config) -> &RolloutGate {
    c.rollout_gate.as_ref().expect("ROLLOUT_GATE is on")
}

/// The one webhook of the configuration kwarm would apply for `c`.
fn webhook(c: &Config, ca_bundle: Option<&str>) -> MutatingWebhook {
    let configuration = webhook_configuration(gate(c), &c.namespace, &c.watch, ca_bundle);
    let mut webhooks = configuration.webhooks.unwrap_or_default();
    assert_eq!(webhooks.len(), 1);
    webhooks.remove(0)
}

fn namespace_rules(w: &MutatingWebhook) -> Vec<(String, String, Vec<String>)> {
    let selector = w.namespace_selector.as_ref().expect("a namespace selector");
    assert_eq!(selector.match_labels, None);
    selector
        .match_expressions
        .iter()
        .flatten()
        .map(|LabelSelectorRequirement { key, operator, values }| {
            (key.clone(), operator.clone(), values.clone().unwrap_or_default())
        })
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// The MutatingWebhookConfiguration

#[test]
fn the_webhook_fails_open_quickly_and_has_no_side_effects() {
    let c = gate_config(&[]);
    let w = webhook(&c, Some("CA"));
    assert_eq!(w.name, WEBHOOK_NAME);
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"), "kwarm down: pods are admitted ungated");
    assert_eq!(w.timeout_seconds, Some(3));
    assert_eq!(w.side_effects, "None");
    assert_eq!(w.admission_review_versions, strings(&["v1"]));
    assert_eq!(w.reinvocation_policy.as_deref(), Some("Never"));
    let rules = w.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        (&rules[0].api_groups, &rules[0].api_versions, &rules[0].operations, &rules[0].resources),
        (
            &Some(strings(&[""])),
            &Some(strings(&["v1"])),
            &Some(strings(&["CREATE"])),
            &Some(strings(&["pods"]))
        )
    );
}

#[test]
fn the_webhook_sees_only_unbound_pods_a_replicaset_controls() {
    let w = webhook(&gate_config(&[]), None);
    let conditions = w.match_conditions.unwrap_or_default();
    let names: Vec<&str> = conditions.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["replicaset-pods", "not-bound"]);
    assert!(
        conditions[0].expression.contains("'ReplicaSet'") && conditions[0].expression.contains("controller")
    );
    assert!(conditions[1].expression.contains("nodeName"));
}

#[test]
fn the_webhook_never_sees_kube_system_kwarms_namespace_or_excluded_ones() {
    let name = "kubernetes.io/metadata.name".to_string();
    let w = webhook(&gate_config(&[]), None);
    assert_eq!(namespace_rules(&w), [(name.clone(), "NotIn".into(), strings(&["kube-system", "kwarm"]))]);
    let w = webhook(&gate_config(&[("EXCLUDE_NAMESPACES", "legacy,batch")]), None);
    assert_eq!(
        namespace_rules(&w),
        [(name.clone(), "NotIn".into(), strings(&["batch", "kube-system", "kwarm", "legacy"]))]
    );
}

#[test]
fn with_watch_namespaces_the_webhook_sees_only_those() {
    let name = "kubernetes.io/metadata.name".to_string();
    let w = webhook(&gate_config(&[("WATCH_NAMESPACES", "web,api"), ("EXCLUDE_NAMESPACES", "legacy")]), None);
    assert_eq!(
        namespace_rules(&w),
        [
            (name.clone(), "NotIn".into(), strings(&["kube-system", "kwarm", "legacy"])),
            (name, "In".into(), strings(&["api", "web"])),
        ]
    );
}

#[test]
fn the_api_server_reaches_the_webhook_through_its_service_by_default() {
    let c = gate_config(&[]);
    let w = webhook(&c, Some("-----BEGIN CERTIFICATE-----\n"));
    let client = &w.client_config;
    assert_eq!(client.url, None);
    let service = client.service.as_ref().expect("a Service reference");
    assert_eq!(
        (service.name.as_str(), service.namespace.as_str(), service.path.as_deref(), service.port),
        ("kwarm-webhook", "kwarm", Some("/mutate"), Some(443))
    );
    assert_eq!(
        client.ca_bundle.as_ref().map(|b| b.0.as_slice()),
        Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
    );
    let configuration = webhook_configuration(gate(&c), &c.namespace, &c.watch, None);
    assert_eq!(configuration.metadata.name.as_deref(), Some("kwarm-rollout-gate-kwarm"));
    assert_eq!(
        configuration.metadata.labels,
        Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_string(), "kwarm".to_string()),
            ("kwarm.io/namespace".to_string(), "kwarm".to_string()),
        ]))
    );
    // the caBundle is written out as the PEM text, base64 on the wire like every []byte
    let json = serde_json::to_value(&configuration).unwrap();
    assert_eq!(json["webhooks"][0]["clientConfig"].get("caBundle"), None, "no caBundle when none is kept");
    let with_ca = serde_json::to_value(webhook(&c, Some("PEM"))).unwrap();
    assert_eq!(with_ca["clientConfig"]["caBundle"], json!("UEVN"));
}

#[test]
fn with_webhook_url_the_api_server_calls_that_url() {
    let c = gate_config(&[
        ("WEBHOOK_URL", "https://127.0.0.1:9443/mutate"),
        ("WEBHOOK_CONFIGURATION", "kwarm-local"),
    ]);
    let w = webhook(&c, None);
    assert_eq!(w.client_config.url.as_deref(), Some("https://127.0.0.1:9443/mutate"));
    assert_eq!(w.client_config.service, None);
    assert_eq!(w.client_config.ca_bundle, None, "cert-manager's injector (or nobody) keeps it");
    let configuration = webhook_configuration(gate(&c), &c.namespace, &c.watch, None);
    assert_eq!(configuration.metadata.name.as_deref(), Some("kwarm-local"));
}

// ---------------------------------------------------------------------------------------------
// The certificate store

fn issue(hosts: &[String]) -> certs::Bundle {
    certs::renew(None, Renewal::Ca, hosts, SystemTime::now()).unwrap()
}

#[test]
fn the_store_takes_a_certificate_kwarm_issued() {
    let store = CertStore::default();
    assert!(!store.ready(), "nothing to serve with yet");
    let b = issue(&strings(&["kwarm-webhook.kwarm.svc"]));
    store.install(&b.chain(), &b.key).unwrap();
    assert!(store.ready());
}

#[test]
fn the_store_refuses_what_is_not_a_certificate_and_its_key_and_keeps_what_it_had() {
    let store = CertStore::default();
    let b = issue(&strings(&["kwarm-webhook.kwarm.svc"]));
    for (chain, key, says) in [
        ("garbage", b.key.as_str(), "certificate"),
        ("", b.key.as_str(), "certificate"),
        (b.chain().as_str(), "garbage", "key"),
        (b.chain().as_str(), b.chain().as_str(), "key"),
    ] {
        let e = store.install(chain, key).unwrap_err();
        assert!(e.starts_with(says), "{chain:.20?} / {key:.20?}: {e}");
    }
    assert!(!store.ready());
    store.install(&b.chain(), &b.key).unwrap();
    assert!(store.install("garbage", &b.key).is_err());
    assert!(store.ready(), "a bad renewal leaves the current certificate in place");
}

// ---------------------------------------------------------------------------------------------
// The handler

const HASH: &str = "6b8f4c9d7";

/// A new pod of Deployment `team/web` (ReplicaSet `web-<HASH>`), as the ReplicaSet controller
/// creates it: a generated name, not bound.
fn pod(images: &[&str]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("web-{HASH}-")),
            namespace: Some("team".into()),
            labels: Some(BTreeMap::from([("pod-template-hash".to_string(), HASH.to_string())])),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: format!("web-{HASH}"),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: images
                .iter()
                .enumerate()
                .map(|(i, image)| Container {
                    name: format!("c{i}"),
                    image: Some(image.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        status: None,
    }
}

/// A synced view: `team/web` gated, node n1 holding `held`.
fn view(held: &[&str]) -> WarmView {
    WarmView {
        synced: true,
        warm: BTreeMap::from([("n1".to_string(), held.iter().map(|i| i.to_string()).collect())]),
        labels: BTreeMap::from([("n1".to_string(), BTreeMap::new())]),
        gated_deployments: BTreeSet::from([("team".to_string(), "web".to_string())]),
        ..Default::default()
    }
}

/// The AdmissionReview the API server sends for the creation of `pod`.
fn review(pod: &Pod, namespace: Option<&str>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" },
        },
    })
}

fn request(review: Value) -> AdmissionRequest<Pod> {
    let review: AdmissionReview<Pod> = serde_json::from_value(review).unwrap();
    review.try_into().unwrap()
}

fn ctx(view: WarmView) -> (Ctx, watch::Sender<Arc<WarmView>>) {
    let (tx, rx) = watch::channel(Arc::new(view));
    (Ctx { view: rx, watch: config(&[]).watch, shared: Arc::new(Shared::default()), lookup: None }, tx)
}

/// What `answer` says for `request`, and the result it counted.
fn answered(ctx: &Ctx, request: &AdmissionRequest<Pod>) -> (Value, Vec<&'static str>) {
    let counted = RefCell::new(Vec::new());
    // without a lookup (no client) nothing in `answer` waits
    let response = futures::executor::block_on(answer(ctx, request, |r| counted.borrow_mut().push(r)));
    let review = serde_json::to_value(response.into_review()).unwrap();
    (review["response"].clone(), counted.into_inner())
}

/// The JSON patch of a response, as the API server decodes the `patch` bytes (kube writes them
/// as an array of bytes; a base64 string decodes to the same bytes).
fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    use base64::Engine;
    let bytes: Vec<u8> = match &response["patch"] {
        Value::Null => return None,
        Value::String(text) => base64::engine::general_purpose::STANDARD.decode(text).unwrap(),
        Value::Array(items) => items.iter().map(|b| u8::try_from(b.as_u64().unwrap()).unwrap()).collect(),
        other => panic!("patch is neither bytes nor base64: {other}"),
    };
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The pod as the API server would store it after the response's patch.
fn patched(pod: &Pod, response: &Value) -> Value {
    let mut doc = serde_json::to_value(pod).unwrap();
    if let Some(patch) = patch_of(response) {
        json_patch::patch(&mut doc, &patch).unwrap();
    }
    doc
}

#[test]
fn a_pod_whose_images_are_not_warm_is_admitted_with_kwarms_gate() {
    let (ctx, _tx) = ctx(view(&[]));
    let p = pod(&["nginx:1.25"]);
    let (response, counted) = answered(&ctx, &request(review(&p, Some("team"))));
    assert_eq!(response["uid"], json!("705ab4f5-6393-11e8-b7cc-42010a800002"), "the request's uid");
    assert_eq!(response["allowed"], json!(true));
    assert_eq!(response["patchType"], json!("JSONPatch"));
    assert_eq!(patched(&p, &response)["spec"]["schedulingGates"], json!([{ "name": SCHEDULING_GATE }]));
    assert_eq!(counted, ["gated"]);
}

#[test]
fn a_pod_whose_images_are_warm_is_admitted_unchanged() {
    let (ctx, _tx) = ctx(view(&[NGINX]));
    let (response, counted) = answered(&ctx, &request(review(&pod(&["nginx:1.25"]), Some("team"))));
    assert_eq!(response["allowed"], json!(true));
    assert_eq!((response.get("patch"), response.get("patchType")), (None, None));
    assert_eq!(counted, ["warm"]);
}

#[test]
fn the_webhook_answers_from_the_latest_warm_view() {
    let (ctx, tx) = ctx(WarmView::default());
    let r = request(review(&pod(&["nginx:1.25"]), Some("team")));
    assert_eq!(answered(&ctx, &r).1, ["not_synced"], "before the watches listed");
    tx.send(Arc::new(view(&[]))).unwrap();
    assert_eq!(answered(&ctx, &r).1, ["gated"]);
    tx.send(Arc::new(view(&[NGINX]))).unwrap();
    assert_eq!(answered(&ctx, &r).1, ["warm"]);
}

#[test]
fn the_pods_namespace_is_the_requests_or_else_the_pods_own() {
    let (ctx, _tx) = ctx(view(&[]));
    let p = pod(&["nginx:1.25"]);
    assert_eq!(answered(&ctx, &request(review(&p, None))).1, ["gated"], "from the pod's metadata");
    assert_eq!(answered(&ctx, &request(review(&p, Some("elsewhere")))).1, ["not_watched"]);
}

#[test]
fn a_request_without_a_pod_is_allowed_unchanged() {
    let (ctx, _tx) = ctx(view(&[]));
    let mut r = review(&pod(&[]), Some("team"));
    r["request"]["object"] = Value::Null;
    let (response, counted) = answered(&ctx, &request(r));
    assert_eq!((response["allowed"].clone(), response.get("patch")), (json!(true), None));
    assert_eq!(counted, ["no_object"]);
}

// ---------------------------------------------------------------------------------------------
// Over TLS

/// A webhook serving on 127.0.0.1 with a certificate kwarm issued for its URL.
struct Running {
    address: SocketAddr,
    ca: String,
    certs: Arc<CertStore>,
    shared: Arc<Shared>,
    view: watch::Sender<Arc<WarmView>>,
    _stop: watch::Sender<bool>,
}

async fn start(v: WarmView, install: bool) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // serve binds what it is given: take a free port from the OS
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let bundle = issue(&certs::hosts(&Endpoint::Url(format!("https://127.0.0.1:{port}/mutate"))));
    let store = Arc::new(CertStore::default());
    if install {
        store.install(&bundle.chain(), &bundle.key).unwrap();
    }
    let (view, view_rx) = watch::channel(Arc::new(v));
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(false);
    serve(address, store.clone(), view_rx, &config(&[]), None, shared.clone(), stop_rx).await.unwrap();
    Running { address, ca: bundle.ca_cert, certs: store, shared, view, _stop: stop }
}

/// POSTs `body` to /mutate over TLS, trusting only `ca`: the status code and the body.
async fn post(address: SocketAddr, ca: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.map_err(std::io::Error::other)?).map_err(std::io::Error::other)?;
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let exchange = async {
        let tcp = TcpStream::connect(address).await?;
        let name = ServerName::try_from(address.ip().to_string()).map_err(std::io::Error::other)?;
        let mut stream = connector.connect(name, tcp).await?;
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        let mut response = Vec::new();
        match stream.read_to_end(&mut response).await {
            Ok(_) => {}
            // a server that closes without close_notify after a complete answer
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    let text = String::from_utf8(response).map_err(std::io::Error::other)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(text.clone()))?;
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(text.clone()))?;
    Ok((status, body.to_string()))
}

fn metrics_line(shared: &Shared, result: &str) -> Option<String> {
    let prefix = format!("kwarm_webhook_admissions_total{{result=\"{result}\"}} ");
    shared.metrics.encode().lines().find(|l| l.starts_with(&prefix)).map(str::to_string)
}

#[tokio::test]
async fn over_tls_a_pod_of_a_gated_deployment_gets_the_gate() {
    let w = start(view(&[]), true).await;
    let p = pod(&["nginx:1.25"]);
    let body = serde_json::to_vec(&review(&p, Some("team"))).unwrap();
    let (status, answer) = post(w.address, &w.ca, &body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (&answer["apiVersion"], &answer["kind"]),
        (&json!("admission.k8s.io/v1"), &json!("AdmissionReview"))
    );
    let response = &answer["response"];
    assert_eq!(response["allowed"], json!(true));
    assert_eq!(response["patchType"], json!("JSONPatch"));
    let patch = patch_of(response).expect("a patch");
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{ "op": "add", "path": "/spec/schedulingGates", "value": [{ "name": "kwarm.io/image-warm" }] }])
    );
    assert_eq!(patched(&p, response)["spec"]["schedulingGates"], json!([{ "name": SCHEDULING_GATE }]));
    assert_eq!(
        metrics_line(&w.shared, "gated").as_deref(),
        Some("kwarm_webhook_admissions_total{result=\"gated\"} 1")
    );
}

#[tokio::test]
async fn over_tls_a_pod_whose_images_are_warm_is_admitted_unchanged() {
    let w = start(view(&[]), true).await;
    w.view.send(Arc::new(view(&[NGINX]))).unwrap();
    let body = serde_json::to_vec(&review(&pod(&["nginx:1.25"]), Some("team"))).unwrap();
    let (status, answer) = post(w.address, &w.ca, &body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let response = &serde_json::from_str::<Value>(&answer).unwrap()["response"];
    assert_eq!(response["allowed"], json!(true));
    assert_eq!(patch_of(response), None);
    assert!(metrics_line(&w.shared, "warm").is_some());
    assert_eq!(metrics_line(&w.shared, "gated"), None);
}

#[tokio::test]
async fn over_tls_what_is_not_an_admission_review_is_a_bad_request() {
    let w = start(view(&[]), true).await;
    let (status, answer) = post(w.address, &w.ca, b"{not json").await.unwrap();
    assert_eq!(status, 400);
    assert!(answer.contains("not an AdmissionReview"), "{answer}");
    let (status, _) =
        post(w.address, &w.ca, br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
            .await
            .unwrap();
    assert_eq!(status, 400, "a review without a request");
    assert_eq!(
        metrics_line(&w.shared, "error").as_deref(),
        Some("kwarm_webhook_admissions_total{result=\"error\"} 2")
    );
}

#[tokio::test]
async fn the_webhook_serves_once_a_certificate_is_installed_and_a_renewed_one_at_once() {
    let w = start(view(&[]), false).await;
    let body = serde_json::to_vec(&review(&pod(&["nginx:1.25"]), Some("team"))).unwrap();
    assert!(post(w.address, &w.ca, &body).await.is_err(), "no certificate yet: the handshake fails");

    let hosts = certs::hosts(&Endpoint::Url(format!("https://{}/mutate", w.address)));
    let first = issue(&hosts);
    w.certs.install(&first.chain(), &first.key).unwrap();
    assert_eq!(post(w.address, &first.ca_cert, &body).await.unwrap().0, 200);
    assert!(post(w.address, &w.ca, &body).await.is_err(), "another CA is not trusted");

    // a new CA: the next connection gets the new certificate, no restart
    let second = certs::renew(Some(&first), Renewal::Ca, &hosts, SystemTime::now()).unwrap();
    w.certs.install(&second.chain(), &second.key).unwrap();
    assert_eq!(post(w.address, &second.ca_cert, &body).await.unwrap().0, 200);
    assert_eq!(post(w.address, &second.ca_bundle(SystemTime::now()), &body).await.unwrap().0, 200);
    assert!(post(w.address, &first.ca_cert, &body).await.is_err(), "the old certificate is gone");
}
