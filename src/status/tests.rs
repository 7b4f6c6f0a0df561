use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

use super::*;

const MISSING: &str = "quay.io/team/missing:1";
const MISSING_CANONICAL: &str = "quay.io/team/missing:1";
const NGINX: &str = "nginx:1.25";
const NGINX_CANONICAL: &str = "docker.io/library/nginx:1.25";
const SMALL: &str = "127.0.0.1:5000/test/small:v1";

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

// ---------------------------------------------------------------------------------------------
// Holder pods as the API server returns them

/// A holder pod on `node` of template generation `generation`, with the given container
/// statuses (`None`: the pod has no status yet).
fn holder_pod(
    node: Option<&str>,
    generation: &str,
    containers: &[(&str, &str)],
    statuses: Option<Vec<Value>>,
) -> Pod {
    let spec_containers: Vec<Value> = containers
        .iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "command": ["/kip/sleep"], "args": ["infinity"],
                   "volumeMounts": [{"name": "kip", "mountPath": "/kip", "readOnly": true}]})
        })
        .collect();
    let mut spec = json!({
        "initContainers": [{"name": "kip", "image": "ghcr.io/kwarm/sleep:v0.1.0",
                            "command": ["/sleep"], "args": ["--copy-to", "/kip/sleep"]}],
        "containers": spec_containers,
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
    });
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("kubernetes-image-puller-{}", node.unwrap_or("pending")),
            "namespace": "k8s-image-puller",
            "uid": "0b1c2d3e-0000-4000-8000-000000000001",
            "labels": {
                "app.kubernetes.io/instance": "kubernetes-image-puller",
                "app.kubernetes.io/name": "kwarm",
                "controller-revision-hash": "6d4f8b9c7",
                "pod-template-generation": generation
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kubernetes-image-puller",
                                 "uid": "d5e6f7a8-0000-4000-8000-000000000002", "controller": true,
                                 "blockOwnerDeletion": true}]
        },
        "spec": spec,
    });
    if let Some(statuses) = statuses {
        pod["status"] = json!({
            "phase": "Pending",
            "hostIP": "10.0.0.11",
            "podIP": "10.244.1.7",
            "startTime": "2024-05-01T10:00:00Z",
            "initContainerStatuses": [{"name": "kip", "image": "ghcr.io/kwarm/sleep:v0.1.0",
                "imageID": "ghcr.io/kwarm/sleep@sha256:1111111111111111111111111111111111111111111111111111111111111111",
                "ready": true, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": "2024-05-01T10:00:01Z", "finishedAt": "2024-05-01T10:00:01Z"}}}],
            "containerStatuses": statuses,
        });
    }
    serde_json::from_value(pod).expect("a valid Pod")
}

fn running(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image, "ready": true, "restartCount": 0, "started": true,
           "imageID": "docker.io/library/nginx@sha256:2222222222222222222222222222222222222222222222222222222222222222",
           "containerID": "containerd://3333", "state": {"running": {"startedAt": "2024-05-01T10:00:03Z"}}})
}

fn waiting(name: &str, image: &str, reason: &str, message: Option<&str>) -> Value {
    let mut w = json!({"reason": reason});
    if let Some(m) = message {
        w["message"] = json!(m);
    }
    json!({"name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
           "state": {"waiting": w}})
}

fn terminated(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image, "ready": false, "restartCount": 0, "started": false,
           "imageID": "docker.io/library/nginx@sha256:2222222222222222222222222222222222222222222222222222222222222222",
           "state": {"terminated": {"exitCode": 0, "reason": "Completed",
               "startedAt": "2024-05-01T10:00:03Z", "finishedAt": "2024-05-01T11:00:03Z"}}})
}

const NOT_FOUND: &str = "rpc error: code = NotFound desc = failed to pull and unpack image \
    \"quay.io/team/missing:1\": failed to resolve reference \"quay.io/team/missing:1\": \
    quay.io/team/missing:1: not found";
const BACK_OFF: &str = "Back-off pulling image \"quay.io/team/missing:1\"";

fn failed(reason: &str, message: &str) -> HolderState {
    HolderState::Failed { reason: reason.into(), message: message.into() }
}

// ---------------------------------------------------------------------------------------------
// pod_holders

#[test]
fn running_holders_are_warm() {
    let pod = holder_pod(
        Some("node-1"),
        "2",
        &[("web", NGINX), ("small", SMALL)],
        Some(vec![running("web", "docker.io/library/nginx:1.25"), running("small", SMALL)]),
    );
    let h = pod_holders(&pod).expect("scheduled pod");
    assert_eq!(h.node, "node-1");
    assert_eq!(h.generation, Some(2));
    assert_eq!(
        h.images,
        BTreeMap::from([
            (SMALL.to_string(), HolderState::Warm),
            (NGINX_CANONICAL.to_string(), HolderState::Warm)
        ]),
        "keyed by canonical reference"
    );
}

#[test]
fn pull_failures_carry_the_kubelets_reason_and_message() {
    let invalid_message = "Failed to apply default image tag \"Bad//image\": couldn't parse image name \
        \"Bad//image\": invalid reference format";
    let pod = holder_pod(
        Some("node-1"),
        "3",
        &[("web", NGINX), ("missing", MISSING), ("later", "quay.io/team/later:2"), ("invalid", "Bad//image")],
        Some(vec![
            running("web", NGINX),
            waiting("missing", MISSING, "ErrImagePull", Some(NOT_FOUND)),
            waiting("later", "quay.io/team/later:2", "ImagePullBackOff", Some(BACK_OFF)),
            waiting("invalid", "Bad//image", "InvalidImageName", Some(invalid_message)),
        ]),
    );
    let h = pod_holders(&pod).expect("scheduled");
    assert_eq!(h.images[NGINX_CANONICAL], HolderState::Warm);
    assert_eq!(h.images[MISSING_CANONICAL], failed("ErrImagePull", NOT_FOUND));
    assert_eq!(h.images["quay.io/team/later:2"], failed("ImagePullBackOff", BACK_OFF));
    // An image the parser refuses keeps its written form as the key.
    assert_eq!(h.images["Bad//image"], failed("InvalidImageName", invalid_message));
}

#[test]
fn other_kubelet_failure_reasons_count_as_failed() {
    for reason in ["ErrImageNeverPull", "RegistryUnavailable", "CreateContainerError", "CrashLoopBackOff"] {
        let pod =
            holder_pod(Some("n"), "1", &[("x", MISSING)], Some(vec![waiting("x", MISSING, reason, None)]));
        let h = pod_holders(&pod).expect("scheduled");
        assert_eq!(h.images[MISSING_CANONICAL], failed(reason, ""), "{reason}");
    }
}

