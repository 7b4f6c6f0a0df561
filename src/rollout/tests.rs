//! The rollout gate's rules, without a cluster: pods and a warm view in, admissions, patches and
//! releases out.

use k8s_openapi::api::core::v1::{
    Container, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSchedulingGate,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;
use crate::config::Config;

const NGINX: &str = "docker.io/library/nginx:1.25";
const REDIS: &str = "docker.io/library/redis:7";
const BUSYBOX: &str = "docker.io/library/busybox:1.36";
/// The ReplicaSet hash of the pods below (`pod-template-hash`).
const HASH: &str = "5d4f8b9c7";

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn watch(pairs: &[(&str, &str)]) -> WatchConfig {
    let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_vars(vars, None).unwrap_or_else(|e| panic!("{pairs:?}:\n{e}")).watch
}

fn owner(kind: &str, name: &str, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: if kind == "DaemonSet" || kind == "ReplicaSet" { "apps/v1" } else { "v1" }.into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("{name}-uid"),
        controller: Some(controller),
        block_owner_deletion: Some(true),
    }
}

fn containers(images: &[&str]) -> Vec<Container> {
    images
        .iter()
        .enumerate()
        .map(|(i, image)| Container {
            name: format!("c{i}"),
            image: Some(image.to_string()),
            ..Default::default()
        })
        .collect()
}

/// A new pod of Deployment `team/web` (ReplicaSet `web-<HASH>`), not scheduled yet, created at
/// `at(0)`.
fn pod(images: &[&str]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("web-{HASH}-x7k2p")),
            namespace: Some("team".into()),
            uid: Some("pod-uid".into()),
            labels: Some(BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("pod-template-hash".to_string(), HASH.to_string()),
            ])),
            owner_references: Some(vec![owner("ReplicaSet", &format!("web-{HASH}"), true)]),
            creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::try_from(at(0)).unwrap())),
            ..Default::default()
        },
        spec: Some(PodSpec { containers: containers(images), ..Default::default() }),
        status: None,
    }
}

fn with_gates(mut p: Pod, gates: &[&str]) -> Pod {
    let spec = p.spec.as_mut().unwrap();
    spec.scheduling_gates = Some(gates.iter().map(|g| PodSchedulingGate { name: g.to_string() }).collect());
    p
}

