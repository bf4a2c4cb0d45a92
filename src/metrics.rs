//! Prometheus metrics: plain atomics bumped on the request path, rendered in the text
//! exposition format on `server.metrics_listen` — never on the public listener.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::store::Store;
use crate::web::{self, Body};

/// Upper bounds (seconds) of the upstream latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInOutcome {
    Success,
    BadPassword,
    BadCode,
    Replay,
    Locked,
}

impl SignInOutcome {
    const ALL: [SignInOutcome; 5] = [
        SignInOutcome::Success,
        SignInOutcome::BadPassword,
        SignInOutcome::BadCode,
        SignInOutcome::Replay,
        SignInOutcome::Locked,
    ];
    fn label(self) -> &'static str {
        match self {
            SignInOutcome::Success => "success",
            SignInOutcome::BadPassword => "bad_password",
            SignInOutcome::BadCode => "bad_code",
            SignInOutcome::Replay => "replay",
            SignInOutcome::Locked => "locked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Unreachable,
    Timeout,
}

#[derive(Default)]
struct AppCounters {
    /// Responses by status class 1xx..5xx.
    by_class: [AtomicU64; 5],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    unreachable: AtomicU64,
    timeouts: AtomicU64,
}

pub struct Metrics {
    app_ids: Vec<String>,
    /// One per app, then one for requests that reached no app (sign-in pages, 404s).
    apps: Vec<AppCounters>,
    signins: [AtomicU64; 5],
    lockouts: AtomicU64,
    enrolments: AtomicU64,
}

impl Metrics {
    pub fn new(app_ids: Vec<String>) -> Self {
        let apps = (0..=app_ids.len())
            .map(|_| AppCounters::default())
            .collect();
        Self {
            app_ids,
            apps,
            signins: Default::default(),
            lockouts: AtomicU64::new(0),
            enrolments: AtomicU64::new(0),
        }
    }

    fn app(&self, app: Option<usize>) -> Option<&AppCounters> {
        self.apps.get(app.unwrap_or(self.app_ids.len()))
    }

