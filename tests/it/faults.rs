//! Faults (SPEC §4–§6): a client that stops reading, an upstream that restarts under
//! load, and a store that fails while people are signed in.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis::clock::UnixSeconds;
use portcullis::store::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_after_the_send_timeout() {
    let s = setup_with("send_timeout = \"500ms\"", "").await;
    let mut stream = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let total = 512 * 1024 * 1024u64;
    stream
        .write_all(
            format!(
                "GET /bytes/{total} HTTP/1.1\r\nHost: portal.localhost:{}\r\n\r\n",
                s.server.port
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Read nothing while the buffers fill and the server waits for us.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n as u64,
            Err(_) => panic!("the server kept the stalled connection open"),
        }
    }
    // What was already in the socket buffers arrives; then the connection ends early.
    assert!(received < total / 4, "received {received} of {total}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_upstream_restarted_under_load_fails_only_requests_in_flight_and_the_pool_recovers() {
    let s = setup().await;
    let Setup { server, portal, .. } = s;
    let addr = portal.addr;
    let b = Browser::new(server.addr);
    let url = format!("{}/echo", server.url("portal"));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (b, url, ok, failed, stop) = (
            b.clone(),
            url.clone(),
            ok.clone(),
            failed.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let page = b.get(&url).await;
                if page.status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(portal); // the backend dies with its connections…
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = spawn_upstream_on("portal", addr).await; // …and comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 50);
    // After the restart every request succeeds: no stale pooled connection is used.
    for _ in 0..50 {
        assert_eq!(b.get(&url).await.status, StatusCode::OK);
    }
    drop(restarted);
}

/// A store whose disk is full: every write fails while `broken` is set.
struct FullDisk {
    inner: Arc<dyn Store>,
    broken: AtomicBool,
}

impl FullDisk {
    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Backend(
                "No space left on device (os error 28)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Store for FullDisk {
    fn create_user(&self, new: NewUser) -> Result<User, StoreError> {
        self.check()?;
        self.inner.create_user(new)
    }
    fn create_invited_user(
        &self,
        new: NewUser,
        token_hash: [u8; 32],
        expires_at: UnixSeconds,
    ) -> Result<User, StoreError> {
        self.check()?;
        self.inner.create_invited_user(new, token_hash, expires_at)
    }
    fn user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.inner.user(id)
    }
    fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.inner.user_by_name(name)
    }
    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.inner.list_users()
    }
    fn update_user(
        &self,
        id: &UserId,
        f: &mut dyn FnMut(&mut User) -> Result<(), StoreError>,
    ) -> Result<User, StoreError> {
        self.check()?;
        self.inner.update_user(id, f)
    }
    fn delete_user(&self, id: &UserId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete_user(id)
    }
    fn accept_totp_step(&self, id: &UserId, step: u64) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.accept_totp_step(id, step)
    }
    fn complete_enrolment(
        &self,
        id: &UserId,
        pending: &[u8],
        sealed: &[u8],
        step: u64,
        now: UnixSeconds,
    ) -> Result<User, StoreError> {
        self.check()?;
        self.inner
            .complete_enrolment(id, pending, sealed, step, now)
    }
    fn create_invitation(&self, invitation: Invitation) -> Result<(), StoreError> {
        self.check()?;
        self.inner.create_invitation(invitation)
    }
    fn invitation(&self, token_hash: &[u8; 32]) -> Result<Option<Invitation>, StoreError> {
        self.inner.invitation(token_hash)
    }
    fn use_invitation(
        &self,
        token_hash: &[u8; 32],
        now: UnixSeconds,
    ) -> Result<Option<Invitation>, StoreError> {
        self.check()?;
        self.inner.use_invitation(token_hash, now)
    }
    fn put_session(&self, session: Session) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_session(session)
    }
    fn session(&self, id_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        self.inner.session(id_hash)
    }
    fn touch_session(&self, id_hash: &[u8; 32], now: UnixSeconds) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.touch_session(id_hash, now)
    }
    fn delete_session(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.delete_session(id_hash)
    }
    fn delete_user_sessions(&self, id: &UserId) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.delete_user_sessions(id)
    }
    fn revocation_generation(&self) -> u64 {
        self.inner.revocation_generation()
    }
    fn count_sessions(&self) -> Result<u64, StoreError> {
        self.inner.count_sessions()
    }
    fn prune_audit(&self, before: UnixSeconds, limit: usize) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.prune_audit(before, limit)
    }
    fn purge_expired(&self, now: UnixSeconds) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.purge_expired(now)
    }
    fn put_handoff(&self, handoff: HandOff) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_handoff(handoff)
    }
    fn take_handoff(
        &self,
        code_hash: &[u8; 32],
        now: UnixSeconds,
    ) -> Result<Option<HandOff>, StoreError> {
        self.check()?;
        self.inner.take_handoff(code_hash, now)
    }
    fn failures(&self, id: &UserId) -> Result<Failures, StoreError> {
        self.inner.failures(id)
    }
    fn put_failures(&self, id: &UserId, failures: Failures) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_failures(id, failures)
    }
    fn update_failures(
        &self,
        id: &UserId,
        f: &mut dyn FnMut(&mut Failures),
    ) -> Result<Failures, StoreError> {
        self.check()?;
        self.inner.update_failures(id, f)
    }
    fn append_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.check()?;
        self.inner.append_audit(event)
    }
    fn audit(&self, user: Option<&str>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.audit(user, limit)
    }
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(key)
    }
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_meta(key, value)
    }
    fn export_jsonl(&self, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.inner.export_jsonl(out)
    }
    fn import_jsonl(&self, input: &mut dyn BufRead) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.import_jsonl(input)
    }
}

