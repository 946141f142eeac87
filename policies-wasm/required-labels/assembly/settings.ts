// Settings of the policy, read and checked in one pass.
//
// Like the Rust policies (serde's `deny_unknown_fields` plus a `validate`
// hook), an unknown or misspelt field is refused and every message starts
// with the path of the offending field, so that `webhook-server check` says
// exactly what to fix. Every problem is reported, joined with "; ".

import { Reader, quote } from "./json";
import { allowedValueProblem, labelKeyProblem } from "./labels";

export class Settings {
  /** Label keys every object must carry, in the order given. */
  labels: string[] = [];
  /** Keys of `allowedValues`, each one of `labels`... */
  restricted: string[] = [];
  /** ...and, at the same index, the values allowed for it. */
  allowedValues: Array<string[]> = [];
  /** What is wrong with them; empty when they are usable. */
  problems: string[] = [];

  /** The values allowed for `key`, or null when any value is. */
  allowed(key: string): string[] | null {
    let i = this.restricted.indexOf(key);
    return i < 0 ? null : this.allowedValues[i];
  }
}

/** Reads the settings object at the reader's position and checks it. */
export function readSettings(r: Reader): Settings {
  let s = new Settings();
  let sawLabels = false;
  // Every string `labels` lists, valid or not (null: `labels` is not a list),
  // so that a bad key is not reported a second time from `allowedValues`.
  let listed: string[] | null = null;
  if (!r.isObject()) {
    s.problems.push("expected an object of settings, found " + r.describe());
    r.skip();
    return s;
  }
  r.beginObject();
  let key = r.nextKey();
  while (key !== null) {
    if (key == "labels") {
      sawLabels = true;
      listed = readLabels(r, s);
    } else if (key == "allowedValues") {
      readAllowedValues(r, s);
    } else {
      s.problems.push("unknown field `" + key + "`, expected `labels` or `allowedValues`");
      r.skip();
    }
    key = r.nextKey();
  }
  if (!sawLabels) {
    s.problems.push("labels: required (the label keys every object must carry)");
  }
  // Checked once both fields are read, whatever their order.
  for (let i = 0; listed !== null && i < s.restricted.length; i++) {
    let label = s.restricted[i];
    if (!listed.includes(label)) {
      s.problems.push(
        "allowedValues[" + quote(label) + "]: " + label + " is not one of labels (allowed values apply only to required labels)",
      );
    }
  }
  return s;
}

/** Reads `labels` into `s`; returns every string it lists, or null when it is not a list. */
function readLabels(r: Reader, s: Settings): string[] | null {
  if (!r.isArray()) {
    s.problems.push("labels: expected a list of label keys, found " + r.describe());
    r.skip();
    return null;
  }
  let listed: string[] = [];
  r.beginArray();
  let i = 0;
  while (r.nextItem()) {
    let at = "labels[" + i.toString() + "]: ";
    i++;
    if (!r.isString()) {
      s.problems.push(at + "expected a label key (a string), found " + r.describe());
      r.skip();
      continue;
    }
    let key = r.string();
    listed.push(key);
    let problem = labelKeyProblem(key);
    if (problem !== null) {
      s.problems.push(at + quote(key) + " is not a valid label key: " + problem);
    } else if (s.labels.includes(key)) {
      s.problems.push(at + quote(key) + " is listed twice");
    } else {
      s.labels.push(key);
    }
  }
  if (i == 0) s.problems.push("labels: must list at least one label key");
  return listed;
}

function readAllowedValues(r: Reader, s: Settings): void {
  if (r.readNull()) return;
  if (!r.isObject()) {
    s.problems.push("allowedValues: expected a map from label key to a list of allowed values, found " + r.describe());
    r.skip();
    return;
  }
  r.beginObject();
  let key = r.nextKey();
  while (key !== null) {
    let at = "allowedValues[" + quote(key) + "]";
    let values = readValues(r, at, s);
    if (values !== null) {
      s.restricted.push(key);
      s.allowedValues.push(values);
    }
    key = r.nextKey();
  }
}

/** One entry of `allowedValues`: a non-empty list of valid label values. */
function readValues(r: Reader, at: string, s: Settings): string[] | null {
  if (!r.isArray()) {
    s.problems.push(at + ": expected a list of allowed values, found " + r.describe());
    r.skip();
    return null;
  }
  let values: string[] = [];
  r.beginArray();
  let i = 0;
  while (r.nextItem()) {
    let item = at + "[" + i.toString() + "]: ";
    i++;
    if (!r.isString()) {
      s.problems.push(item + "expected a label value (a string), found " + r.describe());
      r.skip();
      continue;
    }
    let value = r.string();
    let problem = allowedValueProblem(value);
    if (problem !== null) {
      s.problems.push(item + quote(value) + " is not allowed here: " + problem);
    } else {
      values.push(value);
    }
  }
  if (i == 0) s.problems.push(at + ": must list at least one value");
  return values;
}
