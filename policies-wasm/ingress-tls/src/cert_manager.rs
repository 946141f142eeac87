//! cert-manager's ingress-shim annotations: which issuer an Ingress asks for,
//! and whether that issuer is allowed.
//!
//! Mirrors how cert-manager reads them: `cert-manager.io/issuer` names a
//! namespaced `Issuer`, `cert-manager.io/cluster-issuer` a `ClusterIssuer`,
//! `cert-manager.io/issuer-kind` and `cert-manager.io/issuer-group` retarget
//! the former at another kind (e.g. an external issuer). cert-manager refuses an
//! Ingress that sets both issuer annotations, or the cluster issuer together
//! with a kind or group, so those are denied here rather than left to fail later.
//!
//! `kubernetes.io/tls-acme: "true"` (the default of ingress-shim's
//! `--auto-certificate-annotations`) also makes cert-manager manage the
//! Ingress, with the default issuer configured on the cert-manager controller
//! (`--default-issuer-name`, `-kind`, `-group`) unless an issuer annotation
//! names one. The policy cannot see that default, so while an issuer
//! allow-list is in force such an Ingress must name its issuer.

use std::collections::BTreeMap;

use crate::settings::Settings;

/// Annotation naming a namespaced `Issuer`.
pub const ISSUER: &str = "cert-manager.io/issuer";
/// Annotation naming a `ClusterIssuer`.
pub const CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";
/// Annotation overriding the kind of the issuer named by [`ISSUER`].
pub const ISSUER_KIND: &str = "cert-manager.io/issuer-kind";
/// Annotation overriding the API group of the issuer named by [`ISSUER`].
pub const ISSUER_GROUP: &str = "cert-manager.io/issuer-group";

/// Annotation with which cert-manager issues from its default issuer, when
/// its value reads as true (see [`reads_as_true`]).
pub const TLS_ACME: &str = "kubernetes.io/tls-acme";

const CERT_MANAGER_GROUP: &str = "cert-manager.io";

/// The cert-manager annotation that makes cert-manager manage this Ingress's
/// certificates, if any: the cluster issuer, else the issuer (cert-manager
/// acts on either whatever its value), else [`TLS_ACME`] when it reads as true.
pub fn annotation(annotations: &BTreeMap<String, String>) -> Option<&'static str> {
    [CLUSTER_ISSUER, ISSUER]
        .into_iter()
        .find(|key| annotations.contains_key(*key))
        .or_else(|| annotations.get(TLS_ACME).filter(|v| reads_as_true(v)).map(|_| TLS_ACME))
}

