//! Expired sessions, sign-in codes and activation links leave the store on their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::accounts::Accounts;
use portcullis::clock::{Clock, ManualClock, SystemClock};
use portcullis::config::Config;
use portcullis::store::{NewUser, Session, SessionState, User, UserStatus};

use crate::helpers::*;

fn user(accounts: &Accounts, name: &str) -> User {
    accounts
        .store
        .create_user(NewUser {
            name: name.into(),
            email: format!("{name}@example.com"),
            display_name: name.into(),
            apps: ["portal".to_string()].into(),
            status: UserStatus::Active,
            password_hash: None,
            now: accounts.clock.now(),
        })
        .unwrap()
}

fn session(user: &User, tag: u8, expires_at: i64) -> Session {
    Session {
        id_hash: [tag; 32],
        user_id: user.id,
        state: SessionState::Authenticated,
        created_at: expires_at - 3600,
        last_seen: expires_at - 3600,
        expires_at,
        auth_time: expires_at - 3600,
        amr: vec!["pwd".into(), "otp".into()],
        parent: None,
        app: None,
    }
}

/// A config in a fresh directory, for the loops run here without a listener.
fn data_dir_with_config() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let any = "127.0.0.1:9".parse().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        config_text(1, any, any, "", ""),
    )
    .unwrap();
    let config = Config::load(&dir.path().join("config.toml")).unwrap();
    (dir, config)
}

async fn gone_within(accounts: &Accounts, id_hash: [u8; 32], limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if accounts.store.session(&id_hash).unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The server sweeps the store when it starts: an expired session goes, a live one stays.
#[tokio::test]
async fn the_server_removes_expired_sessions_from_the_store() {
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let server = start_server_with(
        |port| config_text(port, portal.addr, analytics.addr, "", ""),
        |accounts| {
            let now = accounts.clock.now();
            let alice = user(accounts, "alice");
            accounts
                .store
                .put_session(session(&alice, 1, now - 1))
                .unwrap();
            accounts
                .store
                .put_session(session(&alice, 2, now + 3600))
                .unwrap();
        },
    )
    .await;
    assert!(gone_within(&server.accounts, [1; 32], Duration::from_secs(5)).await);
    assert!(server.accounts.store.session(&[2; 32]).unwrap().is_some());
}

/// And again on every round, until the server stops; old audit events go too.
#[tokio::test]
async fn the_sweep_repeats_and_stops_with_the_server() {
    let (_dir, config) = data_dir_with_config();
    let clock = ManualClock::new(SystemClock.now());
    let accounts = Arc::new(Accounts::open(&config, Arc::new(clock.clone())).unwrap());
    let alice = user(&accounts, "alice");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeping = tokio::spawn(portcullis::server::housekeeping::run(
        accounts.clone(),
        Duration::from_millis(50),
        stop_rx,
    ));
    for tag in 1..=3 {
        let now = clock.now();
        accounts
            .store
            .put_session(session(&alice, tag, now + 60))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            accounts.store.session(&[tag; 32]).unwrap().is_some(),
            "removed before it expired"
        );
        clock.advance(61);
        assert!(gone_within(&accounts, [tag; 32], Duration::from_secs(5)).await);
    }
    // Audit events go once they are older than `security.audit_retention` (365 days);
    // the newest always stays, so the trail never restarts its numbering.
    let record = |action: &str| {
        accounts.audit(
            portcullis::accounts::Actor::Cli,
            action,
            Some("alice"),
            "ok",
            None,
            None,
        )
    };
    let recorded = || -> Vec<String> {
        let trail = accounts.store.audit(None, 10).unwrap();
        trail.into_iter().map(|e| e.action).collect()
    };
    record("user.add");
    clock.advance(200 * 86400);
    record("user.grant");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        recorded(),
        ["user.grant", "user.add"],
        "removed before its retention ended"
    );
    clock.advance(166 * 86400);
    let started = Instant::now();
    while recorded().len() > 1 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recorded(), ["user.grant"]);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), sweeping)
        .await
        .expect("the sweep must stop with the server")
        .unwrap();
}

/// A running server sees a key published by `keys rotate`, then signs with it from its
/// promotion time on; both changes are audited.
#[tokio::test]
async fn the_server_publishes_a_rotated_key_and_later_signs_with_it() {
    let (_dir, config) = data_dir_with_config();
    let data_dir = config.server.data_dir.clone();
    let clock = ManualClock::new(SystemClock.now());
    let accounts = Arc::new(Accounts::open(&config, Arc::new(clock.clone())).unwrap());
    let state = Arc::new(portcullis::state::AppState::new(config, accounts.clone()).unwrap());
    let old = state.keys.current().kid().to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watching = tokio::spawn(portcullis::server::housekeeping::watch_keys(
        state.clone(),
        Duration::from_millis(50),
        stop_rx,
    ));
    let until = |what: &'static str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(20), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let next = portcullis::identity::KeyRing::begin_rotation(&data_dir, clock.now()).unwrap();
    tokio::task::spawn_blocking({
        let state = state.clone();
        move || {
            until("not published", &|| {
                state.keys.current().published_kids().len() == 2
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(state.keys.current().kid(), old);

    clock.advance(portcullis::identity::PROMOTE_AFTER_SECS);
    tokio::task::spawn_blocking({
        let state = state.clone();
        let next = next.kid.clone();
        move || until("not signing", &|| state.keys.current().kid() == next)
    })
    .await
    .unwrap();
    // Audited after the swap, so wait for it too.
    let changes = move || {
        let trail = accounts.store.audit(None, 10).unwrap();
        trail.iter().filter(|e| e.action == "keys.change").count()
    };
    tokio::task::spawn_blocking(move || until("not audited", &|| changes() == 2))
        .await
        .unwrap();
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watching)
        .await
        .unwrap()
        .unwrap();
}
