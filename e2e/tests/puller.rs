//! kubernetes-image-puller users switch to kwarm with their own files, used the way they use them:
//! the puller's Helm values file, every parameter of its OpenShift templates, and an install by a
//! user who is only a namespace admin. The puller's files are read at test time from its source
//! archive in KWARM_PEERS_DIR (default: `../shared/peers` beside the checkout); where it is absent
//! a test prints that it was skipped and why.
//!
//! The images the puller's files name (quay.io/che-incubator/che-code:next, …) are served to the
//! real node's containerd by the local registry (hack/cluster-up.sh mirrors quay.io there), so the
//! files stay as they are and nothing leaves the machine.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Client;
use kube::api::{Api, PostParams};
use kwarm_e2e::{
    REGISTRY, SLEEP_IMAGE, client, containerd_has_image, containerd_remove_image, create_namespace,
    delete_namespace,
};
use serde_json::{Value, json};
use support::holder_images;
use support::tools::*;

/// The images of the puller's own values.yaml and configmap template.
const PULLER_IMAGES: [&str; 2] =
    ["quay.io/che-incubator/che-code:next", "quay.io/devfile/base-developer-image:ubi9-latest"];
const LOCAL_VALUES: &str = "deploy/helm/ci/local-cluster-values.yaml";
const KWARM_IMAGE: &str = "127.0.0.1:5000/kwarm/kwarm:dev";

fn peers_dir() -> PathBuf {
    std::env::var_os("KWARM_PEERS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/peers"))
}

/// The puller's source archive, or `None` (and a line saying the test is skipped) without it.
fn puller_archive(test: &str) -> Option<PathBuf> {
    let dir = peers_dir();
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("che-kubernetes-image-puller-") && n.ends_with(".tar.gz"))
        })
    });
    if found.is_none() {
        println!(
            "SKIPPED {test}: no che-kubernetes-image-puller-*.tar.gz in {} (set KWARM_PEERS_DIR to the peers' sources)",
            dir.display()
        );
    }
    found
}

/// One file of the puller's source archive, as text.
async fn puller_file(archive: &std::path::Path, path: &str) -> Result<String> {
    let archive = archive.to_str().context("archive path")?;
    run(std::path::Path::new("tar"), &["-xzOf", archive, path], None).await
}

/// A template's parameters: (name, default value).
async fn template_parameters(text: &str) -> Result<Vec<(String, String)>> {
    let docs = yaml_documents(text).await?;
    let template = docs.first().context("an empty template")?;
    Ok(template["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["value"].as_str().map(str::to_string).unwrap_or_else(|| p["value"].to_string()),
            )
        })
        .collect())
}

/// `helm upgrade --install kubernetes-image-puller deploy/helm -n NS -f <local knobs> -f VALUES`,
/// as a puller user runs it with their values file; returns helm's output (with the NOTES).
async fn install_kwarm_with_puller_values(ns: &str, values: &str, create_namespace: bool) -> Result<String> {
    let mut args = vec!["upgrade", "--install", "kubernetes-image-puller", "deploy/helm", "-n", ns];
    if create_namespace {
        args.push("--create-namespace");
    }
    args.extend(["-f", LOCAL_VALUES, "-f", values, "--wait", "--timeout", "120s"]);
    helm(&args).await
}

async fn manager_log(ns: &str, deployment: &str) -> String {
    kubectl(&["-n", ns, "logs", &format!("deployment/{deployment}"), "--tail=200"], None)
        .await
        .unwrap_or_else(|e| format!("(no log: {e:#})"))
}

// --- the puller's values.yaml ------------------------------------------------------------------

