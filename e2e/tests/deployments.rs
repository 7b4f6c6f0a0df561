//! Deployment watching on the real local cluster: labelled Deployments' images are warmed and
//! follow changes; unlabelled Deployments and excluded namespaces are ignored; a nonexistent image
//! is quarantined and reported while a good one added with it becomes warm; kwarm never writes to
//! the Deployments.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kwarm_e2e::{
    Check, client, containerd_has_image, containerd_remove_image, create_namespace, delete_namespace,
    wait_until,
};
use support::{Manager, base_env, holder_images};

const DS: &str = "kwarm-holders";
const FIELD_MANAGER: &str = "kwarm.io/manager";

/// A Deployment with no replicas: its images can only reach the node through kwarm.
fn deployment(name: &str, images: &[&str], labelled: bool) -> Result<Deployment> {
    let labels = if labelled {
        serde_json::json!({"app": name, "kwarm.io/enabled": "true"})
    } else {
        serde_json::json!({"app": name})
    };
    let containers: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}
        }
    }))?)
}

async fn wait_daemonset_images(
    client: &Client,
    ns: &str,
    want: &[&str],
    timeout: Duration,
) -> Result<Duration> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until(&format!("DaemonSet holders {want:?}"), timeout, || async {
        let mut images = api.get_opt(DS).await?.as_ref().map(holder_images).unwrap_or_default();
        images.sort();
        Ok(if images == want { Check::Done(()) } else { Check::Pending(format!("holders {images:?}")) })
    })
    .await?;
    Ok(started.elapsed())
}

/// The first Event with `reason` in `namespace`, waiting up to a minute for it.
async fn wait_event(client: &Client, namespace: &str, reason: &str) -> Result<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    wait_until(&format!("a {reason} Event in {namespace}"), Duration::from_secs(60), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(match list.items.into_iter().find(|e| e.reason.as_deref() == Some(reason)) {
            Some(e) => Check::Done(e),
            None => Check::Pending(format!("no {reason} Event yet")),
        })
    })
    .await
}

async fn wait_in_containerd(image: &str, timeout: Duration) -> Result<()> {
    wait_until(&format!("{image} in containerd on the real node"), timeout, || async {
        Ok(if containerd_has_image(image).await? { Check::Done(()) } else { Check::Pending("absent".into()) })
    })
    .await
}

/// Checks that kwarm never wrote to a Deployment: no field manager of kwarm, same generation.
fn assert_untouched(d: &Deployment, generation: Option<i64>) {
    let managers: Vec<String> =
        d.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
    assert!(
        !managers.iter().any(|m| m == FIELD_MANAGER),
        "kwarm wrote to Deployment {:?}: {managers:?}",
        d.metadata.name
    );
    assert_eq!(d.metadata.generation, generation, "Deployment {:?} changed generation", d.metadata.name);
}

