//! `kwarm`: run the manager, render or check the configuration, show status.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kwarm::config::{Config, LogFormat};
use kwarm::controller::{self, Context};
use kwarm::daemonset::{RenderInput, render_daemonset};
use kwarm::http::{self, Shared};
use kwarm::leader::{Elector, Fence, Timing};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "kwarm", version, about = "Keeps container images warm on Kubernetes nodes")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// Validate the environment and exit (0 valid, 2 invalid)
    Check,
    /// Show images × node states, failures and quarantined images
    Status {
        #[arg(short, long, value_enum, default_value_t = StatusFormat::Text)]
        output: StatusFormat,
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
/// Exit code for an invalid environment.
const EXIT_CONFIG: u8 = 2;
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let own_namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let config = match Config::from_env(own_namespace) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!(
                "kwarm: invalid configuration ({} problems); nothing was changed in the cluster:",
                errors.0.len()
            );
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            let mut text: String = config.warnings.iter().map(|w| format!("warning: {w}\n")).collect();
            text += &format!(
                "Configuration is valid: {} images from IMAGES, Deployment watching {}\n",
                config.images.len(),
                if config.watch.enabled { "on" } else { "off" }
            );
            write_stdout(&text)
        }
        Command::Render { output, openshift } => render(&config, output, openshift),
        Command::Status { output } => runtime().and_then(|rt| rt.block_on(status(config, output))),
        Command::Ungate => runtime().and_then(|rt| rt.block_on(ungate(config))),
        Command::Run => runtime().and_then(|rt| rt.block_on(run(config))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kwarm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
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

async fn status(config: Config, output: StatusFormat) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let report = kwarm::commands::status_report(client, &config).await?;
    match output {
        StatusFormat::Text => write_stdout(&report.to_text()),
        StatusFormat::Json => write_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
    let ctx = Context { client, config: config.clone(), shared, identity, warm_view };
    let mut manager = tokio::spawn(controller::run(ctx, leader_rx, fence, shutdown_rx));
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("Shutting down"),
        result = &mut manager => {
            // The controller only returns on its own when every watch stream ended.
            result.context("manager task")??;
            anyhow::bail!("the watch streams ended unexpectedly");
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
