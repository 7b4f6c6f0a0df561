//! Prometheus metrics (prometheus-client). Label sets are bounded: states, statuses and error
//! categories, never nodes or images.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabel {
    pub watch: &'static str,
}

/// Every metric kwarm exports.
pub struct Metrics {
    pub registry: Registry,
    pub pull_duration: Histogram,
    pub image_size: Histogram,
    pub active_pulls: Gauge,
    pub pulls: Family<StatusLabel, Counter>,
    pub images: Family<StateLabel, Gauge>,
    pub watched_deployments: Gauge,
    pub reconciles: Counter,
    pub reconcile_errors: Family<CategoryLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub applies: Family<StatusLabel, Counter>,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub watch_errors: Family<WatchLabel, Counter>,
    pub leader: Gauge<i64, AtomicI64>,
    pub gated_nodes: Gauge,
    pub node_gate_duration: Histogram,
    pub node_gate_releases: Family<ReasonLabel, Counter>,
    pub digest_checks: Family<ResultLabel, Counter>,
    /// Checks that an image's own namespaces' credentials can read it, by result.
    pub access_checks: Family<ResultLabel, Counter>,
    pub stale_images: Gauge,
    pub gated_pods: Gauge,
    pub rollout_gate_duration: Histogram,
    pub rollout_gate_releases: Family<ReasonLabel, Counter>,
    pub webhook_admissions: Family<ResultLabel, Counter>,
    pub resident_memory: Gauge,
    /// Edits of CONFIG_MAP seen, by result (applied, invalid, unchanged).
    pub config_reloads: Family<ResultLabel, Counter>,
    /// 1 while the watched ConfigMap holds a valid configuration, 0 while an invalid edit waits.
    pub config_valid: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kwarm");
        let pull_duration = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        let image_size = Histogram::new(exponential_buckets(1024.0, 4.0, 12));
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let m = Metrics {
            registry: Registry::default(),
            pull_duration,
            image_size,
            active_pulls: Gauge::default(),
            pulls: Family::default(),
            images: Family::default(),
            watched_deployments: Gauge::default(),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration,
            applies: Family::default(),
            last_sync: Gauge::default(),
            watch_errors: Family::default(),
            leader: Gauge::default(),
            gated_nodes: Gauge::default(),
            node_gate_duration: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            node_gate_releases: Family::default(),
            digest_checks: Family::default(),
            access_checks: Family::default(),
            stale_images: Gauge::default(),
            gated_pods: Gauge::default(),
            rollout_gate_duration: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
            rollout_gate_releases: Family::default(),
            webhook_admissions: Family::default(),
            resident_memory: Gauge::default(),
            config_reloads: Family::default(),
            config_valid: Gauge::default(),
        };
        registry.register_with_unit(
            "pull_duration",
            "Image pull time reported by the kubelet for holder containers",
            Unit::Seconds,
            m.pull_duration.clone(),
        );
        registry.register_with_unit(
            "image_size",
            "Image size reported by the kubelet after a pull",
            Unit::Bytes,
            m.image_size.clone(),
        );
        registry.register(
            "config_reloads",
            "Edits of the manager's ConfigMap (CONFIG_MAP) by result (applied, invalid, unchanged)",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_valid",
            "1 while the manager's ConfigMap holds a valid configuration, 0 while an invalid edit is refused",
            m.config_valid.clone(),
        );
        registry.register(
            "active_pulls",
            "Holder containers (image × node) currently pulling",
            m.active_pulls.clone(),
        );
        registry.register(
            "pulls",
            "Finished pulls of holder images by status (success, failed)",
            m.pulls.clone(),
        );
        registry.register(
            "images",
            "Images by state (warm, pulling, failed, quarantined, overflow, denied: not warmed without pull credentials of their own namespaces)",
            m.images.clone(),
        );
        registry.register(
            "watched_deployments",
            "Deployments selected for warming",
            m.watched_deployments.clone(),
        );
        registry.register("reconcile_runs", "Reconcile runs", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            m.reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time of one reconcile run",
            Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        registry.register(
            "daemonset_applies",
            "Server-side applies of the DaemonSet by status (success, error, timeout)",
            m.applies.clone(),
        );
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last reconcile that left the DaemonSet as desired",
            m.last_sync.clone(),
        );
        registry.register("watch_errors", "Watch stream errors by watched resource", m.watch_errors.clone());
        registry.register("leader", "1 while this replica is the leader", m.leader.clone());
        registry.register("gated_nodes", "Nodes carrying the node gate taint", m.gated_nodes.clone());
        registry.register_with_unit(
            "node_gate_duration",
            "Time from a node's gate closing (join, or the taint's timeAdded) to kwarm removing the taint",
            Unit::Seconds,
            m.node_gate_duration.clone(),
        );
        registry.register(
            "node_gate_releases",
            "Gate taints removed by reason (warm, timeout, not_selected)",
            m.node_gate_releases.clone(),
        );
        registry.register(
            "digest_checks",
            "Tag digest checks by result (ok, unreachable, auth, not_found, throttled, server, other)",
            m.digest_checks.clone(),
        );
        registry.register(
            "access_checks",
            "Checks that the pull secrets of the namespaces that want an image can read it (INHERIT_PULL_SECRETS), by result (ok, auth, not_found, unreachable, ...)",
            m.access_checks.clone(),
        );
        registry.register(
            "stale_images",
            "Tags whose registry digest some node's holder does not hold",
            m.stale_images.clone(),
        );
        let build_info: Family<BuildLabel, Gauge> = Family::default();
        build_info.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register(
            "build_info",
            "Always 1; the version of the running manager in its label",
            build_info,
        );
        registry.register("gated_pods", "Pods carrying kwarm's scheduling gate", m.gated_pods.clone());
        registry.register_with_unit(
            "rollout_gate_duration",
            "Time from a gated pod's creation to kwarm removing its scheduling gate",
            Unit::Seconds,
            m.rollout_gate_duration.clone(),
        );
        registry.register(
            "rollout_gate_releases",
            "Scheduling gates removed by reason (warm, timeout, quarantined, overflow, denied, not_gated)",
            m.rollout_gate_releases.clone(),
        );
        registry.register(
            "webhook_admissions",
            "Pods the rollout gate's webhook saw, by result (gated, or why not: warm, not_watched, …)",
            m.webhook_admissions.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident set size of the manager process (VmRSS, read at each scrape)",
            Unit::Bytes,
            m.resident_memory.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        if let Some(rss) = std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(vm_rss_bytes)
        {
            self.resident_memory.set(rss);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// VmRSS of a /proc/PID/status text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: i64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_from_proc_status() {
        assert_eq!(vm_rss_bytes("Name:\tkwarm\nVmRSS:\t   12345 kB\nThreads: 4\n"), Some(12345 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tkwarm\n"), None);
    }

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new();
        m.pulls.get_or_create(&StatusLabel { status: "success" }).inc();
        m.images.get_or_create(&StateLabel { state: "warm" }).set(2);
        m.reconcile_errors.get_or_create(&CategoryLabel { category: "kube" }).inc();
        m.applies.get_or_create(&StatusLabel { status: "success" }).inc();
        m.pull_duration.observe(1.5);
        let text = m.encode();
        for name in [
            "kwarm_pull_duration_seconds_bucket",
            "kwarm_active_pulls ",
            "kwarm_pulls_total{status=\"success\"} 1",
            "kwarm_images{state=\"warm\"} 2",
            "kwarm_watched_deployments ",
            "kwarm_reconcile_runs_total ",
            "kwarm_reconcile_errors_total{category=\"kube\"} 1",
            "kwarm_reconcile_duration_seconds_bucket",
            "kwarm_daemonset_applies_total{status=\"success\"} 1",
            "kwarm_last_successful_sync_timestamp_seconds ",
            concat!("kwarm_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
            "kwarm_process_resident_memory_bytes ",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
