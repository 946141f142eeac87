// The compiled module driven the way the host drives it (ABI.md §4.1): a
// fresh instance per call, portcullis_alloc, write, call, unpack, decode.
// These cover what cases.yaml cannot: settings refused at load, and input
// the fixtures do not contain (escapes, odd shapes, malformed JSON).
// Run with `npm test` (it builds first).

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const wasm = new WebAssembly.Module(readFileSync(new URL("../build/required-labels.wasm", import.meta.url)));
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** One call of `exportName` on `input` in a fresh instance; the answer, parsed, and the log lines. */
function call(exportName, input) {
  const logs = [];
  let memory;
  const { exports } = new WebAssembly.Instance(wasm, {
    portcullis: {
      log: (level, ptr, len) => logs.push([level, utf8.decode(new Uint8Array(memory.buffer, ptr >>> 0, len >>> 0))]),
    },
  });
  memory = exports.memory;
  if (exportName === "portcullis_validate_settings") assert.equal(exports.portcullis_abi_version(), 1);
  const bytes = new TextEncoder().encode(input);
  const ptr = exports.portcullis_alloc(bytes.length);
  assert.notEqual(ptr, 0);
  new Uint8Array(memory.buffer, ptr >>> 0, bytes.length).set(bytes);
  const packed = BigInt.asUintN(64, exports[exportName](ptr, bytes.length));
  const outPtr = Number(packed >> 32n);
  const outLen = Number(packed & 0xffffffffn);
  const text = utf8.decode(new Uint8Array(memory.buffer, outPtr, outLen));
  return { answer: JSON.parse(text), text, logs };
}

const settings = (json) => call("portcullis_validate_settings", json).answer;

function review(object, extra = {}) {
  return {
    uid: "1b4f7c2e-0d9a-4e55-8f3b-6a2c1d0e9f87",
    kind: { group: "apps", version: "v1", kind: "Deployment" },
    resource: { group: "apps", version: "v1", resource: "deployments" },
    name: "web",
    namespace: "shop",
    operation: "CREATE",
    userInfo: { username: "kubernetes-admin" },
    object,
    ...extra,
  };
}

const validate = (request, s, space) =>
  call("portcullis_validate", JSON.stringify({ request, settings: s }, null, space)).answer;

test("valid settings are accepted", () => {
  for (const json of [
    '{"labels":["team"]}',
    '{"labels":["app.kubernetes.io/name","team"],"allowedValues":{"team":["payments","search"]}}',
    '{"allowedValues":{"team":["payments"]},"labels":["team"]}',
    '{"labels":["example.com/a_b.c-d","A9"],"allowedValues":null}',
  ]) {
    assert.deepEqual(settings(json), { valid: true }, json);
  }
});

test("bad settings are refused naming the field", () => {
  const cases = [
    ["{}", "labels: required"],
    ['{"labels":[]}', "labels: must list at least one label key"],
    ['{"labels":"team"}', "labels: expected a list of label keys, found a string"],
    ['{"labels":["team"],"lables":["x"]}', "unknown field `lables`, expected `labels` or `allowedValues`"],
    ['{"labels":["team",7]}', "labels[1]: expected a label key (a string), found a number"],
    ['{"labels":["Team Name"]}', 'labels[0]: "Team Name" is not a valid label key: the name part must consist of alphanumeric'],
    ['{"labels":["Example.com/team"]}', 'labels[0]: "Example.com/team" is not a valid label key: the prefix must be a DNS subdomain'],
    ['{"labels":["/team"]}', "the prefix before '/' is empty"],
    ['{"labels":["example.com/"]}', "the name after '/' is empty"],
    ['{"labels":["a/b/c"]}', 'labels[0]: "a/b/c" is not a valid label key'],
    [`{"labels":["${"x".repeat(64)}"]}`, "the name part is longer than 63 characters"],
    [`{"labels":["${"a".repeat(254)}/x"]}`, "the prefix is longer than 253 characters"],
    ['{"labels":["team","team"]}', 'labels[1]: "team" is listed twice'],
    ['{"labels":["team"],"allowedValues":{"owner":["me"]}}', 'allowedValues["owner"]: owner is not one of labels'],
    ['{"labels":["team"],"allowedValues":{"team":[]}}', 'allowedValues["team"]: must list at least one value'],
    ['{"labels":["team"],"allowedValues":{"team":"payments"}}', 'allowedValues["team"]: expected a list of allowed values, found a string'],
    ['{"labels":["team"],"allowedValues":{"team":[""]}}', 'allowedValues["team"][0]: "" is not allowed here: an allowed value must not be empty'],
    ['{"labels":["team"],"allowedValues":{"team":["pay ments"]}}', 'allowedValues["team"][0]: "pay ments" is not allowed here'],
    ['{"labels":["team"],"allowedValues":["team"]}', "allowedValues: expected a map from label key"],
    ['{"labels":["team"]} {}', "cannot decode the settings: trailing characters at byte 20"],
    ['{"labels":["team"', "cannot decode the settings"],
  ];
  for (const [json, fragment] of cases) {
    const answer = settings(json);
    assert.equal(answer.valid, false, json);
    assert.ok(answer.message.includes(fragment), `${json}: ${answer.message} lacks ${fragment}`);
  }
});

test("a bad labels list is not reported again from allowedValues", () => {
  for (const json of ['{"labels":"team","allowedValues":{"team":["a"]}}', '{"labels":["Team Name"],"allowedValues":{"Team Name":["a"]}}']) {
    const { message } = settings(json);
    assert.doesNotMatch(message, /not one of labels/, json);
  }
});

