//! The controller's rules, without a cluster: observations in, decisions and notices out.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::DaemonSet;
use pretty_assertions::assert_eq;

use super::*;
use crate::controller::streams::Seen;
use crate::holder::Holder;
use crate::status::HolderState;

const NGINX: &str = "docker.io/library/nginx:1.25";
const REDIS: &str = "docker.io/library/redis:7";
const MISSING: &str = "quay.io/team/missing:1";

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn config(pairs: &[(&str, &str)]) -> Config {
    let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_vars(vars, None).unwrap_or_else(|e| panic!("{pairs:?}:\n{e}"))
}

/// A leader (or follower) whose every watch listed: `live` as the DaemonSet, no pods, no
/// Deployments in the one all-namespaces scope.
fn synced(c: &Config, leader: bool, live: Option<DaemonSet>, now: SystemTime) -> State {
    let scopes = if c.watch.enabled { vec![None] } else { vec![] };
    let mut s = State::new(c, scopes.clone(), leader, false, None, now);
    s.observe(c, Observation::DaemonSet(Seen::Listed(live.into_iter().collect())), now);
    s.observe(c, Observation::Pods(Seen::Listed(vec![])), now);
    for i in 0..scopes.len() {
        s.observe(c, Observation::Deployments(i, Seen::Listed(vec![])), now);
    }
    if c.node_gate.is_some() || c.rollout_gate.is_some() {
        s.observe(c, Observation::Nodes(Seen::Listed(vec![])), now);
    }
    if c.rollout_gate.is_some() {
        s.observe(c, Observation::GatedPods(Seen::Listed(vec![])), now);
    }
    if c.watch.enabled && c.watch.namespace_selector.is_some() {
        s.observe(c, Observation::Namespaces(Seen::Listed(vec![])), now);
    }
    assert!(s.synced());
    s
}

/// What the API server would answer to the apply (the object as sent, with a generation).
fn applied(ds: &DaemonSet, generation: i64) -> DaemonSet {
    let mut ds = ds.clone();
    ds.metadata.generation = Some(generation);
    ds.metadata.uid = Some("kwarm-uid".into());
    ds
}

/// Decides, and if there is something to apply, feeds back what the API server answered.
fn decide_and_apply(s: &mut State, c: &Config, now: SystemTime) -> Option<DaemonSet> {
    let apply = s.decide(c, now).apply?;
    let answer = applied(&apply, 1);
    s.observe(c, Observation::Applied(answer.clone()), now);
    Some(answer)
}

fn images_of(ds: &DaemonSet) -> Vec<String> {
    held_images(ds).into_iter().collect()
}

fn pod(node: &str, generation: i64, images: &[(&str, HolderState)]) -> PodHolders {
    PodHolders {
        node: node.into(),
        generation: Some(generation),
        images: images.iter().map(|(i, s)| (i.to_string(), s.clone())).collect(),
        init_failure: None,
        digests: BTreeMap::new(),
    }
}

fn failed() -> HolderState {
    HolderState::Failed { reason: "ErrImagePull".into(), message: "not found".into() }
}

fn deployment(images: &[&str]) -> DeploymentImages {
    DeploymentImages { images: images.iter().map(|i| i.to_string()).collect(), ..Default::default() }
}

fn names(notices: &[Notice]) -> Vec<&'static str> {
    notices
        .iter()
        .map(|n| match n {
            Notice::DaemonSetDeleted => "DaemonSetDeleted",
            Notice::DeploymentsForbidden { .. } => "DeploymentsForbidden",
            Notice::NodesForbidden { .. } => "NodesForbidden",
            Notice::PendingPodsForbidden { .. } => "PendingPodsForbidden",
            Notice::NamespacesForbidden { .. } => "NamespacesForbidden",
            Notice::StateUnreadable { .. } => "StateUnreadable",
            Notice::ConditionsForbidden { .. } => "ConditionsForbidden",
            Notice::PullsFailed(_) => "PullsFailed",
            Notice::Quarantined { .. } => "Quarantined",
            Notice::RetryingQuarantined { .. } => "RetryingQuarantined",
            Notice::Recovered { .. } => "Recovered",
            Notice::InitFailing { .. } => "InitFailing",
            Notice::Progress { .. } => "Progress",
            Notice::Warm { .. } => "Warm",
            Notice::WarmingStarted { .. } => "WarmingStarted",
            Notice::Overflow { .. } => "Overflow",
            Notice::OverNamespaceLimit { .. } => "OverNamespaceLimit",
            Notice::AccessDenied { .. } => "AccessDenied",
            Notice::AccessGranted { .. } => "AccessGranted",
            Notice::Refreshing => "Refreshing",
            Notice::NameInUse { .. } => "NameInUse",
            Notice::NameFree => "NameFree",
            Notice::StateTrimmed { .. } => "StateTrimmed",
            Notice::DigestChanged { .. } => "DigestChanged",
            Notice::ImageUpdated { .. } => "ImageUpdated",
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn nothing_is_decided_before_every_watch_listed() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let now = at(0);
    let mut s = State::new(&c, vec![None], true, false, None, now);
    assert!(!s.synced());
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), now);
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), now);
    assert!(!s.synced(), "the Deployment watch has not listed yet");
    s.observe(&c, Observation::Deployments(0, Seen::Listed(vec![])), now);
    assert!(s.synced());
}

#[test]
fn a_missing_daemonset_is_created_and_a_deleted_one_restored() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let first = decide_and_apply(&mut s, &c, at(0)).expect("created");
    assert_eq!(images_of(&first), [NGINX]);
    assert_eq!(s.decide(&c, at(1)).apply, None, "the live DaemonSet is what is wanted: no write");
    s.observe(&c, Observation::DaemonSet(Seen::Deleted(first.clone())), at(2));
    assert_eq!(names(&s.take_notices()), ["WarmingStarted", "DaemonSetDeleted"]);
    let restored = s.decide(&c, at(2)).apply.expect("restored");
    assert_eq!(images_of(&restored), [NGINX]);
}

#[test]
fn drift_in_what_kwarm_owns_is_undone() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let mut live = decide_and_apply(&mut s, &c, at(0)).expect("created");
    if let Some(spec) = live.spec.as_mut() {
        spec.template.spec.as_mut().expect("pod").containers[0].image = Some("nginx:9".into());
    }
    s.observe(&c, Observation::DaemonSet(Seen::Applied(live)), at(1));
    let fixed = s.decide(&c, at(1)).apply.expect("drift undone");
    assert_eq!(images_of(&fixed), [NGINX]);
}

#[test]
fn a_remembered_match_never_hides_drift_or_a_new_plan() {
    // with resource versions, as the API server gives them: the match is remembered per version
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let mut live = decide_and_apply(&mut s, &c, at(0)).expect("created");
    live.metadata.resource_version = Some("1".into());
    s.observe(&c, Observation::DaemonSet(Seen::Applied(live.clone())), at(1));
    assert_eq!(s.decide(&c, at(1)).apply, None);
    assert_eq!(s.decide(&c, at(2)).apply, None, "the same versions: still no write");
    // another writer changes a field kwarm owns: a new resource version, and the drift is undone
    let mut drifted = live.clone();
    drifted.metadata.resource_version = Some("2".into());
    if let Some(spec) = drifted.spec.as_mut() {
        spec.template.spec.as_mut().expect("pod").containers[0].image = Some("nginx:9".into());
    }
    s.observe(&c, Observation::DaemonSet(Seen::Applied(drifted)), at(3));
    let fixed = s.decide(&c, at(3)).apply.expect("drift undone");
    assert_eq!(images_of(&fixed), [NGINX]);
    // the same live version, but the plan changed (a Deployment wants redis): applied
    s.observe(&c, Observation::DaemonSet(Seen::Applied(live)), at(4));
    assert_eq!(s.decide(&c, at(4)).apply, None);
    let key = ("web".to_string(), "api".to_string());
    s.observe(&c, Observation::Deployments(0, Seen::Applied((key, Some(deployment(&[REDIS]))))), at(5));
    let grown = s.decide(&c, at(5)).apply.expect("the new image applied");
    assert_eq!(images_of(&grown), [NGINX, REDIS]);
}

