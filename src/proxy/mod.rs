//! Forwarding to upstreams: the pooled client, streaming bodies both ways, protocol
//! upgrades (WebSocket), and the upstream timeouts that turn into 502/504.

pub mod headers;

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::Upstream;
use crate::web::Body;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the upstream could not be reached or broke the connection")]
    Unreachable,
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the request could not be forwarded: {0}")]
    BadRequest(&'static str),
}

/// The shared upstream client. Cloning is cheap; all clones share one connection pool.
#[derive(Clone)]
pub struct Upstreams {
    client: Client<HttpConnector, Body>,
    response_timeout: Duration,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            // Shorter than the keep-alive of common backends (nginx 75 s, Node 5 s), so we
            // rarely send on a connection the backend is closing; when we do, the client
            // retries requests that were not yet sent (hyper's retry_canceled_requests).
            .pool_idle_timeout(Duration::from_millis(4500))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector);
        Self {
            client,
            response_timeout,
        }
    }

    /// Sends `req` (its headers already cleaned and decorated by the gate) to `upstream`
    /// and streams the response back. Upgrade requests are spliced after a `101`.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        upstream: &Upstream,
    ) -> Result<Response<Body>, ProxyError> {
        let upgrade = headers::strip_hop_by_hop(req.headers_mut());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        if let Some(proto) = &upgrade {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, proto.clone());
        }

        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(upstream.uri_authority.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        let uri = Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("the request target is not valid"))?;
        // HTTP/2 clients send `:authority` instead of Host; upstreams speak HTTP/1.1.
        if !req.headers().contains_key(header::HOST) {
            if let Some(auth) = req.uri().authority() {
                if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
        }
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;

        let sent = tokio::time::timeout(self.response_timeout, self.client.request(req)).await;
        let mut res = match sent {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, upstream = %upstream.authority, "upstream request failed");
                return Err(ProxyError::Unreachable);
            }
            Ok(Ok(res)) => res,
        };

        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut res);
                tokio::spawn(async move {
                    let (Ok(client), Ok(server)) = (client_upgrade.await, upstream_upgrade.await)
                    else {
                        return;
                    };
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let proto = res.headers().get(header::UPGRADE).cloned();
                headers::strip_hop_by_hop(res.headers_mut());
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(p) = proto {
                    res.headers_mut().insert(header::UPGRADE, p);
                }
                return Ok(res.map(|b| b.map_err(Into::into).boxed()));
            }
            // A 101 nobody asked for cannot be relayed meaningfully.
            return Err(ProxyError::Unreachable);
        }

        headers::strip_hop_by_hop(res.headers_mut());
        Ok(res.map(|b| b.map_err(Into::into).boxed()))
    }
}
