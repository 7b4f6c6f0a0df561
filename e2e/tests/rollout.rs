//! The rollout gate on the real local cluster: a watched Deployment's new pod waits (scheduling
//! gate) until its new image is held on the real node and then starts without a pull; with the
//! gate off the same kind of change pulls. The webhook fails open when the manager is gone, a
//! pod whose image never gets warm is released at ROLLOUT_GATE_TIMEOUT with a Warning, a
//! follower never releases while a new leader continues the clocks, and `kwarm ungate` removes
//! the webhook and releases every gated pod.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};
use kwarm_e2e::{
    Check, REGISTRY, client, containerd_has_image, containerd_remove_image, create_namespace,
    delete_namespace, wait_until,
};
use serde_json::json;
use support::{Manager, base_env, free_port, kwarm_bin};

const GATE: &str = "kwarm.io/image-warm";

/// A labelled Deployment of `image` with one pod on the real node (FROM-scratch images: an init
/// container copies kwarm's sleep in).
fn deployment(name: &str, image: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kwarm.io/enabled": "true"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": support::scratch_pod_spec(image),
            },
        },
    }))?)
}

/// What a pod watch saw of each pod: its gates when first seen (as admitted), when it was first
/// seen and when it was first seen running.
#[derive(Debug, Clone)]
struct Seen {
    gated_at_creation: bool,
    image: String,
    created: Instant,
    running: Option<Instant>,
}

type PodLog = Arc<Mutex<BTreeMap<String, Seen>>>;

fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.name == GATE))
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Watches the pods of `ns` and records each one's first sight and first run.
fn watch_pods(client: &Client, ns: &str) -> (PodLog, tokio::task::JoinHandle<()>) {
    let log: PodLog = Arc::default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let seen = log.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let pod = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                _ => continue,
            };
            let mut seen = seen.lock().expect("pod log");
            let now = Instant::now();
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let entry = seen.entry(pod.name_any()).or_insert(Seen {
                gated_at_creation: has_gate(&pod),
                image,
                created: now,
                running: None,
            });
            if is_running(&pod) && entry.running.is_none() {
                entry.running = Some(now);
            }
        }
    });
    (log, task)
}

/// The pod of `image` the watch saw, once it runs.
async fn wait_running(log: &PodLog, image: &str, timeout: Duration) -> Result<(String, Seen)> {
    wait_until(&format!("a pod of {image} to run"), timeout, || async {
        let seen = log.lock().expect("pod log").clone();
        let pod = seen.iter().find(|(_, s)| s.image == image).map(|(n, s)| (n.clone(), s.clone()));
        Ok(match pod {
            Some((name, s)) if s.running.is_some() => Check::Done((name, s)),
            other => Check::Pending(format!("{other:?}")),
        })
    })
    .await
}

/// The first pod the watch saw that is none of `known`.
async fn new_pod(log: &PodLog, known: &[&String]) -> Result<(String, Seen)> {
    wait_until(&format!("a pod other than {known:?}"), Duration::from_secs(30), || async {
        let seen = log.lock().expect("pod log").clone();
        Ok(match seen.into_iter().find(|(n, _)| !known.contains(&n)) {
            Some(pod) => Check::Done(pod),
            None => Check::Pending(format!("{} pods, none new", known.len())),
        })
    })
    .await
}

/// Waits until the pod `name` no longer carries kwarm's gate.
async fn wait_released(pods: &Api<Pod>, name: &str, timeout: Duration) -> Result<()> {
    wait_until(&format!("{name} released"), timeout, || async {
        let pod = pods.get(name).await?;
        Ok(if has_gate(&pod) { Check::Pending("gated".into()) } else { Check::Done(()) })
    })
    .await
}

/// The kubelet's Pulled message for the `app` container of `pod`.
async fn pulled_message(client: &Client, ns: &str, pod: &str) -> Result<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_until(&format!("the Pulled event of {pod}"), Duration::from_secs(30), || async {
        let list = events
            .list(&ListParams::default().fields(&format!("involvedObject.name={pod},reason=Pulled")))
            .await?;
        let message = list
            .items
            .iter()
            .filter(|e| e.involved_object.field_path.as_deref() == Some("spec.containers{app}"))
            .find_map(|e| e.message.clone());
        Ok(match message {
            Some(m) => Check::Done(m),
            None => Check::Pending(format!("{} Pulled events", list.items.len())),
        })
    })
    .await
}

