//! A sample backend for `portcullis demo`: a tiny hyper service that shows the identity
//! Portcullis sent it and checks the signed assertion the way a real backend should.
//!
//! How a backend trusts Portcullis, in three steps (SPEC §3):
//! 1. fetch the public keys from `/.portcullis/jwks.json` on its own origin (cached briefly,
//!    fetched again when an assertion names a key it does not know — a key rotation);
//! 2. verify `X-Portcullis-Assertion`: ES256, `iss` = the auth origin, `aud` = its own app
//!    id, not expired;
//! 3. take who the person is from the verified claims. The plain `X-Portcullis-User`
//!    headers are for apps that cannot verify a JWT, and are only safe when nothing but
//!    Portcullis can reach the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::clock::{Clock, UnixSeconds};
use crate::config::{Config, HeaderNames};
use crate::identity::{verify_with_jwks, AssertionClaims, IdentityError};

/// How long a fetched JWKS is used before it is fetched again. Portcullis keeps a retired
/// key in the JWKS until its assertions have expired, so a minute is safe.
const JWKS_TTL: Duration = Duration::from_secs(60);
/// A JWKS is not fetched again for an unknown key more often than this, so forged tokens
/// naming random keys cannot make the app hammer the proxy.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// Why the JWKS could not be fetched. Shown on the sample page.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the proxy at {addr} could not be reached ({reason}); is it running?")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the JWKS request failed: {0}")]
    Http(String),
    #[error("the proxy answered the JWKS request with {0}")]
    Status(StatusCode),
    #[error("the proxy did not answer the JWKS request within {} seconds", JWKS_TIMEOUT.as_secs())]
    TimedOut,
}

/// One sample app, as configured in the demo's `[[app]]` table.
#[derive(Debug, Clone)]
pub struct SampleApp {
    /// The app id: the assertion's expected `aud`.
    pub id: String,
    pub name: String,
    /// The auth origin: the assertion's expected `iss`.
    pub issuer: String,
    /// The app's public authority (`portal.localhost:8080`), sent as `Host` when fetching
    /// the JWKS, as a backend reaching the proxy by its public name would.
    pub public_host: String,
    /// Where the proxy listens.
    pub proxy: SocketAddr,
    /// The identity header names configured for this app.
    pub headers: HeaderNames,
    /// The other apps (name, public URL), linked from the page.
    pub others: Vec<(String, String)>,
}

impl SampleApp {
    /// The sample app for the `[[app]]` with this id; `None` when there is none.
    pub fn from_config(config: &Config, id: &str, proxy: SocketAddr) -> Option<Self> {
        let app = config.app(id)?;
        Some(Self {
            id: app.id.clone(),
            name: app.name.clone(),
            issuer: config.server.auth_url.to_string(),
            public_host: app.url.authority(),
            proxy,
            headers: app.headers.clone(),
            others: config
                .apps
                .iter()
                .filter(|a| a.id != app.id)
                .map(|a| (a.name.clone(), format!("{}/", a.url)))
                .collect(),
        })
    }
}

/// The outcome of checking the assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Verified(AssertionClaims),
    NotVerified(String),
}

/// What the app received, taken from the request headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub user: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub assertion: Option<String>,
    /// The path and query asked for.
    pub path: String,
}

