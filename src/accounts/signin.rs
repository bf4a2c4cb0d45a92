//! The sign-in steps: password, enrolment, code, sessions and the SSO hand-off. Each
//! step decides with the pure rules of `auth/` and records its effect in the store.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use base64::Engine;
use http::HeaderValue;

use crate::accounts::cache::SignedIn;
use crate::accounts::{Accounts, Actor};
use crate::auth::{self, CodeError, LockState, Password, PolicyError, SecretToken, TotpSecret};
use crate::clock::UnixSeconds;
use crate::metrics::SignInOutcome;
use crate::store::{
    Failures, HandOff, Session, SessionState, StoreError, User, UserId, UserStatus,
};

/// A pending sign-in (password checked, second factor not yet) lives this long.
pub const PENDING_TTL: i64 = 5 * 60;
/// An SSO hand-off code is good for this long, once.
pub const HANDOFF_TTL: i64 = 60;
/// `last_seen` is written at most this often per session, so proxied traffic does not
/// turn into a store write per request.
pub const TOUCH_INTERVAL: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Wrong user name or wrong password: one message for both (SPEC §2.2).
    #[error("That user name and password do not match. Check them and try again.")]
    BadCredentials,
    #[error("Too many failed attempts. For your security this account is locked for a while. Try again later.")]
    Locked { until: UnixSeconds },
    #[error("{0}")]
    Code(CodeError),
    #[error("Two-factor authentication is not set up for this account yet.")]
    NotEnrolled,
    #[error("Your sign-in took too long. Please start again.")]
    Expired,
    #[error("Sign-in is temporarily unavailable. Try again in a few minutes.")]
    Unavailable(String),
}

impl From<StoreError> for SignInError {
    fn from(e: StoreError) -> Self {
        SignInError::Unavailable(e.to_string())
    }
}

impl From<auth::PasswordError> for SignInError {
    fn from(e: auth::PasswordError) -> Self {
        SignInError::Unavailable(e.to_string())
    }
}