#[tokio::test]
async fn a_full_disk_stops_sign_in_with_a_clear_503_while_signed_in_people_keep_working() {
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let full = Arc::new(std::sync::OnceLock::<Arc<FullDisk>>::new());
    let slot = full.clone();
    let server = start_server_with(
        |port| config_text(port, portal.addr, analytics.addr, "", ""),
        move |accounts| {
            let disk = Arc::new(FullDisk {
                inner: accounts.store.clone(),
                broken: AtomicBool::new(false),
            });
            let _ = slot.set(disk.clone());
            accounts.store = disk;
        },
    )
    .await;
    let disk = full.get().unwrap().clone();
    let p = activate_and_sign_in(&server, "uma", &["portal"]).await;
    let url = format!("{}/private", server.url("portal"));
    assert_eq!(last(&p.browser.follow(&url).await).status, StatusCode::OK);
    let users_before = format!("{:?}", server.accounts.store.list_users().unwrap());

    disk.broken.store(true, Ordering::SeqCst);
    // Signed in: proxying goes on, even when activity cannot be recorded.
    for _ in 0..3 {
        server.clock.advance(70);
        assert_eq!(p.browser.get_json(&url).await.status, StatusCode::OK);
    }
    // Signing in needs the store: a clear page, not a crash or a wrong answer.
    let b = Browser::new(server.addr);
    let form = b
        .get(&format!("{}/.portcullis/login", server.url("login")))
        .await;
    let res = b
        .post_form(
            &format!("{}/.portcullis/login", server.url("login")),
            &[
                ("csrf", &field(&form.body, "csrf")),
                ("rd", ""),
                ("username", "uma"),
                ("password", GOOD_PASSWORD),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        res.body
            .contains("Sign-in is temporarily unavailable. Try again in a few minutes."),
        "{}",
        res.body
    );

    // Space comes back: nothing was corrupted, and sign-in works again.
    disk.broken.store(false, Ordering::SeqCst);
    assert_eq!(
        format!("{:?}", server.accounts.store.list_users().unwrap()),
        users_before
    );
    let res = b
        .post_form(
            &format!("{}/.portcullis/login", server.url("login")),
            &[
                ("csrf", &field(&form.body, "csrf")),
                ("rd", ""),
                ("username", "uma"),
                ("password", GOOD_PASSWORD),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
}

/// Pre-creates accounts in a data dir before the server owns it: `enrolled` have a
/// known authenticator secret; the others will enrol under load.
async fn seed_accounts(
    config: &portcullis::config::Config,
    enrolled: &[String],
    fresh: &[String],
) -> Vec<(String, portcullis::auth::TotpSecret)> {
    use portcullis::auth::{Password, TotpSecret};
    let accounts =
        portcullis::accounts::Accounts::open(config, Arc::new(portcullis::clock::SystemClock))
            .unwrap();
    let hash = accounts
        .hasher
        .hash(Password::new(GOOD_PASSWORD))
        .await
        .unwrap();
    let mut secrets = Vec::new();
    for (i, name) in enrolled.iter().chain(fresh).enumerate() {
        let user = accounts
            .store
            .create_user(NewUser {
                name: name.clone(),
                email: format!("{name}@example.com"),
                display_name: name.clone(),
                apps: ["portal".to_string()].into_iter().collect(),
                status: UserStatus::Active,
                password_hash: Some(hash.clone()),
                now: 0,
            })
            .unwrap();
        if i < enrolled.len() {
            let secret = TotpSecret::generate().unwrap();
            let sealed = accounts
                .secrets
                .seal(secret.as_bytes(), user.id.to_string().as_bytes());
            accounts
                .store
                .update_user(&user.id, &mut |u| {
                    u.totp = Some(TotpCredential {
                        sealed_secret: sealed.clone(),
                        enrolled_at: 0,
                        last_step: 0,
                    });
                    Ok(())
                })
                .unwrap();
            secrets.push((name.clone(), secret));
        }
    }
    secrets
}

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_enrolment_or_session() {
    use portcullis::auth::code_at;
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = config_text(
        port,
        portal.addr,
        analytics.addr,
        "",
        "[security]\nlogin_rate_per_minute = 100000\n",
    );
    let path = write_config_file(dir.path(), &text);
    let config = portcullis::config::Config::load(&path).unwrap();
    let enrolled: Vec<String> = (0..40).map(|i| format!("signed{i}")).collect();
    let fresh: Vec<String> = (0..40).map(|i| format!("fresh{i}")).collect();
    let secrets = seed_accounts(&config, &enrolled, &fresh).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "-c"])
            .arg(&path)
            .env("RUST_LOG", "error")
            .spawn()
            .unwrap()
    };
    let mut child = start();
    crate::proxy::wait_for_port(addr).await;
    let login = format!("http://login.localhost:{port}");

    // Acknowledged outcomes, recorded only after the server answered.
    let sessions: Arc<std::sync::Mutex<Vec<(String, Browser)>>> = Arc::default();
    let enrolments: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (sessions, enrolments, login) = (sessions.clone(), enrolments.clone(), login.clone());
        let mine: Vec<_> = secrets.iter().skip(w).step_by(4).cloned().collect();
        let new: Vec<_> = fresh.iter().skip(w).step_by(4).cloned().collect();
        workers.push(tokio::spawn(async move {
            for ((name, secret), newcomer) in mine.into_iter().zip(new) {
                let b = Browser::new(addr);
                let form = b.get(&format!("{login}/.portcullis/login")).await;
                let res = b
                    .post_form(
                        &format!("{login}/.portcullis/login"),
                        &[
                            ("csrf", &field(&form.body, "csrf")),
                            ("rd", ""),
                            ("username", &name),
                            ("password", GOOD_PASSWORD),
                        ],
                    )
                    .await;
                assert_eq!(res.status, StatusCode::SEE_OTHER);
                let page = b.get(&format!("{login}/.portcullis/code")).await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let res = b
                    .post_form(
                        &format!("{login}/.portcullis/code"),
                        &[
                            ("csrf", &field(&page.body, "csrf")),
                            ("rd", ""),
                            ("code", &code_at(&secret, now)),
                        ],
                    )
                    .await;
                if res.status == StatusCode::SEE_OTHER
                    && b.cookie("login.localhost", "portcullis-session").is_some()
                {
                    sessions.lock().unwrap().push((name.clone(), b));
                }

                let b = Browser::new(addr);
                let form = b.get(&format!("{login}/.portcullis/login")).await;
                b.post_form(
                    &format!("{login}/.portcullis/login"),
                    &[
                        ("csrf", &field(&form.body, "csrf")),
                        ("rd", ""),
                        ("username", &newcomer),
                        ("password", GOOD_PASSWORD),
                    ],
                )
                .await;
                let enroll = b.get(&format!("{login}/.portcullis/enroll")).await;
                let (_, secret) = scan_qr(&enroll.body);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let res = b
                    .post_form(
                        &format!("{login}/.portcullis/enroll"),
                        &[
                            ("csrf", &field(&enroll.body, "csrf")),
                            ("rd", ""),
                            ("code", &code_at(&secret, now)),
                        ],
                    )
                    .await;
                if res.status == StatusCode::SEE_OTHER {
                    enrolments.lock().unwrap().push(newcomer.clone());
                }
            }
        }));
    }
    // Pull the plug at a moment nobody chose.
    let delay = 400 + (std::process::id() as u64 * 7919) % 800;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    for w in workers {
        // Requests in flight fail when the server dies; only acknowledged ones count.
        let _ = w.await;
    }

    let mut child = start();
    crate::proxy::wait_for_port(addr).await;
    let sessions = std::mem::take(&mut *sessions.lock().unwrap());
    let enrolments = std::mem::take(&mut *enrolments.lock().unwrap());
    assert!(
        !sessions.is_empty() && !enrolments.is_empty(),
        "the load ran before the kill"
    );
    for (name, b) in &sessions {
        let chain = b
            .follow(&format!("http://portal.localhost:{port}/after-crash"))
            .await;
        let page = last(&chain);
        assert_eq!(page.status, StatusCode::OK, "{name} lost their session");
        assert_eq!(
            page.json()["headers"]["x-portcullis-user"][0],
            name.as_str()
        );
    }
    for name in &enrolments {
        let b = Browser::new(addr);
        let form = b.get(&format!("{login}/.portcullis/login")).await;
        let res = b
            .post_form(
                &format!("{login}/.portcullis/login"),
                &[
                    ("csrf", &field(&form.body, "csrf")),
                    ("rd", ""),
                    ("username", name),
                    ("password", GOOD_PASSWORD),
                ],
            )
            .await;
        assert!(
            res.location().unwrap().contains("/.portcullis/code"),
            "{name} lost their enrolment"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "acknowledged before the kill: {} sessions, {} enrolments",
        sessions.len(),
        enrolments.len()
    );
}