fn set(images: &[&str]) -> BTreeSet<String> {
    images.iter().map(|i| i.to_string()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A holder node: its name, its labels, the images its holders run.
type HolderNode<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

/// A synced view in which `team/web` is gated and each node (with its labels) holds these images.
fn view(nodes: &[HolderNode]) -> WarmView {
    WarmView {
        synced: true,
        warm: nodes.iter().map(|(n, _, held)| (n.to_string(), set(held))).collect(),
        labels: nodes.iter().map(|(n, l, _)| (n.to_string(), labels(l))).collect(),
        gated_deployments: BTreeSet::from([("team".to_string(), "web".to_string())]),
        ..Default::default()
    }
}

fn gated_on(images: &[&str]) -> Admission {
    Admission::Gate { not_warm: images.iter().map(|i| i.to_string()).collect() }
}

// ---------------------------------------------------------------------------------------------
// Which Deployments, which pods, which images

#[test]
fn with_rollout_gate_true_every_deployment_is_gated_unless_it_says_false() {
    assert!(GateMode::All.gates(None));
    assert!(GateMode::All.gates(Some(true)));
    assert!(!GateMode::All.gates(Some(false)));
}

#[test]
fn with_rollout_gate_opt_in_only_deployments_that_say_true_are_gated() {
    assert!(GateMode::OptIn.gates(Some(true)));
    assert!(!GateMode::OptIn.gates(Some(false)));
    assert!(!GateMode::OptIn.gates(None));
}

#[test]
fn a_pod_belongs_to_the_deployment_its_replicaset_is_named_after() {
    assert_eq!(owning_deployment(&pod(&["nginx:1.25"])), Some("web".into()));
    // the Deployment's name may have dashes of its own
    let mut p = pod(&["nginx:1.25"]);
    p.metadata.owner_references = Some(vec![owner("ReplicaSet", &format!("my-web-app-{HASH}"), true)]);
    assert_eq!(owning_deployment(&p), Some("my-web-app".into()));
    // the controller is found among other owners
    p.metadata.owner_references =
        Some(vec![owner("ConfigMap", "settings", false), owner("ReplicaSet", &format!("api-{HASH}"), true)]);
    assert_eq!(owning_deployment(&p), Some("api".into()));
}

#[test]
fn a_pod_no_deployment_controls_belongs_to_none() {
    let with_owner = |o: OwnerReference| {
        let mut p = pod(&["nginx:1.25"]);
        p.metadata.owner_references = Some(vec![o]);
        owning_deployment(&p)
    };
    assert_eq!(with_owner(owner("DaemonSet", &format!("web-{HASH}"), true)), None, "a DaemonSet's pod");
    assert_eq!(with_owner(owner("ReplicaSet", &format!("web-{HASH}"), false)), None, "not the controller");
    assert_eq!(with_owner(owner("ReplicaSet", "web-0000000", true)), None, "another hash: a bare ReplicaSet");
    assert_eq!(with_owner(owner("ReplicaSet", &format!("web{HASH}"), true)), None, "no dash before the hash");
    assert_eq!(with_owner(owner("ReplicaSet", &format!("-{HASH}"), true)), None, "no name before the hash");
    let mut p = pod(&["nginx:1.25"]);
    p.metadata.labels = Some(labels(&[("app", "web")]));
    assert_eq!(owning_deployment(&p), None, "no pod-template-hash label");
    p.metadata.labels = None;
    assert_eq!(owning_deployment(&p), None);
    let mut p = pod(&["nginx:1.25"]);
    p.metadata.owner_references = None;
    assert_eq!(owning_deployment(&p), None, "a bare pod");
}

#[test]
fn a_pods_images_are_canonical_init_containers_included_excluded_ones_left_out() {
    let mut spec = PodSpec { containers: containers(&["nginx", "redis:7"]), ..Default::default() };
    spec.init_containers = Some(containers(&["busybox:1.36"]));
    let all = watch(&[]);
    assert_eq!(pod_images(&spec, &all), set(&["docker.io/library/nginx:latest", REDIS, BUSYBOX]));

    // EXCLUDE_IMAGES matches the reference as written or in its canonical form
    let no_busybox = watch(&[("EXCLUDE_IMAGES", "docker.io/library/busybox*")]);
    assert_eq!(pod_images(&spec, &no_busybox), set(&["docker.io/library/nginx:latest", REDIS]));
    let no_redis = watch(&[("EXCLUDE_IMAGES", "redis:")]);
    assert_eq!(pod_images(&spec, &no_redis), set(&["docker.io/library/nginx:latest", BUSYBOX]));
    // the same image twice is one image; a reference that does not parse is not warmed
    spec.containers = containers(&["docker.io/library/redis:7", "redis:7", "Not An Image"]);
    spec.init_containers = None;
    assert_eq!(pod_images(&spec, &all), set(&[REDIS]));
}

// ---------------------------------------------------------------------------------------------
// The webhook's answer

#[test]
fn a_pod_whose_image_is_missing_on_one_node_it_may_run_on_is_gated_for_that_image() {
    let w = watch(&[]);
    let v = view(&[("n1", &[], &[NGINX, REDIS]), ("n2", &[], &[NGINX])]);
    assert_eq!(admit(&pod(&["nginx:1.25", "redis:7"]), "team", &v, &w), gated_on(&[REDIS]));
    // an init container's image counts too
    let mut p = pod(&["nginx:1.25"]);
    p.spec.as_mut().unwrap().init_containers = Some(containers(&["busybox:1.36"]));
    assert_eq!(admit(&p, "team", &v, &w), gated_on(&[BUSYBOX]));
}

#[test]
fn a_pod_whose_images_are_warm_on_every_node_it_may_run_on_passes() {
    let v = view(&[("n1", &[], &[NGINX, REDIS]), ("n2", &[], &[NGINX, REDIS, BUSYBOX])]);
    assert_eq!(admit(&pod(&["nginx:1.25", "redis:7"]), "team", &v, &watch(&[])), Admission::Pass("warm"));
}

#[test]
fn only_the_nodes_a_pods_node_selector_and_affinity_admit_count() {
    let w = watch(&[]);
    let v = view(&[("n1", &[("pool", "web")], &[NGINX]), ("n2", &[("pool", "batch")], &[])]);
    let mut p = pod(&["nginx:1.25"]);
    assert_eq!(admit(&p, "team", &v, &w), gated_on(&[NGINX]), "n2 lacks it and the pod may run there");
    p.spec.as_mut().unwrap().node_selector = Some(labels(&[("pool", "web")]));
    assert_eq!(admit(&p, "team", &v, &w), Admission::Pass("warm"), "n2 is not a node the pod may run on");

    // required node affinity is followed the same way
    let mut p = pod(&["nginx:1.25"]);
    p.spec.as_mut().unwrap().affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "pool".into(),
                        operator: "NotIn".into(),
                        values: Some(vec!["batch".into()]),
                    }]),
                    match_fields: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(admit(&p, "team", &v, &w), Admission::Pass("warm"));
}

