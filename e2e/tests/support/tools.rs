//! The programs the install tests run (helm, kubectl, the template processor, kwarm check) and
//! what they look at in the cluster, shared by the install and kubernetes-image-puller tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use kwarm_e2e::{Check, REAL_NODE, describe_events, kubeconfig_path, wait_until};
use serde_json::{Value, json};

use super::{kwarm_bin, wait_holders_ready};

pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

// --- programs --------------------------------------------------------------------------------------

pub fn root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KWARM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    base.join("kwarm")
}

/// A version from hack/versions.sh (`NAME="${NAME:-v1.2.3}"`), the environment winning as there.
pub fn pinned_version(name: &str) -> Result<String> {
    if let Ok(v) = std::env::var(name)
        && !v.is_empty()
    {
        return Ok(v);
    }
    let text =
        std::fs::read_to_string(root().join("hack/versions.sh")).context("reading hack/versions.sh")?;
    let prefix = format!("{name}=\"${{{name}:-");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix).and_then(|r| r.strip_suffix("}\"")).map(str::to_owned))
        .with_context(|| format!("no {name} in hack/versions.sh"))
}

/// The cached build of helm or kubectl (hack/build-bins.sh), else the one on PATH.
pub fn tool(name: &str) -> Result<PathBuf> {
    let version = if name == "helm" {
        // hack/lib.sh's helm_bin: the name carries how hack/build-bins.sh builds it
        format!("{}-b{}", pinned_version("HELM_VERSION")?, pinned_version("HELM_BUILD")?)
    } else {
        pinned_version("KUBE_VERSION")?
    };
    let cached = cache_dir().join("bin").join(format!("{name}-{version}"));
    Ok(if cached.exists() { cached } else { PathBuf::from(name) })
}

/// Runs a program from the repository root with the cluster's KUBECONFIG and the cached tools on
/// PATH; returns stdout, or an error with the command line and stderr.
pub async fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    run_as(&kubeconfig_path(), program, args, stdin).await
}

/// [`run`] with another identity: the given kubeconfig.
pub async fn run_as(kubeconfig: &Path, program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![cache_dir().join("path")];
    dirs.extend(std::env::split_paths(&path));
    let shown = format!("{} {}", program.display(), args.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", std::env::join_paths(dirs)?)
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("stdin")?;
        pipe.write_all(text.as_bytes()).await?;
        drop(pipe);
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{shown}: still running after {}s", COMMAND_TIMEOUT.as_secs()))??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{shown} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim()
        );
    }
    Ok(stdout)
}

pub async fn helm(args: &[&str]) -> Result<String> {
    run(&tool("helm")?, args, None).await
}

pub async fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String> {
    run(&tool("kubectl")?, args, stdin).await
}

/// `hack/process-template.py ARGS...` → the processed v1 List.
pub async fn process_template(args: &[&str]) -> Result<Value> {
    let mut full = vec!["hack/process-template.py"];
    full.extend_from_slice(args);
    let out = run(Path::new("python3"), &full, None).await?;
    serde_json::from_str(&out).context("the processor's output is not JSON")
}

/// The processor's exit failure text (for the cases that must fail).
pub async fn process_template_error(args: &[&str]) -> Result<String> {
    let mut full = vec!["hack/process-template.py"];
    full.extend_from_slice(args);
    match run(Path::new("python3"), &full, None).await {
        Ok(out) => bail!("processing {args:?} should have failed; it printed:\n{out}"),
        Err(e) => Ok(format!("{e:#}")),
    }
}

/// YAML documents (e.g. `helm template` output) → JSON values, through PyYAML as the processor.
pub async fn yaml_documents(yaml: &str) -> Result<Vec<Value>> {
    let script = "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
    let out = run(Path::new("python3"), &["-c", script], Some(yaml)).await?;
    Ok(serde_json::from_str(&out)?)
}

