//! The API server's admission-webhook metrics, read from its `/metrics`
//! (Prometheus text format). Comparing two snapshots taken around one request
//! tells which webhooks that request called and how each call ended, which is
//! how a case proves that an admitted object really went through our webhook.
//!
//! The series used (from `k8s.io/apiserver/pkg/admission/metrics`):
//! - `apiserver_admission_webhook_request_total{name,type,operation,code,rejected}`:
//!   every call that got an answer or an error;
//! - `apiserver_admission_webhook_rejection_count{name,type,operation,error_type,rejection_code}`:
//!   `error_type="no_error"` for a denial, `calling_webhook_error` for a failed
//!   call under `failurePolicy: Fail`;
//! - `apiserver_admission_webhook_fail_open_count{name,type}`: failed calls under
//!   `failurePolicy: Ignore`.

use std::collections::BTreeMap;

use crate::case::WebhookResult;

const REQUESTS: &str = "apiserver_admission_webhook_request_total";
const REJECTIONS: &str = "apiserver_admission_webhook_rejection_count";
const FAIL_OPEN: &str = "apiserver_admission_webhook_fail_open_count";

/// The webhook counters of one `/metrics` scrape, keyed by series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookMetrics {
    series: BTreeMap<Series, f64>,
}

/// One series: metric name and its labels, sorted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    metric: String,
    labels: Vec<(String, String)>,
}

