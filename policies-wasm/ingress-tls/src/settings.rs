//! Settings of the ingress-tls policy: which exceptions an operator grants and
//! which ingress controller serves which class.
//!
//! Settings are decoded with unknown fields refused and checked once by
//! [`portcullis_sdk::Settings::validate`] when the server loads the policy, so
//! a typo or an unknown controller name stops the rollout with a message naming
//! the field instead of silently weakening the policy.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// Settings of the policy (`settings:` of its entry in the server config).
///
/// Every field is optional; `{}` (or no settings at all) gives the strictest
/// behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Accept what only the controller's default certificate can serve:
    /// host-less rules, a default backend (alone, or next to rules, where it
    /// serves every host name no rule matches), TLS entries without hosts, and
    /// TLS entries without `secretName`.
    /// It never waives the coverage of a named rule host, nor what cert-manager
    /// needs (hosts and `secretName`) when its annotations are present.
    pub allow_default_certificate: bool,
    /// Names of namespaced cert-manager `Issuer`s that annotation
    /// `cert-manager.io/issuer` may name.
    pub allowed_issuers: Vec<String>,
    /// Names of cert-manager `ClusterIssuer`s that annotation
    /// `cert-manager.io/cluster-issuer` may name.
    ///
    /// When this list or [`Settings::allowed_issuers`] is non-empty, the
    /// allow-list is in force for both annotations: an issuer of a kind whose
    /// list is empty is refused, and so is `kubernetes.io/tls-acme` without an
    /// issuer annotation (cert-manager's default issuer cannot be checked).
    pub allowed_cluster_issuers: Vec<String>,
    /// Ingress class name to controller (`ingress-nginx`, `gce` or `none`),
    /// merged over [`DEFAULT_INGRESS_CLASSES`]; map a default class to `none`
    /// to turn its controller checks off.
    pub ingress_classes: BTreeMap<String, String>,
}

/// Class-to-controller mapping used unless `ingressClasses` overrides a class.
pub const DEFAULT_INGRESS_CLASSES: &[(&str, Controller)] =
    &[("nginx", Controller::IngressNginx), ("gce", Controller::Gce)];

/// An ingress controller whose annotations the policy understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// ingress-nginx (`kubernetes/ingress-nginx`): HTTP must redirect to HTTPS.
    IngressNginx,
    /// GKE's GCE ingress controller: plain HTTP must be turned off.
    Gce,
    /// Any other controller: no controller-specific checks.
    None,
}

impl Controller {
    /// Every controller, in the order they are listed in messages.
    const ALL: [Controller; 3] = [Controller::IngressNginx, Controller::Gce, Controller::None];

