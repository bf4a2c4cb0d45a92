//! The embedded store: one redb file, `data_dir/portcullis.redb`, owned by one process.
//!
//! redb is ACID and crash-safe; every write transaction here commits with
//! `Durability::Immediate` (fsync before `commit` returns) and two-phase commit, except
//! `touch_session`. Values are versioned records (see `model`). Tables:
//!
//! | table              | key                    | value            |
//! |--------------------|------------------------|------------------|
//! | users_v1           | user id (16 bytes)     | UserV1           |
//! | user_names_v1      | lowercase name         | user id          |
//! | invitations_v1     | token hash (32)        | InvitationV1     |
//! | sessions_v1        | session id hash (32)   | SessionV1        |
//! | user_sessions_v1   | user id → session hash | (multimap index) |
//! | child_sessions_v1  | parent → child hash    | (multimap index) |
//! | handoffs_v1        | code hash (32)         | HandOffV1        |
//! | failures_v1        | user id                | FailuresV1       |
//! | audit_v1           | sequence (u64)         | AuditV1          |
//! | meta_v1            | key                    | bytes            |

use std::fs::OpenOptions;
use std::io::{BufRead, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ::redb::{
    Database, Durability, MultimapTable, MultimapTableDefinition, ReadableDatabase,
    ReadableMultimapTable, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

use super::model::{
    decode_record, encode_record, meta_line, name_key, read_snapshot, write_line, AuditV1,
    ExportLine, FailuresV1, HandOffV1, InvitationV1, SessionV1, UserFailures, UserV1,
};
use super::{
    AuditEvent, Failures, HandOff, Invitation, NewUser, Session, Store, StoreError, User, UserId,
};
use crate::clock::UnixSeconds;

/// The file name of the embedded store inside the data directory.
pub const STORE_FILE: &str = "portcullis.redb";

type Bin = &'static [u8];

const USERS: TableDefinition<Bin, Bin> = TableDefinition::new("users_v1");
const USER_NAMES: TableDefinition<&str, Bin> = TableDefinition::new("user_names_v1");
const INVITATIONS: TableDefinition<Bin, Bin> = TableDefinition::new("invitations_v1");
const SESSIONS: TableDefinition<Bin, Bin> = TableDefinition::new("sessions_v1");
const USER_SESSIONS: MultimapTableDefinition<Bin, Bin> =
    MultimapTableDefinition::new("user_sessions_v1");
const CHILD_SESSIONS: MultimapTableDefinition<Bin, Bin> =
    MultimapTableDefinition::new("child_sessions_v1");
const HANDOFFS: TableDefinition<Bin, Bin> = TableDefinition::new("handoffs_v1");
const FAILURES: TableDefinition<Bin, Bin> = TableDefinition::new("failures_v1");
const AUDIT: TableDefinition<u64, Bin> = TableDefinition::new("audit_v1");
const META: TableDefinition<&str, Bin> = TableDefinition::new("meta_v1");
/// Layout version of this file, checked at open; not exported.
const SCHEMA: TableDefinition<&str, u64> = TableDefinition::new("schema");
const SCHEMA_VERSION: u64 = 1;

/// Page cache: the store holds accounts and sessions, not bulk data, and the kernel keeps
/// the file cached as well; a bigger cache only made the process larger (BENCHMARKS.md).
const CACHE_BYTES: usize = 16 * 1024 * 1024;

fn backend(e: impl Into<::redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// The redb-backed [`Store`].
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    /// Bumped by every write that can end a session or change what a user may do; see
    /// [`Store::revocation_generation`].
    generation: AtomicU64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates, mode 0600) the store file. redb locks the file: a second opener
    /// — another process, or this one — gets [`StoreError::InUse`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Create the file ourselves so it is 0600 from the first byte: it holds password
        // hashes. redb initialises an empty file as a new database.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => {
                f.sync_all()
                    .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::Backend(format!("{}: {e}", path.display()))),
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // Verify checksums at every open, so a file damaged outside redb is reported
            // instead of trusted (a plain open may panic on it). The store is small.
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| match e {
                ::redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.to_path_buf()),
                other => StoreError::Backend(format!("{}: {other}", path.display())),
            })?;
        let store = Self {
            db,
            path: path.to_path_buf(),
            generation: AtomicU64::new(0),
        };
        store.init_schema()?;
        Ok(store)
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut schema = txn.open_table(SCHEMA).map_err(backend)?;
            let found = schema.get("version").map_err(backend)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::Backend(format!(
                        "the store was written by a newer Portcullis (layout {v}, this build knows {SCHEMA_VERSION}); upgrade Portcullis"
                    )))
                }
                Some(_) => {}
                None => {
                    schema.insert("version", SCHEMA_VERSION).map_err(backend)?;
                }
            }
            // Create every table, so read transactions never meet a missing one.
            txn.open_table(USERS).map_err(backend)?;
            txn.open_table(USER_NAMES).map_err(backend)?;
            txn.open_table(INVITATIONS).map_err(backend)?;
            txn.open_table(SESSIONS).map_err(backend)?;
            txn.open_multimap_table(USER_SESSIONS).map_err(backend)?;
            txn.open_multimap_table(CHILD_SESSIONS).map_err(backend)?;
            txn.open_table(HANDOFFS).map_err(backend)?;
            txn.open_table(FAILURES).map_err(backend)?;
            txn.open_table(AUDIT).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            Ok(())
        })
    }

    /// Runs `f` in a durable write transaction: committed (fsynced) when `f` succeeds,
    /// rolled back when it fails.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        // Two-phase commit: a crash mid-commit can never expose a half-written
        // transaction (see redb's `set_two_phase_commit`). Writes are rare enough here.
        txn.set_two_phase_commit(true);
        match f(&txn) {
            Ok(v) => {
                txn.commit().map_err(backend)?;
                Ok(v)
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "aborting a store transaction failed");
                }
                Err(e)
            }
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&::redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        f(&txn)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers working inside one transaction
// ---------------------------------------------------------------------------------------

