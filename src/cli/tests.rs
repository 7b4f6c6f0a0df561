use std::collections::{BTreeMap, BTreeSet};

use pretty_assertions::assert_eq;

use super::*;
use crate::status::{ImageStatus, ManagerCondition, QuarantineEntry};

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

// ---------------------------------------------------------------------------------------------
// which namespace, which DaemonSets

#[test]
fn the_namespace_flag_wins_then_namespace_then_the_context_then_the_pod() {
    assert_eq!(namespace(Some("flag"), Some("env"), Some("ctx"), Some("pod")), "flag");
    assert_eq!(namespace(None, Some("env"), Some("ctx"), Some("pod")), "env");
    assert_eq!(namespace(None, None, Some("ctx"), Some("pod")), "ctx");
    assert_eq!(namespace(None, None, None, Some("pod")), "pod");
    assert_eq!(namespace(None, None, None, None), "k8s-image-puller");
    // an empty NAMESPACE (a ConfigMap with NAMESPACE: "") is not a namespace
    assert_eq!(namespace(None, Some(" "), Some("ctx"), None), "ctx");
}

#[test]
fn the_daemonset_flag_wins_over_daemonset_name_and_without_either_kwarm_discovers() {
    let ns = || "kwarm".to_string();
    assert_eq!(
        Selection::new(false, ns(), Some("flag"), Some("env")),
        Selection::One { namespace: ns(), daemonset: "flag".into() }
    );
    assert_eq!(
        Selection::new(false, ns(), None, Some("env")),
        Selection::One { namespace: ns(), daemonset: "env".into() }
    );
    assert_eq!(
        Selection::new(false, ns(), None, Some("")),
        Selection::Discover { namespace: Some(ns()), daemonset: None }
    );
    assert_eq!(
        Selection::new(true, ns(), None, None),
        Selection::Discover { namespace: None, daemonset: None }
    );
    assert_eq!(
        Selection::new(true, ns(), Some("flag"), None),
        Selection::Discover { namespace: None, daemonset: Some("flag".into()) }
    );
}

#[test]
fn discovery_finds_the_daemonsets_kwarm_renders() {
    let config = Config::from_vars(vars(&[("IMAGES", "nginx:1.25")]), None).expect("config");
    let ds = crate::daemonset::render_daemonset(&config, &Default::default());
    let labels = ds.metadata.labels.expect("labels");
    let selector = crate::labels::LabelSelector::parse(crate::daemonset::MANAGED_SELECTOR).expect("selector");
    assert!(selector.matches(&labels), "{labels:?}");
    // kubernetes-image-puller's DaemonSet is not kwarm's
    let puller = BTreeMap::from([("app.kubernetes.io/name".to_string(), "image-puller".to_string())]);
    assert!(!selector.matches(&puller));
}

// ---------------------------------------------------------------------------------------------
// what status reads from the environment

#[test]
fn status_reads_only_its_own_variables() {
    // the manager would refuse this environment; status does not read IMAGES or the resources
    let env = vars(&[
        ("IMAGES", "kip=nginx:1.25"),
        ("CACHING_MEMORY_REQUEST", "lots"),
        ("WATCH_DEPLOYMENTS", "false"),
        ("METRICS_BIND_ADDRESS", ":8081"),
        ("NAMESPACE", "tools"),
        ("DAEMONSET_NAME", "holders"),
        ("NODE_GATE_TAINT", "kwarm.io/cold"),
    ]);
    assert!(Config::from_vars(env.clone(), None).is_err());
    let config = status_config(env, None).expect("status's variables are valid");
    assert_eq!((config.namespace.as_str(), config.daemonset_name.as_str()), ("tools", "holders"));
    assert!(config.node_gate.is_some());
    // what it does read is validated, every problem at once
    let errors =
        status_config(vars(&[("NODE_GATE_TAINT", "not a taint!"), ("NODE_GATE_TIMEOUT", "soon")]), None)
            .expect_err("invalid gate settings");
    let named: Vec<&str> = errors.0.iter().map(|e| e.variable).collect();
    assert_eq!(named, ["NODE_GATE_TAINT", "NODE_GATE_TIMEOUT"]);
    // no environment at all is fine
    assert!(status_config(Vec::new(), None).is_ok());
}

