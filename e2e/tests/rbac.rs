//! RBAC is what the code calls: the chart installed with every feature that needs rights
//! (Deployment watching in a listed namespace, inherited pull secrets, the node gate, the rollout
//! gate) is exercised on the real local cluster and uninstalled, and then the API server's audit
//! log of the manager's ServiceAccount (hack/cluster-up.sh logs ServiceAccount requests) is
//! compared with the rights the chart granted it: no request was forbidden, and every granted
//! (verb, resource) was used, but for the few rights only rare paths need (`RARE`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Taint};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};
use kwarm_e2e::{
    Check, REGISTRY, client, cluster_dir, create_namespace, delete_namespace, delete_nodes, kwok_node,
    wait_until,
};
use serde_json::{Value, json};
use support::tools::{helm, yaml_documents};

/// A right: API group ("" for core), resource, subresource ("" for none), verb.
type Right = (String, String, String, String);

/// Rights granted but only used on rare paths a test run does not reach, each with the path.
const RARE: &[(&str, &str, &str, &str, &str)] = &[
    ("apps", "daemonsets", "", "get", "the 5-minute resync re-reads the DaemonSet"),
    ("apps", "deployments", "", "get", "the webhook reads a Deployment its watch has not delivered yet"),
    ("", "nodes", "", "get", "a node is read again when removing the gate taint conflicts"),
    ("", "pods", "", "get", "a pod is read again when removing the scheduling gate conflicts"),
    ("", "secrets", "", "update", "the webhook's certificate is renewed (months after it was issued)"),
    ("events.k8s.io", "events", "", "patch", "an Event repeats within kube's Recorder cache (a series)"),
];

const TAINT: &str = "kwarm.io/warming-rbac";

/// The rules of the Roles (scope: their namespace) and ClusterRoles (scope: "*") bound to the
/// ServiceAccount `sa` of `ns` among the manifest's objects: scope → rights.
fn granted(objects: &[Value], ns: &str, sa: &str) -> Result<BTreeMap<String, BTreeSet<Right>>> {
    let bound: BTreeSet<(String, String, String)> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        .filter(|b| {
            b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == ns)
        })
        .map(|b| {
            let scope = b["metadata"]["namespace"].as_str().unwrap_or("*").to_string();
            let kind = b["roleRef"]["kind"].as_str().unwrap_or_default().to_string();
            let name = b["roleRef"]["name"].as_str().unwrap_or_default().to_string();
            (kind, scope, name)
        })
        .collect();
    let mut rights: BTreeMap<String, BTreeSet<Right>> = BTreeMap::new();
    for role in objects.iter().filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole") {
        let kind = role["kind"].as_str().unwrap_or_default().to_string();
        let scope = role["metadata"]["namespace"].as_str().unwrap_or("*").to_string();
        let name = role["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if !bound.contains(&(kind, scope.clone(), name)) {
            continue;
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    let (resource, sub) = resource.split_once('/').unwrap_or((&resource, ""));
                    for verb in strings(&rule["verbs"]) {
                        ensure!(verb != "*" && resource != "*" && group != "*", "a wildcard rule: {rule}");
                        rights.entry(scope.clone()).or_default().insert((
                            group.clone(),
                            resource.to_string(),
                            sub.to_string(),
                            verb,
                        ));
                    }
                }
            }
        }
    }
    Ok(rights)
}

/// One request of the audit log.
#[derive(Debug)]
struct Request {
    verb: String,
    /// `None` for a non-resource URL (discovery).
    right: Option<(String, String, String)>,
    namespace: String,
    name: String,
    code: i64,
    uri: String,
    at: String,
}

