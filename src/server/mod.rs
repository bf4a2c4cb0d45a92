//! The public listener: TCP (and TLS), HTTP/1.1 and HTTP/2, client timeouts, and graceful
//! shutdown. It knows nothing about sign-in; every request goes to [`crate::gate::handle`].

pub mod housekeeping;
mod idle;
pub mod runtime;
mod stall;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::gate::{self, ConnInfo};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

async fn bind_metrics(state: &AppState) -> Result<Option<TcpListener>, ServerError> {
    let Some(addr) = state.config.server.metrics_listen else {
        return Ok(None);
    };
    crate::metrics::bind(addr)
        .await
        .map(Some)
        .map_err(|e| ServerError::Bind {
            addr,
            reason: e.to_string(),
        })
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A bound, not yet running server. Binding first lets tests ask for port 0 and read the
/// real port before any request is sent.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
}

impl Application {
    pub async fn build(state: Arc<AppState>) -> Result<Self, ServerError> {
        let addr = state.config.server.listen;
        let tls = match &state.config.tls {
            Some(t) => Some(TlsAcceptor::from(tls::server_config(&t.cert, &t.key)?)),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Bind {
                addr,
                reason: match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "the address is already in use — is another server running?".into()
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "permission denied — ports below 1024 need privileges".into()
                    }
                    _ => e.to_string(),
                },
            })?;
        let metrics_listener = bind_metrics(&state).await?;
        Ok(Self {
            listener,
            metrics_listener,
            state,
            tls,
        })
    }

    /// Serves on a listener the caller bound already (tests bind port 0 first so the
    /// public URLs in the config can name the real port).
    pub async fn with_listener(
        state: Arc<AppState>,
        listener: std::net::TcpListener,
    ) -> Result<Self, ServerError> {
        let addr = listener.local_addr().unwrap_or(state.config.server.listen);
        let bind_error = |e: std::io::Error| ServerError::Bind {
            addr,
            reason: e.to_string(),
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        let listener = TcpListener::from_std(listener).map_err(bind_error)?;
        let tls = match &state.config.tls {
            Some(t) => Some(TlsAcceptor::from(tls::server_config(&t.cert, &t.key)?)),
            None => None,
        };
        let metrics_listener = bind_metrics(&state).await?;
        Ok(Self {
            listener,
            metrics_listener,
            state,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config.server.listen)
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Where Prometheus metrics are served, when `server.metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight
    /// finish within `drain_timeout`, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Application {
            listener,
            metrics_listener,
            state,
            tls,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(l) = metrics_listener {
            let mut stop = stop_rx.clone();
            tokio::spawn(crate::metrics::serve(
                l,
                state.accounts.metrics.clone(),
                state.accounts.store.clone(),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
        }
        tokio::spawn(housekeeping::run(
            state.accounts.clone(),
            housekeeping::EVERY,
            stop_rx.clone(),
        ));
        tokio::spawn(housekeeping::watch_keys(
            state.clone(),
            crate::identity::RELOAD_EVERY,
            stop_rx.clone(),
        ));
        // Each connection task holds a sender; when all are gone, the drain is complete.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let state = state.clone();
                    let tls = tls.clone();
                    let stop = stop_rx.clone();
                    let alive = alive_tx.clone();
                    tokio::spawn(async move {
                        serve_connection(state, stream, peer, tls, stop).await;
                        drop(alive);
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
        drop(alive_tx);
        let drain = state.config.server.drain_timeout;
        if tokio::time::timeout(drain, alive_rx.recv()).await.is_err() {
            tracing::warn!(
                "some requests did not finish within the drain timeout of {:?}",
                drain
            );
        }
    }
}

async fn serve_connection(
    state: Arc<AppState>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // Connections are served on the runtime's workers, which live as long as the server.
    crate::allocator::keep_stock_on_this_thread();
    let head_timeout = state.config.server.header_read_timeout;
    match tls {
        Some(acceptor) => {
            let Ok(Ok(tls_stream)) =
                tokio::time::timeout(head_timeout, acceptor.accept(stream)).await
            else {
                return;
            };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let conn = ConnInfo { peer, tls: true };
            serve_io(state, tls_stream, h2, conn, stop).await;
        }
        None => {
            let Some(h2) = sniff_h2(&stream, head_timeout).await else {
                return;
            };
            let conn = ConnInfo { peer, tls: false };
            serve_io(state, stream, h2, conn, stop).await;
        }
    }
}

/// Decides between HTTP/1.1 and HTTP/2 prior knowledge on a plain connection by peeking
/// at the first bytes. `None` when the client sends nothing within the timeout: an idle
/// or trickling client is cut off before it costs more than a socket.
async fn sniff_h2(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A prefix of the preface so far: peek does not wait for more, so pause briefly.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve_io<I>(
    state: Arc<AppState>,
    io: I,
    h2: bool,
    conn: ConnInfo,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = stall::StallTimeout::new(io, state.config.server.send_timeout);
    let io = TokioIo::new(io);
    let server = &state.config.server;
    if h2 {
        let activity = idle::Activity::new();
        let service_state = state.clone();
        let requests = activity.clone();
        let service = service_fn(move |req| {
            let state = service_state.clone();
            let open = requests.start();
            async move {
                let res = gate::handle(state, req, conn).await;
                Ok::<_, Infallible>(res.map(|body| open.until_end_of(body)))
            }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            // The same limit as an idle HTTP/1.1 keep-alive connection's.
            () = activity.idle_for(server.header_read_timeout) => conn.as_mut().graceful_shutdown(),
        }
        // Streams still open may finish. A client that leaves the connection idle again,
        // one that never answers the GOAWAY's ping say, is dropped after the same limit
        // instead of when hyper's keep-alive ping gives up on it (40 s).
        tokio::select! {
            _ = conn.as_mut() => {}
            () = activity.idle_for(server.header_read_timeout) => {}
        }
    } else {
        let activity = idle::Activity::new();
        let service_state = state.clone();
        let requests = activity.clone();
        let service = service_fn(move |req| {
            let open = requests.start();
            // Boxed once here, the request's future is not copied as hyper stores and
            // polls it: unboxed, those copies of its few kilobytes were a tenth of the
            // instructions of a proxied request (BENCHMARKS.md).
            let handled = Box::pin(gate::handle(service_state.clone(), req, conn));
            async move { Ok::<_, Infallible>(handled.await.map(|body| open.until_end_of(body))) }
        });
        // Not hyper's header-read timeout (`activity` is the cheaper one, see `idle`),
        // whose default of 30 s applies only with a timer set; said here all the same.
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .max_buf_size(64 * 1024)
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        // Cuts off a connection with no request open or arriving for the timeout: an
        // idle keep-alive connection, or a client trickling a request head. A request is
        // open until its response body has ended, so a slow answer or a long stream is
        // not cut; what hyper still has to flush after that gets the timeout too, as it
        // did under hyper's own header-read timer.
        let idle = activity.idle_for(server.header_read_timeout);
        tokio::pin!(idle);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = idle.as_mut() => return,
            _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = conn.as_mut() => {}
            () = idle.as_mut() => {}
        }
    }
}
