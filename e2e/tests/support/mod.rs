//! Running the kwarm manager as a process against the local cluster, shared by the manager tests.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use kwarm_e2e::{Check, SLEEP_IMAGE, kubeconfig_path, wait_until};
use tokio::process::{Child, Command};

pub mod tools;

/// The manager binary: `KWARM_BIN`, else the static build that also goes into the image.
pub fn kwarm_bin() -> PathBuf {
    std::env::var_os("KWARM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../_output/bin/kwarm"))
}

pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../_output/e2e-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `kwarm` process.
pub struct Manager {
    child: Child,
    pub name: String,
    pub metrics: String,
    pub health: String,
    pub log: PathBuf,
}

/// Environment every test manager gets unless it overrides it.
pub fn base_env(namespace: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("NAMESPACE".into(), namespace.to_string()),
        ("DAEMONSET_NAME".into(), "kwarm-holders".into()),
        ("KIP_IMAGE".into(), SLEEP_IMAGE.into()),
        ("LEADER_ELECT".into(), "false".into()),
        ("WATCH_DEPLOYMENTS".into(), "false".into()),
        ("RUST_LOG".into(), "info,kwarm=debug".into()),
        // Only the real node: fake nodes would pass every check without pulling anything.
        ("NODE_SELECTOR".into(), r#"{"kubernetes.io/hostname":"127.0.0.1"}"#.into()),
    ])
}

impl Manager {
    /// Starts the manager with `env` (on top of nothing else: the environment is cleared).
    pub async fn start(name: &str, env: &BTreeMap<String, String>) -> Result<Manager> {
        Manager::start_with_kubeconfig(name, env, &kubeconfig_path()).await
    }

    /// Starts the manager with its own kubeconfig (e.g. one with fewer rights).
    pub async fn start_with_kubeconfig(
        name: &str,
        env: &BTreeMap<String, String>,
        kubeconfig: &std::path::Path,
    ) -> Result<Manager> {
        let (metrics_port, health_port) = (free_port()?, free_port()?);
        let log = log_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let bin = kwarm_bin();
        let child = Command::new(&bin)
            .env_clear()
            .envs(env)
            .env("KUBECONFIG", kubeconfig)
            .env("METRICS_BIND_ADDRESS", format!("127.0.0.1:{metrics_port}"))
            .env("HEALTH_PROBE_BIND_ADDRESS", format!("127.0.0.1:{health_port}"))
            .env("HOSTNAME", name)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (run `make build` first)", bin.display()))?;
        Ok(Manager {
            child,
            name: name.into(),
            metrics: format!("127.0.0.1:{metrics_port}"),
            health: format!("127.0.0.1:{health_port}"),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// HTTP GET on the health port; returns the status code.
    pub async fn health_get(&self, path: &str) -> Result<u16> {
        http_get(&self.health, path).await.map(|(code, _)| code)
    }

    pub async fn metrics_text(&self) -> Result<String> {
        let (code, body) = http_get(&self.metrics, "/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let log = self.log.clone();
        let health = self.health.clone();
        wait_until(&format!("{} to be ready (log: {})", self.name, log.display()), timeout, || {
            let health = health.clone();
            async move {
                Ok(match http_get(&health, "/readyz").await {
                    Ok((200, _)) => Check::Done(()),
                    Ok((code, _)) => Check::Pending(format!("/readyz {code}")),
                    Err(e) => Check::Pending(format!("{e:#}")),
                })
            }
        })
        .await?;
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited with {status}", self.name);
        }
        Ok(())
    }

    /// Sends a signal and waits for the exit; returns the exit status and how long it took.
    pub async fn signal(&mut self, signal: &str) -> Result<(std::process::ExitStatus, Duration)> {
        let pid = self.child.id().context("manager already exited")?;
        let start = Instant::now();
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().await?;
        if !ok.success() {
            bail!("kill -{signal} {pid} failed");
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within 30 s of SIG{signal}", self.name))??;
        Ok((status, start.elapsed()))
    }

    pub async fn stop(&mut self) -> Result<(std::process::ExitStatus, Duration)> {
        self.signal("TERM").await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `kwarm status -o json` with the manager's environment `env` and the admin kubeconfig.
pub async fn status_json(env: &BTreeMap<String, String>) -> Result<serde_json::Value> {
    let output = tokio::process::Command::new(kwarm_bin())
        .env_clear()
        .envs(env)
        .env("KUBECONFIG", kubeconfig_path())
        .args(["status", "-o", "json"])
        .output()
        .await?;
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("status -o json: {}", String::from_utf8_lossy(&output.stderr)))
}

/// HTTP GET on a loopback address: the status code and the body as text.
pub async fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    let client: HttpClient<_, Empty<bytes::Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{address}{path}").parse().context("a URI")?;
    let response = client.get(uri).await.with_context(|| format!("GET http://{address}{path}"))?;
    let code = response.status().as_u16();
    let body = response.into_body().collect().await.context("reading the body")?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits until the DaemonSet exists and its pods are all ready with `holders` holder containers.
pub async fn wait_holders_ready(
    client: &Client,
    ns: &str,
    name: &str,
    holders: usize,
    timeout: Duration,
) -> Result<DaemonSet> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    wait_until(&format!("DaemonSet {ns}/{name} ready with {holders} holders"), timeout, || async {
        let Some(ds) = api.get_opt(name).await? else { return Ok(Check::Pending("no DaemonSet".into())) };
        let containers =
            ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map_or(0, |p| p.containers.len());
        let status = ds.status.clone().unwrap_or_default();
        let observed = status.observed_generation == ds.metadata.generation;
        let done = observed
            && containers == holders
            && status.desired_number_scheduled > 0
            && status.number_ready == status.desired_number_scheduled
            && status.updated_number_scheduled == Some(status.desired_number_scheduled)
            && status.number_unavailable.unwrap_or(0) == 0;
        Ok(if done {
            Check::Done(ds)
        } else {
            Check::Pending(format!(
                "{containers} holders, ready {}/{}, updated {:?}, observed {observed}",
                status.number_ready, status.desired_number_scheduled, status.updated_number_scheduled
            ))
        })
    })
    .await
}

/// Applies one watch event to a map of pods by name; returns true when it ends the initial list.
pub fn track_pod(seen: &mut BTreeMap<String, Pod>, event: kube::runtime::watcher::Event<Pod>) -> bool {
    use kube::runtime::watcher::Event;
    match event {
        Event::Init => seen.clear(),
        Event::InitApply(p) | Event::Apply(p) => {
            seen.insert(p.metadata.name.clone().unwrap_or_default(), p);
        }
        Event::Delete(p) => {
            seen.remove(&p.metadata.name.clone().unwrap_or_default());
        }
        Event::InitDone => return true,
    }
    false
}

/// Images of the holder containers of a DaemonSet, in order.
pub fn holder_images(ds: &DaemonSet) -> Vec<String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().filter_map(|c| c.image.clone()).collect())
        .unwrap_or_default()
}

/// Pod name → UID of the holder pods (not those being deleted).
pub async fn holder_pod_uids(client: &Client, ns: &str) -> Result<BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=kwarm")).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.metadata.name.unwrap_or_default(), p.metadata.uid.unwrap_or_default()))
        .collect())
}

