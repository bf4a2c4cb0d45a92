//! The server side of the admin socket: `data_dir/admin.sock`, mode 0600, one JSON request
//! and one JSON answer per connection (SPEC §6).
//!
//! The client writes the request and shuts down its write half; the server reads to EOF
//! (at most [`MAX_REQUEST_BYTES`]), runs [`super::execute`] with `Actor::Socket` and writes
//! the [`super::Outcome`]. Nothing a client sends can make it panic: anything it cannot
//! read gets an outcome saying so.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{execute, Outcome, Request, MAX_IMPORT_BYTES};
use crate::accounts::{Accounts, Actor};

/// Largest request read: the biggest input, JSON-escaped (at worst each byte doubles),
/// plus room for the command.
pub const MAX_REQUEST_BYTES: usize = 2 * MAX_IMPORT_BYTES + 64 * 1024;
/// Commands run at once; more connections wait in the listen backlog.
const MAX_CONCURRENT: usize = 4;
/// A client must have sent its whole request within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Writing the answer must finish within this time.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// At shutdown, commands in flight get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{} exists and is not a socket. Move it out of the data directory and start again.", .0.display())]
    NotASocket(PathBuf),
    #[error("The admin socket {} could not be created: {source}. Check the data directory's permissions; socket paths are limited to 107 bytes, so a very long data_dir needs shortening.", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bound admin socket. Dropping it removes the socket file (if it is still this one).
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, so drop removes ours and nobody else's.
    identity: (u64, u64),
    /// The socket file's owner (this process's user); only it and root may send commands.
    owner_uid: u32,
}

impl AdminSocket {
    /// Binds `path` with mode 0600. Call this only while holding the store (the server
    /// has opened it): then any socket file already there is a stale one from a server
    /// that did not shut down cleanly, and is removed. Must run inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(io_err(path))?;
                tracing::info!(path = %path.display(), "removed a stale admin socket");
            }
            Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        // Bind under a temporary name, restrict it, then rename: the socket appears at its
        // real path already 0600, never for a moment with the umask's mode.
        let tmp = path.with_file_name(format!(".admin.sock.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err(path))?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(path)(e));
        }
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
        listener.set_nonblocking(true).map_err(io_err(path))?;
        let listener = UnixListener::from_std(listener).map_err(io_err(path))?;
        Ok(AdminSocket {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            owner_uid: meta.uid(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers admin commands until `shutdown` completes, then stops accepting, removes
    /// the socket file and lets commands in flight finish (bounded).
    pub async fn serve(
        self,
        accounts: Arc<Accounts>,
        known_apps: Vec<String>,
        shutdown: impl Future<Output = ()>,
    ) {
        let known_apps: Arc<[String]> = known_apps.into();
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        tracing::info!(path = %self.path.display(), "admin socket is listening");
        loop {
            // Reap finished connections so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    let accounts = accounts.clone();
                    let known_apps = known_apps.clone();
                    let owner = self.owner_uid;
                    tasks.spawn(async move {
                        handle(stream, accounts, known_apps, owner).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "the admin socket could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let path = self.path.clone();
        drop(self);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("admin commands were still running at shutdown");
        }
        tracing::info!(path = %path.display(), "admin socket closed");
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// One connection: read the request, run it, answer. Every failure becomes an outcome
/// the CLI prints.
async fn handle(
    mut stream: UnixStream,
    accounts: Arc<Accounts>,
    known_apps: Arc<[String]>,
    owner_uid: u32,
) {
    let outcome = match stream.peer_cred() {
        // The 0600 mode already keeps others out; this is the second lock on the door.
        Ok(cred) if cred.uid() == owner_uid || cred.uid() == 0 => {
            match read_request(&mut stream).await {
                Ok(request) => run(accounts, known_apps, request).await,
                Err(outcome) => outcome,
            }
        }
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "refused an admin command from another user"
            );
            Outcome::fail("Only the user the server runs as may send admin commands.")
        }
        Err(e) => Outcome::fail(format!(
            "The server could not tell who sent this admin command ({e})."
        )),
    };
    let answer = match serde_json::to_vec(&outcome) {
        Ok(bytes) => bytes,
        Err(_) => return,
    };
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, "an admin client went away before its answer");
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, Outcome> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        (&mut *stream)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_to_end(&mut buf),
    )
    .await;
    match read {
        Ok(Ok(_)) if buf.len() > MAX_REQUEST_BYTES => Err(Outcome::fail(super::too_large(MAX_IMPORT_BYTES))),
        Ok(Ok(_)) => serde_json::from_slice::<Request>(&buf).map_err(|e| {
            Outcome::fail(format!(
                "The server could not read this admin request ({e}). Use the portcullis binary of the same version as the server."
            ))
        }),
        Ok(Err(e)) => Err(Outcome::fail(format!(
            "The admin request could not be read ({e}). Try again."
        ))),
        Err(_) => Err(Outcome::fail(
            "The admin request did not arrive in time. Try again.",
        )),
    }
}

/// Runs the command on the blocking pool: the store's writes wait for fsync and an
/// export reads the whole store, which must not hold up the threads serving traffic.
async fn run(accounts: Arc<Accounts>, known_apps: Arc<[String]>, request: Request) -> Outcome {
    let handle = tokio::runtime::Handle::current();
    let job = tokio::task::spawn_blocking(move || {
        handle.block_on(execute(&accounts, &known_apps, request, Actor::Socket))
    });
    match job.await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(error = %e, "an admin command failed inside the server");
            Outcome::fail("The server failed while running this command; its log says why. Check with `portcullis user list` whether anything changed.")
        }
    }
}
