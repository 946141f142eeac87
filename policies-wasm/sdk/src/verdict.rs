//! What a policy answers.

use serde::{Deserialize, Serialize};

/// A policy's decision about one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Why it was denied (shown to the user by `kubectl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// HTTP-style status code for a denial (default 403 when denied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Warnings returned to the client, admitted or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// RFC 6902 operations to apply to the object (mutating policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<json_patch::Patch>,
    /// The whole mutated object; the host diffs it into a patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutated_object: Option<serde_json::Value>,
}

impl Verdict {
    /// Admit unchanged.
    pub fn allow() -> Self {
        Self { allowed: true, ..Self::default() }
    }

    /// Deny with a message.
    pub fn deny(message: impl Into<String>) -> Self {
        Self { allowed: false, message: Some(message.into()), ..Self::default() }
    }

    /// Deny listing every problem, one per line, so that one round of fixes
    /// is enough: `"{summary} (2 problems):\n- first\n- second"`. With no
    /// problems, admit.
    pub fn deny_all(summary: &str, problems: &[String]) -> Self {
        if problems.is_empty() {
            return Self::allow();
        }
        let noun = if problems.len() == 1 { "problem" } else { "problems" };
        let mut message = format!("{summary} ({} {noun}):", problems.len());
        for problem in problems {
            message.push_str("\n- ");
            message.push_str(problem);
        }
        Self::deny(message)
    }

    /// Admit with these RFC 6902 operations applied.
    pub fn patch(patch: json_patch::Patch) -> Self {
        Self { allowed: true, patch: Some(patch), ..Self::default() }
    }

    /// Admit with the object replaced by `object` (the host computes the patch).
    pub fn mutate(object: serde_json::Value) -> Self {
        Self { allowed: true, mutated_object: Some(object), ..Self::default() }
    }

    /// Sets the status code of a denial.
    #[must_use]
    pub fn with_code(mut self, code: u16) -> Self {
        self.code = Some(code);
        self
    }

    /// Adds a warning.
    #[must_use]
    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Adds warnings.
    #[must_use]
    pub fn with_warnings(mut self, warnings: impl IntoIterator<Item = String>) -> Self {
        self.warnings.extend(warnings);
        self
    }
}

/// What crosses the boundary from `portcullis_validate`: a verdict, or an
/// error meaning the policy could not evaluate (the host then applies the
/// policy's `failurePolicy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The policy could not evaluate this request.
    Error {
        /// What went wrong.
        error: String,
    },
    /// The policy decided.
    Verdict(Verdict),
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Self {
        Outcome::Verdict(verdict)
    }
}

impl<E: std::fmt::Display> From<Result<Verdict, E>> for Outcome {
    fn from(result: Result<Verdict, E>) -> Self {
        match result {
            Ok(verdict) => Outcome::Verdict(verdict),
            Err(e) => Outcome::Error { error: e.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_serializes_minimally() {
        let json = serde_json::to_string(&Verdict::allow()).unwrap_or_default();
        assert_eq!(json, r#"{"allowed":true}"#);
    }

    #[test]
    fn deny_all_lists_every_problem() {
        let v = Verdict::deny_all("Pod \"a/b\" is refused", &["one".into(), "two".into()]);
        assert_eq!(v.message.as_deref(), Some("Pod \"a/b\" is refused (2 problems):\n- one\n- two"));
        assert!(!v.allowed);
        assert_eq!(Verdict::deny_all("x", &["only".into()]).message.as_deref(), Some("x (1 problem):\n- only"));
        assert!(Verdict::deny_all("x", &[]).allowed);
    }

    #[test]
    fn error_and_verdict_are_told_apart() {
        let e: Outcome = serde_json::from_str(r#"{"error":"boom"}"#).unwrap_or(Outcome::Verdict(Verdict::allow()));
        assert_eq!(e, Outcome::Error { error: "boom".into() });
        let v: Outcome = serde_json::from_str(r#"{"allowed":false,"message":"no"}"#)
            .unwrap_or(Outcome::Error { error: String::new() });
        assert_eq!(v, Outcome::Verdict(Verdict::deny("no")));
    }

    #[test]
    fn result_errors_become_outcome_errors() {
        let r: Result<Verdict, String> = Err("cannot decode".into());
        assert_eq!(Outcome::from(r), Outcome::Error { error: "cannot decode".into() });
    }
}
