//! The webhook's certificates: the names they carry, when they are renewed, and that what kwarm
//! issues is what a TLS client (here rustls' WebPKI verifier) accepts for the webhook's address.

use std::sync::Arc;

use pretty_assertions::assert_eq;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn service() -> Endpoint {
    Endpoint::Service { name: "kwarm-webhook".into(), namespace: "ns".into() }
}

fn service_hosts() -> Vec<String> {
    hosts(&service())
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Now, to the second (what the certificates and the Secret's annotations hold).
fn now() -> SystemTime {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn issue(hosts: &[String], at: SystemTime) -> Bundle {
    renew(None, Renewal::Ca, hosts, at).unwrap()
}

fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

/// Whether a TLS client trusting `roots` (PEM, one or more CAs) accepts `cert` for `name` at `at`.
fn verify(cert: &str, roots: &str, name: &str, at: SystemTime) -> Result<(), rustls::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut store = rustls::RootCertStore::empty();
    for ca in certificates(roots) {
        store.add(ca).unwrap();
    }
    let verifier = WebPkiServerVerifier::builder(Arc::new(store)).build().unwrap();
    let chain = certificates(cert);
    assert_eq!(chain.len(), 1, "the serving certificate alone");
    let server = ServerName::try_from(name.to_string()).unwrap();
    let at = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    verifier.verify_server_cert(&chain[0], &[], &server, &[], at).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Host names

#[test]
fn a_service_endpoint_is_named_every_way_the_cluster_resolves_it() {
    assert_eq!(
        service_hosts(),
        names(&[
            "kwarm-webhook.ns.svc",
            "kwarm-webhook.ns.svc.cluster.local",
            "kwarm-webhook.ns",
            "kwarm-webhook"
        ])
    );
}

#[test]
fn a_url_endpoint_is_named_by_its_host() {
    for (url, host) in [
        ("https://127.0.0.1:9443/mutate", "127.0.0.1"),
        ("https://[::1]:9443/x", "::1"),
        ("https://example.com/mutate", "example.com"),
        ("https://example.com:8443", "example.com"),
    ] {
        assert_eq!(hosts(&Endpoint::Url(url.into())), names(&[host]), "{url}");
    }
}

// ---------------------------------------------------------------------------------------------
// When to renew

#[test]
fn without_a_certificate_a_ca_and_a_certificate_are_issued() {
    assert_eq!(renewal(None, &service_hosts(), now()), Renewal::Ca);
}

#[test]
fn a_fresh_certificate_is_kept() {
    let t = now();
    let b = issue(&service_hosts(), t);
    assert_eq!(renewal(Some(&b), &service_hosts(), t), Renewal::Keep);
    assert_eq!(
        renewal(Some(&b), &service_hosts(), t + 300 * 24 * 3600 * Duration::from_secs(1)),
        Renewal::Keep
    );
    assert_eq!(renew(Some(&b), Renewal::Keep, &service_hosts(), t).unwrap(), b, "kept as it is");
}

#[test]
fn the_serving_certificate_is_renewed_a_month_before_it_expires() {
    let t = now();
    let b = issue(&service_hosts(), t);
    assert_eq!(b.not_after, t + SERVING_VALIDITY);
    assert_eq!(
        renewal(Some(&b), &service_hosts(), t + Duration::from_secs(340 * 24 * 3600)),
        Renewal::Serving
    );
    assert_eq!(renewal(Some(&b), &service_hosts(), b.not_after - SERVING_RENEW_BEFORE), Renewal::Keep);
    assert_eq!(
        renewal(Some(&b), &service_hosts(), b.not_after - SERVING_RENEW_BEFORE + Duration::from_secs(1)),
        Renewal::Serving
    );
}

#[test]
fn the_serving_certificate_is_renewed_when_the_endpoint_changes() {
    let t = now();
    let b = issue(&service_hosts(), t);
    let moved = hosts(&Endpoint::Service { name: "kwarm-webhook".into(), namespace: "other".into() });
    assert_eq!(renewal(Some(&b), &moved, t), Renewal::Serving);
    assert_eq!(renewal(Some(&b), &names(&["127.0.0.1"]), t), Renewal::Serving);
}

#[test]
fn the_ca_is_replaced_a_year_before_it_expires() {
    let t = now();
    let mut b = issue(&service_hosts(), t);
    assert_eq!(b.ca_not_after, t + CA_VALIDITY);
    // as if the serving certificate had just been renewed
    b.not_after = b.ca_not_after;
    assert_eq!(renewal(Some(&b), &service_hosts(), b.ca_not_after - CA_RENEW_BEFORE), Renewal::Keep);
    assert_eq!(
        renewal(Some(&b), &service_hosts(), b.ca_not_after - CA_RENEW_BEFORE + Duration::from_secs(1)),
        Renewal::Ca
    );
    // the CA wins over a serving certificate that is due at the same time
    let mut due = b.clone();
    due.not_after = t;
    assert_eq!(
        renewal(Some(&due), &service_hosts(), b.ca_not_after - Duration::from_secs(3600)),
        Renewal::Ca
    );
}

// ---------------------------------------------------------------------------------------------
// What is issued

#[test]
fn the_issued_certificate_is_trusted_for_every_name_of_the_service() {
    let t = now();
    let b = issue(&service_hosts(), t);
    assert_eq!(b.hosts, service_hosts());
    for host in service_hosts() {
        verify(&b.cert, &b.ca_cert, &host, t).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    assert!(verify(&b.cert, &b.ca_cert, "kwarm-webhook.elsewhere.svc", t).is_err(), "another name");
    // valid from a day before issue (clock skew) to its not-after
    verify(&b.cert, &b.ca_cert, "kwarm-webhook.ns.svc", t - Duration::from_secs(3600)).unwrap();
    assert!(
        verify(&b.cert, &b.ca_cert, "kwarm-webhook.ns.svc", b.not_after + Duration::from_secs(1)).is_err()
    );
}

#[test]
fn the_issued_certificate_is_trusted_for_the_ip_address_of_a_url() {
    let t = now();
    let b = issue(&hosts(&Endpoint::Url("https://127.0.0.1:9443/mutate".into())), t);
    verify(&b.cert, &b.ca_cert, "127.0.0.1", t).unwrap();
    assert!(verify(&b.cert, &b.ca_cert, "127.0.0.2", t).is_err());
    let v6 = issue(&hosts(&Endpoint::Url("https://[::1]:9443/mutate".into())), t);
    verify(&v6.cert, &v6.ca_cert, "::1", t).unwrap();
}

#[test]
fn a_certificate_from_another_ca_is_not_trusted() {
    let t = now();
    let (a, b) = (issue(&service_hosts(), t), issue(&service_hosts(), t));
    assert_ne!(a.ca_cert, b.ca_cert, "every CA has a key of its own");
    assert!(verify(&a.cert, &b.ca_cert, "kwarm-webhook.ns.svc", t).is_err());
}

#[test]
fn a_renewed_serving_certificate_is_trusted_by_the_same_ca_bundle() {
    let t = now();
    let old = issue(&service_hosts(), t);
    let later = t + Duration::from_secs(340 * 24 * 3600);
    let moved = names(&["kwarm-webhook.ns.svc", "127.0.0.1"]);
    let new = renew(Some(&old), Renewal::Serving, &moved, later).unwrap();
    assert_eq!((&new.ca_cert, &new.ca_key, new.ca_not_after), (&old.ca_cert, &old.ca_key, old.ca_not_after));
    assert_eq!(new.ca_bundle(later), old.ca_bundle(t), "the webhook configuration needs no change");
    assert_ne!((&new.cert, &new.key), (&old.cert, &old.key));
    assert_eq!((new.not_after, &new.hosts), (later + SERVING_VALIDITY, &moved));
    verify(&new.cert, &old.ca_cert, "kwarm-webhook.ns.svc", later).unwrap();
    verify(&new.cert, &old.ca_cert, "127.0.0.1", later).unwrap();
    assert!(
        verify(&old.cert, &old.ca_cert, "kwarm-webhook.ns.svc", later + 30 * Duration::from_secs(86400))
            .is_err()
    );
}

#[test]
fn a_new_ca_is_trusted_alongside_the_old_one_until_the_old_one_expires() {
    let t = now();
    // a CA issued nine years and a bit ago, its serving certificate renewed ten days ago
    let first = issue(&service_hosts(), t - 9 * YEAR - Duration::from_secs(30 * 86400));
    let old =
        renew(Some(&first), Renewal::Serving, &service_hosts(), t - Duration::from_secs(10 * 86400)).unwrap();
    assert_eq!(old.not_after, first.ca_not_after, "a serving certificate never outlives its CA");
    assert_eq!(renewal(Some(&old), &service_hosts(), t), Renewal::Ca);

    let new = renew(Some(&old), Renewal::Ca, &service_hosts(), t).unwrap();
    assert_ne!(new.ca_cert, old.ca_cert);
    assert_eq!(new.ca_not_after, t + CA_VALIDITY);
    assert_eq!(new.previous_ca, Some((old.ca_cert.clone(), old.ca_not_after)));
    assert_eq!(renewal(Some(&new), &service_hosts(), t), Renewal::Keep);

    let bundle = new.ca_bundle(t);
    assert_eq!(certificates(&bundle).len(), 2);
    assert!(bundle.contains(&new.ca_cert) && bundle.contains(&old.ca_cert));
    // a replica still serving the old certificate is trusted, and so is one serving the new one
    verify(&old.cert, &bundle, "kwarm-webhook.ns.svc", t).unwrap();
    verify(&new.cert, &bundle, "kwarm-webhook.ns.svc", t).unwrap();
    assert!(verify(&old.cert, &new.ca_cert, "kwarm-webhook.ns.svc", t).is_err(), "the new CA alone does not");
    // once the old CA has expired only the new one is in the bundle
    assert_eq!(new.ca_bundle(old.ca_not_after), new.ca_cert);
    // and the next new CA forgets it
    let next =
        renew(Some(&new), Renewal::Ca, &service_hosts(), old.ca_not_after + Duration::from_secs(1)).unwrap();
    assert_eq!(next.previous_ca.map(|(pem, _)| pem), Some(new.ca_cert.clone()));
}

#[test]
fn an_expired_ca_is_not_kept_as_the_previous_one() {
    let t = now();
    let old = issue(&service_hosts(), t);
    let new =
        renew(Some(&old), Renewal::Ca, &service_hosts(), old.ca_not_after + Duration::from_secs(1)).unwrap();
    assert_eq!(new.previous_ca, None);
}

// ---------------------------------------------------------------------------------------------
// The Secret

#[test]
fn the_secret_is_a_tls_secret_other_tools_can_read() {
    let b = issue(&service_hosts(), now());
    let s = to_secret(&b, "kwarm-webhook-tls", "kwarm");
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        (s.metadata.name.as_deref(), s.metadata.namespace.as_deref()),
        (Some("kwarm-webhook-tls"), Some("kwarm"))
    );
    let data = s.data.as_ref().unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!(text("tls.crt"), format!("{}{}", b.cert, b.ca_cert), "the chain: certificate, then CA");
    assert_eq!((text("tls.key"), text("ca.crt")), (b.key.clone(), b.ca_cert.clone()));
    assert_eq!(certificates(&text("tls.crt")).len(), 2);
    assert!(!data.contains_key("previous-ca.crt"));
    assert_eq!(
        s.metadata.labels.as_ref().unwrap().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("kwarm")
    );
}

#[test]
fn what_is_read_back_from_the_secret_is_what_was_written() {
    let t = now();
    let b = issue(&service_hosts(), t);
    assert_eq!(from_secret(&to_secret(&b, "tls", "kwarm")), Some(b.clone()));
    // with a previous CA too
    let rotated = renew(Some(&b), Renewal::Ca, &service_hosts(), t + Duration::from_secs(60)).unwrap();
    assert!(rotated.previous_ca.is_some());
    assert_eq!(from_secret(&to_secret(&rotated, "tls", "kwarm")), Some(rotated));
}

#[test]
fn a_bundle_issued_at_any_instant_reads_back_the_same() {
    // the clock has nanoseconds; the certificate and the Secret keep seconds
    let t = SystemTime::now();
    let b = issue(&names(&["127.0.0.1"]), t);
    assert_eq!(from_secret(&to_secret(&b, "tls", "kwarm")), Some(b.clone()));
    assert_eq!(renewal(from_secret(&to_secret(&b, "tls", "kwarm")).as_ref(), &b.hosts, t), Renewal::Keep);
}

#[test]
fn a_secret_kwarm_did_not_write_is_not_read_as_a_bundle() {
    let b = issue(&service_hosts(), now());
    let mut foreign = to_secret(&b, "tls", "kwarm");
    foreign.metadata.annotations = None;
    assert_eq!(from_secret(&foreign), None, "cert-manager's Secret: no kwarm annotations");
    for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
        let mut s = to_secret(&b, "tls", "kwarm");
        s.data.as_mut().unwrap().remove(key);
        assert_eq!(from_secret(&s), None, "without {key}");
    }
    let mut other_chain = to_secret(&b, "tls", "kwarm");
    other_chain.data.as_mut().unwrap().insert("tls.crt".into(), ByteString(b.cert.clone().into_bytes()));
    assert_eq!(from_secret(&other_chain), None, "a chain that does not end in the CA");
    let mut bad_time = to_secret(&b, "tls", "kwarm");
    bad_time.metadata.annotations.as_mut().unwrap().insert(NOT_AFTER.into(), "soon".into());
    assert_eq!(from_secret(&bad_time), None);
    assert_eq!(from_secret(&Secret::default()), None);
}
