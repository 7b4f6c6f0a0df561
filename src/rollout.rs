//! The rollout gate. kwarm's admission webhook gives a new pod of a watched Deployment the
//! scheduling gate [`SCHEDULING_GATE`] when one of its images is not yet warm where the pod may
//! run; the controller removes the gate once it is, when an image can never be warmed
//! (quarantined, over MAX_IMAGES, without its own credentials), or at `ROLLOUT_GATE_TIMEOUT`.
//!
//! "Where the pod may run": every node that runs one of kwarm's holder pods and that the pod's
//! node selector and required node affinity admit (taints aside: waiting for a node the pod does
//! not tolerate only waits for a holder that runs anyway). A pod no holder node admits is never
//! gated: there is nothing to wait for.
//!
//! Pure: pods, the warm view and the clock come in; patches and releases go out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Affinity, Pod, PodSpec};

use crate::config::WatchConfig;
use crate::gate::placement_admits;
use crate::holder::parse_image_reference;
use crate::images::DeploymentKey;

/// The scheduling gate kwarm adds and removes; no other gate is ever touched.
pub const SCHEDULING_GATE: &str = "kwarm.io/image-warm";
/// Label or annotation on a Deployment: `true` / `false` turns its gate on or off.
pub const DEPLOYMENT_SETTING: &str = "kwarm.io/rollout-gate";

/// Which watched Deployments are gated (`ROLLOUT_GATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// `true`: every watched Deployment unless it says `kwarm.io/rollout-gate: "false"`.
    All,
    /// `opt-in`: only watched Deployments that say `kwarm.io/rollout-gate: "true"`.
    OptIn,
}

impl GateMode {
    /// Whether a Deployment with this setting (`None`: it has none) is gated.
    pub fn gates(self, setting: Option<bool>) -> bool {
        match self {
            GateMode::All => setting != Some(false),
            GateMode::OptIn => setting == Some(true),
        }
    }
}

/// Where the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `WEBHOOK_URL`: an https URL (a local cluster without kube-proxy).
    Url(String),
    /// `WEBHOOK_SERVICE` in kwarm's namespace, port 443 (the chart's default).
    Service { name: String, namespace: String },
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificates {
    /// kwarm creates and rotates it in this Secret of its namespace, and keeps the webhook
    /// configuration's caBundle current.
    Secret(String),
    /// `WEBHOOK_CERT_DIR`: `tls.crt` and `tls.key` from a directory (cert-manager mounts them;
    /// its CA injector keeps the caBundle).
    Directory(std::path::PathBuf),
}

/// `ROLLOUT_GATE` and its companions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutGate {
    pub mode: GateMode,
    pub timeout: Duration,
    pub bind_address: SocketAddr,
    pub endpoint: Endpoint,
    pub certificates: Certificates,
    /// Name of the MutatingWebhookConfiguration kwarm keeps.
    pub configuration: String,
    /// The manager's own namespace: the webhook's Service and Secret are there (and it is never
    /// gated).
    pub namespace: String,
}

/// Canonical references of a pod's images that kwarm warms (excluded images never gate).
pub fn pod_images(spec: &PodSpec, watch: &WatchConfig) -> BTreeSet<String> {
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    containers
        .filter_map(|c| c.image.as_deref())
        .filter(|image| !watch.image_excluded(image))
        .filter_map(|image| parse_image_reference(image).ok())
        .filter(|canonical| !watch.image_excluded(canonical))
        .collect()
}

/// A pod's containers and init containers (name → canonical image) that kwarm warms.
pub fn pod_containers(spec: &PodSpec, watch: &WatchConfig) -> BTreeMap<String, String> {
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    containers
        .filter_map(|c| Some((c.name.clone(), c.image.as_deref()?)))
        .filter(|(_, image)| !watch.image_excluded(image))
        .filter_map(|(name, image)| Some((name, parse_image_reference(image).ok()?)))
        .filter(|(_, canonical)| !watch.image_excluded(canonical))
        .collect()
}

