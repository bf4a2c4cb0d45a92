//! The tokio runtime the server runs on.
//!
//! tokio's work-stealing scheduler runs a task woken by another task on the same worker
//! next, from a "LIFO slot" that other workers cannot steal from. A proxied request is a
//! ping-pong between two tasks (the client connection and the upstream connection), so
//! that slot is almost always full: when the kernel preempts a worker — on a small
//! machine it shares its cores with the backends — the task in the slot waits for the
//! worker to come back instead of moving to an idle one. With the slot disabled the p99
//! of the public-path benchmark fell from about 6.5 ms to 3–5 ms and throughput rose
//! 5–8 % (BENCHMARKS.md, "Changes that moved the figures").
//!
//! `disable_lifo_slot` is behind tokio's `tokio_unstable` cfg, which `.cargo/config.toml`
//! sets for every build in this repository. A build without it (for example with
//! `RUSTFLAGS` set in the environment, which replaces that setting) still works, with the
//! slot on.

use tokio::runtime::{Builder, Runtime};

pub fn build() -> std::io::Result<Runtime> {
    builder().build()
}

/// How many tasks a worker runs before it looks for new I/O events while it still has
/// work queued (tokio's default is 61). Finishing more of the requests already in hand
/// before taking on new ones shortened the tail: in 9 paired public-path runs the p99
/// was lower with 200 in 8 (median about a quarter lower), throughput unchanged. A worker
/// with nothing queued looks at once, whatever this is.
const TASKS_BETWEEN_IO_POLLS: u32 = 200;

fn builder() -> Builder {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all().event_interval(TASKS_BETWEEN_IO_POLLS);
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// With the LIFO slot, the task spawned last runs first; without it, in order. One
    /// worker, so no other worker can steal and change the order.
    #[test]
    fn tasks_woken_on_a_worker_run_in_the_order_they_were_woken() {
        let runtime = builder().worker_threads(1).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let seen = order.clone();
        runtime.block_on(async move {
            tokio::spawn(async move {
                let first = {
                    let seen = seen.clone();
                    tokio::spawn(async move { seen.lock().unwrap().push("first") })
                };
                let second = {
                    let seen = seen.clone();
                    tokio::spawn(async move { seen.lock().unwrap().push("second") })
                };
                (first, second)
            })
            .await
            .map(|(a, b)| async move {
                a.await.unwrap();
                b.await.unwrap();
            })
            .unwrap()
            .await;
        });
        assert_eq!(
            *order.lock().unwrap(),
            ["first", "second"],
            "the LIFO slot is on: was this built without `--cfg tokio_unstable` \
             (.cargo/config.toml missing, or RUSTFLAGS set in the environment)?"
        );
    }
}
