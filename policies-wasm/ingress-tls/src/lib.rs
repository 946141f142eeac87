//! Portcullis policy `ingress-tls`: deny `networking.k8s.io/v1` Ingresses that
//! are not fully served over TLS.
//!
//! On CREATE and UPDATE every named rule host must be covered by a TLS host
//! (see [`hosts`]); what only a controller's default certificate could serve
//! (host-less rules, a default backend, alone or next to rules, TLS entries
//! without hosts or `secretName`) is denied unless the
//! `allowDefaultCertificate` setting accepts it; cert-manager's ingress-shim
//! annotations (an issuer, or `kubernetes.io/tls-acme: "true"`) need TLS hosts
//! and may be limited to allowed issuers ([`cert_manager`]); and the
//! annotations with which ingress-nginx or GCE would still serve plain HTTP are
//! denied ([`controller`]). One denial lists every problem, each naming the host
//! or the entry, so that one fix-up round is enough. TLS hosts that no rule uses
//! only earn a warning. The README next to `Cargo.toml` is the user's reference.
//!
//! [`validate`] is the whole decision, a pure function unit-tested natively;
//! `portcullis_sdk::policy!` turns it into the wasm exports.

pub mod cert_manager;
pub mod controller;
pub mod hosts;
pub mod settings;

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressRule, IngressTLS};
use portcullis_sdk::{Operation, Request, Verdict};

use crate::hosts::Host;
pub use crate::settings::Settings;

/// Decides on one admission request.
///
/// Requests other than CREATE or UPDATE of a `networking.k8s.io/v1` Ingress,
/// subresource requests and updates of an Ingress being deleted are allowed
/// untouched. An object that is missing or does not decode as an Ingress is an
/// error (the host then applies the policy's failure mode), never a panic.
pub fn validate(req: &Request, settings: &Settings) -> Result<Verdict, String> {
    let is_ingress = req.kind.is("networking.k8s.io", "v1", "Ingress");
    let is_write = matches!(req.operation, Operation::Create | Operation::Update);
    let is_subresource = req.sub_resource.as_deref().is_some_and(|s| !s.is_empty());
    if !is_ingress || !is_write || is_subresource {
        return Ok(Verdict::allow());
    }
    let ingress: Ingress = req
        .object::<IngressView>()
        .map_err(|e| format!("cannot decode the object as a networking.k8s.io/v1 Ingress: {e}"))?
        .ok_or_else(|| "the request has no object to check".to_string())?
        .into_ingress()
        .map_err(|e| format!("cannot decode the object as a networking.k8s.io/v1 Ingress: {e}"))?;
    if ingress.metadata.deletion_timestamp.is_some() {
        // Finalizers are being removed: denying would block the deletion.
        return Ok(Verdict::allow());
    }
    let findings = review(&ingress, settings)?;
    Ok(findings.into_verdict(&display_name(req, &ingress)))
}

portcullis_sdk::policy!(settings = Settings, validate = validate);

/// The parts of an Ingress this policy reads, decoded into the k8s-openapi
/// types. Decoding the whole object would also build every other metadata
/// field, managed fields included: about half of the policy's time on a
/// realistic Ingress (see docs/benchmarks.md).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IngressView {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: MetadataView,
    #[serde(default)]
    spec: Option<k8s_openapi::api::networking::v1::IngressSpec>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataView {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    deletion_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl IngressView {
    /// The Ingress, if the object says it is one (or does not say).
    fn into_ingress(self) -> Result<Ingress, String> {
        if let Some(api_version) = self.api_version.as_deref().filter(|v| *v != "networking.k8s.io/v1") {
            return Err(format!("apiVersion is {api_version:?}"));
        }
        if let Some(kind) = self.kind.as_deref().filter(|k| *k != "Ingress") {
            return Err(format!("kind is {kind:?}"));
        }
        let m = self.metadata;
        Ok(Ingress {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: m.name,
                generate_name: m.generate_name,
                namespace: m.namespace,
                annotations: m.annotations,
                deletion_timestamp: m.deletion_timestamp,
                ..Default::default()
            },
            spec: self.spec,
            status: None,
        })
    }
}

/// What the review of one Ingress found.
#[derive(Debug, Default)]
struct Findings {
    /// Reasons to deny, each naming its host, entry or annotation.
    problems: Vec<String>,
    /// Advice that does not deny.
    warnings: Vec<String>,
}

impl Findings {
    fn into_verdict(self, name: &str) -> Verdict {
        Verdict::deny_all(&format!("Ingress {name} is not fully served over TLS"), &self.problems)
            .with_warnings(self.warnings)
    }
}

/// A valid TLS host and where it is listed.
#[derive(Debug)]
struct TlsHost<'a> {
    host: Host,
    raw: &'a str,
    entry: usize,
    index: usize,
}

impl TlsHost<'_> {
    fn path(&self) -> String {
        format!("spec.tls[{}].hosts[{}]", self.entry, self.index)
    }
}

