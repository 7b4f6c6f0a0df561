//! Shared helpers for the end-to-end tests. They expect the cluster from `make cluster-up`:
//! `KUBECONFIG` (default `/var/lib/kwarm-cluster/kubeconfig`) and the registry on 127.0.0.1:5000.
//!
//! - [`client`]: a kube client from the cluster's admin kubeconfig.
//! - [`wait_until`]: poll a check until it is done, with a deadline and a clear timeout message.
//! - containerd of the real node: [`containerd_images`], [`containerd_has_image`],
//!   [`containerd_remove_image`] (through `ctr`, which ships with containerd).
//! - objects: [`create_namespace`] / [`delete_namespace`], fake nodes ([`kwok_node`],
//!   [`create_kwok_nodes`], [`delete_nodes`]), a DaemonSet that holds an image
//!   ([`holder_daemonset`], [`wait_daemonset_ready`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, Namespace, Node, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus, PodSpec, PodTemplateSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

/// The local registry every test image lives in.
pub const REGISTRY: &str = "127.0.0.1:5000";
/// Name of the real (kubelet) node.
pub const REAL_NODE: &str = "127.0.0.1";
/// The project's sleep image: the sandbox image of the real node, and the holder program.
pub const SLEEP_IMAGE: &str = "127.0.0.1:5000/kwarm/sleep:dev";
/// Annotation (value `fake`) that makes KWOK manage a node.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Label every fake node carries (`type=kwok`).
pub const KWOK_TYPE_LABEL: &str = "type";
/// containerd namespace the kubelet's images live in.
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";

/// Directory of the running cluster (`KWARM_CLUSTER_DIR`, default `/var/lib/kwarm-cluster`).
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("KWARM_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kwarm-cluster"))
}

/// The admin kubeconfig: `KUBECONFIG` if set, else the one cluster-up wrote.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster_dir().join("kubeconfig"))
}

/// Socket of the real node's private containerd.
pub fn containerd_socket() -> PathBuf {
    cluster_dir().join("containerd/containerd.sock")
}

/// A client for the local cluster, from [`kubeconfig_path`].
pub async fn client() -> Result<Client> {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| {
        format!("reading kubeconfig {} (is the cluster up? make cluster-up)", path.display())
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Client::try_from(config).context("creating the kube client")
}

/// What one poll of [`wait_until`] found.
pub enum Check<T> {
    /// The condition holds; the wait returns this value.
    Done(T),
    /// Not yet; the text says what was seen, for the timeout message.
    Pending(String),
}

/// Poll `check` every half second until it is [`Check::Done`] or `timeout` passes. Errors from
/// `check` count as "not yet" (the API may be busy); the timeout message names `what` and the
/// last state or error seen.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(Check::Done(value)) => return Ok(value),
            Ok(Check::Pending(state)) => state,
            Err(err) => format!("error: {err:#}"),
        };
        if start.elapsed() >= timeout {
            bail!("timed out after {}s waiting for {what}; last seen: {last}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Run `ctr -a <socket> -n k8s.io ARGS...` against the real node's containerd; returns stdout.
pub async fn ctr(args: &[&str]) -> Result<String> {
    let socket = containerd_socket();
    let output = tokio::process::Command::new("ctr")
        .arg("-a")
        .arg(&socket)
        .args(["-n", CONTAINERD_NAMESPACE])
        .args(args)
        .output()
        .await
        .context("running ctr (installed with containerd)")?;
    if !output.status.success() {
        bail!(
            "ctr -a {} -n {CONTAINERD_NAMESPACE} {} failed: {}",
            socket.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every image reference the real node's containerd has (tags, digests and `sha256:` ids).
pub async fn containerd_images() -> Result<Vec<String>> {
    Ok(ctr(&["images", "ls", "-q"]).await?.lines().map(str::to_owned).collect())
}

/// Whether the real node's containerd has `reference` (e.g. `127.0.0.1:5000/test/small:v1`).
pub async fn containerd_has_image(reference: &str) -> Result<bool> {
    Ok(containerd_images().await?.iter().any(|r| r == reference))
}

/// Removes `reference` from the real node's containerd, with every digest reference of the same
/// content (`repo@sha256:...`) that no other tag of the repository uses: with only the tag gone,
/// the kubelet may still find the image and start it without a pull, proving nothing.
pub async fn containerd_remove_image(reference: &str) -> Result<()> {
    let repo = reference.rsplit_once(':').map_or(reference, |(r, _)| r);
    let listing = ctr(&["images", "ls"]).await?;
    let rows: Vec<(String, String)> = listing
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_owned(), cols.nth(1)?.to_owned()))
        })
        .collect();
    let kept_digests: Vec<&str> = rows
        .iter()
        .filter(|(r, _)| r.starts_with(&format!("{repo}:")) && r != reference)
        .map(|(_, d)| d.as_str())
        .collect();
    for (r, digest) in &rows {
        let ours = r == reference
            || (r.starts_with(&format!("{repo}@")) && !kept_digests.contains(&digest.as_str()));
        if ours {
            ctr(&["images", "rm", "--sync", r]).await?;
        }
    }
    Ok(())
}

/// Create a namespace named `<prefix><random>` (the API server picks the suffix); returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String> {
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(prefix.to_owned()),
            labels: Some(BTreeMap::from([("kwarm-e2e".to_owned(), "true".to_owned())])),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating a namespace {prefix}*"))?;
    created.metadata.name.context("created namespace has no name")
}

