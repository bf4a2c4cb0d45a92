//! The proxy core (SPEC §1, §4): routing, the reserved prefix, header hygiene, streaming,
//! upgrades, upstream failures, client timeouts, graceful shutdown, TLS + HTTP/2.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// `GET /private` on `app` with `headers`, by a new person signed in to it (the app's
/// cookie fetched through the sign-in origin first), as the upstream answered it.
async fn get_private_signed_in(
    srv: &TestServer,
    name: &str,
    app: &str,
    headers: &[(&str, &str)],
) -> Page {
    let p = activate_and_sign_in(srv, name, &[app]).await;
    let private = format!("{}/private", srv.url(app));
    assert_eq!(
        last(&p.browser.follow(&private).await).status,
        StatusCode::OK
    );
    let page = p
        .browser
        .request(Method::GET, &private, headers, None)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page
}

/// `GET /echo` on `app`'s origin with `headers`, through a fresh browser: a public path
/// the test upstream answers with the request it saw, as JSON.
async fn get_echo(server: &TestServer, app: &str, headers: &[(&str, &str)]) -> Page {
    echo(server, app, Method::GET, headers).await
}

/// `/echo` through a fresh browser with `method` and no body. `GET` goes to the upstream
/// on the lean client, `POST` on hyper's: both must treat responses alike.
async fn echo(server: &TestServer, app: &str, method: Method, headers: &[(&str, &str)]) -> Page {
    Browser::new(server.addr)
        .request(method, &format!("{}/echo", server.url(app)), headers, None)
        .await
}

#[tokio::test]
async fn unknown_host_gets_404_and_is_never_forwarded() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    let page = b
        .get(&format!("http://evil.localhost:{}/echo", s.server.port))
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("Page not found"), "{}", page.body);
    assert!(!page.body.contains("\"upstream\""));
    // Right host, wrong port: also unknown.
    let page = b
        .get(&format!(
            "http://portal.localhost:{}/echo",
            s.server.port + 1
        ))
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn healthz_answers_on_every_origin_and_is_not_forwarded() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    for host in ["login", "portal", "analytics"] {
        let page = b
            .get_json(&format!("{}/.portcullis/healthz", s.server.url(host)))
            .await;
        assert_eq!(page.status, StatusCode::OK);
        let v = page.json();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    }
    // Anything else under the reserved prefix is ours, never the app's.
    let page = b
        .get(&format!("{}/.portcullis/whatever", s.server.url("portal")))
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.body.contains("\"upstream\""));
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_upstream_even_on_public_paths() {
    let s = setup_with("", "").await;
    let page = get_echo(
        &s.server,
        "portal",
        &[
            ("x-portcullis-user", "admin"),
            ("X-Portcullis-Email", "admin@example.com"),
            ("x-portcullis-name", "Admin"),
            ("x-portcullis-assertion", "forged.jwt.here"),
            ("x-portcullis-anything", "x"),
            (
                "cookie",
                "theme=dark; portcullis-session=stolen; __Host-portcullis-app=x; lang=en",
            ),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let v = page.json();
    let headers = v["headers"].as_object().unwrap();
    assert!(
        !headers.keys().any(|k| k.starts_with("x-portcullis")),
        "identity headers leaked: {headers:?}"
    );
    assert_eq!(v["headers"]["cookie"][0], "theme=dark; lang=en");
}

/// The upstream sees the host the request was routed and authorised by. An absolute-form
/// target naming portal with a `Host` naming analytics goes to portal's upstream with
/// portal's host (RFC 9112 §3.2.2), not with a host an upstream serving both apps would
/// read as analytics; a request naming its host twice is refused, not forwarded.
#[tokio::test]
async fn the_upstream_sees_the_host_the_request_was_routed_by() {
    let s = setup_with("", "").await;
    let portal = s
        .server
        .url("portal")
        .trim_start_matches("http://")
        .to_string();
    let analytics = s
        .server
        .url("analytics")
        .trim_start_matches("http://")
        .to_string();
    let tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{portal}/echo"))
        .header("host", analytics.as_str())
        .body(body_from(""))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["upstream"], "portal", "{v}");
    assert_eq!(v["headers"]["host"], serde_json::json!([portal]), "{v}");

    let mut req = Request::builder()
        .uri("/echo")
        .header("host", portal.as_str())
        .body(body_from(""))
        .unwrap();
    req.headers_mut()
        .append("host", http::HeaderValue::from_str(&analytics).unwrap());
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("more than once"),
        "{body:?}"
    );
}