/// The images a pod waits for: those of the containers its Deployment's template names (the
/// template kwarm saw may be a moment older than the pod, so by name, not by image) and any
/// image kwarm warms. Containers another webhook injected (service-mesh sidecars) are neither,
/// and never hold a pod back. Without the template (or the containers), every image.
fn waited_for(
    images: &BTreeSet<String>,
    containers: &BTreeMap<String, String>,
    template: Option<&BTreeSet<String>>,
    warmed: &BTreeSet<String>,
) -> BTreeSet<String> {
    match template {
        Some(template) if !containers.is_empty() => containers
            .iter()
            .filter(|(name, image)| template.contains(*name) || warmed.contains(*image))
            .map(|(_, image)| image.clone())
            .collect(),
        _ => images.clone(),
    }
}

/// The Deployment a pod belongs to: its controller is the ReplicaSet `<deployment>-<hash>`,
/// where `<hash>` is the pod's `pod-template-hash` label (how the Deployment controller names
/// them), so no ReplicaSet needs to be read.
pub fn owning_deployment(pod: &Pod) -> Option<String> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "ReplicaSet" && o.api_version == "apps/v1")?;
    let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
    let name = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    (!name.is_empty()).then(|| name.to_string())
}

/// What the webhook and the controller know about where images are warm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WarmView {
    /// Every watch listed once; before that the webhook gates nothing.
    pub synced: bool,
    /// Node → images a holder there runs (any holder pod: an old one during a roll counts).
    pub warm: BTreeMap<String, BTreeSet<String>>,
    /// Labels of the nodes that run holders (for node selectors and affinity).
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The watched Deployments whose pods are gated.
    pub gated_deployments: BTreeSet<DeploymentKey>,
    /// Every watched Deployment (gated or opted out).
    pub watched: BTreeSet<DeploymentKey>,
    /// Their pod templates' container names (see [`waited_for`]).
    pub template_containers: BTreeMap<DeploymentKey, BTreeSet<String>>,
    /// The images the DaemonSet is to hold now.
    pub warmed: BTreeSet<String>,
    /// Images kwarm does not warm now: failing on every node, or over MAX_IMAGES. Nobody waits
    /// for them.
    pub quarantined: BTreeSet<String>,
    pub overflow: BTreeSet<String>,
    /// Images kwarm does not warm because the credentials of the namespaces that want them cannot
    /// read them.
    pub denied: BTreeSet<String>,
}

/// A pod's node selector and node affinity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Option<Affinity>,
}

impl Placement {
    pub fn of(spec: &PodSpec) -> Placement {
        Placement {
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            affinity: spec.affinity.clone(),
        }
    }
}

/// The images of `images` that some holder node the pod may run on does not hold, and how many
/// such nodes there are.
pub fn not_warm(images: &BTreeSet<String>, placement: &Placement, view: &WarmView) -> (Vec<String>, usize) {
    let none = BTreeMap::new();
    let mut missing = BTreeSet::new();
    let mut nodes = 0;
    for (node, held) in &view.warm {
        let labels = view.labels.get(node).unwrap_or(&none);
        if !placement_admits(&placement.node_selector, placement.affinity.as_ref(), node, labels) {
            continue;
        }
        nodes += 1;
        missing.extend(images.iter().filter(|i| !held.contains(*i)).cloned());
    }
    (missing.into_iter().collect(), nodes)
}

/// The webhook's answer for a pod being created in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Add the gate: these images are not warm yet.
    Gate { not_warm: Vec<String> },
    /// Leave the pod alone, and why (for the metric and the debug log).
    Pass(&'static str),
    /// The pod's Deployment is not among those kwarm watches, or kwarm has not seen it yet (a
    /// Deployment created a moment ago): the caller reads it and asks [`admit_gated`].
    Unknown { deployment: String },
}