pub fn find<'a>(objects: &'a [Value], kind: &str) -> Result<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind).with_context(|| format!("no {kind} among the objects"))
}

/// Whether a key appears anywhere in a JSON tree.
pub fn has_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == key || has_key(v, key)),
        Value::Array(items) => items.iter().any(|v| has_key(v, key)),
        _ => false,
    }
}

/// ConfigMap data → environment, then `kwarm check` on it: the manager accepts what was rendered.
pub async fn kwarm_check(config_map: &Value) -> Result<String> {
    let data = config_map["data"].as_object().context("ConfigMap without data")?;
    let output = tokio::process::Command::new(kwarm_bin())
        .arg("check")
        .env_clear()
        .envs(data.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())))
        .output()
        .await
        .context("running kwarm check (make build)")?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "kwarm check refused the rendered ConfigMap {data:?}:\n{text}");
    Ok(text)
}

// --- holder pods --------------------------------------------------------------------------------

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_images(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.iter().filter_map(|c| c.image.clone()).collect())
        .unwrap_or_default()
}

/// Holder pods on the real node, ready, not being deleted, holding `image`.
pub fn ready_holders_of(pods: &BTreeMap<String, Pod>, image: &str) -> usize {
    pods.values()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(REAL_NODE))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .filter(|p| pod_images(p).iter().any(|i| i == image))
        .count()
}

pub async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration) -> Result<()>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_until(what, timeout, || async {
        Ok(match api.get_opt(name).await? {
            None => Check::Done(()),
            Some(_) => Check::Pending(format!("{name} still there")),
        })
    })
    .await
}

/// UIDs of the manager's running pods (not being deleted).
pub async fn manager_pod_uids(client: &Client, ns: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=kwarm-manager")).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid)
        .collect())
}

pub async fn wait_no_pods(client: &Client, ns: &str, selector: &str, timeout: Duration) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_until(&format!("no pods {selector} in {ns}"), timeout, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        Ok(if list.items.is_empty() {
            Check::Done(())
        } else {
            Check::Pending(format!("{} pods left", list.items.len()))
        })
    })
    .await
}

/// Waits for the holders, or fails with the namespace's pods, events and the manager's log.
pub async fn holders_ready_or_explain(
    client: &Client,
    ns: &str,
    ds: &str,
    holders: usize,
    manager: &str,
) -> Result<DaemonSet> {
    match wait_holders_ready(client, ns, ds, holders, Duration::from_secs(150)).await {
        Ok(d) => Ok(d),
        Err(e) => {
            let pods = kubectl(&["-n", ns, "get", "pods", "-o", "wide"], None).await.unwrap_or_default();
            let logs =
                kubectl(&["-n", ns, "logs", &format!("deployment/{manager}"), "--tail=40"], None).await;
            bail!(
                "{e:#}\npods:\n{pods}\nevents:\n{}\nmanager log:\n{}",
                describe_events(client, ns).await,
                logs.unwrap_or_else(|e| format!("{e:#}"))
            )
        }
    }
}

/// A fresh directory under _output for the test's files.
pub fn tempdir(name: &str) -> Result<PathBuf> {
    let dir = root().join("_output/e2e-install").join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The local cluster's knobs on the processed app template (as the local-cluster overlay does):
/// the API server on the host (no kube-proxy) and the real node only.
pub fn local_cluster_knobs(mut list: Value) -> Result<Value> {
    let items = list["items"].as_array_mut().context("no items")?;
    let deployment = items.iter_mut().find(|o| o["kind"] == "Deployment").context("no Deployment")?;
    let pod = &mut deployment["spec"]["template"]["spec"];
    pod["nodeSelector"] = json!({"kubernetes.io/hostname": REAL_NODE});
    let env = pod["containers"][0]["env"].as_array_mut().context("no env")?;
    env.push(json!({"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}));
    env.push(json!({"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}));
    Ok(list)
}