#[test]
fn starting_holders_are_pulling() {
    let pod = holder_pod(
        Some("node-2"),
        "1",
        &[("a", NGINX), ("b", MISSING), ("c", SMALL), ("d", "redis:7")],
        Some(vec![
            waiting("a", NGINX, "ContainerCreating", None),
            waiting("b", MISSING, "PodInitializing", None),
            json!({"name": "c", "image": SMALL, "imageID": "", "ready": false, "restartCount": 0}),
            // No status for "d" at all yet.
        ]),
    );
    let h = pod_holders(&pod).expect("scheduled");
    assert!(h.images.values().all(|s| *s == HolderState::Pulling), "{h:?}");
    assert_eq!(h.images.len(), 4);
}

#[test]
fn a_pod_without_status_is_pulling_everything() {
    let pod = holder_pod(Some("node-3"), "1", &[("a", NGINX), ("b", SMALL)], None);
    let h = pod_holders(&pod).expect("scheduled");
    assert_eq!(
        h.images,
        BTreeMap::from([
            (SMALL.to_string(), HolderState::Pulling),
            (NGINX_CANONICAL.into(), HolderState::Pulling)
        ])
    );
}

#[test]
fn a_terminated_holder_still_had_its_image() {
    let pod = holder_pod(Some("n"), "1", &[("a", NGINX)], Some(vec![terminated("a", NGINX)]));
    assert_eq!(pod_holders(&pod).expect("scheduled").images[NGINX_CANONICAL], HolderState::Warm);
}

#[test]
fn terminating_and_unscheduled_pods_are_ignored() {
    let mut pod = holder_pod(Some("node-1"), "1", &[("a", NGINX)], Some(vec![running("a", NGINX)]));
    pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2024-05-01T12:00:00Z".parse().expect("timestamp"),
    ));
    assert_eq!(pod_holders(&pod), None);
    let pending = holder_pod(None, "1", &[("a", NGINX)], None);
    assert_eq!(pod_holders(&pending), None);
}

#[test]
fn the_template_generation_comes_from_the_pod_label() {
    let gen_of = |label: &str| {
        pod_holders(&holder_pod(Some("n"), label, &[("a", NGINX)], None)).expect("pod").generation
    };
    assert_eq!(gen_of("7"), Some(7));
    assert_eq!(gen_of("seven"), None);
    let mut pod = holder_pod(Some("n"), "1", &[("a", NGINX)], None);
    pod.metadata.labels.as_mut().expect("labels").remove("pod-template-generation");
    assert_eq!(pod_holders(&pod).expect("pod").generation, None);
}

// ---------------------------------------------------------------------------------------------
// image_statuses

/// A holder pod on `node` of `generation`, with these image states (also for the index's tests).
pub(super) fn holders(node: &str, generation: Option<i64>, images: &[(&str, HolderState)]) -> PodHolders {
    PodHolders {
        node: node.into(),
        generation,
        images: images.iter().map(|(i, s)| (i.to_string(), s.clone())).collect(),
        init_failure: None,
        digests: BTreeMap::new(),
    }
}

fn images(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn statuses_count_nodes_per_image() {
    use HolderState::*;
    let pods = [
        holders("node-1", Some(2), &[(NGINX_CANONICAL, Warm), (MISSING, failed("ErrImagePull", NOT_FOUND))]),
        holders(
            "node-2",
            Some(2),
            &[(NGINX_CANONICAL, Warm), (MISSING, failed("ImagePullBackOff", BACK_OFF))],
        ),
        holders(
            "node-3",
            Some(2),
            &[(NGINX_CANONICAL, Pulling), (MISSING, failed("ImagePullBackOff", BACK_OFF))],
        ),
    ];
    let s = image_statuses(&pods, Some(2), &images(&[NGINX_CANONICAL, MISSING]));
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].image.as_str(), s[0].nodes, s[0].warm, s[0].pulling, s[0].failed),
        (NGINX_CANONICAL, 3, 2, 1, 0)
    );
    assert!(!s[0].warm_everywhere() && !s[0].failing_everywhere());
    assert_eq!((s[1].nodes, s[1].warm, s[1].pulling, s[1].failed), (3, 0, 0, 3));
    assert!(s[1].failing_everywhere());
    assert_eq!(
        s[1].failures,
        BTreeMap::from([
            ("ErrImagePull".to_string(), BTreeSet::from(["node-1".to_string()])),
            ("ImagePullBackOff".to_string(), BTreeSet::from(["node-2".to_string(), "node-3".to_string()])),
        ])
    );
    assert_eq!(s[1].messages["ErrImagePull"], NOT_FOUND);
    assert_eq!(s[1].messages["ImagePullBackOff"], BACK_OFF);
}

#[test]
fn an_image_missing_from_a_pod_is_pulling_there() {
    let pods = [holders("node-1", Some(1), &[(NGINX_CANONICAL, HolderState::Warm)])];
    let s = image_statuses(&pods, Some(1), &images(&[SMALL]));
    assert_eq!((s[0].nodes, s[0].warm, s[0].pulling), (1, 0, 1));
}

#[test]
fn only_the_current_generation_counts_where_it_exists() {
    use HolderState::*;
    // A surge rollout: node-1 has both pods, node-2 only the old one, node-3 only the new one.
    let old = |node: &str| holders(node, Some(1), &[(NGINX_CANONICAL, Warm)]);
    let new = |node: &str| holders(node, Some(2), &[(NGINX_CANONICAL, Warm), (SMALL, Pulling)]);
    let expected = |s: &[ImageStatus]| {
        assert_eq!((s[0].nodes, s[0].warm, s[0].pulling), (3, 3, 0), "nginx: {s:?}");
        // node-1 and node-3 run the new pod (pulling); node-2's old pod does not have it.
        assert_eq!((s[1].nodes, s[1].warm, s[1].pulling), (3, 0, 3), "small: {s:?}");
    };
    let list = images(&[NGINX_CANONICAL, SMALL]);
    let pods = [old("node-1"), new("node-1"), old("node-2"), new("node-3")];
    expected(&image_statuses(&pods, Some(2), &list));
    // The order of the pods does not matter.
    let pods = [new("node-1"), old("node-1"), new("node-3"), old("node-2")];
    expected(&image_statuses(&pods, Some(2), &list));

    // The new pod's state wins over the old one's.
    let pods = [
        holders("node-1", Some(1), &[(SMALL, Warm)]),
        holders("node-1", Some(2), &[(SMALL, failed("ErrImagePull", "x"))]),
    ];
    let s = image_statuses(&pods, Some(2), &images(&[SMALL]));
    assert_eq!((s[0].nodes, s[0].warm, s[0].failed), (1, 0, 1));
}

