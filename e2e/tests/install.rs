//! Installing kwarm the ways users do, on the real local cluster: the Helm chart with a values file
//! written for kubernetes-image-puller (install, upgrade without a gap, uninstall), the OpenShift
//! templates (processed by hack/process-template.py as `oc process` would, dry-run then applied),
//! and `kubectl apply -k` / `kubectl delete -k`. helm and kubectl are the project's cached builds
//! (hack/build-bins.sh), run as processes with the cluster's KUBECONFIG.
//!
//! The local cluster has no kube-proxy, so every install here uses the local-cluster knobs (host
//! network, API server at 127.0.0.1:6443, ports of its own, the real node only).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, watcher};
use kwarm_e2e::{
    REGISTRY, SLEEP_IMAGE, client, containerd_has_image, containerd_remove_image, create_namespace,
    delete_namespace,
};
use serde_json::{Value, json};
use support::holder_images;
use support::tools::*;

const RELEASE: &str = "kwarm";
const LOCAL_VALUES: &str = "deploy/helm/ci/local-cluster-values.yaml";
const LOCAL_OVERLAY: &str = "deploy/kustomize/overlays/local-cluster";
/// Namespace the local-cluster overlay installs into.
const OVERLAY_NS: &str = "kwarm-local";
/// Every holder pod carries this label (and `app.kubernetes.io/instance=<DaemonSet name>`).
const HOLDER_LABEL: &str = "app.kubernetes.io/name=kwarm";

fn image(name: &str) -> String {
    format!("{REGISTRY}/test/{name}")
}

// --- Helm --------------------------------------------------------------------------------------

/// A values file the way kubernetes-image-puller users write theirs (its value names, IMAGES as a
/// folded `name=image;` list, nodeSelector as a JSON string), pointed at the local registry.
fn puller_values(images: &[(&str, String)]) -> String {
    let list: String = images.iter().map(|(n, i)| format!("    {n}={i};\n")).collect();
    format!(
        r#"deploymentName: kubernetes-image-puller
image:
  repository: {REGISTRY}/kwarm/kwarm
  tag: dev
serviceAccount:
  name: k8s-image-puller
priorityClassName: {{}}
configMap:
  name: k8s-image-puller
  images: >
{list}  cachingIntervalHours: 1
  cachingMemoryRequest: "10Mi"
  cachingMemoryLimit: "20Mi"
  cachingCpuRequest: ".05"
  cachingCpuLimit: ".2"
  nodeSelector: '{{"kubernetes.io/hostname": "127.0.0.1"}}'
  imagePullSecrets: ""
  affinity: "{{}}"
  tolerations: "[]"
  kipImage: {SLEEP_IMAGE}
"#
    )
}