impl Series {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl WebhookMetrics {
    /// Keeps the admission-webhook counters of a Prometheus text exposition.
    pub fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((metric, labels, value)) = parse_sample(line) else { continue };
            if ![REQUESTS, REJECTIONS, FAIL_OPEN].contains(&metric) {
                continue;
            }
            let Ok(value) = value.parse::<f64>() else { continue };
            series.insert(Series { metric: metric.to_owned(), labels }, value);
        }
        Self { series }
    }

    /// Sum of a metric's series for the webhook `name` matching `filter` on labels.
    fn sum(&self, metric: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(s, _)| {
                s.metric == metric
                    && s.label("name") == Some(name)
                    && filter.iter().all(|(k, v)| s.label(k) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// How many times each kind of result was counted for webhook `name`.
    fn counts(&self, name: &str) -> Counts {
        Counts {
            answered_allowed: self.sum(REQUESTS, name, &[("rejected", "false"), ("code", "200")]),
            calls: self.sum(REQUESTS, name, &[]),
            denied: self.sum(REJECTIONS, name, &[("error_type", "no_error")]),
            unreachable: self.sum(REJECTIONS, name, &[("error_type", "calling_webhook_error")]),
            failed_open: self.sum(FAIL_OPEN, name, &[]),
        }
    }

    /// Checks that between `before` and `self` webhook `name` was called with `result`.
    pub fn check_since(&self, before: &WebhookMetrics, name: &str, result: WebhookResult) -> Result<(), String> {
        let now = self.counts(name);
        let then = before.counts(name);
        let delta = |f: fn(&Counts) -> f64| f(&now) - f(&then);
        let ok = match result {
            WebhookResult::Allowed => delta(|c| c.answered_allowed) >= 1.0,
            WebhookResult::Denied => delta(|c| c.denied) >= 1.0,
            WebhookResult::Unreachable => delta(|c| c.unreachable) >= 1.0,
            WebhookResult::FailedOpen => delta(|c| c.failed_open) >= 1.0,
            WebhookResult::NotCalled => delta(|c| c.calls) == 0.0 && delta(|c| c.failed_open) == 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "webhook {name:?}: expected {result:?} for this request, but the API server's metrics changed by: \
                 calls {:+}, allowed {:+}, denied {:+}, unreachable {:+}, failed open {:+}",
                delta(|c| c.calls),
                delta(|c| c.answered_allowed),
                delta(|c| c.denied),
                delta(|c| c.unreachable),
                delta(|c| c.failed_open),
            ))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    answered_allowed: f64,
    calls: f64,
    denied: f64,
    unreachable: f64,
    failed_open: f64,
}

/// A sample line's metric name, sorted labels and value.
type Sample<'a> = (&'a str, Vec<(String, String)>, &'a str);

/// Splits `name{a="b",c="d"} 1` into its parts; `None` for lines of another shape.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let Some(open) = line.find('{') else {
        let (metric, value) = line.split_once(' ')?;
        return Some((metric, Vec::new(), value.split_whitespace().next()?));
    };
    let metric = &line[..open];
    let mut labels = Vec::new();
    let mut rest = &line[open + 1..];
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            let value = after.split_whitespace().next()?;
            labels.sort();
            return Some((metric, labels, value));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
# HELP apiserver_admission_webhook_request_total Admission webhook request total
# TYPE apiserver_admission_webhook_request_total counter
apiserver_admission_webhook_request_total{code="200",name="ingress-tls.portcullis.dev",operation="CREATE",rejected="false",type="validating"} 2
apiserver_admission_webhook_request_total{code="403",name="ingress-tls.portcullis.dev",operation="CREATE",rejected="true",type="validating"} 1
apiserver_admission_webhook_rejection_count{error_type="no_error",name="ingress-tls.portcullis.dev",operation="CREATE",rejection_code="403",type="validating"} 1
apiserver_request_total{code="201",verb="POST"} 9
"#;

    fn after(extra: &str) -> WebhookMetrics {
        WebhookMetrics::parse(&format!("{BEFORE}{extra}"))
    }

    #[test]
    fn parses_labels_including_escapes() {
        let (metric, labels, value) = parse_sample(r#"m{a="x\"y",b="c,d}"} 3"#).expect("parses");
        assert_eq!(metric, "m");
        assert_eq!(labels, vec![("a".into(), "x\"y".into()), ("b".into(), "c,d}".into())]);
        assert_eq!(value, "3");
        assert_eq!(parse_sample("plain 4 1700000000").map(|s| s.2), Some("4"));
    }

    #[test]
    fn a_denial_is_seen_as_a_rejection_without_error() {
        let before = WebhookMetrics::parse(BEFORE);
        let now = after(
            r#"apiserver_admission_webhook_rejection_count{error_type="no_error",name="ingress-tls.portcullis.dev",operation="UPDATE",rejection_code="403",type="validating"} 1"#,
        );
        assert!(now.check_since(&before, "ingress-tls.portcullis.dev", WebhookResult::Denied).is_ok());
        let err = now.check_since(&before, "ingress-tls.portcullis.dev", WebhookResult::Allowed).expect_err("mismatch");
        assert!(err.contains("denied +1"), "{err}");
    }

    #[test]
    fn not_called_means_no_new_call_of_any_kind() {
        let before = WebhookMetrics::parse(BEFORE);
        assert!(before.check_since(&before, "ingress-tls.portcullis.dev", WebhookResult::NotCalled).is_ok());
        let now = after(
            r#"apiserver_admission_webhook_fail_open_count{name="ingress-tls.portcullis.dev",type="validating"} 1"#,
        );
        assert!(now.check_since(&before, "ingress-tls.portcullis.dev", WebhookResult::NotCalled).is_err());
        assert!(now.check_since(&before, "ingress-tls.portcullis.dev", WebhookResult::FailedOpen).is_ok());
    }

    #[test]
    fn other_webhooks_do_not_count() {
        let before = WebhookMetrics::parse(BEFORE);
        let now = after(
            r#"apiserver_admission_webhook_request_total{code="200",name="other.example.com",operation="CREATE",rejected="false",type="admit"} 5"#,
        );
        assert!(now.check_since(&before, "ingress-tls.portcullis.dev", WebhookResult::Allowed).is_err());
        assert!(now.check_since(&before, "other.example.com", WebhookResult::Allowed).is_ok());
    }
}
