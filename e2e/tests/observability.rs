//! What operators see: Prometheus metrics that agree with the cluster, readiness tied to the first
//! sync, leader election with two replicas, and `kwarm status` explaining a failing image.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::{Api, DeleteParams, PostParams};
use kwarm_e2e::{Check, client, create_namespace, delete_namespace, kubeconfig_path, wait_until};
use support::{Manager, base_env, wait_holders_ready};

const DS: &str = "kwarm-holders";

/// Parses Prometheus/OpenMetrics text: every line is a comment of a known kind or a sample
/// `name{labels} value`. Returns samples keyed by `name{labels}`.
fn parse_metrics(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut samples = BTreeMap::new();
    let mut saw_eof = false;
    for line in text.lines() {
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap_or_default();
            ensure!(["HELP", "TYPE", "UNIT"].contains(&kind), "unknown comment line {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value in {line:?}"))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            ensure!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        let value: f64 = value.parse().with_context(|| format!("bad value in {line:?}"))?;
        samples.insert(series.to_string(), value);
    }
    ensure!(saw_eof, "no # EOF line");
    Ok(samples)
}

fn labelled_deployment(name: &str, image: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "kwarm.io/enabled": "true"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": image}]}}}
    }))?)
}

#[tokio::test]
async fn metrics_agree_with_the_cluster() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-metrics-").await?;
    let apps = create_namespace(&client, "kwarm-e2e-mapps-").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps);
    deployments
        .create(&PostParams::default(), &labelled_deployment("a", "127.0.0.1:5000/test/other:v1")?)
        .await?;
    deployments
        .create(&PostParams::default(), &labelled_deployment("b", "127.0.0.1:5000/test/small:v1")?)
        .await?;

    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), "127.0.0.1:5000/test/small:v2".into());
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), apps.clone());
    let mut manager = Manager::start("manager-metrics", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    wait_holders_ready(&client, &ns, DS, 3, Duration::from_secs(120)).await?;

    let samples = wait_until("kwarm_images{state=\"warm\"} to reach 3", Duration::from_secs(30), || async {
        let samples = parse_metrics(&manager.metrics_text().await?)?;
        let warm = samples.get("kwarm_images{state=\"warm\"}").copied().unwrap_or_default();
        Ok(if warm == 3.0 { Check::Done(samples) } else { Check::Pending(format!("warm = {warm}")) })
    })
    .await?;
    assert_eq!(samples.get("kwarm_watched_deployments"), Some(&2.0), "watched Deployments");
    assert_eq!(samples.get("kwarm_images{state=\"failed\"}"), Some(&0.0));
    assert_eq!(samples.get("kwarm_active_pulls"), Some(&0.0));
    assert!(samples.get("kwarm_daemonset_applies_total{status=\"success\"}").is_some_and(|v| *v >= 1.0));
    assert!(samples.get("kwarm_reconcile_runs_total").is_some_and(|v| *v >= 1.0));
    let last_sync = samples.get("kwarm_last_successful_sync_timestamp_seconds").copied().unwrap_or_default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    assert!((now - last_sync).abs() < 600.0, "last sync {last_sync} is not recent (now {now})");
    assert!(
        samples.keys().any(|k| k.starts_with("kwarm_pull_duration_seconds_bucket")),
        "no pull duration histogram"
    );
    // Bounded labels: nothing keyed by node or image.
    for key in samples.keys() {
        assert!(!key.contains("node=") && !key.contains("image="), "unbounded label in {key}");
    }
    // GET and HEAD only on the admin port.
    let (code, _) = support::http_get(&manager.health, "/healthz").await?;
    assert_eq!(code, 200);
    manager.stop().await?;
    for n in [&ns, &apps] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn ready_only_after_every_watch_synced() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-ready-").await?;
    let user = format!("system:serviceaccount:{ns}:kwarm");
    let kubeconfig = support::log_dir().join(format!("{ns}.kubeconfig"));
    support::impersonating_kubeconfig(&user, &kubeconfig)?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), "127.0.0.1:5000/test/small:v1".into());
    let mut manager = Manager::start_with_kubeconfig("manager-ready", &env, &kubeconfig).await?;

    // Without rights nothing can be listed: alive, not ready.
    wait_until("/healthz to answer", Duration::from_secs(30), || async {
        Ok(match manager.health_get("/healthz").await {
            Ok(200) => Check::Done(()),
            other => Check::Pending(format!("{other:?}")),
        })
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manager.health_get("/readyz").await?, 503, "ready before any watch synced");

    // Grant the rights: the watches sync and the manager becomes ready.
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kwarm-admin", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "name": user}]
    }))?;
    Api::namespaced(client.clone(), &ns).create(&PostParams::default(), &binding).await?;
    let started = Instant::now();
    manager.wait_ready(Duration::from_secs(120)).await?;
    println!("ready {} ms after the RoleBinding", started.elapsed().as_millis());
    wait_holders_ready(&client, &ns, DS, 1, Duration::from_secs(120)).await?;
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}