#[tokio::test]
async fn helm_chart_lints_and_renders_puller_values() -> Result<()> {
    let started = Instant::now();
    let dir = tempdir("helm-lint")?;
    let values = dir.join("puller-values.yaml");
    std::fs::write(&values, puller_values(&[("small", image("small:v1")), ("other", image("other:v1"))]))?;
    let values = values.to_str().context("path")?;
    helm(&["lint", "deploy/helm"]).await?;
    helm(&["lint", "deploy/helm", "-f", LOCAL_VALUES, "-f", values]).await?;

    // The puller's values render a ConfigMap the manager accepts, with the puller's variables.
    let render = |extra: Vec<String>| async move {
        let mut args = vec!["template", "kwarm", "deploy/helm", "-n", "ns1"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        yaml_documents(&helm(&args).await?).await
    };
    let objects = render(vec!["-f".into(), values.into()]).await?;
    let cm = find(&objects, "ConfigMap")?;
    assert_eq!(cm["metadata"]["name"], "k8s-image-puller");
    assert_eq!(cm["data"]["NODE_SELECTOR"], r#"{"kubernetes.io/hostname": "127.0.0.1"}"#);
    assert_eq!(cm["data"]["DAEMONSET_NAME"], "kubernetes-image-puller");
    assert_eq!(cm["data"]["NAMESPACE"], "ns1", "NAMESPACE defaults to the release namespace");
    assert_eq!(cm["data"]["CACHING_INTERVAL_HOURS"], "1");
    assert_eq!(cm["data"]["CACHING_CPU_REQUEST"], ".05");
    kwarm_check(cm).await?;
    let deployment = find(&objects, "Deployment")?;
    let pod = &deployment["spec"]["template"];
    assert_eq!(deployment["metadata"]["name"], "kubernetes-image-puller");
    assert_eq!(pod["spec"]["serviceAccountName"], "k8s-image-puller");
    assert_eq!(pod["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"], "k8s-image-puller");
    assert!(pod["metadata"]["annotations"]["checksum/config"].as_str().is_some_and(|s| s.len() == 64));
    assert!(pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or_default() >= 10);
    assert_eq!(pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["spec"]["containers"][0]["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(
        pod["spec"].get("priorityClassName").is_none(),
        "the puller's priorityClassName: {{}} means unset"
    );
    assert!(pod["spec"].get("hostNetwork").is_none(), "hostNetwork is off by default");

    // JSON strings and YAML give the same variables; a different config gives another checksum.
    let yaml_values = dir.join("yaml-values.yaml");
    std::fs::write(
        &yaml_values,
        "configMap:\n  nodeSelector: {kubernetes.io/hostname: \"127.0.0.1\"}\n  \
         tolerations: [{key: dedicated, operator: Exists}]\n  daemonsetAnnotations: {team: platform}\n",
    )?;
    let yaml_form =
        render(vec!["-f".into(), values.into(), "-f".into(), yaml_values.to_str().context("path")?.into()])
            .await?;
    let yaml_cm = find(&yaml_form, "ConfigMap")?;
    assert_eq!(yaml_cm["data"]["NODE_SELECTOR"], r#"{"kubernetes.io/hostname":"127.0.0.1"}"#);
    assert_eq!(yaml_cm["data"]["TOLERATIONS"], r#"[{"key":"dedicated","operator":"Exists"}]"#);
    assert_eq!(yaml_cm["data"]["DAEMONSET_ANNOTATIONS"], r#"{"team":"platform"}"#);
    kwarm_check(yaml_cm).await?;
    assert_ne!(
        find(&yaml_form, "Deployment")?["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        pod["metadata"]["annotations"]["checksum/config"]
    );

    // Least privilege: no secrets unless pull secrets are inherited; the ClusterRole only reads
    // Deployments and writes events.
    let rules = |objects: &[Value], kind: &str| -> Result<Vec<Value>> {
        Ok(find(objects, kind)?["rules"].as_array().cloned().unwrap_or_default())
    };
    let mentions = |rules: &[Value], resource: &str| {
        rules.iter().any(|r| r["resources"].as_array().is_some_and(|rs| rs.iter().any(|x| x == resource)))
    };
    assert!(!mentions(&rules(&objects, "Role")?, "secrets"));
    let cluster_rules = rules(&objects, "ClusterRole")?;
    assert!(!mentions(&cluster_rules, "secrets"));
    for rule in &cluster_rules {
        let verbs: Vec<&str> =
            rule["verbs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if mentions(std::slice::from_ref(rule), "deployments") {
            assert_eq!(verbs, ["list", "watch"], "cluster-wide Deployments are only read");
        } else {
            assert!(mentions(std::slice::from_ref(rule), "events"), "unexpected cluster rule {rule}");
        }
    }
    let inherit = render(vec!["--set".into(), "configMap.inheritPullSecrets=true".into()]).await?;
    assert!(mentions(&rules(&inherit, "Role")?, "secrets"));
    assert!(mentions(&rules(&inherit, "ClusterRole")?, "secrets"));

    // An existing ConfigMap (say, the one a kubernetes-image-puller install left) is used as it is.
    let existing =
        render(vec!["--set".into(), "configMap.create=false,configMap.name=k8s-image-puller".into()]).await?;
    ensure!(find(&existing, "ConfigMap").is_err(), "configMap.create=false still renders a ConfigMap");
    assert_eq!(
        find(&existing, "Deployment")?["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]
            ["name"],
        "k8s-image-puller"
    );

    // The ServiceMonitor only where its API exists.
    let with_sm = vec!["--set".to_string(), "metrics.serviceMonitor.enabled=true".to_string()];
    assert!(find(&render(with_sm.clone()).await?, "ServiceMonitor").is_err());
    let mut with_api = with_sm;
    with_api.extend(["--api-versions".into(), "monitoring.coreos.com/v1/ServiceMonitor".into()]);
    let objects = render(with_api).await?;
    find(&objects, "ServiceMonitor")?;
    find(&objects, "Service")?;
    println!("helm lint and template checks: {} ms", started.elapsed().as_millis());
    Ok(())
}

#[tokio::test]
async fn helm_install_upgrade_uninstall() -> Result<()> {
    let started = Instant::now();
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-helm-").await?;
    let result = helm_lifecycle(&client, &ns).await;
    if result.is_err() {
        let _ = helm(&["uninstall", RELEASE, "-n", &ns, "--wait", "--timeout", "60s"]).await;
    }
    delete_namespace(&client, &ns, Duration::from_secs(120)).await?;
    result?;
    println!("helm install, upgrade, uninstall: {} s", started.elapsed().as_secs());
    Ok(())
}

async fn helm_lifecycle(client: &Client, ns: &str) -> Result<()> {
    const DS: &str = "kubernetes-image-puller";
    let (kept, dropped, added) = (image("layers:v1"), image("small:v2"), image("small:v3"));
    for i in [&kept, &dropped, &added] {
        containerd_remove_image(i).await?;
    }
    let dir = tempdir("helm")?;
    let values = dir.join("values.yaml");
    let values_arg = values.to_str().context("path")?.to_owned();
    let install = |what: &'static str| {
        let (ns, values) = (ns.to_owned(), values_arg.clone());
        async move {
            let t = Instant::now();
            helm(&[
                "upgrade",
                "--install",
                RELEASE,
                "deploy/helm",
                "--namespace",
                &ns,
                "-f",
                LOCAL_VALUES,
                "-f",
                &values,
                "--set",
                "metrics.port=18180",
                "--set",
                "health.port=18181",
                "--set-string",
                &format!("configMap.watchNamespaces={ns}"),
                "--wait",
                "--timeout",
                "120s",
            ])
            .await?;
            println!("helm {what}: {} ms", t.elapsed().as_millis());
            anyhow::Ok(())
        }
    };

    // 1. Install: both images end up on the real node.
    std::fs::write(&values, puller_values(&[("layers", kept.clone()), ("s2", dropped.clone())]))?;
    install("install").await?;
    let ds = holders_ready_or_explain(client, ns, DS, 2, DS).await?;
    assert_eq!(holder_images(&ds), [kept.clone(), dropped.clone()]);
    let owners = ds.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.iter().any(|o| o.kind == "Deployment" && o.name == DS),
        "the DaemonSet is not owned by the manager's Deployment: {owners:?}"
    );
    for i in [&kept, &dropped] {
        ensure!(
            containerd_has_image(i).await?,
            "{i} is not in the real node's containerd after helm install"
        );
    }

    // `helm test`: the chart's test pod (tests.image from the local registry) finds the manager
    // ready and its DaemonSet there; its objects are gone once it passed.
    let t = Instant::now();
    let out = helm(&["test", RELEASE, "-n", ns, "--timeout", "120s"]).await?;
    ensure!(out.contains("Phase:") && out.contains("Succeeded"), "helm test did not pass:\n{out}");
    ensure!(
        Api::<Pod>::namespaced(client.clone(), ns).get_opt("kubernetes-image-puller-test").await?.is_none(),
        "the test pod is left behind after it passed"
    );
    println!("helm test: {} ms", t.elapsed().as_millis());

    // 2. Upgrade with another list: the DaemonSet follows, and while it rolls the node always has
    //    a ready holder of the image that stays.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut stream = watcher(pods, watcher::Config::default().labels(HOLDER_LABEL)).boxed();
    let mut seen: BTreeMap<String, Pod> = BTreeMap::new();
    loop {
        match stream.next().await.context("watch ended")?? {
            watcher::Event::InitApply(p) => {
                seen.insert(p.metadata.name.clone().unwrap_or_default(), p);
            }
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    ensure!(ready_holders_of(&seen, &kept) == 1, "before the upgrade: no ready holder of {kept}");
    let managers = manager_pod_uids(client, ns).await?;
    std::fs::write(&values, puller_values(&[("layers", kept.clone()), ("s3", added.clone())]))?;
    let mut upgrade = Some(tokio::spawn(install("upgrade")));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut events = 0usize;
    loop {
        let done = seen.len() == 1
            && seen.values().all(|p| is_ready(p) && pod_images(p) == [kept.clone(), added.clone()]);
        if done {
            break;
        }
        if upgrade.as_ref().is_some_and(|u| u.is_finished())
            && let Some(u) = upgrade.take()
        {
            u.await??; // a failed helm upgrade fails the test now, not at the deadline
        }
        let event = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .with_context(|| format!("the holders did not follow the upgrade within 180 s; pods {seen:?}"))?
            .context("watch ended")??;
        support::track_pod(&mut seen, event);
        events += 1;
        ensure!(
            ready_holders_of(&seen, &kept) >= 1,
            "during the upgrade the node had no ready holder of {kept}; pods: {:?}",
            seen.values().map(|p| (p.metadata.name.clone(), is_ready(p), pod_images(p))).collect::<Vec<_>>()
        );
    }
    if let Some(u) = upgrade {
        u.await??;
    }
    let rolled = manager_pod_uids(client, ns).await?;
    ensure!(
        !rolled.is_empty() && rolled.iter().all(|uid| !managers.contains(uid)),
        "the new ConfigMap did not roll the manager (checksum/config): before {managers:?}, after {rolled:?}"
    );
    println!("upgrade rolled the holders over {events} pod events, never without a holder of {kept}");
    let ds = holders_ready_or_explain(client, ns, DS, 2, DS).await?;
    assert_eq!(holder_images(&ds), [kept.clone(), added.clone()], "the DaemonSet follows the new list");
    ensure!(containerd_has_image(&added).await?, "{added} is not in containerd after the upgrade");

    // 3. Uninstall: the DaemonSet and its pods go with the manager's Deployment; so does the RBAC.
    let t = Instant::now();
    helm(&["uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "90s"]).await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    wait_gone(
        &daemonsets,
        DS,
        "the DaemonSet to be garbage-collected after helm uninstall",
        Duration::from_secs(90),
    )
    .await?;
    wait_no_pods(client, ns, HOLDER_LABEL, Duration::from_secs(90)).await?;
    let cluster_name = format!("kwarm-{ns}-{RELEASE}");
    ensure!(Api::<ClusterRole>::all(client.clone()).get_opt(&cluster_name).await?.is_none());
    ensure!(Api::<ClusterRoleBinding>::all(client.clone()).get_opt(&cluster_name).await?.is_none());
    println!("helm uninstall → DaemonSet and holder pods gone: {} ms", t.elapsed().as_millis());
    Ok(())
}

/// A value the manager would refuse at start makes `helm install` fail at once, naming the value,
/// and leaves nothing in the namespace (not even the release's record).
#[tokio::test]
async fn helm_install_refuses_invalid_values_and_creates_nothing() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-helm-schema-").await?;
    let result = refused_installs(&client, &ns).await;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await?;
    result
}

async fn refused_installs(client: &Client, ns: &str) -> Result<()> {
    for (set, named) in [
        ("configMap.cachingCpuRequest=abc", "configMap/cachingCpuRequest"),
        ("configMap.maxConcurrentNodes=101%", "configMap/maxConcurrentNodes"),
    ] {
        let t = Instant::now();
        let args = [
            "install",
            RELEASE,
            "deploy/helm",
            "-n",
            ns,
            "-f",
            LOCAL_VALUES,
            "--set",
            set,
            "--wait",
            "--timeout",
            "60s",
        ];
        let err = match helm(&args).await {
            Ok(out) => anyhow::bail!("helm install --set {set} succeeded:\n{out}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains(named) && err.contains("values don't meet the specifications of the schema"),
            "helm install --set {set} failed without naming {named}:\n{err}"
        );
        ensure!(
            t.elapsed() < Duration::from_secs(30),
            "helm install --set {set} took {:?} to fail: not at install time",
            t.elapsed()
        );
        println!(
            "helm install --set {set} refused in {} ms: {}",
            t.elapsed().as_millis(),
            err.lines().filter(|l| l.contains(named)).collect::<Vec<_>>().join(" ")
        );
    }
    // What the namespace holds: only what Kubernetes puts in every namespace.
    let list = ListParams::default();
    let secrets: Vec<String> = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .list(&list)
        .await?
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    ensure!(secrets.is_empty(), "secrets (a helm release record?) left in {ns}: {secrets:?}");
    let config_maps: Vec<String> =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
            .list(&list)
            .await?
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .filter(|n| n != "kube-root-ca.crt")
            .collect();
    ensure!(config_maps.is_empty(), "ConfigMaps left in {ns}: {config_maps:?}");
    let accounts: Vec<String> =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
            .list(&list)
            .await?
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .filter(|n| n != "default")
            .collect();
    ensure!(accounts.is_empty(), "ServiceAccounts left in {ns}: {accounts:?}");
    ensure!(
        Api::<Deployment>::namespaced(client.clone(), ns).list(&list).await?.items.is_empty(),
        "a Deployment in {ns}"
    );
    ensure!(
        Api::<DaemonSet>::namespaced(client.clone(), ns).list(&list).await?.items.is_empty(),
        "a DaemonSet in {ns}"
    );
    ensure!(Api::<Pod>::namespaced(client.clone(), ns).list(&list).await?.items.is_empty(), "pods in {ns}");
    let cluster_name = format!("kwarm-{ns}-{RELEASE}");
    ensure!(
        Api::<ClusterRole>::all(client.clone()).get_opt(&cluster_name).await?.is_none(),
        "ClusterRole {cluster_name}"
    );
    Ok(())
}

// --- OpenShift templates ---------------------------------------------------------------------

const TEMPLATES: [&str; 3] =
    ["openshift/serviceaccount.yaml", "openshift/configmap.yaml", "openshift/app.yaml"];

#[tokio::test]
async fn openshift_templates_process_and_apply() -> Result<()> {
    let started = Instant::now();
    // (That every parameter of kubernetes-image-puller's templates is accepted, with its default,
    // is checked against the puller's own templates in puller.rs.)
    // Defaults: every template processes with no parameter; typed values from ${{...}}; no UIDs.
    let mut defaults = Vec::new();
    for t in TEMPLATES {
        let list = process_template(&[t]).await?;
        ensure!(list["kind"] == "List", "{t}: not a List");
        defaults.extend(list["items"].as_array().cloned().unwrap_or_default());
    }
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        ensure!(!defaults.iter().any(|o| has_key(o, key)), "a template fixes {key}: OpenShift assigns it");
    }
    let deployment = find(&defaults, "Deployment")?;
    let spec = &deployment["spec"]["template"]["spec"];
    // the puller's names and defaults; nothing pinned to a namespace (the current project decides)
    assert_eq!(deployment["metadata"]["name"], "kubernetes-image-puller");
    assert_eq!(spec["serviceAccountName"], "k8s-image-puller");
    assert_eq!(spec["containers"][0]["envFrom"][0]["configMapRef"]["name"], "k8s-image-puller");
    assert_eq!(spec["containers"][0]["resources"]["limits"]["cpu"], "200m");
    ensure!(
        !defaults.iter().any(|o| o["metadata"].get("namespace").is_some()),
        "a template pins metadata.namespace"
    );
    assert_eq!(deployment["spec"]["replicas"], json!(1), "${{{{REPLICAS}}}} gives a number");
    assert_eq!(spec["hostNetwork"], json!(false), "${{{{HOST_NETWORK}}}} gives a boolean");
    assert_eq!(spec["containers"][0]["image"], "ghcr.io/kwarm/kwarm:v0.1.0");
    assert_eq!(spec["containers"][0]["ports"][0]["containerPort"], json!(8080));
    assert_eq!(spec["containers"][0]["env"][4]["value"], ":8080");
    let env = spec["containers"][0]["env"].as_array().cloned().unwrap_or_default();
    let config_map = env.iter().find(|e| e["name"] == "CONFIG_MAP").map(|e| e["value"].clone());
    assert_eq!(config_map, Some(json!("k8s-image-puller")), "CONFIG_MAP names the template's ConfigMap");
    assert_eq!(deployment["metadata"]["labels"]["app.kubernetes.io/part-of"], "kwarm", "template labels");
    let cm = find(&defaults, "ConfigMap")?;
    assert_eq!(cm["metadata"]["name"], "k8s-image-puller");
    assert_eq!(cm["data"]["CACHING_INTERVAL_HOURS"], "1");
    assert_eq!(cm["data"]["NODE_SELECTOR"], "{}");
    assert_eq!(cm["data"]["NAMESPACE"], "k8s-image-puller");
    assert_eq!(cm["data"]["DAEMONSET_NAME"], "kubernetes-image-puller");
    assert_eq!(cm["data"]["CACHING_MEMORY_REQUEST"], "10Mi");
    kwarm_check(cm).await?;

    // Required parameters cannot be emptied; unknown ones are refused.
    let err = process_template_error(&["openshift/configmap.yaml", "-p", "NAMESPACE="]).await?;
    ensure!(err.contains("parameter NAMESPACE is required and must be specified"), "{err}");
    let err = process_template_error(&["openshift/configmap.yaml", "-p", "NO_SUCH=1"]).await?;
    ensure!(err.contains(r#"unknown parameter name "NO_SUCH""#), "{err}");
    processor_semantics().await?;

    // Processed with the test's parameters, applied with server-side dry-run, then for real.
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-openshift-").await?;
    let result = openshift_apply(&client, &ns).await;
    let cluster_name = format!("kwarm-{ns}-k8s-image-puller");
    let _ = kubectl(&["delete", "clusterrole,clusterrolebinding", &cluster_name, "--ignore-not-found"], None)
        .await;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await?;
    result?;
    println!("OpenShift templates processed, dry-run, applied, warm: {} s", started.elapsed().as_secs());
    Ok(())
}

/// The Template API's rules on a small template of the test's own.
async fn processor_semantics() -> Result<()> {
    let dir = tempdir("template")?;
    let path = dir.join("t.json");
    let template = json!({
        "kind": "Template", "apiVersion": "template.openshift.io/v1",
        "metadata": {"name": "t"},
        "labels": {"from-${WHO}": "${WHO}"},
        "objects": [{
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm-${SUFFIX}", "namespace": "fixed"},
            "data": {"a": "x-${WHO}-${WHO}-${UNKNOWN}", "json": "${{OBJ}}", "mixed": "a${{OBJ}}"}
        }, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "two", "namespace": "${WHO}"},
            "data": {"n": "${{NUM}}", "text": "${{TEXT}}"}
        }],
        "parameters": [
            {"name": "WHO", "required": true},
            {"name": "SUFFIX", "generate": "expression", "from": "[a-z0-9]{6}"},
            {"name": "OBJ", "value": "{\"k\": [1, true]}"},
            {"name": "NUM", "value": "42"},
            {"name": "TEXT", "value": "not json"}
        ]
    });
    std::fs::write(&path, serde_json::to_string(&template)?)?;
    let path = path.to_str().context("path")?;
    let err = process_template_error(&[path]).await?;
    ensure!(err.contains("parameter WHO is required and must be specified"), "{err}");
    let list = process_template(&[path, "-p", "WHO=me"]).await?;
    let (one, two) = (&list["items"][0], &list["items"][1]);
    let name = one["metadata"]["name"].as_str().unwrap_or_default();
    ensure!(
        name.len() == 9 && name[3..].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "generated name {name}"
    );
    ensure!(one["metadata"].get("namespace").is_none(), "a fixed namespace is dropped: {one}");
    assert_eq!(two["metadata"]["namespace"], "me", "a parameterized namespace is kept");
    assert_eq!(one["data"]["a"], "x-me-me-${UNKNOWN}");
    assert_eq!(one["data"]["json"], json!({"k": [1, true]}));
    assert_eq!(one["data"]["mixed"], "a${{OBJ}}", "${{{{...}}}} only replaces a whole value");
    assert_eq!(two["data"]["n"], json!(42));
    assert_eq!(two["data"]["text"], "not json");
    assert_eq!(one["metadata"]["labels"]["from-me"], "me");
    Ok(())
}

async fn openshift_apply(client: &Client, ns: &str) -> Result<()> {
    let held = image("large:v1");
    containerd_remove_image(&held).await?;
    let images = format!("large={held}");
    let node_selector = r#"{"kubernetes.io/hostname":"127.0.0.1"}"#;
    let ns_param = format!("NAMESPACE={ns}");
    let processed = [
        process_template(&["openshift/serviceaccount.yaml", "-p", &ns_param]).await?,
        process_template(&[
            "openshift/configmap.yaml",
            "-p",
            &ns_param,
            "-p",
            &format!("IMAGES={images}"),
            "-p",
            &format!("KIP_IMAGE={SLEEP_IMAGE}"),
            "-p",
            &format!("NODE_SELECTOR={node_selector}"),
            "-p",
            &format!("WATCH_NAMESPACES={ns}"),
        ])
        .await?,
        local_cluster_knobs(
            process_template(&[
                "openshift/app.yaml",
                "-p",
                &format!("IMAGE={REGISTRY}/kwarm/kwarm"),
                "-p",
                "IMAGE_TAG=dev",
                "-p",
                "DEPLOYMENT_IMAGE_PULL_POLICY=Always",
                "-p",
                "HOST_NETWORK=true",
                "-p",
                "METRICS_PORT=18280",
                "-p",
                "HEALTH_PORT=18281",
            ])
            .await?,
        )?,
    ];
    let t = Instant::now();
    // `oc apply` puts the objects into the current project; `kubectl apply -n` does the same.
    for list in &processed {
        let text = serde_json::to_string(list)?;
        kubectl(&["apply", "-n", ns, "--server-side", "--dry-run=server", "-f", "-"], Some(&text)).await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    ensure!(
        deployments.get_opt("kubernetes-image-puller").await?.is_none(),
        "the dry-run created the Deployment"
    );
    println!("server-side dry-run of the processed templates: {} ms", t.elapsed().as_millis());
    for list in &processed {
        kubectl(&["apply", "-n", ns, "--server-side", "-f", "-"], Some(&serde_json::to_string(list)?))
            .await?;
    }
    let ds =
        holders_ready_or_explain(client, ns, "kubernetes-image-puller", 1, "kubernetes-image-puller").await?;
    assert_eq!(holder_images(&ds), vec![held.clone()]);
    ensure!(
        containerd_has_image(&held).await?,
        "{held} is not in containerd after the templates were applied"
    );
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("no pod spec")?;
    ensure!(
        spec.security_context.as_ref().is_some_and(|s| s.run_as_user == Some(65532)),
        "off OpenShift the holders keep kwarm's fixed UID (the route.openshift.io API is absent)"
    );
    Ok(())
}

// --- kustomize --------------------------------------------------------------------------------

#[tokio::test]
async fn kustomize_apply_then_delete_leaves_nothing() -> Result<()> {
    let started = Instant::now();
    let client = client().await?;
    // The top-level kustomization (the base, for real clusters) builds.
    let base = kubectl(&["kustomize", "deploy"], None).await?;
    let objects = yaml_documents(&base).await?;
    for kind in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
    ] {
        find(&objects, kind)?;
    }
    kwarm_check(find(&objects, "ConfigMap")?).await?;
    ensure!(!base.contains("hostNetwork"), "the base must not use the host network");

    // A leftover of an earlier failed run would make "nothing left" meaningless.
    kubectl(&["delete", "-k", LOCAL_OVERLAY, "--ignore-not-found", "--wait=true", "--timeout=120s"], None)
        .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_gone(&namespaces, OVERLAY_NS, "a leftover kwarm-local namespace to go", Duration::from_secs(120))
        .await?;

    let t = Instant::now();
    kubectl(&["apply", "-k", LOCAL_OVERLAY], None).await?;
    let ds = holders_ready_or_explain(&client, OVERLAY_NS, "kwarm", 2, "kwarm").await?;
    println!("kubectl apply -k → holders ready: {} ms", t.elapsed().as_millis());
    assert_eq!(holder_images(&ds), [image("small:v1"), image("other:v1")]);
    ensure!(
        ds.metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.kind == "Deployment" && o.name == "kwarm"),
        "the DaemonSet is not owned by the manager's Deployment"
    );

    let t = Instant::now();
    kubectl(&["delete", "-k", LOCAL_OVERLAY, "--wait=true", "--timeout=120s"], None).await?;
    wait_gone(&namespaces, OVERLAY_NS, "namespace kwarm-local to be gone", Duration::from_secs(120)).await?;
    let everywhere: Api<DaemonSet> = Api::all(client.clone());
    let left: Vec<String> = everywhere
        .list(&ListParams::default().labels("app.kubernetes.io/instance=kwarm"))
        .await?
        .items
        .into_iter()
        .filter(|d| d.metadata.namespace.as_deref() == Some(OVERLAY_NS))
        .filter_map(|d| d.metadata.name)
        .collect();
    ensure!(left.is_empty(), "DaemonSets left behind: {left:?}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), OVERLAY_NS);
    ensure!(pods.list(&ListParams::default()).await?.items.is_empty(), "pods left behind in {OVERLAY_NS}");
    ensure!(
        Api::<ClusterRole>::all(client.clone()).get_opt("kwarm-local").await?.is_none(),
        "ClusterRole left"
    );
    ensure!(
        Api::<ClusterRoleBinding>::all(client.clone()).get_opt("kwarm-local").await?.is_none(),
        "ClusterRoleBinding left"
    );
    println!("kubectl delete -k → nothing left: {} ms", t.elapsed().as_millis());
    println!("kustomize apply/delete: {} s", started.elapsed().as_secs());
    Ok(())
}
