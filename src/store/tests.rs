//! Behaviour of the `Store` trait, exercised on the redb store through `dyn Store`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use super::*;
use crate::crypto::sha256;

const T0: UnixSeconds = 1_700_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<dyn Store>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    Fixture {
        _dir: dir,
        path,
        store,
    }
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        name: name.into(),
        email: format!("{}@example.com", name.to_ascii_lowercase()),
        display_name: format!("{name} Example"),
        apps: ["portal".to_string()].into(),
        status: UserStatus::Active,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into()),
        now: T0,
    }
}

fn enrolled(store: &dyn Store, name: &str) -> User {
    let u = store.create_user(new_user(name)).unwrap();
    store
        .update_user(&u.id, &mut |u| {
            u.totp = Some(TotpCredential {
                sealed_secret: vec![1; 49],
                enrolled_at: T0,
                last_step: 100,
            });
            Ok(())
        })
        .unwrap()
}

fn session(user: &User, tag: &str, parent: Option<[u8; 32]>, expires_at: UnixSeconds) -> Session {
    Session {
        id_hash: sha256(tag.as_bytes()),
        user_id: user.id,
        state: SessionState::Authenticated,
        created_at: T0,
        last_seen: T0,
        expires_at,
        auth_time: T0,
        amr: vec!["pwd".into(), "otp".into()],
        parent,
        app: parent.map(|_| "portal".to_string()),
    }
}

fn event(at: UnixSeconds, action: &str, user: Option<&str>) -> AuditEvent {
    AuditEvent {
        at,
        actor: "web".into(),
        action: action.into(),
        user: user.map(str::to_string),
        target: None,
        outcome: "ok".into(),
        detail: None,
        ip: Some("192.0.2.1".into()),
    }
}

fn export(store: &dyn Store) -> String {
    let mut out = Vec::new();
    store.export_jsonl(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

// --- users ------------------------------------------------------------------------------

#[test]
fn created_user_is_found_by_id_and_by_name_in_any_case() {
    let f = fixture();
    let u = f.store.create_user(new_user("Alice")).unwrap();
    assert_eq!(u.name, "Alice");
    assert_eq!(u.created_at, T0);
    assert_eq!(u.sessions_valid_after, T0);
    assert!(u.totp.is_none() && u.pending_totp.is_none());
    assert_eq!(f.store.user(&u.id).unwrap().unwrap(), u);
    assert_eq!(f.store.user_by_name("alice").unwrap().unwrap(), u);
    assert_eq!(f.store.user_by_name("ALICE").unwrap().unwrap(), u);
    assert!(f.store.user_by_name("bob").unwrap().is_none());
    assert!(f.store.user(&UserId::random()).unwrap().is_none());
}

#[test]
fn name_differing_only_in_case_is_refused_and_store_unchanged() {
    let f = fixture();
    f.store.create_user(new_user("alice")).unwrap();
    let before = export(f.store.as_ref());
    let err = f.store.create_user(new_user("ALICE")).unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(ref n) if n == "ALICE"),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"));
    assert_eq!(export(f.store.as_ref()), before);
    assert_eq!(f.store.list_users().unwrap().len(), 1);
}

#[test]
fn invalid_email_or_name_is_refused() {
    let f = fixture();
    let mut bad = new_user("carol");
    bad.email = "carol at example.com".into();
    assert!(matches!(
        f.store.create_user(bad),
        Err(StoreError::InvalidEmail(_))
    ));
    let mut bad = new_user("carol");
    bad.name = "carol smith".into();
    assert!(matches!(
        f.store.create_user(bad),
        Err(StoreError::Invalid(_))
    ));
    let mut bad = new_user("carol");
    bad.display_name = "Carol\r\nX-Portcullis-User: admin".into();
    assert!(matches!(
        f.store.create_user(bad),
        Err(StoreError::Invalid(_))
    ));
    assert!(f.store.list_users().unwrap().is_empty());
}

#[test]
fn users_are_listed_by_name_case_insensitively() {
    let f = fixture();
    for n in ["carol", "Bob", "alice"] {
        f.store.create_user(new_user(n)).unwrap();
    }
    let names: Vec<String> = f
        .store
        .list_users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "Bob", "carol"]);
}

