//! The sign-in pages: log in, activate, enrol, code, the SSO hand-off and sign-out.
//! Each POST passes the same gate first: rate limit, `Origin`, CSRF token.

use std::sync::Arc;

use askama::Template;
use http::{header, HeaderValue, Request, Response, StatusCode};

use super::form::{self, Form};
use super::{render, Ctx};
use crate::accounts::signin::{Activation, ActivationError, SignInError, Verified};
use crate::auth::{self, CodeError, Password, RedirectTarget, SecretToken, TotpSecret};
use crate::error::{brand_name, Refusal};
use crate::state::AppState;
use crate::web::{self, cookies, Body};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    brand: &'a str,
    csrf: String,
    rd: String,
    app_name: Option<String>,
    username: String,
    notice: Option<&'a str>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "enroll.html")]
struct EnrollPage<'a> {
    brand: &'a str,
    csrf: String,
    rd: String,
    qr_svg: String,
    secret_grouped: String,
    otpauth_uri: String,
    account: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "code.html")]
struct CodePage<'a> {
    brand: &'a str,
    csrf: String,
    rd: String,
    account: String,
    notice: Option<&'a str>,
    error: Option<String>,
    support: &'a str,
}

#[derive(Template)]
#[template(path = "activate.html")]
struct ActivatePage<'a> {
    brand: &'a str,
    csrf: String,
    token: String,
    username: String,
    display_name: String,
    min_length: usize,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "signed_in.html")]
struct SignedInPage<'a> {
    brand: &'a str,
    csrf: String,
    username: String,
    display_name: String,
    apps: Vec<(String, String)>,
    support: &'a str,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    brand: &'a str,
    title: &'a str,
    message: &'a str,
    status: u16,
    link: Option<(&'a str, &'a str)>,
}

const ENROLLED_NOTICE: &str = "Two-factor authentication is set up. To finish logging in, wait for the next code in your app and enter it below.";
const SIGNED_OUT_NOTICE: &str = "You have signed out.";
const ACTIVATED_NOTICE: &str =
    "Your account is ready. Log in with the user name and password you were given.";
const EXPIRED_NOTICE: &str = "Your sign-in took too long. Please log in again.";

// ---------------------------------------------------------------- helpers

fn brand(state: &AppState) -> &str {
    brand_name(&state.branding)
}

fn query_param(req: &Request<Body>, name: &str) -> Option<String> {
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn validate_rd(state: &AppState, raw: &str) -> Option<RedirectTarget> {
    if raw.is_empty() {
        return None;
    }
    auth::validate_rd(raw, &state.redirect_origins)
}

fn rd_string(rd: &Option<RedirectTarget>) -> String {
    rd.as_ref()
        .map(|r| r.as_str().to_string())
        .unwrap_or_default()
}

fn app_name_for(state: &AppState, rd: &Option<RedirectTarget>) -> Option<String> {
    let rd = rd.as_ref()?;
    app_for(state, rd).map(|a| a.name.clone())
}

fn app_for<'a>(state: &'a AppState, rd: &RedirectTarget) -> Option<&'a crate::config::AppConfig> {
    let o = rd.origin();
    state
        .config
        .apps
        .iter()
        .find(|a| a.url.host == o.host && a.url.port == o.port && a.url.scheme.as_str() == o.scheme)
}

/// The per-browser CSRF binding: the cookie's value, or a new one to set.
struct Csrf {
    token: String,
    set_cookie: Option<HeaderValue>,
}

fn csrf_for(state: &AppState, headers: &http::HeaderMap) -> Csrf {
    let existing = cookies::get(headers, state.cookies.csrf).and_then(SecretToken::parse);
    match existing {
        Some(binding) => Csrf {
            token: auth::csrf_token(&state.csrf_key, binding.encode().as_bytes()),
            set_cookie: None,
        },
        None => match SecretToken::generate() {
            Ok(binding) => {
                let value = binding.encode();
                Csrf {
                    token: auth::csrf_token(&state.csrf_key, value.as_bytes()),
                    set_cookie: state.cookies.set(state.cookies.csrf, &value, None),
                }
            }
            Err(_) => Csrf {
                token: String::new(),
                set_cookie: None,
            },
        },
    }
}

