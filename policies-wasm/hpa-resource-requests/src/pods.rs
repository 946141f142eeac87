//! Pod specs as the HPA controller reads them: which containers count, and
//! which requests an autoscaler's utilization metrics divide by.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The parts of a pod spec this policy reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Regular containers.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Init containers; those with `restartPolicy: Always` are native sidecars.
    #[serde(default)]
    pub init_containers: Vec<Container>,
    /// Pod-level resources (`spec.resources`).
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// A container's name and resources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// `Always` makes an init container a native sidecar.
    #[serde(default)]
    pub restart_policy: Option<String>,
    /// Requests and limits.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// Requests and limits; quantities are only checked for presence.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    /// Requests by resource name.
    #[serde(default)]
    pub requests: Option<BTreeMap<String, serde_json::Value>>,
    /// Limits by resource name.
    #[serde(default)]
    pub limits: Option<BTreeMap<String, serde_json::Value>>,
}

impl Resources {
    fn requests(&self, resource: &str) -> bool {
        self.requests.as_ref().is_some_and(|r| r.contains_key(resource))
    }

    fn limits(&self, resource: &str) -> bool {
        self.limits.as_ref().is_some_and(|l| l.contains_key(resource))
    }
}

/// What a utilization metric needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A `Resource` metric: the request on every counted container (or the pod-level request).
    Resource(String),
    /// A `ContainerResource` metric: the request on that container, which must exist.
    ContainerResource {
        /// Container name.
        container: String,
        /// Resource name.
        resource: String,
    },
}

impl Need {
    /// The resource divided by.
    pub fn resource(&self) -> &str {
        match self {
            Need::Resource(r) | Need::ContainerResource { resource: r, .. } => r,
        }
    }
}

/// Where the pod spec comes from, which decides whether a limit stands in
/// for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A workload's pod template: the API server will copy limits into
    /// missing requests on the pods it creates.
    Template,
    /// A Pod being created: its requests are final.
    Pod,
}

/// One unmet need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// `container` has no request (nor, on a template, limit) for `resource`.
    Request {
        /// Container name.
        container: String,
        /// Resource name.
        resource: String,
    },
    /// A `ContainerResource` metric names a container the pod does not have.
    Container {
        /// Container name.
        container: String,
        /// Resource name.
        resource: String,
    },
}

impl PodSpec {
    /// The containers the HPA controller counts: regular ones and native
    /// sidecars (init containers with `restartPolicy: Always`); not other
    /// init containers, not ephemeral ones.
    pub fn counted(&self) -> impl Iterator<Item = &Container> {
        self.containers
            .iter()
            .chain(self.init_containers.iter().filter(|c| c.restart_policy.as_deref() == Some("Always")))
    }

    fn has(container: &Container, resource: &str, source: Source) -> bool {
        container
            .resources
            .as_ref()
            .is_some_and(|r| r.requests(resource) || (source == Source::Template && r.limits(resource)))
    }

    /// Every need of `needs` this spec does not meet, in order.
    pub fn missing(&self, needs: &[Need], source: Source) -> Vec<Missing> {
        let mut out = Vec::new();
        for need in needs {
            match need {
                Need::Resource(resource) => {
                    let pod_level = self
                        .resources
                        .as_ref()
                        .is_some_and(|r| r.requests(resource) || (source == Source::Template && r.limits(resource)));
                    if pod_level {
                        continue;
                    }
                    for c in self.counted().filter(|c| !Self::has(c, resource, source)) {
                        out.push(Missing::Request { container: c.name.clone(), resource: resource.clone() });
                    }
                }
                Need::ContainerResource { container, resource } => {
                    match self.counted().find(|c| c.name == *container) {
                        None => {
                            out.push(Missing::Container { container: container.clone(), resource: resource.clone() })
                        }
                        Some(c) if !Self::has(c, resource, source) => {
                            out.push(Missing::Request { container: container.clone(), resource: resource.clone() })
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        out.dedup();
        out
    }
}

impl Missing {
    /// `container "app" has no cpu request (nor limit)` for messages.
    pub fn describe(&self, source: Source) -> String {
        match self {
            Missing::Request { container, resource } => {
                let nor = if source == Source::Template { " (nor limit)" } else { "" };
                format!("container {container:?} has no {resource} request{nor}")
            }
            Missing::Container { container, .. } => format!("it has no container {container:?}"),
        }
    }

    /// The resource concerned.
    pub fn resource(&self) -> &str {
        match self {
            Missing::Request { resource, .. } | Missing::Container { resource, .. } => resource,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap_or_default()
    }

    fn cpu() -> Vec<Need> {
        vec![Need::Resource("cpu".into())]
    }

    #[test]
    fn counted_containers_are_regular_ones_and_native_sidecars() {
        let s = spec(json!({
            "initContainers": [{"name": "migrate"}, {"name": "proxy", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}],
            "ephemeralContainers": [{"name": "debug"}],
        }));
        let names: Vec<&str> = s.counted().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "proxy"]);
        assert_eq!(
            s.missing(&cpu(), Source::Pod),
            [Missing::Request { container: "proxy".into(), resource: "cpu".into() }]
        );
    }

    #[test]
    fn limits_count_on_templates_only() {
        let s = spec(json!({"containers": [{"name": "app", "resources": {"limits": {"cpu": "1"}}}]}));
        assert!(s.missing(&cpu(), Source::Template).is_empty());
        assert_eq!(s.missing(&cpu(), Source::Pod).len(), 1);
    }

    #[test]
    fn pod_level_requests_satisfy_resource_metrics_only() {
        let s = spec(json!({"resources": {"requests": {"cpu": "2"}}, "containers": [{"name": "app"}]}));
        assert!(s.missing(&cpu(), Source::Pod).is_empty());
        let per_container = [Need::ContainerResource { container: "app".into(), resource: "cpu".into() }];
        assert_eq!(s.missing(&per_container, Source::Pod).len(), 1);
    }

    #[test]
    fn container_resource_metrics_check_only_their_container_which_must_exist() {
        let s = spec(
            json!({"containers": [{"name": "app", "resources": {"requests": {"memory": "1Gi"}}}, {"name": "sidecar"}]}),
        );
        let app = [Need::ContainerResource { container: "app".into(), resource: "memory".into() }];
        assert!(s.missing(&app, Source::Pod).is_empty());
        let gone = [Need::ContainerResource { container: "gone".into(), resource: "memory".into() }];
        assert_eq!(
            s.missing(&gone, Source::Pod),
            [Missing::Container { container: "gone".into(), resource: "memory".into() }]
        );
    }
}