/// Underscore spellings of our headers, which CGI-style servers read as the dashed ones,
/// and the other `X-Forwarded-*` / URL-rewriting fields a client that is not a trusted
/// proxy may send, do not reach the upstream either.
#[tokio::test]
async fn underscore_spellings_and_other_proxy_fields_from_a_client_are_stripped() {
    let s = setup_with("", "").await;
    let page = get_echo(
        &s.server,
        "portal",
        &[
            ("x_portcullis_user", "admin"),
            ("X_Portcullis_Assertion", "forged.jwt.here"),
            ("x_forwarded_for", "203.0.113.9"),
            ("x_real_ip", "203.0.113.9"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x_trace_id", "kept"),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let v = page.json();
    let headers = v["headers"].as_object().unwrap();
    let mut names: Vec<&String> = headers.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x_trace_id"
        ],
        "{headers:?}"
    );
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
}

/// An app cannot set or clear Portcullis's own cookies on its origin (a planted session
/// would be fixation); its other cookies reach the browser untouched and in order.
#[tokio::test]
async fn an_upstream_cannot_set_portcullis_cookies() {
    let s = setup_with("", "").await;
    for method in [Method::GET, Method::POST] {
        let page = echo(
            &s.server,
            "portal",
            method.clone(),
            &[
                ("x-test-set-cookie", "theme=dark; Path=/"),
                (
                    "x-test-set-cookie",
                    "__Host-portcullis-app=planted; Path=/; Secure",
                ),
                ("x-test-set-cookie", "portcullis-app=planted; Path=/"),
                ("x-test-set-cookie", " Portcullis-Session=; Max-Age=0"),
                ("x-test-set-cookie", "=portcullis-app=planted"),
                ("x-test-set-cookie", "lang=en"),
            ],
        )
        .await;
        assert_eq!(page.status, StatusCode::OK, "{method}: {}", page.body);
        let set: Vec<&str> = page
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(set, ["theme=dark; Path=/", "lang=en"], "{method}");
    }
}

/// An identity header may be named like a forwarding field (`X-Forwarded-User`, as
/// oauth2-proxy does): a client's own is stripped, ours reaches the upstream, also from a
/// client that is not a trusted proxy. (The test config's second app, analytics, is the
/// one given the header.)
#[tokio::test]
async fn an_identity_header_named_x_forwarded_user_reaches_the_upstream() {
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let srv = start_server(|port| {
        config_text(port, portal.addr, analytics.addr, "", "").replace(
            "public_paths = [\"/echo\", \"/slow/*\"]",
            "public_paths = [\"/echo\", \"/slow/*\"]\n[app.headers]\nuser = \"X-Forwarded-User\"",
        )
    })
    .await;
    let page =
        get_private_signed_in(&srv, "uma", "analytics", &[("x-forwarded-user", "admin")]).await;
    assert_eq!(
        page.json()["headers"]["x-forwarded-user"],
        serde_json::json!(["uma"])
    );
}

#[tokio::test]
async fn custom_identity_header_names_are_stripped_for_every_app() {
    let tail = "";
    let s = setup_with("", tail).await;
    // The analytics app uses the defaults; add a config where portal trusts Remote-User.
    drop(s);
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let server = start_server(|port| {
        config_text(port, portal.addr, analytics.addr, "", "").replace(
            "public_paths = [\"/echo\", \"/slow/*\"]",
            "public_paths = [\"/echo\", \"/slow/*\"]\n[app.headers]\nuser = \"Remote-User\"",
        )
    })
    .await;
    let b = Browser::new(server.addr);
    for host in ["portal", "analytics"] {
        let page = b
            .request(
                Method::GET,
                &format!("{}/echo", server.url(host)),
                &[("remote-user", "admin")],
                None,
            )
            .await;
        let v = page.json();
        assert!(v["headers"].get("remote-user").is_none(), "{host}: {v}");
    }
}

#[tokio::test]
async fn header_named_in_connection_is_not_forwarded_either_way() {
    let s = setup().await;
    let page = get_echo(
        &s.server,
        "portal",
        &[
            ("connection", "keep-alive, x-hop-secret"),
            ("x-hop-secret", "do not forward"),
            ("keep-alive", "timeout=5"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    let v = page.json();
    assert!(v["headers"].get("x-hop-secret").is_none(), "{v}");
    assert!(v["headers"].get("keep-alive").is_none(), "{v}");
    assert_eq!(v["headers"]["x-end-to-end"][0], "kept");
    // The upstream named x-upstream-hop in its Connection header: not relayed to us,
    // whichever client carried the request, and neither is the Connection field itself.
    assert!(page.headers.get("x-upstream-hop").is_none());
    assert!(page.headers.get(header::CONNECTION).is_none());
    assert!(page.headers.get(header::PROXY_AUTHENTICATE).is_none());
    let page = echo(&s.server, "portal", Method::POST, &[]).await;
    assert_eq!(page.json()["method"], "POST");
    assert!(page.headers.get("x-upstream-hop").is_none());
    assert!(page.headers.get(header::CONNECTION).is_none());
    assert!(page.headers.get(header::PROXY_AUTHENTICATE).is_none());
}

/// `Connection` names a client's own hop-by-hop fields; it cannot take away the identity
/// and forwarding headers Portcullis sets (SPEC §3, §4).
#[tokio::test]
async fn connection_cannot_remove_the_headers_portcullis_sets() {
    let s = setup().await;
    let srv = &s.server;
    let page = get_private_signed_in(
        srv,
        "cora",
        "portal",
        &[(
            "connection",
            "x-portcullis-user, X-Portcullis-Assertion, x-forwarded-for, \
             x-forwarded-proto, x-forwarded-host",
        )],
    )
    .await;
    let v = page.json();
    assert_eq!(v["headers"]["x-portcullis-user"][0], "cora", "{v}");
    assert!(v["headers"]["x-portcullis-assertion"][0].is_string(), "{v}");
    assert_eq!(v["headers"]["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"][0], "http");
    assert_eq!(
        v["headers"]["x-forwarded-host"][0],
        format!("portal.localhost:{}", srv.port)
    );
}

#[tokio::test]
async fn forwarded_for_from_untrusted_peer_is_replaced() {
    let s = setup().await;
    let page = get_echo(
        &s.server,
        "portal",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let v = page.json();
    assert_eq!(v["headers"]["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"][0], "http");
    assert_eq!(
        v["headers"]["x-forwarded-host"][0],
        format!("portal.localhost:{}", s.server.port)
    );
    assert_eq!(
        v["headers"]["host"][0],
        format!("portal.localhost:{}", s.server.port)
    );
}

#[tokio::test]
async fn forwarded_for_from_trusted_peer_is_kept_and_extended() {
    let s = setup_with("trusted_proxies = [\"127.0.0.0/8\"]", "").await;
    let page = get_echo(
        &s.server,
        "portal",
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let v = page.json();
    assert_eq!(
        v["headers"]["x-forwarded-for"][0],
        "198.51.100.7, 127.0.0.1"
    );
    assert_eq!(v["headers"]["x-forwarded-proto"][0], "https");
}

#[tokio::test]
async fn streamed_response_arrives_chunk_by_chunk() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    let started = Instant::now();
    let res = b
        .send(
            Method::GET,
            &format!("{}/stream", s.server.url("portal")),
            &[],
            body_from(""),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = loop {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            break data;
        }
    };
    // The upstream needs 800 ms for all three chunks; the first must arrive long before.
    assert_eq!(&first[..], b"chunk0;");
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"chunk1;chunk2;");
    assert!(started.elapsed() >= Duration::from_millis(750));
}

#[tokio::test]
async fn upgrade_passes_through_and_echoes() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    let res = b
        .send(
            Method::GET,
            &format!("{}/ws", s.server.url("portal")),
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("x-test-set-cookie", "portcullis-app=planted"),
                ("x-test-set-cookie", "theme=dark"),
            ],
            body_from(""),
        )
        .await;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(res.headers()[header::UPGRADE], "websocket");
    // The handshake cannot set our cookies either; the app's own pass.
    let set: Vec<_> = res.headers().get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(set, ["theme=dark"]);
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    for msg in [&b"hello"[..], b"portcullis", &[0u8, 255, 1, 2]] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..], msg);
    }
}