fn with_cookies(
    mut res: Response<Body>,
    cookies: impl IntoIterator<Item = Option<HeaderValue>>,
) -> Response<Body> {
    for c in cookies.into_iter().flatten() {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

fn see_other(state: &AppState, location: &str) -> Response<Body> {
    web::redirect(
        StatusCode::SEE_OTHER,
        location,
        &state.branding.page_headers,
    )
}

fn auth_path(state: &AppState, path: &str, rd: &Option<RedirectTarget>) -> String {
    let base = format!("{}{path}", state.config.server.auth_url);
    match rd {
        Some(rd) => format!(
            "{base}?rd={}",
            percent_encoding::utf8_percent_encode(rd.as_str(), percent_encoding::NON_ALPHANUMERIC)
        ),
        None => base,
    }
}

fn message(
    state: &AppState,
    status: StatusCode,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Response<Body> {
    render(
        state,
        status,
        &MessagePage {
            brand: brand(state),
            title,
            message: text,
            status: status.as_u16(),
            link,
        },
    )
}

fn refuse(state: &AppState, r: Refusal) -> Response<Body> {
    r.respond(&state.branding, true)
}

/// SPEC §5: a form POST must come from the auth origin. Our pages send
/// `Referrer-Policy: no-referrer`, and with that policy browsers send `Origin: null` even
/// on a same-origin form (Fetch §3.1, "serializing a request origin"). `null` is then
/// accepted only together with `Sec-Fetch-Site: same-origin`, a header pages cannot set
/// or forge; the CSRF token is checked either way.
fn same_origin_post(state: &AppState, headers: &http::HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("origin") {
        Some("null") => header("sec-fetch-site") == Some("same-origin"),
        Some(origin) => origin == state.config.server.auth_url.to_string(),
        None => false,
    }
}

/// The checks every sign-in POST passes before anything else: the per-address rate
/// limit, the `Origin` header, and the CSRF token bound to this browser's cookie.
async fn accept_post(
    state: &AppState,
    req: Request<Body>,
    ctx: Ctx,
) -> Result<(http::request::Parts, Form), Response<Body>> {
    let now_ms = state.accounts.clock.now().max(0) as u64 * 1000;
    if let Err(retry) = state.login_limiter.check(ctx.ip, now_ms) {
        return Err(refuse(
            state,
            Refusal::TooManyRequests {
                retry_after_secs: retry.0,
            },
        ));
    }
    if !same_origin_post(state, req.headers()) {
        return Err(refuse(state, Refusal::CsrfRejected));
    }
    let binding = cookies::get(req.headers(), state.cookies.csrf)
        .and_then(SecretToken::parse)
        .map(|t| t.encode());
    let (parts, form) = form::read(req, state.config.server.header_read_timeout)
        .await
        .map_err(|r| refuse(state, r))?;
    let Some(binding) = binding else {
        return Err(refuse(state, Refusal::CsrfRejected));
    };
    if !auth::csrf_valid(&state.csrf_key, binding.as_bytes(), form.get("csrf")) {
        return Err(refuse(state, Refusal::CsrfRejected));
    }
    Ok((parts, form))
}

fn pending_of(state: &AppState, headers: &http::HeaderMap) -> Result<Option<Verified>, Refusal> {
    let Some(token) = cookies::get(headers, state.cookies.pending).and_then(SecretToken::parse)
    else {
        return Ok(None);
    };
    state.accounts.pending(&token).map_err(|e| {
        tracing::error!(error = %e, "pending sign-in lookup failed");
        Refusal::Unavailable
    })
}

fn full_session_of(
    state: &AppState,
    headers: &http::HeaderMap,
) -> Result<Option<Verified>, Refusal> {
    let Some(token) = cookies::get(headers, state.cookies.session).and_then(SecretToken::parse)
    else {
        return Ok(None);
    };
    state.accounts.full_session(&token).map_err(|e| {
        tracing::error!(error = %e, "session lookup failed");
        Refusal::Unavailable
    })
}

fn ip_str(ctx: Ctx) -> String {
    ctx.ip.to_string()
}

// ---------------------------------------------------------------- log in

pub fn login_page(state: &Arc<AppState>, req: Request<Body>, _ctx: Ctx) -> Response<Body> {
    let rd = validate_rd(state, &query_param(&req, "rd").unwrap_or_default());
    match full_session_of(state, req.headers()) {
        Err(r) => return refuse(state, r),
        Ok(Some(signed_in)) => {
            // `s`: the hash of the state cookie the app origin gave this browser on its
            // way here (`gate::unauthenticated`).
            let browser = query_param(&req, "s")
                .and_then(|s| SecretToken::parse(&s))
                .map(|s| *s.bytes());
            return after_sign_in(
                state,
                &signed_in,
                rd,
                browser,
                req.headers(),
                StatusCode::FOUND,
                None,
            );
        }
        Ok(None) => {}
    }
    let notice = match query_param(&req, "notice").as_deref() {
        Some("signed-out") => Some(SIGNED_OUT_NOTICE),
        Some("activated") => Some(ACTIVATED_NOTICE),
        Some("expired") => Some(EXPIRED_NOTICE),
        _ => None,
    };
    login_form(
        state,
        req.headers(),
        rd,
        String::new(),
        notice,
        None,
        StatusCode::OK,
    )
}

fn login_form(
    state: &AppState,
    headers: &http::HeaderMap,
    rd: Option<RedirectTarget>,
    username: String,
    notice: Option<&str>,
    error: Option<String>,
    status: StatusCode,
) -> Response<Body> {
    let csrf = csrf_for(state, headers);
    let page = LoginPage {
        brand: brand(state),
        csrf: csrf.token,
        app_name: app_name_for(state, &rd),
        rd: rd_string(&rd),
        username,
        notice,
        error,
    };
    with_cookies(render(state, status, &page), [csrf.set_cookie])
}

pub async fn login_post(state: &Arc<AppState>, req: Request<Body>, ctx: Ctx) -> Response<Body> {
    let (parts, form) = match accept_post(state, req, ctx).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let rd = validate_rd(state, form.get("rd"));
    let username = form.get("username").trim().to_string();
    let password = form.get("password");
    if username.chars().count() > 64 || password.len() > auth::MAX_PASSWORD_BYTES {
        return refuse(
            state,
            Refusal::BadRequest(
                "That user name or password is far too long. Go back and try again.".into(),
            ),
        );
    }
    if username.is_empty() || password.is_empty() {
        return login_form(
            state,
            &parts.headers,
            rd,
            username,
            None,
            Some("Enter your user name and your password.".into()),
            StatusCode::BAD_REQUEST,
        );
    }
    let ip = ip_str(ctx);
    match state
        .accounts
        .sign_in_password(&username, Password::new(password), Some(&ip))
        .await
    {
        Ok((pending, user)) => {
            let next = if user.totp.is_some() {
                "/.portcullis/code"
            } else {
                "/.portcullis/enroll"
            };
            let res = see_other(state, &auth_path(state, next, &rd));
            with_cookies(
                res,
                [state.cookies.set(
                    state.cookies.pending,
                    &pending.encode(),
                    Some(crate::accounts::signin::PENDING_TTL),
                )],
            )
        }
        Err(SignInError::BadCredentials) => login_form(
            state,
            &parts.headers,
            rd,
            username,
            None,
            Some(SignInError::BadCredentials.to_string()),
            StatusCode::UNAUTHORIZED,
        ),
        Err(SignInError::Locked { .. }) => locked(state),
        Err(e) => {
            tracing::error!(error = %e, "sign-in failed");
            refuse(state, Refusal::Unavailable)
        }
    }
}

fn locked(state: &AppState) -> Response<Body> {
    let minutes = (state.accounts.settings.lockout.lockout + 59) / 60;
    let text = format!(
        "Too many failed attempts. For your security this account is locked for up to {minutes} minutes. Try again later, or ask {} for help.",
        state.branding.support_contact
    );
    message(
        state,
        StatusCode::TOO_MANY_REQUESTS,
        "Account locked",
        &text,
        None,
    )
}

// ---------------------------------------------------------------- enrolment

pub fn enroll_page(state: &Arc<AppState>, req: Request<Body>, _ctx: Ctx) -> Response<Body> {
    let rd = validate_rd(state, &query_param(&req, "rd").unwrap_or_default());
    let pending = match pending_of(state, req.headers()) {
        Err(r) => return refuse(state, r),
        Ok(None) => return see_other(state, &expired_login(state, &rd)),
        Ok(Some(p)) => p,
    };
    if pending.user.totp.is_some() {
        return see_other(state, &auth_path(state, "/.portcullis/code", &rd));
    }
    enroll_form(state, req.headers(), &pending, rd, None, StatusCode::OK)
}

fn expired_login(state: &AppState, rd: &Option<RedirectTarget>) -> String {
    let login = auth_path(state, "/.portcullis/login", rd);
    let sep = if login.contains('?') { '&' } else { '?' };
    format!("{login}{sep}notice=expired")
}

fn enroll_form(
    state: &AppState,
    headers: &http::HeaderMap,
    pending: &Verified,
    rd: Option<RedirectTarget>,
    error: Option<String>,
    status: StatusCode,
) -> Response<Body> {
    let secret: TotpSecret = match state.accounts.enrolment_secret(pending) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not prepare enrolment");
            return refuse(state, Refusal::Unavailable);
        }
    };
    let issuer = &state.accounts.settings.issuer;
    let uri = auth::otpauth_uri(issuer, &pending.user.name, &secret);
    let qr_svg = match auth::qr_svg(&uri) {
        Ok(svg) => svg,
        Err(e) => {
            tracing::error!(error = %e, "could not draw the QR code");
            return refuse(state, Refusal::Unavailable);
        }
    };
    let csrf = csrf_for(state, headers);
    let page = EnrollPage {
        brand: brand(state),
        csrf: csrf.token,
        rd: rd_string(&rd),
        qr_svg,
        secret_grouped: secret.base32_grouped(),
        otpauth_uri: uri,
        account: format!("{issuer}: {}", pending.user.name),
        error,
    };
    with_cookies(render(state, status, &page), [csrf.set_cookie])
}

pub async fn enroll_post(state: &Arc<AppState>, req: Request<Body>, ctx: Ctx) -> Response<Body> {
    let (parts, form) = match accept_post(state, req, ctx).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let rd = validate_rd(state, form.get("rd"));
    let pending = match pending_of(state, &parts.headers) {
        Err(r) => return refuse(state, r),
        Ok(None) => return see_other(state, &expired_login(state, &rd)),
        Ok(Some(p)) => p,
    };
    if pending.user.totp.is_some() {
        return see_other(state, &auth_path(state, "/.portcullis/code", &rd));
    }
    let ip = ip_str(ctx);
    match state
        .accounts
        .finish_enrolment(&pending, form.get("code"), Some(&ip))
        .await
    {
        Ok(()) => {
            let code = auth_path(state, "/.portcullis/code", &rd);
            let sep = if code.contains('?') { '&' } else { '?' };
            see_other(state, &format!("{code}{sep}enrolled=1"))
        }
        Err(SignInError::Code(e)) => enroll_form(
            state,
            &parts.headers,
            &pending,
            rd,
            Some(e.to_string()),
            StatusCode::BAD_REQUEST,
        ),
        Err(SignInError::Locked { .. }) => locked(state),
        Err(SignInError::Expired) => see_other(state, &expired_login(state, &rd)),
        Err(e) => {
            tracing::error!(error = %e, "enrolment failed");
            refuse(state, Refusal::Unavailable)
        }
    }
}

// ---------------------------------------------------------------- code

pub fn code_page(state: &Arc<AppState>, req: Request<Body>, _ctx: Ctx) -> Response<Body> {
    let rd = validate_rd(state, &query_param(&req, "rd").unwrap_or_default());
    let pending = match pending_of(state, req.headers()) {
        Err(r) => return refuse(state, r),
        Ok(None) => return see_other(state, &expired_login(state, &rd)),
        Ok(Some(p)) => p,
    };
    if pending.user.totp.is_none() {
        return see_other(state, &auth_path(state, "/.portcullis/enroll", &rd));
    }
    let notice = query_param(&req, "enrolled").map(|_| ENROLLED_NOTICE);
    code_form(
        state,
        req.headers(),
        &pending,
        rd,
        notice,
        None,
        StatusCode::OK,
    )
}

fn code_form(
    state: &AppState,
    headers: &http::HeaderMap,
    pending: &Verified,
    rd: Option<RedirectTarget>,
    notice: Option<&str>,
    error: Option<String>,
    status: StatusCode,
) -> Response<Body> {
    let csrf = csrf_for(state, headers);
    let page = CodePage {
        brand: brand(state),
        csrf: csrf.token,
        rd: rd_string(&rd),
        account: format!("{}: {}", state.accounts.settings.issuer, pending.user.name),
        notice,
        error,
        support: &state.branding.support_contact,
    };
    with_cookies(render(state, status, &page), [csrf.set_cookie])
}

pub async fn code_post(state: &Arc<AppState>, req: Request<Body>, ctx: Ctx) -> Response<Body> {
    let (parts, form) = match accept_post(state, req, ctx).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let rd = validate_rd(state, form.get("rd"));
    let pending = match pending_of(state, &parts.headers) {
        Err(r) => return refuse(state, r),
        Ok(None) => return see_other(state, &expired_login(state, &rd)),
        Ok(Some(p)) => p,
    };
    let ip = ip_str(ctx);
    match state
        .accounts
        .verify_second_factor(&pending, form.get("code"), Some(&ip))
        .await
    {
        Ok(session_token) => {
            let signed_in = match state.accounts.full_session(&session_token) {
                Ok(Some(v)) => v,
                _ => return refuse(state, Refusal::Unavailable),
            };
            let max_age = state.accounts.settings.max_lifetime;
            let res = after_sign_in(
                state,
                &signed_in,
                rd,
                None,
                &parts.headers,
                StatusCode::SEE_OTHER,
                None,
            );
            with_cookies(
                res,
                [
                    state.cookies.set(
                        state.cookies.session,
                        &session_token.encode(),
                        Some(max_age),
                    ),
                    state.cookies.clear(state.cookies.pending),
                ],
            )
        }
        Err(SignInError::Code(e)) => {
            let status = if e == CodeError::Malformed {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNAUTHORIZED
            };
            code_form(
                state,
                &parts.headers,
                &pending,
                rd,
                None,
                Some(e.to_string()),
                status,
            )
        }
        Err(SignInError::NotEnrolled) => {
            see_other(state, &auth_path(state, "/.portcullis/enroll", &rd))
        }
        Err(SignInError::Locked { .. }) => locked(state),
        Err(SignInError::Expired) => see_other(state, &expired_login(state, &rd)),
        Err(e) => {
            tracing::error!(error = %e, "code check failed");
            refuse(state, Refusal::Unavailable)
        }
    }
}

// ---------------------------------------------------------------- hand-off

/// Where a signed-in person goes: to the app named by `rd` through a one-time hand-off
/// code (SPEC §2.5), or to the list of their apps. The code is made only for a browser
/// that brought the hash of its state cookie from the app (`browser`); without one, the
/// browser goes to the app's `/.portcullis/start` ([`start`]), which gives it a state
/// cookie and sends it back here. Not to `rd` itself: a public path there would be served
/// without ever coming back.
fn after_sign_in(
    state: &AppState,
    signed_in: &Verified,
    rd: Option<RedirectTarget>,
    browser: Option<[u8; 32]>,
    headers: &http::HeaderMap,
    status: StatusCode,
    extra_cookie: Option<HeaderValue>,
) -> Response<Body> {
    let target = rd
        .as_ref()
        .and_then(|rd| app_for(state, rd).map(|app| (rd, app)));
    let Some((rd, app)) = target else {
        // After a POST, redirect so a reload does not submit the form again.
        let res = if status == StatusCode::SEE_OTHER {
            see_other(
                state,
                &format!("{}/.portcullis/login", state.config.server.auth_url),
            )
        } else {
            signed_in_page(state, signed_in, headers)
        };
        return with_cookies(res, [extra_cookie]);
    };
    let Some(browser) = browser else {
        let start = format!(
            "{}/.portcullis/start?rd={}",
            app.url,
            percent_encoding::utf8_percent_encode(rd.as_str(), percent_encoding::NON_ALPHANUMERIC)
        );
        let res = web::redirect(status, &start, &state.branding.page_headers);
        return with_cookies(res, [extra_cookie]);
    };
    match state
        .accounts
        .create_handoff(&signed_in.session, &app.id, rd.as_str(), &browser)
    {
        Ok(code) => {
            let location = format!("{}/.portcullis/callback?code={}", app.url, code.encode());
            let res = web::redirect(status, &location, &state.branding.page_headers);
            with_cookies(res, [extra_cookie])
        }
        Err(e) => {
            tracing::error!(error = %e, "could not create the hand-off");
            refuse(state, Refusal::Unavailable)
        }
    }
}

/// `headers`: the request's, so the browser's CSRF cookie is kept and forms already open
/// in its other tabs still work.
fn signed_in_page(
    state: &AppState,
    signed_in: &Verified,
    headers: &http::HeaderMap,
) -> Response<Body> {
    let csrf = csrf_for(state, headers);
    let apps = state
        .config
        .apps
        .iter()
        .filter(|a| signed_in.user.apps.contains(&a.id))
        .map(|a| (a.url.to_string(), a.name.clone()))
        .collect();
    let page = SignedInPage {
        brand: brand(state),
        csrf: csrf.token,
        username: signed_in.user.name.clone(),
        display_name: signed_in.user.display_name.clone(),
        apps,
        support: &state.branding.support_contact,
    };
    with_cookies(render(state, StatusCode::OK, &page), [csrf.set_cookie])
}

/// On an app origin: on to the sign-in page for `rd` (a page of this app; else its root)
/// with this origin's state cookie, as a browser sent to sign in by the gate goes.
pub fn start(state: &Arc<AppState>, req: Request<Body>, ctx: Ctx) -> Response<Body> {
    let Some(app) = ctx.site.app.and_then(|i| state.config.apps.get(i)) else {
        return refuse(state, Refusal::NotFound);
    };
    let rd = validate_rd(state, &query_param(&req, "rd").unwrap_or_default())
        .filter(|t| app_for(state, t).is_some_and(|a| a.id == app.id))
        .map(|t| t.as_str().to_string())
        .unwrap_or_else(|| format!("{}/", app.url));
    let held = cookies::get(req.headers(), state.cookies.state).and_then(SecretToken::parse);
    crate::gate::to_sign_in(state, &rd, held)
}

/// On an app origin: redeems the one-time code, sets the app's own cookie, and goes
/// to the page the person first asked for.
pub fn callback(state: &Arc<AppState>, req: Request<Body>, _ctx: Ctx) -> Response<Body> {
    let Some(app) = _ctx.site.app.and_then(|i| state.config.apps.get(i)) else {
        return refuse(state, Refusal::NotFound);
    };
    let code = query_param(&req, "code").and_then(|c| SecretToken::parse(&c));
    let browser = cookies::get(req.headers(), state.cookies.state)
        .and_then(SecretToken::parse)
        .map(|t| t.hash());
    // A browser without the state cookie is not the one the code was made for; the code
    // is used up all the same.
    let redeemed = match code {
        Some(code) => state
            .accounts
            .redeem_handoff(&code, &app.id, &browser.unwrap_or_default()),
        None => Ok(None),
    };
    match redeemed {
        Ok(Some((app_token, rd))) => {
            // The stored rd was validated at sign-in; check again that it is this app's.
            let path = validate_rd(state, &rd)
                .filter(|t| app_for(state, t).is_some_and(|a| a.id == app.id))
                .map(|t| t.path_and_query().to_string())
                .unwrap_or_else(|| "/".to_string());
            let max_age = state.accounts.settings.max_lifetime;
            let res = web::redirect(StatusCode::FOUND, &path, &state.branding.page_headers);
            // The state cookie stays until it expires: another tab of this browser may
            // be on its way here with a code bound to it.
            with_cookies(
                res,
                [state
                    .cookies
                    .set(state.cookies.app, &app_token.encode(), Some(max_age))],
            )
        }
        Ok(None) => {
            let login = format!(
                "{}/.portcullis/login?rd={}",
                state.config.server.auth_url,
                percent_encoding::utf8_percent_encode(
                    &format!("{}/", app.url),
                    percent_encoding::NON_ALPHANUMERIC
                )
            );
            message(
                state,
                StatusCode::BAD_REQUEST,
                "This sign-in link has expired",
                "The link that signs you in to this application works once and only for a minute. Log in again to continue.",
                Some((&login, "Log in")),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "hand-off failed");
            refuse(state, Refusal::Unavailable)
        }
    }
}

// ---------------------------------------------------------------- activation

pub fn activate_page(state: &Arc<AppState>, req: Request<Body>, _ctx: Ctx) -> Response<Body> {
    let token = query_param(&req, "token").and_then(|t| SecretToken::parse(&t));
    let Some(token) = token else {
        return invalid_link(state);
    };
    match state.accounts.activation(&token) {
        Ok(Activation::ChoosePassword { user }) => {
            activate_form(state, req.headers(), &token, &user, None, StatusCode::OK)
        }
        Ok(Activation::SignIn) => web::redirect(
            StatusCode::FOUND,
            &format!(
                "{}/.portcullis/login?notice=activated",
                state.config.server.auth_url
            ),
            &state.branding.page_headers,
        ),
        Ok(Activation::Invalid) => invalid_link(state),
        Err(e) => {
            tracing::error!(error = %e, "activation lookup failed");
            refuse(state, Refusal::Unavailable)
        }
    }
}

fn invalid_link(state: &AppState) -> Response<Body> {
    let text = format!(
        "This activation link has expired or was already used. If you already chose a password, log in. Otherwise ask {} for a new link.",
        state.branding.support_contact
    );
    let login = format!("{}/.portcullis/login", state.config.server.auth_url);
    message(
        state,
        StatusCode::GONE,
        "Activation link not valid",
        &text,
        Some((&login, "Log in")),
    )
}

fn activate_form(
    state: &AppState,
    headers: &http::HeaderMap,
    token: &SecretToken,
    user: &crate::store::User,
    error: Option<String>,
    status: StatusCode,
) -> Response<Body> {
    let csrf = csrf_for(state, headers);
    let page = ActivatePage {
        brand: brand(state),
        csrf: csrf.token,
        token: token.encode(),
        username: user.name.clone(),
        display_name: if user.display_name.is_empty() {
            user.name.clone()
        } else {
            user.display_name.clone()
        },
        min_length: state.accounts.settings.min_password_length,
        error,
    };
    with_cookies(render(state, status, &page), [csrf.set_cookie])
}

pub async fn activate_post(state: &Arc<AppState>, req: Request<Body>, ctx: Ctx) -> Response<Body> {
    let (parts, form) = match accept_post(state, req, ctx).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let Some(token) = SecretToken::parse(form.get("token")) else {
        return invalid_link(state);
    };
    let password = form.get("password");
    if password.len() > auth::MAX_PASSWORD_BYTES {
        return refuse(
            state,
            Refusal::BadRequest(
                "That password is far too long. Go back and choose a shorter one.".into(),
            ),
        );
    }
    let ip = ip_str(ctx);
    match state
        .accounts
        .activate_with_password(
            &token,
            Password::new(password),
            form.get("password2"),
            Some(&ip),
        )
        .await
    {
        Ok((pending, _user)) => with_cookies(
            see_other(
                state,
                &format!("{}/.portcullis/enroll", state.config.server.auth_url),
            ),
            [state.cookies.set(
                state.cookies.pending,
                &pending.encode(),
                Some(crate::accounts::signin::PENDING_TTL),
            )],
        ),
        Err(ActivationError::InvalidLink) => invalid_link(state),
        Err(e @ (ActivationError::Mismatch | ActivationError::Policy(_))) => {
            match state.accounts.activation(&token) {
                Ok(Activation::ChoosePassword { user }) => activate_form(
                    state,
                    &parts.headers,
                    &token,
                    &user,
                    Some(e.to_string()),
                    StatusCode::BAD_REQUEST,
                ),
                _ => invalid_link(state),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "activation failed");
            refuse(state, Refusal::Unavailable)
        }
    }
}

// ---------------------------------------------------------------- sign-out

/// On the auth origin: ends the whole sign-in (every app cookie stops working at once,
/// server side) and shows the sign-in page. GET is accepted so an app's plain "Sign out"
/// link works; ending a session is the only thing it can do.
pub async fn logout(state: &Arc<AppState>, req: Request<Body>, ctx: Ctx) -> Response<Body> {
    let headers = req.headers().clone();
    if req.method() == http::Method::POST {
        if let Err(res) = accept_post(state, req, ctx).await {
            return res;
        }
    }
    if let Some(token) = cookies::get(&headers, state.cookies.session).and_then(SecretToken::parse)
    {
        if let Err(e) = state.accounts.sign_out(&token.hash(), Some(&ip_str(ctx))) {
            tracing::error!(error = %e, "sign-out failed");
            return refuse(state, Refusal::Unavailable);
        }
    }
    let res = see_other(
        state,
        &format!(
            "{}/.portcullis/login?notice=signed-out",
            state.config.server.auth_url
        ),
    );
    with_cookies(
        res,
        [
            state.cookies.clear(state.cookies.session),
            state.cookies.clear(state.cookies.pending),
        ],
    )
}

/// On an app origin: ends the sign-in this app cookie belongs to, then lets the auth
/// origin clear its own cookie and show the sign-in page.
pub fn app_logout(state: &Arc<AppState>, req: Request<Body>, ctx: Ctx) -> Response<Body> {
    if let Some(token) = cookies::get(req.headers(), state.cookies.app).and_then(SecretToken::parse)
    {
        match state.accounts.parent_of(&token) {
            Ok(Some(parent)) => {
                if let Err(e) = state.accounts.sign_out(&parent, Some(&ip_str(ctx))) {
                    tracing::error!(error = %e, "sign-out failed");
                    return refuse(state, Refusal::Unavailable);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "sign-out failed");
                return refuse(state, Refusal::Unavailable);
            }
        }
    }
    let res = web::redirect(
        StatusCode::FOUND,
        &format!("{}/.portcullis/logout", state.config.server.auth_url),
        &state.branding.page_headers,
    );
    with_cookies(res, [state.cookies.clear(state.cookies.app)])
}