#[test]
fn status_alone_settles_and_what_changes_the_shape_or_a_gate_is_decided_at_once() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("NODE_GATE_TAINT", "kwarm.io/warming")]);
    let mut s = synced(&c, true, None, at(0));
    let live = decide_and_apply(&mut s, &c, at(0)).expect("created");
    let seen = |ds: &DaemonSet| Observation::DaemonSet(Seen::Applied(ds.clone()));
    let holder =
        |state| Observation::Pods(Seen::Applied(("h1".into(), Some(pod("n1", 1, &[(NGINX, state)])))));

    // the DaemonSet controller writes its status: it settles
    let mut status = live.clone();
    status.status = Some(Default::default());
    assert_eq!(s.urgency(&seen(&status)), Urgency::Settle);
    // a new generation (the spec changed), a label or an annotation changed, or a new object
    let mut spec = live.clone();
    spec.metadata.generation = Some(2);
    let mut label = live.clone();
    label.labels_mut().insert("team".into(), "other".into());
    let mut annotation = live.clone();
    annotation.annotations_mut().clear();
    let mut recreated = live.clone();
    recreated.metadata.uid = Some("another".into());
    for (why, ds) in [("spec", spec), ("label", label), ("annotation", annotation), ("uid", recreated)] {
        assert_eq!(s.urgency(&seen(&ds)), Urgency::Now, "{why}");
    }
    let deleted = Observation::DaemonSet(Seen::Deleted(live.clone()));
    assert_eq!(s.urgency(&deleted), Urgency::Now);

    // a holder pod's status settles while no gate waits, and is decided at once while one does
    assert_eq!(s.urgency(&holder(HolderState::Pulling)), Urgency::Settle);
    assert_eq!(s.urgency(&Observation::Pods(Seen::Listed(vec![]))), Urgency::Now, "a re-list");
    assert!(join(&mut s, &c, "n1", gated_at(1, true), at(1)));
    assert_eq!(s.urgency(&holder(HolderState::Warm)), Urgency::Now, "n1 waits for its holders");
    assert!(join(&mut s, &c, "n1", None, at(2)));
    assert_eq!(s.urgency(&holder(HolderState::Warm)), Urgency::Settle);
    // a Deployment or a node is never only status
    let key = ("web".to_string(), "api".to_string());
    let deployment = Observation::Deployments(0, Seen::Applied((key, Some(deployment(&[REDIS])))));
    assert_eq!(s.urgency(&deployment), Urgency::Now);
}

#[test]
fn a_restart_with_the_state_annotation_writes_nothing() {
    // a Deployment image released at t=10 is retained (IMAGE_RETENTION) and kept in the state
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let key = ("web".to_string(), "api".to_string());
    s.observe(
        &c,
        Observation::Deployments(0, Seen::Applied((key.clone(), Some(deployment(&[REDIS]))))),
        at(5),
    );
    decide_and_apply(&mut s, &c, at(5)).expect("with redis");
    s.observe(&c, Observation::Deployments(0, Seen::Deleted((key, None))), at(10));
    let live = decide_and_apply(&mut s, &c, at(10)).expect("state annotation written");
    assert_eq!(images_of(&live), [NGINX, REDIS], "retained for IMAGE_RETENTION");
    assert!(live.annotations().contains_key(STATE_ANNOTATION));

    // a new manager finds that DaemonSet: the same desired DaemonSet, zero writes
    let mut restarted = synced(&c, true, Some(live.clone()), at(20));
    assert_eq!(restarted.decide(&c, at(20)).apply, None);
    // and the retention ends when it would have: 24 h after the release, not after the restart
    let later = restarted.decide(&c, at(10 + 24 * 3600 + 1)).apply.expect("retention over");
    assert_eq!(images_of(&later), [NGINX]);
}

#[test]
fn a_refresh_rolls_only_when_a_holder_would_pull_again() {
    let always =
        config(&[("IMAGES", "nginx:1.25"), ("IMAGE_PULL_POLICY", "Always"), ("CACHING_INTERVAL", "1h")]);
    let mut s = synced(&always, true, None, at(0));
    decide_and_apply(&mut s, &always, at(0)).expect("created");
    assert_eq!(s.decide(&always, at(1800)).apply, None, "not due yet");
    let rolled = s.decide(&always, at(3600)).apply.expect("refresh due");
    let template = rolled.spec.as_ref().and_then(|s| s.template.metadata.clone()).unwrap_or_default();
    assert!(template.annotations.unwrap_or_default().contains_key(REFRESHED_AT_ANNOTATION));
    assert!(names(&s.take_notices()).contains(&"Refreshing"));

    let tags = config(&[("IMAGES", "nginx:1.25"), ("CACHING_INTERVAL", "1h")]);
    let mut s = synced(&tags, true, None, at(0));
    decide_and_apply(&mut s, &tags, at(0)).expect("created");
    assert_eq!(
        s.decide(&tags, at(3600)).apply,
        None,
        "a pinned tag with the default policy would pull nothing"
    );
}

#[test]
fn an_image_failing_everywhere_is_left_out_and_reported_after_the_pull_timeout() {
    let c = config(&[("IMAGES", &format!("good=nginx:1.25;bad={MISSING}")), ("PULL_TIMEOUT", "10m")]);
    let mut s = synced(&c, true, None, at(0));
    let live = decide_and_apply(&mut s, &c, at(0)).expect("created");
    assert_eq!(images_of(&live), [NGINX, MISSING]);
    let holders = pod("node-1", 1, &[(NGINX, HolderState::Warm), (MISSING, failed())]);
    s.observe(&c, Observation::Pods(Seen::Applied(("pod-1".into(), Some(holders)))), at(10));
    assert!(names(&s.take_notices()).contains(&"PullsFailed"));
    assert_eq!(s.decide(&c, at(10)).apply, None, "failing, but not for PULL_TIMEOUT yet");
    let without = s.decide(&c, at(10 + 601)).apply.expect("quarantined");
    assert_eq!(images_of(&without), [NGINX], "the failing image is left out; the good one stays");
    let notices = s.take_notices();
    let Some(Notice::Quarantined { image, attempt, retry_at, reasons, .. }) =
        notices.iter().find(|n| matches!(n, Notice::Quarantined { .. }))
    else {
        panic!("no Quarantined notice in {notices:?}");
    };
    assert_eq!((image.as_str(), *attempt), (MISSING, 1));
    assert!(retry_at.is_some() && reasons.contains("ErrImagePull"), "{reasons}");
}

#[test]
fn a_follower_never_writes_but_adopts_the_leaders_state() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut leader = synced(&c, true, None, at(0));
    let key = ("web".to_string(), "api".to_string());
    leader.observe(
        &c,
        Observation::Deployments(0, Seen::Applied((key.clone(), Some(deployment(&[REDIS]))))),
        at(1),
    );
    decide_and_apply(&mut leader, &c, at(1));
    leader.observe(&c, Observation::Deployments(0, Seen::Deleted((key, None))), at(2));
    let live = decide_and_apply(&mut leader, &c, at(2)).expect("retained state");

    let mut follower = synced(&c, false, None, at(0));
    assert_eq!(follower.decide(&c, at(0)).apply, None, "a follower does not create the DaemonSet");
    follower.observe(&c, Observation::DaemonSet(Seen::Applied(live.clone())), at(3));
    assert_eq!(follower.decide(&c, at(3)).apply, None);
    // it takes over: the very same DaemonSet, no write, the retained image kept
    follower.observe(&c, Observation::Leader(true), at(4));
    assert_eq!(follower.decide(&c, at(4)).apply, None, "a new leader continues where the last one stopped");
}

#[test]
fn forbidden_deployments_leave_images_only_and_are_said_once() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = State::new(&c, vec![None, Some("team".into())], true, false, None, at(0));
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::DeploymentsForbidden("403".into()), at(0));
    s.observe(&c, Observation::DeploymentsForbidden("403".into()), at(1));
    assert!(s.synced(), "the Deployment watches count as synced and empty");
    assert_eq!(names(&s.take_notices()), ["DeploymentsForbidden"]);
    assert_eq!(images_of(&s.decide(&c, at(1)).apply.expect("created")), [NGINX]);
}

#[test]
fn a_burst_of_a_thousand_deployment_events_is_one_decision() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("MAX_IMAGES", "1000")]);
    let mut s = synced(&c, true, None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    for i in 0..1000 {
        let key = ("team".to_string(), format!("app-{i}"));
        let image = format!("registry.example.com/team/app-{}:1", i % 10);
        s.observe(&c, Observation::Deployments(0, Seen::Applied((key, Some(deployment(&[&image]))))), at(1));
    }
    let one = s.decide(&c, at(1)).apply.expect("one apply for the burst");
    assert_eq!(images_of(&one).len(), 11, "IMAGES plus ten distinct Deployment images");
    s.observe(&c, Observation::Applied(applied(&one, 2)), at(1));
    assert_eq!(s.decide(&c, at(2)).apply, None);
}

