use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::*;
use crate::config::Config;
use crate::holder::derived_holder_name;
use crate::images::{Limits, plan_holders};
use crate::status::{PersistedState, Quarantine, QuarantineEntry};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn config(pairs: &[(&str, &str)]) -> Config {
    let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_vars(vars, None).unwrap_or_else(|e| panic!("{pairs:?}:\n{e}"))
}

/// The DaemonSet `kwarm render` prints for this configuration.
fn render(c: &Config) -> DaemonSet {
    render_daemonset(c, &RenderInput { holders: c.images.clone(), ..Default::default() })
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec")
}

fn holders(ds: &DaemonSet) -> &[Container] {
    &pod(ds).containers
}

fn yaml(ds: &DaemonSet) -> String {
    serde_yaml::to_string(ds).expect("YAML")
}

fn hash(ds: &DaemonSet) -> String {
    ds.metadata.annotations.as_ref().and_then(|a| a.get(DESIRED_HASH_ANNOTATION)).cloned().expect("hash")
}

fn puller_configmap() -> Vec<(String, String)> {
    let text = include_str!("../../tests/golden/input/kubernetes-image-puller-configmap.yaml");
    let cm: ConfigMap = serde_yaml::from_str(text).expect("a ConfigMap");
    cm.data.expect("data").into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Golden files

/// Compares the rendered DaemonSet with `tests/golden/<name>.yaml`; with `KWARM_UPDATE_GOLDEN=1`
/// (`make golden`) rewrites the file instead.
fn assert_golden(name: &str, ds: &DaemonSet) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.yaml"));
    let actual = yaml(ds);
    if std::env::var("KWARM_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make golden` to create it", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} is stale; if the change is intended, run `make golden` and review the diff",
        path.display()
    );
}

#[test]
fn golden_minimal() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    assert_golden("minimal", &render(&c));
}