impl Received {
    pub fn from_request(headers: &HeaderMap, names: &HeaderNames, path: &str) -> Self {
        // Portcullis sends UTF-8 bytes; anything else is shown, not trusted.
        let get = |n: &http::HeaderName| {
            headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Self {
            user: get(&names.user),
            email: get(&names.email),
            name: get(&names.name),
            assertion: get(&names.assertion),
            path: path.to_string(),
        }
    }
}

/// Checks the assertion against a JWKS (or the reason there is none). Pure, for tests.
pub fn verdict(
    app: &SampleApp,
    assertion: Option<&str>,
    jwks: Result<&str, &JwksError>,
    now: UnixSeconds,
) -> Verdict {
    let Some(token) = assertion else {
        return Verdict::NotVerified(format!(
            "the request carried no {} header",
            app.headers.assertion
        ));
    };
    let jwks = match jwks {
        Ok(j) => j,
        Err(e) => return Verdict::NotVerified(e.to_string()),
    };
    match verify_with_jwks(token, jwks, &app.issuer, &app.id, now) {
        Ok(claims) => Verdict::Verified(claims),
        Err(e) => Verdict::NotVerified(e.to_string()),
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
main{max-width:40rem;margin:2rem auto;padding:1.5rem 2rem;background:#fff;border-radius:8px;\
box-shadow:0 1px 3px rgba(0,0,0,.12)}.tag{color:#667;font-size:.85rem;margin:0}\
h1{margin:.2rem 0 1rem}h2{font-size:1rem;margin-top:1.5rem}\
.ok,.bad{padding:.6rem .8rem;border-radius:6px;font-weight:600}\
.ok{background:#e3f6e8;color:#135c2a}.bad{background:#fde8e8;color:#8a1c1c}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;\
border-bottom:1px solid #e4e6ea;vertical-align:top}th{font-weight:500;color:#556;width:40%}\
td{word-break:break-all}.path{margin-top:1rem}nav{margin-top:1.5rem;display:flex;gap:1.2rem}";

/// The sample page: the app's name, the identity headers received, and whether the
/// assertion verified. Everything shown is escaped.
pub fn render_page(
    app: &SampleApp,
    received: &Received,
    verdict: &Verdict,
    now: UnixSeconds,
) -> String {
    let e = |s: &str| escape(s);
    let shown = |v: &Option<String>| match v {
        Some(v) => e(v),
        None => "<em>(not sent)</em>".to_string(),
    };
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{name}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n\
         <p class=\"tag\">Sample app behind Portcullis</p>\n<h1>{name}</h1>\n",
        name = e(&app.name),
    );
    match verdict {
        Verdict::Verified(c) => html.push_str(&format!(
            "<p class=\"ok\" id=\"verdict\">Signature verified</p>\n\
             <p>Signed in as <strong>{}</strong> ({}).</p>\n",
            e(&c.name),
            e(&c.preferred_username)
        )),
        Verdict::NotVerified(why) => html.push_str(&format!(
            "<p class=\"bad\" id=\"verdict\">Signature NOT verified: {}</p>\n",
            e(why)
        )),
    }
    html.push_str("<h2>Identity headers received</h2>\n<table>\n");
    for (header, value) in [
        (&app.headers.user, &received.user),
        (&app.headers.email, &received.email),
        (&app.headers.name, &received.name),
    ] {
        html.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            e(header.as_str()),
            shown(value)
        ));
    }
    html.push_str("</table>\n");
    if let Verdict::Verified(c) = verdict {
        html.push_str(&format!(
            "<h2>Verified claims of {}</h2>\n<table>\n",
            e(app.headers.assertion.as_str())
        ));
        let rows = [
            ("sub (stable user id)", c.sub.clone()),
            ("preferred_username", c.preferred_username.clone()),
            ("email", c.email.clone()),
            ("name", c.name.clone()),
            ("iss", c.iss.clone()),
            ("aud", c.aud.clone()),
            ("amr", c.amr.join(", ")),
            ("expires in", format!("{} s", c.exp - now)),
        ];
        for (k, v) in rows {
            html.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>\n", e(k), e(&v)));
        }
        html.push_str("</table>\n");
    }
    html.push_str(&format!(
        "<p class=\"tag path\">Requested: {}</p>\n<nav>\n",
        e(&received.path)
    ));
    for (name, url) in &app.others {
        html.push_str(&format!("<a href=\"{}\">Open {}</a>\n", e(url), e(name)));
    }
    html.push_str(
        "<a href=\"/.portcullis/logout\">Sign out</a>\n</nav>\n</main>\n</body>\n</html>\n",
    );
    html
}

/// The last JWKS fetched and when.
#[derive(Default)]
struct JwksCache {
    current: Option<(Instant, String)>,
}

struct Shared {
    app: SampleApp,
    clock: Arc<dyn Clock>,
    jwks: Mutex<JwksCache>,
}

impl Shared {
    /// The cached JWKS; fetched again when older than the TTL, or when `refresh` asks for
    /// it and the cached one is older than the minimum refetch interval.
    async fn jwks(&self, refresh: bool) -> Result<String, JwksError> {
        let mut cache = self.jwks.lock().await;
        if let Some((at, body)) = &cache.current {
            let age = at.elapsed();
            if age < JWKS_TTL && (!refresh || age < JWKS_MIN_REFETCH) {
                return Ok(body.clone());
            }
        }
        let body = fetch_jwks(self.app.proxy, &self.app.public_host).await?;
        cache.current = Some((Instant::now(), body.clone()));
        Ok(body)
    }

    async fn check(&self, token: Option<&str>) -> Verdict {
        let now = self.clock.now();
        let Some(token) = token else {
            return verdict(&self.app, None, Ok(""), now);
        };
        let mut jwks = self.jwks(false).await;
        if let Ok(j) = &jwks {
            let first = verify_with_jwks(token, j, &self.app.issuer, &self.app.id, now);
            if let Err(IdentityError::UnknownKey) = first {
                // A key the cached JWKS does not know: the proxy may have rotated its
                // signing key. Fetch the JWKS again (at most every few seconds).
                jwks = self.jwks(true).await;
            }
        }
        verdict(&self.app, Some(token), jwks.as_deref(), now)
    }
}

/// GETs `/.portcullis/jwks.json` from the proxy with the app's own `Host`.
async fn fetch_jwks(proxy: SocketAddr, host: &str) -> Result<String, JwksError> {
    let attempt = async {
        let stream = TcpStream::connect(proxy)
            .await
            .map_err(|e| JwksError::Connect {
                addr: proxy,
                reason: e.to_string(),
            })?;
        let http = |e: hyper::Error| JwksError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let req = Request::get("/.portcullis/jwks.json")
            .header(header::HOST, host)
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| JwksError::Http(e.to_string()))?;
        let res = sender.send_request(req).await.map_err(http)?;
        if res.status() != StatusCode::OK {
            return Err(JwksError::Status(res.status()));
        }
        let body = Limited::new(res.into_body(), JWKS_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| JwksError::Http(e.to_string()))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(JWKS_TIMEOUT, attempt)
        .await
        .map_err(|_| JwksError::TimedOut)?
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let received = Received::from_request(req.headers(), &shared.app.headers, path);
    let verdict = shared.check(received.assertion.as_deref()).await;
    let html = render_page(&shared.app, &received, &verdict, shared.clock.now());
    let mut res = Response::new(Full::new(Bytes::from(html)));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page shows who is signed in: never cache it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A real backend refuses a request whose assertion does not verify; the sample
    // still shows why.
    if matches!(verdict, Verdict::NotVerified(_)) {
        *res.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(res)
}

/// A running sample app; stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on `listener` (HTTP/1.1) until the returned handle is dropped.
pub fn spawn(
    listener: TcpListener,
    app: SampleApp,
    clock: Arc<dyn Clock>,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        app,
        clock,
        jwks: Mutex::new(JwksCache::default()),
    });
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sample app: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            // Finished connections are reaped as new ones arrive; all stop with the app.
            while connections.try_join_next().is_some() {}
            connections.spawn(async move {
                let svc = service_fn(move |req| handle(shared.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Running { addr, task })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::identity::KeyRing;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const NOW: UnixSeconds = 1_700_000_000;
    const ISS: &str = "http://login.localhost:8080";

    fn app() -> SampleApp {
        let text = crate::demo::config_text(
            8080,
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        );
        let config = Config::parse(&text, Path::new("/tmp")).unwrap();
        SampleApp::from_config(&config, "portal", "127.0.0.1:8080".parse().unwrap()).unwrap()
    }

    fn claims(aud: &str) -> AssertionClaims {
        AssertionClaims {
            iss: ISS.into(),
            aud: aud.into(),
            sub: "0123456789abcdef0123456789abcdef".into(),
            preferred_username: "demo".into(),
            email: "demo@example.com".into(),
            name: "Demo Partner".into(),
            iat: NOW,
            exp: NOW + 60,
            auth_time: NOW - 5,
            amr: vec!["pwd".into(), "otp".into()],
            sid: "s1".into(),
        }
    }

    fn keys() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        (dir, ring)
    }

    fn received(token: &str) -> Received {
        Received {
            user: Some("demo".into()),
            email: Some("demo@example.com".into()),
            name: Some("Demo Partner".into()),
            assertion: Some(token.into()),
            path: "/".into(),
        }
    }

    fn page_for(token: &str, jwks: &str, now: UnixSeconds) -> String {
        let app = app();
        let r = received(token);
        let v = verdict(&app, r.assertion.as_deref(), Ok(jwks), now);
        render_page(&app, &r, &v, now)
    }

    #[test]
    fn genuine_assertion_shows_signature_verified_and_the_claims() {
        let (_d, ring) = keys();
        let token = ring.sign_assertion(&claims("portal")).unwrap();
        let page = page_for(&token, &ring.jwks_json(), NOW + 1);
        assert!(page.contains("<h1>Partner Portal</h1>"), "{page}");
        assert!(page.contains(">Signature verified</p>"), "{page}");
        assert!(!page.contains("NOT verified"));
        assert!(page.contains("Signed in as <strong>Demo Partner</strong> (demo)"));
        assert!(page.contains("<tr><th>x-portcullis-user</th><td>demo</td></tr>"));
        assert!(page.contains("<td>demo@example.com</td>"));
        assert!(page.contains("<td>pwd, otp</td>"));
        assert!(page.contains("<td>59 s</td>"));
    }

    #[test]
    fn assertion_with_a_changed_payload_is_not_verified() {
        let (_d, ring) = keys();
        let token = ring.sign_assertion(&claims("portal")).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged_claims = claims("portal");
        forged_claims.preferred_username = "admin".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{}.{}.{}", parts[0], payload, parts[2]);
        let page = page_for(&forged, &ring.jwks_json(), NOW + 1);
        assert!(
            page.contains("Signature NOT verified: The assertion&#39;s signature is not valid."),
            "{page}"
        );
        assert!(!page.contains(">Signature verified<"));
        assert!(!page.contains("Signed in as"));
    }

    #[test]
    fn assertion_signed_by_a_key_not_in_the_jwks_is_not_verified() {
        let (_d, ring) = keys();
        let (_d2, attacker) = keys();
        let forged = attacker.sign_assertion(&claims("portal")).unwrap();
        let page = page_for(&forged, &ring.jwks_json(), NOW + 1);
        assert!(
            page.contains("Signature NOT verified: The assertion names a signing key"),
            "{page}"
        );
    }

    #[test]
    fn assertion_for_the_other_app_is_not_verified() {
        let (_d, ring) = keys();
        let token = ring.sign_assertion(&claims("analytics")).unwrap();
        let page = page_for(&token, &ring.jwks_json(), NOW + 1);
        assert!(
            page.contains(
                "Signature NOT verified: The assertion was made for another application."
            ),
            "{page}"
        );
    }

    #[test]
    fn expired_assertion_is_not_verified() {
        let (_d, ring) = keys();
        let token = ring.sign_assertion(&claims("portal")).unwrap();
        let page = page_for(&token, &ring.jwks_json(), NOW + 60);
        assert!(
            page.contains("Signature NOT verified: The assertion has expired"),
            "{page}"
        );
    }

    #[test]
    fn garbage_assertion_is_not_verified() {
        let (_d, ring) = keys();
        for token in [
            "",
            "x",
            "a.b.c",
            "eyJhbGciOiJub25lIn0.e30.",
            &"A".repeat(10_000),
        ] {
            let page = page_for(token, &ring.jwks_json(), NOW);
            assert!(page.contains("Signature NOT verified: "), "{token}: {page}");
        }
    }

    #[test]
    fn missing_assertion_or_jwks_says_why() {
        let app = app();
        let r = Received::default();
        let v = verdict(&app, None, Ok("{}"), NOW);
        assert_eq!(
            v,
            Verdict::NotVerified("the request carried no x-portcullis-assertion header".into())
        );
        let page = render_page(&app, &r, &v, NOW);
        assert!(page.contains("<td><em>(not sent)</em></td>"));
        let v = verdict(&app, Some("a.b.c"), Err(&JwksError::TimedOut), NOW);
        let Verdict::NotVerified(why) = v else {
            panic!("verified without a JWKS")
        };
        assert!(why.contains("did not answer the JWKS request"), "{why}");
    }

    #[test]
    fn everything_shown_is_html_escaped() {
        let app = app();
        let r = Received {
            user: Some("<script>alert(1)</script>".into()),
            email: Some("a\"onmouseover=\"x@example.com".into()),
            name: Some("Tom & 'Jerry'".into()),
            assertion: None,
            path: "/<img src=x onerror=alert(1)>?q=\"".into(),
        };
        let v = Verdict::NotVerified("<b>bad</b>".into());
        let page = render_page(&app, &r, &v, NOW);
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<img"));
        assert!(!page.contains("<b>bad"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("a&quot;onmouseover=&quot;x@example.com"));
        assert!(page.contains("Tom &amp; &#39;Jerry&#39;"));
        assert!(page.contains("&lt;b&gt;bad&lt;/b&gt;"));
        assert_eq!(escape("&<>\"'é"), "&amp;&lt;&gt;&quot;&#39;é");
    }

    #[test]
    fn page_links_to_the_other_app_and_to_sign_out() {
        let app = app();
        let page = render_page(
            &app,
            &Received::default(),
            &Verdict::NotVerified("x".into()),
            NOW,
        );
        assert!(page
            .contains("<a href=\"http://analytics.localhost:8080/\">Open Partner Analytics</a>"));
        assert!(page.contains("<a href=\"/.portcullis/logout\">Sign out</a>"));
        assert!(!page.contains("Open Partner Portal"));
    }

    #[test]
    fn received_reads_the_configured_headers_and_tolerates_bad_bytes() {
        let app = app();
        let mut h = HeaderMap::new();
        h.insert("x-portcullis-user", HeaderValue::from_static("demo"));
        h.insert(
            "x-portcullis-name",
            HeaderValue::from_bytes("Zoë".as_bytes()).unwrap(),
        );
        h.insert(
            "x-portcullis-email",
            HeaderValue::from_bytes(b"a\xffb").unwrap(),
        );
        let r = Received::from_request(&h, &app.headers, "/x?y=1");
        assert_eq!(r.user.as_deref(), Some("demo"));
        assert_eq!(r.name.as_deref(), Some("Zoë"));
        assert_eq!(r.email.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(r.assertion, None);
        assert_eq!(r.path, "/x?y=1");
    }

    /// A stand-in for the proxy's JWKS endpoint: serves whatever `jwks` holds and counts
    /// requests, remembering the `Host` they named.
    async fn jwks_server(
        jwks: Arc<std::sync::Mutex<String>>,
        hits: Arc<AtomicUsize>,
        hosts: Arc<std::sync::Mutex<Vec<String>>>,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (jwks, hits, hosts) = (jwks.clone(), hits.clone(), hosts.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let host = req.headers().get(header::HOST).unwrap();
                        hosts
                            .lock()
                            .unwrap()
                            .push(host.to_str().unwrap().to_string());
                        assert_eq!(req.uri().path(), "/.portcullis/jwks.json");
                        let body = jwks.lock().unwrap().clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn get_page(addr: SocketAddr, token: &str) -> (StatusCode, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/reports")
            .header(header::HOST, "portal.localhost:8080")
            .header("x-portcullis-user", "demo")
            .header("x-portcullis-assertion", token)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn sample_app_fetches_the_jwks_once_and_again_after_a_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), NOW).unwrap();
        let jwks = Arc::new(std::sync::Mutex::new(ring.jwks_json()));
        let hits = Arc::new(AtomicUsize::new(0));
        let hosts = Arc::default();
        let proxy = jwks_server(jwks.clone(), hits.clone(), Arc::clone(&hosts)).await;
        let mut sample = app();
        sample.proxy = proxy;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let clock = ManualClock::new(NOW + 1);
        let running = spawn(listener, sample, Arc::new(clock)).unwrap();

        let token = ring.sign_assertion(&claims("portal")).unwrap();
        for _ in 0..3 {
            let (status, page) = get_page(running.addr, &token).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            assert!(page.contains(">Signature verified<"), "{page}");
            assert!(page.contains("Requested: /reports"));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "the JWKS is cached");
        assert_eq!(*hosts.lock().unwrap(), vec!["portal.localhost:8080"]);

        // The proxy rotates its key: the new kid is unknown to the cached JWKS. After the
        // minimum refetch interval the app fetches again and verifies.
        let rotated = KeyRing::rotate(dir.path(), NOW + 2).unwrap();
        *jwks.lock().unwrap() = rotated.jwks_json();
        let token = rotated.sign_assertion(&claims("portal")).unwrap();
        tokio::time::sleep(JWKS_MIN_REFETCH + Duration::from_millis(100)).await;
        let (status, page) = get_page(running.addr, &token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains(">Signature verified<"), "{page}");
        assert_eq!(hits.load(Ordering::SeqCst), 2);

        // Forged tokens naming unknown keys do not make it fetch again and again.
        let (_d, attacker) = keys();
        let forged = attacker.sign_assertion(&claims("portal")).unwrap();
        for _ in 0..3 {
            let (status, page) = get_page(running.addr, &forged).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(page.contains("Signature NOT verified"), "{page}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn sample_app_says_so_when_the_proxy_is_down() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = closed.local_addr().unwrap();
        drop(closed);
        let mut sample = app();
        sample.proxy = proxy;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = spawn(listener, sample, Arc::new(ManualClock::new(NOW))).unwrap();
        let (status, page) = get_page(running.addr, "a.b.c").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            page.contains("Signature NOT verified: the proxy at"),
            "{page}"
        );
    }
}
