//! Configuration from the environment, parsed and validated once.
//!
//! kubernetes-image-puller's variable names keep their meaning, so an existing puller ConfigMap
//! works unchanged. Every variable is checked and every problem is reported at once, one line each,
//! naming the variable, the offending entry and what is expected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Toleration,
};
use serde::de::DeserializeOwned;

use crate::gate::{GateTaint, NodeGate, requirement_admits};
use crate::holder::{
    Holder, IDLE_HOLDER_NAME, INIT_CONTAINER_NAME, derived_holder_name, is_kwarm_sleep_image,
    is_puller_image, is_reserved_name, parse_image_reference,
};
use crate::labels::{self, LabelSelector};
use crate::quantity::Quantity;
use crate::rollout::{Certificates, Endpoint, GateMode, RolloutGate};

/// The default image that holds `/sleep`, overridable with `KIP_IMAGE`.
pub const DEFAULT_KIP_IMAGE: &str = concat!("ghcr.io/kwarm/sleep:v", env!("CARGO_PKG_VERSION"));
/// The Linux architectures kwarm's sleep image is built for (`make images`: one image index), as
/// nodes name them in `kubernetes.io/arch`.
pub const KWARM_SLEEP_ARCHITECTURES: &[&str] = &["amd64", "arm64"];
/// The architectures assumed for a `KIP_IMAGE` that is not kwarm's when `KIP_IMAGE_PLATFORMS` is
/// not set: a puller user's own image is most likely built for amd64 only, and a holder on a node
/// its image has no `/sleep` for fails forever.
pub const OTHER_KIP_IMAGE_ARCHITECTURES: &[&str] = &["amd64"];
/// The node labels with a node's architecture and OS (the beta ones are still set by kubelets).
const ARCH_LABELS: [&str; 2] = ["kubernetes.io/arch", "beta.kubernetes.io/arch"];
const OS_LABELS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];

/// `NAMESPACE` when neither it nor the pod's own namespace is known: kubernetes-image-puller's.
pub const DEFAULT_NAMESPACE: &str = "k8s-image-puller";
/// The shortest refresh interval accepted.
const MIN_CACHING_INTERVAL: Duration = Duration::from_secs(60);

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: invalid value {:?}: {}", self.variable, self.value, self.expected)
    }
}

/// Something accepted but worth telling the user: `kwarm check` prints it, the manager logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub variable: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.variable, self.message)
        } else {
            write!(f, "{}={:?}: {}", self.variable, self.value, self.message)
        }
    }
}

/// Every problem found in the environment, in variable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Per-container resources of holders and the init container.
#[derive(Debug, Clone, PartialEq)]
pub struct HolderResources {
    pub cpu_request: Quantity,
    pub cpu_limit: Quantity,
    pub memory_request: Quantity,
    pub memory_limit: Quantity,
}

/// Kubernetes image pull policy for holder containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Which namespaces' Deployments are watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    All,
    Only(BTreeSet<String>),
}

/// An `EXCLUDE_IMAGES` entry: a glob when it has `*` or `?`, a substring otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagePattern {
    Substring(String),
    Glob(String),
}

impl ImagePattern {
    pub fn matches(&self, image: &str) -> bool {
        match self {
            ImagePattern::Substring(s) => image.contains(s.as_str()),
            ImagePattern::Glob(g) => glob_match(g.as_bytes(), image.as_bytes()),
        }
    }
}

/// `*` matches any run of characters, `?` one character; everything else is literal.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Deployment watching settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    pub enabled: bool,
    pub selector: LabelSelector,
    pub namespaces: Namespaces,
    pub exclude_namespaces: BTreeSet<String>,
    /// `NAMESPACE_SELECTOR`: only namespaces with these labels opt in (`None`: every namespace
    /// `WATCH_NAMESPACES` names).
    pub namespace_selector: Option<LabelSelector>,
    pub exclude_images: Vec<ImagePattern>,
    pub inherit_pull_secrets: bool,
}

impl WatchConfig {
    pub fn namespace_selected(&self, namespace: &str) -> bool {
        let included = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Only(list) => list.contains(namespace),
        };
        included && !self.exclude_namespaces.contains(namespace)
    }

    pub fn image_excluded(&self, image: &str) -> bool {
        self.exclude_images.iter().any(|p| p.matches(image))
    }
}

/// `maxSurge` of the DaemonSet: nodes updating at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaxSurge {
    Nodes(i32),
    Percent(u8),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `IMAGES` in the order given.
    pub images: Vec<Holder>,
    pub daemonset_name: String,
    pub daemonset_annotations: BTreeMap<String, String>,
    pub namespace: String,
    pub deployment_name: Option<String>,
    /// The ConfigMap (in `namespace`) the manager's environment comes from: watched, and a valid
    /// edit applied without a restart.
    pub config_map: Option<String>,
    pub caching_interval: Duration,
    pub resources: HolderResources,
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Option<Affinity>,
    pub tolerations: Vec<Toleration>,
    pub image_pull_secrets: Vec<String>,
    pub kip_image: String,
    /// The Linux architectures `KIP_IMAGE` has a `/sleep` for (`kubernetes.io/arch` values): the
    /// holders are placed on those nodes only (see [`Config::holder_affinity`]).
    pub kip_architectures: BTreeSet<String>,
    pub priority_class_name: Option<String>,
    pub image_pull_policy: Option<PullPolicy>,
    pub max_surge: MaxSurge,
    pub watch: WatchConfig,
    pub image_retention: Duration,
    pub pull_timeout: Duration,
    pub retry_backoff: Duration,
    pub max_retries: u32,
    pub max_images: usize,
    /// `MAX_IMAGES_PER_NAMESPACE`: images one namespace's Deployments get warmed at most.
    pub max_images_per_namespace: Option<usize>,
    /// Digest-aware refresh; `None` when `DIGEST_CHECK_INTERVAL=0`.
    pub digest_check: Option<DigestCheck>,
    /// `INSECURE_REGISTRIES`: registries the digest and access checks reach over plain HTTP.
    pub insecure_registries: BTreeSet<String>,
    /// The node warm-up gate; `None` when `NODE_GATE_TAINT` is not set.
    pub node_gate: Option<NodeGate>,
    /// The rollout gate; `None` unless `ROLLOUT_GATE` turns it on.
    pub rollout_gate: Option<RolloutGate>,
    /// `None` when set to `0` (disabled).
    pub metrics_bind_address: Option<SocketAddr>,
    pub health_probe_bind_address: Option<SocketAddr>,
    pub leader_elect: bool,
    pub log_format: LogFormat,
    /// Values that were accepted with a substitution or a caveat.
    pub warnings: Vec<ConfigWarning>,
}

