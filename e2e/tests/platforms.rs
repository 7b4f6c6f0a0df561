//! Mixed clusters on the real local cluster: KWOK nodes labelled amd64, arm64, s390x and one
//! Windows node next to each other. Holders land only where their `/sleep` can run: on amd64 and
//! arm64 for kwarm's own (multi-arch) sleep image, on amd64 only for another KIP_IMAGE unless
//! KIP_IMAGE_PLATFORMS says more; `kwarm status` names the nodes left out for their platform; and
//! the sleep image's index really has an arm64 entry that runs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use kwarm_e2e::{
    Check, REGISTRY, SLEEP_IMAGE, client, create_namespace, delete_namespace, delete_nodes, kwok_node,
    wait_until,
};
use serde_json::json;
use support::{Manager, base_env};

const DAEMONSET: &str = "kwarm-holders";

/// The fake nodes of one test: name → (kubernetes.io/os, kubernetes.io/arch).
fn mixed_nodes(ns: &str) -> BTreeMap<String, (&'static str, &'static str)> {
    [
        ("amd64-0", "linux", "amd64"),
        ("amd64-1", "linux", "amd64"),
        ("arm64-0", "linux", "arm64"),
        ("arm64-1", "linux", "arm64"),
        ("s390x-0", "linux", "s390x"),
        ("windows-0", "windows", "amd64"),
    ]
    .into_iter()
    .map(|(suffix, os, arch)| (format!("arch-{ns}-{suffix}"), (os, arch)))
    .collect()
}

/// The nodes of `nodes` whose architecture is one of `arches` (and whose OS is Linux).
fn expected_nodes(nodes: &BTreeMap<String, (&str, &str)>, arches: &[&str]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(_, (os, arch))| *os == "linux" && arches.contains(arch))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Waits until the DaemonSet is rolled out on exactly `expected` (its pods, none elsewhere, all
/// ready and of the current template), and returns the nodes its pods are on.
async fn wait_placed(client: &Client, ns: &str, expected: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let want = i32::try_from(expected.len())?;
    wait_until(&format!("holders on exactly {expected:?}"), Duration::from_secs(90), || async {
        let Some(ds) = daemonsets.get_opt(DAEMONSET).await? else {
            return Ok(Check::Pending("no DaemonSet".into()));
        };
        let status = ds.status.clone().unwrap_or_default();
        let settled = status.observed_generation == ds.metadata.generation
            && status.desired_number_scheduled == want
            && status.number_ready == want
            && status.updated_number_scheduled == Some(want);
        let on: BTreeSet<String> = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=kwarm"))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect();
        Ok(if settled && &on == expected {
            Check::Done(on)
        } else {
            Check::Pending(format!(
                "pods on {on:?}; desired {}, ready {}, updated {:?}",
                status.desired_number_scheduled, status.number_ready, status.updated_number_scheduled
            ))
        })
    })
    .await
}

/// Runs a manager with `env` until its holders sit on exactly `expected`; returns its log.
async fn placed_by(
    name: &str,
    client: &Client,
    ns: &str,
    env: &BTreeMap<String, String>,
    expected: &BTreeSet<String>,
) -> Result<String> {
    let mut manager = Manager::start(name, env).await?;
    let result = async {
        manager.wait_ready(Duration::from_secs(30)).await?;
        wait_placed(client, ns, expected).await
    }
    .await;
    manager.stop().await?;
    let log = manager.log_text();
    match result {
        Ok(on) => {
            println!("{name}: holders on {on:?}");
            Ok(log)
        }
        Err(e) => Err(e.context(format!("manager log:\n{log}"))),
    }
}

#[tokio::test]
async fn holders_land_only_on_nodes_of_an_architecture_kip_image_runs_on() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-arch-").await?;
    let label = ("kwarm-e2e-arch".to_string(), ns.clone());
    let nodes = mixed_nodes(&ns);
    let api: Api<Node> = Api::all(client.clone());
    for (name, (os, arch)) in &nodes {
        let labels = BTreeMap::from([
            label.clone(),
            ("kubernetes.io/os".to_string(), os.to_string()),
            ("kubernetes.io/arch".to_string(), arch.to_string()),
        ]);
        api.create(&PostParams::default(), &kwok_node(name, &labels)).await?;
    }
    let names: Vec<String> = nodes.keys().cloned().collect();

    let result = async {
        let mut env = base_env(&ns);
        env.insert("IMAGES".into(), format!("{REGISTRY}/test/small:v1"));
        // Only this test's fake nodes; kwarm adds kubernetes.io/os: linux itself.
        env.insert("NODE_SELECTOR".into(), json!({label.0.clone(): label.1.clone()}).to_string());

        // kwarm's own sleep image (an index with amd64 and arm64 entries): both architectures,
        // never the s390x or the Windows node.
        env.insert("KIP_IMAGE".into(), SLEEP_IMAGE.into());
        let log =
            placed_by("arch-own", &client, &ns, &env, &expected_nodes(&nodes, &["amd64", "arm64"])).await?;
        if log.contains("not kwarm's sleep image") {
            bail!("kwarm's own image was taken for another one:\n{log}");
        }
        // `kwarm status` names the nodes left out for their platform, apart from failures.
        let status = support::status_json(&env).await?;
        let skipped = json!({"linux/s390x": 1, "windows/amd64": 1});
        if status["skippedPlatforms"] != skipped {
            bail!("kwarm status: skippedPlatforms {}, expected {skipped}", status["skippedPlatforms"]);
        }

        // A puller user's own KIP_IMAGE, platforms not given: amd64 only, and the log says so.
        // (KWOK nodes pull nothing, so the image need not exist.)
        env.insert("KIP_IMAGE".into(), format!("{REGISTRY}/e2e/users-sleep:v1"));
        let log = placed_by("arch-other", &client, &ns, &env, &expected_nodes(&nodes, &["amd64"])).await?;
        if !log.contains("not kwarm's sleep image") || !log.contains("KIP_IMAGE_PLATFORMS") {
            bail!("no warning that KIP_IMAGE is assumed amd64-only:\n{log}");
        }

        // The same image with its platforms given: exactly those.
        env.insert("KIP_IMAGE_PLATFORMS".into(), "linux/arm64,linux/s390x".into());
        placed_by("arch-given", &client, &ns, &env, &expected_nodes(&nodes, &["arm64", "s390x"])).await?;
        anyhow::Ok(())
    }
    .await;
    // the namespace first: KWOK deletes the holder pods only while their nodes exist
    delete_namespace(&client, &ns, Duration::from_secs(60)).await?;
    delete_nodes(&client, &names).await?;
    result
}

