//! kwarm's own view of the DaemonSet it owns, as three conditions on the DaemonSet's status
//! (`kubectl wait --for=condition=Warm daemonset/NAME`):
//! - `Warm`: every image kwarm wants held is held on every node the DaemonSet runs on. False while
//!   an image is pulling, and while one is quarantined, over MAX_IMAGES or lacks its own pull
//!   credentials: those are not held.
//! - `Progressing`: images are being pulled, rolled or updated to a new registry digest.
//! - `Degraded`: something needs a person: a quarantined image, MAX_IMAGES reached, an image
//!   without its own pull credentials, pulls failing, the init container failing. (A DaemonSet of kwarm's name that is not kwarm's gets
//!   no conditions: kwarm never writes to it.)
//!
//! Pure: [`observe`] computes them from counts; [`merge`] keeps a condition's
//! `lastTransitionTime` while its status stays, so a write happens only when something changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::api::apps::v1::DaemonSetCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ImageStatus;

pub const WARM: &str = "Warm";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// kwarm's condition types, in the order they are written.
pub const TYPES: [&str; 3] = [WARM, PROGRESSING, DEGRADED];
/// At most this many image names in one message.
const NAMES_SHOWN: usize = 3;

/// What the conditions are computed from.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The images kwarm wants held now (canonical), before quarantine and MAX_IMAGES.
    pub planned: &'a BTreeSet<String>,
    /// Per image of the live DaemonSet: where it is held.
    pub statuses: &'a [ImageStatus],
    /// Nodes that should run a holder (the DaemonSet controller's count); `None` until the
    /// DaemonSet controller has seen the current generation.
    pub nodes: Option<usize>,
    pub quarantined: &'a BTreeSet<String>,
    pub overflow: &'a BTreeSet<String>,
    /// Images not warmed: the credentials of the namespaces that want them cannot read them (or
    /// were not checked yet).
    pub denied: &'a BTreeSet<String>,
    /// Tags being updated to a new registry digest.
    pub updating: &'a BTreeSet<String>,
    /// Nodes whose holder's init container fails.
    pub init_failing: usize,
}

static NONE: BTreeSet<String> = BTreeSet::new();

impl Default for Inputs<'_> {
    fn default() -> Self {
        Inputs {
            planned: &NONE,
            statuses: &[],
            nodes: None,
            quarantined: &NONE,
            overflow: &NONE,
            denied: &NONE,
            updating: &NONE,
            init_failing: 0,
        }
    }
}

/// One condition without its transition time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The three conditions, in [`TYPES`] order.
pub fn observe(inputs: &Inputs) -> [Observed; 3] {
    let status: BTreeMap<&str, &ImageStatus> =
        inputs.statuses.iter().map(|s| (s.image.as_str(), s)).collect();
    let held: Vec<&String> = inputs
        .planned
        .iter()
        .filter(|i| {
            !inputs.quarantined.contains(*i) && !inputs.overflow.contains(*i) && !inputs.denied.contains(*i)
        })
        .collect();
    let is_warm = |image: &str| match (inputs.nodes, status.get(image)) {
        (Some(0), _) => true,
        (Some(nodes), Some(s)) => s.warm >= nodes,
        _ => false,
    };
    let pulling: Vec<&String> = held.iter().copied().filter(|i| !is_warm(i)).collect();
    let failing: Vec<&String> =
        held.iter().copied().filter(|i| status.get(i.as_str()).is_some_and(|s| s.failed > 0)).collect();
    let nodes = inputs.nodes.map_or_else(|| "?".to_string(), |n| n.to_string());

    let warm = if !inputs.quarantined.is_empty() {
        Observed {
            type_: WARM,
            status: false,
            reason: "ImagesQuarantined",
            message: format!(
                "{} quarantined: {}",
                count(inputs.quarantined.len()),
                names(inputs.quarantined)
            ),
        }
    } else if !inputs.denied.is_empty() {
        Observed {
            type_: WARM,
            status: false,
            reason: "CredentialsMissing",
            message: format!(
                "{} not warmed without pull credentials of the namespaces that want them: {}",
                count(inputs.denied.len()),
                names(inputs.denied)
            ),
        }
    } else if !inputs.overflow.is_empty() {
        Observed {
            type_: WARM,
            status: false,
            reason: "MaxImagesReached",
            message: format!("{} over MAX_IMAGES: {}", count(inputs.overflow.len()), names(inputs.overflow)),
        }
    } else if !pulling.is_empty() {
        Observed {
            type_: WARM,
            status: false,
            reason: "ImagesPulling",
            message: format!(
                "{} of {} warm on every node; not yet: {}",
                held.len() - pulling.len(),
                count(held.len()),
                progress(&pulling, &status, &nodes)
            ),
        }
    } else {
        Observed {
            type_: WARM,
            status: true,
            reason: "AllImagesWarm",
            message: format!("{} warm on {nodes} nodes", count(held.len())),
        }
    };

    let progressing = if !inputs.updating.is_empty() {
        Observed {
            type_: PROGRESSING,
            status: true,
            reason: "UpdatingImages",
            message: format!(
                "{} changed in the registry: {}",
                count(inputs.updating.len()),
                names(inputs.updating)
            ),
        }
    } else if !pulling.is_empty() {
        Observed {
            type_: PROGRESSING,
            status: true,
            reason: "PullingImages",
            message: format!("Pulling {}", progress(&pulling, &status, &nodes)),
        }
    } else {
        Observed { type_: PROGRESSING, status: false, reason: "Complete", message: "Nothing to pull".into() }
    };

    let degraded = if inputs.init_failing > 0 {
        Observed {
            type_: DEGRADED,
            status: true,
            reason: "InitContainerFailing",
            message: format!(
                "The holders' init container fails on {} nodes: check KIP_IMAGE and its pull secrets",
                inputs.init_failing
            ),
        }
    } else if !inputs.quarantined.is_empty() {
        Observed {
            type_: DEGRADED,
            status: true,
            reason: "ImagesQuarantined",
            message: format!(
                "{} failing on every node, removed from the holders until retried: {}",
                count(inputs.quarantined.len()),
                names(inputs.quarantined)
            ),
        }
    } else if !inputs.denied.is_empty() {
        Observed {
            type_: DEGRADED,
            status: true,
            reason: "CredentialsMissing",
            message: format!(
                "{} not warmed: the pull secrets of the namespaces that want them cannot read them \
                 (or could not be checked yet): {}",
                count(inputs.denied.len()),
                names(inputs.denied)
            ),
        }
    } else if !inputs.overflow.is_empty() {
        Observed {
            type_: DEGRADED,
            status: true,
            reason: "MaxImagesReached",
            message: format!(
                "{} not warmed: raise MAX_IMAGES or exclude images: {}",
                count(inputs.overflow.len()),
                names(inputs.overflow)
            ),
        }
    } else if !failing.is_empty() {
        Observed {
            type_: DEGRADED,
            status: true,
            reason: "PullsFailing",
            message: format!("Pulls failing on some nodes: {}", progress(&failing, &status, &nodes)),
        }
    } else {
        Observed { type_: DEGRADED, status: false, reason: "AsExpected", message: "No problem seen".into() }
    };
    [warm, progressing, degraded]
}