#[test]
fn without_a_known_generation_every_node_counts_once() {
    let pods = [
        holders("node-1", Some(1), &[(SMALL, HolderState::Warm)]),
        holders("node-1", None, &[(SMALL, HolderState::Pulling)]),
        holders("node-2", None, &[(SMALL, HolderState::Warm)]),
    ];
    let s = image_statuses(&pods, None, &images(&[SMALL]));
    assert_eq!(s[0].nodes, 2);
    assert_eq!(s[0].warm + s[0].pulling, 2);
}

#[test]
fn no_nodes_is_neither_warm_nor_failing_everywhere() {
    let s = image_statuses(&[], Some(1), &images(&[SMALL]));
    assert_eq!(s[0].nodes, 0);
    assert!(!s[0].warm_everywhere());
    assert!(!s[0].failing_everywhere());
    let warm =
        image_statuses(&[holders("n", Some(1), &[(SMALL, HolderState::Warm)])], Some(1), &images(&[SMALL]));
    assert!(warm[0].warm_everywhere());
}

// ---------------------------------------------------------------------------------------------
// Quarantine

const POLICY: QuarantinePolicy =
    QuarantinePolicy { timeout: Duration::from_secs(600), backoff: Duration::from_secs(30), max_retries: 3 };

fn status(image: &str, nodes: usize, warm: usize, failed: usize) -> ImageStatus {
    ImageStatus {
        image: image.into(),
        nodes,
        warm,
        failed,
        pulling: nodes - warm - failed,
        ..Default::default()
    }
}

fn failing_everywhere(image: &str) -> ImageStatus {
    status(image, 3, 0, 3)
}

fn quarantined(images: &[&str]) -> QuarantineChanges {
    QuarantineChanges { quarantined: images.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn released(images: &[&str]) -> QuarantineChanges {
    QuarantineChanges {
        released_for_retry: images.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn recovered(images: &[&str]) -> QuarantineChanges {
    QuarantineChanges { recovered: images.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn none() -> QuarantineChanges {
    QuarantineChanges::default()
}

#[test]
fn failing_everywhere_shorter_than_the_timeout_changes_nothing() {
    let mut q = Quarantine::default();
    assert_eq!(q.step(&[failing_everywhere(MISSING)], POLICY, at(0)), none());
    assert_eq!(q.failing(), &BTreeMap::from([(MISSING.to_string(), at(0))]));
    assert_eq!(q.next_deadline(POLICY), Some(at(600)));
    assert_eq!(q.step(&[failing_everywhere(MISSING)], POLICY, at(599)), none());
    assert!(q.excluded().is_empty());
    assert!(q.entries().is_empty());
    assert!(none().is_empty());
}

#[test]
fn failing_everywhere_for_the_timeout_quarantines_with_backoff() {
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING), status(NGINX_CANONICAL, 3, 3, 0)], POLICY, at(0));
    let changes = q.step(&[failing_everywhere(MISSING), status(NGINX_CANONICAL, 3, 3, 0)], POLICY, at(600));
    assert_eq!(changes, quarantined(&[MISSING]));
    assert!(!changes.is_empty());
    assert_eq!(q.excluded(), BTreeSet::from([MISSING.to_string()]), "only the bad image goes");
    assert_eq!(q.entries()[MISSING], QuarantineEntry { attempt: 1, retry_at: Some(at(630)) });
    assert!(q.failing().is_empty());
    assert_eq!(q.next_deadline(POLICY), Some(at(630)));
}

#[test]
fn quarantined_images_are_retried_with_exponential_backoff_then_given_up() {
    let mut q = Quarantine::default();
    let mut now = at(0);
    let mut retry_delays = Vec::new();
    for attempt in 1..=4u32 {
        assert_eq!(q.step(&[failing_everywhere(MISSING)], POLICY, now), none(), "attempt {attempt}");
        now += POLICY.timeout;
        assert_eq!(q.step(&[failing_everywhere(MISSING)], POLICY, now), quarantined(&[MISSING]));
        let entry = q.entries()[MISSING].clone();
        assert_eq!(entry.attempt, attempt);
        let Some(retry_at) = entry.retry_at else {
            assert_eq!(attempt, 4, "no retry after MAX_RETRIES");
            break;
        };
        retry_delays.push(retry_at.duration_since(now).expect("in the future"));
        // Out of the DaemonSet: no status for it until the retry.
        assert_eq!(q.step(&[], POLICY, retry_at - Duration::from_secs(1)), none());
        assert!(q.excluded().contains(MISSING));
        assert_eq!(q.step(&[], POLICY, retry_at), released(&[MISSING]));
        assert!(q.excluded().is_empty(), "back in the DaemonSet for the retry");
        assert_eq!(q.entries()[MISSING].attempt, attempt, "the entry stays while retrying");
        assert_eq!(q.next_deadline(POLICY), None, "nothing due while the retry runs");
        assert_eq!(q.step(&[], POLICY, retry_at), none(), "released once");
        now = retry_at;
    }
    let s = |n| Duration::from_secs(n);
    assert_eq!(retry_delays, [s(30), s(60), s(120)], "1x, 2x, 4x RETRY_BACKOFF");
    // Given up: excluded for good, nothing scheduled.
    assert!(q.excluded().contains(MISSING));
    assert_eq!(q.next_deadline(POLICY), None);
    assert_eq!(q.step(&[], POLICY, now + Duration::from_secs(365 * 86400)), none());
    assert!(q.excluded().contains(MISSING));
}

#[test]
fn no_retries_at_all_with_max_retries_zero() {
    let policy = QuarantinePolicy { max_retries: 0, ..POLICY };
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING)], policy, at(0));
    q.step(&[failing_everywhere(MISSING)], policy, at(600));
    assert_eq!(q.entries()[MISSING], QuarantineEntry { attempt: 1, retry_at: None });
}