#[test]
fn a_foreign_daemonset_is_left_alone_and_said_once_until_the_name_is_free() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("DAEMONSET_NAME", "kubernetes-image-puller")]);
    let mut foreign = render_daemonset(&config(&[("IMAGES", "redis:7")]), &RenderInput::default());
    foreign.metadata.uid = Some("puller".into());
    if let Some(spec) = foreign.spec.as_mut() {
        spec.selector.match_labels =
            Some(BTreeMap::from([("test".to_string(), "daemonset-test".to_string())]));
    }
    let mut s = synced(&c, true, Some(foreign.clone()), at(0));
    assert_eq!(s.decide(&c, at(0)).apply, None);
    assert_eq!(s.decide(&c, at(1)).apply, None);
    assert_eq!(names(&s.take_notices()), ["NameInUse"], "said once");
    s.observe(&c, Observation::DaemonSet(Seen::Deleted(foreign)), at(2));
    let own = s.decide(&c, at(2)).apply.expect("kwarm's own, as soon as the name is free");
    assert_eq!(images_of(&own), [NGINX]);
    assert!(names(&s.take_notices()).contains(&"NameFree"));
}

#[test]
fn warm_up_is_announced_when_it_starts_and_when_every_node_holds_the_image() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let key = ("web".to_string(), "api".to_string());
    s.observe(
        &c,
        Observation::Deployments(0, Seen::Applied((key.clone(), Some(deployment(&[NGINX]))))),
        at(0),
    );
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    let started = s.take_notices();
    assert_eq!(
        started,
        [Notice::WarmingStarted { image: NGINX.into(), nodes: 0, users: vec![key.clone()] }],
        "the Deployment that uses the image is told"
    );
    for (i, node) in ["a", "b"].into_iter().enumerate() {
        let holders = pod(node, 1, &[(NGINX, HolderState::Warm)]);
        s.observe(&c, Observation::Pods(Seen::Applied((format!("pod-{i}"), Some(holders)))), at(3));
    }
    s.decide(&c, at(3));
    let warm = s.take_notices();
    assert!(
        matches!(warm.as_slice(), [Notice::Warm { warm: 2, nodes: 2, users, .. }] if users == &vec![key]),
        "{warm:?}"
    );
    s.decide(&c, at(4));
    assert!(s.take_notices().is_empty(), "said once");
}

#[test]
fn overflow_past_max_images_is_reported_once_per_image() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("MAX_IMAGES", "1")]);
    let mut s = synced(&c, true, None, at(0));
    let key = ("web".to_string(), "api".to_string());
    s.observe(&c, Observation::Deployments(0, Seen::Applied((key, Some(deployment(&[REDIS]))))), at(0));
    let decision = s.decide(&c, at(0));
    assert_eq!(images_of(&decision.apply.expect("created")), [NGINX], "IMAGES first, the bound holds");
    assert_eq!(decision.gauges.overflow, 1);
    assert_eq!(s.take_notices(), [Notice::Overflow { image: REDIS.into() }]);
    s.decide(&c, at(1));
    assert!(s.take_notices().is_empty());
}

#[test]
fn pull_secret_mirrors_are_referenced_and_wanted_from_the_deployments() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("INHERIT_PULL_SECRETS", "true")]);
    let mut s = synced(&c, true, None, at(0));
    let key = ("team".to_string(), "api".to_string());
    let mut d = deployment(&[REDIS]);
    d.pull_secrets = ["regcred".to_string()].into_iter().collect();
    s.observe(&c, Observation::Deployments(0, Seen::Applied((key.clone(), Some(d.clone())))), at(0));
    let wanted = s.pull_secrets_wanted();
    let mirror = mirror_name("team", "regcred");
    assert_eq!(wanted, BTreeMap::from([(mirror.clone(), ("team".to_string(), "regcred".to_string()))]));
    assert!(s.observe(&c, Observation::PullSecrets(vec![mirror.clone()]), at(0)));
    let ds = s.decide(&c, at(0)).apply.expect("created");
    let secrets = |ds: &DaemonSet| -> Vec<String> {
        let pod = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
        pod.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect()
    };
    assert!(secrets(&ds).contains(&mirror), "{:?}", secrets(&ds));
    assert!(
        !s.observe(&c, Observation::PullSecrets(vec![mirror.clone()]), at(1)),
        "the same mirrors: nothing to do"
    );

    // a restarted manager keeps the mirrors the DaemonSet references until the task reports
    let mut restarted = synced(&c, true, Some(applied(&ds, 1)), at(2));
    restarted.observe(&c, Observation::Deployments(0, Seen::Applied((key, Some(d)))), at(2));
    assert_eq!(restarted.decide(&c, at(2)).apply, None, "no write, no roll after a restart");
    // and follows the task once it has reported
    restarted.observe(&c, Observation::PullSecrets(vec![]), at(3));
    let without = restarted.decide(&c, at(3)).apply.expect("the mirror is gone");
    assert!(!secrets(&without).contains(&mirror));
}

#[test]
fn an_unreadable_state_annotation_is_reported_and_nothing_held_is_dropped() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    // what kwarm rendered: the IMAGES entry and a retained Deployment image
    let holders = vec![
        c.images[0].clone(),
        Holder { name: crate::holder::derived_holder_name(REDIS), image: REDIS.into() },
    ];
    let mut live = render_daemonset(&c, &RenderInput { holders, ..Default::default() });
    live.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(STATE_ANNOTATION.into(), "{garbage".into());
    let mut s = synced(&c, true, Some(live.clone()), at(0));
    assert_eq!(names(&s.take_notices()), ["StateUnreadable"]);
    // the state is rewritten, but the pods are not rolled: the same holders, the same template
    let fixed = s.decide(&c, at(1)).apply.expect("a readable state written");
    assert_eq!(images_of(&fixed), [NGINX, REDIS]);
    let template = |d: &DaemonSet| d.spec.as_ref().map(|s| serde_json::to_value(&s.template).expect("json"));
    assert_eq!(template(&fixed), template(&live));
}

#[test]
fn the_next_wakeup_is_the_earliest_deadline() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("CACHING_INTERVAL", "2m")]);
    let s = synced(&c, true, None, at(0));
    assert_eq!(s.next_wakeup(&c, at(0)), at(120), "the refresh, before the 5-minute resync");
    let c = config(&[("IMAGES", "nginx:1.25"), ("CACHING_INTERVAL", "1h")]);
    let s = synced(&c, true, None, at(0));
    assert_eq!(s.next_wakeup(&c, at(0)), at(RESYNC.as_secs()));
    assert!(s.resync_due(at(RESYNC.as_secs())) && !s.resync_due(at(1)));
}

// ---------------------------------------------------------------------------------------------
// The node gate

fn gated_at(since: u64, placeable: bool) -> Option<GatedNode> {
    Some(GatedNode { index: 1, since: at(since), placeable })
}

fn join(s: &mut State, c: &Config, node: &str, g: Option<GatedNode>, now: SystemTime) -> bool {
    s.observe(
        c,
        Observation::Nodes(Seen::Applied((node.to_string(), NodeSeen { gated: g, labels: None }))),
        now,
    )
}

fn released(d: &Decision) -> Vec<(&str, &gate::Why)> {
    d.releases.iter().map(|r| (r.node.as_str(), &r.why)).collect()
}

#[test]
fn with_the_gate_on_nothing_is_decided_before_the_nodes_listed() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("NODE_GATE_TAINT", "kwarm.io/warming")]);
    let mut s = State::new(&c, vec![], true, false, None, at(0));
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    assert!(!s.synced(), "the Node watch has not listed yet");
    // the node listing may be the last to arrive: even without gated nodes it asks for a decision
    let mut last = State::new(&c, vec![], true, false, None, at(0));
    last.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    last.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    assert!(last.observe(
        &c,
        Observation::Nodes(Seen::Listed(vec![("n1".into(), NodeSeen::default())])),
        at(0)
    ));
    assert!(last.synced());
    s.observe(
        &c,
        Observation::Nodes(Seen::Listed(vec![
            ("n1".into(), NodeSeen { gated: gated_at(0, true), labels: None }),
            ("n2".into(), NodeSeen::default()),
        ])),
        at(0),
    );
    assert!(s.synced());
    assert_eq!(s.gated().keys().collect::<Vec<_>>(), ["n1"]);
    // without the Node rights the gate cannot work, and the DaemonSet does not wait for it
    let mut s = State::new(&c, vec![], true, false, None, at(0));
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    assert!(s.observe(&c, Observation::NodesForbidden("403".into()), at(0)));
    assert!(!s.observe(&c, Observation::NodesForbidden("403".into()), at(1)));
    assert!(s.synced());
    assert_eq!(names(&s.take_notices()), ["NodesForbidden"]);
}