#[test]
fn update_changes_the_user_and_a_failed_update_changes_nothing() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let updated = f
        .store
        .update_user(&u.id, &mut |u| {
            u.apps.insert("analytics".into());
            u.updated_at = T0 + 5;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        updated.apps,
        BTreeSet::from(["analytics".to_string(), "portal".to_string()])
    );
    assert_eq!(f.store.user(&u.id).unwrap().unwrap(), updated);

    let err = f
        .store
        .update_user(&u.id, &mut |u| {
            u.status = UserStatus::Disabled;
            Err(StoreError::Invalid("changed my mind".into()))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "changed my mind");
    assert_eq!(f.store.user(&u.id).unwrap().unwrap(), updated);

    // Validation after the closure refuses a bad e-mail, also leaving the user as it was.
    assert!(f
        .store
        .update_user(&u.id, &mut |u| {
            u.email = "nope".into();
            Ok(())
        })
        .is_err());
    assert_eq!(f.store.user(&u.id).unwrap().unwrap(), updated);

    assert!(matches!(
        f.store.update_user(&UserId::random(), &mut |_| Ok(())),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn rename_moves_the_name_index_and_keeps_names_unique() {
    let f = fixture();
    let a = f.store.create_user(new_user("alice")).unwrap();
    f.store.create_user(new_user("bob")).unwrap();
    assert!(matches!(
        f.store.update_user(&a.id, &mut |u| {
            u.name = "BOB".into();
            Ok(())
        }),
        Err(StoreError::Duplicate(_))
    ));
    f.store
        .update_user(&a.id, &mut |u| {
            u.name = "alicia".into();
            Ok(())
        })
        .unwrap();
    assert!(f.store.user_by_name("alice").unwrap().is_none());
    assert_eq!(f.store.user_by_name("Alicia").unwrap().unwrap().id, a.id);
    // A change of case only keeps the same index entry.
    f.store
        .update_user(&a.id, &mut |u| {
            u.name = "Alicia".into();
            Ok(())
        })
        .unwrap();
    assert_eq!(
        f.store.user_by_name("alicia").unwrap().unwrap().name,
        "Alicia"
    );
    // The old name is free again.
    f.store.create_user(new_user("alice")).unwrap();
}

#[test]
fn user_stored_under_looser_rules_still_loads_and_updates() {
    // A record written by an older version whose name today's rules refuse.
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let mut text = export(f.store.as_ref());
    text = text.replace("\"name\":\"alice\"", "\"name\":\"alice smith\"");
    let mut legacy = model::UserV1::from(&u);
    legacy.name = "alice smith".into();
    let user = User::try_from(legacy).unwrap();
    assert_eq!(user.name, "alice smith");
    assert!(user.validate().is_err());
    // An update that leaves the name alone is accepted; one that sets a bad e-mail is not.
    let mut changed = user.clone();
    changed.status = UserStatus::Disabled;
    assert!(changed.validate_changes(&user).is_ok());
    changed.email = "bad".into();
    assert!(changed.validate_changes(&user).is_err());
    // On import, today's rules apply.
    let dst = fixture();
    assert!(dst.store.import_jsonl(&mut text.as_bytes()).is_err());
}

#[test]
fn user_id_cannot_be_changed_by_an_update() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    assert!(f
        .store
        .update_user(&u.id, &mut |u| {
            u.id = UserId::random();
            Ok(())
        })
        .is_err());
    assert_eq!(f.store.user(&u.id).unwrap().unwrap(), u);
}

#[test]
fn concurrent_updates_are_never_lost() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let threads = 8;
    let per_thread = 5;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let store = f.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_thread {
                    store
                        .update_user(&u.id, &mut |u| {
                            u.sessions_valid_after += 1;
                            Ok(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let after = f.store.user(&u.id).unwrap().unwrap();
    assert_eq!(
        after.sessions_valid_after,
        T0 + (threads * per_thread) as i64
    );
}

#[test]
fn deleting_a_user_removes_sessions_invitations_and_failures() {
    let f = fixture();
    let a = f.store.create_user(new_user("alice")).unwrap();
    let b = f.store.create_user(new_user("bob")).unwrap();
    let parent = session(&a, "a1", None, T0 + 100);
    f.store.put_session(parent.clone()).unwrap();
    f.store
        .put_session(session(&a, "a1-child", Some(parent.id_hash), T0 + 100))
        .unwrap();
    f.store
        .put_session(session(&b, "b1", None, T0 + 100))
        .unwrap();
    f.store
        .create_invitation(Invitation {
            token_hash: sha256(b"inv-a"),
            user_id: a.id,
            created_at: T0,
            expires_at: T0 + 100,
            used_at: None,
        })
        .unwrap();
    f.store
        .put_failures(
            &a.id,
            Failures {
                recent: vec![T0],
                locked_until: None,
            },
        )
        .unwrap();

    f.store.delete_user(&a.id).unwrap();
    assert!(f.store.user(&a.id).unwrap().is_none());
    assert!(f.store.user_by_name("alice").unwrap().is_none());
    assert!(f.store.session(&sha256(b"a1")).unwrap().is_none());
    assert!(f.store.session(&sha256(b"a1-child")).unwrap().is_none());
    assert!(f.store.session(&sha256(b"b1")).unwrap().is_some());
    assert_eq!(f.store.count_sessions().unwrap(), 1);
    assert!(f.store.invitation(&sha256(b"inv-a")).unwrap().is_none());
    assert_eq!(f.store.failures(&a.id).unwrap(), Failures::default());
    assert!(matches!(
        f.store.delete_user(&a.id),
        Err(StoreError::NotFound)
    ));
    // The name can be used again.
    f.store.create_user(new_user("alice")).unwrap();
}

// --- TOTP -------------------------------------------------------------------------------

#[test]
fn totp_step_is_accepted_only_when_later_than_the_last() {
    let f = fixture();
    let u = enrolled(f.store.as_ref(), "alice");
    assert!(!f.store.accept_totp_step(&u.id, 99).unwrap());
    assert!(!f.store.accept_totp_step(&u.id, 100).unwrap());
    assert!(f.store.accept_totp_step(&u.id, 101).unwrap());
    assert!(!f.store.accept_totp_step(&u.id, 101).unwrap());
    assert!(!f.store.accept_totp_step(&u.id, 100).unwrap());
    assert!(f.store.accept_totp_step(&u.id, 103).unwrap());
    assert_eq!(
        f.store
            .user(&u.id)
            .unwrap()
            .unwrap()
            .totp
            .unwrap()
            .last_step,
        103
    );
}

#[test]
fn totp_step_without_enrolment_is_an_error_not_a_replay() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    assert!(matches!(
        f.store.accept_totp_step(&u.id, 1),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        f.store.accept_totp_step(&UserId::random(), 1),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn same_step_submitted_by_eight_threads_is_accepted_exactly_once() {
    let f = fixture();
    let u = enrolled(f.store.as_ref(), "alice");
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = f.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                store.accept_totp_step(&u.id, 101).unwrap()
            })
        })
        .collect();
    let accepted = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(accepted, 1);
}

#[test]
fn code_used_at_finish_is_refused_at_next_step() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let pending = vec![6u8; 49];
    let sealed = vec![7u8; 49];
    f.store
        .update_user(&u.id, &mut |u| {
            u.pending_totp = Some(pending.clone());
            Ok(())
        })
        .unwrap();
    let done = f
        .store
        .complete_enrolment(&u.id, &pending, &sealed, 555, T0 + 10)
        .unwrap();
    assert!(done.pending_totp.is_none());
    let totp = done.totp.clone().unwrap();
    assert_eq!(totp.sealed_secret, sealed);
    assert_eq!(totp.last_step, 555);
    assert_eq!(totp.enrolled_at, T0 + 10);
    assert_eq!(f.store.user(&u.id).unwrap().unwrap(), done);
    // The code of step 555 (used to finish) is refused at the code step; 556 is not.
    assert!(!f.store.accept_totp_step(&u.id, 555).unwrap());
    assert!(f.store.accept_totp_step(&u.id, 556).unwrap());
    // Finishing again is refused.
    assert!(f
        .store
        .complete_enrolment(&u.id, &pending, &sealed, 600, T0 + 20)
        .is_err());
}

#[test]
fn enrolment_with_a_replaced_pending_secret_is_refused() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    f.store
        .update_user(&u.id, &mut |u| {
            u.pending_totp = Some(vec![2u8; 49]);
            Ok(())
        })
        .unwrap();
    let err = f
        .store
        .complete_enrolment(&u.id, &[1u8; 49], &[3u8; 49], 5, T0)
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
    let after = f.store.user(&u.id).unwrap().unwrap();
    assert!(after.totp.is_none());
    assert_eq!(after.pending_totp, Some(vec![2u8; 49]));
    // No pending secret at all is refused too.
    let v = f.store.create_user(new_user("bob")).unwrap();
    assert!(f
        .store
        .complete_enrolment(&v.id, &[1u8; 49], &[3u8; 49], 5, T0)
        .is_err());
}

// --- invitations ------------------------------------------------------------------------

#[test]
fn invitation_is_used_once_and_not_after_expiry() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let inv = Invitation {
        token_hash: sha256(b"token-1"),
        user_id: u.id,
        created_at: T0,
        expires_at: T0 + 100,
        used_at: None,
    };
    f.store.create_invitation(inv.clone()).unwrap();
    assert_eq!(f.store.invitation(&inv.token_hash).unwrap().unwrap(), inv);
    assert!(f.store.create_invitation(inv.clone()).is_err());

    let used = f
        .store
        .use_invitation(&inv.token_hash, T0 + 5)
        .unwrap()
        .unwrap();
    assert_eq!(used.used_at, Some(T0 + 5));
    assert!(f
        .store
        .use_invitation(&inv.token_hash, T0 + 6)
        .unwrap()
        .is_none());
    assert_eq!(
        f.store
            .invitation(&inv.token_hash)
            .unwrap()
            .unwrap()
            .used_at,
        Some(T0 + 5)
    );

    let late = Invitation {
        token_hash: sha256(b"token-2"),
        ..inv.clone()
    };
    f.store.create_invitation(late.clone()).unwrap();
    assert!(f
        .store
        .use_invitation(&late.token_hash, T0 + 100)
        .unwrap()
        .is_none());
    assert!(f
        .store
        .use_invitation(&late.token_hash, T0 + 99)
        .unwrap()
        .is_some());
    assert!(f
        .store
        .use_invitation(&sha256(b"unknown"), T0)
        .unwrap()
        .is_none());
}

#[test]
fn invitation_for_an_unknown_user_is_refused() {
    let f = fixture();
    let inv = Invitation {
        token_hash: sha256(b"t"),
        user_id: UserId::random(),
        created_at: T0,
        expires_at: T0 + 1,
        used_at: None,
    };
    assert!(matches!(
        f.store.create_invitation(inv),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn concurrent_use_of_one_invitation_succeeds_once() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let hash = sha256(b"race");
    f.store
        .create_invitation(Invitation {
            token_hash: hash,
            user_id: u.id,
            created_at: T0,
            expires_at: T0 + 100,
            used_at: None,
        })
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = f.store.clone();
            std::thread::spawn(move || store.use_invitation(&hash, T0 + 1).unwrap().is_some())
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&w| w)
        .count();
    assert_eq!(wins, 1);
}

// --- sessions ---------------------------------------------------------------------------

#[test]
fn session_is_stored_touched_and_deleted_with_its_children() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let parent = session(&u, "p", None, T0 + 3600);
    f.store.put_session(parent.clone()).unwrap();
    assert_eq!(f.store.session(&parent.id_hash).unwrap().unwrap(), parent);

    let c1 = session(&u, "c1", Some(parent.id_hash), T0 + 3600);
    let c2 = session(&u, "c2", Some(parent.id_hash), T0 + 3600);
    f.store.put_session(c1.clone()).unwrap();
    f.store.put_session(c2.clone()).unwrap();
    assert_eq!(f.store.count_sessions().unwrap(), 3);

    assert!(f.store.touch_session(&c1.id_hash, T0 + 30).unwrap());
    assert_eq!(
        f.store.session(&c1.id_hash).unwrap().unwrap().last_seen,
        T0 + 30
    );
    // A touch never moves last_seen backwards.
    assert!(f.store.touch_session(&c1.id_hash, T0 + 10).unwrap());
    assert_eq!(
        f.store.session(&c1.id_hash).unwrap().unwrap().last_seen,
        T0 + 30
    );
    assert!(!f.store.touch_session(&sha256(b"nope"), T0).unwrap());

    assert!(f.store.delete_session(&parent.id_hash).unwrap());
    assert!(f.store.session(&parent.id_hash).unwrap().is_none());
    assert!(f.store.session(&c1.id_hash).unwrap().is_none());
    assert!(f.store.session(&c2.id_hash).unwrap().is_none());
    assert_eq!(f.store.count_sessions().unwrap(), 0);
    assert!(!f.store.delete_session(&parent.id_hash).unwrap());
}

#[test]
fn deleting_a_child_session_leaves_the_parent() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let parent = session(&u, "p", None, T0 + 3600);
    let child = session(&u, "c", Some(parent.id_hash), T0 + 3600);
    f.store.put_session(parent.clone()).unwrap();
    f.store.put_session(child.clone()).unwrap();
    assert!(f.store.delete_session(&child.id_hash).unwrap());
    assert!(f.store.session(&parent.id_hash).unwrap().is_some());
    // And the parent's later deletion is still clean.
    assert!(f.store.delete_session(&parent.id_hash).unwrap());
    assert_eq!(f.store.count_sessions().unwrap(), 0);
}

