use std::collections::{BTreeMap, BTreeSet};

use pretty_assertions::assert_eq;

use super::*;
use crate::images::Names;

const PRIVATE: &str = "registry.a.example/team-a/private:v1";
const PUBLIC: &str = "docker.io/library/nginx:1.25";

fn uses(images: &[&str], secrets: &[&str]) -> DeploymentImages {
    DeploymentImages {
        images: images.iter().map(|i| i.to_string()).collect(),
        pull_secrets: secrets.iter().map(|s| s.to_string()).collect::<Names>(),
        ..Default::default()
    }
}

fn deployments(items: &[(&str, &str, DeploymentImages)]) -> BTreeMap<DeploymentKey, DeploymentImages> {
    items.iter().map(|(ns, name, d)| ((ns.to_string(), name.to_string()), d.clone())).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn mirror_names_are_valid_unique_and_readable() {
    let a = mirror_name("team", "regcred");
    assert!(a.starts_with("kwarm-team-regcred-"), "{a}");
    assert_ne!(a, mirror_name("team-regcred", ""), "the hash tells ambiguous joins apart");
    assert_ne!(a, mirror_name("team", "regcred2"));
    let long = mirror_name(&"n".repeat(63), &"s".repeat(253));
    // a Secret's name is a DNS-1123 subdomain as the API server checks it: at most 253
    // characters of [a-z0-9.-], alphanumeric at both ends (no per-label length)
    assert!(long.len() <= 253, "{}", long.len());
    assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
    assert!(long.ends_with(|c: char| c.is_ascii_alphanumeric()), "{long}");
}

#[test]
fn without_mirrors_nothing_is_checked() {
    // no inherited secrets on the DaemonSet: the kubelet pulls with IMAGE_PULL_SECRETS alone, as
    // it would for the Deployment's own pods
    let d = deployments(&[("b", "app", uses(&[PRIVATE], &[]))]);
    assert!(checks_needed(&d, &BTreeSet::new(), &[], &strings(&["global"])).is_empty());
}

#[test]
fn one_tenant_with_its_own_mirrors_needs_no_check() {
    let d =
        deployments(&[("a", "app", uses(&[PRIVATE], &["regcred"])), ("a", "other", uses(&[PUBLIC], &[]))]);
    let mirrors = vec![mirror_name("a", "regcred")];
    assert!(
        checks_needed(&d, &BTreeSet::new(), &mirrors, &[]).is_empty(),
        "only a's own credentials are there"
    );
}

#[test]
fn another_tenants_image_is_checked_with_its_own_credentials_only() {
    let d = deployments(&[
        ("a", "app", uses(&[PRIVATE], &["regcred"])),
        ("b", "thief", uses(&[PRIVATE, PUBLIC], &[])),
        ("c", "own", uses(&["registry.c.example/c/app:1"], &["c-cred"])),
    ]);
    let (ma, mc) = (mirror_name("a", "regcred"), mirror_name("c", "c-cred"));
    let mirrors = vec![ma.clone(), mc.clone()];
    let needed = checks_needed(&d, &BTreeSet::new(), &mirrors, &strings(&["global"]));
    // PRIVATE is wanted by a and b: a's mirror is its own, c's is not
    assert_eq!(needed[PRIVATE], strings(&["global", &ma]));
    // PUBLIC is only b's: neither mirror is b's, so only the global secrets
    assert_eq!(needed[PUBLIC], strings(&["global"]));
    // c's image: a's mirror is foreign
    assert_eq!(needed["registry.c.example/c/app:1"], strings(&["global", &mc]));
}

#[test]
fn images_entries_are_never_checked() {
    let d = deployments(&[("a", "app", uses(&[PRIVATE], &["regcred"])), ("b", "x", uses(&[PUBLIC], &[]))]);
    let mirrors = vec![mirror_name("a", "regcred")];
    let needed = checks_needed(&d, &set(&[PUBLIC]), &mirrors, &[]);
    assert!(needed.is_empty(), "{needed:?}");
}

#[test]
fn a_mirror_nobody_names_counts_as_foreign() {
    // kept from the live DaemonSet at a restart, before the Deployments name it again
    let d = deployments(&[("a", "app", uses(&[PRIVATE], &[]))]);
    let needed = checks_needed(&d, &BTreeSet::new(), &strings(&["kwarm-old-regcred-abc"]), &[]);
    assert_eq!(needed[PRIVATE], Vec::<String>::new());
}

fn needed(images: &[&str]) -> BTreeMap<String, Vec<String>> {
    images.iter().map(|i| (i.to_string(), Vec::new())).collect()
}

fn failed(reason: FailureReason) -> Resolution {
    Resolution::Failed { reason, message: format!("{reason:?} from the registry") }
}

#[test]
fn answers_allow_deny_or_leave_unchecked() {
    let answers = BTreeMap::from([
        ("ok".to_string(), Resolution::Digest { digest: "sha256:1".into() }),
        ("auth".to_string(), failed(FailureReason::Auth)),
        ("gone".to_string(), failed(FailureReason::NotFound)),
        ("down".to_string(), failed(FailureReason::Unreachable)),
        ("slow".to_string(), failed(FailureReason::Throttled)),
    ]);
    let v = verdicts(&needed(&["ok", "auth", "gone", "down", "slow", "new"]), &answers, &BTreeSet::new());
    assert_eq!(v.denied.keys().cloned().collect::<BTreeSet<_>>(), set(&["auth", "gone"]));
    assert_eq!(v.denied["auth"], "Auth from the registry", "the registry's answer is kept for the Event");
    assert_eq!(v.unchecked, set(&["down", "slow", "new"]));
    assert_eq!(v.left_out(), set(&["auth", "gone", "down", "slow", "new"]));
}

#[test]
fn a_held_image_stays_until_an_answer_denies_it() {
    let answers = BTreeMap::from([
        ("down".to_string(), failed(FailureReason::Unreachable)),
        ("revoked".to_string(), failed(FailureReason::Auth)),
    ]);
    let held = set(&["down", "revoked", "restarted"]);
    let v = verdicts(&needed(&["down", "revoked", "restarted"]), &answers, &held);
    assert!(v.unchecked.is_empty(), "an unreachable registry or a restart drops nothing: {v:?}");
    assert_eq!(v.left_out(), set(&["revoked"]), "revoked access removes it");
}
