//! The I/O shell around the controller's decisions: watches the DaemonSet, its pods, labelled
//! Deployments and kubelet `Pulled` events ([`streams`]), feeds what they see to the pure
//! [`State`] ([`state`]), and executes its [`state::Decision`]: the apply (under a timeout, with
//! backoff), the notices (logs; Events through a queue of their own), the gauges.
//!
//! One task owns all state. Watch events arrive on one merged stream; after each burst (a short,
//! fixed window) the state decides once. Timers (refresh, retention, quarantine retries, resync)
//! only wake the same loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetCondition, Deployment};
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KwarmEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::config::Config;
use crate::daemonset::held_images;
use crate::error::{Error, Result, with_timeout};
use crate::gate::{Release, gated_node};
use crate::http::Shared;
use crate::images::{DeploymentImages, DeploymentKey, summarize_deployment};
use crate::leader::Fence;
use crate::lean::{LeanDeployment, LeanPod};
use crate::metrics::{CategoryLabel, StateLabel, StatusLabel, WatchLabel};
use crate::rollout::{GatedPod, PodKey, PodRelease, WarmView, gated_pod};
use crate::status::{PodHolders, STATE_MAX_BYTES, parse_pulled_message, pod_holders};
pub use admission::Keeper;
pub use pod_release::{gate_index, remove_scheduling_gate};
use release::Releaser;
pub use release::remove_gate_taint;
use secrets::{Mirrorer, Wanted};
pub use state::mirror_name;
use state::{Gauges, NodeSeen, Notice, Observation, State, Urgency};
use streams::{Input, Listing, deployment_scopes, watch_streams};

mod admission;
mod digests;
mod pod_release;
mod release;
mod secrets;
mod state;
mod streams;

/// The one field manager kwarm applies with.
pub const FIELD_MANAGER: &str = "kwarm.io/manager";
pub(crate) const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Access checks (tenant credentials) are repeated this often, to notice revoked access.
const ACCESS_RECHECK: Duration = Duration::from_secs(600);
/// At most one reconcile per window: a change after a quiet spell is acted on at once (what is
/// already queued with it goes along); what arrives during the window after a reconcile waits for
/// its end and is acted on together.
const COALESCE: Duration = Duration::from_millis(50);
/// At most one reconcile per window for changes of status alone ([`Urgency::Settle`]): a
/// warm-up's pod events update the conditions and gauges this often, not per event.
const SETTLE: Duration = Duration::from_secs(1);
/// At most this many queued events go along with the first one (a flood must not hold the
/// reconcile back; the rest is taken in the next round).
const QUEUED_MAX: usize = 1024;
/// Events waiting to be sent; more are dropped (and logged at debug level).
const EVENT_QUEUE: usize = 4096;

/// Long-lived handles the controller needs.
pub struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub identity: String,
    /// Where the webhook reads the warm view from (`None`: the rollout gate is off).
    pub warm_view: Option<watch::Sender<Arc<WarmView>>>,
}

/// The shell around [`State`]: the API handles, the watch listings, the apply retry and the
/// pull-secret mirrors; it executes what the state decides.
struct Controller {
    ctx: Context,
    ds_api: Api<DaemonSet>,
    /// Events for user Deployments, nodes and the DaemonSet, sent by [`send_events`].
    events: EventQueue,
    state: State,
    ds_listing: Listing<DaemonSet>,
    pod_listing: Listing<(String, Option<PodHolders>)>,
    deployment_listings: Vec<Listing<(DeploymentKey, Option<DeploymentImages>)>>,
    node_listing: Listing<(String, NodeSeen)>,
    pending_listing: Listing<(PodKey, Option<GatedPod>)>,
    namespace_listing: Listing<String>,
    /// Releases for the node-gate task (`None`: the gate is off).
    releases: Option<tokio::sync::mpsc::UnboundedSender<Release>>,
    /// Releases for the rollout-gate task (`None`: the gate is off).
    pod_releases: Option<tokio::sync::mpsc::UnboundedSender<PodRelease>>,
    /// The tags and secrets for the digest-check task (`None`: checks are off).
    digests_wanted: Option<watch::Sender<Option<digests::Wanted>>>,
    access_wanted: Option<watch::Sender<Option<digests::Wanted>>>,
    /// The mirrors the Deployments want, for the pull-secret task (`None`: inheriting is off).
    secrets_wanted: Option<watch::Sender<Option<Wanted>>>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// Checked right before every write to the cluster (see [`Fence`]).
    fence: Fence,
}

