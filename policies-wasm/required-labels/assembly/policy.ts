// The decision: which labels an object lacks, and which carry a value that is
// not allowed. Everything here works on plain data; `index.ts` does the ABI.

import { Reader, jsonString, quote } from "./json";
import { Settings, readSettings } from "./settings";

/** The parts of an AdmissionRequest the policy reads. */
class Request {
  operation: string = "";
  kind: string = "";
  subResource: string = "";
  name: string = "";
  namespace: string = "";
  /** `object` is present and not null. */
  hasObject: bool = false;
  objectName: string = "";
  generateName: string = "";
  objectNamespace: string = "";
  /** `metadata.deletionTimestamp` is set: the object is being deleted. */
  deleting: bool = false;
  labelKeys: string[] = [];
  labelValues: string[] = [];
}

/** The answer of `portcullis_validate` for its input, as JSON. */
export function evaluate(input: Reader): string {
  let request: Request | null = null;
  let settings: Settings | null = null;
  let problem: string | null = null;
  if (input.beginObject()) {
    let key = input.nextKey();
    while (key !== null) {
      if (key == "request") {
        request = new Request();
        let p = readRequest(input, request);
        if (problem === null) problem = p;
      } else if (key == "settings") {
        settings = readSettings(input);
      } else {
        input.skip();
      }
      key = input.nextKey();
    }
    input.finish();
  }
  if (input.failed) return error("cannot decode the policy input: " + input.error!);
  if (problem !== null) return error(problem);
  if (request === null) return error("cannot decode the policy input: no request");
  if (settings === null) return error("cannot decode the policy input: no settings");
  // Checked at load already; a module cannot be handed other settings later,
  // but a wrong answer is worse than an error.
  if (settings.problems.length > 0) return error("invalid settings: " + settings.problems.join("; "));
  return decide(request, settings);
}

function error(message: string): string {
  return "{\"error\":" + jsonString(message) + "}";
}

function decide(req: Request, settings: Settings): string {
  // DELETE and CONNECT carry no object to label (CONNECT's object is its
  // options); a subresource (status, scale, ...) is not the object's
  // metadata; an object being deleted only has its finalizers removed.
  if (req.operation == "DELETE" || req.operation == "CONNECT" || !req.hasObject) return ALLOW;
  if (req.subResource.length > 0 || req.deleting) return ALLOW;
  let problems: string[] = [];
  for (let i = 0; i < settings.labels.length; i++) {
    let key = settings.labels[i];
    let allowed = settings.allowed(key);
    let at = req.labelKeys.indexOf(key);
    if (at < 0) {
      problems.push("label " + key + " is missing" + fix(allowed, "set it to one of "));
      continue;
    }
    let value = req.labelValues[at];
    if (value.length == 0) {
      problems.push("label " + key + " is empty" + fix(allowed, "set it to one of "));
    } else if (allowed !== null && !allowed.includes(value)) {
      problems.push("label " + key + " is " + quote(value) + ", which is not allowed" + fix(allowed, "use one of "));
    }
  }
  if (problems.length == 0) return ALLOW;
  let noun = problems.length == 1 ? "problem" : "problems";
  let kind = req.kind.length > 0 ? req.kind : "object";
  let message = kind + " " + displayName(req) + " does not carry the required labels (" +
    problems.length.toString() + " " + noun + "):";
  for (let i = 0; i < problems.length; i++) message += "\n- " + problems[i];
  return "{\"allowed\":false,\"message\":" + jsonString(message) + "}";
}

const ALLOW = "{\"allowed\":true}";

/** `; set it to one of "a", "b"`, when values are restricted. */
function fix(allowed: string[] | null, verb: string): string {
  if (allowed === null) return "";
  let quoted: string[] = [];
  for (let i = 0; i < allowed.length; i++) quoted.push(quote(allowed[i]));
  return "; " + verb + quoted.join(", ");
}

/** `"namespace/name"` as the Rust policies show it (`"prefix*"` for generateName). */
function displayName(req: Request): string {
  let name = req.objectName.length > 0 ? req.objectName : req.name;
  if (name.length == 0 && req.generateName.length > 0) name = req.generateName + "*";
  let namespace = req.objectNamespace.length > 0 ? req.objectNamespace : req.namespace;
  return quote(namespace.length > 0 ? namespace + "/" + name : name);
}

/**
 * Reads the request member; returns why it cannot be judged (an error
 * answer), or null. Syntax errors are left in the reader.
 */
function readRequest(r: Reader, req: Request): string | null {
  if (!r.beginObject()) return null;
  let problem: string | null = null;
  let key = r.nextKey();
  while (key !== null) {
    if (key == "operation") req.operation = optionalString(r);
    else if (key == "subResource") req.subResource = optionalString(r);
    else if (key == "name") req.name = optionalString(r);
    else if (key == "namespace") req.namespace = optionalString(r);
    else if (key == "kind") req.kind = readKind(r);
    else if (key == "object") {
      let p = readObject(r, req);
      if (problem === null) problem = p;
    } else r.skip();
    key = r.nextKey();
  }
  return problem;
}

/** A string member that may also be null or absent (""). */
function optionalString(r: Reader): string {
  if (r.readNull()) return "";
  return r.string();
}

function readKind(r: Reader): string {
  let kind = "";
  if (!r.beginObject()) return kind;
  let key = r.nextKey();
  while (key !== null) {
    if (key == "kind") kind = optionalString(r);
    else r.skip();
    key = r.nextKey();
  }
  return kind;
}

function readObject(r: Reader, req: Request): string | null {
  if (r.readNull()) return null;
  if (!r.isObject()) {
    let found = r.describe();
    r.skip();
    return "cannot decode the object: expected an object, found " + found;
  }
  req.hasObject = true;
  let problem: string | null = null;
  r.beginObject();
  let key = r.nextKey();
  while (key !== null) {
    if (key == "metadata") {
      let p = readMetadata(r, req);
      if (problem === null) problem = p;
    } else r.skip();
    key = r.nextKey();
  }
  return problem;
}

function readMetadata(r: Reader, req: Request): string | null {
  if (r.readNull()) return null;
  if (!r.isObject()) {
    let found = r.describe();
    r.skip();
    return "cannot decode the object: metadata: expected an object, found " + found;
  }
  let problem: string | null = null;
  r.beginObject();
  let key = r.nextKey();
  while (key !== null) {
    if (key == "name") req.objectName = optionalString(r);
    else if (key == "generateName") req.generateName = optionalString(r);
    else if (key == "namespace") req.objectNamespace = optionalString(r);
    else if (key == "deletionTimestamp") {
      if (!r.readNull()) {
        req.deleting = true;
        r.skip();
      }
    }
    else if (key == "labels") {
      let p = readLabels(r, req);
      if (problem === null) problem = p;
    } else r.skip();
    key = r.nextKey();
  }
  return problem;
}

function readLabels(r: Reader, req: Request): string | null {
  if (r.readNull()) return null;
  if (!r.isObject()) {
    let found = r.describe();
    r.skip();
    return "cannot decode the object: metadata.labels: expected a map of strings, found " + found;
  }
  let problem: string | null = null;
  r.beginObject();
  let key = r.nextKey();
  while (key !== null) {
    if (r.isString()) {
      req.labelKeys.push(key);
      req.labelValues.push(r.string());
    } else {
      if (problem === null) {
        problem = "cannot decode the object: metadata.labels[" + quote(key) + "]: expected a string, found " + r.describe();
      }
      r.skip();
    }
    key = r.nextKey();
  }
  return problem;
}
