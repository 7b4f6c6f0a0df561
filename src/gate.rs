//! The node warm-up gate. A node joins with the gate taint (`NODE_GATE_TAINT`, put there by
//! Karpenter, cluster-autoscaler or the kubelet's `--register-with-taints`); only holder pods
//! tolerate it. kwarm removes it as soon as the node holds every desired image, when the holders
//! can never run there, or at `NODE_GATE_TIMEOUT`, whichever comes first.
//!
//! Pure: nodes, holder states and the clock come in; which nodes to release, and why, go out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration,
};

use crate::labels;

/// Effects a taint may have.
const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// The gate taint: `key[=value][:effect]`, as `kubectl taint` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTaint {
    pub key: String,
    /// `None`: any value (the holders tolerate the key with operator `Exists`).
    pub value: Option<String>,
    pub effect: String,
}

impl GateTaint {
    /// Parses `key`, `key=value`, `key:effect` or `key=value:effect` (effect NoSchedule by default).
    pub fn parse(text: &str) -> Result<GateTaint, String> {
        let expected =
            "a taint key[=value][:effect], e.g. kwarm.io/warming or kwarm.io/warming=true:NoSchedule";
        let (rest, effect) = match text.rsplit_once(':') {
            Some((rest, effect)) => (rest, effect),
            None => (text, "NoSchedule"),
        };
        if !EFFECTS.contains(&effect) {
            return Err(format!(
                "{expected}; effect {effect:?} is none of NoSchedule, PreferNoSchedule, NoExecute"
            ));
        }
        let (key, value) = match rest.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (rest, None),
        };
        labels::check_qualified_name(key).map_err(|e| format!("{expected}; key {key:?}: {e}"))?;
        if let Some(value) = value {
            labels::check_label_value(value).map_err(|e| format!("{expected}; value {value:?}: {e}"))?;
        }
        Ok(GateTaint {
            key: key.to_string(),
            value: value.filter(|v| !v.is_empty()).map(str::to_string),
            effect: effect.to_string(),
        })
    }

    /// Whether `taint` is the gate (same key and effect; the same value when one is configured).
    pub fn matches(&self, taint: &Taint) -> bool {
        taint.key == self.key
            && taint.effect == self.effect
            && self.value.as_ref().is_none_or(|v| taint.value.as_deref() == Some(v.as_str()))
    }

    /// The toleration the holder pods get: exactly this taint, nothing wider.
    pub fn toleration(&self) -> Toleration {
        Toleration {
            key: Some(self.key.clone()),
            operator: Some(if self.value.is_some() { "Equal" } else { "Exists" }.into()),
            value: self.value.clone(),
            effect: Some(self.effect.clone()),
            toleration_seconds: None,
        }
    }
}

impl fmt::Display for GateTaint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}:{}", self.key, self.effect),
            None => write!(f, "{}:{}", self.key, self.effect),
        }
    }
}

/// `NODE_GATE_TAINT` and `NODE_GATE_TIMEOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGate {
    pub taint: GateTaint,
    pub timeout: Duration,
}

/// What kwarm keeps of a node that carries the gate taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatedNode {
    /// Where the taint is in `spec.taints` (the release patch tests it is still there).
    pub index: usize,
    /// When the gate closed: the taint's `timeAdded` if set, else the node's creation.
    pub since: SystemTime,
    /// Whether the holders' node selector and required node affinity admit this node.
    pub placeable: bool,
}

/// The gate state of a node; `None` when it does not carry the gate taint.
pub fn gated_node(
    node: &Node,
    gate: &GateTaint,
    node_selector: &BTreeMap<String, String>,
    affinity: Option<&Affinity>,
    now: SystemTime,
) -> Option<GatedNode> {
    let taints = node.spec.as_ref()?.taints.as_ref()?;
    let index = taints.iter().position(|t| gate.matches(t))?;
    let added = taints[index].time_added.as_ref().map(|t| SystemTime::from(t.0));
    let created = node.metadata.creation_timestamp.as_ref().map(|t| SystemTime::from(t.0));
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    Some(GatedNode {
        index,
        since: added.or(created).unwrap_or(now),
        placeable: placement_admits(node_selector, affinity, name, labels),
    })
}

/// Whether a pod with this node selector and node affinity may be placed on the node, as the
/// scheduler judges it from labels and the node's name (taints aside).
pub fn placement_admits(
    node_selector: &BTreeMap<String, String>,
    affinity: Option<&Affinity>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if !node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let required = affinity
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        None => true,
        // The terms are ORed; an empty or null term matches no node.
        Some(selector) => selector.node_selector_terms.iter().any(|t| term_admits(t, name, labels)),
    }
}

fn term_admits(term: &NodeSelectorTerm, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let node_fields = BTreeMap::from([("metadata.name".to_string(), name.to_string())]);
    expressions.iter().all(|r| requirement_admits(r, labels))
        && fields.iter().all(|r| requirement_admits(r, &node_fields))
}

/// Whether a node with these labels meets one node-selector requirement, as the scheduler judges it.
pub(crate) fn requirement_admits(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    let first = values.first().and_then(|v| number(v));
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(|v| number(v)), first), (Some(v), Some(n)) if v > n),
        "Lt" => matches!((value.and_then(|v| number(v)), first), (Some(v), Some(n)) if v < n),
        _ => false,
    }
}

/// Why a node's gate opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The node holds every desired image (this many).
    Warm { images: usize },
    /// `NODE_GATE_TIMEOUT` passed; these desired images were not held yet.
    Timeout { not_warm: Vec<String> },
    /// The holders' node selector or affinity never admits the node: there is nothing to wait for.
    NotSelected,
}

/// A node to release: remove the taint at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub node: String,
    pub index: usize,
    pub since: SystemTime,
    pub why: Why,
}

/// The gated nodes whose gate opens now. `warm`: node → images its holders run; `desired`: the
/// images the DaemonSet is to hold (quarantined and overflowing images are not among them).
pub fn releases(
    gated: &BTreeMap<String, GatedNode>,
    warm: &BTreeMap<&str, BTreeSet<&str>>,
    desired: &BTreeSet<String>,
    timeout: Duration,
    now: SystemTime,
) -> Vec<Release> {
    let none = BTreeSet::new();
    let mut out = Vec::new();
    for (node, g) in gated {
        let held = warm.get(node.as_str()).unwrap_or(&none);
        let why = if !g.placeable {
            Why::NotSelected
        } else {
            let not_warm: Vec<String> =
                desired.iter().filter(|i| !held.contains(i.as_str())).cloned().collect();
            if not_warm.is_empty() {
                Why::Warm { images: desired.len() }
            } else if now >= deadline(g, timeout) {
                Why::Timeout { not_warm }
            } else {
                continue;
            }
        };
        out.push(Release { node: node.clone(), index: g.index, since: g.since, why });
    }
    out
}

/// When the gate of `g` opens at the latest.
pub fn deadline(g: &GatedNode, timeout: Duration) -> SystemTime {
    g.since.checked_add(timeout).unwrap_or(g.since)
}

#[cfg(test)]
mod tests;
