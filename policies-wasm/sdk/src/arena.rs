//! The guest's global allocator: a bump arena in the module's own zeroed
//! data, made for instances that live for one request.
//!
//! The host gives every evaluation a fresh instance and throws it away after,
//! so freeing memory is wasted work. Allocating from a static arena (part of
//! the module's initial memory, so the guest never calls `memory.grow` for
//! ordinary requests) is a pointer bump, and a fresh instance's untouched
//! arena pages cost nothing. Only the most recent allocation can be freed or
//! grown in place; anything the arena cannot hold goes to the standard
//! allocator (which grows memory, up to the host's memory cap).
//!
//! Enabled by the `arena` feature (on by default) on `wasm32` only.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};

/// Arena size: a 3 KB object decodes in a few dozen KiB; big pod specs in a few hundred.
const ARENA_BYTES: usize = 4 << 20;

#[repr(C, align(16))]
struct Bytes(UnsafeCell<[u8; ARENA_BYTES]>);

/// Bump allocator over a static arena, falling back to [`System`].
pub struct Arena {
    bytes: Bytes,
    next: Cell<usize>,
}

// SAFETY: wasm32-unknown-unknown policies are single-threaded (no threads
// proposal); the allocator is never touched from two threads.
unsafe impl Sync for Arena {}

impl Arena {
    /// An empty arena.
    pub const fn new() -> Self {
        Self { bytes: Bytes(UnsafeCell::new([0; ARENA_BYTES])), next: Cell::new(0) }
    }

    fn base(&self) -> usize {
        self.bytes.0.get() as usize
    }

    fn contains(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.base() && p < self.base() + ARENA_BYTES
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("used", &self.next.get()).field("capacity", &ARENA_BYTES).finish()
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every pointer handed out lies inside the arena, is aligned as the
// layout asks, and does not overlap a live allocation (the bump only moves
// back over the most recent allocation when that one is freed or resized).
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let start = (self.base() + self.next.get()).next_multiple_of(layout.align());
        let end = start - self.base() + layout.size();
        if end <= ARENA_BYTES {
            self.next.set(end);
            start as *mut u8
        } else {
            // SAFETY: forwarding a valid layout.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.contains(ptr) {
            if ptr as usize + layout.size() == self.base() + self.next.get() {
                self.next.set(ptr as usize - self.base());
            }
        } else {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let offset = ptr as usize - self.base();
        let is_last = self.contains(ptr) && offset + layout.size() == self.next.get();
        if is_last && offset + new_size <= ARENA_BYTES {
            self.next.set(offset + new_size);
            return ptr;
        }
        if !self.contains(ptr) {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_size` with the old alignment is a valid layout (the caller
        // guarantees it does not overflow); the copy stays within both blocks.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(all(target_arch = "wasm32", feature = "arena"))]
#[global_allocator]
static GLOBAL: Arena = Arena::new();
