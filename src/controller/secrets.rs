//! Pull-secret mirroring (INHERIT_PULL_SECRETS) in a task of its own, so that slow or failing
//! secret reads and writes never hold a reconcile back. The controller sends the mirrors the
//! Deployments want; the task mirrors them (again every minute, to follow changed sources) and
//! sends back the mirrors that exist, which the DaemonSet then references.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use super::{API_TIMEOUT, FIELD_MANAGER};
use crate::daemonset::{selector_labels, selector_string};
use crate::error::{Error, Result, with_timeout};
use crate::leader::Fence;

/// Inherited pull secrets are re-read from their source this often.
const RESYNC: Duration = Duration::from_secs(60);

/// Mirror name → (namespace, secret) of its source.
pub type Wanted = BTreeMap<String, (String, String)>;

pub struct Mirrorer {
    client: Client,
    namespace: String,
    daemonset_name: String,
    owner: Option<OwnerReference>,
    fence: Fence,
    /// Mirror name → digest of the data it was written with.
    mirrored: BTreeMap<String, String>,
}

impl Mirrorer {
    pub fn new(
        client: Client,
        namespace: String,
        daemonset_name: String,
        owner: Option<OwnerReference>,
        fence: Fence,
    ) -> Mirrorer {
        Mirrorer { client, namespace, daemonset_name, owner, fence, mirrored: BTreeMap::new() }
    }

    /// Mirrors what `wanted` says until it closes; the mirrors there are go out on `done`.
    pub async fn run(
        mut self,
        mut wanted: watch::Receiver<Option<Wanted>>,
        done: watch::Sender<Vec<String>>,
    ) {
        loop {
            let current = wanted.borrow_and_update().clone();
            if let Some(current) = current {
                match self.sync(&current).await {
                    Ok(names) => {
                        done.send_if_modified(|old| {
                            let changed = *old != names;
                            *old = names;
                            changed
                        });
                    }
                    Err(Error::NotLeader) => {}
                    Err(e) => tracing::warn!(error = %e, category = e.category(),
                        "Pull secret mirroring failed; the DaemonSet keeps the mirrors it had"),
                }
            }
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// Mirrors the wanted pull secrets into kwarm's namespace, deletes the mirrors nothing wants;
    /// returns the names of the mirrors there are now.
    async fn sync(&mut self, wanted: &Wanted) -> Result<Vec<String>> {
        let ns = self.namespace.clone();
        let mirrors: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let mut synced = BTreeMap::new();
        // Mirrors whose source could not be read now: kept as they are (a passing API error must
        // not drop credentials); a source that is gone or no registry secret takes its mirror along.
        let mut unknown = BTreeSet::new();
        for (mirror, (source_ns, source_name)) in wanted {
            let source_api: Api<Secret> = Api::namespaced(self.client.clone(), source_ns);
            let source = match with_timeout(API_TIMEOUT, source_api.get_opt(source_name)).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    tracing::warn!(secret = %format!("{source_ns}/{source_name}"), "Pull secret referenced by a Deployment does not exist");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(secret = %format!("{source_ns}/{source_name}"), error = %e, "Cannot read pull secret to inherit");
                    if let Some(digest) = self.mirrored.get(mirror) {
                        synced.insert(mirror.clone(), digest.clone());
                    }
                    unknown.insert(mirror.clone());
                    continue;
                }
            };
            let type_ = source.type_.clone().unwrap_or_default();
            if type_ != "kubernetes.io/dockerconfigjson" && type_ != "kubernetes.io/dockercfg" {
                tracing::warn!(secret = %format!("{source_ns}/{source_name}"), %type_, "Not a registry secret; not inherited");
                continue;
            }
            let digest = format!("{:?}", source.data);
            if self.mirrored.get(mirror) != Some(&digest) {
                let mut labels = selector_labels(&self.daemonset_name);
                labels.insert("app.kubernetes.io/managed-by".into(), "kwarm".into());
                labels.insert("app.kubernetes.io/component".into(), "pull-secret".into());
                let copy = Secret {
                    metadata: ObjectMeta {
                        name: Some(mirror.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(labels),
                        annotations: Some(BTreeMap::from([(
                            "kwarm.io/source".to_string(),
                            format!("{source_ns}/{source_name}"),
                        )])),
                        owner_references: self.owner.clone().map(|o| vec![o]),
                        ..Default::default()
                    },
                    type_: Some(type_),
                    data: source.data.clone(),
                    ..Default::default()
                };
                if !self.fence.may_write(std::time::Instant::now()) {
                    return Err(Error::NotLeader);
                }
                let params = PatchParams::apply(FIELD_MANAGER).force();
                with_timeout(API_TIMEOUT, mirrors.patch(mirror, &params, &Patch::Apply(&copy))).await?;
                tracing::info!(secret = %mirror, source = %format!("{source_ns}/{source_name}"), "Mirrored pull secret");
            }
            synced.insert(mirror.clone(), digest);
        }
        // Delete mirrors nothing references any more, and those whose source is gone.
        let selector =
            format!("{},app.kubernetes.io/component=pull-secret", selector_string(&self.daemonset_name));
        let existing =
            with_timeout(API_TIMEOUT, mirrors.list_metadata(&ListParams::default().labels(&selector)))
                .await?;
        let mut there: BTreeSet<String> = synced.keys().cloned().collect();
        for s in existing {
            let name = s.name_any();
            if unknown.contains(&name) {
                there.insert(name);
            } else if !synced.contains_key(&name) {
                if !self.fence.may_write(std::time::Instant::now()) {
                    return Err(Error::NotLeader);
                }
                with_timeout(API_TIMEOUT, mirrors.delete(&name, &DeleteParams::default())).await?;
                tracing::info!(secret = %name, "Deleted pull secret mirror: no Deployment uses it, or its source is gone");
            }
        }
        self.mirrored = synced;
        Ok(there.into_iter().collect())
    }
}
