//! The stored things — users, invitations, sessions, hand-offs, failures, audit events — as
//! domain types, and their versioned records (`UserV1` …) that go to disk and to backups.
//!
//! Records are what a backend writes: one format byte, then JSON of the `…V1` struct. The
//! same `…V1` structs, tagged with `"table"`, are the lines of `store export`. A format change
//! is a new `…V2` struct, a new format byte and an explicit conversion.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StoreError;
use crate::clock::UnixSeconds;

// ---------------------------------------------------------------------------------------
// Identifiers and validation
// ---------------------------------------------------------------------------------------

/// A user's stable id: 16 random bytes, written as 32 lowercase hex digits. It is the
/// `sub` of the assertion, so it never changes, not even when the user is renamed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId([u8; 16]);

impl UserId {
    pub fn random() -> Self {
        Self(crate::crypto::random_bytes())
    }
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

impl FromStr for UserId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        from_hex::<16>(s)
            .map(Self)
            .ok_or_else(|| StoreError::Invalid(format!("{s:?} is not a user id (32 hex digits).")))
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Longest user name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Longest e-mail address (RFC 5321 §4.5.3.1.3 path limit, less the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest display name accepted.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;
/// Longest app id accepted.
pub const MAX_APP_ID_LEN: usize = 64;

/// User names: 1–64 ASCII letters, digits and `. _ - @ +`, starting with a letter or digit.
/// ASCII only, so that case-insensitive uniqueness is exact and look-alike names (Cyrillic
/// "а" for Latin "a") cannot impersonate someone in the apps' `Remote-User` header.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{name:?} is not a valid user name. Use 1 to {MAX_NAME_LEN} letters, digits and . _ - @ +, starting with a letter or digit."
        )))
    }
}

/// The key of the case-insensitive name index.
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// E-mail addresses are checked loosely: exactly one `@` with text on both sides, no
/// whitespace or control characters, at most 254 characters. Deliverability is not ours
/// to judge.
pub fn validate_email(email: &str) -> Result<(), StoreError> {
    let ok = email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidEmail(email.chars().take(300).collect()))
    }
}

/// Display names: at most 128 characters, no control characters (they end up in HTTP
/// headers and HTML).
pub fn validate_display_name(display_name: &str) -> Result<(), StoreError> {
    if display_name.chars().count() <= MAX_DISPLAY_NAME_LEN
        && !display_name.chars().any(char::is_control)
    {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "The display name must be at most {MAX_DISPLAY_NAME_LEN} characters without control characters."
        )))
    }
}

/// App ids: 1–64 printable ASCII characters without spaces.
pub fn validate_app_id(app: &str) -> Result<(), StoreError> {
    if !app.is_empty() && app.len() <= MAX_APP_ID_LEN && app.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{app:?} is not a valid app id. Use the id of an [[app]] in the configuration."
        )))
    }
}

// ---------------------------------------------------------------------------------------
// Domain types
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Created, activation link not used yet.
    Invited,
    Active,
    /// May not sign in; existing sessions stop working.
    Disabled,
}

impl fmt::Display for UserStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserStatus::Invited => "invited",
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        })
    }
}

/// An enrolled authenticator: the sealed TOTP secret and the last time step accepted
/// (RFC 6238 §5.2: a step is accepted at most once).
#[derive(Clone, PartialEq, Eq)]
pub struct TotpCredential {
    pub sealed_secret: Vec<u8>,
    pub enrolled_at: UnixSeconds,
    pub last_step: u64,
}

impl fmt::Debug for TotpCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpCredential")
            .field("sealed_secret", &"[redacted]")
            .field("enrolled_at", &self.enrolled_at)
            .field("last_step", &self.last_step)
            .finish()
    }
}

