//! Tests of the admin operations against a real redb store in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::accounts::signin::{Activation, SignInError};
use crate::clock::ManualClock;
use crate::config::Config;
use crate::store::{Session, SessionState, TotpCredential};

const NOW: UnixSeconds = 1_700_000_000;
const GOOD: &str = "correct horse battery staple";

pub(crate) fn test_config(dir: &Path) -> Config {
    let text = r#"
[server]
listen = "127.0.0.1:8080"
auth_url = "http://login.localhost:8080"
data_dir = "data"

[password]
argon2_memory_kib = 64
argon2_iterations = 1

[[app]]
id = "portal"
name = "Partner Portal"
url = "http://portal.localhost:8080"
upstream = "http://127.0.0.1:9001"

[[app]]
id = "analytics"
name = "Partner Analytics"
url = "http://analytics.localhost:8080"
upstream = "http://127.0.0.1:9002"
"#;
    Config::parse(text, dir).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    clock: ManualClock,
    accounts: Accounts,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let clock = ManualClock::new(NOW);
    let accounts = Accounts::open(&config, Arc::new(clock.clone())).unwrap();
    Fixture {
        _dir: dir,
        config,
        clock,
        accounts,
    }
}

fn apps() -> Vec<String> {
    vec!["portal".to_string(), "analytics".to_string()]
}

fn pw(s: &str) -> Password {
    Password::new(s)
}

async fn add(a: &Accounts, name: &str, password: Option<&str>) -> (User, String) {
    a.add_user(
        name,
        &format!("{name}@example.com"),
        None,
        vec!["portal".into()],
        password.map(pw),
        &apps(),
        Actor::Cli,
    )
    .await
    .unwrap()
}

fn token_of(url: &str) -> SecretToken {
    SecretToken::parse(url.rsplit_once("token=").unwrap().1).unwrap()
}

fn session_for(a: &Accounts, user: &User, state: SessionState) -> [u8; 32] {
    let token = SecretToken::generate().unwrap();
    let now = a.clock.now();
    a.store
        .put_session(Session {
            id_hash: token.hash(),
            user_id: user.id,
            state,
            created_at: now,
            last_seen: now,
            expires_at: now + 3600,
            auth_time: now,
            amr: vec!["pwd".into(), "otp".into()],
            parent: None,
            app: None,
        })
        .unwrap();
    token.hash()
}

fn enrol(a: &Accounts, user: &User) {
    a.store
        .update_user(&user.id, &mut |u| {
            u.totp = Some(TotpCredential {
                sealed_secret: vec![1, 2, 3],
                enrolled_at: NOW,
                last_step: 5,
            });
            u.pending_totp = Some(vec![4, 5]);
            u.status = UserStatus::Active;
            Ok(())
        })
        .unwrap();
}

fn last_audit(a: &Accounts) -> AuditEvent {
    a.store.audit(None, 1).unwrap().remove(0)
}

