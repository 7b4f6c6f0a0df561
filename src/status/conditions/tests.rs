use super::*;
use std::time::Duration;

fn status(image: &str, warm: usize, failed: usize) -> ImageStatus {
    ImageStatus {
        image: image.into(),
        nodes: 3,
        warm,
        pulling: 3 - warm - failed,
        failed,
        failures: BTreeMap::new(),
        messages: BTreeMap::new(),
    }
}

fn set(images: &[&str]) -> BTreeSet<String> {
    images.iter().map(|s| s.to_string()).collect()
}

fn summary(c: &[Observed; 3]) -> Vec<(&str, bool, &str)> {
    c.iter().map(|o| (o.type_, o.status, o.reason)).collect()
}

#[test]
fn all_warm_is_warm_not_progressing_not_degraded() {
    let planned = set(&["a:1", "b:1"]);
    let statuses = [status("a:1", 3, 0), status("b:1", 3, 0)];
    let c = observe(&Inputs { planned: &planned, statuses: &statuses, nodes: Some(3), ..Default::default() });
    assert_eq!(
        summary(&c),
        [(WARM, true, "AllImagesWarm"), (PROGRESSING, false, "Complete"), (DEGRADED, false, "AsExpected")]
    );
    assert_eq!(c[0].message, "2 images warm on 3 nodes");
}

#[test]
fn an_image_on_some_nodes_is_pulling() {
    let planned = set(&["a:1", "b:1"]);
    let statuses = [status("a:1", 3, 0), status("b:1", 1, 0)];
    let c = observe(&Inputs { planned: &planned, statuses: &statuses, nodes: Some(3), ..Default::default() });
    assert_eq!(
        summary(&c),
        [
            (WARM, false, "ImagesPulling"),
            (PROGRESSING, true, "PullingImages"),
            (DEGRADED, false, "AsExpected")
        ]
    );
    assert_eq!(c[0].message, "1 of 2 images warm on every node; not yet: b:1 (1/3 nodes)");
}

#[test]
fn a_planned_image_the_daemonset_does_not_hold_yet_is_not_warm() {
    let planned = set(&["a:1", "new:1"]);
    let statuses = [status("a:1", 3, 0)];
    let c = observe(&Inputs { planned: &planned, statuses: &statuses, nodes: Some(3), ..Default::default() });
    assert_eq!(c[0].reason, "ImagesPulling");
    assert!(c[0].message.contains("new:1 (0/3 nodes)"), "{}", c[0].message);
}

#[test]
fn unknown_node_count_is_not_warm() {
    // The DaemonSet controller has not seen the current generation: nothing is known to be held.
    let planned = set(&["a:1"]);
    let statuses = [status("a:1", 3, 0)];
    let c = observe(&Inputs { planned: &planned, statuses: &statuses, nodes: None, ..Default::default() });
    assert!(!c[0].status);
    assert!(c[1].status);
}

#[test]
fn no_nodes_is_warm() {
    let planned = set(&["a:1"]);
    let c = observe(&Inputs { planned: &planned, statuses: &[], nodes: Some(0), ..Default::default() });
    assert_eq!(summary(&c)[0], (WARM, true, "AllImagesWarm"));
}

#[test]
fn quarantine_is_not_warm_and_degraded_though_the_rest_is_held() {
    let planned = set(&["a:1", "bad:1"]);
    let statuses = [status("a:1", 3, 0)];
    let quarantined = set(&["bad:1"]);
    let c = observe(&Inputs {
        planned: &planned,
        statuses: &statuses,
        nodes: Some(3),
        quarantined: &quarantined,
        ..Default::default()
    });
    assert_eq!(
        summary(&c),
        [
            (WARM, false, "ImagesQuarantined"),
            (PROGRESSING, false, "Complete"),
            (DEGRADED, true, "ImagesQuarantined")
        ]
    );
    assert!(c[0].message.contains("bad:1"));
}

#[test]
fn overflow_is_not_warm_and_degraded() {
    let planned = set(&["a:1", "z:1"]);
    let statuses = [status("a:1", 3, 0)];
    let overflow = set(&["z:1"]);
    let c = observe(&Inputs {
        planned: &planned,
        statuses: &statuses,
        nodes: Some(3),
        overflow: &overflow,
        ..Default::default()
    });
    assert_eq!(summary(&c)[0], (WARM, false, "MaxImagesReached"));
    assert_eq!(summary(&c)[2], (DEGRADED, true, "MaxImagesReached"));
}

