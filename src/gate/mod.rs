//! The request path. Every request goes
//! **route → reserved prefix → strip → authenticate → authorize → decorate → forward → log**,
//! each a function below, so the life of a request reads top to bottom in one place.

pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderName, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth::SecretToken;
use crate::config::AppConfig;
use crate::error::Refusal;
use crate::metrics::UpstreamError;
use crate::proxy::{headers as hop, ProxyError};
use crate::state::AppState;
use crate::web::{self, cookies, forwarded, Body};

pub use route::{Router, Site};

/// What the listener knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Handles one request from a client connection and always produces a response.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<Body> {
    // What only the access log needs, read only when it is on: these allocations (and
    // the clock read) were a measurable share of a proxied request.
    let logged = tracing::enabled!(target: "portcullis::access", tracing::Level::INFO).then(|| {
        (
            Instant::now(),
            req.method().clone(),
            req.uri().path().to_string(),
            request_host(&req),
        )
    });
    // RFC 9112 §3.2: a request naming its host twice is refused, or routing and the
    // upstream could each go by a different one.
    let host_twice = req.headers().get_all(header::HOST).iter().nth(1).is_some();
    let site = if host_twice {
        None
    } else {
        state.router.route(req.uri(), req.headers())
    };
    let app_index = site.and_then(|s| s.app);

    let res = match site {
        None if host_twice => refuse(
            &state,
            &Refusal::BadRequest(
                "This request named its host more than once, so it was not passed on.".into(),
            ),
            &req,
        ),
        // Load balancers often probe by address, with no configured Host.
        None if req.uri().path() == "/.portcullis/healthz" => crate::pages::healthz(),
        None => refuse(&state, &Refusal::NotFound, &req),
        Some(site) => {
            // A request without a body (most of them) gets the empty body, which needs no
            // allocation, instead of its boxed end-of-stream `Incoming`. The request itself
            // is boxed on its way to the upstream: each async layer it passes (dispatch,
            // forward, the proxy, the pool) keeps its argument and a local copy, so by
            // value its 240 bytes were copied a dozen times and made every layer's future
            // that much larger (37,550 -> 37,150 instructions per proxied request).
            let req = Box::new(req.map(|b| {
                if http_body::Body::is_end_stream(&b) {
                    web::empty()
                } else {
                    b.map_err(Into::into).boxed()
                }
            }));
            dispatch(&state, req, site, conn).await
        }
    };

    state.accounts.metrics.request(app_index, res.status());
    if let Some((started, method, path, host)) = logged {
        let app_id = app_index
            .and_then(|i| state.config.apps.get(i))
            .map(|a| a.id.as_str());
        log_request(&method, &host, &path, res.status(), started, app_id);
    }
    res
}

async fn dispatch(
    state: &Arc<AppState>,
    req: Box<Request<Body>>,
    site: Site,
    conn: ConnInfo,
) -> Response<Body> {
    if is_reserved(req.uri().path()) {
        // Boxed: the pages' future is large, and without the box every proxied request's
        // future would be as large — hyper and tokio move it several times before it
        // first runs (BENCHMARKS.md, "Changes that moved the figures").
        return Box::pin(crate::pages::handle(state, *req, site, conn)).await;
    }
    let Some(app) = site.app.and_then(|i| state.config.apps.get(i)) else {
        // The auth origin alone serves nothing but its pages: send people to sign in.
        return crate::pages::landing(state, &req);
    };
    let mut req = req;
    let public = route::is_plain_path(req.uri().path())
        && app.public_paths.iter().any(|p| p.matches(req.uri().path()));
    // Our cookies, read before `strip` removes them from what the upstream will see. A
    // public path needs neither.
    let (credential, held_state) = if public {
        (None, None)
    } else {
        (
            crate::pages::credential(state, &req),
            cookies::get(req.headers(), state.cookies.state).and_then(SecretToken::parse),
        )
    };
    // Before anything of ours is added: a client's `Connection` may name its own
    // hop-by-hop fields, never the identity or `X-Forwarded-*` headers we set below.
    let upgrade = hop::strip_hop_by_hop(req.headers_mut());
    let peer_trusted = forwarded::is_trusted(conn.peer.ip(), &state.config.server.trusted_proxies);
    strip(state, &mut req, peer_trusted);

    if !public {
        let identity = match crate::pages::authenticate(state, credential, app) {
            Ok(Some(identity)) => identity,
            Ok(None) => return unauthenticated(state, &req, app, held_state),
            Err(refusal) => return refuse(state, &refusal, &req),
        };
        if let Err(refusal) = authorize(&identity, app) {
            return refuse(state, &refusal, &req);
        }
        if let Err(refusal) = crate::pages::decorate(state, &mut req, &identity, app) {
            return refuse(state, &refusal, &req);
        }
    }
    forward(state, req, upgrade, app, site.app.unwrap_or_default(), conn).await
}