#[test]
fn a_pod_no_holder_node_admits_is_not_gated() {
    let w = watch(&[]);
    let v = view(&[("n1", &[("pool", "web")], &[])]);
    let mut p = pod(&["nginx:1.25"]);
    p.spec.as_mut().unwrap().node_selector = Some(labels(&[("pool", "gpu")]));
    assert_eq!(admit(&p, "team", &v, &w), Admission::Pass("no_holder_node"));
    // nor is one in a cluster where no holder runs yet
    assert_eq!(admit(&pod(&["nginx:1.25"]), "team", &view(&[]), &w), Admission::Pass("no_holder_node"));
}

#[test]
fn nothing_is_gated_before_the_watches_listed() {
    let mut v = view(&[("n1", &[], &[])]);
    v.synced = false;
    assert_eq!(admit(&pod(&["nginx:1.25"]), "team", &v, &watch(&[])), Admission::Pass("not_synced"));
}

#[test]
fn a_bound_or_already_gated_pod_passes_unchanged() {
    let w = watch(&[]);
    let v = view(&[("n1", &[], &[])]);
    let mut bound = pod(&["nginx:1.25"]);
    bound.spec.as_mut().unwrap().node_name = Some("n1".into());
    assert_eq!(admit(&bound, "team", &v, &w), Admission::Pass("bound"));
    let gated = with_gates(pod(&["nginx:1.25"]), &["example.com/other", SCHEDULING_GATE]);
    assert_eq!(admit(&gated, "team", &v, &w), Admission::Pass("gated"));
    // another controller's gate alone is no reason to pass
    let other = with_gates(pod(&["nginx:1.25"]), &["example.com/other"]);
    assert_eq!(admit(&other, "team", &v, &w), gated_on(&[NGINX]));
    let mut no_spec = pod(&[]);
    no_spec.spec = None;
    assert_eq!(admit(&no_spec, "team", &v, &w), Admission::Pass("no_spec"));
}