/// Delete a namespace and wait (up to `timeout`) until it is gone.
pub async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("deleting namespace {name}")),
    }
    wait_until(&format!("namespace {name} to be deleted"), timeout, || async {
        Ok(match api.get_opt(name).await? {
            None => Check::Done(()),
            Some(ns) => {
                Check::Pending(format!("phase {:?}", ns.status.and_then(|s| s.phase).unwrap_or_default()))
            }
        })
    })
    .await
}

/// A fake node for KWOK: annotated so our KWOK manages it, Linux, `type=kwok`, no taints, and
/// room for plenty of pods, so DaemonSet pods land and turn Running at once.
pub fn kwok_node(name: &str, extra_labels: &BTreeMap<String, String>) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/hostname".to_owned(), name.to_owned()),
        ("kubernetes.io/role".to_owned(), "agent".to_owned()),
        (KWOK_TYPE_LABEL.to_owned(), "kwok".to_owned()),
    ]);
    labels.extend(extra_labels.clone());
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), Quantity("32".to_owned())),
        ("memory".to_owned(), Quantity("256Gi".to_owned())),
        ("pods".to_owned(), Quantity("250".to_owned())),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(BTreeMap::from([
                (KWOK_ANNOTATION.to_owned(), "fake".to_owned()),
                ("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned()),
            ])),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            ..Default::default()
        }),
    }
}

