// The Portcullis ABI v1 exports (policies-wasm/sdk/ABI.md §2.2), in
// AssemblyScript. The decision itself is in `policy.ts` and `settings.ts`.
//
// Memory: the host calls `portcullis_alloc(len)` once, writes the input there
// and calls one of the two evaluating exports with that buffer. The answer is
// a UTF-8 buffer left on the heap; its address and length go back packed in
// an i64. Nothing is freed: the module is compiled with the `stub` runtime (a
// bump allocator with no garbage collector), and the host discards the whole
// instance after the call.

// The abort handler named in asconfig.json lives there.
import "./host";
import { Reader, jsonString } from "./json";
import { evaluate } from "./policy";
import { readSettings } from "./settings";

/** The ABI version this module speaks. */
export function portcullis_abi_version(): i32 {
  return 1;
}

/** Room for `len` bytes that the host writes the input into. */
export function portcullis_alloc(len: i32): usize {
  // 1 GiB is more than any memory cap allows (and than the stub runtime's
  // largest block, which it would abort on): 0 tells the host at once.
  if (len < 0 || len >= 1 << 30) return 0;
  // The stub runtime grows memory as needed. If the host's memory cap refuses
  // the growth it traps, which the host reports as the memory limit.
  return heap.alloc(<usize>len);
}

/** `{"request": ..., "settings": ...}` in, a verdict or `{"error": ...}` out. */
export function portcullis_validate(ptr: usize, len: i32): i64 {
  return answer(evaluate(new Reader(ptr, <usize>len)));
}

/** The settings object in, `{"valid": ...}` out; called once at load. */
export function portcullis_validate_settings(ptr: usize, len: i32): i64 {
  let r = new Reader(ptr, <usize>len);
  let settings = readSettings(r);
  r.finish();
  if (r.failed) return answer("{\"valid\":false,\"message\":" + jsonString("cannot decode the settings: " + r.error!) + "}");
  if (settings.problems.length > 0) {
    return answer("{\"valid\":false,\"message\":" + jsonString(settings.problems.join("; ")) + "}");
  }
  return answer("{\"valid\":true}");
}

/**
 * Leaves `json` in memory as UTF-8 and packs its address and length:
 * `(ptr << 32) | len`, both halves zero-extended (ABI.md §2.3).
 */
function answer(json: string): i64 {
  // REPLACE: a lone surrogate becomes U+FFFD; the default (WTF-8) would not be UTF-8.
  let bytes = String.UTF8.encode(json, false, String.UTF8.ErrorMode.REPLACE);
  let ptr = changetype<usize>(bytes);
  return <i64>((<u64>ptr << 32) | <u64>(<u32>bytes.byteLength));
}