/// The variables as given, and the problems found while each is parsed.
struct Checker {
    raw: BTreeMap<String, String>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl Checker {
    fn warn(&mut self, variable: &str, value: &str, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            variable: variable.to_string(),
            value: value.to_string(),
            message: message.into(),
        });
    }

    fn fail(&mut self, variable: &'static str, value: &str, expected: impl Into<String>) {
        self.errors.push(ConfigError { variable, value: value.to_string(), expected: expected.into() });
    }

    /// The value as given (one of [`VARIABLES`]).
    fn raw(&self, variable: &str) -> Option<&str> {
        debug_assert!(is_known(variable), "{variable} is not in VARIABLES");
        self.raw.get(variable).map(String::as_str)
    }

    /// Whether the variable is set to something other than blanks.
    fn given(&self, variable: &str) -> bool {
        self.raw(variable).is_some_and(|v| !v.trim().is_empty())
    }

    /// Parses a present, non-blank value or falls back to `default`, recording failures.
    fn parse<T>(
        &mut self,
        variable: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let raw = self.raw(variable).map(str::to_owned);
        match raw.as_deref().map(str::trim) {
            None | Some("") => default,
            Some(value) => match parse(value) {
                Ok(v) => v,
                Err(expected) => {
                    self.fail(variable, raw.as_deref().unwrap_or_default(), expected);
                    default
                }
            },
        }
    }

    /// [`Checker::parse`] for a JSON variable: `null` means "not set", as it did for
    /// kubernetes-image-puller (Go's `json.Unmarshal` leaves the value empty).
    fn parse_json<T>(
        &mut self,
        variable: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        if self.raw(variable).is_some_and(|v| v.trim() == "null") {
            return default;
        }
        self.parse(variable, default, parse)
    }
}

impl Config {
    /// Reads the process environment. `own_namespace` is the namespace the manager's pod runs in,
    /// when known (service-account mount); it is the default for `NAMESPACE`.
    pub fn from_env(own_namespace: Option<String>) -> Result<Config, ConfigErrors> {
        // Not `std::env::vars()`: it panics on any variable that is not UTF-8, even one that is
        // none of kwarm's business. Only our own variables must be text.
        let mut not_text = Vec::new();
        let mut vars = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Some(variable) =
                key.to_str().and_then(|k| VARIABLES.iter().find(|v| v.name == k)).map(|v| v.name)
            else {
                // only the name matters (a likely typo of one of ours is worth a warning)
                if let Some(name) = key.to_str() {
                    vars.push((name.to_string(), String::new()));
                }
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((variable.to_string(), value)),
                Err(value) => not_text.push(ConfigError {
                    variable,
                    value: value.to_string_lossy().into_owned(),
                    expected: "UTF-8 text".into(),
                }),
            }
        }
        match Config::from_vars(vars, own_namespace) {
            Ok(config) if not_text.is_empty() => Ok(config),
            Ok(_) => Err(ConfigErrors(not_text)),
            Err(ConfigErrors(more)) => Err(ConfigErrors(not_text.into_iter().chain(more).collect())),
        }
    }

    /// Parses and validates the given variables. Pure: no clock, no I/O.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
        own_namespace: Option<String>,
    ) -> Result<Config, ConfigErrors> {
        // Only our variables are parsed; the names of the others are checked for likely typos.
        let (ours, others): (Vec<_>, Vec<_>) = vars.into_iter().partition(|(k, _)| is_known(k));
        let mut c = Checker { raw: ours.into_iter().collect(), errors: Vec::new(), warnings: Vec::new() };
        for (name, _) in &others {
            if let Some(known) = likely_typo(name) {
                c.warn(name, "", format!("not a kwarm variable, so it is ignored; did you mean {known}?"));
            }
        }

        let images = parse_images(&mut c);
        let (daemonset_name, daemonset_annotations, namespace, deployment_name) =
            parse_identity(&mut c, own_namespace.clone());
        let config_map =
            c.parse("CONFIG_MAP", None, |v| labels::check_dns1123_subdomain(v).map(|()| Some(v.to_string())));
        let caching_interval = parse_caching_interval(&mut c);
        let resources = parse_resources(&mut c);
        let placement = parse_placement(&mut c);
        let watch = parse_watch(&mut c);
        let image_retention = c.parse("IMAGE_RETENTION", Duration::from_secs(24 * 3600), parse_duration);
        let (pull_timeout, retry_backoff, max_retries) = parse_quarantine(&mut c);
        let max_images = c.parse("MAX_IMAGES", 100, |v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| "a whole number from 1 to 1000".to_string())
        });
        let max_images_per_namespace =
            c.parse("MAX_IMAGES_PER_NAMESPACE", None, |v| {
                v.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).map(Some).ok_or_else(|| {
                    "a whole number from 1 to 1000 (unset: no limit but MAX_IMAGES)".to_string()
                })
            });
        let node_gate = parse_node_gate(&mut c);
        let (digest_check, insecure_registries) = parse_digest_check(&mut c, caching_interval);
        let (metrics_bind_address, health_probe_bind_address, leader_elect, log_format) =
            parse_server(&mut c);
        // The webhook's Service and Secret live with the manager's pods, which may run in another
        // namespace than the DaemonSet (NAMESPACE).
        let rollout_gate = parse_rollout_gate(&mut c, own_namespace.as_deref().unwrap_or(&namespace));

        // EXCLUDE_IMAGES wins over IMAGES too: a matching image is never warmed, and the user is
        // told which entries that drops.
        let (images, excluded): (Vec<Holder>, Vec<Holder>) = images.into_iter().partition(|h| {
            !(watch.image_excluded(&h.image)
                || parse_image_reference(&h.image).is_ok_and(|canonical| watch.image_excluded(&canonical)))
        });
        for holder in excluded {
            c.warn(
                "IMAGES",
                &format!("{}={}", holder.name, holder.image),
                "matches EXCLUDE_IMAGES, so it is not warmed",
            );
        }

        // Checks across variables, only when each side parsed.
        if images.is_empty() && !watch.enabled && !c.errors.iter().any(|e| e.variable == "IMAGES") {
            let given = c.raw("IMAGES").unwrap_or_default().to_string();
            c.fail("IMAGES", &given, "at least one image when WATCH_DEPLOYMENTS=false: nothing to warm");
        }
        if images.len() > max_images {
            c.fail(
                "IMAGES",
                &format!("{} entries", images.len()),
                format!("at most MAX_IMAGES={max_images} entries; raise MAX_IMAGES"),
            );
        }
        if let (Some(m), Some(h)) = (metrics_bind_address, health_probe_bind_address)
            && m.port() == h.port()
            && m.port() != 0
        {
            let given = c.raw("HEALTH_PROBE_BIND_ADDRESS").unwrap_or(":8081").to_string();
            c.fail("HEALTH_PROBE_BIND_ADDRESS", &given, "a port different from METRICS_BIND_ADDRESS");
        }
        if let Some(gate) = &rollout_gate {
            if !watch.enabled {
                let given = c.raw("ROLLOUT_GATE").unwrap_or_default().to_string();
                c.fail(
                    "ROLLOUT_GATE",
                    &given,
                    "false when WATCH_DEPLOYMENTS=false: it gates the pods of watched Deployments",
                );
            }
            let port = gate.bind_address.port();
            if [metrics_bind_address, health_probe_bind_address].iter().flatten().any(|a| a.port() == port) {
                let given = c.raw("WEBHOOK_BIND_ADDRESS").unwrap_or(":9443").to_string();
                c.fail(
                    "WEBHOOK_BIND_ADDRESS",
                    &given,
                    "a port different from METRICS_BIND_ADDRESS and HEALTH_PROBE_BIND_ADDRESS",
                );
            }
        }

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        Ok(Config {
            images,
            daemonset_name,
            daemonset_annotations,
            namespace,
            deployment_name,
            config_map,
            caching_interval,
            resources,
            node_selector: placement.node_selector,
            affinity: placement.affinity,
            tolerations: placement.tolerations,
            image_pull_secrets: placement.image_pull_secrets,
            kip_image: placement.kip_image,
            kip_architectures: placement.kip_architectures,
            priority_class_name: placement.priority_class_name,
            image_pull_policy: placement.image_pull_policy,
            max_surge: placement.max_surge,
            watch,
            image_retention,
            pull_timeout,
            retry_backoff,
            max_retries,
            max_images,
            max_images_per_namespace,
            digest_check,
            insecure_registries,
            node_gate,
            rollout_gate,
            metrics_bind_address,
            health_probe_bind_address,
            leader_elect,
            log_format,
            warnings: c.warnings,
        })
    }
}

