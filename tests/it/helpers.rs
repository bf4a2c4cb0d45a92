//! Test harness: the real server on an ephemeral port, small in-test upstreams, and a
//! browser-like client (cookie jar per host, forms, no automatic redirects).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::accounts::Accounts;
use portcullis::clock::{Clock, ManualClock, SystemClock};
use portcullis::config::Config;
use portcullis::server::Application;
use portcullis::state::AppState;

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

// ---------------------------------------------------------------- upstream

/// A small backend: `/echo` answers with the request it saw as JSON; `/stream` sends
/// chunks with pauses; `/slow` waits; `/bytes/N` sends N bytes; `/upload` counts and
/// checksums what it received; `/ws` echoes bytes after a 101 upgrade.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Like a process that dies: the listener and every open connection go.
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

pub async fn spawn_upstream(name: &'static str) -> Upstream {
    spawn_upstream_on(name, "127.0.0.1:0".parse().unwrap()).await
}

/// An upstream on a given address, e.g. to restart one where it was.
pub async fn spawn_upstream_on(name: &'static str, addr: SocketAddr) -> Upstream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let tracked = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = tokio::spawn(async move {
                let svc = service_fn(move |req| upstream_handler(name, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
            tracked.lock().unwrap().push(conn.abort_handle());
        }
    });
    Upstream {
        addr,
        task,
        connections,
    }
}

/// Pseudo-random but reproducible content, so a transfer can be checked byte for byte
/// without holding it in memory.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

async fn upstream_handler(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let res = if path == "/stream" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        tokio::spawn(async move {
            for i in 0..3 {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!("chunk{i};")))))
                    .await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        let stream = tokio_stream_from(rx);
        Response::new(StreamBody::new(stream).boxed())
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        Response::new(full("slow done"))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < total {
                let len = (total - sent).min(64 * 1024);
                let chunk: Vec<u8> = (sent..sent + len).map(pattern_byte).collect();
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    return;
                }
                sent += len;
            }
        });
        let mut res = Response::new(StreamBody::new(tokio_stream_from(rx)).boxed());
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        res
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut count = 0u64;
        let mut mismatches = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                for b in data.iter() {
                    if *b != pattern_byte(count) {
                        mismatches += 1;
                    }
                    count += 1;
                }
            }
        }
        Response::new(full(format!("{count} {mismatches}")))
    } else if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut res = Response::new(full(""));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for cookie in req.headers().get_all("x-test-set-cookie") {
            res.headers_mut().append(header::SET_COOKIE, cookie.clone());
        }
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        res
    } else {
        let headers: HashMap<String, Vec<String>> = req
            .headers()
            .keys()
            .map(|k| {
                (
                    k.as_str().to_string(),
                    req.headers()
                        .get_all(k)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect(),
                )
            })
            .collect();
        let body = serde_json::json!({
            "upstream": name,
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "headers": headers,
        });
        let mut res = Response::new(full(body.to_string()));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The cookies a test asks the app to set, one `Set-Cookie` each.
        for cookie in req.headers().get_all("x-test-set-cookie") {
            res.headers_mut().append(header::SET_COOKIE, cookie.clone());
        }
        res.headers_mut()
            .insert("x-upstream-hop", HeaderValue::from_static("secret"));
        // Hop-by-hop by its name alone: never relayed either.
        res.headers_mut()
            .insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        res.headers_mut().insert(
            header::CONNECTION,
            HeaderValue::from_static("x-upstream-hop"),
        );
        res
    };
    Ok(res)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------- server

