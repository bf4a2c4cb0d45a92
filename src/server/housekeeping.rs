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
pub async fn run(accounts: Arc<Accounts>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let accounts = accounts.clone();
        // A write transaction that scans every session and ends in an fsync: not on a
        // worker thread that is serving requests.
        let swept = tokio::task::spawn_blocking(move || accounts.sweep()).await;
        match swept {
            Ok(Ok(Swept {
                expired: 0,
                audit_events: 0,
            })) => {}
            Ok(Ok(Swept {
                expired,
                audit_events,
            })) => tracing::info!(
                expired,
                audit_events,
                "removed expired sessions, sign-in codes and activation links, and audit events past their retention"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not remove expired records; trying again later")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the store sweep stopped unexpectedly; trying again later")
            }
        }
    }
}

/// Reads the signing keys again every `every` (see [`crate::identity::LiveKeys`]), so a
/// rotation started with `portcullis keys rotate` is published and later signs without
/// a restart. Each change goes to the log and the audit trail.
pub async fn watch_keys(state: Arc<AppState>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the keys were loaded at start.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let reloading = state.clone();
        // Reading the key files and writing the audit event both block.
        let reloaded = tokio::task::spawn_blocking(move || {
            let changed = reloading.keys.reload(reloading.accounts.clock.now())?;
            if let Some(changed) = &changed {
                tracing::info!(signing = %changed.signing, "the assertion signing keys changed");
                let detail = format!(
                    "signing with {}; published: {}",
                    changed.signing,
                    changed.published.join(", ")
                );
                reloading.accounts.audit(
                    Actor::System,
                    "keys.change",
                    None,
                    "ok",
                    Some(detail),
                    None,
                );
            }
            Ok::<_, crate::identity::IdentityError>(changed)
        })
        .await;
        match reloaded {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the signing keys again; still using the ones loaded")
            }
            Err(e) => tracing::warn!(error = %e, "reading the signing keys stopped unexpectedly"),
        }
    }
}
