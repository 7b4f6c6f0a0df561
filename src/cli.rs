//! The command line's decisions, pure: which DaemonSets `kwarm status` reports on, whether they
//! are warm (its exit code), the JSON documents it prints, and the ConfigMaps `kwarm check -f`
//! finds in a manifest. The binary (`main.rs`) only wires them to the cluster and the terminal.

use serde::Serialize;

use crate::config::{Config, ConfigErrors, VARIABLES};
use crate::status::StatusReport;

/// Exit codes of the `kwarm` binary.
pub mod exit {
    /// Done; for `kwarm status`, everything is warm.
    pub const OK: u8 = 0;
    /// Any other failure (writing the output, reading a file).
    pub const FAILURE: u8 = 1;
    /// The configuration (environment or ConfigMap) is invalid.
    pub const INVALID_CONFIG: u8 = 2;
    /// `kwarm status`: something is not warm (an image not held on some node, quarantined or over
    /// MAX_IMAGES, the DaemonSet missing).
    pub const NOT_WARM: u8 = 3;
    /// The cluster could not be read: no kubeconfig or context, unreachable, timed out, refused.
    pub const CLUSTER: u8 = 4;
    /// The command line is wrong (sysexits' `EX_USAGE`).
    pub const USAGE: u8 = 64;
}

/// `apiVersion` of the documents `kwarm status -o json` prints.
pub const API_VERSION: &str = "kwarm.io/v1alpha1";

/// The variables `kwarm status` reads; every other variable of the manager's environment is
/// ignored, so a manager's environment works, and so does none at all.
pub const STATUS_VARIABLES: &[&str] = &[
    "NAMESPACE",
    "DAEMONSET_NAME",
    // placement: which nodes are skipped for their platform, which ones the node gate holds
    "NODE_SELECTOR",
    "AFFINITY",
    "KIP_IMAGE",
    "KIP_IMAGE_PLATFORMS",
    // digest checks
    "CACHING_INTERVAL_HOURS",
    "CACHING_INTERVAL",
    "DIGEST_CHECK_INTERVAL",
    "INSECURE_REGISTRIES",
    // the gates
    "NODE_GATE_TAINT",
    "NODE_GATE_TIMEOUT",
    "ROLLOUT_GATE",
    "ROLLOUT_GATE_TIMEOUT",
    "DEPLOYMENT_SELECTOR",
    "WATCH_NAMESPACES",
    "EXCLUDE_NAMESPACES",
    "EXCLUDE_IMAGES",
];

/// The configuration `kwarm status` works with: [`STATUS_VARIABLES`] of `vars`, validated as the
/// manager validates them; the rest (`IMAGES`, resources, ports) is none of its business.
pub fn status_config(
    vars: impl IntoIterator<Item = (String, String)>,
    own_namespace: Option<String>,
) -> Result<Config, ConfigErrors> {
    let read = vars.into_iter().filter(|(k, _)| STATUS_VARIABLES.contains(&k.as_str()));
    Config::from_vars(read, own_namespace)
}

/// The namespace a command works in: the `-n` flag, else `NAMESPACE`, else the kubeconfig
/// context's namespace, else the pod's own (in a cluster), else the manager's default.
pub fn namespace(flag: Option<&str>, env: Option<&str>, context: Option<&str>, own: Option<&str>) -> String {
    [flag, env, context, own]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|n| !n.is_empty())
        .unwrap_or(crate::config::DEFAULT_NAMESPACE)
        .to_string()
}

/// Which DaemonSets `kwarm status` reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// This one, named by `--daemonset` or `DAEMONSET_NAME`: one `Status`.
    One { namespace: String, daemonset: String },
    /// Every DaemonSet kwarm manages in the namespace (`None`: all namespaces), optionally only
    /// those of one name: a `StatusList`.
    Discover { namespace: Option<String>, daemonset: Option<String> },
}

impl Selection {
    /// `--daemonset` wins over `DAEMONSET_NAME`; without either, kwarm's DaemonSets are
    /// discovered. `-A` searches every namespace.
    pub fn new(all_namespaces: bool, namespace: String, flag: Option<&str>, env: Option<&str>) -> Selection {
        let daemonset = [flag, env].into_iter().flatten().map(str::trim).find(|n| !n.is_empty());
        match (all_namespaces, daemonset) {
            (false, Some(d)) => Selection::One { namespace, daemonset: d.to_string() },
            (false, None) => Selection::Discover { namespace: Some(namespace), daemonset: None },
            (true, d) => Selection::Discover { namespace: None, daemonset: d.map(str::to_string) },
        }
    }
}

