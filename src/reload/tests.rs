use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn config(pairs: &[(&str, &str)]) -> Config {
    Config::from_vars(map(pairs), None).unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
}

#[test]
fn an_edited_key_takes_its_new_value() {
    let started = map(&[("IMAGES", "a=nginx:1"), ("MAX_IMAGES", "50")]);
    let process = map(&[("IMAGES", "a=nginx:1"), ("MAX_IMAGES", "50"), ("HOME", "/root")]);
    let now = map(&[("IMAGES", "a=nginx:1;b=redis:7"), ("MAX_IMAGES", "50")]);
    assert_eq!(
        reloaded_vars(&process, &started, &now),
        map(&[("IMAGES", "a=nginx:1;b=redis:7"), ("MAX_IMAGES", "50"), ("HOME", "/root")])
    );
}

#[test]
fn a_removed_key_goes_back_to_its_default() {
    let started = map(&[("IMAGES", "a=nginx:1"), ("MAX_IMAGES", "50")]);
    let process = started.clone();
    let now = map(&[("IMAGES", "a=nginx:1")]);
    assert_eq!(reloaded_vars(&process, &started, &now), map(&[("IMAGES", "a=nginx:1")]));
}

#[test]
fn the_pods_own_env_wins_over_the_config_map() {
    // LEADER_ELECT set in the pod's env (wins over envFrom) differs from the ConfigMap's value
    let started = map(&[("IMAGES", "a=nginx:1"), ("LEADER_ELECT", "false")]);
    let process = map(&[("IMAGES", "a=nginx:1"), ("LEADER_ELECT", "true"), ("POD_NAME", "kwarm-0")]);
    let now = map(&[("IMAGES", "b=redis:7"), ("LEADER_ELECT", "false"), ("POD_NAME", "other")]);
    assert_eq!(
        reloaded_vars(&process, &started, &now),
        map(&[("IMAGES", "b=redis:7"), ("LEADER_ELECT", "true"), ("POD_NAME", "kwarm-0")])
    );
}

#[test]
fn a_new_key_is_taken() {
    let started = map(&[("IMAGES", "a=nginx:1")]);
    let now = map(&[("IMAGES", "a=nginx:1"), ("EXCLUDE_IMAGES", "*:latest")]);
    assert_eq!(reloaded_vars(&started, &started, &now), now);
}

#[test]
fn what_the_servers_and_the_lease_were_made_from_waits_for_a_restart() {
    let running = config(&[("IMAGES", "a=nginx:1"), ("DAEMONSET_NAME", "warm")]);
    let edited = config(&[
        ("IMAGES", "a=nginx:1;b=redis:7"),
        ("DAEMONSET_NAME", "other"),
        ("METRICS_BIND_ADDRESS", ":9999"),
    ]);
    let (new, pinned) = pin(&running, edited);
    assert_eq!(pinned, ["DAEMONSET_NAME", "METRICS_BIND_ADDRESS"]);
    assert_eq!(new.daemonset_name, "warm");
    assert_eq!(new.metrics_bind_address, running.metrics_bind_address);
    assert_eq!(new.images.len(), 2, "the rest applies");
}

#[test]
fn an_edit_of_reloadable_variables_pins_nothing() {
    let running = config(&[("IMAGES", "a=nginx:1")]);
    let edited = config(&[("IMAGES", "a=nginx:1"), ("MAX_CONCURRENT_NODES", "3"), ("PULL_TIMEOUT", "1m")]);
    let (new, pinned) = pin(&running, edited.clone());
    assert!(pinned.is_empty());
    assert_eq!(new, edited);
}