/// Decides whether a new pod waits for its images.
pub fn admit(pod: &Pod, namespace: &str, view: &WarmView, watch: &WatchConfig) -> Admission {
    if !view.synced {
        return Admission::Pass("not_synced");
    }
    let Some(spec) = &pod.spec else { return Admission::Pass("no_spec") };
    if spec.node_name.is_some() {
        return Admission::Pass("bound");
    }
    if spec.scheduling_gates.iter().flatten().any(|g| g.name == SCHEDULING_GATE) {
        return Admission::Pass("gated");
    }
    let Some(deployment) = owning_deployment(pod) else { return Admission::Pass("not_watched") };
    let key = (namespace.to_string(), deployment);
    if !view.gated_deployments.contains(&key) {
        if view.watched.contains(&key) {
            return Admission::Pass("not_gated");
        }
        return Admission::Unknown { deployment: key.1 };
    }
    admit_gated(spec, view, watch, view.template_containers.get(&key))
}

/// [`admit`] for a pod of a gated Deployment whose template has these container names.
pub fn admit_gated(
    spec: &PodSpec,
    view: &WarmView,
    watch: &WatchConfig,
    template: Option<&BTreeSet<String>>,
) -> Admission {
    let images = waited_for(&pod_images(spec, watch), &pod_containers(spec, watch), template, &view.warmed);
    // An image kwarm does not warm opens the gate at once ([`releases`]): gating would only cost
    // a patch and an Event.
    if images.iter().any(|i| view.quarantined.contains(i)) {
        return Admission::Pass("quarantined");
    }
    if images.iter().any(|i| view.overflow.contains(i)) {
        return Admission::Pass("overflow");
    }
    if images.iter().any(|i| view.denied.contains(i)) {
        return Admission::Pass("denied");
    }
    let (missing, nodes) = not_warm(&images, &Placement::of(spec), view);
    if nodes == 0 {
        return Admission::Pass("no_holder_node");
    }
    if missing.is_empty() {
        return Admission::Pass("warm");
    }
    Admission::Gate { not_warm: missing }
}

/// The patch that adds the gate (after any gates the pod has).
pub fn gate_patch(spec: &PodSpec) -> json_patch::Patch {
    use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
    let gate = serde_json::json!({ "name": SCHEDULING_GATE });
    let operation = match &spec.scheduling_gates {
        Some(_) => {
            AddOperation { path: PointerBuf::from_tokens(["spec", "schedulingGates", "-"]), value: gate }
        }
        None => AddOperation {
            path: PointerBuf::from_tokens(["spec", "schedulingGates"]),
            value: serde_json::Value::Array(vec![gate]),
        },
    };
    json_patch::Patch(vec![PatchOperation::Add(operation)])
}

/// What kwarm keeps of a pod that carries its gate.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedPod {
    pub uid: String,
    /// Where the gate is in `spec.schedulingGates` (the release tests it is still there).
    pub index: usize,
    /// The pod's creation: the gate's clock (a restart or a new leader continues it).
    pub since: SystemTime,
    pub deployment: Option<String>,
    pub images: BTreeSet<String>,
    /// Container name → image (see [`waited_for`]).
    pub containers: BTreeMap<String, String>,
    pub placement: Placement,
}

/// `namespace/name` of a pod.
pub type PodKey = (String, String);

/// The gate state of a pod; `None` when it does not carry kwarm's gate.
pub fn gated_pod(pod: &Pod, watch: &WatchConfig, now: SystemTime) -> Option<GatedPod> {
    let spec = pod.spec.as_ref()?;
    let index = spec.scheduling_gates.as_ref()?.iter().position(|g| g.name == SCHEDULING_GATE)?;
    Some(GatedPod {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        index,
        since: pod.metadata.creation_timestamp.as_ref().map_or(now, |t| SystemTime::from(t.0)),
        deployment: owning_deployment(pod),
        images: pod_images(spec, watch),
        containers: pod_containers(spec, watch),
        placement: Placement::of(spec),
    })
}