/// Everything but the audit trail, to check that a refused command changed nothing.
fn snapshot(a: &Accounts) -> String {
    let mut out = Vec::new();
    a.store.export_jsonl(&mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.contains(r#""table":"audit""#))
        .collect::<Vec<_>>()
        .join("\n")
}

// --- add ---------------------------------------------------------------------------------

#[tokio::test]
async fn add_user_creates_invited_user_with_single_use_activation_link() {
    let f = fixture();
    let a = &f.accounts;
    let (user, url) = add(a, "alice", None).await;
    assert_eq!(user.status, UserStatus::Invited);
    assert_eq!(user.display_name, "alice");
    assert!(user.password_hash.is_none());
    assert!(user.apps.contains("portal"));
    assert!(
        url.starts_with("http://login.localhost:8080/.portcullis/activate?token="),
        "{url}"
    );
    let token = token_of(&url);
    let inv = a.store.invitation(&token.hash()).unwrap().unwrap();
    assert_eq!(inv.user_id, user.id);
    assert_eq!(inv.expires_at, NOW + 7 * 86400);
    assert!(matches!(
        a.activation(&token).unwrap(),
        Activation::ChoosePassword { .. }
    ));
    // Only the hash is stored: the token itself appears nowhere in the store.
    assert!(!snapshot(a).contains(&token.encode()));
    let ev = last_audit(a);
    assert_eq!(
        (ev.action.as_str(), ev.outcome.as_str(), ev.actor.as_str()),
        ("user.add", "ok", "cli")
    );
    assert_eq!(ev.user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn add_user_with_password_stores_an_argon2id_hash_and_links_to_sign_in() {
    let f = fixture();
    let a = &f.accounts;
    let (user, url) = add(a, "bob", Some(GOOD)).await;
    let hash = user.password_hash.clone().unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(a.hasher.verify(pw(GOOD), Some(&hash)).await.unwrap().ok);
    assert!(matches!(
        a.activation(&token_of(&url)).unwrap(),
        Activation::SignIn
    ));
    let detail = last_audit(a).detail.unwrap();
    assert!(!detail.contains(GOOD), "{detail}");
}

#[tokio::test]
async fn add_user_refusals_leave_the_store_unchanged_and_are_audited() {
    let f = fixture();
    let a = &f.accounts;
    add(a, "alice", None).await;
    let before = snapshot(a);
    type Case<'a> = (&'a str, &'a str, Vec<String>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("ALICE", "x@example.com", vec![], None, "already exists"),
        ("bob", "not-an-email", vec![], None, "not a valid e-mail"),
        (
            "bob smith",
            "b@example.com",
            vec![],
            None,
            "not a valid user name",
        ),
        (
            "bob",
            "b@example.com",
            vec!["billing".into()],
            None,
            "There is no app \"billing\"",
        ),
        ("bob", "b@example.com", vec![], Some("short"), "at least 12"),
        (
            "bob",
            "b@example.com",
            vec![],
            Some("unbelievable"),
            "too common",
        ),
        ("bob", "b@example.com", vec![], Some(""), "at least 12"),
    ];
    for (name, email, apps_given, password, expected) in cases {
        let err = a
            .add_user(
                name,
                email,
                None,
                apps_given,
                password.map(pw),
                &apps(),
                Actor::Socket,
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(expected), "{name}: {msg}");
        assert!(!msg.contains('\n'), "one sentence: {msg}");
        assert_eq!(snapshot(a), before, "{name} changed the store");
        let ev = last_audit(a);
        assert_eq!(
            (ev.action.as_str(), ev.outcome.as_str(), ev.actor.as_str()),
            ("user.add", "refused", "socket")
        );
    }
}

#[tokio::test]
async fn duplicate_name_in_other_case_names_the_existing_user() {
    let f = fixture();
    add(&f.accounts, "alice", None).await;
    let err = f
        .accounts
        .add_user(
            "Alice",
            "a@example.com",
            None,
            vec![],
            None,
            &apps(),
            Actor::Cli,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "A user named \"alice\" already exists (names are not case-sensitive), so \"Alice\" cannot be added. Choose another name."
    );
}

#[tokio::test]
async fn hostile_name_is_escaped_in_messages_and_kept_out_of_the_audit_user_field() {
    let f = fixture();
    let a = &f.accounts;
    let evil = "\u{1b}[2Jroot\nX";
    let err = a.disable_user(evil, Actor::Cli).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg:?}");
    let ev = last_audit(a);
    assert_eq!(ev.user, None);
    assert!(!ev.detail.unwrap().contains('\u{1b}'));
}

// --- show / list -------------------------------------------------------------------------

#[tokio::test]
async fn show_reports_enrolment_failures_and_lock() {
    let f = fixture();
    let a = &f.accounts;
    let (user, _) = add(a, "alice", Some(GOOD)).await;
    let d = a.show_user("ALICE").unwrap();
    assert_eq!(d.user.name, "alice");
    assert_eq!((d.recent_failures, d.locked_until), (0, None));
    a.store
        .put_failures(
            &user.id,
            Failures {
                recent: vec![NOW - 700, NOW - 10, NOW - 5],
                locked_until: Some(NOW + 60),
            },
        )
        .unwrap();
    let d = a.show_user("alice").unwrap();
    // The 10-minute window: the failure 700 s ago no longer counts.
    assert_eq!(d.recent_failures, 2);
    assert_eq!(d.locked_until, Some(NOW + 60));
    f.clock.advance(61);
    assert_eq!(a.show_user("alice").unwrap().locked_until, None);
    assert!(matches!(
        a.show_user("nobody"),
        Err(AdminError::NoSuchUser(_))
    ));
}

/// Guesses for one account in flight together are judged one at a time: a burst of
/// wrong passwords with the right one among them must not get the right one through
/// after five wrong ones, however their hashes finish. The hasher here runs the whole
/// burst at once, so the hashes finish in any order; without the one-at-a-time rule the
/// right one finished before the fifth failure was counted in about half the bursts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_guesses_cannot_outrun_the_lockout() {
    let mut f = fixture();
    f.accounts.hasher =
        crate::auth::PasswordHasher::with_max_concurrent(f.accounts.hasher.params(), 16).unwrap();
    let accounts = Arc::new(f.accounts);
    for burst in 0..12 {
        let name = format!("nina{burst}");
        add(&accounts, &name, Some(GOOD)).await;
        let right_at = burst % 11;
        let guesses: Vec<_> = (0..11)
            .map(|i| {
                let accounts = accounts.clone();
                let name = name.clone();
                let guess = if i == right_at {
                    GOOD.to_string()
                } else {
                    format!("wrong guess number {i}")
                };
                tokio::spawn(
                    async move { accounts.sign_in_password(&name, pw(&guess), None).await },
                )
            })
            .collect();
        at_most_five_judged(guesses, |e| matches!(e, SignInError::BadCredentials)).await;
    }
}

/// Joins a burst of guesses and checks that they were judged one at a time: four wrong
/// ones are told so (`told_wrong`), the fifth locks the account, and the right one passes
/// only if it came before the fifth; so at most five are judged, and any later guess
/// gets the lock's answer.
async fn at_most_five_judged<T: std::fmt::Debug>(
    guesses: Vec<tokio::task::JoinHandle<Result<T, SignInError>>>,
    told_wrong: impl Fn(&SignInError) -> bool,
) {
    let results: Vec<_> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let wrong = results
        .iter()
        .filter(|r| r.as_ref().err().is_some_and(&told_wrong))
        .count();
    let passed = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        wrong <= 4 && wrong + passed <= 5,
        "{wrong} told wrong and {passed} passed: {results:?}"
    );
}

