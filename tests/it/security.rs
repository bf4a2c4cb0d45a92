//! SPEC §5, one test per rule; each fails when its protection is removed.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis::auth::code_at;
use portcullis::clock::Clock;

use crate::helpers::*;

async fn login_form(b: &Browser, s: &TestServer) -> Page {
    let page = b
        .get(&format!("{}/.portcullis/login", s.url("login")))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    page
}

async fn try_password(b: &Browser, s: &TestServer, user: &str, password: &str) -> Page {
    let form = login_form(b, s).await;
    b.post_form(
        &format!("{}/.portcullis/login", s.url("login")),
        &[
            ("csrf", &field(&form.body, "csrf")),
            ("rd", ""),
            ("username", user),
            ("password", password),
        ],
    )
    .await
}

#[tokio::test]
async fn login_post_without_csrf_token_or_from_another_origin_is_refused() {
    let s = setup().await;
    invite(&s.server, "gina", Some(GOOD_PASSWORD), &["portal"]).await;
    let b = Browser::new(s.server.addr);
    let form = login_form(&b, &s.server).await;
    let url = format!("{}/.portcullis/login", s.server.url("login"));
    let fields = [
        ("rd", ""),
        ("username", "gina"),
        ("password", GOOD_PASSWORD),
    ];

    // No token.
    let res = b.post_form(&url, &fields).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // A token for another browser's cookie.
    let other = Browser::new(s.server.addr);
    let other_form = login_form(&other, &s.server).await;
    let mut with_foreign = fields.to_vec();
    let foreign = field(&other_form.body, "csrf");
    with_foreign.push(("csrf", &foreign));
    assert_eq!(
        b.post_form(&url, &with_foreign).await.status,
        StatusCode::FORBIDDEN
    );
    // The right token, but posted from another site.
    let token = field(&form.body, "csrf");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("csrf", token.as_str()),
            ("rd", ""),
            ("username", "gina"),
            ("password", GOOD_PASSWORD),
        ])
        .finish();
    for origin in [Some("http://evil.localhost"), Some("null"), None] {
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        let res = b
            .request(Method::POST, &url, &headers, Some(body.clone().into()))
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{origin:?}");
        assert!(b.cookie("login.localhost", "portcullis-pending").is_none());
    }
    // `Origin: null` (what browsers send under `Referrer-Policy: no-referrer`) passes only
    // when the browser itself vouches that the form is same-origin.
    for (site, expect) in [
        (Some("cross-site"), StatusCode::FORBIDDEN),
        (None, StatusCode::FORBIDDEN),
        (Some("same-site"), StatusCode::FORBIDDEN),
    ] {
        let mut headers = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "null"),
        ];
        if let Some(site) = site {
            headers.push(("sec-fetch-site", site));
        }
        let res = b
            .request(Method::POST, &url, &headers, Some(body.clone().into()))
            .await;
        assert_eq!(res.status, expect, "{site:?}");
    }
    let res = b
        .request(
            Method::POST,
            &url,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", "null"),
                ("sec-fetch-site", "same-origin"),
            ],
            Some(body.clone().into()),
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    // Everything right: accepted.
    let mut good = fields.to_vec();
    good.push(("csrf", &token));
    let res = b.post_form(&url, &good).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
}

/// The signed-in page keeps the browser's CSRF cookie: replacing it would make the
/// forms already open in its other tabs (sign-out, a second sign-in) fail as expired.
#[tokio::test]
async fn the_signed_in_page_keeps_the_csrf_cookie() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "tess", &["portal"]).await;
    let before = p.browser.cookie("login.localhost", "portcullis-csrf");
    assert!(before.is_some());
    let page = p
        .browser
        .get(&format!("{}/.portcullis/login", srv.url("login")))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(set_cookies(&page)
        .iter()
        .all(|c| !c.contains("portcullis-csrf")));
    assert_eq!(
        p.browser.cookie("login.localhost", "portcullis-csrf"),
        before
    );
}

#[tokio::test]
async fn account_locks_after_five_failures_and_the_right_password_is_refused_while_locked() {
    let s = setup().await;
    let srv = &s.server;
    invite(srv, "hank", Some(GOOD_PASSWORD), &["portal"]).await;
    let b = Browser::new(srv.addr);
    for i in 0..4 {
        let res = try_password(&b, srv, "hank", "wrong password!!").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert!(res
            .body
            .contains("That user name and password do not match"));
    }
    let fifth = try_password(&b, srv, "hank", "wrong password!!").await;
    assert!(fifth.body.contains("locked"), "{}", fifth.body);
    // The right password now gets the very same answer: nothing tells it was right.
    let right = try_password(&b, srv, "hank", GOOD_PASSWORD).await;
    let wrong = try_password(&b, srv, "hank", "wrong password!!").await;
    assert_eq!(right.status, wrong.status);
    assert_eq!(right.body, wrong.body);
    assert!(b.cookie("login.localhost", "portcullis-pending").is_none());
    // 15 minutes later it works again.
    srv.clock.advance(15 * 60 + 1);
    let res = try_password(&b, srv, "hank", GOOD_PASSWORD).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let audit = srv.accounts.store.audit(Some("hank"), 50).unwrap();
    assert!(
        audit.iter().any(|e| e.action == "account.lockout"),
        "{audit:?}"
    );
}