/// Runs the manager until `shutdown` turns true.
pub async fn run(
    ctx: Context,
    mut leader_rx: watch::Receiver<bool>,
    fence: Fence,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let config = ctx.config.clone();
    let Some((openshift, owner)) = discover(&ctx, &mut shutdown).await else {
        return Ok(());
    };
    let mut inputs = watch_streams(&ctx.client, &config);
    let deployment_scopes = deployment_scopes(&config);
    let reporter = Reporter { controller: "kwarm".into(), instance: Some(ctx.identity.clone()) };
    // Pull-secret mirroring runs in a task of its own; its results come back on `mirrors`.
    let (secrets_wanted, mut mirrors) = if config.watch.inherit_pull_secrets {
        let (wanted_tx, wanted_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(Vec::new());
        let mirrorer = Mirrorer::new(
            ctx.client.clone(),
            config.namespace.clone(),
            config.daemonset_name.clone(),
            owner.clone(),
            fence.clone(),
        );
        tokio::spawn(mirrorer.run(wanted_rx, done_tx));
        (Some(wanted_tx), Some(done_rx))
    } else {
        (None, None)
    };
    let events = {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        tokio::spawn(send_events(Recorder::new(ctx.client.clone(), reporter), rx));
        EventQueue(tx)
    };
    // Gate taints are removed by a task of its own; the state's releases go to it.
    let releases = config.node_gate.as_ref().map(|gate| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let releaser = Releaser {
            api: Api::all(ctx.client.clone()),
            gate: gate.taint.clone(),
            fence: fence.clone(),
            events: events.clone(),
            shared: ctx.shared.clone(),
        };
        tokio::spawn(releaser.run(rx));
        tx
    });
    // Scheduling gates are removed by a task of its own too.
    let pod_releases = config.rollout_gate.as_ref().map(|_| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let releaser = pod_release::PodReleaser {
            client: ctx.client.clone(),
            fence: fence.clone(),
            events: events.clone(),
            shared: ctx.shared.clone(),
        };
        tokio::spawn(releaser.run(rx));
        tx
    });
    // Digest checks run in a task of their own; its answers come back on `registry`.
    let checker = |purpose, interval| {
        let c = ctx.client.clone();
        digests::Checker::new(
            c,
            &config.namespace,
            interval,
            &config.insecure_registries,
            ctx.shared.clone(),
            purpose,
        )
        .spawn()
    };
    let (digests_wanted, mut registry) =
        config.digest_check.as_ref().map(|check| checker(digests::Purpose::Digests, check.interval)).unzip();
    // Access checks (tenant credentials) likewise, with inherited pull secrets; answers on `access`.
    let (access_wanted, mut access) =
        config.watch.inherit_pull_secrets.then(|| checker(digests::Purpose::Access, ACCESS_RECHECK)).unzip();
    let state = State::new(
        &config,
        deployment_scopes.clone(),
        *leader_rx.borrow(),
        openshift,
        owner,
        SystemTime::now(),
    );
    let mut c = Controller {
        ds_api: Api::namespaced(ctx.client.clone(), &config.namespace),
        events,
        state,
        ds_listing: Listing::default(),
        pod_listing: Listing::default(),
        deployment_listings: deployment_scopes.iter().map(|_| Listing::default()).collect(),
        node_listing: Listing::default(),
        pending_listing: Listing::default(),
        namespace_listing: Listing::default(),
        releases,
        pod_releases,
        digests_wanted,
        access_wanted,
        secrets_wanted,
        retry_at: None,
        retry_delay: Duration::from_millis(500),
        fence,
        ctx,
    };
    c.ctx.shared.metrics.leader.set(i64::from(c.state.leader()));
    let mut leader_open = true;
    let mut last_reconcile: Option<tokio::time::Instant> = None;

    // When status alone moved: the reconcile it waits for (a window after the last one).
    let mut settle_at: Option<tokio::time::Instant> = None;

    loop {
        let mut wake = c.next_wakeup();
        if let Some(at) = settle_at {
            wake = wake.min(at.into_std());
        }
        let mut dirty = false;
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            // Without leader election nobody sends: leadership is fixed, the channel closed.
            changed = leader_rx.changed(), if leader_open => {
                if changed.is_err() {
                    leader_open = false;
                    continue;
                }
                let leader = *leader_rx.borrow();
                c.ctx.shared.metrics.leader.set(i64::from(leader));
                dirty = c.observe(Observation::Leader(leader));
            }
            input = inputs.next() => match input {
                Some(input) => match c.handle(input) {
                    Urgency::Now => dirty = true,
                    Urgency::Settle => {
                        let now = tokio::time::Instant::now();
                        settle_at.get_or_insert(last_reconcile.map_or(now, |at| (at + SETTLE).max(now)));
                    }
                    Urgency::None => {}
                },
                None => break,
            },
            changed = async { mirrors.as_mut()?.changed().await.ok() }, if mirrors.is_some() => {
                match (changed, mirrors.as_ref()) {
                    (Some(()), Some(rx)) => {
                        let names = rx.borrow().clone();
                        dirty |= c.observe(Observation::PullSecrets(names));
                    }
                    _ => mirrors = None,
                }
            }
            changed = async { registry.as_mut()?.changed().await.ok() }, if registry.is_some() => {
                match (changed, registry.as_ref()) {
                    (Some(()), Some(rx)) => {
                        let answers = rx.borrow().clone();
                        dirty |= c.observe(Observation::Registry(answers));
                    }
                    _ => registry = None,
                }
            }
            changed = async { access.as_mut()?.changed().await.ok() }, if access.is_some() => {
                match (changed, access.as_ref()) {
                    (Some(()), Some(rx)) => {
                        let answers = rx.borrow().clone();
                        dirty |= c.observe(Observation::Access(answers));
                    }
                    _ => access = None,
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => dirty = true,
        }
        if dirty {
            // Leading edge: what is queued already goes along; then act, unless the last
            // reconcile was less than a window ago: then take what arrives until the window ends.
            for _ in 0..QUEUED_MAX {
                let Some(Some(input)) = inputs.next().now_or_never() else { break };
                c.handle(input);
            }
            if let Some(window_end) = last_reconcile.map(|at| at + COALESCE) {
                let window = tokio::time::sleep_until(window_end);
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        _ = &mut window => break,
                        input = inputs.next() => match input {
                            Some(input) => { c.handle(input); }
                            None => break,
                        },
                    }
                }
            }
            c.reconcile().await;
            last_reconcile = Some(tokio::time::Instant::now());
            settle_at = None;
        }
    }
    tracing::info!("Stopped; the DaemonSet stays in place");
    Ok(())
}