fn get_user(table: &impl ReadableTable<Bin, Bin>, id: &UserId) -> Result<Option<User>, StoreError> {
    table
        .get(id.as_bytes().as_slice())
        .map_err(backend)?
        .map(|v| decode_record::<UserV1, User>(v.value()))
        .transpose()
}

fn put_user(table: &mut Table<Bin, Bin>, user: &User) -> Result<(), StoreError> {
    let bytes = encode_record(&UserV1::from(user))?;
    table
        .insert(user.id.as_bytes().as_slice(), bytes.as_slice())
        .map_err(backend)?;
    Ok(())
}

fn get_session(
    table: &impl ReadableTable<Bin, Bin>,
    id_hash: &[u8; 32],
) -> Result<Option<Session>, StoreError> {
    table
        .get(id_hash.as_slice())
        .map_err(backend)?
        .map(|v| decode_record::<SessionV1, Session>(v.value()))
        .transpose()
}

fn multimap_values(
    table: &impl ReadableMultimapTable<Bin, Bin>,
    key: &[u8],
) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut out = Vec::new();
    for v in table.get(key).map_err(backend)? {
        let v = v.map_err(backend)?;
        if let Ok(h) = <[u8; 32]>::try_from(v.value()) {
            out.push(h);
        }
    }
    Ok(out)
}

/// The session tables of one write transaction, so removal keeps the indexes in step.
struct SessionTables<'t> {
    sessions: Table<'t, Bin, Bin>,
    by_user: MultimapTable<'t, Bin, Bin>,
    children: MultimapTable<'t, Bin, Bin>,
}

impl<'t> SessionTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            sessions: txn.open_table(SESSIONS).map_err(backend)?,
            by_user: txn.open_multimap_table(USER_SESSIONS).map_err(backend)?,
            children: txn.open_multimap_table(CHILD_SESSIONS).map_err(backend)?,
        })
    }

    /// Removes a session, its index entries and, recursively, its children. Returns how
    /// many sessions went.
    fn remove(&mut self, id_hash: &[u8; 32]) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut queue = vec![*id_hash];
        while let Some(h) = queue.pop() {
            let Some(s) = get_session(&self.sessions, &h)? else {
                // A dangling index entry: drop it too.
                self.children.remove_all(h.as_slice()).map_err(backend)?;
                continue;
            };
            self.sessions.remove(h.as_slice()).map_err(backend)?;
            removed += 1;
            self.by_user
                .remove(s.user_id.as_bytes().as_slice(), h.as_slice())
                .map_err(backend)?;
            if let Some(p) = &s.parent {
                self.children
                    .remove(p.as_slice(), h.as_slice())
                    .map_err(backend)?;
            }
            queue.extend(multimap_values(&self.children, &h)?);
            self.children.remove_all(h.as_slice()).map_err(backend)?;
        }
        Ok(removed)
    }

    fn remove_user(&mut self, id: &UserId) -> Result<usize, StoreError> {
        let mut removed = 0;
        for h in multimap_values(&self.by_user, id.as_bytes())? {
            removed += self.remove(&h)?;
        }
        self.by_user
            .remove_all(id.as_bytes().as_slice())
            .map_err(backend)?;
        Ok(removed)
    }

    fn insert(&mut self, session: &Session) -> Result<(), StoreError> {
        let bytes = encode_record(&SessionV1::from(session))?;
        let key = session.id_hash.as_slice();
        self.sessions
            .insert(key, bytes.as_slice())
            .map_err(backend)?;
        self.by_user
            .insert(session.user_id.as_bytes().as_slice(), key)
            .map_err(backend)?;
        if let Some(p) = &session.parent {
            self.children.insert(p.as_slice(), key).map_err(backend)?;
        }
        Ok(())
    }
}

