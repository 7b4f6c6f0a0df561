//! The manager against the real local cluster: it creates the DaemonSet, the images end up in
//! containerd on the real node, drift is healed, restarts and bad environments change nothing,
//! refreshes roll holders without a gap, and it runs as a pod from its own image.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use kwarm_e2e::{
    Check, REAL_NODE, client, containerd_has_image, containerd_remove_image, delete_namespace, wait_until,
};
use support::{Manager, base_env, holder_images, holder_pod_uids, restricted_namespace, wait_holders_ready};

const SMALL: &str = "127.0.0.1:5000/test/small:v1";
const OTHER: &str = "127.0.0.1:5000/test/other:v1";
const DS: &str = "kwarm-holders";

#[tokio::test]
async fn manager_warms_heals_and_survives_restart() -> Result<()> {
    let client = client().await?;
    // Restricted Pod Security: the holders must be admitted there.
    let ns = restricted_namespace(&client, "kwarm-e2e-manager-").await?;
    for image in [SMALL, OTHER] {
        containerd_remove_image(image).await?;
    }
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), format!("small={SMALL};{OTHER}"));
    let mut manager = Manager::start("manager-basic", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;

    // 1. The DaemonSet holds both images on the real node, and containerd has them.
    let ds = wait_holders_ready(&client, &ns, DS, 2, Duration::from_secs(120)).await?;
    assert_eq!(holder_images(&ds), vec![SMALL.to_string(), OTHER.to_string()], "holders follow IMAGES order");
    for image in [SMALL, OTHER] {
        assert!(containerd_has_image(image).await?, "{image} is not in containerd's k8s.io namespace");
    }
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);

    // 2. Deleted → back (the manager watches its DaemonSet).
    let old_uid = ds.metadata.uid.clone();
    let started = Instant::now();
    api.delete(DS, &DeleteParams::background()).await?;
    let restored = wait_until("the deleted DaemonSet to come back", Duration::from_secs(10), || async {
        Ok(match api.get_opt(DS).await? {
            Some(d) if d.metadata.uid != old_uid && d.metadata.deletion_timestamp.is_none() => {
                Check::Done(())
            }
            _ => Check::Pending("not yet recreated".into()),
        })
    });
    restored.await?;
    println!("restore latency after deletion: {} ms", started.elapsed().as_millis());
    wait_holders_ready(&client, &ns, DS, 2, Duration::from_secs(120)).await?;

    // 3. A holder's image edited by someone else → reverted.
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "small", "image": "127.0.0.1:5000/test/small:v2"}
    ]}}}});
    let started = Instant::now();
    api.patch(DS, &PatchParams::default(), &Patch::Strategic(&edit)).await?;
    wait_until("the edited holder image to be reverted", Duration::from_secs(10), || async {
        let ds = api.get(DS).await?;
        let images = holder_images(&ds);
        Ok(if images.first().map(String::as_str) == Some(SMALL) {
            Check::Done(())
        } else {
            Check::Pending(format!("images {images:?}"))
        })
    })
    .await?;
    println!("revert latency after an edit: {} ms", started.elapsed().as_millis());
    let ds = wait_holders_ready(&client, &ns, DS, 2, Duration::from_secs(120)).await?;

    // 4. Restart: SIGTERM leaves the DaemonSet; a new manager replaces no pod and writes nothing.
    let uids = holder_pod_uids(&client, &ns).await?;
    let generation = ds.metadata.generation;
    let (status, took) = manager.stop().await?;
    println!("manager exit after SIGTERM: {} ms ({status})", took.as_millis());
    ensure!(status.success(), "manager exited with {status} on SIGTERM");
    ensure!(took < Duration::from_secs(5), "manager took {took:?} to stop (limit 5 s)");
    ensure!(api.get_opt(DS).await?.is_some(), "SIGTERM must leave the DaemonSet in place");

    let mut manager = Manager::start("manager-basic-restarted", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ds = api.get(DS).await?;
    assert_eq!(ds.metadata.generation, generation, "the restart changed the DaemonSet");
    assert_eq!(holder_pod_uids(&client, &ns).await?, uids, "the restart replaced holder pods");
    let metrics = manager.metrics_text().await?;
    assert!(
        !metrics.contains("kwarm_daemonset_applies_total{status=\"success\"}"),
        "the restarted manager applied the DaemonSet:\n{metrics}"
    );
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}

