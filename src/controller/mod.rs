//! The I/O shell: watches the DaemonSet, its pods, labelled Deployments and kubelet `Pulled`
//! events; decides when the desired DaemonSet differs from the live one; applies it.
//!
//! One task owns all state. Watch events arrive on one merged stream; after each burst (a short,
//! fixed window) the state is reconciled once. Timers (refresh, retention, quarantine retries,
//! resync) only wake the same loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event as KwarmEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::config::Config;
use crate::daemonset::{
    REFRESHED_AT_ANNOTATION, RenderInput, STATE_ANNOTATION, daemonset_matches, foreign_daemonset,
    held_images, refresh_would_repull, render_daemonset, selector_labels, selector_string,
};
use crate::error::{Error, Result, with_timeout};
use crate::holder::{derived_holder_name, parse_image_reference};
use crate::http::Shared;
use crate::images::{DeploymentImages, DeploymentKey, ImageTracker, plan_holders, summarize_deployment};
use crate::metrics::{CategoryLabel, StateLabel, StatusLabel, WatchLabel};
use streams::{Input, Listing, Seen, deployment_scopes, watch_streams};

mod streams;

use crate::status::{
    ImageStatus, PersistedState, PodHolders, Quarantine, QuarantinePolicy, STATE_MAX_BYTES, image_statuses,
    parse_pulled_message, pod_holders,
};

/// The one field manager kwarm applies with.
pub const FIELD_MANAGER: &str = "kwarm.io/manager";
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Events arriving within this window after the first are applied together.
const COALESCE: Duration = Duration::from_millis(50);
/// Safety net: re-read the DaemonSet from the API server this often, even if the watch is quiet.
const RESYNC: Duration = Duration::from_secs(300);
/// Inherited pull secrets are re-read from their source this often.
const SECRET_SYNC: Duration = Duration::from_secs(60);
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);
/// At most this many Deployments get an Event about one image change.
const EVENT_FANOUT: usize = 20;
/// Events waiting to be sent; more are dropped (and logged at debug level).
const EVENT_QUEUE: usize = 4096;

/// Long-lived handles the controller needs.
pub struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub identity: String,
}

/// An image being rolled out, for progress logs and the "warm" event.
struct Warming {
    since: SystemTime,
    started: Instant,
    last_logged: Option<(usize, Instant)>,
}

struct Controller {
    ctx: Context,
    ds_api: Api<DaemonSet>,
    /// Events for user Deployments, sent by [`send_events`].
    events: tokio::sync::mpsc::Sender<(KwarmEvent, ObjectReference)>,
    leader: bool,
    openshift: bool,
    owner: Option<OwnerReference>,

    live: Option<DaemonSet>,
    ds_listing: Listing<DaemonSet>,

    pods: BTreeMap<String, PodHolders>,
    pod_listing: Listing<(String, Option<PodHolders>)>,

    tracker: ImageTracker,
    deployment_scopes: Vec<Option<String>>,
    deployment_listings: Vec<Listing<(DeploymentKey, Option<DeploymentImages>)>>,
    deployments_forbidden_reported: bool,
    pulled_synced: bool,

    quarantine: Quarantine,
    refreshed_at: Option<String>,
    next_refresh: SystemTime,
    warming: BTreeMap<String, Warming>,
    /// Images in the last DaemonSet kwarm applied or found, to see which ones are new.
    applied_images: Option<BTreeSet<String>>,
    overflow_reported: BTreeSet<String>,
    init_failure_reported: bool,
    /// Whether trimming the state annotation to its budget was reported (until it fits again).
    state_trimmed_reported: bool,
    /// UID of a foreign DaemonSet holding kwarm's name, once reported.
    name_in_use_reported: Option<String>,

    mirrored_secrets: BTreeMap<String, String>,
    next_secret_sync: Instant,
    next_resync: Instant,
    retry_at: Option<Instant>,
    retry_delay: Duration,
}