#[test]
fn a_pod_of_a_deployment_that_is_not_gated_passes() {
    let w = watch(&[]);
    let v = view(&[("n1", &[], &[])]);
    // a Deployment kwarm has not seen (not watched, or created a moment ago): the webhook reads it
    let unknown = Admission::Unknown { deployment: "web".into() };
    assert_eq!(admit(&pod(&["nginx:1.25"]), "other-team", &v, &w), unknown);
    let mut v2 = v.clone();
    v2.gated_deployments.clear();
    assert_eq!(admit(&pod(&["nginx:1.25"]), "team", &v2, &w), unknown);
    // a watched Deployment that opted out
    v2.watched.insert(("team".to_string(), "web".to_string()));
    assert_eq!(admit(&pod(&["nginx:1.25"]), "team", &v2, &w), Admission::Pass("not_gated"));
    let mut bare = pod(&["nginx:1.25"]);
    bare.metadata.owner_references = Some(vec![owner("DaemonSet", "agent", true)]);
    assert_eq!(admit(&bare, "team", &v, &w), Admission::Pass("not_watched"));
}

#[test]
fn an_excluded_image_never_gates_a_pod() {
    let v = view(&[("n1", &[], &[NGINX])]);
    let w = watch(&[("EXCLUDE_IMAGES", "redis")]);
    assert_eq!(admit(&pod(&["nginx:1.25", "redis:7"]), "team", &v, &w), Admission::Pass("warm"));
}

#[test]
fn an_image_kwarm_does_not_warm_does_not_gate_the_pod() {
    let w = watch(&[]);
    let mut v = view(&[("n1", &[], &[NGINX])]);
    v.quarantined = set(&[REDIS]);
    assert_eq!(admit(&pod(&["nginx:1.25", "redis:7"]), "team", &v, &w), Admission::Pass("quarantined"));
    let mut v = view(&[("n1", &[], &[NGINX])]);
    v.overflow = set(&[REDIS]);
    assert_eq!(admit(&pod(&["nginx:1.25", "redis:7"]), "team", &v, &w), Admission::Pass("overflow"));
}

#[test]
fn a_pod_the_webhook_gates_is_not_released_at_once() {
    // whatever the view, a pod gated now waits: the controller does not open its gate straight
    // away (which would cost a patch, an Event and nothing gained)
    let w = watch(&[]);
    let base = view(&[("n1", &[], &[NGINX]), ("n2", &[], &[])]);
    let mut quarantined = base.clone();
    quarantined.quarantined = set(&[REDIS]);
    let mut overflow = base.clone();
    overflow.overflow = set(&[BUSYBOX]);
    for v in [base, quarantined, overflow] {
        for images in [&["nginx:1.25"][..], &["nginx:1.25", "redis:7"], &["redis:7", "busybox:1.36"]] {
            let p = pod(images);
            if let Admission::Gate { .. } = admit(&p, "team", &v, &w) {
                let gated = with_gates(p, &[SCHEDULING_GATE]);
                let g = gated_pod(&gated, &w, at(0)).unwrap();
                let key = ("team".to_string(), "web".to_string());
                let out = releases([(&key, &g)], &v, Duration::from_secs(300), at(1));
                assert_eq!(out, vec![], "{images:?} in {v:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The patches

fn pod_json(p: &Pod) -> serde_json::Value {
    serde_json::to_value(p).unwrap()
}

fn gates_of(doc: &serde_json::Value) -> &serde_json::Value {
    &doc["spec"]["schedulingGates"]
}

#[test]
fn the_gate_is_added_as_the_pods_first_gate() {
    let p = pod(&["nginx:1.25"]);
    let patch = gate_patch(p.spec.as_ref().unwrap());
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{ "op": "add", "path": "/spec/schedulingGates", "value": [{ "name": "kwarm.io/image-warm" }] }])
    );
    let mut doc = pod_json(&p);
    assert_eq!(gates_of(&doc), &serde_json::Value::Null, "the pod has no gates");
    json_patch::patch(&mut doc, &patch).unwrap();
    assert_eq!(gates_of(&doc), &json!([{ "name": SCHEDULING_GATE }]));
    let patched: Pod = serde_json::from_value(doc).unwrap();
    assert_eq!(gated_pod(&patched, &watch(&[]), at(9)).map(|g| g.index), Some(0));
}

#[test]
fn the_gate_is_appended_after_the_gates_a_pod_already_has() {
    let p = with_gates(pod(&["nginx:1.25"]), &["example.com/quota"]);
    let patch = gate_patch(p.spec.as_ref().unwrap());
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{ "op": "add", "path": "/spec/schedulingGates/-", "value": { "name": "kwarm.io/image-warm" } }])
    );
    let mut doc = pod_json(&p);
    json_patch::patch(&mut doc, &patch).unwrap();
    assert_eq!(gates_of(&doc), &json!([{ "name": "example.com/quota" }, { "name": SCHEDULING_GATE }]));
}