#[test]
fn status_variables_are_kwarm_variables() {
    for name in STATUS_VARIABLES {
        assert!(crate::config::is_known(name), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// warm or not: the exit code

fn image(name: &str, nodes: usize, warm: usize, failed: usize) -> ImageStatus {
    let mut s = ImageStatus {
        image: name.into(),
        nodes,
        warm,
        failed,
        pulling: nodes - warm - failed,
        ..Default::default()
    };
    if failed > 0 {
        let on: BTreeSet<String> = (0..failed).map(|i| format!("node-{i}")).collect();
        s.failures.insert("ImagePullBackOff".into(), on);
    }
    s
}

fn report(images: Vec<ImageStatus>, desired: Option<usize>) -> StatusReport {
    StatusReport {
        namespace: "kwarm".into(),
        daemonset: "holders".into(),
        exists: true,
        nodes: desired.unwrap_or(0),
        images,
        desired_nodes: desired,
        ..Default::default()
    }
}

#[test]
fn warm_is_every_image_on_every_node() {
    let warm = report(vec![image("docker.io/library/nginx:1.25", 3, 3, 0)], Some(3));
    assert_eq!(not_warm(&warm), Vec::<String>::new());
    let pulling = report(vec![image("docker.io/library/nginx:1.25", 3, 2, 0)], Some(3));
    assert_eq!(not_warm(&pulling), ["docker.io/library/nginx:1.25: warm on 2 of 3 nodes"]);
    let failing = report(vec![image("a:1", 2, 1, 1)], Some(2));
    assert_eq!(not_warm(&failing), ["a:1: warm on 1 of 2 nodes (ImagePullBackOff on 1)"]);
    // a node the DaemonSet controller placed a holder on but whose pod is not there yet
    let missing_pod = report(vec![image("a:1", 2, 2, 0)], Some(3));
    assert_eq!(not_warm(&missing_pod), ["a:1: warm on 2 of 3 nodes"]);
    // nothing to hold (only Deployments to watch, none labelled yet)
    assert!(not_warm(&report(Vec::new(), Some(3))).is_empty());
}

#[test]
fn not_warm_when_missing_quarantined_unplaced_or_the_init_container_fails() {
    let missing =
        StatusReport { namespace: "kwarm".into(), daemonset: "holders".into(), ..Default::default() };
    assert_eq!(not_warm(&missing), ["DaemonSet kwarm/holders does not exist"]);

    let mut quarantined = report(vec![image("a:1", 1, 1, 0)], Some(1));
    quarantined.quarantined.insert("bad:1".into(), QuarantineEntry { attempt: 2, retry_at: None });
    assert_eq!(not_warm(&quarantined), ["bad:1: quarantined (attempt 2)"]);

    let unplaced = report(vec![image("a:1", 0, 0, 0)], None);
    assert_eq!(
        not_warm(&unplaced),
        ["the DaemonSet controller has not placed the current template yet", "a:1: warm on 0 of 0 nodes"]
    );

    let mut init = report(vec![image("a:1", 1, 0, 0)], Some(1));
    init.init_failures.insert("ErrImagePull: not found\x1b[2J".into(), 1);
    let reasons = not_warm(&init);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].starts_with("init container (KIP_IMAGE) failing on 1 nodes"), "{reasons:?}");
    // exact here (the JSON's notWarm); the table makes it terminal-safe
    assert!(reasons[1].ends_with("not found\x1b[2J"), "{reasons:?}");
    let text = status_text(&[init], "in namespace ns");
    assert!(
        !text.contains('\x1b') && text.contains("failing on 1 nodes: ErrImagePull: not found[2J\n"),
        "{text}"
    );
}

#[test]
fn the_managers_own_warm_condition_counts_when_it_is_false() {
    // e.g. images over MAX_IMAGES, which the DaemonSet alone does not show
    let mut r = report(vec![image("a:1", 1, 1, 0)], Some(1));
    r.manager_warm =
        Some(ManagerCondition { status: true, reason: "AllImagesWarm".into(), message: String::new() });
    assert!(not_warm(&r).is_empty());
    r.manager_warm = Some(ManagerCondition {
        status: false,
        reason: "MaxImagesReached".into(),
        message: "1 image over MAX_IMAGES: b:1".into(),
    });
    assert_eq!(
        not_warm(&r),
        ["the manager reports Warm=False (MaxImagesReached): 1 image over MAX_IMAGES: b:1"]
    );
}

// ---------------------------------------------------------------------------------------------
// what status prints

#[test]
fn json_carries_api_version_kind_and_the_verdict() {
    let warm = report(vec![image("a:1", 1, 1, 0)], Some(1));
    let document = serde_json::to_value(StatusDocument::new(&warm)).expect("json");
    assert_eq!(document["apiVersion"], "kwarm.io/v1alpha1");
    assert_eq!(document["kind"], "Status");
    assert_eq!(document["warm"], true);
    assert_eq!(document["notWarm"], serde_json::json!([]));
    // the report's own fields stay where they were
    assert_eq!(document["daemonset"], "holders");
    assert_eq!(document["images"][0]["image"], "a:1");

    let reports = [warm, report(vec![image("a:1", 2, 1, 0)], Some(2))];
    let list = serde_json::to_value(StatusList::new(&reports)).expect("json");
    assert_eq!(list["kind"], "StatusList");
    assert_eq!(list["apiVersion"], "kwarm.io/v1alpha1");
    assert_eq!(list["warm"], false);
    assert_eq!(list["items"][0]["kind"], "Status");
    assert_eq!(list["items"][1]["notWarm"], serde_json::json!(["a:1: warm on 1 of 2 nodes"]));
    let empty = serde_json::to_value(StatusList::new(&[])).expect("json");
    assert_eq!(empty["items"], serde_json::json!([]));
}

#[test]
fn text_has_a_name_row_per_daemonset_and_says_what_is_not_warm() {
    let mut other = report(vec![image("a:1", 2, 1, 0)], Some(2));
    other.namespace = "ci".into();
    let text = status_text(&[report(vec![image("a:1", 1, 1, 0)], Some(1)), other], "in any namespace");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "NAME           WARM  IMAGES  NODES");
    assert_eq!(lines[1], "kwarm/holders  yes        1      1");
    assert_eq!(lines[2], "ci/holders     no         1      2");
    assert!(text.contains("DaemonSet ci/holders: 1 images on 2 nodes"), "{text}");
    assert!(text.contains("\nNot warm:\n  a:1: warm on 1 of 2 nodes\n"), "{text}");
    assert_eq!(status_text(&[], "in namespace kwarm"), "No DaemonSet managed by kwarm in namespace kwarm\n");
}