#[test]
fn golden_puller_configmap() {
    let c = Config::from_vars(puller_configmap(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_golden("puller-configmap", &render(&c));
}

fn everything_set() -> (Config, RenderInput) {
    let c = config(&[
        (
            "IMAGES",
            &format!(
                "java=quay.io/eclipse/che-java11-maven:nightly;redis:7;pinned=ghcr.io/org/tool@{DIGEST}"
            ),
        ),
        ("DAEMONSET_NAME", "image-cache"),
        ("DAEMONSET_ANNOTATIONS", r#"{"team": "platform", "example.com/contact": "cache@example.com"}"#),
        ("NAMESPACE", "cache"),
        ("DEPLOYMENT_NAME", "kwarm"),
        ("CACHING_INTERVAL", "6h"),
        ("CACHING_MEMORY_REQUEST", "4Mi"),
        ("CACHING_MEMORY_LIMIT", "8Mi"),
        ("CACHING_CPU_REQUEST", "1m"),
        ("CACHING_CPU_LIMIT", "100m"),
        ("NODE_SELECTOR", r#"{"pool": "build", "kubernetes.io/arch": "amd64"}"#),
        (
            "AFFINITY",
            r#"{"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms":
                [{"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}]}}}"#,
        ),
        (
            "TOLERATIONS",
            r#"[{"key": "dedicated", "operator": "Equal", "value": "build", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]"#,
        ),
        ("IMAGE_PULL_SECRETS", "quay-pull;ghcr-pull"),
        ("KIP_IMAGE", "127.0.0.1:5000/kwarm/sleep:dev"),
        ("PRIORITY_CLASS_NAME", "image-cache"),
        ("IMAGE_PULL_POLICY", "Always"),
        ("MAX_CONCURRENT_NODES", "25%"),
        ("INHERIT_PULL_SECRETS", "true"),
    ]);
    // Two images in use by watched Deployments, one no longer used but retained for rollbacks,
    // one quarantined (left out).
    let watched: BTreeSet<String> = [
        "docker.io/library/busybox:1.36",
        "ghcr.io/shop/web:2.0",
        "ghcr.io/shop/web:1.9",
        "ghcr.io/shop/broken:1",
    ]
    .map(String::from)
    .into();
    let quarantine = Quarantine::restore(
        BTreeMap::from([(
            "ghcr.io/shop/broken:1".to_string(),
            QuarantineEntry {
                attempt: 1,
                retry_at: Some(humantime::parse_rfc3339("2024-05-01T10:05:00Z").expect("time")),
            },
        )]),
        &BTreeSet::new(),
        std::time::SystemTime::UNIX_EPOCH,
    );
    let images: BTreeMap<String, usize> = watched.iter().map(|i| (i.clone(), 1)).collect();
    let in_use = BTreeMap::from([("shop".to_string(), images)]);
    let limits = Limits { max_images: c.max_images, per_namespace: None };
    let plan = plan_holders(&c.images, &in_use, &BTreeSet::new(), &quarantine.excluded(), limits);
    let retained = BTreeMap::from([(
        "ghcr.io/shop/web:1.9".to_string(),
        humantime::parse_rfc3339("2024-05-01T09:00:00Z").expect("time"),
    )]);
    let state = PersistedState::new(&retained, &quarantine);
    let input = RenderInput {
        holders: plan.holders,
        extra_pull_secrets: vec!["kwarm-shop-regcred-1a2b3c4d".into(), "ghcr-pull".into()],
        openshift: false,
        owner: Some(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "kwarm".into(),
            uid: "6f1d2c3b-4a59-4e8f-9d70-1b2c3d4e5f60".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }),
        refreshed_at: Some("2024-05-01T10:00:00Z".into()),
        digests: BTreeMap::from([(
            "docker.io/library/redis:7".to_string(),
            format!("sha256:{}", "7".repeat(64)),
        )]),
        state: Some(serde_json::to_string(&state).expect("state")),
    };
    (c, input)
}

#[test]
fn golden_everything_set() {
    let (c, input) = everything_set();
    assert_golden("everything-set", &render_daemonset(&c, &input));
}

#[test]
fn golden_openshift() {
    let c = Config::from_vars(puller_configmap(), None).unwrap_or_else(|e| panic!("{e}"));
    let ds = render_daemonset(
        &c,
        &RenderInput { holders: c.images.clone(), openshift: true, ..Default::default() },
    );
    assert_golden("openshift", &ds);
}

// ---------------------------------------------------------------------------------------------
// Properties of the render

#[test]
fn holders_follow_images_order_and_run_the_copied_sleep() {
    let c = config(&[("IMAGES", "zeta=redis:7;alpha=nginx:1.25;quay.io/eclipse/che-theia:next")]);
    let ds = render(&c);
    let names: Vec<&str> = holders(&ds).iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", derived_holder_name("quay.io/eclipse/che-theia:next").as_str()]);
    let images: Vec<&str> = holders(&ds).iter().filter_map(|h| h.image.as_deref()).collect();
    assert_eq!(images, ["redis:7", "nginx:1.25", "quay.io/eclipse/che-theia:next"]);
    for h in holders(&ds) {
        assert_eq!(h.command.as_deref(), Some(&["/kip/sleep".to_string()][..]), "{}", h.name);
        assert_eq!(h.args.as_deref(), Some(&["infinity".to_string()][..]), "{}", h.name);
        assert_eq!(h.image_pull_policy.as_deref(), Some("Always"), "tags, with digest checks on");
        let mounts = h.volume_mounts.as_ref().expect("mounts");
        assert_eq!(mounts.len(), 1);
        assert_eq!((mounts[0].name.as_str(), mounts[0].mount_path.as_str()), ("kip", "/kip"));
        assert_eq!(mounts[0].read_only, Some(true), "holders cannot change the shared binary");
    }
}

#[test]
fn init_container_copies_sleep_without_a_shell() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("KIP_IMAGE", "127.0.0.1:5000/kwarm/sleep:dev")]);
    let ds = render(&c);
    let init = pod(&ds).init_containers.as_ref().expect("init containers");
    assert_eq!(init.len(), 1);
    let kip = &init[0];
    assert_eq!(kip.name, "kip");
    assert_eq!(kip.image.as_deref(), Some("127.0.0.1:5000/kwarm/sleep:dev"));
    assert_eq!(kip.command.as_deref(), Some(&["/sleep".to_string()][..]));
    assert_eq!(kip.args.as_deref(), Some(&["--copy-to".to_string(), "/kip/sleep".to_string()][..]));
    let all_words: Vec<&String> = kip.command.iter().chain(kip.args.iter()).flatten().collect();
    assert!(all_words.iter().all(|w| !w.contains("sh") && !w.contains("cp ")), "no shell: {all_words:?}");
    assert_eq!(kip.volume_mounts.as_ref().expect("mounts")[0].read_only, None, "the init container writes");
    let volumes = pod(&ds).volumes.as_ref().expect("volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "kip");
    let empty_dir = volumes[0].empty_dir.as_ref().expect("emptyDir");
    assert_eq!(empty_dir.size_limit.as_ref().map(|q| q.0.as_str()), Some("1Mi"));
    // The default KIP_IMAGE is kwarm's sleep image.
    assert_eq!(
        pod(&render(&config(&[]))).init_containers.as_ref().expect("init")[0].image.as_deref(),
        Some(crate::config::DEFAULT_KIP_IMAGE)
    );
}

#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    for openshift in [false, true] {
        let c = config(&[("IMAGES", "nginx:1.25;redis:7")]);
        let ds =
            render_daemonset(&c, &RenderInput { holders: c.images.clone(), openshift, ..Default::default() });
        let p = pod(&ds);
        assert_eq!(p.automount_service_account_token, Some(false));
        assert_eq!(p.enable_service_links, Some(false));
        assert!(p.termination_grace_period_seconds.is_some_and(|s| s <= 5), "short grace");
        assert_eq!(p.host_network, None);
        assert_eq!(p.host_pid, None);
        let psc = p.security_context.as_ref().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        let expected_id = (!openshift).then_some(65532);
        assert_eq!((psc.run_as_user, psc.run_as_group), (expected_id, expected_id), "openshift={openshift}");
        let containers = p.containers.iter().chain(p.init_containers.iter().flatten());
        let mut count = 0;
        for c in containers {
            count += 1;
            let sc = c.security_context.as_ref().expect("container security context");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.privileged, None, "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            let caps = sc.capabilities.as_ref().expect("capabilities");
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{}", c.name);
            assert_eq!(caps.add, None, "{}", c.name);
            assert_eq!((sc.run_as_user, sc.run_as_group), (expected_id, expected_id), "{}", c.name);
            let r = c.resources.as_ref().expect("resources");
            let amount =
                |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
                 k: &str| { m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone()) };
            assert_eq!(amount(&r.requests, "cpu").as_deref(), Some(".05"));
            assert_eq!(amount(&r.requests, "memory").as_deref(), Some("10Mi"));
            assert_eq!(amount(&r.limits, "cpu").as_deref(), Some(".2"));
            assert_eq!(amount(&r.limits, "memory").as_deref(), Some("20Mi"));
        }
        assert_eq!(count, 3);
        // OpenShift: no fixed ids anywhere in the output.
        if openshift {
            let text = yaml(&ds);
            assert!(!text.contains("runAsUser") && !text.contains("runAsGroup"), "{text}");
        }
    }
}

