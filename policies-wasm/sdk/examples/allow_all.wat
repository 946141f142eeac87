;; allow_all.wat: a complete Portcullis policy (ABI v1) in hand-written WAT.
;;
;; Admits every request: `portcullis_validate` ignores its input and returns
;; {"allowed":true} from a data segment. It takes no settings: it accepts
;; exactly `{}` (what the host sends when the config gives none) and refuses
;; anything else. Imports nothing.
;;
;; Build and try it (see ABI.md, "Testing a module locally"):
;;   wat2wasm allow_all.wat -o allow_all.wasm     # or: wasm-tools parse allow_all.wat -o allow_all.wasm
;;   webhook-server check --config cfg.yaml
(module
  ;; One page (64 KiB) to start with; the allocator grows it on demand.
  (memory (export "memory") 1)

  ;; Answers, at fixed addresses below the heap.
  (data (i32.const 16) "{\"allowed\":true}")                                    ;; 16 bytes at 16
  (data (i32.const 32) "{\"valid\":true}")                                      ;; 14 bytes at 32
  (data (i32.const 64) "{\"valid\":false,\"message\":\"allow-all takes no settings\"}") ;; 55 bytes at 64

  ;; Bump allocator: next free address. Nothing is ever freed; the host
  ;; discards the whole instance after one call.
  (global $heap (mut i32) (i32.const 1024))

  ;; () -> i32: the ABI version this module speaks.
  (func (export "portcullis_abi_version") (result i32)
    (i32.const 1))

  ;; (len) -> ptr: room for `len` bytes that the host will write; 0 on failure.
  (func (export "portcullis_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (if (i32.lt_s (local.get $len) (i32.const 0))
      (then (return (i32.const 0))))
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    ;; Grow memory when the block ends past it. memory.grow returns -1 when
    ;; the host's memory cap (memoryLimitMiB) refuses the growth.
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub
                  (i32.shr_u (i32.add (local.get $end) (i32.const 0xffff)) (i32.const 16))
                  (memory.size)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    ;; Keep the next block 8-byte aligned.
    (global.set $heap
      (i32.and (i32.add (local.get $end) (i32.const 7)) (i32.const -8)))
    (local.get $ptr))

  ;; (ptr, len) -> (out_ptr << 32) | out_len. The input
  ;; {"request": ..., "settings": ...} at ptr is ignored.
  (func (export "portcullis_validate") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.const 16) (i64.const 32))
      (i64.const 16)))

  ;; (ptr, len) -> (out_ptr << 32) | out_len. Called once when the policy is
  ;; loaded, with the settings JSON: valid only when it is exactly `{}`.
  (func (export "portcullis_validate_settings") (param $ptr i32) (param $len i32) (result i64)
    (if (result i64)
      (i32.and
        (i32.eq (local.get $len) (i32.const 2))
        (i32.eq (i32.load16_u (local.get $ptr)) (i32.const 0x7d7b))) ;; bytes '{' '}' read little-endian
      (then
        (i64.or (i64.shl (i64.const 32) (i64.const 32)) (i64.const 14)))
      (else
        (i64.or (i64.shl (i64.const 64) (i64.const 32)) (i64.const 55)))))
)
