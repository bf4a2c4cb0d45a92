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
    for i in 0..9 {
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
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (w, u) = (median(&mut wrong), median(&mut unknown));
    let diff = w.abs_diff(u);
    // Both do one full Argon2 hash (tens of ms); a shortcut for unknown names would
    // make one median a small fraction of the other.
    assert!(
        diff < w.max(u) / 3,
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

#[tokio::test]
async fn handoff_codes_are_single_use_and_bound_to_their_app() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "pia", &["portal", "analytics"]).await;
    let rd = format!("{}/here", srv.url("portal"));
    let res = p
        .browser
        .get(&format!(
            "{}/.portcullis/login?rd={}",
            srv.url("login"),
            urlencode(&rd)
        ))
        .await;
    let callback = res.location().unwrap();
    assert!(callback.starts_with(&format!("{}/.portcullis/callback?code=", srv.url("portal"))));
    // Replayed at another app: refused.
    let thief = Browser::new(srv.addr);
    let elsewhere = callback.replace("portal.localhost", "analytics.localhost");
    assert_eq!(thief.get(&elsewhere).await.status, StatusCode::BAD_REQUEST);
    // That attempt used it up: even the right app refuses it now.
    assert_eq!(thief.get(&callback).await.status, StatusCode::BAD_REQUEST);
    // A fresh code works once, and not after 60 seconds.
    let res = p
        .browser
        .get(&format!(
            "{}/.portcullis/login?rd={}",
            srv.url("login"),
            urlencode(&rd)
        ))
        .await;
    let code = res.location().unwrap();
    srv.clock.advance(61);
    assert_eq!(thief.get(&code).await.status, StatusCode::BAD_REQUEST);
    let res = p
        .browser
        .get(&format!(
            "{}/.portcullis/login?rd={}",
            srv.url("login"),
            urlencode(&rd)
        ))
        .await;
    let code = res.location().unwrap();
    assert_eq!(thief.get(&code).await.status, StatusCode::FOUND);
    assert_eq!(
        Browser::new(srv.addr).get(&code).await.status,
        StatusCode::BAD_REQUEST
    );
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