// ---------------------------------------------------------------------------------------------
// ConfigMap manifests

#[test]
fn a_configmap_as_kubectl_get_prints_it() {
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: k8s-image-puller
  namespace: k8s-image-puller
  resourceVersion: "1234"
  uid: 8d1f5c1e-0000-0000-0000-000000000000
  labels: {app.kubernetes.io/name: kubernetes-image-puller}
  managedFields: [{manager: kubectl, operation: Apply}]
data:
  IMAGES: >
    java11-maven=quay.io/eclipse/che-java11-maven:nightly;
    che-theia=quay.io/eclipse/che-theia:next;
  CACHING_INTERVAL_HOURS: "1"
  NODE_SELECTOR: "{}"
"#;
    let found = configmaps_in(yaml).expect("a ConfigMap");
    assert_eq!(found.len(), 1);
    let cm = &found[0];
    assert_eq!(cm.display_name(), "k8s-image-puller/k8s-image-puller");
    assert!(cm.problems.is_empty() && cm.warnings.is_empty(), "{cm:?}");
    let data: BTreeMap<_, _> = cm.data.iter().cloned().collect();
    assert_eq!(data["CACHING_INTERVAL_HOURS"], "1");
    assert!(data["IMAGES"].contains("che-theia=quay.io/eclipse/che-theia:next;"));
    let config = Config::from_vars(cm.data.clone(), cm.namespace.clone()).expect("valid");
    assert_eq!(config.images.len(), 2);
}

#[test]
fn the_configmaps_of_a_multi_document_manifest_and_of_a_list() {
    let yaml = "
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: k8s-image-puller}
---
# only a comment
---
apiVersion: v1
kind: ConfigMap
metadata: {name: first}
data: {IMAGES: 'nginx:1.25'}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: second, namespace: ci}, data: {MAX_IMAGES: '5'}}
- {apiVersion: apps/v1, kind: Deployment, metadata: {name: kwarm}}
";
    let found = configmaps_in(yaml).expect("ConfigMaps");
    let names: Vec<String> = found.iter().map(ConfigMapInput::display_name).collect();
    assert_eq!(names, ["first", "ci/second"]);
    assert_eq!(found[1].data, vars(&[("MAX_IMAGES", "5")]));
    // JSON is YAML too
    let json =
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}, "data": {"IMAGES": "a:1"}}"#;
    assert_eq!(configmaps_in(json).expect("JSON")[0].data, vars(&[("IMAGES", "a:1")]));
}