#[tokio::test]
async fn bad_environment_leaves_the_daemonset_untouched() -> Result<()> {
    let client = client().await?;
    let ns = kwarm_e2e::create_namespace(&client, "kwarm-e2e-badenv-").await?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), format!("small={SMALL}"));
    let mut manager = Manager::start("manager-badenv-good", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    wait_holders_ready(&client, &ns, DS, 1, Duration::from_secs(120)).await?;
    manager.stop().await?;
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let before = api.get(DS).await?;

    let mut bad = env.clone();
    bad.insert("IMAGES".into(), format!("Bad Name={SMALL};ok=not a reference"));
    bad.insert("CACHING_MEMORY_REQUEST".into(), "lots".into());
    bad.insert("TOLERATIONS".into(), "{".into());
    bad.insert("CACHING_INTERVAL_HOURS".into(), "0".into());
    let output = tokio::process::Command::new(support::kwarm_bin())
        .env_clear()
        .envs(&bad)
        .env("KUBECONFIG", kwarm_e2e::kubeconfig_path())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "exit code for a bad environment; stderr:\n{stderr}");
    for variable in ["IMAGES", "CACHING_MEMORY_REQUEST", "TOLERATIONS", "CACHING_INTERVAL_HOURS"] {
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(variable)),
            "no line for {variable}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "panic on bad input:\n{stderr}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api.get(DS).await?;
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "a bad environment changed the DaemonSet"
    );
    assert_eq!(holder_images(&after), holder_images(&before));
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}

/// Holder pods on the real node that are ready and not being deleted.
fn ready_holders_on_node(pods: &BTreeMap<String, Pod>) -> usize {
    pods.values()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(REAL_NODE))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

fn refreshed_at(pod: &Pod) -> Option<String> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get("kwarm.io/refreshed-at")).cloned()
}

#[tokio::test]
async fn refresh_rolls_holders_without_a_gap() -> Result<()> {
    let client = client().await?;
    let ns = kwarm_e2e::create_namespace(&client, "kwarm-e2e-refresh-").await?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), format!("small={SMALL}"));
    env.insert("IMAGE_PULL_POLICY".into(), "Always".into());
    // the shortest interval kwarm accepts
    env.insert("CACHING_INTERVAL".into(), "1m".into());
    let mut manager = Manager::start("manager-refresh", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    wait_holders_ready(&client, &ns, DS, 1, Duration::from_secs(120)).await?;

    // Watch every pod change until two refreshes went through, checking after each one that the
    // node still has a ready holder that is not being deleted.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut stream = watcher(pods, watcher::Config::default().labels("app.kubernetes.io/name=kwarm")).boxed();
    let mut seen: BTreeMap<String, Pod> = BTreeMap::new();
    let mut synced = false;
    let mut refreshes = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(210);
    let mut events = 0usize;
    while refreshes.len() < 2 {
        let next = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .with_context(|| format!("no two refreshes within 210 s; saw {refreshes:?}"))?;
        let event = next.context("watch ended")??;
        synced |= support::track_pod(&mut seen, event);
        if !synced {
            continue;
        }
        events += 1;
        let ready = ready_holders_on_node(&seen);
        if ready == 0 {
            bail!("the node had no ready holder at one moment; pods: {:?}", seen.keys().collect::<Vec<_>>());
        }
        for pod in seen.values() {
            if let Some(at) = refreshed_at(pod)
                && ready_holders_on_node(&BTreeMap::from([(String::new(), pod.clone())])) == 1
            {
                refreshes.insert(at);
            }
        }
    }
    println!("two refreshes observed over {events} pod events, never without a ready holder");
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}

#[tokio::test]
async fn manager_runs_as_a_pod_and_is_owned_by_its_deployment() -> Result<()> {
    let client = client().await?;
    let ns = kwarm_e2e::create_namespace(&client, "kwarm-e2e-pod-").await?;
    let rbac = serde_json::json!([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kwarm", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "kwarm", "namespace": ns},
         "rules": [
            {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "kwarm", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kwarm"},
         "subjects": [{"kind": "ServiceAccount", "name": "kwarm", "namespace": ns}]},
    ]);
    for object in rbac.as_array().context("rbac list")? {
        let kind = object["kind"].as_str().unwrap_or_default();
        let api = dynamic_api(&client, &ns, kind)?;
        let obj: kube::api::DynamicObject = serde_json::from_value(object.clone())?;
        api.create(&PostParams::default(), &obj).await.with_context(|| format!("creating {kind}"))?;
    }
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "kwarm", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "kwarm-manager"}},
            "template": {
                "metadata": {"labels": {"app": "kwarm-manager"}},
                "spec": {
                    "serviceAccountName": "kwarm",
                    // No kube-proxy in the local cluster: reach the API server on the host.
                    "hostNetwork": true,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                    "containers": [{
                        "name": "kwarm",
                        "image": "127.0.0.1:5000/kwarm/kwarm:dev",
                        "imagePullPolicy": "Always",
                        "env": [
                            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
                            {"name": "DEPLOYMENT_NAME", "value": "kwarm"},
                            {"name": "IMAGES", "value": format!("small={SMALL}")},
                            {"name": "KIP_IMAGE", "value": kwarm_e2e::SLEEP_IMAGE},
                            {"name": "DAEMONSET_NAME", "value": DS},
                            {"name": "WATCH_DEPLOYMENTS", "value": "false"},
                            {"name": "LEADER_ELECT", "value": "true"},
                            {"name": "METRICS_BIND_ADDRESS", "value": "0"},
                            {"name": "HEALTH_PROBE_BIND_ADDRESS", "value": "127.0.0.1:0"},
                            {"name": "NODE_SELECTOR", "value": "{\"kubernetes.io/hostname\":\"127.0.0.1\"}"}
                        ],
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment).await?;
    let ds = wait_holders_ready(&client, &ns, DS, 1, Duration::from_secs(180)).await?;
    let owners = ds.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.iter().any(|o| o.kind == "Deployment" && o.name == "kwarm"),
        "DaemonSet is not owned by the manager's Deployment: {owners:?}"
    );
    assert!(containerd_has_image(SMALL).await?);

    // Deleting the manager's Deployment garbage-collects the DaemonSet.
    deployments.delete("kwarm", &DeleteParams::background()).await?;
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    wait_until("the DaemonSet to be garbage-collected with its owner", Duration::from_secs(60), || async {
        Ok(match api.get_opt(DS).await? {
            None => Check::Done(()),
            Some(_) => Check::Pending("still there".into()),
        })
    })
    .await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await
}

fn dynamic_api(client: &kube::Client, ns: &str, kind: &str) -> Result<Api<kube::api::DynamicObject>> {
    use kube::discovery::ApiResource;
    let (group, version, plural) = match kind {
        "ServiceAccount" => ("", "v1", "serviceaccounts"),
        "Role" => ("rbac.authorization.k8s.io", "v1", "roles"),
        "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings"),
        other => bail!("no API for {other}"),
    };
    let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version,
        kind: kind.into(),
        plural: plural.into(),
    };
    Ok(Api::namespaced_with(client.clone(), ns, &resource))
}

