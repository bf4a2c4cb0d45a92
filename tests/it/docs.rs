//! The README's "Verifying the identity in your app" snippets, run verbatim against a live
//! server: what we tell app developers to paste must accept a real assertion and refuse
//! one for another app, from another issuer, or with a changed payload.

use std::path::Path;
use std::process::{Command, Output};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis::clock::{Clock, SystemClock};

use crate::helpers::*;

const README: &str = include_str!("../../README.md");

/// The code between `<!-- snippet:NAME -->` and `<!-- /snippet:NAME -->`, without the
/// Markdown fence lines.
fn snippet(name: &str) -> String {
    let start_marker = format!("<!-- snippet:{name} -->");
    let end_marker = format!("<!-- /snippet:{name} -->");
    let start = README
        .find(&start_marker)
        .unwrap_or_else(|| panic!("README.md has no {start_marker}"))
        + start_marker.len();
    let end = README[start..]
        .find(&end_marker)
        .unwrap_or_else(|| panic!("README.md has no {end_marker}"))
        + start;
    let code: Vec<&str> = README[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("```"))
        .collect();
    let code = code.join("\n");
    assert!(!code.trim().is_empty(), "the {name} snippet is empty");
    code
}

/// Whether a tool the test needs is there. Missing: under CI a failure (CI installs it),
/// elsewhere a notice and a skip.
fn available(program: &str, args: &[&str], what: &str, install: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{what} is needed to check the README snippet: {install}");
        }
        eprintln!("skipping the README {what} snippet check: {what} is not installed ({install})");
    }
    ok
}

/// Sends no traffic through a proxy the environment may name: the server is local.
fn local_only(cmd: &mut Command) -> &mut Command {
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "*").env("no_proxy", "*")
}

/// What an app behind Portcullis receives: a fresh assertion for `portal`.
struct Received {
    token: String,
    auth_origin: String,
    app_origin: String,
}

async fn assertion_for_portal(s: &Setup) -> Received {
    let srv = &s.server;
    let p = activate_and_sign_in(srv, "dana", &["portal"]).await;
    // The harness clock ran a TOTP step ahead for the second code; the verifiers here use
    // the real clock, so the assertion must be issued at real time.
    srv.clock.set(SystemClock.now());
    let chain = p
        .browser
        .follow(&format!("{}/private", srv.url("portal")))
        .await;
    let echo = last(&chain);
    assert_eq!(echo.status, http::StatusCode::OK, "{}", echo.body);
    let v = echo.json();
    let token = v["headers"]["x-portcullis-assertion"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no assertion reached the app: {v}"))
        .to_string();
    Received {
        token,
        auth_origin: srv.url("login"),
        app_origin: srv.url("portal"),
    }
}

/// The same token with `preferred_username` changed and the signature kept.
fn tampered(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert!(payload.contains("\"dana\""), "{payload}");
    let forged = URL_SAFE_NO_PAD.encode(payload.replace("\"dana\"", "\"admin\""));
    format!("{}.{forged}.{}", parts[0], parts[2])
}

/// Runs a command on the blocking pool, so the server on this runtime keeps answering
/// the JWKS request the snippet makes.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------- Python

/// `*.localhost` names resolve to the loopback address in browsers, not necessarily in
/// Python's resolver: map them here, outside the snippet, as a hosts file would.
const PYTHON_RESOLVER_SHIM: &str = r#"
import socket as _socket

_real_getaddrinfo = _socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


_socket.getaddrinfo = _getaddrinfo
"#;

async fn run_python(script: &Path, r: &Received, iss: &str, aud: &str, token: &str) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(token)
        .env("AUTH_ORIGIN", iss)
        .env("APP_ORIGIN", &r.app_origin)
        .env("APP_ID", aud)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    local_only(&mut cmd);
    run(cmd).await
}