#[test]
fn a_gated_node_is_released_once_its_holders_run_every_image() {
    let c = config(&[("IMAGES", "nginx:1.25;redis:7"), ("NODE_GATE_TAINT", "kwarm.io/warming")]);
    let mut s = synced(&c, true, None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    assert!(join(&mut s, &c, "n1", gated_at(5, true), at(5)));
    assert!(!join(&mut s, &c, "n1", gated_at(5, true), at(6)), "a heartbeat of a gated node decides nothing");
    let d = s.decide(&c, at(6));
    assert!(d.releases.is_empty(), "no holder runs there yet");
    assert_eq!(d.gauges.gated_nodes, 1);

    let half = pod("n1", 1, &[(NGINX, HolderState::Warm), (REDIS, HolderState::Pulling)]);
    s.observe(&c, Observation::Pods(Seen::Applied(("h1".into(), Some(half)))), at(8));
    assert!(s.decide(&c, at(8)).releases.is_empty(), "one image of two is held");
    let warm = pod("n1", 1, &[(NGINX, HolderState::Warm), (REDIS, HolderState::Warm)]);
    s.observe(&c, Observation::Pods(Seen::Applied(("h1".into(), Some(warm)))), at(9));
    let d = s.decide(&c, at(9));
    assert_eq!(released(&d), [("n1", &gate::Why::Warm { images: 2 })]);
    assert_eq!((d.releases[0].index, d.releases[0].since), (1, at(5)), "the patch tests the index kwarm saw");

    // asked for once; again only if the node is still gated after RELEASE_RETRY
    assert!(s.decide(&c, at(10)).releases.is_empty());
    assert_eq!(s.next_wakeup(&c, at(10)), at(9) + RELEASE_RETRY);
    assert_eq!(released(&s.decide(&c, at(9) + RELEASE_RETRY)), [("n1", &gate::Why::Warm { images: 2 })]);
    // the taint is gone: nothing more to do
    assert!(join(&mut s, &c, "n1", None, at(45)));
    let d = s.decide(&c, at(45));
    assert!(d.releases.is_empty());
    assert_eq!(d.gauges.gated_nodes, 0);
}

#[test]
fn an_old_holder_pod_on_the_node_counts_while_the_new_one_starts() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("NODE_GATE_TAINT", "kwarm.io/warming")]);
    let mut s = synced(&c, true, None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    join(&mut s, &c, "n1", gated_at(0, true), at(1));
    s.observe(
        &c,
        Observation::Pods(Seen::Applied((
            "new".into(),
            Some(pod("n1", 2, &[(NGINX, HolderState::Pulling)])),
        ))),
        at(2),
    );
    s.observe(
        &c,
        Observation::Pods(Seen::Applied(("old".into(), Some(pod("n1", 1, &[(NGINX, HolderState::Warm)]))))),
        at(2),
    );
    assert_eq!(released(&s.decide(&c, at(2))), [("n1", &gate::Why::Warm { images: 1 })]);
}

#[test]
fn past_the_timeout_a_node_goes_anyway_naming_the_images_not_held() {
    let c = config(&[
        ("IMAGES", &format!("nginx:1.25;bad={MISSING}")),
        ("NODE_GATE_TAINT", "kwarm.io/warming"),
        ("NODE_GATE_TIMEOUT", "2m"),
        ("PULL_TIMEOUT", "1h"),
    ]);
    let mut s = synced(&c, true, None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    join(&mut s, &c, "n1", gated_at(100, true), at(100));
    let holders = pod("n1", 1, &[(NGINX, HolderState::Warm), (MISSING, failed())]);
    s.observe(&c, Observation::Pods(Seen::Applied(("h1".into(), Some(holders)))), at(110));
    assert!(s.decide(&c, at(219)).releases.is_empty(), "failing, but neither quarantined nor timed out");
    assert_eq!(s.next_wakeup(&c, at(219)), at(220), "woken at the deadline");
    assert_eq!(
        released(&s.decide(&c, at(220))),
        [("n1", &gate::Why::Timeout { not_warm: vec![MISSING.into()] })]
    );
}

#[test]
fn a_quarantined_image_does_not_hold_the_gate() {
    let c = config(&[
        ("IMAGES", &format!("nginx:1.25;bad={MISSING}")),
        ("NODE_GATE_TAINT", "kwarm.io/warming"),
        ("NODE_GATE_TIMEOUT", "1h"),
        ("PULL_TIMEOUT", "1m"),
    ]);
    let mut s = synced(&c, true, None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    join(&mut s, &c, "n1", gated_at(0, true), at(0));
    let holders = pod("n1", 1, &[(NGINX, HolderState::Warm), (MISSING, failed())]);
    s.observe(&c, Observation::Pods(Seen::Applied(("h1".into(), Some(holders)))), at(1));
    assert!(s.decide(&c, at(1)).releases.is_empty());
    let d = s.decide(&c, at(62));
    assert!(d.apply.is_some(), "quarantined: left out of the DaemonSet");
    assert_eq!(
        released(&d),
        [("n1", &gate::Why::Warm { images: 1 })],
        "the image left out no longer holds the gate"
    );
}

#[test]
fn unselected_nodes_go_at_once_and_a_follower_never_releases() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("NODE_GATE_TAINT", "kwarm.io/warming")]);
    let mut follower = synced(&c, false, None, at(0));
    join(&mut follower, &c, "windows", gated_at(0, false), at(0));
    join(&mut follower, &c, "n1", gated_at(0, true), at(0));
    let d = follower.decide(&c, at(10_000));
    assert!(d.releases.is_empty(), "a follower never patches nodes");
    assert_eq!(d.gauges.gated_nodes, 2, "but it reports them");
    // a new leader continues the clocks: they come from the nodes, not from memory
    follower.observe(&c, Observation::Leader(true), at(10_001));
    let d = follower.decide(&c, at(10_001));
    let mut got = released(&d);
    got.sort_by_key(|(node, _)| *node);
    assert_eq!(
        got,
        [("n1", &gate::Why::Timeout { not_warm: vec![NGINX.into()] }), ("windows", &gate::Why::NotSelected)]
    );
}

// ---------------------------------------------------------------------------------------------
// Digest-aware refresh

const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn holding(node: &str, generation: i64, digest: &str) -> PodHolders {
    let mut p = pod(node, generation, &[(NGINX, HolderState::Warm)]);
    p.digests.insert(NGINX.into(), digest.into());
    p
}

fn answer(digest: &str) -> Observation {
    Observation::Registry(BTreeMap::from([(NGINX.to_string(), Resolution::Digest { digest: digest.into() })]))
}

fn digests_of(ds: &DaemonSet) -> Option<String> {
    ds.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(DIGESTS_ANNOTATION).cloned()
}

#[test]
fn a_tag_the_nodes_hold_at_its_registry_digest_rolls_nothing() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    s.observe(&c, Observation::Pods(Seen::Applied(("h1".into(), Some(holding("n1", 1, OLD))))), at(1));
    assert_eq!(s.digest_wanted(&c).keys().collect::<Vec<_>>(), [NGINX], "the tag is what gets checked");
    s.observe(&c, answer(OLD), at(2));
    let d = s.decide(&c, at(2));
    assert_eq!(d.apply, None, "nothing changed in the registry: no roll");
    assert_eq!(d.gauges.stale_images, 0);
    // a registry that cannot be asked is no reason to roll either
    let failed =
        Resolution::Failed { reason: crate::registry::FailureReason::Unreachable, message: "refused".into() };
    s.observe(&c, Observation::Registry(BTreeMap::from([(NGINX.to_string(), failed)])), at(3));
    assert_eq!(s.decide(&c, at(3)).apply, None);
}

