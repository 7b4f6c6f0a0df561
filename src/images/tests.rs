use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;
use crate::config::Config;
use crate::labels::check_dns1123_label;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn canonical(image: &str) -> String {
    parse_image_reference(image).unwrap_or_else(|e| panic!("{image}: {e}"))
}

fn watch(pairs: &[(&str, &str)]) -> WatchConfig {
    let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_vars(vars, None).unwrap_or_else(|e| panic!("{e}")).watch
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn holder(name: &str, image: &str) -> Holder {
    Holder { name: name.into(), image: image.into() }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn key(namespace: &str, name: &str) -> DeploymentKey {
    (namespace.into(), name.into())
}

fn uses(images: &[&str]) -> DeploymentImages {
    DeploymentImages {
        images: images.iter().map(|i| canonical(i)).collect(),
        pull_secrets: Names::default(),
        containers: Names::default(),
        rollout_gate: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Image references

#[test]
fn image_references_have_one_canonical_form() {
    let pinned = |name: &str| format!("{name}@{DIGEST}");
    for (image, expected) in [
        ("nginx", "docker.io/library/nginx:latest".to_string()),
        ("nginx:1.25", "docker.io/library/nginx:1.25".into()),
        ("library/nginx:1.25", "docker.io/library/nginx:1.25".into()),
        ("docker.io/nginx", "docker.io/library/nginx:latest".into()),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest".into()),
        ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2".into()),
        ("quay.io/eclipse/che-theia:next", "quay.io/eclipse/che-theia:next".into()),
        ("localhost/app", "localhost/app:latest".into()),
        ("localhost:5000/app", "localhost:5000/app:latest".into()),
        ("127.0.0.1:5000/test/small:v1", "127.0.0.1:5000/test/small:v1".into()),
        ("ghcr.io/org/team/app:v1.2.3-rc.1_b", "ghcr.io/org/team/app:v1.2.3-rc.1_b".into()),
        ("nginx:Latest", "docker.io/library/nginx:Latest".into()),
        (&pinned("nginx"), format!("docker.io/library/{}", pinned("nginx"))),
        (&format!("nginx:1.25@{DIGEST}"), format!("docker.io/library/nginx:1.25@{DIGEST}")),
        (&pinned("quay.io/a/b"), pinned("quay.io/a/b")),
    ] {
        let c = canonical(image);
        assert_eq!(c, expected, "{image}");
        assert_eq!(canonical(&c), c, "the canonical form is its own canonical form");
    }
}

#[test]
fn invalid_image_references_say_what_is_expected() {
    for image in [
        "",
        " nginx",
        "nginx ",
        "nginx\n",
        "NGINX",
        "nginx:",
        ":1.25",
        "nginx:1.25:again",
        "nginx@sha256:abc",
        "nginx@sha256:",
        "nginx@md5:0123456789abcdef0123456789abcdef",
        &format!("nginx@{DIGEST}0"),
        "quay.io/Eclipse/che:1",
        "http://quay.io/a:1",
        "repo//double:1",
        "-leading:1",
        "a b",
        "nginx:tag with space",
        &format!("quay.io/{}:1", "a".repeat(300)),
    ] {
        let e = parse_image_reference(image).expect_err(image);
        assert!(e.starts_with("an image reference such as"), "{image:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Derived holder names

#[test]
fn derived_names_are_pinned() {
    // Changing these renames holders, which rolls every DaemonSet on upgrade: only on purpose.
    assert_eq!(derived_holder_name("docker.io/library/nginx:1.25"), "nginx-1-25-e1abf062");
    assert_eq!(derived_holder_name("docker.io/library/nginx:latest"), "nginx-latest-cba4e07f");
    assert_eq!(derived_holder_name(&format!("docker.io/library/nginx@{DIGEST}")), "nginx-666165e5");
    assert_eq!(derived_holder_name("localhost:5000/app:latest"), "app-latest-9098c8be");
}

#[test]
fn derived_names_are_readable_dns_labels() {
    let long_repo = format!("registry.example.com/{}:v1", "very-long-repository-name".repeat(4));
    let long_tag = format!("quay.io/a/b:{}", "T".repeat(128));
    for image in [
        "nginx",
        "nginx:1.25",
        "lowercase:Uppercase",
        "a__b:1",
        "a.b:1",
        "9app:1",
        "kip",
        "quay.io/eclipse/che-java11-maven:nightly",
        "127.0.0.1:5000/test/small:v1",
        &format!("nginx@{DIGEST}"),
        &format!("nginx:1.25@{DIGEST}"),
        &long_repo,
        &long_tag,
    ] {
        let c = canonical(image);
        let name = derived_holder_name(&c);
        assert!(check_dns1123_label(&name).is_ok(), "{image} → {name:?}");
        assert!(name.len() <= 63, "{image} → {name:?}");
        assert_ne!(name, crate::holder::INIT_CONTAINER_NAME);
        let (stem, hash) = name.rsplit_once('-').expect("stem-hash");
        assert_eq!(hash.len(), 8, "{name}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert!(!stem.is_empty() && !stem.ends_with('-'), "{name}");
    }
    assert!(derived_holder_name(&canonical("quay.io/eclipse/che-theia:next")).starts_with("che-theia-next-"));
    assert!(derived_holder_name(&canonical(&long_repo)).starts_with("very-long-repository-name"));
    assert_eq!(derived_holder_name(&canonical(&long_repo)).len(), 63);
}

#[test]
fn derived_names_are_stable_and_distinct() {
    let images: Vec<String> = [
        "nginx:1.25",
        "nginx:1.26",
        "nginx:1-25",
        "nginx",
        "quay.io/library/nginx:1.25",
        "ghcr.io/a/nginx:1.25",
        "a_b:1",
        "a.b:1",
        "a-b:1",
        "a__b:1",
        &format!("nginx@{DIGEST}"),
        &format!("nginx:1.25@{DIGEST}"),
    ]
    .iter()
    .map(|i| canonical(i))
    .collect();
    let names: BTreeSet<String> = images.iter().map(|i| derived_holder_name(i)).collect();
    assert_eq!(names.len(), images.len(), "distinct images, distinct names: {names:?}");
    // Many more, generated.
    let generated: BTreeSet<String> =
        (0..5000).map(|i| derived_holder_name(&format!("registry.local/team/app:{i}"))).collect();
    assert_eq!(generated.len(), 5000);
    // Same input, same name, every time.
    for image in &images {
        assert_eq!(derived_holder_name(image), derived_holder_name(&image.clone()));
    }
}

// ---------------------------------------------------------------------------------------------
// Deployments

fn deployment(namespace: Option<&str>, pod: serde_json::Value) -> Deployment {
    let mut metadata = json!({"name": "shop", "uid": "5f0c", "resourceVersion": "4711", "generation": 3,
        "labels": {"kwarm.io/enabled": "true"}});
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {"metadata": {"labels": {"app": "shop"}}, "spec": pod},
        },
        "status": {"replicas": 3, "readyReplicas": 3}
    }))
    .expect("a valid Deployment")
}

fn shop_pod() -> serde_json::Value {
    json!({
        "initContainers": [
            {"name": "migrate", "image": "ghcr.io/shop/migrate:2.0"},
            {"name": "wait", "image": "busybox:1.36"}
        ],
        "containers": [
            {"name": "web", "image": "ghcr.io/shop/web:2.0", "ports": [{"containerPort": 8080}]},
            {"name": "proxy", "image": "envoyproxy/envoy:v1.30.1"},
            {"name": "metrics", "image": "internal.example.com/exporter:1"},
            {"name": "same-again", "image": "docker.io/envoyproxy/envoy:v1.30.1"}
        ],
        "imagePullSecrets": [{"name": "shop-registry"}, {"name": "ghcr"}, {"name": ""}]
    })
}

#[test]
fn summary_has_images_of_containers_and_init_containers_and_pull_secrets() {
    let d = deployment(Some("shop"), shop_pod());
    let s = summarize_deployment(&d, &watch(&[])).expect("namespace watched");
    assert_eq!(
        s.images,
        set(&[
            "docker.io/envoyproxy/envoy:v1.30.1",
            "docker.io/library/busybox:1.36",
            "ghcr.io/shop/migrate:2.0",
            "ghcr.io/shop/web:2.0",
            "internal.example.com/exporter:1",
        ])
    );
    assert_eq!(s.pull_secrets, set(&["ghcr", "shop-registry"]), "empty names are dropped");
}

#[test]
fn excluded_images_are_left_out_by_substring_or_glob() {
    let d = deployment(Some("shop"), shop_pod());
    let s = summarize_deployment(&d, &watch(&[("EXCLUDE_IMAGES", "internal.example.com,busybox")]))
        .expect("watched");
    assert_eq!(
        s.images,
        set(&["docker.io/envoyproxy/envoy:v1.30.1", "ghcr.io/shop/migrate:2.0", "ghcr.io/shop/web:2.0"])
    );
    // Globs match either the written or the canonical form.
    let s = summarize_deployment(&d, &watch(&[("EXCLUDE_IMAGES", "ghcr.io/shop/*")])).expect("watched");
    assert_eq!(
        s.images,
        set(&[
            "docker.io/envoyproxy/envoy:v1.30.1",
            "docker.io/library/busybox:1.36",
            "internal.example.com/exporter:1"
        ])
    );
    let s = summarize_deployment(&d, &watch(&[("EXCLUDE_IMAGES", "docker.io/*")])).expect("watched");
    assert_eq!(
        s.images,
        set(&["ghcr.io/shop/migrate:2.0", "ghcr.io/shop/web:2.0", "internal.example.com/exporter:1"])
    );
    let s = summarize_deployment(&d, &watch(&[("EXCLUDE_IMAGES", "*")])).expect("watched");
    assert!(s.images.is_empty());
    assert_eq!(s.pull_secrets, set(&["ghcr", "shop-registry"]));
}

#[test]
fn namespaces_are_included_and_excluded() {
    let d = |ns: &str| deployment(Some(ns), shop_pod());
    let only = watch(&[("WATCH_NAMESPACES", "shop,blog"), ("EXCLUDE_NAMESPACES", "blog")]);
    assert!(summarize_deployment(&d("shop"), &only).is_some());
    assert!(summarize_deployment(&d("blog"), &only).is_none(), "excluded wins");
    assert!(summarize_deployment(&d("other"), &only).is_none(), "not listed");
    let all = watch(&[("EXCLUDE_NAMESPACES", "kube-system")]);
    assert!(summarize_deployment(&d("anything"), &all).is_some());
    assert!(summarize_deployment(&d("kube-system"), &all).is_none());
    assert!(summarize_deployment(&deployment(None, shop_pod()), &all).is_none(), "no namespace");
}

#[test]
fn invalid_and_missing_images_are_skipped() {
    let pod = json!({"containers": [
        {"name": "a", "image": "Not A Valid Image"},
        {"name": "b"},
        {"name": "c", "image": ""},
        {"name": "d", "image": "redis:7"}
    ]});
    let s = summarize_deployment(&deployment(Some("x"), pod), &watch(&[])).expect("watched");
    assert_eq!(s.images, set(&["docker.io/library/redis:7"]));
    assert!(s.pull_secrets.is_empty());
}

// ---------------------------------------------------------------------------------------------
// ImageTracker

#[test]
fn tracker_reports_changes_of_the_image_set() {
    let mut t = ImageTracker::default();
    assert!(t.upsert(key("shop", "web"), uses(&["nginx:1.25"]), at(0)));
    assert!(!t.upsert(key("shop", "web"), uses(&["nginx:1.25"]), at(1)), "same images: no change");
    assert!(t.upsert(key("shop", "api"), uses(&["nginx:1.25", "redis:7"]), at(2)));
    assert!(!t.upsert(key("blog", "web"), uses(&["redis:7"]), at(3)), "already in use");
    assert_eq!(t.in_use(), set(&["docker.io/library/nginx:1.25", "docker.io/library/redis:7"]));
    assert!(!t.remove(&key("blog", "web"), at(4)), "redis still used by shop/api");
    assert!(!t.remove(&key("nowhere", "none"), at(4)), "unknown Deployment");
    assert!(t.released().is_empty());
    assert_eq!(
        t.users_of("docker.io/library/nginx:1.25").cloned().collect::<Vec<_>>(),
        [key("shop", "api"), key("shop", "web")]
    );
    assert_eq!(t.deployments().len(), 2);
}

#[test]
fn released_images_are_kept_for_the_retention_then_expire() {
    let retention = Duration::from_secs(3600);
    let mut t = ImageTracker::default();
    t.upsert(key("shop", "web"), uses(&["nginx:1.25"]), at(0));
    assert!(t.upsert(key("shop", "web"), uses(&["nginx:1.26"]), at(100)), "a rollout changes the set");
    let old = canonical("nginx:1.25");
    let new = canonical("nginx:1.26");
    assert_eq!(t.in_use(), set(&[&new]));
    assert_eq!(t.released(), &BTreeMap::from([(old.clone(), at(100))]));
    assert_eq!(t.wanted(), set(&[&old, &new]), "the old image stays warm for a rollback");
    assert_eq!(t.next_expiry(retention), Some(at(100) + retention));

    assert!(!t.expire(at(100) + retention - Duration::from_secs(1), retention), "not yet");
    assert_eq!(t.wanted(), set(&[&old, &new]));
    assert!(t.expire(at(100) + retention, retention), "gone once the retention passed");
    assert_eq!(t.wanted(), set(&[&new]));
    assert_eq!(t.next_expiry(retention), None);
    assert!(!t.expire(at(100_000), retention), "nothing left to expire");
}

#[test]
fn a_reused_image_is_no_longer_released() {
    let retention = Duration::from_secs(3600);
    let mut t = ImageTracker::default();
    t.upsert(key("shop", "web"), uses(&["nginx:1.25"]), at(0));
    t.upsert(key("shop", "web"), uses(&["nginx:1.26"]), at(10));
    // Rollback.
    assert!(t.upsert(key("shop", "web"), uses(&["nginx:1.25"]), at(20)));
    assert_eq!(t.released(), &BTreeMap::from([(canonical("nginx:1.26"), at(20))]));
    // Another Deployment picks up the released image: it is in use again, not expiring.
    assert!(t.upsert(key("blog", "web"), uses(&["nginx:1.26"]), at(30)));
    assert!(t.released().is_empty());
    assert!(!t.expire(at(30) + retention * 2, retention));
    assert_eq!(t.wanted(), set(&[&canonical("nginx:1.25"), &canonical("nginx:1.26")]));
    // Released again later: the retention starts over from then.
    t.remove(&key("blog", "web"), at(5000));
    assert_eq!(t.next_expiry(retention), Some(at(5000) + retention));
}

#[test]
fn deleting_a_deployment_releases_its_images() {
    let mut t = ImageTracker::default();
    t.upsert(key("shop", "web"), uses(&["nginx:1.25", "redis:7"]), at(0));
    t.upsert(key("blog", "web"), uses(&["redis:7"]), at(0));
    assert!(t.remove(&key("shop", "web"), at(50)));
    assert_eq!(t.released(), &BTreeMap::from([(canonical("nginx:1.25"), at(50))]));
    assert_eq!(t.in_use(), set(&[&canonical("redis:7")]));
}

#[test]
fn next_expiry_is_the_earliest_release() {
    let retention = Duration::from_secs(60);
    let mut t = ImageTracker::default();
    t.upsert(key("a", "a"), uses(&["a:1"]), at(0));
    t.upsert(key("b", "b"), uses(&["b:1"]), at(0));
    t.remove(&key("b", "b"), at(30));
    t.remove(&key("a", "a"), at(10));
    assert_eq!(t.next_expiry(retention), Some(at(70)));
    assert!(t.expire(at(71), retention));
    assert_eq!(t.next_expiry(retention), Some(at(90)));
}

#[test]
fn zero_retention_drops_released_images_at_the_next_expiry() {
    let mut t = ImageTracker::default();
    t.upsert(key("a", "a"), uses(&["a:1"]), at(0));
    t.upsert(key("a", "a"), uses(&["a:2"]), at(5));
    assert!(t.expire(at(5), Duration::ZERO));
    assert_eq!(t.wanted(), set(&[&canonical("a:2")]));
}

#[test]
fn replace_all_after_a_relist() {
    let mut t = ImageTracker::default();
    t.upsert(key("shop", "web"), uses(&["nginx:1.25"]), at(0));
    t.upsert(key("shop", "api"), uses(&["redis:7"]), at(0));
    let same: BTreeMap<_, _> = t.deployments().clone();
    assert!(!t.replace_all(same, at(10)), "same Deployments: no change");
    // While the watch was down, shop/api went away and shop/web moved on.
    let relisted = BTreeMap::from([(key("shop", "web"), uses(&["nginx:1.26"]))]);
    assert!(t.replace_all(relisted, at(20)));
    assert_eq!(t.in_use(), set(&[&canonical("nginx:1.26")]));
    assert_eq!(
        t.released(),
        &BTreeMap::from([(canonical("nginx:1.25"), at(20)), (canonical("redis:7"), at(20))])
    );
    assert_eq!(t.deployments().len(), 1);
}

#[test]
fn restored_released_images_survive_a_restart() {
    let retention = Duration::from_secs(3600);
    let old = canonical("nginx:1.25");
    let mut t = ImageTracker::default();
    t.restore_released(BTreeMap::from([(old.clone(), at(0))]));
    assert_eq!(t.wanted(), set(&[&old]));
    assert_eq!(t.next_expiry(retention), Some(at(3600)));
    // The first list after the restart: the Deployments do not use it, so it keeps its time.
    t.replace_all(BTreeMap::from([(key("shop", "web"), uses(&["nginx:1.26"]))]), at(100));
    assert_eq!(t.released().get(&old), Some(&at(0)));
    // An image remembered as released but in use after all is not released.
    let mut t = ImageTracker::default();
    t.restore_released(BTreeMap::from([(old.clone(), at(0))]));
    t.replace_all(BTreeMap::from([(key("shop", "web"), uses(&["nginx:1.25"]))]), at(100));
    assert!(t.released().is_empty());
    assert!(!t.expire(at(100_000), retention));
    assert_eq!(t.wanted(), set(&[&old]));
}

#[test]
fn a_change_of_pull_secrets_alone_is_reported() {
    // With INHERIT_PULL_SECRETS the mirrored secrets follow the Deployments: a Deployment that
    // only adds a pull secret (to fix a 401) must trigger a reconcile.
    let mut t = ImageTracker::default();
    let mut with_secret = uses(&["nginx:1.25"]);
    t.upsert(key("shop", "web"), with_secret.clone(), at(0));
    with_secret.pull_secrets = ["regcred".to_string()].into_iter().collect();
    assert!(t.upsert(key("shop", "web"), with_secret.clone(), at(1)), "secret added");
    assert!(!t.upsert(key("shop", "web"), with_secret.clone(), at(2)), "nothing new");
    let relisted = BTreeMap::from([(key("shop", "web"), uses(&["nginx:1.25"]))]);
    assert!(t.replace_all(relisted, at(3)), "secret gone after a relist");
    t.upsert(key("shop", "api"), with_secret, at(4));
    assert!(t.remove(&key("shop", "api"), at(5)), "its secret is no longer needed");
    // A Deployment without images or secrets changes nothing.
    assert!(!t.upsert(key("shop", "empty"), DeploymentImages::default(), at(6)));
    assert!(!t.remove(&key("shop", "empty"), at(7)));
}

// ---------------------------------------------------------------------------------------------
// plan_holders

/// The images of one namespace, each used by one Deployment.
fn in_namespaces(namespaces: &[(&str, &[&str])]) -> BTreeMap<String, BTreeMap<String, usize>> {
    namespaces
        .iter()
        .map(|(ns, images)| (ns.to_string(), images.iter().map(|i| (i.to_string(), 1)).collect()))
        .collect()
}

/// [`plan_holders`] with every watched image in one namespace, nothing retained, no namespace
/// limit.
fn plan_one(
    configured: &[Holder],
    watched: &BTreeSet<String>,
    excluded: &BTreeSet<String>,
    max: usize,
) -> HolderPlan {
    let images: Vec<&str> = watched.iter().map(String::as_str).collect();
    let in_use = if images.is_empty() { BTreeMap::new() } else { in_namespaces(&[("shop", &images)]) };
    plan_holders(
        configured,
        &in_use,
        &BTreeSet::new(),
        excluded,
        Limits { max_images: max, per_namespace: None },
    )
}

#[test]
fn configured_images_come_first_in_order_then_watched_sorted() {
    let configured = [holder("zeta", "redis:7"), holder("alpha", "quay.io/eclipse/che-theia:next")];
    let watched = set(&["ghcr.io/shop/web:2.0", "docker.io/library/busybox:1.36", "quay.io/a/b:1"]);
    let plan = plan_one(&configured, &watched, &BTreeSet::new(), 100);
    let images: Vec<&str> = plan.holders.iter().map(|h| h.image.as_str()).collect();
    assert_eq!(
        images,
        [
            "redis:7",
            "quay.io/eclipse/che-theia:next",
            "docker.io/library/busybox:1.36",
            "ghcr.io/shop/web:2.0",
            "quay.io/a/b:1"
        ]
    );
    assert_eq!(plan.holders[0], holder("zeta", "redis:7"), "configured names and forms are kept");
    assert_eq!(plan.holders[2].name, derived_holder_name("docker.io/library/busybox:1.36"));
    assert!(plan.overflow.is_empty());
}

#[test]
fn one_image_written_two_ways_is_held_once() {
    let configured = [holder("web", "nginx")];
    let watched = set(&["docker.io/library/nginx:latest", "docker.io/library/nginx:1.25"]);
    let plan = plan_one(&configured, &watched, &BTreeSet::new(), 100);
    assert_eq!(
        plan.holders,
        vec![
            holder("web", "nginx"),
            holder(&derived_holder_name("docker.io/library/nginx:1.25"), "docker.io/library/nginx:1.25")
        ]
    );
}

#[test]
fn quarantined_images_are_left_out() {
    let configured = [holder("bad", "quay.io/team/missing:1"), holder("good", "nginx:1.25")];
    let watched = set(&["docker.io/library/redis:7", "ghcr.io/shop/nope:0"]);
    let quarantined = set(&["quay.io/team/missing:1", "ghcr.io/shop/nope:0"]);
    let plan = plan_one(&configured, &watched, &quarantined, 2);
    let names: Vec<&str> = plan.holders.iter().map(|h| h.image.as_str()).collect();
    assert_eq!(names, ["nginx:1.25", "docker.io/library/redis:7"]);
    assert!(plan.overflow.is_empty(), "quarantined images do not take a place");
    // Quarantine is by canonical form, whatever the configured spelling.
    let plan =
        plan_one(&[holder("web", "nginx")], &BTreeSet::new(), &set(&["docker.io/library/nginx:latest"]), 5);
    assert!(plan.holders.is_empty());
}

#[test]
fn overflow_beyond_max_images_is_reported_not_dropped_silently() {
    let configured = [holder("a", "a:1"), holder("b", "b:1")];
    let watched = set(&["docker.io/library/c:1", "docker.io/library/d:1", "docker.io/library/e:1"]);
    let plan = plan_one(&configured, &watched, &BTreeSet::new(), 3);
    let held: Vec<&str> = plan.holders.iter().map(|h| h.image.as_str()).collect();
    assert_eq!(held, ["a:1", "b:1", "docker.io/library/c:1"]);
    assert_eq!(plan.overflow, ["docker.io/library/d:1", "docker.io/library/e:1"]);
    // Configured images overflow too (when MAX_IMAGES is smaller than IMAGES plus the rest).
    let plan = plan_one(&configured, &BTreeSet::new(), &BTreeSet::new(), 1);
    assert_eq!(plan.holders, vec![holder("a", "a:1")]);
    assert_eq!(plan.overflow, ["b:1"]);
    // Every image is either held or reported.
    let plan = plan_one(&configured, &watched, &BTreeSet::new(), 0);
    assert_eq!(plan.holders.len() + plan.overflow.len(), 5);
}

#[test]
fn one_change_does_not_rename_other_holders() {
    let configured = [holder("web", "nginx:1.25")];
    let before = plan_one(
        &configured,
        &set(&["docker.io/library/a:1", "docker.io/library/c:1"]),
        &BTreeSet::new(),
        100,
    );
    let after = plan_one(
        &configured,
        &set(&["docker.io/library/a:1", "docker.io/library/b:1", "docker.io/library/c:1"]),
        &BTreeSet::new(),
        100,
    );
    let names = |p: &HolderPlan| -> BTreeMap<String, String> {
        p.holders.iter().map(|h| (h.image.clone(), h.name.clone())).collect()
    };
    let (before, after) = (names(&before), names(&after));
    for (image, name) in &before {
        assert_eq!(after.get(image), Some(name), "{image} kept its name");
    }
    assert_eq!(after.len(), before.len() + 1);
    // And removing one leaves the others alone too.
    let removed = names(&plan_one(&configured, &set(&["docker.io/library/c:1"]), &BTreeSet::new(), 100));
    assert_eq!(removed.get("docker.io/library/c:1"), before.get("docker.io/library/c:1"));
}

#[test]
fn planning_is_deterministic() {
    let configured = [holder("web", "nginx:1.25"), holder("db", "postgres:16")];
    let watched = set(&["docker.io/library/a:1", "quay.io/x/y:2", "ghcr.io/z:3"]);
    let quarantined = set(&["quay.io/x/y:2"]);
    assert_eq!(
        plan_one(&configured, &watched, &quarantined, 3),
        plan_one(&configured, &watched, &quarantined, 3)
    );
}

#[test]
fn overflow_is_cut_fairly_across_namespaces_not_by_name() {
    // "aaa" labels many images: sorted, they would take every place; in turn, each namespace gets
    // one per round
    let in_use = in_namespaces(&[
        ("aaa", &["a/1:1", "a/2:1", "a/3:1", "a/4:1", "a/5:1"]),
        ("bbb", &["b/1:1"]),
        ("ccc", &["c/1:1", "c/2:1"]),
    ]);
    let limits = Limits { max_images: 5, per_namespace: None };
    let plan =
        plan_holders(&[holder("cfg", "nginx:1.25")], &in_use, &BTreeSet::new(), &BTreeSet::new(), limits);
    let held: Vec<&str> = plan.holders.iter().map(|h| h.image.as_str()).collect();
    // IMAGES first; then round 1: a/1, b/1, c/1; round 2: a/2 (then no room)
    assert_eq!(held, ["nginx:1.25", "a/1:1", "a/2:1", "b/1:1", "c/1:1"], "written sorted after IMAGES");
    assert_eq!(plan.overflow, ["c/2:1", "a/3:1", "a/4:1", "a/5:1"], "cut in the fair order");
    assert!(plan.over_namespace_limit.is_empty());
}

#[test]
fn a_namespace_stops_at_its_limit_and_a_shared_image_is_the_others_turn() {
    let in_use = in_namespaces(&[
        ("greedy", &["g/1:1", "g/2:1", "g/3:1", "shared:1"]),
        ("team", &["shared:1", "t/1:1"]),
    ]);
    let limits = Limits { max_images: 100, per_namespace: Some(2) };
    let plan = plan_holders(&[], &in_use, &set(&["old:1"]), &BTreeSet::new(), limits);
    let held: BTreeSet<&str> = plan.holders.iter().map(|h| h.image.as_str()).collect();
    // greedy adds g/1, g/2; team adds shared, t/1 (shared is in greedy's list too, and held)
    assert_eq!(
        held,
        ["g/1:1", "g/2:1", "old:1", "shared:1", "t/1:1"].into(),
        "retained images come after, unlimited"
    );
    assert_eq!(plan.over_namespace_limit, ["g/3:1"]);
    assert!(plan.overflow.is_empty());
    // an excluded image takes no place in the namespace's share either
    let plan = plan_holders(&[], &in_use, &BTreeSet::new(), &set(&["g/1:1"]), limits);
    assert_eq!(plan.over_namespace_limit, Vec::<String>::new(), "g/2 and g/3 fit once g/1 is excluded");
}

#[test]
fn retained_images_overflow_before_any_image_in_use() {
    let in_use = in_namespaces(&[("shop", &["z/in-use:1"])]);
    let limits = Limits { max_images: 1, per_namespace: None };
    let plan = plan_holders(&[], &in_use, &set(&["a/retained:1"]), &BTreeSet::new(), limits);
    assert_eq!(plan.holders.iter().map(|h| h.image.as_str()).collect::<Vec<_>>(), ["z/in-use:1"]);
    assert_eq!(plan.overflow, ["a/retained:1"]);
}

mod fair {
    use proptest::prelude::*;

    use super::*;

    fn namespaces() -> impl Strategy<Value = BTreeMap<String, BTreeMap<String, usize>>> {
        prop::collection::btree_map(
            (0..5usize).prop_map(|n| format!("ns{n}")),
            prop::collection::btree_map((0..12usize).prop_map(|i| format!("reg/i{i}:1")), 1..3usize, 1..8),
            0..5,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every wanted image is held or reported exactly once; within limits; and no namespace
        /// with fewer images held than its fair share lost one to a namespace with more.
        #[test]
        fn every_image_once_within_limits_and_fair(
            in_use in namespaces(),
            retained in prop::collection::btree_set((0..4usize).prop_map(|i| format!("old/r{i}:1")), 0..3),
            excluded in prop::collection::btree_set((0..12usize).prop_map(|i| format!("reg/i{i}:1")), 0..3),
            max_images in 1..20usize,
            per_namespace in prop::option::of(1..5usize),
        ) {
            let limits = Limits { max_images, per_namespace };
            let plan = plan_holders(&[], &in_use, &retained, &excluded, limits);
            let held: Vec<&String> = plan.holders.iter().map(|h| &h.image).collect();
            let mut all: Vec<&String> = held.iter().copied().chain(&plan.overflow).chain(&plan.over_namespace_limit).collect();
            all.sort();
            let mut wanted: Vec<&String> = in_use.values().flat_map(|m| m.keys()).chain(&retained).filter(|i| !excluded.contains(*i)).collect();
            wanted.sort();
            wanted.dedup();
            prop_assert_eq!(all, wanted, "each image held or reported once");
            prop_assert!(held.len() <= max_images);
            let mut sorted = held.clone();
            sorted.sort();
            prop_assert_eq!(&held, &sorted, "holders are written sorted");
            // Fair: a namespace that lost an image of its own to MAX_IMAGES holds at most one
            // image fewer than any other namespace holds of its own (a cut by name would not).
            let wanting = |image: &String| in_use.values().filter(|m| m.contains_key(image)).count();
            let held_of = |ns: &str| in_use[ns].keys().filter(|i| held.contains(i)).count();
            let exclusive_held_of =
                |ns: &str| in_use[ns].keys().filter(|i| held.contains(i) && wanting(i) == 1).count();
            for (ns, images) in &in_use {
                if images.keys().any(|i| wanting(i) == 1 && plan.overflow.contains(i)) {
                    for other in in_use.keys() {
                        prop_assert!(
                            exclusive_held_of(other) <= held_of(ns) + 1,
                            "{other} holds {} of its own, {ns} lost one holding {}",
                            exclusive_held_of(other),
                            held_of(ns)
                        );
                    }
                }
                // A namespace cut by its limit got its whole share (when MAX_IMAGES cut nothing).
                if let Some(limit) = per_namespace
                    && plan.overflow.is_empty()
                    && images.keys().any(|i| plan.over_namespace_limit.contains(i))
                {
                    prop_assert!(held_of(ns) >= limit, "{ns} was cut below its limit");
                }
            }
        }
    }
}

#[test]
fn restoring_released_images_keeps_the_deployments_already_seen() {
    let (old, used) = (canonical("nginx:1.25"), canonical("nginx:1.26"));
    let mut t = ImageTracker::default();
    t.upsert(key("shop", "web"), uses(&["nginx:1.26"]), at(0));
    // The leader's state arrives after the Deployments were listed (a follower taking over).
    t.restore_released(BTreeMap::from([(old.clone(), at(5)), (used.clone(), at(5))]));
    assert_eq!(t.deployments().len(), 1, "Deployments seen before are kept");
    assert_eq!(t.released().keys().collect::<Vec<_>>(), vec![&old], "an image in use is not released");
    assert_eq!(t.wanted(), set(&[&old, &used]));
}

// ---------------------------------------------------------------------------------------------
// The tracker's reference counts against recomputing from every Deployment

mod counted {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(DeploymentKey, DeploymentImages),
        Remove(DeploymentKey),
        ReplaceAll(BTreeMap<DeploymentKey, DeploymentImages>),
    }

    fn summary() -> impl Strategy<Value = DeploymentImages> {
        (prop::collection::btree_set(0..4usize, 0..3), prop::collection::btree_set(0..2usize, 0..2)).prop_map(
            |(images, secrets)| DeploymentImages {
                images: images.iter().map(|i| format!("reg/i{i}:1")).collect(),
                pull_secrets: secrets.iter().map(|s| format!("s{s}")).collect(),
                ..Default::default()
            },
        )
    }

    fn dkey() -> impl Strategy<Value = DeploymentKey> {
        (0..2usize, 0..3usize).prop_map(|(ns, n)| (format!("ns{ns}"), format!("d{n}")))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (dkey(), summary()).prop_map(|(k, s)| Op::Upsert(k, s)),
            2 => dkey().prop_map(Op::Remove),
            1 => prop::collection::btree_map(dkey(), summary(), 0..4).prop_map(Op::ReplaceAll),
        ]
    }

    /// Images and `(namespace, secret)`s in use, from scratch.
    fn in_use(
        all: &BTreeMap<DeploymentKey, DeploymentImages>,
    ) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
        let images = all.values().flat_map(|d| d.images.iter().cloned()).collect();
        let secrets = all
            .iter()
            .flat_map(|((ns, _), d)| d.pull_secrets.iter().map(|s| (ns.clone(), s.clone())))
            .collect();
        (images, secrets)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn counts_agree_with_recomputing(ops in prop::collection::vec(op(), 0..30)) {
            let mut tracker = ImageTracker::default();
            let mut all: BTreeMap<DeploymentKey, DeploymentImages> = BTreeMap::new();
            let mut released: BTreeSet<String> = BTreeSet::new();
            for (t, op) in ops.into_iter().enumerate() {
                let now = at(t as u64);
                let before = in_use(&all);
                let changed = match op {
                    Op::Upsert(k, s) => {
                        all.insert(k.clone(), s.clone());
                        tracker.upsert(k, s, now)
                    }
                    Op::Remove(k) => {
                        all.remove(&k);
                        tracker.remove(&k, now)
                    }
                    Op::ReplaceAll(m) => {
                        all = m.clone();
                        tracker.replace_all(m, now)
                    }
                };
                let after = in_use(&all);
                prop_assert_eq!(changed, before != after);
                prop_assert_eq!(&tracker.in_use(), &after.0);
                released.extend(before.0.difference(&after.0).cloned());
                released.retain(|i| !after.0.contains(i));
                prop_assert_eq!(tracker.released().keys().cloned().collect::<BTreeSet<_>>(), released.clone());
                prop_assert_eq!(tracker.deployments(), &all);
                prop_assert_eq!(tracker.pull_secret_refs().cloned().collect::<BTreeSet<_>>(), after.1);
                let mut by_namespace: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
                for ((ns, _), d) in &all {
                    for image in &d.images {
                        *by_namespace.entry(ns.clone()).or_default().entry(image.clone()).or_default() += 1;
                    }
                }
                prop_assert_eq!(tracker.by_namespace(), &by_namespace);
            }
        }
    }
}
