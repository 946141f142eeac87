//! The rule: the labels an object must carry, and what is wrong with the
//! ones it has. Plain data in, findings out (no request, no lookups), so the
//! rule is unit-tested natively in a few lines. Change the rule here.

use std::collections::BTreeMap;
use std::fmt;

/// A label the object must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The label key, e.g. `environment`.
    pub key: String,
    /// The value it must have, e.g. `production`.
    pub value: String,
    /// Where the value comes from, for messages (e.g. `namespace "shop"`);
    /// `None` when the settings give it.
    pub source: Option<String>,
}

impl Expected {
    /// Label `key` with `value`, as the settings give it.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into(), source: None }
    }

    /// The same label, its value taken from `source`.
    #[must_use]
    pub fn from_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// What is wrong with one expected label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding<'a> {
    /// The object does not carry the label.
    Missing(&'a Expected),
    /// The object carries the label with another value.
    Wrong {
        /// The label.
        expected: &'a Expected,
        /// The value the object has.
        found: &'a str,
    },
}

/// What is wrong with the object's `labels` given the `expected` ones, in
/// the order of `expected`; empty when the object carries them all.
pub fn check<'a>(labels: &'a BTreeMap<String, String>, expected: &'a [Expected]) -> Vec<Finding<'a>> {
    expected
        .iter()
        .filter_map(|label| match labels.get(&label.key) {
            None => Some(Finding::Missing(label)),
            Some(found) if *found != label.value => Some(Finding::Wrong { expected: label, found }),
            Some(_) => None,
        })
        .collect()
}

/// One problem of a denial: `label environment is "staging"; it must be "production"`.
impl fmt::Display for Finding<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (label, what) = match self {
            Finding::Missing(label) => (*label, "is missing".to_string()),
            Finding::Wrong { expected, found } => (*expected, format!("is {found:?}")),
        };
        write!(f, "label {} {what}; it must be {:?}", label.key, label.value)?;
        if let Some(source) = &label.source {
            write!(f, " (as on {source})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The object's labels, and the problems expected (none: it passes).
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

    #[test]
    fn findings_name_the_label_and_the_value_it_must_have() {
        let expected = [Expected::new("environment", "production"), Expected::new("cost-center", "platform")];
        let cases: [Case<'_>; 4] = [
            (&[("environment", "production"), ("cost-center", "platform"), ("app", "web")], &[]),
            (
                &[],
                &[
                    r#"label environment is missing; it must be "production""#,
                    r#"label cost-center is missing; it must be "platform""#,
                ],
            ),
            (
                &[("environment", "staging"), ("cost-center", "platform")],
                &[r#"label environment is "staging"; it must be "production""#],
            ),
            (
                &[("environment", "Production"), ("cost-center", "")],
                &[
                    r#"label environment is "Production"; it must be "production""#,
                    r#"label cost-center is ""; it must be "platform""#,
                ],
            ),
        ];
        for (present, problems) in cases {
            let present = labels(present);
            let found: Vec<String> = check(&present, &expected).iter().map(ToString::to_string).collect();
            assert_eq!(found, problems, "{present:?}");
        }
    }

    #[test]
    fn a_value_from_elsewhere_says_where_from() {
        let expected = [Expected::new("team", "payments").from_source(r#"namespace "shop""#)];
        let present = labels(&[("team", "search")]);
        let findings = check(&present, &expected);
        assert_eq!(findings, [Finding::Wrong { expected: &expected[0], found: "search" }]);
        assert_eq!(
            findings[0].to_string(),
            r#"label team is "search"; it must be "payments" (as on namespace "shop")"#
        );
    }
}
