//! Controller-specific checks: find the Ingress's class, map it to a
//! controller, and check the annotations with which that controller would
//! still serve plain HTTP.
//!
//! Both controllers read these annotations with Go's `strconv.ParseBool`, so a
//! value "reads as false" when, ignoring ASCII case and surrounding whitespace,
//! it is `false`, `f` or `0`.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::networking::v1::Ingress;

use crate::settings::{Controller, Settings};

/// Legacy annotation naming the class, used when `spec.ingressClassName` is unset.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// ingress-nginx: `"false"` turns off the HTTP-to-HTTPS redirect.
pub const NGINX_SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
/// GCE: must be `"false"`, or the load balancer also serves plain HTTP.
pub const GCE_ALLOW_HTTP: &str = "kubernetes.io/ingress.allow-http";

/// The class of an Ingress and where it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class<'a> {
    /// Class name.
    pub name: &'a str,
    /// `spec.ingressClassName`, or the legacy annotation.
    pub source: &'static str,
}

impl fmt::Display for Class<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "class {:?} from {}", self.name, self.source)
    }
}

/// The class of `ingress`: `spec.ingressClassName` when set and non-empty,
/// else the `kubernetes.io/ingress.class` annotation.
pub fn class_of(ingress: &Ingress) -> Option<Class<'_>> {
    let spec_class = ingress.spec.as_ref().and_then(|spec| spec.ingress_class_name.as_deref());
    if let Some(name) = spec_class.filter(|n| !n.is_empty()) {
        return Some(Class { name, source: "spec.ingressClassName" });
    }
    let annotation = ingress.metadata.annotations.as_ref().and_then(|a| a.get(CLASS_ANNOTATION));
    annotation
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .map(|name| Class { name, source: "annotation kubernetes.io/ingress.class" })
}

/// Problems with the controller-specific annotations of `ingress`; an error
/// only when `settings` map its class to an unknown controller.
pub fn check(ingress: &Ingress, settings: &Settings) -> Result<Vec<String>, String> {
    let Some(class) = class_of(ingress) else {
        return Ok(Vec::new());
    };
    let empty = BTreeMap::new();
    let annotations = ingress.metadata.annotations.as_ref().unwrap_or(&empty);
    let value = |key: &str| annotations.get(key).map(String::as_str);

    let mut problems = Vec::new();
    match settings.controller_for(class.name)? {
        Controller::IngressNginx => {
            if let Some(v) = value(NGINX_SSL_REDIRECT).filter(|v| reads_as_false(v)) {
                problems.push(format!(
                    "annotation {NGINX_SSL_REDIRECT} {v:?} turns off the HTTP-to-HTTPS redirect of ingress-nginx ({class}); remove it"
                ));
            }
        }
        Controller::Gce => match value(GCE_ALLOW_HTTP) {
            Some(v) if reads_as_false(v) => {}
            found => {
                let found = found.map_or_else(|| "is missing".to_string(), |v| format!("is {v:?}"));
                problems.push(format!(
                    "annotation {GCE_ALLOW_HTTP} {found}; it must be \"false\", or the GCE load balancer ({class}) also serves plain HTTP"
                ));
            }
        },
        Controller::None => {}
    }
    Ok(problems)
}

/// True when Go's `strconv.ParseBool` would read `value` as false, ignoring
/// case and surrounding whitespace.
pub fn reads_as_false(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "false" | "f" | "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn false_spellings() {
        for v in ["false", "False", "FALSE", "fAlSe", " false ", "f", "F", "0"] {
            assert!(reads_as_false(v), "{v:?}");
        }
        for v in ["true", "", "no", "off", "1", "falsey"] {
            assert!(!reads_as_false(v), "{v:?}");
        }
    }

    fn ingress(json: serde_json::Value) -> Result<Ingress, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn class_comes_from_spec_then_annotation() -> Result<(), String> {
        let both = ingress(serde_json::json!({
            "metadata": {"annotations": {CLASS_ANNOTATION: "gce"}},
            "spec": {"ingressClassName": "nginx"}
        }))?;
        assert_eq!(class_of(&both), Some(Class { name: "nginx", source: "spec.ingressClassName" }));
        let legacy = ingress(serde_json::json!({
            "metadata": {"annotations": {CLASS_ANNOTATION: "gce"}},
            "spec": {"ingressClassName": ""}
        }))?;
        assert_eq!(class_of(&legacy).map(|c| c.name), Some("gce"));
        let none = ingress(serde_json::json!({"metadata": {"annotations": {CLASS_ANNOTATION: ""}}}))?;
        assert_eq!(class_of(&none), None);
        Ok(())
    }
}
