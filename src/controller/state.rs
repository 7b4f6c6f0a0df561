//! The controller's decisions, as data. [`State`] is fed what the watches saw
//! ([`State::observe`]) and, when every watch has synced, says what to do ([`State::decide`]):
//! the DaemonSet to apply (or none), the gauges, when to wake up, and [`Notice`]s for the shell
//! to log and post as Events. No client, no metrics handles, no clock: time comes in as `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

use super::streams::Seen;
use crate::access;
use crate::config::Config;
use crate::daemonset::{
    DIGESTS_ANNOTATION, REFRESHED_AT_ANNOTATION, RenderInput, STATE_ANNOTATION, daemonset_matches,
    desired_hash, foreign_daemonset, held_images, refresh_would_repull, render_daemonset,
};
use crate::gate::{self, GatedNode, Release};
use crate::holder::parse_image_reference;
use crate::images::{DeploymentImages, DeploymentKey, ImageTracker, Limits, plan_holders};
use crate::registry::Resolution;
use crate::rollout::{self, GatedPod, PodKey, PodRelease, WarmView};
use crate::status::{
    HolderIndex, HolderState, ImageStatus, PersistedState, PodHolders, Quarantine, QuarantinePolicy,
    STATE_MAX_BYTES, conditions,
};

/// Safety net: re-read the DaemonSet from the API server this often, even if the watch is quiet.
pub const RESYNC: Duration = Duration::from_secs(300);
/// A warm-up still going on is logged this often.
pub const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);
/// At most this many Deployments get an Event about one image.
pub const EVENT_FANOUT: usize = 20;
/// A restart never refreshes: the next refresh is at least this far away.
const REFRESH_AFTER_RESTART: Duration = Duration::from_secs(60);
/// A node still gated this long after its release was asked for is asked for again.
pub const RELEASE_RETRY: Duration = Duration::from_secs(30);
/// The DaemonSet's conditions are written at most this often when one flips...
pub const CONDITIONS_FLIP_GAP: Duration = Duration::from_secs(1);
/// ... and this often when only a message changed (a warm-up's node counts).
pub const CONDITIONS_MESSAGE_GAP: Duration = Duration::from_secs(10);

/// How soon an observation needs a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Nothing to decide.
    None,
    /// Only status moved (holder pods, the DaemonSet's status) and no gate waits on it: the
    /// conditions, gauges and quarantine may follow within a settle window, so that a warm-up's
    /// thousands of pod events cost a decision per window, not one each.
    Settle,
    /// The plan, the live DaemonSet's shape or a gate may change: decide at once.
    Now,
}

/// What a watch (or the shell's own call) saw.
#[derive(Debug, Clone)]
pub enum Observation {
    DaemonSet(Seen<DaemonSet>),
    /// The DaemonSet as re-read by the periodic resync (`None`: it does not exist).
    Resynced(Option<DaemonSet>),
    /// What the API server answered to kwarm's apply.
    Applied(DaemonSet),
    /// What the API server answered to kwarm's write of the DaemonSet's conditions.
    ConditionsWritten(DaemonSet),
    /// kwarm may not write the DaemonSet's status (RBAC): it stops trying.
    ConditionsForbidden(String),
    Pods(Seen<(String, Option<PodHolders>)>),
    /// From the Deployment stream with this index (see [`State::new`]'s `scopes`).
    Deployments(usize, Seen<(DeploymentKey, Option<DeploymentImages>)>),
    /// Listing or watching Deployments is forbidden: go on with IMAGES alone.
    DeploymentsForbidden(String),
    Leader(bool),
    /// The pull-secret mirrors that exist now, to reference from the DaemonSet.
    PullSecrets(Vec<String>),
    /// Nodes, reduced to what the gates need. Only with a gate on.
    Nodes(Seen<(String, NodeSeen)>),
    /// Pods not yet scheduled, reduced to kwarm's scheduling gate (`None`: not gated). Only with
    /// the rollout gate on.
    GatedPods(Seen<(PodKey, Option<GatedPod>)>),
    /// Namespaces `NAMESPACE_SELECTOR` selects (names). Only with it set.
    Namespaces(Seen<String>),
    /// Listing or watching namespaces is forbidden: none opts in.
    NamespacesForbidden(String),
    /// Listing or watching Nodes is forbidden: the gate cannot work.
    NodesForbidden(String),
    /// Listing or watching pods in every namespace is forbidden: gated pods wait for their
    /// timeout only if another replica may see them.
    PendingPodsForbidden(String),
    /// What the registries answered for the warmed tags (the latest answer per tag).
    Registry(BTreeMap<String, Resolution>),
    /// What the registries answered to the access checks: whether an image's own credentials
    /// read it (see [`crate::access`]).
    Access(BTreeMap<String, Resolution>),
}

/// What kwarm keeps of a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSeen {
    /// Its node-gate state (`None`: not gated, or the node gate is off).
    pub gated: Option<GatedNode>,
    /// Its labels, with the rollout gate on (pods' node selectors are matched against them).
    pub labels: Option<BTreeMap<String, String>>,
}

/// Something to tell the user: the shell logs it and, where `users` or the DaemonSet is named,
/// posts Events.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    DaemonSetDeleted,
    DeploymentsForbidden {
        error: String,
    },
    NodesForbidden {
        error: String,
    },
    PendingPodsForbidden {
        error: String,
    },
    NamespacesForbidden {
        error: String,
    },
    StateUnreadable {
        error: String,
    },
    ConditionsForbidden {
        error: String,
    },
    /// Holders that just entered a failure state (pull failures, for the counter).
    PullsFailed(u64),
    Quarantined {
        image: String,
        attempt: u32,
        retry_at: Option<SystemTime>,
        reasons: String,
        users: Vec<DeploymentKey>,
    },
    RetryingQuarantined {
        image: String,
    },
    Recovered {
        image: String,
    },
    InitFailing {
        nodes: usize,
        reason: String,
        message: String,
    },
    Progress {
        image: String,
        warm: usize,
        nodes: usize,
        failed: usize,
        since: SystemTime,
    },
    Warm {
        image: String,
        warm: usize,
        nodes: usize,
        seconds: f64,
        users: Vec<DeploymentKey>,
    },
    WarmingStarted {
        image: String,
        nodes: usize,
        users: Vec<DeploymentKey>,
    },
    Overflow {
        image: String,
    },
    /// `image` is not warmed: the namespace that wants it reached MAX_IMAGES_PER_NAMESPACE.
    OverNamespaceLimit {
        image: String,
        users: Vec<DeploymentKey>,
    },
    /// The credentials of the namespaces that want `image` cannot read it (`INHERIT_PULL_SECRETS`):
    /// it is not warmed.
    AccessDenied {
        image: String,
        message: String,
        users: Vec<DeploymentKey>,
    },
    /// A denied image's own credentials read it now, or it needs no check any more.
    AccessGranted {
        image: String,
    },
    Refreshing,
    /// A DaemonSet of kwarm's name that is not kwarm's: the reason, for the log and its Event.
    NameInUse {
        why: String,
    },
    NameFree,
    StateTrimmed {
        dropped: usize,
    },
    /// A tag's registry digest differs from what `stale` nodes hold: the holders roll.
    DigestChanged {
        image: String,
        digest: String,
        stale: usize,
        users: Vec<DeploymentKey>,
    },
    /// Every node that holds the tag now holds its registry digest.
    ImageUpdated {
        image: String,
        digest: String,
        nodes: usize,
        seconds: f64,
        users: Vec<DeploymentKey>,
    },
}