/// Create `count` fake nodes `<prefix>-0 ..` carrying `extra_labels` (existing ones are kept)
/// and wait until all of them are Ready. Returns their names.
pub async fn create_kwok_nodes(
    client: &Client,
    prefix: &str,
    count: usize,
    extra_labels: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Vec<String>> {
    let api = Api::<Node>::all(client.clone());
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    stream::iter(names.iter())
        .map(|name| {
            let api = api.clone();
            async move {
                match api.create(&PostParams::default(), &kwok_node(name, extra_labels)).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                    Err(err) => Err(err).with_context(|| format!("creating fake node {name}")),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    wait_until(&format!("{count} fake nodes {prefix}-* to be Ready (is kwok running?)"), timeout, || async {
        let mut ready = 0;
        for name in &names {
            if api.get_opt(name).await?.as_ref().is_some_and(node_is_ready) {
                ready += 1;
            }
        }
        Ok(if ready == count { Check::Done(()) } else { Check::Pending(format!("{ready}/{count} Ready")) })
    })
    .await?;
    Ok(names)
}

/// Delete nodes by name (absent ones are fine).
pub async fn delete_nodes(client: &Client, names: &[String]) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    stream::iter(names.iter())
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(err) => Err(err).with_context(|| format!("deleting node {name}")),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Whether the node's `Ready` condition is `True`.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Where a holder DaemonSet may run.
#[derive(Clone, Debug, Default)]
pub enum Placement {
    /// Every schedulable node.
    #[default]
    AllNodes,
    /// Only the real node.
    RealNode,
    /// The real node, plus the nodes carrying this label (`key`, `value`).
    RealNodeAndLabelled(String, String),
}

/// A DaemonSet whose pods hold `image` (which may be a FROM-scratch image with no program): an
/// init container copies the sleep binary from [`SLEEP_IMAGE`] into an emptyDir, and the holder
/// container runs that copy with the held image as its root filesystem.
pub fn holder_daemonset(name: &str, image: &str, placement: Placement) -> DaemonSet {
    let labels = BTreeMap::from([("app".to_owned(), name.to_owned())]);
    let kip = VolumeMount { name: "kip".to_owned(), mount_path: "/kip".to_owned(), ..Default::default() };
    let real_node_term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![REAL_NODE.to_owned()]),
        }]),
        ..Default::default()
    };
    let terms = match placement {
        Placement::AllNodes => None,
        Placement::RealNode => Some(vec![real_node_term]),
        Placement::RealNodeAndLabelled(key, value) => Some(vec![
            real_node_term,
            NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key,
                    operator: "In".to_owned(),
                    values: Some(vec![value]),
                }]),
                ..Default::default()
            },
        ]),
    };
    let affinity = terms.map(|node_selector_terms| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms }),
            ..Default::default()
        }),
        ..Default::default()
    });
    DaemonSet {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    affinity,
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(5),
                    init_containers: Some(vec![Container {
                        name: "copy-sleep".to_owned(),
                        image: Some(SLEEP_IMAGE.to_owned()),
                        image_pull_policy: Some("IfNotPresent".to_owned()),
                        command: Some(vec![
                            "/sleep".to_owned(),
                            "--copy-to".to_owned(),
                            "/kip/sleep".to_owned(),
                        ]),
                        volume_mounts: Some(vec![kip.clone()]),
                        ..Default::default()
                    }]),
                    containers: vec![Container {
                        name: "hold".to_owned(),
                        image: Some(image.to_owned()),
                        image_pull_policy: Some("IfNotPresent".to_owned()),
                        command: Some(vec!["/kip/sleep".to_owned()]),
                        volume_mounts: Some(vec![kip]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "kip".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Wait until the DaemonSet's controller has seen its latest spec and reports exactly `expected`
/// pods scheduled, up to date and ready. Returns the final status.
pub async fn wait_daemonset_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    expected: i32,
    timeout: Duration,
) -> Result<DaemonSetStatus> {
    let api = Api::<DaemonSet>::namespaced(client.clone(), namespace);
    wait_until(&format!("DaemonSet {namespace}/{name} to have {expected} pods ready"), timeout, || async {
        let ds = api.get(name).await?;
        let generation = ds.metadata.generation.unwrap_or_default();
        let status = ds.status.unwrap_or_default();
        let done = status.observed_generation.unwrap_or_default() >= generation
            && status.desired_number_scheduled == expected
            && status.updated_number_scheduled.unwrap_or_default() == expected
            && status.number_ready == expected;
        Ok(if done {
            Check::Done(status)
        } else {
            Check::Pending(format!(
                "desired {}, updated {}, ready {}, unavailable {}",
                status.desired_number_scheduled,
                status.updated_number_scheduled.unwrap_or_default(),
                status.number_ready,
                status.number_unavailable.unwrap_or_default()
            ))
        })
    })
    .await
}

/// Events of a namespace as text lines, newest last: for failure messages.
pub async fn describe_events(client: &Client, namespace: &str) -> String {
    use k8s_openapi::api::core::v1::Event;
    match Api::<Event>::namespaced(client.clone(), namespace).list(&Default::default()).await {
        Ok(list) => {
            let mut events = list.items;
            events.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
            events
                .iter()
                .map(|e| {
                    format!(
                        "{} {}: {}",
                        e.involved_object.name.as_deref().unwrap_or("?"),
                        e.reason.as_deref().unwrap_or("?"),
                        e.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(err) => format!("(could not list events: {err})"),
    }
}
