// What the module imports from the host, and the abort handler that the
// compiler is told to use (`--use abort=assembly/host/abort` in asconfig.json)
// instead of importing `env.abort`, which the host refuses (ABI.md §2.1).

/** `portcullis::log(level, ptr, len)`: one UTF-8 line to the server's log. */
// @ts-ignore: decorator
@external("portcullis", "log")
declare function hostLog(level: i32, ptr: usize, len: usize): void;

/** Log levels of ABI.md §3. */
export const ERROR: i32 = 0;
export const WARN: i32 = 1;
export const INFO: i32 = 2;
export const DEBUG: i32 = 3;

/** Writes `line` to the server's log (AssemblyScript strings are UTF-16: encode first). */
export function log(level: i32, line: string): void {
  let bytes = String.UTF8.encode(line, false, String.UTF8.ErrorMode.REPLACE);
  hostLog(level, changetype<usize>(bytes), <usize>bytes.byteLength);
}

/**
 * Called for failed assertions, out-of-range indexes and `throw`: logs where,
 * then traps. The host reports the trap as the cause `trap` ("the guest
 * panicked or aborted") and the policy's failurePolicy answers.
 */
export function abort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  log(
    ERROR,
    "aborted: " + (message !== null ? message : "no message") + " at " +
      (fileName !== null ? fileName : "?") + ":" + line.toString() + ":" + column.toString(),
  );
  unreachable();
}
