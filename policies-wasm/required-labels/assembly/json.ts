// A pull reader over JSON bytes in linear memory, and the string escaping
// the answers need.
//
// The policy reads a handful of fields out of an AdmissionRequest that may be
// a megabyte of managedFields and annotations. Instead of building a tree of
// the whole input, the caller walks the members it cares about and skips the
// rest; skipping is a byte scan, without recursion and without allocating.
//
// Errors are sticky: the first one is kept in `error`, the position jumps to
// the end, and from then on every read returns an empty value and every loop
// (`nextKey`, `nextItem`) ends. Callers check `failed` once at the end.

// @ts-ignore: decorator
@inline const QUOTE: u8 = 0x22;
// @ts-ignore: decorator
@inline const BACKSLASH: u8 = 0x5c;

export class Reader {
  private start: usize;
  private pos: usize;
  private end: usize;
  /** A value was just read: the next member or item needs a comma first. */
  private needComma: bool = false;
  /** The first syntax error, with its byte offset. */
  error: string | null = null;

  constructor(ptr: usize, len: usize) {
    this.start = ptr;
    this.pos = ptr;
    this.end = ptr + len;
  }

  get failed(): bool {
    return this.error !== null;
  }

  fail(what: string): void {
    if (this.error === null) {
      this.error = what + " at byte " + (this.pos - this.start).toString();
    }
    this.pos = this.end;
  }

  /** The next byte after whitespace, or 0 at the end. */
  peek(): u8 {
    let pos = this.pos;
    while (pos < this.end) {
      let c = load<u8>(pos);
      if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) break;
      pos++;
    }
    this.pos = pos;
    return pos < this.end ? load<u8>(pos) : 0;
  }

  /** What the next value is, for messages: "a string", "a list", ... */
  describe(): string {
    let c = this.peek();
    if (c == 0x7b) return "an object";
    if (c == 0x5b) return "a list";
    if (c == QUOTE) return "a string";
    if (c == 0x74 || c == 0x66) return "a boolean";
    if (c == 0x6e) return "null";
    return "a number";
  }

  isObject(): bool {
    return this.peek() == 0x7b;
  }

  isArray(): bool {
    return this.peek() == 0x5b;
  }

  isString(): bool {
    return this.peek() == QUOTE;
  }

  /** Consumes `null` if that is the next value. */
  readNull(): bool {
    if (this.peek() != 0x6e) return false;
    this.literal("null");
    return true;
  }

  /** Consumes `{`. Then call `nextKey` until it returns null. */
  beginObject(): bool {
    if (this.peek() != 0x7b) {
      this.fail("expected an object");
      return false;
    }
    this.pos++;
    this.needComma = false;
    return true;
  }

  /** The next member's name (its value is to be read or skipped next), or null after `}`. */
  nextKey(): string | null {
    if (this.failed) return null;
    let c = this.peek();
    if (c == 0x7d) {
      this.pos++;
      this.needComma = true;
      return null;
    }
    if (this.needComma) {
      if (c != 0x2c) {
        this.fail("expected ',' or '}'");
        return null;
      }
      this.pos++;
      c = this.peek();
    }
    if (c != QUOTE) {
      this.fail("expected a field name");
      return null;
    }
    let key = this.string();
    if (this.peek() != 0x3a) {
      this.fail("expected ':'");
      return null;
    }
    this.pos++;
    this.needComma = false;
    return key;
  }

  /** Consumes `[`. Then call `nextItem` until it returns false. */
  beginArray(): bool {
    if (this.peek() != 0x5b) {
      this.fail("expected a list");
      return false;
    }
    this.pos++;
    this.needComma = false;
    return true;
  }

  /** True when another item follows (read or skip it next); false after `]`. */
  nextItem(): bool {
    if (this.failed) return false;
    let c = this.peek();
    if (c == 0x5d) {
      this.pos++;
      this.needComma = true;
      return false;
    }
    if (this.needComma) {
      if (c != 0x2c) {
        this.fail("expected ',' or ']'");
        return false;
      }
      this.pos++;
    }
    this.needComma = false;
    return true;
  }

  /** A string value; "" (and an error) if the next value is not a string. */
  string(): string {
    if (this.peek() != QUOTE) {
      this.fail("expected a string");
      return "";
    }
    let from = ++this.pos;
    let escaped = false;
    let pos = from;
    while (pos < this.end) {
      let c = load<u8>(pos);
      if (c == QUOTE) break;
      if (c == BACKSLASH) {
        escaped = true;
        pos++;
      }
      pos++;
    }
    if (pos >= this.end) {
      this.fail("unterminated string");
      return "";
    }
    this.pos = pos + 1;
    this.needComma = true;
    if (!escaped) return String.UTF8.decodeUnsafe(from, pos - from);
    return unescape(from, pos);
  }

  /** Skips the next value, whatever it is. */
  skip(): void {
    let c = this.peek();
    if (c == QUOTE) {
      this.string();
      return;
    }
    if (c == 0x7b || c == 0x5b) {
      this.skipContainer();
    } else if (c == 0x74) {
      this.literal("true");
    } else if (c == 0x66) {
      this.literal("false");
    } else if (c == 0x6e) {
      this.literal("null");
    } else if (c == 0x2d || (c >= 0x30 && c <= 0x39)) {
      let pos = this.pos;
      while (pos < this.end && isNumberByte(load<u8>(pos))) pos++;
      this.pos = pos;
    } else {
      this.fail("expected a value");
      return;
    }
    this.needComma = true;
  }

  /** After the top-level value: only whitespace may follow. */
  finish(): void {
    if (this.peek() != 0 || this.pos < this.end) this.fail("trailing characters");
  }

  private skipContainer(): void {
    let pos = this.pos;
    let depth = 0;
    while (pos < this.end) {
      let c = load<u8>(pos++);
      if (c == QUOTE) {
        while (pos < this.end) {
          let s = load<u8>(pos++);
          if (s == BACKSLASH) pos++;
          else if (s == QUOTE) break;
        }
      } else if (c == 0x7b || c == 0x5b) {
        depth++;
      } else if (c == 0x7d || c == 0x5d) {
        if (--depth == 0) {
          this.pos = pos;
          return;
        }
      }
    }
    this.fail("unterminated object or list");
  }

  private literal(word: string): void {
    let n = <usize>word.length;
    if (this.end - this.pos < n) {
      this.fail("expected a value");
      return;
    }
    for (let i: usize = 0; i < n; i++) {
      if (<i32>load<u8>(this.pos + i) != word.charCodeAt(<i32>i)) {
        this.fail("expected a value");
        return;
      }
    }
    this.pos += n;
    this.needComma = true;
  }
}

