//! The image set: `IMAGES` merged with the images of watched Deployments, minus exclusions and
//! quarantine, bounded by `MAX_IMAGES`, each with a stable holder-container name.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;

use crate::config::WatchConfig;
use crate::holder::{Holder, derived_holder_name, parse_image_reference};

/// A small sorted set of strings, as compact as a boxed slice: kwarm keeps three per watched
/// Deployment, and a `BTreeSet` allocates a node of about 300 bytes even for one element.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Names(Box<[String]>);

impl Names {
    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq<BTreeSet<String>> for Names {
    fn eq(&self, other: &BTreeSet<String>) -> bool {
        self.0.len() == other.len() && self.0.iter().zip(other).all(|(a, b)| a == b)
    }
}

impl FromIterator<String> for Names {
    fn from_iter<I: IntoIterator<Item = String>>(items: I) -> Names {
        let set: BTreeSet<String> = items.into_iter().collect();
        Names(set.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// What kwarm keeps of a watched Deployment: never the whole object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentImages {
    /// Canonical references of its containers' and init containers' images, after exclusions.
    pub images: Names,
    /// Names of the pull secrets its pod template references (in its own namespace).
    pub pull_secrets: Names,
    /// Its `kwarm.io/rollout-gate` annotation or label (the annotation wins): `Some(true)` or
    /// `Some(false)`; `None` when it has neither or the value is not a boolean.
    pub rollout_gate: Option<bool>,
    /// Names of its pod template's containers and init containers (the rollout gate waits for
    /// their images, not for sidecars other webhooks inject).
    pub containers: Names,
}

/// Extracts what kwarm needs from a Deployment, or `None` when its namespace is not watched.
/// Images that are excluded or not valid references are left out.
pub fn summarize_deployment(deployment: &Deployment, watch: &WatchConfig) -> Option<DeploymentImages> {
    let namespace = deployment.metadata.namespace.as_deref()?;
    if !watch.namespace_selected(namespace) {
        return None;
    }
    let pod = deployment.spec.as_ref()?.template.spec.as_ref();
    let mut summary = DeploymentImages::default();
    let mut images = Vec::new();
    let mut pull_secrets = Vec::new();
    let meta = &deployment.metadata;
    let setting = [meta.annotations.as_ref(), meta.labels.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|m| m.get(crate::rollout::DEPLOYMENT_SETTING));
    summary.rollout_gate = setting.and_then(|v| match v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    });
    if let Some(pod) = pod {
        let containers = pod.containers.iter().chain(pod.init_containers.iter().flatten());
        summary.containers = containers.clone().map(|c| c.name.clone()).collect();
        for image in containers.filter_map(|c| c.image.as_deref()) {
            if watch.image_excluded(image) {
                continue;
            }
            if let Ok(canonical) = parse_image_reference(image)
                && !watch.image_excluded(&canonical)
            {
                images.push(canonical);
            }
        }
        for secret in pod.image_pull_secrets.iter().flatten() {
            if !secret.name.is_empty() {
                pull_secrets.push(secret.name.clone());
            }
        }
    }
    summary.images = images.into_iter().collect();
    summary.pull_secrets = pull_secrets.into_iter().collect();
    Some(summary)
}

/// `namespace/name` of a Deployment.
pub type DeploymentKey = (String, String);

/// Images of watched Deployments, plus those no Deployment uses any more, kept for the retention
/// time so that a rollback finds them warm. A Deployment change costs O(its images): the images
/// and pull secrets in use are reference counts.
#[derive(Debug, Default, Clone)]
pub struct ImageTracker {
    deployments: BTreeMap<DeploymentKey, DeploymentImages>,
    /// Image → how many Deployments use it.
    uses: BTreeMap<String, usize>,
    /// Namespace → image → how many of its Deployments use it (for a fair plan).
    by_namespace: BTreeMap<String, BTreeMap<String, usize>>,
    /// `(namespace, secret)` → how many Deployments reference it.
    secret_refs: BTreeMap<(String, String), usize>,
    /// Image → when the last Deployment stopped using it.
    released: BTreeMap<String, SystemTime>,
}

impl ImageTracker {
    /// Takes released images remembered on the DaemonSet, keeping the Deployments already seen;
    /// an image some Deployment uses is not released.
    pub fn restore_released(&mut self, released: BTreeMap<String, SystemTime>) {
        let uses = &self.uses;
        self.released = released.into_iter().filter(|(image, _)| !uses.contains_key(image)).collect();
    }