fn user_exists(txn: &WriteTransaction, id: &UserId) -> Result<bool, StoreError> {
    let users = txn.open_table(USERS).map_err(backend)?;
    let found = users
        .get(id.as_bytes().as_slice())
        .map_err(backend)?
        .is_some();
    Ok(found)
}

// ---------------------------------------------------------------------------------------
// The Store implementation
// ---------------------------------------------------------------------------------------

/// Bumps the generation when dropped, i.e. after the write committed (or failed — a
/// spurious bump only costs a cache refill), so a reader that saw the old generation
/// re-checks the store after the change is visible.
struct Revoking<'a>(&'a AtomicU64);

impl Drop for Revoking<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl RedbStore {
    fn revoking(&self) -> Revoking<'_> {
        Revoking(&self.generation)
    }
}

fn insert_new_user(txn: &WriteTransaction, user: &User) -> Result<(), StoreError> {
    let mut names = txn.open_table(USER_NAMES).map_err(backend)?;
    let key = name_key(&user.name);
    if names.get(key.as_str()).map_err(backend)?.is_some() {
        return Err(StoreError::Duplicate(user.name.clone()));
    }
    let mut users = txn.open_table(USERS).map_err(backend)?;
    if users
        .get(user.id.as_bytes().as_slice())
        .map_err(backend)?
        .is_some()
    {
        // 128 random bits do not collide; if they ever do, refuse rather than
        // overwrite someone.
        return Err(StoreError::Invalid(
            "A fresh user id collided with an existing one. Try again.".into(),
        ));
    }
    names
        .insert(key.as_str(), user.id.as_bytes().as_slice())
        .map_err(backend)?;
    put_user(&mut users, user)
}

fn insert_invitation(txn: &WriteTransaction, invitation: &Invitation) -> Result<(), StoreError> {
    if !user_exists(txn, &invitation.user_id)? {
        return Err(StoreError::NotFound);
    }
    let mut table = txn.open_table(INVITATIONS).map_err(backend)?;
    let key = invitation.token_hash.as_slice();
    if table.get(key).map_err(backend)?.is_some() {
        return Err(StoreError::Invalid(
            "This invitation token exists already. Create a new invitation.".into(),
        ));
    }
    let bytes = encode_record(&InvitationV1::from(invitation))?;
    table.insert(key, bytes.as_slice()).map_err(backend)?;
    Ok(())
}

/// Records removed per write transaction by the sweeps.
const PURGE_BATCH: usize = 1000;

/// The keys of the records in one table whose `expires_at` has passed. Records that
/// cannot be read are passed over.
fn expired_keys<R, T>(
    table: &impl ReadableTable<Bin, Bin>,
    now: UnixSeconds,
) -> Result<Vec<[u8; 32]>, StoreError>
where
    R: serde::de::DeserializeOwned,
    T: TryFrom<R, Error = StoreError> + Expires,
{
    let mut keys = Vec::new();
    for entry in table.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let expired = decode_record::<R, T>(v.value()).is_ok_and(|r| r.expires_at() <= now);
        if let (true, Ok(key)) = (expired, <[u8; 32]>::try_from(k.value())) {
            keys.push(key);
        }
    }
    Ok(keys)
}

trait Expires {
    fn expires_at(&self) -> UnixSeconds;
}

impl Expires for Session {
    fn expires_at(&self) -> UnixSeconds {
        self.expires_at
    }
}

impl Expires for HandOff {
    fn expires_at(&self) -> UnixSeconds {
        self.expires_at
    }
}

impl Expires for Invitation {
    fn expires_at(&self) -> UnixSeconds {
        self.expires_at
    }
}

impl Store for RedbStore {
    fn create_user(&self, new: NewUser) -> Result<User, StoreError> {
        let user = new.into_user();
        user.validate()?;
        self.write(|txn| insert_new_user(txn, &user))?;
        Ok(user)
    }

