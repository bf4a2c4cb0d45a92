//! Admin operations on accounts (SPEC §2.8–2.10, §6, §8), shared by the CLI and the admin
//! socket: each one validates everything before it writes, so a refused command leaves the
//! store as it was, and each one leaves an event in the audit trail.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Params, Version};
use base64::Engine as _;

use crate::accounts::{Accounts, Actor};
use crate::auth::{self, LockState, Password, PolicyError, SecretToken};
use crate::clock::UnixSeconds;
use crate::store::{
    validate_display_name, validate_email, validate_name, AuditEvent, ExportLine, Failures,
    NewUser, StoreError, User, UserStatus, META_SECRET_KEY_CANARY,
};

/// bcrypt's own minimum cost. The upper bounds for imported hashes are the ones sign-in
/// applies (`auth::password`), so an import never stores a hash nobody could sign in with.
const MIN_BCRYPT_COST: u32 = 4;
/// Longest audit detail written for a refused command (an import report can be long).
const MAX_AUDIT_DETAIL: usize = 500;

/// Why an admin command was refused. Every message is a sentence that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("There is no user named {}. `portcullis user list` shows the existing users.", quoted(.0))]
    NoSuchUser(String),
    #[error("There is no app {} in the configuration. Use one of: {known}.", quoted(.app))]
    UnknownApp { app: String, known: String },
    #[error("{}", duplicate_message(.existing, .wanted))]
    Duplicate { existing: String, wanted: String },
    /// A field that does not pass validation; the text comes from the validators.
    #[error("{0}")]
    Invalid(String),
    #[error("That password cannot be used. {0}")]
    WeakPassword(PolicyError),
    #[error("No password was given on standard input. Pipe it in, e.g. `printf '%s\\n' \"$PASSWORD\" | portcullis user set-password NAME --password-stdin`.")]
    NoPassword,
    #[error("{}", import_report(.0))]
    ImportRejected(Vec<RowProblem>),
    #[error("The file has no users in it. Give one user per line: name,email,hash,apps.")]
    ImportEmpty,
    #[error("This export was made with another secret key than this data directory uses, so its TOTP secrets could not be read here. Nothing was imported. Put the old installation's key in place (copy its data/secret.key over this one, or set PORTCULLIS_SECRET_KEY or server.secret_key_file), then run the import again.")]
    WrongSecretKey,
    #[error("{0}")]
    Store(StoreError),
    #[error("{0}")]
    Password(#[from] auth::PasswordError),
    #[error("{0}")]
    Random(#[from] auth::RandomError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(name) => AdminError::Duplicate {
                existing: name.clone(),
                wanted: name,
            },
            StoreError::Invalid(msg) => AdminError::Invalid(msg),
            e @ StoreError::InvalidEmail(_) => AdminError::Invalid(e.to_string()),
            other => AdminError::Store(other),
        }
    }
}

/// A name as it appears in a message: quoted, control characters escaped, and cut short,
/// so hostile input cannot paint the operator's terminal.
fn quoted(s: &str) -> String {
    let short: String = s.chars().take(80).collect();
    let ellipsis = if short.len() < s.len() { "…" } else { "" };
    format!("{short:?}{ellipsis}")
}

fn duplicate_message(existing: &str, wanted: &str) -> String {
    if existing == wanted {
        format!(
            "A user named {} already exists. Choose another name.",
            quoted(existing)
        )
    } else {
        format!(
            "A user named {} already exists (names are not case-sensitive), so {} cannot be added. Choose another name.",
            quoted(existing),
            quoted(wanted)
        )
    }
}

/// One bad line of a CSV import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    /// 1-based line number in the file.
    pub line: usize,
    pub problem: String,
}

fn import_report(problems: &[RowProblem]) -> String {
    let count = problems.len();
    let lines = if count == 1 { "line has" } else { "lines have" };
    let mut out = format!(
        "Nothing was imported: {count} {lines} problems. Fix them and run the import again."
    );
    for p in problems {
        out.push_str(&format!("\n  line {}: {}", p.line, p.problem));
    }
    out
}

