//! Lease-based leader election (`coordination.k8s.io/v1`). Expiry is judged by when this replica
//! last saw the lease change, not by the holder's clock, so clock skew between nodes is harmless.

use std::sync::{Arc, Mutex};
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

/// Until when this replica may write: fencing, checked right before every write. The elector
/// extends it to the renew deadline after each successful renewal and revokes it when it steps
/// down, so a leader whose renewals stall stops writing before its lease can expire for the
/// others, however late the election loop runs. Without leader election it is always open.
#[derive(Clone, Debug)]
pub struct Fence(Arc<Mutex<FenceState>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FenceState {
    Always,
    Until(std::time::Instant),
    Closed,
}

impl Fence {
    pub fn always() -> Fence {
        Fence(Arc::new(Mutex::new(FenceState::Always)))
    }

    pub fn closed() -> Fence {
        Fence(Arc::new(Mutex::new(FenceState::Closed)))
    }

    fn set(&self, state: FenceState) {
        if let Ok(mut s) = self.0.lock() {
            *s = state;
        }
    }

    pub fn extend(&self, until: std::time::Instant) {
        self.set(FenceState::Until(until));
    }

    pub fn revoke(&self) {
        self.set(FenceState::Closed);
    }

    pub fn may_write(&self, now: std::time::Instant) -> bool {
        match self.0.lock().map(|s| *s) {
            Ok(FenceState::Always) => true,
            Ok(FenceState::Until(until)) => now <= until,
            Ok(FenceState::Closed) | Err(_) => false,
        }
    }
}

/// One candidate for the lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The last lease record seen and when it was seen to change.
    observed: Option<Observed>,
}

/// A lease record (holder, renew time) and when this replica saw it change.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

/// What to do with the lease as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Another replica holds a live lease.
    Follow,
    /// Ours: write a new renew time.
    Renew,
    /// Free, released or expired: take it over, counting one more transition.
    Acquire { transitions: i32 },
}

/// Decides from the lease as read now (`spec`), what this replica saw before, and its own clock.
/// Expiry is judged from when this replica last saw the record change, never from the renew
/// time written by another node's clock, so clock skew cannot hand the lease over early.
/// Returns the verdict and what to remember for the next call. Pure.
pub fn decide(
    spec: &LeaseSpec,
    observed: Option<Observed>,
    identity: &str,
    default_duration: Duration,
    now: Instant,
) -> (Verdict, Observed) {
    let observed = match observed {
        Some(o) if o.holder == spec.holder_identity && o.renew == spec.renew_time => o,
        _ => Observed { holder: spec.holder_identity.clone(), renew: spec.renew_time.clone(), at: now },
    };
    let held_by_us = spec.holder_identity.as_deref() == Some(identity);
    let holder_empty = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    let duration =
        spec.lease_duration_seconds.map_or(default_duration, |s| Duration::from_secs(s.max(0) as u64));
    let expired = now.saturating_duration_since(observed.at) > duration;
    let verdict = if held_by_us {
        Verdict::Renew
    } else if holder_empty || expired {
        Verdict::Acquire { transitions: spec.lease_transitions.unwrap_or(0).max(0).saturating_add(1) }
    } else {
        Verdict::Follow
    };
    (verdict, observed)
}

/// Whether a leader whose last successful renewal was at `last_renewal` may still write: not
/// once the renew deadline passed, which comes before the lease can expire for the others.
pub fn may_lead(last_renewal: Instant, timing: Timing, now: Instant) -> bool {
    now.saturating_duration_since(last_renewal) <= timing.renew_deadline
}

impl Elector {
    pub fn new(api: Api<Lease>, name: String, identity: String, timing: Timing) -> Elector {
        Elector { api, name, identity, timing, observed: None }
    }