/// What keeps a DaemonSet from being warm, one line each (the texts exact, as JSON prints them;
/// [`status_text`] makes them terminal-safe); empty when it is warm: every image of
/// the DaemonSet held on every node the DaemonSet controller places it on, nothing quarantined,
/// no init container failing, and the manager's own `Warm` condition (when it publishes one) not
/// `False`.
pub fn not_warm(report: &StatusReport) -> Vec<String> {
    let name = format!("{}/{}", report.namespace, report.daemonset);
    if !report.exists {
        return vec![format!("DaemonSet {name} does not exist")];
    }
    let mut reasons = Vec::new();
    let nodes = match report.desired_nodes {
        Some(n) => n,
        None => {
            reasons.push("the DaemonSet controller has not placed the current template yet".to_string());
            report.nodes
        }
    };
    for s in &report.images {
        if s.warm < nodes || (nodes == 0 && report.desired_nodes.is_none()) {
            let failing: Vec<String> =
                s.failures.iter().map(|(reason, on)| format!("{reason} on {}", on.len())).collect();
            let failing =
                if failing.is_empty() { String::new() } else { format!(" ({})", failing.join(", ")) };
            reasons.push(format!("{}: warm on {} of {nodes} nodes{failing}", s.image, s.warm));
        }
    }
    for (image, entry) in &report.quarantined {
        reasons.push(format!("{image}: quarantined (attempt {})", entry.attempt));
    }
    for (failure, on) in &report.init_failures {
        reasons.push(format!("init container (KIP_IMAGE) failing on {on} nodes: {failure}"));
    }
    if reasons.is_empty()
        && let Some(c) = report.manager_warm.as_ref().filter(|c| !c.status)
    {
        reasons.push(format!("the manager reports Warm=False ({}): {}", c.reason, c.message));
    }
    reasons
}

/// One DaemonSet in `kwarm status -o json`: the report with its verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDocument<'a> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub warm: bool,
    pub not_warm: Vec<String>,
    #[serde(flatten)]
    pub report: &'a StatusReport,
}

impl<'a> StatusDocument<'a> {
    pub fn new(report: &'a StatusReport) -> StatusDocument<'a> {
        let not_warm = not_warm(report);
        StatusDocument {
            api_version: API_VERSION,
            kind: "Status",
            warm: not_warm.is_empty(),
            not_warm,
            report,
        }
    }
}

/// Several DaemonSets (discovered ones) in `kwarm status -o json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusList<'a> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub warm: bool,
    pub items: Vec<StatusDocument<'a>>,
}

impl<'a> StatusList<'a> {
    pub fn new(reports: &'a [StatusReport]) -> StatusList<'a> {
        let items: Vec<StatusDocument> = reports.iter().map(StatusDocument::new).collect();
        StatusList { api_version: API_VERSION, kind: "StatusList", warm: items.iter().all(|i| i.warm), items }
    }
}

/// The text of `kwarm status`: a line per DaemonSet (NAME, WARM, IMAGES, NODES), then each
/// DaemonSet's report and what keeps it from being warm; every text from the cluster in it
/// [`terminal_safe`](crate::status::terminal_safe).
pub fn status_text(reports: &[StatusReport], searched: &str) -> String {
    use std::fmt::Write as _;
    if reports.is_empty() {
        return format!("No DaemonSet managed by kwarm {}\n", crate::status::terminal_safe(searched));
    }
    let reports: Vec<StatusReport> = reports.iter().map(StatusReport::terminal_safe).collect();
    let names: Vec<String> = reports.iter().map(|r| format!("{}/{}", r.namespace, r.daemonset)).collect();
    let width = names.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let _ = writeln!(out, "{:<width$}  {:<4}  {:>6}  {:>5}", "NAME", "WARM", "IMAGES", "NODES");
    for (name, r) in names.iter().zip(&reports) {
        let warm = if not_warm(r).is_empty() { "yes" } else { "no" };
        let _ = writeln!(out, "{name:<width$}  {warm:<4}  {:>6}  {:>5}", r.images.len(), r.nodes);
    }
    for r in &reports {
        out.push('\n');
        out += &r.to_text();
        let reasons = not_warm(r);
        if !reasons.is_empty() && r.exists {
            let _ = writeln!(out, "\nNot warm:");
            for reason in reasons {
                let _ = writeln!(out, "  {reason}");
            }
        }
    }
    out
}

/// The log filter: `RUST_LOG` (default `info`), without the lines kube logs itself for a failure
/// kwarm logs anyway (one line per retry): the client's ERROR line for every failed request, the
/// watcher's warning for a refused watch. `RUST_LOG` naming a kube crate gets it as asked.
pub fn log_filter(rust_log: Option<&str>) -> String {
    let mut filter = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info").to_string();
    for (krate, directive) in KUBE_DUPLICATES {
        if !filter.contains(krate) {
            filter = format!("{filter},{directive}");
        }
    }
    filter
}

/// kube's tracing targets that repeat a failure kwarm logs itself: the client logs every failed
/// request at ERROR, the watcher a refused (403) watch at WARN.
const KUBE_DUPLICATES: [(&str, &str); 2] =
    [("kube_client", "kube_client::client::builder=off"), ("kube_runtime", "kube_runtime::watcher=error")];

/// A ConfigMap found in a manifest, as `envFrom` would hand it to the manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigMapInput {
    pub name: String,
    pub namespace: Option<String>,
    /// `data`, every value as text.
    pub data: Vec<(String, String)>,
    /// What Kubernetes would refuse or `envFrom` would not pass on, one line each.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl ConfigMapInput {
    /// `namespace/name`, or `name` when the manifest names no namespace.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The ConfigMaps of a manifest: one or more YAML (or JSON) documents, `kind: List` items
/// included (what `kubectl get -o yaml` and `helm template` print); other kinds are skipped.
/// An error when the text is not YAML or holds no ConfigMap.
pub fn configmaps_in(text: &str) -> Result<Vec<ConfigMapInput>, String> {
    use serde::Deserialize as _;
    let mut found = Vec::new();
    let mut kinds = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("not valid YAML (document {}): {e}", i + 1))?;
        collect_configmaps(&value, &mut found, &mut kinds);
    }
    if found.is_empty() {
        let hint = if kinds.iter().any(|k| k == "Template") {
            " (an OpenShift Template: process it first, `oc process -f FILE | kwarm check -f -`)"
        } else {
            ""
        };
        return Err(match kinds.is_empty() {
            true => format!("no ConfigMap in the manifest{hint}"),
            false => format!("no ConfigMap in the manifest, only {}{hint}", kinds.join(", ")),
        });
    }
    Ok(found)
}