/// Image counts for the gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub warm: i64,
    pub pulling: i64,
    pub failed: i64,
    pub quarantined: i64,
    pub overflow: i64,
    /// Deployment images over their namespace's MAX_IMAGES_PER_NAMESPACE.
    pub over_namespace_limit: i64,
    /// Images not warmed because their own credentials cannot read them (or are not checked yet).
    pub denied: i64,
    pub active_pulls: i64,
    /// Nodes carrying the gate taint.
    pub gated_nodes: i64,
    /// Pods carrying kwarm's scheduling gate.
    pub gated_pods: i64,
    /// Tags whose registry digest some node does not hold.
    pub stale_images: i64,
}

/// What to do now.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// The DaemonSet to apply; `None` when the live one is right (or kwarm may not write).
    pub apply: Option<DaemonSet>,
    /// Nodes whose gate taint to remove (only a leader releases).
    pub releases: Vec<Release>,
    /// Pods whose scheduling gate to remove (only a leader releases).
    pub pod_releases: Vec<PodRelease>,
    /// The DaemonSet's conditions to write (kwarm's types only; only a leader writes).
    pub conditions: Option<Vec<DaemonSetCondition>>,
    pub gauges: Gauges,
}

/// An image being rolled out, for progress logs and the "warm" notice.
#[derive(Debug, Clone, PartialEq)]
struct Warming {
    since: SystemTime,
    last_logged: Option<(usize, SystemTime)>,
}

/// Everything the controller knows and has said.
#[derive(Debug)]
pub struct State {
    leader: bool,
    openshift: bool,
    owner: Option<OwnerReference>,

    live: Option<DaemonSet>,
    /// The last (desired content hash, live resourceVersion) found to match: the same pair is the
    /// same answer, so the full comparison runs only when either side changed.
    live_matched: Option<(String, String)>,
    pods: HolderIndex,
    tracker: ImageTracker,
    deployment_scopes: Vec<Option<String>>,
    ds_synced: bool,
    pods_synced: bool,
    deployments_synced: Vec<bool>,
    deployments_forbidden_reported: bool,
    /// With `NAMESPACE_SELECTOR`: the namespaces that opt in (`None`: the selector is unset), and
    /// the Deployments of the others, kept aside until their namespace opts in.
    opted_in: Option<BTreeSet<String>>,
    parked: BTreeMap<DeploymentKey, DeploymentImages>,
    namespaces_synced: bool,
    namespaces_forbidden_reported: bool,
    pull_secrets: Vec<String>,
    /// Whether the pull-secret task reported once; until then the mirrors the live DaemonSet
    /// references are kept (a restart must not drop them and roll every pod).
    pull_secrets_reported: bool,

    quarantine: Quarantine,
    refreshed_at: Option<String>,
    next_refresh: SystemTime,
    next_resync: SystemTime,
    warming: BTreeMap<String, Warming>,
    /// Images in the last DaemonSet kwarm applied or found, to see which ones are new.
    applied_images: Option<BTreeSet<String>>,
    overflow_reported: BTreeSet<String>,
    /// Images over MAX_IMAGES_PER_NAMESPACE, as said.
    over_limit_reported: BTreeSet<String>,
    init_failure_reported: bool,
    state_trimmed_reported: bool,
    /// UID of a foreign DaemonSet holding kwarm's name, once reported.
    name_in_use_reported: Option<String>,

    /// Nodes carrying the gate taint (only with the gate on).
    gated: BTreeMap<String, GatedNode>,
    /// Whether the Node watch listed once (always true with the gate off).
    nodes_synced: bool,
    nodes_forbidden_reported: bool,
    /// Gated nodes whose release was asked for, and when.
    releasing: BTreeMap<String, SystemTime>,
    /// Node labels (only with the rollout gate on).
    node_labels: BTreeMap<String, BTreeMap<String, String>>,

    /// Pods carrying kwarm's scheduling gate (only with the rollout gate on).
    gated_pods: BTreeMap<PodKey, GatedPod>,
    /// Whether the pending-pod watch listed once (always true with the rollout gate off).
    gated_pods_synced: bool,
    /// Gated pods whose release was asked for, and when.
    pods_releasing: BTreeMap<PodKey, SystemTime>,
    /// Where images are warm, as of the last decision (for the webhook).
    view: WarmView,

    /// The registries' latest answers, per tag.
    registry: BTreeMap<String, Resolution>,
    /// Tag → the digest the holders last rolled for ([`DIGESTS_ANNOTATION`]).
    rolled: BTreeMap<String, String>,
    /// Tags being updated on the nodes: digest and since when.
    updating: BTreeMap<String, (String, SystemTime)>,
    /// The images of the last plan (canonical), for the digest checks.
    planned: BTreeSet<String>,
    /// Deployment images that need an access check, with the pull secrets they may use.
    access_needed: BTreeMap<String, Vec<String>>,
    /// The registries' answers to the access checks.
    access: BTreeMap<String, Resolution>,
    /// Images denied, as said.
    denied_reported: BTreeSet<String>,

    /// When kwarm last wrote the DaemonSet's conditions.
    conditions_written: Option<SystemTime>,
    /// When conditions that changed are due to be written (the write is rate-limited).
    conditions_due: Option<SystemTime>,
    /// Writing them is forbidden (RBAC): kwarm stopped trying.
    conditions_forbidden: bool,

