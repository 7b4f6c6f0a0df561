//! `kwarm`: run the manager, render or check the configuration, show status.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kwarm::cli::exit;
use kwarm::config::{Config, LogFormat};
use kwarm::controller::{self, Context};
use kwarm::daemonset::{RenderInput, render_daemonset};
use kwarm::http::{self, Shared};
use kwarm::leader::{Elector, Fence, Timing};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "kwarm",
    version,
    about = "Keeps container images warm on Kubernetes nodes",
    long_about = "Keeps container images warm on Kubernetes nodes.\n\n\
        The manager's configuration comes from environment variables (in a cluster, usually a \
        ConfigMap loaded with envFrom). `kwarm check --list` lists them with their defaults; \
        `kwarm check` validates the environment, `kwarm check -f configmap.yaml` a ConfigMap.",
    after_help = "Configuration: environment variables (or a ConfigMap via envFrom); \
        see `kwarm check --list`.\n\n\
        Exit codes: 0 ok, 1 failure, 2 invalid configuration, 3 not warm (status), \
        4 cannot read the cluster, 64 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the cluster is: the kubeconfig (`--kubeconfig`, else `KUBECONFIG`, else
/// `~/.kube/config`) and its context; in a pod without one, the pod's service account.
#[derive(Args, Clone, Default)]
struct ClusterArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else in-cluster)
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context)
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the manager (the default)
    Run,
    /// Print the DaemonSet the environment produces (no cluster needed)
    Render {
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
        /// Render as on OpenShift (no fixed UID/GID)
        #[arg(long)]
        openshift: bool,
    },
    /// Validate the configuration: the environment, a ConfigMap manifest (-f) or a ConfigMap in
    /// the cluster (--configmap); --list shows every variable
    #[command(after_help = "Exit codes: 0 valid, 2 invalid (every problem on its own line, \
        naming the variable, its value and what is expected), 1 the file could not be read, \
        4 the cluster could not be read (--configmap), 64 usage error.")]
    Check {
        /// A ConfigMap manifest to check as the manager's environment (`-` for stdin); YAML or
        /// JSON, several documents or a `kind: List` allowed: each ConfigMap in it is checked
        #[arg(short = 'f', long = "filename", value_name = "FILE", conflicts_with = "list")]
        file: Option<String>,
        /// The ConfigMap to check: read from the cluster, or picked from the -f manifest
        #[arg(long, value_name = "NAME", conflicts_with = "list")]
        configmap: Option<String>,
        /// Namespace of --configmap (default: NAMESPACE, else the kubeconfig context's)
        #[arg(short, long, value_parser = namespace_name, requires = "configmap", conflicts_with = "file")]
        namespace: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// List the variables kwarm reads, with their defaults
        #[arg(long)]
        list: bool,
    },
    /// Show images × node states, failures and quarantined images; exit 3 unless warm
    #[command(after_help = "Which DaemonSets: --daemonset, else DAEMONSET_NAME, else every \
        DaemonSet managed by kwarm in the namespace (-n, else NAMESPACE, else the kubeconfig \
        context's namespace, else k8s-image-puller), or in every namespace with -A.\n\n\
        Warm: every image of the DaemonSet is held on every node it runs on, none is \
        quarantined, no init container fails and the manager's Warm condition is not False.\n\n\
        Exit codes: 0 warm, 3 not warm (or no DaemonSet found), 2 invalid configuration in the \
        environment, 4 cannot read the cluster, 1 other failure, 64 usage error.")]
    Status {
        #[arg(short, long, value_enum, default_value_t = StatusFormat::Text)]
        output: StatusFormat,
        /// Namespace of the DaemonSet(s)
        #[arg(short, long, value_parser = namespace_name)]
        namespace: Option<String>,
        /// Look in every namespace
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        /// The DaemonSet (default: DAEMONSET_NAME, else every DaemonSet kwarm manages)
        #[arg(long, value_name = "NAME")]
        daemonset: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Wait until warm (polling every 2 s), then print the report; exit 3 at --timeout
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (30s, 5m, 1h)
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m", requires = "wait")]
        timeout: Duration,
    },
    /// Open every gate kwarm holds (before an uninstall): remove NODE_GATE_TAINT from every node,
    /// delete the rollout gate's webhook configuration and release every pod it gated
    Ungate,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusFormat {
    Text,
    Json,
}

/// Set by the Helm chart when a puller values file named kubernetes-image-puller's image for the
/// manager and the chart ran kwarm's instead: the manager says so in its log.
const REPLACED_IMAGE_VARIABLE: &str = "KWARM_REPLACED_IMAGE";
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// How often `kwarm status --wait` looks again.
const WAIT_INTERVAL: Duration = Duration::from_secs(2);

/// A failure with the exit code it ends the process with; `error` is printed, `None` when the
/// problems were printed already.
struct Failure {
    code: u8,
    error: Option<anyhow::Error>,
}

impl Failure {
    fn cluster(error: impl Into<anyhow::Error>) -> Failure {
        Failure { code: exit::CLUSTER, error: Some(error.into()) }
    }

    fn invalid(error: anyhow::Error) -> Failure {
        Failure { code: exit::INVALID_CONFIG, error: Some(error) }
    }

    /// Invalid configuration, every problem already printed.
    fn invalid_config() -> Failure {
        Failure { code: exit::INVALID_CONFIG, error: None }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure { code: exit::FAILURE, error: Some(error) }
    }
}

fn namespace_name(value: &str) -> Result<String, String> {
    kwarm::labels::check_dns1123_label(value).map(|()| value.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // help and version go to stdout with 0; usage errors have a code of their own (clap's
            // 2 is kwarm's invalid configuration)
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    let result: Result<u8, Failure> = match command {
        Command::Check { list: true, .. } => {
            write_stdout(&kwarm::cli::variables_text()).map(|()| exit::OK).map_err(Failure::from)
        }
        Command::Check { file: None, configmap: None, .. } => manager_config().and_then(|config| {
            let mut text: String = config.warnings.iter().map(|w| format!("warning: {w}\n")).collect();
            text += &format!("Configuration is valid: {}\n", summary(&config));
            Ok(write_stdout(&text).map(|()| exit::OK)?)
        }),
        Command::Check { file, configmap, namespace, cluster, .. } => {
            runtime().and_then(|rt| rt.block_on(check_configmaps(file, configmap, namespace, cluster)))
        }
        Command::Render { output, openshift } => {
            manager_config().and_then(|c| Ok(render(&c, output, openshift).map(|()| exit::OK)?))
        }
        Command::Status { output, namespace, all_namespaces, daemonset, cluster, wait, timeout } => {
            let args = StatusArgs { output, namespace, all_namespaces, daemonset, cluster, wait, timeout };
            runtime().and_then(|rt| rt.block_on(status(args)))
        }
        Command::Ungate => manager_config()
            .and_then(|c| runtime().and_then(|rt| Ok(rt.block_on(ungate(c)).map(|()| exit::OK)?))),
        Command::Run => manager_config()
            .and_then(|c| runtime().and_then(|rt| Ok(rt.block_on(run(c)).map(|()| exit::OK)?))),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            if let Some(error) = error {
                eprintln!("kwarm: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// The namespace the manager's pod runs in, when known.
fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The manager's whole configuration from the environment; every problem is printed.
fn manager_config() -> Result<Config, Failure> {
    Config::from_env(own_namespace()).map_err(|errors| {
        print_problems("invalid configuration", "nothing was changed in the cluster", &errors.0);
        Failure::invalid_config()
    })
}

/// `header (N problems); note:` and one indented line per problem, on stderr.
fn print_problems(header: &str, note: &str, problems: &[impl std::fmt::Display]) {
    let note = if note.is_empty() { String::new() } else { format!("; {note}") };
    eprintln!("kwarm: {header} ({} problems){note}:", problems.len());
    for p in problems {
        eprintln!("  {p}");
    }
}

fn summary(config: &Config) -> String {
    format!(
        "{} images from IMAGES, Deployment watching {}",
        config.images.len(),
        if config.watch.enabled { "on" } else { "off" }
    )
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?)
}

/// A client for the cluster `args` name, and the namespace of its kubeconfig context (if it
/// sets one). Without a kubeconfig (and no flag asking for one): the pod's service account.
async fn kube_client(args: &ClusterArgs) -> anyhow::Result<(kube::Client, Option<String>)> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kubeconfig = match &args.kubeconfig {
        Some(path) => {
            Some(Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => match Kubeconfig::read() {
            Ok(k) => Some(k),
            Err(e) if args.context.is_some() => return Err(e).context("reading the kubeconfig"),
            Err(_) => None,
        },
    };
    let Some(kubeconfig) = kubeconfig else {
        let config = kube::Config::incluster()
            .context("no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a pod")?;
        return Ok((kube::Client::try_from(config).context("connecting to Kubernetes")?, None));
    };
    let context_name = args.context.clone().or_else(|| kubeconfig.current_context.clone());
    let namespace = kubeconfig
        .contexts
        .iter()
        .find(|c| Some(&c.name) == context_name.as_ref())
        .and_then(|c| c.context.as_ref()?.namespace.clone());
    let options = KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.context("reading the kubeconfig")?;
    config.apply_debug_overrides();
    Ok((kube::Client::try_from(config).context("connecting to Kubernetes")?, namespace))
}

fn render(config: &Config, output: Format, openshift: bool) -> anyhow::Result<()> {
    let input = RenderInput { holders: config.images.clone(), openshift, ..Default::default() };
    let ds = render_daemonset(config, &input);
    let text = match output {
        Format::Yaml => serde_yaml::to_string(&ds).context("encoding YAML")?,
        Format::Json => serde_json::to_string_pretty(&ds).context("encoding JSON")? + "\n",
    };
    write_stdout(&text)
}

/// Writes command output. A reader that went away (`kwarm render | head`) ends the command
/// quietly; any other write error (a full disk) is reported, never a panic.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("writing the output"),
    }
}

async fn ungate(config: Config) -> anyhow::Result<()> {
    if config.node_gate.is_none() && config.rollout_gate.is_none() {
        return write_stdout("NODE_GATE_TAINT is not set and ROLLOUT_GATE is off: kwarm holds no gate\n");
    }
    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let mut text = String::new();
    if let Some(gate) = &config.rollout_gate {
        let (deleted, released) = kwarm::commands::ungate_pods(client.clone(), &config)
            .await
            .context("releasing the rollout gate")?;
        text += &match deleted {
            true => format!("Deleted MutatingWebhookConfiguration {}\n", gate.configuration),
            false => format!("MutatingWebhookConfiguration {} did not exist\n", gate.configuration),
        };
        text += &format!(
            "Removed scheduling gate {} from {} pods\n",
            kwarm::rollout::SCHEDULING_GATE,
            released.len()
        );
        for pod in released {
            text += &format!("  {pod}\n");
        }
    }
    if let Some(gate) = &config.node_gate {
        let released =
            kwarm::commands::ungate(client, &config).await.context("removing the node gate taint")?;
        text += &format!("Removed {} from {} nodes\n", gate.taint, released.len());
        for node in released {
            text += &format!("  {node}\n");
        }
    }
    write_stdout(&text)
}

struct StatusArgs {
    output: StatusFormat,
    namespace: Option<String>,
    all_namespaces: bool,
    daemonset: Option<String>,
    cluster: ClusterArgs,
    wait: bool,
    timeout: Duration,
}

/// The environment's variables that are text (for `kwarm status`, which reads few of them).
fn env_vars() -> Vec<(String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

async fn status(args: StatusArgs) -> Result<u8, Failure> {
    use kwarm::cli::{Selection, StatusDocument, StatusList, not_warm};
    let client = kube_client(&args.cluster).await;
    let context_namespace = client.as_ref().ok().and_then(|(_, ns)| ns.clone());
    let vars = env_vars();
    let var = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let own = own_namespace();
    let config = kwarm::cli::status_config(vars.clone(), own.clone()).map_err(|errors| {
        print_problems("invalid configuration", "", &errors.0);
        Failure::invalid_config()
    })?;
    let (client, _) = client.map_err(Failure::cluster)?;
    let namespace = kwarm::cli::namespace(
        args.namespace.as_deref(),
        var("NAMESPACE"),
        context_namespace.as_deref(),
        own.as_deref(),
    );
    let selection =
        Selection::new(args.all_namespaces, namespace, args.daemonset.as_deref(), var("DAEMONSET_NAME"));
    let searched = match &selection {
        Selection::Discover { namespace: Some(ns), .. } => format!("in namespace {ns}"),
        _ => "in any namespace".to_string(),
    };
    let deadline = tokio::time::Instant::now() + args.timeout;
    // While waiting, the registries are not asked (the verdict does not need them): only the
    // report printed at the end is.
    let mut quick = config.clone();
    quick.digest_check = None;
    let mut last_reasons: Vec<String> = Vec::new();
    let reports = loop {
        let reports = match (args.wait, reports(&client, &selection, &quick).await) {
            (_, Ok(r)) => r,
            (false, Err(e)) => return Err(Failure::cluster(e)),
            (true, Err(e)) if tokio::time::Instant::now() + WAIT_INTERVAL > deadline => {
                return Err(Failure::cluster(e));
            }
            (true, Err(e)) => {
                let reasons = vec![kwarm::status::terminal_safe(&format!("{e:#}")).into_owned()];
                if reasons != last_reasons {
                    eprintln!("kwarm: waiting: {}", reasons[0]);
                    last_reasons = reasons;
                }
                tokio::time::sleep(WAIT_INTERVAL).await;
                continue;
            }
        };
        let reasons: Vec<String> = if reports.is_empty() && !matches!(selection, Selection::One { .. }) {
            vec![format!("no DaemonSet managed by kwarm {searched}")]
        } else {
            reports.iter().flat_map(not_warm).collect()
        };
        if !args.wait || reasons.is_empty() || tokio::time::Instant::now() + WAIT_INTERVAL > deadline {
            break reports;
        }
        if reasons != last_reasons {
            eprintln!("kwarm: waiting: {}", kwarm::status::terminal_safe(&reasons.join("; ")));
            last_reasons = reasons;
        }
        tokio::time::sleep(WAIT_INTERVAL).await;
    };
    // The printed report with everything the configuration asks for (digest checks included).
    let reports = match config.digest_check {
        Some(_) => match reports_of(&client, &reports, &config).await {
            Ok(full) => full,
            Err(e) => return Err(Failure::cluster(e)),
        },
        None => reports,
    };
    let warm = (!reports.is_empty() || matches!(selection, Selection::One { .. }))
        && reports.iter().all(|r| not_warm(r).is_empty());
    let text = match (args.output, &selection) {
        (StatusFormat::Text, _) => kwarm::cli::status_text(&reports, &searched),
        // one DaemonSet asked for by name: a Status (`reports` holds exactly its report)
        (StatusFormat::Json, Selection::One { .. }) if reports.len() == 1 => {
            let document = StatusDocument::new(&reports[0]);
            serde_json::to_string_pretty(&document).context("encoding JSON")? + "\n"
        }
        (StatusFormat::Json, _) => {
            serde_json::to_string_pretty(&StatusList::new(&reports)).context("encoding JSON")? + "\n"
        }
    };
    write_stdout(&text)?;
    Ok(if warm { exit::OK } else { exit::NOT_WARM })
}

/// One report per selected DaemonSet.
async fn reports(
    client: &kube::Client,
    selection: &kwarm::cli::Selection,
    config: &Config,
) -> anyhow::Result<Vec<kwarm::status::StatusReport>> {
    let targets = match selection {
        kwarm::cli::Selection::One { namespace, daemonset } => vec![(namespace.clone(), daemonset.clone())],
        kwarm::cli::Selection::Discover { namespace, daemonset } => {
            kwarm::commands::managed_daemonsets(client.clone(), namespace.as_deref(), daemonset.as_deref())
                .await
                .context("listing kwarm's DaemonSets")?
        }
    };
    let mut out = Vec::new();
    for (namespace, daemonset) in targets {
        let mut config = config.clone();
        config.namespace = namespace;
        config.daemonset_name = daemonset;
        out.push(
            kwarm::commands::status_report(client.clone(), &config).await.with_context(|| {
                format!("reading DaemonSet {}/{}", config.namespace, config.daemonset_name)
            })?,
        );
    }
    Ok(out)
}

/// The reports of the same DaemonSets again, with `config`.
async fn reports_of(
    client: &kube::Client,
    previous: &[kwarm::status::StatusReport],
    config: &Config,
) -> anyhow::Result<Vec<kwarm::status::StatusReport>> {
    let mut out = Vec::new();
    for r in previous {
        let selection =
            kwarm::cli::Selection::One { namespace: r.namespace.clone(), daemonset: r.daemonset.clone() };
        out.extend(reports(client, &selection, config).await?);
    }
    Ok(out)
}

/// `kwarm check -f FILE` / `--configmap NAME`: each ConfigMap's data as the manager's
/// environment.
async fn check_configmaps(
    file: Option<String>,
    configmap: Option<String>,
    namespace: Option<String>,
    cluster: ClusterArgs,
) -> Result<u8, Failure> {
    use kwarm::cli::ConfigMapInput;
    let inputs: Vec<ConfigMapInput> = match &file {
        Some(path) => {
            let text = if path == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
                text
            } else {
                std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
            };
            let invalid = |e: String| Failure::invalid(anyhow::anyhow!("{path}: {e}"));
            let mut found = kwarm::cli::configmaps_in(&text).map_err(invalid)?;
            if let Some(name) = &configmap {
                found.retain(|c| &c.name == name);
                if found.is_empty() {
                    return Err(invalid(format!("no ConfigMap named {name}")));
                }
            }
            found
        }
        None => {
            let name = configmap.unwrap_or_default();
            let (client, context_namespace) = kube_client(&cluster).await.map_err(Failure::cluster)?;
            let namespace = kwarm::cli::namespace(
                namespace.as_deref(),
                std::env::var("NAMESPACE").ok().as_deref(),
                context_namespace.as_deref(),
                own_namespace().as_deref(),
            );
            let data = kwarm::commands::configmap_data(client, &namespace, &name)
                .await
                .map_err(Failure::cluster)?
                .ok_or_else(|| Failure::cluster(anyhow::anyhow!("ConfigMap {namespace}/{name} not found")))?;
            vec![ConfigMapInput {
                name,
                namespace: Some(namespace),
                data: data.into_iter().collect(),
                ..Default::default()
            }]
        }
    };
    let mut code = exit::OK;
    let mut text = String::new();
    for input in inputs {
        let name = input.display_name();
        let result = Config::from_vars(input.data.clone(), input.namespace.clone());
        let mut problems = input.problems.clone();
        if let Err(errors) = &result {
            problems.extend(errors.0.iter().map(ToString::to_string));
        }
        for w in &input.warnings {
            text += &format!("ConfigMap {name}: warning: {w}\n");
        }
        match result {
            Ok(config) if problems.is_empty() => {
                for w in &config.warnings {
                    text += &format!("ConfigMap {name}: warning: {w}\n");
                }
                text += &format!("ConfigMap {name}: configuration is valid: {}\n", summary(&config));
            }
            _ => {
                print_problems(&format!("ConfigMap {name}: invalid configuration"), "", &problems);
                code = exit::INVALID_CONFIG;
            }
        }
    }
    write_stdout(&text)?;
    Ok(code)
}

/// Logs go to stderr, in colour only when it is a terminal. The kube client's own ERROR line
/// for a failed request is left out unless `RUST_LOG` asks for the client: kwarm logs the
/// failure itself, once, with what it was doing.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = kwarm::cli::log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_format);
    let config = Arc::new(config);
    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let identity = identity();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), namespace = %config.namespace,
        daemonset = %config.daemonset_name, %identity, "Starting kwarm");
    for w in &config.warnings {
        tracing::warn!(variable = %w.variable, value = %w.value, "{}", w.message);
    }
    if let Some(replaced) = std::env::var(REPLACED_IMAGE_VARIABLE).ok().filter(|v| !v.is_empty()) {
        tracing::warn!(
            replaced = %replaced,
            "The chart was given kubernetes-image-puller's image for the manager (image.repository); \
             it runs kwarm's own image instead"
        );
    }

    let shared = Arc::new(Shared::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    http::serve(
        shared.clone(),
        config.metrics_bind_address,
        config.health_probe_bind_address,
        shutdown_rx.clone(),
    )
    .await?;

    let (leader_tx, leader_rx) = watch::channel(!config.leader_elect);
    let fence = if config.leader_elect { Fence::closed() } else { Fence::always() };
    let elector = config.leader_elect.then(|| {
        let lease_name = format!("{}-kwarm", config.daemonset_name);
        let api = kube::Api::namespaced(client.clone(), &config.namespace);
        tokio::spawn(Elector::new(api, lease_name, identity.clone(), Timing::default()).run(
            leader_tx,
            fence.clone(),
            shutdown_rx.clone(),
        ))
    });

    // The rollout gate's webhook: served by every replica, its certificate and configuration kept
    // by a task of its own.
    let warm_view = match &config.rollout_gate {
        Some(gate) => {
            let (view_tx, view_rx) = watch::channel(Arc::default());
            let certs = Arc::new(kwarm::webhook::CertStore::default());
            kwarm::webhook::serve(
                gate.bind_address,
                certs.clone(),
                view_rx,
                &config,
                Some(client.clone()),
                shared.clone(),
                shutdown_rx.clone(),
            )
            .await?;
            let keeper = controller::Keeper {
                client: client.clone(),
                config: config.clone(),
                certs,
                fence: fence.clone(),
            };
            tokio::spawn(keeper.run(leader_rx.clone(), shutdown_rx.clone()));
            Some(view_tx)
        }
        None => None,
    };
    // A valid edit of the ConfigMap the environment came from restarts the controller in place
    // with the new configuration (it re-lists and renders from the DaemonSet's state, as after
    // a restart of the process); the servers, the lease and the webhook stay.
    let (configs_tx, mut configs) = watch::channel(config.clone());
    if let Some(name) = &config.config_map {
        let namespace = own_namespace().unwrap_or_else(|| config.namespace.clone());
        tokio::spawn(kwarm::reload::watch_config_map(
            client.clone(),
            namespace,
            name.clone(),
            own_namespace(),
            configs_tx,
            shared.clone(),
            identity.clone(),
        ));
    }
    let start = |config: Arc<Config>| {
        // The controller stops when the process does, or when its configuration is replaced.
        let (stop_tx, stop_rx) = watch::channel(false);
        let forward = stop_tx.clone();
        let mut outer = shutdown_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = outer.wait_for(|s| *s) => { forward.send_replace(true); }
                _ = forward.closed() => {}
            }
        });
        let ctx = Context {
            client: client.clone(),
            config,
            shared: shared.clone(),
            identity: identity.clone(),
            warm_view: warm_view.clone(),
        };
        (tokio::spawn(controller::run(ctx, leader_rx.clone(), fence.clone(), stop_rx)), stop_tx)
    };
    let (mut manager, mut stop) = start(config.clone());
    let mut configs_open = true;
    loop {
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("Shutting down");
                break;
            }
            changed = configs.changed(), if configs_open => {
                if changed.is_err() {
                    configs_open = false;
                    continue;
                }
                let new = configs.borrow_and_update().clone();
                stop.send_replace(true);
                let _ = (&mut manager).await;
                (manager, stop) = start(new);
            }
            result = &mut manager => {
                // The controller only returns on its own when every watch stream ended.
                result.context("manager task")??;
                anyhow::bail!("the watch streams ended unexpectedly");
            }
        }
    }
    shutdown_tx.send_replace(true);
    // Stop within 5 s in all cases: the DaemonSet is left in place, the lease released.
    let deadline = Duration::from_millis(4000);
    let _ = tokio::time::timeout(deadline, async {
        let _ = manager.await;
        if let Some(e) = elector {
            let _ = e.await;
        }
    })
    .await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Unique per replica: the pod name (hostname) and the process id.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kwarm".into());
    format!("{host}_{}", std::process::id())
}