/// The code step keeps the same count: a burst of codes for one pending sign-in, the
/// right one among wrong ones, has at most five judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_codes_cannot_outrun_the_lockout() {
    let f = fixture();
    add(&f.accounts, "omar", Some(GOOD)).await;
    let first = pending_sign_in(&f.accounts, "omar").await;
    let secret = f
        .accounts
        .enrolment_secret(&pending(&f.accounts, &first))
        .unwrap();
    let now = || crate::clock::Clock::now(&f.clock);
    let code = crate::auth::code_at(&secret, now());
    f.accounts
        .finish_enrolment(&pending(&f.accounts, &first), &code, None)
        .await
        .unwrap();
    f.clock.advance(30);
    let token = pending_sign_in(&f.accounts, "omar").await;
    let right = crate::auth::code_at(&secret, now());
    // Wrong codes: none of the steps the check accepts.
    let near: Vec<String> = [-30, 0, 30]
        .iter()
        .map(|d| crate::auth::code_at(&secret, now() + d))
        .collect();
    let mut codes: Vec<String> = (0..40)
        .map(|i| format!("{:06}", 100_000 + i * 7_919))
        .filter(|c| !near.contains(c))
        .take(10)
        .collect();
    codes.insert(5, right);
    let accounts = Arc::new(f.accounts);
    let guesses: Vec<_> = codes
        .into_iter()
        .map(|code| {
            let accounts = accounts.clone();
            let token = token.clone();
            tokio::spawn(async move {
                // Gone once the right code has ended the pending sign-in.
                let Some(pending) = accounts.pending(&token).unwrap() else {
                    return Err(crate::accounts::signin::SignInError::Expired);
                };
                accounts.verify_second_factor(&pending, &code, None).await
            })
        })
        .collect();
    at_most_five_judged(guesses, |e| matches!(e, SignInError::Code(_))).await;
}

/// Arrival order counts: the right password sent after ten wrong ones, all in flight
/// together, finds the account locked.
#[tokio::test]
async fn the_right_password_sent_after_a_burst_of_wrong_ones_finds_the_account_locked() {
    let f = fixture();
    add(&f.accounts, "nina", Some(GOOD)).await;
    let wrong: Vec<String> = (0..10).map(|i| format!("wrong guess number {i}")).collect();
    let mut guesses: Vec<_> = wrong
        .iter()
        .map(|w| f.accounts.sign_in_password("nina", pw(w), None))
        .collect();
    guesses.push(f.accounts.sign_in_password("nina", pw(GOOD), None));
    let results = futures_util::future::join_all(guesses).await;
    match results.last() {
        Some(Err(crate::accounts::signin::SignInError::Locked { .. })) => {}
        other => panic!("the right password got through a locked account: {other:?}"),
    }
    assert!(results[..10].iter().all(|r| r.is_err()));
}

async fn pending_sign_in(a: &Accounts, name: &str) -> SecretToken {
    a.sign_in_password(name, pw(GOOD), None).await.unwrap().0
}

/// The pending sign-in as a page sees it on its next request: read afresh.
fn pending(a: &Accounts, token: &SecretToken) -> crate::accounts::signin::Verified {
    a.pending(token).unwrap().unwrap()
}