#[tokio::test]
async fn labelled_deployments_are_warmed_and_followed() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-deploy-").await?;
    let apps = create_namespace(&client, "kwarm-e2e-apps-").await?;
    let excluded = create_namespace(&client, "kwarm-e2e-excluded-").await?;
    let (v1, v2, other, layers) = (
        "127.0.0.1:5000/test/small:v2",
        "127.0.0.1:5000/test/small:v3",
        "127.0.0.1:5000/test/other:v1",
        "127.0.0.1:5000/test/layers:v1",
    );
    for image in [v1, v2, other, layers] {
        containerd_remove_image(image).await?;
    }

    let mut env = base_env(&ns);
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), format!("{apps},{excluded}"));
    env.insert("EXCLUDE_NAMESPACES".into(), excluded.clone());
    env.insert("IMAGE_RETENTION".into(), "0s".into());
    let mut manager = Manager::start("manager-deployments", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps);
    let excluded_api: Api<Deployment> = Api::namespaced(client.clone(), &excluded);
    deployments.create(&PostParams::default(), &deployment("web", &[v1], true)?).await?;
    deployments.create(&PostParams::default(), &deployment("plain", &[other], false)?).await?;
    excluded_api.create(&PostParams::default(), &deployment("hidden", &[layers], true)?).await?;

    let took = wait_daemonset_images(&client, &ns, &[v1], Duration::from_secs(30)).await?;
    println!("Deployment created → DaemonSet updated: {} ms", took.as_millis());
    wait_in_containerd(v1, Duration::from_secs(120)).await?;

    // Change the image: the new one is warmed, the old one goes (retention 0s).
    let started = Instant::now();
    let patch =
        serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "c0", "image": v2}]}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    let took = wait_daemonset_images(&client, &ns, &[v2], Duration::from_secs(30)).await?;
    println!("Deployment image change → DaemonSet updated: {} ms", took.as_millis());
    wait_in_containerd(v2, Duration::from_secs(120)).await?;
    println!("Deployment image change → image in containerd: {} ms", started.elapsed().as_millis());

    // The unlabelled Deployment and the excluded namespace were ignored the whole time.
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let images = holder_images(&ds.get(DS).await?);
    assert!(!images.iter().any(|i| i == other), "unlabelled Deployment warmed: {images:?}");
    assert!(!images.iter().any(|i| i == layers), "excluded namespace warmed: {images:?}");

    // Events tell the Deployment's owner what happened.
    let events: Api<Event> = Api::namespaced(client.clone(), &apps);
    wait_until("an ImageWarm event on Deployment web", Duration::from_secs(60), || async {
        let list = events.list(&ListParams::default().fields("involvedObject.name=web")).await?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        Ok(if reasons.iter().any(|r| r == "ImageWarm") && reasons.iter().any(|r| r == "WarmingStarted") {
            Check::Done(())
        } else {
            Check::Pending(format!("reasons {reasons:?}"))
        })
    })
    .await?;

    // kwarm never wrote to any Deployment.
    for d in deployments
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .chain(excluded_api.list(&ListParams::default()).await?.items.iter())
    {
        let expected = if d.metadata.name.as_deref() == Some("web") { Some(2) } else { Some(1) };
        assert_untouched(d, expected);
    }

    // Deleting the Deployment removes its image (retention 0s); with nothing left to warm the
    // DaemonSet stays, holding only the sleep image.
    deployments.delete("web", &Default::default()).await?;
    wait_daemonset_images(&client, &ns, &[kwarm_e2e::SLEEP_IMAGE], Duration::from_secs(30)).await?;

    manager.stop().await?;
    for n in [&ns, &apps, &excluded] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_image_is_quarantined_while_a_good_one_warms() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-quarantine-").await?;
    let apps = create_namespace(&client, "kwarm-e2e-qapps-").await?;
    let (good, missing) = ("127.0.0.1:5000/test/medium:v1", "127.0.0.1:5000/test/does-not-exist:v1");
    containerd_remove_image(good).await?;

    let mut env = base_env(&ns);
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), apps.clone());
    env.insert("PULL_TIMEOUT".into(), "15s".into());
    env.insert("RETRY_BACKOFF".into(), "10m".into());
    // a dropped image is dropped at once (the conditions flip back below)
    env.insert("IMAGE_RETENTION".into(), "0s".into());
    env.insert("IMAGES".into(), "127.0.0.1:5000/test/small:v1".into());
    let mut manager = Manager::start("manager-quarantine", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    support::wait_holders_ready(&client, &ns, DS, 1, Duration::from_secs(120)).await?;
    // What `kubectl wait --for=condition=Warm daemonset/NAME` waits for (README).
    let long = Duration::from_secs(60);
    let warm = support::wait_condition(&client, &ns, DS, "Warm", "True", Some("AllImagesWarm"), long).await?;
    assert!(warm.message.as_deref().is_some_and(|m| m.contains("1 image warm on")), "{warm:?}");
    support::wait_condition(&client, &ns, DS, "Degraded", "False", None, long).await?;
    support::wait_condition(&client, &ns, DS, "Progressing", "False", None, long).await?;
    support::tools::kubectl(
        &["wait", "-n", &ns, "--for=condition=Warm", &format!("daemonset/{DS}"), "--timeout=10s"],
        None,
    )
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps);
    deployments.create(&PostParams::default(), &deployment("mixed", &[good, missing], true)?).await?;

    // The bad image is taken out; the DaemonSet then rolls out with the good one everywhere.
    wait_daemonset_images(&client, &ns, &["127.0.0.1:5000/test/small:v1", good], Duration::from_secs(120))
        .await?;
    support::wait_holders_ready(&client, &ns, DS, 2, Duration::from_secs(120)).await?;
    assert!(containerd_has_image(good).await?, "the good image is not on the node");

    // Reported: an Event on the Deployment, the state on the DaemonSet, and `kwarm status`.
    let events: Api<Event> = Api::namespaced(client.clone(), &apps);
    let list = events.list(&ListParams::default().fields("involvedObject.name=mixed")).await?;
    let quarantine =
        list.items.iter().find(|e| e.reason.as_deref() == Some("ImageQuarantined")).with_context(|| {
            format!(
                "no ImageQuarantined event; events: {:?}",
                list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
            )
        })?;
    let note = quarantine.message.clone().unwrap_or_default();
    assert!(note.contains(missing), "event does not name the image: {note}");
    assert!(
        note.contains("ErrImagePull") || note.contains("ImagePullBackOff"),
        "event has no reason: {note}"
    );

    let status = support::status_json(&env).await?;
    assert!(status["quarantined"].get(missing).is_some(), "status lacks the quarantined image: {status}");
    let good_status =
        status["images"].as_array().and_then(|a| a.iter().find(|i| i["image"] == good)).cloned();
    let good_status = good_status.with_context(|| format!("status lacks {good}: {status}"))?;
    assert_eq!(good_status["warm"], good_status["nodes"], "good image not warm everywhere: {good_status}");

    // The DaemonSet is Ready with the good images, yet kwarm's conditions say what is not warm,
    // and the DaemonSet carries the Event too (whatever the image's source).
    let cond =
        support::wait_condition(&client, &ns, DS, "Warm", "False", Some("ImagesQuarantined"), long).await?;
    assert!(cond.message.as_deref().is_some_and(|m| m.contains(missing)), "{cond:?}");
    support::wait_condition(&client, &ns, DS, "Degraded", "True", Some("ImagesQuarantined"), long).await?;
    let ds_events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let on_ds = ds_events.list(&ListParams::default().fields(&format!("involvedObject.name={DS}"))).await?;
    let reasons: Vec<_> = on_ds.items.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(reasons.contains(&"ImageQuarantined"), "no ImageQuarantined event on the DaemonSet: {reasons:?}");
    assert!(reasons.contains(&"ImageWarm"), "no ImageWarm event on the DaemonSet for IMAGES: {reasons:?}");

    let log = manager.log_text();
    assert!(log.contains("Image quarantined"), "no log line for the quarantine");
    let d = deployments.get("mixed").await?;
    assert_untouched(&d, Some(1));

    // Fixed (the bad image dropped from the Deployment): the conditions flip back.
    let mut fixed = d;
    if let Some(pod) = fixed.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.containers.retain(|c| c.image.as_deref() == Some(good));
    }
    deployments.replace("mixed", &PostParams::default(), &fixed).await?;
    support::wait_condition(&client, &ns, DS, "Warm", "True", Some("AllImagesWarm"), long).await?;
    support::wait_condition(&client, &ns, DS, "Degraded", "False", Some("AsExpected"), long).await?;
    manager.stop().await?;
    for n in [&ns, &apps] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn inherited_pull_secret_warms_a_private_image() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-secret-").await?;
    let apps = create_namespace(&client, "kwarm-e2e-sapps-").await?;
    let private = "127.0.0.1:5001/private/secret:v1";
    containerd_remove_image(private).await?;

    // The registry at 127.0.0.1:5001 requires this login (hack/cluster/common.sh).
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"kwarm:warm-secret");
    let config = serde_json::json!({"auths": {"127.0.0.1:5001": {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config}
    }))?;
    Api::<Secret>::namespaced(client.clone(), &apps).create(&PostParams::default(), &secret).await?;
    let mut d = deployment("private", &[private], true)?;
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.image_pull_secrets =
            Some(vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "regcred".into() }]);
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps);
    deployments.create(&PostParams::default(), &d).await?;

    let mut env = base_env(&ns);
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), apps.clone());
    env.insert("INHERIT_PULL_SECRETS".into(), "true".into());
    env.insert("IMAGE_RETENTION".into(), "0s".into());
    let mut manager = Manager::start("manager-secrets", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;

    wait_daemonset_images(&client, &ns, &[private], Duration::from_secs(30)).await?;
    wait_in_containerd(private, Duration::from_secs(120)).await?;
    let mirrors: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let list = mirrors.list(&ListParams::default().labels("app.kubernetes.io/component=pull-secret")).await?;
    assert_eq!(list.items.len(), 1, "one mirrored pull secret in kwarm's namespace");
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let refs: Vec<String> = ds
        .get(DS)
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.image_pull_secrets)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        refs,
        vec![list.items[0].metadata.name.clone().unwrap_or_default()],
        "DaemonSet uses the mirror"
    );

    // No Deployment needs it any more: the mirror is deleted.
    deployments.delete("private", &Default::default()).await?;
    wait_until("the mirrored secret to be deleted", Duration::from_secs(60), || async {
        let n = mirrors
            .list(&ListParams::default().labels("app.kubernetes.io/component=pull-secret"))
            .await?
            .items
            .len();
        Ok(if n == 0 { Check::Done(()) } else { Check::Pending(format!("{n} mirrors")) })
    })
    .await?;
    manager.stop().await?;
    for n in [&ns, &apps] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    Ok(())
}

