//! The cloud identities a ServiceAccount can carry, their annotations and
//! the formats each cloud accepts.
//!
//! Identities compare ignoring ASCII case: IAM role names are unique
//! regardless of case, GCP service-account emails are lowercase, and UUIDs
//! are case-insensitive. Comparing them literally would let a team claim
//! another team's role by writing it in capitals.

use std::fmt;

/// `eks.amazonaws.com/role-arn`: the IAM role of AWS IRSA.
pub const ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
/// `eks.amazonaws.com/audience`: audience of the projected token.
pub const AUDIENCE: &str = "eks.amazonaws.com/audience";
/// `eks.amazonaws.com/sts-regional-endpoints`: `"true"` for regional STS.
pub const STS_REGIONAL_ENDPOINTS: &str = "eks.amazonaws.com/sts-regional-endpoints";
/// `eks.amazonaws.com/token-expiration`: token lifetime in seconds (ServiceAccount or Pod).
pub const TOKEN_EXPIRATION: &str = "eks.amazonaws.com/token-expiration";
/// `eks.amazonaws.com/skip-containers`: Pod annotation, comma-separated container names.
pub const AWS_SKIP_CONTAINERS: &str = "eks.amazonaws.com/skip-containers";
/// `iam.gke.io/gcp-service-account`: the Google service account of GKE Workload Identity.
pub const GCP_SERVICE_ACCOUNT: &str = "iam.gke.io/gcp-service-account";
/// `azure.workload.identity/client-id`: the managed identity of Azure Workload Identity.
pub const AZURE_CLIENT_ID: &str = "azure.workload.identity/client-id";
/// `azure.workload.identity/tenant-id`: its tenant.
pub const AZURE_TENANT_ID: &str = "azure.workload.identity/tenant-id";
/// `azure.workload.identity/use`: Pod label that opts a pod into Azure Workload Identity.
pub const AZURE_USE: &str = "azure.workload.identity/use";
/// `azure.workload.identity/skip-containers`: Pod annotation, semicolon-separated container names.
pub const AZURE_SKIP_CONTAINERS: &str = "azure.workload.identity/skip-containers";
/// `azure.workload.identity/service-account-token-expiration`: Pod annotation, seconds.
pub const AZURE_TOKEN_EXPIRATION: &str = "azure.workload.identity/service-account-token-expiration";

/// A cloud whose workload identity is granted through a ServiceAccount annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// AWS IAM roles for service accounts.
    Aws,
    /// GKE Workload Identity.
    Gcp,
    /// Azure Workload Identity.
    Azure,
}

impl Cloud {
    /// Every cloud, in the order problems are listed.
    pub const ALL: [Cloud; 3] = [Cloud::Aws, Cloud::Gcp, Cloud::Azure];

    /// The ServiceAccount annotation holding the identity.
    pub fn annotation(self) -> &'static str {
        match self {
            Cloud::Aws => ROLE_ARN,
            Cloud::Gcp => GCP_SERVICE_ACCOUNT,
            Cloud::Azure => AZURE_CLIENT_ID,
        }
    }

    /// `AWS`, `GCP` or `Azure`.
    pub fn short_name(self) -> &'static str {
        match self {
            Cloud::Aws => "AWS",
            Cloud::Gcp => "GCP",
            Cloud::Azure => "Azure",
        }
    }

    /// The settings key of a binding's identity for this cloud.
    pub fn settings_key(self) -> &'static str {
        match self {
            Cloud::Aws => "aws.roleArn",
            Cloud::Gcp => "gcp.serviceAccount",
            Cloud::Azure => "azure.clientId",
        }
    }

    /// The expected format, for messages.
    pub fn format(self) -> &'static str {
        match self {
            Cloud::Aws => "arn:aws:iam::<12-digit account>:role/<path/name> (partition aws, aws-cn, aws-us-gov, ...)",
            Cloud::Gcp => "NAME@PROJECT.iam.gserviceaccount.com (NAME: 6-30 lowercase letters, digits and '-')",
            Cloud::Azure => "a UUID such as 5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        }
    }

    /// Whether `value` has this cloud's format.
    pub fn is_valid(self, value: &str) -> bool {
        match self {
            Cloud::Aws => is_role_arn(value),
            Cloud::Gcp => is_gcp_service_account(value),
            Cloud::Azure => is_uuid(value),
        }
    }

    /// Whether two identities of this cloud are the same.
    pub fn same(self, a: &str, b: &str) -> bool {
        a.eq_ignore_ascii_case(b)
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cloud::Aws => "AWS IAM role",
            Cloud::Gcp => "GCP service account",
            Cloud::Azure => "Azure client ID",
        })
    }
}

