//! Portcullis's own pages and endpoints under `/.portcullis/`, and the sign-in state the
//! gate asks about (is there a session? who is it?).

use std::collections::BTreeSet;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::config::AppConfig;
use crate::error::Refusal;
use crate::gate::{ConnInfo, Site};
use crate::state::AppState;
use crate::web::{self, Body};

const STYLESHEET: &str = include_str!("../../assets/portcullis.css");

/// Who a signed-in request belongs to.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub apps: BTreeSet<String>,
}

pub async fn handle(
    state: &Arc<AppState>,
    req: Request<Body>,
    site: Site,
    _conn: ConnInfo,
) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/.portcullis/healthz") => healthz(),
        (&Method::GET | &Method::HEAD, "/.portcullis/assets/portcullis.css") => stylesheet(),
        (&Method::GET | &Method::HEAD, "/.portcullis/login") if site.is_auth => {
            Refusal::Unauthenticated.respond(&state.branding, true)
        }
        _ => crate::gate::refuse(state, &Refusal::NotFound, &req),
    }
}

/// The auth origin's root and other non-reserved paths: straight to the sign-in page.
pub fn landing(state: &AppState, _req: &Request<Body>) -> Response<Body> {
    web::redirect(
        StatusCode::FOUND,
        &format!("{}/.portcullis/login", state.config.server.auth_url),
        &state.branding.page_headers,
    )
}

/// The signed-in person behind this request to `app`, if any.
pub async fn authenticate(
    _state: &AppState,
    _req: &Request<Body>,
    _app: &AppConfig,
) -> Result<Option<Identity>, Refusal> {
    Ok(None)
}

/// Adds the identity headers and the signed assertion for `app`.
pub fn decorate(
    _state: &AppState,
    _req: &mut Request<Body>,
    _identity: &Identity,
    _app: &AppConfig,
) -> Result<(), Refusal> {
    Ok(())
}

/// Cheap on purpose: load balancers call it every few seconds.
fn healthz() -> Response<Body> {
    web::json(
        StatusCode::OK,
        format!(
            "{{\"status\":\"ok\",\"version\":\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
    )
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
