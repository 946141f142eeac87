//! HorizontalPodAutoscalers as the controller reads them: the scale target,
//! the requests its utilization metrics divide by, and the bounds that the
//! settings limit.

use k8s_openapi::api::autoscaling::{v1, v2};

use crate::pods::Need;

/// What an HPA scales (`spec.scaleTargetRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    /// `apiVersion` of the target (may be empty in old objects).
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// How an HPA's target kind can be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalability {
    /// A built-in scalable workload, looked up as this `apiVersion`.
    Workload(&'static str),
    /// A built-in kind without a scale subresource (DaemonSet, Job, ...).
    NotScalable,
    /// Another group: a custom resource, scalable if it has a scale subresource.
    Custom,
}

impl TargetRef {
    /// The API group of the target.
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// Whether and how the target can be scaled and checked.
    pub fn scalability(&self) -> Scalability {
        match (self.group(), self.kind.as_str()) {
            ("apps" | "extensions", "Deployment" | "StatefulSet" | "ReplicaSet") => Scalability::Workload("apps/v1"),
            ("", "ReplicationController") => Scalability::Workload("v1"),
            ("" | "apps" | "extensions" | "batch", _) => Scalability::NotScalable,
            _ => Scalability::Custom,
        }
    }
}

/// An HPA, from either API version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoscaler {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The scale target.
    pub target: TargetRef,
    /// The requests its utilization metrics need.
    pub needs: Vec<Need>,
    /// `spec.minReplicas`, defaulted to 1.
    pub min_replicas: i32,
    /// `spec.maxReplicas`.
    pub max_replicas: i32,
    /// `spec.behavior.scaleDown.stabilizationWindowSeconds`, defaulted to 300.
    pub scale_down_window: i32,
}

/// The HPA controller's default scale-down stabilization window.
pub const DEFAULT_SCALE_DOWN_WINDOW: i32 = 300;

impl Autoscaler {
    /// An `autoscaling/v2` HPA. No metrics means the default of 80% CPU
    /// utilization; only `Utilization` targets of `Resource` and
    /// `ContainerResource` metrics need requests (`AverageValue` does not).
    pub fn from_v2(hpa: v2::HorizontalPodAutoscaler) -> Self {
        let meta = hpa.metadata;
        let spec = hpa.spec;
        let metrics = spec.metrics.unwrap_or_default();
        let mut needs = Vec::new();
        if metrics.is_empty() {
            needs.push(Need::Resource("cpu".into()));
        }
        for metric in metrics {
            match (metric.type_.as_str(), metric.resource, metric.container_resource) {
                ("Resource", Some(r), _) if r.target.type_ == "Utilization" => needs.push(Need::Resource(r.name)),
                ("ContainerResource", _, Some(c)) if c.target.type_ == "Utilization" => {
                    needs.push(Need::ContainerResource { container: c.container, resource: c.name })
                }
                _ => {}
            }
        }
        let scale_down_window = spec
            .behavior
            .and_then(|b| b.scale_down)
            .and_then(|d| d.stabilization_window_seconds)
            .unwrap_or(DEFAULT_SCALE_DOWN_WINDOW);
        let target = spec.scale_target_ref;
        Self {
            namespace: meta.namespace.unwrap_or_default(),
            name: meta.name.unwrap_or_default(),
            target: TargetRef {
                api_version: target.api_version.unwrap_or_default(),
                kind: target.kind,
                name: target.name,
            },
            needs,
            min_replicas: spec.min_replicas.unwrap_or(1),
            max_replicas: spec.max_replicas,
            scale_down_window,
        }
    }

