//! Settings of the `{{name}}` policy: which labels objects must carry, and
//! the namespaces left alone.
//!
//! Settings are decoded with unknown fields refused and checked once by
//! [`portcullis_sdk::Settings::validate`] when the server loads the policy, so
//! a typo or an invalid label stops the rollout with a message naming the
//! field instead of silently weakening the policy.

{{^context}}
use std::collections::BTreeMap;

{{/context}}
use serde::Deserialize;
{{^context}}

use crate::labels::Expected;
{{/context}}

/// Settings of the policy (`settings:` of its entry in the server config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
{{^context}}
    /// Label key → the value every object must carry, e.g.
    /// `environment: production`. Required.
    pub labels: BTreeMap<String, String>,
{{/context}}
{{#context}}
    /// Keys of the labels every namespaced object must carry with the value
    /// its Namespace has, e.g. `[team]`. Required.
    pub namespace_labels: Vec<String>,
{{/context}}
    /// Namespaces whose objects are left alone, e.g. `[kube-system, kube-*]`
    /// (`*` matches any run of characters).
    pub exempt_namespaces: Vec<String>,
}

impl Settings {
{{^context}}
    /// The labels every object must carry.
    pub fn expected(&self) -> Vec<Expected> {
        self.labels.iter().map(|(key, value)| Expected::new(key, value)).collect()
    }

{{/context}}
    /// Whether the objects of `namespace` are left alone (cluster-scoped
    /// objects, of namespace `""`, never are).
    pub fn exempts(&self, namespace: &str) -> bool {
        !namespace.is_empty() && self.exempt_namespaces.iter().any(|p| portcullis_sdk::glob_matches(p, namespace))
    }
}

impl portcullis_sdk::Settings for Settings {
    fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
{{^context}}
        if self.labels.is_empty() {
            errors.push("labels: required: name at least one label and the value it must have".to_string());
        }
        for (key, value) in &self.labels {
            if let Err(e) = check_key(key).and_then(|()| check_value(value)) {
                errors.push(format!("labels[{key:?}]: {e}"));
            }
        }
{{/context}}
{{#context}}
        if self.namespace_labels.is_empty() {
            errors.push("namespaceLabels: required: name at least one label key".to_string());
        }
        for (i, key) in self.namespace_labels.iter().enumerate() {
            if let Err(e) = check_key(key) {
                errors.push(format!("namespaceLabels[{i}]: {e}"));
            }
        }
{{/context}}
        for (i, pattern) in self.exempt_namespaces.iter().enumerate() {
            if pattern.is_empty() {
                errors.push(format!("exemptNamespaces[{i}]: must not be empty"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

/// Checks a label key as the API server does: an optional prefix (a DNS
/// subdomain) and `/`, then a name (see [`is_name`]).
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return Err(format!("{key:?} is not a valid label key: its prefix {prefix:?} is not a DNS subdomain"));
    }
    if !is_name(name) {
        return Err(format!(
            "{key:?} is not a valid label key: the name part must be 1 to 63 letters, digits, '-', '_' or '.', \
             beginning and ending with a letter or digit"
        ));
    }
    Ok(())
}

{{^context}}
/// Checks a label value as the API server does: empty, or a name (see [`is_name`]).
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: it must be at most 63 letters, digits, '-', '_' or '.', \
             beginning and ending with a letter or digit"
        ))
    }
}

{{/context}}
/// 1 to 63 ASCII letters, digits, `-`, `_` and `.`, beginning and ending
/// with a letter or digit.
fn is_name(s: &str) -> bool {
    let alphanumeric_ends =
        s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    s.len() <= 63 && alphanumeric_ends && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// 1 to 63 lowercase ASCII letters, digits and `-`, beginning and ending
/// with a letter or digit.
fn is_dns_label(s: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= 63
        && s.starts_with(alphanumeric)
        && s.ends_with(alphanumeric)
        && s.chars().all(|c| alphanumeric(c) || c == '-')
}

#[cfg(test)]
mod tests {
    use portcullis_sdk::SettingsValidation;

    use super::*;

    /// Settings JSON and a fragment of the expected error (`None`: valid).
    const CASES: &[(&str, Option<&str>)] = &[
{{^context}}
        (r#"{"labels": {"environment": "production"}}"#, None),
        (r#"{"labels": {"example.com/cost-center": "cc-1234", "tier": ""}, "exemptNamespaces": ["kube-*"]}"#, None),
        ("{}", Some("labels: required")),
        ("null", Some("labels: required")),
        (
            r#"{"labels": {"Cost Center": "x"}}"#,
            Some(r#"labels["Cost Center"]: "Cost Center" is not a valid label key"#),
        ),
        (r#"{"labels": {"Example.com/team": "x"}}"#, Some(r#"its prefix "Example.com" is not a DNS subdomain"#)),
        (
            r#"{"labels": {"environment": "prod uction"}}"#,
            Some(r#"labels["environment"]: "prod uction" is not a valid label value"#),
        ),
        (
            r#"{"labels": {"environment": "production"}, "exemptNamespaces": [""]}"#,
            Some("exemptNamespaces[0]: must not be empty"),
        ),
        (r#"{"label": {"environment": "production"}}"#, Some("unknown field `label`")),
        (r#"{"labels": ["environment"]}"#, Some("labels: invalid type")),
{{/context}}
{{#context}}
        (r#"{"namespaceLabels": ["team"]}"#, None),
        (r#"{"namespaceLabels": ["example.com/team", "cost-center"], "exemptNamespaces": ["kube-*"]}"#, None),
        ("{}", Some("namespaceLabels: required")),
        ("null", Some("namespaceLabels: required")),
        (
            r#"{"namespaceLabels": ["team", "Cost Center"]}"#,
            Some(r#"namespaceLabels[1]: "Cost Center" is not a valid label key"#),
        ),
        (r#"{"namespaceLabels": ["Example.com/team"]}"#, Some(r#"its prefix "Example.com" is not a DNS subdomain"#)),
        (r#"{"namespaceLabels": ["team"], "exemptNamespaces": [""]}"#, Some("exemptNamespaces[0]: must not be empty")),
        (r#"{"namespaceLabel": ["team"]}"#, Some("unknown field `namespaceLabel`")),
        (r#"{"namespaceLabels": "team"}"#, Some("namespaceLabels: invalid type")),
{{/context}}
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

{{^context}}
    #[test]
    fn label_values_are_checked_as_the_api_server_does() {
        for valid in ["", "production", "cc-1234", "v1.2_3", &"a".repeat(63)] {
            assert_eq!(check_value(valid), Ok(()), "{valid:?}");
        }
        for invalid in ["-production", "production.", "prod uction", "été", &"a".repeat(64)] {
            assert!(check_value(invalid).is_err(), "{invalid:?}");
        }
    }

{{/context}}
    #[test]
    fn exempt_namespaces_are_globs_that_never_match_cluster_scope() {
        let settings =
            Settings { exempt_namespaces: vec!["kube-*".into(), "monitoring".into()], ..Settings::default() };
        assert!(settings.exempts("kube-system") && settings.exempts("monitoring"));
        assert!(!settings.exempts("shop") && !settings.exempts("monitoring-2"));
        assert!(!Settings { exempt_namespaces: vec!["*".into()], ..Settings::default() }.exempts(""));
    }
}