/// The enrolment secret belongs to the sign-in it was shown to: the same on a reload of
/// that sign-in's page, a new one for the next sign-in, so a secret seen by someone who
/// had only the password cannot be the one the owner enrols later.
#[tokio::test]
async fn an_enrolment_secret_is_shown_to_one_sign_in_only() {
    let f = fixture();
    add(&f.accounts, "olga", Some(GOOD)).await;
    let first = pending_sign_in(&f.accounts, "olga").await;
    let seen_first = f
        .accounts
        .enrolment_secret(&pending(&f.accounts, &first))
        .unwrap();
    assert_eq!(
        f.accounts
            .enrolment_secret(&pending(&f.accounts, &first))
            .unwrap()
            .as_bytes(),
        seen_first.as_bytes(),
        "a reload of the same sign-in shows the same secret"
    );
    let second = pending_sign_in(&f.accounts, "olga").await;
    let seen_second = f
        .accounts
        .enrolment_secret(&pending(&f.accounts, &second))
        .unwrap();
    assert_ne!(seen_second.as_bytes(), seen_first.as_bytes());
    // The first sign-in cannot finish with the secret it saw, and nothing changes.
    let before = snapshot(&f.accounts);
    let code = crate::auth::code_at(&seen_first, crate::clock::Clock::now(&f.clock));
    assert!(matches!(
        f.accounts
            .finish_enrolment(&pending(&f.accounts, &first), &code, None)
            .await,
        Err(crate::accounts::signin::SignInError::Expired)
    ));
    assert_eq!(snapshot(&f.accounts), before);
    // The second one can, and the secret then works at the code step.
    let code = crate::auth::code_at(&seen_second, crate::clock::Clock::now(&f.clock));
    f.accounts
        .finish_enrolment(&pending(&f.accounts, &second), &code, None)
        .await
        .unwrap();
    f.clock.advance(30);
    let third = pending_sign_in(&f.accounts, "olga").await;
    let code = crate::auth::code_at(&seen_second, crate::clock::Clock::now(&f.clock));
    f.accounts
        .verify_second_factor(&pending(&f.accounts, &third), &code, None)
        .await
        .unwrap();
}

/// A stored pending secret that cannot be opened (damaged) is replaced by a new one.
#[tokio::test]
async fn an_enrolment_secret_that_cannot_be_opened_is_replaced() {
    let f = fixture();
    let (user, _) = add(&f.accounts, "pia", Some(GOOD)).await;
    let token = pending_sign_in(&f.accounts, "pia").await;
    f.accounts
        .store
        .update_user(&user.id, &mut |u| {
            u.pending_totp = Some(vec![9u8; 49]);
            Ok(())
        })
        .unwrap();
    let secret = f
        .accounts
        .enrolment_secret(&pending(&f.accounts, &token))
        .unwrap();
    let now_stored = pending(&f.accounts, &token);
    assert_ne!(now_stored.user.pending_totp, Some(vec![9u8; 49]));
    let code = crate::auth::code_at(&secret, crate::clock::Clock::now(&f.clock));
    f.accounts
        .finish_enrolment(&now_stored, &code, None)
        .await
        .unwrap();
}

/// The failures counted for names with no account stay bounded however many names are
/// tried; a name locked meanwhile stays locked while the table is cleared of the rest.
#[test]
fn failures_of_unknown_names_stay_bounded() {
    use crate::accounts::signin::{UnknownNames, UNKNOWN_NAMES_KEPT};
    let policy = crate::auth::LockoutPolicy::default();
    let names = UnknownNames::default();
    for _ in 0..policy.max_failures {
        names.failure("Locked-Name", NOW, &policy);
    }
    assert!(names.failure("locked-name", NOW, &policy).is_some());
    for i in 0..UNKNOWN_NAMES_KEPT + 10 {
        assert!(names
            .failure(&format!("name{i}"), NOW + 1, &policy)
            .is_none());
        assert!(names.counted() <= UNKNOWN_NAMES_KEPT);
    }
    // After the window, the spray is forgotten as the table fills; the lock is kept
    // until it ends.
    let later = NOW + policy.window + 1;
    for i in 0..UNKNOWN_NAMES_KEPT {
        names.failure(&format!("other{i}"), later, &policy);
    }
    assert!(names.counted() <= UNKNOWN_NAMES_KEPT);
    assert!(names.failure("LOCKED-NAME", later, &policy).is_some());
}

#[tokio::test]
async fn list_is_ordered_by_name_ignoring_case() {
    let f = fixture();
    for n in ["carol", "Alice", "bob"] {
        add(&f.accounts, n, None).await;
    }
    let names: Vec<String> = f
        .accounts
        .list_users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Alice", "bob", "carol"]);
}

// --- disable / enable / delete -----------------------------------------------------------

