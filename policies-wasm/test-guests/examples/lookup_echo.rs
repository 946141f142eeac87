//! Context lookups: runs the query of its settings (`{"query": {...}}`) and
//! admits with the answer's items as its one warning, or denies with the
//! lookup's error, so the host's tests can see exactly what a guest gets.
use portcullis_sdk::lookup::{Query, lookup};
use portcullis_sdk::serde_json;
use portcullis_sdk::{Request, Settings, Verdict};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Echo {
    #[serde(default)]
    query: Option<Query>,
}

impl Settings for Echo {}

fn validate(_: &Request, settings: &Echo) -> Verdict {
    let Some(query) = &settings.query else { return Verdict::deny("no query in the settings") };
    match lookup(query) {
        Ok(items) => Verdict::allow().with_warning(serde_json::to_string(&items).unwrap_or_default()),
        Err(e) => Verdict::deny(e.error),
    }
}

portcullis_sdk::policy!(settings = Echo, validate = validate);
