//! The high-volume watches (holder pods, Deployments) parsed into only the fields kwarm reads.
//! A holder pod event is tens of kilobytes of JSON, most of it `managedFields`, resources, mounts
//! and conditions; parsing all of it into `k8s_openapi` types and throwing it away was a large
//! share of the manager's CPU and of its peak memory while listing. Serde skips the fields these
//! types leave out without building anything for them. [`LeanPod::into_pod`] and
//! [`LeanDeployment::into_deployment`] give the `k8s_openapi` objects back, holding what was read,
//! for the pure functions that take them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, LocalObjectReference, Pod, PodSpec, PodStatus,
    PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer};

/// The metadata fields kwarm reads (and the watch machinery needs: name, resource version).
fn lean_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
        deletion_timestamp: Option<Time>,
    }
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        generation: m.generation,
        labels: m.labels,
        annotations: m.annotations,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

#[derive(Debug, Clone, Deserialize)]
struct LeanContainer {
    name: String,
    image: Option<String>,
}

impl LeanContainer {
    fn into_container(self) -> Container {
        Container { name: self.name, image: self.image, ..Container::default() }
    }
}

fn containers(list: Vec<LeanContainer>) -> Vec<Container> {
    list.into_iter().map(LeanContainer::into_container).collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanContainerStatus {
    name: String,
    #[serde(rename = "imageID", default)]
    image_id: String,
    state: Option<ContainerState>,
}

impl LeanContainerStatus {
    fn into_status(self) -> ContainerStatus {
        ContainerStatus {
            name: self.name,
            image_id: self.image_id,
            state: self.state,
            ..ContainerStatus::default()
        }
    }
}

fn statuses(list: Option<Vec<LeanContainerStatus>>) -> Option<Vec<ContainerStatus>> {
    list.map(|l| l.into_iter().map(LeanContainerStatus::into_status).collect())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanPodSpec {
    node_name: Option<String>,
    #[serde(default)]
    containers: Vec<LeanContainer>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanPodStatus {
    container_statuses: Option<Vec<LeanContainerStatus>>,
    init_container_statuses: Option<Vec<LeanContainerStatus>>,
}

/// A holder pod: its node, containers (name, image) and their states.
#[derive(Debug, Clone, Deserialize)]
pub struct LeanPod {
    #[serde(deserialize_with = "lean_meta")]
    metadata: ObjectMeta,
    spec: Option<LeanPodSpec>,
    status: Option<LeanPodStatus>,
}

impl LeanPod {
    /// The pod, holding only what was read.
    pub fn into_pod(self) -> Pod {
        Pod {
            metadata: self.metadata,
            spec: self.spec.map(|s| PodSpec {
                node_name: s.node_name,
                containers: containers(s.containers),
                ..PodSpec::default()
            }),
            status: self.status.map(|s| PodStatus {
                container_statuses: statuses(s.container_statuses),
                init_container_statuses: statuses(s.init_container_statuses),
                ..PodStatus::default()
            }),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanTemplateSpec {
    #[serde(default)]
    containers: Vec<LeanContainer>,
    init_containers: Option<Vec<LeanContainer>>,
    image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct LeanTemplate {
    spec: Option<LeanTemplateSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct LeanDeploymentSpec {
    #[serde(default)]
    template: LeanTemplate,
}

/// A Deployment: its labels, annotations and its pod template's containers and pull secrets.
#[derive(Debug, Clone, Deserialize)]
pub struct LeanDeployment {
    #[serde(deserialize_with = "lean_meta")]
    metadata: ObjectMeta,
    spec: Option<LeanDeploymentSpec>,
}

impl LeanDeployment {
    /// The Deployment, holding only what was read.
    pub fn into_deployment(self) -> Deployment {
        Deployment {
            metadata: self.metadata,
            spec: self.spec.map(|s| DeploymentSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: s.template.spec.map(|t| PodSpec {
                        containers: containers(t.containers),
                        init_containers: t.init_containers.map(containers),
                        image_pull_secrets: t.image_pull_secrets,
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }
}

/// The lean types are the same resources as their `k8s_openapi` counterparts.
macro_rules! same_resource {
    ($lean:ty, $full:ty) => {
        impl Resource for $lean {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                <$full as Resource>::kind(&())
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$full as Resource>::group(&())
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$full as Resource>::version(&())
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$full as Resource>::plural(&())
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

same_resource!(LeanPod, Pod);
same_resource!(LeanDeployment, Deployment);

#[cfg(test)]
mod tests;