/// A name with no account locks after as many wrong passwords as a real one, with the
/// same answers on the way: if only real accounts ever locked, five guesses would tell
/// whether a name exists (SPEC §2.2).
#[tokio::test]
async fn an_unknown_name_locks_like_a_real_account() {
    let s = setup().await;
    let srv = &s.server;
    invite(srv, "rhea", Some(GOOD_PASSWORD), &["portal"]).await;
    let b = Browser::new(srv.addr);
    let answer = |page: &Page| {
        (
            page.status,
            page.body
                .contains("That user name and password do not match"),
            page.body.contains("locked"),
        )
    };
    for attempt in 0..6 {
        let real = try_password(&b, srv, "rhea", "wrong password!!").await;
        let unknown = try_password(&b, srv, "nobody-here", "wrong password!!").await;
        assert_eq!(answer(&real), answer(&unknown), "attempt {attempt}");
        assert_eq!(answer(&real).2, attempt >= 4, "attempt {attempt}");
    }
    // Both unlock after the lockout, and the real one signs in.
    srv.clock.advance(15 * 60 + 1);
    let unknown = try_password(&b, srv, "NOBODY-HERE", "wrong password!!").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    let real = try_password(&b, srv, "rhea", GOOD_PASSWORD).await;
    assert_eq!(real.status, StatusCode::SEE_OTHER, "{}", real.body);
}

#[tokio::test]
async fn wrong_codes_count_towards_the_lockout_too() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "ivan", &["portal"]).await;
    let b = Browser::new(srv.addr);
    let res = try_password(&b, srv, &p.name, &p.password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let code_url = format!("{}/.portcullis/code", srv.url("login"));
    let page = b.get(&code_url).await;
    let csrf = field(&page.body, "csrf");
    let mut last_page = None;
    for _ in 0..5 {
        last_page = Some(
            b.post_form(
                &code_url,
                &[("csrf", &csrf), ("rd", ""), ("code", "000000")],
            )
            .await,
        );
    }
    assert!(last_page.unwrap().body.contains("locked"));
    srv.clock.advance(30);
    let good = b
        .post_form(
            &code_url,
            &[
                ("csrf", &csrf),
                ("rd", ""),
                ("code", &code_at(&p.secret, srv.clock.now())),
            ],
        )
        .await;
    assert!(
        good.body.contains("locked"),
        "the right code must not pass while locked"
    );
}

