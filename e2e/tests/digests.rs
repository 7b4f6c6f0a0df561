//! Digest-aware refresh on the real local cluster: a mutable tag pushed again with new content is
//! pulled again on the node (and the node's tag points at it), with a holder running throughout;
//! nothing rolls or pulls while the registry does not change; a private tag is checked with the
//! holders' pull secret.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use kwarm_e2e::{Check, REAL_NODE, REGISTRY, client, create_namespace, ctr, delete_namespace, wait_until};
use serde_json::json;
use support::tools::{is_ready, pod_images};
use support::{Manager, base_env};

const HOLDERS: &str = "app.kubernetes.io/name=kwarm";

/// `skopeo copy` between the loopback registries (plain HTTP), with a login when given.
async fn copy(from: &str, to: &str, creds: Option<&str>) -> Result<()> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    let out =
        cmd.arg(format!("docker://{from}")).arg(format!("docker://{to}")).output().await.context("skopeo")?;
    if !out.status.success() {
        bail!("skopeo copy {from} {to}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The digest a registry serves for a tag.
async fn registry_digest(image: &str, creds: Option<&str>) -> Result<String> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    let out = cmd.arg(format!("docker://{image}")).output().await.context("skopeo")?;
    if !out.status.success() {
        bail!("skopeo inspect {image}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The digest the real node's containerd has under the tag `image`.
async fn node_digest(image: &str) -> Result<Option<String>> {
    let listing = ctr(&["images", "ls"]).await?;
    Ok(listing.lines().skip(1).find_map(|l| {
        let mut cols = l.split_whitespace();
        (cols.next()? == image).then(|| cols.nth(1).map(str::to_owned)).flatten()
    }))
}

/// Waits until the real node's containerd has `digest` under the tag `image`.
async fn wait_node_digest(image: &str, digest: &str, timeout: Duration) -> Result<()> {
    wait_until(&format!("{image} at {digest} in containerd"), timeout, || async {
        let held = node_digest(image).await?;
        Ok(if held.as_deref() == Some(digest) {
            Check::Done(())
        } else {
            Check::Pending(format!("{held:?}"))
        })
    })
    .await
}

/// Samples every 200 ms how many ready holders of `image` run on the real node; the minimum.
fn sampler(
    client: Client,
    ns: String,
    image: String,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Result<usize>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let min = AtomicUsize::new(usize::MAX);
        while !flag.load(Ordering::Relaxed) {
            let list = pods.list(&ListParams::default().labels(HOLDERS)).await?;
            let ready = list
                .items
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(REAL_NODE))
                .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                .filter(|p| pod_images(p).contains(&image))
                .count();
            min.fetch_min(ready, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(min.load(Ordering::Relaxed))
    });
    (stop, task)
}

async fn generation(client: &Client, ns: &str) -> Result<i64> {
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    Ok(ds.get("kwarm-holders").await?.metadata.generation.unwrap_or_default())
}

/// Pulled events of the holder pods in `ns` (the kubelet's: one per pull, also a pull that found
/// everything present).
async fn holder_pulls(client: &Client, ns: &str, image: &str) -> Result<usize> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default().fields("reason=Pulled")).await?;
    Ok(list
        .items
        .iter()
        .filter(|e| e.message.as_deref().is_some_and(|m| m.contains(image) && !m.contains("already present")))
        .map(|e| e.count.unwrap_or(1) as usize)
        .sum())
}

/// A user pod naming the tag with IfNotPresent on the real node (FROM scratch: kwarm's sleep is
/// copied in by an init container).
fn user_pod(image: &str) -> Result<Pod> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": "user"}, "spec": support::scratch_pod_spec(image)}),
    )?)
}

