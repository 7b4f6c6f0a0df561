//! Per-image, per-node state computed from the holder pods, and the quarantine state machine.
//! Pure: the controller feeds pods and the clock in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Affinity, Pod};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::gate::{GatedNode, NodeGate, placement_admits};
use crate::holder::parse_image_reference;

pub mod conditions;
mod index;
pub use index::HolderIndex;

/// What one holder container on one node is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum HolderState {
    /// The container started: the image is on the node and held.
    Warm,
    /// The image is being pulled (or the pod is still starting).
    Pulling,
    /// The kubelet reports a pull or start failure.
    Failed { reason: String, message: String },
}

/// Waiting reasons the kubelet uses when it cannot get or start an image.
const FAILURE_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
    "SignatureValidationFailed",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// What kwarm keeps of one holder pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodHolders {
    pub node: String,
    /// `pod-template-generation` label: which DaemonSet generation the pod belongs to.
    pub generation: Option<i64>,
    /// Canonical image reference → state.
    pub images: BTreeMap<String, HolderState>,
    /// The init container (`KIP_IMAGE`) failing: reason and message. Holders cannot start then,
    /// which is not the fault of their images.
    pub init_failure: Option<(String, String)>,
    /// Canonical image reference → the digest (`sha256:…`) the node's runtime resolved it to, from
    /// the container's `imageID` (`repo@sha256:…`): what the node holds.
    pub digests: BTreeMap<String, String>,
}

/// Reduces a holder pod to its node and the state of each holder image.
/// `None` for pods that are not scheduled yet or are being deleted.
pub fn pod_holders(pod: &Pod) -> Option<PodHolders> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.clone()?;
    let generation = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-generation"))
        .and_then(|g| g.parse().ok());
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    let init_failure = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|s| s.state.as_ref()?.waiting.as_ref())
        .find(|w| w.reason.as_deref().is_some_and(|r| FAILURE_REASONS.contains(&r)))
        .map(|w| (w.reason.clone().unwrap_or_default(), w.message.clone().unwrap_or_default()));
    let mut images = BTreeMap::new();
    let mut digests = BTreeMap::new();
    for container in &spec.containers {
        let Some(image) = container.image.clone() else { continue };
        let status = statuses.and_then(|all| all.iter().find(|s| s.name == container.name));
        let canonical = parse_image_reference(&image).unwrap_or_else(|_| image.clone());
        if let Some(digest) = status.and_then(|s| repo_digest(&s.image_id)) {
            digests.insert(canonical.clone(), digest.to_string());
        }
        let state = match status.and_then(|s| s.state.as_ref()) {
            Some(st) if st.running.is_some() => HolderState::Warm,
            // A holder that ran and stopped still had its image on the node.
            Some(st) if st.terminated.is_some() => HolderState::Warm,
            Some(st) => match st.waiting.as_ref() {
                Some(w) if w.reason.as_deref().is_some_and(|r| FAILURE_REASONS.contains(&r)) => {
                    HolderState::Failed {
                        reason: w.reason.clone().unwrap_or_default(),
                        message: w.message.clone().unwrap_or_default(),
                    }
                }
                _ => HolderState::Pulling,
            },
            None => HolderState::Pulling,
        };
        images.insert(canonical, state);
    }
    Some(PodHolders { node, generation, images, init_failure, digests })
}

/// Nodes holding `digest` of `image`, and nodes whose holders report only other digests of it
/// (stale). Nodes whose runtime reports no digest count as neither. From scratch: the oracle the
/// [`HolderIndex`] is tested against.
#[cfg(test)]
pub fn digest_counts<'a>(
    pods: impl IntoIterator<Item = &'a PodHolders>,
    image: &str,
    digest: &str,
) -> (usize, usize) {
    let mut per_node: BTreeMap<&str, bool> = BTreeMap::new();
    for pod in pods {
        if let Some(held) = pod.digests.get(image) {
            *per_node.entry(pod.node.as_str()).or_default() |= held == digest;
        }
    }
    let holding = per_node.values().filter(|h| **h).count();
    (holding, per_node.len() - holding)
}

