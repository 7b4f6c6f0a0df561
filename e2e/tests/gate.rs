//! The node warm-up gate on the real local cluster: nodes that join with the gate taint get their
//! holders, and kwarm removes exactly that taint once they hold every image (or at the timeout),
//! leaving every other taint alone; a user pod waiting for the gate starts without a pull.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use kwarm_e2e::{
    Check, REAL_NODE, REGISTRY, client, containerd_has_image, containerd_remove_image, create_namespace,
    delete_namespace, delete_nodes, kwok_node, wait_until,
};
use serde_json::json;
use support::{Manager, base_env};

const GATE: &str = "kwarm.io/warming";

fn small() -> String {
    format!("{REGISTRY}/test/small:v1")
}

/// Taint keys of a node, in order.
async fn taint_keys(nodes: &Api<Node>, name: &str) -> Result<Vec<String>> {
    let node = nodes.get(name).await?;
    Ok(node.spec.and_then(|s| s.taints).unwrap_or_default().into_iter().map(|t| t.key).collect())
}

/// Adds a taint as controllers do: read, append, write back with the resourceVersion read, and
/// on a conflict (someone wrote in between, kwarm's release for instance) read again.
async fn add_taint(nodes: &Api<Node>, node: &str, key: &str, effect: &str, stamped: bool) -> Result<()> {
    for _ in 0..20 {
        let mut current = nodes.get(node).await?;
        let taints = current.spec.get_or_insert_with(Default::default).taints.get_or_insert_with(Vec::new);
        taints.push(Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: stamped.then(|| Time(k8s_openapi::jiff::Timestamp::now())),
            value: None,
        });
        match nodes.replace(node, &PostParams::default(), &current).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("could not add taint {key} to {node}: conflicts 20 times in a row")
}