/// Events of `reason` on `kind/name` in `ns`.
async fn events_of(client: &Client, ns: &str, kind: &str, name: &str, reason: &str) -> Result<Vec<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .filter_map(|e| e.note)
        .collect())
}

/// The manager's environment: the gate on for Deployments in `apps`, the webhook on a loopback
/// port the API server calls by URL (the local cluster has no kube-proxy).
fn gate_env(ns: &str, apps: &str, port: u16) -> BTreeMap<String, String> {
    let mut env = base_env(ns);
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), apps.into());
    env.insert("ROLLOUT_GATE".into(), "true".into());
    env.insert("WEBHOOK_BIND_ADDRESS".into(), format!("127.0.0.1:{port}"));
    env.insert("WEBHOOK_URL".into(), format!("https://127.0.0.1:{port}/mutate"));
    env.insert("WEBHOOK_CONFIGURATION".into(), format!("kwarm-e2e-{ns}"));
    env
}

/// Waits until kwarm's webhook configuration names `url`.
async fn wait_webhook(client: &Client, name: &str, url: &str) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    wait_until(
        &format!("MutatingWebhookConfiguration {name} calling {url}"),
        Duration::from_secs(60),
        || async {
            let hook = api.get_opt(name).await?;
            let current = hook
                .as_ref()
                .and_then(|h| h.webhooks.as_ref())
                .and_then(|w| w.first())
                .and_then(|w| w.client_config.url.clone());
            Ok(match current.as_deref() {
                Some(u) if u == url => Check::Done(()),
                other => Check::Pending(format!("{other:?}")),
            })
        },
    )
    .await
}

async fn set_image(api: &Api<Deployment>, name: &str, image: &str, labels: serde_json::Value) -> Result<()> {
    let patch = json!({
        "metadata": {"labels": labels},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch)).await?;
    Ok(())
}

async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<()> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await?;
    Ok(())
}