/// One tag in `kwarm status`: what its registry answered and how many nodes hold that.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestReport {
    pub image: String,
    pub registry: crate::registry::Resolution,
    pub holding: usize,
    pub stale: usize,
}

impl DigestReport {
    pub fn build(
        answers: &BTreeMap<String, crate::registry::Resolution>,
        pods: &[PodHolders],
    ) -> Vec<DigestReport> {
        let index = HolderIndex::of_list(pods, None);
        answers
            .iter()
            .map(|(image, registry)| {
                let (holding, stale) = match registry.digest() {
                    Some(d) => index.digest_counts(image, d),
                    None => (0, 0),
                };
                DigestReport { image: image.clone(), registry: registry.clone(), holding, stale }
            })
            .collect()
    }
}

/// The digest of a runtime's `imageID` when it names the registry content (`repo@sha256:…`, as
/// containerd reports it); `None` for an empty ID or a bare image-config ID (`sha256:…`).
pub fn repo_digest(image_id: &str) -> Option<&str> {
    let (_, digest) = image_id.rsplit_once('@')?;
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

/// Node counts of one image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageStatus {
    pub image: String,
    pub nodes: usize,
    pub warm: usize,
    pub pulling: usize,
    pub failed: usize,
    /// Failure reason → node names (bounded by the caller when printed).
    pub failures: BTreeMap<String, BTreeSet<String>>,
    /// One kubelet message per reason, for humans.
    pub messages: BTreeMap<String, String>,
}

impl ImageStatus {
    pub fn warm_everywhere(&self) -> bool {
        self.nodes > 0 && self.warm == self.nodes
    }
    pub fn failing_everywhere(&self) -> bool {
        self.nodes > 0 && self.failed == self.nodes
    }
}

/// Aggregates pods into per-image node counts. Only pods of `generation` (the DaemonSet's current
/// template) count; a node where the current pod is missing is counted by its older pod, since
/// that one still holds the images (surge rollouts replace the old pod only when the new one runs).
#[cfg(test)]
pub fn image_statuses<'a>(
    pods: impl IntoIterator<Item = &'a PodHolders>,
    generation: Option<i64>,
    images: &[String],
) -> Vec<ImageStatus> {
    // Per node: the pod of the current generation if there is one, else any pod.
    let mut per_node: BTreeMap<&str, &PodHolders> = BTreeMap::new();
    for pod in pods {
        let current = generation.is_some() && pod.generation == generation;
        match per_node.get(pod.node.as_str()) {
            Some(existing) if existing.generation == generation && generation.is_some() => {}
            Some(_) if !current => {}
            _ => {
                per_node.insert(pod.node.as_str(), pod);
            }
        }
    }
    images
        .iter()
        .map(|image| {
            let mut s = ImageStatus { image: image.clone(), nodes: per_node.len(), ..Default::default() };
            for (node, pod) in &per_node {
                match pod.images.get(image) {
                    Some(HolderState::Warm) => s.warm += 1,
                    Some(HolderState::Failed { reason, message }) => {
                        s.failed += 1;
                        s.failures.entry(reason.clone()).or_default().insert(node.to_string());
                        s.messages.entry(reason.clone()).or_insert_with(|| message.clone());
                    }
                    // An old pod without this image, or still pulling.
                    Some(HolderState::Pulling) | None => s.pulling += 1,
                }
            }
            s
        })
        .collect()
}

/// Quarantine of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineEntry {
    /// How many times the image was quarantined so far.
    pub attempt: u32,
    /// When it goes back into the DaemonSet for another try; `None` after the last retry.
    #[serde(with = "opt_time")]
    pub retry_at: Option<SystemTime>,
}

/// Tracks failing images: failing on every node for `timeout` → quarantined (left out of the
/// DaemonSet) → retried after `backoff * 2^(attempt-1)` → quarantined for good after `max_retries`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quarantine {
    /// Image → since when it fails on every node (not yet quarantined).
    failing_since: BTreeMap<String, SystemTime>,
    /// Image → quarantine entry (in quarantine, or back in the DaemonSet for a retry).
    entries: BTreeMap<String, QuarantineEntry>,
    /// Images being retried (back in the DaemonSet) → since when.
    retrying: BTreeMap<String, (SystemTime, u32)>,
}

