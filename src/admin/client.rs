//! The CLI side of the admin commands: ask the running server over its socket, or, with
//! no server, open the store and run the command here (SPEC §6).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{execute, socket_path, Command, Outcome, Request};
use crate::accounts::{Accounts, AccountsError, Actor};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::store::StoreError;

/// Largest answer read from the server (an export of a big store).
const MAX_ANSWER_BYTES: u64 = 1024 * 1024 * 1024;
/// How long the server may take to answer. Most commands take milliseconds, but a large
/// CSV import commits user by user; a server silent for this long is stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A server that is starting holds the store a moment before its socket listens, and one
/// that is stopping a moment after its socket is gone: try a few times before giving up.
const ATTEMPTS: u32 = 10;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Where a command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Socket,
    Store,
}

/// Runs `request` through the running server if there is one, else on the store itself.
pub fn run(config: &Config, request: Request) -> Outcome {
    run_via(config, request).0
}

/// [`run`], also saying where the command ran (for tests and diagnostics).
pub fn run_via(config: &Config, request: Request) -> (Outcome, Option<Via>) {
    let sock = socket_path(config);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(RETRY_PAUSE);
        }
        match ask_server(&sock, &request) {
            Ok(Some(outcome)) => return (outcome, Some(Via::Socket)),
            Ok(None) => {}
            Err(message) => return (Outcome::fail(message), None),
        }
        match run_on_store(config, request.clone()) {
            Direct::Done(outcome) => return (outcome, Some(Via::Store)),
            Direct::InUse => {}
        }
    }
    (
        Outcome::fail(format!(
            "The store in {} is in use by another process, and no server answers on {}. If `portcullis serve` is starting or stopping, wait a moment and try again; otherwise stop the other process.",
            config.server.data_dir.display(),
            sock.display()
        )),
        None,
    )
}

/// Sends the request over the socket. `Ok(None)`: no server listens there.
fn ask_server(path: &Path, request: &Request) -> Result<Option<Outcome>, String> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            // No socket file, or a stale one left by a server that was killed.
            return Ok(None);
        }
        Err(e) => {
            return Err(format!(
                "The admin socket {} could not be reached: {e}. Run the command as the user the server runs as.",
                path.display()
            ))
        }
    };
    let lost = |e: std::io::Error| {
        format!(
            "The server stopped answering this admin command ({e}). Check with `portcullis user list` whether the change was made."
        )
    };
    let body = serde_json::to_vec(request)
        .map_err(|e| format!("The admin request could not be written ({e})."))?;
    let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    stream.write_all(&body).map_err(lost)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(lost)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .map_err(lost)?;
    if answer.is_empty() {
        // A server shutting down closes connections it will not serve.
        return Err(lost(std::io::ErrorKind::UnexpectedEof.into()));
    }
    serde_json::from_slice::<Outcome>(&answer)
        .map(Some)
        .map_err(|e| {
            format!(
                "The server's answer could not be read ({e}). Use the portcullis binary of the same version as the server."
            )
        })
}

enum Direct {
    Done(Outcome),
    /// Another process holds the store.
    InUse,
}

/// Opens the store (creating the data directory on first use) and runs the command here.
fn run_on_store(config: &Config, request: Request) -> Direct {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Direct::Done(Outcome::fail(format!("Could not start: {e}."))),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // `store import` checks the key against the export's canary instead, and may replace
    // the canary a fresh data directory got a moment ago.
    let opened = if matches!(request.command, Command::StoreImport) {
        Accounts::open_unchecked(config, clock)
    } else {
        Accounts::open(config, clock)
    };
    let accounts = match opened {
        Ok(a) => a,
        Err(AccountsError::Store(StoreError::InUse(_))) => return Direct::InUse,
        Err(e) => return Direct::Done(Outcome::fail(e)),
    };
    let known_apps: Vec<String> = config.apps.iter().map(|a| a.id.clone()).collect();
    Direct::Done(runtime.block_on(execute(&accounts, &known_apps, request, Actor::Cli)))
}