/// Runs the manager until `shutdown` turns true.
pub async fn run(
    ctx: Context,
    mut leader_rx: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let config = ctx.config.clone();
    let Some((openshift, owner)) = discover(&ctx, &mut shutdown).await else {
        return Ok(());
    };
    let mut inputs = watch_streams(&ctx.client, &config);
    let deployment_scopes = deployment_scopes(&config);
    let reporter = Reporter { controller: "kwarm".into(), instance: Some(ctx.identity.clone()) };
    let mut c = Controller {
        ds_api: Api::namespaced(ctx.client.clone(), &config.namespace),
        events: {
            let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
            tokio::spawn(send_events(Recorder::new(ctx.client.clone(), reporter), rx));
            tx
        },
        leader: *leader_rx.borrow(),
        openshift,
        owner,
        live: None,
        ds_listing: Listing::default(),
        pods: BTreeMap::new(),
        pod_listing: Listing::default(),
        tracker: ImageTracker::default(),
        deployment_listings: deployment_scopes.iter().map(|_| Listing::default()).collect(),
        deployment_scopes,
        deployments_forbidden_reported: false,
        pulled_synced: false,
        quarantine: Quarantine::default(),
        refreshed_at: None,
        next_refresh: SystemTime::now() + config.caching_interval,
        warming: BTreeMap::new(),
        applied_images: None,
        overflow_reported: BTreeSet::new(),
        init_failure_reported: false,
        name_in_use_reported: None,
        state_trimmed_reported: false,
        mirrored_secrets: BTreeMap::new(),
        next_secret_sync: Instant::now(),
        next_resync: Instant::now() + RESYNC,
        retry_at: None,
        retry_delay: Duration::from_millis(500),
        ctx,
    };
    c.ctx.shared.metrics.leader.set(i64::from(c.leader));
    let mut leader_open = true;

    loop {
        let wake = c.next_wakeup();
        let mut dirty = false;
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            // Without leader election nobody sends: leadership is fixed, the channel closed.
            changed = leader_rx.changed(), if leader_open => {
                if changed.is_err() {
                    leader_open = false;
                    continue;
                }
                c.leader = *leader_rx.borrow();
                c.ctx.shared.metrics.leader.set(i64::from(c.leader));
                dirty = true;
            }
            input = inputs.next() => match input {
                Some(input) => dirty |= c.handle(input),
                None => break,
            },
            _ = tokio::time::sleep_until(wake.into()) => dirty = true,
        }
        if dirty {
            // Coalesce a burst: take whatever else arrives within a short window, then act once.
            let window = tokio::time::sleep(COALESCE);
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
            c.reconcile().await;
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

    fn synced(&self) -> bool {
        self.ds_listing.synced
            && self.pod_listing.synced
            && self.pulled_synced
            && self.deployment_listings.iter().all(|l| l.synced)
    }

    /// Applies one watch event to the state. Returns whether a reconcile is needed.
    fn handle(&mut self, input: Input) -> bool {
        let now = SystemTime::now();
        match input {
            Input::DaemonSet(event) => {
                match self.ds_listing.fold(event, |ds| ds) {
                    None => return false,
                    Some(Seen::Listed(listed)) => {
                        self.live = listed.into_iter().next();
                        self.adopt_state();
                    }
                    Some(Seen::Applied(ds)) => {
                        self.live = Some(ds);
                        if !self.leader {
                            self.adopt_state();
                        }
                    }
                    Some(Seen::Deleted(_)) => {
                        tracing::info!(daemonset = %self.config().daemonset_name, "DaemonSet deleted; restoring it");
                        self.live = None;
                    }
                }
                true
            }
            Input::Pod(event) => {
                match self.pod_listing.fold(event, |pod| (pod.name_any(), pod_holders(&pod))) {
                    None => return false,
                    Some(Seen::Listed(listed)) => {
                        self.pods = listed.into_iter().filter_map(|(name, h)| h.map(|h| (name, h))).collect();
                    }
                    Some(Seen::Applied((name, Some(h)))) => {
                        self.note_failure_transitions(self.pods.get(&name), &h);
                        self.pods.insert(name, h);
                    }
                    Some(Seen::Applied((name, None)) | Seen::Deleted((name, _))) => {
                        self.pods.remove(&name);
                    }
                }
                true
            }
            Input::Deployment(i, event) => self.handle_deployment(i, event, now),
            Input::Pulled(event) => {
                match event {
                    // The last watch to sync may be this one: reconcile then.
                    Event::InitDone => {
                        self.pulled_synced = true;
                        true
                    }
                    // Events listed at start happened before this manager; only count new pulls.
                    Event::Apply(e) => {
                        self.record_pull(&e);
                        false
                    }
                    _ => false,
                }
            }
            Input::WatchError(watch, error) => {
                self.ctx.shared.metrics.watch_errors.get_or_create(&WatchLabel { watch }).inc();
                let forbidden = matches!(&error, watcher::Error::InitialListFailed(kube::Error::Api(s))
                    | watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 403);
                if watch == "deployments" && forbidden {
                    if !self.deployments_forbidden_reported {
                        self.deployments_forbidden_reported = true;
                        tracing::error!(error = %error,
                            "Not allowed to list/watch Deployments (RBAC); warming only IMAGES. \
                             Grant list/watch on deployments.apps or set WATCH_DEPLOYMENTS=false");
                    }
                    // Go on with IMAGES: treat the Deployment watch as synced and empty.
                    for listing in &mut self.deployment_listings {
                        listing.synced = true;
                    }
                    return true;
                }
                tracing::warn!(watch, error = %error, "Watch failed; retrying with backoff");
                false
            }
        }
    }

    fn handle_deployment(&mut self, i: usize, event: Event<Deployment>, now: SystemTime) -> bool {
        let watch = &self.ctx.config.watch;
        let summarize = |d: Deployment| {
            ((d.namespace().unwrap_or_default(), d.name_any()), summarize_deployment(&d, watch))
        };
        let changed = match self.deployment_listings[i].fold(event, summarize) {
            None => false,
            Some(Seen::Listed(listed)) => {
                // This stream's scope is replaced; what other streams (namespaces) listed stays.
                let scope = self.deployment_scopes[i].clone();
                let mut all: BTreeMap<DeploymentKey, DeploymentImages> = self
                    .tracker
                    .deployments()
                    .iter()
                    .filter(|((ns, _), _)| scope.as_ref().is_some_and(|s| s != ns))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                all.extend(listed.into_iter().filter_map(|(key, summary)| summary.map(|s| (key, s))));
                self.tracker.replace_all(all, now);
                true
            }
            Some(Seen::Applied((key, Some(summary)))) => self.tracker.upsert(key, summary, now),
            Some(Seen::Applied((key, None)) | Seen::Deleted((key, _))) => self.tracker.remove(&key, now),
        };
        self.ctx.shared.metrics.watched_deployments.set(self.tracker.deployments().len() as i64);
        changed
    }

    /// Counts pulls that just failed (a holder entering a failure state on a node).
    fn note_failure_transitions(&self, before: Option<&PodHolders>, after: &PodHolders) {
        use crate::status::HolderState;
        for (image, state) in &after.images {
            let was_failed =
                matches!(before.and_then(|b| b.images.get(image)), Some(HolderState::Failed { .. }));
            if matches!(state, HolderState::Failed { .. }) && !was_failed {
                self.ctx.shared.metrics.pulls.get_or_create(&StatusLabel { status: "failed" }).inc();
            }
        }
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

    /// Takes over the state the leader keeps on the DaemonSet (retained and quarantined images,
    /// last refresh): at start, so a restart renders the same DaemonSet and changes nothing, and
    /// on every change while following, so a takeover continues where the last leader stopped.
    fn adopt_state(&mut self) {
        let Some(live) = &self.live else { return };
        if let Some(state) = live.annotations().get(STATE_ANNOTATION) {
            match serde_json::from_str::<PersistedState>(state) {
                Ok(state) => {
                    self.tracker.restore_released(state.retained_times(SystemTime::now()));
                    self.quarantine = Quarantine::restore(state.quarantined);
                }
                Err(e) => tracing::warn!(error = %e, "Ignoring unreadable kwarm.io/state annotation"),
            }
        }
        let template_annotations = live
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref());
        if let Some(at) = template_annotations.and_then(|a| a.get(REFRESHED_AT_ANNOTATION)) {
            self.refreshed_at = Some(at.clone());
            // Never refresh because of a restart: the next refresh is at least one interval away.
            let last = humantime::parse_rfc3339(at).unwrap_or_else(|_| SystemTime::now());
            let due = last + self.config().caching_interval;
            self.next_refresh = due.max(SystemTime::now() + Duration::from_secs(60));
        }
        self.applied_images = Some(held_images(live));
    }

    fn next_wakeup(&self) -> Instant {
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let from_sys = |t: SystemTime| now + t.duration_since(now_sys).unwrap_or_default();
        let policy = self.quarantine_policy();
        let mut next = self.next_resync.min(from_sys(self.next_refresh));
        if let Some(t) = self.tracker.next_expiry(self.config().image_retention) {
            next = next.min(from_sys(t));
        }
        if let Some(t) = self.quarantine.next_deadline(policy) {
            next = next.min(from_sys(t));
        }
        if let Some(t) = self.retry_at {
            next = next.min(t);
        }
        if self.config().watch.inherit_pull_secrets && self.leader {
            next = next.min(self.next_secret_sync);
        }
        if !self.warming.is_empty() {
            next = next.min(now + PROGRESS_LOG_EVERY);
        }
        next.max(now + Duration::from_millis(10))
    }

    fn quarantine_policy(&self) -> QuarantinePolicy {
        QuarantinePolicy {
            timeout: self.config().pull_timeout,
            backoff: self.config().retry_backoff,
            max_retries: self.config().max_retries,
        }
    }

    #[tracing::instrument(skip(self), fields(leader = self.leader))]
    async fn reconcile(&mut self) {
        if !self.synced() {
            return;
        }
        if !self.ctx.shared.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(
                deployments = self.tracker.deployments().len(),
                pods = self.pods.len(),
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
        let now = SystemTime::now();
        let config = self.ctx.config.clone();
        if Instant::now() >= self.next_resync {
            self.next_resync = Instant::now() + RESYNC;
            self.live = with_timeout(API_TIMEOUT, self.ds_api.get_opt(&config.daemonset_name)).await?;
        }
        self.tracker.expire(now, config.image_retention);

        // Status of what the DaemonSet holds now, and what that means for quarantine.
        let live_images: Vec<String> =
            self.live.as_ref().map(held_images).unwrap_or_default().into_iter().collect();
        let generation = self.live.as_ref().and_then(|d| d.metadata.generation);
        let statuses = image_statuses(self.pods.values(), generation, &live_images);
        let mut wanted: BTreeSet<String> = self.tracker.wanted();
        wanted.extend(config.images.iter().filter_map(|h| parse_image_reference(&h.image).ok()));
        self.quarantine.retain_images(&wanted);
        if self.leader {
            let changes = self.quarantine.step(&statuses, self.quarantine_policy(), now);
            self.report_quarantine(&changes, &statuses).await;
        }
        self.report_init_failures();
        self.report_progress(&statuses).await;
        self.update_image_metrics(&statuses);

        let plan = plan_holders(
            &config.images,
            &self.tracker.wanted(),
            &self.quarantine.excluded(),
            config.max_images,
        );
        self.report_overflow(&plan.overflow);

        if now >= self.next_refresh {
            self.next_refresh = now + config.caching_interval;
            if refresh_would_repull(&config, &plan.holders) {
                self.refreshed_at = Some(humantime::format_rfc3339_seconds(now).to_string());
                tracing::info!(
                    "Refreshing: rolling holders so images with pull policy Always are pulled again"
                );
            }
        }

        if !self.leader {
            return Ok(());
        }
        let extra_pull_secrets = self.sync_pull_secrets().await?;
        let state = PersistedState::new(self.tracker.released(), &self.quarantine);
        let state = (!state.is_empty()).then(|| {
            let (text, dropped) = state.encode_bounded(STATE_MAX_BYTES);
            if dropped > 0 && !self.state_trimmed_reported {
                tracing::warn!(
                    dropped,
                    max_bytes = STATE_MAX_BYTES,
                    "kwarm.io/state too large: the images released longest ago are not kept for retention"
                );
            }
            self.state_trimmed_reported = dropped > 0;
            text
        });
        let input = RenderInput {
            holders: plan.holders,
            extra_pull_secrets,
            openshift: self.openshift,
            owner: self.owner.clone(),
            refreshed_at: self.refreshed_at.clone(),
            state,
        };
        let desired = render_daemonset(&config, &input);
        if let Some(live) = &self.live
            && let Some(why) = foreign_daemonset(&desired, live)
        {
            self.report_name_in_use(why);
            return Ok(());
        }
        if self.name_in_use_reported.take().is_some() {
            tracing::info!(daemonset = %config.daemonset_name, "The DaemonSet name is free: creating kwarm's own");
        }
        if self.live.as_ref().is_some_and(|live| daemonset_matches(&desired, live)) {
            return Ok(());
        }
        self.apply(&desired).await
    }

    async fn apply(&mut self, desired: &DaemonSet) -> Result<()> {
        let name = &self.config().daemonset_name;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let created = self.live.is_none();
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
        let images = held_images(&applied);
        let holders = images.len();
        tracing::info!(daemonset = %name, holders, created, "Applied the DaemonSet");
        self.live = Some(applied);
        let before = self.applied_images.replace(images.clone()).unwrap_or_default();
        for image in images.difference(&before) {
            self.warming.insert(
                image.clone(),
                Warming { since: SystemTime::now(), started: Instant::now(), last_logged: None },
            );
            let nodes = self.pods.values().map(|p| p.node.as_str()).collect::<BTreeSet<_>>().len();
            let note = format!("Warming image {image} on {nodes} nodes");
            self.publish_to_users(image, "WarmingStarted", EventType::Normal, note);
        }
        self.warming.retain(|image, _| images.contains(image));
        Ok(())
    }

    /// Progress lines for long warm-ups and the "warm on m/m nodes" event when one completes.
    async fn report_progress(&mut self, statuses: &[ImageStatus]) {
        let mut done = Vec::new();
        for s in statuses {
            let Some(w) = self.warming.get_mut(&s.image) else { continue };
            if s.warm_everywhere() {
                let secs = w.started.elapsed().as_secs_f64();
                tracing::info!(image = %s.image, nodes = s.nodes, seconds = format!("{secs:.1}"), "Image warm on every node");
                done.push((
                    s.image.clone(),
                    format!("Image {} warm on {}/{} nodes in {secs:.1} s", s.image, s.warm, s.nodes),
                ));
                continue;
            }
            let due =
                w.last_logged.is_none_or(|(warm, at)| warm != s.warm && at.elapsed() >= PROGRESS_LOG_EVERY);
            if due && w.started.elapsed() >= PROGRESS_LOG_EVERY {
                w.last_logged = Some((s.warm, Instant::now()));
                let since = humantime::format_rfc3339_seconds(w.since);
                tracing::info!(image = %s.image, warm = s.warm, nodes = s.nodes, failed = s.failed, %since,
                    "Image warm on {}/{} nodes", s.warm, s.nodes);
            }
        }
        for (image, note) in done {
            self.warming.remove(&image);
            if self.leader {
                self.publish_to_users(&image, "ImageWarm", EventType::Normal, note);
            }
        }
    }

    async fn report_quarantine(
        &mut self,
        changes: &crate::status::QuarantineChanges,
        statuses: &[ImageStatus],
    ) {
        for image in &changes.quarantined {
            let reasons = statuses
                .iter()
                .find(|s| &s.image == image)
                .map(|s| s.messages.iter().map(|(r, m)| format!("{r}: {m}")).collect::<Vec<_>>().join("; "))
                .unwrap_or_default();
            let entry = self.quarantine.entries().get(image);
            let retry =
                entry.and_then(|e| e.retry_at).map(|t| humantime::format_rfc3339_seconds(t).to_string());
            tracing::warn!(image = %image, attempt = entry.map(|e| e.attempt), retry_at = ?retry, %reasons,
                "Image quarantined: failing on every node; removed from the DaemonSet so the others proceed");
            let note = match retry {
                Some(at) => {
                    format!("Image {image} quarantined (failing on every node: {reasons}); retry at {at}")
                }
                None => format!("Image {image} quarantined for good after repeated failures: {reasons}"),
            };
            self.publish_to_users(image, "ImageQuarantined", EventType::Warning, note);
        }
        for image in &changes.released_for_retry {
            tracing::info!(image = %image, "Retrying quarantined image");
        }
        for image in &changes.recovered {
            tracing::info!(image = %image, "Quarantined image recovered");
        }
    }

    /// A DaemonSet of kwarm's name that kwarm may not change: said once per object (log and an
    /// Event on it), then kwarm waits for the name to become free (the DaemonSet watch sees it).
    fn report_name_in_use(&mut self, why: String) {
        let uid = self.live.as_ref().and_then(|l| l.metadata.uid.clone()).unwrap_or_default();
        if self.name_in_use_reported.as_deref() == Some(uid.as_str()) {
            return;
        }
        self.name_in_use_reported = Some(uid);
        tracing::error!(daemonset = %self.config().daemonset_name, "{why}");
        let reference = ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("DaemonSet".into()),
            namespace: Some(self.config().namespace.clone()),
            name: Some(self.config().daemonset_name.clone()),
            ..Default::default()
        };
        let event = KwarmEvent {
            type_: EventType::Warning,
            reason: "NameInUse".into(),
            note: Some(truncate(&why, 1000)),
            action: "Apply".into(),
            secondary: None,
        };
        if self.events.try_send((event, reference)).is_err() {
            tracing::debug!("Event queue full; event dropped");
        }
    }

    /// A failing init container (bad `KIP_IMAGE`) keeps every holder from starting: say so once.
    fn report_init_failures(&mut self) {
        let failing: Vec<&(String, String)> =
            self.pods.values().filter_map(|p| p.init_failure.as_ref()).collect();
        match failing.first() {
            Some((reason, message)) if !self.init_failure_reported => {
                self.init_failure_reported = true;
                tracing::error!(nodes = failing.len(), %reason, %message, kip_image = %self.config().kip_image,
                    "Init container failing: holders cannot start; check KIP_IMAGE and its pull secrets");
            }
            None => self.init_failure_reported = false,
            _ => {}
        }
    }

    fn report_overflow(&mut self, overflow: &[String]) {
        let set: BTreeSet<String> = overflow.iter().cloned().collect();
        for image in set.difference(&self.overflow_reported) {
            tracing::error!(image = %image, max_images = self.config().max_images,
                "Image not warmed: MAX_IMAGES reached; raise MAX_IMAGES or exclude images");
        }
        self.overflow_reported = set;
        self.ctx
            .shared
            .metrics
            .images
            .get_or_create(&StateLabel { state: "overflow" })
            .set(overflow.len() as i64);
    }

    fn update_image_metrics(&self, statuses: &[ImageStatus]) {
        let m = &self.ctx.shared.metrics;
        let (mut warm, mut pulling, mut failed, mut active) = (0, 0, 0, 0);
        for s in statuses {
            active += s.pulling;
            if s.warm_everywhere() {
                warm += 1;
            } else if s.failed > 0 {
                failed += 1;
            } else {
                pulling += 1;
            }
        }
        m.images.get_or_create(&StateLabel { state: "warm" }).set(warm);
        m.images.get_or_create(&StateLabel { state: "pulling" }).set(pulling);
        m.images.get_or_create(&StateLabel { state: "failed" }).set(failed);
        m.images
            .get_or_create(&StateLabel { state: "quarantined" })
            .set(self.quarantine.excluded().len() as i64);
        m.active_pulls.set(active as i64);
    }

    /// Queues an event for every watched Deployment that uses `image` (never writing to them);
    /// a separate task sends them in order, so the reconcile loop never waits for them.
    fn publish_to_users(&self, image: &str, reason: &str, type_: EventType, note: String) {
        if !self.leader {
            return;
        }
        // Bounded: an image shared by thousands of Deployments must not cost thousands of writes.
        let users: Vec<DeploymentKey> = self.tracker.users_of(image).take(EVENT_FANOUT).cloned().collect();
        for (namespace, name) in users {
            let reference = ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                namespace: Some(namespace),
                name: Some(name),
                ..Default::default()
            };
            let event = KwarmEvent {
                type_,
                reason: reason.into(),
                note: Some(truncate(&note, 1000)),
                action: "Warm".into(),
                secondary: None,
            };
            if self.events.try_send((event, reference)).is_err() {
                tracing::debug!(reason, "Event queue full; event dropped");
            }
        }
    }

    /// Mirrors the pull secrets of watched Deployments into kwarm's namespace (opt-in) and returns
    /// the names of the mirrors to reference from the DaemonSet.
    async fn sync_pull_secrets(&mut self) -> Result<Vec<String>> {
        if !self.config().watch.inherit_pull_secrets {
            return Ok(Vec::new());
        }
        let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
        for ((ns, _), d) in self.tracker.deployments() {
            for secret in &d.pull_secrets {
                wanted.insert(mirror_name(ns, secret), (ns.clone(), secret.clone()));
            }
        }
        let due = Instant::now() >= self.next_secret_sync;
        let known: BTreeSet<&String> = self.mirrored_secrets.keys().collect();
        if !due && wanted.keys().collect::<BTreeSet<_>>() == known {
            return Ok(self.mirrored_secrets.keys().cloned().collect());
        }
        self.next_secret_sync = Instant::now() + SECRET_SYNC;
        let ns = self.config().namespace.clone();
        let mirrors: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
        let mut synced = BTreeMap::new();
        for (mirror, (source_ns, source_name)) in &wanted {
            let source_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), source_ns);
            let source = match with_timeout(API_TIMEOUT, source_api.get_opt(source_name)).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    tracing::warn!(secret = %format!("{source_ns}/{source_name}"), "Pull secret referenced by a Deployment does not exist");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(secret = %format!("{source_ns}/{source_name}"), error = %e, "Cannot read pull secret to inherit");
                    continue;
                }
            };
            let type_ = source.type_.clone().unwrap_or_default();
            if type_ != "kubernetes.io/dockerconfigjson" && type_ != "kubernetes.io/dockercfg" {
                tracing::warn!(secret = %format!("{source_ns}/{source_name}"), %type_, "Not a registry secret; not inherited");
                continue;
            }
            let digest = format!("{:?}", source.data);
            if self.mirrored_secrets.get(mirror) != Some(&digest) {
                let mut labels = selector_labels(&self.config().daemonset_name);
                labels.insert("app.kubernetes.io/managed-by".into(), "kwarm".into());
                labels.insert("app.kubernetes.io/component".into(), "pull-secret".into());
                let copy = Secret {
                    metadata: ObjectMeta {
                        name: Some(mirror.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(labels),
                        annotations: Some(BTreeMap::from([(
                            "kwarm.io/source".to_string(),
                            format!("{source_ns}/{source_name}"),
                        )])),
                        owner_references: self.owner.clone().map(|o| vec![o]),
                        ..Default::default()
                    },
                    type_: Some(type_),
                    data: source.data.clone(),
                    ..Default::default()
                };
                let params = PatchParams::apply(FIELD_MANAGER).force();
                with_timeout(API_TIMEOUT, mirrors.patch(mirror, &params, &Patch::Apply(&copy))).await?;
                tracing::info!(secret = %mirror, source = %format!("{source_ns}/{source_name}"), "Mirrored pull secret");
            }
            synced.insert(mirror.clone(), digest);
        }
        // Delete mirrors nothing references any more.
        let selector = format!(
            "{},app.kubernetes.io/component=pull-secret",
            selector_string(&self.config().daemonset_name)
        );
        let existing =
            with_timeout(API_TIMEOUT, mirrors.list_metadata(&ListParams::default().labels(&selector)))
                .await?;
        for s in existing {
            let name = s.name_any();
            if !wanted.contains_key(&name) {
                with_timeout(API_TIMEOUT, mirrors.delete(&name, &DeleteParams::default())).await?;
                tracing::info!(secret = %name, "Deleted pull secret no Deployment uses any more");
            }
        }
        self.mirrored_secrets = synced;
        Ok(self.mirrored_secrets.keys().cloned().collect())
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

