//! Forwarding to upstreams: the pooled client, streaming bodies both ways, protocol
//! upgrades (WebSocket), and the upstream timeouts that turn into 502/504.

pub mod h1;
pub mod headers;
mod pool;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::config::Upstream;
use crate::web::Body;
use pool::{Pool, SendError};

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
    pool: Arc<Pool>,
}

impl Upstreams {
    /// `authorities`: the `host:port` of every upstream that will be asked.
    pub fn new<'a>(
        authorities: impl IntoIterator<Item = &'a str>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            pool: Arc::new(Pool::new(
                authorities,
                connect_timeout,
                response_timeout,
                pool::IDLE_TIMEOUT,
            )),
        }
    }

    /// Sends `req` to `upstream` and streams the response back. The gate has already
    /// removed the request's hop-by-hop fields (`headers::strip_hop_by_hop`, which gave
    /// `upgrade`) — before it added its own headers, which a client's `Connection` must
    /// not be able to remove — and cleaned and decorated it. Upgrade requests are spliced
    /// after a `101`.
    pub async fn forward(
        &self,
        mut req: Box<Request<Body>>,
        upgrade: Option<HeaderValue>,
        upstream: &Upstream,
    ) -> Result<Response<Body>, ProxyError> {
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));
        if let Some(proto) = &upgrade {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, proto.clone());
        }

        // The gate has set `Host` to the routed authority (an HTTP/2 client sends only
        // `:authority`; upstreams speak HTTP/1.1). Origin form on the wire, as a client
        // talking to the backend directly sends.
        if req.uri().authority().is_some() {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        *req.version_mut() = Version::HTTP_11;

        let sent = self.pool.send(&upstream.authority, req, upgrade.is_some());
        let answer = match sent.await {
            Err(SendError::Timeout) => return Err(ProxyError::Timeout),
            Err(SendError::Unreachable(why)) => {
                tracing::debug!(error = %why, upstream = %upstream.authority, "upstream request failed");
                return Err(ProxyError::Unreachable);
            }
            Err(SendError::ConnectTimeout) => {
                tracing::debug!(upstream = %upstream.authority, "connecting to the upstream timed out");
                return Err(ProxyError::Unreachable);
            }
            Ok(answer) => answer,
        };
        let mut res = answer.response;

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
                crate::web::cookies::strip_own_set_cookies(res.headers_mut());
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(p) = proto {
                    res.headers_mut().insert(header::UPGRADE, p);
                }
                return Ok(res);
            }
            // A 101 nobody asked for cannot be relayed meaningfully.
            return Err(ProxyError::Unreachable);
        }

        if !answer.cleaned {
            headers::strip_hop_by_hop(res.headers_mut());
            crate::web::cookies::strip_own_set_cookies(res.headers_mut());
        }
        Ok(res)
    }
}
