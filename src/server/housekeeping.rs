//! Removes what has expired from the store: sessions past their lifetime (with their
//! per-app children), unused sign-in hand-off codes and activation links, and audit
//! events older than `security.audit_retention`. Nothing else deletes them, so without
//! this the store would grow with every sign-in for as long as the server runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::accounts::{Accounts, Actor, Swept};
use crate::state::AppState;

/// How often the store is swept; the first sweep runs at start.
pub const EVERY: Duration = Duration::from_secs(10 * 60);

/// Sweeps every `every` until `stop` says the server is stopping.
pub async fn run(accounts: Arc<Accounts>, every: Duration, stop: watch::Receiver<bool>) {
    repeat(every, First::Now, stop, "store sweep", move || {
        match accounts.sweep() {
            Ok(Swept {
                expired: 0,
                audit_events: 0,
            }) => {}
            Ok(Swept {
                expired,
                audit_events,
            }) => tracing::info!(
                expired,
                audit_events,
                "removed expired sessions, sign-in codes and activation links, and audit events past their retention"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove expired records; trying again later")
            }
        }
    })
    .await;
}

/// Reads the signing keys again every `every` (see [`crate::identity::LiveKeys`]), so a
/// rotation started with `portcullis keys rotate` is published and later signs without
/// a restart. Each change goes to the log and the audit trail.
pub async fn watch_keys(state: Arc<AppState>, every: Duration, stop: watch::Receiver<bool>) {
    // The keys were loaded at start.
    repeat(every, First::AfterOneInterval, stop, "signing key re-read", move || {
        match state.keys.reload(state.accounts.clock.now()) {
            Ok(None) => {}
            Ok(Some(changed)) => {
                tracing::info!(signing = %changed.signing, "the assertion signing keys changed");
                let detail = format!(
                    "signing with {}; published: {}",
                    changed.signing,
                    changed.published.join(", ")
                );
                state
                    .accounts
                    .audit(Actor::System, "keys.change", None, "ok", Some(detail), None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the signing keys again; still using the ones loaded")
            }
        }
    })
    .await;
}

enum First {
    Now,
    AfterOneInterval,
}

/// Runs `job` every `every` on the blocking pool (it reads and writes files and the
/// store: not work for a thread that serves requests) until `stop` turns true.
async fn repeat(
    every: Duration,
    first: First,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    job: impl Fn() + Clone + Send + 'static,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let First::AfterOneInterval = first {
        // An interval's first tick is immediate.
        tick.tick().await;
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = tokio::task::spawn_blocking(job.clone()).await {
            tracing::warn!(error = %e, task = what, "stopped unexpectedly; trying again later");
        }
    }
}