/// kwarm's Events about a node since `since` (cluster-scoped objects' Events live in `default`):
/// reason and message.
async fn node_events(client: &Client, node: &str, since: SystemTime) -> Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let params =
        ListParams::default().fields(&format!("involvedObject.kind=Node,involvedObject.name={node}"));
    Ok(events
        .list(&params)
        .await?
        .items
        .into_iter()
        .filter(|e| e.reporting_component.as_deref() == Some("kwarm"))
        .filter(|e| {
            e.event_time.as_ref().is_some_and(|t| SystemTime::from(t.0) + Duration::from_secs(1) >= since)
        })
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

async fn wait_untainted(nodes: &Api<Node>, node: &str, timeout: Duration) -> Result<Instant> {
    wait_until(&format!("the gate taint to leave node {node}"), timeout, || async {
        let keys = taint_keys(nodes, node).await?;
        Ok(if keys.iter().any(|k| k == GATE) {
            Check::Pending(format!("taints {keys:?}"))
        } else {
            Check::Done(Instant::now())
        })
    })
    .await
}

/// Removes the gate taint from the real node when a test ends, whatever happened: a gate left on
/// the real node would keep every later test's pods Pending.
struct RealNodeGate;

impl Drop for RealNodeGate {
    fn drop(&mut self) {
        let Ok(kubectl) = support::tools::tool("kubectl") else { return };
        let _ = std::process::Command::new(kubectl)
            .args(["taint", "node", REAL_NODE, &format!("{GATE}-")])
            .env("KUBECONFIG", kwarm_e2e::kubeconfig_path())
            .output();
    }
}

#[tokio::test]
async fn nodes_joining_gated_are_released_once_warm_and_other_taints_stay() -> Result<()> {
    let started = SystemTime::now();
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-gate-kwok-").await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let label = ("kwarm-e2e-gate".to_string(), ns.clone());
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), small());
    env.insert("NODE_SELECTOR".into(), json!({label.0.clone(): label.1.clone()}).to_string());
    env.insert("NODE_GATE_TAINT".into(), GATE.into());
    let mut manager = Manager::start("gate-kwok", &env).await?;
    manager.wait_ready(Duration::from_secs(30)).await?;

    // Three selected nodes and one the holders never run on join with the gate taint.
    let selected: Vec<String> = (0..3).map(|i| format!("gate-{ns}-{i}")).collect();
    let elsewhere = format!("gate-{ns}-elsewhere");
    for name in selected.iter().chain([&elsewhere]) {
        let mut node = kwok_node(name, &BTreeMap::from([label.clone()]));
        if name == &elsewhere {
            node.metadata.labels.as_mut().context("labels")?.remove(&label.0);
        }
        node.spec.as_mut().context("spec")?.taints =
            Some(vec![Taint { key: GATE.into(), effect: "NoSchedule".into(), ..Default::default() }]);
        nodes.create(&PostParams::default(), &node).await?;
    }
    let all: Vec<String> = selected.iter().cloned().chain([elsewhere.clone()]).collect();

    // A second writer adds taints to the same nodes while kwarm releases them.
    let writer = {
        let (nodes, all) = (nodes.clone(), all.clone());
        tokio::spawn(async move {
            for round in 0..5 {
                for name in &all {
                    add_taint(
                        &nodes,
                        name,
                        &format!("example.com/second-writer-{round}"),
                        "PreferNoSchedule",
                        false,
                    )
                    .await?;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            anyhow::Ok(())
        })
    };

    let result = async {
        for name in &all {
            wait_untainted(&nodes, name, Duration::from_secs(90)).await?;
        }
        writer.await??;
        for name in &all {
            let keys = taint_keys(&nodes, name).await?;
            for round in 0..5 {
                let key = format!("example.com/second-writer-{round}");
                if !keys.contains(&key) {
                    bail!("node {name} lost the second writer's taint {key}: {keys:?}");
                }
            }
        }
        // The holders ran there: their pods are on every selected node, and none elsewhere.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let on: Vec<String> = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=kwarm"))
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect();
        for name in &selected {
            if !on.contains(name) {
                bail!("no holder pod on {name} (holders on {on:?})");
            }
        }
        if on.contains(&elsewhere) {
            bail!("a holder landed on {elsewhere}, which NODE_SELECTOR does not select");
        }
        wait_until("the release Events on the nodes", Duration::from_secs(30), || async {
            let mut missing = Vec::new();
            for name in &selected {
                let events = node_events(&client, name, started).await?;
                if !events.iter().any(|(r, m)| r == "NodeWarm" && m.starts_with("warm: 1 images in ")) {
                    missing.push(format!("{name}: {events:?}"));
                }
            }
            let events = node_events(&client, &elsewhere, started).await?;
            if !events.iter().any(|(r, _)| r == "NodeNotSelected") {
                missing.push(format!("{elsewhere}: {events:?}"));
            }
            Ok(if missing.is_empty() { Check::Done(()) } else { Check::Pending(missing.join("; ")) })
        })
        .await?;
        let metrics = manager.metrics_text().await?;
        for line in [
            "kwarm_node_gate_releases_total{reason=\"warm\"} 3",
            "kwarm_node_gate_releases_total{reason=\"not_selected\"} 1",
            "kwarm_gated_nodes 0",
            "kwarm_node_gate_duration_seconds_count 4",
        ] {
            if !metrics.lines().any(|l| l == line) {
                bail!(
                    "no `{line}` in /metrics:\n{}",
                    metrics.lines().filter(|l| l.contains("gate")).collect::<Vec<_>>().join("\n")
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("{e:#}\nmanager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    // the namespace first: KWOK deletes the holder pods only while their nodes exist
    delete_namespace(&client, &ns, Duration::from_secs(60)).await?;
    delete_nodes(&client, &all).await?;
    result
}

#[tokio::test]
async fn a_node_that_cannot_get_warm_is_released_at_the_timeout_even_across_a_restart() -> Result<()> {
    let started = SystemTime::now();
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-gate-timeout-").await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let missing = format!("{REGISTRY}/test/never-pushed:v1");
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), format!("good={};bad={missing}", small()));
    env.insert("NODE_GATE_TAINT".into(), GATE.into());
    env.insert("NODE_GATE_TIMEOUT".into(), "20s".into());
    // not quarantined within the test: the failing image keeps holding the gate
    env.insert("PULL_TIMEOUT".into(), "1h".into());
    let _untaint = RealNodeGate;
    add_taint(&nodes, REAL_NODE, GATE, "NoSchedule", true).await?;
    let tainted = Instant::now();
    let mut manager = Manager::start("gate-timeout", &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(30)).await?;
        // halfway, the manager restarts: the clock comes from the node, so it goes on
        tokio::time::sleep(Duration::from_secs(10)).await;
        if !taint_keys(&nodes, REAL_NODE).await?.iter().any(|k| k == GATE) {
            bail!("the gate opened within 10 s, before NODE_GATE_TIMEOUT=20s, with {missing} not held");
        }
        // what an operator sees meanwhile
        let status = support::status_json(&env).await?;
        let gated = &status["nodeGate"]["gated"];
        if gated[0]["node"] != REAL_NODE || gated[0]["notWarm"] != json!([missing]) {
            bail!("kwarm status should show {REAL_NODE} gated, waiting for {missing}: {status}");
        }
        manager.stop().await?;
        manager = Manager::start("gate-timeout-restarted", &env).await?;
        manager.wait_ready(Duration::from_secs(30)).await?;
        let released = wait_untainted(&nodes, REAL_NODE, Duration::from_secs(90)).await?;
        let waited = released - tainted;
        // timeAdded has whole seconds: the gate may open up to a second before 20 s from here;
        // a clock that restarted with the manager would open it 10 s later than that
        if waited < Duration::from_secs(18) || waited >= Duration::from_secs(29) {
            bail!("the gate opened {waited:?} after the taint, not at NODE_GATE_TIMEOUT=20s");
        }
        let events = wait_until("the NodeGateTimeout Event", Duration::from_secs(30), || async {
            let events = node_events(&client, REAL_NODE, started).await?;
            Ok(match events.iter().find(|(r, _)| r == "NodeGateTimeout") {
                Some((_, message)) => Check::Done(message.clone()),
                None => Check::Pending(format!("{events:?}")),
            })
        })
        .await?;
        if !events.contains(&missing) || events.contains(&small()) {
            bail!("the Warning should name {missing} (not held) and not {} (held): {events}", small());
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("{e:#}\nmanager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(60)).await?;
    result
}

/// A pod of `image` (FROM scratch: an init container copies kwarm's sleep in) on the real node by
/// node selector, so the scheduler (and so the gate) decides when it may run there.
fn user_pod(name: &str, image: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({"metadata": {"name": name}, "spec": support::scratch_pod_spec(image)}))?)
}

#[tokio::test]
async fn a_user_pod_waits_for_the_gate_and_starts_without_a_pull() -> Result<()> {
    let started = SystemTime::now();
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-gate-real-").await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let image = format!("{REGISTRY}/test/small:v3");
    containerd_remove_image(&image).await?;
    if containerd_has_image(&image).await? {
        bail!("{image} is still in containerd: the test would prove nothing");
    }
    let _untaint = RealNodeGate;
    add_taint(&nodes, REAL_NODE, GATE, "NoSchedule", true).await?;

    // The user pod comes first: it must wait, since nobody opens the gate yet.
    pods.create(&PostParams::default(), &user_pod("app", &image)?).await?;
    wait_until("the user pod to be unschedulable because of the gate", Duration::from_secs(30), || async {
        let pod = pods.get("app").await?;
        let status = pod.status.unwrap_or_default();
        let unschedulable =
            status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "PodScheduled");
        Ok(match unschedulable {
            // the scheduler does not name the taint; the gate is the only one on the node
            Some(c)
                if c.status == "False"
                    && c.message.as_deref().is_some_and(|m| m.contains("untolerated taint")) =>
            {
                Check::Done(())
            }
            other => Check::Pending(format!(
                "PodScheduled {other:?}, node {:?}",
                pod.spec.and_then(|s| s.node_name)
            )),
        })
    })
    .await?;

    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), image.clone());
    env.insert("NODE_GATE_TAINT".into(), GATE.into());
    let mut manager = Manager::start("gate-real", &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(30)).await?;
        wait_untainted(&nodes, REAL_NODE, Duration::from_secs(90)).await?;
        if !containerd_has_image(&image).await? {
            bail!("the gate opened but {image} is not in containerd");
        }
        let message = wait_until("the user pod's Pulled event", Duration::from_secs(60), || async {
            let events: Api<Event> = Api::namespaced(client.clone(), &ns);
            let params = ListParams::default().fields("involvedObject.name=app,reason=Pulled");
            let pulled: Vec<String> = events
                .list(&params)
                .await?
                .items
                .into_iter()
                .filter_map(|e| e.message)
                .filter(|m| m.contains(&image))
                .collect();
            Ok(match pulled.first() {
                Some(m) => Check::Done(m.clone()),
                None => Check::Pending("no Pulled event for the app container yet".into()),
            })
        })
        .await?;
        if !message.contains("already present on machine") {
            bail!("the user pod pulled its image although the gate waited for it: {message}");
        }
        let events = node_events(&client, REAL_NODE, started).await?;
        if !events.iter().any(|(r, m)| r == "NodeWarm" && m.contains("warm: 1 images")) {
            bail!("no NodeWarm Event on the real node: {events:?}");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("{e:#}\nmanager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(60)).await?;
    result
}

#[tokio::test]
async fn the_chart_grants_the_gate_its_rights_only_when_it_is_on() -> Result<()> {
    use support::tools::helm;
    // rendered: no node rights without the gate, and a clear refusal where they cannot be granted
    let off = helm(&["template", "kwarm", "deploy/helm"]).await?;
    if off.contains("resources: [nodes]") {
        bail!("the chart grants node rights with the gate off:\n{off}");
    }
    let refused = helm(&[
        "template",
        "kwarm",
        "deploy/helm",
        "--set",
        "configMap.nodeGateTaint=kwarm.io/warming",
        "--set",
        "rbac.clusterWide=false",
    ])
    .await
    .expect_err("a gate without cluster-wide RBAC");
    if !format!("{refused:#}").contains("needs rbac.clusterWide=true") {
        bail!("unclear refusal: {refused:#}");
    }

    // installed: the in-cluster manager, with only the chart's rights, opens a node's gate
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-gate-helm-").await?;
    let taint = format!("kwarm.io/warming-{}", ns.rsplit('-').next().unwrap_or("x"));
    let node = format!("gate-{ns}");
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
            "metrics.port=18280",
            "--set",
            "health.port=18281",
            "--set",
            &format!("configMap.images=small={}", small()),
            "--set-string",
            &format!("configMap.nodeGateTaint={taint}"),
            "--set-string",
            &format!("configMap.watchNamespaces={ns}"),
            "--wait",
            "--timeout",
            "120s",
        ])
        .await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let mut gated = kwok_node(&node, &BTreeMap::new());
        gated.spec.as_mut().context("spec")?.taints =
            Some(vec![Taint { key: taint.clone(), effect: "NoSchedule".into(), ..Default::default() }]);
        nodes.create(&PostParams::default(), &gated).await?;
        // the chart's holders run on the real node only: the fake node is released at once
        wait_until(&format!("the gate taint {taint} to leave {node}"), Duration::from_secs(60), || async {
            let keys = taint_keys(&nodes, &node).await?;
            Ok(if keys.contains(&taint) {
                Check::Pending(format!("taints {keys:?}"))
            } else {
                Check::Done(())
            })
        })
        .await?;

        // uninstall opens the gates the manager has not opened yet (pre-delete hook `kwarm ungate`)
        support::tools::kubectl(&["scale", "-n", &ns, "deploy/kwarm", "--replicas=0"], None).await?;
        support::tools::wait_no_pods(
            &client,
            &ns,
            "app.kubernetes.io/name=kwarm-manager",
            Duration::from_secs(60),
        )
        .await?;
        add_taint(&nodes, &node, &taint, "NoSchedule", false).await?;
        add_taint(&nodes, &node, "example.com/not-kwarms", "NoSchedule", false).await?;
        helm(&["uninstall", "kwarm", "-n", &ns, "--wait", "--timeout", "90s"]).await?;
        let keys = taint_keys(&nodes, &node).await?;
        if keys != ["example.com/not-kwarms"] {
            bail!("after helm uninstall the node should keep only the other taint: {keys:?}");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        let logs = support::tools::kubectl(&["logs", "-n", &ns, "deploy/kwarm", "--tail", "40"], None).await;
        eprintln!("{e:#}\nmanager log:\n{}", logs.unwrap_or_else(|e| format!("{e:#}")));
    }
    let _ = helm(&["uninstall", "kwarm", "-n", &ns, "--wait", "--timeout", "90s"]).await;
    delete_nodes(&client, &[node]).await?;
    delete_namespace(&client, &ns, Duration::from_secs(90)).await?;
    result
}

/// The node rules of the ClusterRoles among `objects`, and the ConfigMap's NODE_GATE_TAINT.
fn gate_rights(objects: &[serde_json::Value]) -> (Vec<String>, Option<String>) {
    let mut verbs = Vec::new();
    for role in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            if rule["resources"].as_array().is_some_and(|r| r.iter().any(|x| x == "nodes")) {
                verbs.extend(
                    rule["verbs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .map(String::from),
                );
            }
        }
    }
    let taint = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .and_then(|c| c["data"]["NODE_GATE_TAINT"].as_str())
        .map(String::from);
    (verbs, taint)
}