/// What changed in one step, for events and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineChanges {
    pub quarantined: Vec<String>,
    pub released_for_retry: Vec<String>,
    pub recovered: Vec<String>,
}

impl QuarantineChanges {
    pub fn is_empty(&self) -> bool {
        self.quarantined.is_empty() && self.released_for_retry.is_empty() && self.recovered.is_empty()
    }
}

/// Quarantine settings.
#[derive(Debug, Clone, Copy)]
pub struct QuarantinePolicy {
    pub timeout: Duration,
    pub backoff: Duration,
    pub max_retries: u32,
}

impl Quarantine {
    /// Restores quarantined images remembered on the DaemonSet. An entry for an image the
    /// DaemonSet still holds (`held`) is back in for a retry since `now`, never left out: the
    /// nodes hold that image, and an entry alone (a restart during a retry, a hand-edited or
    /// future-dated annotation) must not take it off every node.
    pub fn restore(
        entries: BTreeMap<String, QuarantineEntry>,
        held: &BTreeSet<String>,
        now: SystemTime,
    ) -> Quarantine {
        let retrying = entries
            .iter()
            .filter(|(image, _)| held.contains(*image))
            .map(|(image, entry)| (image.clone(), (now, entry.attempt)))
            .collect();
        Quarantine { entries, retrying, ..Default::default() }
    }

    /// Images to leave out of the DaemonSet now.
    pub fn excluded(&self) -> BTreeSet<String> {
        self.entries.keys().filter(|i| !self.retrying.contains_key(*i)).cloned().collect()
    }

    pub fn entries(&self) -> &BTreeMap<String, QuarantineEntry> {
        &self.entries
    }

    /// Images in the DaemonSet that are failing, with since when.
    pub fn failing(&self) -> &BTreeMap<String, SystemTime> {
        &self.failing_since
    }

    /// Advances the state machine with the current statuses of images in the DaemonSet.
    pub fn step(
        &mut self,
        statuses: &[ImageStatus],
        policy: QuarantinePolicy,
        now: SystemTime,
    ) -> QuarantineChanges {
        let mut changes = QuarantineChanges::default();
        let elapsed = |since: SystemTime| now.duration_since(since).unwrap_or_default();

        // Quarantined images whose time has come go back in for a retry.
        for (image, entry) in &self.entries {
            if self.retrying.contains_key(image) {
                continue;
            }
            if entry.retry_at.is_some_and(|at| at <= now) {
                self.retrying.insert(image.clone(), (now, entry.attempt));
                changes.released_for_retry.push(image.clone());
            }
        }

        // Only images in the DaemonSet now can be failing: statuses of a quarantined image are
        // stale (the apply leaving it out has not landed yet) and must neither count as another
        // failed attempt nor start a clock; and an image that left the DaemonSet has no timeout
        // to wait for (a stale one would stay due and wake the controller over and over).
        let excluded = self.excluded();
        let present: BTreeSet<&str> =
            statuses.iter().map(|s| s.image.as_str()).filter(|i| !excluded.contains(*i)).collect();
        self.failing_since.retain(|image, _| present.contains(image.as_str()));

        for s in statuses.iter().filter(|s| !excluded.contains(&s.image)) {
            if s.failing_everywhere() {
                let since = *self.failing_since.entry(s.image.clone()).or_insert(now);
                if elapsed(since) >= policy.timeout {
                    // the attempt may come from a stored annotation: saturate, never overflow
                    let attempt = self.entries.get(&s.image).map_or(0, |e| e.attempt).saturating_add(1);
                    let retry_at = (attempt <= policy.max_retries).then(|| {
                        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
                        now + policy.backoff.saturating_mul(factor)
                    });
                    self.entries.insert(s.image.clone(), QuarantineEntry { attempt, retry_at });
                    self.retrying.remove(&s.image);
                    self.failing_since.remove(&s.image);
                    changes.quarantined.push(s.image.clone());
                }
            } else {
                self.failing_since.remove(&s.image);
                if s.warm > 0 && self.entries.remove(&s.image).is_some() {
                    self.retrying.remove(&s.image);
                    changes.recovered.push(s.image.clone());
                }
            }
        }
        changes
    }