/// A pod with another controller's gate first and kwarm's second, as JSON.
fn gated_doc() -> serde_json::Value {
    pod_json(&with_gates(pod(&["nginx:1.25"]), &["example.com/quota", SCHEDULING_GATE]))
}

#[test]
fn the_release_tests_the_pod_and_the_gate_before_removing_it() {
    assert_eq!(
        serde_json::to_value(gate_removal("pod-uid", 1)).unwrap(),
        json!([
            { "op": "test", "path": "/metadata/uid", "value": "pod-uid" },
            { "op": "test", "path": "/spec/schedulingGates/1", "value": { "name": "kwarm.io/image-warm" } },
            { "op": "remove", "path": "/spec/schedulingGates/1" },
        ])
    );
}

#[test]
fn the_release_removes_kwarms_gate_and_only_that() {
    let mut doc = gated_doc();
    json_patch::patch(&mut doc, &gate_removal("pod-uid", 1)).unwrap();
    assert_eq!(gates_of(&doc), &json!([{ "name": "example.com/quota" }]));
}

#[test]
fn a_release_meant_for_another_pod_or_a_moved_gate_changes_nothing() {
    let before = gated_doc();
    for (uid, index, what) in [
        ("another-uid", 1, "a new pod of the same name"),
        ("pod-uid", 0, "another controller's gate at that index"),
        ("pod-uid", 2, "no gate at that index"),
    ] {
        let mut doc = before.clone();
        assert!(json_patch::patch(&mut doc, &gate_removal(uid, index)).is_err(), "{what}");
        assert_eq!(doc, before, "{what}: the pod is left as it was");
    }
}

// ---------------------------------------------------------------------------------------------
// What the controller keeps of a gated pod, and when its gate opens

#[test]
fn a_gated_pod_is_kept_with_its_gates_index_and_its_creation_as_its_clock() {
    let w = watch(&[]);
    let mut p = with_gates(pod(&["nginx:1.25", "redis:7"]), &["example.com/quota", SCHEDULING_GATE]);
    p.spec.as_mut().unwrap().node_selector = Some(labels(&[("pool", "web")]));
    let g = gated_pod(&p, &w, at(500)).unwrap();
    assert_eq!(
        g,
        GatedPod {
            uid: "pod-uid".into(),
            index: 1,
            since: at(0),
            deployment: Some("web".into()),
            images: set(&[NGINX, REDIS]),
            containers: BTreeMap::from([
                ("c0".to_string(), NGINX.to_string()),
                ("c1".to_string(), REDIS.to_string())
            ]),
            placement: Placement { node_selector: labels(&[("pool", "web")]), affinity: None },
        }
    );
    // without a creation time (never from the API server) the clock starts now
    p.metadata.creation_timestamp = None;
    assert_eq!(gated_pod(&p, &w, at(500)).unwrap().since, at(500));
}

#[test]
fn a_pod_without_kwarms_gate_is_not_a_gated_pod() {
    let w = watch(&[]);
    assert_eq!(gated_pod(&pod(&["nginx:1.25"]), &w, at(0)), None);
    assert_eq!(gated_pod(&with_gates(pod(&["nginx:1.25"]), &["example.com/quota"]), &w, at(0)), None);
    assert_eq!(gated_pod(&with_gates(pod(&["nginx:1.25"]), &[]), &w, at(0)), None);
    let mut no_spec = pod(&[]);
    no_spec.spec = None;
    assert_eq!(gated_pod(&no_spec, &w, at(0)), None);
}

