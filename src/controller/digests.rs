//! Registry checks in a task of their own, so a slow registry never holds a reconcile back. The
//! leader sends the images to check, each with the pull secrets to check it with; every interval
//! (and as soon as an image or its secrets change) the task resolves them
//! ([`crate::registry::Resolver`]) and sends the answers back. Two such tasks run: the digest
//! checks (the tags kwarm warms, `DIGEST_CHECK_INTERVAL`) and the access checks (images that may
//! only be warmed with their own namespaces' credentials, see [`super::state`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use tokio::sync::watch;

use super::API_TIMEOUT;
use crate::error::with_timeout;
use crate::http::Shared;
use crate::metrics::ResultLabel;
use crate::registry::{Credentials, Resolution, Resolver};

/// What to check: image → the pull secrets (in the DaemonSet's namespace) to check it with.
pub type Wanted = BTreeMap<String, Vec<String>>;

/// What the answers are for: the log lines and the counter differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Has a warmed tag moved to a new digest?
    Digests,
    /// Can an image's own credentials read it?
    Access,
}

pub struct Checker {
    /// One resolver per set of secrets checked with: a registry client keeps the first
    /// credentials it saw for a registry.
    pub resolvers: BTreeMap<Vec<String>, Resolver>,
    pub insecure: BTreeSet<String>,
    pub secrets: Api<Secret>,
    pub interval: Duration,
    pub shared: Arc<Shared>,
    pub purpose: Purpose,
}

impl Checker {
    pub fn new(
        client: Client,
        namespace: &str,
        interval: Duration,
        insecure: &BTreeSet<String>,
        shared: Arc<Shared>,
        purpose: Purpose,
    ) -> Self {
        Checker {
            resolvers: BTreeMap::new(),
            insecure: insecure.clone(),
            secrets: Api::namespaced(client, namespace),
            interval,
            shared,
            purpose,
        }
    }

    /// Starts the task: what to check goes in on the sender, the answers come out on the receiver.
    pub fn spawn(self) -> (watch::Sender<Option<Wanted>>, watch::Receiver<BTreeMap<String, Resolution>>) {
        let (wanted_tx, wanted_rx) = watch::channel(None);
        let (answers_tx, answers_rx) = watch::channel(BTreeMap::new());
        tokio::spawn(self.run(wanted_rx, answers_tx));
        (wanted_tx, answers_rx)
    }

    /// Checks what `wanted` says until it closes; the answers go out on `answers`.
    pub async fn run(
        mut self,
        mut wanted: watch::Receiver<Option<Wanted>>,
        answers: watch::Sender<BTreeMap<String, Resolution>>,
    ) {
        let mut next_round = tokio::time::Instant::now();
        // What was checked with which secrets: a change of secrets is a new check.
        let mut checked: Wanted = BTreeMap::new();
        let mut forbidden_said = false;
        loop {
            let current = wanted.borrow_and_update().clone();
            let Some(current) = current else {
                // Nothing to check before the leader's first word: wait for it (the round timer
                // is due already, and waiting on it would spin through the whole start-up).
                if wanted.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let due = tokio::time::Instant::now() >= next_round;
            // New images are resolved at once; all of them every interval. Grouped by the
            // secrets they are checked with.
            let mut groups: BTreeMap<&Vec<String>, BTreeSet<String>> = BTreeMap::new();
            for (image, secrets) in &current {
                if due || checked.get(image) != Some(secrets) {
                    groups.entry(secrets).or_default().insert(image.clone());
                }
            }
            let mut results = BTreeMap::new();
            for (secrets, images) in groups {
                let credentials = self.credentials(secrets, &mut forbidden_said).await;
                let (insecure, purpose) = (&self.insecure, self.purpose);
                let resolver = self.resolvers.entry(secrets.clone()).or_insert_with(|| match purpose {
                    Purpose::Digests => Resolver::new(insecure),
                    Purpose::Access => Resolver::for_access(insecure),
                });
                results.extend(resolver.resolve(&images, &credentials, SystemTime::now()).await);
            }
            let in_use: BTreeSet<&Vec<String>> = current.values().collect();
            self.resolvers.retain(|secrets, _| in_use.contains(secrets));
            if !results.is_empty() {
                self.record(&results, &answers.borrow());
                checked = current.clone();
                answers.send_modify(|all| {
                    all.retain(|image, _| current.contains_key(image));
                    all.extend(results);
                });
            }
            if due {
                next_round = tokio::time::Instant::now() + self.interval;
            }
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(next_round) => {}
            }
        }
    }

    /// Registry credentials of the pull secrets that exist and can be read; the others are
    /// skipped (a missing secret is the holders' problem too, and said by the kubelet).
    async fn credentials(&self, names: &[String], forbidden_said: &mut bool) -> Credentials {
        let mut credentials = Credentials::default();
        for name in names {
            match with_timeout(API_TIMEOUT, self.secrets.get_opt(name)).await {
                Ok(Some(secret)) => {
                    let data = secret.data.unwrap_or_default();
                    let Some(config) = data.get(".dockerconfigjson").or_else(|| data.get(".dockercfg"))
                    else {
                        continue;
                    };
                    if let Err(e) = credentials.add_docker_config(&config.0) {
                        tracing::warn!(secret = %name, error = %e, "Pull secret unusable for digest checks");
                    }
                }
                Ok(None) => {}
                Err(e) if e.api_code() == Some(403) => {
                    if !*forbidden_said {
                        *forbidden_said = true;
                        tracing::warn!(secret = %name, error = %e,
                            "Not allowed to read pull secrets (RBAC): private tags are checked anonymously");
                    }
                }
                Err(e) => tracing::debug!(secret = %name, error = %e, "Could not read a pull secret"),
            }
        }
        credentials
    }

    /// Counts the answers, and logs a failure when it starts (or its reason changes) and the
    /// recovery, not every round.
    fn record(&self, results: &BTreeMap<String, Resolution>, before: &BTreeMap<String, Resolution>) {
        if self.purpose == Purpose::Access {
            return self.record_access(results, before);
        }
        let m = &self.shared.metrics;
        for (image, resolution) in results {
            let earlier = before.get(image);
            let result = match resolution {
                Resolution::Digest { digest } => {
                    if matches!(earlier, Some(Resolution::Failed { .. })) {
                        tracing::info!(image = %image, %digest, "Digest check works again");
                    }
                    "ok"
                }
                Resolution::Failed { reason, message } => {
                    let same = matches!(earlier, Some(Resolution::Failed { reason: r, .. }) if r == reason);
                    if !same {
                        tracing::warn!(image = %image, reason = reason.as_str(), %message,
                            "Could not check the tag's digest; nothing is rolled for it until it can");
                    }
                    reason.as_str()
                }
            };
            m.digest_checks.get_or_create(&ResultLabel { result }).inc();
        }
    }

    /// Logs an access answer when it changes: the controller says what it means (Events).
    fn record_access(&self, results: &BTreeMap<String, Resolution>, before: &BTreeMap<String, Resolution>) {
        let m = &self.shared.metrics;
        for (image, resolution) in results {
            let result = match resolution {
                Resolution::Digest { .. } => "ok",
                Resolution::Failed { reason, .. } => reason.as_str(),
            };
            m.access_checks.get_or_create(&ResultLabel { result }).inc();
            if before.get(image) != Some(resolution)
                && let Resolution::Failed { reason, message } = resolution
            {
                tracing::debug!(image = %image, reason = reason.as_str(), %message,
                    "Access check: the image's own credentials cannot read it");
            }
        }
    }
}