    /// The name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            Controller::IngressNginx => "ingress-nginx",
            Controller::Gce => "gce",
            Controller::None => "none",
        }
    }

    /// Parses a name used in settings.
    pub fn from_name(name: &str) -> Option<Controller> {
        Controller::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Settings {
    /// The controller that serves `class`: the `ingressClasses` entry if any,
    /// else the default mapping, else [`Controller::None`].
    ///
    /// Fails only on an unknown controller name, which [`validate`] refuses at
    /// load; the error keeps an unvalidated setting from silently skipping checks.
    ///
    /// [`validate`]: portcullis_sdk::Settings::validate
    pub fn controller_for(&self, class: &str) -> Result<Controller, String> {
        if let Some(name) = self.ingress_classes.get(class) {
            return Controller::from_name(name).ok_or_else(|| unknown_controller(class, name));
        }
        Ok(DEFAULT_INGRESS_CLASSES
            .iter()
            .find(|(default, _)| *default == class)
            .map_or(Controller::None, |(_, controller)| *controller))
    }

    /// True when either issuer allow-list is non-empty.
    pub fn restricts_issuers(&self) -> bool {
        !self.allowed_issuers.is_empty() || !self.allowed_cluster_issuers.is_empty()
    }
}

impl portcullis_sdk::Settings for Settings {
    fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        check_names("allowedIssuers", &self.allowed_issuers, &mut errors);
        check_names("allowedClusterIssuers", &self.allowed_cluster_issuers, &mut errors);
        for (class, controller) in &self.ingress_classes {
            if class.trim().is_empty() {
                errors.push("ingressClasses: a class name must not be empty".to_string());
            }
            if Controller::from_name(controller).is_none() {
                errors.push(unknown_controller(class, controller));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

fn check_names(field: &str, names: &[String], errors: &mut Vec<String>) {
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            errors.push(format!("{field}[{i}]: an issuer name must not be empty"));
        } else if name.trim() != name {
            errors.push(format!("{field}[{i}]: issuer name {name:?} has surrounding whitespace"));
        }
    }
}

fn unknown_controller(class: &str, controller: &str) -> String {
    let known: Vec<String> = Controller::ALL.iter().map(|c| format!("{:?}", c.name())).collect();
    format!("ingressClasses[{class:?}]: unknown controller {controller:?} (expected one of {})", known.join(", "))
}

#[cfg(test)]
mod tests {
    use portcullis_sdk::SettingsValidation;

    use super::*;

    /// Settings JSON and a fragment of the expected error (`None`: valid).
    const CASES: &[(&str, Option<&str>)] = &[
        ("null", None),
        ("{}", None),
        (r#"{"allowDefaultCertificate": true}"#, None),
        (r#"{"allowedClusterIssuers": ["letsencrypt-prod"]}"#, None),
        (r#"{"ingressClasses": {"my-nginx": "ingress-nginx", "nginx": "none"}}"#, None),
        (r#"{"allowedIssuers": [""]}"#, Some("allowedIssuers[0]: an issuer name must not be empty")),
        (r#"{"allowedClusterIssuers": ["ok", ""]}"#, Some("allowedClusterIssuers[1]")),
        (r#"{"allowedIssuers": [" le"]}"#, Some("allowedIssuers[0]: issuer name \" le\" has surrounding whitespace")),
        (
            r#"{"ingressClasses": {"traefik": "traefik"}}"#,
            Some(r#"ingressClasses["traefik"]: unknown controller "traefik""#),
        ),
        (r#"{"ingressClasses": {"": "gce"}}"#, Some("ingressClasses: a class name must not be empty")),
        (r#"{"allowDefaultCertificates": true}"#, Some("allowDefaultCertificates")),
        (r#"{"allowDefaultCertificate": "yes"}"#, Some("allowDefaultCertificate: invalid type")),
        (r#"{"ingressClasses": ["nginx"]}"#, Some("ingressClasses: invalid type")),
    ];

    #[test]
    fn settings_are_validated_naming_the_field() {
        for (json, expected) in CASES {
            let result = SettingsValidation::check::<Settings>(json.as_bytes());
            match expected {
                None => assert!(result.valid, "{json}: {:?}", result.message),
                Some(fragment) => {
                    assert!(!result.valid, "{json} should be refused");
                    let message = result.message.unwrap_or_default();
                    assert!(message.contains(fragment), "{json}: {message:?} lacks {fragment:?}");
                }
            }
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let result =
            SettingsValidation::check::<Settings>(br#"{"allowedIssuers": [""], "ingressClasses": {"x": "haproxy"}}"#);
        let message = result.message.unwrap_or_default();
        assert!(message.contains("allowedIssuers[0]") && message.contains(r#"ingressClasses["x"]"#), "{message}");
    }

    #[test]
    fn class_mapping_merges_over_defaults() -> Result<(), String> {
        let settings: Settings = serde_json::from_str(
            r#"{"ingressClasses": {"my-nginx": "ingress-nginx", "gce-internal": "gce", "nginx": "none"}}"#,
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(settings.controller_for("my-nginx")?, Controller::IngressNginx);
        assert_eq!(settings.controller_for("gce-internal")?, Controller::Gce);
        assert_eq!(settings.controller_for("gce")?, Controller::Gce, "defaults stay");
        assert_eq!(settings.controller_for("nginx")?, Controller::None, "a default can be turned off");
        assert_eq!(settings.controller_for("traefik")?, Controller::None);
        assert_eq!(Settings::default().controller_for("nginx")?, Controller::IngressNginx);
        Ok(())
    }

    #[test]
    fn unvalidated_unknown_controller_is_an_error() {
        let settings = Settings {
            ingress_classes: BTreeMap::from([("x".to_string(), "haproxy".to_string())]),
            ..Settings::default()
        };
        assert!(settings.controller_for("x").is_err());
    }
}