#[test]
fn child_session_of_a_signed_out_parent_cannot_be_created() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let child = session(&u, "c", Some(sha256(b"gone")), T0 + 3600);
    assert!(matches!(
        f.store.put_session(child),
        Err(StoreError::NotFound)
    ));
    let orphan = Session {
        user_id: UserId::random(),
        ..session(&u, "x", None, T0 + 1)
    };
    assert!(matches!(
        f.store.put_session(orphan),
        Err(StoreError::NotFound)
    ));
    assert_eq!(f.store.count_sessions().unwrap(), 0);
}

#[test]
fn replacing_a_session_keeps_the_indexes_right() {
    let f = fixture();
    let a = f.store.create_user(new_user("alice")).unwrap();
    let b = f.store.create_user(new_user("bob")).unwrap();
    let s = session(&a, "s", None, T0 + 10);
    f.store.put_session(s.clone()).unwrap();
    let mut upgraded = s.clone();
    upgraded.state = SessionState::PasswordVerified;
    upgraded.user_id = b.id;
    f.store.put_session(upgraded.clone()).unwrap();
    assert_eq!(f.store.delete_user_sessions(&a.id).unwrap(), 0);
    assert_eq!(f.store.session(&s.id_hash).unwrap().unwrap(), upgraded);
    assert_eq!(f.store.delete_user_sessions(&b.id).unwrap(), 1);
}