/// A DaemonSet of kwarm's name that selects other pods (kubernetes-image-puller's) can never be
/// applied to: kwarm leaves it alone, says why once (log and an Event on it), and creates its own
/// as soon as the name is free.
#[tokio::test]
async fn a_daemonset_of_the_same_name_that_is_not_kwarms_is_left_alone_until_the_name_is_free() -> Result<()>
{
    const NAME: &str = "kubernetes-image-puller";
    let client = client().await?;
    let ns = restricted_namespace(&client, "kwarm-e2e-nameinuse-").await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let labels = serde_json::json!({"test": "daemonset-test", "app.kubernetes.io/name": "image-puller"});
    let pullers: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": NAME},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
                "containers": [{"name": "sleep", "image": kwarm_e2e::SLEEP_IMAGE, "command": ["/sleep"]}]}}
        }
    }))?;
    let created = daemonsets.create(&PostParams::default(), &pullers).await?;

    let mut env = base_env(&ns);
    env.insert("DAEMONSET_NAME".into(), NAME.into());
    env.insert("IMAGES".into(), SMALL.into());
    let mut manager = Manager::start("kwarm-nameinuse", &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(30)).await?;
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
        let params = kube::api::ListParams::default().fields(&format!("involvedObject.name={NAME}"));
        let note =
            wait_until("a NameInUse Event on the puller's DaemonSet", Duration::from_secs(30), || async {
                let list = events.list(&params).await?;
                Ok(match list.items.into_iter().find(|e| e.reason.as_deref() == Some("NameInUse")) {
                    Some(e) => Check::Done(e.message.unwrap_or_default()),
                    None => Check::Pending("no NameInUse event yet".into()),
                })
            })
            .await?;
        ensure!(
            note.contains("kubernetes-image-puller's DaemonSet") && note.contains("DAEMONSET_NAME"),
            "{note}"
        );
        // A few reconciles later (a resync, a pod change) nothing was written and nothing failed.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let live = daemonsets.get(NAME).await?;
        assert_eq!(
            live.metadata.generation, created.metadata.generation,
            "kwarm changed the foreign DaemonSet"
        );
        let log = manager.log_text();
        ensure!(!log.contains("Reconcile failed"), "the manager keeps failing:\n{log}");
        ensure!(
            log.matches("exists and is kubernetes-image-puller's DaemonSet").count() == 1,
            "said more than once:\n{log}"
        );

        // The name becomes free: kwarm's own DaemonSet follows at once.
        let freed = Instant::now();
        daemonsets.delete(NAME, &DeleteParams::foreground()).await?;
        let ds = wait_holders_ready(&client, &ns, NAME, 1, Duration::from_secs(120)).await?;
        assert_eq!(holder_images(&ds), vec![SMALL.to_string()]);
        ensure!(containerd_has_image(SMALL).await?, "{SMALL} is not in containerd");
        println!("name free → kwarm's DaemonSet ready: {} ms", freed.elapsed().as_millis());
        ensure!(manager.log_text().contains("The DaemonSet name is free"), "{}", manager.log_text());
        Ok(())
    }
    .await;
    let _ = manager.stop().await;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await?;
    result
}