async fn mutable_tag_follows_its_registry(
    client: &Client,
    ns: &str,
    image: &str,
    creds: Option<&str>,
    extra_env: &[(&str, &str)],
) -> Result<()> {
    let registry = image.split('/').next().context("registry")?;
    copy(&format!("{REGISTRY}/test/small:v1"), image, creds).await?;
    let v1 = registry_digest(image, creds).await?;
    let mut env = base_env(ns);
    env.insert("IMAGES".into(), format!("mutable={image}"));
    env.insert("DIGEST_CHECK_INTERVAL".into(), "10s".into());
    env.insert("INSECURE_REGISTRIES".into(), "127.0.0.1:5000,127.0.0.1:5001".into());
    for (k, v) in extra_env {
        env.insert(k.to_string(), v.to_string());
    }
    let mut manager = Manager::start(&format!("digests-{registry}"), &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(30)).await?;
        support::wait_holders_ready(client, ns, "kwarm-holders", 1, Duration::from_secs(90)).await?;
        wait_node_digest(image, &v1, Duration::from_secs(30)).await?;

        // 1. Nothing changes in the registry for three intervals: no roll, no pull, only checks.
        let (gen0, pulls0) = (generation(client, ns).await?, holder_pulls(client, ns, image).await?);
        let checks = |m: &str| -> f64 {
            m.lines()
                .find(|l| l.starts_with("kwarm_digest_checks_total{result=\"ok\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        let checks0 = checks(&manager.metrics_text().await?);
        tokio::time::sleep(Duration::from_secs(32)).await;
        let checks1 = checks(&manager.metrics_text().await?);
        let (gen1, pulls1) = (generation(client, ns).await?, holder_pulls(client, ns, image).await?);
        if gen1 != gen0 || pulls1 != pulls0 {
            bail!("nothing changed, yet generation {gen0} → {gen1}, holder pulls {pulls0} → {pulls1}");
        }
        if checks1 - checks0 < 2.0 {
            bail!("the tag was checked {} times in 32 s with DIGEST_CHECK_INTERVAL=10s", checks1 - checks0);
        }
        println!("{image}: {} digest checks in 32 s, 0 rolls, 0 pulls", checks1 - checks0);

        // 2. New content under the same tag: the node gets it, a holder runs throughout.
        let (stop, sampling) = sampler(client.clone(), ns.to_string(), image.to_string());
        let pushed = Instant::now();
        copy(&format!("{REGISTRY}/test/small:v2"), image, creds).await?;
        let v2 = registry_digest(image, creds).await?;
        if v2 == v1 {
            bail!("test/small:v2 has the same digest as v1: the test would prove nothing");
        }
        wait_node_digest(image, &v2, Duration::from_secs(90)).await?;
        let updated = pushed.elapsed();
        support::wait_holders_ready(client, ns, "kwarm-holders", 1, Duration::from_secs(60)).await?;
        stop.store(true, Ordering::Relaxed);
        let min = sampling.await??;
        if min < 1 {
            bail!("during the update the real node had no ready holder of {image}");
        }
        println!(
            "{image}: new content on the node {:.1} s after the push; min ready holders {min}",
            updated.as_secs_f64()
        );

        // 3. A user pod naming the tag finds the new content present.
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.create(&PostParams::default(), &user_pod(image)?).await?;
        let message = wait_until("the user pod's Pulled event", Duration::from_secs(60), || async {
            let events: Api<Event> = Api::namespaced(client.clone(), ns);
            let list =
                events.list(&ListParams::default().fields("involvedObject.name=user,reason=Pulled")).await?;
            Ok(match list.items.into_iter().filter_map(|e| e.message).find(|m| m.contains(image)) {
                Some(m) => Check::Done(m),
                None => Check::Pending("no Pulled event yet".into()),
            })
        })
        .await?;
        if !message.contains("already present on machine") {
            bail!("the user pod pulled the tag again: {message}");
        }
        let log = manager.log_text();
        if !log.contains("Tag changed in its registry") || !log.contains("Tag updated on every node") {
            bail!("the manager did not say what it did");
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("{e:#}\nmanager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    result
}

#[tokio::test]
async fn a_mutable_tag_is_pulled_again_only_when_its_registry_content_changes() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-digests-").await?;
    let image = format!("{REGISTRY}/test/mutable-{ns}:next");
    let result = mutable_tag_follows_its_registry(&client, &ns, &image, None, &[]).await;
    delete_namespace(&client, &ns, Duration::from_secs(90)).await?;
    result
}

#[tokio::test]
async fn a_private_mutable_tag_is_checked_with_the_holders_pull_secret() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-digests-private-").await?;
    let creds = "kwarm:warm-secret";
    let image = format!("127.0.0.1:5001/test/mutable-{ns}:next");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, creds);
    let config = json!({"auths": {"127.0.0.1:5001": {"auth": auth}}}).to_string();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "private-registry"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
    }))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let result = mutable_tag_follows_its_registry(
        &client,
        &ns,
        &image,
        Some(creds),
        &[("IMAGE_PULL_SECRETS", "private-registry")],
    )
    .await;
    delete_namespace(&client, &ns, Duration::from_secs(90)).await?;
    result
}

