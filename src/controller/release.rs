//! Opening the node gate: removing the gate taint from nodes the state released. A task of its
//! own, so a thousand nodes joining at once never hold the controller's loop up.
//!
//! Each release is one JSON patch that tests the gate taint is still where kwarm saw it (key and
//! effect at that index) and removes it: taints other controllers add or remove at the same time
//! are never clobbered. When the test fails (the list moved), the node is read again and the patch
//! retried with the new index; a node whose gate is already gone needs nothing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use tokio::sync::mpsc;

use super::{API_TIMEOUT, EventQueue, FIELD_MANAGER};
use crate::error::{Result, with_timeout};
use crate::gate::{GateTaint, Release, Why};
use crate::http::Shared;
use crate::leader::Fence;
use crate::metrics::ReasonLabel;

/// Nodes released at once.
const CONCURRENCY: usize = 16;
/// Patch attempts per release; the state asks again later if all fail.
const ATTEMPTS: u32 = 5;

pub struct Releaser {
    pub api: Api<Node>,
    pub gate: GateTaint,
    pub fence: Fence,
    pub events: EventQueue,
    pub shared: Arc<Shared>,
}

impl Releaser {
    /// Releases what arrives on `queue` until the controller goes away.
    pub async fn run(self, mut queue: mpsc::UnboundedReceiver<Release>) {
        let releases = futures::stream::poll_fn(|cx| queue.poll_recv(cx));
        releases.for_each_concurrent(CONCURRENCY, |r| self.release(r)).await;
    }

    async fn release(&self, r: Release) {
        let mut index = r.index;
        let mut delay = Duration::from_millis(200);
        for _ in 0..ATTEMPTS {
            if !self.fence.may_write(Instant::now()) {
                tracing::warn!(node = %r.node, "Not removing the gate taint: the lease could not be renewed in time");
                return;
            }
            let error = match self.remove_taint(&r.node, index).await {
                Ok(()) => return self.report(&r),
                Err(e) if e.api_code() == Some(404) => return,
                Err(e) if e.api_code() == Some(403) => {
                    tracing::error!(node = %r.node, error = %e,
                        "Not allowed to patch nodes (RBAC): the gate stays closed. Grant patch on nodes \
                         (the chart does with configMap.nodeGateTaint) or unset NODE_GATE_TAINT");
                    return;
                }
                Err(e) => e,
            };
            tracing::debug!(node = %r.node, index, error = %error, "Gate taint not removed; reading the node again");
            match with_timeout(API_TIMEOUT, self.api.get_opt(&r.node)).await {
                Ok(Some(node)) => {
                    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
                    match taints.iter().position(|t| self.gate.matches(t)) {
                        Some(i) => index = i,
                        // Someone else removed it: the gate is open.
                        None => return,
                    }
                }
                Ok(None) => return,
                Err(e) => tracing::debug!(node = %r.node, error = %e, "Could not read the node"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        tracing::warn!(node = %r.node, attempts = ATTEMPTS, "Could not remove the gate taint; trying again later");
    }

    async fn remove_taint(&self, node: &str, index: usize) -> Result<()> {
        remove_gate_taint(&self.api, &self.gate, node, index).await
    }

    fn report(&self, r: &Release) {
        let seconds = SystemTime::now().duration_since(r.since).unwrap_or_default().as_secs_f64();
        let taint = &self.gate;
        let (reason, type_, label, note) = match &r.why {
            Why::Warm { images } => {
                tracing::info!(node = %r.node, images, seconds = format!("{seconds:.1}"), "Node warm: gate opened");
                let note = format!("warm: {images} images in {seconds:.1} s; gate taint {taint} removed");
                ("NodeWarm", EventType::Normal, "warm", note)
            }
            Why::Timeout { not_warm } => {
                let images = not_warm.join(", ");
                tracing::warn!(node = %r.node, %images, seconds = format!("{seconds:.1}"),
                    "Node not warm within NODE_GATE_TIMEOUT: gate opened anyway");
                let note = format!(
                    "not warm after {seconds:.0} s (NODE_GATE_TIMEOUT): {} images not held: {images}; gate taint {taint} removed anyway",
                    not_warm.len()
                );
                ("NodeGateTimeout", EventType::Warning, "timeout", note)
            }
            Why::NotSelected => {
                tracing::info!(node = %r.node, "Holders never run on this node (NODE_SELECTOR/AFFINITY): gate opened");
                let note = format!(
                    "kwarm's holders do not run on this node (NODE_SELECTOR/AFFINITY): gate taint {taint} removed"
                );
                ("NodeNotSelected", EventType::Normal, "not_selected", note)
            }
        };
        let m = &self.shared.metrics;
        m.node_gate_duration.observe(seconds);
        m.node_gate_releases.get_or_create(&ReasonLabel { reason: label }).inc();
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(r.node.clone()),
            ..Default::default()
        };
        self.events.queue(reference, reason, type_, "Release", note);
    }
}

/// Removes the taint at `index` of `node` if it is still the gate (key and effect tested in the
/// same patch); fails with 422 when the list changed.
pub async fn remove_gate_taint(api: &Api<Node>, gate: &GateTaint, node: &str, index: usize) -> Result<()> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patch = Patch::<()>::Json(gate_removal(gate, index));
    with_timeout(API_TIMEOUT, api.patch(node, &params, &patch)).await?;
    Ok(())
}

/// The JSON patch of [`remove_gate_taint`].
fn gate_removal(gate: &GateTaint, index: usize) -> json_patch::Patch {
    use json_patch::{PatchOperation, RemoveOperation, TestOperation, jsonptr::PointerBuf};
    let index = index.to_string();
    let at = |field: Option<&str>| {
        PointerBuf::from_tokens(["spec", "taints", index.as_str()].into_iter().chain(field))
    };
    json_patch::Patch(vec![
        PatchOperation::Test(TestOperation { path: at(Some("key")), value: gate.key.clone().into() }),
        PatchOperation::Test(TestOperation { path: at(Some("effect")), value: gate.effect.clone().into() }),
        PatchOperation::Remove(RemoveOperation { path: at(None) }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_removal_tests_key_and_effect_at_the_index_before_removing() {
        let gate = GateTaint::parse("kwarm.io/warming=true:NoExecute").unwrap();
        let patch = serde_json::to_value(gate_removal(&gate, 3)).unwrap();
        assert_eq!(
            patch,
            serde_json::json!([
                {"op": "test", "path": "/spec/taints/3/key", "value": "kwarm.io/warming"},
                {"op": "test", "path": "/spec/taints/3/effect", "value": "NoExecute"},
                {"op": "remove", "path": "/spec/taints/3"},
            ])
        );
    }
}
