//! When a client connection counts as idle, for HTTP/1.1 and HTTP/2 alike.
//!
//! A connection counts its open requests — from their arrival until the response body
//! has ended or been dropped — and reports when none has been open, and none has
//! arrived, for the idle timeout (`server.header_read_timeout`). For HTTP/1.1 that is
//! the time a client takes to send the next request head, so it also cuts off a client
//! trickling one (slowloris); HTTP/2 gets the same limit (its keep-alive pings only check
//! that the peer is alive).
//!
//! hyper has its own header-read timeout for HTTP/1.1, but it allocates, registers and
//! cancels a timer for every request: 1,460 of the 38,760 user-space instructions of a
//! proxied request (`bench/instructions.sh`). Here a request costs one atomic addition as
//! it arrives and one as it ends, and a body wrapper that is not boxed (boxed, it cost
//! 640 instructions more); the timer is one per connection and wakes four times per
//! timeout, whatever the request rate. Together: 38,759 → 37,502 instructions.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::web::{Body, BoxError};

/// The timeout is watched in this many ticks: a connection is closed between one timeout
/// and a quarter more after its last request ended.
const TICKS_PER_TIMEOUT: u32 = 4;

/// The open requests in the low half, and in the high half a count of every arrival and
/// end, so that one load tells whether anything happened since the last look.
pub struct Activity(AtomicU64);

const OPEN: u64 = 1;
const EVENT: u64 = 1 << 32;
const OPEN_MASK: u64 = EVENT - 1;

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(0)))
    }

    /// A request has arrived; it stays open while the returned guard lives.
    pub fn start(self: &Arc<Self>) -> Open {
        self.0.fetch_add(EVENT + OPEN, Ordering::Relaxed);
        Open(self.clone())
    }

    fn end(&self) {
        // One more event, one fewer open request; the event count may wrap, which only
        // matters if exactly 2^32 events happen between two ticks.
        self.0
            .fetch_add(EVENT.wrapping_sub(OPEN), Ordering::Relaxed);
    }

    fn open(word: u64) -> u64 {
        word & OPEN_MASK
    }

    /// Completes once no request has been open, and none has arrived, for at least
    /// `timeout` (and at most a quarter more).
    pub async fn idle_for(&self, timeout: Duration) {
        let tick = timeout / TICKS_PER_TIMEOUT;
        let mut last = self.0.load(Ordering::Relaxed);
        let mut quiet_ticks = 0;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = self.0.load(Ordering::Relaxed);
            if now == last && Self::open(now) == 0 {
                quiet_ticks += 1;
                if quiet_ticks >= TICKS_PER_TIMEOUT {
                    return;
                }
            } else {
                quiet_ticks = 0;
                last = now;
            }
        }
    }
}

/// One open request.
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Open {
    /// Keeps the request open until its response body ends or is dropped.
    pub fn until_end_of(self, body: Body) -> Tracked {
        Tracked {
            body,
            open: Some(self),
        }
    }
}

pub struct Tracked {
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
    use tokio::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(10);
    /// The latest a connection may be reported idle: the timeout and one tick more.
    const AT_MOST: Duration = Duration::from_millis(12_500);

    #[tokio::test(start_paused = true)]
    async fn a_connection_nobody_uses_is_idle_after_the_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.idle_for(TIMEOUT).await;
        let waited = Instant::now() - started;
        assert!(waited >= TIMEOUT && waited <= AT_MOST, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_response_is_not_idle() {
        let activity = Activity::new();
        let open = activity.start();
        let idle = activity.idle_for(TIMEOUT);
        tokio::pin!(idle);
        let waited = tokio::time::timeout(Duration::from_secs(30), idle.as_mut()).await;
        assert!(waited.is_err(), "idle while a request was open");
        drop(open);
        let ended = Instant::now();
        idle.await;
        let waited = Instant::now() - ended;
        assert!(waited >= TIMEOUT && waited <= AT_MOST, "{waited:?}");
    }

    /// A request that comes and goes between two looks still counts: the connection is
    /// not idle until the timeout has passed since it ended.
    #[tokio::test(start_paused = true)]
    async fn a_short_request_restarts_the_timeout() {
        let activity = Activity::new();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(TIMEOUT).await }
        });
        tokio::time::sleep(Duration::from_millis(8_000)).await;
        drop(activity.start());
        let ended = Instant::now();
        waiting.await.unwrap();
        let waited = Instant::now() - ended;
        assert!(waited >= TIMEOUT && waited <= AT_MOST, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_body_has_ended() {
        let activity = Activity::new();
        let body = activity.start().until_end_of(crate::web::full("hello"));
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(TIMEOUT).await }
        });
        // A body still being sent keeps the connection busy past the timeout.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!waiting.is_finished());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        let ended = Instant::now();
        waiting.await.unwrap();
        let waited = Instant::now() - ended;
        assert!(waited >= TIMEOUT && waited <= AT_MOST, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_body_closes_its_request() {
        let activity = Activity::new();
        drop(
            activity
                .start()
                .until_end_of(crate::web::full("never read")),
        );
        assert_eq!(Activity::open(activity.0.load(Ordering::Relaxed)), 0);
        let started = Instant::now();
        activity.idle_for(TIMEOUT).await;
        assert!(Instant::now() - started <= AT_MOST);
    }

    #[test]
    fn open_requests_are_counted_apart_from_events() {
        let activity = Activity::new();
        let first = activity.start();
        let second = activity.start();
        drop(first);
        let word = activity.0.load(Ordering::Relaxed);
        assert_eq!(Activity::open(word), 1);
        assert_eq!(word >> 32, 3);
        drop(second);
        assert_eq!(Activity::open(activity.0.load(Ordering::Relaxed)), 0);
    }
}
