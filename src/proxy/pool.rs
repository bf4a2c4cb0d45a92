//! Kept-alive HTTP/1.1 connections to the upstreams.
//!
//! Two stacks of idle connections per upstream: those of [`super::h1`], the lean client
//! that carries `GET` and `HEAD` without a body, and hyper's own `SendRequest` handles for
//! everything else. A request takes the most recently used idle connection of its kind
//! (its socket is warm), and the connection comes back when the response body has been
//! read to its end. This replaces hyper-util's general-purpose client, whose checkout,
//! connector and per-request futures were a third of the proxy's CPU time
//! (BENCHMARKS.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

// tokio's clock, so that tests with paused time see connections age.
use tokio::time::{Instant, Sleep};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h1;
use crate::web::host_map::HostMap;
use crate::web::{Body, BoxError};

/// Shorter than the keep-alive of common backends (Node's 5 s is the shortest usual
/// one), so we rarely send on a connection the backend is just closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(4500);
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// A pooled connection idle for longer than this may have been closed by the backend
/// while our request was on the wire: an idempotent request without a body is kept
/// so it can be sent once more on a new connection. Under load connections are reused
/// within microseconds and skip that copy.
const STALE_RISK_AFTER: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub enum SendError {
    /// The upstream refused, reset or closed the connection.
    Unreachable(String),
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// No response head within the response timeout.
    Timeout,
}

pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: HostMap<Homes>,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
    reaper_started: AtomicBool,
}

/// The idle connections of one upstream, of either kind.
#[derive(Default)]
struct Homes {
    hyper: Arc<Idle>,
    lean: Arc<h1::Idle>,
}

/// Idle hyper connections to one upstream, the most recently used last.
#[derive(Default)]
struct Idle(Mutex<Vec<IdleConnection>>);

struct IdleConnection {
    conn: Conn,
    since: Instant,
}

