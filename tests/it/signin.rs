//! The partner experience (SPEC §2, §3 and the partner guide): activation, enrolment,
//! the code step, single sign-on, the signed identity, access per app and sign-out.

use http::StatusCode;
use portcullis::auth::code_at;

use crate::helpers::*;
use portcullis::clock::Clock;

/// Walks the partner guide over real HTTP, step by step.
#[tokio::test]
async fn the_partner_guide_works_step_by_step() {
    let s = setup().await;
    let srv = &s.server;
    let b = Browser::new(srv.addr);
    let link = invite(srv, "alice", None, &["portal", "analytics"]).await;

    // Activation link → choose a password (no admin password was set).
    let page = b.get(&link).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Choose a password"), "{}", page.body);
    assert!(page.body.contains("autocomplete=\"new-password\""));
    let chain = b
        .submit(
            &format!("{}/.portcullis/activate", srv.url("login")),
            &[
                ("csrf", &field(&page.body, "csrf")),
                ("token", &field(&page.body, "token")),
                ("password", GOOD_PASSWORD),
                ("password2", GOOD_PASSWORD),
            ],
        )
        .await;

    // Step 2: a QR code unique to the account and a six-digit field with Finish.
    let enroll = last(&chain);
    assert_eq!(enroll.status, StatusCode::OK);
    assert!(enroll.body.contains("Finish"));
    assert!(enroll.body.contains("autocomplete=\"one-time-code\""));
    assert!(enroll.body.contains("inputmode=\"numeric\""));
    // Steps 3–4: the app reads the QR code. Decoded from the picture, not the text.
    let (uri, secret) = scan_qr(&enroll.body);
    assert!(
        uri.starts_with("otpauth://totp/Portcullis:alice?secret="),
        "{uri}"
    );
    assert!(
        uri.contains("&issuer=Portcullis&algorithm=SHA1&digits=6&period=30"),
        "{uri}"
    );
    // The same secret is offered for manual entry, in groups of four.
    let grouped = secret.base32_grouped();
    assert!(grouped.split(' ').all(|g| g.len() <= 4));
    assert!(enroll.body.contains(&grouped));

    // Step 5: the code shown by the app, then Finish.
    let finish_code = code_at(&secret, srv.clock.now());
    let chain = b
        .submit(
            &format!("{}/.portcullis/enroll", srv.url("login")),
            &[
                ("csrf", &field(&enroll.body, "csrf")),
                ("rd", ""),
                ("code", &finish_code),
            ],
        )
        .await;
    let code_page = last(&chain);
    assert!(
        code_page.body.contains("Enter your code"),
        "{}",
        code_page.body
    );

    // Step 6: back in the log-in process; the code used at Finish is refused…
    let refused = b
        .post_form(
            &format!("{}/.portcullis/code", srv.url("login")),
            &[
                ("csrf", &field(&code_page.body, "csrf")),
                ("rd", ""),
                ("code", &finish_code),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused
            .body
            .contains("That code was already used. Wait for the next code in your app."),
        "{}",
        refused.body
    );
    // …and the next one is accepted.
    srv.clock.advance(30);
    let chain = b
        .submit(
            &format!("{}/.portcullis/code", srv.url("login")),
            &[
                ("csrf", &field(&refused.body, "csrf")),
                ("rd", ""),
                ("code", &code_at(&secret, srv.clock.now())),
            ],
        )
        .await;
    assert!(
        last(&chain).body.contains("You are signed in"),
        "{}",
        last(&chain).body
    );

    // The Portal receives who it is, with a signature that verifies against the JWKS.
    let chain = b
        .follow(&format!("{}/reports?x=1", srv.url("portal")))
        .await;
    let echo = last(&chain);
    assert_eq!(echo.status, StatusCode::OK);
    let v = echo.json();
    assert_eq!(v["upstream"], "portal");
    assert_eq!(v["path"], "/reports");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["headers"]["x-portcullis-user"][0], "alice");
    assert_eq!(v["headers"]["x-portcullis-email"][0], "alice@example.com");
    assert_eq!(v["headers"]["x-portcullis-name"][0], "alice Example");
    let token = v["headers"]["x-portcullis-assertion"][0]
        .as_str()
        .unwrap()
        .to_string();
    let jwks = b
        .get_json(&format!("{}/.portcullis/jwks.json", srv.url("portal")))
        .await;
    assert_eq!(jwks.status, StatusCode::OK);
    let claims = portcullis::identity::verify_with_jwks(
        &token,
        &jwks.body,
        &srv.url("login"),
        "portal",
        srv.clock.now(),
    )
    .unwrap();
    assert_eq!(claims.preferred_username, "alice");
    assert_eq!(claims.amr, vec!["pwd", "otp"]);
    assert!(claims.exp - claims.iat <= 60);
    // The same assertion is refused for another audience.
    assert!(portcullis::identity::verify_with_jwks(
        &token,
        &jwks.body,
        &srv.url("login"),
        "analytics",
        srv.clock.now()
    )
    .is_err());
    // Portcullis's cookies never reach the app.
    assert!(v["headers"].get("cookie").is_none(), "{v}");

    // Analytics after the Portal: no page at all, only redirects.
    let chain = b
        .follow(&format!("{}/dashboard", srv.url("analytics")))
        .await;
    assert!(chain[..chain.len() - 1]
        .iter()
        .all(|(_, p)| p.status.is_redirection()));
    assert_eq!(last(&chain).json()["upstream"], "analytics");
    assert_eq!(
        last(&chain).json()["headers"]["x-portcullis-user"][0],
        "alice"
    );

    // Sign-out on one app ends the session everywhere and shows the sign-in page.
    let chain = b
        .follow(&format!("{}/.portcullis/logout", srv.url("analytics")))
        .await;
    let signed_out = last(&chain);
    assert!(
        signed_out.body.contains("You have signed out."),
        "{}",
        signed_out.body
    );
    assert!(signed_out
        .body
        .contains("autocomplete=\"current-password\""));
    for app in ["portal", "analytics"] {
        let api = b.get_json(&format!("{}/api", srv.url(app))).await;
        assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{app}");
    }
    // The audit trail names who signed out, though it started on an app origin.
    let audit = srv.accounts.store.audit(Some("alice"), 50).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "signout" && e.outcome == "ok"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn existing_user_with_a_password_signs_in_and_enrols() {
    let s = setup().await;
    let srv = &s.server;
    let b = Browser::new(srv.addr);
    let link = invite(srv, "bob", Some("an admin chosen password"), &["portal"]).await;
    // The admin set a password: the link leads to the sign-in page.
    let chain = b.follow(&link).await;
    assert!(last_url(&chain).contains("/.portcullis/login"));
    assert!(last(&chain)
        .body
        .contains("Log in with the user name and password you were given."));

    let chain = b.follow(&format!("{}/welcome", srv.url("portal"))).await;
    let login = last(&chain);
    assert!(
        login
            .body
            .contains("to continue to <strong>Partner Portal</strong>"),
        "{}",
        login.body
    );
    let chain = b
        .submit(
            &format!("{}/.portcullis/login", srv.url("login")),
            &[
                ("csrf", &field(&login.body, "csrf")),
                ("rd", &field(&login.body, "rd")),
                ("username", "bob"),
                ("password", "an admin chosen password"),
            ],
        )
        .await;
    let enroll = last(&chain);
    assert!(
        enroll.body.contains("Set up two-factor authentication"),
        "{}",
        enroll.body
    );
    let (_, secret) = scan_qr(&enroll.body);
    let chain = b
        .submit(
            &format!("{}/.portcullis/enroll", srv.url("login")),
            &[
                ("csrf", &field(&enroll.body, "csrf")),
                ("rd", &field(&enroll.body, "rd")),
                ("code", &code_at(&secret, srv.clock.now())),
            ],
        )
        .await;
    let code_page = last(&chain);
    srv.clock.advance(30);
    let chain = b
        .submit(
            &format!("{}/.portcullis/code", srv.url("login")),
            &[
                ("csrf", &field(&code_page.body, "csrf")),
                ("rd", &field(&code_page.body, "rd")),
                ("code", &code_at(&secret, srv.clock.now())),
            ],
        )
        .await;
    // Straight back to where bob wanted to go.
    let end = last(&chain);
    assert_eq!(end.json()["path"], "/welcome");
    assert_eq!(end.json()["headers"]["x-portcullis-user"][0], "bob");
}

#[tokio::test]
async fn signed_in_user_without_access_gets_a_403_naming_the_app() {
    let s = setup().await;
    let p = activate_and_sign_in(&s.server, "carol", &["portal"]).await;
    let chain = p
        .browser
        .follow(&format!("{}/", s.server.url("analytics")))
        .await;
    let page = last(&chain);
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.body.contains("No access to Partner Analytics"),
        "{}",
        page.body
    );
    assert!(page.body.contains("your administrator"));
    let chain = p
        .browser
        .follow(&format!("{}/", s.server.url("portal")))
        .await;
    assert_eq!(last(&chain).status, StatusCode::OK);
}