#[tokio::test]
async fn dead_upstream_gets_502_while_other_apps_keep_working() {
    let s = setup().await;
    let Setup {
        server, analytics, ..
    } = s;
    drop(analytics); // its listener task is aborted: connections are refused
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = Browser::new(server.addr);
    let page = b.get(&format!("{}/echo", server.url("analytics"))).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(
        page.body.contains("Partner Analytics is not available"),
        "{}",
        page.body
    );
    let page = b.get(&format!("{}/echo", server.url("portal"))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.json()["upstream"], "portal");
}

/// Status lines as some backends send them: no reason phrase, or one outside ASCII.
#[tokio::test]
async fn an_upstream_status_line_without_a_usual_reason_phrase_is_proxied() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let replies: [&[u8]; 3] = [
        b"HTTP/1.1 200\r\nContent-Length: 3\r\n\r\none",
        b"HTTP/1.1 404 Nicht gefunden \xfc\r\nContent-Length: 3\r\n\r\ntwo",
        b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nthree",
    ];
    let answering = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        for reply in replies {
            // One request head per reply; the proxy keeps the connection and sends the next.
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0; 1024];
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the proxy closed the upstream connection");
                seen.extend_from_slice(&chunk[..n]);
            }
            let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            seen.drain(..end);
            conn.write_all(reply).await.unwrap();
        }
    });
    let other = spawn_upstream("analytics").await;
    let server = start_server(|port| config_text(port, upstream, other.addr, "", "")).await;
    let b = Browser::new(server.addr);
    for (status, body) in [
        (StatusCode::OK, "one"),
        (StatusCode::NOT_FOUND, "two"),
        (StatusCode::OK, "three"),
    ] {
        let page = b.get(&format!("{}/echo", server.url("portal"))).await;
        assert_eq!((page.status, page.body.as_str()), (status, body));
    }
    answering.await.unwrap();
}