#[test]
fn rolling_update_surges_and_never_leaves_a_node_unheld() {
    for (value, surge) in [
        (None, IntOrString::Int(10)),
        (Some("3"), IntOrString::Int(3)),
        (Some("25%"), IntOrString::String("25%".into())),
    ] {
        let mut pairs = vec![("IMAGES", "nginx:1.25")];
        if let Some(v) = value {
            pairs.push(("MAX_CONCURRENT_NODES", v));
        }
        let ds = render(&config(&pairs));
        let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let rolling = strategy.rolling_update.as_ref().expect("rolling update");
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(rolling.max_surge, Some(surge), "{value:?}");
    }
}

#[test]
fn labels_and_a_selector_unique_per_daemonset_name() {
    let a = render(&config(&[("DAEMONSET_NAME", "cache-a")]));
    let b = render(&config(&[("DAEMONSET_NAME", "cache-b")]));
    let selector =
        |ds: &DaemonSet| ds.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).expect("selector");
    assert_ne!(selector(&a), selector(&b));
    assert_eq!(
        selector(&a),
        BTreeMap::from([
            ("app.kubernetes.io/instance".to_string(), "cache-a".to_string()),
            ("app.kubernetes.io/name".to_string(), "kwarm".to_string()),
        ])
    );
    assert_eq!(selector_labels("cache-a"), selector(&a));
    assert_eq!(selector_string("cache-a"), "app.kubernetes.io/instance=cache-a,app.kubernetes.io/name=kwarm");
    let expected_labels = BTreeMap::from([
        ("app.kubernetes.io/component".to_string(), "image-holder".to_string()),
        ("app.kubernetes.io/instance".to_string(), "cache-a".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "kwarm".to_string()),
        ("app.kubernetes.io/name".to_string(), "kwarm".to_string()),
    ]);
    assert_eq!(a.metadata.labels.as_ref(), Some(&expected_labels));
    let template_labels = a
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert_eq!(template_labels, expected_labels);
    // The template's labels satisfy the selector (else the API server refuses the DaemonSet).
    assert!(selector(&a).iter().all(|(k, v)| template_labels.get(k) == Some(v)));
    assert_eq!(a.metadata.name.as_deref(), Some("cache-a"));
    assert_eq!(a.metadata.namespace.as_deref(), Some("k8s-image-puller"));
}