/// The result of a command that changes one user.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The user after the change (for `delete`, as it was).
    pub user: User,
    /// How many of the user's sessions (pending sign-ins included) were ended.
    pub sessions_ended: usize,
    /// False when the user already was as asked and nothing about them was written.
    pub changed: bool,
}

/// What `user show` reports.
#[derive(Debug, Clone)]
pub struct UserDetails {
    pub user: User,
    /// Failed password or code attempts still inside the lockout window.
    pub recent_failures: usize,
    pub locked_until: Option<UnixSeconds>,
}

/// A validated CSV row, ready to become a user.
struct ImportRow {
    name: String,
    email: String,
    hash: String,
    apps: BTreeSet<String>,
}

impl Accounts {
    // --- helpers ---------------------------------------------------------------------

    fn find_user(&self, name: &str) -> Result<User, AdminError> {
        self.store
            .user_by_name(name)?
            .ok_or_else(|| AdminError::NoSuchUser(name.to_string()))
    }

    /// Writes the audit event of an admin command: "ok" with `detail`, or "refused" with
    /// the reason. A name that is not a valid user name goes into the detail, escaped,
    /// never into the user field.
    fn record<T>(
        &self,
        actor: Actor,
        action: &str,
        name: Option<&str>,
        result: &Result<T, AdminError>,
        detail: impl FnOnce(&T) -> Option<String>,
    ) {
        let (user, given) = match name {
            Some(n) if validate_name(n).is_ok() => (Some(n), None),
            Some(n) => (None, Some(format!("name given: {}", quoted(n)))),
            None => (None, None),
        };
        let join = |a: Option<String>| match (a, given.clone()) {
            (Some(a), Some(g)) => Some(format!("{a}; {g}")),
            (a, g) => a.or(g),
        };
        match result {
            Ok(v) => self.audit(actor, action, user, "ok", join(detail(v)), None),
            Err(e) => {
                let mut reason = e.to_string();
                if reason.len() > MAX_AUDIT_DETAIL {
                    let mut cut = MAX_AUDIT_DETAIL;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    reason.truncate(cut);
                    reason.push('…');
                }
                self.audit(actor, action, user, "refused", join(Some(reason)), None)
            }
        }
    }

    fn check_password(&self, password: &Password, name: &str) -> Result<(), AdminError> {
        auth::check_new_password(password.as_str(), self.settings.min_password_length, name)
            .map_err(AdminError::WeakPassword)
    }

    /// The activation link for an invitation token.
    pub fn activation_url(&self, token: &SecretToken) -> String {
        format!(
            "{}/.portcullis/activate?token={}",
            self.settings.auth_url.trim_end_matches('/'),
            token.encode()
        )
    }

    // --- commands --------------------------------------------------------------------