/// The requests of `user` in the audit log (its rotated files included), one per audit event.
fn audit_requests(user: &str) -> Result<Vec<Request>> {
    let dir = cluster_dir().join("audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no audit log in {} (a cluster started before auditing was added: restart it with \
                 make cluster-down)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("audit")))
        .collect();
    files.sort();
    let mut requests = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for line in text.lines() {
            // a cheap filter first: the log holds every ServiceAccount's requests
            if !line.contains(user) {
                continue;
            }
            let event: Value =
                serde_json::from_str(line).with_context(|| format!("an audit line: {line}"))?;
            if event["user"]["username"] != user {
                continue;
            }
            let o = &event["objectRef"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            requests.push(Request {
                verb: text(&event["verb"]),
                right: o["resource"]
                    .as_str()
                    .map(|r| (text(&o["apiGroup"]), r.to_string(), text(&o["subresource"]))),
                namespace: text(&o["namespace"]),
                name: text(&o["name"]),
                code: event["responseStatus"]["code"].as_i64().unwrap_or_default(),
                uri: text(&event["requestURI"]),
                at: text(&event["stageTimestamp"]),
            });
        }
    }
    Ok(requests)
}

/// The granted rights no request used: a request counts for a Role of its namespace when one
/// grants it, else for the ClusterRoles. A server-side apply that created its object (201) was
/// authorized as `create` too.
fn unused(
    granted: &BTreeMap<String, BTreeSet<Right>>,
    requests: &[Request],
) -> BTreeMap<String, BTreeSet<Right>> {
    let mut left = granted.clone();
    for r in requests {
        let Some((group, resource, sub)) = &r.right else { continue };
        let mut verbs = vec![r.verb.clone()];
        if r.verb == "patch" && r.code == 201 {
            verbs.push("create".into());
        }
        for verb in verbs {
            let right = (group.clone(), resource.clone(), sub.clone(), verb);
            let scope = if granted.get(&r.namespace).is_some_and(|g| g.contains(&right)) {
                r.namespace.clone()
            } else {
                "*".to_string()
            };
            if let Some(rights) = left.get_mut(&scope) {
                rights.remove(&right);
            }
        }
    }
    for rights in left.values_mut() {
        rights.retain(|(g, res, sub, verb)| {
            !RARE.iter().any(|(rg, rr, rs, rv, _)| {
                (rg, rr, rs, rv) == (&g.as_str(), &res.as_str(), &sub.as_str(), &verb.as_str())
            })
        });
    }
    left.retain(|_, rights| !rights.is_empty());
    left
}

fn deployment(name: &str, image: &str) -> Result<Deployment> {
    let mut spec = support::scratch_pod_spec(image);
    spec["imagePullSecrets"] = json!([{"name": "regcred"}]);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kwarm.io/enabled": "true"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }))?)
}

fn gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.name == "kwarm.io/image-warm"))
}

/// For each pod of a namespace (by name): its image, whether it was gated when first seen (at
/// creation: the watch starts before any pod) and whether it is gated now.
type PodLog = Arc<Mutex<BTreeMap<String, (String, bool, bool)>>>;

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
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let Ok(mut seen) = seen.lock() else { return };
            let entry = seen.entry(pod.name_any()).or_insert((image, gated(&pod), false));
            entry.2 = gated(&pod);
        }
    });
    (log, task)
}

/// Waits until the pod of `image` was gated at creation and is released.
async fn gated_then_released(log: &PodLog, image: &str) -> Result<()> {
    wait_until(&format!("the pod of {image} gated, then released"), Duration::from_secs(120), || async {
        let seen = log.lock().map_err(|_| anyhow::anyhow!("pod log poisoned"))?.clone();
        Ok(match seen.iter().find(|(_, (i, _, _))| i == image) {
            None => Check::Pending("no pod yet".into()),
            Some((name, (_, false, _))) => bail!("{name} ({image}, not warm yet) was not gated at creation"),
            Some((name, (_, true, true))) => Check::Pending(format!("{name} gated")),
            Some((_, (_, true, false))) => Check::Done(()),
        })
    })
    .await
}