/// One variable kwarm reads: its name and its default as a user would write it (empty where
/// the default is no value or is derived: the pod's namespace, kwarm's sleep image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    /// One line for `kwarm check --list`.
    pub description: &'static str,
}

const fn var(name: &'static str, default: &'static str, description: &'static str) -> Variable {
    Variable { name, default, description }
}

/// Every variable kwarm reads: the one list the environment is filtered by, typos are checked
/// against and the README's table is tested against. Setting a variable to its `default` changes
/// nothing (a unit test holds the parsers to it).
pub const VARIABLES: &[Variable] = &[
    var(
        "IMAGES",
        "",
        "`;`-separated `name=image` or `image` to warm; required unless Deployment watching is on",
    ),
    var("DAEMONSET_NAME", "kubernetes-image-puller", "name of the DaemonSet of holders"),
    var("DAEMONSET_ANNOTATIONS", "{}", "JSON object of annotations for the DaemonSet"),
    var("NAMESPACE", "", "where the DaemonSet lives (default: the pod's namespace, else k8s-image-puller)"),
    var("DEPLOYMENT_NAME", "", "the manager's own Deployment, owner of the DaemonSet"),
    var("CONFIG_MAP", "", "the ConfigMap this environment comes from: edits apply without a restart"),
    var("CACHING_INTERVAL_HOURS", "1", "hours between refreshes (the default DIGEST_CHECK_INTERVAL)"),
    var("CACHING_INTERVAL", "", "the same as a duration (30m, 6h; at least 1m); wins over the hours form"),
    var("CACHING_MEMORY_REQUEST", "10Mi", "memory request of each holder container"),
    var("CACHING_MEMORY_LIMIT", "20Mi", "memory limit of each holder container"),
    var("CACHING_CPU_REQUEST", ".05", "CPU request of each holder container"),
    var("CACHING_CPU_LIMIT", ".2", "CPU limit of each holder container"),
    var("NODE_SELECTOR", "{}", "JSON map of node labels for the holders (kubernetes.io/os: linux added)"),
    var("AFFINITY", "{}", "JSON Affinity of the holder pods"),
    var("TOLERATIONS", "[]", "JSON array of Tolerations of the holder pods"),
    var("IMAGE_PULL_SECRETS", "", "`;`-separated pull secret names in NAMESPACE"),
    var("KIP_IMAGE", "", "image with /sleep for the init container (default: kwarm's sleep image)"),
    var("KIP_IMAGE_PLATFORMS", "", "platforms KIP_IMAGE has a /sleep for (linux/amd64,linux/arm64)"),
    var("PRIORITY_CLASS_NAME", "", "priority class of the holder pods"),
    var("IMAGE_PULL_POLICY", "", "Always, IfNotPresent or Never for the holders"),
    var("MAX_CONCURRENT_NODES", "10", "nodes updating at once (maxSurge: a number or a percentage)"),
    var("WATCH_DEPLOYMENTS", "true", "warm the images of selected Deployments"),
    var("DEPLOYMENT_SELECTOR", "kwarm.io/enabled=true", "label selector of the Deployments to warm"),
    var("WATCH_NAMESPACES", "*", "namespaces whose Deployments are watched (list or *)"),
    var("EXCLUDE_NAMESPACES", "", "namespaces never watched"),
    var("NAMESPACE_SELECTOR", "", "label selector of the namespaces that opt in (unset: every watched one)"),
    var("EXCLUDE_IMAGES", "", "substrings or globs of images never warmed"),
    var("IMAGE_RETENTION", "24h", "keep an image no Deployment uses any more this long"),
    var("PULL_TIMEOUT", "10m", "an image failing on every node this long is quarantined"),
    var("RETRY_BACKOFF", "30s", "first retry of a quarantined image after this long, doubling"),
    var("MAX_RETRIES", "3", "retries of a quarantined image"),
    var("INHERIT_PULL_SECRETS", "false", "mirror the Deployments' pull secrets into NAMESPACE"),
    var("MAX_IMAGES", "100", "bound on holder containers (1 to 1000)"),
    var(
        "MAX_IMAGES_PER_NAMESPACE",
        "",
        "images one namespace's Deployments get warmed at most (unset: no limit)",
    ),
    var(
        "DIGEST_CHECK_INTERVAL",
        "",
        "how often tags are resolved to digests (default: the caching interval; 0: off)",
    ),
    var("INSECURE_REGISTRIES", "", "comma-separated host[:port] reached over plain HTTP"),
    var("NODE_GATE_TAINT", "", "taint of the node warm-up gate, key[=value][:effect] (unset: off)"),
    var("NODE_GATE_TIMEOUT", "10m", "a gated node is released this long after it joined"),
    var("ROLLOUT_GATE", "false", "gate new pods of watched Deployments until warm: false, true or opt-in"),
    var("ROLLOUT_GATE_TIMEOUT", "5m", "a gated pod is released this long after it was created"),
    var("WEBHOOK_BIND_ADDRESS", ":9443", "address of the rollout gate's admission webhook (HTTPS)"),
    var("WEBHOOK_URL", "", "https:// URL the API server calls the webhook at (unset: WEBHOOK_SERVICE)"),
    var("WEBHOOK_SERVICE", "kwarm-webhook", "Service the API server calls the webhook through"),
    var("WEBHOOK_SECRET", "kwarm-webhook-tls", "Secret where kwarm keeps its webhook CA and certificate"),
    var("WEBHOOK_CERT_DIR", "", "read the webhook's tls.crt, tls.key, ca.crt from here instead"),
    var(
        "WEBHOOK_CONFIGURATION",
        "",
        "the MutatingWebhookConfiguration (default: kwarm-rollout-gate-<namespace>)",
    ),
    var("METRICS_BIND_ADDRESS", ":8080", "address of /metrics (0: off)"),
    var("HEALTH_PROBE_BIND_ADDRESS", ":8081", "address of /healthz and /readyz (0: off)"),
    var("LEADER_ELECT", "true", "Lease-based leader election"),
    var("LOG_FORMAT", "text", "text or json (levels from RUST_LOG)"),
];

/// Whether `name` is one of kwarm's variables.
pub fn is_known(name: &str) -> bool {
    VARIABLES.iter().any(|v| v.name == name)
}

/// The variable of kwarm's that `name` most likely misspells (one or two letters off), if any.
fn likely_typo(name: &str) -> Option<&'static str> {
    if name.len() < 5 {
        return None;
    }
    VARIABLES
        .iter()
        .map(|v| (strsim::osa_distance(name, v.name), v.name))
        .filter(|(distance, _)| (1..=2).contains(distance))
        .min()
        .map(|(_, known)| known)
}

