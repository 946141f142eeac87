//! Multi-document YAML manifests, as `helm template` prints them.

use serde::Deserialize as _;
use serde_json::Value;

/// Splits a multi-document YAML stream into its objects, skipping empty documents.
pub fn parse(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// The policy config that a rendered chart mounts: `data["config.yaml"]` of
/// the ConfigMap carrying the label `app.kubernetes.io/component: policy-config`.
pub fn policy_config(objects: &[Value]) -> Option<&str> {
    objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("ConfigMap"))
        .find(|o| {
            o.pointer("/metadata/labels/app.kubernetes.io~1component").and_then(Value::as_str) == Some("policy-config")
        })
        .and_then(|o| o.pointer("/data/config.yaml"))
        .and_then(Value::as_str)
}

/// The arguments of the `webhook-server` container of a rendered chart's Deployment.
pub fn server_args(objects: &[Value]) -> Option<Vec<String>> {
    let deployment = objects.iter().find(|o| o.get("kind").and_then(Value::as_str) == Some("Deployment"))?;
    let containers = deployment.pointer("/spec/template/spec/containers")?.as_array()?;
    let server = containers.iter().find(|c| c.get("name").and_then(Value::as_str) == Some("webhook-server"))?;
    server.get("args")?.as_array()?.iter().map(|a| a.as_str().map(str::to_owned)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "---
# Source: portcullis/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata: {name: portcullis}
---
# Source: portcullis/templates/empty.yaml
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: portcullis
  labels: {app.kubernetes.io/component: policy-config}
data:
  config.yaml: |
    policies: []
";

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let objects = parse(RENDERED).expect("parses");
        assert_eq!(objects.len(), 2);
        assert_eq!(policy_config(&objects), Some("policies: []\n"));
        assert_eq!(server_args(&objects), None);
    }

    #[test]
    fn finds_the_server_arguments() {
        let objects = parse(
            "kind: Deployment
spec: {template: {spec: {containers: [{name: sidecar, args: [x]}, {name: webhook-server, args: [serve, --addr=0.0.0.0:8443]}]}}}
",
        )
        .expect("parses");
        assert_eq!(server_args(&objects), Some(vec!["serve".to_owned(), "--addr=0.0.0.0:8443".to_owned()]));
    }
}