    notices: Vec<Notice>,
}

impl State {
    /// `scopes`: the namespace of each Deployment stream (`None`: all namespaces).
    pub fn new(
        config: &Config,
        scopes: Vec<Option<String>>,
        leader: bool,
        openshift: bool,
        owner: Option<OwnerReference>,
        now: SystemTime,
    ) -> State {
        State {
            leader,
            openshift,
            owner,
            live: None,
            live_matched: None,
            pods: HolderIndex::default(),
            tracker: ImageTracker::default(),
            deployments_synced: vec![false; scopes.len()],
            deployment_scopes: scopes,
            ds_synced: false,
            pods_synced: false,
            deployments_forbidden_reported: false,
            opted_in: config.watch.namespace_selector.as_ref().map(|_| BTreeSet::new()),
            parked: BTreeMap::new(),
            namespaces_synced: config.watch.namespace_selector.is_none() || !config.watch.enabled,
            namespaces_forbidden_reported: false,
            pull_secrets: Vec::new(),
            pull_secrets_reported: false,
            quarantine: Quarantine::default(),
            refreshed_at: None,
            next_refresh: now + config.caching_interval,
            next_resync: now + RESYNC,
            warming: BTreeMap::new(),
            applied_images: None,
            overflow_reported: BTreeSet::new(),
            over_limit_reported: BTreeSet::new(),
            init_failure_reported: false,
            state_trimmed_reported: false,
            name_in_use_reported: None,
            gated: BTreeMap::new(),
            nodes_synced: config.node_gate.is_none() && config.rollout_gate.is_none(),
            nodes_forbidden_reported: false,
            releasing: BTreeMap::new(),
            node_labels: BTreeMap::new(),
            gated_pods: BTreeMap::new(),
            gated_pods_synced: config.rollout_gate.is_none(),
            pods_releasing: BTreeMap::new(),
            view: WarmView::default(),
            registry: BTreeMap::new(),
            rolled: BTreeMap::new(),
            updating: BTreeMap::new(),
            planned: BTreeSet::new(),
            access_needed: BTreeMap::new(),
            access: BTreeMap::new(),
            denied_reported: BTreeSet::new(),
            conditions_written: None,
            conditions_due: None,
            conditions_forbidden: false,
            notices: Vec::new(),
        }
    }

    pub fn leader(&self) -> bool {
        self.leader
    }

    pub fn live(&self) -> Option<&DaemonSet> {
        self.live.as_ref()
    }

    /// Every watch kwarm decides from has listed once. The kubelet-events watch only feeds
    /// metrics: it never holds decisions back.
    pub fn synced(&self) -> bool {
        self.ds_synced
            && self.pods_synced
            && self.nodes_synced
            && self.gated_pods_synced
            && self.namespaces_synced
            && self.deployments_synced.iter().all(|s| *s)
    }

    /// Pods carrying kwarm's scheduling gate.
    pub fn gated_pods(&self) -> &BTreeMap<PodKey, GatedPod> {
        &self.gated_pods
    }

    /// Where images are warm, as of the last decision: what the webhook decides from.
    pub fn warm_view(&self) -> &WarmView {
        &self.view
    }

    pub fn pods(&self) -> usize {
        self.pods.pod_count()
    }

    pub fn deployments(&self) -> &BTreeMap<DeploymentKey, DeploymentImages> {
        self.tracker.deployments()
    }

    /// Nodes carrying the gate taint.
    pub fn gated(&self) -> &BTreeMap<String, GatedNode> {
        &self.gated
    }

    /// Whether the periodic re-read of the DaemonSet is due.
    pub fn resync_due(&self, now: SystemTime) -> bool {
        now >= self.next_resync
    }

    /// What to say since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// How soon `observation` needs a decision, asked before [`State::observe`] takes it in
    /// (whose answer says whether one is needed at all).
    pub fn urgency(&self, observation: &Observation) -> Urgency {
        let gates_wait = !self.gated.is_empty() || !self.gated_pods.is_empty();
        match observation {
            Observation::Pods(Seen::Applied(_) | Seen::Deleted(_)) if !gates_wait => Urgency::Settle,
            Observation::DaemonSet(Seen::Applied(seen))
                if self.live.as_ref().is_some_and(|live| same_but_status(live, seen)) =>
            {
                Urgency::Settle
            }
            _ => Urgency::Now,
        }
    }

