//! The binary's global allocator: the system's (glibc's), with a small stock of 8 KiB
//! blocks on each thread that serves connections.
//!
//! hyper gives each HTTP/1.1 connection an 8 KiB read buffer and, for nearly every
//! request, a fresh one: it reads again while the head it has just parsed still points
//! into the old buffer. A proxied request does that on both sides, client and upstream.
//! glibc serves blocks that large from its shared bins (its per-thread cache stops at
//! 1 KiB), so allocating and freeing the two cost about 1,200 of the 36,800 user-space
//! instructions of a proxied request (`bench/instructions.sh`). Here a freed 8 KiB block
//! waits on the thread that freed it for the next one asked for there: 36,847 -> 36,057.
//!
//! Only threads that called [`keep_stock_on_this_thread`] keep a stock: the runtime's
//! workers, which serve connections and live as long as the server. A blocking-pool
//! thread exits when it has been idle a while, and a stock there would be lost with it.
//! A stock holds at most [`STOCK`] blocks (128 KiB).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

/// The system allocator with a per-thread stock of 8 KiB blocks.
pub struct Allocator;

const BLOCK: usize = 8192;
pub const STOCK: usize = 16;

struct Stock {
    kept_here: Cell<bool>,
    len: Cell<usize>,
    blocks: [Cell<*mut u8>; STOCK],
}

thread_local! {
    // No destructor and a constant initial value: reading it never allocates, which an
    // allocator must not do.
    static STOCK_HERE: Stock = const {
        Stock {
            kept_here: Cell::new(false),
            len: Cell::new(0),
            blocks: [const { Cell::new(ptr::null_mut()) }; STOCK],
        }
    };
}

/// Lets the current thread keep freed 8 KiB blocks for reuse. For threads that live as
/// long as the process.
pub fn keep_stock_on_this_thread() {
    let _ = STOCK_HERE.try_with(|stock| stock.kept_here.set(true));
}

/// The blocks kept: 8 KiB with an alignment `System` meets with a plain `malloc` on
/// every target (hyper's buffers ask for 1). Only on Linux with glibc, where this was
/// measured and where thread-locals are native (reading one never allocates).
fn is_stocked(layout: Layout) -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        && layout.size() == BLOCK
        && layout.align() <= 8
}

fn take() -> Option<*mut u8> {
    STOCK_HERE
        .try_with(|stock| {
            let len = stock.len.get();
            let last = len.checked_sub(1)?;
            stock.len.set(last);
            Some(stock.blocks[last].get())
        })
        .ok()
        .flatten()
}

fn keep(block: *mut u8) -> bool {
    STOCK_HERE
        .try_with(|stock| {
            let len = stock.len.get();
            if !stock.kept_here.get() || len == STOCK {
                return false;
            }
            stock.blocks[len].set(block);
            stock.len.set(len + 1);
            true
        })
        .unwrap_or(false)
}

// SAFETY: every block handed out is one `System` allocated for a layout of the same size
// and an alignment of at most 8, which `System` serves with `malloc` (aligned to at least
// 8 everywhere), so it meets any such layout; every block is given back to `System` or
// kept for a later request of that size and alignment.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_stocked(layout) {
            if let Some(block) = take() {
                return block;
            }
        }
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_stocked(layout) && keep(ptr) {
            return;
        }
        // SAFETY: `ptr` came from `System` with this layout (see above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on; stocked blocks are not zeroed.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with this layout, stocked or not.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn block() -> Layout {
        Layout::from_size_align(BLOCK, 8).unwrap()
    }

    fn stocked() -> usize {
        STOCK_HERE.with(|stock| stock.len.get())
    }

    #[test]
    fn a_freed_block_is_reused_on_a_thread_that_keeps_a_stock() {
        std::thread::spawn(|| {
            keep_stock_on_this_thread();
            // SAFETY: allocations are freed with the layouts they were made with.
            unsafe {
                let first = Allocator.alloc(block());
                first.write_bytes(7, BLOCK);
                Allocator.dealloc(first, block());
                assert_eq!(stocked(), 1);
                let second = Allocator.alloc(block());
                assert_eq!(second, first);
                assert_eq!(stocked(), 0);
                // Other sizes are not kept.
                let small = Layout::from_size_align(BLOCK - 1, 8).unwrap();
                let other = Allocator.alloc(small);
                Allocator.dealloc(other, small);
                assert_eq!(stocked(), 0);
                Allocator.dealloc(second, block());
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn threads_that_do_not_keep_a_stock_give_blocks_back() {
        std::thread::spawn(|| {
            // SAFETY: as above.
            unsafe {
                let first = Allocator.alloc(block());
                Allocator.dealloc(first, block());
            }
            assert_eq!(stocked(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_stock_is_bounded_and_blocks_stay_usable() {
        std::thread::spawn(|| {
            keep_stock_on_this_thread();
            // SAFETY: as above; each block is written whole before it is freed.
            unsafe {
                let blocks: Vec<_> = (0..STOCK + 4)
                    .map(|i| {
                        let b = Allocator.alloc(block());
                        b.write_bytes(i as u8, BLOCK);
                        b
                    })
                    .collect();
                for b in &blocks {
                    Allocator.dealloc(*b, block());
                }
                assert_eq!(stocked(), STOCK);
                // A stocked block grows like any other.
                let reused = Allocator.alloc(block());
                let grown = Allocator.realloc(reused, block(), 4 * BLOCK);
                grown.add(4 * BLOCK - 1).write(1);
                Allocator.dealloc(grown, Layout::from_size_align(4 * BLOCK, 8).unwrap());
                // A zeroed block is zeroed even when blocks are in stock.
                let zeroed = Allocator.alloc_zeroed(block());
                assert!(std::slice::from_raw_parts(zeroed, BLOCK)
                    .iter()
                    .all(|b| *b == 0));
                Allocator.dealloc(zeroed, block());
            }
        })
        .join()
        .unwrap();
    }
}