#[test]
fn a_new_digest_rolls_the_holders_once_and_is_announced_when_every_node_has_it() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    s.observe(&c, Observation::Pods(Seen::Applied(("h1".into(), Some(holding("n1", 1, OLD))))), at(1));
    s.observe(&c, Observation::Pods(Seen::Applied(("h2".into(), Some(holding("n2", 1, OLD))))), at(1));
    s.take_notices();
    s.observe(&c, answer(NEW), at(10));
    let d = s.decide(&c, at(10));
    assert_eq!(d.gauges.stale_images, 1);
    let rolled = d.apply.expect("the template changes: the holders roll");
    assert_eq!(digests_of(&rolled), Some(format!(r#"{{"{NGINX}":"{NEW}"}}"#)));
    assert!(names(&s.take_notices()).contains(&"DigestChanged"));
    s.observe(&c, Observation::Applied(applied(&rolled, 2)), at(10));
    // while the roll goes on (old pods still report the old digest) nothing rolls again
    assert_eq!(s.decide(&c, at(11)).apply, None);
    s.observe(&c, Observation::Pods(Seen::Applied(("h3".into(), Some(holding("n1", 2, NEW))))), at(12));
    s.observe(&c, Observation::Pods(Seen::Deleted(("h1".into(), None))), at(12));
    assert!(!names(&s.take_notices()).contains(&"ImageUpdated"));
    s.decide(&c, at(12));
    assert!(!names(&s.take_notices()).contains(&"ImageUpdated"), "n2 still has the old content");
    s.observe(&c, Observation::Pods(Seen::Applied(("h4".into(), Some(holding("n2", 2, NEW))))), at(14));
    s.observe(&c, Observation::Pods(Seen::Deleted(("h2".into(), None))), at(14));
    let d = s.decide(&c, at(14));
    assert_eq!((d.apply, d.gauges.stale_images), (None, 0));
    let notices = s.take_notices();
    let Some(Notice::ImageUpdated { digest, nodes, seconds, .. }) =
        notices.iter().find(|n| matches!(n, Notice::ImageUpdated { .. }))
    else {
        panic!("no ImageUpdated in {notices:?}");
    };
    assert_eq!((digest.as_str(), *nodes, *seconds), (NEW, 2, 4.0));

    // a restarted manager renders the same template: no roll
    let mut restarted = synced(&c, true, Some(applied(&rolled, 2)), at(20));
    restarted.observe(
        &c,
        Observation::Pods(Seen::Listed(vec![("h3".into(), Some(holding("n1", 2, NEW)))])),
        at(20),
    );
    restarted.observe(&c, answer(NEW), at(21));
    assert_eq!(restarted.decide(&c, at(21)).apply, None, "the rolled-for digest survives the restart");
}

#[test]
fn a_follower_never_rolls_for_a_digest_and_checks_can_be_off() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut follower = synced(&c, false, None, at(0));
    follower.observe(&c, Observation::Pods(Seen::Applied(("h1".into(), Some(holding("n1", 1, OLD))))), at(1));
    follower.observe(&c, answer(NEW), at(2));
    let d = follower.decide(&c, at(2));
    assert_eq!(
        (d.apply, d.gauges.stale_images),
        (None, 1),
        "it sees the stale tag, and leaves it to the leader"
    );
    assert!(!names(&follower.take_notices()).contains(&"DigestChanged"));

    let off = config(&[("IMAGES", "nginx:1.25"), ("DIGEST_CHECK_INTERVAL", "0")]);
    let mut s = synced(&off, true, None, at(0));
    decide_and_apply(&mut s, &off, at(0)).expect("created");
    s.observe(&off, Observation::Pods(Seen::Applied(("h1".into(), Some(holding("n1", 1, OLD))))), at(1));
    s.observe(&off, answer(NEW), at(2));
    assert_eq!(s.decide(&off, at(2)).apply, None, "DIGEST_CHECK_INTERVAL=0: digests never roll");
}

// ---------------------------------------------------------------------------------------------
// The rollout gate

/// `ROLLOUT_GATE` (`true` or `opt-in`) and these variables.
fn rollout(mode: &str, more: &[(&str, &str)]) -> Config {
    let mut pairs = vec![("IMAGES", "nginx:1.25"), ("ROLLOUT_GATE", mode)];
    pairs.extend_from_slice(more);
    config(&pairs)
}

fn watched(s: &mut State, c: &Config, name: &str, images: &[&str], setting: Option<bool>, now: SystemTime) {
    let d = DeploymentImages { rollout_gate: setting, ..deployment(images) };
    s.observe(
        c,
        Observation::Deployments(0, Seen::Applied((("team".to_string(), name.to_string()), Some(d)))),
        now,
    );
}

fn holders(s: &mut State, c: &Config, node: &str, images: &[(&str, HolderState)], now: SystemTime) {
    s.observe(
        c,
        Observation::Pods(Seen::Applied((format!("holder-{node}"), Some(pod(node, 1, images))))),
        now,
    );
}

fn node_labels(s: &mut State, c: &Config, node: &str, labels: &[(&str, &str)], now: SystemTime) -> bool {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    s.observe(
        c,
        Observation::Nodes(Seen::Applied((node.to_string(), NodeSeen { gated: None, labels: Some(labels) }))),
        now,
    )
}

fn pod_key(name: &str) -> PodKey {
    ("team".to_string(), name.to_string())
}

/// A pod of `team/web` carrying kwarm's gate since `since`, waiting for `images`.
fn waiting(images: &[&str], since: u64) -> GatedPod {
    GatedPod {
        uid: "pod-uid".into(),
        index: 0,
        since: at(since),
        deployment: Some("web".into()),
        images: images.iter().map(|i| i.to_string()).collect(),
        containers: BTreeMap::new(),
        placement: rollout::Placement::default(),
    }
}

fn gate_pod(s: &mut State, c: &Config, name: &str, g: Option<GatedPod>, now: SystemTime) -> bool {
    s.observe(c, Observation::GatedPods(Seen::Applied((pod_key(name), g))), now)
}

fn pods_released(d: &Decision) -> Vec<(&str, &rollout::Why)> {
    d.pod_releases.iter().map(|r| (r.name.as_str(), &r.why)).collect()
}

fn keys(names: &[&str]) -> BTreeSet<DeploymentKey> {
    names.iter().map(|n| ("team".to_string(), n.to_string())).collect()
}

#[test]
fn with_the_rollout_gate_on_nothing_is_decided_before_the_pending_pods_listed() {
    let c = rollout("true", &[]);
    let mut s = State::new(&c, vec![None], true, false, None, at(0));
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Deployments(0, Seen::Listed(vec![])), at(0));
    assert!(!s.synced(), "the Node watch has not listed yet");
    s.observe(&c, Observation::Nodes(Seen::Listed(vec![])), at(0));
    assert!(!s.synced(), "the pending-pod watch has not listed yet");
    assert!(s.observe(
        &c,
        Observation::GatedPods(Seen::Listed(vec![
            (pod_key("web-1"), Some(waiting(&[REDIS], 0))),
            (pod_key("other"), None),
        ])),
        at(0)
    ));
    assert!(s.synced());
    assert_eq!(s.gated_pods().keys().collect::<Vec<_>>(), [&pod_key("web-1")], "only pods with kwarm's gate");
    assert!(!s.warm_view().synced, "the webhook gates nothing before the first decision");
    s.decide(&c, at(0));
    assert!(s.warm_view().synced);
}

#[test]
fn without_the_right_to_list_pending_pods_the_rest_goes_on_and_it_is_said_once() {
    let c = rollout("true", &[]);
    let mut s = State::new(&c, vec![None], true, false, None, at(0));
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Deployments(0, Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Nodes(Seen::Listed(vec![])), at(0));
    assert!(s.observe(&c, Observation::PendingPodsForbidden("403".into()), at(0)), "a decision is due");
    assert!(s.synced());
    assert!(!s.observe(&c, Observation::PendingPodsForbidden("403".into()), at(1)));
    assert_eq!(names(&s.take_notices()), ["PendingPodsForbidden"]);
    assert_eq!(images_of(&s.decide(&c, at(1)).apply.expect("the DaemonSet does not wait")), [NGINX]);
}