#[test]
fn ending_all_sessions_of_a_user_leaves_others() {
    let f = fixture();
    let a = f.store.create_user(new_user("alice")).unwrap();
    let b = f.store.create_user(new_user("bob")).unwrap();
    let p = session(&a, "a-p", None, T0 + 100);
    f.store.put_session(p.clone()).unwrap();
    f.store
        .put_session(session(&a, "a-c", Some(p.id_hash), T0 + 100))
        .unwrap();
    f.store
        .put_session(session(&a, "a-2", None, T0 + 100))
        .unwrap();
    f.store
        .put_session(session(&b, "b-1", None, T0 + 100))
        .unwrap();
    assert_eq!(f.store.delete_user_sessions(&a.id).unwrap(), 3);
    assert_eq!(f.store.count_sessions().unwrap(), 1);
    assert!(f.store.session(&sha256(b"b-1")).unwrap().is_some());
    assert_eq!(f.store.delete_user_sessions(&a.id).unwrap(), 0);
}

#[test]
fn purge_removes_only_what_has_expired() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let old = session(&u, "old", None, T0 + 10);
    f.store.put_session(old.clone()).unwrap();
    // A child living longer than its parent still goes with it.
    f.store
        .put_session(session(&u, "old-child", Some(old.id_hash), T0 + 1000))
        .unwrap();
    f.store
        .put_session(session(&u, "new", None, T0 + 1000))
        .unwrap();
    for (tag, exp) in [("h-old", T0 + 10), ("h-new", T0 + 1000)] {
        f.store
            .put_handoff(HandOff {
                code_hash: sha256(tag.as_bytes()),
                session_hash: sha256(b"new"),
                app_id: "portal".into(),
                rd: "/".into(),
                expires_at: exp,
                browser: [7; 32],
            })
            .unwrap();
    }
    for (tag, exp) in [("i-old", T0 + 10), ("i-new", T0 + 1000)] {
        f.store
            .create_invitation(Invitation {
                token_hash: sha256(tag.as_bytes()),
                user_id: u.id,
                created_at: T0,
                expires_at: exp,
                used_at: None,
            })
            .unwrap();
    }
    assert_eq!(f.store.purge_expired(T0 + 9).unwrap(), 0);
    assert_eq!(f.store.purge_expired(T0 + 10).unwrap(), 4);
    assert_eq!(f.store.count_sessions().unwrap(), 1);
    assert!(f.store.session(&sha256(b"new")).unwrap().is_some());
    assert!(f.store.invitation(&sha256(b"i-new")).unwrap().is_some());
    assert!(f.store.invitation(&sha256(b"i-old")).unwrap().is_none());
    assert!(f
        .store
        .take_handoff(&sha256(b"h-new"), T0 + 11)
        .unwrap()
        .is_some());
    assert_eq!(f.store.purge_expired(T0 + 10).unwrap(), 0);
}