test("every settings problem is reported", () => {
  const { message } = settings('{"labels":["ok","bad key"],"allowedValues":{"other":["x"]},"extra":1}');
  assert.match(message, /labels\[1\]: "bad key"/);
  assert.match(message, /allowedValues\["other"\]: other is not one of labels/);
  assert.match(message, /unknown field `extra`/);
});

const S = { labels: ["app.kubernetes.io/name", "team"], allowedValues: { team: ["payments", "search"] } };

test("labels are read through escapes and whitespace", () => {
  const object = { metadata: { name: "web", labels: { "app.kubernetes.io/name": "w\u00e9b \"x\"", "t\u0065am": "search" } } };
  // JSON.stringify leaves é as is; write the escapes by hand too.
  assert.deepEqual(validate(review(object), S, 2), { allowed: true });
  const escaped = JSON.stringify({ request: review(object), settings: S }).replace('"team":"search"', '"t\\u0065am":"se\\u0061rch"');
  assert.deepEqual(call("portcullis_validate", escaped).answer, { allowed: true });
});

test("a denial names the object and every problem, and is valid JSON however odd the values", () => {
  const object = { metadata: { name: "we\"b", labels: { team: "mark\u0000eting\ud83d\ude00" } } };
  const { allowed, message } = validate(review(object, { name: "we\"b" }), S);
  assert.equal(allowed, false);
  assert.equal(
    message,
    'Deployment "shop/we\\"b" does not carry the required labels (2 problems):\n' +
      "- label app.kubernetes.io/name is missing\n" +
      '- label team is "mark\\u{0}eting\ud83d\ude00", which is not allowed; use one of "payments", "search"',
  );
});

test("a lone surrogate escape is answered as U+FFFD, keeping the answer UTF-8", () => {
  const input = JSON.stringify({ request: review({ metadata: { labels: { team: "x" } } }), settings: S }).replace('"team":"x"', '"team":"\\ud800"');
  const { answer } = call("portcullis_validate", input);
  assert.match(answer.message, /label team is "\uFFFD"/);
});

test("no object, DELETE, CONNECT and subresources are allowed", () => {
  assert.deepEqual(validate(review(null), S), { allowed: true });
  const { object: _, ...noObject } = review(null);
  assert.deepEqual(validate(noObject, S), { allowed: true });
  assert.deepEqual(validate(review(null, { operation: "DELETE", oldObject: { metadata: {} } }), S), { allowed: true });
  assert.deepEqual(validate(review({ kind: "PodExecOptions" }, { operation: "CONNECT" }), S), { allowed: true });
  assert.deepEqual(validate(review({ kind: "Scale", metadata: { name: "web" } }, { operation: "UPDATE", subResource: "scale" }), S), {
    allowed: true,
  });
});

test("an object without metadata or labels lacks every label", () => {
  for (const object of [{}, { metadata: null }, { metadata: { labels: null } }, { metadata: { labels: {} } }]) {
    const { allowed, message } = validate(review(object), S);
    assert.equal(allowed, false);
    assert.match(message, /\(2 problems\)/);
  }
});

test("an object that is not an object is an error, not a verdict", () => {
  for (const [object, fragment] of [
    [[], "cannot decode the object: expected an object, found a list"],
    [{ metadata: "x" }, "metadata: expected an object, found a string"],
    [{ metadata: { labels: [] } }, "metadata.labels: expected a map of strings, found a list"],
    [{ metadata: { labels: { team: 1 } } }, 'metadata.labels["team"]: expected a string, found a number'],
  ]) {
    const answer = validate(review(object), S);
    assert.ok(answer.error?.includes(fragment), `${JSON.stringify(object)}: ${JSON.stringify(answer)}`);
  }
});

test("malformed input is an error", () => {
  for (const input of ["", "{", '{"request":{"object":{"metadata":{"labels":{"team" "x"}}}},"settings":{"labels":["team"]}}', "[]"]) {
    const { answer } = call("portcullis_validate", input);
    assert.ok(answer.error?.startsWith("cannot decode the policy input"), `${input}: ${JSON.stringify(answer)}`);
  }
});

test("a large object is read without trouble", () => {
  const managedFields = Array.from({ length: 2000 }, (_, i) => ({ manager: `m${i}`, fieldsV1: { "f:metadata": { "f:labels": { [`f:l${i}`]: {} } } } }));
  const object = { metadata: { name: "web", managedFields, labels: { "app.kubernetes.io/name": "web" } }, spec: { deep: "DEEP" } };
  // Nesting deeper than JavaScript's own JSON.stringify goes: skipped without recursion.
  const input = JSON.stringify({ request: review(object), settings: S }).replace('"DEEP"', "[".repeat(100000) + "]".repeat(100000));
  const { allowed, message } = call("portcullis_validate", input).answer;
  assert.equal(allowed, false);
  assert.match(message, /label team is missing/);
});

test("portcullis_alloc returns 0 for a length no memory cap allows", () => {
  const { exports } = new WebAssembly.Instance(wasm, { portcullis: { log: () => {} } });
  assert.equal(exports.portcullis_alloc(-1), 0);
  assert.equal(exports.portcullis_alloc(1 << 30), 0);
  assert.notEqual(exports.portcullis_alloc(70000), 0, "grows memory past the first page");
});