function isNumberByte(c: u8): bool {
  return (c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x2b || c == 0x2e || c == 0x65 || c == 0x45;
}

function hex(c: u8): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return -1;
}

/** Four hex digits at `at` (bounds checked by the caller), or -1. */
function hex4(at: usize): i32 {
  let value = 0;
  for (let i: usize = 0; i < 4; i++) {
    let digit = hex(load<u8>(at + i));
    if (digit < 0) return -1;
    value = (value << 4) | digit;
  }
  return value;
}

/** The string between `from` and the closing quote at `to`, with escapes. */
function unescape(from: usize, to: usize): string {
  let out = "";
  let run = from;
  let pos = from;
  while (pos < to) {
    if (load<u8>(pos) != BACKSLASH) {
      pos++;
      continue;
    }
    out += String.UTF8.decodeUnsafe(run, pos - run);
    let c = pos + 1 < to ? load<u8>(pos + 1) : 0;
    pos += 2;
    if (c == 0x6e) out += "\n";
    else if (c == 0x74) out += "\t";
    else if (c == 0x72) out += "\r";
    else if (c == 0x62) out += "\b";
    else if (c == 0x66) out += "\f";
    else if (c == 0x75) {
      let unit = pos + 4 <= to ? hex4(pos) : -1;
      if (unit < 0) {
        out += "\uFFFD";
      } else {
        pos += 4;
        if (unit >= 0xd800 && unit <= 0xdbff) {
          // A high surrogate pairs with a following \uDC00-\uDFFF; alone it
          // would not encode as UTF-8, so it becomes U+FFFD.
          let low = pos + 6 <= to && load<u8>(pos) == BACKSLASH && load<u8>(pos + 1) == 0x75 ? hex4(pos + 2) : -1;
          if (low >= 0xdc00 && low <= 0xdfff) {
            out += String.fromCharCodes([unit, low]);
            pos += 6;
          } else {
            out += "\uFFFD";
          }
        } else if (unit >= 0xdc00 && unit <= 0xdfff) {
          out += "\uFFFD";
        } else {
          out += String.fromCharCode(unit);
        }
      }
    } else {
      // \" \\ \/ (and anything else) stand for the character itself.
      out += String.fromCharCode(c);
    }
    run = pos;
  }
  return out + String.UTF8.decodeUnsafe(run, to - run);
}

/** `s` as a JSON string literal. */
export function jsonString(s: string): string {
  let out = "\"";
  let run = 0;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0x20 && c != 0x22 && c != 0x5c) continue;
    out += s.substring(run, i);
    if (c == 0x22) out += "\\\"";
    else if (c == 0x5c) out += "\\\\";
    else if (c == 0x0a) out += "\\n";
    else if (c == 0x09) out += "\\t";
    else if (c == 0x0d) out += "\\r";
    else out += "\\u00" + (c < 0x10 ? "0" : "") + c.toString(16);
    run = i + 1;
  }
  return out + s.substring(run) + "\"";
}

/**
 * `s` quoted for a message the way the Rust policies quote (`{:?}`):
 * `"shop/web"`, with quotes, backslashes and control characters escaped.
 */
export function quote(s: string): string {
  let out = "\"";
  let run = 0;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0x20 && c != 0x22 && c != 0x5c && c != 0x7f) continue;
    out += s.substring(run, i);
    if (c == 0x22) out += "\\\"";
    else if (c == 0x5c) out += "\\\\";
    else if (c == 0x0a) out += "\\n";
    else if (c == 0x09) out += "\\t";
    else if (c == 0x0d) out += "\\r";
    else out += "\\u{" + c.toString(16) + "}";
    run = i + 1;
  }
  return out + s.substring(run) + "\"";
}