    /// Drops state about images no longer wanted at all.
    pub fn retain_images(&mut self, wanted: &BTreeSet<String>) {
        self.entries.retain(|i, _| wanted.contains(i));
        self.retrying.retain(|i, _| wanted.contains(i));
        self.failing_since.retain(|i, _| wanted.contains(i));
    }

    /// The next moment something changes by time alone.
    pub fn next_deadline(&self, policy: QuarantinePolicy) -> Option<SystemTime> {
        let retries = self
            .entries
            .iter()
            .filter(|(i, _)| !self.retrying.contains_key(*i))
            .filter_map(|(_, e)| e.retry_at);
        let timeouts = self.failing_since.values().map(|s| *s + policy.timeout);
        retries.chain(timeouts).min()
    }
}

mod time {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }
}

mod opt_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&humantime::format_rfc3339_seconds(*t).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

/// kwarm's state kept on the DaemonSet, so a restarted manager renders the same DaemonSet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedState {
    /// Images no Deployment uses any more → when they were released (RFC 3339).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retained: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<String, QuarantineEntry>,
}

impl PersistedState {
    pub fn new(retained: &BTreeMap<String, SystemTime>, quarantine: &Quarantine) -> PersistedState {
        PersistedState {
            retained: retained
                .iter()
                .map(|(i, t)| (i.clone(), humantime::format_rfc3339_seconds(*t).to_string()))
                .collect(),
            quarantined: quarantine.entries().clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.retained.is_empty() && self.quarantined.is_empty()
    }

    /// When each retained image was released. A time in the future (a skewed clock, a hand-edited
    /// annotation) counts as `now`, so retention still ends one `IMAGE_RETENTION` from now.
    pub fn retained_times(&self, now: SystemTime) -> BTreeMap<String, SystemTime> {
        self.retained
            .iter()
            .filter_map(|(i, t)| humantime::parse_rfc3339(t).ok().map(|t| (i.clone(), t.min(now))))
            .collect()
    }

    /// The JSON for the annotation, within `max_bytes` (annotations are capped at 256 KiB in all;
    /// past that every apply fails). The images released longest ago are dropped first, then
    /// quarantine entries (such an image is simply tried again). Returns the text and how many
    /// entries were dropped.
    pub fn encode_bounded(&self, max_bytes: usize) -> (String, usize) {
        let mut state = self.clone();
        let mut text = serde_json::to_string(&state).unwrap_or_default();
        if text.len() <= max_bytes {
            return (text, 0);
        }
        // Oldest first; each entry costs about its JSON (`"key":"value",`).
        let mut oldest: Vec<(String, String)> =
            state.retained.iter().map(|(i, t)| (t.clone(), i.clone())).collect();
        oldest.sort();
        let mut excess = text.len() - max_bytes;
        let mut dropped = 0;
        let mut queue = oldest.into_iter();
        loop {
            while excess > 0 {
                let freed = match queue.next() {
                    Some((time, image)) => {
                        state.retained.remove(&image);
                        image.len() + time.len() + 6
                    }
                    None => match state.quarantined.pop_last() {
                        Some((image, _)) => image.len() + 60,
                        None => return ("{}".to_string(), dropped),
                    },
                };
                dropped += 1;
                excess = excess.saturating_sub(freed);
            }
            text = serde_json::to_string(&state).unwrap_or_default();
            if text.len() <= max_bytes {
                return (text, dropped);
            }
            excess = text.len() - max_bytes;
        }
    }
}

/// The budget of the `kwarm.io/state` annotation: a quarter of what all annotations may take.
pub const STATE_MAX_BYTES: usize = 64 * 1024;

/// Kubelet `Pulled` event message → (pull duration, image size in bytes), when it reports a pull.
/// Example: `Successfully pulled image "x" in 1.2s (1.2s including waiting). Image size: 123 bytes.`
pub fn parse_pulled_message(message: &str) -> Option<(Duration, Option<u64>)> {
    let rest = message.strip_prefix("Successfully pulled image ")?;
    let after_in = rest.split(" in ").nth(1)?;
    let duration_text = after_in.split([' ', '(']).next()?;
    let duration = parse_go_duration(duration_text)?;
    let size =
        message.split("Image size: ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok());
    Some((duration, size))
}

/// Go's `time.Duration.String()` form: `1h2m3.5s`, `450ms`, `12µs`.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (unit, scale) =
            [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
                .into_iter()
                .find(|(u, _)| rest.starts_with(u))?;
        total += number * scale;
        rest = &rest[unit.len()..];
    }
    // The text comes from an Event anyone with create rights in the namespace can write: a number
    // too large for a Duration (or a day, for a pull) is not a pull report, and never a panic.
    Duration::try_from_secs_f64(total).ok().filter(|d| *d <= MAX_PULL_DURATION)
}

/// Longer than any real pull: a report beyond it is not believed.
const MAX_PULL_DURATION: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests;

/// What `kwarm status` prints.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub namespace: String,
    pub daemonset: String,
    /// `false` when the DaemonSet does not exist.
    pub exists: bool,
    pub nodes: usize,
    pub images: Vec<ImageStatus>,
    pub quarantined: BTreeMap<String, QuarantineEntry>,
    /// Init-container (`KIP_IMAGE`) failure reason → node count.
    pub init_failures: BTreeMap<String, usize>,
    /// Tags and their registry digests, when digest checks are on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<DigestReport>,
    /// The node gate, when `NODE_GATE_TAINT` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_gate: Option<NodeGateReport>,
    /// The rollout gate, when `ROLLOUT_GATE` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_gate: Option<RolloutGateReport>,
    /// Nodes the holders skip for their platform (see [`skipped_platform`]): `os/arch` → count.
    /// Not failures: nothing can run there.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_platforms: BTreeMap<String, usize>,
    /// Nodes the DaemonSet controller places the current template on (`desiredNumberScheduled`);
    /// `None` until it has seen the current generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_nodes: Option<usize>,
    /// The manager's own `Warm` condition on the DaemonSet, when it publishes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_warm: Option<ManagerCondition>,
}

