//! When an HTTP/2 connection counts as idle.
//!
//! hyper ends an idle HTTP/1.1 connection through its header-read timeout, but gives
//! HTTP/2 none: its keep-alive pings only check that the peer is alive, so a client could
//! hold a connection (and its buffers) open forever. Here a connection counts its open
//! requests — from their arrival until the response body has ended or been dropped —
//! and reports when none has been open for the idle timeout.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
// tokio's clock, so that tests with paused time can run the timeout.
use tokio::time::Instant;

use crate::web::{Body, BoxError};

pub struct Activity(Mutex<Counted>);

#[derive(Clone, Copy)]
struct Counted {
    open: usize,
    /// When `open` last changed.
    since: Instant,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Counted {
            open: 0,
            since: Instant::now(),
        })))
    }

    /// A request has arrived; it stays open while the returned guard lives.
    pub fn start(self: &Arc<Self>) -> Open {
        self.change(|open| open + 1);
        Open(self.clone())
    }

    fn change(&self, f: impl FnOnce(usize) -> usize) {
        let mut counted = self.0.lock().unwrap_or_else(|p| p.into_inner());
        counted.open = f(counted.open);
        counted.since = Instant::now();
    }

    fn snapshot(&self) -> Counted {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes once no request has been open for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let Counted { open, since } = self.snapshot();
            if open > 0 {
                // Busy: look again later; the timeout runs from when the last one ends.
                tokio::time::sleep(timeout).await;
                continue;
            }
            let deadline = since + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One open request.
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.change(|open| open.saturating_sub(1));
    }
}

impl Open {
    /// Keeps the request open until its response body ends or is dropped.
    pub fn until_end_of(self, body: Body) -> Body {
        http_body_util::BodyExt::boxed(Tracked {
            body,
            open: Some(self),
        })
    }
}

struct Tracked {
    body: Body,
    open: Option<Open>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.open = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_response_is_not_idle() {
        let activity = Activity::new();
        let open = activity.start();
        let idle = activity.idle_for(Duration::from_secs(10));
        tokio::pin!(idle);
        let waited = tokio::time::timeout(Duration::from_secs(30), idle.as_mut()).await;
        assert!(waited.is_err(), "idle while a request was open");
        drop(open);
        let started = Instant::now();
        idle.await;
        assert!(Instant::now() - started >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_body_has_ended() {
        let activity = Activity::new();
        let body = activity.start().until_end_of(crate::web::full("hello"));
        let started = Instant::now();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(Duration::from_secs(10)).await }
        });
        // A body still being sent keeps the connection busy past the timeout.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!waiting.is_finished());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        let ended = Instant::now();
        waiting.await.unwrap();
        assert!(Instant::now() >= ended + Duration::from_secs(10));
        assert!(Instant::now() - started < Duration::from_secs(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_body_closes_its_request() {
        let activity = Activity::new();
        drop(
            activity
                .start()
                .until_end_of(crate::web::full("never read")),
        );
        assert_eq!(activity.snapshot().open, 0);
        let started = Instant::now();
        activity.idle_for(Duration::from_secs(10)).await;
        assert!(Instant::now() - started <= Duration::from_secs(10));
    }
}