/// Why a pod's gate opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Every image is held where the pod may run (or no holder node admits the pod).
    Warm,
    /// `ROLLOUT_GATE_TIMEOUT` passed; these images were not warm yet.
    Timeout { not_warm: Vec<String> },
    /// kwarm stopped warming this image: it fails on every node.
    Quarantined { image: String },
    /// kwarm does not warm this image: MAX_IMAGES is reached.
    Overflow { image: String },
    /// kwarm does not warm this image: its own namespaces' credentials cannot read it.
    Denied { image: String },
    /// The pod's Deployment opted out of the gate since (`kwarm.io/rollout-gate: "false"`).
    NotGated,
}

impl Why {
    /// The reason label of the releases metric.
    pub fn label(&self) -> &'static str {
        match self {
            Why::Warm => "warm",
            Why::Timeout { .. } => "timeout",
            Why::Quarantined { .. } => "quarantined",
            Why::Overflow { .. } => "overflow",
            Why::Denied { .. } => "denied",
            Why::NotGated => "not_gated",
        }
    }
}

/// A pod whose gate to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRelease {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub index: usize,
    pub since: SystemTime,
    pub deployment: Option<String>,
    pub why: Why,
}

/// The gated pods whose gate opens now.
pub fn releases<'a>(
    gated: impl IntoIterator<Item = (&'a PodKey, &'a GatedPod)>,
    view: &WarmView,
    timeout: Duration,
    now: SystemTime,
) -> Vec<PodRelease> {
    let mut out = Vec::new();
    for ((namespace, name), pod) in gated {
        let template = pod
            .deployment
            .as_ref()
            .and_then(|d| view.template_containers.get(&(namespace.clone(), d.clone())));
        let images = waited_for(&pod.images, &pod.containers, template, &view.warmed);
        let key = pod.deployment.as_ref().map(|d| (namespace.clone(), d.clone()));
        let opted_out =
            key.is_some_and(|k| view.watched.contains(&k) && !view.gated_deployments.contains(&k));
        let why = if opted_out {
            Why::NotGated
        } else if let Some(image) = images.iter().find(|i| view.quarantined.contains(*i)) {
            Why::Quarantined { image: image.clone() }
        } else if let Some(image) = images.iter().find(|i| view.overflow.contains(*i)) {
            Why::Overflow { image: image.clone() }
        } else if let Some(image) = images.iter().find(|i| view.denied.contains(*i)) {
            Why::Denied { image: image.clone() }
        } else {
            let (missing, _) = not_warm(&images, &pod.placement, view);
            if missing.is_empty() {
                Why::Warm
            } else if now >= deadline(pod, timeout) {
                Why::Timeout { not_warm: missing }
            } else {
                continue;
            }
        };
        out.push(PodRelease {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: pod.uid.clone(),
            index: pod.index,
            since: pod.since,
            deployment: pod.deployment.clone(),
            why,
        });
    }
    out
}

/// When the gate of `pod` opens at the latest.
pub fn deadline(pod: &GatedPod, timeout: Duration) -> SystemTime {
    pod.since.checked_add(timeout).unwrap_or(pod.since)
}

/// The JSON patch that removes kwarm's gate at `index` of the pod with `uid`: it tests the pod
/// is the same one and the gate is still there, so no other gate is ever removed.
pub fn gate_removal(uid: &str, index: usize) -> json_patch::Patch {
    use json_patch::{PatchOperation, RemoveOperation, TestOperation, jsonptr::PointerBuf};
    let index = index.to_string();
    let at = PointerBuf::from_tokens(["spec", "schedulingGates", index.as_str()]);
    json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "uid"]),
            value: uid.into(),
        }),
        PatchOperation::Test(TestOperation {
            path: at.clone(),
            value: serde_json::json!({ "name": SCHEDULING_GATE }),
        }),
        PatchOperation::Remove(RemoveOperation { path: at }),
    ])
}

#[cfg(test)]
mod tests;