/// `/.portcullis/` and everything under it belongs to Portcullis on every host.
pub fn is_reserved(path: &str) -> bool {
    path == "/.portcullis" || path.starts_with("/.portcullis/")
}

/// Removes everything a client could use to impersonate someone: every header we set
/// (for any app — a header one app trusts must not leak in through another's config),
/// any `X-Portcullis-*`, and our own cookies. Runs on public paths too (SPEC §3).
pub fn strip(state: &AppState, req: &mut Request<Body>, peer_trusted: bool) {
    let headers = req.headers_mut();
    hop::remove_where(headers, |name| {
        hop::is_client_forwarding(name.as_str(), peer_trusted)
            || is_identity_header(state, name)
            // CGI-style servers (PHP, WSGI, Rack) read `X_Portcullis_User` as
            // `X-Portcullis-User`; so does any app that folds `_` into `-`.
            || (name.as_str().contains('_')
                && HeaderName::from_bytes(name.as_str().replace('_', "-").as_bytes())
                    .is_ok_and(|dashed| is_identity_header(state, &dashed)))
    });
    cookies::strip_own(headers);
}

fn is_identity_header(state: &AppState, name: &HeaderName) -> bool {
    name.as_str().starts_with("x-portcullis-") || state.identity_header_names.contains(name)
}

fn authorize(identity: &crate::pages::Identity, app: &AppConfig) -> Result<(), Refusal> {
    if identity.granted && identity.app_id == app.id {
        Ok(())
    } else {
        Err(Refusal::Forbidden {
            app: app.name.clone(),
        })
    }
}

/// How long a browser's state cookie on an app origin lasts: long enough to sign in and
/// enrol an authenticator on the way.
const STATE_COOKIE_MAX_AGE: i64 = 3600;

