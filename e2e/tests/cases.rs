//! The e2e cases, one test each, against the cluster that
//! `PORTCULLIS_E2E_KUBECONFIG` names. They need a cluster, so they are
//! `#[ignore]`d in a plain `cargo test`; `cargo xtask e2e` (local API server)
//! and `e2e/kind.sh` run them with `--ignored --test-threads=1`.
//!
//! Every file in `e2e/cases/` must be listed in `cases!` below:
//! `every_case_file_has_a_test` (which runs everywhere) fails otherwise.

use e2e::case::{self, Case};
use e2e::cluster::Cluster;

async fn run_case(name: &str) {
    let case = match Case::named(name) {
        Ok(case) => case,
        Err(e) => panic!("{:#}", anyhow::Error::from(e)),
    };
    let cluster = match Cluster::from_env().await {
        Ok(cluster) => cluster,
        Err(e) => panic!("{:#}", anyhow::Error::from(e)),
    };
    if let Err(e) = e2e::runner::run(&cluster, &case).await {
        panic!("{}\n\n{:#}", case.description.trim(), anyhow::Error::from(e));
    }
}

macro_rules! cases {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[tokio::test]
            #[ignore = "needs a cluster: cargo xtask e2e"]
            async fn $test() {
                run_case($file).await;
            }
        )*

        const LISTED: &[&str] = &[$($file),*];
    };
}

cases! {
    ingress_tls_covered => "ingress-tls-covered",
    ingress_tls_no_tls => "ingress-tls-no-tls",
    ingress_tls_wildcard_covered => "ingress-tls-wildcard-covered",
    ingress_tls_wildcard_too_deep => "ingress-tls-wildcard-too-deep",
    ingress_tls_wildcard_rule_host => "ingress-tls-wildcard-rule-host",
    ingress_tls_hostless_rule => "ingress-tls-hostless-rule",
    ingress_tls_nginx_ssl_redirect_false => "ingress-tls-nginx-ssl-redirect-false",
    ingress_tls_unused_tls_host_warns => "ingress-tls-unused-tls-host-warns",
    ingress_tls_update_dropping_tls => "ingress-tls-update-dropping-tls",
    ingress_tls_kube_system_excluded => "ingress-tls-kube-system-excluded",
    add_label_configmap => "add-label-configmap",
    add_label_outside_selector => "add-label-outside-selector",
    failure_policy_fail_webhook_down => "failure-policy-fail-webhook-down",
    failure_policy_ignore_webhook_down => "failure-policy-ignore-webhook-down",
    guest_deadline_fail_closed => "guest-deadline-fail-closed",
    guest_deadline_fail_open => "guest-deadline-fail-open",
    identity_bound_service_account => "identity-bound-service-account",
    identity_claim_other_teams_role => "identity-claim-other-teams-role",
    identity_bound_pod_on_default => "identity-bound-pod-on-default",
    hpa_then_deployment_lacking_requests => "hpa-then-deployment-lacking-requests",
    hpa_then_deployment_with_requests => "hpa-then-deployment-with-requests",
    deployment_then_hpa_lacking_requests => "deployment-then-hpa-lacking-requests",
    deployment_then_hpa_with_requests => "deployment-then-hpa-with-requests",
    hpa_replicaset_pod_sidecar_lacks_request => "hpa-replicaset-pod-sidecar-lacks-request",
}

#[test]
fn every_case_file_has_a_test() {
    let on_disk: Vec<String> = match case::load_dir(&case::cases_dir()) {
        Ok(cases) => cases.into_iter().map(|c| c.name).collect(),
        Err(e) => panic!("{:#}", anyhow::Error::from(e)),
    };
    let mut listed: Vec<String> = LISTED.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "e2e/cases/*.yaml and the cases! list in tests/cases.rs differ");
}