/// DAEMONSET_NAME, DAEMONSET_ANNOTATIONS, NAMESPACE, DEPLOYMENT_NAME.
fn parse_identity(
    c: &mut Checker,
    own_namespace: Option<String>,
) -> (String, BTreeMap<String, String>, String, Option<String>) {
    let daemonset_name = c.parse("DAEMONSET_NAME", "kubernetes-image-puller".to_string(), |v| {
        // The name is also the value of the instance label, so it must fit a label value.
        labels::check_dns1123_subdomain(v)?;
        if v.len() > 63 {
            return Err("at most 63 characters (it is also a label value)".into());
        }
        Ok(v.to_string())
    });
    let daemonset_annotations = c.parse_json("DAEMONSET_ANNOTATIONS", BTreeMap::new(), |v| {
        let map: BTreeMap<String, String> = parse_json_value(v, "a JSON object of strings")?;
        for key in map.keys() {
            labels::check_qualified_name(key).map_err(|e| format!("annotation key {key:?}: {e}"))?;
            if key.starts_with("kwarm.io/") {
                return Err(format!("annotation key {key:?}: the kwarm.io/ prefix is kwarm's own"));
            }
        }
        Ok(map)
    });
    // The pod's own namespace (from the service account mount) is a default, but still input.
    let own_namespace = match own_namespace {
        Some(ns) if labels::check_dns1123_label(&ns).is_err() => {
            c.warn("NAMESPACE", &ns, "the pod's own namespace is not a valid name; using k8s-image-puller");
            None
        }
        other => other,
    };
    let namespace = c.parse("NAMESPACE", own_namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into()), |v| {
        labels::check_dns1123_label(v).map(|()| v.to_string())
    });
    let deployment_name = c
        .parse("DEPLOYMENT_NAME", None, |v| labels::check_dns1123_subdomain(v).map(|()| Some(v.to_string())));
    (daemonset_name, daemonset_annotations, namespace, deployment_name)
}

/// CACHING_INTERVAL (a duration, at least a minute), else CACHING_INTERVAL_HOURS.
fn parse_caching_interval(c: &mut Checker) -> Duration {
    let hours = c.parse("CACHING_INTERVAL_HOURS", Duration::from_secs(3600), |v| match v.parse::<u64>() {
        Ok(h) if h > 0 && h <= 24 * 365 => Ok(Duration::from_secs(h * 3600)),
        _ => Err("a positive whole number of hours, e.g. 1 or 6".into()),
    });
    // Each refresh may roll every holder pod: an interval of seconds would roll all the time.
    c.parse("CACHING_INTERVAL", hours, |v| {
        let d = positive_duration(v)?;
        if d < MIN_CACHING_INTERVAL {
            return Err("a duration of at least 1m (each refresh may roll every holder pod)".into());
        }
        Ok(d)
    })
}

/// Where and how the holders run.
struct Placement {
    node_selector: BTreeMap<String, String>,
    affinity: Option<Affinity>,
    tolerations: Vec<Toleration>,
    image_pull_secrets: Vec<String>,
    kip_image: String,
    kip_architectures: BTreeSet<String>,
    priority_class_name: Option<String>,
    image_pull_policy: Option<PullPolicy>,
    max_surge: MaxSurge,
}

fn parse_placement(c: &mut Checker) -> Placement {
    let node_selector = c.parse_json("NODE_SELECTOR", BTreeMap::new(), |v| {
        let mut map: BTreeMap<String, String> = parse_json_value(v, "a JSON object of label keys to values")?;
        for (k, val) in &map {
            labels::check_qualified_name(k).map_err(|e| format!("key {k:?}: {e}"))?;
            labels::check_label_value(val).map_err(|e| format!("value {val:?}: {e}"))?;
        }
        add_linux_default(&mut map);
        Ok(map)
    });
    let node_selector = if node_selector.is_empty() {
        let mut map = BTreeMap::new();
        add_linux_default(&mut map);
        map
    } else {
        node_selector
    };
    let affinity = c.parse_json("AFFINITY", None, |v| {
        let affinity: Affinity = parse_k8s_json(v, "a JSON Affinity object")?;
        check_affinity(&affinity)?;
        Ok((affinity != Affinity::default()).then_some(affinity))
    });
    let tolerations = c.parse_json("TOLERATIONS", Vec::new(), |v| {
        let tolerations: Vec<Toleration> = parse_k8s_json(v, "a JSON array of Toleration objects")?;
        tolerations
            .iter()
            .enumerate()
            .try_for_each(|(i, t)| check_toleration(t).map_err(|e| format!("[{i}]: {e}")))?;
        Ok(tolerations)
    });
    let image_pull_secrets = c.parse("IMAGE_PULL_SECRETS", Vec::new(), |v| {
        let mut names = Vec::new();
        for name in v.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            labels::check_dns1123_subdomain(name).map_err(|e| format!("secret name {name:?}: {e}"))?;
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        Ok(names)
    });
    let mut kip_image = c.parse("KIP_IMAGE", DEFAULT_KIP_IMAGE.to_string(), |v| {
        parse_image_reference(v)?;
        // The puller's own image has no `/sleep --copy-to` (its init container runs a shell
        // copying /bin/sleep); a puller ConfigMap that names it must still work, so kwarm's
        // holder image takes its place, and the user is told which image that is.
        Ok(v.to_string())
    });
    if is_puller_image(&kip_image) {
        let given = kip_image.clone();
        c.warn(
            "KIP_IMAGE",
            &given,
            format!(
                "kubernetes-image-puller's image has no /sleep for kwarm's init container; kwarm uses \
                 its own {DEFAULT_KIP_IMAGE} instead (air-gapped clusters: mirror that image and set \
                 KIP_IMAGE to the mirror)"
            ),
        );
        kip_image = DEFAULT_KIP_IMAGE.to_string();
    }
    let kip_architectures = parse_kip_architectures(c, &kip_image);
    check_platform_reachable(c, &node_selector, affinity.as_ref(), &kip_image, &kip_architectures);
    let priority_class_name = c.parse("PRIORITY_CLASS_NAME", None, |v| {
        labels::check_dns1123_subdomain(v).map(|()| Some(v.to_string()))
    });
    let image_pull_policy = c.parse("IMAGE_PULL_POLICY", None, |v| match v {
        "Always" => Ok(Some(PullPolicy::Always)),
        "IfNotPresent" => Ok(Some(PullPolicy::IfNotPresent)),
        "Never" => Ok(Some(PullPolicy::Never)),
        _ => Err("one of Always, IfNotPresent, Never".into()),
    });
    let max_surge = c.parse("MAX_CONCURRENT_NODES", MaxSurge::Nodes(10), parse_max_surge);
    Placement {
        node_selector,
        affinity,
        tolerations,
        image_pull_secrets,
        kip_image,
        kip_architectures,
        priority_class_name,
        image_pull_policy,
        max_surge,
    }
}