    pub fn request(&self, app: Option<usize>, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        if let Some(c) = self.app(app) {
            c.by_class[class].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn upstream_latency(&self, app: usize, took: Duration) {
        let Some(c) = self.app(Some(app)) else { return };
        let secs = took.as_secs_f64();
        // Cumulative buckets are summed at render time; here each observation lands in
        // the first bucket that holds it.
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            c.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        c.latency_count.fetch_add(1, Ordering::Relaxed);
        c.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn upstream_error(&self, app: usize, kind: UpstreamError) {
        let Some(c) = self.app(Some(app)) else { return };
        match kind {
            UpstreamError::Unreachable => c.unreachable.fetch_add(1, Ordering::Relaxed),
            UpstreamError::Timeout => c.timeouts.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub fn signin(&self, outcome: SignInOutcome) {
        if let Some(i) = SignInOutcome::ALL.iter().position(|o| *o == outcome) {
            self.signins[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn lockout(&self) {
        self.lockouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn enrolment(&self) {
        self.enrolments.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, active_sessions: Option<u64>) -> String {
        let mut out = String::new();
        let label = |i: usize| -> &str { self.app_ids.get(i).map(String::as_str).unwrap_or("-") };
        let _ = writeln!(
            out,
            "# HELP portcullis_requests_total Responses sent, by app and status class."
        );
        let _ = writeln!(out, "# TYPE portcullis_requests_total counter");
        for (i, c) in self.apps.iter().enumerate() {
            for (k, n) in c.by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "portcullis_requests_total{{app=\"{}\",class=\"{}xx\"}} {}",
                    label(i),
                    k + 1,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP portcullis_upstream_duration_seconds Time from forwarding a request to the upstream's response headers.");
        let _ = writeln!(out, "# TYPE portcullis_upstream_duration_seconds histogram");
        for (i, c) in self.apps.iter().enumerate().take(self.app_ids.len()) {
            let mut cumulative = 0;
            for (b, n) in LATENCY_BUCKETS.iter().zip(c.latency_buckets.iter()) {
                cumulative += n.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "portcullis_upstream_duration_seconds_bucket{{app=\"{}\",le=\"{b}\"}} {cumulative}",
                    label(i)
                );
            }
            let count = c.latency_count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "portcullis_upstream_duration_seconds_bucket{{app=\"{}\",le=\"+Inf\"}} {count}",
                label(i)
            );
            let _ = writeln!(
                out,
                "portcullis_upstream_duration_seconds_sum{{app=\"{}\"}} {}",
                label(i),
                c.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "portcullis_upstream_duration_seconds_count{{app=\"{}\"}} {count}",
                label(i)
            );
        }
        let _ = writeln!(out, "# HELP portcullis_upstream_errors_total Requests the upstream failed: unreachable (502) or timeout (504).");
        let _ = writeln!(out, "# TYPE portcullis_upstream_errors_total counter");
        for (i, c) in self.apps.iter().enumerate().take(self.app_ids.len()) {
            let _ = writeln!(
                out,
                "portcullis_upstream_errors_total{{app=\"{}\",kind=\"unreachable\"}} {}",
                label(i),
                c.unreachable.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "portcullis_upstream_errors_total{{app=\"{}\",kind=\"timeout\"}} {}",
                label(i),
                c.timeouts.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_signins_total Sign-in steps by outcome."
        );
        let _ = writeln!(out, "# TYPE portcullis_signins_total counter");
        for (o, n) in SignInOutcome::ALL.iter().zip(self.signins.iter()) {
            let _ = writeln!(
                out,
                "portcullis_signins_total{{outcome=\"{}\"}} {}",
                o.label(),
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_lockouts_total Accounts locked after too many failures."
        );
        let _ = writeln!(out, "# TYPE portcullis_lockouts_total counter");
        let _ = writeln!(
            out,
            "portcullis_lockouts_total {}",
            self.lockouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_enrolments_total Authenticator apps set up."
        );
        let _ = writeln!(out, "# TYPE portcullis_enrolments_total counter");
        let _ = writeln!(
            out,
            "portcullis_enrolments_total {}",
            self.enrolments.load(Ordering::Relaxed)
        );
        if let Some(n) = active_sessions {
            let _ = writeln!(out, "# HELP portcullis_sessions Sessions in the store (sign-ins, their app sessions and pending sign-ins).");
            let _ = writeln!(out, "# TYPE portcullis_sessions gauge");
            let _ = writeln!(out, "portcullis_sessions {n}");
        }
        out
    }
}

/// Serves `GET /metrics` on its own (private) listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let store = store.clone();
                async move { Ok::<_, Infallible>(scrape(&metrics, store.as_ref(), &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn scrape(metrics: &Metrics, store: &dyn Store, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return web::text(
            StatusCode::NOT_FOUND,
            "Not found. Metrics are at /metrics.\n",
        );
    }
    let sessions = store.count_sessions().ok();
    let mut res = Response::new(web::full(metrics.render(sessions)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// Binds the metrics listener, refusing the public one by construction (config checks
/// the addresses differ).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text_format() {
        let m = Metrics::new(vec!["portal".into()]);
        m.request(Some(0), StatusCode::OK);
        m.request(Some(0), StatusCode::BAD_GATEWAY);
        m.request(None, StatusCode::NOT_FOUND);
        m.upstream_latency(0, Duration::from_millis(3));
        m.upstream_error(0, UpstreamError::Timeout);
        m.signin(SignInOutcome::Success);
        m.lockout();
        m.enrolment();
        let text = m.render(Some(7));
        assert!(text.contains("portcullis_requests_total{app=\"portal\",class=\"2xx\"} 1"));
        assert!(text.contains("portcullis_requests_total{app=\"portal\",class=\"5xx\"} 1"));
        assert!(text.contains("portcullis_requests_total{app=\"-\",class=\"4xx\"} 1"));
        assert!(text.contains(
            "portcullis_upstream_duration_seconds_bucket{app=\"portal\",le=\"0.0025\"} 0"
        ));
        assert!(text.contains(
            "portcullis_upstream_duration_seconds_bucket{app=\"portal\",le=\"0.005\"} 1"
        ));
        assert!(text
            .contains("portcullis_upstream_duration_seconds_bucket{app=\"portal\",le=\"+Inf\"} 1"));
        assert!(
            text.contains("portcullis_upstream_errors_total{app=\"portal\",kind=\"timeout\"} 1")
        );
        assert!(text.contains("portcullis_signins_total{outcome=\"success\"} 1"));
        assert!(text.contains("portcullis_lockouts_total 1"));
        assert!(text.contains("portcullis_enrolments_total 1"));
        assert!(text.contains("portcullis_sessions 7"));
    }
}
