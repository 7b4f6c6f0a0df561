//! Opening the rollout gate: removing kwarm's scheduling gate from pods the state released, in a
//! task of its own (a rollout of a thousand pods never holds the controller's loop up).
//!
//! Each release is one JSON patch that tests the pod's uid and that the gate is still at the
//! index kwarm saw, then removes it: the only write kwarm makes to a user's pod, and it never
//! removes another controller's gate. When the test fails (the gates moved), the pod is read
//! again and the patch retried with the new index.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use tokio::sync::mpsc;

use super::{API_TIMEOUT, EventQueue, FIELD_MANAGER};
use crate::error::{Result, with_timeout};
use crate::http::Shared;
use crate::leader::Fence;
use crate::metrics::ReasonLabel;
use crate::rollout::{PodRelease, SCHEDULING_GATE, Why, gate_removal};

/// Pods released at once.
const CONCURRENCY: usize = 16;
/// Patch attempts per release; the state asks again later if all fail.
const ATTEMPTS: u32 = 5;

pub struct PodReleaser {
    pub client: Client,
    pub fence: Fence,
    pub events: EventQueue,
    pub shared: Arc<Shared>,
}

impl PodReleaser {
    /// Releases what arrives on `queue` until the controller goes away.
    pub async fn run(self, mut queue: mpsc::UnboundedReceiver<PodRelease>) {
        let releases = futures::stream::poll_fn(|cx| queue.poll_recv(cx));
        releases.for_each_concurrent(CONCURRENCY, |r| self.release(r)).await;
    }

    async fn release(&self, r: PodRelease) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &r.namespace);
        let mut index = r.index;
        let mut delay = Duration::from_millis(200);
        for _ in 0..ATTEMPTS {
            if !self.fence.may_write(Instant::now()) {
                tracing::warn!(pod = %r.name, namespace = %r.namespace,
                    "Not removing the scheduling gate: the lease could not be renewed in time");
                return;
            }
            let error = match remove_scheduling_gate(&api, &r.name, &r.uid, index).await {
                Ok(()) => return self.report(&r),
                Err(e) if e.api_code() == Some(404) => return,
                Err(e) if e.api_code() == Some(403) => {
                    tracing::error!(pod = %r.name, namespace = %r.namespace, error = %e,
                        "Not allowed to patch pods (RBAC): the pod stays gated until ROLLOUT_GATE_TIMEOUT \
                         passes for another replica, or `kwarm ungate` is run. Grant patch on pods \
                         (the chart does with rolloutGate.enabled) or set ROLLOUT_GATE=false");
                    return;
                }
                Err(e) => e,
            };
            tracing::debug!(pod = %r.name, index, error = %error, "Scheduling gate not removed; reading the pod again");
            match with_timeout(API_TIMEOUT, api.get_opt(&r.name)).await {
                Ok(Some(pod)) if pod.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                    match gate_index(&pod) {
                        Some(i) => index = i,
                        // Someone else removed it: the pod is free.
                        None => return,
                    }
                }
                // Gone, or another pod of the same name.
                Ok(_) => return,
                Err(e) => tracing::debug!(pod = %r.name, error = %e, "Could not read the pod"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        tracing::warn!(pod = %r.name, namespace = %r.namespace, attempts = ATTEMPTS,
            "Could not remove the scheduling gate; trying again later");
    }

    fn report(&self, r: &PodRelease) {
        let seconds = SystemTime::now().duration_since(r.since).unwrap_or_default().as_secs_f64();
        let secs = format!("{seconds:.1}");
        let (reason, type_, note) = match &r.why {
            Why::Warm => {
                tracing::info!(pod = %r.name, namespace = %r.namespace, seconds = %secs, "Images warm: pod released");
                (
                    "ImagesWarm",
                    EventType::Normal,
                    format!("images warm after {secs} s: scheduling gate removed"),
                )
            }
            Why::Timeout { not_warm } => {
                let images = not_warm.join(", ");
                tracing::warn!(pod = %r.name, namespace = %r.namespace, %images, seconds = %secs,
                    "Images not warm within ROLLOUT_GATE_TIMEOUT: pod released anyway");
                let note = format!(
                    "images not warm after {seconds:.0} s (ROLLOUT_GATE_TIMEOUT): {images}; scheduling gate removed anyway, the pod pulls"
                );
                ("RolloutGateTimeout", EventType::Warning, note)
            }
            Why::Quarantined { image } => {
                tracing::warn!(pod = %r.name, namespace = %r.namespace, %image,
                    "Image quarantined (failing on every node): pod released");
                let note =
                    format!("image {image} is quarantined (failing on every node): scheduling gate removed");
                ("ImageQuarantined", EventType::Warning, note)
            }
            Why::NotGated => {
                tracing::info!(pod = %r.name, namespace = %r.namespace, "Deployment opted out of the rollout gate: pod released");
                let note = "the Deployment opted out of the rollout gate (kwarm.io/rollout-gate): scheduling gate removed";
                ("RolloutGateOff", EventType::Normal, note.to_string())
            }
            Why::Overflow { image } => {
                tracing::warn!(pod = %r.name, namespace = %r.namespace, %image,
                    "Image not warmed (MAX_IMAGES reached): pod released");
                let note =
                    format!("image {image} is not warmed (MAX_IMAGES reached): scheduling gate removed");
                ("ImageNotWarmed", EventType::Warning, note)
            }
            Why::Denied { image } => {
                tracing::warn!(pod = %r.name, namespace = %r.namespace, %image,
                    "Image not warmed (its namespaces' pull secrets cannot read it): pod released");
                let note = format!(
                    "image {image} is not warmed (the pull secrets of the namespaces that want it cannot read it): scheduling gate removed"
                );
                ("ImageNotWarmed", EventType::Warning, note)
            }
        };
        let m = &self.shared.metrics;
        m.rollout_gate_duration.observe(seconds);
        m.rollout_gate_releases.get_or_create(&ReasonLabel { reason: r.why.label() }).inc();
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(r.namespace.clone()),
            name: Some(r.name.clone()),
            uid: Some(r.uid.clone()),
            ..Default::default()
        };
        self.events.queue(pod, reason, type_, "Release", note.clone());
        // Warnings go to the Deployment too: that is where a rollout is watched.
        if type_ == EventType::Warning
            && let Some(deployment) = &r.deployment
        {
            let reference = super::deployment_reference(&r.namespace, deployment);
            self.events.queue(reference, reason, type_, "Release", format!("pod {}: {note}", r.name));
        }
    }
}

/// Where kwarm's gate is in the pod's scheduling gates.
pub fn gate_index(pod: &Pod) -> Option<usize> {
    pod.spec.as_ref()?.scheduling_gates.as_ref()?.iter().position(|g| g.name == SCHEDULING_GATE)
}

/// Removes kwarm's gate at `index` of the pod if it is still there (the pod's uid and the gate
/// tested in the same patch); fails with 422 when the gates changed.
pub async fn remove_scheduling_gate(api: &Api<Pod>, name: &str, uid: &str, index: usize) -> Result<()> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patch = Patch::<()>::Json(gate_removal(uid, index));
    with_timeout(API_TIMEOUT, api.patch(name, &params, &patch)).await?;
    Ok(())
}