#[test]
fn the_warm_view_lists_what_each_node_holds_and_the_deployments_that_are_gated() {
    let c = rollout("true", &[]);
    let mut s = synced(&c, true, None, at(0));
    watched(&mut s, &c, "web", &[REDIS], None, at(0));
    watched(&mut s, &c, "labelled", &[REDIS], Some(true), at(0));
    watched(&mut s, &c, "legacy", &[REDIS], Some(false), at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    holders(&mut s, &c, "n1", &[(NGINX, HolderState::Warm), (REDIS, HolderState::Warm)], at(1));
    holders(&mut s, &c, "n2", &[(NGINX, HolderState::Warm), (REDIS, HolderState::Pulling)], at(1));
    assert!(node_labels(&mut s, &c, "n1", &[("pool", "web")], at(1)));
    assert!(!node_labels(&mut s, &c, "n1", &[("pool", "web")], at(2)), "a heartbeat decides nothing");
    s.decide(&c, at(2));
    let v = s.warm_view();
    assert!(v.synced);
    assert_eq!(
        v.warm,
        BTreeMap::from([
            ("n1".to_string(), BTreeSet::from([NGINX.to_string(), REDIS.to_string()])),
            ("n2".to_string(), BTreeSet::from([NGINX.to_string()])),
        ]),
        "a holder still pulling does not count"
    );
    assert_eq!(v.labels.keys().collect::<Vec<_>>(), ["n1"], "labels of the holder nodes kwarm saw");
    assert_eq!(v.gated_deployments, keys(&["labelled", "web"]), "not the one labelled false");
    assert!(v.quarantined.is_empty() && v.overflow.is_empty());
}

#[test]
fn with_opt_in_only_deployments_that_say_true_are_gated() {
    let c = rollout("opt-in", &[]);
    let mut s = synced(&c, true, None, at(0));
    watched(&mut s, &c, "web", &[REDIS], None, at(0));
    watched(&mut s, &c, "labelled", &[REDIS], Some(true), at(0));
    watched(&mut s, &c, "legacy", &[REDIS], Some(false), at(0));
    s.decide(&c, at(0));
    assert_eq!(s.warm_view().gated_deployments, keys(&["labelled"]));
}

#[test]
fn a_gated_pod_is_released_once_its_images_are_warm_and_asked_again_only_after_the_retry() {
    let c = rollout("true", &[]);
    let mut s = synced(&c, true, None, at(0));
    watched(&mut s, &c, "web", &[REDIS], None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    assert!(gate_pod(&mut s, &c, "web-1", Some(waiting(&[REDIS], 1)), at(1)));
    assert!(
        !gate_pod(&mut s, &c, "web-1", Some(waiting(&[REDIS], 1)), at(2)),
        "the same pod again: no decision"
    );
    holders(&mut s, &c, "n1", &[(NGINX, HolderState::Warm), (REDIS, HolderState::Pulling)], at(3));
    let d = s.decide(&c, at(3));
    assert!(d.pod_releases.is_empty(), "redis is still pulling");
    assert_eq!(d.gauges.gated_pods, 1);

    holders(&mut s, &c, "n1", &[(NGINX, HolderState::Warm), (REDIS, HolderState::Warm)], at(10));
    let d = s.decide(&c, at(10));
    assert_eq!(pods_released(&d), [("web-1", &rollout::Why::Warm)]);
    let r = &d.pod_releases[0];
    assert_eq!(
        (r.namespace.as_str(), r.uid.as_str(), r.index, r.since, r.deployment.as_deref()),
        ("team", "pod-uid", 0, at(1), Some("web")),
        "the patch tests the uid and index kwarm saw"
    );

    // asked for once; again only if the pod is still gated after RELEASE_RETRY
    assert!(s.decide(&c, at(11)).pod_releases.is_empty());
    assert!(s.decide(&c, at(10) + RELEASE_RETRY - Duration::from_secs(1)).pod_releases.is_empty());
    assert_eq!(s.next_wakeup(&c, at(11)), at(10) + RELEASE_RETRY);
    assert_eq!(pods_released(&s.decide(&c, at(10) + RELEASE_RETRY)), [("web-1", &rollout::Why::Warm)]);
    // the gate is gone: nothing more to do
    assert!(gate_pod(&mut s, &c, "web-1", None, at(45)));
    let d = s.decide(&c, at(45));
    assert!(d.pod_releases.is_empty());
    assert_eq!(d.gauges.gated_pods, 0);
}

#[test]
fn a_gated_pod_waits_only_for_the_nodes_it_may_run_on() {
    let c = rollout("true", &[]);
    let mut s = synced(&c, true, None, at(0));
    watched(&mut s, &c, "web", &[REDIS], None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    holders(&mut s, &c, "n1", &[(REDIS, HolderState::Warm)], at(1));
    holders(&mut s, &c, "n2", &[(REDIS, HolderState::Pulling)], at(1));
    node_labels(&mut s, &c, "n1", &[("pool", "web")], at(1));
    node_labels(&mut s, &c, "n2", &[("pool", "batch")], at(1));
    let mut anywhere = waiting(&[REDIS], 1);
    anywhere.uid = "anywhere".into();
    let mut pinned = waiting(&[REDIS], 1);
    pinned.placement.node_selector = BTreeMap::from([("pool".to_string(), "web".to_string())]);
    gate_pod(&mut s, &c, "anywhere", Some(anywhere), at(2));
    gate_pod(&mut s, &c, "pinned", Some(pinned), at(2));
    assert_eq!(pods_released(&s.decide(&c, at(2))), [("pinned", &rollout::Why::Warm)], "n2 is pool=batch");
}

#[test]
fn a_follower_never_releases_pods_and_a_new_leader_continues_their_clocks() {
    let c = rollout("true", &[("ROLLOUT_GATE_TIMEOUT", "2m")]);
    let mut follower = synced(&c, false, None, at(0));
    watched(&mut follower, &c, "web", &[REDIS], None, at(0));
    holders(&mut follower, &c, "n1", &[(REDIS, HolderState::Pulling)], at(0));
    gate_pod(&mut follower, &c, "cold", Some(waiting(&[REDIS], 0)), at(0));
    gate_pod(&mut follower, &c, "warm", Some(waiting(&[], 0)), at(0));
    let d = follower.decide(&c, at(1000));
    assert!(d.pod_releases.is_empty(), "a follower never patches pods");
    assert_eq!(d.gauges.gated_pods, 2, "but it reports them");
    assert!(follower.warm_view().synced, "and its webhook answers from its own view");
    // the clocks come from the pods' creation, not from memory
    follower.observe(&c, Observation::Leader(true), at(1001));
    assert_eq!(
        pods_released(&follower.decide(&c, at(1001))),
        [("cold", &rollout::Why::Timeout { not_warm: vec![REDIS.into()] }), ("warm", &rollout::Why::Warm),]
    );
}

#[test]
fn past_the_rollout_gate_timeout_a_pod_goes_naming_the_images_not_warm() {
    let c = rollout("true", &[("ROLLOUT_GATE_TIMEOUT", "2m"), ("PULL_TIMEOUT", "1h")]);
    let mut s = synced(&c, true, None, at(0));
    watched(&mut s, &c, "web", &[REDIS, MISSING], None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    holders(&mut s, &c, "n1", &[(REDIS, HolderState::Warm), (MISSING, failed())], at(100));
    gate_pod(&mut s, &c, "web-1", Some(waiting(&[REDIS, MISSING], 100)), at(100));
    assert!(s.decide(&c, at(219)).pod_releases.is_empty(), "failing, but neither quarantined nor timed out");
    assert_eq!(s.next_wakeup(&c, at(219)), at(220), "woken at the deadline");
    assert_eq!(
        pods_released(&s.decide(&c, at(220))),
        [("web-1", &rollout::Why::Timeout { not_warm: vec![MISSING.into()] })]
    );
}

#[test]
fn the_next_wakeup_is_no_later_than_a_gated_pods_deadline() {
    let c = rollout("true", &[("ROLLOUT_GATE_TIMEOUT", "1m"), ("CACHING_INTERVAL", "1h")]);
    let mut s = synced(&c, true, None, at(0));
    assert_eq!(s.next_wakeup(&c, at(0)), at(RESYNC.as_secs()), "no gated pod: the resync");
    gate_pod(&mut s, &c, "young", Some(waiting(&[REDIS], 30)), at(30));
    gate_pod(&mut s, &c, "old", Some(waiting(&[REDIS], 10)), at(30));
    assert_eq!(s.next_wakeup(&c, at(30)), at(70), "the oldest pod's deadline");
}

#[test]
fn an_image_kwarm_quarantines_releases_the_pods_waiting_for_it() {
    let c = rollout("true", &[("ROLLOUT_GATE_TIMEOUT", "1h"), ("PULL_TIMEOUT", "1m")]);
    let mut s = synced(&c, true, None, at(0));
    watched(&mut s, &c, "web", &[MISSING], None, at(0));
    decide_and_apply(&mut s, &c, at(0)).expect("created");
    holders(&mut s, &c, "n1", &[(NGINX, HolderState::Warm), (MISSING, failed())], at(1));
    gate_pod(&mut s, &c, "web-1", Some(waiting(&[MISSING], 1)), at(1));
    assert!(s.decide(&c, at(1)).pod_releases.is_empty());
    let d = s.decide(&c, at(62));
    assert_eq!(pods_released(&d), [("web-1", &rollout::Why::Quarantined { image: MISSING.into() })]);
    assert_eq!(
        s.warm_view().quarantined,
        BTreeSet::from([MISSING.to_string()]),
        "the webhook no longer gates for it"
    );
}

#[test]
fn an_image_over_max_images_releases_the_pods_waiting_for_it() {
    let c = rollout("true", &[("MAX_IMAGES", "1")]);
    let mut s = synced(&c, true, None, at(0));
    watched(&mut s, &c, "web", &[REDIS], None, at(0));
    gate_pod(&mut s, &c, "web-1", Some(waiting(&[REDIS], 0)), at(0));
    let d = s.decide(&c, at(0));
    assert_eq!(images_of(d.apply.as_ref().expect("created")), [NGINX], "IMAGES first, the bound holds");
    assert_eq!(pods_released(&d), [("web-1", &rollout::Why::Overflow { image: REDIS.into() })]);
    assert_eq!(s.warm_view().overflow, BTreeSet::from([REDIS.to_string()]));
}

// --- the DaemonSet's conditions ---------------------------------------------------------------

/// The live DaemonSet as the DaemonSet controller reports it: generation seen, `nodes` scheduled.
fn with_status(ds: &DaemonSet, nodes: i32) -> DaemonSet {
    let mut ds = ds.clone();
    ds.status = Some(k8s_openapi::api::apps::v1::DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        desired_number_scheduled: nodes,
        ..Default::default()
    });
    ds
}

fn condition<'a>(written: &'a [DaemonSetCondition], type_: &str) -> (&'a str, &'a str) {
    let c = written.iter().find(|c| c.type_ == type_).expect("condition written");
    (c.status.as_str(), c.reason.as_deref().unwrap_or_default())
}

/// The API server's answer to the conditions write.
fn written_back(live: &DaemonSet, conditions: &[DaemonSetCondition]) -> DaemonSet {
    let mut ds = live.clone();
    if let Some(status) = ds.status.as_mut() {
        status.conditions = Some(conditions.to_vec());
    }
    ds
}

#[test]
fn conditions_follow_the_holders_and_are_written_only_when_they_change() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let ds = decide_and_apply(&mut s, &c, at(0)).expect("created");
    // the DaemonSet controller has seen it: one node, no holder running yet
    let live = with_status(&ds, 1);
    s.observe(&c, Observation::DaemonSet(Seen::Applied(live.clone())), at(1));
    let written = s.decide(&c, at(1)).conditions.expect("first conditions");
    assert_eq!(condition(&written, "Warm"), ("False", "ImagesPulling"));
    assert_eq!(condition(&written, "Progressing"), ("True", "PullingImages"));
    assert_eq!(condition(&written, "Degraded"), ("False", "AsExpected"));
    let live = written_back(&live, &written);
    s.observe(&c, Observation::ConditionsWritten(live.clone()), at(1));
    assert!(s.decide(&c, at(2)).conditions.is_none(), "unchanged: no write");

    // warm on the node: Warm flips, written at once (the flip gap has passed)
    s.observe(
        &c,
        Observation::Pods(Seen::Applied(("p1".into(), Some(pod("n1", 1, &[(NGINX, HolderState::Warm)]))))),
        at(3),
    );
    let flipped = s.decide(&c, at(3)).conditions.expect("Warm flipped");
    assert_eq!(condition(&flipped, "Warm"), ("True", "AllImagesWarm"));
    assert_eq!(condition(&flipped, "Progressing"), ("False", "Complete"));
    let degraded_before = written.iter().find(|c| c.type_ == "Degraded").unwrap();
    let degraded_after = flipped.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded_before.last_transition_time, degraded_after.last_transition_time);
}