#[tokio::test]
async fn the_pullers_values_file_installs_a_working_kwarm() -> Result<()> {
    let Some(archive) = puller_archive("the_pullers_values_file_installs_a_working_kwarm") else {
        return Ok(());
    };
    let started = Instant::now();
    let dir = tempdir("puller-values")?;
    let values = dir.join("values.yaml");
    std::fs::write(&values, puller_file(&archive, "deploy/helm/values.yaml").await?)?;
    let values = values.to_str().context("path")?;

    // Rendered: every puller value keeps its meaning, including those that used to be ignored.
    let overrides = dir.join("overrides.yaml");
    std::fs::write(
        &overrides,
        "deploymentAnnotations: {owner: team-a}\ncontainerSecurityContext: {runAsUser: 1234}\n",
    )?;
    let rendered = yaml_documents(
        &helm(
            &[
                "template",
                "kubernetes-image-puller",
                "deploy/helm",
                "-n",
                "k8s-image-puller",
                "-f",
                values,
                "-f",
            ]
            .into_iter()
            .chain([overrides.to_str().context("path")?])
            .collect::<Vec<_>>(),
        )
        .await?,
    )
    .await?;
    let deployment = find(&rendered, "Deployment")?;
    assert_eq!(deployment["metadata"]["annotations"]["owner"], "team-a", "deploymentAnnotations");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["runAsUser"], 1234, "containerSecurityContext is applied");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "…over kwarm's restricted one");
    assert_eq!(container["image"], "ghcr.io/kwarm/kwarm:v0.1.0", "the puller's image is replaced by kwarm's");
    let cm = find(&rendered, "ConfigMap")?;
    kwarm_check(cm).await?;

    // Installed on the real cluster with the puller's file as it is (after the local-cluster knobs).
    let client = client().await?;
    let ns = "k8s-image-puller";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(ns).await?.is_some() {
        delete_namespace(&client, ns, Duration::from_secs(120)).await?;
    }
    for image in PULLER_IMAGES {
        containerd_remove_image(image).await?;
    }
    let result = puller_values_install(&client, ns, values).await;
    let _ = helm(&["uninstall", "kubernetes-image-puller", "-n", ns, "--wait", "--timeout", "90s"]).await;
    delete_namespace(&client, ns, Duration::from_secs(120)).await?;
    result?;
    println!("the puller's values.yaml: installed, warm, uninstalled in {} s", started.elapsed().as_secs());
    Ok(())
}

async fn puller_values_install(client: &Client, ns: &str, values: &str) -> Result<()> {
    const NAME: &str = "kubernetes-image-puller";
    let out = install_kwarm_with_puller_values(ns, values, true).await?;
    ensure!(
        out.contains("names kubernetes-image-puller's image (quay.io/eclipse/kubernetes-image-puller:next)")
            && out.contains(&format!("runs kwarm's own image {KWARM_IMAGE} instead")),
        "NOTES do not say the puller's image was replaced:\n{out}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = deployments.get(NAME).await?;
    let pod = deployment.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("no pod spec")?;
    assert_eq!(pod.containers[0].image.as_deref(), Some(KWARM_IMAGE));
    assert_eq!(pod.service_account_name.as_deref(), Some("k8s-image-puller"));

    let ds = holders_ready_or_explain(client, ns, NAME, PULLER_IMAGES.len(), NAME).await?;
    assert_eq!(holder_images(&ds), PULLER_IMAGES.map(String::from).to_vec());
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("no pod spec")?;
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["che-code", "base-developer-image"], "the puller's container names");
    let limits = spec.containers[0].resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("20Mi"), "cachingMemoryLimit");
    for image in PULLER_IMAGES {
        ensure!(containerd_has_image(image).await?, "{image} is not in containerd on the real node");
    }
    let log = manager_log(ns, NAME).await;
    ensure!(
        log.contains("kubernetes-image-puller's image for the manager")
            && log.contains("quay.io/eclipse/kubernetes-image-puller:next"),
        "the manager's log does not say its image was replaced:\n{log}"
    );
    ensure!(!log.contains("Reconcile failed"), "the manager's log has failures:\n{log}");
    Ok(())
}

// --- the puller's OpenShift templates ----------------------------------------------------------

const TEMPLATES: [&str; 3] = ["serviceaccount.yaml", "configmap.yaml", "app.yaml"];