/// An account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub display_name: String,
    pub apps: BTreeSet<String>,
    pub status: UserStatus,
    pub created_at: UnixSeconds,
    pub updated_at: UnixSeconds,
    /// PHC string (Argon2id) or bcrypt string; `None` until a password is chosen.
    pub password_hash: Option<String>,
    pub totp: Option<TotpCredential>,
    /// A sealed secret shown on the enrolment page and not yet confirmed with a code.
    pub pending_totp: Option<Vec<u8>>,
    /// Sessions created before this moment are no longer valid: "end all of this user's
    /// sessions" is one write.
    pub sessions_valid_after: UnixSeconds,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("email", &self.email)
            .field("display_name", &self.display_name)
            .field("apps", &self.apps)
            .field("status", &self.status)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "[redacted]"),
            )
            .field("totp", &self.totp)
            .field(
                "pending_totp",
                &self.pending_totp.as_ref().map(|_| "[redacted]"),
            )
            .field("sessions_valid_after", &self.sessions_valid_after)
            .finish()
    }
}

impl User {
    /// Checks the fields a person types; the store calls it on create and import.
    pub fn validate(&self) -> Result<(), StoreError> {
        validate_name(&self.name)?;
        validate_email(&self.email)?;
        validate_display_name(&self.display_name)?;
        self.apps.iter().try_for_each(|a| validate_app_id(a))
    }

    /// Checks only the fields that differ from `before`, so an account stored under
    /// older, looser rules can still be disabled, reset or granted an app.
    pub fn validate_changes(&self, before: &User) -> Result<(), StoreError> {
        if self.name != before.name {
            validate_name(&self.name)?;
        }
        if self.email != before.email {
            validate_email(&self.email)?;
        }
        if self.display_name != before.display_name {
            validate_display_name(&self.display_name)?;
        }
        self.apps
            .difference(&before.apps)
            .try_for_each(|a| validate_app_id(a))
    }
}

/// What `create_user` needs; the store assigns the id.
#[derive(Clone)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub display_name: String,
    pub apps: BTreeSet<String>,
    pub status: UserStatus,
    pub password_hash: Option<String>,
    pub now: UnixSeconds,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("name", &self.name)
            .field("email", &self.email)
            .field("display_name", &self.display_name)
            .field("apps", &self.apps)
            .field("status", &self.status)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "[redacted]"),
            )
            .field("now", &self.now)
            .finish()
    }
}

impl NewUser {
    pub(crate) fn into_user(self) -> User {
        User {
            id: UserId::random(),
            name: self.name,
            email: self.email,
            display_name: self.display_name,
            apps: self.apps,
            status: self.status,
            created_at: self.now,
            updated_at: self.now,
            password_hash: self.password_hash,
            totp: None,
            pending_totp: None,
            sessions_valid_after: self.now,
        }
    }
}

/// A one-time activation link, stored by the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub token_hash: [u8; 32],
    pub user_id: UserId,
    pub created_at: UnixSeconds,
    pub expires_at: UnixSeconds,
    pub used_at: Option<UnixSeconds>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Password checked, second factor outstanding: grants nothing.
    PasswordVerified,
    /// Password and code checked.
    Authenticated,
}

/// A server-side session, stored by the SHA-256 of its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id_hash: [u8; 32],
    pub user_id: UserId,
    pub state: SessionState,
    pub created_at: UnixSeconds,
    pub last_seen: UnixSeconds,
    /// Absolute end of life, whatever the activity.
    pub expires_at: UnixSeconds,
    pub auth_time: UnixSeconds,
    pub amr: Vec<String>,
    /// For a per-app child session: the auth-origin session it hangs off. Deleting the
    /// parent deletes the children.
    pub parent: Option<[u8; 32]>,
    pub app: Option<String>,
}

/// An SSO one-time code, stored by the SHA-256 of the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOff {
    pub code_hash: [u8; 32],
    pub session_hash: [u8; 32],
    pub app_id: String,
    pub rd: String,
    pub expires_at: UnixSeconds,
    /// The hash of the state cookie of the browser the code was made for (SPEC §2.5).
    pub browser: [u8; 32],
}