#[test]
fn a_retried_image_that_becomes_warm_recovers() {
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING)], POLICY, at(0));
    q.step(&[failing_everywhere(MISSING)], POLICY, at(600));
    assert_eq!(q.step(&[], POLICY, at(630)), released(&[MISSING]));
    // The image was pushed in the meantime: pulling, then warm on one node.
    assert_eq!(q.step(&[status(MISSING, 3, 0, 0)], POLICY, at(640)), none());
    assert_eq!(q.step(&[status(MISSING, 3, 1, 0)], POLICY, at(650)), recovered(&[MISSING]));
    assert!(q.entries().is_empty());
    assert!(q.excluded().is_empty());
    assert_eq!(q.next_deadline(POLICY), None);
    // Warm images that were never quarantined are no news.
    assert_eq!(q.step(&[status(NGINX_CANONICAL, 3, 3, 0)], POLICY, at(660)), none());
}

#[test]
fn failing_on_only_some_nodes_never_quarantines() {
    let mut q = Quarantine::default();
    for minute in 0..120 {
        let statuses = [status(MISSING, 3, 0, 2), status(SMALL, 3, 1, 2)];
        assert_eq!(q.step(&statuses, POLICY, at(minute * 60)), none(), "minute {minute}");
    }
    assert!(q.failing().is_empty());
    assert!(q.excluded().is_empty());
}

#[test]
fn failing_must_be_uninterrupted_for_the_timeout() {
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING)], POLICY, at(0));
    // A moment where one node is pulling again restarts the clock.
    q.step(&[status(MISSING, 3, 0, 2)], POLICY, at(300));
    q.step(&[failing_everywhere(MISSING)], POLICY, at(360));
    assert_eq!(q.step(&[failing_everywhere(MISSING)], POLICY, at(600)), none());
    assert_eq!(q.next_deadline(POLICY), Some(at(960)));
    assert_eq!(q.step(&[failing_everywhere(MISSING)], POLICY, at(960)), quarantined(&[MISSING]));
}

#[test]
fn several_images_are_tracked_independently() {
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere("a:1")], POLICY, at(0));
    q.step(&[failing_everywhere("a:1"), failing_everywhere("b:1")], POLICY, at(100));
    assert_eq!(q.next_deadline(POLICY), Some(at(600)));
    let changes = q.step(&[failing_everywhere("a:1"), failing_everywhere("b:1")], POLICY, at(600));
    assert_eq!(changes, quarantined(&["a:1"]));
    // a:1 retries at 630, b:1 times out at 700.
    assert_eq!(q.next_deadline(POLICY), Some(at(630)));
    assert_eq!(q.step(&[failing_everywhere("b:1")], POLICY, at(630)), released(&["a:1"]));
    assert_eq!(q.next_deadline(POLICY), Some(at(700)));
    assert_eq!(q.step(&[failing_everywhere("b:1")], POLICY, at(700)), quarantined(&["b:1"]));
    assert_eq!(q.excluded(), BTreeSet::from(["b:1".to_string()]));
}

#[test]
fn retain_images_drops_state_of_unwanted_images() {
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere("a:1"), failing_everywhere("b:1")], POLICY, at(0));
    q.step(&[failing_everywhere("a:1")], POLICY, at(600));
    q.step(&[failing_everywhere("c:1")], POLICY, at(600));
    assert_eq!(q.excluded(), BTreeSet::from(["a:1".to_string()]));
    q.retain_images(&BTreeSet::from(["c:1".to_string()]));
    assert!(q.entries().is_empty(), "a:1 is not wanted any more");
    assert_eq!(q.failing().keys().collect::<Vec<_>>(), ["c:1"]);
    q.retain_images(&BTreeSet::new());
    assert_eq!(q, Quarantine::default());
    assert_eq!(q.next_deadline(POLICY), None);
}

#[test]
fn restored_quarantine_continues() {
    let entries = BTreeMap::from([
        ("a:1".to_string(), QuarantineEntry { attempt: 2, retry_at: Some(at(100)) }),
        ("b:1".to_string(), QuarantineEntry { attempt: 4, retry_at: None }),
    ]);
    let mut q = Quarantine::restore(entries.clone(), &BTreeSet::new(), at(0));
    assert_eq!(q.entries(), &entries);
    assert_eq!(q.excluded(), BTreeSet::from(["a:1".to_string(), "b:1".to_string()]));
    assert_eq!(q.next_deadline(POLICY), Some(at(100)));
    assert_eq!(q.step(&[], POLICY, at(100)), released(&["a:1"]));
    // Failing again: attempt 3, backoff 4x.
    q.step(&[failing_everywhere("a:1")], POLICY, at(110));
    q.step(&[failing_everywhere("a:1")], POLICY, at(710));
    assert_eq!(q.entries()["a:1"], QuarantineEntry { attempt: 3, retry_at: Some(at(710 + 120)) });
}

#[test]
fn a_stored_entry_never_takes_a_held_image_off_the_nodes() {
    // Found by the chaos suite (bench/chaos.py, state_future): the annotation written by hand
    // while the leader was down, with entries for two images every node held. The new leader
    // left both out of the DaemonSet (one "for good", one until 9999) and every holder of them
    // went. An image the DaemonSet holds is back in for a retry instead, like one whose retry
    // time has come: warm, it leaves the quarantine; failing, it is quarantined again.
    let held = BTreeSet::from(["a:1".to_string(), "b:1".to_string()]);
    let far = humantime::parse_rfc3339("9999-12-31T23:59:59Z").expect("time");
    let stored = BTreeMap::from([
        ("a:1".to_string(), QuarantineEntry { attempt: u32::MAX, retry_at: Some(far) }),
        ("b:1".to_string(), QuarantineEntry { attempt: 1, retry_at: None }),
        ("c:1".to_string(), QuarantineEntry { attempt: 1, retry_at: Some(far) }),
    ]);
    let mut q = Quarantine::restore(stored, &held, at(0));
    assert_eq!(q.excluded(), BTreeSet::from(["c:1".to_string()]), "only the image not held stays out");
    assert_eq!(q.next_deadline(POLICY), Some(far), "no deadline for the images back in");
    let changes = q.step(&[status("a:1", 3, 3, 0), failing_everywhere("b:1")], POLICY, at(1));
    assert_eq!(changes, recovered(&["a:1"]));
    assert!(!q.entries().contains_key("a:1"));
    q.step(&[failing_everywhere("b:1")], POLICY, at(1) + POLICY.timeout);
    assert_eq!(q.entries()["b:1"].attempt, 2, "failing again counts as the next attempt");
    assert_eq!(q.excluded(), BTreeSet::from(["b:1".to_string(), "c:1".to_string()]));
}

// ---------------------------------------------------------------------------------------------
// PersistedState