/// `kwarm ungate` with the manager's environment and the admin kubeconfig.
async fn ungate(env: &BTreeMap<String, String>) -> Result<String> {
    let output = tokio::process::Command::new(kwarm_bin())
        .arg("ungate")
        .env_clear()
        .envs(env)
        .env("KUBECONFIG", kwarm_e2e::kubeconfig_path())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!("kwarm ungate failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(stdout)
}

#[tokio::test]
async fn a_rollout_waits_for_its_new_image_and_starts_without_a_pull() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-rollout-").await?;
    let apps = create_namespace(&client, "e2e-rollout-apps-").await?;
    let (gated_image, ungated_image) =
        (format!("{REGISTRY}/test/big:gated"), format!("{REGISTRY}/test/big:ungated"));
    for image in [&gated_image, &ungated_image] {
        containerd_remove_image(image).await?;
        if containerd_has_image(image).await? {
            bail!("{image} is still in containerd: the test would prove nothing");
        }
    }
    let port = free_port()?;
    let env = gate_env(&ns, &apps, port);
    let mut manager = Manager::start("rollout", &env).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps);
    let (log, watch) = watch_pods(&client, &apps);
    let result = async {
        manager.wait_ready(Duration::from_secs(30)).await?;
        wait_webhook(&client, &format!("kwarm-e2e-{ns}"), &format!("https://127.0.0.1:{port}/mutate")).await?;
        let small = format!("{REGISTRY}/test/small:v1");
        deployments.create(&PostParams::default(), &deployment("app", &small)?).await?;
        let (first, seen) = wait_running(&log, &small, Duration::from_secs(90)).await?;
        // the first pod may have waited for its image too; what matters is the rollout below
        eprintln!("first pod {first}: gated at creation: {}", seen.gated_at_creation);

        // The rollout to an image the node never held: the new pod waits, the holder pulls.
        set_image(&deployments, "app", &gated_image, json!({})).await?;
        let (pod, seen) = wait_running(&log, &gated_image, Duration::from_secs(120)).await?;
        if !seen.gated_at_creation {
            bail!("the new pod {pod} of {gated_image} was created without the scheduling gate {GATE}");
        }
        let message = pulled_message(&client, &apps, &pod).await?;
        if !message.contains("already present on machine") {
            bail!("the gated pod {pod} pulled its image itself: {message:?}");
        }
        let gated_wait = seen.running.unwrap_or(seen.created) - seen.created;
        let released = events_of(&client, &apps, "Pod", &pod, "ImagesWarm").await?;
        if released.is_empty() {
            bail!("no ImagesWarm Event on the released pod {pod}");
        }
        let metrics = manager.metrics_text().await?;
        if !metrics.contains("kwarm_rollout_gate_releases_total{reason=\"warm\"} 1")
            && !metrics.contains("kwarm_rollout_gate_releases_total{reason=\"warm\"} 2")
        {
            bail!("kwarm_rollout_gate_releases_total{{reason=\"warm\"}} missing:\n{metrics}");
        }

        // The same kind of change with the gate off (the Deployment opts out first): the pod pulls.
        let opt_out = json!({"metadata": {"labels": {"kwarm.io/rollout-gate": "false"}}});
        deployments.patch("app", &PatchParams::default(), &Patch::Merge(opt_out)).await?;
        // the webhook decides from what the manager has seen: give its watch a moment
        tokio::time::sleep(Duration::from_secs(2)).await;
        set_image(&deployments, "app", &ungated_image, json!({})).await?;
        let (pod, seen) = wait_running(&log, &ungated_image, Duration::from_secs(120)).await?;
        if seen.gated_at_creation {
            bail!("the pod {pod} of a Deployment labelled kwarm.io/rollout-gate=false was gated");
        }
        let ungated_message = pulled_message(&client, &apps, &pod).await?;
        let ungated_wait = seen.running.unwrap_or(seen.created) - seen.created;
        eprintln!(
            "rollout to a 64 MiB image the node never held: gate on: created -> running {:.1} s, kubelet: {message}",
            gated_wait.as_secs_f64()
        );
        eprintln!(
            "                                               gate off: created -> running {:.1} s, kubelet: {ungated_message}",
            ungated_wait.as_secs_f64()
        );
        anyhow::Ok(())
    }
    .await;
    watch.abort();
    if let Err(e) = &result {
        eprintln!("{e:#}\nmanager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    ungate(&env).await?;
    delete_namespace(&client, &apps, Duration::from_secs(60)).await?;
    delete_namespace(&client, &ns, Duration::from_secs(60)).await?;
    result
}

#[tokio::test]
async fn gates_fail_open_time_out_survive_the_leader_and_go_with_ungate() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-rollout-fail-").await?;
    let apps = create_namespace(&client, "e2e-rollout-fail-apps-").await?;
    let missing = format!("{REGISTRY}/test/never-pushed:v1");
    let (port_a, port_b) = (free_port()?, free_port()?);
    let configuration = format!("kwarm-e2e-{ns}");
    let mut env_a = gate_env(&ns, &apps, port_a);
    env_a.insert("LEADER_ELECT".into(), "true".into());
    env_a.insert("ROLLOUT_GATE_TIMEOUT".into(), "40s".into());
    // the failing image is not quarantined within the test: it keeps its pods waiting
    env_a.insert("PULL_TIMEOUT".into(), "1h".into());
    let mut env_b = env_a.clone();
    env_b.insert("WEBHOOK_BIND_ADDRESS".into(), format!("127.0.0.1:{port_b}"));
    env_b.insert("WEBHOOK_URL".into(), format!("https://127.0.0.1:{port_b}/mutate"));
    let mut a = Manager::start("rollout-leader", &env_a).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let (log, watch) = watch_pods(&client, &apps);
    let mut b: Option<Manager> = None;
    let result = async {
        a.wait_ready(Duration::from_secs(30)).await?;
        wait_webhook(&client, &configuration, &format!("https://127.0.0.1:{port_a}/mutate")).await?;
        let mut follower = Manager::start("rollout-follower", &env_b).await?;
        follower.wait_ready(Duration::from_secs(30)).await?;
        let b = b.insert(follower);

        // A pod whose image never gets warm: gated, then released at the timeout by the leader.
        let created = Instant::now();
        deployments.create(&PostParams::default(), &deployment("stuck", &missing)?).await?;
        let first = new_pod(&log, &[]).await?;
        if !first.1.gated_at_creation {
            bail!("the pod {} of {missing} (never warm) was not gated", first.0);
        }
        let status = support::status_json(&env_a).await?;
        let listed = &status["rolloutGate"]["gated"];
        let not_warm = listed[0]["notWarm"].as_array().cloned().unwrap_or_default();
        if listed[0]["pod"] != first.0.as_str() || !not_warm.contains(&json!(missing)) {
            bail!("kwarm status should list {} waiting for {missing}: {status}", first.0);
        }
        wait_released(&pods, &first.0, Duration::from_secs(90)).await?;
        let waited = created.elapsed();
        if waited < Duration::from_secs(38) {
            bail!(
                "{} was released after {waited:?}, before ROLLOUT_GATE_TIMEOUT=40s, with {missing} not warm",
                first.0
            );
        }
        let (on_pod, on_deployment) = wait_until(
            "Warning RolloutGateTimeout on the pod and the Deployment",
            Duration::from_secs(30),
            || async {
                let on_pod = events_of(&client, &apps, "Pod", &first.0, "RolloutGateTimeout").await?;
                let on_deployment =
                    events_of(&client, &apps, "Deployment", "stuck", "RolloutGateTimeout").await?;
                Ok(if on_pod.is_empty() || on_deployment.is_empty() {
                    Check::Pending(format!("{on_pod:?} {on_deployment:?}"))
                } else {
                    Check::Done((on_pod, on_deployment))
                })
            },
        )
        .await?;
        if !on_pod[0].contains(&missing) || !on_deployment[0].contains(&first.0) {
            bail!("the Warnings should name {missing} and the pod: {on_pod:?} {on_deployment:?}");
        }
        if b.log_text().contains("pod released") {
            bail!("the follower released a pod:\n{}", b.log_text());
        }

        // A second pod gated by the leader; the leader dies; the new leader keeps its clock.
        scale(&deployments, "stuck", 2).await?;
        let second_created = Instant::now();
        let second = new_pod(&log, &[&first.0]).await?;
        if !second.1.gated_at_creation {
            bail!("the second pod {} was not gated", second.0);
        }
        a.signal("KILL").await?;

        // The webhook is gone (its configuration still names the dead leader): pods are admitted
        // ungated at once.
        let asked = Instant::now();
        scale(&deployments, "stuck", 3).await?;
        let third = new_pod(&log, &[&first.0, &second.0]).await?;
        eprintln!(
            "with the webhook unreachable the pod was created in {:.1} s",
            asked.elapsed().as_secs_f64()
        );
        if third.1.gated_at_creation {
            bail!("the pod {} was gated although the webhook was unreachable", third.0);
        }

        wait_released(&pods, &second.0, Duration::from_secs(120)).await?;
        let waited = second_created.elapsed();
        if waited < Duration::from_secs(38) {
            bail!("{} was released {waited:?} after its creation, before the timeout", second.0);
        }
        if !b.log_text().contains("pod released anyway") {
            bail!("the new leader did not release {}:\n{}", second.0, b.log_text());
        }

        // The new leader's webhook gates the next pod; `kwarm ungate` releases it and removes
        // the webhook.
        wait_webhook(&client, &configuration, &format!("https://127.0.0.1:{port_b}/mutate")).await?;
        scale(&deployments, "stuck", 4).await?;
        let fourth = new_pod(&log, &[&first.0, &second.0, &third.0]).await?;
        if !fourth.1.gated_at_creation {
            bail!("the pod {} was not gated by the new leader", fourth.0);
        }
        let out = ungate(&env_b).await?;
        if !out.contains(&format!("{apps}/{}", fourth.0))
            || !out.contains("Deleted MutatingWebhookConfiguration")
        {
            bail!("kwarm ungate should delete the webhook and release {}: {out}", fourth.0);
        }
        if has_gate(&pods.get(&fourth.0).await?) {
            bail!("{} still gated after kwarm ungate", fourth.0);
        }
        let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        if hooks.get_opt(&configuration).await?.is_some() {
            bail!("MutatingWebhookConfiguration {configuration} still there after kwarm ungate");
        }
        anyhow::Ok(())
    }
    .await;
    watch.abort();
    if let Err(e) = &result {
        eprintln!("{e:#}\nleader log:\n{}", a.log_text());
        if let Some(b) = &b {
            eprintln!("follower log:\n{}", b.log_text());
        }
    }
    if let Some(mut b) = b {
        b.stop().await?;
    }
    let _ = a.stop().await;
    ungate(&env_a).await.context("cleanup")?;
    delete_namespace(&client, &apps, Duration::from_secs(60)).await?;
    delete_namespace(&client, &ns, Duration::from_secs(60)).await?;
    result
}

