//! Unit tests of the decision: one table of Ingresses with their expected
//! verdicts, the requests the policy must leave alone, the error paths, the ABI
//! decoding path, and the fixtures of `test_data/cases.yaml`.

use std::path::{Path, PathBuf};

use portcullis_sdk::testing::{request_for, request_from_file};
use portcullis_sdk::{Outcome, Verdict};
use serde_json::{Value, json};

use super::*;

const INGRESS: &str = "networking.k8s.io/v1/Ingress";

fn paths() -> Value {
    json!({"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]})
}

fn rule(host: &str) -> Value {
    json!({"host": host, "http": paths()})
}

fn hostless_rule() -> Value {
    json!({"http": paths()})
}

fn tls(hosts: &[&str], secret: &str) -> Value {
    json!({"hosts": hosts, "secretName": secret})
}

fn rules_and_tls(rule_hosts: &[&str], tls_hosts: &[&str]) -> Value {
    let rules: Vec<Value> = rule_hosts.iter().map(|h| rule(h)).collect();
    json!({"rules": rules, "tls": [tls(tls_hosts, "web-tls")]})
}

fn object(annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": spec,
    })
}

/// Runs the policy through settings parsing and validation, as the host does.
fn run(object: Value, settings: &str) -> Result<Verdict, String> {
    let request = request_for(INGRESS, "CREATE", object)?;
    match portcullis_sdk::testing::run(validate, &request, settings)? {
        Outcome::Verdict(verdict) => Ok(verdict),
        Outcome::Error { error } => Err(error),
    }
}

/// One row of the table.
struct Case {
    name: &'static str,
    annotations: Value,
    spec: Value,
    settings: &'static str,
    allowed: bool,
    /// Fragments that must all appear in the denial message.
    message: &'static [&'static str],
    /// Fragments that must each appear in some warning; none means no warnings.
    warnings: &'static [&'static str],
}

impl Case {
    fn allow(name: &'static str, spec: Value) -> Case {
        Case { name, annotations: json!({}), spec, settings: "{}", allowed: true, message: &[], warnings: &[] }
    }

    fn deny(name: &'static str, spec: Value, message: &'static [&'static str]) -> Case {
        Case { allowed: false, message, ..Case::allow(name, spec) }
    }

    fn annotated(mut self, annotations: Value) -> Case {
        self.annotations = annotations;
        self
    }

    fn settings(mut self, settings: &'static str) -> Case {
        self.settings = settings;
        self
    }

    fn warns(mut self, warnings: &'static [&'static str]) -> Case {
        self.warnings = warnings;
        self
    }

    fn check(self) -> Result<(), String> {
        let name = self.name;
        let verdict = run(object(self.annotations, self.spec), self.settings).map_err(|e| format!("{name}: {e}"))?;
        let message = verdict.message.clone().unwrap_or_default();
        if verdict.allowed != self.allowed {
            return Err(format!("{name}: expected allowed={}, got {verdict:?}", self.allowed));
        }
        if let Some(missing) = self.message.iter().find(|f| !message.contains(**f)) {
            return Err(format!("{name}: message lacks {missing:?}:\n{message}"));
        }
        if self.warnings.is_empty() && !verdict.warnings.is_empty() {
            return Err(format!("{name}: unexpected warnings {:?}", verdict.warnings));
        }
        if let Some(missing) = self.warnings.iter().find(|f| !verdict.warnings.iter().any(|w| w.contains(**f))) {
            return Err(format!("{name}: warnings {:?} lack {missing:?}", verdict.warnings));
        }
        Ok(())
    }
}

const DEFAULT_CERT: &str = r#"{"allowDefaultCertificate": true}"#;

