//! The desired DaemonSet, rendered from the configuration and the holder list. Pure and
//! deterministic: the same input gives byte-identical output.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, LocalObjectReference, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{Config, MaxSurge, PullPolicy};
use crate::holder::{Holder, IDLE_HOLDER_NAME, INIT_CONTAINER_NAME, parse_image_reference};

/// Pod-template annotation bumped to roll holders for a refresh.
pub const REFRESHED_AT_ANNOTATION: &str = "kwarm.io/refreshed-at";
/// Pod-template annotation: tag → the registry digest the holders last rolled for (JSON). A new
/// digest changes the template, so the holders roll (surge) and pull the tag again.
pub const DIGESTS_ANNOTATION: &str = "kwarm.io/digests";
/// DaemonSet annotation with kwarm's own state (retained and quarantined images), so a restarted
/// manager continues where the last one stopped instead of changing the DaemonSet.
pub const STATE_ANNOTATION: &str = "kwarm.io/state";
/// DaemonSet annotation with a hash of everything kwarm renders: a changed configuration (even a
/// removed map key, which a field-by-field comparison with the live object cannot see) changes it.
pub const DESIRED_HASH_ANNOTATION: &str = "kwarm.io/desired-hash";
/// UID and GID of holders outside OpenShift (OpenShift assigns its own range).
pub const HOLDER_UID: i64 = 65532;
const KIP_VOLUME: &str = "kip";
const KIP_MOUNT: &str = "/kip";

/// Everything the DaemonSet depends on besides the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderInput {
    pub holders: Vec<Holder>,
    /// Mirrored pull secrets (inherited from Deployments), added after `IMAGE_PULL_SECRETS`.
    pub extra_pull_secrets: Vec<String>,
    /// OpenShift assigns UIDs itself; fixed ones would be refused.
    pub openshift: bool,
    /// The manager's own Deployment, when `DEPLOYMENT_NAME` is set.
    pub owner: Option<OwnerReference>,
    pub refreshed_at: Option<String>,
    /// [`DIGESTS_ANNOTATION`]: tag → digest rolled for.
    pub digests: BTreeMap<String, String>,
    /// Serialized [`STATE_ANNOTATION`], when there is state to keep.
    pub state: Option<String>,
}

/// The labels every object of one kwarm instance carries; the first two form the selector.
pub fn selector_labels(daemonset_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), daemonset_name.to_string()),
        ("app.kubernetes.io/name".to_string(), "kwarm".to_string()),
    ])
}

/// Label selector text matching the holder pods of `daemonset_name`.
pub fn selector_string(daemonset_name: &str) -> String {
    selector_labels(daemonset_name).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Label selector of every DaemonSet kwarm manages (the labels [`render_daemonset`] sets).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=kwarm,app.kubernetes.io/name=kwarm";

fn all_labels(daemonset_name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(daemonset_name);
    labels.insert("app.kubernetes.io/component".into(), "image-holder".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "kwarm".into());
    labels
}

/// Renders the DaemonSet, stamped with the hash of its own content.
pub fn render_daemonset(config: &Config, input: &RenderInput) -> DaemonSet {
    let mut ds = render_unhashed(config, input);
    let hash = content_hash(&ds);
    ds.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DESIRED_HASH_ANNOTATION.into(), format!("{hash:016x}"));
    ds
}