    /// An `autoscaling/v1` HPA, converted as the API server converts it to
    /// v2: its only metric is CPU utilization (`targetCPUUtilizationPercentage`,
    /// 80% when unset).
    pub fn from_v1(hpa: v1::HorizontalPodAutoscaler) -> Self {
        let spec = hpa.spec;
        let target = spec.scale_target_ref;
        let cpu = v2::MetricSpec {
            type_: "Resource".into(),
            resource: Some(v2::ResourceMetricSource {
                name: "cpu".into(),
                target: v2::MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(spec.target_cpu_utilization_percentage.unwrap_or(80)),
                    ..Default::default()
                },
            }),
            ..Default::default()
        };
        Self::from_v2(v2::HorizontalPodAutoscaler {
            metadata: hpa.metadata,
            spec: v2::HorizontalPodAutoscalerSpec {
                scale_target_ref: v2::CrossVersionObjectReference {
                    api_version: target.api_version,
                    kind: target.kind,
                    name: target.name,
                },
                min_replicas: spec.min_replicas,
                max_replicas: spec.max_replicas,
                metrics: Some(vec![cpu]),
                behavior: None,
            },
            status: None,
        })
    }

    /// `"namespace/name"`.
    pub fn display(&self) -> String {
        format!("{:?}", format!("{}/{}", self.namespace, self.name))
    }

    /// `cpu utilization`, `cpu and memory utilization`, ... for messages.
    pub fn scales_on(&self) -> String {
        let mut resources: Vec<&str> = Vec::new();
        for need in &self.needs {
            if !resources.contains(&need.resource()) {
                resources.push(need.resource());
            }
        }
        format!("{} utilization", resources.join(" and "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v2(spec: serde_json::Value) -> Autoscaler {
        let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                         "metadata": {"name": "web", "namespace": "shop"}, "spec": spec});
        Autoscaler::from_v2(serde_json::from_value(hpa).unwrap_or_default())
    }

    fn target() -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    }

    #[test]
    fn metrics_to_needed_requests() {
        let cases = [
            (json!(null), vec![Need::Resource("cpu".into())]),
            (json!([]), vec![Need::Resource("cpu".into())]),
            (
                json!([{"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                vec![Need::Resource("memory".into())],
            ),
            (
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": "500m"}}}]),
                vec![],
            ),
            (
                json!([{"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app", "target": {"type": "Utilization", "averageUtilization": 60}}}]),
                vec![Need::ContainerResource { container: "app".into(), resource: "cpu".into() }],
            ),
            (
                json!([{"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "100"}}},
                       {"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "5"}}}]),
                vec![],
            ),
        ];
        for (metrics, needs) in cases {
            let mut spec = json!({"scaleTargetRef": target(), "maxReplicas": 5});
            if !metrics.is_null() {
                spec["metrics"] = metrics.clone();
            }
            assert_eq!(v2(spec).needs, needs, "{metrics}");
        }
    }

    #[test]
    fn v1_always_scales_on_cpu_and_bounds_default() {
        let hpa = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a", "namespace": "b"},
                         "spec": {"scaleTargetRef": target(), "maxReplicas": 4}});
        let a = Autoscaler::from_v1(serde_json::from_value(hpa).unwrap_or_default());
        assert_eq!(a.needs, [Need::Resource("cpu".into())]);
        assert_eq!((a.min_replicas, a.max_replicas, a.scale_down_window), (1, 4, 300));
        let b = v2(json!({"scaleTargetRef": target(), "minReplicas": 3, "maxReplicas": 20,
                          "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}));
        assert_eq!((b.min_replicas, b.max_replicas, b.scale_down_window), (3, 20, 60));
    }

    #[test]
    fn scalability_of_targets() {
        let t = |api_version: &str, kind: &str| {
            TargetRef { api_version: api_version.into(), kind: kind.into(), name: "x".into() }.scalability()
        };
        assert_eq!(t("apps/v1", "Deployment"), Scalability::Workload("apps/v1"));
        assert_eq!(t("extensions/v1beta1", "ReplicaSet"), Scalability::Workload("apps/v1"));
        assert_eq!(t("v1", "ReplicationController"), Scalability::Workload("v1"));
        assert_eq!(t("apps/v1", "DaemonSet"), Scalability::NotScalable);
        assert_eq!(t("batch/v1", "Job"), Scalability::NotScalable);
        assert_eq!(t("v1", "Pod"), Scalability::NotScalable);
        assert_eq!(t("argoproj.io/v1alpha1", "Rollout"), Scalability::Custom);
    }
}
