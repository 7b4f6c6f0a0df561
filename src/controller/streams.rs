//! The watch streams the controller is fed from, merged into one, and the fold of a watcher's
//! list phase (Init, InitApply…, InitDone) into one complete listing.

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Node, Pod};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource};

use crate::config::{Config, Namespaces};
use crate::daemonset::selector_string;
use crate::lean::{LeanDeployment, LeanPod};

/// One event from one of the watches.
pub enum Input {
    DaemonSet(Event<DaemonSet>),
    /// Holder pods, parsed lean.
    Pod(Event<LeanPod>),
    /// Index of the Deployment stream (one per watched namespace, or one for all).
    Deployment(usize, Event<LeanDeployment>),
    Pulled(Event<CoreEvent>),
    /// Only with a gate on.
    Node(Event<Node>),
    /// Pods not bound to a node yet, in every namespace. Only with the rollout gate on.
    PendingPod(Event<Pod>),
    /// Namespaces `NAMESPACE_SELECTOR` selects (metadata only). Only with it set.
    Namespace(Event<PartialObjectMeta<Namespace>>),
    WatchError(&'static str, watcher::Error),
}

/// A watch event with the list phase folded in.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen<T> {
    /// Everything there is: at start, and again after every re-list (a watch that expired).
    Listed(Vec<T>),
    Applied(T),
    Deleted(T),
}

/// Buffers a watcher's list phase so that the controller sees one complete [`Seen::Listed`]
/// instead of a half-listed state. What is kept of each object is the caller's `summarize`.
#[derive(Debug)]
pub struct Listing<T> {
    buffer: Option<Vec<T>>,
    /// Whether a complete listing was seen once.
    pub synced: bool,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing { buffer: None, synced: false }
    }
}

impl<T> Listing<T> {
    pub fn fold<K>(&mut self, event: Event<K>, summarize: impl FnOnce(K) -> T) -> Option<Seen<T>> {
        match event {
            Event::Init => {
                self.buffer = Some(Vec::new());
                None
            }
            Event::InitApply(object) => {
                self.buffer.get_or_insert_with(Vec::new).push(summarize(object));
                None
            }
            Event::InitDone => {
                self.synced = true;
                Some(Seen::Listed(self.buffer.take().unwrap_or_default()))
            }
            Event::Apply(object) => Some(Seen::Applied(summarize(object))),
            Event::Delete(object) => Some(Seen::Deleted(summarize(object))),
        }
    }
}

pub fn deployment_scopes(config: &Config) -> Vec<Option<String>> {
    if !config.watch.enabled {
        return Vec::new();
    }
    match &config.watch.namespaces {
        Namespaces::All => vec![None],
        Namespaces::Only(list) => {
            list.iter().filter(|ns| config.watch.namespace_selected(ns)).map(|ns| Some(ns.clone())).collect()
        }
    }
}

pub fn watch_streams(client: &Client, config: &Config) -> SelectAll<BoxStream<'static, Input>> {
    fn strip<K: Resource>(obj: &mut K) {
        obj.meta_mut().managed_fields = None;
    }
    let ns = config.namespace.as_str();
    let mut all = SelectAll::new();

    let ds_cfg = watcher::Config::default().fields(&format!("metadata.name={}", config.daemonset_name));
    let ds = watcher(Api::<DaemonSet>::namespaced(client.clone(), ns), ds_cfg)
        .default_backoff()
        .modify(strip)
        .map(|r| r.map_or_else(|e| Input::WatchError("daemonset", e), Input::DaemonSet));
    all.push(ds.boxed());

    let pod_cfg = watcher::Config::default().labels(&selector_string(&config.daemonset_name));
    let pods = watcher(Api::<LeanPod>::namespaced(client.clone(), ns), pod_cfg)
        .default_backoff()
        .map(|r| r.map_or_else(|e| Input::WatchError("pods", e), Input::Pod));
    all.push(pods.boxed());

    let pulled_cfg = watcher::Config::default().fields("reason=Pulled,involvedObject.kind=Pod");
    let pulled = watcher(Api::<CoreEvent>::namespaced(client.clone(), ns), pulled_cfg)
        .default_backoff()
        .map(|r| r.map_or_else(|e| Input::WatchError("events", e), Input::Pulled));
    all.push(pulled.boxed());

    if config.node_gate.is_some() || config.rollout_gate.is_some() {
        // Every node: a gated node may match no selector kwarm could name in advance.
        let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(strip)
            .map(|r| r.map_or_else(|e| Input::WatchError("nodes", e), Input::Node));
        all.push(nodes.boxed());
    }

    if config.rollout_gate.is_some() {
        // Gated pods are never bound: the scheduler skips them until their gates are gone.
        let cfg = watcher::Config::default().fields("spec.nodeName=");
        let pending = watcher(Api::<Pod>::all(client.clone()), cfg)
            .default_backoff()
            .modify(strip)
            .map(|r| r.map_or_else(|e| Input::WatchError("pending_pods", e), Input::PendingPod));
        all.push(pending.boxed());
    }

    if let Some(selector) = config.watch.namespace_selector.as_ref().filter(|_| config.watch.enabled) {
        // A namespace whose labels stop matching leaves the watch as a deletion.
        let cfg = watcher::Config::default().labels(&selector.to_string());
        let namespaces = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), cfg)
            .default_backoff()
            .map(|r| r.map_or_else(|e| Input::WatchError("namespaces", e), Input::Namespace));
        all.push(namespaces.boxed());
    }

    let selector = config.watch.selector.to_string();
    for (i, scope) in deployment_scopes(config).into_iter().enumerate() {
        let api: Api<LeanDeployment> = match &scope {
            None => Api::all(client.clone()),
            Some(ns) => Api::namespaced(client.clone(), ns),
        };
        let cfg = watcher::Config::default().labels(&selector);
        let stream = watcher(api, cfg).default_backoff().map_ok(move |e| (i, e)).map(|r| {
            r.map_or_else(|e| Input::WatchError("deployments", e), |(i, e)| Input::Deployment(i, e))
        });
        all.push(stream.boxed());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_phase_is_one_complete_listing() {
        let mut listing: Listing<u32> = Listing::default();
        assert_eq!(listing.fold(Event::Init, |n: u32| n), None);
        assert_eq!(listing.fold(Event::InitApply(1), |n| n), None);
        assert_eq!(listing.fold(Event::InitApply(2), |n| n), None);
        assert!(!listing.synced, "not synced before InitDone");
        assert_eq!(listing.fold(Event::InitDone, |n: u32| n), Some(Seen::Listed(vec![1, 2])));
        assert!(listing.synced);
        assert_eq!(listing.fold(Event::Apply(3), |n| n * 10), Some(Seen::Applied(30)));
        assert_eq!(listing.fold(Event::Delete(1), |n| n), Some(Seen::Deleted(1)));
    }

    #[test]
    fn a_relist_replaces_everything_and_an_empty_list_is_a_listing() {
        let mut listing: Listing<&str> = Listing::default();
        listing.fold(Event::Init, |s: &str| s);
        listing.fold(Event::InitApply("a"), |s| s);
        listing.fold(Event::InitDone, |s: &str| s);
        // the watch expired: a new list phase without "a"
        listing.fold(Event::Init, |s: &str| s);
        assert_eq!(listing.fold(Event::InitDone, |s: &str| s), Some(Seen::Listed(vec![])));
        // objects listed without an Init (never sent by kube, but harmless) still arrive
        listing.fold(Event::InitApply("b"), |s| s);
        assert_eq!(listing.fold(Event::InitDone, |s: &str| s), Some(Seen::Listed(vec!["b"])));
    }
}
