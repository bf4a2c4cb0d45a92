//! The `portcullis` binary: parse the command line and run it.

#[global_allocator]
static ALLOCATOR: portcullis::allocator::Allocator = portcullis::allocator::Allocator;

fn main() -> std::process::ExitCode {
    give_large_blocks_back_to_the_os();
    portcullis::cli::main()
}

/// Every Argon2 hash allocates its whole memory cost (19 MiB by default) at once, on a
/// blocking-pool thread. After the first such block is freed, glibc raises its mmap
/// threshold above that size and from then on carves the blocks out of per-thread heaps
/// it never shrinks: a flood of wrong passwords grew the process to 750 MiB (see
/// BENCHMARKS.md). A fixed threshold keeps large blocks on mmap, returned to the OS when
/// freed; small allocations are unaffected.
fn give_large_blocks_back_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
