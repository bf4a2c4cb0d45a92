//! Brute-force limits: the per-account lockout after repeated failures, and the per-IP
//! token bucket for sign-in POSTs. Both take time as an argument, so tests are exact.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use crate::clock::UnixSeconds;

/// `[security]` max_failures / failure_window / lockout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failed password or code attempts that lock the account; 0 disables locking.
    pub max_failures: u32,
    /// Seconds within which failures count.
    pub window: i64,
    /// Seconds the account stays locked.
    pub lockout: i64,
}

impl Default for LockoutPolicy {
    /// 5 failures within 10 minutes lock the account for 15 minutes.
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: 600,
            lockout: 900,
        }
    }
}

/// One account's recent failures and lock. The store keeps its own versioned record;
/// this is the shape the decisions work on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockState {
    /// Times of failures still inside the window, oldest first; never more than
    /// `max_failures` entries.
    pub recent: Vec<UnixSeconds>,
    pub locked_until: Option<UnixSeconds>,
}

/// Until when the account is locked, if it is locked at `now`.
pub fn is_locked(state: &LockState, now: UnixSeconds) -> Option<UnixSeconds> {
    state.locked_until.filter(|&until| until > now)
}

/// Records a failed attempt at `now`. Failures older than the window are forgotten; when
/// the count reaches `max_failures` the account is locked for `lockout` seconds and the
/// count starts again from zero. Returns the new state and whether this failure locked
/// the account (the moment to write the audit event). A failure while already locked
/// changes nothing: callers refuse locked accounts before checking anything, and a lock
/// that an attacker could extend forever would lock the owner out for good.
pub fn record_failure(
    state: LockState,
    now: UnixSeconds,
    policy: &LockoutPolicy,
) -> (LockState, bool) {
    if is_locked(&state, now).is_some() || policy.max_failures == 0 {
        return (state, false);
    }
    let horizon = now.saturating_sub(policy.window);
    let mut recent: Vec<UnixSeconds> = state.recent.into_iter().filter(|&t| t > horizon).collect();
    recent.push(now);
    let max = usize::try_from(policy.max_failures).unwrap_or(usize::MAX);
    if recent.len() >= max {
        let locked = LockState {
            recent: Vec::new(),
            locked_until: Some(now.saturating_add(policy.lockout)),
        };
        return (locked, true);
    }
    (
        LockState {
            recent,
            locked_until: None,
        },
        false,
    )
}

/// Forgets failures and any lock: after a successful sign-in step, or when an
/// administrator unlocks the account.
pub fn clear(_state: LockState) -> LockState {
    LockState::default()
}

/// How long a rate-limited client should wait, for the `Retry-After` header (RFC 9110
/// §10.2.3). At least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfterSecs(pub u64);

/// A token bucket is kept in these units so refill is exact integer arithmetic: one
/// token is 60,000 units and each millisecond adds `per_minute` units.
const UNITS_PER_TOKEN: u64 = 60_000;

/// Default bound on tracked clients: about 3 MB at most.
const DEFAULT_MAX_CLIENTS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: u64,
    last_ms: u64,
}