#[test]
fn scheduling_settings_reach_the_pod() {
    let (c, input) = everything_set();
    let ds = render_daemonset(&c, &input);
    let p = pod(&ds);
    assert_eq!(
        p.node_selector,
        Some(BTreeMap::from([
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("pool".to_string(), "build".to_string()),
        ]))
    );
    // AFFINITY, with the architectures KIP_IMAGE (kwarm's) runs on required in its term
    let affinity = p.affinity.as_ref().expect("affinity");
    assert_eq!(affinity, &c.holder_affinity());
    let terms = &affinity.node_affinity.as_ref().unwrap().required_during_scheduling_ignored_during_execution;
    let expressions = terms.as_ref().unwrap().node_selector_terms[0].match_expressions.clone().unwrap();
    let keys: Vec<&str> = expressions.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["node-role.kubernetes.io/control-plane", "kubernetes.io/arch"]);
    assert_eq!(expressions[1].values.as_deref(), Some(&["amd64".to_string(), "arm64".to_string()][..]));
    assert_eq!(p.tolerations.as_ref().map(Vec::len), Some(2));
    assert_eq!(p.priority_class_name.as_deref(), Some("image-cache"));
    let secrets: Vec<&str> = p.image_pull_secrets.iter().flatten().map(|s| s.name.as_str()).collect();
    assert_eq!(
        secrets,
        ["quay-pull", "ghcr-pull", "kwarm-shop-regcred-1a2b3c4d"],
        "configured first, each once"
    );
    assert!(holders(&ds).iter().all(|h| h.image_pull_policy.as_deref() == Some("Always")));
    // Nothing set: no empty lists or objects in the output.
    let minimal = render(&config(&[("IMAGES", "nginx:1.25")]));
    let p = pod(&minimal);
    assert_eq!((p.tolerations.as_ref(), p.image_pull_secrets.as_ref()), (None, None));
    // The only affinity: the architectures of kwarm's sleep image.
    let only_architectures = serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}});
    assert_eq!(serde_json::to_value(&p.affinity).unwrap(), only_architectures);
    assert_eq!(p.priority_class_name, None);
    assert_eq!(minimal.metadata.owner_references, None);
}

#[test]
fn owner_refreshed_at_and_state_are_rendered() {
    let (c, input) = everything_set();
    let ds = render_daemonset(&c, &input);
    assert_eq!(ds.metadata.owner_references.as_deref(), input.owner.as_ref().map(std::slice::from_ref));
    let template_annotations =
        ds.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.clone());
    assert_eq!(
        template_annotations,
        Some(BTreeMap::from([
            (REFRESHED_AT_ANNOTATION.to_string(), "2024-05-01T10:00:00Z".to_string()),
            (
                DIGESTS_ANNOTATION.to_string(),
                format!(r#"{{"docker.io/library/redis:7":"sha256:{}"}}"#, "7".repeat(64))
            ),
        ]))
    );
    let annotations = ds.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations.get("team").map(String::as_str), Some("platform"));
    let state: PersistedState = serde_json::from_str(&annotations[STATE_ANNOTATION]).expect("state parses");
    assert_eq!(state.quarantined.len(), 1);
    assert_eq!(state.retained.len(), 1);
    assert!(annotations.contains_key(DESIRED_HASH_ANNOTATION));
}