#[test]
fn persisted_state_round_trips() {
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING)], POLICY, at(0));
    q.step(&[failing_everywhere(MISSING)], POLICY, at(600));
    let retained = BTreeMap::from([(NGINX_CANONICAL.to_string(), at(42))]);
    let state = PersistedState::new(&retained, &q);
    assert!(!state.is_empty());
    let text = serde_json::to_string(&state).expect("serializes");
    assert_eq!(
        text,
        r#"{"retained":{"docker.io/library/nginx:1.25":"2023-11-14T22:14:02Z"},"quarantined":{"quay.io/team/missing:1":{"attempt":1,"retryAt":"2023-11-14T22:23:50Z"}}}"#
    );
    let back: PersistedState = serde_json::from_str(&text).expect("parses");
    assert_eq!(back, state);
    assert_eq!(back.retained_times(at(100)), retained);
    assert_eq!(Quarantine::restore(back.quarantined, &BTreeSet::new(), at(0)).entries(), q.entries());
}

#[test]
fn persisted_times_in_the_future_count_as_now() {
    let retained = BTreeMap::from([(NGINX_CANONICAL.to_string(), at(1_000_000))]);
    let state = PersistedState::new(&retained, &Quarantine::default());
    assert_eq!(state.retained_times(at(50)), BTreeMap::from([(NGINX_CANONICAL.to_string(), at(50))]));
}

#[test]
fn persisted_state_stays_within_its_budget_dropping_the_oldest_first() {
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING)], POLICY, at(0));
    q.step(&[failing_everywhere(MISSING)], POLICY, at(600));
    let retained: BTreeMap<String, SystemTime> =
        (0..2000).map(|i| (format!("registry.example.com/team/app-{i:04}:1"), at(i))).collect();
    let state = PersistedState::new(&retained, &q);
    let (text, dropped) = state.encode_bounded(STATE_MAX_BYTES);
    assert!(text.len() <= STATE_MAX_BYTES, "{} bytes", text.len());
    assert!(dropped > 0);
    let back: PersistedState = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(back.retained.len() + dropped, 2000);
    assert!(back.retained.contains_key("registry.example.com/team/app-1999:1"), "the newest stays");
    assert!(!back.retained.contains_key("registry.example.com/team/app-0000:1"), "the oldest goes");
    assert_eq!(back.quarantined.len(), 1, "quarantine entries go last");
    // small state: unchanged
    let (text, dropped) = PersistedState::new(&BTreeMap::new(), &q).encode_bounded(STATE_MAX_BYTES);
    assert_eq!(
        (serde_json::from_str::<PersistedState>(&text).expect("json").quarantined.len(), dropped),
        (1, 0)
    );
    // not even one entry fits: an empty state, never a panic
    let (text, _) = state.encode_bounded(10);
    assert_eq!(text, "{}");
}

#[test]
fn a_stored_attempt_counter_saturates() {
    let stored =
        BTreeMap::from([(MISSING.to_string(), QuarantineEntry { attempt: u32::MAX, retry_at: Some(at(0)) })]);
    let mut q = Quarantine::restore(stored, &BTreeSet::new(), at(0));
    // back in the DaemonSet for its retry, failing again: quarantined again without overflow
    q.step(&[failing_everywhere(MISSING)], POLICY, at(1));
    q.step(&[failing_everywhere(MISSING)], POLICY, at(10_000));
    assert_eq!(q.entries().get(MISSING).map(|e| e.attempt), Some(u32::MAX));
}

#[test]
fn persisted_state_is_stable_across_restarts_with_subsecond_clocks() {
    // The state annotation is compared before writing: restoring it and serializing it again
    // must give the same text, or every restart would write the DaemonSet.
    let now = at(600) + Duration::from_millis(123);
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING)], POLICY, now - POLICY.timeout);
    q.step(&[failing_everywhere(MISSING)], POLICY, now);
    let retained = BTreeMap::from([(NGINX_CANONICAL.to_string(), at(1) + Duration::from_nanos(999_999_999))]);
    let first = serde_json::to_string(&PersistedState::new(&retained, &q)).expect("serializes");
    let back: PersistedState = serde_json::from_str(&first).expect("parses");
    let restored_q = Quarantine::restore(back.quarantined.clone(), &BTreeSet::new(), now);
    let second = serde_json::to_string(&PersistedState::new(&back.retained_times(now), &restored_q))
        .expect("serializes");
    assert_eq!(first, second);
}