fn gated(images: &[&str], since: u64) -> GatedPod {
    GatedPod {
        uid: "pod-uid".into(),
        index: 1,
        since: at(since),
        deployment: Some("web".into()),
        images: set(images),
        containers: BTreeMap::new(),
        placement: Placement::default(),
    }
}

const TIMEOUT: Duration = Duration::from_secs(300);

fn key(name: &str) -> PodKey {
    ("team".to_string(), name.to_string())
}

fn why(out: &[PodRelease]) -> Vec<(&str, &Why)> {
    out.iter().map(|r| (r.name.as_str(), &r.why)).collect()
}

#[test]
fn a_gated_pod_is_released_once_its_images_are_warm_where_it_may_run() {
    let v = view(&[("n1", &[], &[NGINX, REDIS]), ("n2", &[], &[NGINX])]);
    let (warm, waiting) = (key("warm"), key("waiting"));
    let (a, b) = (gated(&[NGINX], 10), gated(&[NGINX, REDIS], 10));
    let out = releases([(&warm, &a), (&waiting, &b)], &v, TIMEOUT, at(20));
    assert_eq!(
        out,
        vec![PodRelease {
            namespace: "team".into(),
            name: "warm".into(),
            uid: "pod-uid".into(),
            index: 1,
            since: at(10),
            deployment: Some("web".into()),
            why: Why::Warm,
        }],
        "the other one waits: redis is not on n2"
    );
    assert_eq!(Why::Warm.label(), "warm");
}

#[test]
fn a_gated_pod_no_holder_node_admits_has_nothing_to_wait_for() {
    let v = view(&[("n1", &[("pool", "batch")], &[])]);
    let mut g = gated(&[NGINX], 0);
    g.placement.node_selector = labels(&[("pool", "web")]);
    let out = releases([(&key("p"), &g)], &v, TIMEOUT, at(1));
    assert_eq!(why(&out), [("p", &Why::Warm)]);
}

#[test]
fn an_image_kwarm_stopped_warming_releases_the_pod_quarantine_first() {
    let mut v = view(&[("n1", &[], &[])]);
    v.quarantined = set(&[REDIS]);
    v.overflow = set(&[BUSYBOX]);
    let (both, over) = (gated(&[NGINX, REDIS, BUSYBOX], 0), gated(&[NGINX, BUSYBOX], 0));
    let out = releases([(&key("both"), &both), (&key("over"), &over)], &v, TIMEOUT, at(1));
    assert_eq!(
        why(&out),
        [
            ("both", &Why::Quarantined { image: REDIS.into() }),
            ("over", &Why::Overflow { image: BUSYBOX.into() }),
        ]
    );
    assert_eq!((out[0].why.label(), out[1].why.label()), ("quarantined", "overflow"));
}

#[test]
fn an_image_without_its_own_credentials_releases_the_pod_at_once() {
    let mut v = view(&[("n1", &[], &[NGINX])]);
    v.denied = set(&[REDIS]);
    let g = gated(&[NGINX, REDIS], 0);
    let out = releases([(&key("private"), &g)], &v, TIMEOUT, at(1));
    assert_eq!(why(&out), [("private", &Why::Denied { image: REDIS.into() })]);
    assert_eq!(out[0].why.label(), "denied");
}

#[test]
fn at_the_timeout_a_gated_pod_goes_naming_the_images_not_warm() {
    let v = view(&[("n1", &[], &[NGINX]), ("n2", &[], &[])]);
    let g = gated(&[NGINX, REDIS], 100);
    let k = key("slow");
    assert_eq!(releases([(&k, &g)], &v, TIMEOUT, at(399)), vec![], "a second before the timeout");
    assert_eq!(deadline(&g, TIMEOUT), at(400));
    let out = releases([(&k, &g)], &v, TIMEOUT, at(400));
    assert_eq!(why(&out), [("slow", &Why::Timeout { not_warm: vec![NGINX.into(), REDIS.into()] })]);
    assert_eq!(out[0].why.label(), "timeout");
    assert_eq!(why(&releases([(&k, &g)], &v, TIMEOUT, at(10_000))).len(), 1, "and any time after");
}