#[tokio::test]
async fn returning_user_signs_in_with_password_and_code_only() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "dave", &["portal"]).await;
    // A new browser (another day): password, then code — no QR code any more.
    let b = Browser::new(srv.addr);
    let chain = b.follow(&format!("{}/", srv.url("portal"))).await;
    let login = last(&chain);
    let chain = b
        .submit(
            &format!("{}/.portcullis/login", srv.url("login")),
            &[
                ("csrf", &field(&login.body, "csrf")),
                ("rd", &field(&login.body, "rd")),
                ("username", "dave"),
                ("password", &p.password),
            ],
        )
        .await;
    let code_page = last(&chain);
    assert!(
        code_page.body.contains("Enter your code"),
        "{}",
        code_page.body
    );
    assert!(!code_page.body.contains("<svg"));
    srv.clock.advance(30);
    let chain = b
        .submit(
            &format!("{}/.portcullis/code", srv.url("login")),
            &[
                ("csrf", &field(&code_page.body, "csrf")),
                ("rd", &field(&code_page.body, "rd")),
                ("code", &code_at(&p.secret, srv.clock.now())),
            ],
        )
        .await;
    assert_eq!(
        last(&chain).json()["headers"]["x-portcullis-user"][0],
        "dave"
    );
}

#[tokio::test]
async fn used_activation_link_is_refused_with_a_clear_page() {
    let s = setup().await;
    let srv = &s.server;
    let b = Browser::new(srv.addr);
    let link = invite(srv, "erin", None, &["portal"]).await;
    let page = b.get(&link).await;
    b.submit(
        &format!("{}/.portcullis/activate", srv.url("login")),
        &[
            ("csrf", &field(&page.body, "csrf")),
            ("token", &field(&page.body, "token")),
            ("password", GOOD_PASSWORD),
            ("password2", GOOD_PASSWORD),
        ],
    )
    .await;
    let again = Browser::new(srv.addr).get(&link).await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(again.body.contains("expired or was already used"));
    let bogus = b
        .get(&format!(
            "{}/.portcullis/activate?token=nope",
            srv.url("login")
        ))
        .await;
    assert_eq!(bogus.status, StatusCode::GONE);
}

