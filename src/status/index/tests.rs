use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::HolderIndex;
use crate::status::tests::holders as pod;
use crate::status::{HolderState, PodHolders, digest_counts, image_statuses};

const IMAGES: [&str; 3] = ["reg/a:1", "reg/b:1", "reg/c:1"];
const DIGESTS: [&str; 2] = ["sha256:aaaa", "sha256:bbbb"];

fn failed(reason: &str, message: &str) -> HolderState {
    HolderState::Failed { reason: reason.into(), message: message.into() }
}

fn all_images() -> Vec<String> {
    // one image no pod has: pulling everywhere
    IMAGES.iter().chain(&["reg/none:1"]).map(|s| s.to_string()).collect()
}

/// Everything the index answers equals what the from-scratch functions compute.
fn assert_agrees(index: &HolderIndex, pods: &BTreeMap<String, PodHolders>, generation: Option<i64>) {
    let images = all_images();
    assert_eq!(index.statuses(&images), image_statuses(pods.values(), generation, &images));
    for image in &images {
        for digest in DIGESTS {
            assert_eq!(
                index.digest_counts(image, digest),
                digest_counts(pods.values(), image, digest),
                "{image} {digest}"
            );
        }
    }
    let mut warm: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in pods.values() {
        let held = p.images.iter().filter(|(_, s)| **s == HolderState::Warm).map(|(i, _)| i.clone());
        warm.entry(p.node.clone()).or_default().extend(held);
    }
    let indexed: BTreeMap<String, BTreeSet<String>> =
        index.warm_by_node().map(|(n, w)| (n.clone(), w.clone())).collect();
    assert_eq!(indexed, warm);
    assert_eq!(index.node_count(), warm.len());
    assert_eq!(index.pod_count(), pods.len());
    let failures: Vec<&(String, String)> = pods.values().filter_map(|p| p.init_failure.as_ref()).collect();
    assert_eq!(index.init_failures().collect::<Vec<_>>(), failures);
}

#[test]
fn a_surge_counts_the_new_pod_and_keeps_the_old_ones_warmth() {
    use HolderState::*;
    let mut index = HolderIndex::new([], Some(1));
    index.upsert("old".into(), pod("n1", Some(1), &[(IMAGES[0], Warm)]));
    let s = index.statuses(&all_images()[..2]);
    assert_eq!((s[0].nodes, s[0].warm, s[1].pulling), (1, 1, 1));

    // The DaemonSet moves on: the old pod still counts until the new one exists.
    index.set_generation(Some(2));
    assert_eq!(index.statuses(&all_images()[..1])[0].warm, 1);
    index.upsert("new".into(), pod("n1", Some(2), &[(IMAGES[0], Pulling), (IMAGES[1], Pulling)]));
    let s = index.statuses(&all_images()[..2]);
    assert_eq!((s[0].warm, s[0].pulling, s[1].pulling), (0, 1, 1));
    // ...but the node still holds the first image, for the gates.
    assert_eq!(index.warm_on("n1"), Some(&BTreeSet::from([IMAGES[0].to_string()])));

    index.remove("old");
    assert_eq!(index.warm_on("n1"), Some(&BTreeSet::new()));
    index.remove("new");
    assert_eq!((index.node_count(), index.warm_on("n1")), (0, None));
    assert_eq!(index.statuses(&all_images()[..1])[0].nodes, 0);
}

#[test]
fn failures_name_their_nodes_and_the_first_message_per_reason() {
    let mut index = HolderIndex::new([], Some(1));
    index.upsert("p2".into(), pod("n2", Some(1), &[(IMAGES[0], failed("ErrImagePull", "second"))]));
    index.upsert("p1".into(), pod("n1", Some(1), &[(IMAGES[0], failed("ErrImagePull", "first"))]));
    let s = &index.statuses(&all_images()[..1])[0];
    assert!(s.failing_everywhere());
    assert_eq!(s.failures["ErrImagePull"], BTreeSet::from(["n1".to_string(), "n2".to_string()]));
    assert_eq!(s.messages["ErrImagePull"], "first");

    // Recovered on one node: the reason keeps the other; recovered everywhere: no reason left.
    index.upsert("p1".into(), pod("n1", Some(1), &[(IMAGES[0], HolderState::Warm)]));
    let s = &index.statuses(&all_images()[..1])[0];
    assert_eq!((s.warm, s.failed, s.messages["ErrImagePull"].as_str()), (1, 1, "second"));
    index.upsert("p2".into(), pod("n2", Some(1), &[(IMAGES[0], HolderState::Warm)]));
    let s = &index.statuses(&all_images()[..1])[0];
    assert!(s.warm_everywhere() && s.failures.is_empty() && s.messages.is_empty());
}