/// Checks the whole Ingress; an error only for settings that were not validated.
fn review(ingress: &Ingress, settings: &Settings) -> Result<Findings, String> {
    let empty = BTreeMap::new();
    let annotations = ingress.metadata.annotations.as_ref().unwrap_or(&empty);
    let spec = ingress.spec.as_ref();
    let rules = spec.and_then(|s| s.rules.as_deref()).unwrap_or_default();
    let tls = spec.and_then(|s| s.tls.as_deref()).unwrap_or_default();
    let has_default_backend = spec.is_some_and(|s| s.default_backend.is_some());

    let mut problems = Vec::new();
    let mut tls_problems = Vec::new();
    let tls_hosts = check_tls(tls, annotations, settings, &mut tls_problems);
    let rule_hosts = check_rules(rules, &tls_hosts, settings, &mut problems);
    if has_default_backend && !settings.allow_default_certificate {
        problems.push(default_backend_problem(rules.is_empty()));
    }
    problems.append(&mut tls_problems);
    problems.extend(cert_manager::check(annotations, settings));
    problems.extend(controller::check(ingress, settings)?);

    let warnings = tls_hosts
        .iter()
        .filter(|tls| !rule_hosts.iter().any(|rule| tls.host.overlaps(rule)))
        .map(|tls| format!("{} {:?} matches no rule host", tls.path(), tls.raw))
        .collect();
    Ok(Findings { problems, warnings })
}

/// Checks the TLS entries and returns their valid hosts.
fn check_tls<'a>(
    tls: &'a [IngressTLS],
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
    problems: &mut Vec<String>,
) -> Vec<TlsHost<'a>> {
    let cert_manager = cert_manager::annotation(annotations);
    let mut valid = Vec::new();
    for (entry, tls) in tls.iter().enumerate() {
        let hosts = tls.hosts.as_deref().unwrap_or_default();
        if hosts.is_empty() {
            if let Some(key) = cert_manager {
                problems.push(format!(
                    "spec.tls[{entry}] lists no hosts, which cert-manager (annotation {key}) needs to issue a certificate"
                ));
            } else if !settings.allow_default_certificate {
                problems.push(format!(
                    "spec.tls[{entry}] lists no hosts, so it covers none (only a default certificate could serve it)"
                ));
            }
        }
        if tls.secret_name.as_deref().is_none_or(str::is_empty) {
            if let Some(key) = cert_manager {
                problems.push(format!(
                    "spec.tls[{entry}] has no secretName, which cert-manager (annotation {key}) needs to store the certificate"
                ));
            } else if !settings.allow_default_certificate {
                problems
                    .push(format!("spec.tls[{entry}] has no secretName (only a default certificate could serve it)"));
            }
        }
        for (index, raw) in hosts.iter().enumerate() {
            if raw.is_empty() {
                problems.push(format!("spec.tls[{entry}].hosts[{index}] is empty"));
                continue;
            }
            match Host::parse(raw) {
                Ok(host) => valid.push(TlsHost { host, raw, entry, index }),
                Err(e) => problems.push(format!("spec.tls[{entry}].hosts[{index}] {raw:?} is not a valid host: {e}")),
            }
        }
    }
    valid
}

/// Checks that every rule host is valid and covered; returns the valid ones.
fn check_rules(
    rules: &[IngressRule],
    tls_hosts: &[TlsHost<'_>],
    settings: &Settings,
    problems: &mut Vec<String>,
) -> Vec<Host> {
    let mut valid = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let Some(raw) = rule.host.as_deref().filter(|h| !h.is_empty()) else {
            if !settings.allow_default_certificate {
                problems.push(format!(
                    "spec.rules[{i}] has no host, so it serves every host name and no TLS host can cover it"
                ));
            }
            continue;
        };
        let host = match Host::parse(raw) {
            Ok(host) => host,
            Err(e) => {
                problems.push(format!("spec.rules[{i}].host {raw:?} is not a valid host: {e}"));
                continue;
            }
        };
        if !tls_hosts.iter().any(|tls| tls.host.covers(&host)) {
            problems.push(uncovered(i, raw, &host, tls_hosts));
        }
        valid.push(host);
    }
    valid
}

/// The problem with `spec.defaultBackend`: whatever host name reaches it, only
/// the controller's default certificate can serve it. With rules, that is every
/// host name that no rule matches.
fn default_backend_problem(no_rules: bool) -> String {
    if no_rules {
        "spec.defaultBackend: the Ingress has no rules, so it serves every host name and no TLS host can cover it"
            .to_string()
    } else {
        "spec.defaultBackend: next to spec.rules it serves every host name that no rule matches, which only the \
         controller's default certificate can serve; remove spec.defaultBackend and give each host it should serve \
         its own rule, with the host listed in spec.tls"
            .to_string()
    }
}

/// The problem for rule host `raw` that no TLS host covers, with a hint.
fn uncovered(i: usize, raw: &str, host: &Host, tls_hosts: &[TlsHost<'_>]) -> String {
    let subject = format!("spec.rules[{i}].host {raw:?} is not covered by any host in spec.tls");
    if let Host::Wildcard(_) = host {
        return format!("{subject}; a wildcard rule host needs the same wildcard \"{host}\" there");
    }
    if let Some(wildcard) = tls_hosts.iter().find(|tls| tls.host.too_shallow_for(host)) {
        return format!("{subject}; {:?} ({}) covers exactly one label, not \"{host}\"", wildcard.raw, wildcard.path());
    }
    match host.covering_wildcard() {
        Some(wildcard) => format!("{subject}; add \"{host}\" or \"{wildcard}\" there"),
        None => format!("{subject}; add \"{host}\" there"),
    }
}

/// `"namespace/name"` of the Ingress for messages (`name*` for a
/// `generateName` prefix).
fn display_name(req: &Request, ingress: &Ingress) -> String {
    let meta = &ingress.metadata;
    let name = [meta.name.as_deref(), req.name.as_deref()]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| meta.generate_name.as_deref().map(|prefix| format!("{prefix}*")))
        .unwrap_or_default();
    match meta.namespace.as_deref().or(req.namespace.as_deref()) {
        Some(ns) if !ns.is_empty() => format!("{:?}", format!("{ns}/{name}")),
        _ => format!("{name:?}"),
    }
}

#[cfg(test)]
mod tests;