#[test]
fn a_flip_waits_for_the_gap_and_wakes_the_loop() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let ds = decide_and_apply(&mut s, &c, at(0)).expect("created");
    let live = with_status(&ds, 1);
    s.observe(&c, Observation::DaemonSet(Seen::Applied(live.clone())), at(0));
    let now = at(1);
    let written = s.decide(&c, now).conditions.expect("first conditions");
    s.observe(&c, Observation::ConditionsWritten(written_back(&live, &written)), now);
    s.observe(
        &c,
        Observation::Pods(Seen::Applied(("p1".into(), Some(pod("n1", 1, &[(NGINX, HolderState::Warm)]))))),
        now,
    );
    let soon = now + Duration::from_millis(200);
    assert!(s.decide(&c, soon).conditions.is_none(), "within the gap");
    assert!(s.next_wakeup(&c, soon) <= now + CONDITIONS_FLIP_GAP, "the loop wakes for the write");
    let later = now + CONDITIONS_FLIP_GAP;
    assert_eq!(condition(&s.decide(&c, later).conditions.expect("due"), "Warm"), ("True", "AllImagesWarm"));
}

#[test]
fn a_message_only_change_waits_longer() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let ds = decide_and_apply(&mut s, &c, at(0)).expect("created");
    let live = with_status(&ds, 3);
    s.observe(&c, Observation::DaemonSet(Seen::Applied(live.clone())), at(0));
    let written = s.decide(&c, at(1)).conditions.expect("first conditions");
    s.observe(&c, Observation::ConditionsWritten(written_back(&live, &written)), at(1));
    // one of three nodes warm: only the message changes
    s.observe(
        &c,
        Observation::Pods(Seen::Applied(("p1".into(), Some(pod("n1", 1, &[(NGINX, HolderState::Warm)]))))),
        at(2),
    );
    assert!(s.decide(&c, at(3)).conditions.is_none());
    let due = at(1) + CONDITIONS_MESSAGE_GAP;
    let update = s.decide(&c, due).conditions.expect("message update due");
    assert_eq!(condition(&update, "Warm"), ("False", "ImagesPulling"));
    let message = update.iter().find(|c| c.type_ == "Warm").and_then(|c| c.message.clone()).unwrap();
    assert!(message.contains("(1/3 nodes)"), "{message}");
}

#[test]
fn a_quarantined_image_turns_the_conditions_degraded() {
    let c = config(&[("IMAGES", &format!("good=nginx:1.25;bad={MISSING}")), ("PULL_TIMEOUT", "10s")]);
    let mut s = synced(&c, true, None, at(0));
    let ds = decide_and_apply(&mut s, &c, at(0)).expect("created");
    let live = with_status(&ds, 1);
    s.observe(&c, Observation::DaemonSet(Seen::Applied(live)), at(0));
    let failing = pod("n1", 1, &[(NGINX, HolderState::Warm), (MISSING, failed())]);
    s.observe(&c, Observation::Pods(Seen::Applied(("p1".into(), Some(failing)))), at(1));
    let d = s.decide(&c, at(1));
    assert_eq!(condition(d.conditions.as_deref().expect("written"), "Degraded"), ("True", "PullsFailing"));
    let d = s.decide(&c, at(30));
    assert!(d.apply.is_some(), "the quarantined image is taken out");
    let conditions = d.conditions.expect("written");
    assert_eq!(condition(&conditions, "Warm"), ("False", "ImagesQuarantined"));
    assert_eq!(condition(&conditions, "Degraded"), ("True", "ImagesQuarantined"));
}

#[test]
fn followers_and_forbidden_writes_write_no_conditions() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut leader = synced(&c, true, None, at(0));
    let ds = decide_and_apply(&mut leader, &c, at(0)).expect("created");
    let live = with_status(&ds, 1);

    let mut follower = synced(&c, false, Some(live.clone()), at(0));
    assert!(follower.decide(&c, at(1)).conditions.is_none());

    leader.observe(&c, Observation::DaemonSet(Seen::Applied(live)), at(0));
    leader.take_notices();
    leader.observe(&c, Observation::ConditionsForbidden("forbidden".into()), at(1));
    assert_eq!(names(&leader.take_notices()), ["ConditionsForbidden"]);
    leader.observe(&c, Observation::ConditionsForbidden("forbidden".into()), at(1));
    assert!(leader.take_notices().is_empty(), "said once");
    assert!(leader.decide(&c, at(2)).conditions.is_none());
}

// ---------------------------------------------------------------------------------------------
// Tenant credentials (INHERIT_PULL_SECRETS)

const A_APP: &str = "registry.a.example/a/app:1";
const A_OTHER: &str = "registry.a.example/a/unreleased:1";

fn with_secrets(images: &[&str], secrets: &[&str]) -> DeploymentImages {
    DeploymentImages { pull_secrets: secrets.iter().map(|s| s.to_string()).collect(), ..deployment(images) }
}

fn access(answers: &[(&str, Resolution)]) -> Observation {
    Observation::Access(answers.iter().map(|(i, r)| (i.to_string(), r.clone())).collect())
}

fn read_ok() -> Resolution {
    Resolution::Digest { digest: format!("sha256:{}", "1".repeat(64)) }
}

fn unauthorized() -> Resolution {
    Resolution::Failed { reason: crate::registry::FailureReason::Auth, message: "401 Unauthorized".into() }
}