/// Facts needed before the first render: OpenShift or not, and the owner Deployment.
/// Retries until they are known or shutdown is asked.
async fn discover(
    ctx: &Context,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(bool, Option<OwnerReference>)> {
    let mut delay = Duration::from_millis(500);
    loop {
        match discover_once(ctx).await {
            Ok(found) => return Some(found),
            Err(e) => {
                tracing::warn!(error = %e, category = e.category(), "Cannot reach the API server yet; retrying");
                ctx.shared
                    .metrics
                    .reconcile_errors
                    .get_or_create(&CategoryLabel { category: e.category() })
                    .inc();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn discover_once(ctx: &Context) -> Result<(bool, Option<OwnerReference>)> {
    let groups = with_timeout(API_TIMEOUT, ctx.client.list_api_groups()).await?;
    let openshift = groups.groups.iter().any(|g| g.name == "route.openshift.io");
    let owner = match &ctx.config.deployment_name {
        None => None,
        Some(name) => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
            match with_timeout(API_TIMEOUT, api.get_opt(name)).await {
                Ok(Some(d)) => d.controller_owner_ref(&()).map(|mut o| {
                    // Owned, not controlled: the Deployment controller must not adopt the DaemonSet.
                    o.controller = None;
                    o.block_owner_deletion = None;
                    o
                }),
                Ok(None) => {
                    tracing::warn!(deployment = %name, namespace = %ctx.config.namespace,
                        "DEPLOYMENT_NAME names no Deployment; the DaemonSet gets no owner");
                    None
                }
                Err(e) if e.api_code() == Some(403) => {
                    tracing::warn!(deployment = %name, error = %e,
                        "Not allowed to read the manager's Deployment; the DaemonSet gets no owner");
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok((openshift, owner))
}

impl Controller {
    fn config(&self) -> &Config {
        &self.ctx.config
    }

    fn observe(&mut self, observation: Observation) -> bool {
        let config = self.ctx.config.clone();
        self.state.observe(&config, observation, SystemTime::now())
    }

    /// Takes one watch event in. Returns how soon a reconcile is needed.
    fn handle(&mut self, input: Input) -> Urgency {
        let observation = match input {
            Input::DaemonSet(event) => self.ds_listing.fold(event, |ds| ds).map(Observation::DaemonSet),
            Input::Pod(event) => {
                let summarize = |pod: LeanPod| {
                    let pod = pod.into_pod();
                    (pod.name_any(), pod_holders(&pod))
                };
                self.pod_listing.fold(event, summarize).map(Observation::Pods)
            }
            Input::Deployment(i, event) => {
                let watch = &self.ctx.config.watch;
                let summarize = |d: LeanDeployment| {
                    let d = d.into_deployment();
                    ((d.namespace().unwrap_or_default(), d.name_any()), summarize_deployment(&d, watch))
                };
                self.deployment_listings[i]
                    .fold(event, summarize)
                    .map(|seen| Observation::Deployments(i, seen))
            }
            Input::Node(event) => {
                let config = &self.ctx.config;
                let gate = config.node_gate.as_ref().map(|g| &g.taint);
                let now = SystemTime::now();
                let affinity = gate.map(|_| config.holder_affinity());
                self.node_listing
                    .fold(event, |node| {
                        let gated = gate.and_then(|g| {
                            gated_node(&node, g, &config.node_selector, affinity.as_ref(), now)
                        });
                        let labels = config.rollout_gate.is_some().then(|| node.labels().clone());
                        (node.name_any(), NodeSeen { gated, labels })
                    })
                    .map(Observation::Nodes)
            }
            Input::Namespace(event) => {
                self.namespace_listing.fold(event, |n| n.name_any()).map(Observation::Namespaces)
            }
            Input::PendingPod(event) => {
                let watch = &self.ctx.config.watch;
                let now = SystemTime::now();
                self.pending_listing
                    .fold(event, |pod| {
                        ((pod.namespace().unwrap_or_default(), pod.name_any()), gated_pod(&pod, watch, now))
                    })
                    .map(Observation::GatedPods)
            }
            // Kubelet events only feed metrics: their listing never holds a decision back.
            Input::Pulled(event) => match event {
                // Events listed at start happened before this manager; only count new pulls.
                Event::Apply(e) => {
                    self.record_pull(&e);
                    None
                }
                _ => None,
            },
            Input::WatchError(watch, error) => {
                self.ctx.shared.metrics.watch_errors.get_or_create(&WatchLabel { watch }).inc();
                let forbidden = matches!(&error, watcher::Error::InitialListFailed(kube::Error::Api(s))
                    | watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 403);
                if watch == "deployments" && forbidden {
                    Some(Observation::DeploymentsForbidden(error.to_string()))
                } else if watch == "nodes" && forbidden {
                    Some(Observation::NodesForbidden(error.to_string()))
                } else if watch == "namespaces" && forbidden {
                    Some(Observation::NamespacesForbidden(error.to_string()))
                } else if watch == "pending_pods" && forbidden {
                    Some(Observation::PendingPodsForbidden(error.to_string()))
                } else {
                    tracing::warn!(watch, error = %error, "Watch failed; retrying with backoff");
                    None
                }
            }
        };
        let urgency = match observation {
            Some(o) => {
                let urgency = self.state.urgency(&o);
                if self.observe(o) { urgency } else { Urgency::None }
            }
            None => Urgency::None,
        };
        self.ctx.shared.metrics.watched_deployments.set(self.state.deployments().len() as i64);
        self.announce();
        urgency
    }

    fn record_pull(&self, event: &CoreEvent) {
        let prefix = format!("{}-", self.config().daemonset_name);
        if !event.involved_object.name.as_deref().is_some_and(|n| n.starts_with(&prefix)) {
            return;
        }
        let Some(message) = event.message.as_deref() else { return };
        if let Some((duration, size)) = parse_pulled_message(message) {
            let m = &self.ctx.shared.metrics;
            m.pull_duration.observe(duration.as_secs_f64());
            if let Some(size) = size {
                m.image_size.observe(size as f64);
            }
            m.pulls.get_or_create(&StatusLabel { status: "success" }).inc();
            tracing::debug!(pod = ?event.involved_object.name, seconds = duration.as_secs_f64(), bytes = ?size, "Image pulled");
        }
    }

    fn next_wakeup(&self) -> Instant {
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let wake = self.state.next_wakeup(self.config(), now_sys);
        let mut next = now + wake.duration_since(now_sys).unwrap_or_default();
        if let Some(t) = self.retry_at {
            next = next.min(t);
        }
        next.max(now + Duration::from_millis(10))
    }

    #[tracing::instrument(skip(self), fields(leader = self.state.leader()))]
    async fn reconcile(&mut self) {
        if !self.state.synced() {
            return;
        }
        if !self.ctx.shared.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(
                deployments = self.state.deployments().len(),
                pods = self.state.pods(),
                gated_nodes = self.state.gated().len(),
                gated_pods = self.state.gated_pods().len(),
                "Every watch synced"
            );
        }
        let started = Instant::now();
        let metrics = &self.ctx.shared.metrics;
        metrics.reconciles.inc();
        match self.reconcile_inner().await {
            Ok(()) => {
                self.retry_at = None;
                self.retry_delay = Duration::from_millis(500);
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                self.ctx.shared.metrics.last_sync.set(now.as_secs_f64());
            }
            Err(e) => {
                self.ctx
                    .shared
                    .metrics
                    .reconcile_errors
                    .get_or_create(&CategoryLabel { category: e.category() })
                    .inc();
                tracing::warn!(error = %e, category = e.category(), retry_in = ?self.retry_delay, "Reconcile failed");
                self.retry_at = Some(Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(Duration::from_secs(60));
            }
        }
        self.ctx.shared.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    }

    async fn reconcile_inner(&mut self) -> Result<()> {
        let config = self.ctx.config.clone();
        if self.state.resync_due(SystemTime::now()) {
            let live = with_timeout(API_TIMEOUT, self.ds_api.get_opt(&config.daemonset_name)).await?;
            self.observe(Observation::Resynced(live));
        }
        // The leader tells the pull-secret task what the Deployments want now (it never waits).
        if let Some(wanted) = &self.secrets_wanted
            && self.state.leader()
        {
            let now_wanted = self.state.pull_secrets_wanted();
            wanted.send_if_modified(|old| {
                let changed = old.as_ref() != Some(&now_wanted);
                *old = Some(now_wanted);
                changed
            });
        }
        let decision = self.state.decide(&config, SystemTime::now());
        self.update_gauges(&decision.gauges);
        self.announce();
        // The leader tells the digest-check task which tags it warms now (it never waits).
        if let Some(wanted) = &self.digests_wanted
            && self.state.leader()
        {
            let now_wanted = self.state.digest_wanted(&config);
            wanted.send_if_modified(|old| {
                let changed = old.as_ref() != Some(&now_wanted);
                *old = Some(now_wanted);
                changed
            });
        }
        // ... and the access-check task which images to check with their own credentials.
        if let Some(wanted) = &self.access_wanted
            && self.state.leader()
        {
            let now_wanted = self.state.access_wanted();
            wanted.send_if_modified(|old| {
                let changed = old.as_ref() != Some(now_wanted);
                *old = Some(now_wanted.clone());
                changed
            });
        }
        if let Some(queue) = &self.releases {
            for release in decision.releases {
                // The task ends only with the process.
                let _ = queue.send(release);
            }
        }
        if let Some(view) = &self.ctx.warm_view {
            let now_view = self.state.warm_view();
            view.send_if_modified(|old| {
                let changed = old.as_ref() != now_view;
                if changed {
                    *old = Arc::new(now_view.clone());
                }
                changed
            });
        }
        if let Some(queue) = &self.pod_releases {
            for release in decision.pod_releases {
                let _ = queue.send(release);
            }
        }
        if let Some(desired) = decision.apply {
            self.apply(&desired).await?;
        }
        match decision.conditions {
            Some(conditions) => self.write_conditions(conditions).await,
            None => Ok(()),
        }
    }

    /// Writes kwarm's conditions on the DaemonSet's status (server-side apply: the DaemonSet
    /// controller's own status fields stay its own). Without the right to, kwarm says so once.
    async fn write_conditions(&mut self, conditions: Vec<DaemonSetCondition>) -> Result<()> {
        if !self.fence.may_write(Instant::now()) {
            return Ok(());
        }
        let name = self.config().daemonset_name.clone();
        let patch = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name},
            "status": {"conditions": conditions},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match with_timeout(API_TIMEOUT, self.ds_api.patch_status(&name, &params, &Patch::Apply(&patch))).await
        {
            Ok(mut written) => {
                written.metadata.managed_fields = None;
                tracing::debug!(daemonset = %name, "Wrote the DaemonSet's conditions");
                self.observe(Observation::ConditionsWritten(written));
                Ok(())
            }
            Err(e) if e.category() == "forbidden" => {
                self.observe(Observation::ConditionsForbidden(e.to_string()));
                self.announce();
                Ok(())
            }
            // Deleted meanwhile: the watch brings it back and the next decision writes again.
            Err(e) if e.api_code() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn apply(&mut self, desired: &DaemonSet) -> Result<()> {
        if !self.fence.may_write(Instant::now()) {
            tracing::warn!("Not writing the DaemonSet: the lease could not be renewed in time");
            return Ok(());
        }
        let name = &self.config().daemonset_name;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let created = self.state.live().is_none();
        let result =
            with_timeout(API_TIMEOUT, self.ds_api.patch(name, &params, &Patch::Apply(desired))).await;
        let status = match &result {
            Ok(_) => "success",
            Err(Error::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        self.ctx.shared.metrics.applies.get_or_create(&StatusLabel { status }).inc();
        let mut applied = result?;
        applied.metadata.managed_fields = None;
        let holders = held_images(&applied).len();
        tracing::info!(daemonset = %name, holders, created, "Applied the DaemonSet");
        self.observe(Observation::Applied(applied));
        self.announce();
        Ok(())
    }

    fn update_gauges(&self, g: &Gauges) {
        let m = &self.ctx.shared.metrics;
        for (state, value) in [
            ("warm", g.warm),
            ("pulling", g.pulling),
            ("failed", g.failed),
            ("quarantined", g.quarantined),
            ("overflow", g.overflow),
            ("over_namespace_limit", g.over_namespace_limit),
            ("denied", g.denied),
        ] {
            m.images.get_or_create(&StateLabel { state }).set(value);
        }
        m.active_pulls.set(g.active_pulls);
        m.gated_nodes.set(g.gated_nodes);
        m.gated_pods.set(g.gated_pods);
        m.stale_images.set(g.stale_images);
    }

    /// Logs what the state has to say and queues its Events (a separate task sends them, so the
    /// loop never waits for Event writes).
    fn announce(&mut self) {
        let config = self.ctx.config.clone();
        for notice in self.state.take_notices() {
            match notice {
                Notice::DaemonSetDeleted => {
                    tracing::info!(daemonset = %config.daemonset_name, "DaemonSet deleted; restoring it");
                }
                Notice::DeploymentsForbidden { error } => tracing::error!(%error,
                    "Not allowed to list/watch Deployments (RBAC); warming only IMAGES. \
                     Grant list/watch on deployments.apps or set WATCH_DEPLOYMENTS=false"),
                Notice::NodesForbidden { error } => tracing::error!(%error,
                    "Not allowed to list/watch Nodes (RBAC): the node gate cannot open any node. \
                     Grant get/list/watch/patch on nodes (the chart does with configMap.nodeGateTaint) or unset NODE_GATE_TAINT"),
                Notice::PendingPodsForbidden { error } => tracing::error!(%error,
                    "Not allowed to list/watch pods in every namespace (RBAC): the rollout gate cannot release pods. \
                     Grant list/watch/patch on pods (the chart does with rolloutGate.enabled) or set ROLLOUT_GATE=false"),
                Notice::NamespacesForbidden { error } => tracing::error!(%error,
                    "Not allowed to list/watch namespaces (RBAC): with NAMESPACE_SELECTOR no namespace opts in, \
                     only IMAGES are warmed. Grant list/watch on namespaces (the chart does with configMap.namespaceSelector)"),
                Notice::StateUnreadable { error } => {
                    tracing::warn!(%error, "Ignoring unreadable kwarm.io/state annotation");
                }
                Notice::ConditionsForbidden { error } => tracing::warn!(%error,
                    "Not allowed to write the DaemonSet's status (RBAC): its Warm/Progressing/Degraded \
                     conditions stay unwritten. Grant patch on daemonsets/status"),
                Notice::PullsFailed(n) => {
                    self.ctx.shared.metrics.pulls.get_or_create(&StatusLabel { status: "failed" }).inc_by(n);
                }
                Notice::Quarantined { image, attempt, retry_at, reasons, users } => {
                    let retry = retry_at.map(|t| humantime::format_rfc3339_seconds(t).to_string());
                    tracing::warn!(image = %image, attempt, retry_at = ?retry, %reasons,
                        "Image quarantined: failing on every node; removed from the DaemonSet so the others proceed");
                    let note = match retry {
                        Some(at) => format!(
                            "Image {image} quarantined (failing on every node: {reasons}); retry at {at}"
                        ),
                        None => {
                            format!("Image {image} quarantined for good after repeated failures: {reasons}")
                        }
                    };
                    self.publish(&users, "ImageQuarantined", EventType::Warning, note);
                }
                Notice::RetryingQuarantined { image } => {
                    tracing::info!(image = %image, "Retrying quarantined image");
                    let note = format!("Retrying quarantined image {image}");
                    self.publish(&[], "RetryingQuarantined", EventType::Normal, note);
                }
                Notice::Recovered { image } => {
                    tracing::info!(image = %image, "Quarantined image recovered");
                    let note = format!("Quarantined image {image} recovered: held again");
                    self.publish(&[], "ImageRecovered", EventType::Normal, note);
                }
                Notice::InitFailing { nodes, reason, message } => {
                    tracing::error!(nodes, %reason, %message, kip_image = %config.kip_image,
                        "Init container failing: holders cannot start; check KIP_IMAGE and its pull secrets");
                }
                Notice::Progress { image, warm, nodes, failed, since } => {
                    let since = humantime::format_rfc3339_seconds(since);
                    tracing::info!(image = %image, warm, nodes, failed, %since, "Image warm on {warm}/{nodes} nodes");
                }
                Notice::Warm { image, warm, nodes, seconds, users } => {
                    tracing::info!(image = %image, nodes, seconds = format!("{seconds:.1}"), "Image warm on every node");
                    let note = format!("Image {image} warm on {warm}/{nodes} nodes in {seconds:.1} s");
                    self.publish(&users, "ImageWarm", EventType::Normal, note);
                }
                Notice::WarmingStarted { image, nodes, users } => {
                    let note = format!("Warming image {image} on {nodes} nodes");
                    self.publish(&users, "WarmingStarted", EventType::Normal, note);
                }
                Notice::Overflow { image } => {
                    tracing::error!(image = %image, max_images = config.max_images,
                        "Image not warmed: MAX_IMAGES reached; raise MAX_IMAGES or exclude images");
                    let note = format!(
                        "Image {image} not warmed: MAX_IMAGES={} reached; raise MAX_IMAGES or exclude images",
                        config.max_images
                    );
                    self.publish(&[], "MaxImagesReached", EventType::Warning, note);
                }
                Notice::OverNamespaceLimit { image, users } => {
                    let limit = config.max_images_per_namespace.unwrap_or_default();
                    tracing::warn!(image = %image, max_images_per_namespace = limit,
                        "Image not warmed: its namespace reached MAX_IMAGES_PER_NAMESPACE");
                    let note = format!(
                        "Image {image} not warmed: this namespace's Deployments already have MAX_IMAGES_PER_NAMESPACE={limit} images warmed"
                    );
                    self.publish(&users, "NamespaceImageLimitReached", EventType::Warning, note);
                }
                Notice::AccessDenied { image, message, users } => {
                    tracing::warn!(image = %image, %message,
                        "Image not warmed: the pull secrets of the namespaces that want it cannot read it \
                         (other namespaces' inherited secrets are never lent)");
                    let note = format!(
                        "Image {image} not warmed: the pull secrets of the namespaces that want it (and IMAGE_PULL_SECRETS) cannot read it ({message}); give the Deployment its own imagePullSecrets"
                    );
                    self.publish(&users, "ImageCredentialsMissing", EventType::Warning, note);
                }
                Notice::AccessGranted { image } => {
                    tracing::info!(image = %image, "Image's own pull secrets read it now: warmed");
                    let note = format!("Image {image}: its own pull secrets read it now; warmed");
                    self.publish(&[], "ImageCredentialsFound", EventType::Normal, note);
                }
                Notice::Refreshing => tracing::info!(
                    "Refreshing: rolling holders so images with pull policy Always are pulled again"
                ),
                Notice::NameInUse { why } => {
                    tracing::error!(daemonset = %config.daemonset_name, "{why}");
                    self.queue_event(
                        daemonset_reference(&config),
                        "NameInUse",
                        EventType::Warning,
                        "Apply",
                        why,
                    );
                }
                Notice::NameFree => tracing::info!(daemonset = %config.daemonset_name,
                    "The DaemonSet name is free: creating kwarm's own"),
                Notice::DigestChanged { image, digest, stale, users } => {
                    tracing::info!(image = %image, %digest, stale_nodes = stale,
                        "Tag changed in its registry: rolling the holders so the nodes pull it again");
                    let note =
                        format!("Image {image} changed in its registry ({digest}): updating {stale} nodes");
                    self.publish(&users, "ImageChanged", EventType::Normal, note);
                }
                Notice::ImageUpdated { image, digest, nodes, seconds, users } => {
                    tracing::info!(image = %image, %digest, nodes, seconds = format!("{seconds:.1}"),
                        "Tag updated on every node that holds it");
                    let note =
                        format!("Image {image} updated to {digest} on {nodes} nodes in {seconds:.1} s");
                    self.publish(&users, "ImageUpdated", EventType::Normal, note);
                }
                Notice::StateTrimmed { dropped } => tracing::warn!(
                    dropped,
                    max_bytes = STATE_MAX_BYTES,
                    "kwarm.io/state too large: the images released longest ago are not kept for retention"
                ),
            }
        }
    }

    /// Queues an Event about an image on the DaemonSet, whatever the image's source (IMAGES or
    /// Deployments), and on each of `users` (Deployments; never a write to them). Only a leader
    /// posts.
    fn publish(&self, users: &[DeploymentKey], reason: &str, type_: EventType, note: String) {
        if !self.state.leader() {
            return;
        }
        let config = self.config();
        self.queue_event(daemonset_reference(config), reason, type_, "Warm", note.clone());
        for (namespace, name) in users {
            self.queue_event(deployment_reference(namespace, name), reason, type_, "Warm", note.clone());
        }
    }

    fn queue_event(
        &self,
        reference: ObjectReference,
        reason: &str,
        type_: EventType,
        action: &str,
        note: String,
    ) {
        self.events.queue(reference, reason, type_, action, note);
    }
}

/// A user's Deployment, as the object of an Event.
fn deployment_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// The DaemonSet kwarm manages, as the object of an Event.
fn daemonset_reference(config: &Config) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("DaemonSet".into()),
        namespace: Some(config.namespace.clone()),
        name: Some(config.daemonset_name.clone()),
        ..Default::default()
    }
}

/// Events waiting for [`send_events`]; queuing never waits (a full queue drops the Event).
#[derive(Clone)]
struct EventQueue(tokio::sync::mpsc::Sender<(KwarmEvent, ObjectReference)>);

impl EventQueue {
    fn queue(&self, reference: ObjectReference, reason: &str, type_: EventType, action: &str, note: String) {
        let event = KwarmEvent {
            type_,
            reason: reason.into(),
            note: Some(truncate(&note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if self.0.try_send((event, reference)).is_err() {
            tracing::debug!(reason, "Event queue full; event dropped");
        }
    }
}

/// Sends queued events one after the other until the controller goes away.
async fn send_events(
    recorder: Recorder,
    mut queue: tokio::sync::mpsc::Receiver<(KwarmEvent, ObjectReference)>,
) {
    // Without the right to write Events (a namespace-admin install cannot grant events.k8s.io),
    // kwarm says so once and drops them, instead of one warning per Event.
    let mut forbidden = false;
    while let Some((event, reference)) = queue.recv().await {
        if forbidden {
            continue;
        }
        if let Err(e) = with_timeout(API_TIMEOUT, recorder.publish(&event, &reference)).await {
            let object = format!(
                "{} {}/{}",
                reference.kind.unwrap_or_default(),
                reference.namespace.unwrap_or_default(),
                reference.name.unwrap_or_default()
            );
            if e.category() == "forbidden" {
                forbidden = true;
                tracing::warn!(error = %e, %object, "Events may not be written (RBAC): kwarm goes on without them");
            } else {
                tracing::warn!(error = %e, %object, reason = %event.reason, "Could not publish event");
            }
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