#[tokio::test]
async fn the_openshift_template_and_the_kustomize_component_grant_the_gate_its_rights() -> Result<()> {
    use support::tools::{kubectl, process_template, yaml_documents};
    let want: Vec<String> = ["get", "list", "watch", "patch"].map(String::from).to_vec();

    // OpenShift: node-gate.yaml next to the usual three; NODE_GATE_TAINT through configmap.yaml
    let rbac = process_template(&["openshift/node-gate.yaml", "-p", "NAMESPACE=team-cache"]).await?;
    let items = rbac["items"].as_array().context("items")?.clone();
    if gate_rights(&items).0 != want {
        bail!("openshift/node-gate.yaml does not grant {want:?} on nodes: {rbac}");
    }
    let binding = items.iter().find(|o| o["kind"] == "ClusterRoleBinding").context("a ClusterRoleBinding")?;
    if binding["subjects"][0]["namespace"] != "team-cache" {
        bail!("the binding does not name the project's ServiceAccount: {binding}");
    }
    kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rbac.to_string())).await?;
    let config =
        process_template(&["openshift/configmap.yaml", "-p", "NODE_GATE_TAINT=kwarm.io/warming"]).await?;
    let config = config["items"].as_array().context("items")?.clone();
    if gate_rights(&config).1.as_deref() != Some("kwarm.io/warming") {
        bail!("configmap.yaml does not carry NODE_GATE_TAINT: {config:?}");
    }
    support::tools::kwarm_check(support::tools::find(&config, "ConfigMap")?).await?;
    let base = process_template(&["openshift/serviceaccount.yaml"]).await?;
    if !gate_rights(base["items"].as_array().context("items")?).0.is_empty() {
        bail!("serviceaccount.yaml grants node rights without the gate");
    }

    // kustomize: the component added to an overlay of the base
    // (kustomize takes relative paths only; the directory is _output/e2e-install/<name>)
    let dir = support::tools::tempdir("gate-kustomize")?;
    std::fs::write(
        dir.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../../deploy/kustomize/base\ncomponents:\n  - ../../../deploy/kustomize/components/node-gate\n",
    )?;
    let with = yaml_documents(
        &kubectl(
            &["kustomize", "--load-restrictor=LoadRestrictionsNone", dir.to_str().context("path")?],
            None,
        )
        .await?,
    )
    .await?;
    let (verbs, taint) = gate_rights(&with);
    if verbs != want || taint.as_deref() != Some("kwarm.io/warming") {
        bail!("the node-gate component gives {verbs:?} and NODE_GATE_TAINT {taint:?}");
    }
    let without = yaml_documents(&kubectl(&["kustomize", "deploy/kustomize/base"], None).await?).await?;
    if !gate_rights(&without).0.is_empty() {
        bail!("the kustomize base grants node rights without the gate");
    }
    Ok(())
}