#[tokio::test]
async fn readme_python_snippet_verifies_the_assertion_and_refuses_forgeries() {
    if !available(
        "python3",
        &["-c", "import jwt, cryptography"],
        "Python (python3 with PyJWT and cryptography)",
        "python3 -m pip install PyJWT cryptography",
    ) {
        return;
    }
    let s = setup().await;
    let r = assertion_for_portal(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify.py");
    std::fs::write(
        &script,
        format!("{PYTHON_RESOLVER_SHIM}\n{}\n", snippet("python")),
    )
    .unwrap();

    let ok = run_python(&script, &r, &r.auth_origin, "portal", &r.token).await;
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "dana dana@example.com\n",
        "{}",
        text(&ok)
    );

    let refusals = [
        (
            "another app",
            r.auth_origin.as_str(),
            "analytics",
            r.token.clone(),
            "InvalidAudienceError",
        ),
        (
            "another issuer",
            "https://login.evil.example",
            "portal",
            r.token.clone(),
            "InvalidIssuerError",
        ),
        (
            "a changed payload",
            r.auth_origin.as_str(),
            "portal",
            tampered(&r.token),
            "InvalidSignatureError",
        ),
    ];
    for (case, iss, aud, token, error) in refusals {
        let out = run_python(&script, &r, iss, aud, &token).await;
        assert!(!out.status.success(), "accepted {case}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(error),
            "{case} refused for the wrong reason: {}",
            text(&out)
        );
    }
}

// ---------------------------------------------------------------- Node.js

/// Node resolves `*.localhost` through `dns.lookup`; map those names to the loopback
/// address, outside the snippet.
const NODE_RESOLVER_SHIM: &str = r#"
import dns from "node:dns";
const realLookup = dns.lookup;
dns.lookup = (host, ...rest) =>
  realLookup(host === "localhost" || host.endsWith(".localhost") ? "127.0.0.1" : host, ...rest);
"#;

const NODE_RUNNER: &str = r#"
const claims = await verifyIdentity(process.argv[2]);
console.log(claims.preferred_username, claims.email);
"#;

/// Where `.ci/run` installs `jose` for this test.
fn node_modules() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/docs-node/node_modules")
}

async fn run_node(script: &Path, r: &Received, iss: &str, aud: &str, token: &str) -> Output {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .arg(token)
        .env("AUTH_ORIGIN", iss)
        .env("APP_ORIGIN", &r.app_origin)
        .env("APP_ID", aud);
    local_only(&mut cmd);
    run(cmd).await
}

#[tokio::test]
async fn readme_node_snippet_verifies_the_assertion_and_refuses_forgeries() {
    // The README promises this check only where Node.js is installed.
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("skipping the README Node.js snippet check: node is not installed");
        return;
    }
    let jose = node_modules().join("jose/package.json");
    if !available(
        "node",
        &["-e", &format!("require({:?})", jose.display().to_string())],
        "Node.js (node with jose)",
        "npm install --no-save --prefix target/docs-node jose",
    ) {
        return;
    }
    let s = setup().await;
    let r = assertion_for_portal(&s).await;
    let dir = tempfile::tempdir().unwrap();
    // ES modules find packages in a node_modules folder beside them.
    std::os::unix::fs::symlink(node_modules(), dir.path().join("node_modules")).unwrap();
    let script = dir.path().join("verify.mjs");
    std::fs::write(
        &script,
        format!("{NODE_RESOLVER_SHIM}\n{}\n{NODE_RUNNER}", snippet("node")),
    )
    .unwrap();

    let ok = run_node(&script, &r, &r.auth_origin, "portal", &r.token).await;
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "dana dana@example.com\n",
        "{}",
        text(&ok)
    );

    let refusals = [
        (
            "another app",
            r.auth_origin.as_str(),
            "analytics",
            r.token.clone(),
            "\"aud\"",
        ),
        (
            "another issuer",
            "https://login.evil.example",
            "portal",
            r.token.clone(),
            "\"iss\"",
        ),
        (
            "a changed payload",
            r.auth_origin.as_str(),
            "portal",
            tampered(&r.token),
            "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
        ),
    ];
    for (case, iss, aud, token, error) in refusals {
        let out = run_node(&script, &r, iss, aud, &token).await;
        assert!(!out.status.success(), "accepted {case}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(error),
            "{case} refused for the wrong reason: {}",
            text(&out)
        );
    }
}