/// A condition the manager wrote on its DaemonSet's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ManagerCondition {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The platform (`os/arch`) of a node the holders skip for that platform alone: `NODE_SELECTOR`
/// and `AFFINITY` as the user wrote them admit it (kwarm's own `kubernetes.io/os: linux` aside),
/// but `KIP_IMAGE` has no `/sleep` for it, so the holders' placement (`holder_affinity`) does
/// not. `None` for a node the holders run on, or one the user did not select anyway.
pub fn skipped_platform(
    config: &Config,
    holder_affinity: &Affinity,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    if placement_admits(&config.node_selector, Some(holder_affinity), name, labels) {
        return None;
    }
    let os_keys = ["kubernetes.io/os", "beta.kubernetes.io/os"];
    let user_selector: BTreeMap<String, String> = config
        .node_selector
        .iter()
        .filter(|(k, _)| !os_keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !placement_admits(&user_selector, config.affinity.as_ref(), name, labels) {
        return None;
    }
    let label = |key: &str| labels.get(key).map_or("unknown", String::as_str);
    Some(format!("{}/{}", label("kubernetes.io/os"), label("kubernetes.io/arch")))
}

/// Text from outside kwarm (a registry, a kubelet, the API server), safe to print in a table:
/// control and format characters are stripped, so an escape sequence loses its ESC, a bidi
/// override cannot reorder the line and NUL or zero-width characters vanish; line and column
/// breaks (`\n`, `\r`, `\t`, U+2028) become a space, so the text cannot forge lines of the report.
/// What is left is printable. The JSON output keeps the text exact (serde escapes it).
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    use icu_properties::CodePointMapData;
    use icu_properties::props::GeneralCategory;
    let category = CodePointMapData::<GeneralCategory>::new();
    let unprintable = |c: char| {
        matches!(
            category.get(c),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    };
    if !text.chars().any(unprintable) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .filter_map(|c| match (unprintable(c), c.is_whitespace()) {
                (false, _) => Some(c),
                (true, true) => Some(' '),
                (true, false) => None,
            })
            .collect(),
    )
}

