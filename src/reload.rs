//! Configuration changes without a restart: the manager watches the ConfigMap its environment
//! came from (`CONFIG_MAP`, loaded with `envFrom`). A valid edit becomes a new [`Config`] for the
//! controller, which restarts in place (the HTTP servers, the leader election and the webhook
//! keep running); an invalid one changes nothing and is reported (log, Event on the ConfigMap,
//! `kwarm_config_valid` 0) until fixed.
//!
//! [`reloaded_vars`] and [`pin`] are the pure rules; [`watch_config_map`] is the I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::config::{Config, ConfigErrors};
use crate::http::Shared;
use crate::metrics::ResultLabel;

/// The environment the manager would get from `now` (the ConfigMap's data as it is), given the
/// process environment and the data the process was started with (`started`). A variable set in
/// the process but not from the ConfigMap (the pod's own `env:`, which wins over `envFrom`) keeps
/// its value; one from the ConfigMap takes the new value, or goes when its key was removed.
pub fn reloaded_vars(
    process: &BTreeMap<String, String>,
    started: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = process
        .iter()
        .filter(|(k, v)| started.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in now {
        let from_pod = process.get(k).is_some_and(|p| started.get(k) != Some(p));
        if !from_pod {
            vars.insert(k.clone(), v.clone());
        }
    }
    vars
}

/// What needs a restart to change: the running manager's servers, lease and webhook were made
/// from these. Returns `new` with them kept as in `running`, and the variables whose change waits
/// for the next restart.
pub fn pin(running: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut pinned = Vec::new();
    macro_rules! keep {
        ($field:ident, $($variable:literal),+) => {
            if new.$field != running.$field {
                pinned.extend([$($variable),+]);
                new.$field = running.$field.clone();
            }
        };
    }
    keep!(namespace, "NAMESPACE");
    keep!(daemonset_name, "DAEMONSET_NAME");
    keep!(config_map, "CONFIG_MAP");
    keep!(leader_elect, "LEADER_ELECT");
    keep!(metrics_bind_address, "METRICS_BIND_ADDRESS");
    keep!(health_probe_bind_address, "HEALTH_PROBE_BIND_ADDRESS");
    keep!(log_format, "LOG_FORMAT");
    keep!(rollout_gate, "ROLLOUT_GATE", "ROLLOUT_GATE_TIMEOUT", "WEBHOOK_*");
    (new, pinned)
}

/// Watches `namespace/name` and sends every valid new configuration on `configs`. Runs until
/// the process ends.
pub async fn watch_config_map(
    client: Client,
    namespace: String,
    name: String,
    own_namespace: Option<String>,
    configs: watch::Sender<Arc<Config>>,
    shared: Arc<Shared>,
    identity: String,
) {
    let process: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let reporter = Reporter { controller: "kwarm".into(), instance: Some(identity) };
    let recorder = Recorder::new(client, reporter);
    let params = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, params).default_backoff().boxed();
    // The data the process was started with: the first one seen (an edit between the pod's start
    // and this first listing is taken as the start).
    let mut started: Option<BTreeMap<String, String>> = None;
    let mut last_refused: Option<String> = None;
    shared.metrics.config_valid.set(1);
    while let Some(event) = stream.next().await {
        let cm = match event {
            Ok(WatchEvent::Apply(cm) | WatchEvent::InitApply(cm)) => cm,
            Ok(WatchEvent::Delete(_)) => {
                tracing::warn!(configmap = %name, "The manager's ConfigMap was deleted; the running configuration stays");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                let forbidden = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s))
                    | watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 403);
                if forbidden {
                    tracing::warn!(configmap = %name, error = %e, "Not allowed to watch the manager's ConfigMap (RBAC): \
                        its edits apply only at a restart. Grant get/list/watch on it or unset CONFIG_MAP");
                    return;
                }
                tracing::warn!(configmap = %name, error = %e, "Watching the manager's ConfigMap failed; retrying with backoff");
                continue;
            }
        };
        let data: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
        let Some(started) = &started else {
            started = Some(data);
            continue;
        };
        let vars = reloaded_vars(&process, started, &data);
        let running = configs.borrow().clone();
        let metrics = &shared.metrics;
        match Config::from_vars(vars, own_namespace.clone()) {
            Err(ConfigErrors(errors)) => {
                metrics.config_valid.set(0);
                metrics.config_reloads.get_or_create(&ResultLabel { result: "invalid" }).inc();
                let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                tracing::error!(configmap = %name, problems = errors.len(), "Refused the edit of the ConfigMap: \
                    the running configuration stays, nothing in the cluster is changed: {text}");
                if last_refused.as_deref() != Some(text.as_str()) {
                    let note = format!(
                        "Edit refused, the running configuration stays ({} problems): {text}",
                        errors.len()
                    );
                    publish(&recorder, &cm, EventType::Warning, "InvalidConfiguration", note).await;
                    last_refused = Some(text);
                }
            }
            Ok(new) => {
                last_refused = None;
                metrics.config_valid.set(1);
                let (new, pinned) = pin(&running, new);
                if !pinned.is_empty() {
                    tracing::warn!(configmap = %name, variables = ?pinned,
                        "These variables change only with a restart of the manager; the rest of the edit applies now");
                }
                if new == *running {
                    metrics.config_reloads.get_or_create(&ResultLabel { result: "unchanged" }).inc();
                    continue;
                }
                for w in &new.warnings {
                    tracing::warn!(variable = %w.variable, value = %w.value, "{}", w.message);
                }
                metrics.config_reloads.get_or_create(&ResultLabel { result: "applied" }).inc();
                tracing::info!(configmap = %name, "Configuration changed: applying it");
                let note = match pinned.is_empty() {
                    true => "Configuration applied".to_string(),
                    false => {
                        format!("Configuration applied; {} change with a restart only", pinned.join(", "))
                    }
                };
                publish(&recorder, &cm, EventType::Normal, "ConfigurationApplied", note).await;
                configs.send_replace(Arc::new(new));
            }
        }
    }
}

async fn publish(recorder: &Recorder, cm: &ConfigMap, type_: EventType, reason: &str, note: String) {
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: cm.namespace(),
        name: Some(cm.name_any()),
        uid: cm.metadata.uid.clone(),
        ..Default::default()
    };
    // an Event's note holds at most 1 KiB
    let note: String = note.chars().take(1000).collect();
    let event =
        Event { type_, reason: reason.into(), note: Some(note), action: "Reload".into(), secondary: None };
    let publish = recorder.publish(&event, &reference);
    match tokio::time::timeout(crate::controller::API_TIMEOUT, publish).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "Could not publish the ConfigMap event"),
        Err(_) => tracing::debug!("Publishing the ConfigMap event timed out"),
    }
}

#[cfg(test)]
mod tests;