fn collect_configmaps(value: &serde_yaml::Value, found: &mut Vec<ConfigMapInput>, kinds: &mut Vec<String>) {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    match kind {
        "ConfigMap" => found.push(configmap_input(value)),
        "List" => {
            for item in value.get("items").and_then(|i| i.as_sequence()).into_iter().flatten() {
                collect_configmaps(item, found, kinds);
            }
        }
        "" => {}
        other => kinds.push(other.to_string()),
    }
}

fn configmap_input(value: &serde_yaml::Value) -> ConfigMapInput {
    use serde_yaml::Value;
    let metadata = value.get("metadata");
    let text = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str).map(str::to_string);
    let mut input = ConfigMapInput {
        name: text("name").unwrap_or_else(|| "(no name)".into()),
        namespace: text("namespace"),
        ..Default::default()
    };
    match value.get("data") {
        None | Some(Value::Null) => input
            .warnings
            .push("no data: the manager would get no variables from it and run with every default".into()),
        Some(Value::Mapping(map)) => {
            for (key, v) in map {
                let key = match key {
                    Value::String(k) => k.clone(),
                    other => {
                        let shown = scalar_text(other).unwrap_or_else(|| "?".into());
                        input.problems.push(format!("data key {shown:?}: a string key"));
                        continue;
                    }
                };
                match v {
                    Value::String(s) => input.data.push((key, s.clone())),
                    Value::Null => input.data.push((key, String::new())),
                    other => match scalar_text(other) {
                        Some(s) => {
                            input.problems.push(format!(
                                "{key}: invalid value {s}: a string (quote it: {key}: \"{s}\"); \
                                 Kubernetes refuses a ConfigMap with other values"
                            ));
                            input.data.push((key, s));
                        }
                        None => input.problems.push(format!(
                            "{key}: invalid value: a string, not a YAML list or map (JSON variables are \
                             written as one string: {key}: '{{...}}')"
                        )),
                    },
                }
            }
        }
        Some(_) => input.problems.push("data: a map of variable names to strings".into()),
    }
    if value.get("binaryData").is_some_and(|b| !b.is_null()) {
        input.warnings.push("binaryData: envFrom passes only data on, these keys are ignored".into());
    }
    input
}

fn scalar_text(value: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// `kwarm check --list`: every variable kwarm reads, its default and what it does.
pub fn variables_text() -> String {
    use std::fmt::Write as _;
    let shown = |d: &str| if d.is_empty() { "-".to_string() } else { d.to_string() };
    let name_width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(8);
    let default_width = VARIABLES.iter().map(|v| shown(v.default).len()).max().unwrap_or(7).min(24);
    let mut out = String::new();
    let _ = writeln!(out, "{:<name_width$}  {:<default_width$}  DESCRIPTION", "VARIABLE", "DEFAULT");
    for v in VARIABLES {
        let _ =
            writeln!(out, "{:<name_width$}  {:<default_width$}  {}", v.name, shown(v.default), v.description);
    }
    out
}

#[cfg(test)]
mod tests;