/// True when Go's `strconv.ParseBool`, which cert-manager applies to
/// [`TLS_ACME`], reads `value` as true: exactly `1`, `t`, `T`, `true`, `TRUE`
/// or `True` (no other case, no surrounding whitespace).
pub fn reads_as_true(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// Problems with the issuer annotations: conflicts, empty names, and issuers
/// outside the allow-lists of `settings` (including cert-manager's default
/// issuer, which the policy cannot check, asked for by [`TLS_ACME`]).
pub fn check(annotations: &BTreeMap<String, String>, settings: &Settings) -> Vec<String> {
    let issuer = annotations.get(ISSUER);
    let cluster_issuer = annotations.get(CLUSTER_ISSUER);
    let kind = annotations.get(ISSUER_KIND).filter(|k| !k.is_empty());
    let group = annotations.get(ISSUER_GROUP).filter(|g| !g.is_empty());

    let mut problems = Vec::new();
    if issuer.is_some() && cluster_issuer.is_some() {
        problems.push(format!(
            "annotations {ISSUER} and {CLUSTER_ISSUER} are both set; cert-manager refuses an Ingress that names two issuers"
        ));
    }
    if cluster_issuer.is_some() {
        for key in [kind.map(|_| ISSUER_KIND), group.map(|_| ISSUER_GROUP)].into_iter().flatten() {
            problems.push(format!(
                "annotation {key} cannot be combined with {CLUSTER_ISSUER}; cert-manager refuses the pair"
            ));
        }
    }
    for (key, name) in [(ISSUER, issuer), (CLUSTER_ISSUER, cluster_issuer)] {
        if name.is_some_and(|n| n.trim().is_empty()) {
            problems.push(format!("annotation {key} is empty; it must name an issuer"));
        }
    }
    if !problems.is_empty() || !settings.restricts_issuers() {
        return problems;
    }

    let (key, name, kind) = match (issuer, cluster_issuer) {
        (Some(name), None) => (ISSUER, name, kind.map_or("Issuer", String::as_str)),
        (None, Some(name)) => (CLUSTER_ISSUER, name, "ClusterIssuer"),
        (None, None) => {
            if let Some(value) = annotations.get(TLS_ACME).filter(|v| reads_as_true(v)) {
                problems.push(default_issuer_problem(value, settings));
            }
            return problems;
        }
        (Some(_), Some(_)) => return problems,
    };
    let group = group.map_or(CERT_MANAGER_GROUP, String::as_str);
    let allowed = match (group, kind) {
        (CERT_MANAGER_GROUP, "Issuer") => settings.allowed_issuers.contains(name),
        (CERT_MANAGER_GROUP, "ClusterIssuer") => settings.allowed_cluster_issuers.contains(name),
        _ => false,
    };
    if !allowed {
        let what = match (group, kind) {
            (CERT_MANAGER_GROUP, "Issuer" | "ClusterIssuer") => format!("{kind} {name:?}"),
            _ => format!("{name:?} of kind {kind:?} in group {group:?}"),
        };
        problems.push(format!(
            "annotation {key} names {what}, which is not allowed (allowed Issuers: {}; allowed ClusterIssuers: {})",
            list(&settings.allowed_issuers),
            list(&settings.allowed_cluster_issuers),
        ));
    }
    problems
}

/// The problem with a [`TLS_ACME`] Ingress that names no issuer while an
/// allow-list is in force, naming the annotation(s) that would fix it.
fn default_issuer_problem(value: &str, settings: &Settings) -> String {
    let mut fixes = Vec::new();
    if !settings.allowed_cluster_issuers.is_empty() {
        fixes.push(format!(
            "{CLUSTER_ISSUER} naming one of the allowed ClusterIssuers ({})",
            list(&settings.allowed_cluster_issuers)
        ));
    }
    if !settings.allowed_issuers.is_empty() {
        fixes.push(format!("{ISSUER} naming one of the allowed Issuers ({})", list(&settings.allowed_issuers)));
    }
    format!(
        "annotation {TLS_ACME} {value:?} makes cert-manager use its default issuer, which this policy cannot check \
         against the allowed issuers; add annotation {}",
        fixes.join(", or annotation ")
    )
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn restricted() -> Settings {
        Settings {
            allowed_issuers: vec!["team-ca".into()],
            allowed_cluster_issuers: vec!["letsencrypt-prod".into()],
            ..Settings::default()
        }
    }

    /// Annotations, settings, and a fragment of the expected problem (`None`: no problem).
    type Row<'a> = (Vec<(&'a str, &'a str)>, Settings, Option<&'a str>);

    #[test]
    fn issuer_checks() {
        let only_cluster = Settings { allowed_cluster_issuers: vec!["letsencrypt-prod".into()], ..Settings::default() };
        let cases: Vec<Row<'_>> = vec![
            (vec![], restricted(), None),
            (vec![(CLUSTER_ISSUER, "anything")], Settings::default(), None),
            (vec![(CLUSTER_ISSUER, "letsencrypt-prod")], restricted(), None),
            (vec![(ISSUER, "team-ca")], restricted(), None),
            (vec![(ISSUER, "letsencrypt-prod"), (ISSUER_KIND, "ClusterIssuer")], restricted(), None),
            (
                vec![(CLUSTER_ISSUER, "letsencrypt-staging")],
                restricted(),
                Some(r#"cluster-issuer names ClusterIssuer "letsencrypt-staging", which is not allowed"#),
            ),
            (
                vec![(ISSUER, "letsencrypt-prod")],
                restricted(),
                Some(r#"cert-manager.io/issuer names Issuer "letsencrypt-prod", which"#),
            ),
            (vec![(ISSUER, "team-ca")], only_cluster, Some("allowed Issuers: none")),
            (
                vec![(ISSUER, "team-ca"), (ISSUER_KIND, "ClusterIssuer")],
                restricted(),
                Some(r#"names ClusterIssuer "team-ca""#),
            ),
            (
                vec![(ISSUER, "pca"), (ISSUER_KIND, "AWSPCAClusterIssuer"), (ISSUER_GROUP, "awspca.cert-manager.io")],
                restricted(),
                Some(r#""pca" of kind "AWSPCAClusterIssuer" in group "awspca.cert-manager.io""#),
            ),
            (vec![(ISSUER, "a"), (CLUSTER_ISSUER, "b")], Settings::default(), Some("are both set")),
            (
                vec![(CLUSTER_ISSUER, "b"), (ISSUER_KIND, "Issuer")],
                Settings::default(),
                Some("cert-manager.io/issuer-kind cannot be combined"),
            ),
            (
                vec![(CLUSTER_ISSUER, "b"), (ISSUER_GROUP, "x.io")],
                Settings::default(),
                Some("cert-manager.io/issuer-group cannot be combined"),
            ),
            (vec![(CLUSTER_ISSUER, "")], Settings::default(), Some("cert-manager.io/cluster-issuer is empty")),
            // tls-acme: the default issuer is fine until an allow-list is in force.
            (vec![(TLS_ACME, "true")], Settings::default(), None),
            (
                vec![(TLS_ACME, "true")],
                restricted(),
                Some(
                    r#"annotation kubernetes.io/tls-acme "true" makes cert-manager use its default issuer, which this policy cannot check against the allowed issuers; add annotation cert-manager.io/cluster-issuer naming one of the allowed ClusterIssuers ("letsencrypt-prod"), or annotation cert-manager.io/issuer naming one of the allowed Issuers ("team-ca")"#,
                ),
            ),
            (vec![(TLS_ACME, "True"), (ISSUER_KIND, "ClusterIssuer")], restricted(), Some("its default issuer")),
            (vec![(TLS_ACME, "true"), (CLUSTER_ISSUER, "letsencrypt-prod")], restricted(), None),
            (vec![(TLS_ACME, "true"), (ISSUER, "team-ca")], restricted(), None),
            (
                vec![(TLS_ACME, "true"), (CLUSTER_ISSUER, "letsencrypt-staging")],
                restricted(),
                Some(r#"names ClusterIssuer "letsencrypt-staging", which is not allowed"#),
            ),
            (vec![(TLS_ACME, "false")], restricted(), None),
            (vec![(TLS_ACME, "yes")], restricted(), None),
        ];
        for (pairs, settings, expected) in cases {
            let problems = check(&annotations(&pairs), &settings);
            match expected {
                None => assert!(problems.is_empty(), "{pairs:?}: {problems:?}"),
                Some(fragment) => {
                    assert!(problems.iter().any(|p| p.contains(fragment)), "{pairs:?}: {problems:?} lacks {fragment:?}")
                }
            }
        }
    }

    #[test]
    fn tls_acme_fix_names_only_the_lists_in_force() {
        let only_cluster = Settings { allowed_cluster_issuers: vec!["letsencrypt-prod".into()], ..Settings::default() };
        let problems = check(&annotations(&[(TLS_ACME, "true")]), &only_cluster);
        assert_eq!(
            problems,
            [
                r#"annotation kubernetes.io/tls-acme "true" makes cert-manager use its default issuer, which this policy cannot check against the allowed issuers; add annotation cert-manager.io/cluster-issuer naming one of the allowed ClusterIssuers ("letsencrypt-prod")"#
            ]
        );
        let only_namespaced = Settings { allowed_issuers: vec!["team-ca".into()], ..Settings::default() };
        let problems = check(&annotations(&[(TLS_ACME, "1")]), &only_namespaced);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .ends_with(r#"add annotation cert-manager.io/issuer naming one of the allowed Issuers ("team-ca")"#),
            "{problems:?}"
        );
    }

    #[test]
    fn cluster_issuer_wins_as_the_triggering_annotation() {
        assert_eq!(annotation(&annotations(&[(ISSUER, "a"), (CLUSTER_ISSUER, "b")])), Some(CLUSTER_ISSUER));
        assert_eq!(annotation(&annotations(&[(ISSUER, "a")])), Some(ISSUER));
        assert_eq!(annotation(&annotations(&[(ISSUER_KIND, "Issuer")])), None);
        assert_eq!(annotation(&annotations(&[(TLS_ACME, "true")])), Some(TLS_ACME));
        assert_eq!(annotation(&annotations(&[(TLS_ACME, "true"), (ISSUER, "a")])), Some(ISSUER));
        assert_eq!(annotation(&annotations(&[(TLS_ACME, "false")])), None);
    }

    #[test]
    fn tls_acme_reads_true_as_go_parse_bool_does() {
        for v in ["true", "True", "TRUE", "t", "T", "1"] {
            assert!(reads_as_true(v), "{v:?}");
        }
        for v in ["", "false", "0", "tRUE", " true", "true ", "yes", "on", "enabled"] {
            assert!(!reads_as_true(v), "{v:?}");
        }
    }
}