// --- hand-offs --------------------------------------------------------------------------

#[test]
fn handoff_is_taken_once_and_not_after_expiry() {
    let f = fixture();
    let h = HandOff {
        code_hash: sha256(b"code"),
        session_hash: sha256(b"session"),
        app_id: "portal".into(),
        rd: "https://portal.example.com/x?y=1".into(),
        expires_at: T0 + 60,
        browser: [7; 32],
    };
    f.store.put_handoff(h.clone()).unwrap();
    assert_eq!(
        f.store.take_handoff(&h.code_hash, T0 + 1).unwrap(),
        Some(h.clone())
    );
    assert_eq!(f.store.take_handoff(&h.code_hash, T0 + 2).unwrap(), None);

    f.store.put_handoff(h.clone()).unwrap();
    assert_eq!(f.store.take_handoff(&h.code_hash, T0 + 60).unwrap(), None);
    // An expired code is gone, not merely refused.
    assert_eq!(f.store.take_handoff(&h.code_hash, T0).unwrap(), None);
    assert_eq!(f.store.take_handoff(&sha256(b"unknown"), T0).unwrap(), None);
}

#[test]
fn concurrent_redemption_of_one_handoff_succeeds_once() {
    let f = fixture();
    let hash = sha256(b"code");
    f.store
        .put_handoff(HandOff {
            code_hash: hash,
            session_hash: sha256(b"s"),
            app_id: "portal".into(),
            rd: "/".into(),
            expires_at: T0 + 60,
            browser: [7; 32],
        })
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = f.store.clone();
            std::thread::spawn(move || store.take_handoff(&hash, T0).unwrap().is_some())
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&w| w)
        .count();
    assert_eq!(wins, 1);
}