    /// Campaigns until `shutdown`, publishing leadership on `leader` and keeping `fence` up to
    /// date; releases the lease at the end.
    pub async fn run(
        mut self,
        leader: watch::Sender<bool>,
        fence: Fence,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut last_renewal = Instant::now();
        loop {
            let is_leader = *leader.borrow();
            // the lease counts from when the renewal was sent, not from when the answer came
            let attempt = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = attempt;
                    fence.extend(attempt.into_std() + self.timing.renew_deadline);
                    if !is_leader {
                        tracing::info!(identity = %self.identity, lease = %self.name, "Became leader");
                        leader.send_replace(true);
                    }
                }
                Ok(false) => {
                    fence.revoke();
                    if is_leader {
                        tracing::warn!(lease = %self.name, "Lost the lease to another replica");
                        leader.send_replace(false);
                    }
                }
                // a replica that does not hold the lease has nothing to renew: it tries to acquire it
                Err(e) if !is_leader => {
                    tracing::warn!(error = %e, lease = %self.name, "Could not acquire the lease");
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "Could not renew the lease");
                    if is_leader && !may_lead(last_renewal, self.timing, Instant::now()) {
                        tracing::warn!(lease = %self.name, "Stepping down: renew deadline passed");
                        fence.revoke();
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
            fence.revoke();
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
        let (verdict, observed) =
            decide(&spec, self.observed.take(), &self.identity, self.timing.lease_duration, Instant::now());
        self.observed = Some(observed);
        let mut lease = current;
        let mut spec = lease.spec.take().unwrap_or_default();
        match verdict {
            Verdict::Follow => return Ok(false),
            Verdict::Renew => {}
            Verdict::Acquire { transitions } => {
                spec.acquire_time = Some(Self::now());
                spec.lease_transitions = Some(transitions);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me";
    const DURATION: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, renew_secs: i64, transitions: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(Timestamp::from_second(renew_secs).expect("a time"))),
            lease_duration_seconds: Some(15),
            lease_transitions: transitions,
            ..Default::default()
        }
    }

    #[test]
    fn a_free_or_released_lease_is_acquired() {
        let t0 = Instant::now();
        for holder in [None, Some("")] {
            let (verdict, _) = decide(&lease(holder, 100, Some(3)), None, ME, DURATION, t0);
            assert_eq!(verdict, Verdict::Acquire { transitions: 4 }, "{holder:?}");
        }
    }

    #[test]
    fn our_lease_is_renewed_and_anothers_live_lease_followed() {
        let t0 = Instant::now();
        assert_eq!(decide(&lease(Some(ME), 100, Some(1)), None, ME, DURATION, t0).0, Verdict::Renew);
        assert_eq!(decide(&lease(Some("other"), 100, Some(1)), None, ME, DURATION, t0).0, Verdict::Follow);
    }

    #[test]
    fn expiry_is_judged_by_the_local_clock_from_the_last_change_seen() {
        let t0 = Instant::now();
        let other = lease(Some("other"), 100, Some(1));
        let (_, seen) = decide(&other, None, ME, DURATION, t0);
        // the same record, 14 s later: still live; 16 s later: expired
        let (v, seen) = decide(&other, Some(seen), ME, DURATION, t0 + Duration::from_secs(14));
        assert_eq!(v, Verdict::Follow);
        let (v, _) = decide(&other, Some(seen.clone()), ME, DURATION, t0 + Duration::from_secs(16));
        assert_eq!(v, Verdict::Acquire { transitions: 2 });
        // a renewal (new renew time) restarts the clock, whatever that time says
        let renewed = lease(Some("other"), 50, Some(1));
        let (v, _) = decide(&renewed, Some(seen), ME, DURATION, t0 + Duration::from_secs(16));
        assert_eq!(v, Verdict::Follow, "a renew time in the past (skewed clock) is still a renewal");
    }

    #[test]
    fn a_renew_time_far_in_the_past_does_not_expire_a_lease_just_seen() {
        // another node's clock is hours behind: the lease is live until we see it unchanged long enough
        let t0 = Instant::now();
        let (v, _) = decide(&lease(Some("other"), 0, None), None, ME, DURATION, t0);
        assert_eq!(v, Verdict::Follow);
    }

    #[test]
    fn transitions_never_overflow_and_negative_counts_restart() {
        let t0 = Instant::now();
        let (v, _) = decide(&lease(None, 100, Some(i32::MAX)), None, ME, DURATION, t0);
        assert_eq!(v, Verdict::Acquire { transitions: i32::MAX });
        let (v, _) = decide(&lease(None, 100, Some(-5)), None, ME, DURATION, t0);
        assert_eq!(v, Verdict::Acquire { transitions: 1 });
    }

    #[test]
    fn a_negative_lease_duration_counts_as_zero() {
        let t0 = Instant::now();
        let mut spec = lease(Some("other"), 100, Some(1));
        spec.lease_duration_seconds = Some(-10);
        let (_, seen) = decide(&spec, None, ME, DURATION, t0);
        let (v, _) = decide(&spec, Some(seen), ME, DURATION, t0 + Duration::from_millis(1));
        assert_eq!(v, Verdict::Acquire { transitions: 2 });
    }

    #[test]
    fn the_fence_closes_at_its_deadline_and_when_revoked() {
        let t0 = std::time::Instant::now();
        let fence = Fence::closed();
        assert!(!fence.may_write(t0));
        fence.extend(t0 + Duration::from_secs(10));
        assert!(fence.may_write(t0 + Duration::from_secs(10)));
        assert!(!fence.may_write(t0 + Duration::from_secs(11)), "no renewal: closed at the deadline");
        fence.extend(t0 + Duration::from_secs(20));
        fence.revoke();
        assert!(!fence.may_write(t0));
        assert!(Fence::always().may_write(t0 + Duration::from_secs(1_000_000)), "no election: always open");
    }

    #[test]
    fn a_leader_stops_writing_at_its_renew_deadline_before_the_lease_expires() {
        let timing = Timing::default();
        assert!(timing.renew_deadline < timing.lease_duration);
        let t0 = Instant::now();
        assert!(may_lead(t0, timing, t0 + timing.renew_deadline));
        assert!(!may_lead(t0, timing, t0 + timing.renew_deadline + Duration::from_millis(1)));
    }
}
