//! A real browser walks the partner guide against `portcullis demo`: Debian's chromium,
//! driven over W3C WebDriver (plain JSON over HTTP to chromedriver), in real time.
//!
//! Activation link → choose a password → the QR code, read from the screenshot's pixels →
//! Finish → the next code → the Portal sample app shows "Signature verified" → Analytics
//! without a sign-in page → sign-out → sign-in page, and Analytics asks again.
//! Every page is saved under `target/browser-screenshots/`; the sign-in and enrolment
//! pages also go to `docs/` (replaced there with `UPDATE_DOCS_SCREENSHOTS=1`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis::auth::{code_at, TotpSecret};
use portcullis::clock::{Clock, SystemClock};
use portcullis::demo::{Demo, DemoUser};
use serde_json::{json, Value};

/// The browser window; headless chromium gives the page about 1000 px of it.
const WINDOW: (u32, u32) = (800, 1150);
const PASSWORD: &str = "correct horse battery staple";
/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

// ---------------------------------------------------------------- finding the browser

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// chromium and chromedriver, or `None` (and a note) when they are not installed. On CI
/// the browser test must run, so there a missing browser fails it.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "chromium/chromedriver are not installed, and CI=true requires the browser test: install the Debian packages chromium and chromium-driver"
        ),
        _ => {
            eprintln!("skipping browser test: chromium/chromedriver not installed");
            None
        }
    }
}

// ---------------------------------------------------------------- WebDriver client

