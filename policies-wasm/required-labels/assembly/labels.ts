// Kubernetes label keys and values, checked as the API server checks them
// (k8s.io/apimachinery/pkg/util/validation: IsQualifiedName, IsValidLabelValue).

/** Longest name part of a key, and longest value. */
const MAX_NAME: i32 = 63;
/** Longest prefix (a DNS subdomain) of a key. */
const MAX_PREFIX: i32 = 253;

const NAME_CHARS: string =
  "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

function isAlphanumeric(c: i32): bool {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

function isLowerAlphanumeric(c: i32): bool {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7a);
}

/** `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a key, and a non-empty value. */
function isName(s: string): bool {
  let n = s.length;
  if (n == 0 || !isAlphanumeric(s.charCodeAt(0)) || !isAlphanumeric(s.charCodeAt(n - 1))) return false;
  for (let i = 1; i < n - 1; i++) {
    let c = s.charCodeAt(i);
    if (!isAlphanumeric(c) && c != 0x2d && c != 0x5f && c != 0x2e) return false;
  }
  return true;
}

/** RFC 1123 subdomain: dot-separated labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`. */
function isDnsSubdomain(s: string): bool {
  let labelStart = 0;
  for (let i = 0; i <= s.length; i++) {
    if (i < s.length && s.charCodeAt(i) != 0x2e) continue;
    if (i == labelStart) return false; // empty label
    if (!isLowerAlphanumeric(s.charCodeAt(labelStart)) || !isLowerAlphanumeric(s.charCodeAt(i - 1))) return false;
    for (let j = labelStart + 1; j < i - 1; j++) {
      let c = s.charCodeAt(j);
      if (!isLowerAlphanumeric(c) && c != 0x2d) return false;
    }
    labelStart = i + 1;
  }
  return true;
}

/** Why `key` is not a valid label key, or null when it is. */
export function labelKeyProblem(key: string): string | null {
  if (key.length == 0) return "a label key must not be empty";
  let name = key;
  let slash = key.indexOf("/");
  if (slash >= 0) {
    let prefix = key.substring(0, slash);
    name = key.substring(slash + 1);
    if (prefix.length == 0) return "the prefix before '/' is empty";
    if (prefix.length > MAX_PREFIX) return "the prefix is longer than " + MAX_PREFIX.toString() + " characters";
    if (!isDnsSubdomain(prefix)) {
      return "the prefix must be a DNS subdomain: lowercase alphanumeric characters, '-' or '.', " +
        "starting and ending with an alphanumeric character";
    }
    if (name.length == 0) return "the name after '/' is empty";
  }
  if (name.length > MAX_NAME) return "the name part is longer than " + MAX_NAME.toString() + " characters";
  if (!isName(name)) return "the name part " + NAME_CHARS;
  return null;
}

/** Why `value` cannot be an allowed value, or null when it can (empty values are refused). */
export function allowedValueProblem(value: string): string | null {
  if (value.length == 0) return "an allowed value must not be empty";
  if (value.length > MAX_NAME) return "a label value is at most " + MAX_NAME.toString() + " characters";
  if (!isName(value)) return "a label value " + NAME_CHARS;
  return null;
}