#[tokio::test]
async fn sign_in_posts_are_rate_limited_per_client_address() {
    let s = setup_with("", "[security]\nlogin_rate_per_minute = 5\n").await;
    let b = Browser::new(s.server.addr);
    let url = format!("{}/.portcullis/login", s.server.url("login"));
    for _ in 0..5 {
        let res = b
            .post_form(&url, &[("username", "x"), ("password", "y")])
            .await;
        assert_ne!(res.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let res = b
        .post_form(&url, &[("username", "x"), ("password", "y")])
        .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Time passes, the bucket refills.
    s.server.clock.advance(60);
    let res = b
        .post_form(&url, &[("username", "x"), ("password", "y")])
        .await;
    assert_ne!(res.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn rd_is_followed_only_to_configured_app_origins() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "judy", &["portal", "analytics"]).await;
    let port = srv.port;
    let good = format!("http://portal.localhost:{port}/ok?a=1");
    let chain = p
        .browser
        .follow(&format!(
            "{}/.portcullis/login?rd={}",
            srv.url("login"),
            urlencode(&good)
        ))
        .await;
    assert_eq!(last(&chain).json()["path"], "/ok");
    let evil = [
        "https://evil.example.com/".to_string(),
        "//evil.example.com/".into(),
        "///evil.example.com/".into(),
        "/\\evil.example.com/".into(),
        "\\\\evil.example.com".into(),
        "javascript:alert(1)".into(),
        "data:text/html,hi".into(),
        format!("http://portal.localhost:{port}@evil.example.com/"),
        format!("http://user:pw@portal.localhost:{port}/"),
        format!("http://portal.localhost:{port}.evil.example.com/"),
        format!("http://evilportal.localhost:{port}/"),
        format!("http://portal.localhost:{}/", port + 1),
        format!("https://portal.localhost:{port}/"),
        format!("http://portal.localhost%2F%2Fevil.example.com:{port}/"),
        format!("http:/portal.localhost:{port}/"),
        format!("http://portal.localhost:{port}\\@evil.example.com/"),
        format!(" http://portal.localhost:{port}/"),
        format!("http://portal.localhost:{port}/\nSet-Cookie: x=1"),
        format!("http://login.localhost:{port}/.portcullis/logout"),
    ];
    for rd in evil {
        let res = p
            .browser
            .get(&format!(
                "{}/.portcullis/login?rd={}",
                srv.url("login"),
                urlencode(&rd)
            ))
            .await;
        assert_eq!(res.status, StatusCode::OK, "{rd}: {:?}", res.location());
        assert!(res.body.contains("You are signed in"), "{rd}");
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn portcullis_pages_send_the_security_headers() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    for url in [
        format!("{}/.portcullis/login", s.server.url("login")),
        format!("{}/.portcullis/activate?token=x", s.server.url("login")),
        format!("{}/.portcullis/nope", s.server.url("portal")),
        format!("http://unknown.localhost:{}/", s.server.port),
    ] {
        let page = b.get(&url).await;
        let h = &page.headers;
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{url}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{url}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{url}");
        assert_eq!(h["cache-control"], "no-store", "{url}");
        assert!(
            h.get("strict-transport-security").is_none(),
            "no HSTS on plain http"
        );
    }
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_and_take_the_same() {
    // Production Argon2 parameters, so the hash dominates and a skipped hash would show.
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let server = start_server(|port| {
        config_text(
            port,
            portal.addr,
            analytics.addr,
            "",
            "[security]\nlogin_rate_per_minute = 1000\nmax_failures = 1000\n",
        )
        .replace(
            "argon2_memory_kib = 64\nargon2_iterations = 1",
            "argon2_memory_kib = 19456\nargon2_iterations = 2",
        )
    })
    .await;
    let srv = &server;
    invite(srv, "kate", Some(GOOD_PASSWORD), &["portal"]).await;
    let b = Browser::new(srv.addr);
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..15 {
        for (name, times) in [("kate", &mut wrong), ("nobody-here", &mut unknown)] {
            let form = login_form(&b, srv).await;
            let t = Instant::now();
            let res = b
                .post_form(
                    &format!("{}/.portcullis/login", srv.url("login")),
                    &[
                        ("csrf", &field(&form.body, "csrf")),
                        ("rd", ""),
                        ("username", name),
                        ("password", "not the password"),
                    ],
                )
                .await;
            times.push(t.elapsed());
            assert_eq!(res.status, StatusCode::UNAUTHORIZED);
            if i == 0 {
                bodies.push(
                    res.body
                        .replace(name, "NAME")
                        .replace(&field(&res.body, "csrf"), "CSRF"),
                );
            }
        }
    }
    assert_eq!(bodies[0], bodies[1], "the two answers must read the same");
    // The fastest of each kind, not the median: other tests share the two cores, and load
    // only ever adds time, so the minimum is the closest to what each path itself costs
    // (a median moved by a burst of load failed CI once: 32 vs 54 ms).
    let fastest = |v: &[Duration]| v.iter().copied().min().unwrap();
    let (w, u) = (fastest(&wrong), fastest(&unknown));
    // Both do one full Argon2 hash (tens of ms); a shortcut for unknown names makes one
    // about a tenth of the other (18.7 vs 1.8 ms, measured with the dummy hash skipped).
    // Three times, not twice: the hashing threads run at a lower priority than the other
    // tests' threads, and the fastest of nine once still came out twice the other's.
    assert!(
        w < u * 3 && u < w * 3,
        "wrong password {w:?} vs unknown user {u:?}"
    );
}

#[tokio::test]
async fn malformed_forms_cookies_and_long_fields_get_a_4xx_and_change_nothing() {
    let s = setup().await;
    let srv = &s.server;
    invite(srv, "leo", Some(GOOD_PASSWORD), &["portal"]).await;
    let before = srv.accounts.store.list_users().unwrap();
    let b = Browser::new(srv.addr);
    let form = login_form(&b, srv).await;
    let csrf = field(&form.body, "csrf");
    let url = format!("{}/.portcullis/login", srv.url("login"));
    let long_name = "a".repeat(500);
    let cases: Vec<(Vec<u8>, &str, StatusCode)> = vec![
        (
            format!("csrf={csrf}&username=%FF%FE&password=x").into_bytes(),
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
        ),
        (
            b"csrf=\xff\xfe&username=a".to_vec(),
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("csrf={csrf}&username={long_name}&password=x").into_bytes(),
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("csrf={csrf}&username=leo&password={}", "p".repeat(5000)).into_bytes(),
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![b'a'; 40_000],
            "application/x-www-form-urlencoded",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            b"{\"username\":\"leo\"}".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, ctype, expect) in cases {
        let origin = srv.url("login");
        let res = b
            .request(
                Method::POST,
                &url,
                &[("content-type", ctype), ("origin", &origin)],
                Some(body.into()),
            )
            .await;
        assert_eq!(res.status, expect, "{}", res.body);
    }
    // Garbage cookies on every kind of request: no panic, sensible answers.
    let junk =
        "portcullis-session=%%%; portcullis-app=\"x; portcullis-csrf=; =;;; portcullis-app=zzzz";
    for url in [
        format!("{}/.portcullis/login", srv.url("login")),
        format!("{}/private", srv.url("portal")),
        format!("{}/.portcullis/callback?code=%FF", srv.url("portal")),
        format!("{}/.portcullis/code", srv.url("login")),
    ] {
        let res = b
            .request(
                Method::GET,
                &url,
                &[("cookie", junk), ("accept", "text/html")],
                None,
            )
            .await;
        assert!(
            res.status.is_redirection() || res.status.is_client_error() || res.status.is_success(),
            "{url}: {}",
            res.status
        );
    }
    let after = srv.accounts.store.list_users().unwrap();
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
}

#[tokio::test]
async fn session_cookies_are_http_only_lax_and_rotated_from_pending() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "mia", &["portal"]).await;
    let b = Browser::new(srv.addr);
    let form = login_form(&b, srv).await;
    let res = b
        .post_form(
            &format!("{}/.portcullis/login", srv.url("login")),
            &[
                ("csrf", &field(&form.body, "csrf")),
                ("rd", ""),
                ("username", "mia"),
                ("password", &p.password),
            ],
        )
        .await;
    let set = res
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let pending = set
        .iter()
        .find(|c| c.starts_with("portcullis-pending="))
        .unwrap();
    assert!(
        pending.contains("HttpOnly") && pending.contains("SameSite=Lax"),
        "{pending}"
    );
    let pending_value = b.cookie("login.localhost", "portcullis-pending").unwrap();
    // The pending sign-in grants nothing: an app cookie with its value is refused.
    let forged = Browser::new(srv.addr);
    forged.set_cookie("portal.localhost", "portcullis-app", &pending_value);
    assert_eq!(
        forged
            .get_json(&format!("{}/x", srv.url("portal")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    srv.clock.advance(30);
    let code_page = b
        .get(&format!("{}/.portcullis/code", srv.url("login")))
        .await;
    let done = b
        .post_form(
            &format!("{}/.portcullis/code", srv.url("login")),
            &[
                ("csrf", &field(&code_page.body, "csrf")),
                ("rd", ""),
                ("code", &code_at(&p.secret, srv.clock.now())),
            ],
        )
        .await;
    let session_value = b.cookie("login.localhost", "portcullis-session").unwrap();
    assert_ne!(session_value, pending_value, "the session id must be new");
    assert_eq!(session_value.len(), 43, "256 bits, base64url");
    let set = done
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let session = set
        .iter()
        .find(|c| c.starts_with("portcullis-session="))
        .unwrap();
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Lax")
            && session.contains("Path=/")
    );
    assert!(!session.contains("Domain"), "host-only");
    // The old pending value is dead.
    let page = b
        .get(&format!("{}/.portcullis/code", srv.url("login")))
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    // Only the hash is stored: the cookie value is not a key in the store.
    let token = portcullis::auth::SecretToken::parse(&session_value).unwrap();
    assert!(srv.accounts.store.session(&token.hash()).unwrap().is_some());
}

#[tokio::test]
async fn sessions_end_after_the_idle_timeout_and_the_absolute_lifetime() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "noah", &["portal"]).await;
    let url = format!("{}/x", srv.url("portal"));
    assert_eq!(last(&p.browser.follow(&url).await).status, StatusCode::OK);
    // Active every 50 minutes: still signed in at 11 h 40 min…
    for _ in 0..14 {
        srv.clock.advance(50 * 60);
        let res = p.browser.get_json(&url).await;
        assert_eq!(res.status, StatusCode::OK);
    }
    // …but never beyond 12 hours.
    srv.clock.advance(25 * 60);
    assert_eq!(
        p.browser.get_json(&url).await.status,
        StatusCode::UNAUTHORIZED
    );

    let q = activate_and_sign_in(srv, "olga", &["portal"]).await;
    assert_eq!(last(&q.browser.follow(&url).await).status, StatusCode::OK);
    srv.clock.advance(61 * 60);
    assert_eq!(
        q.browser.get_json(&url).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// A fresh hand-off code for `rd`, as the app sends a browser to sign in: the app gives
/// the browser its state cookie, the sign-in page (already signed in) the code.
async fn handoff_code(b: &Browser, rd: &str) -> String {
    // Signed in to the auth origin, not (any more) to the app.
    b.set_cookie("portal.localhost", "portcullis-app", "gone");
    let to_login = b.get(rd).await;
    assert_eq!(to_login.status, StatusCode::FOUND, "{}", to_login.body);
    let login = to_login.location().unwrap();
    assert!(login.contains("&s="), "{login}");
    let res = b.get(&login).await;
    res.location().unwrap()
}

/// Two tabs of one browser sent to sign in at once both arrive: the second keeps the
/// state cookie the first got, so the first tab's code still fits it.
#[tokio::test]
async fn two_tabs_sent_to_sign_in_at_once_both_arrive() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "vic", &["portal"]).await;
    p.browser
        .set_cookie("portal.localhost", "portcullis-app", "gone");
    let to_login_a = p.browser.get(&format!("{}/a", srv.url("portal"))).await;
    let to_login_b = p.browser.get(&format!("{}/b", srv.url("portal"))).await;
    assert!(
        set_cookies(&to_login_b).is_empty(),
        "the state cookie was replaced"
    );
    let code_a = p.browser.get(&to_login_a.location().unwrap()).await;
    let code_b = p.browser.get(&to_login_b.location().unwrap()).await;
    for (code, path) in [(code_a, "/a"), (code_b, "/b")] {
        let res = p.browser.get(&code.location().unwrap()).await;
        assert_eq!(res.status, StatusCode::FOUND, "{}", res.body);
        assert_eq!(res.location().unwrap(), path);
    }
}

/// A sign-in link to a public page of an app, without the app's state (`s`), still ends
/// in the app with its cookie: the browser gets its state at the app's
/// `/.portcullis/start`, not at the public page, which would be served without coming back.
#[tokio::test]
async fn a_sign_in_link_to_a_public_page_hands_the_session_over() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "wren", &["portal"]).await;
    p.browser
        .set_cookie("portal.localhost", "portcullis-app", "gone");
    let rd = format!("{}/echo", srv.url("portal"));
    let chain = p
        .browser
        .follow(&format!(
            "{}/.portcullis/login?rd={}",
            srv.url("login"),
            urlencode(&rd)
        ))
        .await;
    assert_eq!(last(&chain).status, StatusCode::OK);
    assert!(
        chain.iter().any(|(u, _)| u.contains("/.portcullis/start")),
        "{:?}",
        chain.iter().map(|(u, _)| u).collect::<Vec<_>>()
    );
    assert_ne!(
        p.browser
            .cookie("portal.localhost", "portcullis-app")
            .as_deref(),
        Some("gone")
    );
    assert_eq!(last(&chain).json()["path"], "/echo");
}

#[tokio::test]
async fn handoff_codes_are_single_use_and_bound_to_their_app_and_browser() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "pia", &["portal", "analytics"]).await;
    let rd = format!("{}/here", srv.url("portal"));
    let callback = handoff_code(&p.browser, &rd).await;
    assert!(callback.starts_with(&format!("{}/.portcullis/callback?code=", srv.url("portal"))));
    // Login CSRF: a code from one's own sign-in, opened in someone else's browser, does
    // not sign them in as oneself — with no state cookie, or with their own — and is
    // used up there, not left for whoever holds the right cookie.
    let victim = Browser::new(srv.addr);
    assert_eq!(victim.get(&callback).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        p.browser.get(&callback).await.status,
        StatusCode::BAD_REQUEST
    );
    let callback = handoff_code(&p.browser, &rd).await;
    assert_eq!(victim.get(&rd).await.status, StatusCode::FOUND);
    assert_eq!(victim.get(&callback).await.status, StatusCode::BAD_REQUEST);
    assert!(victim
        .cookie("portal.localhost", "portcullis-app")
        .is_none());
    assert_eq!(
        p.browser.get(&callback).await.status,
        StatusCode::BAD_REQUEST
    );
    // Replayed at another app, by the browser it was made for: refused, and used up.
    let callback = handoff_code(&p.browser, &rd).await;
    let analytics = format!("{}/x", srv.url("analytics"));
    assert_eq!(p.browser.get(&analytics).await.status, StatusCode::FOUND);
    let elsewhere = callback.replace("portal.localhost", "analytics.localhost");
    assert_eq!(
        p.browser.get(&elsewhere).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        p.browser.get(&callback).await.status,
        StatusCode::BAD_REQUEST
    );
    // In its own browser and app it works, once.
    let callback = handoff_code(&p.browser, &rd).await;
    let res = p.browser.get(&callback).await;
    assert_eq!(res.status, StatusCode::FOUND, "{}", res.body);
    assert_eq!(res.location().unwrap(), "/here");
    assert_eq!(
        p.browser.get(&callback).await.status,
        StatusCode::BAD_REQUEST
    );
    // A fresh code does not work after 60 seconds.
    let code = handoff_code(&p.browser, &rd).await;
    srv.clock.advance(61);
    assert_eq!(p.browser.get(&code).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sign_in_events_land_in_the_audit_trail_without_secrets() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "quinn", &["portal"]).await;
    let b = Browser::new(srv.addr);
    try_password(&b, srv, "quinn", "wrong password!!").await;
    p.browser
        .follow(&format!("{}/.portcullis/logout", srv.url("login")))
        .await;
    let events = srv.accounts.store.audit(Some("quinn"), 100).unwrap();
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    for expected in [
        ("user.activate", "ok"),
        ("enrol", "ok"),
        ("signin", "ok"),
        ("signin.password", "failure"),
        ("signout", "ok"),
    ] {
        assert!(
            actions.contains(&expected),
            "{expected:?} missing from {actions:?}"
        );
    }
    let dump = format!("{events:?}");
    assert!(!dump.contains(GOOD_PASSWORD) && !dump.contains(&p.secret.base32()));
}

