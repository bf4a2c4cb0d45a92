//! Portcullis's own pages and endpoints under `/.portcullis/`, and the sign-in state the
//! gate asks about: who is behind this request, and the headers that tell the app.

pub mod form;
mod signin;

use std::net::IpAddr;
use std::sync::Arc;

use askama::Template;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::accounts::cache::SignedIn;
use crate::auth::SecretToken;
use crate::config::AppConfig;
use crate::error::Refusal;
use crate::gate::{ConnInfo, Site};
use crate::identity::AssertionClaims;
use crate::state::AppState;
use crate::web::{self, cookies, forwarded, Body};

const STYLESHEET: &str = include_str!("../../assets/portcullis.css");

/// Who a signed-in request belongs to.
pub type Identity = Arc<SignedIn>;

/// What a page handler knows about the request besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub site: Site,
    pub ip: IpAddr,
}

pub async fn handle(
    state: &Arc<AppState>,
    req: Request<Body>,
    site: Site,
    conn: ConnInfo,
) -> Response<Body> {
    let ctx = Ctx {
        site,
        ip: forwarded::client_ip(
            conn.peer.ip(),
            req.headers(),
            &state.config.server.trusted_proxies,
        ),
    };
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = *req.method() == Method::POST;
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/.portcullis/healthz" if get => healthz(),
        "/.portcullis/jwks.json" if get => jwks(state),
        "/.portcullis/assets/portcullis.css" if get => stylesheet(),
        "/.portcullis/callback" if get && site.app.is_some() => signin::callback(state, req, ctx),
        "/.portcullis/start" if get && site.app.is_some() => signin::start(state, req, ctx),
        "/.portcullis/logout" if (get || post) && !site.is_auth => {
            signin::app_logout(state, req, ctx)
        }
        _ if site.is_auth => match path.as_str() {
            "/.portcullis/login" if get => signin::login_page(state, req, ctx),
            "/.portcullis/login" if post => signin::login_post(state, req, ctx).await,
            "/.portcullis/enroll" if get => signin::enroll_page(state, req, ctx),
            "/.portcullis/enroll" if post => signin::enroll_post(state, req, ctx).await,
            "/.portcullis/code" if get => signin::code_page(state, req, ctx),
            "/.portcullis/code" if post => signin::code_post(state, req, ctx).await,
            "/.portcullis/activate" if get => signin::activate_page(state, req, ctx),
            "/.portcullis/activate" if post => signin::activate_post(state, req, ctx).await,
            "/.portcullis/logout" if get || post => signin::logout(state, req, ctx).await,
            _ => crate::gate::refuse(state, &Refusal::NotFound, &req),
        },
        _ => crate::gate::refuse(state, &Refusal::NotFound, &req),
    }
}

/// The auth origin's root and other non-reserved paths there: the sign-in page.
pub fn landing(state: &AppState, _req: &Request<Body>) -> Response<Body> {
    web::redirect(
        StatusCode::FOUND,
        &format!("{}/.portcullis/login", state.config.server.auth_url),
        &state.branding.page_headers,
    )
}

/// The app cookie's token, if the request carries a well-formed one.
pub fn credential(state: &AppState, req: &Request<Body>) -> Option<SecretToken> {
    cookies::get(req.headers(), state.cookies.app).and_then(SecretToken::parse)
}

/// The signed-in person behind an app cookie's token. A missing, malformed or dead
/// cookie is simply "not signed in".
pub fn authenticate(
    state: &AppState,
    token: Option<SecretToken>,
    app: &AppConfig,
) -> Result<Option<Identity>, Refusal> {
    let Some(token) = token else {
        return Ok(None);
    };
    state.accounts.app_session(&token, &app.id).map_err(|e| {
        tracing::error!(error = %e, "session lookup failed");
        Refusal::Unavailable
    })
}

/// Adds the identity headers and the signed assertion for `app` (SPEC §3). Values are
/// sent as UTF-8 bytes; names and e-mails are ASCII by validation.
pub fn decorate(
    state: &AppState,
    req: &mut Request<Body>,
    identity: &Identity,
    app: &AppConfig,
) -> Result<(), Refusal> {
    let assertion = assertion(state, identity, app)?;
    let headers = req.headers_mut();
    let [user, email, name] = &identity.header_values;
    headers.insert(app.headers.user.clone(), user.clone());
    headers.insert(app.headers.email.clone(), email.clone());
    headers.insert(app.headers.name.clone(), name.clone());
    headers.insert(app.headers.assertion.clone(), assertion);
    Ok(())
}

/// The signed assertion for this sign-in and app. Signing costs tens of microseconds,
/// so one is reused until half its lifetime has passed; the app then always receives
/// an assertion with at least half its lifetime left.
fn assertion(
    state: &AppState,
    identity: &Identity,
    app: &AppConfig,
) -> Result<HeaderValue, Refusal> {
    let now = state.accounts.clock.now();
    let ttl = state.config.server.assertion_ttl.as_secs() as i64;
    if let Ok(cached) = identity.assertion.lock() {
        if let Some((value, iat)) = cached.as_ref() {
            if now >= *iat && now - iat < ttl / 2 {
                return Ok(value.clone());
            }
        }
    }
    let Some([username, email, name]) = identity.person() else {
        return Err(Refusal::Unavailable);
    };
    let claims = AssertionClaims {
        iss: state.config.server.auth_url.to_string(),
        aud: app.id.clone(),
        sub: identity.user_id.to_string(),
        preferred_username: username.to_string(),
        email: email.to_string(),
        name: name.to_string(),
        iat: now,
        exp: now + ttl,
        auth_time: identity.auth_time,
        amr: identity.amr.clone(),
        sid: identity.sid.clone(),
    };
    let signed = state.keys.current().sign_assertion(&claims).map_err(|e| {
        tracing::error!(error = %e, "could not sign the identity assertion");
        Refusal::Unavailable
    })?;
    let value = HeaderValue::from_str(&signed).map_err(|_| Refusal::Unavailable)?;
    if let Ok(mut cached) = identity.assertion.lock() {
        *cached = Some((value.clone(), now));
    }
    Ok(value)
}

/// Cheap on purpose: load balancers call it every few seconds.
pub fn healthz() -> Response<Body> {
    web::json(
        StatusCode::OK,
        format!(
            "{{\"status\":\"ok\",\"version\":\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
    )
}

fn jwks(state: &AppState) -> Response<Body> {
    let mut res = Response::new(web::full(state.keys.current().jwks_bytes()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    // Short, and well inside the time a rotated key is published before it signs
    // (`identity::PROMOTE_AFTER_SECS`), so verifiers have it when it first appears.
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    res
}

fn stylesheet() -> Response<Body> {
    let mut res = Response::new(web::full(STYLESHEET));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// Renders a page with the security headers, or a plain 500 if the template fails.
pub(crate) fn render(state: &AppState, status: StatusCode, page: &impl Template) -> Response<Body> {
    match page.render() {
        Ok(html) => web::html(status, html, &state.branding.page_headers),
        Err(e) => {
            tracing::error!(error = %e, "page template failed");
            web::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong. Try again.",
            )
        }
    }
}