#[test]
fn not_warm_names_each_missing_image_once_and_counts_the_nodes() {
    let v = view(&[("n1", &[("pool", "a")], &[NGINX]), ("n2", &[("pool", "a")], &[]), ("n3", &[], &[])]);
    let images = set(&[NGINX, REDIS]);
    assert_eq!(not_warm(&images, &Placement::default(), &v), (vec![NGINX.into(), REDIS.into()], 3));
    let pool_a = Placement { node_selector: labels(&[("pool", "a")]), affinity: None };
    assert_eq!(not_warm(&images, &pool_a, &v), (vec![NGINX.into(), REDIS.into()], 2));
    let mut unknown = v.clone();
    unknown.labels.clear();
    assert_eq!(not_warm(&images, &pool_a, &unknown), (vec![], 0), "a node of unknown labels is not admitted");
}

// ---------------------------------------------------------------------------------------------
// Sidecars other webhooks inject

#[test]
fn an_injected_sidecar_never_holds_a_pod_back() {
    let w = watch(&[]);
    let mut v = view(&[("n1", &[], &[NGINX])]);
    let key = ("team".to_string(), "web".to_string());
    // the template kwarm saw names container c0 only; c1 (istio-proxy, say) was injected
    v.template_containers.insert(key.clone(), BTreeSet::from(["c0".to_string()]));
    let p = pod(&["nginx:1.25", "istio/proxyv2:1.24"]);
    assert_eq!(admit(&p, "team", &v, &w), Admission::Pass("warm"), "only the template's image counts");
    // the template's container with an image not warm yet (the template kwarm saw may be older
    // than the pod: by name, not by image) is waited for
    let p = pod(&["redis:7", "istio/proxyv2:1.24"]);
    assert_eq!(admit(&p, "team", &v, &w), Admission::Gate { not_warm: vec![REDIS.to_string()] });
    // an injected image kwarm warms anyway (IMAGES) is waited for too
    let proxy = "docker.io/istio/proxyv2:1.24";
    v.warmed.insert(proxy.to_string());
    let p = pod(&["nginx:1.25", "istio/proxyv2:1.24"]);
    assert_eq!(admit(&p, "team", &v, &w), Admission::Gate { not_warm: vec![proxy.to_string()] });
    // and a gated pod with a sidecar is released once the template's images are warm
    v.warmed.clear();
    let g = gated_pod(&with_gates(pod(&["nginx:1.25", "istio/proxyv2:1.24"]), &[SCHEDULING_GATE]), &w, at(0))
        .unwrap();
    let released = releases([(&key, &g)], &v, TIMEOUT, at(1));
    assert_eq!(released.iter().map(|r| &r.why).collect::<Vec<_>>(), [&Why::Warm]);
}

#[test]
fn a_pod_whose_deployment_opted_out_since_is_released_at_once() {
    let mut v = view(&[("n1", &[], &[NGINX])]);
    let key = ("team".to_string(), "web".to_string());
    let g = gated(&[REDIS], 0);
    assert_eq!(releases([(&key, &g)], &v, TIMEOUT, at(1)), [], "still gated: redis is not warm");
    // the Deployment is still watched, but says kwarm.io/rollout-gate=false now
    v.gated_deployments.clear();
    v.watched.insert(key.clone());
    let released = releases([(&key, &g)], &v, TIMEOUT, at(1));
    assert_eq!(released.iter().map(|r| &r.why).collect::<Vec<_>>(), [&Why::NotGated]);
    assert_eq!(released[0].why.label(), "not_gated");
    // a Deployment kwarm does not know (not watched any more, or not seen yet) waits for its images
    v.watched.clear();
    assert_eq!(releases([(&key, &g)], &v, TIMEOUT, at(1)), []);
}
