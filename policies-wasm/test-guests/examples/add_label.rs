//! Mutator: adds the label `portcullis.dev/mutated: "true"` by returning the
//! edited object (the host diffs it into a JSON Patch).
use portcullis_sdk::serde_json::{Map, Value};
use portcullis_sdk::{NoSettings, Request, Verdict};

fn validate(req: &Request, _: &NoSettings) -> Result<Verdict, String> {
    let Some(mut object) = req.object_value().map_err(|e| format!("cannot decode object: {e}"))? else {
        return Ok(Verdict::allow());
    };
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Err("object has no metadata".into());
    };
    let labels = metadata.entry("labels").or_insert_with(|| Value::Object(Map::new()));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert("portcullis.dev/mutated".into(), Value::String("true".into()));
    }
    Ok(Verdict::mutate(object))
}

portcullis_sdk::policy!(settings = NoSettings, validate = validate);