#[tokio::test]
async fn slow_upstream_gets_504_after_the_configured_timeout() {
    let s = setup_with("upstream_timeout = \"300ms\"", "").await;
    let b = Browser::new(s.server.addr);
    let started = Instant::now();
    let page = b
        .get(&format!("{}/slow/3000", s.server.url("portal")))
        .await;
    assert_eq!(page.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(page.body.contains("taking too long"), "{}", page.body);
    assert!(started.elapsed() < Duration::from_millis(2000));
    // A quick answer under the same timeout still works.
    let page = b.get(&format!("{}/slow/10", s.server.url("portal"))).await;
    assert_eq!(page.status, StatusCode::OK);
}

/// The same limit on a kept-alive upstream connection, which carries its timer from one
/// request to the next: quick answers keep moving it, a slow one still runs into it.
#[tokio::test]
async fn slow_answer_on_a_pooled_upstream_connection_gets_504() {
    let s = setup_with("upstream_timeout = \"300ms\"", "").await;
    let b = Browser::new(s.server.addr);
    for _ in 0..5 {
        let page = b.get(&format!("{}/slow/100", s.server.url("portal"))).await;
        assert_eq!(page.status, StatusCode::OK);
    }
    let started = Instant::now();
    let page = b
        .get(&format!("{}/slow/3000", s.server.url("portal")))
        .await;
    assert_eq!(page.status, StatusCode::GATEWAY_TIMEOUT);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_millis(2000), "{waited:?}");
    let page = b.get(&format!("{}/slow/10", s.server.url("portal"))).await;
    assert_eq!(page.status, StatusCode::OK);
}

/// Trickles one more header byte every 100 ms until the server hangs up.
async fn trickle_until_closed(stream: &mut tokio::net::TcpStream) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(b"X").await.is_err() {
            return;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            _ => {}
        }
    }
}

