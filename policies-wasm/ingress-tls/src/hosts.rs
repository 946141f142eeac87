//! Host names of Ingress rules and TLS entries, and which TLS host covers which
//! rule host.
//!
//! Comparison ignores ASCII case. A TLS wildcard `*.example.com` covers exactly
//! one more label (`api.example.com`, not `example.com` nor `a.b.example.com`),
//! as in RFC 6125 and as certificates are matched; a wildcard rule host is
//! covered only by the same wildcard. A trailing dot is not normalised away: the
//! API server refuses it and controllers compare host strings literally, so
//! `api.example.com.` would not pick up the certificate of `api.example.com`;
//! it is reported as invalid instead.

use std::fmt;

/// A valid, lower-cased host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A plain name, e.g. `api.example.com`.
    Exact(String),
    /// `*.` followed by this parent domain, e.g. `example.com` for `*.example.com`.
    Wildcard(String),
}

/// Why a host string is not a usable host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// `*` alone would match every host name.
    BareWildcard,
    /// `*` appears other than as the whole first label.
    MisplacedWildcard,
    /// A dot at the start or two dots in a row.
    EmptyLabel,
    /// A dot at the end.
    TrailingDot,
    /// A character outside letters, digits, `-` and `.`.
    InvalidCharacter(char),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::BareWildcard => f.write_str("a bare \"*\" would match every host name"),
            HostError::MisplacedWildcard => {
                f.write_str("a wildcard must be the whole first label, as in \"*.example.com\"")
            }
            HostError::EmptyLabel => f.write_str("it has an empty label"),
            HostError::TrailingDot => f.write_str("it must not end with a dot"),
            HostError::InvalidCharacter(c) => write!(f, "it contains {c:?}"),
        }
    }
}

impl Host {
    /// Parses and lower-cases a non-empty host string.
    pub fn parse(host: &str) -> Result<Host, HostError> {
        let host = host.to_ascii_lowercase();
        if host == "*" {
            return Err(HostError::BareWildcard);
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(parent) => (true, parent),
            None => (false, host.as_str()),
        };
        if name.contains('*') {
            return Err(HostError::MisplacedWildcard);
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
            return Err(HostError::InvalidCharacter(c));
        }
        if name.ends_with('.') && !name.is_empty() {
            return Err(HostError::TrailingDot);
        }
        if name.split('.').any(str::is_empty) {
            return Err(HostError::EmptyLabel);
        }
        let name = name.to_string();
        Ok(if wildcard { Host::Wildcard(name) } else { Host::Exact(name) })
    }

    /// True when this TLS host covers `rule`, a rule host.
    pub fn covers(&self, rule: &Host) -> bool {
        match (self, rule) {
            (Host::Exact(tls), Host::Exact(rule)) => tls == rule,
            (Host::Wildcard(parent), Host::Exact(rule)) => {
                labels_under(rule, parent).is_some_and(|labels| !labels.contains('.'))
            }
            (Host::Wildcard(tls), Host::Wildcard(rule)) => tls == rule,
            (Host::Exact(_), Host::Wildcard(_)) => false,
        }
    }

    /// True when this wildcard TLS host is a suffix of `rule` but `rule` has
    /// more than one label in front of it (`*.example.com` vs `a.b.example.com`).
    pub fn too_shallow_for(&self, rule: &Host) -> bool {
        match (self, rule) {
            (Host::Wildcard(parent), Host::Exact(rule)) => {
                labels_under(rule, parent).is_some_and(|labels| labels.contains('.'))
            }
            _ => false,
        }
    }

