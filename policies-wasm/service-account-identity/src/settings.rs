//! Settings of the service-account-identity policy: which ServiceAccounts
//! may carry which cloud identity, which ServiceAccount pods get when they
//! name none, and whether the policy also projects the cloud tokens itself.
//!
//! Everything is checked once when the server loads the policy
//! ([`portcullis_sdk::Settings::validate`]): identity formats, globs, token
//! lifetimes, and that no identity is granted by two bindings, so that
//! "which binding owns this role" always has one answer. Messages name the
//! field (`bindings[1].aws.roleArn: ...`).

use serde::Deserialize;

use crate::identity::{self, Cloud};

/// Audience of the AWS token unless a binding sets another.
pub const DEFAULT_AWS_AUDIENCE: &str = "sts.amazonaws.com";
/// Authority host of Azure's public cloud.
pub const DEFAULT_AZURE_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
/// Shortest projected token lifetime the API server accepts (seconds).
pub const MIN_TOKEN_EXPIRATION: i64 = 600;
/// Longest AWS token lifetime (seconds), EKS's maximum.
pub const MAX_TOKEN_EXPIRATION: i64 = 86_400;

/// Settings of the policy (`settings:` of its entry in the server config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Who may carry which cloud identity; the first binding matching a
    /// ServiceAccount's namespace and name is its binding.
    pub bindings: Vec<Binding>,
    /// ServiceAccounts for pods that name none (or `default`), by namespace;
    /// the first match applies.
    pub pod_service_accounts: Vec<PodServiceAccount>,
    /// What to do with identity annotations on a ServiceAccount no binding matches.
    pub unbound_identities: Unbound,
    /// Token projection for clusters without the cloud's own webhook.
    pub token_projection: TokenProjection,
}

/// A grant: ServiceAccount `service_account` in the matching namespaces may
/// carry these identities, and only these.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Binding {
    /// Namespace names or globs (`*` matches any run of characters).
    pub namespaces: Vec<String>,
    /// ServiceAccount name.
    pub service_account: String,
    /// AWS IRSA role.
    #[serde(default)]
    pub aws: Option<AwsIdentity>,
    /// GKE Workload Identity service account.
    #[serde(default)]
    pub gcp: Option<GcpIdentity>,
    /// Azure Workload Identity managed identity.
    #[serde(default)]
    pub azure: Option<AzureIdentity>,
}

/// An AWS IAM role and how its token is requested.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsIdentity {
    /// `arn:aws...:iam::<account>:role/<name>`.
    pub role_arn: String,
    /// Token audience (`eks.amazonaws.com/audience`; default `sts.amazonaws.com`).
    #[serde(default)]
    pub audience: Option<String>,
    /// Regional STS endpoints (`eks.amazonaws.com/sts-regional-endpoints`).
    #[serde(default)]
    pub sts_regional_endpoints: Option<bool>,
    /// Token lifetime in seconds, 600..=86400 (`eks.amazonaws.com/token-expiration`).
    #[serde(default)]
    pub token_expiration: Option<i64>,
}

/// A Google service account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcpIdentity {
    /// `NAME@PROJECT.iam.gserviceaccount.com`.
    pub service_account: String,
}

/// An Azure managed identity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureIdentity {
    /// Client ID (a UUID).
    pub client_id: String,
    /// Tenant ID (a UUID), when not the cluster's default.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// The ServiceAccount of pods that name none, in matching namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodServiceAccount {
    /// Namespace names or globs.
    pub namespaces: Vec<String>,
    /// The ServiceAccount pods there must run as.
    pub service_account: String,
    /// Assign it, or deny pods that do not name it.
    #[serde(default)]
    pub action: PodAction,
}

/// What happens to a pod on `default` in a namespace of [`PodServiceAccount`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodAction {
    /// Set `spec.serviceAccountName`.
    #[default]
    Assign,
    /// Deny, naming the ServiceAccount to use.
    Deny,
}

/// What happens to identity annotations on an unbound ServiceAccount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unbound {
    /// Denied.
    #[default]
    Deny,
    /// Admitted with a warning (identities granted to another binding, and
    /// malformed ones, are denied all the same).
    Warn,
}

/// Token projection, per cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenProjection {
    /// What AWS's pod-identity webhook does.
    pub aws: AwsProjection,
    /// What Azure Workload Identity's webhook does.
    pub azure: AzureProjection,
}

/// AWS token projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsProjection {
    /// On for pods whose ServiceAccount is AWS-bound.
    pub enabled: bool,
    /// `AWS_REGION` and `AWS_DEFAULT_REGION`, when set.
    pub region: Option<String>,
}

