//! Policy settings and their validation hook.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Settings of a policy: decoded from the `settings` object of the policy's
/// entry in the server config, validated once when the server loads the policy.
///
/// Derive `Deserialize` with `#[serde(default, deny_unknown_fields)]` so that
/// absent fields take defaults and misspelt ones are refused with their name.
pub trait Settings: DeserializeOwned + Default {
    /// Checks values that the type alone cannot; the message names the field.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Settings of a policy that takes none: accepts `{}` or `null`, refuses any field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl Settings for NoSettings {}

/// Answer of the `portcullis_validate_settings` export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsValidation {
    /// True when the settings are usable.
    pub valid: bool,
    /// Why they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl SettingsValidation {
    /// Decodes and validates settings JSON (`null` means defaults).
    pub fn check<S: Settings>(json: &[u8]) -> Self {
        match parse_settings::<S>(json) {
            Ok(_) => Self { valid: true, message: None },
            Err(message) => Self { valid: false, message: Some(message) },
        }
    }
}

/// Decodes settings JSON and runs [`Settings::validate`].
pub fn parse_settings<S: Settings>(json: &[u8]) -> Result<S, String> {
    // The path of the offending field leads the message (`bindings[0].aws:
    // unknown field ...`), which serde's own errors do not say. No
    // `invalid settings:` prefix: the host adds it (ABI.md).
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let settings: S = match serde_path_to_error::deserialize::<_, Option<S>>(&mut deserializer) {
        Ok(settings) => settings.unwrap_or_default(),
        Err(e) if e.path().iter().next().is_none() => return Err(e.inner().to_string()),
        Err(e) => return Err(format!("{}: {}", e.path(), e.inner())),
    };
    if let Err(e) = deserializer.end() {
        return Err(e.to_string());
    }
    settings.validate()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Limits {
        max: u32,
    }

    impl Settings for Limits {
        fn validate(&self) -> Result<(), String> {
            if self.max > 10 { Err("max: must be at most 10".into()) } else { Ok(()) }
        }
    }

    #[test]
    fn null_means_defaults() {
        assert!(SettingsValidation::check::<Limits>(b"null").valid);
        assert!(SettingsValidation::check::<Limits>(b"{}").valid);
    }

    #[test]
    fn unknown_field_is_named() {
        let v = SettingsValidation::check::<Limits>(br#"{"maxx": 3}"#);
        assert!(!v.valid);
        assert!(v.message.unwrap_or_default().contains("maxx"));
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        items: Vec<Limits>,
    }

    impl Settings for Nested {}

    #[test]
    fn errors_name_the_path_of_the_field() {
        let v = SettingsValidation::check::<Nested>(br#"{"items": [{"max": 1}, {"max": "two"}]}"#);
        let message = v.message.unwrap_or_default();
        assert!(message.starts_with("items[1].max: invalid type"), "{message}");
        let v = SettingsValidation::check::<Nested>(br#"{"items": [{"maxx": 1}]}"#);
        let message = v.message.unwrap_or_default();
        assert!(message.contains("items[0].maxx: unknown field `maxx`"), "{message}");
        assert!(!SettingsValidation::check::<Nested>(br#"{} {}"#).valid, "trailing data is refused");
    }

    #[test]
    fn no_settings_refuses_fields() {
        assert!(SettingsValidation::check::<NoSettings>(b"{}").valid);
        assert!(!SettingsValidation::check::<NoSettings>(br#"{"a":1}"#).valid);
    }

    #[test]
    fn validate_hook_runs() {
        let v = SettingsValidation::check::<Limits>(br#"{"max": 11}"#);
        assert_eq!(v.message.as_deref(), Some("max: must be at most 10"));
    }
}