#[test]
fn an_image_without_its_own_credentials_is_not_warm_and_degraded() {
    let planned = set(&["a:1", "b/private:1"]);
    let statuses = [status("a:1", 3, 0)];
    let denied = set(&["b/private:1"]);
    let c = observe(&Inputs {
        planned: &planned,
        statuses: &statuses,
        nodes: Some(3),
        denied: &denied,
        ..Default::default()
    });
    assert_eq!(summary(&c)[0], (WARM, false, "CredentialsMissing"));
    assert_eq!(summary(&c)[1], (PROGRESSING, false, "Complete"), "nothing is pulled for it");
    assert_eq!(summary(&c)[2], (DEGRADED, true, "CredentialsMissing"));
    assert!(c[2].message.contains("b/private:1"), "{}", c[2].message);
}

#[test]
fn failing_on_some_nodes_is_degraded_and_still_progressing() {
    let planned = set(&["a:1"]);
    let statuses = [status("a:1", 2, 1)];
    let c = observe(&Inputs { planned: &planned, statuses: &statuses, nodes: Some(3), ..Default::default() });
    assert_eq!(
        summary(&c),
        [
            (WARM, false, "ImagesPulling"),
            (PROGRESSING, true, "PullingImages"),
            (DEGRADED, true, "PullsFailing")
        ]
    );
    assert!(c[2].message.contains("a:1 (2/3 nodes, failing on 1)"), "{}", c[2].message);
}

#[test]
fn init_failures_come_first() {
    let planned = set(&["a:1"]);
    let quarantined = set(&["q:1"]);
    let c = observe(&Inputs {
        planned: &planned,
        nodes: Some(3),
        quarantined: &quarantined,
        init_failing: 2,
        ..Default::default()
    });
    assert_eq!(c[2].reason, "InitContainerFailing");
    assert!(c[2].message.contains("on 2 nodes"), "{}", c[2].message);
}

#[test]
fn updating_digests_is_progressing_while_warm() {
    let planned = set(&["a:latest"]);
    let statuses = [status("a:latest", 3, 0)];
    let updating = set(&["a:latest"]);
    let c = observe(&Inputs {
        planned: &planned,
        statuses: &statuses,
        nodes: Some(3),
        updating: &updating,
        ..Default::default()
    });
    assert_eq!(summary(&c)[0], (WARM, true, "AllImagesWarm"));
    assert_eq!(summary(&c)[1], (PROGRESSING, true, "UpdatingImages"));
}

#[test]
fn long_lists_are_cut() {
    let images: Vec<String> = (0..10).map(|i| format!("q{i}:1")).collect();
    let planned: BTreeSet<String> = images.iter().cloned().collect();
    let c =
        observe(&Inputs { planned: &planned, quarantined: &planned, nodes: Some(1), ..Default::default() });
    assert_eq!(c[0].message, "10 images quarantined: q0:1, q1:1, q2:1 and 7 more");
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

#[test]
fn merge_keeps_the_transition_time_while_the_status_stays() {
    let planned = set(&["a:1"]);
    let pulling = [status("a:1", 1, 0)];
    let warm = [status("a:1", 3, 0)];
    let first =
        observe(&Inputs { planned: &planned, statuses: &pulling, nodes: Some(3), ..Default::default() });
    let written = merge(&[], &first, at(0)).expect("nothing written yet: a write");
    assert_eq!(written.len(), 3);
    assert_eq!(merge(&written, &first, at(5)), None, "the same conditions again: no write");

    let later = [status("a:1", 2, 0)];
    let second =
        observe(&Inputs { planned: &planned, statuses: &later, nodes: Some(3), ..Default::default() });
    assert!(!status_changed(&written, &second));
    let updated = merge(&written, &second, at(5)).expect("the message changed");
    assert_eq!(updated[0].last_transition_time, written[0].last_transition_time);

    let done = observe(&Inputs { planned: &planned, statuses: &warm, nodes: Some(3), ..Default::default() });
    assert!(status_changed(&updated, &done));
    let flipped = merge(&updated, &done, at(9)).expect("Warm flipped");
    assert_eq!(flipped[0].status, "True");
    assert_ne!(flipped[0].last_transition_time, written[0].last_transition_time);
    // Degraded stayed False: its time stays
    assert_eq!(flipped[2].last_transition_time, written[2].last_transition_time);
}

#[test]
fn merge_ignores_other_writers_conditions() {
    let planned = set(&["a:1"]);
    let statuses = [status("a:1", 3, 0)];
    let c = observe(&Inputs { planned: &planned, statuses: &statuses, nodes: Some(3), ..Default::default() });
    let mut current = merge(&[], &c, at(0)).unwrap();
    current.push(DaemonSetCondition {
        type_: "SomethingElse".into(),
        status: "True".into(),
        ..Default::default()
    });
    assert_eq!(merge(&current, &c, at(1)), None);
}