/// Azure token projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureProjection {
    /// On for pods whose ServiceAccount is Azure-bound.
    pub enabled: bool,
    /// `AZURE_AUTHORITY_HOST` (default [`DEFAULT_AZURE_AUTHORITY_HOST`]).
    pub authority_host: Option<String>,
}

impl AzureProjection {
    /// The authority host pods are given.
    pub fn authority_host(&self) -> &str {
        self.authority_host.as_deref().unwrap_or(DEFAULT_AZURE_AUTHORITY_HOST)
    }
}

impl Binding {
    /// The identity this binding grants on `cloud`.
    pub fn identity(&self, cloud: Cloud) -> Option<&str> {
        match cloud {
            Cloud::Aws => self.aws.as_ref().map(|a| a.role_arn.as_str()),
            Cloud::Gcp => self.gcp.as_ref().map(|g| g.service_account.as_str()),
            Cloud::Azure => self.azure.as_ref().map(|a| a.client_id.as_str()),
        }
    }

    /// Whether it binds ServiceAccount `name` in `namespace`.
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.service_account == name && matches_any(&self.namespaces, namespace)
    }

    /// `ServiceAccount "clipper-backend" in namespace clipper-production`, for messages.
    pub fn describe(&self) -> String {
        let noun = if self.namespaces.len() == 1 { "namespace" } else { "namespaces" };
        format!("ServiceAccount {:?} in {noun} {}", self.service_account, self.namespaces.join(", "))
    }
}

impl Settings {
    /// The binding of ServiceAccount `name` in `namespace`, with its index.
    pub fn binding_for(&self, namespace: &str, name: &str) -> Option<(usize, &Binding)> {
        self.bindings.iter().enumerate().find(|(_, b)| b.matches(namespace, name))
    }

    /// The binding that grants `value` on `cloud`, with its index.
    pub fn owner_of(&self, cloud: Cloud, value: &str) -> Option<(usize, &Binding)> {
        self.bindings.iter().enumerate().find(|(_, b)| b.identity(cloud).is_some_and(|id| cloud.same(id, value)))
    }

    /// The pod ServiceAccount rule of `namespace`, with its index.
    pub fn pod_service_account_for(&self, namespace: &str) -> Option<(usize, &PodServiceAccount)> {
        self.pod_service_accounts.iter().enumerate().find(|(_, p)| matches_any(&p.namespaces, namespace))
    }
}

impl portcullis_sdk::Settings for Settings {
    fn validate(&self) -> Result<(), String> {
        for (i, b) in self.bindings.iter().enumerate() {
            let at = format!("bindings[{i}]");
            check_namespaces(&at, &b.namespaces)?;
            check_name(&format!("{at}.serviceAccount"), &b.service_account)?;
            if b.aws.is_none() && b.gcp.is_none() && b.azure.is_none() {
                return Err(format!("{at}: grants no identity; give at least one of aws, gcp, azure"));
            }
            for cloud in Cloud::ALL {
                if let Some(id) = b.identity(cloud).filter(|id| !cloud.is_valid(id)) {
                    return Err(format!(
                        "{at}.{}: {id:?} is not a valid {cloud}: expected {}",
                        cloud.settings_key(),
                        cloud.format()
                    ));
                }
            }
            if let Some(aws) = &b.aws {
                if aws.audience.as_deref().is_some_and(str::is_empty) {
                    return Err(format!("{at}.aws.audience: must not be empty (omit it for {DEFAULT_AWS_AUDIENCE})"));
                }
                if let Some(e) =
                    aws.token_expiration.filter(|e| !(MIN_TOKEN_EXPIRATION..=MAX_TOKEN_EXPIRATION).contains(e))
                {
                    return Err(format!(
                        "{at}.aws.tokenExpiration: must be {MIN_TOKEN_EXPIRATION}..={MAX_TOKEN_EXPIRATION} seconds, got {e}"
                    ));
                }
            }
            if let Some(tenant) =
                b.azure.as_ref().and_then(|a| a.tenant_id.as_deref()).filter(|t| !identity::is_uuid(t))
            {
                return Err(format!(
                    "{at}.azure.tenantId: {tenant:?} is not a valid Azure tenant ID: expected {}",
                    Cloud::Azure.format()
                ));
            }
            for (j, earlier) in self.bindings[..i].iter().enumerate() {
                for cloud in Cloud::ALL {
                    if let (Some(id), Some(other)) = (b.identity(cloud), earlier.identity(cloud))
                        && cloud.same(id, other)
                    {
                        return Err(format!(
                            "{at}.{}: {id:?} is already granted by bindings[{j}]; an identity has one binding \
                             (list several namespaces in one binding instead)",
                            cloud.settings_key()
                        ));
                    }
                }
                if earlier.service_account == b.service_account
                    && b.namespaces.iter().all(|n| earlier.namespaces.contains(n))
                {
                    return Err(format!(
                        "{at}: can never apply, because bindings[{j}] binds the same ServiceAccount in the same \
                         namespaces first (put every cloud of a ServiceAccount in one binding)"
                    ));
                }
            }
        }
        for (i, p) in self.pod_service_accounts.iter().enumerate() {
            let at = format!("podServiceAccounts[{i}]");
            check_namespaces(&at, &p.namespaces)?;
            check_name(&format!("{at}.serviceAccount"), &p.service_account)?;
            if p.service_account == "default" {
                return Err(format!(
                    "{at}.serviceAccount: \"default\" is what this rule replaces; name another ServiceAccount"
                ));
            }
        }
        if let Some(region) = &self.token_projection.aws.region
            && (region.is_empty() || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return Err(format!("tokenProjection.aws.region: {region:?} is not an AWS region such as us-east-1"));
        }
        if let Some(host) = &self.token_projection.azure.authority_host
            && !(host.starts_with("https://") && host.len() > "https://".len())
        {
            return Err(format!("tokenProjection.azure.authorityHost: {host:?} is not an https:// URL"));
        }
        Ok(())
    }
}