#[tokio::test]
async fn a_password_hashed_with_other_parameters_is_rehashed_at_sign_in() {
    use portcullis::auth::{Password, PasswordHasher, PasswordParams};
    let s = setup().await;
    let srv = &s.server;
    // An Argon2id hash made before the parameters changed, and an imported bcrypt hash.
    let older = PasswordHasher::new(PasswordParams {
        memory_kib: 128,
        iterations: 2,
        parallelism: 1,
    })
    .unwrap()
    .hash(Password::new(GOOD_PASSWORD))
    .await
    .unwrap();
    let imported = bcrypt::hash(GOOD_PASSWORD, 4).unwrap();
    for (name, old) in [("rhea", older), ("ross", imported)] {
        invite(srv, name, Some(GOOD_PASSWORD), &["portal"]).await;
        let user = srv.accounts.store.user_by_name(name).unwrap().unwrap();
        srv.accounts
            .store
            .update_user(&user.id, &mut |u| {
                u.password_hash = Some(old.clone());
                Ok(())
            })
            .unwrap();
        let res = try_password(&Browser::new(srv.addr), srv, name, GOOD_PASSWORD).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
        let stored = srv
            .accounts
            .store
            .user_by_name(name)
            .unwrap()
            .unwrap()
            .password_hash
            .unwrap();
        // Now Argon2id with the configured parameters (m=64, t=1, p=1 in these tests).
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{name}: {stored}"
        );
        let check = srv
            .accounts
            .hasher
            .verify(Password::new(GOOD_PASSWORD), Some(&stored))
            .await
            .unwrap();
        assert!(check.ok && !check.needs_rehash, "{name}: {check:?}");
        let audit = srv.accounts.store.audit(Some(name), 10).unwrap();
        assert!(audit.iter().any(|e| e.action == "user.rehash"), "{audit:?}");
        // The same password still signs in.
        let res = try_password(&Browser::new(srv.addr), srv, name, GOOD_PASSWORD).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    }
}