/// The rollout gate in `kwarm status`: every pod carrying kwarm's scheduling gate.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutGateReport {
    pub timeout_seconds: u64,
    pub gated: Vec<GatedPodReport>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatedPodReport {
    pub namespace: String,
    pub pod: String,
    pub deployment: Option<String>,
    #[serde(with = "time")]
    pub since: SystemTime,
    /// When kwarm opens the gate at the latest.
    #[serde(with = "time")]
    pub deadline: SystemTime,
    /// Images of the pod some node it may run on does not hold yet.
    pub not_warm: Vec<String>,
}

impl RolloutGateReport {
    pub fn build(
        timeout: Duration,
        gated: &[(crate::rollout::PodKey, crate::rollout::GatedPod)],
        view: &crate::rollout::WarmView,
    ) -> Self {
        let gated = gated
            .iter()
            .map(|((namespace, pod), g)| GatedPodReport {
                namespace: namespace.clone(),
                pod: pod.clone(),
                deployment: g.deployment.clone(),
                since: g.since,
                deadline: crate::rollout::deadline(g, timeout),
                not_warm: crate::rollout::not_warm(&g.images, &g.placement, view).0,
            })
            .collect();
        RolloutGateReport { timeout_seconds: timeout.as_secs(), gated }
    }
}

/// The node gate in `kwarm status`: its taint, and every node still carrying it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeGateReport {
    pub taint: String,
    pub timeout_seconds: u64,
    pub gated: Vec<GatedNodeReport>,
}