#[tokio::test]
async fn weak_or_mismatched_passwords_are_refused_at_activation() {
    let s = setup().await;
    let srv = &s.server;
    let b = Browser::new(srv.addr);
    let link = invite(srv, "frank", None, &["portal"]).await;
    let page = b.get(&link).await;
    for (pw, pw2, expect) in [
        ("short", "short", "at least 12 characters"),
        ("unbelievable", "unbelievable", "too common"),
        (GOOD_PASSWORD, "something else entirely", "not the same"),
    ] {
        let res = b
            .post_form(
                &format!("{}/.portcullis/activate", srv.url("login")),
                &[
                    ("csrf", &field(&page.body, "csrf")),
                    ("token", &field(&page.body, "token")),
                    ("password", pw),
                    ("password2", pw2),
                ],
            )
            .await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST);
        assert!(res.body.contains(expect), "{expect}: {}", res.body);
    }
    // The link still works after the refusals.
    assert_eq!(b.get(&link).await.status, StatusCode::OK);
}

#[tokio::test]
async fn assertion_is_reused_for_half_its_life_and_then_renewed() {
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "sam", &["portal"]).await;
    let url = format!("{}/echo", srv.url("portal"));
    // /echo is a public path; use a private one so the identity is added.
    let url = url.replace("/echo", "/private");
    let first = last(&p.browser.follow(&url).await).json();
    let a1 = first["headers"]["x-portcullis-assertion"][0].clone();
    srv.clock.advance(10);
    let a2 = p.browser.get_json(&url).await.json()["headers"]["x-portcullis-assertion"][0].clone();
    assert_eq!(a1, a2, "reused within half the lifetime");
    srv.clock.advance(25);
    let a3 = p.browser.get_json(&url).await.json()["headers"]["x-portcullis-assertion"][0].clone();
    assert_ne!(a1, a3, "renewed after half the lifetime");
    let jwks = p
        .browser
        .get_json(&format!("{}/.portcullis/jwks.json", srv.url("portal")))
        .await;
    let claims = portcullis::identity::verify_with_jwks(
        a3.as_str().unwrap(),
        &jwks.body,
        &srv.url("login"),
        "portal",
        srv.clock.now(),
    )
    .unwrap();
    assert!(claims.exp - srv.clock.now() >= 30);
}