    /// Takes one observation in. Returns whether a decision is due.
    pub fn observe(&mut self, config: &Config, observation: Observation, now: SystemTime) -> bool {
        match observation {
            Observation::DaemonSet(seen) => {
                match seen {
                    Seen::Listed(listed) => {
                        self.ds_synced = true;
                        self.live = listed.into_iter().next();
                        self.adopt_state(config, now);
                    }
                    Seen::Applied(ds) => {
                        self.live = Some(ds);
                        if !self.leader {
                            self.adopt_state(config, now);
                        }
                    }
                    Seen::Deleted(_) => {
                        self.notices.push(Notice::DaemonSetDeleted);
                        self.live = None;
                    }
                }
                true
            }
            Observation::ConditionsWritten(ds) => {
                self.live = Some(ds);
                false
            }
            Observation::ConditionsForbidden(error) => {
                if !self.conditions_forbidden {
                    self.conditions_forbidden = true;
                    self.notices.push(Notice::ConditionsForbidden { error });
                }
                false
            }
            Observation::Resynced(live) => {
                self.next_resync = now + RESYNC;
                self.live = live;
                true
            }
            Observation::Applied(applied) => {
                let images = held_images(&applied);
                self.live = Some(applied);
                let before = self.applied_images.replace(images.clone()).unwrap_or_default();
                let nodes = self.nodes();
                for image in images.difference(&before) {
                    self.warming.insert(image.clone(), Warming { since: now, last_logged: None });
                    let users = self.users_of(image);
                    self.notices.push(Notice::WarmingStarted { image: image.clone(), nodes, users });
                }
                self.warming.retain(|image, _| images.contains(image));
                false
            }
            Observation::Pods(seen) => {
                match seen {
                    Seen::Listed(listed) => {
                        self.pods_synced = true;
                        self.pods
                            .replace_all(listed.into_iter().filter_map(|(name, h)| h.map(|h| (name, h))));
                    }
                    Seen::Applied((name, Some(holders))) => {
                        let failed = newly_failed(self.pods.get(&name), &holders);
                        if failed > 0 {
                            self.notices.push(Notice::PullsFailed(failed));
                        }
                        self.pods.upsert(name, holders);
                    }
                    Seen::Applied((name, None)) | Seen::Deleted((name, _)) => {
                        self.pods.remove(&name);
                    }
                }
                true
            }
            Observation::Deployments(i, seen) => match seen {
                Seen::Listed(listed) => {
                    if let Some(synced) = self.deployments_synced.get_mut(i) {
                        *synced = true;
                    }
                    // This stream's scope is replaced; what other streams (namespaces) listed stays.
                    let scope = self.deployment_scopes.get(i).cloned().flatten();
                    let other_scope = |ns: &String| scope.as_ref().is_some_and(|s| s != ns);
                    let mut all: BTreeMap<DeploymentKey, DeploymentImages> = self
                        .tracker
                        .deployments()
                        .iter()
                        .filter(|((ns, _), _)| other_scope(ns))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    self.parked.retain(|(ns, _), _| other_scope(ns));
                    for (key, summary) in listed {
                        let Some(summary) = summary else { continue };
                        if self.opted_in(&key.0) {
                            all.insert(key, summary);
                        } else {
                            self.parked.insert(key, summary);
                        }
                    }
                    self.tracker.replace_all(all, now);
                    true
                }
                Seen::Applied((key, Some(summary))) if !self.opted_in(&key.0) => {
                    self.parked.insert(key, summary);
                    false
                }
                Seen::Applied((key, Some(summary))) => {
                    // the rollout gate reads the setting and the containers: a change is a decision
                    let before = self.tracker.deployments().get(&key);
                    let gate_changed = config.rollout_gate.is_some()
                        && before.is_none_or(|b| {
                            b.rollout_gate != summary.rollout_gate || b.containers != summary.containers
                        });
                    self.tracker.upsert(key, summary, now) || gate_changed
                }
                Seen::Applied((key, None)) | Seen::Deleted((key, _)) => {
                    self.parked.remove(&key);
                    self.tracker.remove(&key, now)
                }
            },
            Observation::Namespaces(seen) => {
                let Some(opted_in) = &self.opted_in else { return false };
                let mut now_in = opted_in.clone();
                let listed = matches!(seen, Seen::Listed(_));
                match seen {
                    Seen::Listed(names) => {
                        self.namespaces_synced = true;
                        now_in = names.into_iter().collect();
                    }
                    Seen::Applied(name) => {
                        now_in.insert(name);
                    }
                    Seen::Deleted(name) => {
                        now_in.remove(&name);
                    }
                }
                // a listing is always worth a decision: the first one may complete the sync
                self.opt_in(now_in, now) || listed
            }
            Observation::NamespacesForbidden(error) => {
                if !self.namespaces_forbidden_reported {
                    self.namespaces_forbidden_reported = true;
                    self.notices.push(Notice::NamespacesForbidden { error });
                }
                // None opts in; the DaemonSet must not wait for a watch that cannot work.
                let first = !self.namespaces_synced;
                self.namespaces_synced = true;
                self.opt_in(BTreeSet::new(), now) || first
            }
            Observation::DeploymentsForbidden(error) => {
                if !self.deployments_forbidden_reported {
                    self.deployments_forbidden_reported = true;
                    self.notices.push(Notice::DeploymentsForbidden { error });
                }
                // Go on with IMAGES: the Deployment watches count as synced and empty.
                self.deployments_synced.iter_mut().for_each(|s| *s = true);
                true
            }
            Observation::Leader(leader) => {
                self.leader = leader;
                true
            }
            Observation::PullSecrets(names) => {
                self.pull_secrets_reported = true;
                let changed = names != self.pull_secrets;
                self.pull_secrets = names;
                changed
            }
            Observation::Nodes(seen) => {
                // Node heartbeats change nothing kwarm keeps: no decision for them.
                let changed = match seen {
                    Seen::Listed(listed) => {
                        self.nodes_synced = true;
                        self.gated.clear();
                        self.node_labels.clear();
                        for (name, node) in listed {
                            self.note_node(name, node);
                        }
                        // a listing is always worth a decision: the first one may complete the sync
                        true
                    }
                    Seen::Applied((name, node)) => self.note_node(name, node),
                    Seen::Deleted((name, _)) => {
                        let labels = self.node_labels.remove(&name).is_some();
                        self.gated.remove(&name).is_some() || labels
                    }
                };
                let gated = &self.gated;
                self.releasing.retain(|node, _| gated.contains_key(node));
                changed
            }
            Observation::GatedPods(seen) => {
                let changed = match seen {
                    Seen::Listed(listed) => {
                        self.gated_pods_synced = true;
                        self.gated_pods = listed.into_iter().filter_map(|(k, g)| g.map(|g| (k, g))).collect();
                        true
                    }
                    Seen::Applied((key, Some(g))) => self.gated_pods.insert(key, g.clone()) != Some(g),
                    Seen::Applied((key, None)) | Seen::Deleted((key, _)) => {
                        self.gated_pods.remove(&key).is_some()
                    }
                };
                let gated = &self.gated_pods;
                self.pods_releasing.retain(|pod, _| gated.contains_key(pod));
                changed
            }
            Observation::Registry(answers) => {
                let changed = answers != self.registry;
                self.registry = answers;
                changed
            }
            Observation::Access(answers) => {
                let changed = answers != self.access;
                self.access = answers;
                changed
            }
            Observation::PendingPodsForbidden(error) => {
                let first = !self.gated_pods_synced;
                if first {
                    self.notices.push(Notice::PendingPodsForbidden { error });
                }
                self.gated_pods_synced = true;
                first
            }
            Observation::NodesForbidden(error) => {
                if !self.nodes_forbidden_reported {
                    self.nodes_forbidden_reported = true;
                    self.notices.push(Notice::NodesForbidden { error });
                }
                // The DaemonSet must not wait for a watch that cannot work.
                let first = !self.nodes_synced;
                self.nodes_synced = true;
                first
            }
        }
    }

    /// Whether a namespace's Deployments count (`NAMESPACE_SELECTOR`).
    fn opted_in(&self, namespace: &str) -> bool {
        self.opted_in.as_ref().is_none_or(|o| o.contains(namespace))
    }