/// KIP_IMAGE_PLATFORMS, or what KIP_IMAGE is known or assumed to run on: kwarm's own image is
/// built for [`KWARM_SLEEP_ARCHITECTURES`]; another image is assumed to be
/// [`OTHER_KIP_IMAGE_ARCHITECTURES`] only, which the log and `kwarm check` say.
fn parse_kip_architectures(c: &mut Checker, kip_image: &str) -> BTreeSet<String> {
    let own = is_kwarm_sleep_image(kip_image);
    let known = if own { KWARM_SLEEP_ARCHITECTURES } else { OTHER_KIP_IMAGE_ARCHITECTURES };
    let known: BTreeSet<String> = known.iter().map(|a| a.to_string()).collect();
    if !own && c.raw("KIP_IMAGE_PLATFORMS").is_none_or(|v| v.trim().is_empty()) {
        c.warn(
            "KIP_IMAGE",
            kip_image,
            format!(
                "not kwarm's sleep image: holders are placed on {} nodes only; set \
                 KIP_IMAGE_PLATFORMS to the platforms the image has (e.g. linux/amd64,linux/arm64)",
                platform_list(&known)
            ),
        );
    }
    c.parse("KIP_IMAGE_PLATFORMS", known, |v| {
        let expected = "comma-separated linux/ARCH platforms, ARCH as nodes name it in \
                        kubernetes.io/arch (linux/amd64,linux/arm64): kwarm's holders run on Linux only";
        let mut architectures = BTreeSet::new();
        for platform in split_list(v) {
            let arch = platform
                .strip_prefix("linux/")
                .filter(|arch| {
                    !arch.contains('/') && labels::check_label_value(arch).is_ok() && !arch.is_empty()
                })
                .ok_or_else(|| format!("{expected}; {platform:?} is not one"))?;
            architectures.insert(arch.to_string());
        }
        if architectures.is_empty() {
            return Err(expected.into());
        }
        Ok(architectures)
    })
}

/// `linux/amd64, linux/arm64`
fn platform_list(architectures: &BTreeSet<String>) -> String {
    architectures.iter().map(|a| format!("linux/{a}")).collect::<Vec<_>>().join(", ")
}

/// A NODE_SELECTOR or AFFINITY that admits no Linux node of an architecture KIP_IMAGE runs on
/// (`kubernetes.io/os: windows`, `kubernetes.io/arch: s390x`) would leave the DaemonSet without a
/// single pod: a configuration error, for the variable that rules the last platform out.
fn check_platform_reachable(
    c: &mut Checker,
    node_selector: &BTreeMap<String, String>,
    affinity: Option<&Affinity>,
    kip_image: &str,
    architectures: &BTreeSet<String>,
) {
    // One node per platform, labelled as a kubelet labels it; only these labels matter here,
    // any other one in a selector could match some node.
    let nodes: Vec<BTreeMap<String, String>> = architectures
        .iter()
        .map(|arch| {
            let os = OS_LABELS.iter().map(|k| (k.to_string(), "linux".to_string()));
            os.chain(ARCH_LABELS.iter().map(|k| (k.to_string(), arch.clone()))).collect()
        })
        .collect();
    let platforms = platform_list(architectures);
    let runs_on = format!(
        "Linux nodes of a platform the holders' KIP_IMAGE {kip_image} runs on ({platforms}; KIP_IMAGE_PLATFORMS)"
    );
    let selected = |node: &&BTreeMap<String, String>| {
        node_selector.iter().all(|(k, v)| !node.contains_key(k) || node.get(k) == Some(v))
    };
    let mut candidates: Vec<_> = nodes.iter().filter(selected).collect();
    let mut narrowed = candidates.len() < nodes.len();
    if candidates.is_empty() {
        let given = c.raw("NODE_SELECTOR").unwrap_or_default().to_string();
        c.fail("NODE_SELECTOR", &given, format!("a selector that admits {runs_on}"));
        // AFFINITY on its own, so that its problem, if any, is reported too
        candidates = nodes.iter().collect();
        narrowed = false;
    }
    let required = affinity
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    let Some(required) = required else { return };
    let term_admits = |term: &NodeSelectorTerm, node: &BTreeMap<String, String>| {
        let platform_expression = |e: &&NodeSelectorRequirement| {
            ARCH_LABELS.contains(&e.key.as_str()) || OS_LABELS.contains(&e.key.as_str())
        };
        term.match_expressions
            .iter()
            .flatten()
            .filter(platform_expression)
            .all(|e| requirement_admits(e, node))
    };
    let admitted =
        candidates.iter().any(|node| required.node_selector_terms.iter().any(|t| term_admits(t, node)));
    if !admitted && !required.node_selector_terms.is_empty() {
        let given = c.raw("AFFINITY").unwrap_or_default().to_string();
        let with_selector = if narrowed { ", together with NODE_SELECTOR" } else { "" };
        c.fail(
            "AFFINITY",
            &given,
            format!("a required nodeAffinity with a term that admits {runs_on}{with_selector}"),
        );
    }
}

impl Config {
    /// The holders' node affinity: `AFFINITY`, with every required term (or a term of its own
    /// when there is none) also requiring a `kubernetes.io/arch` that `KIP_IMAGE` runs on, so the
    /// scheduler never places a holder where its init container cannot run. Terms are ORed, so
    /// the requirement goes into each.
    pub fn holder_affinity(&self) -> Affinity {
        let architecture = NodeSelectorRequirement {
            key: ARCH_LABELS[0].into(),
            operator: "In".into(),
            values: Some(self.kip_architectures.iter().cloned().collect()),
        };
        let mut affinity = self.affinity.clone().unwrap_or_default();
        let node = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
        let required = node
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(|| NodeSelector { node_selector_terms: Vec::new() });
        if required.node_selector_terms.is_empty() {
            required.node_selector_terms.push(NodeSelectorTerm::default());
        }
        for term in &mut required.node_selector_terms {
            term.match_expressions.get_or_insert_with(Vec::new).push(architecture.clone());
        }
        affinity
    }
}

/// PULL_TIMEOUT, RETRY_BACKOFF, MAX_RETRIES.
fn parse_quarantine(c: &mut Checker) -> (Duration, Duration, u32) {
    let pull_timeout = c.parse("PULL_TIMEOUT", Duration::from_secs(600), positive_duration);
    let retry_backoff = c.parse("RETRY_BACKOFF", Duration::from_secs(30), positive_duration);
    let max_retries = c.parse("MAX_RETRIES", 3, |v| {
        v.parse::<u32>().ok().filter(|n| *n <= 30).ok_or_else(|| "a whole number from 0 to 30".to_string())
    });
    (pull_timeout, retry_backoff, max_retries)
}

/// How often warmed tags are resolved to digests in their registries, and which registries speak
/// plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCheck {
    pub interval: Duration,
    /// `host[:port]` of registries reached over plain HTTP instead of HTTPS.
    pub insecure_registries: BTreeSet<String>,
}