#[test]
fn empty_state_serializes_to_an_empty_object_and_tolerates_missing_fields() {
    let empty = PersistedState::default();
    assert!(empty.is_empty());
    assert_eq!(serde_json::to_string(&empty).expect("serializes"), "{}");
    assert_eq!(serde_json::from_str::<PersistedState>("{}").expect("parses"), empty);
    let given_up: PersistedState =
        serde_json::from_str(r#"{"quarantined":{"a:1":{"attempt":4,"retryAt":null}}}"#).expect("parses");
    assert_eq!(given_up.quarantined["a:1"], QuarantineEntry { attempt: 4, retry_at: None });
    assert!(
        serde_json::from_str::<PersistedState>(r#"{"quarantined":{"a:1":{"attempt":1,"retryAt":"soon"}}}"#)
            .is_err()
    );
    // A retained time that does not parse is dropped rather than failing the whole state.
    let odd: PersistedState = serde_json::from_str(r#"{"retained":{"a:1":"yesterday"}}"#).expect("parses");
    assert!(odd.retained_times(at(0)).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Pulled events

#[test]
fn pulled_messages_give_duration_and_size() {
    let ms = Duration::from_millis;
    for (message, expected) in [
        (
            r#"Successfully pulled image "127.0.0.1:5000/test/small:v1" in 83ms (83ms including waiting). Image size: 1234 bytes."#,
            (ms(83), Some(1234)),
        ),
        (
            r#"Successfully pulled image "quay.io/eclipse/che-theia:next" in 1m2.5s (1m30.25s including waiting). Image size: 734003200 bytes."#,
            (ms(62_500), Some(734_003_200)),
        ),
        (r#"Successfully pulled image "nginx:1.25" in 3.214s (3.214s including waiting)"#, (ms(3214), None)),
        (r#"Successfully pulled image "nginx:1.25" in 1.5s"#, (ms(1500), None)),
        (r#"Successfully pulled image "nginx:1.25" in 1h0m0s"#, (Duration::from_secs(3600), None)),
        (r#"Successfully pulled image "nginx:1.25" in 850µs"#, (Duration::from_micros(850), None)),
        (r#"Successfully pulled image "nginx:1.25" in 850us"#, (Duration::from_micros(850), None)),
        (r#"Successfully pulled image "nginx:1.25" in 999ns"#, (Duration::from_nanos(999), None)),
    ] {
        let (duration, size) = parse_pulled_message(message).unwrap_or_else(|| panic!("{message}"));
        assert!(duration.abs_diff(expected.0) < Duration::from_micros(1), "{message}: {duration:?}");
        assert_eq!(size, expected.1, "{message}");
    }
}

#[test]
fn other_kubelet_messages_are_not_pulls() {
    for message in [
        r#"Container image "127.0.0.1:5000/test/small:v1" already present on machine"#,
        r#"Pulling image "127.0.0.1:5000/test/small:v1""#,
        r#"Successfully pulled image "nginx:1.25""#,
        r#"Successfully pulled image "nginx:1.25" in soon"#,
        r#"Successfully pulled image "nginx:1.25" in 3parsecs"#,
        r#"Successfully pulled image "nginx:1.25" in "#,
        // crafted Events: numbers no Duration can hold, or no pull takes, are not reports (no panic)
        &format!(r#"Successfully pulled image "x" in {}s"#, "9".repeat(400)),
        r#"Successfully pulled image "x" in 99999999999999999999h"#,
        r#"Successfully pulled image "x" in 25h"#,
        r#"Successfully pulled image "x" in 1.2.3s"#,
        "Created container: small",
        "",
    ] {
        assert_eq!(parse_pulled_message(message), None, "{message:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// StatusReport

#[test]
fn status_report_shows_counts_failures_and_quarantine() {
    use HolderState::*;
    let pods = [
        holders("node-1", Some(2), &[(NGINX_CANONICAL, Warm), (MISSING, failed("ErrImagePull", NOT_FOUND))]),
        holders(
            "node-2",
            Some(2),
            &[(NGINX_CANONICAL, Warm), (MISSING, failed("ImagePullBackOff", BACK_OFF))],
        ),
    ];
    let state = r#"{"quarantined":{"quay.io/team/gone:3":{"attempt":2,"retryAt":"2024-05-01T10:00:00Z"},
                    "quay.io/team/dead:1":{"attempt":4,"retryAt":null}}}"#;
    let report = StatusReport::build(
        "k8s-image-puller",
        "kubernetes-image-puller",
        Some(Some(2)),
        &images(&[NGINX, MISSING]),
        &pods,
        Some(state),
    );
    assert!(report.exists);
    assert_eq!(report.nodes, 2);
    assert_eq!(report.images[0].image, NGINX_CANONICAL, "images are shown in canonical form");
    let text = report.to_text();
    let expected = format!(
        "DaemonSet k8s-image-puller/kubernetes-image-puller: 2 images on 2 nodes\n\
         IMAGE                          WARM  PULLING  FAILED\n\
         docker.io/library/nginx:1.25    2/2        0       0\n\
         quay.io/team/missing:1          0/2        0       2\n\
         \n\
         Failures:\n  \
         quay.io/team/missing:1 ErrImagePull on node-1: {NOT_FOUND}\n  \
         quay.io/team/missing:1 ImagePullBackOff on node-2: {BACK_OFF}\n\
         \n\
         Quarantined (left out of the DaemonSet):\n  \
         quay.io/team/dead:1  attempt 4  no more retries\n  \
         quay.io/team/gone:3  attempt 2  retry at 2024-05-01T10:00:00Z\n"
    );
    assert_eq!(text, expected);
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["images"][1]["failed"], 2);
    assert_eq!(json["images"][1]["failures"]["ErrImagePull"], json!(["node-1"]));
    assert_eq!(json["quarantined"]["quay.io/team/dead:1"]["retryAt"], Value::Null);
}

#[test]
fn status_report_limits_the_nodes_listed_per_failure() {
    let pods: Vec<PodHolders> = (1..=8)
        .map(|i| holders(&format!("node-{i}"), Some(1), &[(MISSING, failed("ErrImagePull", "not found"))]))
        .collect();
    let report = StatusReport::build("ns", "ds", Some(Some(1)), &images(&[MISSING]), &pods, None);
    let text = report.to_text();
    assert!(
        text.contains("ErrImagePull on node-1, node-2, node-3, node-4, node-5 and 3 more: not found"),
        "{text}"
    );
}

#[test]
fn status_report_without_a_daemonset() {
    let report = StatusReport::build("ns", "ds", None, &images(&[NGINX]), &[], None);
    assert!(!report.exists);
    assert_eq!(report.to_text(), "DaemonSet ns/ds does not exist (is the manager running?)\n");
    // A state annotation that does not parse leaves the quarantine list empty, no panic.
    let report = StatusReport::build("ns", "ds", Some(None), &[], &[], Some("{not json"));
    assert!(report.quarantined.is_empty());
    assert!(report.exists);
}

#[test]
fn stale_statuses_of_a_quarantined_image_are_ignored() {
    // The controller computes statuses from the live DaemonSet; until the apply that leaves the
    // quarantined image out succeeds (API errors, a slow watch), they still show it failing.
    let policy = QuarantinePolicy { backoff: Duration::from_secs(3600), ..POLICY };
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING)], policy, at(0));
    assert_eq!(q.step(&[failing_everywhere(MISSING)], policy, at(600)), quarantined(&[MISSING]));
    for t in [601, 900, 1300] {
        assert_eq!(q.step(&[failing_everywhere(MISSING)], policy, at(t)), none(), "stale, at {t}");
    }
    assert_eq!(q.entries()[MISSING].attempt, 1, "a retry that never ran is not counted");
    assert_eq!(q.next_deadline(policy), Some(at(4200)), "nothing due before the retry");
    // The retry gets the whole PULL_TIMEOUT, not what is left since the stale statuses.
    assert_eq!(q.step(&[], policy, at(4200)), released(&[MISSING]));
    assert_eq!(q.step(&[failing_everywhere(MISSING)], policy, at(4210)), none());
    assert_eq!(q.step(&[failing_everywhere(MISSING)], policy, at(4800)), none());
    assert_eq!(q.step(&[failing_everywhere(MISSING)], policy, at(4810)), quarantined(&[MISSING]));
    assert_eq!(q.entries()[MISSING].attempt, 2);
}

#[test]
fn an_image_that_left_the_daemonset_has_no_deadline() {
    // Failing, then out of the DaemonSet for another reason (MAX_IMAGES overflow): its timeout
    // must not stay due, or the controller would wake up for it again and again.
    let mut q = Quarantine::default();
    q.step(&[failing_everywhere(MISSING), status(NGINX_CANONICAL, 3, 3, 0)], POLICY, at(0));
    assert_eq!(q.next_deadline(POLICY), Some(at(600)));
    q.step(&[status(NGINX_CANONICAL, 3, 3, 0)], POLICY, at(10));
    assert!(q.failing().is_empty());
    assert_eq!(q.next_deadline(POLICY), None);
    assert_eq!(q.step(&[status(NGINX_CANONICAL, 3, 3, 0)], POLICY, at(700)), none());
}

#[test]
fn a_failing_init_container_is_reported_apart_from_the_images() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "h-1", "labels": {"pod-template-generation": "1"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "example.com/a:1"}]},
        "status": {
            "initContainerStatuses": [{"name": "kip", "image": "example.com/sleep:bad", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}],
            "containerStatuses": [{"name": "a", "image": "example.com/a:1", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]
        }
    }))
    .expect("pod JSON");
    let holders = pod_holders(&pod).expect("scheduled pod");
    assert_eq!(holders.init_failure, Some(("ImagePullBackOff".to_string(), "not found".to_string())));
    assert_eq!(
        holders.images.values().next(),
        Some(&HolderState::Pulling),
        "the image itself is not at fault"
    );
    let report =
        StatusReport::build("ns", "ds", Some(Some(1)), &["example.com/a:1".to_string()], &[holders], None);
    let text = report.to_text();
    assert!(text.contains("Init container (KIP_IMAGE) failing"), "{text}");
    assert!(text.contains("on 1 nodes: ImagePullBackOff: not found"), "{text}");
}

#[test]
fn status_report_shows_each_gated_node_and_what_it_waits_for() {
    use HolderState::*;
    let gate = NodeGate {
        taint: crate::gate::GateTaint::parse("kwarm.io/warming").unwrap(),
        timeout: Duration::from_secs(600),
    };
    let since = humantime::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
    let gated = [
        ("new-1".to_string(), GatedNode { index: 0, since, placeable: true }),
        ("new-2".to_string(), GatedNode { index: 0, since, placeable: true }),
        ("win-1".to_string(), GatedNode { index: 0, since, placeable: false }),
    ];
    let pods = [
        holders("new-1", Some(1), &[(NGINX_CANONICAL, Warm), (MISSING, Pulling)]),
        holders("new-2", Some(1), &[(NGINX_CANONICAL, Warm), (MISSING, Warm)]),
    ];
    let images = images(&[NGINX, MISSING]);
    let mut report = StatusReport::build("ns", "ds", Some(Some(1)), &images, &pods, None);
    let canonical: Vec<String> = report.images.iter().map(|s| s.image.clone()).collect();
    report.node_gate = Some(NodeGateReport::build(&gate, &gated, &pods, &canonical));
    let text = report.to_text();
    let section = &text[text.find("Node gate").expect("a gate section")..];
    assert_eq!(
        section,
        "Node gate kwarm.io/warming:NoSchedule: 3 nodes gated (released when warm, at the latest after 10m)\n  \
         new-1  until 2026-12-01T10:10:00Z  waiting for quay.io/team/missing:1\n  \
         new-2  until 2026-12-01T10:10:00Z  warm: being released\n  \
         win-1  until 2026-12-01T10:10:00Z  not selected by NODE_SELECTOR/AFFINITY: released at once\n"
    );
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["nodeGate"]["gated"][0]["notWarm"], json!([MISSING_CANONICAL]));
    assert_eq!(json["nodeGate"]["gated"][0]["deadline"], "2026-12-01T10:10:00Z");
    assert_eq!(json["nodeGate"]["timeoutSeconds"], 600);
    let off = StatusReport::build("ns", "ds", Some(Some(1)), &images, &pods, None);
    assert!(serde_json::to_value(&off).unwrap().get("nodeGate").is_none(), "gate off: no nodeGate field");
}

#[test]
fn status_report_shows_each_tags_registry_digest_and_the_nodes_that_hold_it() {
    use crate::registry::{FailureReason, Resolution};
    use HolderState::*;
    let (old, new) = (format!("sha256:{}", "1".repeat(64)), format!("sha256:{}", "2".repeat(64)));
    let mut on_new = holders("node-1", Some(1), &[(NGINX_CANONICAL, Warm)]);
    on_new.digests.insert(NGINX_CANONICAL.into(), new.clone());
    let mut on_old = holders("node-2", Some(1), &[(NGINX_CANONICAL, Warm)]);
    on_old.digests.insert(NGINX_CANONICAL.into(), old);
    let pods = [on_new, on_old, holders("kwok-1", Some(1), &[(NGINX_CANONICAL, Warm)])];
    let answers = BTreeMap::from([
        (NGINX_CANONICAL.to_string(), Resolution::Digest { digest: new }),
        (
            MISSING_CANONICAL.to_string(),
            Resolution::Failed { reason: FailureReason::Unreachable, message: "connection refused".into() },
        ),
    ]);
    let mut report = StatusReport::build("ns", "ds", Some(Some(1)), &images(&[NGINX]), &pods, None);
    report.digests = DigestReport::build(&answers, &pods);
    let text = report.to_text();
    let section = &text[text.find("Tags in their registries").expect("a digest section")..];
    assert_eq!(
        section,
        "Tags in their registries:\n  \
         docker.io/library/nginx:1.25  sha256:222222222222…  held on 1 nodes, 1 stale\n  \
         quay.io/team/missing:1  not checked (unreachable): connection refused\n"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["digests"][0]["stale"], 1, "a node without a reported digest is neither");
    assert_eq!(json["digests"][1]["registry"]["reason"], "unreachable");
}

#[test]
fn messages_from_registries_and_the_kubelet_cannot_drive_the_terminal_or_forge_lines() {
    let hostile = "manifest unknown\u{1b}[2J\u{1b}[31m\nquay.io/team/fine:1 0/0 all good\r";
    let pods = vec![holders("node-1", Some(1), &[(MISSING, failed("ErrImagePull", hostile))])];
    let report = StatusReport::build("ns", "ds", Some(Some(1)), &images(&[MISSING]), &pods, None);
    let text = report.to_text();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control characters reach the terminal: {text:?}"
    );
    assert!(
        text.contains("ErrImagePull on node-1: manifest unknown[2J[31m quay.io/team/fine:1 0/0 all good \n"),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.contains("all good")).count(), 1, "no forged line: {text}");
    // plain text is borrowed as it is
    assert!(matches!(terminal_safe("no pull access"), std::borrow::Cow::Borrowed("no pull access")));
}

#[test]
fn terminal_safe_strips_escapes_nul_and_bidi_overrides_and_breaks_lines_into_spaces() {
    let cases = [
        ("\u{1b}[31mred\u{1b}[0m", "[31mred[0m"),
        ("over\rwritten", "over written"),
        ("two\nlines\tand\u{2028}more", "two lines and more"),
        ("nul\0byte", "nulbyte"),
        // U+202E RIGHT-TO-LEFT OVERRIDE and U+2066..U+2069 isolates would reorder what follows
        ("image:\u{202e}1v\u{2066}x\u{2069}", "image:1vx"),
        // zero-width and BOM: invisible, but they make two names look the same
        ("ngi\u{200b}nx\u{feff}", "nginx"),
        // C1 controls (CSI) and DEL
        ("a\u{9b}31mb\u{7f}", "a31mb"),
        // printable Unicode stays
        ("café/镜像:v1 — ok", "café/镜像:v1 — ok"),
    ];
    for (given, shown) in cases {
        assert_eq!(terminal_safe(given), shown, "{given:?}");
    }
}

#[test]
fn every_text_of_the_table_is_terminal_safe_and_the_json_exact() {
    let bidi = "evil\u{202e}gnp.exe";
    let pods = vec![holders(
        "node\u{1b}]0;title\u{7}-1",
        Some(1),
        &[(MISSING, failed("ErrImagePull\r", "pull\0 access denied\n"))],
    )];
    let mut report =
        StatusReport::build("ns", "ds\u{1b}[2J", Some(Some(1)), &images(&[MISSING]), &pods, None);
    report.init_failures.insert(format!("CrashLoopBackOff: {bidi}"), 1);
    report.skipped_platforms.insert("linux/\u{1b}[5marm".into(), 2);
    report.manager_warm = Some(ManagerCondition {
        status: false,
        reason: "Pulling\u{0}".into(),
        message: "line\nforged".into(),
    });
    report.digests.push(DigestReport {
        image: "quay.io/a\u{1b}[8m:1".into(),
        registry: crate::registry::Resolution::Failed {
            reason: crate::registry::FailureReason::Auth,
            message: "denied\u{1b}[2K".into(),
        },
        holding: 0,
        stale: 0,
    });
    let text = report.to_text();
    let unsafe_chars: Vec<char> = text
        .chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || ('\u{2066}'..='\u{2069}').contains(c)
                || ('\u{202a}'..='\u{202e}').contains(c)
        })
        .collect();
    assert!(unsafe_chars.is_empty(), "{unsafe_chars:?} reach the terminal: {text:?}");
    for shown in [
        "node]0;title-1",
        "ErrImagePull ",
        "pull access denied ",
        "evilgnp.exe",
        "linux/[5marm",
        "ds[2J",
        "denied[2K",
    ] {
        assert!(text.contains(shown), "{shown:?} not in {text}");
    }
    // the JSON keeps every text as it came (serde escapes it)
    let json = serde_json::to_value(&report).expect("a report encodes");
    assert_eq!(json["daemonset"], "ds\u{1b}[2J");
    assert_eq!(json["images"][0]["messages"]["ErrImagePull\r"], "pull\0 access denied\n");
    assert_eq!(json["initFailures"][format!("CrashLoopBackOff: {bidi}")], 1);
    let encoded = serde_json::to_string(&report).expect("a report encodes");
    assert!(!encoded.contains('\u{1b}') && encoded.contains("\\u001b"), "{encoded}");
}