#[tokio::test]
async fn slowloris_connection_is_closed() {
    let s = setup_with("header_read_timeout = \"500ms\"", "").await;
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: portal.localhost\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), trickle_until_closed(&mut stream))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(450));

    // A client that connects and says nothing at all is cut off too.
    let mut idle = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// The same limit on the second request of a kept-alive connection: a first request
/// answered, then the next head trickled in.
#[tokio::test]
async fn slowloris_after_a_first_request_is_closed_too() {
    let s = setup_with("header_read_timeout = \"500ms\"", "").await;
    let host = s
        .server
        .url("portal")
        .trim_start_matches("http://")
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    stream
        .write_all(format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: portal.localhost\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), trickle_until_closed(&mut stream))
        .await
        .expect("a client trickling its second request head must be cut off");
    assert!(answered.elapsed() >= Duration::from_millis(450));
}

/// Requests that keep a connection busy for longer than the idle limit of 500 ms without
/// leaving it idle: an answer slower than the limit (the request is open while it
/// waits), then /stream, three chunks 400 ms apart, then a quick one on the same
/// connection. Evaluates to when the last answer ended. A macro because the HTTP/1.1 and
/// HTTP/2 senders share no trait.
macro_rules! busy_but_never_idle {
    ($sender:ident, $get:ident, $version:expr) => {{
        let res = $sender.send_request($get("/slow/900")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
        let res = $sender.send_request($get("/stream")).await.unwrap();
        assert_eq!(res.version(), $version);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "chunk0;chunk1;chunk2;");
        // Still open for new requests: not shut down while the body was being sent.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let res = $sender.send_request($get("/echo")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
        Instant::now()
    }};
}

/// An HTTP/1.1 keep-alive connection with no request open is closed after
/// `header_read_timeout`; one waiting for a slow answer or receiving a slow body is not.
#[tokio::test]
async fn idle_http1_connections_are_closed_busy_ones_are_not() {
    let s = setup_with("header_read_timeout = \"500ms\"", "").await;
    let tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let origin = s.server.url("portal");
    let host = origin.trim_start_matches("http://").to_string();
    let get = |path: &str| {
        Request::builder()
            .uri(path)
            .header("host", host.as_str())
            .body(body_from(""))
            .unwrap()
    };
    let last_answer = busy_but_never_idle!(sender, get, http::Version::HTTP_11);
    let closed_at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("an idle HTTP/1.1 connection must be closed")
        .unwrap();
    assert!(closed_at - last_answer >= Duration::from_millis(450));
}

/// A request whose head arrived is open, so the idle limit does not cut it; a sign-in
/// form whose body trickles is cut off by the form's own limit (the same
/// `header_read_timeout`) with a 408.
#[tokio::test]
async fn a_trickled_sign_in_form_gets_408() {
    let s = setup_with("header_read_timeout = \"500ms\"", "").await;
    let origin = s.server.url("login");
    let host = origin.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let head = format!(
        "POST /.portcullis/login HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
         username=al"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a trickled form must be answered, not held");
    let waited = started.elapsed();
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
}

#[tokio::test]
async fn graceful_shutdown_completes_the_request_in_flight() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    let url = format!("{}/slow/800", s.server.url("portal"));
    let in_flight = tokio::spawn(async move { b.get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = s.server.addr;
    let Setup { server, .. } = s;
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections once shutting down.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let page = in_flight.await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body, "slow done");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn navigation_to_a_protected_path_redirects_to_sign_in_and_api_calls_get_401() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    let page = b
        .get(&format!("{}/private/page?x=1", s.server.url("analytics")))
        .await;
    assert_eq!(page.status, StatusCode::FOUND);
    let expected_rd = format!(
        "http://analytics.localhost:{}/private/page?x=1",
        s.server.port
    );
    let location = page.location().unwrap();
    assert!(
        location.starts_with(&format!("{}/.portcullis/login?rd=", s.server.url("login"))),
        "{location}"
    );
    let rd: String = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "rd")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(rd, expected_rd);

    let api = b
        .get_json(&format!("{}/api/data", s.server.url("analytics")))
        .await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.json()["error"], "unauthenticated");
    let post = b
        .post_form(
            &format!("{}/private/page", s.server.url("analytics")),
            &[("a", "b")],
        )
        .await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn path_tricks_do_not_make_a_private_path_public() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    for path in [
        "/static/../admin",
        "/static/%2e%2e/admin",
        "/static/..%2Fadmin",
        "/static//x",
    ] {
        let page = b
            .get_json(&format!("{}{path}", s.server.url("portal")))
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn large_upload_and_download_stream_byte_exact() {
    // The memory bound is checked against the real binary in `large_transfers_keep_memory_bounded`.
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    let total: u64 = 8 * 1024 * 1024;
    let res = b
        .send(
            Method::GET,
            &format!("{}/bytes/{total}", s.server.url("portal")),
            &[],
            body_from(""),
        )
        .await;
    let mut body = res.into_body();
    let mut i = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            for byte in d.iter() {
                assert_eq!(*byte, pattern_byte(i));
                i += 1;
            }
        }
    }
    assert_eq!(i, total);
    let page = upload(&b, &s.server.url("portal"), total).await;
    assert_eq!(page, format!("{total} 0"));
}

