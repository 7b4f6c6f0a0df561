//! Keeps the rollout gate's webhook reachable: the serving certificate (issued into
//! WEBHOOK_SECRET and renewed there by whichever replica sees it due, or read from
//! WEBHOOK_CERT_DIR) installed in the webhook's [`CertStore`], and — by the leader — the
//! MutatingWebhookConfiguration with the current caBundle. Checked at start and every minute.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

use super::{API_TIMEOUT, FIELD_MANAGER};
use crate::config::Config;
use crate::error::with_timeout;
use crate::leader::Fence;
use crate::rollout::{Certificates, RolloutGate};
use crate::webhook::certs::{self, Renewal};
use crate::webhook::{CertStore, webhook_configuration};

const CHECK_EVERY: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(5);

pub struct Keeper {
    pub client: Client,
    pub config: Arc<Config>,
    pub certs: Arc<CertStore>,
    pub fence: Fence,
}

impl Keeper {
    pub async fn run(self, mut leader: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
        let Some(gate) = self.config.rollout_gate.clone() else { return };
        let mut applied: Option<MutatingWebhookConfiguration> = None;
        // Without leader election nobody sends: leadership is fixed, the channel closed.
        let mut leader_open = true;
        loop {
            let is_leader = *leader.borrow();
            let wait = match self.check(&gate, is_leader, &mut applied).await {
                Ok(()) => CHECK_EVERY,
                Err(e) => {
                    tracing::warn!(error = %e, "Rollout gate webhook not ready; pods are admitted ungated meanwhile");
                    RETRY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // a new leader applies the configuration at once
                changed = leader.changed(), if leader_open => match changed {
                    Ok(()) => applied = None,
                    Err(_) => leader_open = false,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn check(
        &self,
        gate: &RolloutGate,
        leader: bool,
        applied: &mut Option<MutatingWebhookConfiguration>,
    ) -> Result<(), String> {
        let ca_bundle = match &gate.certificates {
            Certificates::Secret(name) => Some(self.keep_secret(gate, name).await?),
            Certificates::Directory(dir) => self.read_directory(dir)?,
        };
        if !leader {
            return Ok(());
        }
        let desired =
            webhook_configuration(gate, &self.config.namespace, &self.config.watch, ca_bundle.as_deref());
        if applied.as_ref() == Some(&desired) {
            return Ok(());
        }
        if !self.fence.may_write(Instant::now()) {
            return Ok(());
        }
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        with_timeout(API_TIMEOUT, api.patch(&gate.configuration, &params, &Patch::Apply(&desired)))
            .await
            .map_err(|e| format!("applying MutatingWebhookConfiguration {}: {e}", gate.configuration))?;
        if applied.is_none() {
            tracing::info!(configuration = %gate.configuration, "Rollout gate webhook configured");
        }
        *applied = Some(desired);
        Ok(())
    }

    /// Reads (and issues or renews when due) the certificate in the Secret, installs it, and
    /// returns the caBundle. Two replicas renewing at once: the second write conflicts, and the
    /// next check installs the winner's.
    async fn keep_secret(&self, gate: &RolloutGate, name: &str) -> Result<String, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &gate.namespace);
        let what = |e: crate::Error| format!("Secret {}/{name}: {e}", gate.namespace);
        let live = with_timeout(API_TIMEOUT, api.get_opt(name)).await.map_err(what)?;
        let current = live.as_ref().and_then(certs::from_secret);
        let hosts = certs::hosts(&gate.endpoint);
        let now = SystemTime::now();
        let renewal = certs::renewal(current.as_ref(), &hosts, now);
        let bundle = if renewal == Renewal::Keep {
            current.ok_or("no certificate")?
        } else {
            let bundle = certs::renew(current.as_ref(), renewal, &hosts, now)?;
            let mut secret = certs::to_secret(&bundle, name, &gate.namespace);
            let written = match &live {
                None => with_timeout(API_TIMEOUT, api.create(&PostParams::default(), &secret)).await,
                Some(live) => {
                    secret.metadata.resource_version = live.metadata.resource_version.clone();
                    with_timeout(API_TIMEOUT, api.replace(name, &PostParams::default(), &secret)).await
                }
            };
            match written {
                Ok(_) => tracing::info!(secret = %name, ?renewal, hosts = %hosts.join(","),
                    "Issued the rollout gate webhook's serving certificate"),
                // another replica wrote first: take its certificate next time
                Err(e) if e.api_code() == Some(409) => {
                    return Err(format!("Secret {name} changed meanwhile"));
                }
                Err(e) => return Err(what(e)),
            }
            bundle
        };
        self.certs.install(&bundle.chain(), &bundle.key)?;
        Ok(bundle.ca_bundle(now))
    }

    /// WEBHOOK_CERT_DIR: tls.crt and tls.key, and ca.crt for the caBundle when present (cert-manager
    /// writes all three).
    fn read_directory(&self, dir: &std::path::Path) -> Result<Option<String>, String> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        let chain = read("tls.crt").map_err(|e| format!("{}/tls.crt: {e}", dir.display()))?;
        let key = read("tls.key").map_err(|e| format!("{}/tls.key: {e}", dir.display()))?;
        self.certs.install(&chain, &key).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(read("ca.crt").ok().filter(|c| !c.trim().is_empty()))
    }
}