#[tokio::test]
async fn disable_ends_sessions_at_once_and_enable_restores_sign_in() {
    let f = fixture();
    let a = &f.accounts;
    let (user, _) = add(a, "alice", Some(GOOD)).await;
    enrol(a, &user);
    let s1 = session_for(a, &user, SessionState::Authenticated);
    let s2 = session_for(a, &user, SessionState::PasswordVerified);
    f.clock.advance(10);
    let c = a.disable_user("alice", Actor::Cli).unwrap();
    assert!(c.changed);
    assert_eq!(c.sessions_ended, 2);
    assert_eq!(c.user.status, UserStatus::Disabled);
    assert_eq!(c.user.sessions_valid_after, NOW + 10);
    assert!(a.store.session(&s1).unwrap().is_none());
    assert!(a.store.session(&s2).unwrap().is_none());
    // Disabling again is harmless and says so.
    let again = a.disable_user("alice", Actor::Cli).unwrap();
    assert!(!again.changed);

    a.store
        .put_failures(
            &user.id,
            Failures {
                recent: vec![],
                locked_until: Some(NOW + 900),
            },
        )
        .unwrap();
    let (c, lifted) = a.enable_user("alice", Actor::Cli).unwrap();
    assert!(c.changed && lifted);
    assert_eq!(c.user.status, UserStatus::Active);
    assert_eq!(a.store.failures(&user.id).unwrap(), Failures::default());
    let (c, lifted) = a.enable_user("alice", Actor::Cli).unwrap();
    assert!(!c.changed && !lifted);
}

#[tokio::test]
async fn enable_returns_a_never_activated_account_to_invited() {
    let f = fixture();
    let a = &f.accounts;
    add(a, "alice", None).await;
    a.disable_user("alice", Actor::Cli).unwrap();
    let (c, _) = a.enable_user("alice", Actor::Cli).unwrap();
    assert_eq!(c.user.status, UserStatus::Invited);
}

#[tokio::test]
async fn delete_removes_the_user_sessions_and_invitation() {
    let f = fixture();
    let a = &f.accounts;
    let (user, url) = add(a, "alice", None).await;
    let s = session_for(a, &user, SessionState::Authenticated);
    let c = a.delete_user("Alice", Actor::Cli).unwrap();
    assert_eq!(c.sessions_ended, 1);
    assert!(a.store.user_by_name("alice").unwrap().is_none());
    assert!(a.store.session(&s).unwrap().is_none());
    assert!(a
        .store
        .invitation(&token_of(&url).hash())
        .unwrap()
        .is_none());
    assert!(matches!(
        a.delete_user("alice", Actor::Cli),
        Err(AdminError::NoSuchUser(_))
    ));
    // The name is free again.
    add(a, "alice", None).await;
}

// --- reset-2fa / set-password ------------------------------------------------------------

#[tokio::test]
async fn reset_2fa_removes_the_authenticator_and_ends_all_sessions() {
    let f = fixture();
    let a = &f.accounts;
    let (user, _) = add(a, "alice", Some(GOOD)).await;
    enrol(a, &user);
    let s = session_for(a, &user, SessionState::Authenticated);
    f.clock.advance(5);
    let c = a.reset_2fa("alice", Actor::Cli).unwrap();
    assert!(c.changed);
    assert_eq!(c.sessions_ended, 1);
    assert!(c.user.totp.is_none() && c.user.pending_totp.is_none());
    assert_eq!(c.user.sessions_valid_after, NOW + 5);
    assert!(a.store.session(&s).unwrap().is_none());
    // The password still works, so the next sign-in goes to enrolment.
    assert!(c.user.password_hash.is_some());
    let ev = last_audit(a);
    assert_eq!(
        (ev.action.as_str(), ev.outcome.as_str()),
        ("user.reset_2fa", "ok")
    );
    assert!(!a.reset_2fa("alice", Actor::Cli).unwrap().changed);
}

#[tokio::test]
async fn set_password_checks_policy_hashes_and_ends_sessions() {
    let f = fixture();
    let a = &f.accounts;
    let (user, _) = add(a, "alice", Some(GOOD)).await;
    session_for(a, &user, SessionState::Authenticated);
    let before = snapshot(a);
    for weak in ["alice", "short", "contortionist"] {
        let err = a
            .set_password("alice", pw(weak), Actor::Cli)
            .await
            .unwrap_err();
        assert!(matches!(err, AdminError::WeakPassword(_)), "{weak}: {err}");
        assert_eq!(snapshot(a), before);
    }
    let new = "a brand new passphrase";
    let c = a.set_password("alice", pw(new), Actor::Cli).await.unwrap();
    assert_eq!(c.sessions_ended, 1);
    let hash = c.user.password_hash.unwrap();
    assert!(a.hasher.verify(pw(new), Some(&hash)).await.unwrap().ok);
    assert!(!a.hasher.verify(pw(GOOD), Some(&hash)).await.unwrap().ok);
    assert!(matches!(
        a.set_password("nobody", pw(new), Actor::Cli).await,
        Err(AdminError::NoSuchUser(_))
    ));
}

