//! The store: everything Portcullis remembers (accounts, credentials, sessions, hand-offs,
//! lockout counters, the audit trail) behind one `Store` trait, with redb as the embedded
//! engine (SPEC §6).
//!
//! The trait is synchronous and every write is committed durably before it returns;
//! async callers wrap calls in `spawn_blocking`. Token and session ids are only ever
//! given to the store as SHA-256 hashes.

pub mod model;
pub mod redb;
#[cfg(test)]
mod tests;

pub use self::model::{
    validate_app_id, validate_display_name, validate_email, validate_name, AuditEvent, ExportLine,
    Failures, HandOff, Invitation, NewUser, Session, SessionState, TotpCredential, User, UserId,
    UserStatus,
};
pub use self::redb::{RedbStore, STORE_FILE};

use std::io::{BufRead, Write};
use std::path::PathBuf;

use crate::clock::UnixSeconds;

/// Errors of the store. Messages are sentences a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("No such account or record exists. Check the name and try again.")]
    NotFound,
    #[error(
        "A user named {0:?} already exists (names are not case-sensitive). Choose another name."
    )]
    Duplicate(String),
    #[error("{0:?} is not a valid e-mail address. Give an address like name@example.com.")]
    InvalidEmail(String),
    #[error("{0}")]
    Invalid(String),
    #[error("The store {} is in use by a running server. While the server runs, use the admin commands (they talk to it over its socket), or stop the server first.", .0.display())]
    InUse(PathBuf),
    #[error("The store is not empty. Import only into a new, empty data directory.")]
    NotEmpty,
    #[error("The store could not be read or written: {0}. Check the disk and the permissions of the data directory, then try again.")]
    Backend(String),
}

/// All that Portcullis keeps. Object-safe: used as `Arc<dyn Store>`.
///
/// Every method is one transaction: read-modify-write methods (`update_user`,
/// `accept_totp_step`, `use_invitation`, `take_handoff` …) cannot interleave with each
/// other, so single-use rules hold under concurrency.
pub trait Store: Send + Sync {
    // --- users -------------------------------------------------------------------------

    /// Creates an account with a fresh id. Names are unique case-insensitively
    /// ([`StoreError::Duplicate`]); name, e-mail, display name and app ids are validated.
    fn create_user(&self, new: NewUser) -> Result<User, StoreError>;
    /// Creates an account and its activation invitation in one transaction: there is
    /// never an invited account without its link, even after a crash.
    fn create_invited_user(
        &self,
        new: NewUser,
        token_hash: [u8; 32],
        expires_at: UnixSeconds,
    ) -> Result<User, StoreError>;
    fn user(&self, id: &UserId) -> Result<Option<User>, StoreError>;
    /// Case-insensitive.
    fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError>;
    /// All users, ordered by lowercase name.
    fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Applies `f` to the user inside one write transaction and stores the result; if `f`
    /// fails, nothing changes. A rename keeps names unique. The id cannot change.
    /// `updated_at` is the caller's to set (the store has no clock).
    fn update_user(
        &self,
        id: &UserId,
        f: &mut dyn FnMut(&mut User) -> Result<(), StoreError>,
    ) -> Result<User, StoreError>;
    /// Deletes the user with its sessions, invitations and failure record.
    fn delete_user(&self, id: &UserId) -> Result<(), StoreError>;

    // --- TOTP --------------------------------------------------------------------------

    /// The replay rule (RFC 6238 §5.2), atomically: if `step` is later than the user's
    /// last accepted step, records it and returns `true`; otherwise `false`. An account
    /// without an enrolled authenticator is [`StoreError::Invalid`].
    fn accept_totp_step(&self, id: &UserId, step: u64) -> Result<bool, StoreError>;
    /// Finishes enrolment atomically: `pending_totp` must still be `pending` (so a
    /// second enrolment page opened meanwhile cannot swap secrets); it is removed and
    /// `sealed_secret` (the same secret, sealed for the account rather than for the
    /// pending sign-in) becomes `totp` with `last_step = step`, so the code used to finish
    /// cannot be used again.
    fn complete_enrolment(
        &self,
        id: &UserId,
        pending: &[u8],
        sealed_secret: &[u8],
        step: u64,
        now: UnixSeconds,
    ) -> Result<User, StoreError>;

    // --- invitations -------------------------------------------------------------------