#[test]
fn digests_count_per_node_not_per_pod() {
    let with = |name: &str, node: &str, digest: &str, index: &mut HolderIndex| {
        let mut p = pod(node, Some(1), &[(IMAGES[0], HolderState::Warm)]);
        p.digests.insert(IMAGES[0].into(), digest.into());
        index.upsert(name.into(), p);
    };
    let mut index = HolderIndex::new([], Some(1));
    with("a", "n1", DIGESTS[0], &mut index);
    with("b", "n1", DIGESTS[1], &mut index);
    with("c", "n2", DIGESTS[0], &mut index);
    // n1 holds both during a roll: it holds the new one, and is not stale.
    assert_eq!(index.digest_counts(IMAGES[0], DIGESTS[1]), (1, 1));
    assert_eq!(index.digest_counts(IMAGES[0], DIGESTS[0]), (2, 0));
    assert_eq!(index.digest_counts(IMAGES[1], DIGESTS[0]), (0, 0));
}

#[test]
fn a_pod_that_moves_node_leaves_its_old_node() {
    let mut index = HolderIndex::new([], None);
    index.upsert("p".into(), pod("n1", None, &[(IMAGES[0], HolderState::Warm)]));
    index.upsert("p".into(), pod("n2", None, &[(IMAGES[0], HolderState::Warm)]));
    assert_eq!(index.node_count(), 1);
    assert_eq!(index.warm_on("n1"), None);
    assert_eq!(index.statuses(&all_images()[..1])[0].warm, 1);
}

#[test]
fn init_failures_follow_their_pods() {
    let mut index = HolderIndex::new([], Some(1));
    let mut bad = pod("n1", Some(1), &[]);
    bad.init_failure = Some(("ErrImagePull".into(), "no kip".into()));
    index.upsert("p".into(), bad);
    assert_eq!(index.init_failures().len(), 1);
    index.upsert("p".into(), pod("n1", Some(1), &[]));
    assert_eq!(index.init_failures().len(), 0);
    let mut bad = pod("n1", Some(1), &[]);
    bad.init_failure = Some(("ErrImagePull".into(), "no kip".into()));
    index.replace_all([("q".to_string(), bad)]);
    assert_eq!(index.init_failures().len(), 1);
    index.remove("q");
    assert_eq!(index.init_failures().len(), 0);
}

// ---------------------------------------------------------------------------------------------
// The index against the from-scratch counts, over arbitrary event sequences

#[derive(Debug, Clone)]
enum Op {
    Upsert(String, PodHolders),
    Remove(String),
    Generation(Option<i64>),
    Relist(Vec<(String, PodHolders)>),
}

fn state() -> impl Strategy<Value = HolderState> {
    prop_oneof![
        Just(HolderState::Warm),
        Just(HolderState::Pulling),
        (0..2usize, 0..2usize)
            .prop_map(|(r, m)| failed(["ErrImagePull", "ImagePullBackOff"][r], ["x", "y"][m])),
    ]
}

fn holders() -> impl Strategy<Value = PodHolders> {
    (
        0..3usize,
        prop::option::of(1..3i64),
        prop::collection::btree_map(0..3usize, (state(), prop::option::of(0..2usize)), 0..=3),
        prop::option::of(Just(("ErrImagePull".to_string(), "kip".to_string()))),
    )
        .prop_map(|(node, generation, held, init_failure)| PodHolders {
            node: format!("n{node}"),
            generation,
            images: held.iter().map(|(i, (s, _))| (IMAGES[*i].to_string(), s.clone())).collect(),
            init_failure,
            digests: held
                .iter()
                .filter_map(|(i, (_, d))| Some((IMAGES[*i].to_string(), DIGESTS[(*d)?].to_string())))
                .collect(),
        })
}

fn name() -> impl Strategy<Value = String> {
    (0..6usize).prop_map(|p| format!("p{p}"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (name(), holders()).prop_map(|(n, h)| Op::Upsert(n, h)),
        2 => name().prop_map(Op::Remove),
        1 => prop::option::of(1..3i64).prop_map(Op::Generation),
        1 => prop::collection::vec((name(), holders()), 0..4).prop_map(Op::Relist),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_index_always_agrees_with_counting_from_scratch(
        start in prop::option::of(1..3i64),
        ops in prop::collection::vec(op(), 0..40),
    ) {
        let mut index = HolderIndex::new([], start);
        let mut pods: BTreeMap<String, PodHolders> = BTreeMap::new();
        let mut generation = start;
        for op in ops {
            match op {
                Op::Upsert(n, h) => {
                    pods.insert(n.clone(), h.clone());
                    index.upsert(n, h);
                }
                Op::Remove(n) => {
                    pods.remove(&n);
                    index.remove(&n);
                }
                Op::Generation(g) => {
                    generation = g;
                    index.set_generation(g);
                }
                Op::Relist(listed) => {
                    pods = listed.iter().cloned().collect();
                    index.replace_all(listed);
                }
            }
            assert_agrees(&index, &pods, generation);
        }
    }
}
