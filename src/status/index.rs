//! The holder pods, indexed so that one pod event costs O(images of that pod) and reading the
//! per-image counts costs O(images), however many nodes there are. The manager and `kwarm status`
//! both count through it; the tests hold it to counting from scratch.

use std::collections::{BTreeMap, BTreeSet};

use super::{HolderState, ImageStatus, PodHolders};

/// Every holder pod kwarm saw, and per-node and per-image tallies kept current on each change.
#[derive(Debug, Clone, Default)]
pub struct HolderIndex {
    pods: BTreeMap<String, PodHolders>,
    /// The DaemonSet generation whose pods count first (see [`HolderIndex::set_generation`]).
    generation: Option<i64>,
    nodes: BTreeMap<String, NodeEntry>,
    images: BTreeMap<String, ImageTally>,
    /// Pods whose init container fails → reason and message.
    init_failures: BTreeMap<String, (String, String)>,
}

/// One node: its pods and what it adds to the image tallies.
#[derive(Debug, Clone, Default)]
struct NodeEntry {
    pods: BTreeSet<String>,
    /// The states of the pod that counts for the node: one of the current generation if there is
    /// one, else any (an old pod still holds its images while a surge replaces it).
    counted: BTreeMap<String, HolderState>,
    /// Images warm in any of its pods.
    warm: BTreeSet<String>,
    /// Image → the digests its pods report.
    digests: BTreeMap<String, BTreeSet<String>>,
}

/// One image over all nodes.
#[derive(Debug, Clone, Default)]
struct ImageTally {
    /// Nodes whose counted pod holds it warm.
    warm: usize,
    /// Failure reason → node → kubelet message, for nodes whose counted pod fails it.
    failures: BTreeMap<String, BTreeMap<String, String>>,
    failed: usize,
    /// Digest → nodes holding it.
    digests: BTreeMap<String, usize>,
    /// Nodes reporting any digest of it.
    with_digest: usize,
}

impl ImageTally {
    fn is_empty(&self) -> bool {
        self.warm == 0 && self.failed == 0 && self.with_digest == 0
    }
}

impl HolderIndex {
    /// An index of `pods` (pod name → holders), counting `generation` first.
    pub fn new(pods: impl IntoIterator<Item = (String, PodHolders)>, generation: Option<i64>) -> HolderIndex {
        let mut index = HolderIndex { pods: pods.into_iter().collect(), generation, ..Default::default() };
        index.rebuild();
        index
    }

    /// An index of pods listed without names (`kwarm status`): the list order stands in for
    /// the names, so the first pod of a node counts where two are equally current.
    pub fn of_list(pods: &[PodHolders], generation: Option<i64>) -> HolderIndex {
        HolderIndex::new(pods.iter().enumerate().map(|(i, p)| (format!("{i:010}"), p.clone())), generation)
    }