    /// Records a Deployment's current images. Returns whether the set of images in use or the
    /// pull secrets referenced changed (mirrored secrets follow the Deployments too).
    pub fn upsert(&mut self, key: DeploymentKey, summary: DeploymentImages, now: SystemTime) -> bool {
        if self.deployments.get(&key) == Some(&summary) {
            return false;
        }
        let mut changed = self.count(&key.0, &summary, true, now);
        if let Some(before) = self.deployments.insert(key.clone(), summary) {
            changed |= self.count(&key.0, &before, false, now);
        }
        changed
    }

    /// Forgets a Deployment. Returns whether the images in use or the pull secrets changed.
    pub fn remove(&mut self, key: &DeploymentKey, now: SystemTime) -> bool {
        match self.deployments.remove(key) {
            Some(before) => self.count(&key.0, &before, false, now),
            None => false,
        }
    }

    /// Replaces every Deployment at once (after a re-list). Returns whether the images in use or
    /// the pull secrets changed.
    pub fn replace_all(&mut self, all: BTreeMap<DeploymentKey, DeploymentImages>, now: SystemTime) -> bool {
        if self.deployments == all {
            return false;
        }
        let mut changed = false;
        for ((ns, _), d) in &all {
            changed |= self.count(ns, d, true, now);
        }
        for ((ns, _), d) in std::mem::replace(&mut self.deployments, all) {
            changed |= self.count(&ns, &d, false, now);
        }
        changed
    }

    /// Adds (or takes out) one Deployment's images and secrets. An image nobody uses any more is
    /// released now; one used again is no longer released. Returns whether the set of images in
    /// use or of secrets referenced changed.
    fn count(&mut self, namespace: &str, d: &DeploymentImages, add: bool, now: SystemTime) -> bool {
        let mut changed = false;
        let in_namespace = self.by_namespace.entry(namespace.to_string()).or_default();
        for image in &d.images {
            if add {
                *in_namespace.entry(image.clone()).or_default() += 1;
            } else if let Some(n) = in_namespace.get_mut(image) {
                *n -= 1;
                if *n == 0 {
                    in_namespace.remove(image);
                }
            }
        }
        if in_namespace.is_empty() {
            self.by_namespace.remove(namespace);
        }
        for image in &d.images {
            if add {
                let n = self.uses.entry(image.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    changed = true;
                    self.released.remove(image);
                }
            } else if let Some(n) = self.uses.get_mut(image) {
                *n -= 1;
                if *n == 0 {
                    changed = true;
                    self.uses.remove(image);
                    self.released.insert(image.clone(), now);
                }
            }
        }
        for secret in &d.pull_secrets {
            let key = (namespace.to_string(), secret.clone());
            if add {
                let n = self.secret_refs.entry(key).or_default();
                *n += 1;
                changed |= *n == 1;
            } else if let Some(n) = self.secret_refs.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    changed = true;
                    self.secret_refs.remove(&key);
                }
            }
        }
        changed
    }

    /// Drops released images older than `retention`. Returns whether any went.
    pub fn expire(&mut self, now: SystemTime, retention: Duration) -> bool {
        let before = self.released.len();
        self.released.retain(|_, at| now.duration_since(*at).unwrap_or_default() < retention);
        // Anything in use cannot also be released; keep the invariant after a restart.
        let uses = &self.uses;
        self.released.retain(|image, _| !uses.contains_key(image));
        before != self.released.len()
    }

    /// When the next released image expires, if any.
    pub fn next_expiry(&self, retention: Duration) -> Option<SystemTime> {
        self.released.values().min().map(|at| *at + retention)
    }

    /// Images some watched Deployment uses now.
    pub fn in_use(&self) -> BTreeSet<String> {
        self.uses.keys().cloned().collect()
    }

    /// Images to warm from Deployments: in use or still retained.
    pub fn wanted(&self) -> BTreeSet<String> {
        let mut all = self.in_use();
        all.extend(self.released.keys().cloned());
        all
    }

    /// `(namespace, secret)` of every pull secret some watched Deployment references.
    pub fn pull_secret_refs(&self) -> impl Iterator<Item = &(String, String)> {
        self.secret_refs.keys()
    }