impl From<auth::RandomError> for SignInError {
    fn from(e: auth::RandomError) -> Self {
        SignInError::Unavailable(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("This activation link has expired or was already used.")]
    InvalidLink,
    #[error("The two passwords are not the same. Type the same password twice.")]
    Mismatch,
    #[error("{0}")]
    Policy(PolicyError),
    #[error("Activation is temporarily unavailable. Try again in a few minutes.")]
    Unavailable(String),
}

impl From<StoreError> for ActivationError {
    fn from(e: StoreError) -> Self {
        ActivationError::Unavailable(e.to_string())
    }
}

/// What an activation link leads to.
pub enum Activation {
    /// The user has no password yet: ask for one.
    ChoosePassword {
        user: Box<User>,
    },
    /// The admin set a password: the person signs in as the guide says.
    SignIn,
    Invalid,
}

/// A verified session and its user.
pub struct Verified {
    pub session: Session,
    pub user: User,
}

fn to_lock(f: Failures) -> LockState {
    LockState {
        recent: f.recent,
        locked_until: f.locked_until,
    }
}

fn from_lock(l: LockState) -> Failures {
    Failures {
        recent: l.recent,
        locked_until: l.locked_until,
    }
}

/// A stable, public name for a sign-in: apps may log it or correlate by it, and it
/// reveals nothing that would let anyone use the session.
pub fn public_sid(session_hash: &[u8; 32]) -> String {
    let mut input = b"portcullis sid v1:".to_vec();
    input.extend_from_slice(session_hash);
    let digest = crate::crypto::sha256(&input);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// A session is alive when it is within its absolute lifetime and idle timeout, its user
/// may sign in, and nothing ended all the user's sessions after it began.
pub fn session_alive(s: &Session, user: &User, now: UnixSeconds, idle_timeout: i64) -> bool {
    now < s.expires_at
        && now < s.last_seen.saturating_add(idle_timeout)
        && s.created_at >= user.sessions_valid_after
        && user.status != UserStatus::Disabled
        && s.user_id == user.id
}

/// Guesses for one account, judged one at a time. Between reading an account's lock and
/// counting a failure there is a hash of ~50 ms and a store write; guesses in flight
/// together each read "not locked" before any had counted, so a burst had more than
/// `max_failures` of them judged and a right one among them could pass after the fifth
/// wrong one (SPEC §5). Each password, enrolment or code attempt holds its account's gate
/// from before the lock is read until its outcome is counted; the gate is fair, so
/// guesses are judged in the order they came. Accounts share 256 gates by the first byte
/// of their id: bounded memory, and a rare wait behind another account's attempt.
pub struct AttemptGates(Box<[tokio::sync::Mutex<()>; 256]>);

impl Default for AttemptGates {
    fn default() -> Self {
        Self(Box::new(std::array::from_fn(|_| {
            tokio::sync::Mutex::new(())
        })))
    }
}

impl AttemptGates {
    /// Waits for `user`'s turn; the turn lasts as long as the guard.
    pub async fn turn(&self, user: &UserId) -> tokio::sync::MutexGuard<'_, ()> {
        // Ids are random, so their first byte spreads them as well as any hash would.
        let [first, ..] = *user.as_bytes();
        self.0[usize::from(first)].lock().await
    }
}

/// Failed sign-ins for names with no active account (unknown, disabled, not yet
/// activated), counted in memory under the same lockout policy as an account's: if only
/// real accounts ever locked, five wrong passwords would tell whether a name exists
/// (SPEC §2.2: the same answer). Keyed by a hash of the case-folded name, at most
/// [`UNKNOWN_NAMES_KEPT`] of them; when full, those no longer counting are forgotten,
/// then those not locked, and if that is not enough, all.
#[derive(Default)]
pub struct UnknownNames(Mutex<std::collections::HashMap<[u8; 32], LockState>>);

pub const UNKNOWN_NAMES_KEPT: usize = 10_000;

impl UnknownNames {
    /// Counts a failure for `name` at `now`; the lock's end when the name is locked.
    pub fn failure(
        &self,
        name: &str,
        now: UnixSeconds,
        policy: &auth::LockoutPolicy,
    ) -> Option<UnixSeconds> {
        let key = {
            let d = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                crate::store::model::name_key(name).as_bytes(),
            );
            let mut key = [0u8; 32];
            key.copy_from_slice(d.as_ref());
            key
        };
        let mut names = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if names.len() >= UNKNOWN_NAMES_KEPT && !names.contains_key(&key) {
            let horizon = now.saturating_sub(policy.window);
            names.retain(|_, s| {
                auth::is_locked(s, now).is_some() || s.recent.last().is_some_and(|&t| t > horizon)
            });
            if names.len() >= UNKNOWN_NAMES_KEPT {
                names.retain(|_, s| auth::is_locked(s, now).is_some());
            }
            if names.len() >= UNKNOWN_NAMES_KEPT {
                names.clear();
            }
        }
        let state = names.remove(&key).unwrap_or_default();
        let (state, _) = auth::record_failure(state, now, policy);
        let locked = auth::is_locked(&state, now);
        names.insert(key, state);
        locked
    }