    pub fn get(&self, pod: &str) -> Option<&PodHolders> {
        self.pods.get(pod)
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodHolders> {
        self.pods.values()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Replaces everything (a fresh listing).
    pub fn replace_all(&mut self, pods: impl IntoIterator<Item = (String, PodHolders)>) {
        self.pods = pods.into_iter().collect();
        self.rebuild();
    }

    /// The pod `name` now holds `holders`.
    pub fn upsert(&mut self, name: String, holders: PodHolders) {
        let before = self.pods.get(&name).map(|p| p.node.clone());
        let node = holders.node.clone();
        if holders.init_failure.is_some() {
            self.init_failures.insert(name.clone(), holders.init_failure.clone().unwrap_or_default());
        } else {
            self.init_failures.remove(&name);
        }
        self.pods.insert(name.clone(), holders);
        if let Some(old) = before.filter(|old| *old != node) {
            self.detach(&old, &name);
        }
        self.nodes.entry(node.clone()).or_default().pods.insert(name);
        self.recount(&node);
    }

    /// The pod `name` is gone (deleted, or no longer a holder).
    pub fn remove(&mut self, name: &str) {
        self.init_failures.remove(name);
        if let Some(pod) = self.pods.remove(name) {
            self.detach(&pod.node, name);
        }
    }

    /// Counts the pods of `generation` first (the DaemonSet's current template). A new generation
    /// recounts every node: it comes with an apply, not with each pod event.
    pub fn set_generation(&mut self, generation: Option<i64>) {
        if self.generation != generation {
            self.generation = generation;
            self.rebuild();
        }
    }

    /// Per-image node counts of `images`.
    pub fn statuses(&self, images: &[String]) -> Vec<ImageStatus> {
        let nodes = self.nodes.len();
        images
            .iter()
            .map(|image| {
                let mut s = ImageStatus { image: image.clone(), nodes, ..Default::default() };
                if let Some(t) = self.images.get(image) {
                    s.warm = t.warm;
                    s.failed = t.failed;
                    for (reason, on) in &t.failures {
                        s.failures.insert(reason.clone(), on.keys().cloned().collect());
                        if let Some(message) = on.values().next() {
                            s.messages.insert(reason.clone(), message.clone());
                        }
                    }
                }
                s.pulling = nodes - s.warm - s.failed;
                s
            })
            .collect()
    }

    /// Nodes holding `digest` of `image`, and nodes whose holders report only other digests of it
    /// (stale); nodes whose runtime reports no digest count as neither.
    pub fn digest_counts(&self, image: &str, digest: &str) -> (usize, usize) {
        match self.images.get(image) {
            Some(t) => {
                let holding = t.digests.get(digest).copied().unwrap_or(0);
                (holding, t.with_digest - holding)
            }
            None => (0, 0),
        }
    }

    /// Images warm in any holder pod on `node`.
    pub fn warm_on(&self, node: &str) -> Option<&BTreeSet<String>> {
        self.nodes.get(node).map(|n| &n.warm)
    }

    /// Node → images warm in any of its holder pods.
    pub fn warm_by_node(&self) -> impl Iterator<Item = (&String, &BTreeSet<String>)> {
        self.nodes.iter().map(|(name, n)| (name, &n.warm))
    }

    /// Pods whose init container fails: reason and message, by pod name.
    pub fn init_failures(&self) -> impl ExactSizeIterator<Item = &(String, String)> {
        self.init_failures.values()
    }

    fn rebuild(&mut self) {
        self.nodes.clear();
        self.images.clear();
        self.init_failures.clear();
        for (name, pod) in &self.pods {
            self.nodes.entry(pod.node.clone()).or_default().pods.insert(name.clone());
            if let Some(failure) = &pod.init_failure {
                self.init_failures.insert(name.clone(), failure.clone());
            }
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for node in names {
            self.recount(&node);
        }
    }

    fn detach(&mut self, node: &str, pod: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.pods.remove(pod);
        }
        self.recount(node);
    }

    /// Takes what `node` added to the tallies out, works it out again from its pods, and adds it
    /// back; a node without pods goes.
    fn recount(&mut self, node: &str) {
        let Some(mut entry) = self.nodes.remove(node) else { return };
        self.tally(node, &entry, false);
        if entry.pods.is_empty() {
            return;
        }
        let pods: Vec<&PodHolders> = entry.pods.iter().filter_map(|p| self.pods.get(p)).collect();
        let current = self.generation.and_then(|g| pods.iter().find(|p| p.generation == Some(g)));
        entry.counted = current.or(pods.first()).map(|p| p.images.clone()).unwrap_or_default();
        entry.warm.clear();
        entry.digests.clear();
        for pod in &pods {
            let warm = pod.images.iter().filter(|(_, s)| **s == HolderState::Warm).map(|(i, _)| i.clone());
            entry.warm.extend(warm);
            for (image, digest) in &pod.digests {
                entry.digests.entry(image.clone()).or_default().insert(digest.clone());
            }
        }
        self.tally(node, &entry, true);
        self.nodes.insert(node.to_string(), entry);
    }

    /// Adds (or takes out) what one node contributes to the image tallies.
    fn tally(&mut self, node: &str, entry: &NodeEntry, add: bool) {
        let step = |n: &mut usize| {
            if add { *n += 1 } else { *n = n.saturating_sub(1) }
        };
        for (image, state) in &entry.counted {
            let t = self.images.entry(image.clone()).or_default();
            match state {
                HolderState::Warm => step(&mut t.warm),
                HolderState::Failed { reason, message } => {
                    step(&mut t.failed);
                    let on = t.failures.entry(reason.clone()).or_default();
                    if add {
                        on.insert(node.to_string(), message.clone());
                    } else {
                        on.remove(node);
                        if on.is_empty() {
                            t.failures.remove(reason);
                        }
                    }
                }
                HolderState::Pulling => {}
            }
        }
        for (image, digests) in &entry.digests {
            let t = self.images.entry(image.clone()).or_default();
            step(&mut t.with_digest);
            for digest in digests {
                let n = t.digests.entry(digest.clone()).or_default();
                step(n);
                if *n == 0 {
                    t.digests.remove(digest);
                }
            }
        }
        if !add {
            let touched = entry.counted.keys().chain(entry.digests.keys());
            for image in touched {
                if self.images.get(image).is_some_and(ImageTally::is_empty) {
                    self.images.remove(image);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