/// The conditions to write: `observed`, each with the transition time of `current`'s condition
/// of its type when the status did not change, else `now`. `None` when `current` already says
/// exactly that (nothing to write).
pub fn merge(
    current: &[DaemonSetCondition],
    observed: &[Observed],
    now: SystemTime,
) -> Option<Vec<DaemonSetCondition>> {
    let mut changed = false;
    let merged = observed
        .iter()
        .map(|o| {
            let status = if o.status { "True" } else { "False" };
            let old = current.iter().find(|c| c.type_ == o.type_);
            let same_status = old.is_some_and(|c| c.status == status);
            changed |= !old.is_some_and(|c| {
                same_status
                    && c.reason.as_deref() == Some(o.reason)
                    && c.message.as_deref() == Some(o.message.as_str())
            });
            let transition = match old {
                Some(c) if same_status => c.last_transition_time.clone(),
                _ => None,
            };
            DaemonSetCondition {
                type_: o.type_.to_string(),
                status: status.to_string(),
                reason: Some(o.reason.to_string()),
                message: Some(o.message.clone()),
                last_transition_time: transition.or_else(|| Some(Time(jiff_time(now)))),
            }
        })
        .collect();
    changed.then_some(merged)
}

/// Whether `current` and `observed` differ in a condition's status (not only its message).
pub fn status_changed(current: &[DaemonSetCondition], observed: &[Observed]) -> bool {
    observed.iter().any(|o| {
        let status = if o.status { "True" } else { "False" };
        !current.iter().any(|c| c.type_ == o.type_ && c.status == status)
    })
}

fn jiff_time(now: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

fn count(n: usize) -> String {
    match n {
        1 => "1 image".into(),
        n => format!("{n} images"),
    }
}

fn names<'a>(images: impl IntoIterator<Item = &'a String>) -> String {
    let images: Vec<&String> = images.into_iter().collect();
    let mut text = images.iter().take(NAMES_SHOWN).map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    if images.len() > NAMES_SHOWN {
        text += &format!(" and {} more", images.len() - NAMES_SHOWN);
    }
    text
}

/// `image (warm/nodes nodes)` for the first few images.
fn progress(images: &[&String], status: &BTreeMap<&str, &ImageStatus>, nodes: &str) -> String {
    let mut text = images
        .iter()
        .take(NAMES_SHOWN)
        .map(|i| {
            let s = status.get(i.as_str());
            let warm = s.map_or(0, |s| s.warm);
            match s.map_or(0, |s| s.failed) {
                0 => format!("{i} ({warm}/{nodes} nodes)"),
                failed => format!("{i} ({warm}/{nodes} nodes, failing on {failed})"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    if images.len() > NAMES_SHOWN {
        text += &format!(" and {} more", images.len() - NAMES_SHOWN);
    }
    text
}

#[cfg(test)]
mod tests;