    /// The user must exist; a token hash can only be stored once.
    fn create_invitation(&self, invitation: Invitation) -> Result<(), StoreError>;
    fn invitation(&self, token_hash: &[u8; 32]) -> Result<Option<Invitation>, StoreError>;
    /// Atomically: if the invitation exists, is unused and `now < expires_at`, marks it
    /// used at `now` and returns it; otherwise `None`.
    fn use_invitation(
        &self,
        token_hash: &[u8; 32],
        now: UnixSeconds,
    ) -> Result<Option<Invitation>, StoreError>;

    // --- sessions ----------------------------------------------------------------------

    /// Inserts or replaces a session. The user must exist, and so must the parent of a
    /// child session ([`StoreError::NotFound`]): a hand-off redeemed after sign-out
    /// cannot bring the session back.
    fn put_session(&self, session: Session) -> Result<(), StoreError>;
    fn session(&self, id_hash: &[u8; 32]) -> Result<Option<Session>, StoreError>;
    /// Sets `last_seen = now`; returns whether the session exists. Not fsynced: losing
    /// a touch in a crash only makes the idle timeout a little earlier, and a durable
    /// write per request would cap throughput at the disk's fsync rate.
    fn touch_session(&self, id_hash: &[u8; 32], now: UnixSeconds) -> Result<bool, StoreError>;
    /// Deletes the session and its child sessions; returns whether it existed.
    fn delete_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Deletes every session of the user; returns how many.
    fn delete_user_sessions(&self, id: &UserId) -> Result<usize, StoreError>;
    /// A number that changes after every write that can end a session or change a user
    /// (status, grants, password, deletion). In-memory caches of verified sessions
    /// compare it to decide whether they may still trust what they hold, so revocation
    /// takes effect at once. (A store shared by several replicas must make it shared too.)
    fn revocation_generation(&self) -> u64;
    /// Sessions stored, children and pending sign-ins included.
    fn count_sessions(&self) -> Result<u64, StoreError>;
    /// Removes sessions, hand-offs and invitations whose `expires_at <= now`; returns how
    /// many records went.
    fn purge_expired(&self, now: UnixSeconds) -> Result<usize, StoreError>;
    /// Removes audit events recorded before `before`, oldest first, at most `limit` of
    /// them; returns how many went. Stops at the first event that is not older, so one
    /// out of order (from an import) is kept until those before it have gone.
    fn prune_audit(&self, before: UnixSeconds, limit: usize) -> Result<usize, StoreError>;

    // --- SSO hand-offs -----------------------------------------------------------------

    fn put_handoff(&self, handoff: HandOff) -> Result<(), StoreError>;
    /// Single use, atomically: removes the hand-off and returns it if `now < expires_at`.
    fn take_handoff(
        &self,
        code_hash: &[u8; 32],
        now: UnixSeconds,
    ) -> Result<Option<HandOff>, StoreError>;

    // --- failures ----------------------------------------------------------------------

    /// The user's failure record (empty when there is none).
    fn failures(&self, id: &UserId) -> Result<Failures, StoreError>;
    fn put_failures(&self, id: &UserId, failures: Failures) -> Result<(), StoreError>;
    /// Read-modify-write of the failure record in one transaction, so concurrent failed
    /// attempts all count. Returns the stored result.
    fn update_failures(
        &self,
        id: &UserId,
        f: &mut dyn FnMut(&mut Failures),
    ) -> Result<Failures, StoreError>;

    // --- audit -------------------------------------------------------------------------

    fn append_audit(&self, event: AuditEvent) -> Result<(), StoreError>;
    /// Newest first; with `user`, only events whose `user` matches (case-insensitively).
    fn audit(&self, user: Option<&str>, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;

    // --- meta --------------------------------------------------------------------------

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    // --- backup ------------------------------------------------------------------------

    /// Writes the whole store, from one consistent snapshot, as JSON lines
    /// ([`ExportLine`]); returns the number of lines. Secrets stay sealed.
    fn export_jsonl(&self, out: &mut dyn Write) -> Result<u64, StoreError>;
    /// Reads a whole export, validates every line, then writes it all in one transaction.
    /// Refused with [`StoreError::NotEmpty`] unless the store holds no users, sessions,
    /// invitations, hand-offs or failures (meta keys are overwritten). Audit events the
    /// store already has are kept, after the imported ones.
    /// Returns the number of records imported.
    fn import_jsonl(&self, input: &mut dyn BufRead) -> Result<u64, StoreError>;
}

/// The meta key under which the server keeps the secret-box canary
/// (`SecretBox::make_canary`), so a wrong secret key is detected at start.
pub const META_SECRET_KEY_CANARY: &str = "secret_key_canary";