/// A pull secret of the private registry's login, `name` in `namespace`.
async fn create_registry_secret(client: &Client, namespace: &str, name: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    // The registry at 127.0.0.1:5001 requires this login (hack/cluster-up.sh).
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"kwarm:warm-secret");
    let config = serde_json::json!({"auths": {"127.0.0.1:5001": {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config}
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace).create(&PostParams::default(), &secret).await?;
    Ok(())
}

fn with_pull_secret(mut d: Deployment, secret: &str) -> Deployment {
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.image_pull_secrets =
            Some(vec![k8s_openapi::api::core::v1::LocalObjectReference { name: secret.into() }]);
    }
    d
}

/// Tenants stay apart: with INHERIT_PULL_SECRETS, tenant A's mirrored secret is on the holder pod
/// template, yet tenant B's Deployment naming another image of A's private registry (without a
/// secret of its own) does not get it pulled with A's login: kwarm checks it with B's own
/// credentials first, refuses it and says so on B's Deployment; the image never reaches the node.
/// Once B has its own secret it is warmed, and when B's secret is deleted its mirror goes and the
/// image leaves the holders.
#[tokio::test]
async fn a_tenant_cannot_get_another_tenants_private_image_warmed() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-tenants-").await?;
    let tenant_a = create_namespace(&client, "kwarm-e2e-tenant-a-").await?;
    let tenant_b = create_namespace(&client, "kwarm-e2e-tenant-b-").await?;
    let (a_image, b_image) = ("127.0.0.1:5001/private/secret:v1", "127.0.0.1:5001/private/secret:v2");
    containerd_remove_image(a_image).await?;
    containerd_remove_image(b_image).await?;

    create_registry_secret(&client, &tenant_a, "regcred").await?;
    let a_deployments: Api<Deployment> = Api::namespaced(client.clone(), &tenant_a);
    a_deployments
        .create(&PostParams::default(), &with_pull_secret(deployment("app", &[a_image], true)?, "regcred"))
        .await?;
    let b_deployments: Api<Deployment> = Api::namespaced(client.clone(), &tenant_b);
    b_deployments.create(&PostParams::default(), &deployment("thief", &[b_image], true)?).await?;

    let mut env = base_env(&ns);
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), format!("{tenant_a},{tenant_b}"));
    env.insert("INHERIT_PULL_SECRETS".into(), "true".into());
    env.insert("INSECURE_REGISTRIES".into(), "127.0.0.1:5001".into());
    env.insert("IMAGE_RETENTION".into(), "0s".into());
    let mut manager = Manager::start("manager-tenants", &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(60)).await?;
        // A's image is warmed with A's mirror; B's is refused with the registry's answer, on B's
        // Deployment
        wait_daemonset_images(&client, &ns, &[a_image], Duration::from_secs(60)).await?;
        wait_in_containerd(a_image, Duration::from_secs(120)).await?;
        let refusal = wait_event(&client, &tenant_b, "ImageCredentialsMissing").await?;
        let note = refusal.message.unwrap_or_default();
        assert!(note.contains(b_image), "{note}");
        assert_eq!(refusal.involved_object.name.as_deref(), Some("thief"));
        let ds: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
        assert_eq!(holder_images(&ds.get(DS).await?), [a_image], "B's image is not held");
        assert!(!containerd_has_image(b_image).await?, "B's image was pulled with A's login");
        let metrics = manager.metrics_text().await?;
        assert!(metrics.contains(r#"kwarm_images{state="denied"} 1"#), "{metrics}");

        // B brings its own login: now it is warmed (checked with B's mirror alone)
        create_registry_secret(&client, &tenant_b, "b-cred").await?;
        let patch =
            serde_json::json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "b-cred"}]}}}});
        b_deployments.patch("thief", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        wait_daemonset_images(&client, &ns, &[a_image, b_image], Duration::from_secs(60)).await?;
        wait_in_containerd(b_image, Duration::from_secs(120)).await?;

        // B's secret deleted: its mirror goes (at the mirrors' next re-read, within a minute), and
        // with it B's image, which no credential of B's can read any more
        Api::<Secret>::namespaced(client.clone(), &tenant_b).delete("b-cred", &Default::default()).await?;
        wait_daemonset_images(&client, &ns, &[a_image], Duration::from_secs(120)).await?;
        let mirrors: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let left =
            mirrors.list(&ListParams::default().labels("app.kubernetes.io/component=pull-secret")).await?;
        let sources: Vec<String> = left
            .items
            .iter()
            .filter_map(|s| s.metadata.annotations.as_ref()?.get("kwarm.io/source").cloned())
            .collect();
        assert_eq!(sources, [format!("{tenant_a}/regcred")], "only A's mirror is left");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        eprintln!("manager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    for n in [&ns, &tenant_a, &tenant_b] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    result
}

/// NAMESPACE_SELECTOR: only the Deployments of namespaces carrying the label are warmed; labelling
/// another namespace adds its images, taking the label off releases them.
#[tokio::test]
async fn only_namespaces_that_opt_in_get_their_images_warmed() -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-optin-").await?;
    let team = create_namespace(&client, "kwarm-e2e-optin-team-").await?;
    let other = create_namespace(&client, "kwarm-e2e-optin-other-").await?;
    // a label of this test's own, so other tests' namespaces never match
    let label = format!("kwarm-e2e/opt-in-{ns}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let set_label = |value: Option<&str>| serde_json::json!({"metadata": {"labels": {label.clone(): value}}});
    namespaces.patch(&team, &PatchParams::default(), &Patch::Merge(&set_label(Some("true")))).await?;
    let (team_image, other_image) = ("127.0.0.1:5000/test/small:v1", "127.0.0.1:5000/test/other:v1");
    Api::<Deployment>::namespaced(client.clone(), &team)
        .create(&PostParams::default(), &deployment("api", &[team_image], true)?)
        .await?;
    Api::<Deployment>::namespaced(client.clone(), &other)
        .create(&PostParams::default(), &deployment("web", &[other_image], true)?)
        .await?;

    let mut env = base_env(&ns);
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("NAMESPACE_SELECTOR".into(), format!("{label}=true"));
    env.insert("IMAGE_RETENTION".into(), "0s".into());
    let mut manager = Manager::start("manager-optin", &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(60)).await?;
        wait_daemonset_images(&client, &ns, &[team_image], Duration::from_secs(60)).await?;
        namespaces.patch(&other, &PatchParams::default(), &Patch::Merge(&set_label(Some("true")))).await?;
        let took =
            wait_daemonset_images(&client, &ns, &[team_image, other_image], Duration::from_secs(60)).await?;
        eprintln!("namespace labelled -> its image in the DaemonSet: {took:?}");
        namespaces.patch(&other, &PatchParams::default(), &Patch::Merge(&set_label(None))).await?;
        wait_daemonset_images(&client, &ns, &[team_image], Duration::from_secs(60)).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        eprintln!("manager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    for n in [&ns, &team, &other] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    result
}

/// MAX_IMAGES_PER_NAMESPACE and the fair cut: a namespace labelling more images than its limit gets
/// its limit (the first ones in its sorted order) and a Warning on its Deployment for the rest;
/// MAX_IMAGES then cuts one namespace at a time in turn, so the greedy namespace does not push
/// the other one's image out, though the other's image sorts last.
#[tokio::test]
async fn a_namespace_gets_its_share_and_no_more() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-share-").await?;
    let greedy = create_namespace(&client, "kwarm-e2e-share-greedy-").await?;
    let team = create_namespace(&client, "kwarm-e2e-share-team-").await?;
    let greedy_images =
        ["127.0.0.1:5000/test/layers:v1", "127.0.0.1:5000/test/medium:v1", "127.0.0.1:5000/test/other:v1"];
    let team_image = "127.0.0.1:5000/test/small:v3";
    Api::<Deployment>::namespaced(client.clone(), &greedy)
        .create(&PostParams::default(), &deployment("many", &greedy_images, true)?)
        .await?;
    Api::<Deployment>::namespaced(client.clone(), &team)
        .create(&PostParams::default(), &deployment("one", &[team_image], true)?)
        .await?;

    let mut env = base_env(&ns);
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), format!("{greedy},{team}"));
    env.insert("MAX_IMAGES_PER_NAMESPACE".into(), "2".into());
    let mut manager = Manager::start("manager-share", &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(60)).await?;
        // greedy's first two (sorted), and team's one
        let share = [greedy_images[0], greedy_images[1], team_image];
        wait_daemonset_images(&client, &ns, &share, Duration::from_secs(60)).await?;
        let warning = wait_event(&client, &greedy, "NamespaceImageLimitReached").await?;
        assert!(warning.message.unwrap_or_default().contains(greedy_images[2]));
        let metrics = manager.metrics_text().await?;
        assert!(metrics.contains(r#"kwarm_images{state="over_namespace_limit"} 1"#), "{metrics}");
        manager.stop().await?;

        // MAX_IMAGES=2 without a namespace limit: one of each namespace, in turn; cut by name,
        // greedy would have taken both places
        env.remove("MAX_IMAGES_PER_NAMESPACE");
        env.insert("MAX_IMAGES".into(), "2".into());
        manager = Manager::start("manager-share-fair", &env).await?;
        manager.wait_ready(Duration::from_secs(60)).await?;
        wait_daemonset_images(&client, &ns, &[greedy_images[0], team_image], Duration::from_secs(60)).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        eprintln!("manager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    for n in [&ns, &greedy, &team] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    result
}

/// Inheriting pull secrets is optional: when the manager may not write secrets at all, the
/// DaemonSet still follows the Deployments (it used to stop being updated for good).
#[tokio::test]
async fn a_pull_secret_that_cannot_be_mirrored_never_blocks_the_daemonset() -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-nosecret-").await?;
    let apps = create_namespace(&client, "kwarm-e2e-nsapps-").await?;
    let user = format!("system:serviceaccount:{ns}:kwarm");
    // Everything the manager needs, except any right on secrets.
    let rules = serde_json::json!([
        {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
        {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
    ]);
    let role: Role =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "kwarm"}, "rules": rules}))?;
    Api::<Role>::namespaced(client.clone(), &ns).create(&PostParams::default(), &role).await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kwarm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kwarm"},
        "subjects": [{"kind": "User", "name": user}]
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns).create(&PostParams::default(), &binding).await?;
    let cluster_name = format!("{ns}-deployments");
    let cluster_role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": cluster_name},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch"]}]
    }))?;
    Api::<ClusterRole>::all(client.clone()).create(&PostParams::default(), &cluster_role).await?;
    let cluster_binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": cluster_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
        "subjects": [{"kind": "User", "name": user}]
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &cluster_binding).await?;

    let small = "127.0.0.1:5000/test/small:v1";
    let other = "127.0.0.1:5000/test/other:v1";
    let mut d = deployment("web", &[other], true)?;
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.image_pull_secrets =
            Some(vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "regcred".into() }]);
    }
    Api::<Deployment>::namespaced(client.clone(), &apps).create(&PostParams::default(), &d).await?;

    let kubeconfig = support::log_dir().join(format!("{ns}.kubeconfig"));
    support::impersonating_kubeconfig(&user, &kubeconfig)?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), small.into());
    env.insert("WATCH_DEPLOYMENTS".into(), "true".into());
    env.insert("WATCH_NAMESPACES".into(), apps.clone());
    env.insert("INHERIT_PULL_SECRETS".into(), "true".into());
    let mut manager = Manager::start_with_kubeconfig("manager-nosecret", &env, &kubeconfig).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(60)).await?;
        wait_daemonset_images(&client, &ns, &[small, other], Duration::from_secs(60)).await?;
        let log = manager.log_text();
        anyhow::ensure!(log.contains("Pull secret mirroring failed"), "the failure is not logged:\n{log}");
        Ok(())
    }
    .await;
    let _ = manager.stop().await;
    let _ = Api::<ClusterRoleBinding>::all(client.clone()).delete(&cluster_name, &Default::default()).await;
    let _ = Api::<ClusterRole>::all(client.clone()).delete(&cluster_name, &Default::default()).await;
    for n in [&ns, &apps] {
        delete_namespace(&client, n, Duration::from_secs(120)).await?;
    }
    result
}