/// SPEC §2.1: navigations go to the sign-in page (`to_sign_in`); everything else gets
/// 401 JSON.
/// `held`: the state cookie the browser sent, read before `strip` removed it.
fn unauthenticated(
    state: &AppState,
    req: &Request<Body>,
    app: &AppConfig,
    held: Option<SecretToken>,
) -> Response<Body> {
    if web::is_navigation(req.method(), req.headers()) {
        let original = format!(
            "{}{}",
            app.url,
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        to_sign_in(state, &original, held)
    } else {
        Refusal::Unauthenticated.respond(&state.branding, false)
    }
}

/// Sends a browser on an app origin to the sign-in page for `rd` (a URL of that app),
/// with a state cookie on this origin — the one it holds if any, so two tabs signing in
/// at once do not undo each other — and the hash of it as `s`: the hand-off code it
/// brings back works only with that cookie (SPEC §2.5).
pub fn to_sign_in(state: &AppState, rd: &str, held: Option<SecretToken>) -> Response<Body> {
    let (browser, new) = match held {
        Some(t) => (t, false),
        None => match SecretToken::generate() {
            Ok(t) => (t, true),
            Err(e) => {
                tracing::error!(error = %e, "no randomness for a state cookie");
                return Refusal::Unavailable.respond(&state.branding, true);
            }
        },
    };
    let location = format!(
        "{}/.portcullis/login?rd={}&s={}",
        state.config.server.auth_url,
        percent_encoding::utf8_percent_encode(rd, percent_encoding::NON_ALPHANUMERIC),
        SecretToken::from_bytes(browser.hash()).encode()
    );
    let mut res = web::redirect(StatusCode::FOUND, &location, &state.branding.page_headers);
    if new {
        let cookie = state.cookies.set(
            state.cookies.state,
            &browser.encode(),
            Some(STATE_COOKIE_MAX_AGE),
        );
        if let Some(cookie) = cookie {
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    res
}

/// `upgrade`: the protocol the client asked to switch to, read when its hop-by-hop
/// fields were removed.
async fn forward(
    state: &AppState,
    mut req: Box<Request<Body>>,
    upgrade: Option<http::HeaderValue>,
    app: &AppConfig,
    app_index: usize,
    conn: ConnInfo,
) -> Response<Body> {
    let peer = conn.peer.ip();
    let trusted = forwarded::is_trusted(peer, &state.config.server.trusted_proxies);
    let host = host_value(&req);
    // The upstream sees the authority the request was routed and authorised by. With an
    // absolute-form target or HTTP/2's `:authority`, that is not the client's `Host`
    // (RFC 9112 §3.2.2), which could name another app served by the same upstream.
    if let (Some(_), Some(routed)) = (req.uri().authority(), &host) {
        req.headers_mut().insert(header::HOST, routed.clone());
    }
    let proto = if conn.tls { "https" } else { "http" };
    hop::set_forwarded(req.headers_mut(), peer, trusted, proto, host);
    let metrics = &state.accounts.metrics;
    let sent = Instant::now();
    match state.upstreams.forward(req, upgrade, &app.upstream).await {
        Ok(res) => {
            metrics.upstream_latency(app_index, sent.elapsed());
            res
        }
        Err(ProxyError::Timeout) => {
            metrics.upstream_error(app_index, UpstreamError::Timeout);
            tracing::warn!(app = %app.id, "upstream timed out");
            Refusal::GatewayTimeout {
                app: app.name.clone(),
            }
            .respond(&state.branding, true)
        }
        Err(ProxyError::Unreachable) => {
            metrics.upstream_error(app_index, UpstreamError::Unreachable);
            tracing::warn!(app = %app.id, "upstream unreachable");
            Refusal::BadGateway {
                app: app.name.clone(),
            }
            .respond(&state.branding, true)
        }
        Err(ProxyError::BadRequest(why)) => {
            Refusal::BadRequest(format!("{why}.")).respond(&state.branding, false)
        }
    }
}

/// A refusal as a page for people and as JSON for programs.
pub fn refuse<B>(state: &AppState, refusal: &Refusal, req: &Request<B>) -> Response<Body> {
    let wants_html = web::is_navigation(req.method(), req.headers())
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    refusal.respond(&state.branding, wants_html)
}

/// The host the client asked for, as a header value: `:authority` for HTTP/2, else `Host`.
fn host_value<B>(req: &Request<B>) -> Option<http::HeaderValue> {
    match req.uri().authority() {
        Some(a) => http::HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

fn request_host<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// One line per request. The path is logged without its query: queries under
/// `/.portcullis/` carry one-time codes and tokens, and app queries may carry anything.
fn log_request(
    method: &http::Method,
    host: &str,
    path: &str,
    status: StatusCode,
    started: Instant,
    app: Option<&str>,
) {
    tracing::info!(
        target: "portcullis::access",
        method = %method,
        host = %host,
        path = %path,
        status = status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        app = app.unwrap_or("-"),
    );
}