// --- failures ---------------------------------------------------------------------------

#[test]
fn failures_start_empty_and_are_updated_atomically() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    assert_eq!(f.store.failures(&u.id).unwrap(), Failures::default());
    f.store
        .put_failures(
            &u.id,
            Failures {
                recent: vec![T0],
                locked_until: None,
            },
        )
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let store = f.store.clone();
            let id = u.id;
            std::thread::spawn(move || {
                store
                    .update_failures(&id, &mut |f| f.recent.push(T0 + 1 + i))
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let after = f
        .store
        .update_failures(&u.id, &mut |f| f.locked_until = Some(T0 + 900))
        .unwrap();
    assert_eq!(after.recent.len(), 5);
    assert_eq!(after.locked_until, Some(T0 + 900));
    assert_eq!(f.store.failures(&u.id).unwrap(), after);
}

// --- audit ------------------------------------------------------------------------------

#[test]
fn audit_is_newest_first_and_filtered_per_user() {
    let f = fixture();
    // Several events within one second keep their order.
    f.store
        .append_audit(event(T0, "signin", Some("alice")))
        .unwrap();
    f.store
        .append_audit(event(T0, "signin", Some("bob")))
        .unwrap();
    f.store
        .append_audit(event(T0, "lockout", Some("Alice")))
        .unwrap();
    f.store.append_audit(event(T0 + 1, "config", None)).unwrap();
    f.store
        .append_audit(event(T0 + 1, "signout", Some("alice")))
        .unwrap();

    let all = f.store.audit(None, 100).unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["signout", "config", "lockout", "signin", "signin"]
    );
    assert_eq!(all[0], event(T0 + 1, "signout", Some("alice")));

    let alice = f.store.audit(Some("ALICE"), 100).unwrap();
    let actions: Vec<&str> = alice.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["signout", "lockout", "signin"]);

    assert_eq!(f.store.audit(None, 2).unwrap().len(), 2);
    assert_eq!(
        f.store.audit(Some("alice"), 1).unwrap()[0].action,
        "signout"
    );
    assert!(f.store.audit(None, 0).unwrap().is_empty());
    assert!(f.store.audit(Some("nobody"), 10).unwrap().is_empty());
}

// --- meta -------------------------------------------------------------------------------

#[test]
fn meta_values_are_stored_and_replaced() {
    let f = fixture();
    assert!(f.store.meta(META_SECRET_KEY_CANARY).unwrap().is_none());
    f.store.put_meta(META_SECRET_KEY_CANARY, b"one").unwrap();
    f.store.put_meta(META_SECRET_KEY_CANARY, b"two").unwrap();
    assert_eq!(
        f.store.meta(META_SECRET_KEY_CANARY).unwrap().unwrap(),
        b"two"
    );
}

// --- backup -----------------------------------------------------------------------------

fn populate(store: &dyn Store) {
    let a = enrolled(store, "alice");
    let mut pending = new_user("bob");
    pending.status = UserStatus::Invited;
    pending.password_hash = None;
    let b = store.create_user(pending).unwrap();
    store
        .update_user(&b.id, &mut |u| {
            u.pending_totp = Some(vec![3; 49]);
            Ok(())
        })
        .unwrap();
    let p = session(&a, "p", None, T0 + 100);
    store.put_session(p.clone()).unwrap();
    store
        .put_session(session(&a, "c", Some(p.id_hash), T0 + 100))
        .unwrap();
    store
        .create_invitation(Invitation {
            token_hash: sha256(b"inv"),
            user_id: b.id,
            created_at: T0,
            expires_at: T0 + 7 * 86400,
            used_at: None,
        })
        .unwrap();
    store
        .put_handoff(HandOff {
            code_hash: sha256(b"code"),
            session_hash: p.id_hash,
            app_id: "portal".into(),
            rd: "/".into(),
            expires_at: T0 + 60,
            browser: [7; 32],
        })
        .unwrap();
    store
        .put_failures(
            &a.id,
            Failures {
                recent: vec![T0, T0 + 1],
                locked_until: Some(T0 + 900),
            },
        )
        .unwrap();
    store
        .append_audit(event(T0, "signin", Some("alice")))
        .unwrap();
    store
        .append_audit(event(T0, "user add", Some("bob")))
        .unwrap();
    store
        .put_meta(META_SECRET_KEY_CANARY, &[0, 1, 2, 255])
        .unwrap();
}