/// One connection to an upstream, with the timer that bounds the wait for each response
/// head on it. A new timer per request had to be registered with tokio's timer wheel and
/// removed again, under its lock: 480 of the 37,150 instructions of a proxied request
/// (`bench/instructions.sh`). This one lives as long as the connection and is only moved
/// when a request needs a later deadline than it has, to an eighth of the timeout past
/// that, so it is moved about once per eighth of the timeout, not per request; a request
/// is cut off between the response timeout and an eighth more (37,144 -> 36,847). While
/// the connection is idle its timer keeps the waker of the last request's task until it
/// expires; that task is then woken once for nothing.
struct Conn {
    sender: SendRequest<Body>,
    answer_by: Pin<Box<Sleep>>,
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleConnection>> {
        // The critical sections only push and pop; a panic inside one cannot leave the
        // list half-changed, so a poisoned lock is still a good lock.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give_back(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// An upstream's response, as [`Pool::send`] got it.
#[derive(Debug)]
pub struct Answer {
    pub response: Response<Body>,
    /// The response has neither hop-by-hop fields nor `Set-Cookie`s for Portcullis's own
    /// cookies: [`h1`] leaves them out as it reads the head. hyper's client passes on
    /// what came.
    pub cleaned: bool,
}

impl Pool {
    /// `authorities` are the `host:port` of every configured upstream.
    /// `response_timeout` bounds each request from its start to the response head,
    /// connecting included.
    pub fn new<'a>(
        authorities: impl IntoIterator<Item = &'a str>,
        connect_timeout: Duration,
        response_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let upstreams = authorities
            .into_iter()
            .map(|a| (a.to_string(), Homes::default()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                upstreams,
                connect_timeout,
                response_timeout,
                idle_timeout,
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` to `authority`, on a pooled connection when one is idle. A request
    /// that never left (the pooled connection had closed) is sent again on a new
    /// connection, and so is an idempotent request without a body when a connection that
    /// sat idle breaks before answering — the stale keep-alive race.
    pub async fn send(
        &self,
        authority: &str,
        req: Box<Request<Body>>,
        upgrade: bool,
    ) -> Result<Answer, SendError> {
        self.start_reaper();
        let answer_by = Instant::now() + self.inner.response_timeout;
        let homes = self.inner.upstreams.get(authority);
        if !upgrade && h1::takes(&req) {
            let home = homes.map(|h| h1::Home {
                idle: h.lean.clone(),
                max_idle_count: MAX_IDLE_PER_UPSTREAM,
            });
            let response = self.send_lean(authority, &req, home, answer_by).await?;
            return Ok(Answer {
                response,
                cleaned: true,
            });
        }
        let response = self
            .send_hyper(authority, req, upgrade, homes.map(|h| &h.hyper), answer_by)
            .await?;
        Ok(Answer {
            response,
            cleaned: false,
        })
    }

    /// The requests [`h1`] does not take, on hyper's client.
    async fn send_hyper(
        &self,
        authority: &str,
        req: Box<Request<Body>>,
        upgrade: bool,
        home: Option<&Arc<Idle>>,
        answer_by: Instant,
    ) -> Result<Response<Body>, SendError> {
        // An upgraded connection becomes a tunnel and never returns to the pool.
        let pooled = match home {
            Some(idle) if !upgrade => self.checkout(idle, answer_by).await,
            _ => None,
        };
        let Some((mut conn, idle_for)) = pooled else {
            if Instant::now() >= answer_by {
                // Spent waiting for a pooled connection to become ready.
                return Err(SendError::Timeout);
            }
            // Boxed here and below: these paths are taken once per connection, not per
            // request, and unboxed they would make every request's future larger.
            let fresh = Box::pin(self.send_on_new(authority, *req, home, upgrade));
            return tokio::time::timeout_at(answer_by, fresh)
                .await
                .unwrap_or(Err(SendError::Timeout));
        };

        let copy = (idle_for >= STALE_RISK_AFTER
            && is_idempotent(req.method())
            && req.body().is_end_stream())
        .then(|| head_copy(&req));
        let Conn {
            sender,
            answer_by: timer,
        } = &mut conn;
        self.extend(timer.as_mut(), answer_by);
        let mut answer = std::pin::pin!(sender.try_send_request(*req));
        let first = std::future::poll_fn(|cx| match answer.as_mut().poll(cx) {
            Poll::Ready(answer) => Poll::Ready(Some(answer)),
            Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
        })
        .await;
        let Some(first) = first else {
            return Err(SendError::Timeout);
        };
        match first {
            Ok(res) => Ok(wrap(res, home.cloned(), conn)),
            Err(mut e) => {
                let again = match (e.take_message(), copy) {
                    (Some(unsent), _) => unsent,
                    (None, Some(copy)) if !e.error().is_timeout() => copy,
                    (None, _) => return Err(SendError::Unreachable(e.into_error().to_string())),
                };
                tracing::debug!(error = %e.error(), upstream = %authority, "pooled connection broke; sending once more on a new one");
                drop(conn);
                let fresh = Box::pin(self.send_on_new(authority, again, home, false));
                tokio::time::timeout_at(answer_by, fresh)
                    .await
                    .unwrap_or(Err(SendError::Timeout))
            }
        }
    }

    /// A connection's response timer, moved to a little past `answer_by` when it would
    /// fire before: by an eighth of the timeout, so that it is moved about once per
    /// eighth of the timeout and not for every request (see `Conn`).
    fn extend(&self, timer: Pin<&mut Sleep>, answer_by: Instant) {
        if timer.deadline() < answer_by {
            timer.reset(answer_by + self.inner.response_timeout / 8);
        }
    }

    /// [`h1`]'s requests: on the most recently used idle connection, and once more on a
    /// new one when that connection turns out to have been closed under the request
    /// (GET and HEAD are idempotent and have no body to lose).
    async fn send_lean(
        &self,
        authority: &str,
        req: &Request<Body>,
        home: Option<h1::Home>,
        answer_by: Instant,
    ) -> Result<Response<Body>, SendError> {
        let pooled = home
            .as_ref()
            .and_then(|h| h.idle.take(self.inner.idle_timeout));
        if let Some((mut conn, _)) = pooled {
            self.extend(conn.deadline(), answer_by);
            match h1::exchange(conn, req, home.clone()).await {
                None => return Err(SendError::Timeout),
                Some(Ok(res)) => return Ok(res),
                Some(Err(h1::Failure::NothingReceived(e))) => {
                    tracing::debug!(error = %e, upstream = %authority, "pooled connection broke; sending once more on a new one");
                }
                Some(Err(e)) => return Err(SendError::Unreachable(e.into_message())),
            }
        }
        // Boxed: taken once per connection, not per request (as in `send`).
        let fresh = Box::pin(async {
            let stream = self.connect_tcp(authority).await?;
            let conn = h1::Conn::new(stream, self.inner.response_timeout);
            match h1::exchange(conn, req, home).await {
                None => Err(SendError::Timeout),
                Some(Ok(res)) => Ok(res),
                Some(Err(e)) => Err(SendError::Unreachable(e.into_message())),
            }
        });
        tokio::time::timeout_at(answer_by, fresh)
            .await
            .unwrap_or(Err(SendError::Timeout))
    }

    /// Sends `req` on a connection of its own, which joins the pool afterwards unless it
    /// is upgraded.
    async fn send_on_new(
        &self,
        authority: &str,
        req: Request<Body>,
        home: Option<&Arc<Idle>>,
        upgrade: bool,
    ) -> Result<Response<Body>, SendError> {
        let mut conn = self.connect(authority).await?;
        let res = conn.sender.try_send_request(req).await.map_err(|mut e| {
            SendError::Unreachable(e.take_message().map_or_else(
                || e.error().to_string(),
                |_| "the new connection closed before the request was sent".into(),
            ))
        })?;
        let home = if upgrade { None } else { home.cloned() };
        Ok(wrap(res, home, conn))
    }

    /// The most recently used idle connection that is still open and ready, waited for
    /// no later than `answer_by`.
    async fn checkout(&self, idle: &Idle, answer_by: Instant) -> Option<(Conn, Duration)> {
        loop {
            let candidate = idle.lock().pop()?;
            let idle_for = candidate.since.elapsed();
            let mut conn = candidate.conn;
            if idle_for >= self.inner.idle_timeout || conn.sender.is_closed() {
                continue;
            }
            if !conn.sender.is_ready() {
                // The connection task has not yet seen the previous response out; it
                // will in a moment, or report that the connection closed. It can also
                // stay busy: the response ended before the request body was all sent (an
                // upload refused early) and the client is still sending.
                let wait_until = answer_by.min(Instant::now() + self.inner.connect_timeout);
                let ready = tokio::time::timeout_at(wait_until, conn.sender.ready());
                if !matches!(ready.await, Ok(Ok(()))) {
                    if Instant::now() >= answer_by {
                        return None;
                    }
                    continue;
                }
            }
            return Some((conn, idle_for));
        }
    }

    async fn connect_tcp(&self, authority: &str) -> Result<TcpStream, SendError> {
        let connect = async {
            let stream = match authority.parse::<std::net::SocketAddr>() {
                Ok(addr) => TcpStream::connect(addr).await,
                Err(_) => TcpStream::connect(authority).await,
            }?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Err(_) => Err(SendError::ConnectTimeout),
            Ok(Err(e)) => Err(SendError::Unreachable(e.to_string())),
            Ok(Ok(stream)) => Ok(stream),
        }
    }

    async fn connect(&self, authority: &str) -> Result<Conn, SendError> {
        let stream = self.connect_tcp(authority).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn {
            sender,
            answer_by: Box::pin(tokio::time::sleep(self.inner.response_timeout)),
        })
    }

    /// Closes connections idle past the idle timeout even when no request comes to
    /// reuse them, so we never hold a backend's socket open for long.
    fn start_reaper(&self) {
        if self.inner.reaper_started.load(Ordering::Relaxed)
            || self.inner.reaper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = self.inner.idle_timeout / 4;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                for homes in inner.upstreams.values() {
                    homes.hyper.lock().retain(|c| {
                        c.since.elapsed() < inner.idle_timeout && !c.conn.sender.is_closed()
                    });
                    homes.lean.prune(inner.idle_timeout);
                }
            }
        });
    }

    #[cfg(test)]
    fn idle_count(&self, authority: &str) -> usize {
        let homes = &self.inner.upstreams[authority];
        homes.hyper.lock().len() + homes.lean.count()
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn head_copy(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(crate::web::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

fn wrap(res: Response<Incoming>, home: Option<Arc<Idle>>, conn: Conn) -> Response<Body> {
    let mut body = ReturnsConnection {
        body: None,
        home: home.map(|h| (h, conn)),
    };
    let (parts, incoming) = res.into_parts();
    if incoming.is_end_stream() {
        // No body to read (204, 304, HEAD, `Content-Length: 0`): nothing will poll it.
        body.give_back();
    }
    body.body = Some(incoming);
    Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
}

/// The upstream's response body; at its end the connection goes back to the pool. A body
/// dropped before its end (the client went away) drops the connection with it: the rest
/// of that response is still on the wire.
struct ReturnsConnection {
    body: Option<Incoming>,
    home: Option<(Arc<Idle>, Conn)>,
}

impl ReturnsConnection {
    fn give_back(&mut self) {
        if let Some((idle, conn)) = self.home.take() {
            idle.give_back(conn);
        }
    }
}

impl HttpBody for ReturnsConnection {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn get(authority: &str, path: &str) -> Request<Body> {
        Request::builder()
            .uri(format!("http://{authority}{path}"))
            .header(http::header::HOST, authority)
            .body(crate::web::empty())
            .unwrap()
    }

    /// A bodiless `GET` goes through [`h1`]; a bodiless `DELETE` through hyper's client,
    /// which is how the tests reach either stack.
    const HYPER_PATH: Method = Method::DELETE;

    async fn hello(pool: &Pool, authority: &str) -> String {
        hello_via(pool, authority, Method::GET).await
    }

    async fn hello_via(pool: &Pool, authority: &str, method: Method) -> String {
        let mut req = get(authority, "/");
        let lean = method == Method::GET || method == Method::HEAD;
        *req.method_mut() = method;
        let answer = pool.send(authority, Box::new(req), false).await.unwrap();
        // Only the lean client's answers arrive cleaned of hop-by-hop fields.
        assert_eq!(answer.cleaned, lean);
        read_all(answer).await
    }

    async fn read_all(answer: Answer) -> String {
        let bytes = http_body_util::BodyExt::collect(answer.response.into_body())
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Upstream {
        KeepAlive,
        /// Closes every connection right after answering but still announces keep-alive:
        /// the stale-connection race made certain.
        CloseAfterEach,
        /// Answers the first request on a connection; reads the second and hangs up
        /// without answering, as a backend closing an idle connection just as a request
        /// arrives does.
        HangUpOnSecond,
    }

    struct Counts {
        connections: AtomicUsize,
        posts: AtomicUsize,
    }

    /// An upstream that answers `hello` and counts connections and POSTs received.
    async fn upstream(mode: Upstream) -> (String, Arc<Counts>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let counts = Arc::new(Counts {
            connections: AtomicUsize::new(0),
            posts: AtomicUsize::new(0),
        });
        let seen_by_upstream = counts.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let counts = seen_by_upstream.clone();
                counts.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    let mut requests = 0;
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = seen.drain(..end + 4).collect();
                            requests += 1;
                            if head.starts_with(b"POST") {
                                counts.posts.fetch_add(1, Ordering::SeqCst);
                            }
                            if mode == Upstream::HangUpOnSecond && requests == 2 {
                                return;
                            }
                            let reply =
                                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello";
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                            if mode == Upstream::CloseAfterEach {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (authority, counts)
    }

    #[tokio::test]
    async fn connections_are_reused_one_after_another() {
        let (authority, counts) = upstream(Upstream::KeepAlive).await;
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(1),
            Duration::from_secs(5),
            IDLE_TIMEOUT,
        );
        for _ in 0..20 {
            assert_eq!(hello(&pool, &authority).await, "hello");
        }
        assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(&authority), 1);
        for _ in 0..20 {
            assert_eq!(hello_via(&pool, &authority, HYPER_PATH).await, "hello");
        }
        // One more: each stack keeps its own.
        assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(&authority), 2);
    }

    /// A request body that never ends.
    struct Endless;

    impl HttpBody for Endless {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    /// The upstream answers an upload before reading its body, so the connection goes
    /// back to the pool still busy sending it. The next request waits for it only until
    /// its own response timeout, not for the connect timeout.
    #[tokio::test]
    async fn waiting_for_a_busy_pooled_connection_counts_against_the_timeout() {
        let (authority, _) = upstream(Upstream::KeepAlive).await;
        let response_timeout = Duration::from_millis(300);
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(5),
            response_timeout,
            IDLE_TIMEOUT,
        );
        let mut upload = get(&authority, "/");
        *upload.method_mut() = Method::POST;
        *upload.body_mut() = http_body_util::BodyExt::boxed(Endless);
        let res = pool
            .send(&authority, Box::new(upload), false)
            .await
            .unwrap();
        assert_eq!(read_all(res).await, "hello");
        assert_eq!(pool.idle_count(&authority), 1);

        let started = Instant::now();
        let mut delete = get(&authority, "/");
        *delete.method_mut() = HYPER_PATH;
        let sent = pool.send(&authority, Box::new(delete), false).await;
        let waited = started.elapsed();
        assert!(matches!(sent, Err(SendError::Timeout)), "{sent:?}");
        assert!(waited >= response_timeout, "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test]
    async fn a_body_left_unread_does_not_return_its_connection() {
        let (authority, counts) = upstream(Upstream::KeepAlive).await;
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(1),
            Duration::from_secs(5),
            IDLE_TIMEOUT,
        );
        let res = pool
            .send(&authority, Box::new(get(&authority, "/")), false)
            .await
            .unwrap();
        drop(res);
        assert_eq!(pool.idle_count(&authority), 0);
        assert_eq!(hello(&pool, &authority).await, "hello");
        assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_while_idle_is_not_used() {
        let (authority, counts) = upstream(Upstream::CloseAfterEach).await;
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(1),
            Duration::from_secs(5),
            IDLE_TIMEOUT,
        );
        for round in 0..5 {
            assert_eq!(hello(&pool, &authority).await, "hello", "round {round}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counts.connections.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_get_the_backend_hung_up_on_is_sent_again_once() {
        let (authority, counts) = upstream(Upstream::HangUpOnSecond).await;
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(1),
            Duration::from_secs(5),
            IDLE_TIMEOUT,
        );
        for round in 0..3 {
            assert_eq!(hello(&pool, &authority).await, "hello", "round {round}");
        }
        assert_eq!(counts.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_idempotent_request_on_hypers_stack_is_sent_again_once() {
        let (authority, counts) = upstream(Upstream::HangUpOnSecond).await;
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(1),
            Duration::from_secs(5),
            IDLE_TIMEOUT,
        );
        for round in 0..3 {
            assert_eq!(
                hello_via(&pool, &authority, HYPER_PATH).await,
                "hello",
                "round {round}"
            );
            // Past the stale-risk age, so the request is kept for a second try.
            tokio::time::sleep(STALE_RISK_AFTER + Duration::from_millis(20)).await;
        }
        assert_eq!(counts.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_post_the_backend_may_have_acted_on_is_never_sent_twice() {
        let (authority, counts) = upstream(Upstream::HangUpOnSecond).await;
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(1),
            Duration::from_secs(5),
            IDLE_TIMEOUT,
        );
        // On hyper's stack, where the POST will look for an idle connection.
        assert_eq!(hello_via(&pool, &authority, HYPER_PATH).await, "hello");
        tokio::time::sleep(STALE_RISK_AFTER + Duration::from_millis(20)).await;
        // Without a body, so only the method tells it apart from a GET.
        let mut post = get(&authority, "/");
        *post.method_mut() = Method::POST;
        post.headers_mut()
            .insert(http::header::CONTENT_LENGTH, "0".parse().unwrap());
        let sent = pool.send(&authority, Box::new(post), false).await;
        assert!(matches!(sent, Err(SendError::Unreachable(_))), "{sent:?}");
        assert_eq!(counts.posts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (authority, _) = upstream(Upstream::KeepAlive).await;
        let idle_timeout = Duration::from_millis(200);
        let pool = Pool::new(
            [authority.as_str()],
            Duration::from_secs(1),
            Duration::from_secs(5),
            idle_timeout,
        );
        assert_eq!(hello(&pool, &authority).await, "hello");
        assert_eq!(pool.idle_count(&authority), 1);
        tokio::time::sleep(idle_timeout * 2).await;
        assert_eq!(pool.idle_count(&authority), 0);
    }
}