/// The shortest DIGEST_CHECK_INTERVAL: each check is one manifest HEAD per tag.
const MIN_DIGEST_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// DIGEST_CHECK_INTERVAL (default: the caching interval; `0`: off), INSECURE_REGISTRIES.
fn parse_digest_check(
    c: &mut Checker,
    caching_interval: Duration,
) -> (Option<DigestCheck>, BTreeSet<String>) {
    let interval = c.parse("DIGEST_CHECK_INTERVAL", Some(caching_interval), |v| {
        if v == "0" {
            return Ok(None);
        }
        let d = parse_duration(v)?;
        if d < MIN_DIGEST_CHECK_INTERVAL {
            return Err("a duration of at least 10s (one manifest HEAD per tag each time), or 0 to turn the check off".into());
        }
        Ok(Some(d))
    });
    let insecure_registries = c.parse("INSECURE_REGISTRIES", BTreeSet::new(), |v| {
        let mut hosts = BTreeSet::new();
        for host in v.split([',', ' ', '\n', '\t']).map(str::trim).filter(|h| !h.is_empty()) {
            let (name, port) = match host.rsplit_once(':') {
                Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => (n, Some(p)),
                _ => (host, None),
            };
            let name_ok = !name.is_empty() && name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-.[]:".contains(ch));
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
            if !name_ok || !port_ok || host.contains('/') {
                return Err(format!("registry {host:?}: a comma-separated list of registry hosts with an optional port, e.g. registry.local:5000"));
            }
            hosts.insert(host.to_string());
        }
        Ok(hosts)
    });
    let check =
        interval.map(|interval| DigestCheck { interval, insecure_registries: insecure_registries.clone() });
    (check, insecure_registries)
}

/// NODE_GATE_TAINT, NODE_GATE_TIMEOUT.
fn parse_node_gate(c: &mut Checker) -> Option<NodeGate> {
    let taint = c.parse("NODE_GATE_TAINT", None, |v| GateTaint::parse(v).map(Some));
    let timeout = c.parse("NODE_GATE_TIMEOUT", Duration::from_secs(600), |v| {
        let d = parse_duration(v)?;
        if d < Duration::from_secs(1) {
            return Err("a duration of at least 1s, such as 5m or 10m".into());
        }
        Ok(d)
    });
    taint.map(|taint| NodeGate { taint, timeout })
}

/// ROLLOUT_GATE, ROLLOUT_GATE_TIMEOUT and the webhook's WEBHOOK_* variables; `namespace` is the
/// manager's own.
fn parse_rollout_gate(c: &mut Checker, namespace: &str) -> Option<RolloutGate> {
    let mode = c.parse("ROLLOUT_GATE", None, |v| match v.to_ascii_lowercase().as_str() {
        "opt-in" => Ok(Some(GateMode::OptIn)),
        other => parse_bool(other)
            .map(|on| on.then_some(GateMode::All))
            .map_err(|_| "true (every watched Deployment), opt-in (Deployments labelled kwarm.io/rollout-gate=true) or false".into()),
    });
    let timeout = c.parse("ROLLOUT_GATE_TIMEOUT", Duration::from_secs(300), |v| {
        let d = parse_duration(v)?;
        if d < Duration::from_secs(1) {
            return Err("a duration of at least 1s, such as 2m or 5m".into());
        }
        Ok(d)
    });
    let bind_address = c.parse("WEBHOOK_BIND_ADDRESS", SocketAddr::from(([0, 0, 0, 0], 9443)), |v| {
        match parse_bind_address(v) {
            Ok(Some(a)) if a.port() != 0 => Ok(a),
            _ => Err("an address such as :9443 or 127.0.0.1:9443 (the webhook cannot be turned off on its own: set ROLLOUT_GATE=false)".into()),
        }
    });
    let url = c.parse("WEBHOOK_URL", None, |v| {
        let rest = v.strip_prefix("https://").ok_or("an https:// URL, e.g. https://127.0.0.1:9443/mutate")?;
        if rest.is_empty() || rest.starts_with('/') || v.contains(['?', '#', ' ']) {
            return Err(
                "an https:// URL with a host and no query or fragment, e.g. https://127.0.0.1:9443/mutate"
                    .into(),
            );
        }
        Ok(Some(v.to_string()))
    });
    let service = c.parse("WEBHOOK_SERVICE", "kwarm-webhook".to_string(), |v| {
        labels::check_dns1123_label(v).map(|()| v.to_string()).map_err(|e| format!("a Service name: {e}"))
    });
    let secret = c.parse("WEBHOOK_SECRET", "kwarm-webhook-tls".to_string(), |v| {
        labels::check_dns1123_subdomain(v).map(|()| v.to_string()).map_err(|e| format!("a Secret name: {e}"))
    });
    let cert_dir = c.parse("WEBHOOK_CERT_DIR", None, |v| {
        if v.starts_with('/') {
            Ok(Some(std::path::PathBuf::from(v)))
        } else {
            Err("an absolute directory holding tls.crt and tls.key, e.g. /etc/kwarm/webhook".into())
        }
    });
    let configuration = c.parse("WEBHOOK_CONFIGURATION", format!("kwarm-rollout-gate-{namespace}"), |v| {
        labels::check_dns1123_subdomain(v)
            .map(|()| v.to_string())
            .map_err(|e| format!("a MutatingWebhookConfiguration name: {e}"))
    });
    let mode = mode?;
    Some(RolloutGate {
        mode,
        timeout,
        bind_address,
        endpoint: match url {
            Some(url) => Endpoint::Url(url),
            None => Endpoint::Service { name: service, namespace: namespace.to_string() },
        },
        certificates: match cert_dir {
            Some(dir) => Certificates::Directory(dir),
            None => Certificates::Secret(secret),
        },
        configuration,
        namespace: namespace.to_string(),
    })
}

/// METRICS_BIND_ADDRESS, HEALTH_PROBE_BIND_ADDRESS, LEADER_ELECT, LOG_FORMAT.
fn parse_server(c: &mut Checker) -> (Option<SocketAddr>, Option<SocketAddr>, bool, LogFormat) {
    let metrics_bind_address =
        c.parse("METRICS_BIND_ADDRESS", Some(SocketAddr::from(([0, 0, 0, 0], 8080))), parse_bind_address);
    let health_probe_bind_address = c.parse(
        "HEALTH_PROBE_BIND_ADDRESS",
        Some(SocketAddr::from(([0, 0, 0, 0], 8081))),
        parse_bind_address,
    );
    let leader_elect = c.parse("LEADER_ELECT", true, parse_bool);
    let log_format = c.parse("LOG_FORMAT", LogFormat::Text, |v| match v.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("text or json".into()),
    });
    (metrics_bind_address, health_probe_bind_address, leader_elect, log_format)
}

/// `name=image;image;...` → holders in order. Each bad entry is its own error.
fn parse_images(c: &mut Checker) -> Vec<Holder> {
    let value = c.raw("IMAGES").unwrap_or_default().to_string();
    let value = value.as_str();
    let mut holders: Vec<Holder> = Vec::new();
    let mut canonical_seen: BTreeMap<String, String> = BTreeMap::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, image) = match entry.split_once('=') {
            Some((name, image)) => (Some(name.trim()), image.trim()),
            None => (None, entry),
        };
        let reference = match parse_image_reference(image) {
            Ok(r) => r,
            Err(e) => {
                c.fail("IMAGES", entry, e);
                continue;
            }
        };
        let name = match name {
            Some(name) => {
                if let Err(e) = labels::check_dns1123_label(name) {
                    c.fail("IMAGES", entry, format!("container name {name:?}: {e}"));
                    continue;
                }
                name.to_string()
            }
            None => derived_holder_name(&reference),
        };
        if is_reserved_name(&name) {
            c.fail(
                "IMAGES",
                entry,
                format!(
                    "a container name other than {INIT_CONTAINER_NAME:?} or {IDLE_HOLDER_NAME:?} (kwarm's own)"
                ),
            );
            continue;
        }
        if holders.iter().any(|h| h.name == name) {
            c.fail("IMAGES", entry, format!("unique container names; {name:?} is used twice"));
            continue;
        }
        if let Some(first) = canonical_seen.get(&reference) {
            c.fail("IMAGES", entry, format!("each image once; it is the same image as {first:?}"));
            continue;
        }
        canonical_seen.insert(reference, entry.to_string());
        holders.push(Holder { name, image: image.to_string() });
    }
    holders
}