    fn create_invited_user(
        &self,
        new: NewUser,
        token_hash: [u8; 32],
        expires_at: UnixSeconds,
    ) -> Result<User, StoreError> {
        let created_at = new.now;
        let user = new.into_user();
        user.validate()?;
        self.write(|txn| {
            insert_new_user(txn, &user)?;
            insert_invitation(
                txn,
                &Invitation {
                    token_hash,
                    user_id: user.id,
                    created_at,
                    expires_at,
                    used_at: None,
                },
            )
        })?;
        Ok(user)
    }

    fn user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.read(|txn| {
            let users = txn.open_table(USERS).map_err(backend)?;
            get_user(&users, id)
        })
    }

    fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.read(|txn| {
            let names = txn.open_table(USER_NAMES).map_err(backend)?;
            let Some(id) = names.get(name_key(name).as_str()).map_err(backend)? else {
                return Ok(None);
            };
            let id = <[u8; 16]>::try_from(id.value())
                .map_err(|_| StoreError::Backend("the name index is damaged".into()))?;
            let users = txn.open_table(USERS).map_err(backend)?;
            get_user(&users, &UserId::from_bytes(id))
        })
    }

    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.read(|txn| {
            let names = txn.open_table(USER_NAMES).map_err(backend)?;
            let users = txn.open_table(USERS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in names.iter().map_err(backend)? {
                let (_, id) = entry.map_err(backend)?;
                let id = <[u8; 16]>::try_from(id.value())
                    .map_err(|_| StoreError::Backend("the name index is damaged".into()))?;
                if let Some(u) = get_user(&users, &UserId::from_bytes(id))? {
                    out.push(u);
                }
            }
            Ok(out)
        })
    }

    fn update_user(
        &self,
        id: &UserId,
        f: &mut dyn FnMut(&mut User) -> Result<(), StoreError>,
    ) -> Result<User, StoreError> {
        let _bump = self.revoking();
        self.write(|txn| {
            let mut users = txn.open_table(USERS).map_err(backend)?;
            let before = get_user(&users, id)?.ok_or(StoreError::NotFound)?;
            let mut after = before.clone();
            f(&mut after)?;
            if after.id != before.id {
                return Err(StoreError::Invalid("A user's id cannot change.".into()));
            }
            after.validate_changes(&before)?;
            let (old_key, new_key) = (name_key(&before.name), name_key(&after.name));
            if old_key != new_key {
                let mut names = txn.open_table(USER_NAMES).map_err(backend)?;
                if names.get(new_key.as_str()).map_err(backend)?.is_some() {
                    return Err(StoreError::Duplicate(after.name.clone()));
                }
                names.remove(old_key.as_str()).map_err(backend)?;
                names
                    .insert(new_key.as_str(), id.as_bytes().as_slice())
                    .map_err(backend)?;
            }
            if after != before {
                put_user(&mut users, &after)?;
            }
            Ok(after)
        })
    }

    fn delete_user(&self, id: &UserId) -> Result<(), StoreError> {
        let _bump = self.revoking();
        self.write(|txn| {
            let mut users = txn.open_table(USERS).map_err(backend)?;
            let user = get_user(&users, id)?.ok_or(StoreError::NotFound)?;
            users.remove(id.as_bytes().as_slice()).map_err(backend)?;
            drop(users);
            let mut names = txn.open_table(USER_NAMES).map_err(backend)?;
            names
                .remove(name_key(&user.name).as_str())
                .map_err(backend)?;
            drop(names);
            SessionTables::open(txn)?.remove_user(id)?;
            let mut invitations = txn.open_table(INVITATIONS).map_err(backend)?;
            // Invitations are few and deletions rare: a scan beats another index.
            let mut doomed = Vec::new();
            for entry in invitations.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let inv = decode_record::<InvitationV1, Invitation>(v.value())?;
                if inv.user_id == *id {
                    doomed.push(k.value().to_vec());
                }
            }
            for k in doomed {
                invitations.remove(k.as_slice()).map_err(backend)?;
            }
            let mut failures = txn.open_table(FAILURES).map_err(backend)?;
            failures.remove(id.as_bytes().as_slice()).map_err(backend)?;
            Ok(())
        })
    }

    fn accept_totp_step(&self, id: &UserId, step: u64) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut users = txn.open_table(USERS).map_err(backend)?;
            let mut user = get_user(&users, id)?.ok_or(StoreError::NotFound)?;
            let Some(totp) = user.totp.as_mut() else {
                return Err(StoreError::Invalid(
                    "The account has no authenticator enrolled. Sign in again to set one up."
                        .into(),
                ));
            };
            if step <= totp.last_step {
                return Ok(false);
            }
            totp.last_step = step;
            put_user(&mut users, &user)?;
            Ok(true)
        })
    }

    fn complete_enrolment(
        &self,
        id: &UserId,
        pending: &[u8],
        sealed_secret: &[u8],
        step: u64,
        now: UnixSeconds,
    ) -> Result<User, StoreError> {
        self.write(|txn| {
            let mut users = txn.open_table(USERS).map_err(backend)?;
            let mut user = get_user(&users, id)?.ok_or(StoreError::NotFound)?;
            if user.totp.is_some() {
                return Err(StoreError::Invalid(
                    "Two-factor authentication is already set up for this account. Sign in with a code from your app.".into(),
                ));
            }
            if user.pending_totp.as_deref() != Some(pending) {
                return Err(StoreError::Invalid(
                    "The QR code was replaced by a newer one (opened in another window?). Scan the code now shown and try again.".into(),
                ));
            }
            user.pending_totp = None;
            user.totp = Some(super::TotpCredential {
                sealed_secret: sealed_secret.to_vec(),
                enrolled_at: now,
                last_step: step,
            });
            user.updated_at = now;
            put_user(&mut users, &user)?;
            Ok(user)
        })
    }

    fn create_invitation(&self, invitation: Invitation) -> Result<(), StoreError> {
        self.write(|txn| insert_invitation(txn, &invitation))
    }

    fn invitation(&self, token_hash: &[u8; 32]) -> Result<Option<Invitation>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(INVITATIONS).map_err(backend)?;
            let found = table.get(token_hash.as_slice()).map_err(backend)?;
            found
                .map(|v| decode_record::<InvitationV1, Invitation>(v.value()))
                .transpose()
        })
    }

    fn use_invitation(
        &self,
        token_hash: &[u8; 32],
        now: UnixSeconds,
    ) -> Result<Option<Invitation>, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(INVITATIONS).map_err(backend)?;
            let found = table
                .get(token_hash.as_slice())
                .map_err(backend)?
                .map(|v| decode_record::<InvitationV1, Invitation>(v.value()))
                .transpose()?;
            let Some(mut inv) = found else {
                return Ok(None);
            };
            if inv.used_at.is_some() || now >= inv.expires_at {
                return Ok(None);
            }
            inv.used_at = Some(now);
            let bytes = encode_record(&InvitationV1::from(&inv))?;
            table
                .insert(token_hash.as_slice(), bytes.as_slice())
                .map_err(backend)?;
            Ok(Some(inv))
        })
    }

    fn put_session(&self, session: Session) -> Result<(), StoreError> {
        self.write(|txn| {
            if !user_exists(txn, &session.user_id)? {
                return Err(StoreError::NotFound);
            }
            let mut tables = SessionTables::open(txn)?;
            if let Some(p) = &session.parent {
                if get_session(&tables.sessions, p)?.is_none() {
                    return Err(StoreError::NotFound);
                }
            }
            // Replacing: drop the old index entries first (user or parent may differ).
            if let Some(old) = get_session(&tables.sessions, &session.id_hash)? {
                tables
                    .by_user
                    .remove(old.user_id.as_bytes().as_slice(), old.id_hash.as_slice())
                    .map_err(backend)?;
                if let Some(p) = &old.parent {
                    tables
                        .children
                        .remove(p.as_slice(), old.id_hash.as_slice())
                        .map_err(backend)?;
                }
            }
            tables.insert(&session)
        })
    }

    fn session(&self, id_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            get_session(&table, id_hash)
        })
    }

    fn touch_session(&self, id_hash: &[u8; 32], now: UnixSeconds) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::None).map_err(backend)?;
        let result = (|| {
            let mut table = txn.open_table(SESSIONS).map_err(backend)?;
            let Some(mut s) = get_session(&table, id_hash)? else {
                return Ok(false);
            };
            if s.last_seen < now {
                s.last_seen = now;
                let bytes = encode_record(&SessionV1::from(&s))?;
                table
                    .insert(id_hash.as_slice(), bytes.as_slice())
                    .map_err(backend)?;
            }
            Ok(true)
        })();
        match result {
            Ok(found) => {
                txn.commit().map_err(backend)?;
                Ok(found)
            }
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    fn delete_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let _bump = self.revoking();
        self.write(|txn| Ok(SessionTables::open(txn)?.remove(id_hash)? > 0))
    }

    fn delete_user_sessions(&self, id: &UserId) -> Result<usize, StoreError> {
        let _bump = self.revoking();
        self.write(|txn| SessionTables::open(txn)?.remove_user(id))
    }

    fn revocation_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn count_sessions(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SESSIONS).map_err(backend)?;
            table.len().map_err(backend)
        })
    }

    fn purge_expired(&self, now: UnixSeconds) -> Result<usize, StoreError> {
        // No revocation bump: the session cache never serves an entry past its
        // `expires_at`, which is no later than that of the records it was made from, so
        // nothing removed here can still be in use. (A bump would make every signed-in
        // request re-read the store after each periodic sweep.)
        //
        // Found in a read transaction, removed in small write transactions: the write
        // lock is what sign-ins and last-seen updates wait for, so it is never held for
        // a scan of the whole store. A record that cannot be read is left for `store
        // export` to report rather than stopping every later sweep.
        let (sessions, handoffs, invitations) = self.read(|txn| {
            Ok((
                expired_keys::<SessionV1, Session>(
                    &txn.open_table(SESSIONS).map_err(backend)?,
                    now,
                )?,
                expired_keys::<HandOffV1, HandOff>(
                    &txn.open_table(HANDOFFS).map_err(backend)?,
                    now,
                )?,
                expired_keys::<InvitationV1, Invitation>(
                    &txn.open_table(INVITATIONS).map_err(backend)?,
                    now,
                )?,
            ))
        })?;
        let mut removed = 0;
        for batch in sessions.chunks(PURGE_BATCH) {
            removed += self.write(|txn| {
                let mut tables = SessionTables::open(txn)?;
                let mut n = 0;
                for h in batch {
                    // Still expired: ids are never reused, but check rather than assume.
                    if get_session(&tables.sessions, h)?.is_some_and(|s| s.expires_at <= now) {
                        n += tables.remove(h)?;
                    }
                }
                Ok(n)
            })?;
        }
        for (definition, keys) in [(HANDOFFS, &handoffs), (INVITATIONS, &invitations)] {
            for batch in keys.chunks(PURGE_BATCH) {
                removed += self.write(|txn| {
                    let mut table = txn.open_table(definition).map_err(backend)?;
                    let mut n = 0;
                    for key in batch {
                        if table.remove(key.as_slice()).map_err(backend)?.is_some() {
                            n += 1;
                        }
                    }
                    Ok(n)
                })?;
            }
        }
        Ok(removed)
    }

    fn prune_audit(&self, before: UnixSeconds, limit: usize) -> Result<usize, StoreError> {
        let mut pruned = 0;
        while pruned < limit {
            let batch = (limit - pruned).min(PURGE_BATCH);
            let n = self.write(|txn| {
                let mut table = txn.open_table(AUDIT).map_err(backend)?;
                // The newest event always stays: new events number on from it, and a
                // sequence that restarted at 1 would confuse anyone reading exports.
                let Some(newest) = table.last().map_err(backend)?.map(|(k, _)| k.value()) else {
                    return Ok(0);
                };
                let mut old = Vec::new();
                for entry in table.iter().map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    let seq = k.value();
                    if seq == newest || old.len() >= batch {
                        break;
                    }
                    match decode_record::<AuditV1, AuditEvent>(v.value()) {
                        Ok(event) if event.at >= before => break,
                        Ok(_) => old.push(seq),
                        // Unreadable: its age is unknown, so it stays; look past it.
                        Err(_) => continue,
                    }
                }
                for seq in &old {
                    table.remove(*seq).map_err(backend)?;
                }
                Ok(old.len())
            })?;
            pruned += n;
            if n < batch {
                break;
            }
        }
        Ok(pruned)
    }

    fn put_handoff(&self, handoff: HandOff) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(HANDOFFS).map_err(backend)?;
            let bytes = encode_record(&HandOffV1::from(&handoff))?;
            table
                .insert(handoff.code_hash.as_slice(), bytes.as_slice())
                .map_err(backend)?;
            Ok(())
        })
    }

    fn take_handoff(
        &self,
        code_hash: &[u8; 32],
        now: UnixSeconds,
    ) -> Result<Option<HandOff>, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(HANDOFFS).map_err(backend)?;
            let taken = table
                .remove(code_hash.as_slice())
                .map_err(backend)?
                .map(|v| decode_record::<HandOffV1, HandOff>(v.value()))
                .transpose()?;
            Ok(taken.filter(|h| now < h.expires_at))
        })
    }

    fn failures(&self, id: &UserId) -> Result<Failures, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(FAILURES).map_err(backend)?;
            let found = table.get(id.as_bytes().as_slice()).map_err(backend)?;
            Ok(found
                .map(|v| decode_record::<FailuresV1, Failures>(v.value()))
                .transpose()?
                .unwrap_or_default())
        })
    }

    fn put_failures(&self, id: &UserId, failures: Failures) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(FAILURES).map_err(backend)?;
            let bytes = encode_record(&FailuresV1::new(id, &failures))?;
            table
                .insert(id.as_bytes().as_slice(), bytes.as_slice())
                .map_err(backend)?;
            Ok(())
        })
    }

    fn update_failures(
        &self,
        id: &UserId,
        f: &mut dyn FnMut(&mut Failures),
    ) -> Result<Failures, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(FAILURES).map_err(backend)?;
            let mut current = table
                .get(id.as_bytes().as_slice())
                .map_err(backend)?
                .map(|v| decode_record::<FailuresV1, Failures>(v.value()))
                .transpose()?
                .unwrap_or_default();
            f(&mut current);
            let bytes = encode_record(&FailuresV1::new(id, &current))?;
            table
                .insert(id.as_bytes().as_slice(), bytes.as_slice())
                .map_err(backend)?;
            Ok(current)
        })
    }

    fn append_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(AUDIT).map_err(backend)?;
            let last = table.last().map_err(backend)?.map(|(k, _)| k.value());
            let seq = last.map_or(1, |s| s.saturating_add(1));
            let bytes = encode_record(&AuditV1::new(seq, &event))?;
            table.insert(seq, bytes.as_slice()).map_err(backend)?;
            Ok(())
        })
    }

    fn audit(&self, user: Option<&str>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(AUDIT).map_err(backend)?;
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            for entry in table.iter().map_err(backend)?.rev() {
                let (_, v) = entry.map_err(backend)?;
                let event = decode_record::<AuditV1, AuditEvent>(v.value())?;
                let wanted = match user {
                    None => true,
                    Some(name) => event
                        .user
                        .as_deref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(name)),
                };
                if wanted {
                    out.push(event);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(META).map_err(backend)?;
            let found = table.get(key).map_err(backend)?;
            Ok(found.map(|v| v.value().to_vec()))
        })
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(META).map_err(backend)?;
            table.insert(key, value).map_err(backend)?;
            Ok(())
        })
    }

    fn export_jsonl(&self, out: &mut dyn Write) -> Result<u64, StoreError> {
        // One read transaction: the export is a consistent snapshot even while the
        // server keeps writing.
        self.read(|txn| {
            let mut lines = 0u64;
            let mut emit = |line: ExportLine| -> Result<(), StoreError> {
                write_line(out, &line)?;
                lines += 1;
                Ok(())
            };
            emit(ExportLine::header())?;

            let users = txn.open_table(USERS).map_err(backend)?;
            for entry in users.iter().map_err(backend)? {
                let (_, v) = entry.map_err(backend)?;
                let u = decode_record::<UserV1, User>(v.value())?;
                emit(ExportLine::User(UserV1::from(&u)))?;
            }
            let invitations = txn.open_table(INVITATIONS).map_err(backend)?;
            for entry in invitations.iter().map_err(backend)? {
                let (_, v) = entry.map_err(backend)?;
                let i = decode_record::<InvitationV1, Invitation>(v.value())?;
                emit(ExportLine::Invitation(InvitationV1::from(&i)))?;
            }
            // Parents before children, so a reader can rebuild in one pass.
            let sessions = txn.open_table(SESSIONS).map_err(backend)?;
            let mut children = Vec::new();
            for entry in sessions.iter().map_err(backend)? {
                let (_, v) = entry.map_err(backend)?;
                let s = decode_record::<SessionV1, Session>(v.value())?;
                if s.parent.is_some() {
                    children.push(s);
                } else {
                    emit(ExportLine::Session(SessionV1::from(&s)))?;
                }
            }
            for s in &children {
                emit(ExportLine::Session(SessionV1::from(s)))?;
            }
            let handoffs = txn.open_table(HANDOFFS).map_err(backend)?;
            for entry in handoffs.iter().map_err(backend)? {
                let (_, v) = entry.map_err(backend)?;
                let h = decode_record::<HandOffV1, HandOff>(v.value())?;
                emit(ExportLine::Handoff(HandOffV1::from(&h)))?;
            }
            let failures = txn.open_table(FAILURES).map_err(backend)?;
            for entry in failures.iter().map_err(backend)? {
                let (_, v) = entry.map_err(backend)?;
                let UserFailures(id, f) = decode_record::<FailuresV1, UserFailures>(v.value())?;
                emit(ExportLine::Failures(FailuresV1::new(&id, &f)))?;
            }
            let audit = txn.open_table(AUDIT).map_err(backend)?;
            for entry in audit.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let e = decode_record::<AuditV1, AuditEvent>(v.value())?;
                emit(ExportLine::Audit(AuditV1::new(k.value(), &e)))?;
            }
            let meta = txn.open_table(META).map_err(backend)?;
            for entry in meta.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                emit(meta_line(k.value(), v.value()))?;
            }
            out.flush().map_err(|e| {
                StoreError::Invalid(format!("The export could not be written: {e}."))
            })?;
            Ok(lines)
        })
    }

    fn import_jsonl(&self, input: &mut dyn BufRead) -> Result<u64, StoreError> {
        let _bump = self.revoking();
        let snap = read_snapshot(input)?;
        self.write(|txn| {
            let empty = txn
                .open_table(USERS)
                .map_err(backend)?
                .is_empty()
                .map_err(backend)?
                && txn
                    .open_table(USER_NAMES)
                    .map_err(backend)?
                    .is_empty()
                    .map_err(backend)?
                && txn
                    .open_table(INVITATIONS)
                    .map_err(backend)?
                    .is_empty()
                    .map_err(backend)?
                && txn
                    .open_table(SESSIONS)
                    .map_err(backend)?
                    .is_empty()
                    .map_err(backend)?
                && txn
                    .open_table(HANDOFFS)
                    .map_err(backend)?
                    .is_empty()
                    .map_err(backend)?
                && txn
                    .open_table(FAILURES)
                    .map_err(backend)?
                    .is_empty()
                    .map_err(backend)?;
            if !empty {
                return Err(StoreError::NotEmpty);
            }
            let mut count = 0u64;
            {
                let mut users = txn.open_table(USERS).map_err(backend)?;
                let mut names = txn.open_table(USER_NAMES).map_err(backend)?;
                for u in &snap.users {
                    put_user(&mut users, u)?;
                    names
                        .insert(name_key(&u.name).as_str(), u.id.as_bytes().as_slice())
                        .map_err(backend)?;
                    count += 1;
                }
            }
            {
                let mut table = txn.open_table(INVITATIONS).map_err(backend)?;
                for i in &snap.invitations {
                    let bytes = encode_record(&InvitationV1::from(i))?;
                    table
                        .insert(i.token_hash.as_slice(), bytes.as_slice())
                        .map_err(backend)?;
                    count += 1;
                }
            }
            {
                let mut tables = SessionTables::open(txn)?;
                for s in &snap.sessions {
                    tables.insert(s)?;
                    count += 1;
                }
            }
            {
                let mut table = txn.open_table(HANDOFFS).map_err(backend)?;
                for h in &snap.handoffs {
                    let bytes = encode_record(&HandOffV1::from(h))?;
                    table
                        .insert(h.code_hash.as_slice(), bytes.as_slice())
                        .map_err(backend)?;
                    count += 1;
                }
            }
            {
                let mut table = txn.open_table(FAILURES).map_err(backend)?;
                for (id, f) in &snap.failures {
                    let bytes = encode_record(&FailuresV1::new(id, f))?;
                    table
                        .insert(id.as_bytes().as_slice(), bytes.as_slice())
                        .map_err(backend)?;
                    count += 1;
                }
            }
            {
                let mut table = txn.open_table(AUDIT).map_err(backend)?;
                // Events this store recorded before the import (a mistyped admin command,
                // say) happened after the backup was made: they follow the imported ones.
                let mut own = Vec::new();
                for entry in table.iter().map_err(backend)? {
                    let (_, v) = entry.map_err(backend)?;
                    own.push(decode_record::<AuditV1, AuditEvent>(v.value())?);
                }
                table.retain(|_, _| false).map_err(backend)?;
                let mut last = 0u64;
                for (seq, e) in &snap.audit {
                    let bytes = encode_record(&AuditV1::new(*seq, e))?;
                    table.insert(*seq, bytes.as_slice()).map_err(backend)?;
                    last = last.max(*seq);
                    count += 1;
                }
                for e in &own {
                    last = last.saturating_add(1);
                    let bytes = encode_record(&AuditV1::new(last, e))?;
                    table.insert(last, bytes.as_slice()).map_err(backend)?;
                }
            }
            {
                let mut table = txn.open_table(META).map_err(backend)?;
                for (k, v) in &snap.meta {
                    table.insert(k.as_str(), v.as_slice()).map_err(backend)?;
                    count += 1;
                }
            }
            Ok(count)
        })
    }
}