/// Recent failed sign-in attempts of one user, for the lockout rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    pub recent: Vec<UnixSeconds>,
    pub locked_until: Option<UnixSeconds>,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: UnixSeconds,
    /// `cli`, `socket`, `web` or `system`.
    pub actor: String,
    pub action: String,
    /// Name of the account the event concerns; `audit --user NAME` filters on it.
    pub user: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
    pub ip: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Versioned records
// ---------------------------------------------------------------------------------------

/// Format byte of every value written by this version.
pub(crate) const RECORD_V1: u8 = 1;

/// Serializes a record as `RECORD_V1 || JSON`.
pub(crate) fn encode_record<R: Serialize>(record: &R) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![RECORD_V1];
    serde_json::to_writer(&mut out, record)
        .map_err(|e| StoreError::Backend(format!("a record could not be serialized ({e})")))?;
    Ok(out)
}

/// Reads a record written by [`encode_record`] and converts it to its domain type.
pub(crate) fn decode_record<R, T>(bytes: &[u8]) -> Result<T, StoreError>
where
    R: DeserializeOwned,
    T: TryFrom<R, Error = StoreError>,
{
    match bytes.split_first() {
        Some((&RECORD_V1, json)) => {
            let record: R = serde_json::from_slice(json).map_err(|e| {
                StoreError::Backend(format!("a stored record is damaged ({e})"))
            })?;
            T::try_from(record)
        }
        Some((v, _)) => Err(StoreError::Backend(format!(
            "a stored record has format {v}, which this version of Portcullis does not know; upgrade Portcullis"
        ))),
        None => Err(StoreError::Backend("a stored record is empty".into())),
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    s
}

pub(crate) fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn hash_from_hex(s: &str, what: &str) -> Result<[u8; 32], StoreError> {
    from_hex::<32>(s)
        .ok_or_else(|| StoreError::Invalid(format!("The {what} is not 64 hex digits.")))
}

fn blob_from_base64(s: &str, what: &str) -> Result<Vec<u8>, StoreError> {
    STANDARD
        .decode(s)
        .map_err(|_| StoreError::Invalid(format!("The {what} is not valid base64.")))
}

fn non_negative(t: UnixSeconds, what: &str) -> Result<UnixSeconds, StoreError> {
    if t >= 0 {
        Ok(t)
    } else {
        Err(StoreError::Invalid(format!("The {what} is before 1970.")))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpV1 {
    /// base64 of the sealed secret (still encrypted).
    pub sealed_secret: String,
    pub enrolled_at: UnixSeconds,
    pub last_step: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserV1 {
    pub id: String,
    pub name: String,
    pub email: String,
    pub display_name: String,
    pub apps: Vec<String>,
    pub status: UserStatus,
    pub created_at: UnixSeconds,
    pub updated_at: UnixSeconds,
    pub password_hash: Option<String>,
    pub totp: Option<TotpV1>,
    /// base64 of the sealed pending secret.
    pub pending_totp: Option<String>,
    pub sessions_valid_after: UnixSeconds,
}

impl From<&User> for UserV1 {
    fn from(u: &User) -> Self {
        UserV1 {
            id: u.id.to_string(),
            name: u.name.clone(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            apps: u.apps.iter().cloned().collect(),
            status: u.status,
            created_at: u.created_at,
            updated_at: u.updated_at,
            password_hash: u.password_hash.clone(),
            totp: u.totp.as_ref().map(|t| TotpV1 {
                sealed_secret: STANDARD.encode(&t.sealed_secret),
                enrolled_at: t.enrolled_at,
                last_step: t.last_step,
            }),
            pending_totp: u.pending_totp.as_ref().map(|p| STANDARD.encode(p)),
            sessions_valid_after: u.sessions_valid_after,
        }
    }
}

impl TryFrom<UserV1> for User {
    type Error = StoreError;
    fn try_from(r: UserV1) -> Result<Self, StoreError> {
        let user = User {
            id: r.id.parse()?,
            name: r.name,
            email: r.email,
            display_name: r.display_name,
            apps: r.apps.into_iter().collect(),
            status: r.status,
            created_at: non_negative(r.created_at, "creation time")?,
            updated_at: non_negative(r.updated_at, "update time")?,
            password_hash: r.password_hash,
            totp: r
                .totp
                .map(|t| -> Result<TotpCredential, StoreError> {
                    Ok(TotpCredential {
                        sealed_secret: blob_from_base64(&t.sealed_secret, "TOTP secret")?,
                        enrolled_at: t.enrolled_at,
                        last_step: t.last_step,
                    })
                })
                .transpose()?,
            pending_totp: r
                .pending_totp
                .map(|p| blob_from_base64(&p, "pending TOTP secret"))
                .transpose()?,
            sessions_valid_after: r.sessions_valid_after,
        };
        // Field rules (name, e-mail …) are checked on every write and on import, not
        // here: a record written under older, looser rules must still load.
        Ok(user)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitationV1 {
    pub token_hash: String,
    pub user_id: String,
    pub created_at: UnixSeconds,
    pub expires_at: UnixSeconds,
    pub used_at: Option<UnixSeconds>,
}

impl From<&Invitation> for InvitationV1 {
    fn from(i: &Invitation) -> Self {
        InvitationV1 {
            token_hash: to_hex(&i.token_hash),
            user_id: i.user_id.to_string(),
            created_at: i.created_at,
            expires_at: i.expires_at,
            used_at: i.used_at,
        }
    }
}

impl TryFrom<InvitationV1> for Invitation {
    type Error = StoreError;
    fn try_from(r: InvitationV1) -> Result<Self, StoreError> {
        Ok(Invitation {
            token_hash: hash_from_hex(&r.token_hash, "invitation token hash")?,
            user_id: r.user_id.parse()?,
            created_at: r.created_at,
            expires_at: r.expires_at,
            used_at: r.used_at,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionV1 {
    pub id_hash: String,
    pub user_id: String,
    pub state: SessionState,
    pub created_at: UnixSeconds,
    pub last_seen: UnixSeconds,
    pub expires_at: UnixSeconds,
    pub auth_time: UnixSeconds,
    pub amr: Vec<String>,
    pub parent: Option<String>,
    pub app: Option<String>,
}

impl From<&Session> for SessionV1 {
    fn from(s: &Session) -> Self {
        SessionV1 {
            id_hash: to_hex(&s.id_hash),
            user_id: s.user_id.to_string(),
            state: s.state,
            created_at: s.created_at,
            last_seen: s.last_seen,
            expires_at: s.expires_at,
            auth_time: s.auth_time,
            amr: s.amr.clone(),
            parent: s.parent.as_ref().map(|p| to_hex(p)),
            app: s.app.clone(),
        }
    }
}

impl TryFrom<SessionV1> for Session {
    type Error = StoreError;
    fn try_from(r: SessionV1) -> Result<Self, StoreError> {
        Ok(Session {
            id_hash: hash_from_hex(&r.id_hash, "session id hash")?,
            user_id: r.user_id.parse()?,
            state: r.state,
            created_at: r.created_at,
            last_seen: r.last_seen,
            expires_at: r.expires_at,
            auth_time: r.auth_time,
            amr: r.amr,
            parent: r
                .parent
                .map(|p| hash_from_hex(&p, "parent session hash"))
                .transpose()?,
            app: r.app,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandOffV1 {
    pub code_hash: String,
    pub session_hash: String,
    pub app_id: String,
    pub rd: String,
    pub expires_at: UnixSeconds,
    /// Absent in records written before hand-offs were bound to a browser: those
    /// redeem nowhere (and expire within a minute anyway).
    #[serde(default)]
    pub browser: String,
}

impl From<&HandOff> for HandOffV1 {
    fn from(h: &HandOff) -> Self {
        HandOffV1 {
            code_hash: to_hex(&h.code_hash),
            session_hash: to_hex(&h.session_hash),
            app_id: h.app_id.clone(),
            rd: h.rd.clone(),
            expires_at: h.expires_at,
            browser: to_hex(&h.browser),
        }
    }
}

impl TryFrom<HandOffV1> for HandOff {
    type Error = StoreError;
    fn try_from(r: HandOffV1) -> Result<Self, StoreError> {
        Ok(HandOff {
            code_hash: hash_from_hex(&r.code_hash, "hand-off code hash")?,
            session_hash: hash_from_hex(&r.session_hash, "hand-off session hash")?,
            app_id: r.app_id,
            rd: r.rd,
            expires_at: r.expires_at,
            browser: if r.browser.is_empty() {
                [0; 32]
            } else {
                hash_from_hex(&r.browser, "hand-off browser binding")?
            },
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailuresV1 {
    pub user_id: String,
    pub recent: Vec<UnixSeconds>,
    pub locked_until: Option<UnixSeconds>,
}

impl FailuresV1 {
    pub(crate) fn new(user_id: &UserId, f: &Failures) -> Self {
        FailuresV1 {
            user_id: user_id.to_string(),
            recent: f.recent.clone(),
            locked_until: f.locked_until,
        }
    }
}

/// Failures as stored, with the user they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserFailures(pub UserId, pub Failures);

impl TryFrom<FailuresV1> for UserFailures {
    type Error = StoreError;
    fn try_from(r: FailuresV1) -> Result<Self, StoreError> {
        Ok(UserFailures(
            r.user_id.parse()?,
            Failures {
                recent: r.recent,
                locked_until: r.locked_until,
            },
        ))
    }
}

impl TryFrom<FailuresV1> for Failures {
    type Error = StoreError;
    fn try_from(r: FailuresV1) -> Result<Self, StoreError> {
        UserFailures::try_from(r).map(|u| u.1)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditV1 {
    /// Position in the trail: strictly increasing, so events within one second keep order.
    pub seq: u64,
    pub at: UnixSeconds,
    pub actor: String,
    pub action: String,
    pub user: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
    pub ip: Option<String>,
}

impl AuditV1 {
    pub(crate) fn new(seq: u64, e: &AuditEvent) -> Self {
        AuditV1 {
            seq,
            at: e.at,
            actor: e.actor.clone(),
            action: e.action.clone(),
            user: e.user.clone(),
            target: e.target.clone(),
            outcome: e.outcome.clone(),
            detail: e.detail.clone(),
            ip: e.ip.clone(),
        }
    }
}

impl TryFrom<AuditV1> for AuditEvent {
    type Error = StoreError;
    fn try_from(r: AuditV1) -> Result<Self, StoreError> {
        Ok(AuditEvent {
            at: r.at,
            actor: r.actor,
            action: r.action,
            user: r.user,
            target: r.target,
            outcome: r.outcome,
            detail: r.detail,
            ip: r.ip,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaV1 {
    pub key: String,
    /// base64 of the value.
    pub value: String,
}

// ---------------------------------------------------------------------------------------
// Backup format
// ---------------------------------------------------------------------------------------

/// Name written in the first line of an export.
pub const EXPORT_FORMAT: &str = "portcullis-store";
/// Version of the export format.
pub const EXPORT_VERSION: u32 = 1;

/// One line of `store export`: a JSON object whose `"table"` says what it holds. Secrets
/// stay as they are stored — password hashes and sealed TOTP secrets, never plaintext.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "table", rename_all = "snake_case")]
pub enum ExportLine {
    /// First line: `{"table":"header","format":"portcullis-store","version":1}`.
    Header {
        format: String,
        version: u32,
    },
    User(UserV1),
    Invitation(InvitationV1),
    Session(SessionV1),
    Handoff(HandOffV1),
    Failures(FailuresV1),
    Audit(AuditV1),
    Meta(MetaV1),
}

impl ExportLine {
    pub fn header() -> Self {
        ExportLine::Header {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
        }
    }
}

/// A whole store in memory, validated: what an import writes.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub users: Vec<User>,
    pub invitations: Vec<Invitation>,
    pub sessions: Vec<Session>,
    pub handoffs: Vec<HandOff>,
    pub failures: Vec<(UserId, Failures)>,
    pub audit: Vec<(u64, AuditEvent)>,
    pub meta: Vec<(String, Vec<u8>)>,
}

/// Longest line accepted by an import (a user record with long fields is a few KiB).
const MAX_IMPORT_LINE: usize = 1024 * 1024;

/// Reads and validates a whole export: every line must parse and convert, ids and names
/// must be unique, and every reference (user of a session, parent of a session …) must
/// point into the same export. Nothing is written here.
pub(crate) fn read_snapshot(input: &mut dyn std::io::BufRead) -> Result<Snapshot, StoreError> {
    use std::collections::HashSet;
    use std::io::{BufRead as _, Read as _};

    let mut snap = Snapshot::default();
    let mut header_seen = false;
    let mut line_no = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        line_no += 1;
        let n = (&mut *input)
            .take(MAX_IMPORT_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| StoreError::Invalid(format!("The import could not be read: {e}.")))?;
        if n == 0 {
            break;
        }
        let bad = |reason: String| {
            StoreError::Invalid(format!(
                "Line {line_no} of the import is not valid: {reason}. Nothing was imported."
            ))
        };
        if buf.len() > MAX_IMPORT_LINE {
            return Err(bad("it is longer than 1 MiB".into()));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| bad("it is not UTF-8".into()))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let line: ExportLine = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let conv = |e: StoreError| bad(e.to_string().trim_end_matches('.').to_string());
        match line {
            ExportLine::Header { format, version } => {
                if header_seen || !snap_is_empty(&snap) {
                    return Err(bad("the header may only be the first line".into()));
                }
                if format != EXPORT_FORMAT || version != EXPORT_VERSION {
                    return Err(bad(format!(
                        "this is {format} version {version}; this build reads {EXPORT_FORMAT} version {EXPORT_VERSION}"
                    )));
                }
                header_seen = true;
                continue;
            }
            _ if !header_seen => return Err(bad(
                "an export starts with a header line; is this a `portcullis store export` file?"
                    .into(),
            )),
            ExportLine::User(r) => {
                let user = User::try_from(r).map_err(conv)?;
                user.validate().map_err(conv)?;
                snap.users.push(user);
            }
            ExportLine::Invitation(r) => snap
                .invitations
                .push(Invitation::try_from(r).map_err(conv)?),
            ExportLine::Session(r) => snap.sessions.push(Session::try_from(r).map_err(conv)?),
            ExportLine::Handoff(r) => snap.handoffs.push(HandOff::try_from(r).map_err(conv)?),
            ExportLine::Failures(r) => {
                let UserFailures(id, f) = UserFailures::try_from(r).map_err(conv)?;
                snap.failures.push((id, f));
            }
            ExportLine::Audit(r) => {
                let seq = r.seq;
                snap.audit
                    .push((seq, AuditEvent::try_from(r).map_err(conv)?));
            }
            ExportLine::Meta(r) => {
                let value = blob_from_base64(&r.value, "meta value").map_err(conv)?;
                snap.meta.push((r.key, value));
            }
        }
    }
    if !header_seen {
        return Err(StoreError::Invalid(
            "The import is empty: it has no header line. Nothing was imported.".into(),
        ));
    }

    let dup = |what: &str, key: String| {
        StoreError::Invalid(format!(
            "The import holds the {what} {key} twice. Nothing was imported."
        ))
    };
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for u in &snap.users {
        if !ids.insert(u.id) {
            return Err(dup("user id", u.id.to_string()));
        }
        if !names.insert(name_key(&u.name)) {
            return Err(StoreError::Duplicate(u.name.clone()));
        }
    }
    let missing_user = |what: &str, id: &UserId| {
        StoreError::Invalid(format!(
            "The import has a {what} for user id {id}, which it does not contain. Nothing was imported."
        ))
    };
    let mut seen = HashSet::new();
    for i in &snap.invitations {
        if !seen.insert(i.token_hash) {
            return Err(dup("invitation", to_hex(&i.token_hash)));
        }
        if !ids.contains(&i.user_id) {
            return Err(missing_user("invitation", &i.user_id));
        }
    }
    let mut sessions = HashSet::new();
    for s in &snap.sessions {
        if !sessions.insert(s.id_hash) {
            return Err(dup("session", to_hex(&s.id_hash)));
        }
        if !ids.contains(&s.user_id) {
            return Err(missing_user("session", &s.user_id));
        }
    }
    for s in &snap.sessions {
        if let Some(p) = &s.parent {
            if !sessions.contains(p) {
                return Err(StoreError::Invalid(format!(
                    "The import has a session whose parent session {} it does not contain. Nothing was imported.",
                    to_hex(p)
                )));
            }
        }
    }
    let mut seen = HashSet::new();
    for h in &snap.handoffs {
        if !seen.insert(h.code_hash) {
            return Err(dup("hand-off", to_hex(&h.code_hash)));
        }
    }
    let mut seen = HashSet::new();
    for (id, _) in &snap.failures {
        if !seen.insert(*id) {
            return Err(dup("failure record of user", id.to_string()));
        }
        if !ids.contains(id) {
            return Err(missing_user("failure record", id));
        }
    }
    let mut seen = HashSet::new();
    for (seq, _) in &snap.audit {
        if !seen.insert(*seq) {
            return Err(dup("audit sequence number", seq.to_string()));
        }
    }
    let mut seen = HashSet::new();
    for (key, _) in &snap.meta {
        if !seen.insert(key.clone()) {
            return Err(dup("meta key", key.clone()));
        }
    }
    Ok(snap)
}

fn snap_is_empty(s: &Snapshot) -> bool {
    s.users.is_empty()
        && s.invitations.is_empty()
        && s.sessions.is_empty()
        && s.handoffs.is_empty()
        && s.failures.is_empty()
        && s.audit.is_empty()
        && s.meta.is_empty()
}

/// Writes one export line.
pub(crate) fn write_line(
    out: &mut dyn std::io::Write,
    line: &ExportLine,
) -> Result<(), StoreError> {
    let io =
        |e: std::io::Error| StoreError::Invalid(format!("The export could not be written: {e}."));
    serde_json::to_writer(&mut *out, line)
        .map_err(|e| StoreError::Invalid(format!("The export could not be written: {e}.")))?;
    out.write_all(b"\n").map_err(io)
}

/// Meta value as an export line.
pub(crate) fn meta_line(key: &str, value: &[u8]) -> ExportLine {
    ExportLine::Meta(MetaV1 {
        key: key.to_string(),
        value: STANDARD.encode(value),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn user_id_round_trips_through_its_string_form() {
        let id = UserId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<UserId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<UserId>().unwrap(), id);
        for bad in [
            "",
            "xyz",
            &s[..31],
            &format!("{s}0"),
            &format!("{}g", &s[..31]),
        ] {
            assert!(bad.parse::<UserId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        for ok in [
            "alice",
            "Alice.Smith",
            "a",
            "bob_2",
            "c-d",
            "e@example.com",
            "x+y",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "", " alice", "alice ", "al ice", "-alice", ".alice", "älice", "аlice", "a/b", "a\nb",
            "a\0b", "a:b", &long,
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn emails_are_checked_loosely() {
        for ok in [
            "a@b",
            "alice@example.com",
            "a.b+c@sub.example.co.uk",
            "用户@例子.广告",
        ] {
            assert!(validate_email(ok).is_ok(), "{ok}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "", "@", "a@", "@b", "a@@b", "a@b@c", "a b@c", "a@b\n", "ab", &long,
        ] {
            assert!(
                matches!(validate_email(bad), Err(StoreError::InvalidEmail(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn display_names_without_control_characters_are_accepted() {
        assert!(validate_display_name("").is_ok());
        assert!(validate_display_name("Zoë O'Brien").is_ok());
        assert!(validate_display_name("a\r\nX-Evil: 1").is_err());
        assert!(validate_display_name(&"é".repeat(MAX_DISPLAY_NAME_LEN)).is_ok());
        assert!(validate_display_name(&"é".repeat(MAX_DISPLAY_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn record_of_unknown_format_is_refused() {
        let r = decode_record::<InvitationV1, Invitation>(b"\x02{}");
        assert!(r.unwrap_err().to_string().contains("upgrade Portcullis"));
        assert!(decode_record::<InvitationV1, Invitation>(b"").is_err());
        assert!(decode_record::<InvitationV1, Invitation>(b"\x01{").is_err());
    }

    #[test]
    fn user_record_round_trips_and_redacts_in_debug() {
        let mut u = NewUser {
            name: "alice".into(),
            email: "alice@example.com".into(),
            display_name: "Alice".into(),
            apps: ["portal".to_string()].into(),
            status: UserStatus::Active,
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            now: 10,
        }
        .into_user();
        u.totp = Some(TotpCredential {
            sealed_secret: vec![1, 2, 3],
            enrolled_at: 11,
            last_step: 42,
        });
        u.pending_totp = Some(vec![9, 9]);
        let bytes = encode_record(&UserV1::from(&u)).unwrap();
        assert_eq!(bytes[0], RECORD_V1);
        let back: User = decode_record::<UserV1, User>(&bytes).unwrap();
        assert_eq!(back, u);
        let dbg = format!("{u:?}");
        assert!(!dbg.contains("argon2id"), "{dbg}");
        assert!(!dbg.contains("[1, 2, 3]"), "{dbg}");
    }

    #[test]
    fn record_with_unknown_field_is_refused() {
        let json = r#"{"token_hash":"00","user_id":"00","created_at":0,"expires_at":0,"used_at":null,"extra":1}"#;
        let mut bytes = vec![RECORD_V1];
        bytes.extend_from_slice(json.as_bytes());
        assert!(decode_record::<InvitationV1, Invitation>(&bytes).is_err());
    }

    #[test]
    fn export_line_is_tagged_with_its_table() {
        let line = meta_line("k", b"v");
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(json, r#"{"table":"meta","key":"k","value":"dg=="}"#);
        let header = serde_json::to_string(&ExportLine::header()).unwrap();
        assert_eq!(
            header,
            r#"{"table":"header","format":"portcullis-store","version":1}"#
        );
    }

    #[test]
    fn import_refuses_unknown_fields_in_tagged_lines() {
        let input = format!(
            "{}\n{}\n",
            serde_json::to_string(&ExportLine::header()).unwrap(),
            r#"{"table":"meta","key":"k","value":"dg==","surprise":true}"#
        );
        let err = read_snapshot(&mut input.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("Line 2"), "{err}");
    }

    #[test]
    fn import_without_header_or_with_late_header_is_refused() {
        let meta = serde_json::to_string(&meta_line("k", b"v")).unwrap();
        let header = serde_json::to_string(&ExportLine::header()).unwrap();
        assert!(read_snapshot(&mut "".as_bytes()).is_err());
        assert!(read_snapshot(&mut format!("{meta}\n").as_bytes()).is_err());
        assert!(read_snapshot(&mut format!("{header}\n{meta}\n{header}\n").as_bytes()).is_err());
        let wrong_version = r#"{"table":"header","format":"portcullis-store","version":2}"#;
        assert!(read_snapshot(&mut wrong_version.as_bytes()).is_err());
        // Blank lines are tolerated; a missing final newline too.
        let snap = read_snapshot(&mut format!("{header}\n\n{meta}").as_bytes()).unwrap();
        assert_eq!(snap.meta, vec![("k".to_string(), b"v".to_vec())]);
    }

    #[test]
    fn import_of_garbage_names_the_line() {
        let header = serde_json::to_string(&ExportLine::header()).unwrap();
        for garbage in ["{", "[]", "null", r#"{"table":"nope"}"#, "\u{0}"] {
            let err = read_snapshot(&mut format!("{header}\n{garbage}\n").as_bytes()).unwrap_err();
            assert!(err.to_string().starts_with("Line 2 "), "{err}");
        }
        let mut bytes = format!("{header}\n").into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        assert!(read_snapshot(&mut bytes.as_slice()).is_err());
    }
}
