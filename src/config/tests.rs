use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use pretty_assertions::assert_eq;

use super::*;
use crate::labels::Requirement;
use crate::rollout::{Certificates, Endpoint, GateMode};

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::from_vars(vars(pairs), None)
}

/// A configuration that must be valid; the panic message lists every problem.
fn valid(pairs: &[(&str, &str)]) -> Config {
    parse(pairs).unwrap_or_else(|e| panic!("expected a valid configuration for {pairs:?}, got:\n{e}"))
}

/// The problems of a configuration that must be invalid.
fn problems(pairs: &[(&str, &str)]) -> Vec<ConfigError> {
    match parse(pairs) {
        Ok(c) => panic!("expected {pairs:?} to be rejected, got {c:#?}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

/// The one problem of a configuration that has exactly one.
fn problem(pairs: &[(&str, &str)]) -> ConfigError {
    let mut all = problems(pairs);
    assert_eq!(all.len(), 1, "expected exactly one problem for {pairs:?}, got {all:#?}");
    all.remove(0)
}

/// Asserts that setting `variable` to `value` (plus `extra`) gives one problem naming that
/// variable and that value, and returns what is expected.
fn rejects(variable: &str, value: &str) -> String {
    let e = problem(&[(variable, value)]);
    assert_eq!(e.variable, variable, "{value:?}");
    assert_eq!(e.value, value, "the error quotes the value as given");
    assert!(!e.expected.is_empty(), "{variable}={value:?}: the error says what is expected");
    e.expected
}

fn quantity(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn linux() -> BTreeMap<String, String> {
    BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())])
}

const PULLER_IMAGES: &str = "java11-maven=quay.io/eclipse/che-java11-maven:nightly;\
                             che-theia=quay.io/eclipse/che-theia:next";

// ---------------------------------------------------------------------------------------------
// Defaults

#[test]
fn every_variable_has_its_documented_default() {
    let c = valid(&[]);
    assert_eq!(c.images, vec![]);
    assert_eq!(c.daemonset_name, "kubernetes-image-puller");
    assert_eq!(c.daemonset_annotations, BTreeMap::new());
    assert_eq!(c.namespace, "k8s-image-puller");
    assert_eq!(c.deployment_name, None);
    assert_eq!(c.caching_interval, Duration::from_secs(3600));
    assert_eq!(c.resources.memory_request, quantity("10Mi"));
    assert_eq!(c.resources.memory_limit, quantity("20Mi"));
    assert_eq!(c.resources.cpu_request, quantity(".05"));
    assert_eq!(c.resources.cpu_limit, quantity(".2"));
    assert_eq!(c.node_selector, linux());
    assert_eq!(c.affinity, None);
    assert_eq!(c.tolerations, vec![]);
    assert_eq!(c.image_pull_secrets, Vec::<String>::new());
    assert_eq!(c.kip_image, DEFAULT_KIP_IMAGE);
    assert_eq!(c.priority_class_name, None);
    assert_eq!(c.image_pull_policy, None);
    assert_eq!(c.max_surge, MaxSurge::Nodes(10));
    assert!(c.watch.enabled);
    assert_eq!(c.watch.selector, LabelSelector::default_selector());
    assert_eq!(c.watch.selector.to_string(), "kwarm.io/enabled=true");
    assert_eq!(c.watch.namespaces, Namespaces::All);
    assert_eq!(c.watch.exclude_namespaces, BTreeSet::new());
    assert_eq!(c.watch.exclude_images, vec![]);
    assert!(!c.watch.inherit_pull_secrets);
    assert_eq!(c.image_retention, Duration::from_secs(24 * 3600));
    assert_eq!(c.pull_timeout, Duration::from_secs(600));
    assert_eq!(c.retry_backoff, Duration::from_secs(30));
    assert_eq!(c.max_retries, 3);
    assert_eq!(c.max_images, 100);
    assert_eq!(c.metrics_bind_address, Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
    assert_eq!(c.health_probe_bind_address, Some(SocketAddr::from(([0, 0, 0, 0], 8081))));
    assert!(c.leader_elect);
    assert_eq!(c.log_format, LogFormat::Text);
}

#[test]
fn blank_values_mean_the_default() {
    // ConfigMaps often carry `KEY: ""` for "not set".
    let blank: Vec<(&str, &str)> = VARIABLES.iter().map(|v| (v.name, "")).collect();
    assert_eq!(valid(&blank), valid(&[]));
    let spaces: Vec<(&str, &str)> = VARIABLES.iter().map(|v| (v.name, "  ")).collect();
    assert_eq!(valid(&spaces), valid(&[]));
}

#[test]
fn default_kip_image_is_kwarms_versioned_sleep_image() {
    assert!(DEFAULT_KIP_IMAGE.starts_with("ghcr.io/kwarm/sleep:v"), "{DEFAULT_KIP_IMAGE}");
    assert!(DEFAULT_KIP_IMAGE.ends_with(env!("CARGO_PKG_VERSION")));
    assert!(parse_image_reference(DEFAULT_KIP_IMAGE).is_ok());
}

#[test]
fn namespace_defaults_to_the_managers_own_namespace() {
    let c = Config::from_vars(vars(&[]), Some("tools".into())).expect("valid");
    assert_eq!(c.namespace, "tools");
    let c = Config::from_vars(vars(&[("NAMESPACE", "cache")]), Some("tools".into())).expect("valid");
    assert_eq!(c.namespace, "cache", "NAMESPACE wins over the pod's namespace");
    assert_eq!(valid(&[]).namespace, "k8s-image-puller");
}

#[test]
fn unrelated_environment_variables_are_ignored() {
    let c = valid(&[
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/home/nonroot"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("RUST_LOG", "debug"),
        ("POD_NAMESPACE", "somewhere"),
        // Lower case and look-alike names are not ours either.
        ("images", "=not an image"),
        ("IMAGES_EXTRA", "=not an image"),
        ("KWARM_MAX_IMAGES", "many"),
        ("CACHING_INTERVAL_MINUTES", "-5"),
        ("GARBAGE", "{{{"),
    ]);
    assert_eq!(c, valid(&[]));
}

#[test]
fn known_variables_cover_every_documented_variable() {
    // The Configuration table of DESIGN.md, in order.
    let documented = [
        "IMAGES",
        "DAEMONSET_NAME",
        "DAEMONSET_ANNOTATIONS",
        "NAMESPACE",
        "DEPLOYMENT_NAME",
        "CACHING_INTERVAL_HOURS",
        "CACHING_INTERVAL",
        "CACHING_MEMORY_REQUEST",
        "CACHING_MEMORY_LIMIT",
        "CACHING_CPU_REQUEST",
        "CACHING_CPU_LIMIT",
        "NODE_SELECTOR",
        "AFFINITY",
        "TOLERATIONS",
        "IMAGE_PULL_SECRETS",
        "KIP_IMAGE",
        "PRIORITY_CLASS_NAME",
        "IMAGE_PULL_POLICY",
        "MAX_CONCURRENT_NODES",
        "WATCH_DEPLOYMENTS",
        "DEPLOYMENT_SELECTOR",
        "WATCH_NAMESPACES",
        "EXCLUDE_NAMESPACES",
        "NAMESPACE_SELECTOR",
        "EXCLUDE_IMAGES",
        "IMAGE_RETENTION",
        "PULL_TIMEOUT",
        "RETRY_BACKOFF",
        "MAX_RETRIES",
        "INHERIT_PULL_SECRETS",
        "MAX_IMAGES",
        "MAX_IMAGES_PER_NAMESPACE",
        "DIGEST_CHECK_INTERVAL",
        "INSECURE_REGISTRIES",
        "NODE_GATE_TAINT",
        "NODE_GATE_TIMEOUT",
        "ROLLOUT_GATE",
        "ROLLOUT_GATE_TIMEOUT",
        "WEBHOOK_BIND_ADDRESS",
        "WEBHOOK_URL",
        "WEBHOOK_SERVICE",
        "WEBHOOK_SECRET",
        "WEBHOOK_CERT_DIR",
        "WEBHOOK_CONFIGURATION",
        "METRICS_BIND_ADDRESS",
        "HEALTH_PROBE_BIND_ADDRESS",
        "LEADER_ELECT",
        "LOG_FORMAT",
        "KIP_IMAGE_PLATFORMS",
        "CONFIG_MAP",
    ];
    let known: BTreeSet<&str> = VARIABLES.iter().map(|v| v.name).collect();
    assert_eq!(known, documented.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(known.len(), VARIABLES.len(), "no variable listed twice");
}

#[test]
fn every_known_variable_is_read() {
    // A value that no variable accepts: if a variable were listed but not read, no error
    // would name it. EXCLUDE_IMAGES takes any text (a substring to exclude).
    for variable in VARIABLES.iter().map(|v| v.name).filter(|v| *v != "EXCLUDE_IMAGES") {
        let all = problems(&[(variable, "{ not valid for anything ]")]);
        assert!(all.iter().any(|e| e.variable == variable), "{variable} was not checked: {all:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A kubernetes-image-puller ConfigMap, unchanged

/// The data of a kubernetes-image-puller ConfigMap as its Helm chart renders it.
fn puller_configmap() -> Vec<(String, String)> {
    let text = include_str!("../../tests/golden/input/kubernetes-image-puller-configmap.yaml");
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_yaml::from_str(text).expect("a ConfigMap");
    cm.data.expect("data").into_iter().collect()
}

#[test]
fn a_kubernetes_image_puller_configmap_works_unchanged() {
    let c = Config::from_vars(puller_configmap(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.images,
        vec![
            Holder { name: "java11-maven".into(), image: "quay.io/eclipse/che-java11-maven:nightly".into() },
            Holder { name: "che-theia".into(), image: "quay.io/eclipse/che-theia:next".into() },
            Holder {
                name: "java-plugin-runner".into(),
                image: "eclipse/che-remote-plugin-runner-java8:latest".into()
            },
        ]
    );
    assert_eq!(c.daemonset_name, "kubernetes-image-puller");
    assert_eq!(c.namespace, "k8s-image-puller");
    assert_eq!(c.deployment_name, None);
    assert_eq!(c.caching_interval, Duration::from_secs(3600));
    assert_eq!(c.resources.memory_request.as_str(), "10Mi");
    assert_eq!(c.resources.memory_limit.as_str(), "20Mi");
    assert_eq!(c.resources.cpu_request.as_str(), ".05");
    assert_eq!(c.resources.cpu_limit.as_str(), ".2");
    assert_eq!(c.node_selector, linux());
    assert_eq!(c.affinity, None);
    assert_eq!(c.tolerations, vec![]);
    assert_eq!(c.image_pull_secrets, Vec::<String>::new());
    assert_eq!(c.kip_image, DEFAULT_KIP_IMAGE);
    // Entries of the folded YAML scalar are separated by "; " and end in ";\n".
    let vars = puller_configmap();
    let images = &vars.iter().find(|(k, _)| k == "IMAGES").expect("IMAGES").1;
    assert!(images.contains("; che-theia=") && images.ends_with(";\n"), "{images:?}");
}

#[test]
fn the_puller_readme_example_images_parse() {
    let c = valid(&[("IMAGES", PULLER_IMAGES)]);
    let names: Vec<&str> = c.images.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["java11-maven", "che-theia"]);
}

// ---------------------------------------------------------------------------------------------
// IMAGES

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn images_keep_their_order_and_their_written_form() {
    let pinned = format!("ghcr.io/org/app@{DIGEST}");
    let value = format!("zeta=redis:7;alpha=nginx;mid={pinned};registry=127.0.0.1:5000/test/small:v1");
    let c = valid(&[("IMAGES", &value)]);
    assert_eq!(
        c.images,
        vec![
            Holder { name: "zeta".into(), image: "redis:7".into() },
            Holder { name: "alpha".into(), image: "nginx".into() },
            Holder { name: "mid".into(), image: pinned.clone() },
            Holder { name: "registry".into(), image: "127.0.0.1:5000/test/small:v1".into() },
        ]
    );
}

#[test]
fn images_tolerate_spaces_newlines_and_empty_entries() {
    let c = valid(&[("IMAGES", " ;a = nginx:1.25 ;\n\n b=redis:7 ;;\t")]);
    assert_eq!(
        c.images,
        vec![
            Holder { name: "a".into(), image: "nginx:1.25".into() },
            Holder { name: "b".into(), image: "redis:7".into() },
        ]
    );
}

#[test]
fn images_without_a_name_get_a_stable_derived_name() {
    let c = valid(&[("IMAGES", "nginx:1.25;quay.io/eclipse/che-theia:next")]);
    assert_eq!(c.images.len(), 2);
    assert_eq!(c.images[0].image, "nginx:1.25");
    assert_eq!(c.images[0].name, derived_holder_name("docker.io/library/nginx:1.25"));
    assert!(c.images[0].name.starts_with("nginx-1-25-"), "{}", c.images[0].name);
    assert_eq!(c.images[1].name, derived_holder_name("quay.io/eclipse/che-theia:next"));
    // The same image gives the same name whatever else is listed.
    let alone = valid(&[("IMAGES", "quay.io/eclipse/che-theia:next")]);
    assert_eq!(alone.images[0].name, c.images[1].name);
    // Named and unnamed entries mix.
    let mixed = valid(&[("IMAGES", "web=nginx:1.25;redis:7")]);
    assert_eq!(mixed.images[0].name, "web");
    assert_eq!(mixed.images[1].name, derived_holder_name("docker.io/library/redis:7"));
}

#[test]
fn image_entry_with_an_empty_name_is_rejected() {
    let e = problem(&[("IMAGES", "=quay.io/eclipse/che-theia:next")]);
    assert_eq!(e.variable, "IMAGES");
    assert_eq!(e.value, "=quay.io/eclipse/che-theia:next", "names the offending entry");
    assert!(e.expected.contains("container name \"\""), "{}", e.expected);
    assert!(e.expected.contains("DNS-1123"), "{}", e.expected);
}

#[test]
fn image_entries_with_invalid_container_names_are_rejected() {
    for name in ["Java11", "java_11", "-java", "java-", "java.11", "ja va", "j@va", "ünï"] {
        let entry = format!("{name}=quay.io/eclipse/che-java11-maven:nightly");
        let e = problem(&[("IMAGES", &entry)]);
        assert_eq!((e.variable, e.value.as_str()), ("IMAGES", entry.as_str()));
        assert!(e.expected.contains("DNS-1123"), "{name}: {}", e.expected);
        assert!(e.expected.contains(&format!("{name:?}")), "names the container name: {}", e.expected);
    }
}

#[test]
fn container_names_may_be_63_characters_not_64() {
    let ok = "a".repeat(63);
    let c = valid(&[("IMAGES", &format!("{ok}=nginx:1.25"))]);
    assert_eq!(c.images[0].name, ok);

    let long = format!("{}b", "a".repeat(63));
    let entry = format!("{long}=nginx:1.25");
    let e = problem(&[("IMAGES", &entry)]);
    assert_eq!(e.value, entry);
    assert!(e.expected.contains("1 to 63"), "{}", e.expected);
}

#[test]
fn duplicate_container_names_are_rejected() {
    let e = problem(&[("IMAGES", "java=quay.io/a/java:11;node=node:20;java=quay.io/a/java:17")]);
    assert_eq!(e.variable, "IMAGES");
    assert_eq!(e.value, "java=quay.io/a/java:17", "the second use is the offending entry");
    assert!(e.expected.contains("unique container names"), "{}", e.expected);
    assert!(e.expected.contains("\"java\""), "{}", e.expected);
}

#[test]
fn kwarms_own_container_names_are_reserved() {
    let e = problem(&[("IMAGES", "kip=nginx:1.25")]);
    assert_eq!(e.value, "kip=nginx:1.25");
    assert!(e.expected.contains("\"kip\""), "{}", e.expected);
    assert!(e.expected.contains("kwarm's own"), "{}", e.expected);
    let e = problem(&[("IMAGES", "idle=nginx:1.25")]);
    assert!(e.expected.contains("\"idle\""), "{}", e.expected);
    // Names that merely start with it are fine.
    assert_eq!(valid(&[("IMAGES", "kip2=nginx:1.25")]).images[0].name, "kip2");
}

#[test]
fn invalid_image_references_are_rejected() {
    for entry in [
        "a=",
        "a=:tag",
        "a=nginx:",
        "a=nginx:bad tag",
        "a=nginx@sha256:abc",
        "a=nginx@md5:0123456789abcdef0123456789abcdef",
        "a=Quay.io/Eclipse:Upper/x",
        "a=quay.io/UPPER/repo:1",
        "a=nginx:tag:again",
        "a=http://quay.io/x:1",
        "a=repo//double:1",
        "a=-leading:1",
        "not an image",
        "/nginx",
    ] {
        let all = problems(&[("IMAGES", entry)]);
        assert_eq!(all.len(), 1, "{entry:?}: {all:?}");
        assert_eq!(all[0].variable, "IMAGES");
        assert_eq!(all[0].value, entry.trim(), "names the entry");
        assert!(
            all[0].expected.contains("an image reference"),
            "{entry:?}: says what is expected: {}",
            all[0].expected
        );
    }
}

#[test]
fn the_same_image_written_two_ways_is_rejected() {
    for (first, second) in [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:latest", "index.docker.io/library/nginx"),
        ("library/nginx:1.25", "nginx:1.25"),
        ("quay.io/a/b:1", "quay.io/a/b:1"),
    ] {
        let value = format!("one={first};two={second}");
        let e = problem(&[("IMAGES", &value)]);
        assert_eq!(e.variable, "IMAGES");
        assert_eq!(e.value, format!("two={second}"), "{value}");
        assert!(e.expected.contains("same image"), "{}", e.expected);
        assert!(e.expected.contains(&format!("one={first}")), "names the first entry: {}", e.expected);
    }
    // Unnamed duplicates derive the same name: reported once, as a duplicate.
    let all = problems(&[("IMAGES", "nginx;docker.io/library/nginx:latest")]);
    assert_eq!(all.len(), 1, "{all:?}");
    // Different tags or registries are different images.
    assert_eq!(valid(&[("IMAGES", "nginx:1.25;nginx:1.26;quay.io/library/nginx:1.25")]).images.len(), 3);
}

#[test]
fn each_bad_image_entry_is_its_own_problem() {
    let all = problems(&[("IMAGES", "=a:1;Bad=b:1;ok=c:1;kip=d:1;e=not an image;ok=f:1;g=c:1")]);
    let values: Vec<&str> = all.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(values, ["=a:1", "Bad=b:1", "kip=d:1", "e=not an image", "ok=f:1", "g=c:1"]);
    assert!(all.iter().all(|e| e.variable == "IMAGES"));
}

#[test]
fn nothing_to_warm_is_rejected() {
    for images in [None, Some(""), Some(" ; ;")] {
        let mut pairs = vec![("WATCH_DEPLOYMENTS", "false")];
        if let Some(v) = images {
            pairs.push(("IMAGES", v));
        }
        let e = problem(&pairs);
        assert_eq!(e.variable, "IMAGES");
        assert!(e.expected.contains("nothing to warm"), "{}", e.expected);
        assert!(e.expected.contains("WATCH_DEPLOYMENTS=false"), "{}", e.expected);
    }
    // Either source alone is enough.
    assert!(valid(&[("WATCH_DEPLOYMENTS", "false"), ("IMAGES", "nginx:1.25")]).images.len() == 1);
    assert!(valid(&[("WATCH_DEPLOYMENTS", "true")]).images.is_empty());
    // A broken IMAGES is reported as such, not also as "nothing to warm".
    let all = problems(&[("WATCH_DEPLOYMENTS", "false"), ("IMAGES", "=x:1")]);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].expected.contains("container name"), "{all:?}");
}

#[test]
fn more_images_than_max_images_is_rejected_not_cut() {
    let e = problem(&[("IMAGES", "a=a:1;b=b:1;c=c:1"), ("MAX_IMAGES", "2")]);
    assert_eq!(e.variable, "IMAGES");
    assert_eq!(e.value, "3 entries");
    assert!(e.expected.contains("MAX_IMAGES=2"), "{}", e.expected);
    assert_eq!(valid(&[("IMAGES", "a=a:1;b=b:1"), ("MAX_IMAGES", "2")]).images.len(), 2);
    // The default bound, 100.
    let many: Vec<String> = (0..101).map(|i| format!("img{i}=registry.local/img:{i}")).collect();
    let e = problem(&[("IMAGES", &many.join(";"))]);
    assert!(e.expected.contains("MAX_IMAGES=100"), "{}", e.expected);
    assert_eq!(valid(&[("IMAGES", &many[..100].join(";"))]).images.len(), 100);
}

// ---------------------------------------------------------------------------------------------
// Names

#[test]
fn daemonset_name() {
    assert_eq!(valid(&[("DAEMONSET_NAME", "warm")]).daemonset_name, "warm");
    assert_eq!(valid(&[("DAEMONSET_NAME", "image.cache")]).daemonset_name, "image.cache");
    assert_eq!(valid(&[("DAEMONSET_NAME", &"d".repeat(63))]).daemonset_name, "d".repeat(63));
    for bad in ["Warm", "warm_cache", "-warm", "warm-", "a..b"] {
        assert!(rejects("DAEMONSET_NAME", bad).contains("DNS-1123"), "{bad}");
    }
    // A subdomain may be 253 characters, but the name is also a label value.
    let long = format!("{}.{}", "d".repeat(30), "d".repeat(33));
    assert!(rejects("DAEMONSET_NAME", &long).contains("at most 63"));
    rejects("DAEMONSET_NAME", &"d".repeat(64));
}

#[test]
fn namespace_and_deployment_name() {
    assert_eq!(valid(&[("NAMESPACE", "image-cache")]).namespace, "image-cache");
    for bad in ["Image-Cache", "a.b", "-x", &"n".repeat(64)] {
        rejects("NAMESPACE", bad);
    }
    assert_eq!(valid(&[("DEPLOYMENT_NAME", "kwarm")]).deployment_name.as_deref(), Some("kwarm"));
    assert_eq!(valid(&[("DEPLOYMENT_NAME", "kwarm.v2")]).deployment_name.as_deref(), Some("kwarm.v2"));
    rejects("DEPLOYMENT_NAME", "Kwarm");
    rejects("DEPLOYMENT_NAME", "kwarm manager");
}

#[test]
fn image_pull_secrets() {
    let c = valid(&[("IMAGE_PULL_SECRETS", "regcred;quay.pull-secret ; regcred;")]);
    assert_eq!(c.image_pull_secrets, ["regcred", "quay.pull-secret"], "order kept, duplicates once");
    let e = problem(&[("IMAGE_PULL_SECRETS", "regcred;Bad_Secret")]);
    assert_eq!((e.variable, e.value.as_str()), ("IMAGE_PULL_SECRETS", "regcred;Bad_Secret"));
    assert!(e.expected.contains("\"Bad_Secret\""), "{}", e.expected);
}

#[test]
fn kip_image() {
    let c = valid(&[("KIP_IMAGE", "127.0.0.1:5000/kwarm/sleep:dev")]);
    assert_eq!(c.kip_image, "127.0.0.1:5000/kwarm/sleep:dev");
    let pinned = format!("ghcr.io/kwarm/sleep@{DIGEST}");
    assert_eq!(valid(&[("KIP_IMAGE", &pinned)]).kip_image, pinned);
    assert!(rejects("KIP_IMAGE", "not an image").contains("image reference"));
    rejects("KIP_IMAGE", "sleep@sha256:short");
}

#[test]
fn priority_class_name() {
    let c = valid(&[("PRIORITY_CLASS_NAME", "system-node-critical")]);
    assert_eq!(c.priority_class_name.as_deref(), Some("system-node-critical"));
    rejects("PRIORITY_CLASS_NAME", "High Priority");
    rejects("PRIORITY_CLASS_NAME", "HIGH");
}

#[test]
fn image_pull_policy() {
    for (text, policy) in [
        ("Always", PullPolicy::Always),
        ("IfNotPresent", PullPolicy::IfNotPresent),
        ("Never", PullPolicy::Never),
    ] {
        assert_eq!(valid(&[("IMAGE_PULL_POLICY", text)]).image_pull_policy, Some(policy));
        assert_eq!(policy.as_str(), text);
    }
    // Kubernetes is case-sensitive here, so is kwarm.
    for bad in ["always", "ALWAYS", "IfNotPresent,Always", "Sometimes"] {
        assert!(rejects("IMAGE_PULL_POLICY", bad).contains("Always, IfNotPresent, Never"));
    }
}

// ---------------------------------------------------------------------------------------------
// Intervals and durations

#[test]
fn caching_interval_hours() {
    assert_eq!(valid(&[("CACHING_INTERVAL_HOURS", "1")]).caching_interval, Duration::from_secs(3600));
    assert_eq!(valid(&[("CACHING_INTERVAL_HOURS", "6")]).caching_interval, Duration::from_secs(6 * 3600));
    assert_eq!(valid(&[("CACHING_INTERVAL_HOURS", " 12 ")]).caching_interval, Duration::from_secs(12 * 3600));
    assert_eq!(
        valid(&[("CACHING_INTERVAL_HOURS", "8760")]).caching_interval,
        Duration::from_secs(8760 * 3600)
    );
    for bad in ["0", "-1", "-0", "1.5", "one", "1h", "8761", "99999999999999999999999"] {
        let expected = rejects("CACHING_INTERVAL_HOURS", bad);
        assert!(expected.contains("positive whole number of hours"), "{bad}: {expected}");
    }
}

#[test]
fn caching_interval_wins_over_hours() {
    let c = valid(&[("CACHING_INTERVAL", "30m"), ("CACHING_INTERVAL_HOURS", "6")]);
    assert_eq!(c.caching_interval, Duration::from_secs(30 * 60));
    assert_eq!(valid(&[("CACHING_INTERVAL", "1h30m")]).caching_interval, Duration::from_secs(5400));
    assert_eq!(valid(&[("CACHING_INTERVAL", "6h")]).caching_interval, Duration::from_secs(6 * 3600));
    // Blank falls back to the hours form.
    let c = valid(&[("CACHING_INTERVAL", ""), ("CACHING_INTERVAL_HOURS", "2")]);
    assert_eq!(c.caching_interval, Duration::from_secs(2 * 3600));
}

#[test]
fn bad_caching_interval() {
    for bad in ["0s", "0", "30", "soon", "-5m", "5 parsecs"] {
        assert!(!rejects("CACHING_INTERVAL", bad).is_empty());
    }
    assert!(rejects("CACHING_INTERVAL", "0s").contains("greater than zero"));
    // shorter than a minute would roll the holders all the time
    for short in ["1ns", "1s", "59s"] {
        assert!(rejects("CACHING_INTERVAL", short).contains("at least 1m"), "{short}");
    }
    assert_eq!(valid(&[("CACHING_INTERVAL", "1m")]).caching_interval, Duration::from_secs(60));
}

#[test]
fn durations() {
    let c = valid(&[
        ("IMAGE_RETENTION", "48h"),
        ("PULL_TIMEOUT", "5m"),
        ("RETRY_BACKOFF", "1m30s"),
        ("MAX_RETRIES", "5"),
    ]);
    assert_eq!(c.image_retention, Duration::from_secs(48 * 3600));
    assert_eq!(c.pull_timeout, Duration::from_secs(300));
    assert_eq!(c.retry_backoff, Duration::from_secs(90));
    assert_eq!(c.max_retries, 5);
    // Zero retention: drop unused images at once.
    assert_eq!(valid(&[("IMAGE_RETENTION", "0s")]).image_retention, Duration::ZERO);
    for variable in ["IMAGE_RETENTION", "PULL_TIMEOUT", "RETRY_BACKOFF"] {
        for bad in ["forever", "10", "-1h", "1 hour and a bit", "1.5.2h"] {
            let expected = rejects(variable, bad);
            assert!(expected.contains("a duration"), "{variable}={bad}: {expected}");
        }
    }
    for variable in ["PULL_TIMEOUT", "RETRY_BACKOFF"] {
        assert!(rejects(variable, "0s").contains("greater than zero"), "{variable}");
    }
}

#[test]
fn durations_are_bounded_so_clock_arithmetic_cannot_overflow() {
    // 300000000000y parses as a Duration, but adding it to the clock panics.
    for variable in ["CACHING_INTERVAL", "IMAGE_RETENTION", "PULL_TIMEOUT", "RETRY_BACKOFF"] {
        valid(&[(variable, "8760h")]);
        for huge in ["8761h", "2y", "300000000000y"] {
            assert_eq!(rejects(variable, huge), "a duration of at most a year (8760h)", "{variable}={huge}");
        }
    }
    // The largest backoff, doubled for every one of the most retries, still fits the clock.
    let c = valid(&[("RETRY_BACKOFF", "8760h"), ("MAX_RETRIES", "30")]);
    let longest = c.retry_backoff.saturating_mul(1 << 29);
    assert!(std::time::SystemTime::now().checked_add(longest).is_some());
}

#[test]
fn max_retries() {
    assert_eq!(valid(&[("MAX_RETRIES", "0")]).max_retries, 0);
    assert_eq!(valid(&[("MAX_RETRIES", "30")]).max_retries, 30);
    for bad in ["31", "-1", "three", "1.0"] {
        assert!(rejects("MAX_RETRIES", bad).contains("0 to 30"), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Resources

#[test]
fn resources_take_any_quantity_spelling() {
    let c = valid(&[
        ("CACHING_MEMORY_REQUEST", "5Mi"),
        ("CACHING_MEMORY_LIMIT", "64M"),
        ("CACHING_CPU_REQUEST", "10m"),
        ("CACHING_CPU_LIMIT", "1"),
    ]);
    assert_eq!(c.resources.memory_request.as_str(), "5Mi");
    assert_eq!(c.resources.memory_limit.as_str(), "64M");
    assert_eq!(c.resources.cpu_request.as_str(), "10m");
    assert_eq!(c.resources.cpu_limit.as_str(), "1");
    // Request equal to limit, written two ways.
    let c = valid(&[("CACHING_MEMORY_REQUEST", "1Gi"), ("CACHING_MEMORY_LIMIT", "1024Mi")]);
    assert_eq!(c.resources.memory_request.value(), c.resources.memory_limit.value());
    valid(&[("CACHING_CPU_REQUEST", "200m"), ("CACHING_CPU_LIMIT", ".2")]);
    valid(&[("CACHING_CPU_REQUEST", "0")]);
}

#[test]
fn bad_quantities_are_rejected() {
    for variable in
        ["CACHING_MEMORY_REQUEST", "CACHING_MEMORY_LIMIT", "CACHING_CPU_REQUEST", "CACHING_CPU_LIMIT"]
    {
        for bad in ["ten", "10MB", "10 Mi", "1.2.3", "10mi", "0x10", "Mi"] {
            let expected = rejects(variable, bad);
            assert!(expected.contains("Kubernetes quantity"), "{variable}={bad}: {expected}");
        }
        assert!(rejects(variable, "-1").contains("zero or more"), "{variable}");
    }
}

#[test]
fn request_above_limit_is_rejected() {
    let e = problem(&[("CACHING_MEMORY_REQUEST", "30Mi")]);
    assert_eq!((e.variable, e.value.as_str()), ("CACHING_MEMORY_REQUEST", "30Mi"));
    assert!(e.expected.contains("CACHING_MEMORY_LIMIT (20Mi)"), "{}", e.expected);

    let e = problem(&[("CACHING_CPU_REQUEST", "500m"), ("CACHING_CPU_LIMIT", ".25")]);
    assert_eq!((e.variable, e.value.as_str()), ("CACHING_CPU_REQUEST", "500m"));
    assert!(e.expected.contains("CACHING_CPU_LIMIT (.25)"), "{}", e.expected);

    // Only the limit set, below the default request: the limit is what the user wrote.
    let e = problem(&[("CACHING_MEMORY_LIMIT", "5Mi")]);
    assert_eq!((e.variable, e.value.as_str()), ("CACHING_MEMORY_LIMIT", "5Mi"));
    assert!(e.expected.contains("at least CACHING_MEMORY_REQUEST (10Mi, its default)"), "{}", e.expected);
    let e = problem(&[("CACHING_CPU_LIMIT", "10m")]);
    assert_eq!((e.variable, e.value.as_str()), ("CACHING_CPU_LIMIT", "10m"));
    assert!(e.expected.contains("CACHING_CPU_REQUEST (.05, its default)"), "{}", e.expected);
    // Both set: the request is reported.
    let e = problem(&[("CACHING_MEMORY_REQUEST", "10Mi"), ("CACHING_MEMORY_LIMIT", "5Mi")]);
    assert_eq!((e.variable, e.value.as_str()), ("CACHING_MEMORY_REQUEST", "10Mi"));

    // Both at once: two problems.
    let all = problems(&[("CACHING_CPU_REQUEST", "1"), ("CACHING_MEMORY_REQUEST", "1Gi")]);
    let variables: Vec<&str> = all.iter().map(|e| e.variable).collect();
    assert_eq!(variables, ["CACHING_MEMORY_REQUEST", "CACHING_CPU_REQUEST"]);
}

#[test]
fn a_bad_request_is_not_also_compared_with_the_limit() {
    // Only the value the user wrote is reported, not a comparison of the default with the limit.
    let all = problems(&[("CACHING_CPU_REQUEST", "lots"), ("CACHING_CPU_LIMIT", "10m")]);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!((all[0].variable, all[0].value.as_str()), ("CACHING_CPU_REQUEST", "lots"));
    let all = problems(&[("CACHING_MEMORY_REQUEST", "5Mi"), ("CACHING_MEMORY_LIMIT", "huge")]);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].variable, "CACHING_MEMORY_LIMIT");
}

// ---------------------------------------------------------------------------------------------
// JSON variables

#[test]
fn daemonset_annotations() {
    let c = valid(&[(
        "DAEMONSET_ANNOTATIONS",
        r#"{"team": "platform", "example.com/owner": "cache@example.com", "empty": ""}"#,
    )]);
    assert_eq!(
        c.daemonset_annotations,
        BTreeMap::from([
            ("empty".to_string(), String::new()),
            ("example.com/owner".to_string(), "cache@example.com".to_string()),
            ("team".to_string(), "platform".to_string()),
        ])
    );
    for bad in [
        "{",
        "team=platform",
        r#"["team"]"#,
        r#""team""#,
        r#"{"replicas": 3}"#,
        r#"{"nested": {"a": "b"}}"#,
        r#"{"flag": true}"#,
        r#"{"a": null}"#,
    ] {
        let expected = rejects("DAEMONSET_ANNOTATIONS", bad);
        assert!(expected.contains("JSON object of strings"), "{bad}: {expected}");
    }
    let expected = rejects("DAEMONSET_ANNOTATIONS", r#"{"bad key": "x"}"#);
    assert!(expected.contains("annotation key \"bad key\""), "{expected}");
    rejects("DAEMONSET_ANNOTATIONS", r#"{"Bad_Prefix/x": "y"}"#);
}

#[test]
fn node_selector_gets_linux_unless_an_os_is_chosen() {
    assert_eq!(valid(&[("NODE_SELECTOR", "{}")]).node_selector, linux());
    let c = valid(&[("NODE_SELECTOR", r#"{"disktype": "ssd", "node-role.kubernetes.io/worker": ""}"#)]);
    assert_eq!(
        c.node_selector,
        BTreeMap::from([
            ("disktype".to_string(), "ssd".to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("node-role.kubernetes.io/worker".to_string(), String::new()),
        ])
    );
    let c = valid(&[("NODE_SELECTOR", r#"{"kubernetes.io/os": "linux", "disktype": "ssd"}"#)]);
    assert_eq!(c.node_selector.get("kubernetes.io/os").map(String::as_str), Some("linux"));
    let c = valid(&[("NODE_SELECTOR", r#"{"beta.kubernetes.io/os": "linux"}"#)]);
    assert_eq!(c.node_selector, BTreeMap::from([("beta.kubernetes.io/os".to_string(), "linux".to_string())]));
}

#[test]
fn bad_node_selectors() {
    for bad in
        ["{", "disktype=ssd", "[]", r#"[{"disktype":"ssd"}]"#, r#"{"disktype": 1}"#, r#"{"a": {"b": "c"}}"#]
    {
        let expected = rejects("NODE_SELECTOR", bad);
        assert!(expected.contains("JSON object of label keys to values"), "{bad}: {expected}");
    }
    assert!(rejects("NODE_SELECTOR", r#"{"disk type": "ssd"}"#).contains("key \"disk type\""));
    assert!(rejects("NODE_SELECTOR", r#"{"disktype": "ssd!"}"#).contains("value \"ssd!\""));
    rejects("NODE_SELECTOR", &format!(r#"{{"disktype": "{}"}}"#, "s".repeat(64)));
}

const NODE_AFFINITY: &str = r#"{"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
    {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["build"]}]}]}}}"#;

#[test]
fn affinity() {
    assert_eq!(valid(&[("AFFINITY", "{}")]).affinity, None, "an empty affinity is no affinity");
    let affinity = valid(&[("AFFINITY", NODE_AFFINITY)]).affinity.expect("affinity set");
    let terms = affinity
        .node_affinity
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
        .map(|r| r.node_selector_terms)
        .expect("required node affinity");
    assert_eq!(terms.len(), 1);
    let expr = &terms[0].match_expressions.as_ref().expect("expressions")[0];
    assert_eq!((expr.key.as_str(), expr.operator.as_str()), ("pool", "In"));
    assert_eq!(expr.values.as_deref(), Some(&["build".to_string()][..]));
}

#[test]
fn bad_affinity() {
    for bad in ["{", "[]", r#""node""#, "null x", r#"{"nodeAffinity": []}"#] {
        let expected = rejects("AFFINITY", bad);
        assert!(expected.contains("JSON Affinity"), "{bad}: {expected}");
    }
    // Unknown fields, top level and nested: a typo must not be dropped silently.
    let expected =
        rejects("AFFINITY", r#"{"nodeAfinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}"#);
    assert!(expected.contains("unknown field nodeAfinity"), "{expected}");
    let nested = r#"{"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpresions": [{"key": "pool", "operator": "In", "values": ["b"]}]}]}}}"#;
    let expected = rejects("AFFINITY", nested);
    assert!(
        expected.contains(
            "unknown field nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpresions"
        ),
        "{expected}"
    );
}

const TOLERATIONS_JSON: &str = r#"[{"key": "dedicated", "operator": "Equal", "value": "cache", "effect": "NoSchedule"},
    {"operator": "Exists"}, {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "tolerationSeconds": 30}]"#;

#[test]
fn tolerations() {
    assert_eq!(valid(&[("TOLERATIONS", "[]")]).tolerations, vec![]);
    let t = valid(&[("TOLERATIONS", TOLERATIONS_JSON)]).tolerations;
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].key.as_deref(), Some("dedicated"));
    assert_eq!(t[0].effect.as_deref(), Some("NoSchedule"));
    assert_eq!(t[1].operator.as_deref(), Some("Exists"));
    assert_eq!(t[2].toleration_seconds, Some(30));
}

#[test]
fn bad_tolerations() {
    for bad in ["[", "{}", r#"{"key": "a"}"#, r#""dedicated""#, r#"[{"tolerationSeconds": "30"}]"#, "[1]"] {
        let expected = rejects("TOLERATIONS", bad);
        assert!(expected.contains("JSON array of Toleration"), "{bad}: {expected}");
    }
    let expected = rejects("TOLERATIONS", r#"[{"operator": "Exists"}, {"key": "a", "efect": "NoSchedule"}]"#);
    assert!(expected.contains("unknown field [1].efect"), "{expected}");
}

// ---------------------------------------------------------------------------------------------
// Platforms: holders only where KIP_IMAGE runs

fn architectures(c: &Config) -> Vec<&str> {
    c.kip_architectures.iter().map(String::as_str).collect()
}

#[test]
fn kwarms_sleep_image_runs_on_amd64_and_arm64() {
    let pinned = format!("mirror.corp/kwarm/sleep@sha256:{}", "0".repeat(64));
    for image in [None, Some("127.0.0.1:5000/kwarm/sleep:dev"), Some(pinned.as_str())] {
        let mut pairs = vec![("IMAGES", "nginx:1")];
        pairs.extend(image.map(|i| ("KIP_IMAGE", i)));
        let c = parse(&pairs).unwrap_or_else(|e| panic!("{image:?}: {e}"));
        assert_eq!(architectures(&c), ["amd64", "arm64"], "{image:?}");
        assert!(c.warnings.is_empty(), "{image:?}: {:?}", c.warnings);
    }
    // the puller's image is replaced by kwarm's, so kwarm's platforms apply
    let c = valid(&[("IMAGES", "nginx:1"), ("KIP_IMAGE", "quay.io/eclipse/kubernetes-image-puller:next")]);
    assert_eq!(architectures(&c), ["amd64", "arm64"]);
}

#[test]
fn another_kip_image_is_assumed_amd64_only_and_says_so() {
    let c = valid(&[("IMAGES", "nginx:1"), ("KIP_IMAGE", "registry.corp/tools/sleep:1")]);
    assert_eq!(architectures(&c), ["amd64"]);
    let shown: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0].starts_with(r#"KIP_IMAGE="registry.corp/tools/sleep:1": not kwarm's sleep image"#),
        "{shown:?}"
    );
    assert!(
        shown[0].contains("linux/amd64 nodes only") && shown[0].contains("KIP_IMAGE_PLATFORMS"),
        "{shown:?}"
    );
    // with its platforms given, nothing is assumed and nothing to say
    let c = valid(&[
        ("IMAGES", "nginx:1"),
        ("KIP_IMAGE", "registry.corp/tools/sleep:1"),
        ("KIP_IMAGE_PLATFORMS", " linux/arm64, linux/amd64,linux/arm64 "),
    ]);
    assert_eq!(architectures(&c), ["amd64", "arm64"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // it may also narrow kwarm's own (a mirror that copied one platform)
    let c = valid(&[("IMAGES", "nginx:1"), ("KIP_IMAGE_PLATFORMS", "linux/arm64")]);
    assert_eq!(architectures(&c), ["arm64"]);
}

#[test]
fn bad_kip_image_platforms() {
    for bad in ["amd64", "windows/amd64", "linux/", "linux/arm/v7", "linux/AMD 64", ",", "darwin/arm64"] {
        let e = problem(&[("IMAGES", "nginx:1"), ("KIP_IMAGE_PLATFORMS", bad)]);
        assert_eq!((e.variable, e.value.as_str()), ("KIP_IMAGE_PLATFORMS", bad));
        assert!(
            e.expected.contains("linux/ARCH") && e.expected.contains("Linux only"),
            "{bad}: {}",
            e.expected
        );
    }
}

#[test]
fn a_node_selector_for_nodes_the_holders_cannot_run_on_is_an_error() {
    for (selector, platforms) in [
        (r#"{"kubernetes.io/os": "windows"}"#, None),
        (r#"{"beta.kubernetes.io/os": "windows", "pool": "a"}"#, None),
        (r#"{"kubernetes.io/arch": "s390x"}"#, None),
        (r#"{"kubernetes.io/arch": "arm64"}"#, Some("linux/amd64")),
    ] {
        let mut pairs = vec![("IMAGES", "nginx:1"), ("NODE_SELECTOR", selector)];
        pairs.extend(platforms.map(|p| ("KIP_IMAGE_PLATFORMS", p)));
        let e = problem(&pairs);
        assert_eq!((e.variable, e.value.as_str()), ("NODE_SELECTOR", selector));
        let runs_on = platforms.unwrap_or("linux/amd64, linux/arm64");
        assert!(
            e.expected.contains("Linux nodes") && e.expected.contains(runs_on),
            "{selector}: {}",
            e.expected
        );
        assert!(e.expected.contains(DEFAULT_KIP_IMAGE), "names the image: {}", e.expected);
    }
    // nodes the image runs on: fine
    for selector in [r#"{"kubernetes.io/arch": "arm64"}"#, r#"{"kubernetes.io/os": "linux", "pool": "x"}"#] {
        valid(&[("IMAGES", "nginx:1"), ("NODE_SELECTOR", selector)]);
    }
    let c = valid(&[
        ("IMAGES", "nginx:1"),
        ("NODE_SELECTOR", r#"{"kubernetes.io/arch": "s390x"}"#),
        ("KIP_IMAGE_PLATFORMS", "linux/s390x"),
    ]);
    assert_eq!(architectures(&c), ["s390x"]);
}

fn required_node_affinity(terms: &str) -> String {
    format!(
        r#"{{"nodeAffinity":{{"requiredDuringSchedulingIgnoredDuringExecution":{{"nodeSelectorTerms":{terms}}}}}}}"#
    )
}

#[test]
fn an_affinity_for_nodes_the_holders_cannot_run_on_is_an_error() {
    let arch = |op: &str, values: &str| {
        format!(r#"{{"key":"kubernetes.io/arch","operator":"{op}","values":{values}}}"#)
    };
    let os_windows = r#"{"key":"kubernetes.io/os","operator":"In","values":["windows"]}"#;
    let zone = r#"{"key":"zone","operator":"In","values":["a"]}"#;
    for terms in [
        format!("[{{\"matchExpressions\":[{}]}}]", arch("In", r#"["s390x"]"#)),
        format!("[{{\"matchExpressions\":[{}]}}]", arch("NotIn", r#"["amd64","arm64"]"#)),
        format!("[{{\"matchExpressions\":[{zone},{os_windows}]}}]"),
        r#"[{"matchExpressions":[{"key":"beta.kubernetes.io/arch","operator":"DoesNotExist"}]}]"#.to_string(),
        format!(
            "[{{\"matchExpressions\":[{}]}},{{\"matchExpressions\":[{os_windows}]}}]",
            arch("In", r#"["ppc64le"]"#)
        ),
    ] {
        let affinity = required_node_affinity(&terms);
        let e = problem(&[("IMAGES", "nginx:1"), ("AFFINITY", &affinity)]);
        assert_eq!((e.variable, e.value.as_str()), ("AFFINITY", affinity.as_str()));
        assert!(e.expected.contains("linux/amd64, linux/arm64"), "{terms}: {}", e.expected);
    }
    // one term that can match is enough (terms are ORed); other keys are not judged
    for terms in [
        format!(
            "[{{\"matchExpressions\":[{}]}},{{\"matchExpressions\":[{zone}]}}]",
            arch("In", r#"["s390x"]"#)
        ),
        format!("[{{\"matchExpressions\":[{}]}}]", arch("In", r#"["s390x","arm64"]"#)),
        format!("[{{\"matchExpressions\":[{}]}}]", arch("NotIn", r#"["amd64"]"#)),
        r#"[{"matchExpressions":[{"key":"kubernetes.io/arch","operator":"Exists"}]}]"#.to_string(),
    ] {
        valid(&[("IMAGES", "nginx:1"), ("AFFINITY", &required_node_affinity(&terms))]);
    }
    // NODE_SELECTOR and AFFINITY together: each admits some platform, together none
    let amd64_only =
        required_node_affinity(&format!("[{{\"matchExpressions\":[{}]}}]", arch("In", r#"["amd64"]"#)));
    let e = problem(&[
        ("IMAGES", "nginx:1"),
        ("NODE_SELECTOR", r#"{"kubernetes.io/arch":"arm64"}"#),
        ("AFFINITY", &amd64_only),
    ]);
    assert_eq!(e.variable, "AFFINITY");
    assert!(e.expected.contains("together with NODE_SELECTOR"), "{}", e.expected);
    // a preferred term never keeps a holder off a node
    let preferred = r#"{"nodeAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"preference":{"matchExpressions":[{"key":"kubernetes.io/os","operator":"In","values":["windows"]}]}}]}}"#;
    valid(&[("IMAGES", "nginx:1"), ("AFFINITY", preferred)]);
}

#[test]
fn platform_problems_come_with_the_others() {
    let errors = problems(&[
        ("IMAGES", "nginx:1"),
        ("NODE_SELECTOR", r#"{"kubernetes.io/os": "windows"}"#),
        ("KIP_IMAGE_PLATFORMS", "windows/amd64"),
        ("MAX_RETRIES", "x"),
    ]);
    let variables: BTreeSet<&str> = errors.iter().map(|e| e.variable).collect();
    assert_eq!(variables, BTreeSet::from(["KIP_IMAGE_PLATFORMS", "MAX_RETRIES", "NODE_SELECTOR"]));
    // a NODE_SELECTOR and an AFFINITY that are both wrong on their own: both reported
    let s390x = required_node_affinity(
        r#"[{"matchExpressions":[{"key":"kubernetes.io/arch","operator":"In","values":["s390x"]}]}]"#,
    );
    let errors = problems(&[
        ("IMAGES", "nginx:1"),
        ("NODE_SELECTOR", r#"{"kubernetes.io/os": "windows"}"#),
        ("AFFINITY", &s390x),
    ]);
    let variables: Vec<&str> = errors.iter().map(|e| e.variable).collect();
    assert_eq!(variables, ["NODE_SELECTOR", "AFFINITY"]);
    assert!(!errors[1].expected.contains("NODE_SELECTOR"), "{}", errors[1].expected);
}

#[test]
fn holder_affinity_requires_the_architectures_in_every_required_term() {
    let arch_term = |values: &[&str]| NodeSelectorRequirement {
        key: "kubernetes.io/arch".into(),
        operator: "In".into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    };
    let required = |a: &Affinity| {
        a.node_affinity
            .clone()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms
    };
    // no AFFINITY: one term of its own
    let terms = required(&valid(&[("IMAGES", "nginx:1")]).holder_affinity());
    assert_eq!(
        terms,
        vec![NodeSelectorTerm {
            match_expressions: Some(vec![arch_term(&["amd64", "arm64"])]),
            ..Default::default()
        }]
    );
    // two ORed terms and a preference: the requirement goes into both terms, the preference stays
    let affinity = r#"{"nodeAffinity":{
        "requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[
            {"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]},
            {"matchFields":[{"key":"metadata.name","operator":"In","values":["n1"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"preference":{"matchExpressions":[{"key":"ssd","operator":"Exists"}]}}]},
        "podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"podAffinityTerm":{"topologyKey":"zone"}}]}}"#;
    let c = valid(&[
        ("IMAGES", "nginx:1"),
        ("KIP_IMAGE", "corp/sleep:1"),
        ("KIP_IMAGE_PLATFORMS", "linux/amd64"),
        ("AFFINITY", affinity),
    ]);
    let holder = c.holder_affinity();
    let terms = required(&holder);
    assert_eq!(terms.len(), 2);
    assert_eq!(terms[0].match_expressions.as_ref().unwrap()[1], arch_term(&["amd64"]));
    assert_eq!(terms[1].match_expressions.as_deref(), Some(&[arch_term(&["amd64"])][..]));
    assert_eq!(terms[1].match_fields, required(c.affinity.as_ref().unwrap())[1].match_fields);
    let user = c.affinity.as_ref().unwrap();
    let node =
        |a: &Affinity| a.node_affinity.clone().unwrap().preferred_during_scheduling_ignored_during_execution;
    assert_eq!(node(&holder), node(user));
    assert_eq!(holder.pod_anti_affinity, user.pod_anti_affinity);
}

// ---------------------------------------------------------------------------------------------
// Rollout and watching

#[test]
fn max_concurrent_nodes_forms() {
    for (text, surge) in [
        ("1", MaxSurge::Nodes(1)),
        ("10", MaxSurge::Nodes(10)),
        ("250", MaxSurge::Nodes(250)),
        (" 3 ", MaxSurge::Nodes(3)),
        ("1%", MaxSurge::Percent(1)),
        ("25%", MaxSurge::Percent(25)),
        ("100%", MaxSurge::Percent(100)),
    ] {
        assert_eq!(valid(&[("MAX_CONCURRENT_NODES", text)]).max_surge, surge, "{text}");
    }
    for bad in ["0", "-1", "0%", "101%", "%", "ten", "1.5", "10 %", "2147483648", "25%%"] {
        let expected = rejects("MAX_CONCURRENT_NODES", bad);
        assert!(expected.contains("percentage"), "{bad}: {expected}");
    }
}

#[test]
fn watch_deployments_and_booleans() {
    for (text, value) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("false", false),
        ("False", false),
        ("0", false),
        ("no", false),
    ] {
        let c = valid(&[("WATCH_DEPLOYMENTS", text), ("IMAGES", "nginx:1.25")]);
        assert_eq!(c.watch.enabled, value, "{text}");
    }
    for variable in ["WATCH_DEPLOYMENTS", "INHERIT_PULL_SECRETS", "LEADER_ELECT"] {
        assert_eq!(rejects(variable, "maybe"), "true or false");
        rejects(variable, "on");
    }
    assert!(valid(&[("INHERIT_PULL_SECRETS", "true")]).watch.inherit_pull_secrets);
    assert!(!valid(&[("LEADER_ELECT", "false")]).leader_elect);
}

#[test]
fn deployment_selector_syntax() {
    let c = valid(&[("DEPLOYMENT_SELECTOR", "app.kubernetes.io/part-of=shop, tier in (web,api),!legacy")]);
    assert_eq!(
        c.watch.selector.0,
        vec![
            Requirement::Equals("app.kubernetes.io/part-of".into(), "shop".into()),
            Requirement::In("tier".into(), vec!["web".into(), "api".into()]),
            Requirement::NotExists("legacy".into()),
        ]
    );
    assert_eq!(c.watch.selector.to_string(), "app.kubernetes.io/part-of=shop,tier in (web,api),!legacy");
    assert_eq!(
        valid(&[("DEPLOYMENT_SELECTOR", "warm")]).watch.selector.0,
        vec![Requirement::Exists("warm".into())]
    );
    for bad in ["a in b", "tier in (web", "=b", "a=b,", "a b", "bad key=x", "a=-x"] {
        rejects("DEPLOYMENT_SELECTOR", bad);
    }
}

#[test]
fn watch_namespaces_star_or_a_list() {
    assert_eq!(valid(&[("WATCH_NAMESPACES", "*")]).watch.namespaces, Namespaces::All);
    let only = |v: &[&str]| Namespaces::Only(v.iter().map(|s| s.to_string()).collect());
    assert_eq!(valid(&[("WATCH_NAMESPACES", "team-a")]).watch.namespaces, only(&["team-a"]));
    assert_eq!(
        valid(&[("WATCH_NAMESPACES", "team-b, team-a team-c\nteam-a,,")]).watch.namespaces,
        only(&["team-a", "team-b", "team-c"])
    );
    for bad in ["team-a,*", "* team-a", "Team-A", "team_a", "team.a"] {
        rejects("WATCH_NAMESPACES", bad);
    }
    let c = valid(&[("EXCLUDE_NAMESPACES", "kube-system, kube-public")]);
    assert_eq!(
        c.watch.exclude_namespaces,
        BTreeSet::from(["kube-public".to_string(), "kube-system".to_string()])
    );
    rejects("EXCLUDE_NAMESPACES", "*");
    rejects("EXCLUDE_NAMESPACES", "Kube-System");
}

#[test]
fn namespace_selection() {
    let c = valid(&[("WATCH_NAMESPACES", "team-a team-b"), ("EXCLUDE_NAMESPACES", "team-b")]);
    assert!(c.watch.namespace_selected("team-a"));
    assert!(!c.watch.namespace_selected("team-b"), "excluded wins over listed");
    assert!(!c.watch.namespace_selected("team-c"));
    let c = valid(&[("EXCLUDE_NAMESPACES", "kube-system")]);
    assert!(c.watch.namespace_selected("anything"));
    assert!(!c.watch.namespace_selected("kube-system"));
}

#[test]
fn exclude_images_substrings_and_globs() {
    let c = valid(&[("EXCLUDE_IMAGES", "internal.example.com, *:latest,docker.io/library/redis:?")]);
    assert_eq!(
        c.watch.exclude_images,
        vec![
            ImagePattern::Substring("internal.example.com".into()),
            ImagePattern::Glob("*:latest".into()),
            ImagePattern::Glob("docker.io/library/redis:?".into()),
        ]
    );
    let excluded = |image: &str| c.watch.image_excluded(image);
    assert!(excluded("internal.example.com/team/app:1"));
    assert!(excluded("docker.io/library/nginx:latest"));
    assert!(excluded("docker.io/library/redis:7"));
    assert!(!excluded("docker.io/library/redis:7.2"), "? is one character");
    assert!(!excluded("docker.io/library/nginx:1.25"));
    assert!(!excluded("quay.io/latest/app:v1"), "a glob matches the whole reference");
}

#[test]
fn glob_matching() {
    for (pattern, text, expected) in [
        ("*", "", true),
        ("*", "anything", true),
        ("a*c", "abc", true),
        ("a*c", "ac", true),
        ("a*c", "abcd", false),
        ("*b*", "abc", true),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("**", "x", true),
        ("*a*a*a", "aaaa", true),
        ("*a*a*a", "aab", false),
        ("quay.io/*/che-*:next", "quay.io/eclipse/che-theia:next", true),
        ("quay.io/*/che-*:next", "quay.io/eclipse/che-theia:nightly", false),
        ("", "", true),
        ("", "a", false),
    ] {
        assert_eq!(glob_match(pattern.as_bytes(), text.as_bytes()), expected, "{pattern:?} vs {text:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Manager settings

#[test]
fn max_images() {
    assert_eq!(valid(&[("MAX_IMAGES", "1")]).max_images, 1);
    assert_eq!(valid(&[("MAX_IMAGES", "1000")]).max_images, 1000);
    for bad in ["0", "1001", "-5", "lots"] {
        assert!(rejects("MAX_IMAGES", bad).contains("1 to 1000"), "{bad}");
    }
}

#[test]
fn bind_addresses() {
    let addr = |s: &str| Some(s.parse::<SocketAddr>().expect("address"));
    for (text, expected) in [
        (":9090", addr("0.0.0.0:9090")),
        ("127.0.0.1:9090", addr("127.0.0.1:9090")),
        ("[::]:9090", addr("[::]:9090")),
        ("[::1]:9090", addr("[::1]:9090")),
        ("0", None),
    ] {
        assert_eq!(valid(&[("METRICS_BIND_ADDRESS", text)]).metrics_bind_address, expected, "{text}");
        let c = valid(&[("HEALTH_PROBE_BIND_ADDRESS", text), ("METRICS_BIND_ADDRESS", ":7000")]);
        assert_eq!(c.health_probe_bind_address, expected, "{text}");
    }
    for bad in ["8080", "localhost:8080", ":http", ":99999", "0.0.0.0", "off"] {
        assert!(rejects("METRICS_BIND_ADDRESS", bad).contains("or 0 to turn it off"), "{bad}");
    }
}

#[test]
fn equal_ports_are_rejected() {
    let e = problem(&[("METRICS_BIND_ADDRESS", ":8081")]);
    assert_eq!((e.variable, e.value.as_str()), ("HEALTH_PROBE_BIND_ADDRESS", ":8081"));
    assert!(e.expected.contains("different from METRICS_BIND_ADDRESS"), "{}", e.expected);
    let e = problem(&[("METRICS_BIND_ADDRESS", "127.0.0.1:9000"), ("HEALTH_PROBE_BIND_ADDRESS", ":9000")]);
    assert_eq!(e.value, ":9000");
    // Turning one off, or both off, is fine.
    valid(&[("METRICS_BIND_ADDRESS", "0"), ("HEALTH_PROBE_BIND_ADDRESS", ":8080")]);
    valid(&[("METRICS_BIND_ADDRESS", "0"), ("HEALTH_PROBE_BIND_ADDRESS", "0")]);
    // Port 0 means "any free port" and never conflicts.
    valid(&[("METRICS_BIND_ADDRESS", ":0"), ("HEALTH_PROBE_BIND_ADDRESS", ":0")]);
}

#[test]
fn log_format() {
    assert_eq!(valid(&[("LOG_FORMAT", "json")]).log_format, LogFormat::Json);
    assert_eq!(valid(&[("LOG_FORMAT", "JSON")]).log_format, LogFormat::Json);
    assert_eq!(valid(&[("LOG_FORMAT", "text")]).log_format, LogFormat::Text);
    assert_eq!(rejects("LOG_FORMAT", "xml"), "text or json");
}

// ---------------------------------------------------------------------------------------------
// Every variable set to a valid non-default value

#[test]
fn every_variable_takes_a_non_default_value() {
    let c = valid(&[
        ("IMAGES", PULLER_IMAGES),
        ("DAEMONSET_NAME", "warm"),
        ("DAEMONSET_ANNOTATIONS", r#"{"team": "platform"}"#),
        ("NAMESPACE", "cache"),
        ("DEPLOYMENT_NAME", "kwarm"),
        ("CACHING_INTERVAL_HOURS", "3"),
        ("CACHING_MEMORY_REQUEST", "4Mi"),
        ("CACHING_MEMORY_LIMIT", "8Mi"),
        ("CACHING_CPU_REQUEST", "1m"),
        ("CACHING_CPU_LIMIT", "100m"),
        ("NODE_SELECTOR", r#"{"pool": "build"}"#),
        ("AFFINITY", NODE_AFFINITY),
        ("TOLERATIONS", TOLERATIONS_JSON),
        ("IMAGE_PULL_SECRETS", "regcred"),
        ("KIP_IMAGE", "127.0.0.1:5000/kwarm/sleep:dev"),
        ("PRIORITY_CLASS_NAME", "image-cache"),
        ("IMAGE_PULL_POLICY", "IfNotPresent"),
        ("MAX_CONCURRENT_NODES", "20%"),
        ("WATCH_DEPLOYMENTS", "false"),
        ("DEPLOYMENT_SELECTOR", "warm=yes"),
        ("WATCH_NAMESPACES", "shop"),
        ("EXCLUDE_NAMESPACES", "kube-system"),
        ("EXCLUDE_IMAGES", "*:latest"),
        ("IMAGE_RETENTION", "1h"),
        ("PULL_TIMEOUT", "2m"),
        ("RETRY_BACKOFF", "10s"),
        ("MAX_RETRIES", "1"),
        ("INHERIT_PULL_SECRETS", "true"),
        ("MAX_IMAGES", "10"),
        ("METRICS_BIND_ADDRESS", "127.0.0.1:9090"),
        ("HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:9091"),
        ("LEADER_ELECT", "false"),
        ("LOG_FORMAT", "json"),
    ]);
    let d = valid(&[]);
    // Every field differs from the default one.
    assert_ne!(c.images, d.images);
    assert_ne!(c.daemonset_name, d.daemonset_name);
    assert_ne!(c.daemonset_annotations, d.daemonset_annotations);
    assert_ne!(c.namespace, d.namespace);
    assert_ne!(c.deployment_name, d.deployment_name);
    assert_eq!(c.caching_interval, Duration::from_secs(3 * 3600));
    assert_ne!(c.resources, d.resources);
    assert_eq!(
        c.node_selector,
        BTreeMap::from([
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("pool".to_string(), "build".to_string())
        ])
    );
    assert!(c.affinity.is_some());
    assert_eq!(c.tolerations.len(), 3);
    assert_eq!(c.image_pull_secrets, ["regcred"]);
    assert_ne!(c.kip_image, d.kip_image);
    assert_eq!(c.priority_class_name.as_deref(), Some("image-cache"));
    assert_eq!(c.image_pull_policy, Some(PullPolicy::IfNotPresent));
    assert_eq!(c.max_surge, MaxSurge::Percent(20));
    assert!(!c.watch.enabled);
    assert_eq!(c.watch.selector.to_string(), "warm=yes");
    assert_ne!(c.watch.namespaces, d.watch.namespaces);
    assert_ne!(c.watch.exclude_namespaces, d.watch.exclude_namespaces);
    assert_ne!(c.watch.exclude_images, d.watch.exclude_images);
    assert!(c.watch.inherit_pull_secrets);
    assert_eq!(c.image_retention, Duration::from_secs(3600));
    assert_eq!(c.pull_timeout, Duration::from_secs(120));
    assert_eq!(c.retry_backoff, Duration::from_secs(10));
    assert_eq!(c.max_retries, 1);
    assert_eq!(c.max_images, 10);
    assert_ne!(c.metrics_bind_address, d.metrics_bind_address);
    assert_ne!(c.health_probe_bind_address, d.health_probe_bind_address);
    assert!(!c.leader_elect);
    assert_eq!(c.log_format, LogFormat::Json);
}

// ---------------------------------------------------------------------------------------------
// Reporting

#[test]
fn every_problem_is_reported_at_once() {
    let all = problems(&[
        ("IMAGES", "=nginx:1.25;ok=redis:7;Bad=x:1"),
        ("DAEMONSET_NAME", "Bad_Name"),
        ("DAEMONSET_ANNOTATIONS", "[]"),
        ("CACHING_INTERVAL_HOURS", "0"),
        ("CACHING_MEMORY_REQUEST", "lots"),
        ("CACHING_CPU_REQUEST", "1"),
        ("NODE_SELECTOR", "{"),
        ("AFFINITY", r#"{"nodeAfinity": {"x": 1}}"#),
        ("TOLERATIONS", "{}"),
        ("IMAGE_PULL_POLICY", "always"),
        ("MAX_CONCURRENT_NODES", "0"),
        ("WATCH_NAMESPACES", "*,a"),
        ("PULL_TIMEOUT", "0s"),
        ("RETRY_BACKOFF", "soon"),
        ("METRICS_BIND_ADDRESS", ":8081"),
        ("LOG_FORMAT", "yaml"),
        ("PATH", "/bin"),
    ]);
    let variables: Vec<&str> = all.iter().map(|e| e.variable).collect();
    assert_eq!(
        variables,
        [
            "IMAGES",
            "IMAGES",
            "DAEMONSET_NAME",
            "DAEMONSET_ANNOTATIONS",
            "CACHING_INTERVAL_HOURS",
            "CACHING_MEMORY_REQUEST",
            "CACHING_CPU_REQUEST",
            "NODE_SELECTOR",
            "AFFINITY",
            "TOLERATIONS",
            "IMAGE_PULL_POLICY",
            "MAX_CONCURRENT_NODES",
            "WATCH_NAMESPACES",
            "PULL_TIMEOUT",
            "RETRY_BACKOFF",
            "LOG_FORMAT",
            "HEALTH_PROBE_BIND_ADDRESS",
        ],
        "{all:#?}"
    );
    assert_eq!(all.len(), 17);
}

#[test]
fn error_display_names_variable_value_and_expectation() {
    let e = problem(&[("CACHING_INTERVAL_HOURS", "0")]);
    assert_eq!(
        e.to_string(),
        r#"CACHING_INTERVAL_HOURS: invalid value "0": a positive whole number of hours, e.g. 1 or 6"#
    );
    let e = problem(&[("IMAGES", "=quay.io/eclipse/che-theia:next")]);
    let line = e.to_string();
    assert!(
        line.starts_with(r#"IMAGES: invalid value "=quay.io/eclipse/che-theia:next": container name """#),
        "{line}"
    );
    // Values with quotes or newlines stay on one line.
    let e = problem(&[("LOG_FORMAT", "te\"xt\nmore")]);
    assert_eq!(e.to_string(), r#"LOG_FORMAT: invalid value "te\"xt\nmore": text or json"#);
}

#[test]
fn all_errors_display_one_per_line() {
    let errors = parse(&[("CACHING_INTERVAL_HOURS", "-1"), ("MAX_RETRIES", "x"), ("IMAGES", "a=b=c")])
        .expect_err("invalid");
    let text = errors.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("IMAGES: invalid value \"a=b=c\": "), "{text}");
    assert!(lines[1].starts_with("CACHING_INTERVAL_HOURS: invalid value \"-1\": "), "{text}");
    assert!(lines[2].starts_with("MAX_RETRIES: invalid value \"x\": "), "{text}");
    assert!(!text.ends_with('\n'));
    let _: &dyn std::error::Error = &errors;
}

#[test]
fn parsing_is_pure() {
    let pairs = [("IMAGES", PULLER_IMAGES), ("TOLERATIONS", TOLERATIONS_JSON), ("AFFINITY", NODE_AFFINITY)];
    assert_eq!(valid(&pairs), valid(&pairs));
    // Order of the variables does not matter.
    let mut reversed = pairs;
    reversed.reverse();
    assert_eq!(valid(&reversed), valid(&pairs));
}

#[test]
fn tolerations_follow_the_api_servers_rules() {
    for bad in [
        r#"[{"operator":"exists"}]"#,
        r#"[{"key":"a","operator":"Exists","value":"x"}]"#,
        r#"[{"key":"a","effect":"NoSchedul"}]"#,
        r#"[{"operator":"Equal","value":"x"}]"#,
        r#"[{"key":"a","effect":"NoSchedule","tolerationSeconds":5}]"#,
    ] {
        let e = problem(&[("IMAGES", "nginx:1"), ("TOLERATIONS", bad)]);
        assert_eq!(e.variable, "TOLERATIONS", "{bad}");
    }
    let ok = valid(&[
        ("IMAGES", "nginx:1"),
        (
            "TOLERATIONS",
            r#"[{"operator":"Exists"},{"key":"gpu","operator":"Equal","value":"true","effect":"NoExecute","tolerationSeconds":30}]"#,
        ),
    ]);
    assert_eq!(ok.tolerations.len(), 2);
}

#[test]
fn affinity_operators_are_checked() {
    let bad = r#"{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"Within","values":["a"]}]}]}}}"#;
    assert_eq!(problem(&[("IMAGES", "nginx:1"), ("AFFINITY", bad)]).variable, "AFFINITY");
    let no_values = r#"{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In"}]}]}}}"#;
    assert_eq!(problem(&[("IMAGES", "nginx:1"), ("AFFINITY", no_values)]).variable, "AFFINITY");
    let good = r#"{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]},{"key":"gpu","operator":"DoesNotExist"}]}]}}}"#;
    assert!(valid(&[("IMAGES", "nginx:1"), ("AFFINITY", good)]).affinity.is_some());
}

#[test]
fn the_pullers_own_kip_image_is_replaced_by_kwarms_sleep_image_with_a_warning() {
    // A kubernetes-image-puller ConfigMap names its own image, which has no `/sleep --copy-to`:
    // from its registry, from a mirror (also a renamed one), with a tag or a digest.
    let digest = format!("sha256:{}", "a".repeat(64));
    for puller in [
        "quay.io/eclipse/kubernetes-image-puller:next".to_string(),
        "quay.io/eclipse/kubernetes-image-puller".to_string(),
        format!("mirror.corp:5000/quay.io/eclipse/kubernetes-image-puller@{digest}"),
        "registry.local/che/eclipse-kubernetes-image-puller:7.90".to_string(),
        "kubernetes-image-puller:next".to_string(),
    ] {
        let c = valid(&[("IMAGES", "nginx:1"), ("KIP_IMAGE", &puller)]);
        assert_eq!(c.kip_image, DEFAULT_KIP_IMAGE, "{puller}");
        assert_eq!(c.warnings.len(), 1, "{puller}: one warning");
        let w = &c.warnings[0];
        assert_eq!((w.variable.as_str(), w.value.as_str()), ("KIP_IMAGE", puller.as_str()));
        assert!(w.message.contains(DEFAULT_KIP_IMAGE), "names the image used instead: {w}");
        assert!(w.message.contains("mirror"), "tells air-gapped users what to do: {w}");
    }
    let own = valid(&[("IMAGES", "nginx:1"), ("KIP_IMAGE", "registry.example.com/kwarm/sleep:1")]);
    assert_eq!(own.kip_image, "registry.example.com/kwarm/sleep:1");
    assert!(own.warnings.is_empty());
    // a repository that merely has the name in a parent path is not the puller's image
    let other = valid(&[("IMAGES", "nginx:1"), ("KIP_IMAGE", "mirror/kubernetes-image-puller/sleep:1")]);
    assert_eq!(other.kip_image, "mirror/kubernetes-image-puller/sleep:1");
}

#[test]
fn json_null_means_unset_as_for_the_puller() {
    let c = valid(&[
        ("IMAGES", "nginx:1"),
        ("NODE_SELECTOR", "null"),
        ("AFFINITY", " null "),
        ("TOLERATIONS", "null"),
        ("DAEMONSET_ANNOTATIONS", "null"),
    ]);
    assert_eq!(c.node_selector, linux());
    assert_eq!(c.affinity, None);
    assert!(c.tolerations.is_empty());
    assert!(c.daemonset_annotations.is_empty());
    assert!(c.warnings.is_empty());
    // other JSON that is not the expected shape stays an error naming the variable
    assert_eq!(problem(&[("IMAGES", "nginx:1"), ("NODE_SELECTOR", "[]")]).variable, "NODE_SELECTOR");
    assert_eq!(problem(&[("IMAGES", "nginx:1"), ("TOLERATIONS", "{}")]).variable, "TOLERATIONS");
}

#[test]
fn images_with_the_pullers_separators_and_whitespace() {
    // empty entries, a trailing `;`, whitespace and newlines (a YAML folded scalar) are accepted
    let c = valid(&[("IMAGES", " \n a=nginx:1 ;; b = redis:7 ;\n ; ")]);
    let got: Vec<(&str, &str)> = c.images.iter().map(|h| (h.name.as_str(), h.image.as_str())).collect();
    assert_eq!(got, vec![("a", "nginx:1"), ("b", "redis:7")]);
    // an entry with two `=` is ambiguous: an error naming it
    let e = problem(&[("IMAGES", "a=b=nginx:1")]);
    assert_eq!((e.variable, e.value.as_str()), ("IMAGES", "a=b=nginx:1"));
}

#[test]
fn a_likely_typo_of_a_variable_is_a_warning() {
    let c = valid(&[("IMAGES", "nginx:1"), ("CACHING_MEMORY_REQEST", "5Mi"), ("IMAGE_PULL_SECRET", "s")]);
    let shown: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "CACHING_MEMORY_REQEST: not a kwarm variable, so it is ignored; did you mean CACHING_MEMORY_REQUEST?",
            "IMAGE_PULL_SECRET: not a kwarm variable, so it is ignored; did you mean IMAGE_PULL_SECRETS?",
        ]
    );
    // the rest of the environment is none of kwarm's business
    let c = valid(&[
        ("IMAGES", "nginx:1"),
        ("PATH", "/bin"),
        ("HOSTNAME", "x"),
        ("POD_NAMESPACE", "ns"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("RUST_LOG", "info"),
    ]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn exclude_images_applies_to_images_too() {
    let c = valid(&[
        ("IMAGES", "a=nginx:1;b=registry.example.com/team/debug:1;c=redis:7"),
        ("EXCLUDE_IMAGES", "*/debug:*,docker.io/library/redis"),
    ]);
    let names: Vec<&str> = c.images.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["a"], "matching entries are not warmed");
    let shown: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            r#"IMAGES="b=registry.example.com/team/debug:1": matches EXCLUDE_IMAGES, so it is not warmed"#,
            r#"IMAGES="c=redis:7": matches EXCLUDE_IMAGES, so it is not warmed"#,
        ]
    );
    // nothing left to warm and no Deployment watching: the usual error
    let e = problem(&[("IMAGES", "redis:7"), ("EXCLUDE_IMAGES", "redis"), ("WATCH_DEPLOYMENTS", "false")]);
    assert_eq!(e.variable, "IMAGES");
}

#[test]
fn what_the_api_server_would_refuse_is_refused_here() {
    let images = ("IMAGES", "nginx:1");
    let node_expr = |key: &str, op: &str, values: &str| {
        format!(
            r#"{{"nodeAffinity":{{"requiredDuringSchedulingIgnoredDuringExecution":{{"nodeSelectorTerms":[{{"matchExpressions":[{{"key":"{key}","operator":"{op}","values":{values}}}]}}]}}}}}}"#
        )
    };
    // Gt/Lt compare integers
    assert!(valid(&[images, ("AFFINITY", &node_expr("cores", "Gt", r#"["4"]"#))]).affinity.is_some());
    let e = problem(&[images, ("AFFINITY", &node_expr("cores", "Gt", r#"["four"]"#))]);
    assert!(e.expected.contains("integers"), "{e}");
    // keys must be label keys
    let e = problem(&[images, ("AFFINITY", &node_expr("bad key!", "In", r#"["a"]"#))]);
    assert!(e.expected.contains("bad key!"), "{e}");
    // pod (anti-)affinity needs a topologyKey
    let anti = |topology: &str| {
        format!(
            r#"{{"podAntiAffinity":{{"requiredDuringSchedulingIgnoredDuringExecution":[{{"labelSelector":{{"matchLabels":{{"a":"b"}}}},"topologyKey":"{topology}"}}]}}}}"#
        )
    };
    assert!(valid(&[images, ("AFFINITY", &anti("kubernetes.io/hostname"))]).affinity.is_some());
    let e = problem(&[images, ("AFFINITY", &anti(""))]);
    assert!(e.expected.contains("topologyKey"), "{e}");
    // and its label selector holds label keys and values, with operators that fit
    let selector = |sel: &str| {
        format!(
            r#"{{"podAffinity":{{"preferredDuringSchedulingIgnoredDuringExecution":[{{"weight":1,"podAffinityTerm":{{"labelSelector":{sel},"topologyKey":"zone"}}}}]}}}}"#
        )
    };
    valid(&[
        images,
        ("AFFINITY", &selector(r#"{"matchExpressions":[{"key":"app","operator":"In","values":["web"]}]}"#)),
    ]);
    let e = problem(&[images, ("AFFINITY", &selector(r#"{"matchLabels":{"bad key!":"x"}}"#))]);
    assert!(e.expected.contains("bad key!"), "{e}");
    let e = problem(&[
        images,
        ("AFFINITY", &selector(r#"{"matchExpressions":[{"key":"app","operator":"In"}]}"#)),
    ]);
    assert!(e.expected.contains("In/NotIn need values"), "{e}");
    // toleration values are label values
    let e = problem(&[images, ("TOLERATIONS", r#"[{"key":"a","operator":"Equal","value":"not a value!"}]"#)]);
    assert!(e.expected.contains("not a value!"), "{e}");
    // kwarm.io/ annotations are kwarm's own (kwarm.io/state would be overwritten, or worse, read)
    let e = problem(&[images, ("DAEMONSET_ANNOTATIONS", r#"{"kwarm.io/state":"{}"}"#)]);
    assert!(e.expected.contains("kwarm's own"), "{e}");
    // a typo with an empty value is still a typo; the real field left empty is fine
    let e = problem(&[images, ("AFFINITY", r#"{"nodeAfinity":{}}"#)]);
    assert!(e.expected.contains("nodeAfinity"), "{e}");
    valid(&[images, ("AFFINITY", r#"{"nodeAffinity":{}}"#)]);
}

#[test]
fn an_invalid_pod_namespace_is_not_used_as_the_default() {
    let c = Config::from_vars(vars(&[("IMAGES", "nginx:1")]), Some("Not_A_Name".into())).expect("valid");
    assert_eq!(c.namespace, "k8s-image-puller");
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].variable, "NAMESPACE");
    let c = Config::from_vars(vars(&[("IMAGES", "nginx:1")]), Some("team-a".into())).expect("valid");
    assert_eq!(c.namespace, "team-a");
}

#[test]
fn a_repeated_json_key_is_an_error_naming_it() {
    let e = problem(&[("IMAGES", "nginx:1"), ("NODE_SELECTOR", r#"{"disk":"ssd","disk":"hdd"}"#)]);
    assert_eq!(e.variable, "NODE_SELECTOR");
    assert!(e.expected.contains(r#"key "disk" appears twice"#), "{e}");
    let nested = r#"[{"key":"a","operator":"Exists","operator":"Equal"}]"#;
    let e = problem(&[("IMAGES", "nginx:1"), ("TOLERATIONS", nested)]);
    assert!(e.expected.contains("appears twice"), "{e}");
    // the same key in two objects is fine
    valid(&[
        ("IMAGES", "nginx:1"),
        ("TOLERATIONS", r#"[{"key":"a","operator":"Exists"},{"key":"b","operator":"Exists"}]"#),
    ]);
}

#[test]
fn every_variable_set_to_its_documented_default_changes_nothing() {
    let base = valid(&[("IMAGES", "nginx:1")]);
    for v in VARIABLES.iter().filter(|v| !v.default.is_empty() && v.name != "IMAGES") {
        let c = valid(&[("IMAGES", "nginx:1"), (v.name, v.default)]);
        assert_eq!(c, base, "{}={:?} is not the default", v.name, v.default);
    }
}

#[test]
fn the_readme_documents_every_variable_with_its_default() {
    let readme = include_str!("../../README.md");
    let start = readme.find("| Variable | Default | Meaning |").expect("the configuration table");
    let rows: Vec<&str> = readme[start..].lines().skip(2).take_while(|l| l.starts_with('|')).collect();
    for v in VARIABLES {
        // a row names the variable, or its suffix next to its sibling (`CACHING_MEMORY_REQUEST` / `_LIMIT`)
        let suffix = v.name.rsplit_once('_').map(|(_, s)| format!("`_{s}`")).unwrap_or_default();
        let row = rows
            .iter()
            .find(|r| r.contains(&format!("`{}`", v.name)))
            .or_else(|| {
                rows.iter().find(|r| {
                    r.contains(&suffix)
                        && r.contains(&format!("`{}", &v.name[..v.name.len() - suffix.len() + 3]))
                })
            })
            .unwrap_or_else(|| panic!("README's table has no row for {}", v.name));
        if !v.default.is_empty() {
            assert!(
                row.contains(&format!("`{}`", v.default)),
                "README gives another default for {}: {row}",
                v.name
            );
        }
    }
    for row in &rows {
        let name = row.split('`').nth(1).unwrap_or_default();
        assert!(is_known(name), "README documents {name:?}, which kwarm does not read");
    }
}

#[test]
fn the_node_gate_is_off_unless_a_taint_is_named() {
    assert_eq!(valid(&[("IMAGES", "nginx:1")]).node_gate, None);
    assert_eq!(valid(&[("IMAGES", "nginx:1"), ("NODE_GATE_TIMEOUT", "1m")]).node_gate, None);
    let c = valid(&[("IMAGES", "nginx:1"), ("NODE_GATE_TAINT", "kwarm.io/warming=true:NoExecute")]);
    let gate = c.node_gate.expect("the gate is on");
    assert_eq!(gate.taint.to_string(), "kwarm.io/warming=true:NoExecute");
    assert_eq!(gate.timeout, Duration::from_secs(600));
    let c = valid(&[
        ("IMAGES", "nginx:1"),
        ("NODE_GATE_TAINT", "kwarm.io/warming"),
        ("NODE_GATE_TIMEOUT", "90s"),
    ]);
    assert_eq!(c.node_gate.map(|g| g.timeout), Some(Duration::from_secs(90)));
}

#[test]
fn a_bad_node_gate_names_the_variable_and_what_is_expected() {
    let all = problems(&[("NODE_GATE_TAINT", "kwarm.io/warming:Never"), ("NODE_GATE_TIMEOUT", "0s")]);
    let taint = all.iter().find(|e| e.variable == "NODE_GATE_TAINT").expect("taint error");
    assert_eq!(taint.value, "kwarm.io/warming:Never");
    assert!(taint.expected.contains("NoSchedule, PreferNoSchedule, NoExecute"), "{}", taint.expected);
    let timeout = all.iter().find(|e| e.variable == "NODE_GATE_TIMEOUT").expect("timeout error");
    assert!(timeout.expected.contains("at least 1s"), "{}", timeout.expected);
}

#[test]
fn digests_are_checked_every_caching_interval_unless_told_otherwise() {
    let c = valid(&[("IMAGES", "nginx:1")]);
    assert_eq!(c.digest_check.as_ref().map(|d| d.interval), Some(Duration::from_secs(3600)));
    let c = valid(&[("IMAGES", "nginx:1"), ("CACHING_INTERVAL", "6h")]);
    assert_eq!(c.digest_check.as_ref().map(|d| d.interval), Some(Duration::from_secs(6 * 3600)));
    let c = valid(&[
        ("IMAGES", "nginx:1"),
        ("DIGEST_CHECK_INTERVAL", "30s"),
        ("INSECURE_REGISTRIES", "127.0.0.1:5000, registry.local"),
    ]);
    let check = c.digest_check.expect("on");
    assert_eq!(check.interval, Duration::from_secs(30));
    assert_eq!(
        check.insecure_registries,
        ["127.0.0.1:5000", "registry.local"].map(String::from).into_iter().collect()
    );
    assert_eq!(valid(&[("IMAGES", "nginx:1"), ("DIGEST_CHECK_INTERVAL", "0")]).digest_check, None);
}

#[test]
fn a_bad_digest_check_names_the_variable_and_what_is_expected() {
    let all =
        problems(&[("DIGEST_CHECK_INTERVAL", "2s"), ("INSECURE_REGISTRIES", "http://registry.local/x")]);
    let interval = all.iter().find(|e| e.variable == "DIGEST_CHECK_INTERVAL").expect("interval error");
    assert!(interval.expected.contains("at least 10s"), "{}", interval.expected);
    let insecure = all.iter().find(|e| e.variable == "INSECURE_REGISTRIES").expect("registries error");
    assert!(insecure.expected.contains("registry hosts"), "{}", insecure.expected);
}

// ---------------------------------------------------------------------------------------------
// The rollout gate

#[test]
fn the_rollout_gate_is_off_by_default_and_on_with_the_service_form() {
    assert_eq!(
        valid(&[("IMAGES", "nginx:1"), ("WEBHOOK_URL", "https://127.0.0.1:9443/mutate")]).rollout_gate,
        None
    );
    let c = Config::from_vars(vars(&[("ROLLOUT_GATE", "true")]), Some("kwarm-system".to_string()))
        .expect("valid");
    let gate = c.rollout_gate.expect("on");
    assert_eq!(gate.mode, GateMode::All);
    assert_eq!(gate.timeout, Duration::from_secs(300));
    assert_eq!(gate.bind_address, SocketAddr::from(([0, 0, 0, 0], 9443)));
    assert_eq!(
        gate.endpoint,
        Endpoint::Service { name: "kwarm-webhook".into(), namespace: "kwarm-system".into() }
    );
    assert_eq!(gate.certificates, Certificates::Secret("kwarm-webhook-tls".into()));
    assert_eq!(gate.configuration, "kwarm-rollout-gate-kwarm-system");
    let c = valid(&[
        ("ROLLOUT_GATE", "Opt-In"),
        ("ROLLOUT_GATE_TIMEOUT", "90s"),
        ("WEBHOOK_BIND_ADDRESS", "127.0.0.1:19443"),
        ("WEBHOOK_URL", "https://127.0.0.1:19443/mutate"),
        ("WEBHOOK_CERT_DIR", "/etc/kwarm/webhook"),
        ("WEBHOOK_CONFIGURATION", "kwarm-test"),
    ]);
    let gate = c.rollout_gate.expect("on");
    assert_eq!(gate.mode, GateMode::OptIn);
    assert_eq!(gate.timeout, Duration::from_secs(90));
    assert_eq!(gate.endpoint, Endpoint::Url("https://127.0.0.1:19443/mutate".into()));
    assert_eq!(gate.certificates, Certificates::Directory("/etc/kwarm/webhook".into()));
    assert_eq!(gate.configuration, "kwarm-test");
}

#[test]
fn rollout_gate_mistakes_are_named_all_at_once() {
    assert!(rejects("ROLLOUT_GATE", "sometimes").contains("opt-in"));
    assert!(rejects("ROLLOUT_GATE_TIMEOUT", "0s").contains("at least 1s"));
    assert!(rejects("WEBHOOK_URL", "http://127.0.0.1:9443/mutate").contains("https://"));
    assert!(rejects("WEBHOOK_URL", "https:///mutate").contains("host"));
    assert!(rejects("WEBHOOK_BIND_ADDRESS", "0").contains("ROLLOUT_GATE=false"));
    assert!(rejects("WEBHOOK_SERVICE", "Kwarm_Webhook").contains("Service name"));
    assert!(rejects("WEBHOOK_CERT_DIR", "certs").contains("absolute"));
    let all = problems(&[
        ("ROLLOUT_GATE", "true"),
        ("WATCH_DEPLOYMENTS", "false"),
        ("IMAGES", "nginx:1"),
        ("WEBHOOK_BIND_ADDRESS", ":8080"),
    ]);
    let named: BTreeSet<&str> = all.iter().map(|e| e.variable).collect();
    assert_eq!(named, BTreeSet::from(["ROLLOUT_GATE", "WEBHOOK_BIND_ADDRESS"]), "{all:#?}");
}

// ---------------------------------------------------------------------------------------------
// Properties: whatever a user writes into one variable

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Values a user (or a template) might put anywhere: anything printable, numbers, durations,
    /// quantities, JSON fragments, lists, selectors, and control characters.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,40}",
            "[0-9]{0,6}",
            "-?[0-9]{1,3}(\\.[0-9]{1,2})?(ms|s|m|h|d|Mi|Gi|m|%)?",
            "(true|false|True|FALSE|yes|no|0|1|null|\\*|)",
            "[{}\\[\\]\":,a-z0-9 ]{0,30}",
            "[a-z0-9./:@-]{1,20}(=[a-z0-9./:@-]{0,20})?(;[a-z0-9./:@-]{1,20}){0,3}",
            "[a-z.]{1,8}(!=|=|==| in | notin )?\\(?[a-z,]{0,10}\\)?",
            "[\\x00-\\x1f\\x7f]{1,5}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// No value of any variable panics; a refused value is refused naming that variable and
        /// the value (or the wrong part of it), and nothing else is blamed for it.
        #[test]
        fn any_value_of_any_variable_is_parsed_or_refused_by_name(index in 0..VARIABLES.len(), raw in value()) {
            let variable = VARIABLES[index].name;
            let vars = [("IMAGES".to_string(), "nginx:1.25".to_string()), (variable.to_string(), raw.clone())];
            let vars = if variable == "IMAGES" { vec![vars[1].clone()] } else { vars.to_vec() };
            match Config::from_vars(vars, Some("kwarm".into())) {
                Ok(_) => {}
                Err(errors) => {
                    prop_assert!(!errors.0.is_empty());
                    for e in &errors.0 {
                        prop_assert_eq!(e.variable, variable, "{}", e);
                        // the value as given, or the one entry of it that is wrong (IMAGES)
                        prop_assert!(raw.contains(&e.value), "{} not in {:?}", e, raw);
                        prop_assert!(!e.expected.is_empty());
                    }
                }
            }
        }
    }
}
