use super::*;
use k8s_openapi::api::core::v1::{NodeAffinity, NodeSelector, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

const T0: Duration = Duration::from_secs(1_800_000_000);

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
}

fn gate() -> GateTaint {
    GateTaint::parse("kwarm.io/warming").unwrap()
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
    Taint { key: key.into(), value: value.map(Into::into), effect: effect.into(), time_added: None }
}

fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>, created: u64) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::try_from(at(created)).unwrap())),
            ..Default::default()
        },
        spec: Some(NodeSpec { taints: Some(taints), ..Default::default() }),
        status: None,
    }
}

fn linux() -> BTreeMap<String, String> {
    BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())])
}

#[test]
fn the_taint_parses_like_kubectl_taint_writes_it() {
    let t = GateTaint::parse("kwarm.io/warming").unwrap();
    assert_eq!(
        (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
        ("kwarm.io/warming", None, "NoSchedule")
    );
    let t = GateTaint::parse("kwarm.io/warming=true:NoExecute").unwrap();
    assert_eq!(
        (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
        ("kwarm.io/warming", Some("true"), "NoExecute")
    );
    let t = GateTaint::parse("warming:PreferNoSchedule").unwrap();
    assert_eq!((t.value.as_deref(), t.effect.as_str()), (None, "PreferNoSchedule"));
    // an empty value is the same as none
    assert_eq!(GateTaint::parse("kwarm.io/warming=").unwrap(), gate());
    assert_eq!(
        GateTaint::parse("kwarm.io/warming=true:NoExecute").unwrap().to_string(),
        "kwarm.io/warming=true:NoExecute"
    );
    assert_eq!(gate().to_string(), "kwarm.io/warming:NoSchedule");
}

#[test]
fn a_bad_taint_says_which_part_is_wrong() {
    for (bad, part) in [
        ("kwarm.io/warming:NoWay", "effect \"NoWay\""),
        ("Bad Key", "key \"Bad Key\""),
        ("kwarm.io/warming=not ok", "value \"not ok\""),
        ("", "key \"\""),
        (":NoSchedule", "key \"\""),
    ] {
        let e = GateTaint::parse(bad).unwrap_err();
        assert!(e.contains(part), "{bad}: {e}");
        assert!(e.contains("key[=value][:effect]"), "{bad}: {e}");
    }
}

#[test]
fn the_holders_tolerate_exactly_the_gate() {
    let any = gate().toleration();
    assert_eq!(any.operator.as_deref(), Some("Exists"));
    assert_eq!(
        (any.key.as_deref(), any.value.as_deref(), any.effect.as_deref()),
        (Some("kwarm.io/warming"), None, Some("NoSchedule"))
    );
    let one = GateTaint::parse("kwarm.io/warming=true").unwrap().toleration();
    assert_eq!((one.operator.as_deref(), one.value.as_deref()), (Some("Equal"), Some("true")));

    assert!(gate().matches(&taint("kwarm.io/warming", None, "NoSchedule")));
    assert!(
        gate().matches(&taint("kwarm.io/warming", Some("x"), "NoSchedule")),
        "no value configured: any value"
    );
    assert!(
        !gate().matches(&taint("kwarm.io/warming", None, "NoExecute")),
        "another effect is another taint"
    );
    assert!(!gate().matches(&taint("kwarm.io/other", None, "NoSchedule")));
    let valued = GateTaint::parse("kwarm.io/warming=true").unwrap();
    assert!(valued.matches(&taint("kwarm.io/warming", Some("true"), "NoSchedule")));
    assert!(!valued.matches(&taint("kwarm.io/warming", Some("false"), "NoSchedule")));
    assert!(!valued.matches(&taint("kwarm.io/warming", None, "NoSchedule")));
}

#[test]
fn a_gated_node_is_found_at_its_index_with_its_clock() {
    let other = taint("example.com/other", None, "NoSchedule");
    let n = node(
        "n1",
        &[("kubernetes.io/os", "linux")],
        vec![other.clone(), taint("kwarm.io/warming", None, "NoSchedule")],
        10,
    );
    let g = gated_node(&n, &gate(), &linux(), None, at(99)).unwrap();
    assert_eq!(g, GatedNode { index: 1, since: at(10), placeable: true });

    // timeAdded wins over the node's creation (a taint put on an existing node)
    let mut stamped = taint("kwarm.io/warming", None, "NoSchedule");
    stamped.time_added = Some(Time(k8s_openapi::jiff::Timestamp::try_from(at(50)).unwrap()));
    let n = node("n1", &[], vec![stamped], 10);
    assert_eq!(gated_node(&n, &gate(), &BTreeMap::new(), None, at(99)).unwrap().since, at(50));

    assert_eq!(gated_node(&node("n2", &[], vec![other], 10), &gate(), &linux(), None, at(99)), None);
    assert_eq!(gated_node(&node("n3", &[], vec![], 10), &gate(), &linux(), None, at(99)), None);
    let windows = node(
        "w",
        &[("kubernetes.io/os", "windows")],
        vec![taint("kwarm.io/warming", None, "NoSchedule")],
        10,
    );
    assert!(!gated_node(&windows, &gate(), &linux(), None, at(99)).unwrap().placeable);
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn affinity(terms: Vec<NodeSelectorTerm>) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn expressions(reqs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
    NodeSelectorTerm { match_expressions: Some(reqs), match_fields: None }
}

#[test]
fn placement_follows_the_schedulers_rules_for_labels_and_names() {
    let labels: BTreeMap<String, String> = [("zone", "a"), ("gpu", "2"), ("kubernetes.io/os", "linux")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let admits = |a: Option<Affinity>| placement_admits(&linux(), a.as_ref(), "n1", &labels);
    assert!(admits(None));
    assert!(!placement_admits(&BTreeMap::from([("zone".into(), "b".into())]), None, "n1", &labels));
    for (req, expected) in [
        (requirement("zone", "In", &["a", "b"]), true),
        (requirement("zone", "In", &["b"]), false),
        (requirement("zone", "NotIn", &["b"]), true),
        (requirement("missing", "NotIn", &["b"]), true),
        (requirement("zone", "Exists", &[]), true),
        (requirement("missing", "Exists", &[]), false),
        (requirement("missing", "DoesNotExist", &[]), true),
        (requirement("gpu", "Gt", &["1"]), true),
        (requirement("gpu", "Gt", &["2"]), false),
        (requirement("gpu", "Lt", &["3"]), true),
        (requirement("zone", "Gt", &["1"]), false),
        (requirement("zone", "Bogus", &["a"]), false),
    ] {
        assert_eq!(admits(Some(affinity(vec![expressions(vec![req.clone()])]))), expected, "{req:?}");
    }
    // terms are ORed, requirements in a term ANDed
    let either = affinity(vec![
        expressions(vec![requirement("zone", "In", &["b"])]),
        expressions(vec![requirement("zone", "In", &["a"]), requirement("gpu", "Exists", &[])]),
    ]);
    assert!(admits(Some(either)));
    let both = affinity(vec![expressions(vec![
        requirement("zone", "In", &["a"]),
        requirement("gpu", "DoesNotExist", &[]),
    ])]);
    assert!(!admits(Some(both)));
    // an empty term matches nothing; matchFields see the node's name
    assert!(!admits(Some(affinity(vec![NodeSelectorTerm::default()]))));
    let by_name = |names: &[&str]| {
        affinity(vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![requirement("metadata.name", "In", names)]),
        }])
    };
    assert!(admits(Some(by_name(&["n1"]))));
    assert!(!admits(Some(by_name(&["n2"]))));
}

fn gated(entries: &[(&str, u64, bool)]) -> BTreeMap<String, GatedNode> {
    entries
        .iter()
        .map(|(n, since, placeable)| {
            (n.to_string(), GatedNode { index: 0, since: at(*since), placeable: *placeable })
        })
        .collect()
}

fn set(images: &[&str]) -> BTreeSet<String> {
    images.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_node_is_released_once_it_holds_every_desired_image() {
    let desired = set(&["a", "b"]);
    let nodes = gated(&[("n1", 0, true), ("n2", 0, true)]);
    let warm = BTreeMap::from([("n1", BTreeSet::from(["a", "b", "extra"])), ("n2", BTreeSet::from(["a"]))]);
    let out = releases(&nodes, &warm, &desired, Duration::from_secs(600), at(30));
    assert_eq!(
        out,
        vec![Release { node: "n1".into(), index: 0, since: at(0), why: Why::Warm { images: 2 } }]
    );
}

#[test]
fn past_the_timeout_a_node_is_released_naming_what_was_not_warm() {
    let desired = set(&["a", "b", "c"]);
    let nodes = gated(&[("n1", 0, true), ("young", 500, true)]);
    let warm = BTreeMap::from([("n1", BTreeSet::from(["b"]))]);
    let timeout = Duration::from_secs(600);
    assert!(releases(&nodes, &warm, &desired, timeout, at(599)).is_empty(), "not before the timeout");
    let out = releases(&nodes, &warm, &desired, timeout, at(600));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].why, Why::Timeout { not_warm: vec!["a".into(), "c".into()] });
    assert_eq!(deadline(&nodes["young"], timeout), at(1100));
}

#[test]
fn unselected_nodes_go_at_once_and_nothing_desired_means_warm() {
    let nodes = gated(&[("elsewhere", 0, false), ("n1", 0, true)]);
    let out = releases(&nodes, &BTreeMap::new(), &set(&[]), Duration::from_secs(600), at(1));
    assert_eq!(
        out.iter().map(|r| (&*r.node, &r.why)).collect::<Vec<_>>(),
        vec![("elsewhere", &Why::NotSelected), ("n1", &Why::Warm { images: 0 }),]
    );
    // an unselected node does not wait even with images desired
    let out = releases(&nodes, &BTreeMap::new(), &set(&["a"]), Duration::from_secs(600), at(1));
    assert_eq!(out.iter().map(|r| &*r.node).collect::<Vec<_>>(), vec!["elsewhere"]);
}
