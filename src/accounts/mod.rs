//! The account service: the store, the secret box, the password hasher and the clock put
//! together. Admin operations (`admin.rs`) and the sign-in steps (`signin.rs`) live here, so
//! the CLI, the admin socket and the web pages all change accounts the same way.

pub mod admin;
pub mod cache;
pub mod signin;

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{LockoutPolicy, PasswordHasher, PasswordParams};
use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::{KeySource, SecretBox};
use crate::metrics::Metrics;
use crate::store::{AuditEvent, RedbStore, Store, StoreError};
use cache::SessionCache;

/// Who did something, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The admin CLI working on the store directly.
    Cli,
    /// The admin CLI through the running server's socket.
    Socket,
    /// A person in the browser.
    Web,
    /// Portcullis itself (expiry, lockout).
    System,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Cli => "cli",
            Actor::Socket => "socket",
            Actor::Web => "web",
            Actor::System => "system",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("{0}")]
    Password(#[from] crate::auth::PasswordError),
    #[error("the secret key does not match this store: stored TOTP secrets cannot be decrypted with it. Start with the key the store was created with (data_dir/secret.key, server.secret_key_file or PORTCULLIS_SECRET_KEY).")]
    WrongSecretKey,
}

/// What one [`Accounts::sweep`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired: usize,
    pub audit_events: usize,
}

#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub min_password_length: usize,
    pub lockout: LockoutPolicy,
    /// How long an activation link works.
    pub invitation_ttl: i64,
    /// The auth origin, e.g. `http://login.localhost:8080`, for activation links.
    pub auth_url: String,
    pub issuer: String,
    pub idle_timeout: i64,
    pub max_lifetime: i64,
    /// Audit events older than this many seconds are removed by the periodic sweep.
    pub audit_retention: i64,
}

pub struct Accounts {
    pub store: Arc<dyn Store>,
    pub secrets: SecretBox,
    pub hasher: PasswordHasher,
    pub clock: Arc<dyn Clock>,
    pub settings: AccountSettings,
    pub metrics: Arc<Metrics>,
    /// Verified app sessions, so proxied requests need no store read.
    pub sessions: SessionCache,
    /// Failed sign-ins for names with no active account, counted like an account's
    /// (`signin::UnknownNames`).
    pub(crate) unknown_names: signin::UnknownNames,
    /// One password, enrolment or code attempt per account at a time (`AttemptGates`).
    pub(crate) attempt_gates: signin::AttemptGates,
}

use crate::store::META_SECRET_KEY_CANARY as CANARY_KEY;

impl Accounts {
    /// Opens the store in `data_dir` (creating it and the keys on first start) and checks
    /// that the secret key is the one the store was made with.
    pub fn open(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, AccountsError> {
        let accounts = Self::open_unchecked(config, clock)?;
        match accounts.store.meta(CANARY_KEY)? {
            Some(canary) => accounts
                .secrets
                .check_canary(&canary)
                .map_err(|_| AccountsError::WrongSecretKey)?,
            None => accounts
                .store
                .put_meta(CANARY_KEY, &accounts.secrets.make_canary())?,
        }
        Ok(accounts)
    }

    /// Like [`Accounts::open`] without the secret-key check: only for `store import`, which
    /// checks the key against the canary in the export and replaces the store's canary
    /// (a fresh data directory may hold a canary of a key created a moment ago).
    pub fn open_unchecked(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, AccountsError> {
        let data_dir = &config.server.data_dir;
        let operator_key = config
            .server
            .secret_key_file
            .clone()
            .map(KeySource::File)
            .or_else(KeySource::from_env);
        let secrets = SecretBox::load_or_create(data_dir, operator_key)?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&store_path(config))?);
        let p = &config.password;
        let hasher = PasswordHasher::new(PasswordParams {
            memory_kib: p.argon2_memory_kib,
            iterations: p.argon2_iterations,
            parallelism: p.argon2_parallelism,
        })?;
        let s = &config.security;
        Ok(Self {
            sessions: SessionCache::default(),
            unknown_names: signin::UnknownNames::default(),
            attempt_gates: signin::AttemptGates::default(),
            metrics: Arc::new(Metrics::new(
                config.apps.iter().map(|a| a.id.clone()).collect(),
            )),
            store,
            secrets,
            hasher,
            clock,
            settings: AccountSettings {
                min_password_length: p.min_length,
                lockout: LockoutPolicy {
                    max_failures: s.max_failures,
                    window: s.failure_window.as_secs() as i64,
                    lockout: s.lockout.as_secs() as i64,
                },
                invitation_ttl: 7 * 24 * 3600,
                auth_url: config.server.auth_url.to_string(),
                issuer: config.totp.issuer.clone(),
                idle_timeout: config.session.idle_timeout.as_secs() as i64,
                max_lifetime: config.session.max_lifetime.as_secs() as i64,
                audit_retention: i64::try_from(s.audit_retention.as_secs()).unwrap_or(i64::MAX),
            },
        })
    }

    /// Removes what has expired: sessions, hand-off codes and activation links past their
    /// end, and audit events older than the retention. Returns how many of each went.
    pub fn sweep(&self) -> Result<Swept, StoreError> {
        /// Bounds one transaction; a larger backlog goes over the next sweeps.
        const MAX_AUDIT_EVENTS_PER_SWEEP: usize = 100_000;
        let now = self.clock.now();
        let expired = self.store.purge_expired(now)?;
        let audit_events = self.store.prune_audit(
            now.saturating_sub(self.settings.audit_retention),
            MAX_AUDIT_EVENTS_PER_SWEEP,
        )?;
        Ok(Swept {
            expired,
            audit_events,
        })
    }

    /// Records a security event in the store's audit trail and in the log. Never pass a
    /// secret in `detail`.
    pub fn audit(
        &self,
        actor: Actor,
        action: &str,
        user: Option<&str>,
        outcome: &str,
        detail: Option<String>,
        ip: Option<String>,
    ) {
        tracing::info!(
            target: "portcullis::audit",
            actor = actor.as_str(),
            action,
            user = user.unwrap_or("-"),
            outcome,
            detail = detail.as_deref().unwrap_or(""),
            ip = ip.as_deref().unwrap_or("-"),
        );
        let event = AuditEvent {
            at: self.clock.now(),
            actor: actor.as_str().to_string(),
            action: action.to_string(),
            user: user.map(str::to_string),
            target: None,
            outcome: outcome.to_string(),
            detail,
            ip,
        };
        if let Err(e) = self.store.append_audit(event) {
            tracing::error!(error = %e, "could not write the audit trail");
        }
    }
}

pub fn store_path(config: &Config) -> PathBuf {
    config.server.data_dir.join(crate::store::STORE_FILE)
}