#[tokio::test]
async fn revoking_in_the_store_ends_a_cached_session_at_once() {
    use portcullis::store::UserStatus;
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "tina", &["portal", "analytics"]).await;
    let url = format!("{}/private", srv.url("portal"));
    assert_eq!(last(&p.browser.follow(&url).await).status, StatusCode::OK);
    assert_eq!(p.browser.get_json(&url).await.status, StatusCode::OK);
    assert!(
        !srv.accounts.sessions.is_empty(),
        "the session is served from memory"
    );
    // Revoking a grant: 403 at once.
    let user = srv.accounts.store.user_by_name("tina").unwrap().unwrap();
    srv.accounts
        .store
        .update_user(&user.id, &mut |u| {
            u.apps.remove("portal");
            Ok(())
        })
        .unwrap();
    assert_eq!(p.browser.get_json(&url).await.status, StatusCode::FORBIDDEN);
    // Disabling: signed out at once, everywhere.
    let analytics = format!("{}/private", srv.url("analytics"));
    assert_eq!(
        last(&p.browser.follow(&analytics).await).status,
        StatusCode::OK
    );
    srv.accounts
        .store
        .update_user(&user.id, &mut |u| {
            u.status = UserStatus::Disabled;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        p.browser.get_json(&analytics).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn reset_2fa_ends_every_session_and_the_next_sign_in_shows_a_new_qr_code() {
    use portcullis::accounts::Actor;
    let s = setup().await;
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "vera", &["portal", "analytics"]).await;
    let portal = format!("{}/private", srv.url("portal"));
    assert_eq!(
        last(&p.browser.follow(&portal).await).status,
        StatusCode::OK
    );

    // The phone is lost; the administrator resets 2FA.
    srv.accounts.reset_2fa("vera", Actor::Cli).unwrap();
    assert_eq!(
        p.browser.get_json(&portal).await.status,
        StatusCode::UNAUTHORIZED
    );
    let chain = p
        .browser
        .follow(&format!("{}/.portcullis/login", srv.url("login")))
        .await;
    assert!(
        last(&chain).body.contains("Log in"),
        "the auth session ended too"
    );

    // Password again, then a NEW QR code (a new secret), not the code step.
    let b = Browser::new(srv.addr);
    let form = b
        .get(&format!("{}/.portcullis/login", srv.url("login")))
        .await;
    let chain = b
        .submit(
            &format!("{}/.portcullis/login", srv.url("login")),
            &[
                ("csrf", &field(&form.body, "csrf")),
                ("rd", ""),
                ("username", "vera"),
                ("password", GOOD_PASSWORD),
            ],
        )
        .await;
    let enroll = last(&chain);
    assert!(
        enroll.body.contains("Set up two-factor authentication"),
        "{}",
        enroll.body
    );
    let (_, secret) = scan_qr(&enroll.body);
    assert_ne!(secret.base32(), p.secret.base32());
    // The old authenticator no longer works.
    srv.clock.advance(30);
    let res = b
        .post_form(
            &format!("{}/.portcullis/enroll", srv.url("login")),
            &[
                ("csrf", &field(&enroll.body, "csrf")),
                ("rd", ""),
                ("code", &code_at(&p.secret, srv.clock.now())),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let events = srv.accounts.store.audit(Some("vera"), 50).unwrap();
    assert!(
        events.iter().any(|e| e.action == "user.reset_2fa"),
        "{events:?}"
    );
}

#[tokio::test]
async fn disabling_or_deleting_a_user_ends_their_sessions_at_once() {
    use portcullis::accounts::Actor;
    let s = setup().await;
    let srv = &s.server;
    let a = activate_and_sign_in(srv, "walt", &["portal"]).await;
    let b = activate_and_sign_in(srv, "xena", &["portal"]).await;
    let portal = format!("{}/private", srv.url("portal"));
    for p in [&a, &b] {
        assert_eq!(
            last(&p.browser.follow(&portal).await).status,
            StatusCode::OK
        );
    }
    srv.accounts.disable_user("walt", Actor::Cli).unwrap();
    srv.accounts.delete_user("xena", Actor::Cli).unwrap();
    for p in [&a, &b] {
        assert_eq!(
            p.browser.get_json(&portal).await.status,
            StatusCode::UNAUTHORIZED,
            "{}",
            p.name
        );
    }
    // A disabled account cannot sign in again, and is told nothing more than a stranger.
    let res = {
        let browser = Browser::new(srv.addr);
        let form = browser
            .get(&format!("{}/.portcullis/login", srv.url("login")))
            .await;
        browser
            .post_form(
                &format!("{}/.portcullis/login", srv.url("login")),
                &[
                    ("csrf", &field(&form.body, "csrf")),
                    ("rd", ""),
                    ("username", "walt"),
                    ("password", GOOD_PASSWORD),
                ],
            )
            .await
    };
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res
        .body
        .contains("That user name and password do not match"));
}