/// A registry of the test's own on a free loopback port, with an access log (to count what
/// reaches it), known to the node's containerd through a hosts.toml of its own.
struct OwnRegistry {
    address: String,
    dir: std::path::PathBuf,
    hosts: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnRegistry {
    async fn start() -> Result<OwnRegistry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let dir = support::tools::tempdir("own-registry")?;
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let hosts = kwarm_e2e::cluster_dir().join("containerd/certs.d").join(&address);
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{address}\"\n\n[host.\"http://{address}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        let mut registry = OwnRegistry { address, dir, hosts, child: None };
        registry.up().await?;
        Ok(registry)
    }

    async fn up(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("access.log"))?;
        let child = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("docker-registry (installed with the cluster's packages)")?;
        self.child = Some(child);
        wait_until(&format!("registry {} to answer", self.address), Duration::from_secs(20), || async {
            Ok(match tokio::net::TcpStream::connect(&self.address).await {
                Ok(_) => Check::Done(()),
                Err(e) => Check::Pending(e.to_string()),
            })
        })
        .await
    }

    async fn down(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Requests (method, path) in the access log from line `from` on.
    fn requests(&self, from: usize) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines()
            .skip(from)
            .filter_map(|l| {
                let quoted = l.split('"').nth(1)?;
                let mut parts = quoted.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                path.starts_with("/v2/").then(|| (method.to_string(), path.to_string()))
            })
            .collect()
    }

    fn lines(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log")).map_or(0, |t| t.lines().count())
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.hosts);
    }
}

#[tokio::test]
async fn an_unchanged_tag_costs_a_manifest_head_per_check_and_a_registry_outage_rolls_nothing() -> Result<()>
{
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-digests-outage-").await?;
    let mut registry = OwnRegistry::start().await?;
    let image = format!("{}/test/mutable:next", registry.address);
    copy(&format!("{REGISTRY}/test/small:v1"), &image, None).await?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), format!("mutable={image}"));
    env.insert("DIGEST_CHECK_INTERVAL".into(), "10s".into());
    env.insert("INSECURE_REGISTRIES".into(), registry.address.clone());
    let mut manager = Manager::start("digests-outage", &env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(30)).await?;
        support::wait_holders_ready(&client, &ns, "kwarm-holders", 1, Duration::from_secs(90)).await?;

        // 1. Unchanged: what reaches the registry is kwarm's manifest HEADs, nothing else.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (from, gen0) = (registry.lines(), generation(&client, &ns).await?);
        tokio::time::sleep(Duration::from_secs(32)).await;
        let seen = registry.requests(from);
        let heads = seen.iter().filter(|(m, p)| m == "HEAD" && p == "/v2/test/mutable/manifests/next").count();
        // besides the HEADs only the API version check (`GET /v2/`, oci-client's auth discovery,
        // once per check against an anonymous registry): no manifest or blob is fetched
        let others: Vec<_> = seen
            .iter()
            .filter(|(m, p)| !(m == "HEAD" && p.ends_with("/manifests/next") || m == "GET" && p == "/v2/"))
            .collect();
        if heads < 2 || !others.is_empty() || generation(&client, &ns).await? != gen0 {
            bail!("in 32 s unchanged: {heads} manifest HEADs, other requests {others:?}, generation {gen0} → {}",
                generation(&client, &ns).await?);
        }
        println!("unchanged tag, 32 s: {heads} manifest HEADs, no other request, no roll");

        // 2. The registry goes away: no roll, and status says why.
        registry.down().await?;
        tokio::time::sleep(Duration::from_secs(25)).await;
        if generation(&client, &ns).await? != gen0 {
            bail!("the holders rolled while their registry was down");
        }
        let status = support::status_json(&env).await?;
        if status["digests"][0]["registry"]["reason"] != "unreachable" {
            bail!("kwarm status should say the registry is unreachable: {status}");
        }
        let metrics = manager.metrics_text().await?;
        if !metrics.lines().any(|l| l.starts_with("kwarm_digest_checks_total{result=\"unreachable\"}")) {
            bail!("no failed check counted:\n{metrics}");
        }

        // 3. It comes back with new content: kwarm notices (after its backoff) and the node gets it.
        registry.up().await?;
        copy(&format!("{REGISTRY}/test/small:v2"), &image, None).await?;
        let v2 = registry_digest(&image, None).await?;
        let back = Instant::now();
        wait_node_digest(&image, &v2, Duration::from_secs(150)).await?;
        println!("registry back with new content: on the node {:.0} s later", back.elapsed().as_secs_f64());
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("{e:#}\nmanager log:\n{}", manager.log_text());
    }
    manager.stop().await?;
    registry.down().await?;
    delete_namespace(&client, &ns, Duration::from_secs(90)).await?;
    result
}