/// FNV-1a 64 of the JSON form; stable because every map is a `BTreeMap`.
fn content_hash(ds: &DaemonSet) -> u64 {
    let bytes = serde_json::to_vec(ds).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Whether the live DaemonSet already is what `desired` asks for: same rendered content (hash) and
/// no drift in any field kwarm sets. Fields others add (defaults, status) are ignored; lists must
/// match element for element; quantities compare by amount (`.05` = `50m`).
pub fn daemonset_matches(desired: &DaemonSet, live: &DaemonSet) -> bool {
    if desired_hash(desired) != desired_hash(live) || desired_hash(desired).is_none() {
        return false;
    }
    let (Ok(d), Ok(l)) = (serde_json::to_value(desired), serde_json::to_value(live)) else {
        return false;
    };
    json_contains(&d, &l, false)
}

/// The content hash [`render_daemonset`] stamped on a DaemonSet, if it carries one.
pub fn desired_hash(ds: &DaemonSet) -> Option<&str> {
    ds.metadata.annotations.as_ref()?.get(DESIRED_HASH_ANNOTATION).map(String::as_str)
}

/// Canonical image references of the holder containers of a DaemonSet (not the idle one).
pub fn held_images(ds: &DaemonSet) -> BTreeSet<String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers
                .iter()
                .filter(|c| c.name != IDLE_HOLDER_NAME)
                .filter_map(|c| c.image.as_deref())
                .map(|i| parse_image_reference(i).unwrap_or_else(|_| i.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Why an existing DaemonSet of kwarm's name is not kwarm's to change, or `None` when it is.
/// A selector is immutable: a DaemonSet that selects other pods (kubernetes-image-puller's, or
/// anyone's) can never become kwarm's by an apply, so kwarm must leave it alone and say why.
pub fn foreign_daemonset(desired: &DaemonSet, live: &DaemonSet) -> Option<String> {
    let selector =
        |d: &DaemonSet| d.spec.as_ref().map(|s| s.selector.match_labels.clone().unwrap_or_default());
    let live_selector = selector(live).unwrap_or_default();
    if selector(desired).unwrap_or_default() == live_selector {
        return None;
    }
    let namespace = live.metadata.namespace.as_deref().unwrap_or_default();
    let name = live.metadata.name.as_deref().unwrap_or_default();
    let shown = if live_selector.is_empty() {
        "matchExpressions only".to_string()
    } else {
        live_selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    };
    let owner = live
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| live.metadata.owner_references.iter().flatten().next())
        .map(|o| format!(", owned by {} {}", o.kind, o.name))
        .unwrap_or_default();
    let puller = live_selector.get("app.kubernetes.io/name").is_some_and(|v| v == "image-puller")
        || live_selector.get("test").is_some_and(|v| v == "daemonset-test");
    let whose = if puller { "kubernetes-image-puller's DaemonSet" } else { "not kwarm's" };
    let stop = if puller {
        "uninstall kubernetes-image-puller (it deletes its DaemonSet when it stops)"
    } else {
        "delete that DaemonSet"
    };
    Some(format!(
        "DaemonSet {namespace}/{name} exists and is {whose} (selector {shown}{owner}; a selector \
         cannot be changed). kwarm leaves it alone and creates its own as soon as the name is free: \
         {stop}, or, to keep the cache warm throughout, set DAEMONSET_NAME to another name, let \
         kwarm warm the images, then remove the old one"
    ))
}

/// `quantities`: inside `resources` or `sizeLimit`, where the API server rewrites amounts.
fn json_contains(desired: &serde_json::Value, live: &serde_json::Value, quantities: bool) -> bool {
    use serde_json::Value;
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| {
            let quantities = quantities || k == "resources" || k == "sizeLimit";
            l.get(k).is_some_and(|lv| json_contains(dv, lv, quantities))
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| json_contains(dv, lv, quantities))
        }
        (Value::String(d), Value::String(l)) => {
            d == l || (quantities && crate::quantity::Quantity::same_amount(d, l))
        }
        (d, l) => d == l,
    }
}