#[allow(dead_code)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config: Config,
    /// The server's clock: tests move it to reach the next TOTP step, expiry or unlock.
    pub clock: ManualClock,
    pub accounts: Arc<Accounts>,
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub fn url(&self, host: &str) -> String {
        format!("http://{host}.localhost:{}", self.port)
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The standard two-app config on `port`; `extra` is appended inside `[server]`, and
/// `tail` after everything (more sections).
pub fn config_text(
    port: u16,
    portal: SocketAddr,
    analytics: SocketAddr,
    extra: &str,
    tail: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
auth_url = "http://login.localhost:{port}"
data_dir = "data"
{extra}

[password]
argon2_memory_kib = 64
argon2_iterations = 1

[[app]]
id = "portal"
name = "Partner Portal"
url = "http://portal.localhost:{port}"
upstream = "http://{portal}"
public_paths = ["/healthz", "/static/*", "/echo", "/stream", "/slow/*", "/bytes/*", "/upload", "/ws"]

[[app]]
id = "analytics"
name = "Partner Analytics"
url = "http://analytics.localhost:{port}"
upstream = "http://{analytics}"
public_paths = ["/echo", "/slow/*"]
{tail}
"#
    )
}

#[allow(dead_code)]
pub struct Setup {
    pub server: TestServer,
    pub portal: Upstream,
    pub analytics: Upstream,
}

/// Two upstreams and the server in front of them.
pub async fn setup_with(extra: &str, tail: &str) -> Setup {
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let server =
        start_server(|port| config_text(port, portal.addr, analytics.addr, extra, tail)).await;
    Setup {
        server,
        portal,
        analytics,
    }
}

pub async fn setup() -> Setup {
    setup_with("", "").await
}

pub async fn start_server(make_config: impl FnOnce(u16) -> String) -> TestServer {
    start_server_with(make_config, |_| {}).await
}

/// Like `start_server`, with a chance to change the account service before it serves
/// (e.g. to put a failing store in front of the real one).
pub async fn start_server_with(
    make_config: impl FnOnce(u16) -> String,
    adjust: impl FnOnce(&mut Accounts),
) -> TestServer {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = make_config(addr.port());
    std::fs::write(dir.path().join("config.toml"), &text).unwrap();
    let config = Config::load(&dir.path().join("config.toml")).unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let mut accounts = Accounts::open(&config, Arc::new(clock.clone())).unwrap();
    adjust(&mut accounts);
    let accounts = Arc::new(accounts);
    let state = Arc::new(AppState::new(config.clone(), accounts.clone()).unwrap());
    let app = Application::with_listener(state, listener).await.unwrap();
    let metrics_addr = app.metrics_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run(async {
            let _ = stop_rx.await;
        })
        .await;
    });
    TestServer {
        addr,
        port: addr.port(),
        dir,
        config,
        clock,
        accounts,
        metrics_addr,
        stop: Some(stop_tx),
        task: Some(task),
    }
}

pub fn write_config_file(dir: &std::path::Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------- client

/// A browser-like client: every host resolves to the server, cookies are kept per host,
/// redirects are returned, not followed (tests follow them on purpose).
#[derive(Clone)]
pub struct Browser {
    server: SocketAddr,
    jar: Arc<Mutex<HashMap<String, HashMap<String, String>>>>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> Option<String> {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Browser {
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            jar: Arc::default(),
        }
    }

    #[allow(dead_code)]
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar
            .lock()
            .unwrap()
            .get(host)
            .and_then(|c| c.get(name).cloned())
    }

    #[allow(dead_code)]
    pub fn set_cookie(&self, host: &str, name: &str, value: &str) {
        self.jar
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .insert(name.to_string(), value.to_string());
    }

    pub async fn get(&self, url: &str) -> Page {
        self.request(Method::GET, url, &[("accept", "text/html")], None)
            .await
    }

    pub async fn get_json(&self, url: &str) -> Page {
        self.request(Method::GET, url, &[("accept", "application/json")], None)
            .await
    }

    /// Sends a form as a browser does: urlencoded, with `Origin` of the page's host.
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let origin = origin_of(url);
        self.request(
            Method::POST,
            url,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &origin),
                ("accept", "text/html"),
            ],
            Some(Bytes::from(body)),
        )
        .await
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Page {
        let res = self
            .send(method, url, headers, full(body.unwrap_or_default()))
            .await;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Sends and returns the streaming response (for tests that read it incrementally).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Response<Incoming> {
        let uri: http::Uri = url.parse().unwrap();
        let host = uri.host().unwrap().to_string();
        let authority = uri.authority().unwrap().to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(header::HOST, authority)
            .body(body)
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let cookie_line = {
            let jar = self.jar.lock().unwrap();
            jar.get(&host).map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        };
        if let Some(line) = cookie_line.filter(|l| !l.is_empty()) {
            req.headers_mut()
                .append(header::COOKIE, HeaderValue::from_str(&line).unwrap());
        }
        let stream = tokio::net::TcpStream::connect(self.server).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let res = sender.send_request(req).await.unwrap();
        self.store_cookies(&host, res.headers());
        res
    }

    fn store_cookies(&self, host: &str, headers: &HeaderMap) {
        let mut jar = self.jar.lock().unwrap();
        for v in headers.get_all(header::SET_COOKIE) {
            let s = v.to_str().unwrap();
            let first = s.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            let expired = s
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("Max-Age=0"));
            let cookies = jar.entry(host.to_string()).or_default();
            if expired || value.is_empty() {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }
}

pub fn origin_of(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap();
    format!(
        "{}://{}",
        uri.scheme_str().unwrap(),
        uri.authority().unwrap()
    )
}

pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}