#[test]
fn bad_yaml_and_manifests_without_a_configmap_are_refused() {
    let bad = configmaps_in("kind: ConfigMap\ndata: {IMAGES: [unclosed\n").expect_err("bad YAML");
    assert!(bad.starts_with("not valid YAML (document 1): "), "{bad}");
    let other =
        configmaps_in("kind: Deployment\nmetadata: {name: x}\n---\nkind: Service\n").expect_err("none");
    assert_eq!(other, "no ConfigMap in the manifest, only Deployment, Service");
    assert_eq!(configmaps_in("").expect_err("empty"), "no ConfigMap in the manifest");
    let template = configmaps_in("kind: Template\nobjects: []\n").expect_err("a Template");
    assert!(template.contains("oc process"), "{template}");
}

#[test]
fn data_kubernetes_would_refuse_or_envfrom_would_not_pass_on_is_named() {
    let yaml = "
kind: ConfigMap
metadata: {name: typed}
data:
  MAX_IMAGES: 50
  LEADER_ELECT: false
  NODE_SELECTOR: {disk: ssd}
  IMAGES:
binaryData:
  blob: aGVsbG8=
";
    let cm = &configmaps_in(yaml).expect("a ConfigMap")[0];
    assert_eq!(cm.problems.len(), 3, "{:?}", cm.problems);
    assert!(
        cm.problems[0].starts_with("MAX_IMAGES: invalid value 50: a string (quote it: MAX_IMAGES: \"50\")")
    );
    assert!(cm.problems[1].starts_with("LEADER_ELECT: invalid value false: a string"));
    assert!(cm.problems[2].starts_with("NODE_SELECTOR: invalid value: a string, not a YAML list or map"));
    // the scalars still go through the manager's checks, with their text
    assert_eq!(cm.data, vars(&[("MAX_IMAGES", "50"), ("LEADER_ELECT", "false"), ("IMAGES", "")]));
    assert_eq!(cm.warnings, ["binaryData: envFrom passes only data on, these keys are ignored"]);

    let empty = &configmaps_in("kind: ConfigMap\nmetadata: {name: empty}\n").expect("a ConfigMap")[0];
    assert!(empty.data.is_empty() && empty.problems.is_empty());
    assert_eq!(empty.warnings.len(), 1, "{:?}", empty.warnings);
    assert!(empty.warnings[0].starts_with("no data"));
    let list =
        &configmaps_in("kind: ConfigMap\nmetadata: {name: l}\ndata: [a, b]\n").expect("a ConfigMap")[0];
    assert_eq!(list.problems, ["data: a map of variable names to strings"]);
}

// ---------------------------------------------------------------------------------------------
// kwarm check --list, logs

#[test]
fn the_variable_list_has_every_variable_with_its_default_and_one_line() {
    let text = variables_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), VARIABLES.len() + 1);
    assert!(lines[0].starts_with("VARIABLE") && lines[0].ends_with("DESCRIPTION"));
    for (line, v) in lines[1..].iter().zip(VARIABLES) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], v.name);
        assert_eq!(fields[1], if v.default.is_empty() { "-" } else { v.default });
        assert!(!v.description.is_empty() && !v.description.contains('\n'), "{}", v.name);
    }
}

#[test]
fn the_kube_clients_request_failures_are_not_logged_twice() {
    let quiet = "kube_client::client::builder=off,kube_runtime::watcher=error";
    assert_eq!(log_filter(None), format!("info,{quiet}"));
    assert_eq!(log_filter(Some("")), format!("info,{quiet}"));
    assert_eq!(log_filter(Some("info,kwarm=debug")), format!("info,kwarm=debug,{quiet}"));
    // asked for explicitly: as asked
    assert_eq!(
        log_filter(Some("debug,kube_client=trace")),
        "debug,kube_client=trace,kube_runtime::watcher=error"
    );
    assert_eq!(
        log_filter(Some("kube_runtime=debug,kube_client=debug")),
        "kube_runtime=debug,kube_client=debug"
    );
}