fn render_unhashed(config: &Config, input: &RenderInput) -> DaemonSet {
    let labels = all_labels(&config.daemonset_name);
    let mut annotations = config.daemonset_annotations.clone();
    if let Some(state) = &input.state {
        annotations.insert(STATE_ANNOTATION.into(), state.clone());
    }
    let mut template_annotations = BTreeMap::new();
    if let Some(at) = &input.refreshed_at {
        template_annotations.insert(REFRESHED_AT_ANNOTATION.to_string(), at.clone());
    }
    if !input.digests.is_empty() {
        let digests = serde_json::to_string(&input.digests).unwrap_or_default();
        template_annotations.insert(DIGESTS_ANNOTATION.to_string(), digests);
    }
    let template_annotations = (!template_annotations.is_empty()).then_some(template_annotations);

    let resources = holder_resources(config);
    let mount = |read_only: bool| VolumeMount {
        name: KIP_VOLUME.into(),
        mount_path: KIP_MOUNT.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let init = Container {
        name: INIT_CONTAINER_NAME.into(),
        image: Some(config.kip_image.clone()),
        command: Some(vec!["/sleep".into()]),
        args: Some(vec!["--copy-to".into(), format!("{KIP_MOUNT}/sleep")]),
        resources: Some(resources.clone()),
        security_context: Some(container_security(input.openshift)),
        volume_mounts: Some(vec![mount(false)]),
        ..Default::default()
    };
    // A pod needs at least one container: with nothing to warm (yet), one idle holder keeps the
    // DaemonSet valid and in place, holding only the small sleep image itself.
    let idle = [Holder { name: IDLE_HOLDER_NAME.into(), image: config.kip_image.clone() }];
    let (holders, idle) =
        if input.holders.is_empty() { (&idle[..], true) } else { (&input.holders[..], false) };
    let holders = holders
        .iter()
        .map(|h| Container {
            name: h.name.clone(),
            image: Some(h.image.clone()),
            command: Some(vec![format!("{KIP_MOUNT}/sleep")]),
            args: Some(vec!["infinity".into()]),
            image_pull_policy: holder_pull_policy(config, &h.image, idle),
            resources: Some(resources.clone()),
            security_context: Some(container_security(input.openshift)),
            volume_mounts: Some(vec![mount(true)]),
            ..Default::default()
        })
        .collect();

    let mut pull_secrets: Vec<String> = config.image_pull_secrets.clone();
    for s in &input.extra_pull_secrets {
        if !pull_secrets.contains(s) {
            pull_secrets.push(s.clone());
        }
    }
    // The holders, and only they, tolerate the node gate's taint: they are what opens it.
    let mut tolerations = config.tolerations.clone();
    if let Some(gate) = &config.node_gate
        && !tolerations.contains(&gate.taint.toleration())
    {
        tolerations.push(gate.taint.toleration());
    }
    let pod = PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(5),
        security_context: Some(pod_security(input.openshift)),
        node_selector: Some(config.node_selector.clone()),
        affinity: Some(config.holder_affinity()),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        image_pull_secrets: (!pull_secrets.is_empty())
            .then(|| pull_secrets.into_iter().map(|name| LocalObjectReference { name }).collect()),
        priority_class_name: config.priority_class_name.clone(),
        init_containers: Some(vec![init]),
        containers: holders,
        volumes: Some(vec![Volume {
            name: KIP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(K8sQuantity("1Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };

    DaemonSet {
        metadata: ObjectMeta {
            name: Some(config.daemonset_name.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: input.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(&config.daemonset_name)),
                ..Default::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(match config.max_surge {
                        MaxSurge::Nodes(n) => IntOrString::Int(n),
                        MaxSurge::Percent(p) => IntOrString::String(format!("{p}%")),
                    }),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: template_annotations,
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether a refresh would make some holder pull again: only pulls with policy `Always` (set, or
/// Kubernetes' default for `:latest` and untagged images) can bring a newer image.
pub fn refresh_would_repull(config: &Config, holders: &[Holder]) -> bool {
    match config.image_pull_policy {
        Some(PullPolicy::Always) => !holders.is_empty(),
        Some(_) => false,
        // With digest checks, a tag is pulled again when its digest changed, never on a timer.
        None if config.digest_check.is_some() => false,
        None => holders.iter().any(|h| defaults_to_always(&h.image)),
    }
}

/// The holders' pull policy: `IMAGE_PULL_POLICY` when set; with digest checks, `Always` for tags,
/// so that a roll for a new digest pulls the tag again and the node's tag points at the new
/// content (a user pod naming the tag with `IfNotPresent` then finds it); else the default.
fn holder_pull_policy(config: &Config, image: &str, idle: bool) -> Option<String> {
    match config.image_pull_policy {
        Some(p) => Some(p.as_str().to_string()),
        None if config.digest_check.is_some() && !idle && !image.contains('@') => Some("Always".into()),
        None => None,
    }
}

/// Kubernetes defaults the pull policy to `Always` for `:latest` and for images without a tag
/// or digest.
fn defaults_to_always(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn holder_resources(config: &Config) -> ResourceRequirements {
    let r = &config.resources;
    let q = |q: &crate::quantity::Quantity| K8sQuantity(q.as_str().to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q(&r.cpu_request)),
            ("memory".to_string(), q(&r.memory_request)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), q(&r.cpu_limit)),
            ("memory".to_string(), q(&r.memory_limit)),
        ])),
        ..Default::default()
    }
}

fn pod_security(openshift: bool) -> PodSecurityContext {
    let id = (!openshift).then_some(HOLDER_UID);
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: id,
        run_as_group: id,
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn container_security(openshift: bool) -> SecurityContext {
    let id = (!openshift).then_some(HOLDER_UID);
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: id,
        run_as_group: id,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