impl NodeGateReport {
    /// The gated nodes with what each still waits for: the DaemonSet's `images` that no holder
    /// pod on the node runs yet.
    pub fn build(
        gate: &NodeGate,
        gated: &[(String, GatedNode)],
        pods: &[PodHolders],
        images: &[String],
    ) -> Self {
        let gated = gated
            .iter()
            .map(|(node, g)| {
                let held = |image: &String| {
                    pods.iter().any(|p| &p.node == node && p.images.get(image) == Some(&HolderState::Warm))
                };
                GatedNodeReport {
                    node: node.clone(),
                    since: g.since,
                    deadline: crate::gate::deadline(g, gate.timeout),
                    selected: g.placeable,
                    not_warm: images.iter().filter(|i| !held(i)).cloned().collect(),
                }
            })
            .collect();
        NodeGateReport { taint: gate.taint.to_string(), timeout_seconds: gate.timeout.as_secs(), gated }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatedNodeReport {
    pub node: String,
    #[serde(with = "time")]
    pub since: SystemTime,
    /// When kwarm opens the gate at the latest.
    #[serde(with = "time")]
    pub deadline: SystemTime,
    /// The holders' node selector or affinity never admits the node (released at once).
    pub selected: bool,
    /// Images of the DaemonSet the node does not hold yet.
    pub not_warm: Vec<String>,
}

impl StatusReport {
    /// Builds the report from the live DaemonSet's pods and its state annotation.
    pub fn build(
        namespace: &str,
        daemonset: &str,
        generation: Option<Option<i64>>,
        images: &[String],
        pods: &[PodHolders],
        state: Option<&str>,
    ) -> StatusReport {
        let images: Vec<String> =
            images.iter().map(|i| parse_image_reference(i).unwrap_or_else(|_| i.clone())).collect();
        let index = HolderIndex::of_list(pods, generation.flatten());
        let statuses = index.statuses(&images);
        let nodes = index.node_count();
        let quarantined = state
            .and_then(|s| serde_json::from_str::<PersistedState>(s).ok())
            .map(|s| s.quarantined)
            .unwrap_or_default();
        let mut init_failures = BTreeMap::new();
        for (reason, message) in pods.iter().filter_map(|p| p.init_failure.as_ref()) {
            *init_failures.entry(format!("{reason}: {message}")).or_insert(0) += 1;
        }
        StatusReport {
            namespace: namespace.into(),
            daemonset: daemonset.into(),
            exists: generation.is_some(),
            nodes,
            images: statuses,
            quarantined,
            init_failures,
            digests: Vec::new(),
            node_gate: None,
            rollout_gate: None,
            skipped_platforms: BTreeMap::new(),
            desired_nodes: None,
            manager_warm: None,
        }
    }

    /// The report with every text in it [`terminal_safe`], for the table: names and images come
    /// from the API server, reasons and messages from kubelets and registries. Texts that become
    /// equal are merged (their node sets and counts added up).
    pub fn terminal_safe(&self) -> StatusReport {
        fn safe(text: &str) -> String {
            terminal_safe(text).into_owned()
        }
        fn safe_all(texts: &[String]) -> Vec<String> {
            texts.iter().map(|t| safe(t)).collect()
        }
        let images = self
            .images
            .iter()
            .map(|s| {
                let mut failures: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for (reason, nodes) in &s.failures {
                    failures.entry(safe(reason)).or_default().extend(nodes.iter().map(|n| safe(n)));
                }
                let mut messages = BTreeMap::new();
                for (reason, message) in &s.messages {
                    messages.entry(safe(reason)).or_insert_with(|| safe(message));
                }
                ImageStatus { image: safe(&s.image), failures, messages, ..s.clone() }
            })
            .collect();
        let mut init_failures = BTreeMap::new();
        for (failure, nodes) in &self.init_failures {
            *init_failures.entry(safe(failure)).or_insert(0) += nodes;
        }
        let mut skipped_platforms = BTreeMap::new();
        for (platform, nodes) in &self.skipped_platforms {
            *skipped_platforms.entry(safe(platform)).or_insert(0) += nodes;
        }
        let digests = self
            .digests
            .iter()
            .map(|d| DigestReport {
                image: safe(&d.image),
                registry: match &d.registry {
                    crate::registry::Resolution::Digest { digest } => {
                        crate::registry::Resolution::Digest { digest: safe(digest) }
                    }
                    crate::registry::Resolution::Failed { reason, message } => {
                        crate::registry::Resolution::Failed { reason: *reason, message: safe(message) }
                    }
                },
                ..d.clone()
            })
            .collect();
        let node_gate = self.node_gate.as_ref().map(|g| NodeGateReport {
            taint: safe(&g.taint),
            gated: g
                .gated
                .iter()
                .map(|n| GatedNodeReport {
                    node: safe(&n.node),
                    not_warm: safe_all(&n.not_warm),
                    ..n.clone()
                })
                .collect(),
            ..g.clone()
        });
        let rollout_gate = self.rollout_gate.as_ref().map(|g| RolloutGateReport {
            gated: g
                .gated
                .iter()
                .map(|p| GatedPodReport {
                    namespace: safe(&p.namespace),
                    pod: safe(&p.pod),
                    deployment: p.deployment.as_deref().map(safe),
                    not_warm: safe_all(&p.not_warm),
                    ..p.clone()
                })
                .collect(),
            ..g.clone()
        });
        StatusReport {
            namespace: safe(&self.namespace),
            daemonset: safe(&self.daemonset),
            images,
            quarantined: self.quarantined.iter().map(|(image, e)| (safe(image), e.clone())).collect(),
            init_failures,
            digests,
            node_gate,
            rollout_gate,
            skipped_platforms,
            manager_warm: self.manager_warm.as_ref().map(|c| ManagerCondition {
                status: c.status,
                reason: safe(&c.reason),
                message: safe(&c.message),
            }),
            ..self.clone()
        }
    }

    /// A table for terminals: one line per image, then failures with reasons, then quarantine.
    /// Every text in it is [`terminal_safe`].
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let this = self.terminal_safe();
        let mut out = String::new();
        if !this.exists {
            let _ = writeln!(
                out,
                "DaemonSet {}/{} does not exist (is the manager running?)",
                this.namespace, this.daemonset
            );
            return out;
        }
        let _ = writeln!(
            out,
            "DaemonSet {}/{}: {} images on {} nodes",
            this.namespace,
            this.daemonset,
            this.images.len(),
            this.nodes
        );
        let width = this.images.iter().map(|s| s.image.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(out, "{:<width$}  {:>5}  {:>7}  {:>6}", "IMAGE", "WARM", "PULLING", "FAILED");
        for s in &this.images {
            let _ = writeln!(
                out,
                "{:<width$}  {:>5}  {:>7}  {:>6}",
                s.image,
                format!("{}/{}", s.warm, s.nodes),
                s.pulling,
                s.failed
            );
        }
        let failing: Vec<&ImageStatus> = this.images.iter().filter(|s| s.failed > 0).collect();
        if !failing.is_empty() {
            let _ = writeln!(out, "\nFailures:");
            for s in failing {
                for (reason, nodes) in &s.failures {
                    let shown: Vec<&str> = nodes.iter().take(5).map(String::as_str).collect();
                    let more = nodes.len().saturating_sub(shown.len());
                    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                    let message = s.messages.get(reason).map(String::as_str).unwrap_or_default();
                    let _ = writeln!(out, "  {} {reason} on {}{more}: {message}", s.image, shown.join(", "));
                }
            }
        }
        if !this.init_failures.is_empty() {
            let _ = writeln!(out, "\nInit container (KIP_IMAGE) failing, holders cannot start:");
            for (reason, nodes) in &this.init_failures {
                let _ = writeln!(out, "  on {nodes} nodes: {}", reason);
            }
        }
        if !this.digests.is_empty() {
            let _ = writeln!(out, "\nTags in their registries:");
            for d in &this.digests {
                match &d.registry {
                    crate::registry::Resolution::Digest { digest } => {
                        let short = digest.get(..19).unwrap_or(digest);
                        let _ = writeln!(
                            out,
                            "  {}  {short}…  held on {} nodes, {} stale",
                            d.image, d.holding, d.stale
                        );
                    }
                    crate::registry::Resolution::Failed { reason, message } => {
                        let _ = writeln!(out, "  {}  not checked ({}): {message}", d.image, reason.as_str());
                    }
                }
            }
        }
        if let Some(gate) = &this.node_gate {
            let _ = writeln!(
                out,
                "\nNode gate {}: {} nodes gated (released when warm, at the latest after {})",
                gate.taint,
                gate.gated.len(),
                humantime::format_duration(Duration::from_secs(gate.timeout_seconds))
            );
            for g in &gate.gated {
                let deadline = humantime::format_rfc3339_seconds(g.deadline);
                let waiting = if !g.selected {
                    "not selected by NODE_SELECTOR/AFFINITY: released at once".to_string()
                } else if g.not_warm.is_empty() {
                    "warm: being released".to_string()
                } else {
                    let shown: Vec<&str> = g.not_warm.iter().take(5).map(String::as_str).collect();
                    let more = g.not_warm.len().saturating_sub(shown.len());
                    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                    format!("waiting for {}{more}", shown.join(", "))
                };
                let _ = writeln!(out, "  {}  until {deadline}  {waiting}", g.node);
            }
        }
        if let Some(gate) = &this.rollout_gate {
            let _ = writeln!(
                out,
                "\nRollout gate: {} pods gated (released when their images are warm, at the latest after {})",
                gate.gated.len(),
                humantime::format_duration(Duration::from_secs(gate.timeout_seconds))
            );
            for g in &gate.gated {
                let deadline = humantime::format_rfc3339_seconds(g.deadline);
                let waiting = match g.not_warm.as_slice() {
                    [] => "warm: being released".to_string(),
                    images => format!("waiting for {}", images.join(", ")),
                };
                let _ = writeln!(out, "  {}/{}  until {deadline}  {waiting}", g.namespace, g.pod);
            }
        }
        if !this.skipped_platforms.is_empty() {
            let shown: Vec<String> = this
                .skipped_platforms
                .iter()
                .map(|(platform, n)| format!("{} on {n} node{}", platform, if *n == 1 { "" } else { "s" }))
                .collect();
            let _ = writeln!(
                out,
                "\nNot placed, KIP_IMAGE has no /sleep for their platform (KIP_IMAGE_PLATFORMS): {}",
                shown.join(", ")
            );
        }
        if !this.quarantined.is_empty() {
            let _ = writeln!(out, "\nQuarantined (left out of the DaemonSet):");
            for (image, e) in &this.quarantined {
                let retry = match e.retry_at {
                    Some(t) => format!("retry at {}", humantime::format_rfc3339_seconds(t)),
                    None => "no more retries".into(),
                };
                let _ = writeln!(out, "  {image}  attempt {}  {retry}", e.attempt);
            }
        }
        out
    }
}