#[tokio::test]
async fn the_pullers_openshift_parameters_process_and_apply() -> Result<()> {
    let Some(archive) = puller_archive("the_pullers_openshift_parameters_process_and_apply") else {
        return Ok(());
    };
    let started = Instant::now();
    // Every `-p NAME=value` the puller's templates accept is accepted by kwarm's template of the
    // same name; where the puller set a default, the meaning is the same.
    let mut puller: Vec<(&str, Vec<(String, String)>)> = Vec::new();
    for t in TEMPLATES {
        let text = puller_file(&archive, &format!("deploy/openshift/{t}")).await?;
        let params = template_parameters(&text).await?;
        ensure!(!params.is_empty(), "the puller's {t} has no parameters");
        let ours = format!("openshift/{t}");
        let mut args = vec![ours.clone()];
        for (name, value) in &params {
            args.extend(["-p".to_string(), format!("{name}={value}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let list =
            process_template(&args).await.with_context(|| format!("{ours} with the puller's parameters"))?;
        ensure!(
            !list["items"].as_array().into_iter().flatten().any(|o| o["metadata"].get("namespace").is_some()),
            "{ours} pins a namespace: the current project must decide"
        );
        if t == "configmap.yaml" {
            // The puller's defaults (its own KIP_IMAGE, its images) are a valid kwarm configuration;
            // its init image is replaced, with a warning naming the image to mirror.
            let cm = find(list["items"].as_array().context("items")?, "ConfigMap")?;
            let check = kwarm_check(cm).await?;
            ensure!(
                check.contains("warning: KIP_IMAGE=\"quay.io/eclipse/kubernetes-image-puller:next\"")
                    && check.contains("ghcr.io/kwarm/sleep:v0.1.0"),
                "kwarm check does not warn about the puller's KIP_IMAGE:\n{check}"
            );
            assert_eq!(cm["metadata"]["name"], "k8s-image-puller", "the puller's ConfigMap name");
        }
        puller.push((t, params));
    }
    // Our defaults are the puller's for the names it defines (its image aside: kwarm runs its own).
    for (t, params) in &puller {
        let defaults =
            template_parameters(&std::fs::read_to_string(root().join("openshift").join(t))?).await?;
        for (name, value) in params {
            if ["IMAGE", "IMAGE_TAG", "KIP_IMAGE", "IMAGES"].contains(&name.as_str()) {
                continue;
            }
            let ours = defaults.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
            assert_eq!(ours, Some(value.as_str()), "{t}: default of {name}");
        }
    }

    // The puller's documented flow: a project, then `oc process -f <t> [-p ...] | oc apply -f -`
    // for each template, with the puller's parameter values (and the local cluster's knobs).
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-pullerflow-").await?;
    let result = puller_flow(&client, &ns, &puller).await;
    let _ = kubectl(
        &[
            "delete",
            "clusterrole,clusterrolebinding",
            &format!("kwarm-{ns}-k8s-image-puller"),
            "--ignore-not-found",
        ],
        None,
    )
    .await;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await?;
    result?;
    println!(
        "the puller's OpenShift parameters: processed, dry-run, applied, warm in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}

async fn puller_flow(client: &Client, ns: &str, puller: &[(&str, Vec<(String, String)>)]) -> Result<()> {
    const NAME: &str = "kubernetes-image-puller";
    for image in PULLER_IMAGES {
        containerd_remove_image(image).await?;
    }
    let mut lists = Vec::new();
    for (t, params) in puller {
        let mut args = vec![format!("openshift/{t}")];
        for (name, value) in params {
            // the project is the test's; the images are the local ones an air-gapped user mirrors
            let value = match name.as_str() {
                "NAMESPACE" => ns.to_string(),
                "IMAGE" => format!("{REGISTRY}/kwarm/kwarm"),
                "IMAGE_TAG" => "dev".into(),
                "KIP_IMAGE" => SLEEP_IMAGE.into(),
                "NODE_SELECTOR" => r#"{"kubernetes.io/hostname":"127.0.0.1"}"#.into(),
                _ => value.clone(),
            };
            args.extend(["-p".to_string(), format!("{name}={value}")]);
        }
        if *t == "serviceaccount.yaml" {
            args.extend(["-p".to_string(), format!("NAMESPACE={ns}")]);
        }
        if *t == "app.yaml" {
            for p in [
                "DEPLOYMENT_IMAGE_PULL_POLICY=Always",
                "HOST_NETWORK=true",
                "METRICS_PORT=18380",
                "HEALTH_PORT=18381",
            ] {
                args.extend(["-p".to_string(), p.to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut list = process_template(&args).await?;
        if *t == "app.yaml" {
            list = local_cluster_knobs(list)?;
        }
        lists.push(list);
    }
    for list in &lists {
        let text = serde_json::to_string(list)?;
        kubectl(&["apply", "-n", ns, "--server-side", "--dry-run=server", "-f", "-"], Some(&text)).await?;
    }
    for list in &lists {
        kubectl(&["apply", "-n", ns, "-f", "-"], Some(&serde_json::to_string(list)?)).await?;
    }
    let ds = holders_ready_or_explain(client, ns, NAME, PULLER_IMAGES.len(), NAME).await?;
    assert_eq!(holder_images(&ds), PULLER_IMAGES.map(String::from).to_vec());
    for image in PULLER_IMAGES {
        ensure!(containerd_has_image(image).await?, "{image} is not in containerd on the real node");
    }
    Ok(())
}

// --- a namespace admin ---------------------------------------------------------------------------

#[tokio::test]
async fn a_namespace_admin_installs_with_one_value() -> Result<()> {
    let started = Instant::now();
    let client = client().await?;
    let ns = create_namespace(&client, "kwarm-e2e-nsadmin-").await?;
    let result = namespace_admin_install(&client, &ns).await;
    let _ = helm(&["uninstall", "kwarm", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    delete_namespace(&client, &ns, Duration::from_secs(120)).await?;
    result?;
    println!(
        "namespace admin: refused cluster-wide, installed with rbac.clusterWide=false, warm in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// A kubeconfig for ServiceAccount `tenant` of `ns`, bound to the `admin` ClusterRole in `ns` only.
async fn namespace_admin_kubeconfig(client: &Client, ns: &str) -> Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "tenant"}}))?)
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "metadata": {"name": "tenant-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}]
    });
    bindings.create(&PostParams::default(), &serde_json::from_value(binding)?).await?;
    let token = kubectl(&["-n", ns, "create", "token", "tenant", "--duration=1h"], None).await?;
    let admin: Value =
        serde_json::from_str(&kubectl(&["config", "view", "--raw", "--minify", "-o", "json"], None).await?)?;
    let cluster = &admin["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "tenant", "user": {"token": token.trim()}}],
        "contexts": [{"name": "tenant", "context": {"cluster": "local", "user": "tenant", "namespace": ns}}],
        "current-context": "tenant"
    });
    let path = tempdir("nsadmin")?.join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config)?)?;
    Ok(path)
}

async fn namespace_admin_install(client: &Client, ns: &str) -> Result<()> {
    let kubeconfig = namespace_admin_kubeconfig(client, ns).await?;
    let helm_bin = tool("helm")?;
    let small = format!("{REGISTRY}/test/small:v1");
    let other = format!("{REGISTRY}/test/other:v1");
    let images = format!("configMap.images=small={small}");
    let base = ["upgrade", "--install", "kwarm", "deploy/helm", "-n", ns, "-f", LOCAL_VALUES, "--set-string"];

    // Without the value, the install needs rights a namespace admin does not have, and says so.
    let mut args: Vec<&str> = base.to_vec();
    args.extend([images.as_str(), "--wait", "--timeout", "60s"]);
    let refused = run_as(&kubeconfig, &helm_bin, &args, None).await;
    let err = format!("{:#}", refused.err().context("a namespace admin installed cluster-wide RBAC")?);
    ensure!(err.contains("clusterroles") && err.contains("forbidden"), "unexpected failure:\n{err}");
    let _ = run_as(&kubeconfig, &helm_bin, &["uninstall", "kwarm", "-n", ns, "--wait"], None).await;

    // With rbac.clusterWide=false it installs, warms IMAGES, and watches the namespace's Deployments.
    for image in [&small, &other] {
        containerd_remove_image(image).await?;
    }
    let mut args: Vec<&str> = base.to_vec();
    args.extend([images.as_str(), "--set", "rbac.clusterWide=false", "--wait", "--timeout", "120s"]);
    run_as(&kubeconfig, &helm_bin, &args, None).await?;
    holders_ready_or_explain(client, ns, "kwarm", 1, "kwarm").await?;
    ensure!(containerd_has_image(&small).await?, "{small} is not in containerd");

    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"kwarm.io/enabled": "true"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": other}]}}}
    });
    kubectl_as(&kubeconfig, &["-n", ns, "apply", "-f", "-"], Some(&deployment.to_string())).await?;
    let ds = holders_ready_or_explain(client, ns, "kwarm", 2, "kwarm").await?;
    ensure!(holder_images(&ds).contains(&other), "the namespace's labelled Deployment was not warmed");
    ensure!(containerd_has_image(&other).await?, "{other} is not in containerd");
    let log = manager_log(ns, "kwarm").await;
    ensure!(!log.contains("Reconcile failed"), "the manager's log has failures:\n{log}");
    Ok(())
}

async fn kubectl_as(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    run_as(kubeconfig, &tool("kubectl")?, args, stdin).await
}

// --- migration from the real puller --------------------------------------------------------------

/// What the sampler saw: for every node × image, how many running holders there were.
#[derive(Debug, Default)]
struct CoverageReport {
    samples: usize,
    /// The smallest number of running holders of one image on one node, over all samples.
    min: usize,
    /// The first sample where some node held no running holder of an image.
    first_gap: Option<String>,
    errors: usize,
}

/// Running holders per (node, container name) in the pods given.
fn running_holders(
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> std::collections::BTreeMap<(String, String), usize> {
    let mut count = std::collections::BTreeMap::new();
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        for status in pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()) {
            if status.state.as_ref().is_some_and(|s| s.running.is_some()) {
                *count.entry((node.clone(), status.name.clone())).or_insert(0) += 1;
            }
        }
    }
    count
}

/// Every 200 ms until `stop`: every node in `nodes` must run a holder of every container name in
/// `holders`, counting the pods of both DaemonSets (the puller's and kwarm's).
async fn sample_coverage(
    client: Client,
    sources: Vec<(String, String)>,
    nodes: Vec<String>,
    holders: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> CoverageReport {
    let mut report = CoverageReport { min: usize::MAX, ..Default::default() };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let mut pods = Vec::new();
        let mut failed = false;
        for (ns, selector) in &sources {
            let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
            match api.list(&kube::api::ListParams::default().labels(selector)).await {
                Ok(list) => pods.extend(list.items),
                Err(_) => failed = true,
            }
        }
        if failed {
            report.errors += 1;
            continue;
        }
        let count = running_holders(&pods);
        report.samples += 1;
        for node in &nodes {
            for holder in &holders {
                let n = count.get(&(node.clone(), holder.clone())).copied().unwrap_or(0);
                if n < report.min {
                    report.min = n;
                }
                if n == 0 && report.first_gap.is_none() {
                    report.first_gap =
                        Some(format!("{holder} on {node} at {} ms", started.elapsed().as_millis()));
                }
            }
        }
    }
    report
}

#[tokio::test]
async fn migrating_from_the_real_puller_never_leaves_a_node_without_its_images() -> Result<()> {
    let test = "migrating_from_the_real_puller_never_leaves_a_node_without_its_images";
    let Some(archive) = puller_archive(test) else { return Ok(()) };
    let manifest = format!("http://{REGISTRY}/v2/eclipse/kubernetes-image-puller/manifests/next");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    if run(std::path::Path::new("curl"), &["-fsS", "-o", "/dev/null", "-H", accept, &manifest], None)
        .await
        .is_err()
    {
        println!(
            "SKIPPED {test}: no kubernetes-image-puller image in the local registry (hack/peers.sh builds it; hack/e2e.sh runs it)"
        );
        return Ok(());
    }
    let client = client().await?;
    let nodes = kwarm_e2e::create_kwok_nodes(
        &client,
        "kwok-migration",
        3,
        &Default::default(),
        Duration::from_secs(60),
    )
    .await?;
    let kwarm_ns = create_namespace(&client, "kwarm-e2e-migration-").await?;
    let result = migrate(&client, &archive, &kwarm_ns, &nodes).await;
    let _ = helm(&[
        "uninstall",
        "kubernetes-image-puller",
        "-n",
        "k8s-image-puller",
        "--wait",
        "--timeout",
        "90s",
    ])
    .await;
    let _ =
        helm(&["uninstall", "kubernetes-image-puller", "-n", &kwarm_ns, "--wait", "--timeout", "90s"]).await;
    delete_namespace(&client, "k8s-image-puller", Duration::from_secs(120)).await?;
    delete_namespace(&client, &kwarm_ns, Duration::from_secs(120)).await?;
    kwarm_e2e::delete_nodes(&client, &nodes).await?;
    result
}

async fn migrate(client: &Client, archive: &std::path::Path, kwarm_ns: &str, kwok: &[String]) -> Result<()> {
    const NAME: &str = "kubernetes-image-puller";
    const PULLER_NS: &str = "k8s-image-puller";
    let dir = tempdir("migration")?;
    let dir_str = dir.to_str().context("path")?;
    let archive_str = archive.to_str().context("path")?;
    run(std::path::Path::new("tar"), &["-xzf", archive_str, "-C", dir_str, "deploy/helm"], None).await?;
    let chart = dir.join("deploy/helm");
    let values = chart.join("values.yaml");
    let (chart, values) = (chart.to_str().context("path")?, values.to_str().context("path")?);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(PULLER_NS).await?.is_some() {
        delete_namespace(client, PULLER_NS, Duration::from_secs(120)).await?;
    }
    for image in PULLER_IMAGES {
        containerd_remove_image(image).await?;
    }

    // 1. The puller, installed with its own chart and values (the local cluster's knobs come from
    //    a post-renderer: host network and the API server's address, nothing else).
    let t = Instant::now();
    helm(&[
        "install",
        NAME,
        chart,
        "-n",
        PULLER_NS,
        "--create-namespace",
        "-f",
        values,
        "--post-renderer",
        "hack/local-cluster-post-renderer.py",
        "--wait",
        "--timeout",
        "180s",
    ])
    .await?;
    let puller_ds: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(client.clone(), PULLER_NS);
    let all_nodes: Vec<String> =
        std::iter::once(kwarm_e2e::REAL_NODE.to_string()).chain(kwok.iter().cloned()).collect();
    kwarm_e2e::wait_until("the puller's DaemonSet ready on every node", Duration::from_secs(180), || async {
        let Some(ds) = puller_ds.get_opt(NAME).await? else {
            return Ok(kwarm_e2e::Check::Pending("no DaemonSet".into()));
        };
        let s = ds.status.unwrap_or_default();
        Ok(
            if s.desired_number_scheduled as usize >= all_nodes.len()
                && s.number_ready == s.desired_number_scheduled
            {
                kwarm_e2e::Check::Done(())
            } else {
                kwarm_e2e::Check::Pending(format!("ready {}/{}", s.number_ready, s.desired_number_scheduled))
            },
        )
    })
    .await?;
    for image in PULLER_IMAGES {
        ensure!(containerd_has_image(image).await?, "the puller did not pull {image} on the real node");
    }
    println!(
        "the real puller: installed and warm on {} nodes in {} s",
        all_nodes.len(),
        t.elapsed().as_secs()
    );

    // The sampler watches both DaemonSets' pods from here to the end.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_coverage(
        client.clone(),
        vec![
            (PULLER_NS.to_string(), "app.kubernetes.io/name=image-puller".to_string()),
            (kwarm_ns.to_string(), "app.kubernetes.io/name=kwarm".to_string()),
        ],
        all_nodes.clone(),
        vec!["che-code".to_string(), "base-developer-image".to_string()],
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. README's migration: kwarm with the same values file, in a namespace of its own, until warm.
    let migration = Instant::now();
    install_kwarm_with_puller_values(kwarm_ns, values, false).await?;
    holders_ready_or_explain(client, kwarm_ns, NAME, PULLER_IMAGES.len(), NAME).await?;
    let warm = migration.elapsed();
    // 3. Then the puller goes (on SIGTERM it deletes its DaemonSet; its pods go with it).
    helm(&["uninstall", NAME, "-n", PULLER_NS, "--wait", "--timeout", "90s"]).await?;
    wait_no_pods(client, PULLER_NS, "app.kubernetes.io/name=image-puller", Duration::from_secs(90)).await?;
    let took = migration.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send_replace(true);
    let report = sampler.await?;
    println!(
        "migration sampler: {} samples every 200 ms over {} nodes x {} images, min running holders {} \
         (API errors {}); kwarm warm after {} ms, puller gone after {} ms",
        report.samples,
        all_nodes.len(),
        PULLER_IMAGES.len(),
        report.min,
        report.errors,
        warm.as_millis(),
        took.as_millis()
    );
    ensure!(report.samples >= 10, "too few samples: {report:?}");
    ensure!(report.first_gap.is_none() && report.min >= 1, "a node was without a holder: {report:?}");
    // kwarm holds the images alone now, and they are still in containerd on the real node.
    let kwarm_pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), kwarm_ns);
    let pods =
        kwarm_pods.list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=kwarm")).await?;
    let count = running_holders(&pods.items);
    for node in &all_nodes {
        for holder in ["che-code", "base-developer-image"] {
            ensure!(
                count.get(&(node.clone(), holder.to_string())).is_some_and(|n| *n >= 1),
                "kwarm holds no {holder} on {node}"
            );
        }
    }
    for image in PULLER_IMAGES {
        ensure!(containerd_has_image(image).await?, "{image} is gone from containerd on the real node");
    }
    Ok(())
}
