//! ServiceAccount CREATE and UPDATE: a bound ServiceAccount gets exactly
//! the identities its binding grants; an unbound one gets none, and no
//! ServiceAccount may claim an identity granted to another.

use portcullis_sdk::Verdict;
use portcullis_sdk::mutation::Mutation;

use crate::identity::{self, Cloud};
use crate::settings::{Binding, Settings, Unbound};
use crate::{Object, annotation};

/// Decides on a ServiceAccount.
pub fn review(sa: Object, settings: &Settings) -> Result<Verdict, String> {
    let binding = Some(sa.name.as_str()).filter(|n| !n.is_empty()).and_then(|n| settings.binding_for(&sa.namespace, n));
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut mutation = Mutation::new(sa.value);
    for cloud in Cloud::ALL {
        let asked = annotation(mutation.object(), cloud.annotation())?;
        match (binding, asked) {
            (Some((i, b)), asked) => {
                if let Some(problem) = check_bound(cloud, i, b, asked, settings) {
                    problems.push(problem);
                } else if let Some(granted) = b.identity(cloud).filter(|_| asked.is_none()) {
                    mutation.set_annotation(cloud.annotation(), granted).map_err(|e| e.to_string())?;
                }
            }
            (None, Some(asked)) => match check_unbound(cloud, asked, settings) {
                Some(problem) => problems.push(problem),
                None if settings.unbound_identities == Unbound::Warn => warnings.push(format!(
                    "annotation {} {asked:?}: no binding grants ServiceAccount {} a cloud identity; \
                     it is admitted only because unboundIdentities is warn",
                    cloud.annotation(),
                    sa.display
                )),
                None => problems.push(format!(
                    "annotation {} {asked:?}: no binding grants ServiceAccount {} a cloud identity",
                    cloud.annotation(),
                    sa.display
                )),
            },
            (None, None) => {}
        }
    }
    if let Some((i, b)) = binding {
        for (key, wanted) in details(b) {
            match annotation(mutation.object(), key)? {
                None => {
                    mutation.set_annotation(key, &wanted).map_err(|e| e.to_string())?;
                }
                Some(value) if value.eq_ignore_ascii_case(&wanted) => {}
                Some(value) => problems.push(format!(
                    "annotation {key} is {value:?}, but bindings[{i}] ({}) sets {wanted:?}",
                    b.describe()
                )),
            }
        }
    }
    if !problems.is_empty() {
        let summary = format!("ServiceAccount {} carries cloud identities it is not granted", sa.display);
        return Ok(Verdict::deny_all(&summary, &problems).with_warnings(warnings));
    }
    Ok(mutation.into_verdict().with_warnings(warnings))
}

/// The problem with the identity annotation of `cloud` on a ServiceAccount
/// bound by `bindings[i]`, if any.
fn check_bound(cloud: Cloud, i: usize, b: &Binding, asked: Option<&str>, settings: &Settings) -> Option<String> {
    let asked = asked?;
    let annotation = cloud.annotation();
    match b.identity(cloud) {
        Some(granted) if cloud.same(asked, granted) => None,
        Some(granted) => Some(format!(
            "annotation {annotation} is {asked:?}, but bindings[{i}] ({}) allows only {granted:?}{}",
            b.describe(),
            why_not(cloud, asked, settings)
        )),
        None => Some(format!(
            "annotation {annotation} is {asked:?}, but bindings[{i}] ({}) grants no {cloud}{}",
            b.describe(),
            why_not(cloud, asked, settings)
        )),
    }
}

/// The problem with the identity annotation of `cloud` on an unbound
/// ServiceAccount that no setting can waive, if any.
fn check_unbound(cloud: Cloud, asked: &str, settings: &Settings) -> Option<String> {
    let reason = why_not(cloud, asked, settings);
    (!reason.is_empty()).then(|| format!("annotation {} is {asked:?}{reason}", cloud.annotation()))
}

/// What else is wrong with `asked`: a malformed value, or another binding's
/// identity. Empty when neither.
fn why_not(cloud: Cloud, asked: &str, settings: &Settings) -> String {
    if !cloud.is_valid(asked) {
        return format!(", which is not a valid {cloud}: expected {}", cloud.format());
    }
    match settings.owner_of(cloud, asked) {
        Some((j, owner)) => format!(", which is granted only to {} (bindings[{j}])", owner.describe()),
        None => String::new(),
    }
}

/// The secondary annotations a binding sets, with their values.
fn details(b: &Binding) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(aws) = &b.aws {
        if let Some(audience) = &aws.audience {
            out.push((identity::AUDIENCE, audience.clone()));
        }
        if let Some(regional) = aws.sts_regional_endpoints {
            out.push((identity::STS_REGIONAL_ENDPOINTS, regional.to_string()));
        }
        if let Some(expiration) = aws.token_expiration {
            out.push((identity::TOKEN_EXPIRATION, expiration.to_string()));
        }
    }
    if let Some(tenant) = b.azure.as_ref().and_then(|a| a.tenant_id.as_ref()) {
        out.push((identity::AZURE_TENANT_ID, tenant.clone()));
    }
    out
}