#[tokio::test]
async fn totp_secrets_are_encrypted_at_rest() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "uma", &["portal"]).await;
    let user = srv.accounts.store.user_by_name("uma").unwrap().unwrap();
    let sealed = user.totp.as_ref().unwrap().sealed_secret.clone();
    let raw = p.secret.as_bytes().to_vec();
    let text = p.secret.base32().into_bytes();
    let holds = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(!holds(&sealed, &raw) && !holds(&sealed, &text));
    // AES-GCM under the server's key, bound to this user's id.
    let opened = srv
        .accounts
        .secrets
        .open(&sealed, user.id.to_string().as_bytes())
        .unwrap();
    assert_eq!(opened.as_slice(), raw.as_slice());
    // Nowhere in the store file does the secret appear in the clear.
    let file = std::fs::read(
        srv.config
            .server
            .data_dir
            .join(portcullis::store::STORE_FILE),
    )
    .unwrap();
    assert!(!holds(&file, &raw) && !holds(&file, &text));
}

#[tokio::test]
async fn a_pending_sign_in_passed_off_as_a_session_signs_nobody_in() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "sven", &["portal"]).await;
    let b = Browser::new(srv.addr);
    let res = try_password(&b, srv, "sven", &p.password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let pending = b.cookie("login.localhost", "portcullis-pending").unwrap();
    // Password only: its cookie value, planted as the session or an app cookie, opens nothing.
    let forged = Browser::new(srv.addr);
    forged.set_cookie("login.localhost", "portcullis-session", &pending);
    forged.set_cookie("portal.localhost", "portcullis-app", &pending);
    let rd = format!("{}/x", srv.url("portal"));
    let page = forged
        .get(&format!(
            "{}/.portcullis/login?rd={}",
            srv.url("login"),
            urlencode(&rd)
        ))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.location());
    assert!(page.body.contains("name=\"password\""), "{}", page.body);
    assert!(!page.body.contains("You are signed in"));
    assert_eq!(forged.get_json(&rd).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_sign_in_form_post_needs_the_csrf_token_and_the_auth_origin() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "tara", &["portal"]).await;
    // A browser in the middle of a sign-in: it holds a csrf cookie and a pending sign-in.
    let b = Browser::new(srv.addr);
    let res = try_password(&b, srv, "tara", &p.password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let login = srv.url("login");
    let code_page = b.get(&format!("{login}/.portcullis/code")).await;
    let token = field(&code_page.body, "csrf");
    srv.clock.advance(30);
    let code = code_at(&p.secret, srv.clock.now());
    let posts: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "login",
            vec![("username", "tara"), ("password", GOOD_PASSWORD)],
        ),
        ("enroll", vec![("code", &code)]),
        ("code", vec![("code", &code)]),
        (
            "activate",
            vec![
                ("token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                ("password", GOOD_PASSWORD),
                ("password2", GOOD_PASSWORD),
            ],
        ),
        ("logout", vec![]),
    ];
    for (path, fields) in &posts {
        let url = format!("{login}/.portcullis/{path}");
        // No token, and a token that is not this browser's.
        let res = b.post_form(&url, fields).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path} without a token");
        let mut forged = fields.clone();
        forged.push(("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
        let res = b.post_form(&url, &forged).await;
        assert_eq!(
            res.status,
            StatusCode::FORBIDDEN,
            "{path} with a forged token"
        );
        // The right token, posted from another site.
        let mut good = fields.clone();
        good.push(("csrf", &token));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&good)
            .finish();
        let res = b
            .request(
                Method::POST,
                &url,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("origin", "http://evil.localhost"),
                ],
                Some(body.into()),
            )
            .await;
        assert_eq!(
            res.status,
            StatusCode::FORBIDDEN,
            "{path} from another origin"
        );
    }
    // None of that did anything: the pending sign-in ends with the code as usual…
    let res = b
        .post_form(
            &format!("{login}/.portcullis/code"),
            &[("csrf", &token), ("rd", ""), ("code", &code)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    // …and a forged sign-out leaves the signed-in person signed in.
    let res = p
        .browser
        .post_form(&format!("{login}/.portcullis/logout"), &[])
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let page = p.browser.get(&format!("{login}/.portcullis/login")).await;
    assert!(page.body.contains("You are signed in"), "{}", page.body);
}

fn set_cookies(page: &Page) -> Vec<String> {
    page.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn behind_a_tls_terminating_proxy_cookies_are_host_only_secure_and_pages_send_hsts() {
    // Plain HTTP here, https to the world: the configured origins decide.
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let srv = start_server(|port| {
        config_text(port, portal.addr, analytics.addr, "", "")
            .replace("http://login.localhost", "https://login.localhost")
            .replace("http://portal.localhost", "https://portal.localhost")
            .replace("http://analytics.localhost", "https://analytics.localhost")
    })
    .await;
    let port = srv.port;
    let login = format!("https://login.localhost:{port}");
    let rd = format!("https://portal.localhost:{port}/x");
    invite(&srv, "vera", Some(GOOD_PASSWORD), &["portal"]).await;
    let (token, _) = srv
        .accounts
        .sign_in_password("vera", portcullis::auth::Password::new(GOOD_PASSWORD), None)
        .await
        .unwrap();
    let pending = srv.accounts.pending(&token).unwrap().unwrap();
    let secret = srv.accounts.enrolment_secret(&pending).unwrap();
    let pending = srv.accounts.pending(&token).unwrap().unwrap();
    srv.accounts
        .finish_enrolment(&pending, &code_at(&secret, srv.clock.now()), None)
        .await
        .unwrap();
    srv.clock.advance(30);

    // The Browser helper speaks plain HTTP whatever the scheme; the Host header routes.
    let b = Browser::new(srv.addr);
    let mut seen = Vec::new();
    let form = b.get(&format!("{login}/.portcullis/login")).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.headers.contains_key("strict-transport-security"));
    seen.extend(set_cookies(&form));
    let res = b
        .post_form(
            &format!("{login}/.portcullis/login"),
            &[
                ("csrf", &field(&form.body, "csrf")),
                ("rd", &rd),
                ("username", "vera"),
                ("password", GOOD_PASSWORD),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert!(res.headers.contains_key("strict-transport-security"));
    seen.extend(set_cookies(&res));
    let code_page = b.get(&res.location().unwrap()).await;
    assert_eq!(code_page.status, StatusCode::OK, "{}", code_page.body);
    let res = b
        .post_form(
            &format!("{login}/.portcullis/code"),
            &[
                ("csrf", &field(&code_page.body, "csrf")),
                ("rd", &rd),
                ("code", &code_at(&secret, srv.clock.now())),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    seen.extend(set_cookies(&res));
    // To the app, which sends the browser for its hand-off with a state cookie.
    let chain = b.follow(&res.location().unwrap()).await;
    for (_, page) in &chain {
        seen.extend(set_cookies(page));
    }
    assert_eq!(chain.last().unwrap().1.status, StatusCode::OK);

    for name in ["csrf", "pending", "session", "app", "state"] {
        let prefix = format!("__Host-portcullis-{name}=");
        let cookie = seen
            .iter()
            .find(|c| c.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {seen:?}"));
        for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
            assert!(cookie.split("; ").any(|a| a == attr), "{attr}: {cookie}");
        }
        assert!(!cookie.contains("Domain"), "{cookie}");
    }
    assert!(seen.iter().all(|c| c.starts_with("__Host-")), "{seen:?}");
    // The app is reached with its __Host- cookie.
    assert_eq!(b.get_json(&rd).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_sign_in_page_forgets_a_session_past_its_absolute_lifetime() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "wade", &["portal"]).await;
    let login = format!("{}/.portcullis/login", srv.url("login"));
    // Active on the auth origin every 50 minutes: still signed in at 11 h 40 min…
    for _ in 0..14 {
        srv.clock.advance(50 * 60);
        let page = p.browser.get(&login).await;
        assert!(page.body.contains("You are signed in"), "{}", page.body);
    }
    // …but never beyond 12 hours: the password is asked for again.
    srv.clock.advance(25 * 60);
    let page = p.browser.get(&login).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("name=\"password\""), "{}", page.body);
    assert!(!page.body.contains("You are signed in"));
}

#[tokio::test]
async fn the_pending_sign_in_ends_when_the_session_begins() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "xena", &["portal"]).await;
    let b = Browser::new(srv.addr);
    let res = try_password(&b, srv, "xena", &p.password).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let pending = b.cookie("login.localhost", "portcullis-pending").unwrap();
    let code_url = format!("{}/.portcullis/code", srv.url("login"));
    let page = b.get(&code_url).await;
    srv.clock.advance(30);
    let res = b
        .post_form(
            &code_url,
            &[
                ("csrf", &field(&page.body, "csrf")),
                ("rd", ""),
                ("code", &code_at(&p.secret, srv.clock.now())),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    // A copy of the pending cookie kept from before is dead, not a second way in.
    let copy = Browser::new(srv.addr);
    copy.set_cookie("login.localhost", "portcullis-pending", &pending);
    let res = copy.get(&code_url).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert!(
        res.location().unwrap().contains("notice=expired"),
        "{:?}",
        res.location()
    );
}

#[tokio::test]
async fn a_code_that_signed_someone_in_is_refused_for_any_other_sign_in() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "yuri", &["portal"]).await;
    let code_url = format!("{}/.portcullis/code", srv.url("login"));
    // Two sign-ins waiting for a code, e.g. a phished one and the real one.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let b = Browser::new(srv.addr);
        let res = try_password(&b, srv, "yuri", &p.password).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER);
        let csrf = field(&b.get(&code_url).await.body, "csrf");
        waiting.push((b, csrf));
    }
    // The code that signed the person in a moment ago (same time step) opens neither.
    let used = code_at(&p.secret, srv.clock.now());
    for (b, csrf) in &waiting {
        let res = b
            .post_form(&code_url, &[("csrf", csrf), ("rd", ""), ("code", &used)])
            .await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
        assert!(res.body.contains("already used"), "{}", res.body);
    }
    // The next code, sent by both at the same moment, opens exactly one.
    srv.clock.advance(30);
    let next = code_at(&p.secret, srv.clock.now());
    let sends = waiting.iter().map(|(b, csrf)| {
        let (url, code) = (code_url.clone(), next.clone());
        async move {
            b.post_form(
                &url,
                &[("csrf", csrf.as_str()), ("rd", ""), ("code", &code)],
            )
            .await
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let statuses: Vec<StatusCode> = results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::SEE_OTHER)
            .count(),
        1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn proxied_requests_write_last_seen_at_most_once_a_minute() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "rosa", &["portal"]).await;
    let url = format!("{}/x", srv.url("portal"));
    assert_eq!(last(&p.browser.follow(&url).await).status, StatusCode::OK);
    let cookie = p
        .browser
        .cookie("login.localhost", "portcullis-session")
        .unwrap();
    let parent = portcullis::auth::SecretToken::parse(&cookie)
        .unwrap()
        .hash();
    let last_seen = || {
        srv.accounts
            .store
            .session(&parent)
            .unwrap()
            .unwrap()
            .last_seen
    };

    // A minute later, with the in-memory entry gone (any revocation drops them all),
    // the request goes to the store and records the activity…
    srv.clock.advance(61);
    srv.accounts.store.delete_session(&[7; 32]).unwrap();
    assert_eq!(p.browser.get_json(&url).await.status, StatusCode::OK);
    let touched = srv.clock.now();
    assert_eq!(last_seen(), touched);
    // …and the requests of the next minute write nothing more.
    for _ in 0..5 {
        srv.clock.advance(10);
        assert_eq!(p.browser.get_json(&url).await.status, StatusCode::OK);
        assert_eq!(last_seen(), touched);
    }
    srv.clock.advance(10);
    assert_eq!(p.browser.get_json(&url).await.status, StatusCode::OK);
    assert_eq!(last_seen(), srv.clock.now());
}