#[tokio::test]
async fn a_node_selector_for_windows_nodes_is_refused_before_anything_is_applied() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-arch-windows-").await?;
    let mut env = base_env(&ns);
    env.insert("IMAGES".into(), format!("{REGISTRY}/test/small:v1"));
    env.insert("NODE_SELECTOR".into(), r#"{"kubernetes.io/os":"windows"}"#.into());
    let result = async {
        let output = tokio::process::Command::new(support::kwarm_bin())
            .env_clear()
            .envs(&env)
            .env("KUBECONFIG", kwarm_e2e::kubeconfig_path())
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() != Some(2) || !stderr.contains("NODE_SELECTOR: invalid value") {
            bail!("expected exit 2 naming NODE_SELECTOR, got {}:\n{stderr}", output.status);
        }
        let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
        if daemonsets.get_opt(DAEMONSET).await?.is_some() {
            bail!("a DaemonSet was applied although the configuration is invalid");
        }
        anyhow::Ok(())
    }
    .await;
    delete_namespace(&client, &ns, Duration::from_secs(60)).await?;
    result
}

/// The sleep image `make images` pushed is one index with a linux/arm64 entry, and that entry's
/// `/sleep` is an aarch64 program that runs (under qemu-aarch64 on this x86_64 host).
#[tokio::test]
async fn the_sleep_image_index_has_a_working_arm64_entry() -> Result<()> {
    let raw =
        command("skopeo", &["inspect", "--tls-verify=false", "--raw", &format!("docker://{SLEEP_IMAGE}")])
            .await?;
    let index: serde_json::Value = serde_json::from_str(&raw).context("the index as JSON")?;
    let platforms: BTreeSet<String> = index["manifests"]
        .as_array()
        .with_context(|| format!("{SLEEP_IMAGE} is not an image index: {raw}"))?
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let want = BTreeSet::from(["linux/amd64".to_string(), "linux/arm64".to_string()]);
    if platforms != want {
        bail!("{SLEEP_IMAGE}: platforms {platforms:?}, expected {want:?}");
    }

    // Pull the arm64 entry as a node of that architecture would, and run its /sleep.
    let dir = std::env::temp_dir().join(format!("kwarm-e2e-arm64-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = async {
        std::fs::create_dir_all(&dir)?;
        let image = dir.join("image");
        let destination = format!("dir:{}", image.display());
        command(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--override-arch",
                "arm64",
                &format!("docker://{SLEEP_IMAGE}"),
                &destination,
            ],
        )
        .await?;
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(image.join("manifest.json"))?)?;
        let layer =
            manifest["layers"][0]["digest"].as_str().context("a layer")?.trim_start_matches("sha256:");
        let root = dir.join("root");
        std::fs::create_dir_all(&root)?;
        let layer = image.join(layer);
        command("tar", &["-xzf", layer.to_str().context("path")?, "-C", root.to_str().context("path")?])
            .await?;
        let sleep = root.join("sleep");
        let bytes = std::fs::read(&sleep)
            .with_context(|| format!("no /sleep in the arm64 entry ({})", sleep.display()))?;
        let machine = bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if machine != Some(183) {
            bail!("/sleep of the arm64 entry is not an aarch64 ELF (e_machine {machine:?})");
        }
        println!("arm64 entry: /sleep, {} bytes, aarch64", bytes.len());
        // qemu-user comes with hack/install-deps.sh: without it this is a failure, not a skip
        let status = tokio::process::Command::new("qemu-aarch64")
            .arg(&sleep)
            .arg("10ms")
            .status()
            .await
            .context("running qemu-aarch64 (hack/install-deps.sh installs qemu-user)")?;
        if !status.success() {
            bail!("arm64 /sleep 10ms under qemu-aarch64: {status}");
        }
        println!("arm64 /sleep 10ms under qemu-aarch64: {status}");
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs a program to completion; its stdout, or an error with its stderr.
async fn command(program: &str, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}\n{}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