    /// Takes the namespaces that opt in now: the Deployments of those that joined come out of
    /// the parking lot, those of namespaces that left go into it (their images are released, and
    /// kept for IMAGE_RETENTION like any other). Returns whether the images in use changed.
    fn opt_in(&mut self, now_in: BTreeSet<String>, now: SystemTime) -> bool {
        let Some(before) = self.opted_in.replace(now_in.clone()) else { return false };
        let mut changed = false;
        for ns in before.difference(&now_in) {
            let leaving: Vec<DeploymentKey> =
                self.tracker.deployments().keys().filter(|(n, _)| n == ns).cloned().collect();
            for key in leaving {
                if let Some(d) = self.tracker.deployments().get(&key).cloned() {
                    changed |= self.tracker.remove(&key, now);
                    self.parked.insert(key, d);
                }
            }
        }
        for ns in now_in.difference(&before) {
            let joining: Vec<DeploymentKey> = self.parked.keys().filter(|(n, _)| n == ns).cloned().collect();
            for key in joining {
                if let Some(d) = self.parked.remove(&key) {
                    changed |= self.tracker.upsert(key, d, now);
                }
            }
        }
        changed
    }

    /// Keeps what the gates need of a node. Returns whether anything changed.
    fn note_node(&mut self, name: String, node: NodeSeen) -> bool {
        let mut changed = match node.gated {
            Some(g) => self.gated.insert(name.clone(), g.clone()) != Some(g),
            None => self.gated.remove(&name).is_some(),
        };
        if let Some(labels) = node.labels {
            changed |= self.node_labels.get(&name) != Some(&labels);
            self.node_labels.insert(name, labels);
        }
        changed
    }

    /// The mirrors the watched Deployments' pull secrets want: mirror name → (namespace, secret).
    pub fn pull_secrets_wanted(&self) -> BTreeMap<String, (String, String)> {
        self.tracker
            .pull_secret_refs()
            .map(|(ns, secret)| (mirror_name(ns, secret), (ns.clone(), secret.clone())))
            .collect()
    }