// --- grant / revoke ----------------------------------------------------------------------

#[tokio::test]
async fn grant_and_revoke_change_apps_and_refuse_unknown_ones() {
    let f = fixture();
    let a = &f.accounts;
    add(a, "alice", None).await;
    let c = a
        .grant_app("alice", "analytics", &apps(), Actor::Cli)
        .unwrap();
    assert!(c.changed && c.user.apps.contains("analytics"));
    assert!(
        !a.grant_app("alice", "analytics", &apps(), Actor::Cli)
            .unwrap()
            .changed
    );
    let before = snapshot(a);
    let err = a
        .grant_app("alice", "billing", &apps(), Actor::Cli)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "There is no app \"billing\" in the configuration. Use one of: portal, analytics."
    );
    assert!(a
        .revoke_app("alice", "billing", &apps(), Actor::Cli)
        .is_err());
    assert_eq!(snapshot(a), before);
    let c = a
        .revoke_app("alice", "portal", &apps(), Actor::Cli)
        .unwrap();
    assert!(c.changed && !c.user.apps.contains("portal"));
    assert!(
        !a.revoke_app("alice", "portal", &apps(), Actor::Cli)
            .unwrap()
            .changed
    );
}

#[tokio::test]
async fn an_app_removed_from_the_config_can_still_be_revoked() {
    let f = fixture();
    let a = &f.accounts;
    add(a, "alice", None).await;
    // "portal" is granted, then leaves the configuration.
    let only_analytics = vec!["analytics".to_string()];
    let c = a
        .revoke_app("alice", "portal", &only_analytics, Actor::Cli)
        .unwrap();
    assert!(c.changed && c.user.apps.is_empty());
}

// --- audit -------------------------------------------------------------------------------

#[tokio::test]
async fn audit_trail_filters_by_user_and_limits() {
    let f = fixture();
    let a = &f.accounts;
    add(a, "alice", None).await;
    add(a, "bob", None).await;
    a.disable_user("alice", Actor::Cli).unwrap();
    let all = a.audit_trail(None, 100).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].action, "user.disable");
    let alice = a.audit_trail(Some("ALICE"), 100).unwrap();
    assert_eq!(alice.len(), 2);
    assert_eq!(a.audit_trail(None, 1).unwrap().len(), 1);
}

// --- CSV import --------------------------------------------------------------------------

fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

#[tokio::test]
async fn import_of_a_good_file_creates_active_users_whose_passwords_work() {
    let f = fixture();
    let a = &f.accounts;
    let argon = a.hasher.hash(pw("argon password 1")).await.unwrap();
    assert!(
        argon.contains(','),
        "the test needs a hash with commas: {argon}"
    );
    let bcrypt = bcrypt_hash("bcrypt password 1");
    let csv = format!(
        "\u{feff}name,email,hash,apps\r\n\
         carol,carol@example.com,{argon},portal;analytics\r\n\
         \r\n\
         dave,dave@example.com,{bcrypt},analytics portal\r\n\
         erin,erin@example.com,\"{argon}\",\r\n\
         frank,frank@example.com,{argon}\n"
    );
    let users = a.import_csv(&csv, &apps(), Actor::Cli).unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["carol", "dave", "erin", "frank"]);
    for u in &users {
        assert_eq!(u.status, UserStatus::Active);
        assert!(u.totp.is_none());
    }
    assert_eq!(users[0].apps.len(), 2);
    assert_eq!(users[1].apps.len(), 2);
    assert!(users[2].apps.is_empty() && users[3].apps.is_empty());
    assert_eq!(users[0].password_hash.as_deref(), Some(argon.as_str()));
    let stored = a.store.user_by_name("dave").unwrap().unwrap();
    let v = a
        .hasher
        .verify(pw("bcrypt password 1"), stored.password_hash.as_deref())
        .await
        .unwrap();
    assert!(v.ok && v.needs_rehash);
    let stored = a.store.user_by_name("erin").unwrap().unwrap();
    assert!(
        a.hasher
            .verify(pw("argon password 1"), stored.password_hash.as_deref())
            .await
            .unwrap()
            .ok
    );
    let trail = a.audit_trail(Some("dave"), 10).unwrap();
    assert_eq!(trail[0].action, "user.import");
}