/// chromedriver and the browser it started. Dropping it (also when the test fails) ends
/// the browser session and kills chromedriver's process group.
struct Driver {
    child: Child,
    addr: SocketAddr,
    session: Option<String>,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Blocking on purpose: Drop cannot await, and this also runs during a panic.
            let _ = blocking_delete(self.addr, &format!("/session/{session}"));
        }
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blocking_delete(addr: SocketAddr, path: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Driver {
    async fn start(chromium: &Path, chromedriver: &Path, log: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log_file = std::fs::File::create(log).unwrap();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            // Its own process group, so the browser it starts can be killed with it.
            .process_group(0)
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: None,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = driver.try_call(Method::GET, "/status", None).await {
                if v["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer /status within 20 s; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_str().unwrap(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-crash-reporter",
                    "--disable-breakpad", "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                    format!("--user-data-dir={}", driver.profile.path().display()),
                ],
            },
        }}});
        let v = driver.call(Method::POST, "/session", Some(caps)).await;
        driver.session = Some(v["sessionId"].as_str().unwrap().to_string());
        driver
    }

    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let attempt = async {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, self.addr.to_string())
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let bytes = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("WebDriver answered {status}: {v}"));
            }
            Ok(v["value"].clone())
        };
        tokio::time::timeout(Duration::from_secs(60), attempt)
            .await
            .map_err(|_| "WebDriver did not answer within 60 s".to_string())?
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().unwrap())
    }

    async fn goto(&self, url: &str) {
        let path = self.session_path("/url");
        self.call(Method::POST, &path, Some(json!({ "url": url })))
            .await;
    }

    async fn url(&self) -> String {
        let path = self.session_path("/url");
        self.call(Method::GET, &path, None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn source(&self) -> String {
        let path = self.session_path("/source");
        self.call(Method::GET, &path, None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn element(&self, css: &str) -> String {
        let path = self.session_path("/element");
        let v = self
            .call(
                Method::POST,
                &path,
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        let path = self.session_path(&format!("/element/{id}/value"));
        self.call(Method::POST, &path, Some(json!({ "text": text })))
            .await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        let path = self.session_path(&format!("/element/{id}/click"));
        self.call(Method::POST, &path, Some(json!({}))).await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let path = self.session_path("/screenshot");
        let v = self.call(Method::GET, &path, None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    }

    /// Waits until the page's source contains `text` (a click's navigation may still be
    /// under way when the click returns).
    async fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let source = self.source().await;
            if source.contains(text) {
                return source;
            }
            if Instant::now() > deadline {
                // Browsers send `Origin: null` on a form POST from a page whose referrer
                // policy is `no-referrer` (Fetch §3.1 "append a request Origin header").
                let hint = if source.contains("sent from another site") {
                    "\n(the form POST was refused by the Origin/CSRF check; a real browser sends `Origin: null` when the page's Referrer-Policy is no-referrer)"
                } else {
                    ""
                };
                panic!(
                    "the page at {} never showed {text:?}; it shows:\n{source}{hint}",
                    self.url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------- pictures

struct Shots {
    dir: PathBuf,
    count: usize,
}

impl Shots {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, count: 0 }
    }

    /// Saves the browser's current viewport as `NN-name.png` and returns the PNG.
    async fn take(&mut self, driver: &Driver, name: &str) -> (PathBuf, Vec<u8>) {
        self.count += 1;
        let png = driver.screenshot().await;
        let path = self.dir.join(format!("{:02}-{name}.png", self.count));
        std::fs::write(&path, &png).unwrap();
        (path, png)
    }
}

/// Reads the QR code the way a phone camera does: from the screenshot's pixels only.
fn scan_qr_from_png(png: &[u8]) -> String {
    let pixmap = resvg::tiny_skia::Pixmap::decode_png(png).unwrap();
    let (w, h) = (pixmap.width() as usize, pixmap.height() as usize);
    let data = pixmap.data();
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        let i = (y * w + x) * 4;
        ((data[i] as u16 + data[i + 1] as u16 + data[i + 2] as u16) / 3) as u8
    });
    let grids = img.detect_grids();
    assert_eq!(
        grids.len(),
        1,
        "expected exactly one QR code in the screenshot"
    );
    grids[0].decode().unwrap().1
}

/// Copies a screenshot to `docs/`, cut below the page's content, and checks it stays
/// small enough to commit. An existing picture is replaced only with
/// `UPDATE_DOCS_SCREENSHOTS=1`: each run's QR code differs, and a test run should not
/// leave committed files changed.
fn copy_to_docs(shot: &Path, name: &str) {
    let pixmap = resvg::tiny_skia::Pixmap::load_png(shot).unwrap();
    let (w, h) = (pixmap.width(), pixmap.height());
    let background = pixmap.pixel(0, h - 1).unwrap();
    let last_content_row = (0..h)
        .rev()
        .find(|&y| (0..w).any(|x| pixmap.pixel(x, y).unwrap() != background))
        .unwrap_or(h - 1);
    let height = (last_content_row + 32).min(h);
    let cropped = pixmap
        .clone_rect(resvg::tiny_skia::IntRect::from_xywh(0, 0, w, height).unwrap())
        .unwrap();
    let png = cropped.encode_png().unwrap();
    assert!(png.len() < 300 * 1024, "{name} is {} bytes", png.len());
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let target = docs.join(name);
    if target.exists() && std::env::var("UPDATE_DOCS_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(target, png).unwrap();
}

// ---------------------------------------------------------------- the test

fn secret_of(otpauth: &str) -> TotpSecret {
    let url = url::Url::parse(otpauth).unwrap();
    let secret = url
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    TotpSecret::from_base32(&secret).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_walks_the_partner_guide_against_the_demo() {
    let Some((chromium, chromedriver)) = browser_binaries() else {
        return;
    };
    portcullis::cli::install_crypto_provider();

    // The demo itself, on a free port, with its data in a temporary folder.
    let base = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let demo = Demo::start(listener, base.path()).await.unwrap();
    let port = demo.port();
    let DemoUser::Invited {
        link,
        created: true,
    } = demo.ensure_demo_user().await.unwrap()
    else {
        panic!("the demo user was not created with an activation link");
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(demo.run(async {
        let _ = stopped.await;
    }));
    let url = |host: &str| format!("http://{host}.localhost:{port}");

    let mut shots = Shots::new();
    let driver = Driver::start(
        &chromium,
        &chromedriver,
        &shots.dir.join("chromedriver.log"),
    )
    .await;

    // Guide step 1: the activation link. No password was set, so choose one.
    driver.goto(&link).await;
    driver.wait_for("Choose a password").await;
    shots.take(&driver, "activate").await;
    driver.type_into("#password", PASSWORD).await;
    driver.type_into("#password2", PASSWORD).await;
    driver.click("button[type=submit]").await;

    // Step 2: the QR code and the six-digit field with Finish.
    driver.wait_for("Set up two-factor authentication").await;
    let (enroll_shot, png) = shots.take(&driver, "enroll").await;
    // Steps 3–4: the authenticator app reads the QR code from the screen.
    let otpauth = scan_qr_from_png(&png);
    assert!(
        otpauth.starts_with("otpauth://totp/Partner%20Portal:demo?secret="),
        "{otpauth}"
    );
    let secret = secret_of(&otpauth);
    copy_to_docs(&enroll_shot, "enroll.png");

    // Step 5: the code the app shows, then Finish.
    let now = SystemClock.now();
    let (finish_code, finish_step) = (code_at(&secret, now), now / 30);
    driver.type_into("#code", &finish_code).await;
    driver.click("button[type=submit]").await;

    // Step 6: back in the log-in process, a new code is needed.
    driver.wait_for("Enter your code").await;
    shots.take(&driver, "code").await;
    driver.type_into("#code", &finish_code).await;
    driver.click("button[type=submit]").await;
    driver
        .wait_for("That code was already used. Wait for the next code in your app.")
        .await;
    shots.take(&driver, "code-already-used").await;
    // The code changes every 30 seconds: wait for the next one, as a person would.
    while SystemClock.now() / 30 <= finish_step {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    driver
        .type_into("#code", &code_at(&secret, SystemClock.now()))
        .await;
    driver.click("button[type=submit]").await;
    driver.wait_for("You are signed in").await;
    shots.take(&driver, "signed-in").await;

    // The Portal sample app: who it is, with a signature that verified against the JWKS.
    driver.click("a[href^='http://portal.localhost']").await;
    let page = driver.wait_for("<h1>Partner Portal</h1>").await;
    shots.take(&driver, "portal").await;
    assert!(driver.url().await.starts_with(&url("portal")));
    assert!(page.contains(">Signature verified<"), "{page}");
    assert!(
        page.contains("Signed in as <strong>Demo Partner</strong> (demo)"),
        "{page}"
    );
    assert!(page.contains("<td>demo@example.com</td>"), "{page}");

    // Analytics after the Portal: no sign-in page, straight to the app.
    driver.click("a[href^='http://analytics.localhost']").await;
    let page = driver.wait_for("<h1>Partner Analytics</h1>").await;
    shots.take(&driver, "analytics").await;
    assert_eq!(driver.url().await, format!("{}/", url("analytics")));
    assert!(page.contains(">Signature verified<"), "{page}");
    assert!(
        page.contains("<tr><th>x-portcullis-user</th><td>demo</td></tr>"),
        "{page}"
    );

    // Sign out: the sign-in page is shown…
    driver.click("a[href='/.portcullis/logout']").await;
    let page = driver.wait_for("You have signed out.").await;
    shots.take(&driver, "signed-out").await;
    assert!(driver.url().await.starts_with(&url("login")));
    assert!(page.contains("autocomplete=\"current-password\""), "{page}");

    // …and Analytics asks for sign-in again.
    driver.goto(&format!("{}/", url("analytics"))).await;
    let page = driver.wait_for("Partner Analytics").await;
    let (signin_shot, _) = shots.take(&driver, "analytics-asks-again").await;
    assert!(
        driver
            .url()
            .await
            .starts_with(&format!("{}/.portcullis/login?rd=", url("login"))),
        "{}",
        driver.url().await
    );
    assert!(page.contains("autocomplete=\"current-password\""), "{page}");
    copy_to_docs(&signin_shot, "signin.png");

    drop(driver);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the demo did not stop within 10 s")
        .unwrap();
}
