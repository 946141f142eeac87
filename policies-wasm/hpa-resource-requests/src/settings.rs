//! Settings of the hpa-resource-requests policy: bounds on HPAs and the
//! namespaces where every workload must carry requests, HPA or not.

use serde::Deserialize;

/// Settings (`settings:` of the policy's config entry); all optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Apply the rule to Pod CREATE, through the pod's owners (default true).
    pub check_pods: bool,
    /// HPA `spec.minReplicas` (default 1) below this is denied.
    pub min_replicas_at_least: Option<i32>,
    /// HPA `spec.maxReplicas` above this is denied.
    pub max_replicas_at_most: Option<i32>,
    /// HPA `spec.behavior.scaleDown.stabilizationWindowSeconds` (default 300)
    /// below this is denied.
    pub min_scale_down_stabilization_seconds: Option<i32>,
    /// Requests on every workload and Pod of some namespaces, HPA or not.
    pub strict: Option<Strict>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            check_pods: true,
            min_replicas_at_least: None,
            max_replicas_at_most: None,
            min_scale_down_stabilization_seconds: None,
            strict: None,
        }
    }
}

/// Strict mode: every regular container and native sidecar of every
/// workload and Pod in these namespaces carries these requests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Strict {
    /// Namespace names or globs (`*` matches any run of characters).
    pub namespaces: Vec<String>,
    /// Resource names, e.g. `cpu`, `memory`.
    pub resources: Vec<String>,
}

impl Strict {
    /// Whether `namespace` is one of the strict namespaces.
    pub fn covers(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|g| portcullis_sdk::glob_matches(g, namespace))
    }
}

impl portcullis_sdk::Settings for Settings {
    fn validate(&self) -> Result<(), String> {
        if let Some(min) = self.min_replicas_at_least.filter(|m| *m < 1) {
            return Err(format!("minReplicasAtLeast: must be at least 1, got {min}"));
        }
        if let Some(max) = self.max_replicas_at_most.filter(|m| *m < 1) {
            return Err(format!("maxReplicasAtMost: must be at least 1, got {max}"));
        }
        if let (Some(min), Some(max)) = (self.min_replicas_at_least, self.max_replicas_at_most)
            && min > max
        {
            return Err(format!("minReplicasAtLeast ({min}) is above maxReplicasAtMost ({max})"));
        }
        // The API server accepts stabilization windows of 0..=3600 s.
        if let Some(s) = self.min_scale_down_stabilization_seconds.filter(|s| !(0..=3600).contains(s)) {
            return Err(format!("minScaleDownStabilizationSeconds: must be 0..=3600, got {s}"));
        }
        if let Some(strict) = &self.strict {
            if strict.namespaces.is_empty() {
                return Err("strict.namespaces: lists no namespace".into());
            }
            if let Some((i, g)) = strict.namespaces.iter().enumerate().find(|(_, g)| {
                g.is_empty()
                    || !g.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*')
            }) {
                return Err(format!("strict.namespaces[{i}]: {g:?} is not a namespace name or glob"));
            }
            if strict.resources.is_empty() {
                return Err("strict.resources: lists no resource (e.g. [cpu, memory])".into());
            }
            if let Some((i, r)) =
                strict.resources.iter().enumerate().find(|(_, r)| r.is_empty() || r.contains(char::is_whitespace))
            {
                return Err(format!("strict.resources[{i}]: {r:?} is not a resource name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        portcullis_sdk::parse_settings(json.as_bytes())
    }

    #[test]
    fn defaults_and_the_issue_example() -> Result<(), String> {
        assert_eq!(parse("{}")?, Settings::default());
        assert!(Settings::default().check_pods);
        let s = parse(
            r#"{"checkPods": true, "minReplicasAtLeast": 2, "maxReplicasAtMost": 50, "minScaleDownStabilizationSeconds": 300,
                "strict": {"namespaces": ["clipper-*"], "resources": ["cpu", "memory"]}}"#,
        )?;
        assert!(s.strict.as_ref().is_some_and(|st| st.covers("clipper-production") && !st.covers("other")));
        Ok(())
    }

    #[test]
    fn bad_values_name_the_field() {
        for (json, fragment) in [
            (r#"{"minReplicasAtLeast": 0}"#, "minReplicasAtLeast: must be at least 1"),
            (r#"{"maxReplicasAtMost": 0}"#, "maxReplicasAtMost"),
            (r#"{"minReplicasAtLeast": 5, "maxReplicasAtMost": 3}"#, "above maxReplicasAtMost"),
            (r#"{"minScaleDownStabilizationSeconds": 3601}"#, "minScaleDownStabilizationSeconds"),
            (r#"{"strict": {"namespaces": [], "resources": ["cpu"]}}"#, "strict.namespaces"),
            (r#"{"strict": {"namespaces": ["A"], "resources": ["cpu"]}}"#, "strict.namespaces[0]"),
            (r#"{"strict": {"namespaces": ["a"], "resources": []}}"#, "strict.resources"),
            (r#"{"strict": {"namespaces": ["a"]}}"#, "missing field `resources`"),
            (r#"{"checkpods": false}"#, "unknown field `checkpods`"),
            (r#"{"minReplicasAtLeast": "two"}"#, "minReplicasAtLeast: invalid type"),
        ] {
            let e = parse(json).err().unwrap_or_default();
            assert!(e.contains(fragment), "{json}: {e:?} lacks {fragment:?}");
        }
    }
}