#[tokio::test]
async fn import_reports_every_bad_line_and_imports_nothing() {
    let f = fixture();
    let a = &f.accounts;
    add(a, "alice", None).await;
    let before = snapshot(a);
    let good = bcrypt_hash("whatever it is");
    let csv = format!(
        "name,email,hash,apps\n\
         ok1,ok1@example.com,{good},portal\n\
         bad name,x@example.com,{good},portal\n\
         ok2,not-an-email,{good},portal\n\
         OK1,dup@example.com,{good},portal\n\
         Alice,alice2@example.com,{good},portal\n\
         ok3,ok3@example.com,{good},billing\n\
         ok4,ok4@example.com,$2b$04$short,portal\n\
         ok5,ok5@example.com,plaintext-password,portal\n\
         ok6\n\
         ok7,ok7@example.com,\"{good}\n\
         ok8,ok8@example.com,$argon2id$v=19$m=99999999,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$6W+V2kmo2/Nd+hsqVYz4tC6J8ECJj9dKfphB6bYxnA0,\n"
    );
    let err = a.import_csv(&csv, &apps(), Actor::Cli).unwrap_err();
    let AdminError::ImportRejected(problems) = &err else {
        panic!("{err}");
    };
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "{err}");
    let text = err.to_string();
    for expected in [
        "line 3: \"bad name\" is not a valid user name",
        "line 4: \"not-an-email\" is not a valid e-mail address",
        "line 5: \"OK1\" is already on line 2",
        "line 6: A user named \"alice\" already exists",
        "line 7: There is no app \"billing\"",
        "line 8: The bcrypt hash is malformed",
        "line 9: The password hash is not in a known format",
        "line 10: Expected the columns name,email,hash,apps, found 1 field.",
        "line 11: A quoted field is not closed",
        "line 12: The Argon2 hash is malformed (its parameters are too large)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.starts_with("Nothing was imported: 10 lines have problems."));
    // Hashes never appear in messages.
    assert!(!text.contains(&good));
    assert_eq!(snapshot(a), before);
    let ev = last_audit(a);
    assert_eq!(
        (ev.action.as_str(), ev.outcome.as_str()),
        ("user.import", "refused")
    );
}

#[tokio::test]
async fn import_of_an_empty_file_or_only_a_header_is_refused() {
    let f = fixture();
    for text in ["", "\n\n", "name,email,hash,apps\n"] {
        assert!(matches!(
            f.accounts.import_csv(text, &apps(), Actor::Cli),
            Err(AdminError::ImportEmpty)
        ));
    }
}

#[test]
fn imported_hashes_are_checked() {
    let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
    assert!(check_imported_hash(bcrypt).is_ok());
    assert!(check_imported_hash(&bcrypt.replace("$2b$", "$2y$")).is_ok());
    assert!(check_imported_hash(&bcrypt.replace("$2b$", "$2a$")).is_ok());
    let argon = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$6W+V2kmo2/Nd+hsqVYz4tC6J8ECJj9dKfphB6bYxnA0";
    assert!(check_imported_hash(argon).is_ok());
    assert!(check_imported_hash(&argon.replace("argon2id", "argon2i")).is_ok());
    assert!(check_imported_hash(&argon.replace("argon2id", "argon2d")).is_ok());
    for bad in [
        String::new(),
        "plaintext".into(),
        bcrypt.replace("$2b$", "$2x$"),
        bcrypt.replace("$12$", "$03$"),
        bcrypt.replace("$12$", "$17$"),
        bcrypt.replace("$12$", "$xx$"),
        bcrypt[..59].to_string(),
        format!("{bcrypt}A"),
        bcrypt.replace('R', "!"),
        argon.replace("argon2id", "argon2x"),
        argon.replace("m=19456", "m=4294967295"),
        argon.replace("t=2", "t=1000"),
        argon.replace("p=1", "p=255"),
        "$argon2id$v=19$m=19456,t=2,p=1".into(),
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA".into(),
        "$argon2id$v=99$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaA".into(),
        "$argon2id$".into(),
        "$2b$".into(),
        "$2b$12$ééééééééééééééééééééééééééééé".into(),
    ] {
        let err = check_imported_hash(&bad).unwrap_err();
        assert!(
            bad.len() < 12 || !err.contains(&bad),
            "the hash must not be echoed: {err}"
        );
    }
}