    /// Takes over the state the leader keeps on the DaemonSet (retained and quarantined images,
    /// last refresh): at start, so a restart renders the same DaemonSet and changes nothing, and
    /// on every change while following, so a takeover continues where the last leader stopped.
    fn adopt_state(&mut self, config: &Config, now: SystemTime) {
        let Some(live) = &self.live else { return };
        if let Some(state) = live.annotations().get(STATE_ANNOTATION) {
            match serde_json::from_str::<PersistedState>(state) {
                Ok(state) => {
                    self.tracker.restore_released(state.retained_times(now));
                    self.quarantine = Quarantine::restore(state.quarantined, &held_images(live), now);
                }
                Err(e) => {
                    // Dropping it would drop the retained images and roll every holder pod; keep
                    // what the DaemonSet holds instead, for one retention from now.
                    let configured: BTreeSet<String> =
                        config.images.iter().filter_map(|h| parse_image_reference(&h.image).ok()).collect();
                    let held =
                        held_images(live).into_iter().filter(|i| !configured.contains(i)).map(|i| (i, now));
                    self.tracker.restore_released(held.collect());
                    self.notices.push(Notice::StateUnreadable { error: e.to_string() });
                }
            }
        }
        let template_annotations = live
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref());
        self.rolled = template_annotations
            .and_then(|a| a.get(DIGESTS_ANNOTATION))
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        if let Some(at) = template_annotations.and_then(|a| a.get(REFRESHED_AT_ANNOTATION)) {
            self.refreshed_at = Some(at.clone());
            // Never refresh because of a restart: the next refresh is at least a minute away.
            let last = humantime::parse_rfc3339(at).unwrap_or(now);
            let due = last.checked_add(config.caching_interval).unwrap_or(now);
            self.next_refresh = due.max(now + REFRESH_AFTER_RESTART);
        }
        if config.watch.inherit_pull_secrets && !self.pull_secrets_reported {
            let pod = live.spec.as_ref().and_then(|s| s.template.spec.as_ref());
            self.pull_secrets = pod
                .and_then(|p| p.image_pull_secrets.as_ref())
                .into_iter()
                .flatten()
                .map(|r| r.name.clone())
                .filter(|name| !config.image_pull_secrets.contains(name))
                .collect();
        }
        self.applied_images = Some(held_images(live));
    }

    fn nodes(&self) -> usize {
        self.pods.node_count()
    }

    /// The Deployments that get an Event about `image`: only a leader posts, at most
    /// [`EVENT_FANOUT`] (an image shared by thousands must not cost thousands of writes).
    fn users_of(&self, image: &str) -> Vec<DeploymentKey> {
        if !self.leader {
            return Vec::new();
        }
        self.tracker.users_of(image).take(EVENT_FANOUT).cloned().collect()
    }

    fn policy(config: &Config) -> QuarantinePolicy {
        QuarantinePolicy {
            timeout: config.pull_timeout,
            backoff: config.retry_backoff,
            max_retries: config.max_retries,
        }
    }

    /// The next moment something is due (refresh, retention, quarantine, resync, progress).
    pub fn next_wakeup(&self, config: &Config, now: SystemTime) -> SystemTime {
        let mut next = self.next_resync.min(self.next_refresh);
        if let Some(t) = self.tracker.next_expiry(config.image_retention) {
            next = next.min(t);
        }
        if let Some(t) = self.quarantine.next_deadline(Self::policy(config)) {
            next = next.min(t);
        }
        if !self.warming.is_empty() {
            next = next.min(now + PROGRESS_LOG_EVERY);
        }
        if let Some(t) = self.conditions_due {
            next = next.min(t);
        }
        if let Some(g) = &config.node_gate {
            for (node, gated) in &self.gated {
                match self.releasing.get(node) {
                    Some(asked) => next = next.min(*asked + RELEASE_RETRY),
                    None => next = next.min(gate::deadline(gated, g.timeout)),
                }
            }
        }
        if let Some(g) = &config.rollout_gate {
            for (key, pod) in &self.gated_pods {
                match self.pods_releasing.get(key) {
                    Some(asked) => next = next.min(*asked + RELEASE_RETRY),
                    None => next = next.min(rollout::deadline(pod, g.timeout)),
                }
            }
        }
        next
    }

    /// Decides from everything observed. Call only when [`State::synced`].
    pub fn decide(&mut self, config: &Config, now: SystemTime) -> Decision {
        self.tracker.expire(now, config.image_retention);

        // Status of what the DaemonSet holds now, and what that means for quarantine.
        let live_images: Vec<String> =
            self.live.as_ref().map(held_images).unwrap_or_default().into_iter().collect();
        let generation = self.live.as_ref().and_then(|d| d.metadata.generation);
        self.pods.set_generation(generation);
        let statuses = self.pods.statuses(&live_images);
        let configured: BTreeSet<String> =
            config.images.iter().filter_map(|h| parse_image_reference(&h.image).ok()).collect();
        let mut wanted: BTreeSet<String> = self.tracker.wanted();
        wanted.extend(configured.iter().cloned());
        self.quarantine.retain_images(&wanted);
        if self.leader {
            let changes = self.quarantine.step(&statuses, Self::policy(config), now);
            self.note_quarantine(&changes, &statuses);
        }
        self.note_init_failures();
        self.note_progress(&statuses, now);

        // Tenant credentials: images that would borrow another namespace's pull secrets wait for
        // an access check with their own.
        self.access_needed = match config.watch.inherit_pull_secrets {
            true => access::checks_needed(
                self.tracker.deployments(),
                &configured,
                &self.pull_secrets,
                &config.image_pull_secrets,
            ),
            false => BTreeMap::new(),
        };
        let held: BTreeSet<String> = live_images.iter().cloned().collect();
        let verdicts = access::verdicts(&self.access_needed, &self.access, &held);
        self.note_access(&verdicts);
        let denied = verdicts.left_out();
        let mut excluded = self.quarantine.excluded();
        excluded.extend(denied.iter().cloned());

        let retained: BTreeSet<String> = self.tracker.released().keys().cloned().collect();
        let limits = Limits { max_images: config.max_images, per_namespace: config.max_images_per_namespace };
        let plan = plan_holders(&config.images, self.tracker.by_namespace(), &retained, &excluded, limits);
        let overflow: BTreeSet<String> = plan.overflow.iter().cloned().collect();
        for image in overflow.difference(&self.overflow_reported) {
            self.notices.push(Notice::Overflow { image: image.clone() });
        }
        self.overflow_reported = overflow;
        let over_limit: BTreeSet<String> = plan.over_namespace_limit.iter().cloned().collect();
        for image in over_limit.difference(&self.over_limit_reported) {
            let users = self.users_of(image);
            self.notices.push(Notice::OverNamespaceLimit { image: image.clone(), users });
        }
        self.over_limit_reported = over_limit;
        // Not warmed because of a limit, either one: for the conditions and the rollout gate.
        let mut not_fitting = overflow_set(&plan.overflow);
        not_fitting.extend(plan.over_namespace_limit.iter().cloned());
        let mut gauges = gauges(&statuses, self.quarantine.excluded().len());
        gauges.overflow = plan.overflow.len() as i64;
        gauges.over_namespace_limit = plan.over_namespace_limit.len() as i64;
        gauges.denied = denied.len() as i64;
        gauges.gated_nodes = self.gated.len() as i64;
        let releases = self.releases(config, &plan.holders, now);
        self.planned = plan
            .holders
            .iter()
            .map(|h| parse_image_reference(&h.image).unwrap_or_else(|_| h.image.clone()))
            .collect();
        if config.rollout_gate.is_some() {
            self.view = self.build_view(config, not_fitting.clone(), denied.clone());
        }
        gauges.gated_pods = self.gated_pods.len() as i64;
        let pod_releases = self.pod_releases(config, now);
        gauges.stale_images = self.check_digests(config, now) as i64;

        if now >= self.next_refresh {
            self.next_refresh = now + config.caching_interval;
            if refresh_would_repull(config, &plan.holders) {
                self.refreshed_at = Some(humantime::format_rfc3339_seconds(now).to_string());
                self.notices.push(Notice::Refreshing);
            }
        }

        if !self.leader {
            return Decision { gauges, ..Default::default() };
        }
        let state = PersistedState::new(self.tracker.released(), &self.quarantine);
        let state = (!state.is_empty()).then(|| {
            let (text, dropped) = state.encode_bounded(STATE_MAX_BYTES);
            if dropped > 0 && !self.state_trimmed_reported {
                self.notices.push(Notice::StateTrimmed { dropped });
            }
            self.state_trimmed_reported = dropped > 0;
            text
        });
        let input = RenderInput {
            holders: plan.holders,
            extra_pull_secrets: self.pull_secrets.clone(),
            openshift: self.openshift,
            owner: self.owner.clone(),
            refreshed_at: self.refreshed_at.clone(),
            digests: self.rolled.clone(),
            state,
        };
        let desired = render_daemonset(config, &input);
        if let Some(live) = &self.live
            && let Some(why) = foreign_daemonset(&desired, live)
        {
            let uid = live.metadata.uid.clone().unwrap_or_default();
            if self.name_in_use_reported.as_deref() != Some(uid.as_str()) {
                self.name_in_use_reported = Some(uid);
                self.notices.push(Notice::NameInUse { why });
            }
            return Decision { releases, pod_releases, gauges, ..Default::default() };
        }
        if self.name_in_use_reported.take().is_some() {
            self.notices.push(Notice::NameFree);
        }
        let conditions = self.conditions_to_write(&wanted, &statuses, &not_fitting, &denied, now);
        let apply = (!self.live_matches(&desired)).then_some(desired);
        Decision { apply, releases, pod_releases, conditions, gauges }
    }

    /// Whether the live DaemonSet already is `desired` ([`daemonset_matches`], remembered for the
    /// pair of versions it last held for: a reconcile per pod event then costs no comparison).
    fn live_matches(&mut self, desired: &DaemonSet) -> bool {
        let Some(live) = &self.live else { return false };
        let key = desired_hash(desired).zip(live.metadata.resource_version.as_deref());
        if key.is_some() && key == self.live_matched.as_ref().map(|(h, v)| (h.as_str(), v.as_str())) {
            return true;
        }
        let matches = daemonset_matches(desired, live);
        self.live_matched = key.filter(|_| matches).map(|(h, v)| (h.to_string(), v.to_string()));
        matches
    }

    /// The DaemonSet's conditions, when they changed and the rate limit allows a write now.
    fn conditions_to_write(
        &mut self,
        wanted: &BTreeSet<String>,
        statuses: &[ImageStatus],
        overflow: &BTreeSet<String>,
        denied: &BTreeSet<String>,
        now: SystemTime,
    ) -> Option<Vec<DaemonSetCondition>> {
        self.conditions_due = None;
        let live = self.live.as_ref()?;
        if self.conditions_forbidden {
            return None;
        }
        let status = live.status.as_ref();
        // The DaemonSet controller's node count, once it has seen the current template.
        let nodes = status
            .filter(|s| s.observed_generation.is_some() && s.observed_generation == live.metadata.generation)
            .map(|s| usize::try_from(s.desired_number_scheduled).unwrap_or(0));
        let quarantined = self.quarantine.excluded();
        let updating: BTreeSet<String> = self.updating.keys().cloned().collect();
        let observed = conditions::observe(&conditions::Inputs {
            planned: wanted,
            statuses,
            nodes,
            quarantined: &quarantined,
            overflow,
            denied,
            updating: &updating,
            init_failing: self.pods.init_failures().len(),
        });
        let current = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        let merged = conditions::merge(current, &observed, now)?;
        let gap = match conditions::status_changed(current, &observed) {
            true => CONDITIONS_FLIP_GAP,
            false => CONDITIONS_MESSAGE_GAP,
        };
        let due = self.conditions_written.map_or(now, |at| at + gap);
        if now < due {
            self.conditions_due = Some(due);
            return None;
        }
        self.conditions_written = Some(now);
        Some(merged)
    }

    /// Where images are warm now, for the webhook and the pod releases.
    fn build_view(&self, config: &Config, overflow: BTreeSet<String>, denied: BTreeSet<String>) -> WarmView {
        let mode = config.rollout_gate.as_ref().map(|g| g.mode);
        let warm: BTreeMap<String, BTreeSet<String>> =
            self.pods.warm_by_node().map(|(node, held)| (node.clone(), held.clone())).collect();
        let labels =
            warm.keys().filter_map(|n| Some((n.clone(), self.node_labels.get(n)?.clone()))).collect();
        let gated: BTreeMap<&DeploymentKey, &DeploymentImages> = self
            .tracker
            .deployments()
            .iter()
            .filter(|(_, d)| mode.is_some_and(|m| m.gates(d.rollout_gate)))
            .collect();
        let gated_deployments = gated.keys().map(|k| (*k).clone()).collect();
        let watched = self.tracker.deployments().keys().cloned().collect();
        let template_containers =
            gated.iter().map(|(k, d)| ((*k).clone(), d.containers.iter().cloned().collect())).collect();
        WarmView {
            synced: true,
            warm,
            labels,
            gated_deployments,
            watched,
            template_containers,
            warmed: self.planned.clone(),
            quarantined: self.quarantine.excluded(),
            overflow,
            denied,
        }
    }

    /// Gated pods to release now; each asked for once, and again after [`RELEASE_RETRY`] if it
    /// is still gated. Only a leader releases.
    fn pod_releases(&mut self, config: &Config, now: SystemTime) -> Vec<PodRelease> {
        let Some(g) = &config.rollout_gate else { return Vec::new() };
        if !self.leader || self.gated_pods.is_empty() {
            return Vec::new();
        }
        let releasing = &self.pods_releasing;
        let waiting = self
            .gated_pods
            .iter()
            .filter(|(key, _)| releasing.get(*key).is_none_or(|asked| now >= *asked + RELEASE_RETRY));
        let out = rollout::releases(waiting, &self.view, g.timeout, now);
        for r in &out {
            self.pods_releasing.insert((r.namespace.clone(), r.name.clone()), now);
        }
        out
    }

    /// The pull secrets the holders get (`IMAGE_PULL_SECRETS`, then the mirrors): the digest checks
    /// use the same credentials.
    pub fn pull_secret_names(&self, config: &Config) -> Vec<String> {
        config.image_pull_secrets.iter().chain(&self.pull_secrets).cloned().collect()
    }

    /// The tags to resolve in their registries (digest-pinned images are skipped by the resolver),
    /// each with the pull secrets the holders may pull it with: an image that needed an access
    /// check only with its own.
    pub fn digest_wanted(&self, config: &Config) -> BTreeMap<String, Vec<String>> {
        let all = self.pull_secret_names(config);
        self.planned
            .iter()
            .map(|image| (image.clone(), self.access_needed.get(image).unwrap_or(&all).clone()))
            .collect()
    }

    /// The images to check with their own credentials (see [`crate::access`]).
    pub fn access_wanted(&self) -> &BTreeMap<String, Vec<String>> {
        &self.access_needed
    }

    /// Compares each planned tag's registry digest with what the nodes hold. A leader rolls the
    /// holders (a new [`DIGESTS_ANNOTATION`] value) once per new digest some node lacks, and says
    /// when every node has it. Returns the number of stale tags. Nodes whose runtime reports no
    /// digest count as neither.
    fn check_digests(&mut self, config: &Config, now: SystemTime) -> usize {
        if config.digest_check.is_none() {
            return 0;
        }
        let planned = &self.planned;
        self.rolled.retain(|image, _| planned.contains(image));
        self.updating.retain(|image, _| planned.contains(image));
        let mut stale_images = 0;
        for image in &self.planned {
            let Some(digest) = self.registry.get(image).and_then(Resolution::digest) else { continue };
            let (holding, stale) = self.pods.digest_counts(image, digest);
            if stale > 0 {
                stale_images += 1;
                if self.leader && self.rolled.get(image).map(String::as_str) != Some(digest) {
                    self.rolled.insert(image.clone(), digest.to_string());
                    self.updating.insert(image.clone(), (digest.to_string(), now));
                    let users = self.users_of(image);
                    let notice =
                        Notice::DigestChanged { image: image.clone(), digest: digest.into(), stale, users };
                    self.notices.push(notice);
                }
            } else if holding > 0
                && let Some((rolled_for, since)) = self.updating.get(image)
                && rolled_for == digest
            {
                let seconds = now.duration_since(*since).unwrap_or_default().as_secs_f64();
                let users = self.users_of(image);
                let notice = Notice::ImageUpdated {
                    image: image.clone(),
                    digest: digest.into(),
                    nodes: holding,
                    seconds,
                    users,
                };
                self.notices.push(notice);
                self.updating.remove(image);
            }
        }
        stale_images
    }

    /// Gated nodes to release now: warm, not selected, or past the timeout; each asked for once,
    /// and again after [`RELEASE_RETRY`] if it is still gated. Only a leader releases.
    fn releases(
        &mut self,
        config: &Config,
        holders: &[crate::holder::Holder],
        now: SystemTime,
    ) -> Vec<Release> {
        let Some(g) = &config.node_gate else { return Vec::new() };
        if !self.leader || self.gated.is_empty() {
            return Vec::new();
        }
        let desired: BTreeSet<String> = holders
            .iter()
            .map(|h| parse_image_reference(&h.image).unwrap_or_else(|_| h.image.clone()))
            .collect();
        let waiting: BTreeMap<String, GatedNode> = self
            .gated
            .iter()
            .filter(|(node, _)| self.releasing.get(*node).is_none_or(|asked| now >= *asked + RELEASE_RETRY))
            .map(|(n, g)| (n.clone(), g.clone()))
            .collect();
        // What each waiting node holds: any holder pod there (an old one during a roll counts too).
        let warm: BTreeMap<&str, BTreeSet<&str>> = waiting
            .keys()
            .filter_map(|node| {
                Some((node.as_str(), self.pods.warm_on(node)?.iter().map(String::as_str).collect()))
            })
            .collect();
        let out = gate::releases(&waiting, &warm, &desired, g.timeout, now);
        for r in &out {
            self.releasing.insert(r.node.clone(), now);
        }
        out
    }

    fn note_quarantine(&mut self, changes: &crate::status::QuarantineChanges, statuses: &[ImageStatus]) {
        for image in &changes.quarantined {
            let reasons = statuses
                .iter()
                .find(|s| &s.image == image)
                .map(|s| s.messages.iter().map(|(r, m)| format!("{r}: {m}")).collect::<Vec<_>>().join("; "))
                .unwrap_or_default();
            let entry = self.quarantine.entries().get(image);
            let notice = Notice::Quarantined {
                image: image.clone(),
                attempt: entry.map_or(0, |e| e.attempt),
                retry_at: entry.and_then(|e| e.retry_at),
                reasons,
                users: self.users_of(image),
            };
            self.notices.push(notice);
        }
        for image in &changes.released_for_retry {
            self.notices.push(Notice::RetryingQuarantined { image: image.clone() });
        }
        for image in &changes.recovered {
            self.notices.push(Notice::Recovered { image: image.clone() });
        }
    }

    /// Says when an image is denied (with the registry's answer), and when it no longer is.
    fn note_access(&mut self, verdicts: &access::Verdicts) {
        for (image, message) in &verdicts.denied {
            if !self.denied_reported.contains(image) {
                let users = self.users_of(image);
                let notice = Notice::AccessDenied { image: image.clone(), message: message.clone(), users };
                self.notices.push(notice);
            }
        }
        let left_out = verdicts.left_out();
        for image in &self.denied_reported {
            let allowed = self.access_needed.contains_key(image) && !left_out.contains(image);
            if allowed {
                self.notices.push(Notice::AccessGranted { image: image.clone() });
            }
        }
        self.denied_reported = verdicts.denied.keys().cloned().collect();
    }

    /// A failing init container (bad `KIP_IMAGE`) keeps every holder from starting: said once.
    fn note_init_failures(&mut self) {
        let nodes = self.pods.init_failures().len();
        match self.pods.init_failures().next() {
            Some((reason, message)) if !self.init_failure_reported => {
                self.notices.push(Notice::InitFailing {
                    nodes,
                    reason: reason.clone(),
                    message: message.clone(),
                });
                self.init_failure_reported = true;
            }
            None => self.init_failure_reported = false,
            _ => {}
        }
    }

    /// Progress of long warm-ups, and the "warm on m/m nodes" notice when one completes.
    fn note_progress(&mut self, statuses: &[ImageStatus], now: SystemTime) {
        let mut done = Vec::new();
        for s in statuses {
            let Some(w) = self.warming.get_mut(&s.image) else { continue };
            let elapsed = now.duration_since(w.since).unwrap_or_default();
            if s.warm_everywhere() {
                done.push((s.image.clone(), s.warm, s.nodes, elapsed.as_secs_f64()));
                continue;
            }
            let due = w.last_logged.is_none_or(|(warm, at)| {
                warm != s.warm && now.duration_since(at).unwrap_or_default() >= PROGRESS_LOG_EVERY
            });
            if due && elapsed >= PROGRESS_LOG_EVERY {
                w.last_logged = Some((s.warm, now));
                self.notices.push(Notice::Progress {
                    image: s.image.clone(),
                    warm: s.warm,
                    nodes: s.nodes,
                    failed: s.failed,
                    since: w.since,
                });
            }
        }
        for (image, warm, nodes, seconds) in done {
            self.warming.remove(&image);
            let users = self.users_of(&image);
            self.notices.push(Notice::Warm { image, warm, nodes, seconds, users });
        }
    }
}