pub fn body_from(b: impl Into<Bytes>) -> TestBody {
    full(b)
}

// ---------------------------------------------------------------- sign-in helpers

/// Creates an account as an operator would and returns its activation URL.
pub async fn invite(
    server: &TestServer,
    name: &str,
    password: Option<&str>,
    apps: &[&str],
) -> String {
    use portcullis::auth::{Password, SecretToken};
    use portcullis::store::{Invitation, NewUser, UserStatus};
    let accounts = &server.accounts;
    let now = server.clock.now();
    let password_hash = match password {
        Some(p) => Some(accounts.hasher.hash(Password::new(p)).await.unwrap()),
        None => None,
    };
    let user = accounts
        .store
        .create_user(NewUser {
            name: name.into(),
            email: format!("{name}@example.com"),
            display_name: format!("{name} Example"),
            apps: apps.iter().map(|a| a.to_string()).collect(),
            status: if password.is_some() {
                UserStatus::Active
            } else {
                UserStatus::Invited
            },
            password_hash,
            now,
        })
        .unwrap();
    let token = SecretToken::generate().unwrap();
    accounts
        .store
        .create_invitation(Invitation {
            token_hash: token.hash(),
            user_id: user.id,
            created_at: now,
            expires_at: now + 7 * 86400,
            used_at: None,
        })
        .unwrap();
    format!(
        "{}/.portcullis/activate?token={}",
        server.url("login"),
        token.encode()
    )
}

/// The value of a hidden (or any) input named `name` in a page.
pub fn field(html: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no field {name} in {html}"))
        + needle.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end]
        .replace("&#x2b;", "+")
        .replace("&#43;", "+")
}

/// Reads the enrolment QR code the way a phone does: rasterise the inline SVG, find and
/// decode the QR symbol, parse the otpauth URI. Nothing is taken from the page's text.
pub fn scan_qr(html: &str) -> (String, portcullis::auth::TotpSecret) {
    let start = html.find("<svg").expect("no svg on the page");
    let end = html[start..].find("</svg>").expect("svg not closed") + start + 6;
    let svg = &html[start..end];
    let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default()).unwrap();
    let size = tree.size();
    let scale = 600.0 / size.width().max(size.height());
    let (w, h) = (
        (size.width() * scale) as u32,
        (size.height() * scale) as u32,
    );
    let mut pixmap = resvg::tiny_skia::Pixmap::new(w, h).unwrap();
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    let data = pixmap.data();
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w as usize, h as usize, |x, y| {
        let i = (y * w as usize + x) * 4;
        ((data[i] as u16 + data[i + 1] as u16 + data[i + 2] as u16) / 3) as u8
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "expected exactly one QR code");
    let (_, uri) = grids[0].decode().unwrap();
    let parsed = url::Url::parse(&uri).unwrap();
    let secret = parsed
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    (
        uri,
        portcullis::auth::TotpSecret::from_base32(&secret).unwrap(),
    )
}