/// Creates a namespace whose Pod Security admission enforces `restricted`.
pub async fn restricted_namespace(client: &Client, prefix: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Patch, PatchParams};
    let name = kwarm_e2e::create_namespace(client, prefix).await?;
    let api: Api<Namespace> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(name)
}

/// A kubeconfig that impersonates `user`, so the manager has only that user's rights.
pub fn impersonating_kubeconfig(user: &str, path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(kubeconfig_path())?;
    let mut config: serde_json::Value = serde_yaml_to_json(&text)?;
    for u in config["users"].as_array_mut().context("kubeconfig users")? {
        u["user"]["as"] = serde_json::Value::String(user.into());
    }
    std::fs::write(path, serde_json::to_string(&config)?)?;
    Ok(())
}

/// kubeconfig files are YAML; kube's own types read them and write JSON (YAML's subset).
pub fn serde_yaml_to_json(text: &str) -> Result<serde_json::Value> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text)?;
    Ok(serde_json::to_value(kubeconfig)?)
}

/// The spec of a pod of `image` on the real node by node selector. The image may be FROM scratch
/// (data only): an init container copies kwarm's sleep in and the container runs it.
pub fn scratch_pod_spec(image: &str) -> serde_json::Value {
    serde_json::json!({
        "nodeSelector": {"kubernetes.io/hostname": kwarm_e2e::REAL_NODE},
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 1,
        "initContainers": [{
            "name": "copy-sleep", "image": kwarm_e2e::SLEEP_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["/sleep", "--copy-to", "/kip/sleep"],
            "volumeMounts": [{"name": "kip", "mountPath": "/kip"}],
        }],
        "containers": [{
            "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["/kip/sleep", "infinity"],
            "volumeMounts": [{"name": "kip", "mountPath": "/kip"}],
        }],
        "volumes": [{"name": "kip", "emptyDir": {}}],
    })
}

/// Waits until kwarm's condition `type_` on the DaemonSet has `status` ("True"/"False") and, when
/// given, `reason`; returns it.
pub async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> Result<k8s_openapi::api::apps::v1::DaemonSetCondition> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let what = format!("condition {type_}={status} ({reason:?}) on DaemonSet {ns}/{name}");
    wait_until(&what, timeout, || async {
        let Some(ds) = api.get_opt(name).await? else { return Ok(Check::Pending("no DaemonSet".into())) };
        let conditions = ds.status.and_then(|s| s.conditions).unwrap_or_default();
        let found = conditions.iter().find(|c| c.type_ == type_).cloned();
        Ok(match found {
            Some(c) if c.status == status && reason.is_none_or(|r| c.reason.as_deref() == Some(r)) => {
                Check::Done(c)
            }
            other => Check::Pending(format!("{other:?}")),
        })
    })
    .await
}