#[tokio::test]
async fn two_replicas_one_leader_and_takeover() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-leader-").await?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), "127.0.0.1:5000/test/small:v1".into());
    env.insert("LEADER_ELECT".into(), "true".into());
    let mut first = Manager::start("manager-leader-a", &env).await?;
    first.wait_ready(Duration::from_secs(60)).await?;
    wait_holders_ready(&client, &ns, DS, 1, Duration::from_secs(120)).await?;
    let mut second = Manager::start("manager-leader-b", &env).await?;
    second.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let leader_of =
        |text: &str| parse_metrics(text).map(|s| s.get("kwarm_leader").copied().unwrap_or_default());
    let (a, b) = (leader_of(&first.metrics_text().await?)?, leader_of(&second.metrics_text().await?)?);
    assert_eq!((a, b), (1.0, 0.0), "exactly the first replica leads");
    let follower_applies = parse_metrics(&second.metrics_text().await?)?
        .get("kwarm_daemonset_applies_total{status=\"success\"}")
        .copied()
        .unwrap_or_default();
    assert_eq!(follower_applies, 0.0, "the follower wrote the DaemonSet");

    // Kill the leader without letting it release the lease: the follower takes over within the
    // lease duration (15 s) and heals a deleted DaemonSet.
    let (status, _) = first.signal("KILL").await?;
    ensure!(!status.success(), "SIGKILL should not exit cleanly");
    let killed = Instant::now();
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    api.delete(DS, &DeleteParams::background()).await?;
    wait_until("the follower to take over and restore the DaemonSet", Duration::from_secs(40), || async {
        Ok(match api.get_opt(DS).await? {
            Some(d) if d.metadata.deletion_timestamp.is_none() => Check::Done(()),
            _ => Check::Pending("no DaemonSet".into()),
        })
    })
    .await?;
    println!(
        "takeover after SIGKILL of the leader and DaemonSet restored: {} ms",
        killed.elapsed().as_millis()
    );
    assert_eq!(leader_of(&second.metrics_text().await?)?, 1.0);
    ensure!(second.log_text().contains("Became leader"), "no leadership log line");

    // SIGTERM releases the lease: a new replica takes over at once.
    let mut third = Manager::start("manager-leader-c", &env).await?;
    third.wait_ready(Duration::from_secs(60)).await?;
    let stopped = Instant::now();
    second.stop().await?;
    wait_until("the third replica to lead after a clean handover", Duration::from_secs(20), || async {
        let leader = leader_of(&third.metrics_text().await?)?;
        Ok(if leader == 1.0 { Check::Done(()) } else { Check::Pending(format!("kwarm_leader {leader}")) })
    })
    .await?;
    println!("handover after SIGTERM: {} ms", stopped.elapsed().as_millis());
    third.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}