/// Everything the chart's manager has rights for, done once: Deployments and their pull secret,
/// a gated rollout, a node joining with the gate taint, the mirror no Deployment wants any more.
async fn exercise(client: &Client, ns: &str, apps: &str, node: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), apps);
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"kwarm:warm-secret");
    let config = json!({"auths": {"127.0.0.1:5001": {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;

    // a labelled Deployment: its image warmed, its pull secret mirrored, its first pod gated
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), apps);
    let (pods, watch) = watch_pods(client, apps);
    let first = format!("{REGISTRY}/test/other:v1");
    deployments.create(&PostParams::default(), &deployment("web", &first)?).await?;
    gated_then_released(&pods, &first).await?;
    let mirrors: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mirror_selector = "app.kubernetes.io/component=pull-secret";
    wait_until("the mirror of regcred", Duration::from_secs(60), || async {
        let n = mirrors.list(&ListParams::default().labels(mirror_selector)).await?.items.len();
        Ok(if n == 1 { Check::Done(()) } else { Check::Pending(format!("{n} mirrors")) })
    })
    .await?;

    // a rollout: the new pod waits for its new image
    let second = format!("{REGISTRY}/test/small:v2");
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": second}]}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    gated_then_released(&pods, &second).await?;
    watch.abort();

    // a node joins with the gate taint (not one the holders run on: released at once)
    let nodes: Api<Node> = Api::all(client.clone());
    let mut joining = kwok_node(node, &BTreeMap::new());
    joining.spec.as_mut().context("spec")?.taints =
        Some(vec![Taint { key: TAINT.into(), effect: "NoSchedule".into(), ..Default::default() }]);
    nodes.create(&PostParams::default(), &joining).await?;
    wait_until(&format!("the gate taint removed from {node}"), Duration::from_secs(60), || async {
        let taints = nodes.get(node).await?.spec.and_then(|s| s.taints).unwrap_or_default();
        Ok(if taints.iter().any(|t| t.key == TAINT) {
            Check::Pending(format!("{taints:?}"))
        } else {
            Check::Done(())
        })
    })
    .await?;

    // the Deployment goes: its mirror is deleted
    deployments.delete("web", &Default::default()).await?;
    wait_until("the mirror deleted", Duration::from_secs(90), || async {
        let n = mirrors.list(&ListParams::default().labels(mirror_selector)).await?.items.len();
        Ok(if n == 0 { Check::Done(()) } else { Check::Pending(format!("{n} mirrors")) })
    })
    .await?;
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    ensure!(ds.get_opt("kwarm").await?.is_some(), "no DaemonSet kwarm in {ns}");
    Ok(())
}

/// Whether `right` in the Role of `ns` is among the unused rights.
fn reported_unused(
    granted: &BTreeMap<String, BTreeSet<Right>>,
    requests: &[Request],
    ns: &str,
    right: &Right,
) -> bool {
    unused(granted, requests).get(ns).is_some_and(|rights| rights.contains(right))
}

/// Scales the manager to none and waits until its pods are gone.
async fn stop_manager(client: &Client, ns: &str) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let scale = json!({"spec": {"replicas": 0}});
    deployments.patch("kwarm", &PatchParams::default(), &Patch::Merge(&scale)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let manager = ListParams::default().labels("app.kubernetes.io/name=kwarm-manager");
    wait_until("the manager's pods gone", Duration::from_secs(60), || async {
        let n = pods.list(&manager).await?.items.len();
        Ok(if n == 0 { Check::Done(()) } else { Check::Pending(format!("{n} pods")) })
    })
    .await
}

#[tokio::test]
async fn the_chart_grants_the_manager_exactly_the_rights_it_uses() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-rbac-").await?;
    let apps = create_namespace(&client, "e2e-rbac-apps-").await?;
    let node = format!("rbac-{ns}");
    let port = support::free_port()?;
    let install = [
        "install".to_string(),
        "kwarm".into(),
        "deploy/helm".into(),
        "-n".into(),
        ns.clone(),
        "-f".into(),
        "deploy/helm/ci/local-cluster-values.yaml".into(),
        "--set".into(),
        "metrics.port=18480,health.port=18481".into(),
        "--set".into(),
        format!("configMap.images=small={REGISTRY}/test/small:v1"),
        "--set-string".into(),
        format!("configMap.watchNamespaces={apps},configMap.nodeGateTaint={TAINT}"),
        // a boolean as the manager reads it: the chart must grant the mirrors' rights
        "--set-string".into(),
        "configMap.inheritPullSecrets=True,configMap.imageRetention=0s".into(),
        "--set".into(),
        format!("rolloutGate.enabled=true,rolloutGate.port={port}"),
        "--set".into(),
        format!("rolloutGate.url=https://127.0.0.1:{port}/mutate"),
        "--wait".into(),
        "--timeout".into(),
        "120s".into(),
    ];
    let result = async {
        helm(&install.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        let manifest = helm(&["get", "manifest", "kwarm", "-n", &ns]).await?;
        let granted = granted(&yaml_documents(&manifest).await?, &ns, "kwarm")?;
        ensure!(
            granted.contains_key(&apps),
            "no Role in {apps}, the namespace WATCH_NAMESPACES lists: {granted:?}"
        );
        ensure!(
            !granted.get("*").is_some_and(|g| g.iter().any(|(_, r, _, _)| r == "deployments")),
            "Deployments readable cluster-wide although WATCH_NAMESPACES lists {apps}: {granted:?}"
        );
        exercise(&client, &ns, &apps, &node).await?;
        // The manager stops first: helm deletes the Roles while a manager's pod is still
        // terminating, and its requests of those seconds are refused for a right it no longer
        // has, not one the chart lacks. Uninstalling then runs the ungate hook (the same
        // ServiceAccount, its rights still bound): the webhook configuration's delete.
        stop_manager(&client, &ns).await?;
        helm(&["uninstall", "kwarm", "-n", &ns, "--wait", "--timeout", "90s"]).await?;

        let user = format!("system:serviceaccount:{ns}:kwarm");
        let requests = audit_requests(&user)?;
        ensure!(requests.len() > 20, "only {} requests of {user} in the audit log", requests.len());
        let forbidden: Vec<String> = requests
            .iter()
            .filter(|r| r.code == 403)
            .map(|r| format!("{} {} {} ({}/{})", r.at, r.verb, r.uri, r.namespace, r.name))
            .collect();
        let unused = unused(&granted, &requests);
        // the comparison can fail on this log: a stray verb beside the granted ones is reported
        let stray: Right = ("apps".into(), "daemonsets".into(), String::new(), "update".into());
        let mut with_stray = granted.clone();
        with_stray.entry(ns.clone()).or_default().insert(stray.clone());
        ensure!(
            reported_unused(&with_stray, &requests, &ns, &stray),
            "a stray {stray:?} in the Role went unnoticed"
        );
        let mut problems = Vec::new();
        if !forbidden.is_empty() {
            problems.push(format!(
                "{} requests of the manager were forbidden:\n  {}",
                forbidden.len(),
                forbidden.join("\n  ")
            ));
        }
        if !unused.is_empty() {
            let shown: Vec<String> = unused
                .iter()
                .flat_map(|(scope, rights)| {
                    rights.iter().map(move |(g, r, s, v)| {
                        let resource = if s.is_empty() { r.clone() } else { format!("{r}/{s}") };
                        format!(
                            "{v} {}{resource} in {scope}",
                            if g.is_empty() { String::new() } else { format!("{g}/") }
                        )
                    })
                })
                .collect();
            problems.push(format!(
                "granted but never used in this run (drop them, or name the rare path in RARE):\n  {}",
                shown.join("\n  ")
            ));
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        eprintln!(
            "{} requests of {user}: none forbidden, every granted right used (RARE: {})",
            requests.len(),
            RARE.len()
        );
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
    delete_nodes(&client, std::slice::from_ref(&node)).await?;
    result
}

#[test]
fn a_right_nothing_used_is_reported_and_a_used_one_is_not() -> Result<()> {
    let objects: Vec<Value> = serde_json::from_value(json!([
        {"kind": "Role", "metadata": {"name": "r", "namespace": "ns"}, "rules": [
            {"apiGroups": ["apps"], "resources": ["daemonsets", "daemonsets/status"], "verbs": ["create", "patch", "update"]}
        ]},
        {"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "ns"},
         "roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]},
        {"kind": "ClusterRole", "metadata": {"name": "other"}, "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
        ]}
    ]))?;
    let granted = granted(&objects, "ns", "sa")?;
    assert_eq!(granted.len(), 1, "the unbound ClusterRole is not granted: {granted:?}");
    let request = |verb: &str, sub: &str, code| Request {
        verb: verb.into(),
        right: Some(("apps".into(), "daemonsets".into(), sub.into())),
        namespace: "ns".into(),
        name: "ds".into(),
        code,
        uri: String::new(),
        at: String::new(),
    };
    // an apply that created the DaemonSet used create and patch; the status was patched
    let unused = unused(&granted, &[request("patch", "", 201), request("patch", "status", 200)]);
    let left: Vec<&Right> = unused.values().flatten().collect();
    let want = [
        ("apps".to_string(), "daemonsets".to_string(), "".to_string(), "update".to_string()),
        ("apps".into(), "daemonsets".into(), "status".into(), "create".into()),
        ("apps".into(), "daemonsets".into(), "status".into(), "update".into()),
    ];
    assert_eq!(left.len(), want.len(), "{left:?}");
    for w in &want {
        assert!(left.contains(&w), "{w:?} not reported unused: {left:?}");
    }
    Ok(())
}