    #[cfg(test)]
    pub fn counted(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// What a pending enrolment secret is sealed with: the account and the pending sign-in
/// it was made for.
fn pending_secret_aad(pending: &Verified) -> Vec<u8> {
    let mut aad = pending.user.id.to_string().into_bytes();
    aad.push(b'/');
    aad.extend_from_slice(&pending.session.id_hash);
    aad
}

impl Accounts {
    fn now(&self) -> UnixSeconds {
        self.clock.now()
    }

    fn locked_until(&self, user: &User) -> Result<Option<UnixSeconds>, StoreError> {
        Ok(auth::is_locked(
            &to_lock(self.store.failures(&user.id)?),
            self.now(),
        ))
    }

    /// Counts a failed password or code; returns the lock end when this failure locked
    /// the account.
    fn record_failure(
        &self,
        user: &User,
        step: &str,
        ip: Option<&str>,
    ) -> Result<Option<UnixSeconds>, StoreError> {
        let now = self.now();
        let policy = self.settings.lockout;
        let mut newly_locked = false;
        let stored = self.store.update_failures(&user.id, &mut |f| {
            let (next, locked) = auth::record_failure(to_lock(std::mem::take(f)), now, &policy);
            newly_locked = locked;
            *f = from_lock(next);
        })?;
        self.audit(
            Actor::Web,
            step,
            Some(&user.name),
            "failure",
            None,
            ip.map(str::to_string),
        );
        if newly_locked {
            self.metrics.lockout();
            self.audit(
                Actor::System,
                "account.lockout",
                Some(&user.name),
                "locked",
                Some(format!("locked for {} s", policy.lockout)),
                ip.map(str::to_string),
            );
            return Ok(stored.locked_until);
        }
        Ok(None)
    }

    /// Step 2 of SPEC §2: the password. On success a pending sign-in is created that
    /// grants nothing yet; its token goes into the pending cookie.
    pub async fn sign_in_password(
        &self,
        username: &str,
        password: Password,
        ip: Option<&str>,
    ) -> Result<(SecretToken, User), SignInError> {
        let user = match crate::store::validate_name(username) {
            Ok(()) => self.store.user_by_name(username)?,
            Err(_) => None,
        };
        // Disabled and not-yet-activated accounts verify against the dummy hash like
        // unknown names, so neither the answer nor its timing tells them apart.
        let stored_hash = user
            .as_ref()
            .filter(|u| u.status != UserStatus::Disabled)
            .and_then(|u| u.password_hash.clone());
        let _turn = match &user {
            Some(u) => Some(self.attempt_gates.turn(&u.id).await),
            None => None,
        };
        let verification = self
            .hasher
            .verify(password.clone(), stored_hash.as_deref())
            .await?;
        let Some(user) = user.filter(|_| stored_hash.is_some()) else {
            self.metrics.signin(SignInOutcome::BadPassword);
            self.audit(
                Actor::Web,
                "signin.password",
                None,
                "failure",
                Some("unknown or inactive user".into()),
                ip.map(str::to_string),
            );
            return match self
                .unknown_names
                .failure(username, self.now(), &self.settings.lockout)
            {
                Some(until) => Err(SignInError::Locked { until }),
                None => Err(SignInError::BadCredentials),
            };
        };
        // Read once the hash is done, in the account's turn (`AttemptGates`): the answer
        // to a locked account takes as long as any other.
        if let Some(until) = self.locked_until(&user)? {
            self.metrics.signin(SignInOutcome::Locked);
            // The same answer whether or not the password was right (SPEC §5).
            self.audit(
                Actor::Web,
                "signin.password",
                Some(&user.name),
                "locked",
                None,
                ip.map(str::to_string),
            );
            return Err(SignInError::Locked { until });
        }
        if !verification.ok {
            self.metrics.signin(SignInOutcome::BadPassword);
            return match self.record_failure(&user, "signin.password", ip)? {
                Some(until) => Err(SignInError::Locked { until }),
                None => Err(SignInError::BadCredentials),
            };
        }
        if verification.needs_rehash {
            let hash = self.hasher.hash(password).await?;
            let now = self.now();
            self.store.update_user(&user.id, &mut |u| {
                u.password_hash = Some(hash.clone());
                u.updated_at = now;
                Ok(())
            })?;
            self.audit(
                Actor::System,
                "user.rehash",
                Some(&user.name),
                "ok",
                None,
                None,
            );
        }
        let token = self.create_pending(&user)?;
        self.audit(
            Actor::Web,
            "signin.password",
            Some(&user.name),
            "ok",
            None,
            ip.map(str::to_string),
        );
        Ok((token, user))
    }

    fn create_pending(&self, user: &User) -> Result<SecretToken, SignInError> {
        let now = self.now();
        let token = SecretToken::generate()?;
        self.store.put_session(Session {
            id_hash: token.hash(),
            user_id: user.id,
            state: SessionState::PasswordVerified,
            created_at: now,
            last_seen: now,
            expires_at: now + PENDING_TTL,
            auth_time: now,
            amr: vec!["pwd".into()],
            parent: None,
            app: None,
        })?;
        Ok(token)
    }

    /// The pending sign-in behind a pending cookie, if it is still good.
    pub fn pending(&self, token: &SecretToken) -> Result<Option<Verified>, StoreError> {
        let Some(session) = self.store.session(&token.hash())? else {
            return Ok(None);
        };
        if session.state != SessionState::PasswordVerified {
            return Ok(None);
        }
        let Some(user) = self.store.user(&session.user_id)? else {
            return Ok(None);
        };
        if !session_alive(&session, &user, self.now(), PENDING_TTL) {
            return Ok(None);
        }
        Ok(Some(Verified { session, user }))
    }

    /// The secret shown on the enrolment page. The same one is shown on every reload
    /// of this sign-in's page until enrolment finishes, so a person who scanned it once
    /// is not confused. It is sealed for this pending sign-in: a later sign-in cannot
    /// open it and gets a new one, so a secret seen by someone who had only the password
    /// is useless once the owner signs in. One that cannot be opened is replaced, too.
    pub fn enrolment_secret(&self, pending: &Verified) -> Result<TotpSecret, SignInError> {
        let user = &pending.user;
        let aad = pending_secret_aad(pending);
        let open = |sealed: &[u8]| {
            self.secrets
                .open(sealed, &aad)
                .ok()
                .and_then(|plain| TotpSecret::from_slice(&plain))
        };
        if let Some(secret) = user.pending_totp.as_deref().and_then(open) {
            return Ok(secret);
        }
        let secret = TotpSecret::generate()?;
        let sealed = self.secrets.seal(secret.as_bytes(), &aad);
        let now = self.now();
        let updated = self.store.update_user(&user.id, &mut |u| {
            // Another tab of this sign-in may have made one meanwhile: keep that one.
            if u.pending_totp.as_deref().and_then(open).is_none() {
                u.pending_totp = Some(sealed.clone());
                u.updated_at = now;
            }
            Ok(())
        })?;
        // What is stored now opens: ours, or the other tab's.
        updated
            .pending_totp
            .as_deref()
            .and_then(open)
            .ok_or_else(|| SignInError::Unavailable("the new enrolment secret was not kept".into()))
    }

    /// Step 3: a correct code stores the secret and remembers the code's step as used.
    pub async fn finish_enrolment(
        &self,
        pending: &Verified,
        code: &str,
        ip: Option<&str>,
    ) -> Result<(), SignInError> {
        let user = &pending.user;
        let _turn = self.attempt_gates.turn(&user.id).await;
        if let Some(until) = self.locked_until(user)? {
            return Err(SignInError::Locked { until });
        }
        let Some(sealed) = user.pending_totp.clone() else {
            return Err(SignInError::Expired);
        };
        // Made for another sign-in (a newer one elsewhere replaced it): not this page's.
        let Ok(plain) = self.secrets.open(&sealed, &pending_secret_aad(pending)) else {
            return Err(SignInError::Expired);
        };
        let secret = TotpSecret::from_slice(&plain).ok_or(SignInError::Expired)?;
        let step = match auth::verify_code(&secret, code, self.now(), None) {
            Ok(step) => step,
            Err(CodeError::Malformed) => return Err(SignInError::Code(CodeError::Malformed)),
            Err(e) => {
                return match self.record_failure(user, "enrol", ip)? {
                    Some(until) => Err(SignInError::Locked { until }),
                    None => Err(SignInError::Code(e)),
                }
            }
        };
        let now = self.now();
        // From now on it belongs to the account, not to this sign-in.
        let credential = self
            .secrets
            .seal(secret.as_bytes(), user.id.to_string().as_bytes());
        match self
            .store
            .complete_enrolment(&user.id, &sealed, &credential, step, now)
        {
            Ok(_) => {}
            Err(StoreError::Invalid(_)) | Err(StoreError::NotFound) => {
                return Err(SignInError::Expired)
            }
            Err(e) => return Err(e.into()),
        }
        self.store.update_user(&user.id, &mut |u| {
            if u.status == UserStatus::Invited {
                u.status = UserStatus::Active;
            }
            Ok(())
        })?;
        self.metrics.enrolment();
        self.audit(
            Actor::Web,
            "enrol",
            Some(&user.name),
            "ok",
            None,
            ip.map(str::to_string),
        );
        Ok(())
    }

    /// Step 4: the code. A step at or before the last accepted one is refused (replay),
    /// atomically in the store. Success ends the pending sign-in and starts a session
    /// under a new id.
    pub async fn verify_second_factor(
        &self,
        pending: &Verified,
        code: &str,
        ip: Option<&str>,
    ) -> Result<SecretToken, SignInError> {
        let user = &pending.user;
        let _turn = self.attempt_gates.turn(&user.id).await;
        if let Some(until) = self.locked_until(user)? {
            return Err(SignInError::Locked { until });
        }
        let Some(totp) = &user.totp else {
            return Err(SignInError::NotEnrolled);
        };
        let aad = user.id.to_string();
        let plain = self
            .secrets
            .open(&totp.sealed_secret, aad.as_bytes())
            .map_err(|e| SignInError::Unavailable(e.to_string()))?;
        let secret = TotpSecret::from_slice(&plain).ok_or(SignInError::NotEnrolled)?;
        let step = match auth::verify_code(&secret, code, self.now(), Some(totp.last_step)) {
            Ok(step) => step,
            Err(CodeError::Malformed) => return Err(SignInError::Code(CodeError::Malformed)),
            Err(CodeError::AlreadyUsed) => return Err(self.replayed(user, ip)),
            Err(e) => {
                self.metrics.signin(SignInOutcome::BadCode);
                return match self.record_failure(user, "signin.code", ip)? {
                    Some(until) => Err(SignInError::Locked { until }),
                    None => Err(SignInError::Code(e)),
                };
            }
        };
        if !self.store.accept_totp_step(&user.id, step)? {
            // Another request used this code a moment ago.
            return Err(self.replayed(user, ip));
        }
        self.store.delete_session(&pending.session.id_hash)?;
        self.store
            .update_failures(&user.id, &mut |f| *f = Failures::default())?;
        let now = self.now();
        let token = SecretToken::generate()?;
        self.store.put_session(Session {
            id_hash: token.hash(),
            user_id: user.id,
            state: SessionState::Authenticated,
            created_at: now,
            last_seen: now,
            expires_at: now + self.settings.max_lifetime,
            auth_time: now,
            amr: vec!["pwd".into(), "otp".into()],
            parent: None,
            app: None,
        })?;
        self.metrics.signin(SignInOutcome::Success);
        self.audit(
            Actor::Web,
            "signin",
            Some(&user.name),
            "ok",
            None,
            ip.map(str::to_string),
        );
        Ok(token)
    }

    fn replayed(&self, user: &User, ip: Option<&str>) -> SignInError {
        tracing::warn!(user = %user.name, "a TOTP code was submitted again");
        self.metrics.signin(SignInOutcome::Replay);
        self.audit(
            Actor::Web,
            "signin.code",
            Some(&user.name),
            "replay refused",
            None,
            ip.map(str::to_string),
        );
        SignInError::Code(CodeError::AlreadyUsed)
    }

    /// The full sign-in behind the auth-origin session cookie.
    pub fn full_session(&self, token: &SecretToken) -> Result<Option<Verified>, StoreError> {
        let Some(session) = self.store.session(&token.hash())? else {
            return Ok(None);
        };
        if session.state != SessionState::Authenticated || session.parent.is_some() {
            return Ok(None);
        }
        self.alive(session)
    }

    fn alive(&self, mut session: Session) -> Result<Option<Verified>, StoreError> {
        let Some(user) = self.store.user(&session.user_id)? else {
            return Ok(None);
        };
        let now = self.now();
        if !session_alive(&session, &user, now, self.settings.idle_timeout) {
            return Ok(None);
        }
        if now - session.last_seen >= TOUCH_INTERVAL {
            self.touch(&session.id_hash, now);
            // So that what is built from this answer does not write it again soon.
            session.last_seen = now;
        }
        Ok(Some(Verified { session, user }))
    }

    /// The signed-in person behind an app cookie: the child session must belong to this
    /// app and its parent (the auth-origin session) must be alive — signing out deletes
    /// the parent, so every app cookie stops working at once. Verified sessions are
    /// served from memory while the store's revocation generation is unchanged; only a
    /// positive answer is trusted from memory, anything else is checked in the store.
    pub fn app_session(
        &self,
        token: &SecretToken,
        app_id: &str,
    ) -> Result<Option<Arc<SignedIn>>, StoreError> {
        let key = token.hash();
        let now = self.now();
        // Read before the store, so a revocation committed after this point is seen
        // as a new generation next time.
        let generation = self.store.revocation_generation();
        if let Some(hit) = self.sessions.get(&key) {
            if hit.generation == generation && hit.app_id == app_id && self.still_alive(&hit, now) {
                if now - hit.last_seen() >= TOUCH_INTERVAL {
                    self.touch(&hit.parent_hash, now);
                    hit.saw(now);
                }
                return Ok(Some(hit));
            }
            self.sessions.remove(&key);
        }
        let Some(child) = self.store.session(&key)? else {
            return Ok(None);
        };
        if child.app.as_deref() != Some(app_id) || child.state != SessionState::Authenticated {
            return Ok(None);
        }
        let Some(parent_hash) = child.parent else {
            return Ok(None);
        };
        if now >= child.expires_at {
            return Ok(None);
        }
        let Some(parent) = self.store.session(&parent_hash)? else {
            return Ok(None);
        };
        if parent.state != SessionState::Authenticated || parent.parent.is_some() {
            return Ok(None);
        }
        let Some(Verified { session, user }) = self.alive(parent)? else {
            return Ok(None);
        };
        let header_values = [
            HeaderValue::from_bytes(user.name.as_bytes()),
            HeaderValue::from_bytes(user.email.as_bytes()),
            HeaderValue::from_bytes(user.display_name.as_bytes()),
        ];
        let [Ok(name), Ok(email), Ok(display)] = header_values else {
            return Ok(None);
        };
        let signed_in = Arc::new(SignedIn {
            user_id: user.id,
            user_status: user.status,
            sessions_valid_after: user.sessions_valid_after,
            granted: user.apps.contains(app_id),
            app_id: app_id.to_string(),
            parent_hash: session.id_hash,
            sid: public_sid(&session.id_hash),
            auth_time: session.auth_time,
            amr: session.amr,
            created_at: session.created_at,
            expires_at: session.expires_at.min(child.expires_at),
            last_seen: AtomicI64::new(session.last_seen.min(now)),
            generation,
            header_values: [name, email, display],
            assertion: Mutex::new(None),
        });
        self.sessions.insert(key, signed_in.clone());
        Ok(Some(signed_in))
    }

    /// Records activity for the idle timeout. A failure here (a full disk, say) must not
    /// stop people who are signed in: at worst the idle timeout comes a little early.
    fn touch(&self, session_hash: &[u8; 32], now: UnixSeconds) {
        if let Err(e) = self.store.touch_session(session_hash, now) {
            tracing::warn!(error = %e, "could not record session activity");
        }
    }

    fn still_alive(&self, s: &SignedIn, now: UnixSeconds) -> bool {
        now < s.expires_at
            && now < s.last_seen().saturating_add(self.settings.idle_timeout)
            && s.created_at >= s.sessions_valid_after
            && s.user_status != UserStatus::Disabled
    }

    /// A one-time code that carries a signed-in session to `app_id`'s own cookie.
    /// `browser`: the hash of the state cookie the browser holds on the app's origin
    /// (sent to the sign-in page as `s`); the code redeems only in that browser. A code
    /// taken from one's own sign-in and sent to someone else would otherwise sign them in
    /// to the app as oneself (login CSRF).
    pub fn create_handoff(
        &self,
        session: &Session,
        app_id: &str,
        rd: &str,
        browser: &[u8; 32],
    ) -> Result<SecretToken, SignInError> {
        let code = SecretToken::generate()?;
        self.store.put_handoff(HandOff {
            code_hash: code.hash(),
            session_hash: session.id_hash,
            app_id: app_id.to_string(),
            rd: rd.to_string(),
            expires_at: self.now() + HANDOFF_TTL,
            browser: *browser,
        })?;
        Ok(code)
    }

    /// Redeems a hand-off code on `app_id`'s origin: single use, bound to that app, and
    /// only while the session it came from is alive. Returns the app cookie's token and
    /// where to go.
    pub fn redeem_handoff(
        &self,
        code: &SecretToken,
        app_id: &str,
        browser: &[u8; 32],
    ) -> Result<Option<(SecretToken, String)>, SignInError> {
        let now = self.now();
        // Taken whoever presents it, so a code that reached the wrong browser is used up
        // there, not left for whoever holds the right cookie.
        let Some(handoff) = self.store.take_handoff(&code.hash(), now)? else {
            return Ok(None);
        };
        let same_browser =
            aws_lc_rs::constant_time::verify_slices_are_equal(&handoff.browser, browser).is_ok();
        if handoff.app_id != app_id || !same_browser {
            return Ok(None);
        }
        let Some(parent) = self.store.session(&handoff.session_hash)? else {
            return Ok(None);
        };
        if parent.state != SessionState::Authenticated || parent.parent.is_some() {
            return Ok(None);
        }
        let Some(verified) = self.alive(parent)? else {
            return Ok(None);
        };
        let token = SecretToken::generate()?;
        match self.store.put_session(Session {
            id_hash: token.hash(),
            user_id: verified.user.id,
            state: SessionState::Authenticated,
            created_at: now,
            last_seen: now,
            expires_at: verified.session.expires_at,
            auth_time: verified.session.auth_time,
            amr: verified.session.amr.clone(),
            parent: Some(verified.session.id_hash),
            app: Some(app_id.to_string()),
        }) {
            Ok(()) => Ok(Some((token, handoff.rd))),
            // Signed out between the checks: the parent is gone.
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the whole sign-in: the auth-origin session and every app session under it.
    pub fn sign_out(&self, session_hash: &[u8; 32], ip: Option<&str>) -> Result<(), StoreError> {
        // Whose it was, read before it goes, so the audit trail names them whichever
        // origin the sign-out started on.
        let user = match self.store.session(session_hash)? {
            Some(session) => self.store.user(&session.user_id)?,
            None => None,
        };
        if self.store.delete_session(session_hash)? {
            self.audit(
                Actor::Web,
                "signout",
                user.as_ref().map(|u| u.name.as_str()),
                "ok",
                None,
                ip.map(str::to_string),
            );
        }
        Ok(())
    }

    /// The parent session hash behind an app cookie, for sign-out on an app origin.
    pub fn parent_of(&self, token: &SecretToken) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self
            .store
            .session(&token.hash())?
            .map(|s| s.parent.unwrap_or(s.id_hash)))
    }

    /// What an activation link is good for right now.
    pub fn activation(&self, token: &SecretToken) -> Result<Activation, StoreError> {
        let Some(inv) = self.store.invitation(&token.hash())? else {
            return Ok(Activation::Invalid);
        };
        if inv.used_at.is_some() || self.now() >= inv.expires_at {
            return Ok(Activation::Invalid);
        }
        let Some(user) = self.store.user(&inv.user_id)? else {
            return Ok(Activation::Invalid);
        };
        if user.status == UserStatus::Disabled {
            return Ok(Activation::Invalid);
        }
        if user.password_hash.is_some() {
            return Ok(Activation::SignIn);
        }
        Ok(Activation::ChoosePassword {
            user: Box::new(user),
        })
    }

    /// SPEC §2.8: the person chooses a password (twice, policy-checked); the link is used
    /// up atomically and the flow continues at enrolment with a pending sign-in.
    pub async fn activate_with_password(
        &self,
        token: &SecretToken,
        password: Password,
        repeated: &str,
        ip: Option<&str>,
    ) -> Result<(SecretToken, User), ActivationError> {
        let Activation::ChoosePassword { user } = self.activation(token)? else {
            return Err(ActivationError::InvalidLink);
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            password.as_str().as_bytes(),
            repeated.as_bytes(),
        )) {
            return Err(ActivationError::Mismatch);
        }
        auth::check_new_password(
            password.as_str(),
            self.settings.min_password_length,
            &user.name,
        )
        .map_err(ActivationError::Policy)?;
        let hash = self
            .hasher
            .hash(password)
            .await
            .map_err(|e| ActivationError::Unavailable(e.to_string()))?;
        if self
            .store
            .use_invitation(&token.hash(), self.now())?
            .is_none()
        {
            return Err(ActivationError::InvalidLink);
        }
        let now = self.now();
        let user = self.store.update_user(&user.id, &mut |u| {
            u.password_hash = Some(hash.clone());
            u.updated_at = now;
            Ok(())
        })?;
        self.audit(
            Actor::Web,
            "user.activate",
            Some(&user.name),
            "ok",
            None,
            ip.map(str::to_string),
        );
        let pending = self
            .create_pending(&user)
            .map_err(|e| ActivationError::Unavailable(e.to_string()))?;
        Ok((pending, user))
    }
}
