use super::*;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

#[test]
fn the_backoff_doubles_up_to_its_bound_and_a_success_ends_it() {
    let mut b = Backoff::default();
    assert_eq!(b.blocked_until(at(0)), None);
    b.failed(at(0));
    assert_eq!(b.blocked_until(at(0)), Some(at(30)));
    assert_eq!(b.blocked_until(at(30)), None, "free again once the wait is over");
    b.failed(at(30));
    assert_eq!(b.blocked_until(at(30)), Some(at(90)), "60 s after the second failure");
    for _ in 0..40 {
        b.failed(at(100));
    }
    assert_eq!(b.blocked_until(at(100)), Some(at(100) + BACKOFF_MAX), "never longer than the bound");
    b.succeeded();
    assert_eq!(b.blocked_until(at(100)), None);
    b.failed(at(200));
    assert_eq!(b.blocked_until(at(200)), Some(at(230)), "a success starts over");
}

#[test]
fn docker_config_credentials_are_found_by_registry_host() {
    let mut c = Credentials::default();
    let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret:with-colon");
    let config = serde_json::json!({"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "127.0.0.1:5001": {"username": "kwarm", "password": "pw"},
        "quay.io": {"auth": ""},
    }});
    c.add_docker_config(config.to_string().as_bytes()).unwrap();
    assert_eq!(c.for_registry("docker.io"), RegistryAuth::Basic("robot".into(), "s3cret:with-colon".into()));
    assert_eq!(c.for_registry("127.0.0.1:5001"), RegistryAuth::Basic("kwarm".into(), "pw".into()));
    assert_eq!(c.for_registry("quay.io"), RegistryAuth::Anonymous, "an empty entry gives nothing");
    assert_eq!(c.for_registry("ghcr.io"), RegistryAuth::Anonymous);
    // the first secret wins for a registry, as the kubelet tries them in order
    let later = serde_json::json!({"auths": {"127.0.0.1:5001": {"username": "other", "password": "x"}}});
    c.add_docker_config(later.to_string().as_bytes()).unwrap();
    assert_eq!(c.for_registry("127.0.0.1:5001"), RegistryAuth::Basic("kwarm".into(), "pw".into()));
}

#[test]
fn a_broken_docker_config_says_what_is_wrong() {
    let mut c = Credentials::default();
    assert!(c.add_docker_config(b"{not json").unwrap_err().contains("not a .dockerconfigjson"));
    let bad = serde_json::json!({"auths": {"r.example": {"auth": "***"}}});
    assert!(
        c.add_docker_config(bad.to_string().as_bytes())
            .unwrap_err()
            .contains("r.example: auth is not base64")
    );
    let no_colon = base64::engine::general_purpose::STANDARD.encode("justauser");
    let bad = serde_json::json!({"auths": {"r.example": {"auth": no_colon}}});
    assert!(c.add_docker_config(bad.to_string().as_bytes()).unwrap_err().contains("user:password"));
}

#[test]
fn only_tags_are_resolved_grouped_by_registry() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let images: Vec<String> = [
        "docker.io/library/nginx:1.25".to_string(),
        "quay.io/che-incubator/che-code:next".to_string(),
        format!("quay.io/team/pinned@{digest}"),
        "127.0.0.1:5000/test/mutable:next".to_string(),
        "127.0.0.1:5000/test/other:v1".to_string(),
    ]
    .into();
    let groups = by_registry(&images, false);
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["127.0.0.1:5000", "docker.io", "quay.io"]);
    assert_eq!(groups["quay.io"], ["quay.io/che-incubator/che-code:next"], "the pinned image cannot change");
    assert_eq!(groups["127.0.0.1:5000"].len(), 2);
    assert_eq!(registry_host("https://Registry.Example.com:443/v2/"), "registry.example.com:443");
    let access = by_registry(&images, true);
    assert_eq!(access["quay.io"].len(), 2, "an access check asks for the pinned image too");
}

#[test]
fn the_bundled_roots_make_a_client_without_a_system_store() {
    // kwarm's image has no CA store: the client must still build (and not fall back to one that
    // panics), from the compiled-in roots alone
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = bundled_roots();
    assert!(roots.len() > 100, "{} roots", roots.len());
    let config = oci_client::client::ClientConfig { tls_certs_only: roots, ..Default::default() };
    assert!(Client::try_from(config).is_ok());
}