    /// `user add`: creates an invited account and its one-time activation link. With a
    /// password the link leads to the sign-in page; without one the person chooses one.
    /// Returns the user and the activation URL.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_user(
        &self,
        name: &str,
        email: &str,
        display_name: Option<String>,
        apps: Vec<String>,
        password: Option<Password>,
        known_apps: &[String],
        actor: Actor,
    ) -> Result<(User, String), AdminError> {
        let with_password = password.is_some();
        let result = self
            .add_user_inner(name, email, display_name, apps, password, known_apps)
            .await;
        self.record(actor, "user.add", Some(name), &result, |(u, _)| {
            Some(format!(
                "apps: {}; {}",
                list_or_none(&u.apps),
                if with_password {
                    "password set by the administrator"
                } else {
                    "password to be chosen at activation"
                }
            ))
        });
        result
    }

    async fn add_user_inner(
        &self,
        name: &str,
        email: &str,
        display_name: Option<String>,
        apps: Vec<String>,
        password: Option<Password>,
        known_apps: &[String],
    ) -> Result<(User, String), AdminError> {
        validate_name(name)?;
        validate_email(email)?;
        // Without --name the apps get the user name as the display name rather than "".
        let display_name = display_name.unwrap_or_else(|| name.to_string());
        validate_display_name(&display_name)?;
        let apps = apps
            .into_iter()
            .map(|a| known_app(&a, known_apps).map(|()| a))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if let Some(pw) = &password {
            self.check_password(pw, name)?;
        }
        if let Some(existing) = self.store.user_by_name(name)? {
            return Err(AdminError::Duplicate {
                existing: existing.name,
                wanted: name.to_string(),
            });
        }
        let token = SecretToken::generate()?;
        let password_hash = match password {
            Some(pw) => Some(self.hasher.hash(pw).await?),
            None => None,
        };
        let now = self.clock.now();
        let user = self.store.create_invited_user(
            NewUser {
                name: name.to_string(),
                email: email.to_string(),
                display_name,
                apps,
                status: UserStatus::Invited,
                password_hash,
                now,
            },
            token.hash(),
            now.saturating_add(self.settings.invitation_ttl),
        )?;
        let url = self.activation_url(&token);
        Ok((user, url))
    }

    /// `user list`: every account, ordered by lowercase name.
    pub fn list_users(&self) -> Result<Vec<User>, AdminError> {
        Ok(self.store.list_users()?)
    }

    /// `user show`: the account with its lockout state.
    pub fn show_user(&self, name: &str) -> Result<UserDetails, AdminError> {
        let user = self.find_user(name)?;
        let failures = self.store.failures(&user.id)?;
        let now = self.clock.now();
        let window_start = now.saturating_sub(self.settings.lockout.window);
        let recent_failures = failures
            .recent
            .iter()
            .filter(|&&t| t > window_start)
            .count();
        let locked_until = auth::is_locked(
            &LockState {
                recent: failures.recent,
                locked_until: failures.locked_until,
            },
            now,
        );
        Ok(UserDetails {
            user,
            recent_failures,
            locked_until,
        })
    }

    /// `user disable`: the account may not sign in, and its sessions stop at once.
    pub fn disable_user(&self, name: &str, actor: Actor) -> Result<Changed, AdminError> {
        let result = self.disable_inner(name);
        self.record(actor, "user.disable", Some(name), &result, |c| {
            Some(format!("{} sessions ended", c.sessions_ended))
        });
        result
    }

    fn disable_inner(&self, name: &str) -> Result<Changed, AdminError> {
        let user = self.find_user(name)?;
        let changed = user.status != UserStatus::Disabled;
        let user = if changed {
            let now = self.clock.now();
            self.store.update_user(&user.id, &mut |u| {
                u.status = UserStatus::Disabled;
                u.sessions_valid_after = u.sessions_valid_after.max(now);
                u.updated_at = now;
                Ok(())
            })?
        } else {
            user
        };
        // Also when already disabled: a disabled account has no business holding any.
        let sessions_ended = self.store.delete_user_sessions(&user.id)?;
        Ok(Changed {
            user,
            sessions_ended,
            changed,
        })
    }

    /// `user enable`: a disabled account may sign in again. Also lifts a running lockout,
    /// so this is what an administrator runs for a partner who locked themselves out.
    /// Returns the change and whether a lock was lifted.
    pub fn enable_user(&self, name: &str, actor: Actor) -> Result<(Changed, bool), AdminError> {
        let result = self.enable_inner(name);
        self.record(actor, "user.enable", Some(name), &result, |(c, lifted)| {
            Some(format!(
                "{}{}",
                if c.changed {
                    "enabled"
                } else {
                    "was not disabled"
                },
                if *lifted { "; sign-in lock lifted" } else { "" }
            ))
        });
        result
    }

    fn enable_inner(&self, name: &str) -> Result<(Changed, bool), AdminError> {
        let user = self.find_user(name)?;
        let changed = user.status == UserStatus::Disabled;
        let user = if changed {
            let now = self.clock.now();
            self.store.update_user(&user.id, &mut |u| {
                // Back to where the account was: still invited when nobody ever set a
                // password for it or enrolled an authenticator.
                u.status = if u.password_hash.is_some() || u.totp.is_some() {
                    UserStatus::Active
                } else {
                    UserStatus::Invited
                };
                u.updated_at = now;
                Ok(())
            })?
        } else {
            user
        };
        let failures = self.store.failures(&user.id)?;
        let lifted = failures != Failures::default();
        if lifted {
            self.store
                .update_failures(&user.id, &mut |f| *f = Failures::default())?;
        }
        Ok((
            Changed {
                user,
                sessions_ended: 0,
                changed,
            },
            lifted
                && auth::is_locked(
                    &LockState {
                        recent: failures.recent,
                        locked_until: failures.locked_until,
                    },
                    self.clock.now(),
                )
                .is_some(),
        ))
    }

    /// `user delete`: the account, its sessions, invitations and failure record.
    pub fn delete_user(&self, name: &str, actor: Actor) -> Result<Changed, AdminError> {
        let result = self.delete_inner(name);
        self.record(actor, "user.delete", Some(name), &result, |c| {
            Some(format!("{} sessions ended", c.sessions_ended))
        });
        result
    }

    fn delete_inner(&self, name: &str) -> Result<Changed, AdminError> {
        let user = self.find_user(name)?;
        let sessions_ended = self.store.delete_user_sessions(&user.id)?;
        self.store.delete_user(&user.id)?;
        Ok(Changed {
            user,
            sessions_ended,
            changed: true,
        })
    }

    /// `user reset-2fa` (SPEC §2.10): removes the authenticator (and any half-done
    /// enrolment) and ends all sessions; the next sign-in shows a new QR code.
    pub fn reset_2fa(&self, name: &str, actor: Actor) -> Result<Changed, AdminError> {
        let result = self.reset_2fa_inner(name);
        self.record(actor, "user.reset_2fa", Some(name), &result, |c| {
            Some(format!(
                "{}; {} sessions ended",
                if c.changed {
                    "authenticator removed"
                } else {
                    "no authenticator was set up"
                },
                c.sessions_ended
            ))
        });
        result
    }

    fn reset_2fa_inner(&self, name: &str) -> Result<Changed, AdminError> {
        let user = self.find_user(name)?;
        let changed = user.totp.is_some() || user.pending_totp.is_some();
        let now = self.clock.now();
        let user = self.store.update_user(&user.id, &mut |u| {
            u.totp = None;
            u.pending_totp = None;
            u.sessions_valid_after = u.sessions_valid_after.max(now);
            u.updated_at = now;
            Ok(())
        })?;
        let sessions_ended = self.store.delete_user_sessions(&user.id)?;
        Ok(Changed {
            user,
            sessions_ended,
            changed,
        })
    }

    /// `user set-password`: a new password (policy-checked, Argon2id); the user's sessions
    /// end, so whoever knew the old password is signed out.
    pub async fn set_password(
        &self,
        name: &str,
        password: Password,
        actor: Actor,
    ) -> Result<Changed, AdminError> {
        let result = self.set_password_inner(name, password).await;
        self.record(actor, "user.set_password", Some(name), &result, |c| {
            Some(format!("{} sessions ended", c.sessions_ended))
        });
        result
    }

    async fn set_password_inner(
        &self,
        name: &str,
        password: Password,
    ) -> Result<Changed, AdminError> {
        let user = self.find_user(name)?;
        self.check_password(&password, &user.name)?;
        let hash = self.hasher.hash(password).await?;
        let now = self.clock.now();
        let user = self.store.update_user(&user.id, &mut |u| {
            u.password_hash = Some(hash.clone());
            u.sessions_valid_after = u.sessions_valid_after.max(now);
            u.updated_at = now;
            Ok(())
        })?;
        let sessions_ended = self.store.delete_user_sessions(&user.id)?;
        Ok(Changed {
            user,
            sessions_ended,
            changed: true,
        })
    }

    /// `user grant NAME APP`: access to one more app (which must be configured).
    pub fn grant_app(
        &self,
        name: &str,
        app: &str,
        known_apps: &[String],
        actor: Actor,
    ) -> Result<Changed, AdminError> {
        let result = self.grant_inner(name, app, known_apps, true);
        self.record(actor, "user.grant", Some(name), &result, |c| {
            Some(format!(
                "app {app}{}",
                if c.changed { "" } else { " (already granted)" }
            ))
        });
        result
    }

    /// `user revoke NAME APP`: takes access to one app away at once. An app no longer in
    /// the configuration can still be revoked from a user who holds it, to tidy up.
    pub fn revoke_app(
        &self,
        name: &str,
        app: &str,
        known_apps: &[String],
        actor: Actor,
    ) -> Result<Changed, AdminError> {
        let result = self.grant_inner(name, app, known_apps, false);
        self.record(actor, "user.revoke", Some(name), &result, |c| {
            Some(format!(
                "app {app}{}",
                if c.changed { "" } else { " (was not granted)" }
            ))
        });
        result
    }

    fn grant_inner(
        &self,
        name: &str,
        app: &str,
        known_apps: &[String],
        grant: bool,
    ) -> Result<Changed, AdminError> {
        if grant {
            known_app(app, known_apps)?;
        }
        let user = self.find_user(name)?;
        let holds = user.apps.contains(app);
        if !grant && !holds {
            known_app(app, known_apps)?;
        }
        if holds == grant {
            return Ok(Changed {
                user,
                sessions_ended: 0,
                changed: false,
            });
        }
        let now = self.clock.now();
        let user = self.store.update_user(&user.id, &mut |u| {
            if grant {
                u.apps.insert(app.to_string());
            } else {
                u.apps.remove(app);
            }
            u.updated_at = now;
            Ok(())
        })?;
        Ok(Changed {
            user,
            sessions_ended: 0,
            changed: true,
        })
    }

    /// `audit`: the newest `limit` events, only those about `user` when given.
    pub fn audit_trail(
        &self,
        user: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, AdminError> {
        Ok(self.store.audit(user, limit)?)
    }

    /// `user import FILE.csv`: existing users with their password hashes (SPEC §2.9).
    /// Columns `name,email,hash,apps`; the header row is optional; apps are separated by
    /// `;` or spaces. The whole file is checked first and every bad line reported; if any
    /// line is bad, nothing is imported. Imported users are active without an
    /// authenticator: they set up 2FA at their first sign-in.
    pub fn import_csv(
        &self,
        text: &str,
        known_apps: &[String],
        actor: Actor,
    ) -> Result<Vec<User>, AdminError> {
        let result = self.import_csv_inner(text, known_apps);
        match &result {
            Ok(users) => {
                for u in users {
                    self.audit(
                        actor,
                        "user.import",
                        Some(&u.name),
                        "ok",
                        Some(format!("apps: {}", list_or_none(&u.apps))),
                        None,
                    );
                }
            }
            Err(_) => self.record(actor, "user.import", None, &result, |_| None),
        }
        result
    }

    fn import_csv_inner(&self, text: &str, known_apps: &[String]) -> Result<Vec<User>, AdminError> {
        let mut problems = Vec::new();
        let mut good = Vec::new();
        // Lowercase name → line of its first appearance.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for row in parse_csv(text, known_apps) {
            let mut found = row.problems;
            if let Some(name) = &row.name {
                match seen.get(&name.to_ascii_lowercase()) {
                    Some(first) => found.push(format!(
                        "{} is already on line {first} (names are not case-sensitive).",
                        quoted(name)
                    )),
                    None => {
                        seen.insert(name.to_ascii_lowercase(), row.line);
                        if let Some(existing) = self.store.user_by_name(name)? {
                            found.push(format!(
                                "A user named {} already exists (names are not case-sensitive).",
                                quoted(&existing.name)
                            ));
                        }
                    }
                }
            }
            match (row.parsed, found.is_empty()) {
                (Some(parsed), true) => good.push(parsed),
                _ => problems.push(RowProblem {
                    line: row.line,
                    problem: found.join(" "),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(AdminError::ImportRejected(problems));
        }
        if good.is_empty() {
            return Err(AdminError::ImportEmpty);
        }
        let now = self.clock.now();
        let mut created: Vec<User> = Vec::with_capacity(good.len());
        for row in good {
            let new = NewUser {
                display_name: row.name.clone(),
                name: row.name,
                email: row.email,
                apps: row.apps,
                status: UserStatus::Active,
                password_hash: Some(row.hash),
                now,
            };
            match self.store.create_user(new) {
                Ok(u) => created.push(u),
                Err(e) => {
                    // Someone added one of these names meanwhile, or the disk failed: take
                    // back what this import wrote, so it is all or nothing.
                    for u in &created {
                        if let Err(undo) = self.store.delete_user(&u.id) {
                            tracing::error!(error = %undo, user = %u.name, "could not undo part of a failed import");
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(created)
    }

    /// `store export`: the whole store as JSON lines, secrets still sealed. Returns the
    /// text and the number of lines.
    pub fn export_store(&self) -> Result<(String, u64), AdminError> {
        let mut out = Vec::new();
        let lines = self.store.export_jsonl(&mut out)?;
        let text = String::from_utf8(out).map_err(|_| {
            AdminError::Invalid("The export is not valid UTF-8; the store may be damaged.".into())
        })?;
        Ok((text, lines))
    }

    /// `store import`: a whole export into an empty store. The export's secret-key canary
    /// must open with this store's key, or its TOTP secrets would be unreadable here.
    /// Returns the number of records imported.
    pub fn import_store(&self, text: &str, actor: Actor) -> Result<u64, AdminError> {
        let result = self.import_store_inner(text);
        // Refusals too: audit events do not count against the empty store an import
        // needs. `record` shortens the reason, which can quote a line of the backup.
        self.record(actor, "store.import", None, &result, |n| {
            Some(format!("{n} records"))
        });
        result
    }

    fn import_store_inner(&self, text: &str) -> Result<u64, AdminError> {
        let mut has_canary = false;
        for line in text.lines().filter(|l| l.contains("\"meta\"")) {
            if let Ok(ExportLine::Meta(meta)) = serde_json::from_str::<ExportLine>(line.trim()) {
                if meta.key == META_SECRET_KEY_CANARY {
                    let sealed = base64::engine::general_purpose::STANDARD
                        .decode(meta.value.as_bytes())
                        .map_err(|_| AdminError::WrongSecretKey)?;
                    self.secrets
                        .check_canary(&sealed)
                        .map_err(|_| AdminError::WrongSecretKey)?;
                    has_canary = true;
                }
            }
        }
        let count = self.store.import_jsonl(&mut text.as_bytes())?;
        if !has_canary {
            self.store
                .put_meta(META_SECRET_KEY_CANARY, &self.secrets.make_canary())?;
        }
        Ok(count)
    }
}

fn known_app(app: &str, known_apps: &[String]) -> Result<(), AdminError> {
    if known_apps.iter().any(|k| k == app) {
        Ok(())
    } else {
        Err(AdminError::UnknownApp {
            app: app.to_string(),
            known: if known_apps.is_empty() {
                "(none configured)".into()
            } else {
                known_apps.join(", ")
            },
        })
    }
}

fn list_or_none(apps: &BTreeSet<String>) -> String {
    if apps.is_empty() {
        "none".into()
    } else {
        apps.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// CSV import
// ---------------------------------------------------------------------------------------

/// Splits one CSV line into fields (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => in_quotes = false,
            ('"', false) if field.trim().is_empty() && !was_quoted => {
                field.clear();
                in_quotes = true;
                was_quoted = true;
            }
            (',', false) => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (c, _) => field.push(c),
        }
    }
    if in_quotes {
        return Err("A quoted field is not closed (a \" is missing).".into());
    }
    fields.push(field);
    Ok(fields.into_iter().map(|f| f.trim().to_string()).collect())
}

/// One line of an import file, checked on its own.
struct CsvRow {
    /// 1-based line number.
    line: usize,
    /// The user name, when it is a valid one (to find duplicates even on bad lines).
    name: Option<String>,
    /// The row, when every field is good.
    parsed: Option<ImportRow>,
    problems: Vec<String>,
}

/// Reads the rows of an import file, each checked on its own (name, e-mail, hash, apps).
/// Blank lines and an optional header row (`name,email,…`) are skipped.
fn parse_csv(text: &str, known_apps: &[String]) -> Vec<CsvRow> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut header_possible = true;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let fields = match split_csv_line(trimmed) {
            Ok(f) => f,
            Err(e) => {
                header_possible = false;
                rows.push(CsvRow {
                    line,
                    name: None,
                    parsed: None,
                    problems: vec![e],
                });
                continue;
            }
        };
        if std::mem::take(&mut header_possible)
            && fields.len() >= 2
            && fields[0].eq_ignore_ascii_case("name")
            && fields[1].eq_ignore_ascii_case("email")
        {
            continue;
        }
        rows.push(check_row(line, fields, known_apps));
    }
    rows
}

fn check_row(line: usize, fields: Vec<String>, known_apps: &[String]) -> CsvRow {
    // An unquoted Argon2 hash contains commas (`m=19456,t=2,p=1`), so the fields between
    // the e-mail and the apps are joined back. The apps field never contains `$`; the
    // last piece of an Argon2 or bcrypt hash always does.
    let (hash, apps) = match fields.len() {
        0..=2 => {
            return CsvRow {
                line,
                name: None,
                parsed: None,
                problems: vec![format!(
                    "Expected the columns name,email,hash,apps, found {} field{}.",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" }
                )],
            }
        }
        3 => (fields[2].clone(), String::new()),
        n if fields[n - 1].contains('$') => (fields[2..].join(","), String::new()),
        n => (fields[2..n - 1].join(","), fields[n - 1].clone()),
    };
    let name = fields[0].clone();
    let email = fields[1].clone();
    let mut problems = Vec::new();
    let valid_name = match validate_name(&name) {
        Ok(()) => Some(name.clone()),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let Err(e) = validate_email(&email) {
        problems.push(e.to_string());
    }
    if let Err(e) = check_imported_hash(&hash) {
        problems.push(e);
    }
    let mut app_set = BTreeSet::new();
    for app in apps.split([';', ' ', '\t']).filter(|a| !a.is_empty()) {
        match known_app(app, known_apps) {
            Ok(()) => {
                app_set.insert(app.to_string());
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    let parsed = problems.is_empty().then_some(ImportRow {
        name,
        email,
        hash,
        apps: app_set,
    });
    CsvRow {
        line,
        name: valid_name,
        parsed,
        problems,
    }
}

/// Checks that `hash` is a password hash sign-in can verify: an Argon2 PHC string
/// (`$argon2id$`, `$argon2i$`, `$argon2d$`) with sane parameters, or a bcrypt hash
/// (`$2a$`, `$2b$`, `$2y$`) with cost 4–16. Never echoes the hash.
pub fn check_imported_hash(hash: &str) -> Result<(), String> {
    const HINT: &str = "Give an Argon2 PHC string ($argon2id$…) or a bcrypt hash ($2b$…).";
    if hash.is_empty() {
        return Err(format!("The password hash is missing. {HINT}"));
    }
    if hash.starts_with("$argon2") {
        return check_argon2(hash)
            .map_err(|why| format!("The Argon2 hash is malformed ({why}). {HINT}"));
    }
    if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        return check_bcrypt(hash)
            .map_err(|why| format!("The bcrypt hash is malformed ({why}). {HINT}"));
    }
    Err(format!(
        "The password hash is not in a known format. {HINT}"
    ))
}

fn check_argon2(hash: &str) -> Result<(), &'static str> {
    let parsed = PasswordHash::new(hash).map_err(|_| "not a PHC string")?;
    Algorithm::new(parsed.algorithm.as_str()).map_err(|_| "unknown Argon2 variant")?;
    if let Some(v) = parsed.version {
        Version::try_from(v).map_err(|_| "unknown version")?;
    }
    let params = Params::try_from(&parsed).map_err(|_| "invalid parameters")?;
    if !auth::password::argon2_params_accepted(&params) {
        return Err("its parameters are too large");
    }
    if parsed.salt.is_none() {
        return Err("no salt");
    }
    if parsed.hash.is_none() {
        return Err("no hash value");
    }
    Ok(())
}

fn check_bcrypt(hash: &str) -> Result<(), &'static str> {
    // `$2b$` + two-digit cost + `$` + 22 characters of salt and 31 of hash.
    let bytes = hash.as_bytes();
    if bytes.len() != 60 || bytes[6] != b'$' {
        return Err("wrong length");
    }
    let cost: u32 = hash
        .get(4..6)
        .and_then(|c| c.parse().ok())
        .ok_or("no cost")?;
    if !(MIN_BCRYPT_COST..=auth::password::MAX_STORED_BCRYPT_COST).contains(&cost) {
        return Err("its cost is outside 4 to 16");
    }
    if !bytes[7..]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/'))
    {
        return Err("invalid characters");
    }
    Ok(())
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

#[cfg(test)]
#[path = "admin_tests.rs"]
pub(crate) mod tests;