    /// True when a request for one of the two could be served under the other:
    /// either covers the other. Used to find TLS hosts that no rule uses.
    pub fn overlaps(&self, other: &Host) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The wildcard that would cover this exact host (`*.example.com` for
    /// `api.example.com`), if it has a parent domain.
    pub fn covering_wildcard(&self) -> Option<Host> {
        match self {
            Host::Exact(name) => name.split_once('.').map(|(_, parent)| Host::Wildcard(parent.to_string())),
            Host::Wildcard(_) => None,
        }
    }
}

/// The labels in front of `parent` in `name`: `a.b` for `a.b.example.com`
/// under `example.com`; `None` when `name` is not strictly under `parent`.
fn labels_under<'a>(name: &'a str, parent: &str) -> Option<&'a str> {
    name.strip_suffix(parent)?.strip_suffix('.').filter(|labels| !labels.is_empty())
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Exact(name) => f.write_str(name),
            Host::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Result<Host, String> {
        Host::parse(s).map_err(|e| format!("{s:?}: {e}"))
    }

    #[test]
    fn parses_valid_hosts() -> Result<(), String> {
        let cases = [
            ("api.example.com", Host::Exact("api.example.com".into())),
            ("API.Example.COM", Host::Exact("api.example.com".into())),
            ("localhost", Host::Exact("localhost".into())),
            ("*.example.com", Host::Wildcard("example.com".into())),
            ("*.Example.com", Host::Wildcard("example.com".into())),
            ("*.com", Host::Wildcard("com".into())),
            ("xn--bcher-kva.example", Host::Exact("xn--bcher-kva.example".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(host(input)?, expected, "{input}");
        }
        Ok(())
    }

    #[test]
    fn refuses_invalid_hosts() {
        let cases = [
            ("*", HostError::BareWildcard),
            ("a.*.example.com", HostError::MisplacedWildcard),
            ("*foo.example.com", HostError::MisplacedWildcard),
            ("foo*.example.com", HostError::MisplacedWildcard),
            ("*.*.example.com", HostError::MisplacedWildcard),
            ("example.*", HostError::MisplacedWildcard),
            ("**.example.com", HostError::MisplacedWildcard),
            ("*.", HostError::EmptyLabel),
            (".example.com", HostError::EmptyLabel),
            ("api..example.com", HostError::EmptyLabel),
            ("api.example.com.", HostError::TrailingDot),
            ("*.example.com.", HostError::TrailingDot),
            ("api.example.com:443", HostError::InvalidCharacter(':')),
            ("api example.com", HostError::InvalidCharacter(' ')),
            ("bücher.example", HostError::InvalidCharacter('ü')),
        ];
        for (input, expected) in cases {
            assert_eq!(Host::parse(input), Err(expected), "{input}");
        }
    }

    #[test]
    fn coverage() -> Result<(), String> {
        // (TLS host, rule host, covered)
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("API.example.com", "api.EXAMPLE.com", true),
            ("api.example.com", "app.example.com", false),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", "api.notexample.com", false),
            ("*.example.com", "apiexample.com", false),
            ("*.example.com", "*.example.com", true),
            ("*.EXAMPLE.com", "*.example.COM", true),
            ("*.com", "*.example.com", false),
            ("*.example.com", "*.a.example.com", false),
            ("api.example.com", "*.example.com", false),
            ("example.com", "api.example.com", false),
        ];
        for (tls, rule, expected) in cases {
            assert_eq!(host(tls)?.covers(&host(rule)?), expected, "{tls} covers {rule}");
        }
        Ok(())
    }

    #[test]
    fn too_shallow_wildcards_are_recognised() -> Result<(), String> {
        assert!(host("*.example.com")?.too_shallow_for(&host("a.b.example.com")?));
        assert!(!host("*.example.com")?.too_shallow_for(&host("a.example.com")?));
        assert!(!host("*.example.com")?.too_shallow_for(&host("a.b.other.com")?));
        assert!(!host("*.example.com")?.too_shallow_for(&host("a.bexample.com")?));
        Ok(())
    }

    #[test]
    fn overlap_and_hints() -> Result<(), String> {
        assert!(host("api.example.com")?.overlaps(&host("*.example.com")?));
        assert!(host("*.example.com")?.overlaps(&host("api.example.com")?));
        assert!(!host("old.example.com")?.overlaps(&host("api.example.com")?));
        assert_eq!(host("api.example.com")?.covering_wildcard(), Some(host("*.example.com")?));
        assert_eq!(host("localhost")?.covering_wildcard(), None);
        assert_eq!(host("*.example.com")?.to_string(), "*.example.com");
        Ok(())
    }
}
