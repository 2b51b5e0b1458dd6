//! Abuse limits: a per-session command rate (token bucket), login
//! throttling by account and by source address (exponential backoff), and
//! a cap on connections per source address.
//!
//! Each is a plain data structure with no I/O, so the session and the
//! accept loop decide what to do when a limit is hit (an `ERR`, a delay, a
//! refused connection) and the rules are unit-tested here without sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::names::Username;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A rate of 0 means unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Failures allowed before attempts start to wait.
pub const FREE_LOGIN_FAILURES: u32 = 3;

/// What login failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(Username),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Login throttling: after [`FREE_LOGIN_FAILURES`] failures for an account
/// or a source address, each further attempt waits `base`, then twice that,
/// and so on up to `cap`. A success clears both counts; counts also lapse
/// once no failure has happened for four times the cap.
pub struct LoginThrottle {
    base: Duration,
    cap: Duration,
    failures: Mutex<HashMap<Key, Failures>>,
}

/// Entries kept before lapsed ones are swept.
const SWEEP_AT: usize = 10_000;

impl LoginThrottle {
    /// A throttle with the given first delay and cap.
    pub fn new(base: Duration, cap: Duration) -> Self {
        LoginThrottle {
            base,
            cap,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn delay(&self, f: Option<&Failures>, now: Instant) -> Duration {
        let Some(f) = f else { return Duration::ZERO };
        if f.count < FREE_LOGIN_FAILURES || now.duration_since(f.last) > self.cap * 4 {
            return Duration::ZERO;
        }
        let exp = (f.count - FREE_LOGIN_FAILURES).min(20);
        let delay = self.base.saturating_mul(1 << exp).min(self.cap);
        (f.last + delay).saturating_duration_since(now)
    }

    /// How long an attempt for `user` from `addr` must wait before it is checked.
    pub fn wait_before(&self, user: &Username, addr: IpAddr) -> Duration {
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let a = self.delay(map.get(&Key::Account(user.clone())), now);
        let b = self.delay(map.get(&Key::Address(addr)), now);
        a.max(b)
    }

    /// Records a failed attempt.
    pub fn failed(&self, user: &Username, addr: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            let lapse = self.cap * 4;
            map.retain(|_, f| now.duration_since(f.last) <= lapse);
        }
        for key in [Key::Account(user.clone()), Key::Address(addr)] {
            let lapsed = self.cap * 4;
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                last: now,
            });
            if now.duration_since(f.last) > lapsed {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
        }
    }

    /// Records a successful login: both counts start again.
    pub fn succeeded(&self, user: &Username, addr: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&Key::Account(user.clone()));
        map.remove(&Key::Address(addr));
    }
}

/// Counts open connections per source address.
#[derive(Default)]
pub struct ConnectionCounts(Mutex<HashMap<IpAddr, usize>>);

/// Holds one connection's place; dropping it frees the place.
pub struct Admission {
    counts: Arc<ConnectionCounts>,
    addr: IpAddr,
}

impl ConnectionCounts {
    /// Admits a connection from `addr` unless it already has `max` open
    /// (0 means no limit).
    pub fn admit(self: &Arc<Self>, addr: IpAddr, max: usize) -> Option<Admission> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(addr).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Admission {
            counts: Arc::clone(self),
            addr,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 5);
        let t0 = Instant::now();
        b.last = t0;
        assert!((0..5).all(|_| b.take_at(t0)));
        assert!(!b.take_at(t0));
        assert!(b.take_at(t0 + Duration::from_millis(100)));
        assert!(!b.take_at(t0 + Duration::from_millis(100)));
        let mut unlimited = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| unlimited.take()));
    }

    #[test]
    fn logins_back_off_exponentially_and_reset_on_success() {
        let t = LoginThrottle::new(Duration::from_millis(100), Duration::from_secs(1));
        let (u, ip) = (
            Username::parse("alice").unwrap(),
            IpAddr::from([10, 0, 0, 1]),
        );
        for _ in 0..FREE_LOGIN_FAILURES {
            assert_eq!(t.wait_before(&u, ip), Duration::ZERO);
            t.failed(&u, ip);
        }
        let first = t.wait_before(&u, ip);
        assert!(first > Duration::from_millis(50) && first <= Duration::from_millis(100));
        t.failed(&u, ip);
        assert!(
            t.wait_before(&u, ip) > Duration::from_millis(150),
            "doubles"
        );
        for _ in 0..30 {
            t.failed(&u, ip);
        }
        assert!(t.wait_before(&u, ip) <= Duration::from_secs(1), "capped");
        // Another account from the same address waits too.
        let bob = Username::parse("bob").unwrap();
        assert!(t.wait_before(&bob, ip) > Duration::ZERO);
        t.succeeded(&u, ip);
        assert_eq!(t.wait_before(&u, ip), Duration::ZERO);
    }

    #[test]
    fn connections_per_address_are_capped_and_freed() {
        let c = Arc::new(ConnectionCounts::default());
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = c.admit(ip, 2).unwrap();
        let _b = c.admit(ip, 2).unwrap();
        assert!(c.admit(ip, 2).is_none());
        assert!(c.admit(IpAddr::from([127, 0, 0, 2]), 2).is_some());
        drop(a);
        assert!(c.admit(ip, 2).is_some());
    }
}