fn parse_resources(c: &mut Checker) -> HolderResources {
    let mut quantity = |variable: &'static str, default: &str| {
        let fallback = Quantity::parse(default).ok();
        c.parse(variable, fallback, |v| {
            let q = Quantity::parse(v)?;
            if q.is_negative() {
                return Err("a quantity of zero or more".into());
            }
            Ok(Some(q))
        })
    };
    let memory_request = quantity("CACHING_MEMORY_REQUEST", "10Mi");
    let memory_limit = quantity("CACHING_MEMORY_LIMIT", "20Mi");
    let cpu_request = quantity("CACHING_CPU_REQUEST", ".05");
    let cpu_limit = quantity("CACHING_CPU_LIMIT", ".2");
    let (Some(memory_request), Some(memory_limit), Some(cpu_request), Some(cpu_limit)) =
        (memory_request, memory_limit, cpu_request, cpu_limit)
    else {
        unreachable!("defaults are valid quantities")
    };
    // Compare only values that parsed: a rejected value was replaced by its default, and comparing
    // that default would report a value the user never wrote. For the same reason, when only the
    // limit was set, the limit is the offending entry.
    let pairs = [
        (("CACHING_MEMORY_REQUEST", &memory_request), ("CACHING_MEMORY_LIMIT", &memory_limit)),
        (("CACHING_CPU_REQUEST", &cpu_request), ("CACHING_CPU_LIMIT", &cpu_limit)),
    ];
    for ((request_var, request), (limit_var, limit)) in pairs {
        let parsed = !c.errors.iter().any(|e| e.variable == request_var || e.variable == limit_var);
        if !parsed || request.value() <= limit.value() {
            continue;
        }
        if c.given(limit_var) && !c.given(request_var) {
            c.fail(
                limit_var,
                limit.as_str(),
                format!("at least {request_var} ({}, its default)", request.as_str()),
            );
        } else {
            c.fail(request_var, request.as_str(), format!("at most {limit_var} ({})", limit.as_str()));
        }
    }
    HolderResources { cpu_request, cpu_limit, memory_request, memory_limit }
}

fn parse_watch(c: &mut Checker) -> WatchConfig {
    let enabled = c.parse("WATCH_DEPLOYMENTS", true, parse_bool);
    let selector = c.parse("DEPLOYMENT_SELECTOR", LabelSelector::default_selector(), LabelSelector::parse);
    let namespaces = c.parse("WATCH_NAMESPACES", Namespaces::All, |v| {
        if v == "*" {
            return Ok(Namespaces::All);
        }
        parse_namespace_list(v).map(Namespaces::Only)
    });
    let exclude_namespaces = c.parse("EXCLUDE_NAMESPACES", BTreeSet::new(), parse_namespace_list);
    let exclude_images = c.parse("EXCLUDE_IMAGES", Vec::new(), |v| {
        Ok(split_list(v)
            .map(|p| {
                if p.contains(['*', '?']) {
                    ImagePattern::Glob(p.to_string())
                } else {
                    ImagePattern::Substring(p.to_string())
                }
            })
            .collect())
    });
    let inherit_pull_secrets = c.parse("INHERIT_PULL_SECRETS", false, parse_bool);
    let namespace_selector = c.parse("NAMESPACE_SELECTOR", None, |v| LabelSelector::parse(v).map(Some));
    WatchConfig {
        enabled,
        selector,
        namespaces,
        exclude_namespaces,
        namespace_selector,
        exclude_images,
        inherit_pull_secrets,
    }
}

/// The API server's rules for a toleration, checked here so a typo fails at start with exit 2
/// instead of making every apply fail later.
fn check_toleration(t: &Toleration) -> Result<(), String> {
    let operator = t.operator.as_deref().unwrap_or("Equal");
    match operator {
        "Equal" => {}
        "Exists" if t.value.as_deref().is_none_or(str::is_empty) => {}
        "Exists" => return Err("operator Exists takes no value".into()),
        other => return Err(format!("operator {other:?}: expected Equal or Exists")),
    }
    if let Some(effect) = t.effect.as_deref()
        && !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
    {
        return Err(format!("effect {effect:?}: expected NoSchedule, PreferNoSchedule or NoExecute"));
    }
    if let Some(key) = t.key.as_deref().filter(|k| !k.is_empty()) {
        labels::check_qualified_name(key).map_err(|e| format!("key {key:?}: {e}"))?;
    } else if operator != "Exists" {
        return Err("an empty key needs operator Exists".into());
    }
    if let Some(value) = t.value.as_deref().filter(|v| !v.is_empty()) {
        labels::check_label_value(value).map_err(|e| format!("value {value:?}: {e}"))?;
    }
    if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
        return Err("tolerationSeconds only with effect NoExecute".into());
    }
    Ok(())
}