    /// Namespace → the images its watched Deployments use now (each with how many use it).
    pub fn by_namespace(&self) -> &BTreeMap<String, BTreeMap<String, usize>> {
        &self.by_namespace
    }

    pub fn released(&self) -> &BTreeMap<String, SystemTime> {
        &self.released
    }

    pub fn deployments(&self) -> &BTreeMap<DeploymentKey, DeploymentImages> {
        &self.deployments
    }

    /// Deployments that use `image`.
    pub fn users_of<'a>(&'a self, image: &'a str) -> impl Iterator<Item = &'a DeploymentKey> + 'a {
        self.deployments.iter().filter(move |(_, d)| d.images.contains(image)).map(|(k, _)| k)
    }
}

/// The holders to render, and what did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderPlan {
    pub holders: Vec<Holder>,
    /// Images left out because of `MAX_IMAGES`, reported rather than dropped silently.
    pub overflow: Vec<String>,
    /// Deployment images left out because their namespace reached `MAX_IMAGES_PER_NAMESPACE`.
    pub over_namespace_limit: Vec<String>,
}

/// How many holders there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `MAX_IMAGES`: holders in all.
    pub max_images: usize,
    /// `MAX_IMAGES_PER_NAMESPACE`: images one namespace's Deployments add at most.
    pub per_namespace: Option<usize>,
}

/// What is held, and what is cut when not everything fits: `IMAGES` first, in the order given;
/// then the Deployments' images, taken fairly: one image of each namespace in turn (each
/// namespace's in sorted order), a namespace stopping at its limit (an image another namespace
/// also wants is that one's turn); then the images kept for `IMAGE_RETENTION` that no Deployment
/// uses now. So one namespace cannot push the others' images out, whatever it labels. Each image
/// once; `excluded` ones (quarantined, no credentials of their own) take no place. The holders
/// are `IMAGES`, then every other image sorted: who got a place never changes the order.
pub fn plan_holders(
    configured: &[Holder],
    in_use: &BTreeMap<String, BTreeMap<String, usize>>,
    retained: &BTreeSet<String>,
    excluded: &BTreeSet<String>,
    limits: Limits,
) -> HolderPlan {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut plan = HolderPlan::default();
    let mut place = |plan: &mut HolderPlan, holder: Holder| {
        // A derived name equal to a configured one is astronomically unlikely; never emit two.
        if !names.insert(holder.name.clone()) {
            return;
        }
        if plan.holders.len() < limits.max_images {
            plan.holders.push(holder);
        } else {
            plan.overflow.push(holder.image);
        }
    };
    for h in configured {
        let canonical = parse_image_reference(&h.image).unwrap_or_else(|_| h.image.clone());
        if !excluded.contains(&canonical) && seen.insert(canonical) {
            place(&mut plan, h.clone());
        }
    }

    // Round-robin over the namespaces; what each adds is counted against its limit.
    let mut taken: Vec<String> = Vec::new();
    let mut queues: Vec<(std::collections::btree_map::Keys<'_, String, usize>, usize)> =
        in_use.values().map(|images| (images.keys(), 0)).collect();
    let limit = limits.per_namespace.unwrap_or(usize::MAX);
    loop {
        let mut progress = false;
        for (queue, added) in queues.iter_mut() {
            if *added >= limit {
                continue;
            }
            if let Some(image) = queue.find(|i| !excluded.contains(*i) && !seen.contains(*i)) {
                seen.insert(image.clone());
                taken.push(image.clone());
                *added += 1;
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    for (queue, _) in queues {
        for image in queue {
            if !excluded.contains(image) && seen.insert(image.clone()) {
                plan.over_namespace_limit.push(image.clone());
            }
        }
    }
    taken.extend(retained.iter().filter(|i| !excluded.contains(*i) && seen.insert((*i).clone())).cloned());

    // The places go in the fair order; the holders are written sorted.
    let room = limits.max_images.saturating_sub(plan.holders.len());
    let (fits, over) = taken.split_at(room.min(taken.len()));
    let fits: BTreeSet<&String> = fits.iter().collect();
    for image in fits {
        place(&mut plan, Holder { name: derived_holder_name(image), image: image.clone() });
    }
    plan.overflow.extend(over.iter().cloned());
    plan.over_namespace_limit.sort();
    plan
}

#[cfg(test)]
mod tests;