#[tokio::test]
async fn the_chart_runs_the_rollout_gate_with_its_own_rights_and_uninstall_releases() -> Result<()> {
    use support::tools::helm;
    // rendered: no webhook rights with the gate off, a clear refusal where they cannot be granted
    let off = helm(&["template", "kwarm", "deploy/helm"]).await?;
    if off.contains("mutatingwebhookconfigurations") || off.contains("ROLLOUT_GATE") {
        bail!("the chart grants the rollout gate's rights with the gate off:\n{off}");
    }
    let refused = helm(&[
        "template",
        "kwarm",
        "deploy/helm",
        "--set",
        "rolloutGate.enabled=true",
        "--set",
        "rbac.clusterWide=false",
    ])
    .await
    .expect_err("a rollout gate without cluster-wide RBAC");
    if !format!("{refused:#}").contains("needs rbac.clusterWide=true") {
        bail!("unclear refusal: {refused:#}");
    }
    // the chart's booleans mean to its RBAC what they mean to the manager ("True", 0)
    let inherit =
        helm(&["template", "kwarm", "deploy/helm", "--set", "configMap.inheritPullSecrets=True"]).await?;
    if !inherit.contains("verbs: [get, list, create, patch, delete]") {
        bail!("inheritPullSecrets=True (true to the manager) did not grant the mirrors' rights:\n{inherit}");
    }
    let unwatched =
        helm(&["template", "kwarm", "deploy/helm", "--set", "configMap.watchDeployments=0"]).await?;
    if unwatched.contains("kind: ClusterRole\n") {
        bail!("watchDeployments=0 (false to the manager) still granted cluster-wide rights:\n{unwatched}");
    }

    // installed: the in-cluster manager (host network: the API server calls it by URL), with
    // only the chart's rights, issues its certificate, configures the webhook and gates a pod
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-rollout-helm-").await?;
    let apps = create_namespace(&client, "e2e-rollout-helm-apps-").await?;
    let port = free_port()?;
    let missing = format!("{REGISTRY}/test/never-pushed:v1");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps);
    let result = async {
        helm(&[
            "install",
            "kwarm",
            "deploy/helm",
            "-n",
            &ns,
            "-f",
            "deploy/helm/ci/local-cluster-values.yaml",
            "--set",
            "metrics.port=18380",
            "--set",
            "health.port=18381",
            "--set",
            &format!("configMap.images=small={REGISTRY}/test/small:v1"),
            "--set-string",
            &format!("configMap.watchNamespaces={apps}"),
            "--set",
            "rolloutGate.enabled=true",
            "--set",
            &format!("rolloutGate.port={port}"),
            "--set",
            &format!("rolloutGate.url=https://127.0.0.1:{port}/mutate"),
            "--set",
            "configMap.pullTimeout=1h",
            "--wait",
            "--timeout",
            "120s",
        ])
        .await?;
        let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let configuration =
            wait_until("the manager's webhook configuration", Duration::from_secs(60), || async {
                let list =
                    hooks.list(&ListParams::default().labels(&format!("kwarm.io/namespace={ns}"))).await?;
                Ok(match list.items.first() {
                    Some(h) => Check::Done(h.name_any()),
                    None => Check::Pending("none yet".into()),
                })
            })
            .await?;
        deployments.create(&PostParams::default(), &deployment("stuck", &missing)?).await?;
        let pod = wait_until("a pod of stuck", Duration::from_secs(30), || async {
            let list = pods.list(&ListParams::default()).await?;
            Ok(match list.items.into_iter().next() {
                Some(p) => Check::Done(p),
                None => Check::Pending("no pod".into()),
            })
        })
        .await?;
        if !has_gate(&pod) {
            bail!(
                "the pod {} of {missing} (never warm) was not gated by the chart's manager",
                pod.name_any()
            );
        }
        // uninstall (pre-delete hook `kwarm ungate`) deletes the webhook and releases the pod
        helm(&["uninstall", "kwarm", "-n", &ns, "--wait", "--timeout", "90s"]).await?;
        if has_gate(&pods.get(&pod.name_any()).await?) {
            bail!("{} still gated after helm uninstall", pod.name_any());
        }
        if hooks.get_opt(&configuration).await?.is_some() {
            bail!("MutatingWebhookConfiguration {configuration} still there after helm uninstall");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        let logs = support::tools::kubectl(&["logs", "-n", &ns, "deploy/kwarm", "--tail", "60"], None).await;
        eprintln!("{e:#}\nmanager log:\n{}", logs.unwrap_or_else(|e| format!("{e:#}")));
    }
    let _ = helm(&["uninstall", "kwarm", "-n", &ns, "--wait", "--timeout", "90s"]).await;
    delete_namespace(&client, &apps, Duration::from_secs(60)).await?;
    delete_namespace(&client, &ns, Duration::from_secs(90)).await?;
    result
}