fn cases() -> Vec<Case> {
    let api = &["api.example.com"];
    vec![
        // Host coverage.
        Case::allow("exact match", rules_and_tls(api, api)),
        Case::allow("case-insensitive match", rules_and_tls(api, &["API.Example.COM"])),
        Case::allow("several hosts across entries", json!({
            "rules": [rule("api.example.com"), rule("app.example.com")],
            "tls": [tls(&["api.example.com"], "api-tls"), tls(&["app.example.com"], "app-tls")],
        })),
        Case::deny("no tls at all", json!({"rules": [rule("api.example.com")]}), &[
            r#"spec.rules[0].host "api.example.com" is not covered by any host in spec.tls"#,
            r#"add "api.example.com" or "*.example.com""#,
        ]),
        Case::deny("tls for another host", rules_and_tls(api, &["app.example.com"]), &[r#""api.example.com" is not covered"#])
            .warns(&[r#"spec.tls[0].hosts[0] "app.example.com" matches no rule host"#]),
        Case::allow("wildcard covers one label", rules_and_tls(api, &["*.example.com"])),
        Case::deny("wildcard does not cover two labels", rules_and_tls(&["a.b.example.com"], &["*.example.com"]), &[
            r#"spec.rules[0].host "a.b.example.com" is not covered"#,
            r#""*.example.com" (spec.tls[0].hosts[0]) covers exactly one label"#,
        ])
        .warns(&["matches no rule host"]),
        Case::deny("wildcard does not cover the apex", rules_and_tls(&["example.com"], &["*.example.com"]), &[
            r#"spec.rules[0].host "example.com" is not covered"#,
        ])
        .warns(&["matches no rule host"]),
        Case::allow("wildcard rule host with the same wildcard", rules_and_tls(&["*.example.com"], &["*.Example.com"])),
        Case::deny("wildcard rule host with only exact tls hosts", rules_and_tls(&["*.example.com"], api), &[
            r#"spec.rules[0].host "*.example.com" is not covered"#,
            r#"needs the same wildcard "*.example.com""#,
        ]),
        Case::deny("wildcard rule host with a shorter wildcard", rules_and_tls(&["*.a.example.com"], &["*.example.com"]), &[
            r#""*.a.example.com" is not covered"#,
        ])
        .warns(&["matches no rule host"]),
        // Invalid hosts.
        Case::deny("bare wildcard in tls", rules_and_tls(api, &["*"]), &[
            r#"spec.tls[0].hosts[0] "*" is not a valid host: a bare "*""#,
            r#""api.example.com" is not covered"#,
        ]),
        Case::deny("bare wildcard rule host", rules_and_tls(&["*"], api), &[r#"spec.rules[0].host "*" is not a valid host"#])
            .warns(&["matches no rule host"]),
        Case::deny("wildcard in a later label", rules_and_tls(&["a.*.example.com"], api), &[
            r#"spec.rules[0].host "a.*.example.com" is not a valid host: a wildcard must be the whole first label"#,
        ])
        .warns(&["matches no rule host"]),
        Case::deny("partial wildcard label in tls", rules_and_tls(api, &["*foo.example.com", "api.example.com"]), &[
            r#"spec.tls[0].hosts[0] "*foo.example.com" is not a valid host"#,
        ]),
        Case::deny("trailing dot", rules_and_tls(api, &["api.example.com."]), &[
            r#"spec.tls[0].hosts[0] "api.example.com." is not a valid host: it must not end with a dot"#,
        ]),
        Case::deny("empty tls host", rules_and_tls(api, &["", "api.example.com"]), &["spec.tls[0].hosts[0] is empty"]),
        // What only a default certificate can serve.
        Case::deny("host-less rule", json!({
            "rules": [rule("api.example.com"), hostless_rule()],
            "tls": [tls(api, "api-tls")],
        }), &["spec.rules[1] has no host"]),
        Case::deny("empty host string is host-less", json!({"rules": [rule("")], "tls": [tls(api, "t")]}), &["spec.rules[0] has no host"])
            .warns(&["matches no rule host"]),
        Case::allow("host-less rule with default certificate", json!({
            "rules": [rule("api.example.com"), hostless_rule()],
            "tls": [tls(api, "api-tls")],
        }))
        .settings(DEFAULT_CERT),
        Case::deny("default certificate never waives named hosts", json!({
            "rules": [rule("api.example.com"), hostless_rule()],
            "tls": [{"secretName": "x"}],
        }), &[r#""api.example.com" is not covered"#])
        .settings(DEFAULT_CERT),
        Case::deny("default backend only", json!({
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
        }), &["spec.defaultBackend: the Ingress has no rules"]),
        Case::allow("default backend only with default certificate", json!({
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "tls": [{}],
        }))
        .settings(DEFAULT_CERT),
        Case::deny("default backend next to rules", json!({
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "rules": [rule("api.example.com")],
            "tls": [tls(api, "api-tls")],
        }), &[
            "(1 problem)",
            "spec.defaultBackend: next to spec.rules it serves every host name that no rule matches, which only the controller's default certificate can serve",
            "remove spec.defaultBackend and give each host it should serve its own rule, with the host listed in spec.tls",
        ]),
        Case::allow("default backend next to rules with default certificate", json!({
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "rules": [rule("api.example.com")],
            "tls": [tls(api, "api-tls")],
        }))
        .settings(DEFAULT_CERT),
        Case::deny("default backend next to a host-less rule", json!({
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "rules": [hostless_rule()],
        }), &["(2 problems)", "spec.rules[0] has no host", "spec.defaultBackend: next to spec.rules"]),
        Case::deny("default backend next to rules still needs named hosts covered", json!({
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "rules": [rule("api.example.com")],
        }), &["(1 problem)", r#""api.example.com" is not covered"#])
        .settings(DEFAULT_CERT),
        Case::allow("default backend with tls hosts warns", json!({
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "tls": [tls(api, "api-tls")],
        }))
        .settings(DEFAULT_CERT)
        .warns(&[r#"spec.tls[0].hosts[0] "api.example.com" matches no rule host"#]),
        Case::deny("tls entry without hosts", json!({
            "rules": [rule("api.example.com")],
            "tls": [tls(api, "api-tls"), {"secretName": "wildcard-tls"}],
        }), &["spec.tls[1] lists no hosts"]),
        Case::deny("tls entry with an empty host list", json!({
            "rules": [rule("api.example.com")],
            "tls": [tls(api, "api-tls"), tls(&[], "wildcard-tls")],
        }), &["spec.tls[1] lists no hosts"]),
        Case::allow("tls entry without hosts with default certificate", json!({
            "rules": [rule("api.example.com")],
            "tls": [tls(api, "api-tls"), {"secretName": "wildcard-tls"}],
        }))
        .settings(DEFAULT_CERT),
        Case::deny("tls entry without secretName", json!({"rules": [rule("api.example.com")], "tls": [{"hosts": api}]}), &[
            "spec.tls[0] has no secretName",
        ]),
        Case::deny("tls entry with an empty secretName", json!({
            "rules": [rule("api.example.com")],
            "tls": [{"hosts": api, "secretName": ""}],
        }), &["spec.tls[0] has no secretName"]),
        Case::allow("tls entry without secretName with default certificate", json!({
            "rules": [rule("api.example.com")],
            "tls": [{"hosts": api}],
        }))
        .settings(DEFAULT_CERT),
        // cert-manager.
        Case::allow("cert-manager with hosts", rules_and_tls(api, api))
            .annotated(json!({"cert-manager.io/cluster-issuer": "letsencrypt-prod"})),
        Case::deny("cert-manager without hosts", json!({"rules": [rule("api.example.com")], "tls": [{"secretName": "t"}]}), &[
            "spec.tls[0] lists no hosts, which cert-manager (annotation cert-manager.io/issuer) needs",
        ])
        .annotated(json!({"cert-manager.io/issuer": "team-ca"})),
        Case::deny("cert-manager needs hosts even with default certificate", json!({
            "rules": [rule("api.example.com")],
            "tls": [tls(api, "t"), {"secretName": "t2"}],
        }), &["spec.tls[1] lists no hosts, which cert-manager (annotation cert-manager.io/cluster-issuer) needs"])
        .annotated(json!({"cert-manager.io/cluster-issuer": "letsencrypt-prod"}))
        .settings(DEFAULT_CERT),
        Case::deny("cert-manager needs secretName even with default certificate", json!({
            "rules": [rule("api.example.com")],
            "tls": [{"hosts": api}],
        }), &["spec.tls[0] has no secretName, which cert-manager"])
        .annotated(json!({"cert-manager.io/cluster-issuer": "letsencrypt-prod"}))
        .settings(DEFAULT_CERT),
        Case::allow("allowed cluster issuer", rules_and_tls(api, api))
            .annotated(json!({"cert-manager.io/cluster-issuer": "letsencrypt-prod"}))
            .settings(r#"{"allowedClusterIssuers": ["letsencrypt-prod"]}"#),
        Case::deny("cluster issuer not allowed", rules_and_tls(api, api), &[
            r#"annotation cert-manager.io/cluster-issuer names ClusterIssuer "letsencrypt-staging", which is not allowed"#,
            r#"allowed ClusterIssuers: "letsencrypt-prod""#,
        ])
        .annotated(json!({"cert-manager.io/cluster-issuer": "letsencrypt-staging"}))
        .settings(r#"{"allowedClusterIssuers": ["letsencrypt-prod"]}"#),
        Case::deny("namespaced issuer with only cluster issuers allowed", rules_and_tls(api, api), &[
            r#"names Issuer "letsencrypt-prod", which is not allowed (allowed Issuers: none"#,
        ])
        .annotated(json!({"cert-manager.io/issuer": "letsencrypt-prod"}))
        .settings(r#"{"allowedClusterIssuers": ["letsencrypt-prod"]}"#),
        Case::allow("allowed namespaced issuer", rules_and_tls(api, api))
            .annotated(json!({"cert-manager.io/issuer": "team-ca"}))
            .settings(r#"{"allowedIssuers": ["team-ca"]}"#),
        Case::allow("tls-acme with hosts", rules_and_tls(api, api)).annotated(json!({"kubernetes.io/tls-acme": "true"})),
        Case::deny("tls-acme without hosts", json!({"rules": [rule("api.example.com")], "tls": [{"secretName": "t"}]}), &[
            "spec.tls[0] lists no hosts, which cert-manager (annotation kubernetes.io/tls-acme) needs",
        ])
        .annotated(json!({"kubernetes.io/tls-acme": "true"})),
        Case::deny("tls-acme needs hosts and secretName even with default certificate", json!({
            "rules": [rule("api.example.com")],
            "tls": [tls(api, "t"), {}],
        }), &[
            "spec.tls[1] lists no hosts, which cert-manager (annotation kubernetes.io/tls-acme) needs",
            "spec.tls[1] has no secretName, which cert-manager (annotation kubernetes.io/tls-acme) needs",
        ])
        .annotated(json!({"kubernetes.io/tls-acme": "True"}))
        .settings(DEFAULT_CERT),
        Case::allow("tls-acme false is no trigger", json!({"rules": [rule("api.example.com")], "tls": [tls(api, "t"), {}]}))
            .annotated(json!({"kubernetes.io/tls-acme": "false"}))
            .settings(DEFAULT_CERT),
        Case::deny("tls-acme with an issuer allow-list", rules_and_tls(api, api), &[
            r#"annotation kubernetes.io/tls-acme "true" makes cert-manager use its default issuer, which this policy cannot check against the allowed issuers"#,
            r#"add annotation cert-manager.io/cluster-issuer naming one of the allowed ClusterIssuers ("letsencrypt-prod")"#,
        ])
        .annotated(json!({"kubernetes.io/tls-acme": "true"}))
        .settings(r#"{"allowedClusterIssuers": ["letsencrypt-prod"]}"#),
        Case::allow("tls-acme naming an allowed cluster issuer", rules_and_tls(api, api))
            .annotated(json!({"kubernetes.io/tls-acme": "true", "cert-manager.io/cluster-issuer": "letsencrypt-prod"}))
            .settings(r#"{"allowedClusterIssuers": ["letsencrypt-prod"]}"#),
        Case::deny("both issuer annotations", rules_and_tls(api, api), &["are both set"])
            .annotated(json!({"cert-manager.io/issuer": "a", "cert-manager.io/cluster-issuer": "b"})),
        // ingress-nginx.
        Case::deny("nginx ssl-redirect false", rules_and_tls(api, api).merged(json!({"ingressClassName": "nginx"})), &[
            r#"annotation nginx.ingress.kubernetes.io/ssl-redirect "false" turns off the HTTP-to-HTTPS redirect of ingress-nginx (class "nginx" from spec.ingressClassName)"#,
        ])
        .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"})),
        Case::deny("nginx ssl-redirect False", rules_and_tls(api, api).merged(json!({"ingressClassName": "nginx"})), &[
            r#"ssl-redirect "False""#,
        ])
        .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "False"})),
        Case::deny("nginx by legacy annotation", rules_and_tls(api, api), &[
            r#"(class "nginx" from annotation kubernetes.io/ingress.class)"#,
        ])
        .annotated(json!({"kubernetes.io/ingress.class": "nginx", "nginx.ingress.kubernetes.io/ssl-redirect": "false"})),
        Case::allow("nginx ssl-redirect true", rules_and_tls(api, api).merged(json!({"ingressClassName": "nginx"})))
            .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "true"})),
        Case::allow("nginx force-ssl-redirect false is not checked", rules_and_tls(api, api).merged(json!({"ingressClassName": "nginx"})))
            .annotated(json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "false"})),
        Case::allow("ssl-redirect false on another controller", rules_and_tls(api, api).merged(json!({"ingressClassName": "traefik"})))
            .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"})),
        Case::allow("ssl-redirect false without a class", rules_and_tls(api, api))
            .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"})),
        Case::deny("custom class mapped to ingress-nginx", rules_and_tls(api, api).merged(json!({"ingressClassName": "my-nginx"})), &[
            r#"(class "my-nginx" from spec.ingressClassName)"#,
        ])
        .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}))
        .settings(r#"{"ingressClasses": {"my-nginx": "ingress-nginx"}}"#),
        Case::allow("default class turned off", rules_and_tls(api, api).merged(json!({"ingressClassName": "nginx"})))
            .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}))
            .settings(r#"{"ingressClasses": {"nginx": "none"}}"#),
        // GCE.
        Case::deny("gce without allow-http", rules_and_tls(api, api), &[
            r#"annotation kubernetes.io/ingress.allow-http is missing; it must be "false", or the GCE load balancer (class "gce" from annotation kubernetes.io/ingress.class)"#,
        ])
        .annotated(json!({"kubernetes.io/ingress.class": "gce"})),
        Case::deny("gce with allow-http true", rules_and_tls(api, api), &[r#"kubernetes.io/ingress.allow-http is "true""#])
            .annotated(json!({"kubernetes.io/ingress.class": "gce", "kubernetes.io/ingress.allow-http": "true"})),
        Case::allow("gce with allow-http false", rules_and_tls(api, api))
            .annotated(json!({"kubernetes.io/ingress.class": "gce", "kubernetes.io/ingress.allow-http": "false"})),
        Case::allow("gce with allow-http FALSE", rules_and_tls(api, api))
            .annotated(json!({"kubernetes.io/ingress.class": "gce", "kubernetes.io/ingress.allow-http": "FALSE"})),
        Case::deny("gce by ingressClassName", rules_and_tls(api, api).merged(json!({"ingressClassName": "gce"})), &[
            r#"(class "gce" from spec.ingressClassName)"#,
        ]),
        Case::deny("spec class wins over the annotation", rules_and_tls(api, api).merged(json!({"ingressClassName": "gce"})), &[
            "allow-http is missing",
        ])
        .annotated(json!({"kubernetes.io/ingress.class": "nginx"})),
        Case::deny("custom class mapped to gce", rules_and_tls(api, api).merged(json!({"ingressClassName": "gce-internal"})), &[
            r#"class "gce-internal""#,
        ])
        .settings(r#"{"ingressClasses": {"gce-internal": "gce"}}"#),
        Case::allow("unmapped gce-internal is not checked", rules_and_tls(api, api).merged(json!({"ingressClassName": "gce-internal"}))),
        // Warnings.
        Case::allow("unused tls host warns", rules_and_tls(api, &["api.example.com", "old.example.com"]))
            .warns(&[r#"spec.tls[0].hosts[1] "old.example.com" matches no rule host"#]),
        Case::allow("tls host used by a wildcard rule does not warn", json!({
            "rules": [rule("*.example.com")],
            "tls": [tls(&["*.example.com", "api.example.com"], "t")],
        })),
        // Everything at once.
        Case::deny("every problem in one message", json!({
            "ingressClassName": "nginx",
            "rules": [rule("api.example.com"), rule("app.example.com"), hostless_rule(), rule("a.*.example.com")],
            "tls": [{}, tls(&["*", "old.example.com"], "t")],
        }), &[
            r#"Ingress "shop/web" is not fully served over TLS (8 problems):"#,
            r#"- spec.rules[0].host "api.example.com" is not covered"#,
            r#"- spec.rules[1].host "app.example.com" is not covered"#,
            "- spec.rules[2] has no host",
            r#"- spec.rules[3].host "a.*.example.com" is not a valid host"#,
            "- spec.tls[0] lists no hosts",
            "- spec.tls[0] has no secretName",
            r#"- spec.tls[1].hosts[0] "*" is not a valid host"#,
            "- annotation nginx.ingress.kubernetes.io/ssl-redirect",
        ])
        .annotated(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "0"}))
        .warns(&[r#"spec.tls[1].hosts[1] "old.example.com" matches no rule host"#]),
        // Nothing to serve.
        Case::allow("no spec", Value::Null),
    ]
}

/// Adds the fields of `other` to a JSON object.
trait Merged {
    fn merged(self, other: Value) -> Value;
}

impl Merged for Value {
    fn merged(mut self, other: Value) -> Value {
        if let (Value::Object(map), Value::Object(extra)) = (&mut self, other) {
            map.extend(extra);
        }
        self
    }
}

#[test]
fn decision_table() -> Result<(), String> {
    let failures: Vec<String> = cases().into_iter().filter_map(|case| case.check().err()).collect();
    if failures.is_empty() { Ok(()) } else { Err(failures.join("\n\n")) }
}

#[test]
fn other_kinds_and_operations_are_allowed_untouched() -> Result<(), String> {
    let garbage = json!({"spec": "not an ingress"});
    let requests = [
        request_for("v1/Service", "CREATE", garbage.clone())?,
        request_for("networking.k8s.io/v1/IngressClass", "CREATE", garbage.clone())?,
        request_for("extensions/v1beta1/Ingress", "CREATE", garbage.clone())?,
        request_for(INGRESS, "DELETE", garbage.clone())?,
        request_for(INGRESS, "CONNECT", garbage.clone())?,
    ];
    for request in &requests {
        assert_eq!(validate(request, &Settings::default()), Ok(Verdict::allow()), "{:?}", request.kind);
    }
    Ok(())
}

#[test]
fn status_updates_and_deleting_ingresses_are_allowed() -> Result<(), String> {
    let bad = object(json!({}), json!({"rules": [rule("api.example.com")]}));
    let mut status = request_for(INGRESS, "UPDATE", bad.clone())?;
    status.sub_resource = Some("status".to_string());
    assert_eq!(validate(&status, &Settings::default()), Ok(Verdict::allow()));

    let mut deleting = bad;
    if let Some(meta) = deleting.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("deletionTimestamp".into(), json!("2025-11-20T10:00:00Z"));
        meta.insert("finalizers".into(), json!([]));
    }
    let update = request_for(INGRESS, "UPDATE", deleting)?;
    assert_eq!(validate(&update, &Settings::default()), Ok(Verdict::allow()));
    Ok(())
}

#[test]
fn update_is_checked_like_create() -> Result<(), String> {
    let request = request_for(INGRESS, "UPDATE", object(json!({}), json!({"rules": [rule("api.example.com")]})))?;
    let verdict = validate(&request, &Settings::default())?;
    assert!(!verdict.allowed);
    Ok(())
}

#[test]
fn undecodable_or_missing_object_is_an_error() -> Result<(), String> {
    let undecodable = [
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "spec": {"rules": "api.example.com"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}),
        json!("an ingress"),
    ];
    for object in undecodable {
        let request = request_for(INGRESS, "CREATE", object.clone())?;
        let Err(error) = validate(&request, &Settings::default()) else {
            return Err(format!("{object} should not decode"));
        };
        assert!(error.contains("cannot decode the object as a networking.k8s.io/v1 Ingress"), "{error}");
    }
    let request = request_for(INGRESS, "CREATE", Value::Null)?;
    assert!(matches!(validate(&request, &Settings::default()), Err(e) if e.contains("no object")));
    Ok(())
}

#[test]
fn generate_name_is_used_when_there_is_no_name() -> Result<(), String> {
    let object =
        json!({"metadata": {"generateName": "web-", "namespace": "shop"}, "spec": {"rules": [rule("a.example.com")]}});
    let verdict = validate(&request_for(INGRESS, "CREATE", object)?, &Settings::default())?;
    let message = verdict.message.unwrap_or_default();
    assert!(message.starts_with(r#"Ingress "shop/web-*" is not fully served"#), "{message}");
    Ok(())
}

#[test]
fn abi_path_decodes_request_and_settings() -> Result<(), String> {
    let request = serde_json::to_value(request_for(
        INGRESS,
        "CREATE",
        object(json!({}), json!({"rules": [hostless_rule()], "tls": [{}]})),
    )?)
    .map_err(|e| e.to_string())?;

    let strict = json!({"request": request, "settings": {}}).to_string();
    let Outcome::Verdict(verdict) = crate::evaluate(strict.as_bytes()) else {
        return Err("expected a verdict".into());
    };
    assert!(!verdict.allowed && verdict.message.is_some_and(|m| m.contains("spec.rules[0] has no host")));

    let lenient = json!({"request": request, "settings": {"allowDefaultCertificate": true}}).to_string();
    assert_eq!(crate::evaluate(lenient.as_bytes()), Outcome::Verdict(Verdict::allow()));

    let no_settings = json!({"request": request}).to_string();
    assert!(matches!(crate::evaluate(no_settings.as_bytes()), Outcome::Verdict(v) if !v.allowed));

    let mut broken = request;
    if let Some(fields) = broken.as_object_mut() {
        fields.insert("object".into(), json!({"kind": "Ingress", "spec": []}));
    }
    let broken = json!({"request": broken}).to_string();
    assert!(matches!(crate::evaluate(broken.as_bytes()), Outcome::Error { error } if error.contains("cannot decode")));

    assert!(matches!(crate::evaluate(b"{\"request\": 1}"), Outcome::Error { .. }));
    Ok(())
}

#[test]
fn fixture_request_decodes() -> Result<(), String> {
    let request = request_from_file(test_data().join("realistic-3kb.json"))?;
    assert_eq!(validate(&request, &Settings::default()), Ok(Verdict::allow()));
    Ok(())
}

fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data")
}

/// Every case of `test_data/cases.yaml`, through `crate::evaluate` (the
/// native twin of the wasm export); every fixture file must be listed there.
#[test]
fn fixtures_match_cases_yaml() -> Result<(), String> {
    let ran = portcullis_sdk::testing::run_cases(&test_data(), crate::evaluate)?;
    assert!(ran >= 10, "only {ran} cases");
    Ok(())
}

#[test]
fn realistic_fixture_is_about_3_kb() -> Result<(), String> {
    let len = std::fs::metadata(test_data().join("realistic-3kb.json")).map_err(|e| e.to_string())?.len();
    assert!((2_500..=3_500).contains(&len), "realistic-3kb.json is {len} bytes");
    Ok(())
}