pub async fn upload(b: &Browser, base: &str, total: u64) -> String {
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
    let mut rx = rx;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let res = b
        .send(
            Method::POST,
            &format!("{base}/upload"),
            &[],
            StreamBody::new(stream).boxed(),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn large_transfers_keep_memory_bounded() {
    // 100 MiB each way through the real binary; its peak RSS must stay under 60 MiB,
    // which it can only do by streaming.
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = write_config_file(
        dir.path(),
        &config_text(port, portal.addr, analytics.addr, "", ""),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr).await;
    let b = Browser::new(addr);
    let base = format!("http://portal.localhost:{port}");
    let total: u64 = 100 * 1024 * 1024;

    let res = b
        .send(
            Method::GET,
            &format!("{base}/bytes/{total}"),
            &[],
            body_from(""),
        )
        .await;
    let mut body = res.into_body();
    let mut i = 0u64;
    let mut mismatches = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            for byte in d.iter() {
                if *byte != pattern_byte(i) {
                    mismatches += 1;
                }
                i += 1;
            }
        }
    }
    assert_eq!((i, mismatches), (total, 0));
    assert_eq!(upload(&b, &base, total).await, format!("{total} 0"));

    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(hwm_kib < 60 * 1024, "peak RSS {hwm_kib} KiB");
}

