//! The local cluster itself works: the real node runs pods that pull from the local registry into
//! its containerd, and KWOK fake nodes take DaemonSet pods. Needs `make cluster-up` (hack/e2e.sh
//! starts it) and the test images (hack/test-images.sh).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, PostParams};
use kwarm_e2e::{
    Check, Placement, REAL_NODE, REGISTRY, client, containerd_has_image, containerd_remove_image,
    create_kwok_nodes, create_namespace, delete_namespace, delete_nodes, describe_events, holder_daemonset,
    node_is_ready, wait_daemonset_ready, wait_until,
};

const FAKE_NODES: usize = 50;

#[tokio::test]
async fn real_node_is_ready() -> Result<()> {
    let client = client().await?;
    let nodes = Api::<Node>::all(client);
    let node = wait_until("the real node 127.0.0.1 to be Ready", Duration::from_secs(60), || async {
        Ok(match nodes.get_opt(REAL_NODE).await? {
            Some(node) if node_is_ready(&node) => Check::Done(node),
            Some(_) => Check::Pending("registered, not Ready".to_owned()),
            None => Check::Pending("not registered".to_owned()),
        })
    })
    .await?;
    let info = node.status.and_then(|s| s.node_info).context("node has no nodeInfo")?;
    ensure!(
        info.container_runtime_version.starts_with("containerd://"),
        "real node runs {}, expected containerd",
        info.container_runtime_version
    );
    Ok(())
}

#[tokio::test]
async fn daemonset_pulls_test_image_into_real_node_containerd() -> Result<()> {
    let client = client().await?;
    let image = format!("{REGISTRY}/test/other:v1");
    // start from an absent image so that the pod's pull is what puts it there
    containerd_remove_image(&image).await?;
    let ns = create_namespace(&client, "e2e-cluster-pull-").await?;
    let result = async {
        let ds = holder_daemonset("hold-other", &image, Placement::RealNode);
        Api::<DaemonSet>::namespaced(client.clone(), &ns).create(&PostParams::default(), &ds).await?;
        wait_ready_or_explain(&client, &ns, "hold-other", 1, Duration::from_secs(120)).await?;
        ensure!(
            containerd_has_image(&image).await?,
            "the pod is ready but containerd's k8s.io namespace has no {image}"
        );
        Ok(())
    }
    .await;
    delete_namespace(&client, &ns, Duration::from_secs(90)).await?;
    result
}

#[tokio::test]
async fn daemonset_is_ready_on_real_node_and_fifty_kwok_nodes() -> Result<()> {
    let client = client().await?;
    let ns = create_namespace(&client, "e2e-cluster-kwok-").await?;
    // The test's own fake nodes carry a label naming its namespace, and the DaemonSet selects the
    // real node plus those, so fake nodes made by others (KWOK_NODES) do not change the count.
    let group = ("kwarm-e2e/group".to_owned(), ns.clone());
    let extra = BTreeMap::from([group.clone()]);
    let prefix = format!("kwok-{ns}");
    let result = async {
        create_kwok_nodes(&client, &prefix, FAKE_NODES, &extra, Duration::from_secs(120)).await?;
        let ds = holder_daemonset(
            "hold-fleet",
            &format!("{REGISTRY}/test/small:v1"),
            Placement::RealNodeAndLabelled(group.0.clone(), group.1.clone()),
        );
        Api::<DaemonSet>::namespaced(client.clone(), &ns).create(&PostParams::default(), &ds).await?;
        let expected = (FAKE_NODES + 1) as i32;
        let status =
            wait_ready_or_explain(&client, &ns, "hold-fleet", expected, Duration::from_secs(180)).await?;
        ensure!(
            status.desired_number_scheduled == expected && status.number_ready == expected,
            "expected {expected} pods scheduled and ready, status is {status:?}"
        );
        Ok(())
    }
    .await;
    // pods first (KWOK deletes its pods while it still manages their nodes), then the nodes
    let ns_deleted = delete_namespace(&client, &ns, Duration::from_secs(120)).await;
    let names: Vec<String> = (0..FAKE_NODES).map(|i| format!("{prefix}-{i}")).collect();
    delete_nodes(&client, &names).await?;
    ns_deleted?;
    result
}

/// [`wait_daemonset_ready`], with the namespace's events added to a timeout error.
async fn wait_ready_or_explain(
    client: &Client,
    ns: &str,
    name: &str,
    expected: i32,
    timeout: Duration,
) -> Result<DaemonSetStatus> {
    match wait_daemonset_ready(client, ns, name, expected, timeout).await {
        Ok(status) => Ok(status),
        Err(err) => Err(err.context(format!("events in {ns}:\n{}", describe_events(client, ns).await))),
    }
}
