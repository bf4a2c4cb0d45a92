//! Small HTTP building blocks shared by the gate, the proxy and the pages: the one body
//! type, response constructors with the page security headers, cookies, client address.

pub mod cookies;
pub mod forwarded;
pub mod host_map;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response Portcullis sends, proxied or its own, has this body type.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Headers every page of Portcullis carries (SPEC §5). `csp` is built once at start-up
/// because its `form-action` must name every app origin: browsers apply `form-action`
/// to the redirect that follows a sign-in POST.
#[derive(Debug, Clone)]
pub struct PageHeaders {
    csp: HeaderValue,
    https: bool,
}

impl PageHeaders {
    pub fn new(form_targets: &[String], https: bool) -> Self {
        let mut csp = String::from(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        );
        for t in form_targets {
            csp.push(' ');
            csp.push_str(t);
        }
        Self {
            csp: HeaderValue::from_str(&csp)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
            https,
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if self.https {
            // RFC 6797: only ever sent over https.
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
        }
    }
}

pub fn html(status: StatusCode, body: String, page: &PageHeaders) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    page.apply(res.headers_mut());
    res
}

pub fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `303 See Other` after a form POST, `302 Found` otherwise; both make the browser GET.
pub fn redirect(status: StatusCode, location: &str, page: &PageHeaders) -> Response<Body> {
    let mut res = Response::new(empty());
    *res.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    page.apply(res.headers_mut());
    res
}

/// A plain-text response for things no person reads in a browser (e.g. errors on
/// requests that are not navigations).
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// True for a browser navigation (SPEC §2.1): GET/HEAD that accepts HTML. Anything else
/// (API calls, XHR, POST) is answered 401, never redirected.
pub fn is_navigation(method: &http::Method, headers: &HeaderMap) -> bool {
    if method != http::Method::GET && method != http::Method::HEAD {
        return false;
    }
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// Escapes text for HTML contexts (body and quoted attributes).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn navigation_needs_get_or_head_and_html() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml;q=0.9"),
        );
        assert!(is_navigation(&http::Method::GET, &h));
        assert!(is_navigation(&http::Method::HEAD, &h));
        assert!(!is_navigation(&http::Method::POST, &h));
        let mut j = HeaderMap::new();
        j.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!is_navigation(&http::Method::GET, &j));
        assert!(!is_navigation(&http::Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn page_headers_are_complete() {
        let p = PageHeaders::new(&["https://portal.example.com".into()], true);
        let mut h = HeaderMap::new();
        p.apply(&mut h);
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("form-action 'self' https://portal.example.com"));
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(h.contains_key(header::STRICT_TRANSPORT_SECURITY));
        let mut plain = HeaderMap::new();
        PageHeaders::new(&[], false).apply(&mut plain);
        assert!(!plain.contains_key(header::STRICT_TRANSPORT_SECURITY));
    }
}