pub async fn wait_for_port(addr: std::net::SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {addr} did not start");
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = write_config_file(
        dir.path(),
        &config_text(port, portal.addr, analytics.addr, "", ""),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr).await;
    let b = Browser::new(addr);
    let url = format!("http://portal.localhost:{port}/slow/1000");
    let in_flight = tokio::spawn(async move { b.get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let page = in_flight.await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body, "slow done");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn http2_over_tls_with_alpn() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec![
        "portal.localhost".into(),
        "login.localhost".into(),
    ])
    .unwrap();
    let portal = spawn_upstream("portal").await;
    let analytics = spawn_upstream("analytics").await;
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = config_text(port, portal.addr, analytics.addr, "", "")
        .replace(
            &format!("http://login.localhost:{port}"),
            &format!("https://login.localhost:{port}"),
        )
        .replace(
            &format!("http://portal.localhost:{port}"),
            &format!("https://portal.localhost:{port}"),
        )
        .replace(
            &format!("http://analytics.localhost:{port}"),
            &format!("https://analytics.localhost:{port}"),
        );
    let text = format!("{text}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    let path = write_config_file(dir.path(), &text);
    let config = portcullis::config::Config::load(&path).unwrap();
    let clock = std::sync::Arc::new(portcullis::clock::SystemClock);
    let accounts =
        std::sync::Arc::new(portcullis::accounts::Accounts::open(&config, clock).unwrap());
    let state = std::sync::Arc::new(portcullis::state::AppState::new(config, accounts).unwrap());
    let app = portcullis::server::Application::with_listener(state, listener)
        .await
        .unwrap();
    tokio::spawn(app.run(std::future::pending()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("portal.localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(executor(), hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("https://portal.localhost:{port}/echo"))
        .header("x-portcullis-user", "spoof")
        .body(body_from(""))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["upstream"], "portal");
    assert_eq!(v["headers"]["host"][0], format!("portal.localhost:{port}"));
    assert_eq!(v["headers"]["x-forwarded-proto"][0], "https");
    assert!(v["headers"].get("x-portcullis-user").is_none());
    // The pages on https carry HSTS.
    let req = Request::builder()
        .uri(format!("https://portal.localhost:{port}/.portcullis/nope"))
        .header("accept", "text/html")
        .body(body_from(""))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert!(res.headers().contains_key("strict-transport-security"));
}

/// HTTP/2 gets the idle limit HTTP/1.1 keep-alive has (`header_read_timeout`): a
/// connection with no request open is closed after it; one waiting for a slow answer or
/// sending a slow body is not.
#[tokio::test]
async fn idle_http2_connections_are_closed_busy_ones_are_not() {
    let s = setup_with("header_read_timeout = \"500ms\"", "").await;
    let tcp = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(executor(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let get = |path: &str| {
        Request::builder()
            .uri(format!("{}{path}", s.server.url("portal")))
            .body(body_from(""))
            .unwrap()
    };
    let last_answer = busy_but_never_idle!(sender, get, http::Version::HTTP_2);
    let closed_at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("an idle HTTP/2 connection must be closed")
        .unwrap();
    assert!(closed_at - last_answer >= Duration::from_millis(250));
}

/// After the idle limit, an HTTP/2 connection is shut down gracefully: a GOAWAY, then
/// waiting for the client to finish. A client that never answers (no SETTINGS
/// acknowledgement, no PING reply, no close) gets one more idle period, not the 40 s
/// hyper's keep-alive ping takes to give up on it.
#[tokio::test]
async fn a_silent_http2_client_is_closed_after_the_goaway() {
    let s = setup_with("header_read_timeout = \"500ms\"", "").await;
    let mut stream = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    let started = Instant::now();
    // The preface and an empty SETTINGS frame; nothing else is ever sent.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.unwrap();
    let mut frames = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => frames.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "a client that never answers must be cut off after the GOAWAY"
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
    // It was a graceful shutdown: a GOAWAY frame (type 7) came before the close.
    let mut at = 0;
    let mut kinds = Vec::new();
    while at + 9 <= frames.len() {
        let len = usize::from(frames[at]) << 16
            | usize::from(frames[at + 1]) << 8
            | usize::from(frames[at + 2]);
        kinds.push(frames[at + 3]);
        at += 9 + len;
    }
    assert!(kinds.contains(&7), "frames seen: {kinds:?}");
}

#[tokio::test]
async fn config_errors_name_the_key_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config_file(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:1\"\nauth_url = \"http://login.localhost\"\nlisten_port = 3\n\n[[app]]\nid = \"a\"\nname = \"A\"\nurl = \"http://a.localhost\"\nupstream = \"http://127.0.0.1:2\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen_port") && err.contains("line 4"),
        "{err}"
    );

    let path = write_config_file(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:1\"\nauth_url = \"http://login.localhost\"\n\n[session]\nidle_timeout = \"soon\"\n\n[[app]]\nid = \"a\"\nname = \"A\"\nurl = \"http://a.localhost/path\"\nupstream = \"ftp://127.0.0.1:2\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("soon"), "{err}");

    let path = write_config_file(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:1\"\nauth_url = \"http://login.localhost\"\n\n[[app]]\nid = \"a\"\nname = \"A\"\nurl = \"http://a.localhost/path\"\nupstream = \"ftp://127.0.0.1:2\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app[0].url (line 8)"), "{err}");
    assert!(err.contains("app[0].upstream (line 9)"), "{err}");

    let good = write_config_file(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:1\"\nauth_url = \"http://login.localhost\"\n\n[[app]]\nid = \"a\"\nname = \"A\"\nurl = \"http://a.localhost\"\nupstream = \"http://127.0.0.1:2\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[tokio::test]
async fn healthz_answers_a_probe_by_address_with_no_configured_host() {
    let s = setup().await;
    let b = Browser::new(s.server.addr);
    let page = b
        .get_json(&format!("http://{}/.portcullis/healthz", s.server.addr))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.json()["status"], "ok");
    // Anything else on an unknown host is still a 404.
    let page = b.get(&format!("http://{}/echo", s.server.addr)).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
}
