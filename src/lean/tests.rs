use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::{LeanDeployment, LeanPod};
use crate::config::Config;
use crate::images::summarize_deployment;
use crate::status::pod_holders;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A holder pod as the API server sends it, with everything kwarm does not read.
fn holder_pod(node: Option<&str>, deleting: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "kwarm-abcde", "namespace": "kwarm", "uid": "u-1", "resourceVersion": "42",
            "generateName": "kwarm-", "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"app.kubernetes.io/name": "kwarm", "pod-template-generation": "3"},
            "annotations": {"note": "x"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kwarm", "uid": "d-1",
                                 "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
        },
        "spec": {
            "initContainers": [{"name": "copy-sleep", "image": "reg/kwarm/sleep:1", "args": ["--copy-to", "/k/sleep"]}],
            "containers": [
                {"name": "a", "image": "reg/a:1", "command": ["/k/sleep"],
                 "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}},
                 "volumeMounts": [{"name": "k", "mountPath": "/k"}],
                 "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true}},
                {"name": "b", "image": "reg/b:1"},
                {"name": "c", "image": "reg/c:1"},
                {"name": "d", "image": "reg/d:1"}
            ],
            "tolerations": [{"operator": "Exists"}], "volumes": [{"name": "k", "emptyDir": {}}]
        },
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-01T10:00:01Z"}],
            "initContainerStatuses": [{"name": "copy-sleep", "image": "reg/kwarm/sleep:1", "imageID": "", "ready": false,
                                       "restartCount": 0,
                                       "state": {"waiting": {"reason": "ErrImagePull", "message": "no such kip"}}}],
            "containerStatuses": [
                {"name": "a", "image": "reg/a:1", "imageID": format!("reg/a@{DIGEST}"), "ready": true,
                 "restartCount": 0, "started": true,
                 "state": {"running": {"startedAt": "2026-12-01T10:00:02Z"}}},
                {"name": "b", "image": "reg/b:1", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling"}}},
                {"name": "c", "image": "reg/c:1", "imageID": "sha256:abc", "ready": false, "restartCount": 1,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "d", "image": "reg/d:1", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]
        }
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    if deleting {
        pod["metadata"]["deletionTimestamp"] = json!("2026-12-01T10:05:00Z");
    }
    pod
}

#[test]
fn a_lean_holder_pod_reads_as_the_full_one() {
    for (node, deleting) in [(Some("node-1"), false), (None, false), (Some("node-1"), true)] {
        let text = holder_pod(node, deleting).to_string();
        let full: Pod = serde_json::from_str(&text).expect("full pod");
        let lean: LeanPod = serde_json::from_str(&text).expect("lean pod");
        let lean = lean.into_pod();
        assert_eq!(pod_holders(&lean), pod_holders(&full), "node {node:?}, deleting {deleting}");
        assert_eq!(lean.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(lean.metadata.managed_fields, None);
    }
    let held = pod_holders(
        &serde_json::from_value::<LeanPod>(holder_pod(Some("n"), false)).expect("pod").into_pod(),
    )
    .expect("holders");
    // the states themselves, so the comparison above is not between two empty results
    assert_eq!(held.images.len(), 4);
    assert_eq!(held.digests.values().collect::<Vec<_>>(), [DIGEST]);
    assert_eq!(held.init_failure, Some(("ErrImagePull".into(), "no such kip".into())));
}

#[test]
fn a_pod_with_missing_parts_still_parses() {
    for text in [r#"{"metadata":{}}"#, r#"{"metadata":{"name":"p"},"spec":{},"status":{}}"#] {
        let full: Pod = serde_json::from_str(text).expect("full");
        let lean: LeanPod = serde_json::from_str(text).expect("lean");
        assert_eq!(pod_holders(&lean.into_pod()), pod_holders(&full));
    }
}

#[test]
fn a_lean_deployment_summarizes_as_the_full_one() {
    let config =
        Config::from_vars([("WATCH_NAMESPACES".to_string(), "*".to_string())], None).expect("config");
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7", "generation": 4,
                     "labels": {"kwarm.io/enabled": "true", "kwarm.io/rollout-gate": "false"},
                     "annotations": {"kwarm.io/rollout-gate": "true",
                                     "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"type": "RollingUpdate"},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
                                                      {"name": "side", "image": "reg/side@".to_string() + DIGEST}],
                                       "initContainers": [{"name": "init", "image": "busybox"}],
                                       "imagePullSecrets": [{"name": "regcred"}, {"name": ""}]}}},
        "status": {"replicas": 3, "readyReplicas": 3}
    })
    .to_string();
    let full: Deployment = serde_json::from_str(&deployment).expect("full");
    let lean: LeanDeployment = serde_json::from_str(&deployment).expect("lean");
    let summary = summarize_deployment(&lean.into_deployment(), &config.watch);
    assert_eq!(summary, summarize_deployment(&full, &config.watch));
    let summary = summary.expect("summary");
    assert_eq!((summary.images.len(), summary.containers.len(), summary.rollout_gate), (3, 3, Some(true)));
    assert_eq!(summary.pull_secrets.len(), 1);

    for text in
        [r#"{"metadata":{"namespace":"a"}}"#, r#"{"metadata":{"namespace":"a"},"spec":{"template":{}}}"#]
    {
        let full: Deployment = serde_json::from_str(text).expect("full");
        let lean: LeanDeployment = serde_json::from_str(text).expect("lean");
        assert_eq!(
            summarize_deployment(&lean.into_deployment(), &config.watch),
            summarize_deployment(&full, &config.watch)
        );
    }
}