fn config(pairs: &[(&str, &str)]) -> Config {
    let vars: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_vars(vars, None).unwrap_or_else(|e| panic!("{e}"))
}

fn node_labels(os: &str, arch: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/os".to_string(), os.to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
    ]);
    labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    labels
}

#[test]
fn nodes_are_skipped_for_their_platform_only_when_the_user_selected_them() {
    let c = config(&[("IMAGES", "nginx:1"), ("NODE_SELECTOR", r#"{"pool": "a"}"#)]);
    let affinity = c.holder_affinity();
    let skipped = |os: &str, arch: &str, pool: &str| {
        skipped_platform(&c, &affinity, "n", &node_labels(os, arch, &[("pool", pool)]))
    };
    // kwarm's image: amd64 and arm64 Linux nodes get holders
    assert_eq!(skipped("linux", "amd64", "a"), None);
    assert_eq!(skipped("linux", "arm64", "a"), None);
    // selected by the user, but no /sleep for them
    assert_eq!(skipped("linux", "s390x", "a").as_deref(), Some("linux/s390x"));
    assert_eq!(skipped("windows", "amd64", "a").as_deref(), Some("windows/amd64"));
    // not selected anyway: not reported
    assert_eq!(skipped("linux", "s390x", "b"), None);
    // a user affinity that already leaves arm64 out: those nodes are not "skipped"
    let amd64_only = r#"{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/arch","operator":"In","values":["amd64","s390x"]}]}]}}}"#;
    let c = config(&[("IMAGES", "nginx:1"), ("AFFINITY", amd64_only)]);
    let affinity = c.holder_affinity();
    assert_eq!(skipped_platform(&c, &affinity, "n", &node_labels("linux", "arm64", &[])), None);
    let s390x = skipped_platform(&c, &affinity, "n", &node_labels("linux", "s390x", &[]));
    assert_eq!(s390x.as_deref(), Some("linux/s390x"));
}

#[test]
fn skipped_platforms_are_reported_apart_from_failures() {
    let mut report = StatusReport::build("ns", "ds", Some(Some(1)), &images(&["nginx:1"]), &[], None);
    report.skipped_platforms =
        BTreeMap::from([("linux/s390x".to_string(), 1), ("windows/amd64".to_string(), 2)]);
    let text = report.to_text();
    assert!(
        text.contains(
            "Not placed, KIP_IMAGE has no /sleep for their platform (KIP_IMAGE_PLATFORMS): linux/s390x on 1 node, windows/amd64 on 2 nodes"
        ),
        "{text}"
    );
    assert!(!text.contains("Failures"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["skippedPlatforms"], json!({"linux/s390x": 1, "windows/amd64": 2}));
    // none: nothing said
    report.skipped_platforms.clear();
    assert!(!report.to_text().contains("Not placed"));
    assert!(serde_json::to_value(&report).unwrap().get("skippedPlatforms").is_none());
}