impl Browser {
    /// Follows redirects like a browser, returning every response on the way (the last
    /// one is not a redirect) together with the URL it answered.
    pub async fn follow(&self, url: &str) -> Vec<(String, Page)> {
        let mut chain = Vec::new();
        let mut url = url.to_string();
        for _ in 0..10 {
            let page = self.get(&url).await;
            let next = page.location().map(|l| absolute(&url, &l));
            chain.push((url.clone(), page));
            match next {
                Some(n) if chain.last().unwrap().1.status.is_redirection() => url = n,
                _ => return chain,
            }
        }
        panic!(
            "redirect loop: {:?}",
            chain.iter().map(|(u, p)| (u, p.status)).collect::<Vec<_>>()
        );
    }

    /// Posts a form and follows the redirect chain after it.
    pub async fn submit(&self, url: &str, fields: &[(&str, &str)]) -> Vec<(String, Page)> {
        let page = self.post_form(url, fields).await;
        let next = page.location().map(|l| absolute(url, &l));
        let redirected = page.status.is_redirection();
        let mut chain = vec![(url.to_string(), page)];
        if let (true, Some(next)) = (redirected, next) {
            chain.extend(self.follow(&next).await);
        }
        chain
    }
}

pub fn absolute(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

pub fn last(chain: &[(String, Page)]) -> &Page {
    &chain.last().unwrap().1
}

pub fn last_url(chain: &[(String, Page)]) -> &str {
    &chain.last().unwrap().0
}

/// A person with an enrolled authenticator, signed in, as the tests need them.
pub struct Person {
    pub name: String,
    pub password: String,
    pub secret: portcullis::auth::TotpSecret,
    pub browser: Browser,
}

pub const GOOD_PASSWORD: &str = "correct horse battery staple";

/// Activation link → password → QR → Finish → next code: a fully signed-in person.
pub async fn activate_and_sign_in(server: &TestServer, name: &str, apps: &[&str]) -> Person {
    let browser = Browser::new(server.addr);
    let link = invite(server, name, None, apps).await;
    let page = browser.get(&link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let activate = format!("{}/.portcullis/activate", server.url("login"));
    let chain = browser
        .submit(
            &activate,
            &[
                ("csrf", &field(&page.body, "csrf")),
                ("token", &field(&page.body, "token")),
                ("password", GOOD_PASSWORD),
                ("password2", GOOD_PASSWORD),
            ],
        )
        .await;
    let enroll = last(&chain);
    assert_eq!(enroll.status, StatusCode::OK, "{}", enroll.body);
    let (_, secret) = scan_qr(&enroll.body);
    let code = portcullis::auth::code_at(&secret, server.clock.now());
    let chain = browser
        .submit(
            &format!("{}/.portcullis/enroll", server.url("login")),
            &[
                ("csrf", &field(&enroll.body, "csrf")),
                ("rd", ""),
                ("code", &code),
            ],
        )
        .await;
    let code_page = last(&chain);
    assert!(
        code_page.body.contains("Enter your code"),
        "{}",
        code_page.body
    );
    server.clock.advance(30);
    let next = portcullis::auth::code_at(&secret, server.clock.now());
    let chain = browser
        .submit(
            &format!("{}/.portcullis/code", server.url("login")),
            &[
                ("csrf", &field(&code_page.body, "csrf")),
                ("rd", ""),
                ("code", &next),
            ],
        )
        .await;
    assert!(
        last(&chain).body.contains("You are signed in"),
        "{}",
        last(&chain).body
    );
    Person {
        name: name.into(),
        password: GOOD_PASSWORD.into(),
        secret,
        browser,
    }
}
