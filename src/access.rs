//! Tenant credentials. With `INHERIT_PULL_SECRETS` the Deployments' pull secrets are mirrored
//! into kwarm's namespace and referenced by the one holder pod template, and the kubelet tries
//! every one of them for every holder. Left alone, a Deployment in namespace B naming A's private
//! image would get it pulled onto every node with A's credentials. So an image a Deployment wants
//! is warmed only when that lends it no other namespace's credentials:
//!
//! - when every mirror on the DaemonSet comes from a namespace that wants the image (one tenant,
//!   or tenants sharing it: nothing to check), or
//! - when the image's own credentials (the pull secrets of the namespaces that want it, and
//!   `IMAGE_PULL_SECRETS`) read its manifest in its registry: an access check, one `HEAD`.
//!
//! `IMAGES` entries are the operator's and are not checked. Pure: the checks themselves run in
//! the controller's registry task; this module says what to check and what the answers mean.

use std::collections::{BTreeMap, BTreeSet};

use crate::images::{DeploymentImages, DeploymentKey};
use crate::registry::{FailureReason, Resolution};

/// Name of the mirror of the pull secret `namespace/name` in kwarm's namespace: readable, unique
/// (hash), a valid secret name.
pub fn mirror_name(namespace: &str, name: &str) -> String {
    let hash = crate::holder::derived_holder_name(&format!("{namespace}/{name}"));
    let suffix = hash.rsplit('-').next().unwrap_or_default();
    let stem: String = format!("kwarm-{namespace}-{name}").chars().take(200).collect();
    format!("{}-{suffix}", stem.trim_end_matches(['-', '.']))
}

/// The Deployment images that need an access check, each with the pull secrets (in kwarm's
/// namespace) it may be pulled with: `IMAGE_PULL_SECRETS` and the mirrors of the namespaces that
/// want it. `configured`: the canonical `IMAGES`; `mirrors`: those the DaemonSet references.
pub fn checks_needed(
    deployments: &BTreeMap<DeploymentKey, DeploymentImages>,
    configured: &BTreeSet<String>,
    mirrors: &[String],
    global: &[String],
) -> BTreeMap<String, Vec<String>> {
    if mirrors.is_empty() {
        return BTreeMap::new();
    }
    // Each mirror's source namespace; a mirror no Deployment names (kept from the live DaemonSet
    // at a restart) has none and counts as another tenant's.
    let mut source: BTreeMap<String, &str> = BTreeMap::new();
    let mut wanting: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for ((namespace, _), d) in deployments {
        for secret in &d.pull_secrets {
            source.insert(mirror_name(namespace, secret), namespace);
        }
        for image in &d.images {
            wanting.entry(image).or_default().insert(namespace);
        }
    }
    let mut out = BTreeMap::new();
    for (image, namespaces) in wanting {
        if configured.contains(image) {
            continue;
        }
        let own = |m: &String| source.get(m).is_some_and(|ns| namespaces.contains(ns));
        if mirrors.iter().all(own) {
            continue;
        }
        let secrets = global.iter().chain(mirrors.iter().filter(|m| own(m))).cloned().collect();
        out.insert(image.to_string(), secrets);
    }
    out
}

/// What the answers mean for the images that need a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Images whose own credentials cannot read them (the registry's answer): not warmed.
    pub denied: BTreeMap<String, String>,
    /// Images not checked yet (or whose check failed for another reason, e.g. the registry is
    /// unreachable), and not held now: not warmed until a check says they may be.
    pub unchecked: BTreeSet<String>,
}

impl Verdicts {
    /// Every image left out of the DaemonSet.
    pub fn left_out(&self) -> BTreeSet<String> {
        self.denied.keys().chain(&self.unchecked).cloned().collect()
    }
}

/// Reads the registries' answers: a digest means the image's own credentials read it; an
/// authorization failure or "not found" (what registries answer for a private repository one may
/// not see) means they do not. An image the DaemonSet holds now stays until an answer denies it
/// (a restart or an unreachable registry must not drop a warm image).
pub fn verdicts(
    needed: &BTreeMap<String, Vec<String>>,
    answers: &BTreeMap<String, Resolution>,
    held: &BTreeSet<String>,
) -> Verdicts {
    let mut v = Verdicts::default();
    for image in needed.keys() {
        match answers.get(image) {
            Some(Resolution::Digest { .. }) => {}
            Some(Resolution::Failed { reason: FailureReason::Auth | FailureReason::NotFound, message }) => {
                v.denied.insert(image.clone(), message.clone());
            }
            _ if held.contains(image) => {}
            _ => {
                v.unchecked.insert(image.clone());
            }
        }
    }
    v
}

#[cfg(test)]
mod tests;
