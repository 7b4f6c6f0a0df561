//! Lease-based leader election (`coordination.k8s.io/v1`). Expiry is judged by when this replica
//! last saw the lease change, not by the holder's clock, so clock skew between nodes is harmless.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Result, with_timeout};

/// Timing of the election, as client-go's defaults: a leader renews every `retry`, gives up after
/// failing to renew for `renew_deadline`, others take over `lease_duration` after the last renewal.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// One candidate for the lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The last lease record seen (holder, renew time) and when it was seen to change.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: String, identity: String, timing: Timing) -> Elector {
        Elector { api, name, identity, timing, observed: None }
    }

    /// Campaigns until `shutdown`, publishing leadership on `leader`; releases the lease at the end.
    pub async fn run(mut self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut last_renewal = Instant::now();
        loop {
            let is_leader = *leader.borrow();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = Instant::now();
                    if !is_leader {
                        tracing::info!(identity = %self.identity, lease = %self.name, "Became leader");
                        leader.send_replace(true);
                    }
                }
                Ok(false) => {
                    if is_leader {
                        tracing::warn!(lease = %self.name, "Lost the lease to another replica");
                        leader.send_replace(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "Could not renew the lease");
                    if is_leader && last_renewal.elapsed() > self.timing.renew_deadline {
                        tracing::warn!(lease = %self.name, "Stepping down: renew deadline passed");
                        leader.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            match self.release().await {
                Ok(()) => tracing::info!(lease = %self.name, "Released the lease"),
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "Could not release the lease"),
            }
        }
    }

    fn now() -> MicroTime {
        MicroTime(Timestamp::now())
    }

    fn call_timeout(&self) -> Duration {
        self.timing.retry.max(Duration::from_secs(1))
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let current = match with_timeout(self.call_timeout(), self.api.get_opt(&self.name)).await? {
            Some(lease) => lease,
            None => return self.create().await,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let now = Instant::now();
        let changed = match &self.observed {
            Some((holder, renew, _)) => (holder, renew) != (&record.0, &record.1),
            None => true,
        };
        if changed {
            self.observed = Some((record.0.clone(), record.1.clone(), now));
        }
        let held_by_us = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let holder_empty = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let duration = spec
            .lease_duration_seconds
            .map_or(self.timing.lease_duration, |s| Duration::from_secs(s.max(0) as u64));
        let seen_at = self.observed.as_ref().map_or(now, |(_, _, at)| *at);
        let expired = now.duration_since(seen_at) > duration;
        if !held_by_us && !holder_empty && !expired {
            return Ok(false);
        }
        let mut lease = current;
        let mut spec = lease.spec.take().unwrap_or_default();
        if !held_by_us {
            spec.acquire_time = Some(Self::now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.timing.lease_duration.as_secs() as i32);
        spec.renew_time = Some(Self::now());
        lease.spec = Some(spec);
        // resourceVersion is kept, so a concurrent writer makes this fail with 409 instead of both winning.
        match with_timeout(self.call_timeout(), self.api.replace(&self.name, &PostParams::default(), &lease))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.api_code() == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn create(&mut self) -> Result<bool> {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timing.lease_duration.as_secs() as i32),
                acquire_time: Some(Self::now()),
                renew_time: Some(Self::now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match with_timeout(self.call_timeout(), self.api.create(&PostParams::default(), &lease)).await {
            Ok(_) => Ok(true),
            Err(e) if e.api_code() == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Empties the holder and shortens the lease so the next candidate takes over at once.
    async fn release(&self) -> Result<()> {
        let Some(mut lease) = with_timeout(self.call_timeout(), self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(Self::now());
        lease.spec = Some(spec);
        with_timeout(self.call_timeout(), self.api.replace(&self.name, &PostParams::default(), &lease))
            .await
            .map(|_| ())
    }
}