#[tokio::test]
async fn a_config_map_edit_applies_without_a_restart_and_a_bad_one_changes_nothing() -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-reload-").await?;
    let (small, medium) = ("127.0.0.1:5000/test/small:v1", "127.0.0.1:5000/test/medium:v1");
    // The ConfigMap as the chart makes it, and the process environment envFrom gives from it.
    let data = |pairs: &[(&str, &str)]| -> Result<ConfigMap> {
        let data: std::collections::BTreeMap<&str, &str> = pairs.iter().copied().collect();
        Ok(serde_json::from_value(serde_json::json!({"metadata": {"name": "kwarm"}, "data": data}))?)
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    configmaps.create(&PostParams::default(), &data(&[("IMAGES", small)])?).await?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), small.into());
    env.insert("CONFIG_MAP".into(), "kwarm".into());
    env.insert("IMAGE_RETENTION".into(), "0s".into());
    let mut manager = Manager::start("manager-reload", &env).await?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    wait_daemonset_images(&client, &ns, &[small], Duration::from_secs(60)).await?;
    let pid = manager.pid();

    // kubectl edit: the new image is in the DaemonSet within seconds, by the same process
    let edited = Instant::now();
    configmaps
        .replace("kwarm", &PostParams::default(), &data(&[("IMAGES", &format!("{small};{medium}"))])?)
        .await?;
    wait_daemonset_images(&client, &ns, &[small, medium], Duration::from_secs(30)).await?;
    println!("ConfigMap edit -> DaemonSet updated: {} ms", edited.elapsed().as_millis());
    assert_eq!(manager.pid(), pid, "the manager restarted");

    // A bad edit: refused, said (log, Event, metric), nothing in the cluster written
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    // (its status moves on with the rollout of the edit before: the spec is what kwarm would write)
    let before = daemonsets.get(DS).await?;
    let bad = data(&[("IMAGES", small), ("MAX_IMAGES", "lots"), ("PULL_TIMEOUT", "soon")])?;
    configmaps.replace("kwarm", &PostParams::default(), &bad).await?;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let refused =
        wait_until("an InvalidConfiguration Event on the ConfigMap", Duration::from_secs(30), || async {
            let list = events.list(&ListParams::default().fields("involvedObject.name=kwarm")).await?;
            Ok(match list.items.into_iter().find(|e| e.reason.as_deref() == Some("InvalidConfiguration")) {
                Some(e) => Check::Done(e.message.unwrap_or_default()),
                None => Check::Pending("no Event yet".into()),
            })
        })
        .await?;
    assert!(
        refused.contains("MAX_IMAGES") && refused.contains("PULL_TIMEOUT"),
        "not every problem: {refused}"
    );
    let metrics = manager.metrics_text().await?;
    assert!(metrics.lines().any(|l| l == "kwarm_config_valid 0"), "kwarm_config_valid is not 0");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = daemonsets.get(DS).await?;
    assert_eq!(after.metadata.generation, before.metadata.generation, "a refused edit wrote the DaemonSet");
    assert_eq!(holder_images(&after), holder_images(&before));
    assert!(manager.log_text().contains("Refused the edit"), "no log line for the refused edit");

    // Fixed: applied at once (the medium image goes, IMAGE_RETENTION 0s)
    configmaps.replace("kwarm", &PostParams::default(), &data(&[("IMAGES", small)])?).await?;
    wait_daemonset_images(&client, &ns, &[small], Duration::from_secs(30)).await?;
    let metrics = manager.metrics_text().await?;
    assert!(metrics.lines().any(|l| l == "kwarm_config_valid 1"), "kwarm_config_valid is not 1 again");
    manager.stop().await?;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await?;
    Ok(())
}