#[test]
fn rendering_is_deterministic() {
    let (c, input) = everything_set();
    let first = render_daemonset(&c, &input);
    let second = render_daemonset(&c.clone(), &input.clone());
    assert_eq!(yaml(&first), yaml(&second));
    assert_eq!(serde_json::to_vec(&first).expect("json"), serde_json::to_vec(&second).expect("json"));
    // Parsing the same environment again gives the same bytes too.
    let again = Config::from_vars(puller_configmap(), None).expect("valid");
    let once = Config::from_vars(puller_configmap(), None).expect("valid");
    assert_eq!(yaml(&render(&again)), yaml(&render(&once)));
    // Annotation order in the input does not matter.
    let x = render(&config(&[("DAEMONSET_ANNOTATIONS", r#"{"a": "1", "b": "2"}"#)]));
    let y = render(&config(&[("DAEMONSET_ANNOTATIONS", r#"{"b": "2", "a": "1"}"#)]));
    assert_eq!(yaml(&x), yaml(&y));
}

#[test]
fn the_hash_changes_when_any_input_changes() {
    let base_pairs: Vec<(&str, &str)> = vec![("IMAGES", "web=nginx:1.25;redis:7")];
    let base = config(&base_pairs);
    let base_input = RenderInput { holders: base.images.clone(), ..Default::default() };
    let mut hashes = BTreeMap::new();
    hashes.insert("base".to_string(), hash(&render_daemonset(&base, &base_input)));

    for (variable, value) in [
        ("IMAGES", "web=nginx:1.26;redis:7"),
        ("IMAGES", "redis:7;web=nginx:1.25"),
        ("DAEMONSET_NAME", "other"),
        ("DAEMONSET_ANNOTATIONS", r#"{"a": "b"}"#),
        ("NAMESPACE", "other"),
        ("CACHING_MEMORY_REQUEST", "11Mi"),
        ("CACHING_MEMORY_LIMIT", "21Mi"),
        ("CACHING_CPU_REQUEST", "40m"),
        ("CACHING_CPU_LIMIT", "300m"),
        ("NODE_SELECTOR", r#"{"pool": "a"}"#),
        (
            "AFFINITY",
            r#"{"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}]}}"#,
        ),
        ("TOLERATIONS", r#"[{"operator": "Exists"}]"#),
        ("IMAGE_PULL_SECRETS", "regcred"),
        ("KIP_IMAGE", "127.0.0.1:5000/kwarm/sleep:dev"),
        ("PRIORITY_CLASS_NAME", "high"),
        ("IMAGE_PULL_POLICY", "IfNotPresent"),
        ("MAX_CONCURRENT_NODES", "2"),
    ] {
        let mut pairs = base_pairs.clone();
        pairs.retain(|(k, _)| *k != variable);
        pairs.push((variable, value));
        let c = config(&pairs);
        let input = RenderInput { holders: c.images.clone(), ..Default::default() };
        let previous = hashes.insert(format!("{variable}={value}"), hash(&render_daemonset(&c, &input)));
        assert_eq!(previous, None);
    }
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "kwarm".into(),
        uid: "u".into(),
        ..Default::default()
    };
    for (what, input) in [
        ("openshift", RenderInput { openshift: true, ..base_input.clone() }),
        ("owner", RenderInput { owner: Some(owner), ..base_input.clone() }),
        (
            "refreshed",
            RenderInput { refreshed_at: Some("2024-05-01T10:00:00Z".into()), ..base_input.clone() },
        ),
        ("state", RenderInput { state: Some("{}".into()), ..base_input.clone() }),
        ("extra secret", RenderInput { extra_pull_secrets: vec!["mirrored".into()], ..base_input.clone() }),
        ("one holder less", RenderInput { holders: base.images[..1].to_vec(), ..base_input.clone() }),
    ] {
        hashes.insert(what.to_string(), hash(&render_daemonset(&base, &input)));
    }
    let distinct: BTreeSet<&String> = hashes.values().collect();
    assert_eq!(distinct.len(), hashes.len(), "every change gives a new hash: {hashes:#?}");
    for h in hashes.values() {
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}

#[test]
fn removing_an_annotation_changes_the_hash() {
    // A field-by-field comparison with the live object cannot see a removed key; the hash can.
    let with = render(&config(&[("DAEMONSET_ANNOTATIONS", r#"{"a": "1", "b": "2"}"#)]));
    let without = render(&config(&[("DAEMONSET_ANNOTATIONS", r#"{"a": "1"}"#)]));
    assert_ne!(hash(&with), hash(&without));
    assert!(!daemonset_matches(&without, &with));
}

// ---------------------------------------------------------------------------------------------
// daemonset_matches

fn pod_mut(ds: &mut DaemonSet) -> &mut PodSpec {
    ds.spec.as_mut().and_then(|s| s.template.spec.as_mut()).expect("pod")
}

/// What the API server returns for an applied DaemonSet: defaults filled in, quantities in
/// canonical form, metadata and status added.
fn as_live(desired: &DaemonSet) -> DaemonSet {
    let mut v = serde_json::to_value(desired).expect("json");
    let meta = v["metadata"].as_object_mut().expect("metadata");
    meta.insert("uid".into(), json!("d5e6f7a8-0000-4000-8000-000000000002"));
    meta.insert("resourceVersion".into(), json!("81723"));
    meta.insert("generation".into(), json!(4));
    meta.insert("creationTimestamp".into(), json!("2024-05-01T10:00:00Z"));
    meta["annotations"]["deprecated.daemonset.template.generation"] = json!("4");
    meta.insert(
        "managedFields".into(),
        json!([{"manager": "kwarm.io", "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {}}]),
    );
    let spec = &mut v["spec"];
    spec["template"]["metadata"]["creationTimestamp"] = Value::Null;
    let pod = &mut spec["template"]["spec"];
    pod["dnsPolicy"] = json!("ClusterFirst");
    pod["restartPolicy"] = json!("Always");
    pod["schedulerName"] = json!("default-scheduler");
    pod["securityContext"]["fsGroupChangePolicy"] = Value::Null;
    for list in ["containers", "initContainers"] {
        for c in pod[list].as_array_mut().expect("containers") {
            c["terminationMessagePath"] = json!("/dev/termination-log");
            c["terminationMessagePolicy"] = json!("File");
            if c.get("imagePullPolicy").is_none() {
                c["imagePullPolicy"] = json!("IfNotPresent");
            }
            for (kind, key) in [("requests", "cpu"), ("limits", "cpu")] {
                let q = c["resources"][kind][key].as_str().expect("cpu").to_string();
                let canonical = match q.as_str() {
                    ".05" => "50m",
                    ".2" => "200m",
                    other => other,
                };
                c["resources"][kind][key] = json!(canonical);
            }
        }
    }
    spec["revisionHistoryLimit"] = json!(3);
    v["status"] = json!({"currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberMisscheduled": 0,
                         "numberReady": 3, "observedGeneration": 4, "updatedNumberScheduled": 3});
    serde_json::from_value(v).expect("a valid DaemonSet")
}

#[test]
fn identical_daemonsets_match() {
    let (c, input) = everything_set();
    let desired = render_daemonset(&c, &input);
    assert!(daemonset_matches(&desired, &desired.clone()));
    let minimal = render(&config(&[("IMAGES", "nginx:1.25")]));
    assert!(daemonset_matches(&minimal, &minimal));
}

#[test]
fn live_defaults_and_canonical_quantities_still_match() {
    let desired = render(&config(&[("IMAGES", "nginx:1.25;redis:7")]));
    let live = as_live(&desired);
    let resources = |ds: &DaemonSet| holders(ds)[0].resources.clone().expect("resources");
    assert_eq!(resources(&live).requests.expect("requests")["cpu"].0, "50m", "the fixture did canonicalize");
    assert!(daemonset_matches(&desired, &live));
    let (c, input) = everything_set();
    let desired = render_daemonset(&c, &input);
    assert!(daemonset_matches(&desired, &as_live(&desired)));
}

#[test]
fn drift_in_what_kwarm_owns_does_not_match() {
    let desired = render(&config(&[("IMAGES", "web=nginx:1.25;cache=redis:7")]));
    let edit = |f: &dyn Fn(&mut DaemonSet)| {
        let mut live = as_live(&desired);
        f(&mut live);
        daemonset_matches(&desired, &live)
    };
    assert!(!edit(&|ds| pod_mut(ds).containers[0].image = Some("nginx:1.24".into())), "holder image edited");
    assert!(
        !edit(&|ds| {
            pod_mut(ds).containers.pop();
        }),
        "holder removed"
    );
    assert!(
        !edit(&|ds| pod_mut(ds).containers.push(Container {
            name: "extra".into(),
            image: Some("x:1".into()),
            ..Default::default()
        })),
        "holder added"
    );
    assert!(!edit(&|ds| pod_mut(ds).containers.swap(0, 1)), "holders reordered");
    assert!(
        !edit(&|ds| {
            ds.metadata
                .annotations
                .as_mut()
                .expect("annotations")
                .insert(DESIRED_HASH_ANNOTATION.into(), "0".repeat(16));
        }),
        "hash annotation changed"
    );
    assert!(
        !edit(&|ds| {
            ds.metadata.annotations.as_mut().expect("annotations").remove(DESIRED_HASH_ANNOTATION);
        }),
        "hash annotation removed"
    );
    assert!(!edit(&|ds| ds.metadata.annotations = None), "annotations gone");
    assert!(!edit(&|ds| pod_mut(ds).automount_service_account_token = Some(true)), "token mounted");
    assert!(!edit(&|ds| pod_mut(ds).node_selector = None), "node selector removed");
    assert!(
        !edit(&|ds| {
            pod_mut(ds).containers[0].resources.as_mut().expect("r").limits.as_mut().expect("l").insert(
                "memory".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into()),
            );
        }),
        "limit raised"
    );
    assert!(
        !edit(&|ds| {
            ds.spec.as_mut().expect("spec").update_strategy = None;
        }),
        "update strategy removed"
    );
    assert!(!edit(&|ds| ds.metadata.labels = None), "labels removed");
    // Changes outside what kwarm renders are not drift.
    assert!(edit(&|ds| {
        ds.metadata.labels.as_mut().expect("labels").insert("someone".into(), "else".into());
    }));
    assert!(edit(&|ds| pod_mut(ds).dns_policy = Some("Default".into())));
}

#[test]
fn a_changed_desired_state_does_not_match_the_old_live_one() {
    let old = render(&config(&[("IMAGES", "web=nginx:1.25")]));
    let new = render(&config(&[("IMAGES", "web=nginx:1.26")]));
    assert!(!daemonset_matches(&new, &as_live(&old)));
    assert!(daemonset_matches(&new, &as_live(&new)));
}

// ---------------------------------------------------------------------------------------------
// refresh_would_repull

#[test]
fn refresh_only_when_some_holder_would_pull_again() {
    use crate::holder::Holder;
    let h = |image: &str| Holder { name: "h".into(), image: image.into() };
    let pinned = format!("nginx@{DIGEST}");
    let tagged_pinned = format!("nginx:latest@{DIGEST}");
    // without digest checks, Kubernetes' default policy decides (with them, see below)
    let default_policy = config(&[("DIGEST_CHECK_INTERVAL", "0")]);
    for (image, expected) in [
        ("nginx:latest", true),
        ("nginx", true),
        ("docker.io/library/nginx:latest", true),
        ("localhost:5000/app", true),
        ("127.0.0.1:5000/test/small", true),
        ("localhost:5000/app:v1", false),
        ("nginx:1.25", false),
        ("nginx:latest-alpine", false),
        ("quay.io/eclipse/che-theia:next", false),
        (pinned.as_str(), false),
        // A digest pins the content: pulling again cannot bring anything new.
        (tagged_pinned.as_str(), false),
    ] {
        assert_eq!(refresh_would_repull(&default_policy, &[h(image)]), expected, "{image}");
    }
    assert!(
        refresh_would_repull(&default_policy, &[h("nginx:1.25"), h("redis:latest")]),
        "any one is enough"
    );
    assert!(!refresh_would_repull(&default_policy, &[]));

    let always = config(&[("IMAGE_PULL_POLICY", "Always")]);
    assert!(refresh_would_repull(&always, &[h("nginx:1.25")]));
    assert!(!refresh_would_repull(&always, &[]), "nothing to pull");
    for policy in ["IfNotPresent", "Never"] {
        let c = config(&[("IMAGE_PULL_POLICY", policy)]);
        assert!(!refresh_would_repull(&c, &[h("nginx:latest"), h("nginx")]), "{policy}");
    }
    // with digest checks a tag is pulled again when its digest changes, never on the timer;
    // IMAGE_PULL_POLICY=Always keeps the puller's periodic re-pull
    assert!(!refresh_would_repull(&config(&[]), &[h("nginx:latest"), h("nginx")]));
    assert!(refresh_would_repull(&config(&[("IMAGE_PULL_POLICY", "Always")]), &[h("nginx:1.25")]));
}

#[test]
fn with_digest_checks_tags_are_pulled_always_and_pinned_images_not() {
    let c = config(&[("IMAGES", &format!("tag=nginx:1.25;pinned=nginx@{DIGEST}"))]);
    let policies: Vec<_> = holders(&render(&c)).iter().map(|h| h.image_pull_policy.clone()).collect();
    assert_eq!(policies, [Some("Always".to_string()), None], "a roll for a new digest must pull the tag");
    let off = config(&[("IMAGES", "nginx:1.25"), ("DIGEST_CHECK_INTERVAL", "0")]);
    assert_eq!(holders(&render(&off))[0].image_pull_policy, None);
    let explicit = config(&[("IMAGES", "nginx:1.25"), ("IMAGE_PULL_POLICY", "IfNotPresent")]);
    assert_eq!(holders(&render(&explicit))[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
    // nothing to warm: the idle holder of the sleep image is never pulled again
    let idle = config(&[("WATCH_DEPLOYMENTS", "true")]);
    assert_eq!(holders(&render(&idle))[0].image_pull_policy, None);
}

#[test]
fn nothing_to_warm_renders_one_idle_holder_of_the_sleep_image() {
    let config = Config::from_vars(
        [("KIP_IMAGE".to_string(), "registry.example.com/kwarm/sleep:1".to_string())],
        Some("ns".into()),
    )
    .expect("watching Deployments without IMAGES is valid");
    let ds = render_daemonset(&config, &RenderInput::default());
    let pod = ds.spec.and_then(|s| s.template.spec).expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "a pod needs a container");
    assert_eq!(pod.containers[0].name, IDLE_HOLDER_NAME);
    assert_eq!(pod.containers[0].image.as_deref(), Some("registry.example.com/kwarm/sleep:1"));
}

// ---------------------------------------------------------------------------------------------
// A DaemonSet of the same name that is not kwarm's

/// The DaemonSet kubernetes-image-puller creates (its selector, labels and owner).
fn pullers_daemonset() -> DaemonSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": "kubernetes-image-puller",
            "namespace": "k8s-image-puller",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                "name": "kubernetes-image-puller", "uid": "1", "controller": true}]
        },
        "spec": {
            "selector": {"matchLabels": {"test": "daemonset-test", "app.kubernetes.io/name": "image-puller"}},
            "template": {"metadata": {"labels": {"test": "daemonset-test", "app.kubernetes.io/name": "image-puller"}},
                "spec": {"containers": [{"name": "che-code", "image": "quay.io/che-incubator/che-code:next"}]}}
        }
    }))
    .expect("a DaemonSet")
}

#[test]
fn the_pullers_daemonset_is_foreign_and_the_message_says_what_to_do() {
    let c = config(&[("IMAGES", "nginx:1"), ("NAMESPACE", "k8s-image-puller")]);
    let why = foreign_daemonset(&render(&c), &pullers_daemonset()).expect("foreign");
    for part in [
        "k8s-image-puller/kubernetes-image-puller",
        "kubernetes-image-puller's DaemonSet",
        "app.kubernetes.io/name=image-puller,test=daemonset-test",
        "owned by Deployment kubernetes-image-puller",
        "uninstall kubernetes-image-puller",
        "DAEMONSET_NAME",
    ] {
        assert!(why.contains(part), "{part:?} missing in: {why}");
    }
}

#[test]
fn another_selector_is_foreign_and_kwarms_own_is_not() {
    let c = config(&[("IMAGES", "nginx:1")]);
    let desired = render(&c);
    assert_eq!(foreign_daemonset(&desired, &desired), None, "kwarm's own DaemonSet");
    // a live copy with other content (images, labels) but kwarm's selector is kwarm's to fix
    let mut drifted = render(&config(&[("IMAGES", "redis:7")]));
    drifted.metadata.labels = None;
    assert_eq!(foreign_daemonset(&desired, &drifted), None, "drift is not foreignness");
    let mut other = desired.clone();
    if let Some(spec) = other.spec.as_mut() {
        spec.selector.match_labels = Some(BTreeMap::from([("app".to_string(), "cache".to_string())]));
    }
    let why = foreign_daemonset(&desired, &other).expect("foreign");
    assert!(
        why.contains("is not kwarm's") && why.contains("app=cache") && why.contains("delete that DaemonSet"),
        "{why}"
    );
}

#[test]
fn held_images_are_the_canonical_holder_images_without_the_idle_one() {
    let c = config(&[("IMAGES", "a=nginx:1.25;b=quay.io/team/app:2")]);
    let held: Vec<String> = held_images(&render(&c)).into_iter().collect();
    assert_eq!(held, ["docker.io/library/nginx:1.25", "quay.io/team/app:2"]);
    // nothing to warm: the DaemonSet has the idle holder only, and holds nothing
    let idle = render_daemonset(&config(&[("IMAGES", "nginx:1")]), &RenderInput::default());
    assert!(held_images(&idle).is_empty());
}

#[test]
fn the_holders_tolerate_the_node_gate_once_next_to_the_users_tolerations() {
    let gated = config(&[
        ("IMAGES", "nginx:1"),
        ("TOLERATIONS", r#"[{"key":"gpu","operator":"Exists","effect":"NoSchedule"}]"#),
        ("NODE_GATE_TAINT", "kwarm.io/warming=true"),
    ]);
    let tolerations = pod(&render(&gated)).tolerations.clone().unwrap_or_default();
    let keys: Vec<_> =
        tolerations.iter().map(|t| (t.key.as_deref(), t.operator.as_deref(), t.value.as_deref())).collect();
    assert_eq!(
        keys,
        vec![(Some("gpu"), Some("Exists"), None), (Some("kwarm.io/warming"), Some("Equal"), Some("true"))]
    );
    // a user who already tolerates exactly the gate does not get it twice
    let already = config(&[
        ("IMAGES", "nginx:1"),
        ("TOLERATIONS", r#"[{"key":"kwarm.io/warming","operator":"Exists","effect":"NoSchedule"}]"#),
        ("NODE_GATE_TAINT", "kwarm.io/warming"),
    ]);
    assert_eq!(pod(&render(&already)).tolerations.as_ref().map(Vec::len), Some(1));
    assert_eq!(pod(&render(&config(&[("IMAGES", "nginx:1")]))).tolerations, None, "gate off: nothing added");
}