/// Holders of a pod that just entered a failure state.
fn newly_failed(before: Option<&PodHolders>, after: &PodHolders) -> u64 {
    after
        .images
        .iter()
        .filter(|(image, state)| {
            matches!(state, HolderState::Failed { .. })
                && !matches!(before.and_then(|b| b.images.get(*image)), Some(HolderState::Failed { .. }))
        })
        .count() as u64
}

fn gauges(statuses: &[ImageStatus], quarantined: usize) -> Gauges {
    let mut g = Gauges { quarantined: quarantined as i64, ..Default::default() };
    for s in statuses {
        g.active_pulls += s.pulling as i64;
        if s.warm_everywhere() {
            g.warm += 1;
        } else if s.failed > 0 {
            g.failed += 1;
        } else {
            g.pulling += 1;
        }
    }
    g
}

/// Overflowing images, canonical.
fn overflow_set(overflow: &[String]) -> BTreeSet<String> {
    overflow.iter().map(|i| parse_image_reference(i).unwrap_or_else(|_| i.clone())).collect()
}

/// Whether two versions of the DaemonSet differ at most in their status: the same generation
/// (the spec did not change) and the same labels, annotations and owners, which is all of the
/// metadata kwarm renders.
fn same_but_status(a: &DaemonSet, b: &DaemonSet) -> bool {
    let (a, b) = (&a.metadata, &b.metadata);
    a.uid == b.uid
        && a.generation.is_some()
        && a.generation == b.generation
        && a.labels == b.labels
        && a.annotations == b.annotations
        && a.owner_references == b.owner_references
        && a.deletion_timestamp == b.deletion_timestamp
}

pub use crate::access::mirror_name;

#[cfg(test)]
mod tests;