#[test]
fn csv_lines_split_with_rfc4180_quoting() {
    assert_eq!(split_csv_line("a,b , c").unwrap(), ["a", "b", "c"]);
    assert_eq!(split_csv_line("\"a,b\",c").unwrap(), ["a,b", "c"]);
    assert_eq!(
        split_csv_line("\"say \"\"hi\"\"\",x").unwrap(),
        ["say \"hi\"", "x"]
    );
    assert_eq!(split_csv_line("a,,").unwrap(), ["a", "", ""]);
    assert_eq!(split_csv_line("").unwrap(), [""]);
    assert!(split_csv_line("\"open").is_err());
    // A quote inside an unquoted field is kept as it is.
    assert_eq!(split_csv_line("ab\"c,d").unwrap(), ["ab\"c", "d"]);
}

#[test]
fn hostile_csv_never_panics() {
    let apps = apps();
    for text in [
        "\u{0}",
        ",,,,,,,,",
        "\"",
        "\"\"\"",
        "a,b,c,d,e,f,g,$",
        "é,é,é,é",
        "\u{feff}",
        "name,email",
        "name,email\nname,email",
        &"x,".repeat(10_000),
    ] {
        let rows = parse_csv(text, &apps);
        for r in rows {
            assert!(r.parsed.is_none() || r.problems.is_empty());
        }
    }
}

// --- store export / import ---------------------------------------------------------------

/// A new data directory holding a copy of `f`'s secret key: where a backup is restored.
fn fresh_store_with_the_same_key(f: &Fixture) -> (tempfile::TempDir, Config, Accounts) {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    std::fs::copy(
        f.config.server.data_dir.join("secret.key"),
        config.server.data_dir.join("secret.key"),
    )
    .unwrap();
    let fresh = Accounts::open(&config, Arc::new(ManualClock::new(NOW))).unwrap();
    (dir, config, fresh)
}

#[tokio::test]
async fn store_export_then_import_into_a_fresh_store_round_trips() {
    let f = fixture();
    let a = &f.accounts;
    let (user, _) = add(a, "alice", Some(GOOD)).await;
    enrol(a, &user);
    add(a, "bob", None).await;
    let (text, lines) = a.export_store().unwrap();
    assert!(lines > 3);
    assert!(!text.contains(GOOD));

    let (_dir, config, fresh) = fresh_store_with_the_same_key(&f);
    let count = fresh.import_store(&text, Actor::Cli).unwrap();
    assert!(count > 3);
    let names = |acc: &Accounts| -> Vec<(String, UserStatus, bool)> {
        acc.list_users()
            .unwrap()
            .into_iter()
            .map(|u| (u.name, u.status, u.totp.is_some()))
            .collect()
    };
    assert_eq!(names(a), names(&fresh));
    // Importing twice is refused: only into an empty store.
    let err = fresh.import_store(&text, Actor::Cli).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    drop(fresh);
    // And the data directory opens again with its key.
    Accounts::open(&config, Arc::new(ManualClock::new(NOW))).unwrap();
}

/// The restore a person actually does: a new data directory, a mistyped command that is
/// refused (and audited), then the import — which must still be taken.
#[tokio::test]
async fn store_import_after_a_refused_command_on_the_fresh_store_is_taken() {
    let f = fixture();
    add(&f.accounts, "alice", None).await;
    let (text, _) = f.accounts.export_store().unwrap();
    let (_dir, _, fresh) = fresh_store_with_the_same_key(&f);
    assert!(fresh.disable_user("alcie", Actor::Cli).is_err());
    fresh.import_store(&text, Actor::Cli).unwrap();
    assert_eq!(fresh.list_users().unwrap()[0].name, "alice");
    let trail: Vec<(String, String)> = fresh
        .store
        .audit(None, 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.outcome))
        .collect();
    assert_eq!(trail[0], ("store.import".to_string(), "ok".to_string()));
    assert_eq!(
        trail[1],
        ("user.disable".to_string(), "refused".to_string())
    );
}

#[tokio::test]
async fn store_import_with_another_secret_key_is_refused_and_imports_nothing() {
    let f = fixture();
    add(&f.accounts, "alice", None).await;
    let (text, _) = f.accounts.export_store().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let fresh = Accounts::open_unchecked(&config, Arc::new(ManualClock::new(NOW))).unwrap();
    let err = fresh.import_store(&text, Actor::Cli).unwrap_err();
    assert!(matches!(err, AdminError::WrongSecretKey), "{err}");
    assert!(fresh.list_users().unwrap().is_empty());
}

#[tokio::test]
async fn store_import_of_garbage_names_the_line() {
    let f = fixture();
    let err = f
        .accounts
        .import_store(
            "{\"table\":\"header\",\"format\":\"portcullis-store\",\"version\":1}\n{nope\n",
            Actor::Cli,
        )
        .unwrap_err();
    assert!(err.to_string().contains("Line 2"), "{err}");
}