/// Sign-in POSTs per client: a bucket of `per_minute` tokens per client, refilled
/// continuously, so a burst up to `per_minute` passes and then one per 60/`per_minute` s.
///
/// IPv6 clients are counted per /64 (one customer's allocation; an attacker gets 2^64
/// addresses with it) and IPv4-mapped IPv6 as the IPv4 address. The table is bounded:
/// when full, idle clients (whose bucket has refilled) go first, then the least recently
/// seen half, so many addresses cannot grow memory without bound.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `per_minute` = 0 turns limiting off.
    pub fn new(per_minute: u32) -> Self {
        Self::with_max_clients(per_minute, DEFAULT_MAX_CLIENTS)
    }

    pub fn with_max_clients(per_minute: u32, max_clients: usize) -> Self {
        Self {
            per_minute,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip` at `now_millis` (any millisecond clock that does not jump
    /// backwards much; a step back is treated as no time passing).
    pub fn check(&self, ip: IpAddr, now_millis: u64) -> Result<(), RetryAfterSecs> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let rate = u64::from(self.per_minute);
        let capacity = rate * UNITS_PER_TOKEN;
        let key = client_key(ip);
        // A poisoned lock only means another thread panicked mid-update; the counters are
        // still usable, and refusing every sign-in would be worse.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.max_clients {
            self.evict(&mut buckets, now_millis);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            units: capacity,
            last_ms: now_millis,
        });
        refill(bucket, now_millis, rate, capacity);
        if bucket.units >= UNITS_PER_TOKEN {
            bucket.units -= UNITS_PER_TOKEN;
            Ok(())
        } else {
            let missing = UNITS_PER_TOKEN - bucket.units;
            let wait_ms = missing.div_ceil(rate);
            Err(RetryAfterSecs(wait_ms.div_ceil(1000).max(1)))
        }
    }

    /// Number of clients currently tracked.
    pub fn tracked_clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn evict(&self, buckets: &mut HashMap<IpAddr, Bucket>, now_millis: u64) {
        let rate = u64::from(self.per_minute);
        let capacity = rate * UNITS_PER_TOKEN;
        // A full bucket is the same as no bucket: forgetting it loses nothing.
        buckets.retain(|_, b| {
            let mut b = *b;
            refill(&mut b, now_millis, rate, capacity);
            b.units < capacity
        });
        if buckets.len() < self.max_clients {
            return;
        }
        // Still full of active clients (a wide attack): drop the least recently seen half.
        let mut seen: Vec<u64> = buckets.values().map(|b| b.last_ms).collect();
        let mid = seen.len() / 2;
        let (_, median, _) = seen.select_nth_unstable(mid);
        let median = *median;
        buckets.retain(|_, b| b.last_ms > median);
    }
}

fn refill(bucket: &mut Bucket, now_millis: u64, rate: u64, capacity: u64) {
    let elapsed = now_millis.saturating_sub(bucket.last_ms);
    bucket.units = bucket
        .units
        .saturating_add(elapsed.saturating_mul(rate))
        .min(capacity);
    bucket.last_ms = bucket.last_ms.max(now_millis);
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const T0: UnixSeconds = 1_700_000_000;

    fn fail_n(mut s: LockState, times: &[UnixSeconds], p: &LockoutPolicy) -> (LockState, bool) {
        let mut last = false;
        for &t in times {
            (s, last) = record_failure(s, t, p);
        }
        (s, last)
    }

    #[test]
    fn default_policy_is_5_in_10_minutes_locks_15() {
        assert_eq!(
            LockoutPolicy::default(),
            LockoutPolicy {
                max_failures: 5,
                window: 600,
                lockout: 900
            }
        );
    }

    #[test]
    fn four_failures_do_not_lock_the_fifth_does() {
        let p = LockoutPolicy::default();
        let (s, newly) = fail_n(LockState::default(), &[T0, T0 + 1, T0 + 2, T0 + 3], &p);
        assert!(!newly);
        assert_eq!(s.recent.len(), 4);
        assert_eq!(is_locked(&s, T0 + 3), None);
        let (s, newly) = record_failure(s, T0 + 4, &p);
        assert!(newly);
        assert_eq!(is_locked(&s, T0 + 4), Some(T0 + 4 + 900));
        assert!(s.recent.is_empty());
    }

    #[test]
    fn lock_ends_exactly_at_locked_until() {
        let p = LockoutPolicy::default();
        let (s, _) = fail_n(LockState::default(), &[T0; 5], &p);
        let until = T0 + 900;
        assert_eq!(is_locked(&s, until - 1), Some(until));
        assert_eq!(is_locked(&s, until), None);
        assert_eq!(is_locked(&s, until + 1_000_000), None);
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let p = LockoutPolicy::default();
        // Four failures, then the fifth exactly 600 s after the first: the first has left
        // the window, so there are four, no lock.
        let (s, _) = fail_n(
            LockState::default(),
            &[T0, T0 + 100, T0 + 200, T0 + 300],
            &p,
        );
        let (s, newly) = record_failure(s, T0 + 600, &p);
        assert!(!newly);
        assert_eq!(s.recent, vec![T0 + 100, T0 + 200, T0 + 300, T0 + 600]);
        // One second earlier it would have locked.
        let (s2, _) = fail_n(
            LockState::default(),
            &[T0, T0 + 100, T0 + 200, T0 + 300],
            &p,
        );
        let (_, newly) = record_failure(s2, T0 + 599, &p);
        assert!(newly);
        // Slow guessing never locks.
        let times: Vec<_> = (0..50).map(|i| T0 + i * 200).collect();
        let (s, newly) = fail_n(LockState::default(), &times, &p);
        assert!(!newly);
        assert_eq!(is_locked(&s, T0 + 50 * 200), None);
        assert!(s.recent.len() <= 4);
    }

    #[test]
    fn failures_while_locked_do_not_extend_the_lock() {
        let p = LockoutPolicy::default();
        let (s, _) = fail_n(LockState::default(), &[T0; 5], &p);
        let (s2, newly) = fail_n(
            s.clone(),
            &[T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50],
            &p,
        );
        assert!(!newly);
        assert_eq!(s2, s);
    }

    #[test]
    fn after_the_lock_expires_a_fresh_count_starts() {
        let p = LockoutPolicy::default();
        let (s, _) = fail_n(LockState::default(), &[T0; 5], &p);
        let after = T0 + 900;
        let (s, newly) = record_failure(s, after, &p);
        assert!(!newly);
        assert_eq!(s.locked_until, None);
        assert_eq!(s.recent, vec![after]);
        let (s, newly) = fail_n(s, &[after + 1, after + 2, after + 3, after + 4], &p);
        assert!(newly);
        assert_eq!(is_locked(&s, after + 4), Some(after + 4 + 900));
    }

    #[test]
    fn clear_forgets_failures_and_lock() {
        let p = LockoutPolicy::default();
        let (s, _) = fail_n(LockState::default(), &[T0; 3], &p);
        assert_eq!(clear(s), LockState::default());
        let (s, _) = fail_n(LockState::default(), &[T0; 5], &p);
        let s = clear(s);
        assert_eq!(is_locked(&s, T0), None);
    }

    #[test]
    fn custom_policies_are_honoured() {
        let p = LockoutPolicy {
            max_failures: 1,
            window: 60,
            lockout: 30,
        };
        let (s, newly) = record_failure(LockState::default(), T0, &p);
        assert!(newly);
        assert_eq!(is_locked(&s, T0), Some(T0 + 30));
        let off = LockoutPolicy {
            max_failures: 0,
            ..LockoutPolicy::default()
        };
        let (s, newly) = fail_n(LockState::default(), &[T0; 100], &off);
        assert!(!newly);
        assert_eq!(s, LockState::default());
    }

    #[test]
    fn hostile_state_and_times_do_not_panic() {
        let p = LockoutPolicy::default();
        let s = LockState {
            recent: vec![i64::MAX; 1000],
            locked_until: Some(i64::MIN),
        };
        let (s, newly) = record_failure(s, i64::MAX, &p);
        assert!(newly);
        assert_eq!(s.locked_until, Some(i64::MAX));
        let (s, _) = record_failure(LockState::default(), i64::MIN, &p);
        assert_eq!(s.recent, vec![i64::MIN]);
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_refuses_with_retry_after() {
        let rl = RateLimiter::new(30);
        let now = 1_000_000;
        for i in 0..30 {
            assert_eq!(rl.check(v4(1), now), Ok(()), "request {i}");
        }
        // One token per 2 s at 30/min.
        assert_eq!(rl.check(v4(1), now), Err(RetryAfterSecs(2)));
        assert_eq!(rl.check(v4(1), now + 1999), Err(RetryAfterSecs(1)));
        assert_eq!(rl.check(v4(1), now + 2000), Ok(()));
        assert_eq!(rl.check(v4(1), now + 2000), Err(RetryAfterSecs(2)));
        // Other clients are unaffected.
        assert_eq!(rl.check(v4(2), now), Ok(()));
    }

    #[test]
    fn rate_limiter_refills_to_capacity_not_beyond() {
        let rl = RateLimiter::new(3);
        let now = 0;
        for _ in 0..3 {
            assert!(rl.check(v4(1), now).is_ok());
        }
        assert_eq!(rl.check(v4(1), now), Err(RetryAfterSecs(20)));
        // A day later: still only 3.
        let later = 86_400_000;
        for _ in 0..3 {
            assert!(rl.check(v4(1), later).is_ok());
        }
        assert!(rl.check(v4(1), later).is_err());
    }

    #[test]
    fn rate_limiter_survives_time_going_backwards() {
        let rl = RateLimiter::new(1);
        assert!(rl.check(v4(1), 100_000).is_ok());
        assert!(rl.check(v4(1), 0).is_err());
        assert!(rl.check(v4(1), 100_000 + 59_999).is_err());
        assert!(rl.check(v4(1), 100_000 + 60_000).is_ok());
    }

    #[test]
    fn rate_limiter_zero_means_off() {
        let rl = RateLimiter::new(0);
        for _ in 0..1000 {
            assert!(rl.check(v4(1), 0).is_ok());
        }
        assert_eq!(rl.tracked_clients(), 0);
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let rl = RateLimiter::new(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(rl.check(a, 0).is_ok());
        assert!(rl.check(b, 0).is_ok());
        assert!(rl.check(a, 0).is_err());
        assert!(rl.check(other, 0).is_ok());
        // IPv4-mapped IPv6 is the IPv4 client.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(rl.check(v4(1), 0).is_ok());
        assert!(rl.check(mapped, 0).is_ok());
        assert!(rl.check(v4(1), 0).is_err());
    }

    #[test]
    fn rate_limiter_table_is_bounded() {
        let rl = RateLimiter::with_max_clients(5, 100);
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            // Each address active (bucket not full) so idle eviction cannot help.
            let _ = rl.check(ip, u64::from(i));
            assert!(rl.tracked_clients() <= 100);
        }
    }

    #[test]
    fn idle_clients_are_evicted_before_active_ones() {
        let rl = RateLimiter::with_max_clients(60, 3);
        // An active client that used most of its bucket just now.
        for _ in 0..50 {
            assert!(rl.check(v4(1), 10_000).is_ok());
        }
        // Two clients seen long ago, whose buckets have refilled since.
        assert!(rl.check(v4(2), 0).is_ok());
        assert!(rl.check(v4(3), 0).is_ok());
        // A newcomer at t=10s evicts the idle ones, not the active one.
        assert!(rl.check(v4(4), 10_000).is_ok());
        assert_eq!(rl.tracked_clients(), 2);
        for _ in 0..10 {
            assert!(rl.check(v4(1), 10_000).is_ok());
        }
        assert!(rl.check(v4(1), 10_000).is_err());
    }
}