#[test]
fn a_tenant_never_gets_an_image_warmed_with_another_tenants_credentials() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("INHERIT_PULL_SECRETS", "true")]);
    let mut s = synced(&c, true, None, at(0));
    let (a, b) = (("a".to_string(), "app".to_string()), ("b".to_string(), "thief".to_string()));
    let a_app = with_secrets(&[A_APP], &["regcred"]);
    s.observe(&c, Observation::Deployments(0, Seen::Applied((a.clone(), Some(a_app.clone())))), at(0));
    // b names an image of a's registry that a's own Deployments do not use, with no secret
    s.observe(
        &c,
        Observation::Deployments(0, Seen::Applied((b.clone(), Some(deployment(&[A_OTHER]))))),
        at(0),
    );
    let ma = mirror_name("a", "regcred");
    s.observe(&c, Observation::PullSecrets(vec![ma.clone()]), at(0));

    let ds = decide_and_apply(&mut s, &c, at(0)).expect("created");
    // a's image needs no check: the only mirror is a's own; b's waits for one, with b's (none)
    assert_eq!(images_of(&ds), [NGINX, A_APP]);
    assert_eq!(s.access_wanted().keys().collect::<Vec<_>>(), [A_OTHER]);
    assert_eq!(s.access_wanted()[A_OTHER], Vec::<String>::new(), "never a's mirror");
    assert!(s.digest_wanted(&c)[A_APP].contains(&ma), "a's own tag is checked with a's mirror");

    // the registry refuses b's credentials: not warmed, said on b's Deployment, counted
    s.observe(&c, access(&[(A_OTHER, unauthorized())]), at(1));
    let d = s.decide(&c, at(1));
    assert_eq!(d.apply, None, "b's image stays out");
    assert_eq!(d.gauges.denied, 1);
    let notices = s.take_notices();
    let denied = notices.iter().find_map(|n| match n {
        Notice::AccessDenied { image, message, users } => {
            Some((image.clone(), message.clone(), users.clone()))
        }
        _ => None,
    });
    assert_eq!(denied, Some((A_OTHER.to_string(), "401 Unauthorized".to_string(), vec![b.clone()])));
    s.decide(&c, at(2));
    assert!(!names(&s.take_notices()).contains(&"AccessDenied"), "said once");

    // b gets its own pull secret: now a's image must pass a check too (b's mirror is foreign to
    // it), and stays held meanwhile; b's is checked with b's mirror alone
    let b_own = with_secrets(&[A_OTHER], &["b-cred"]);
    s.observe(&c, Observation::Deployments(0, Seen::Applied((b.clone(), Some(b_own)))), at(3));
    let mb = mirror_name("b", "b-cred");
    s.observe(&c, Observation::PullSecrets(vec![ma.clone(), mb.clone()]), at(3));
    let ds = decide_and_apply(&mut s, &c, at(3)).expect("b's mirror is referenced");
    assert_eq!(images_of(&ds), [NGINX, A_APP], "a's held image stays until an answer denies it");
    assert_eq!(s.access_wanted()[A_APP], vec![ma.clone()]);
    assert_eq!(s.access_wanted()[A_OTHER], vec![mb.clone()]);
    s.observe(&c, access(&[(A_APP, read_ok()), (A_OTHER, read_ok())]), at(4));
    let ds = decide_and_apply(&mut s, &c, at(4)).expect("b's image goes in");
    assert_eq!(images_of(&ds), [NGINX, A_APP, A_OTHER]);
    assert!(names(&s.take_notices()).contains(&"AccessGranted"));

    // revoked: a check that denies a held image takes it out
    s.observe(&c, access(&[(A_APP, read_ok()), (A_OTHER, unauthorized())]), at(5));
    let ds = decide_and_apply(&mut s, &c, at(5)).expect("b's image goes out");
    assert_eq!(images_of(&ds), [NGINX, A_APP]);
}

#[test]
fn without_inherited_secrets_nothing_is_checked() {
    let c = config(&[("IMAGES", "nginx:1.25")]);
    let mut s = synced(&c, true, None, at(0));
    let b = ("b".to_string(), "app".to_string());
    s.observe(
        &c,
        Observation::Deployments(0, Seen::Applied((b, Some(with_secrets(&[A_OTHER], &["x"]))))),
        at(0),
    );
    let ds = decide_and_apply(&mut s, &c, at(0)).expect("created");
    assert_eq!(images_of(&ds), [NGINX, A_OTHER], "the holders get IMAGE_PULL_SECRETS only: nothing to lend");
    assert!(s.access_wanted().is_empty());
}

// ---------------------------------------------------------------------------------------------
// NAMESPACE_SELECTOR

#[test]
fn only_namespaces_that_opt_in_get_their_images_warmed_and_leaving_releases_them() {
    let c = config(&[
        ("IMAGES", "nginx:1.25"),
        ("NAMESPACE_SELECTOR", "kwarm.io/warm=true"),
        ("IMAGE_RETENTION", "1h"),
    ]);
    let mut s = State::new(&c, vec![None], true, false, None, at(0));
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    let (team, other) = (("team".to_string(), "api".to_string()), ("other".to_string(), "web".to_string()));
    let listed =
        vec![(team.clone(), Some(deployment(&[REDIS]))), (other.clone(), Some(deployment(&[MISSING])))];
    s.observe(&c, Observation::Deployments(0, Seen::Listed(listed)), at(0));
    assert!(!s.synced(), "the namespaces have not listed yet");
    assert!(s.observe(&c, Observation::Namespaces(Seen::Listed(vec!["team".into()])), at(0)));
    assert!(s.synced());
    let ds = decide_and_apply(&mut s, &c, at(0)).expect("created");
    assert_eq!(images_of(&ds), [NGINX, REDIS], "other has not opted in");
    assert_eq!(s.deployments().len(), 1);

    // other opts in (its label set): its parked Deployment counts at once
    assert!(s.observe(&c, Observation::Namespaces(Seen::Applied("other".into())), at(1)));
    let ds = decide_and_apply(&mut s, &c, at(1)).expect("other's image");
    assert_eq!(images_of(&ds), [NGINX, REDIS, MISSING]);

    // a change in a namespace that did not opt in is kept aside, not warmed
    s.observe(&c, Observation::Namespaces(Seen::Deleted("other".into())), at(2));
    let changed = s.observe(
        &c,
        Observation::Deployments(
            0,
            Seen::Applied((other.clone(), Some(deployment(&[NGINX, "docker.io/library/busybox:1"])))),
        ),
        at(2),
    );
    assert!(!changed, "nothing to decide for a namespace that is out");
    // other's image is released, kept for IMAGE_RETENTION like any image no Deployment uses
    let ds = decide_and_apply(&mut s, &c, at(2)).expect("the retention is written down");
    assert_eq!(images_of(&ds), [NGINX, REDIS, MISSING], "MISSING is retained an hour");
    let ds = decide_and_apply(&mut s, &c, at(3700)).expect("retention over");
    assert_eq!(images_of(&ds), [NGINX, REDIS]);
    // back in: the latest version of its Deployment
    s.observe(&c, Observation::Namespaces(Seen::Applied("other".into())), at(3701));
    let ds = decide_and_apply(&mut s, &c, at(3701)).expect("busybox");
    assert_eq!(images_of(&ds), ["docker.io/library/busybox:1", NGINX, REDIS]);
}

#[test]
fn without_the_right_to_list_namespaces_none_opts_in_and_it_is_said_once() {
    let c = config(&[("IMAGES", "nginx:1.25"), ("NAMESPACE_SELECTOR", "kwarm.io/warm=true")]);
    let mut s = State::new(&c, vec![None], true, false, None, at(0));
    s.observe(&c, Observation::DaemonSet(Seen::Listed(vec![])), at(0));
    s.observe(&c, Observation::Pods(Seen::Listed(vec![])), at(0));
    let listed = vec![(("team".to_string(), "api".to_string()), Some(deployment(&[REDIS])))];
    s.observe(&c, Observation::Deployments(0, Seen::Listed(listed)), at(0));
    assert!(s.observe(&c, Observation::NamespacesForbidden("403".into()), at(0)));
    s.observe(&c, Observation::NamespacesForbidden("403".into()), at(1));
    assert_eq!(names(&s.take_notices()), ["NamespacesForbidden"]);
    assert!(s.synced(), "IMAGES do not wait for a watch that cannot work");
    let ds = decide_and_apply(&mut s, &c, at(1)).expect("created");
    assert_eq!(images_of(&ds), [NGINX], "fails closed: the selector is a restriction");
}