/// An invitation that cannot be stored takes its account with it: one transaction.
#[test]
fn an_invited_user_and_the_invitation_are_created_together_or_not_at_all() {
    let f = fixture();
    let store = f.store.as_ref();
    let alice = store
        .create_invited_user(new_user("alice"), sha256(b"link"), T0 + 86400)
        .unwrap();
    let invitation = store.invitation(&sha256(b"link")).unwrap().unwrap();
    assert_eq!(invitation.user_id, alice.id);
    assert_eq!(invitation.expires_at, T0 + 86400);
    // The same token again: the invitation is refused, so no account for bob either.
    assert!(store
        .create_invited_user(new_user("bob"), sha256(b"link"), T0 + 86400)
        .is_err());
    assert!(store.user_by_name("bob").unwrap().is_none());
    // And a name taken already refuses before any invitation is stored.
    assert!(store
        .create_invited_user(new_user("ALICE"), sha256(b"other"), T0 + 86400)
        .is_err());
    assert!(store.invitation(&sha256(b"other")).unwrap().is_none());
}

#[test]
fn audit_events_before_the_cutoff_are_pruned_oldest_first() {
    let f = fixture();
    let store = f.store.as_ref();
    for (at, action) in [(T0, "a"), (T0 + 10, "b"), (T0 + 20, "c"), (T0 + 30, "d")] {
        store.append_audit(event(at, action, None)).unwrap();
    }
    let left = |store: &dyn Store| -> Vec<String> {
        let mut actions: Vec<String> = store
            .audit(None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        actions.reverse();
        actions
    };
    // At most `limit` per call.
    assert_eq!(store.prune_audit(T0 + 25, 1).unwrap(), 1);
    assert_eq!(left(store), ["b", "c", "d"]);
    assert_eq!(store.prune_audit(T0 + 25, 100).unwrap(), 2);
    assert_eq!(left(store), ["d"]);
    // The cutoff itself is kept.
    assert_eq!(store.prune_audit(T0 + 30, 100).unwrap(), 0);
    assert_eq!(left(store), ["d"]);
    // New events carry on after the pruned ones.
    store.append_audit(event(T0 + 40, "e", None)).unwrap();
    assert_eq!(left(store), ["d", "e"]);
    // However old, the newest event stays, so the numbering never starts again at 1.
    assert_eq!(store.prune_audit(T0 + 1000, 100).unwrap(), 1);
    assert_eq!(left(store), ["e"]);
    store.append_audit(event(T0 + 50, "f", None)).unwrap();
    let text = export(store);
    assert!(!text.contains(r#""seq":1,"#), "{text}");
}

#[test]
fn export_then_import_into_a_fresh_store_round_trips() {
    let src = fixture();
    populate(src.store.as_ref());
    let text = export(src.store.as_ref());
    assert!(text.starts_with(r#"{"table":"header","format":"portcullis-store","version":1}"#));
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["table"].is_string(), "{line}");
    }

    let dst = fixture();
    let n = dst.store.import_jsonl(&mut text.as_bytes()).unwrap();
    assert_eq!(n as usize, text.lines().count() - 1);
    assert_eq!(export(dst.store.as_ref()), text);

    let a = dst.store.user_by_name("ALICE").unwrap().unwrap();
    assert_eq!(a, src.store.user_by_name("alice").unwrap().unwrap());
    assert_eq!(dst.store.count_sessions().unwrap(), 2);
    assert_eq!(
        dst.store.audit(None, 10).unwrap(),
        src.store.audit(None, 10).unwrap()
    );
    // The indexes were rebuilt: deleting the parent removes the imported child.
    assert_eq!(dst.store.delete_user_sessions(&a.id).unwrap(), 2);
    // The audit sequence continues after the imported events.
    dst.store
        .append_audit(event(T0 + 5, "after", None))
        .unwrap();
    assert_eq!(dst.store.audit(None, 1).unwrap()[0].action, "after");
    assert_eq!(
        dst.store.meta(META_SECRET_KEY_CANARY).unwrap().unwrap(),
        [0, 1, 2, 255]
    );
}

#[test]
fn import_into_a_non_empty_store_is_refused_and_changes_nothing() {
    let src = fixture();
    populate(src.store.as_ref());
    let text = export(src.store.as_ref());

    let dst = fixture();
    dst.store.create_user(new_user("zed")).unwrap();
    let before = export(dst.store.as_ref());
    assert!(matches!(
        dst.store.import_jsonl(&mut text.as_bytes()),
        Err(StoreError::NotEmpty)
    ));
    assert_eq!(export(dst.store.as_ref()), before);
}

/// A fresh store that has only audit events (an admin command refused before the
/// import) still takes the backup; its own events follow the imported ones.
#[test]
fn import_keeps_the_stores_own_audit_events_after_the_imported_ones() {
    let src = fixture();
    populate(src.store.as_ref());
    let text = export(src.store.as_ref());

    let dst = fixture();
    dst.store
        .append_audit(event(T0 + 50, "user disable", Some("nobody")))
        .unwrap();
    dst.store.import_jsonl(&mut text.as_bytes()).unwrap();
    let actions: Vec<String> = dst
        .store
        .audit(None, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["user disable", "user add", "signin"]);
    assert!(dst.store.user_by_name("alice").unwrap().is_some());
    dst.store
        .append_audit(event(T0 + 60, "after", None))
        .unwrap();
    assert_eq!(dst.store.audit(None, 1).unwrap()[0].action, "after");
}

#[test]
fn import_with_one_bad_line_imports_nothing() {
    let src = fixture();
    populate(src.store.as_ref());
    let text = export(src.store.as_ref());
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let last = lines.len() - 1;
    lines[last] = lines[last].replace("\"meta\"", "\"mystery\"");
    let broken = lines.join("\n");

    let dst = fixture();
    let err = dst.store.import_jsonl(&mut broken.as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("Line {}", last + 1)),
        "{err}"
    );
    assert!(dst.store.list_users().unwrap().is_empty());
    assert_eq!(dst.store.count_sessions().unwrap(), 0);
}

#[test]
fn import_with_dangling_or_duplicate_records_is_refused() {
    let src = fixture();
    populate(src.store.as_ref());
    let text = export(src.store.as_ref());
    let user_line = text
        .lines()
        .find(|l| l.contains(r#""table":"user""#) && l.contains("alice"))
        .unwrap();

    // Without alice, her sessions dangle.
    let without: String = text
        .lines()
        .filter(|l| *l != user_line)
        .map(|l| format!("{l}\n"))
        .collect();
    let dst = fixture();
    assert!(dst.store.import_jsonl(&mut without.as_bytes()).is_err());

    // Twice alice.
    let twice = format!("{text}{user_line}\n");
    assert!(dst.store.import_jsonl(&mut twice.as_bytes()).is_err());

    // A differently-cased copy of alice under a new id.
    let id = src
        .store
        .user_by_name("alice")
        .unwrap()
        .unwrap()
        .id
        .to_string();
    let clone = user_line
        .replace(&id, &UserId::random().to_string())
        .replace("\"alice\"", "\"ALICE\"");
    let cased = format!("{text}{clone}\n");
    assert!(matches!(
        dst.store.import_jsonl(&mut cased.as_bytes()),
        Err(StoreError::Duplicate(_))
    ));
    assert!(dst.store.list_users().unwrap().is_empty());
}

// --- the file ---------------------------------------------------------------------------

#[test]
fn second_opener_is_told_the_store_is_in_use() {
    let f = fixture();
    let err = RedbStore::open(&f.path).unwrap_err();
    assert!(matches!(err, StoreError::InUse(_)), "{err}");
    assert!(
        err.to_string().contains("in use by a running server"),
        "{err}"
    );
}

/// Set by `opener_in_another_process_is_told_the_store_is_in_use` for its child process.
const LOCK_PROBE_ENV: &str = "PORTCULLIS_TEST_STORE_LOCK_PROBE";

#[test]
fn lock_probe_child() {
    // Does nothing in a normal run; in the child process it reports what an open gives.
    if let Ok(path) = std::env::var(LOCK_PROBE_ENV) {
        match RedbStore::open(std::path::Path::new(&path)) {
            Err(StoreError::InUse(_)) => println!("LOCK-PROBE: in-use"),
            Err(e) => println!("LOCK-PROBE: error {e}"),
            Ok(_) => println!("LOCK-PROBE: opened"),
        }
    }
}

#[test]
fn opener_in_another_process_is_told_the_store_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let run_child = || {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::lock_probe_child", "--nocapture"])
            .env(LOCK_PROBE_ENV, &path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let store = RedbStore::open(&path).unwrap();
    let held = run_child();
    assert!(held.contains("LOCK-PROBE: in-use"), "{held}");
    // Once this process lets go, another process may open it.
    drop(store);
    let free = run_child();
    assert!(free.contains("LOCK-PROBE: opened"), "{free}");
}

#[test]
fn data_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let id = {
        let store = RedbStore::open(&path).unwrap();
        let u = store.create_user(new_user("alice")).unwrap();
        store
            .append_audit(event(T0, "signin", Some("alice")))
            .unwrap();
        u.id
    };
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.user(&id).unwrap().unwrap().name, "alice");
    assert_eq!(store.audit(None, 10).unwrap().len(), 1);
}

#[test]
fn store_file_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn garbage_file_is_refused_with_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    std::fs::write(&path, vec![0x5a; 16 * 1024]).unwrap();
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::Backend(_))
    ));
}

#[test]
fn debug_output_of_a_user_hides_the_password_hash() {
    let f = fixture();
    let u = f.store.create_user(new_user("alice")).unwrap();
    let dbg = format!("{u:?}");
    assert!(!dbg.contains("argon2"), "{dbg}");
    assert!(dbg.contains("[redacted]"));
}