/// `^arn:aws[a-z0-9-]*:iam::\d{12}:role/[\w+=,.@/-]+$`.
pub fn is_role_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:aws") else { return false };
    let Some((partition_suffix, rest)) = rest.split_once(':') else { return false };
    if !partition_suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return false;
    }
    let Some(rest) = rest.strip_prefix("iam::") else { return false };
    let Some((account, rest)) = rest.split_once(':') else { return false };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some(name) = rest.strip_prefix("role/") else { return false };
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+=,.@/-".contains(&b))
}

/// `NAME@PROJECT.iam.gserviceaccount.com`: NAME is a GCP account id (6-30
/// characters: lowercase letters, digits and `-`, starting with a letter,
/// not ending with `-`); PROJECT is a project id (lowercase letters, digits
/// and `-`, starting with a letter), or the dotted form of a domain-scoped one.
pub fn is_gcp_service_account(s: &str) -> bool {
    let Some((name, domain)) = s.split_once('@') else { return false };
    let Some(project) = domain.strip_suffix(".iam.gserviceaccount.com") else { return false };
    let is_id = |id: &str, min: usize, max: usize| {
        (min..=max).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && !id.ends_with('-')
    };
    is_id(name, 6, 30) && project.split('.').all(|label| is_id(label, 1, 63))
}

/// A UUID in its 8-4-4-4-12 hexadecimal form.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns() {
        for good in [
            "arn:aws:iam::123456789012:role/clipper-backend-production",
            "arn:aws-cn:iam::123456789012:role/path/to/Role_1+=,.@-",
            "arn:aws-us-gov:iam::000000000000:role/r",
        ] {
            assert!(is_role_arn(good), "{good}");
        }
        for bad in [
            "",
            "arn:aws:iam::12345678901:role/short-account",
            "arn:aws:iam::1234567890123:role/long-account",
            "arn:aws:iam::123456789012:user/not-a-role",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam:us-east-1:123456789012:role/regional",
            "arn:aws:sts::123456789012:role/sts",
            "arn:AWS:iam::123456789012:role/upper-partition",
            "arn:aws:iam::123456789012:role/space here",
            " arn:aws:iam::123456789012:role/leading-space",
            "arn:gcp:iam::123456789012:role/x",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn gcp_service_accounts() {
        for good in [
            "clipper-backend@clipper-prod.iam.gserviceaccount.com",
            "abcdef@p.iam.gserviceaccount.com",
            "backend1@my-project.example.com.iam.gserviceaccount.com",
        ] {
            assert!(is_gcp_service_account(good), "{good}");
        }
        for bad in [
            "short@clipper-prod.iam.gserviceaccount.com",
            "Clipper-Backend@clipper-prod.iam.gserviceaccount.com",
            "clipper-backend@clipper-prod.gserviceaccount.com",
            "clipper-backend-@clipper-prod.iam.gserviceaccount.com",
            "1clipper@clipper-prod.iam.gserviceaccount.com",
            "clipper-backend@.iam.gserviceaccount.com",
            "123456789-compute@developer.gserviceaccount.com",
            "clipper-backend",
        ] {
            assert!(!is_gcp_service_account(bad), "{bad}");
        }
    }

    #[test]
    fn uuids() {
        assert!(is_uuid("5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert!(is_uuid("5F0E3B8A-1C2D-4E5F-8A9B-0C1D2E3F4A5B"));
        for bad in [
            "",
            "5f0e3b8a1c2d4e5f8a9b0c1d2e3f4a5b",
            "5f0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5",
            "zf0e3b8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn identities_compare_ignoring_case() {
        assert!(Cloud::Aws.same("arn:aws:iam::123456789012:role/A", "arn:aws:iam::123456789012:role/a"));
        assert!(!Cloud::Aws.same("arn:aws:iam::123456789012:role/a", "arn:aws:iam::123456789012:role/b"));
    }
}
