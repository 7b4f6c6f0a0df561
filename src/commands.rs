//! What the one-shot commands read from the cluster: `kwarm status` reads the DaemonSet and its
//! holder pods once (no watch, no write) and summarises them with [`crate::status::StatusReport`];
//! with the node gate on, the nodes too; with the rollout gate on, the pods it holds. `kwarm
//! ungate` opens every gate kwarm holds (before an uninstall: the chart runs it as a pre-delete
//! hook).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::config::Config;
use crate::controller::API_TIMEOUT;
use crate::daemonset::{STATE_ANNOTATION, held_images, selector_string};
use crate::error::{Result, with_timeout};
use crate::gate::gated_node;
use crate::status::{NodeGateReport, PodHolders, pod_holders, skipped_platform};

/// Reads the DaemonSet and its pods once and summarises them for `kwarm status`.
pub async fn status_report(client: Client, config: &Config) -> Result<crate::status::StatusReport> {
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &config.namespace);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let live = with_timeout(API_TIMEOUT, ds_api.get_opt(&config.daemonset_name)).await?;
    let params = ListParams::default().labels(&selector_string(&config.daemonset_name));
    let pods = with_timeout(API_TIMEOUT, pod_api.list(&params)).await?;
    let holders: Vec<PodHolders> = pods.items.iter().filter_map(pod_holders).collect();
    let images: Vec<String> = live.as_ref().map(held_images).unwrap_or_default().into_iter().collect();
    let mut report = crate::status::StatusReport::build(
        &config.namespace,
        &config.daemonset_name,
        live.as_ref().map(|d| d.metadata.generation),
        &images,
        &holders,
        live.as_ref().and_then(|d| d.annotations().get(STATE_ANNOTATION)).map(String::as_str),
    );
    let status = live.as_ref().and_then(|d| d.status.as_ref());
    let current = status.is_some_and(|s| {
        s.observed_generation.is_some()
            && s.observed_generation == live.as_ref().and_then(|d| d.metadata.generation)
    });
    report.desired_nodes =
        status.filter(|_| current).map(|s| usize::try_from(s.desired_number_scheduled).unwrap_or(0));
    report.manager_warm = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Warm"))
        .map(|c| crate::status::ManagerCondition {
            status: c.status == "True",
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        });
    if let Some(check) = &config.digest_check {
        report.digests = check_digests(&client, config, check, live.as_ref(), &holders).await;
    }
    // The nodes: for the node gate, and for the nodes skipped for their platform, which a user
    // without the right to list nodes goes without (the gate's report cannot).
    let node_api: Api<Node> = Api::all(client.clone());
    let nodes = match with_timeout(API_TIMEOUT, node_api.list(&ListParams::default())).await {
        Ok(list) => list.items,
        Err(e) if config.node_gate.is_none() => {
            tracing::debug!(error = %e, "Cannot list nodes: no report of the nodes skipped for their platform");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let affinity = config.holder_affinity();
    for node in &nodes {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if let Some(platform) = skipped_platform(config, &affinity, &node.name_any(), &labels) {
            *report.skipped_platforms.entry(platform).or_insert(0) += 1;
        }
    }
    if let Some(gate) = &config.node_gate {
        let now = std::time::SystemTime::now();
        let gated: Vec<_> = nodes
            .iter()
            .filter_map(|n| {
                let g = gated_node(n, &gate.taint, &config.node_selector, Some(&affinity), now)?;
                Some((n.name_any(), g))
            })
            .collect();
        let images: Vec<String> = report.images.iter().map(|s| s.image.clone()).collect();
        report.node_gate = Some(NodeGateReport::build(gate, &gated, &holders, &images));
    }
    if let Some(gate) = &config.rollout_gate {
        report.rollout_gate = Some(rollout_report(&client, config, gate.timeout, &holders).await?);
    }
    Ok(report)
}

/// The pods carrying kwarm's scheduling gate, and what each still waits for.
async fn rollout_report(
    client: &Client,
    config: &Config,
    timeout: std::time::Duration,
    holders: &[PodHolders],
) -> Result<crate::status::RolloutGateReport> {
    use crate::rollout::{WarmView, gated_pod};
    let now = std::time::SystemTime::now();
    let all: Api<Pod> = Api::all(client.clone());
    let pending =
        with_timeout(API_TIMEOUT, all.list(&ListParams::default().fields("spec.nodeName="))).await?;
    let gated: Vec<_> = pending
        .items
        .iter()
        .filter_map(|p| {
            Some(((p.namespace().unwrap_or_default(), p.name_any()), gated_pod(p, &config.watch, now)?))
        })
        .collect();
    let mut view = WarmView::default();
    for h in holders {
        let held = h.images.iter().filter(|(_, s)| **s == crate::status::HolderState::Warm);
        view.warm.entry(h.node.clone()).or_default().extend(held.map(|(i, _)| i.clone()));
    }
    if gated.iter().any(|(_, g)| g.placement != Default::default()) {
        let nodes: Api<Node> = Api::all(client.clone());
        for node in with_timeout(API_TIMEOUT, nodes.list(&ListParams::default())).await?.items {
            view.labels.insert(node.name_any(), node.labels().clone());
        }
    }
    Ok(crate::status::RolloutGateReport::build(timeout, &gated, &view))
}

/// The DaemonSets kwarm manages (its labels) in `namespace` (`None`: every namespace), named
/// `name` if given: `(namespace, name)`, sorted.
pub async fn managed_daemonsets(
    client: Client,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let api: Api<DaemonSet> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut params = ListParams::default().labels(crate::daemonset::MANAGED_SELECTOR);
    if let Some(name) = name {
        params = params.fields(&format!("metadata.name={name}"));
    }
    let list = with_timeout(API_TIMEOUT, api.list_metadata(&params)).await?;
    let mut found: Vec<(String, String)> =
        list.items.iter().map(|d| (d.namespace().unwrap_or_default(), d.name_any())).collect();
    found.sort();
    Ok(found)
}

/// Reads a ConfigMap's `data` (for `kwarm check --configmap`); `None` when it does not exist.
pub async fn configmap_data(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let found = with_timeout(API_TIMEOUT, api.get_opt(name)).await?;
    Ok(found.map(|cm| cm.data.unwrap_or_default()))
}

/// Removes the node gate's taint from every node that carries it; returns the nodes released.
/// Each removal tests the taint is still at the index just read, so other taints are never
/// touched; a node that changed in between is read again.
pub async fn ungate(client: Client, config: &Config) -> Result<Vec<String>> {
    let Some(gate) = &config.node_gate else { return Ok(Vec::new()) };
    let api: Api<Node> = Api::all(client);
    let nodes = with_timeout(API_TIMEOUT, api.list(&ListParams::default())).await?;
    let mut released = Vec::new();
    for node in nodes.items {
        let name = node.name_any();
        let mut current = Some(node);
        for attempt in 1..=5 {
            let Some(node) = current.take() else { break };
            let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
            let Some(index) = taints.iter().position(|t| gate.taint.matches(t)) else { break };
            match crate::controller::remove_gate_taint(&api, &gate.taint, &name, index).await {
                Ok(()) => {
                    released.push(name.clone());
                    break;
                }
                Err(e) if attempt == 5 || e.api_code() == Some(403) => return Err(e),
                Err(_) => current = with_timeout(API_TIMEOUT, api.get_opt(&name)).await?,
            }
        }
    }
    Ok(released)
}

/// With the rollout gate on: deletes kwarm's MutatingWebhookConfiguration (no new pod is gated)
/// and then removes kwarm's scheduling gate from every pod that carries it. Returns whether the
/// configuration existed and the pods released (`namespace/name`).
pub async fn ungate_pods(client: Client, config: &Config) -> Result<(bool, Vec<String>)> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let Some(gate) = &config.rollout_gate else { return Ok((false, Vec::new())) };
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let deleted =
        match with_timeout(API_TIMEOUT, hooks.delete(&gate.configuration, &Default::default())).await {
            Ok(_) => true,
            Err(e) if e.api_code() == Some(404) => false,
            Err(e) => return Err(e),
        };
    let all: Api<Pod> = Api::all(client.clone());
    let pending =
        with_timeout(API_TIMEOUT, all.list(&ListParams::default().fields("spec.nodeName="))).await?;
    let mut released = Vec::new();
    for pod in pending.items {
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let mut current = Some(pod);
        for attempt in 1..=5 {
            let Some(pod) = current.take().filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) else {
                break;
            };
            let Some(index) = crate::controller::gate_index(&pod) else { break };
            match crate::controller::remove_scheduling_gate(&api, &name, &uid, index).await {
                Ok(()) => {
                    released.push(format!("{namespace}/{name}"));
                    break;
                }
                Err(e) if e.api_code() == Some(404) => break,
                Err(e) if attempt == 5 || e.api_code() == Some(403) => return Err(e),
                Err(_) => current = with_timeout(API_TIMEOUT, api.get_opt(&name)).await?,
            }
        }
    }
    Ok((deleted, released))
}

/// Asks the registries about the DaemonSet's tags, with its pull secrets, as the manager does.
async fn check_digests(
    client: &Client,
    config: &Config,
    check: &crate::config::DigestCheck,
    live: Option<&DaemonSet>,
    holders: &[PodHolders],
) -> Vec<crate::status::DigestReport> {
    use k8s_openapi::api::core::v1::Secret;
    let Some(live) = live else { return Vec::new() };
    let images = held_images(live);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let names = live
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.image_pull_secrets.clone())
        .unwrap_or_default();
    let mut credentials = crate::registry::Credentials::default();
    for name in names {
        if let Ok(Some(secret)) = with_timeout(API_TIMEOUT, secrets.get_opt(&name.name)).await
            && let Some(config) = secret.data.as_ref().and_then(|d| d.get(".dockerconfigjson"))
        {
            let _ = credentials.add_docker_config(&config.0);
        }
    }
    let mut resolver = crate::registry::Resolver::new(&check.insecure_registries);
    let answers = resolver.resolve(&images, &credentials, std::time::SystemTime::now()).await;
    crate::status::DigestReport::build(&answers, holders)
}