/// Name of the mirror of `namespace/name`: readable, unique (hash), a valid secret name.
pub fn mirror_name(namespace: &str, name: &str) -> String {
    let hash = derived_holder_name(&format!("{namespace}/{name}"));
    let suffix = hash.rsplit('-').next().unwrap_or_default();
    let stem: String = format!("kwarm-{namespace}-{name}").chars().take(200).collect();
    format!("{}-{suffix}", stem.trim_end_matches(['-', '.']))
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

/// Reads the DaemonSet and its pods once and summarises them for `kwarm status`.
pub async fn fetch_status(client: Client, config: &Config) -> Result<crate::status::StatusReport> {
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &config.namespace);
    let pod_api: Api<Pod> = Api::namespaced(client, &config.namespace);
    let live = with_timeout(API_TIMEOUT, ds_api.get_opt(&config.daemonset_name)).await?;
    let params = ListParams::default().labels(&selector_string(&config.daemonset_name));
    let pods = with_timeout(API_TIMEOUT, pod_api.list(&params)).await?;
    let holders: Vec<PodHolders> = pods.items.iter().filter_map(pod_holders).collect();
    let images: Vec<String> = live.as_ref().map(held_images).unwrap_or_default().into_iter().collect();
    Ok(crate::status::StatusReport::build(
        &config.namespace,
        &config.daemonset_name,
        live.as_ref().map(|d| d.metadata.generation),
        &images,
        &holders,
        live.as_ref().and_then(|d| d.annotations().get(STATE_ANNOTATION)).map(String::as_str),
    ))
}