fn check_namespaces(at: &str, namespaces: &[String]) -> Result<(), String> {
    if namespaces.is_empty() {
        return Err(format!("{at}.namespaces: lists no namespace"));
    }
    for (k, glob) in namespaces.iter().enumerate() {
        let valid = !glob.is_empty()
            && glob.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*');
        if !valid {
            return Err(format!(
                "{at}.namespaces[{k}]: {glob:?} is not a namespace name or glob (lowercase letters, digits, '-' and '*')"
            ));
        }
    }
    Ok(())
}

/// A ServiceAccount name: a DNS subdomain.
fn check_name(at: &str, name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{at}: {name:?} is not a ServiceAccount name (a DNS subdomain)"));
    }
    Ok(())
}

fn matches_any(globs: &[String], namespace: &str) -> bool {
    globs.iter().any(|g| portcullis_sdk::glob_matches(g, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and validates settings JSON as the host's load does.
    fn parse(json: &str) -> Result<Settings, String> {
        portcullis_sdk::parse_settings(json.as_bytes())
    }

    const FULL: &str = r#"{
        "bindings": [{
            "namespaces": ["clipper-production"], "serviceAccount": "clipper-backend",
            "aws": {"roleArn": "arn:aws:iam::123456789012:role/clipper-backend-production", "audience": "sts.amazonaws.com",
                    "stsRegionalEndpoints": true, "tokenExpiration": 86400},
            "gcp": {"serviceAccount": "clipper-backend@clipper-prod.iam.gserviceaccount.com"},
            "azure": {"clientId": "5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "tenantId": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}
        }],
        "podServiceAccounts": [{"namespaces": ["clipper-*"], "serviceAccount": "clipper-backend", "action": "assign"}],
        "unboundIdentities": "deny",
        "tokenProjection": {"aws": {"enabled": false, "region": "us-east-1"},
                            "azure": {"enabled": false, "authorityHost": "https://login.microsoftonline.com/"}}
    }"#;

    #[test]
    fn the_issue_example_parses() -> Result<(), String> {
        let s = parse(FULL)?;
        assert_eq!(s.bindings[0].identity(Cloud::Gcp), Some("clipper-backend@clipper-prod.iam.gserviceaccount.com"));
        assert_eq!(s.pod_service_accounts[0].action, PodAction::Assign);
        assert!(s.binding_for("clipper-production", "clipper-backend").is_some());
        assert!(s.binding_for("clipper-staging", "clipper-backend").is_none());
        assert_eq!(parse("{}")?, Settings::default());
        Ok(())
    }

    fn error(json: &str) -> String {
        parse(json).err().unwrap_or_else(|| format!("unexpectedly valid: {json}"))
    }

    fn binding(fields: &str) -> String {
        format!(r#"{{"bindings": [{{"namespaces": ["a"], "serviceAccount": "s", {fields}}}]}}"#)
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let cases = [
            (binding(r#""aws": {"roleArn": "arn:aws:iam::1:role/x"}"#), "bindings[0].aws.roleArn: \"arn:aws:iam::1:role/x\" is not a valid AWS IAM role"),
            (binding(r#""gcp": {"serviceAccount": "backend@example.com"}"#), "bindings[0].gcp.serviceAccount"),
            (binding(r#""azure": {"clientId": "not-a-uuid"}"#), "bindings[0].azure.clientId"),
            (binding(r#""azure": {"clientId": "5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "tenantId": "x"}"#), "bindings[0].azure.tenantId"),
            (binding(r#""aws": {"roleArn": "arn:aws:iam::123456789012:role/x", "tokenExpiration": 599}"#), "bindings[0].aws.tokenExpiration: must be 600..=86400"),
            (binding(r#""aws": {"roleArn": "arn:aws:iam::123456789012:role/x", "tokenExpiration": 86401}"#), "tokenExpiration"),
            (binding(r#""aws": {"roleArn": "arn:aws:iam::123456789012:role/x", "audience": ""}"#), "bindings[0].aws.audience"),
            (binding(r#""aws": {"rolearn": "arn:aws:iam::123456789012:role/x"}"#), "bindings[0].aws.rolearn: unknown field `rolearn`"),
            (binding(r#""gcp": null"#), "bindings[0]: grants no identity"),
            (r#"{"bindings": [{"namespaces": [], "serviceAccount": "s", "gcp": {"serviceAccount": "abcdef@p.iam.gserviceaccount.com"}}]}"#.into(), "bindings[0].namespaces: lists no namespace"),
            (r#"{"bindings": [{"namespaces": [""], "serviceAccount": "s", "gcp": {"serviceAccount": "abcdef@p.iam.gserviceaccount.com"}}]}"#.into(), "bindings[0].namespaces[0]"),
            (r#"{"bindings": [{"namespaces": ["a"], "serviceAccount": "S_1", "gcp": {"serviceAccount": "abcdef@p.iam.gserviceaccount.com"}}]}"#.into(), "bindings[0].serviceAccount"),
            (r#"{"bindings": [{"namespaces": ["a"], "gcp": {"serviceAccount": "abcdef@p.iam.gserviceaccount.com"}}]}"#.into(), "missing field `serviceAccount`"),
            (r#"{"podServiceAccounts": [{"namespaces": ["a"], "serviceAccount": "s", "action": "assing"}]}"#.into(), "podServiceAccounts[0].action: unknown variant `assing`"),
            (r#"{"podServiceAccounts": [{"namespaces": ["a"], "serviceAccount": "default"}]}"#.into(), "podServiceAccounts[0].serviceAccount"),
            (r#"{"unboundIdentities": "allow"}"#.into(), "unboundIdentities: unknown variant `allow`"),
            (r#"{"tokenProjection": {"aws": {"enabled": true, "region": "US East"}}}"#.into(), "tokenProjection.aws.region"),
            (r#"{"tokenProjection": {"azure": {"authorityHost": "http://login"}}}"#.into(), "tokenProjection.azure.authorityHost"),
            (r#"{"tokenProjection": {"gcp": {}}}"#.into(), "tokenProjection.gcp: unknown field `gcp`"),
            (r#"{"binding": []}"#.into(), "unknown field `binding`"),
        ];
        for (json, fragment) in cases {
            let e = error(&json);
            assert!(e.contains(fragment), "{json}\n  gave {e:?}\n  expected it to contain {fragment:?}");
        }
    }

    #[test]
    fn an_identity_has_one_binding() {
        let e = error(
            r#"{"bindings": [
                {"namespaces": ["a"], "serviceAccount": "x", "aws": {"roleArn": "arn:aws:iam::123456789012:role/r"}},
                {"namespaces": ["b"], "serviceAccount": "y", "aws": {"roleArn": "arn:aws:iam::123456789012:role/R"}}
            ]}"#,
        );
        assert!(e.contains("bindings[1].aws.roleArn") && e.contains("already granted by bindings[0]"), "{e}");
    }

    #[test]
    fn a_shadowed_binding_is_refused() {
        let e = error(
            r#"{"bindings": [
                {"namespaces": ["a", "b"], "serviceAccount": "x", "aws": {"roleArn": "arn:aws:iam::123456789012:role/r"}},
                {"namespaces": ["a"], "serviceAccount": "x", "gcp": {"serviceAccount": "abcdef@p.iam.gserviceaccount.com"}}
            ]}"#,
        );
        assert!(e.contains("bindings[1]: can never apply"), "{e}");
    }
}