/// Node-affinity expressions (the part users write by hand most) and the topology keys of pod
/// (anti-)affinity terms: what the API server would refuse, refused here with the reason.
fn check_affinity(affinity: &Affinity) -> Result<(), String> {
    let pod_terms =
        |required: Option<&Vec<k8s_openapi::api::core::v1::PodAffinityTerm>>,
         preferred: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            required
                .into_iter()
                .flatten()
                .chain(preferred.into_iter().flatten().map(|w| &w.pod_affinity_term))
                .cloned()
                .collect::<Vec<_>>()
        };
    let mut terms = Vec::new();
    if let Some(p) = &affinity.pod_affinity {
        terms.extend(pod_terms(
            p.required_during_scheduling_ignored_during_execution.as_ref(),
            p.preferred_during_scheduling_ignored_during_execution.as_ref(),
        ));
    }
    if let Some(p) = &affinity.pod_anti_affinity {
        terms.extend(pod_terms(
            p.required_during_scheduling_ignored_during_execution.as_ref(),
            p.preferred_during_scheduling_ignored_during_execution.as_ref(),
        ));
    }
    for term in &terms {
        if term.topology_key.is_empty() {
            return Err(
                "a pod (anti-)affinity term needs a topologyKey, such as kubernetes.io/hostname".into()
            );
        }
        labels::check_qualified_name(&term.topology_key)
            .map_err(|e| format!("topologyKey {:?}: {e}", term.topology_key))?;
        for selector in term.label_selector.iter().chain(term.namespace_selector.iter()) {
            check_label_selector(selector)?;
        }
    }
    let Some(node) = &affinity.node_affinity else { return Ok(()) };
    let required =
        node.required_during_scheduling_ignored_during_execution.iter().flat_map(|r| &r.node_selector_terms);
    let preferred =
        node.preferred_during_scheduling_ignored_during_execution.iter().flatten().map(|p| &p.preference);
    for term in required.chain(preferred) {
        for e in term.match_expressions.iter().flatten().chain(term.match_fields.iter().flatten()) {
            let values = e.values.as_ref().map_or(0, Vec::len);
            labels::check_qualified_name(&e.key)
                .map_err(|err| format!("nodeAffinity expression key {:?}: {err}", e.key))?;
            let integer = e.values.iter().flatten().all(|v| v.parse::<i64>().is_ok());
            match e.operator.as_str() {
                "In" | "NotIn" if values > 0 => {}
                "Exists" | "DoesNotExist" if values == 0 => {}
                "Gt" | "Lt" if values == 1 && integer => {}
                "Gt" | "Lt" if values == 1 => {
                    return Err(format!("nodeAffinity expression on {:?}: Gt/Lt compare integers", e.key));
                }
                op => {
                    return Err(format!(
                        "nodeAffinity expression on {:?}: operator {op:?} with {values} values (In/NotIn need values, Exists/DoesNotExist none, Gt/Lt one)",
                        e.key
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A pod (anti-)affinity term's label selector: label keys and values, and operators with the
/// number of values each takes.
fn check_label_selector(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<(), String> {
    for (key, value) in selector.match_labels.iter().flatten() {
        labels::check_qualified_name(key).map_err(|e| format!("labelSelector key {key:?}: {e}"))?;
        labels::check_label_value(value).map_err(|e| format!("labelSelector value {value:?}: {e}"))?;
    }
    for e in selector.match_expressions.iter().flatten() {
        labels::check_qualified_name(&e.key)
            .map_err(|err| format!("labelSelector key {:?}: {err}", e.key))?;
        let values = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if values > 0 => {}
            "Exists" | "DoesNotExist" if values == 0 => {}
            op => {
                return Err(format!(
                    "labelSelector expression on {:?}: operator {op:?} with {values} values (In/NotIn need values, Exists/DoesNotExist none)",
                    e.key
                ));
            }
        }
        for value in e.values.iter().flatten() {
            labels::check_label_value(value)
                .map_err(|err| format!("labelSelector value {value:?}: {err}"))?;
        }
    }
    Ok(())
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', ' ', '\n', '\t']).map(str::trim).filter(|s| !s.is_empty())
}

fn parse_namespace_list(v: &str) -> Result<BTreeSet<String>, String> {
    let mut set = BTreeSet::new();
    for ns in split_list(v) {
        if ns == "*" {
            return Err("either * alone or a list of namespace names".into());
        }
        labels::check_dns1123_label(ns).map_err(|e| format!("namespace {ns:?}: {e}"))?;
        set.insert(ns.to_string());
    }
    Ok(set)
}

fn add_linux_default(map: &mut BTreeMap<String, String>) {
    let user_chose_os = map.keys().any(|k| k == "kubernetes.io/os" || k == "beta.kubernetes.io/os");
    if !user_chose_os {
        map.insert("kubernetes.io/os".into(), "linux".into());
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("true or false".into()),
    }
}

/// A humantime duration (`30m`, `6h`, `1h30m`); zero allowed, at most a year (like
/// `CACHING_INTERVAL_HOURS`), so that adding it, or a backoff of 2^30 times it, to a clock
/// reading cannot overflow.
fn parse_duration(v: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(8760 * 3600);
    let d = humantime::parse_duration(v).map_err(|e| format!("a duration such as 30s, 10m or 6h ({e})"))?;
    if d > MAX {
        return Err("a duration of at most a year (8760h)".into());
    }
    Ok(d)
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d.is_zero() {
        return Err("a duration greater than zero, such as 30m or 6h".into());
    }
    Ok(d)
}

fn parse_max_surge(v: &str) -> Result<MaxSurge, String> {
    let expected = || "a whole number of nodes (1 or more) or a percentage from 1% to 100%".to_string();
    if let Some(pct) = v.strip_suffix('%') {
        return match pct.parse::<u8>() {
            Ok(p) if (1..=100).contains(&p) => Ok(MaxSurge::Percent(p)),
            _ => Err(expected()),
        };
    }
    match v.parse::<i32>() {
        Ok(n) if n >= 1 => Ok(MaxSurge::Nodes(n)),
        _ => Err(expected()),
    }
}

/// Go-style `:8080`, `127.0.0.1:8080`, `[::]:8080`, or `0` to turn the listener off.
fn parse_bind_address(v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "0" {
        return Ok(None);
    }
    let full = if v.starts_with(':') { format!("0.0.0.0{v}") } else { v.to_string() };
    full.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| "an address such as :8080 or 127.0.0.1:8080, or 0 to turn it off".into())
}

fn parse_json_value<T: DeserializeOwned>(v: &str, expected: &str) -> Result<T, String> {
    // JSON parsers keep the last of two equal keys; which one the user meant is anyone's guess.
    serde_json::from_str::<UniqueKeys>(v).map_err(|e| format!("{expected} ({e})"))?;
    serde_json::from_str(v).map_err(|e| format!("{expected} ({e})"))
}

/// Any JSON value, refused when an object repeats a key (at any depth).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<UniqueKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("key {key:?} appears twice")));
            }
        }
        Ok(UniqueKeys)
    }
}

/// Parses a Kubernetes type from JSON and rejects fields the type does not have (a typo such as
/// `"efect"` would otherwise be dropped silently and the toleration would not do what was meant).
fn parse_k8s_json<T: DeserializeOwned + serde::Serialize>(v: &str, expected: &str) -> Result<T, String> {
    let value: serde_json::Value = parse_json_value(v, expected)?;
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| format!("{expected} ({e})"))?;
    let round_trip = serde_json::to_value(&typed).map_err(|e| format!("{expected} ({e})"))?;
    let mut unknown = Vec::new();
    unknown_fields(&value, &round_trip, String::new(), &mut unknown);
    if let Some(first) = unknown.first() {
        return Err(format!("{expected}; unknown field {first}"));
    }
    Ok(typed)
}

fn is_empty_json(v: &serde_json::Value) -> bool {
    v.as_array().is_some_and(|a| a.is_empty()) || v.as_object().is_some_and(|o| o.is_empty())
}

/// Whether the last segment of a path names a field the Kubernetes types have (those that
/// serialize away when empty), so that `{"nodeAffinity": {}}` is fine and `{"nodeAfinity": {}}`
/// is a typo.
fn known_field_shape(path: &str) -> bool {
    const EMPTY_OK: &[&str] = &[
        "nodeAffinity",
        "podAffinity",
        "podAntiAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "preferredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
        "matchExpressions",
        "matchFields",
        "matchLabels",
        "labelSelector",
        "namespaceSelector",
        "namespaces",
        "values",
        "preference",
        "podAffinityTerm",
        "matchLabelKeys",
        "mismatchLabelKeys",
        "key",
        "operator",
        "value",
        "effect",
        "tolerationSeconds",
    ];
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    EMPTY_OK.contains(&last)
}

fn unknown_fields(input: &serde_json::Value, known: &serde_json::Value, path: String, out: &mut Vec<String>) {
    use serde_json::Value;
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(kv) => unknown_fields(v, kv, p, out),
                    // a known field left empty is dropped by the round trip; an unknown one is a typo
                    None if known_field_shape(&p) && (v.is_null() || is_empty_json(v)) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, format!("{path}[{i}]"), out);
            }
        }
        (Value::Object(a), _) if !a.is_empty() => out.push(path),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