#[tokio::test]
async fn status_shows_a_failing_image_with_its_reason() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-status-").await?;
    let missing = "127.0.0.1:5000/test/not-there:v1";
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), format!("good=127.0.0.1:5000/test/small:v1;bad={missing}"));
    let mut manager = Manager::start("manager-status", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    let text = wait_until("kwarm status to show the failure", Duration::from_secs(120), || async {
        let output = tokio::process::Command::new(support::kwarm_bin())
            .env_clear()
            .envs(&env)
            .env("KUBECONFIG", kubeconfig_path())
            .arg("status")
            .output()
            .await?;
        // 3: not warm, which a failing image is
        if output.status.code() != Some(3) {
            bail!("kwarm status exited {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let shows =
            text.contains(missing) && (text.contains("ErrImagePull") || text.contains("ImagePullBackOff"));
        Ok(if shows { Check::Done(text) } else { Check::Pending(text) })
    })
    .await?;
    println!("{text}");
    assert!(text.contains("Failures:"), "no failure section:\n{text}");
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}

/// `kwarm status ARGS` with exactly `env` and the admin kubeconfig: exit code, stdout, how long.
async fn kwarm_status(
    env: &BTreeMap<String, String>,
    args: &[&str],
) -> Result<(Option<i32>, String, Duration)> {
    let started = Instant::now();
    let output = tokio::process::Command::new(support::kwarm_bin())
        .env_clear()
        .envs(env)
        .env("KUBECONFIG", kubeconfig_path())
        .arg("status")
        .args(args)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.is_empty() {
        println!("kwarm status {args:?} stderr:\n{stderr}");
    }
    Ok((output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), started.elapsed()))
}

#[tokio::test]
async fn status_wait_exits_0_once_warm_and_3_at_its_timeout() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-wait-").await?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), "good=127.0.0.1:5000/test/small:v1".into());
    env.insert("DIGEST_CHECK_INTERVAL".into(), "0".into());
    let mut manager = Manager::start("manager-status-wait", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;

    // Right after the start the holders are still pulling: --wait returns 0 once they hold it.
    let (code, text, took) = kwarm_status(&env, &["--wait", "--timeout", "180s"]).await?;
    println!("warm after {} ms:\n{text}", took.as_millis());
    ensure!(code == Some(0), "--wait on a warmable image exited {code:?}:\n{text}");
    ensure!(text.contains(&format!("{ns}/{DS}")) && text.contains(" yes "), "no warm NAME row:\n{text}");
    let (code, _, _) = kwarm_status(&env, &[]).await?;
    ensure!(code == Some(0), "a warm DaemonSet: kwarm status exited {code:?}");

    // Without the manager's environment: the namespace flag and discovery, a StatusList.
    let (code, json, _) = kwarm_status(&BTreeMap::new(), &["-n", &ns, "-o", "json"]).await?;
    ensure!(code == Some(0), "discovered and warm: exited {code:?}:\n{json}");
    let list: serde_json::Value = serde_json::from_str(&json).context("status -o json")?;
    ensure!(list["apiVersion"] == "kwarm.io/v1alpha1" && list["kind"] == "StatusList", "{list}");
    ensure!(list["items"].as_array().map(Vec::len) == Some(1), "one kwarm DaemonSet in {ns}: {list}");
    ensure!(list["items"][0]["kind"] == "Status" && list["items"][0]["daemonset"] == DS, "{list}");
    ensure!(list["items"][0]["warm"] == true, "{list}");
    manager.stop().await?;

    // An image that cannot be pulled: never warm, so --wait gives up at its timeout with 3.
    let missing = "127.0.0.1:5000/test/not-there:v1";
    env.insert("IMAGES".into(), format!("good=127.0.0.1:5000/test/small:v1;bad={missing}"));
    let mut manager = Manager::start("manager-status-wait-bad", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    let (code, text, took) = kwarm_status(&env, &["--wait", "--timeout", "20s"]).await?;
    println!("gave up after {} ms:\n{text}", took.as_millis());
    ensure!(code == Some(3), "--wait on an image that cannot be pulled exited {code:?}:\n{text}");
    ensure!(took >= Duration::from_secs(18), "gave up after {took:?}, before its 20 s timeout");
    ensure!(took < Duration::from_secs(60), "--timeout 20s took {took:?}");
    ensure!(
        text.contains("Not warm:") && text.contains(missing),
        "the final report names the image:\n{text}"
    );
    let (code, json, _) = kwarm_status(&env, &["-o", "json"]).await?;
    let document: serde_json::Value = serde_json::from_str(&json).context("status -o json")?;
    ensure!(code == Some(3) && document["kind"] == "Status" && document["warm"] == false, "{document}");
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}
