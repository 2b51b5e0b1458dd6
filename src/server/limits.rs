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
    /// Failed attempts.
    count: u32,
    /// Throttled attempts now waiting or being checked.
    pending: u32,
    /// When the latest throttled attempt was (or will be) checked.
    slot: Instant,
    /// The latest activity, for lapsing.
    last: Instant,
}

/// An attempt begun with [`LoginThrottle::begin`]: how long to wait, and
/// which counts it holds a place in. Pass it back to
/// [`LoginThrottle::failed`] or [`LoginThrottle::succeeded`].
#[must_use]
pub struct LoginAttempt {
    /// Wait this long before checking the password.
    pub wait: Duration,
    keys: Vec<Key>,
}

/// Login throttling: after [`FREE_LOGIN_FAILURES`] failures for an account
/// or a source address, each further attempt waits `base`, then twice that,
/// and so on up to `cap`. Throttled attempts are scheduled one after
/// another, each later than the one before, so guesses sent in parallel
/// wait in turn instead of sharing one wait. A success clears the
/// account's count and takes that account's failures off the address's
/// count (so logging in to your own account does not clear the count a
/// password sprayer built up against others). Counts lapse once nothing
/// has happened for four times the cap. Successful logins never count, so
/// many people behind one address log in freely.
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Failures>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an attempt for `user` from `addr`.
    pub fn begin(&self, user: &Username, addr: IpAddr) -> LoginAttempt {
        let now = Instant::now();
        let lapse = self.cap * 4;
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            map.retain(|_, f| f.pending > 0 || now.duration_since(f.last) <= lapse);
        }
        let mut attempt = LoginAttempt {
            wait: Duration::ZERO,
            keys: Vec::new(),
        };
        for key in [Key::Account(user.clone()), Key::Address(addr)] {
            let Some(f) = map.get_mut(&key) else { continue };
            if f.pending == 0 && now.duration_since(f.last) > lapse {
                map.remove(&key);
                continue;
            }
            if f.count < FREE_LOGIN_FAILURES {
                continue;
            }
            let exp = (f.count + f.pending - FREE_LOGIN_FAILURES).min(20);
            let delay = self.base.saturating_mul(1 << exp).min(self.cap);
            f.slot = f.slot.max(now) + delay;
            f.pending += 1;
            f.last = now;
            attempt.wait = attempt.wait.max(f.slot - now);
            attempt.keys.push(key);
        }
        attempt
    }

    fn release(map: &mut HashMap<Key, Failures>, attempt: &LoginAttempt) {
        for key in &attempt.keys {
            if let Some(f) = map.get_mut(key) {
                f.pending = f.pending.saturating_sub(1);
            }
        }
    }

    /// The attempt failed: it counts against the account and the address.
    pub fn failed(&self, user: &Username, addr: IpAddr, attempt: LoginAttempt) {
        let now = Instant::now();
        let mut map = self.lock();
        Self::release(&mut map, &attempt);
        for key in [Key::Account(user.clone()), Key::Address(addr)] {
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                pending: 0,
                slot: now,
                last: now,
            });
            f.count = f.count.saturating_add(1);
            f.last = now;
        }
    }

    /// The attempt succeeded.
    pub fn succeeded(&self, user: &Username, addr: IpAddr, attempt: LoginAttempt) {
        let mut map = self.lock();
        Self::release(&mut map, &attempt);
        let against_user = map
            .remove(&Key::Account(user.clone()))
            .map_or(0, |f| f.count);
        if let Some(f) = map.get_mut(&Key::Address(addr)) {
            f.count = f.count.saturating_sub(against_user);
        }
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
    fn logins_back_off_exponentially_in_turn_and_reset_on_success() {
        let t = LoginThrottle::new(Duration::from_millis(100), Duration::from_secs(1));
        let (u, ip) = (
            Username::parse("alice").unwrap(),
            IpAddr::from([10, 0, 0, 1]),
        );
        for _ in 0..FREE_LOGIN_FAILURES {
            let a = t.begin(&u, ip);
            assert_eq!(a.wait, Duration::ZERO);
            t.failed(&u, ip, a);
        }
        let first = t.begin(&u, ip);
        assert!(first.wait > Duration::from_millis(90) && first.wait <= Duration::from_millis(100));
        // A second attempt at once waits for the first's slot and then twice as long.
        let second = t.begin(&u, ip);
        assert!(
            second.wait > Duration::from_millis(290),
            "{:?}",
            second.wait
        );
        t.failed(&u, ip, first);
        t.failed(&u, ip, second);
        // Another account from the same address waits too.
        let bob = Username::parse("bob").unwrap();
        let b = t.begin(&bob, ip);
        assert!(b.wait > Duration::ZERO);
        t.failed(&bob, ip, b);
        let ok = t.begin(&u, ip);
        t.succeeded(&u, ip, ok);
        let fresh = IpAddr::from([10, 0, 0, 2]);
        assert_eq!(
            t.begin(&u, fresh).wait,
            Duration::ZERO,
            "the account count was cleared"
        );
    }

    #[test]
    fn successes_never_count_and_your_own_login_does_not_clear_others() {
        let t = LoginThrottle::new(Duration::from_millis(100), Duration::from_secs(1));
        let ip = IpAddr::from([10, 0, 0, 9]);
        // Many people logging in from one address: never throttled.
        let attempts: Vec<_> = (0..50)
            .map(|i| (i, t.begin(&Username::parse(&format!("u{i}")).unwrap(), ip)))
            .collect();
        for (i, a) in attempts {
            assert_eq!(a.wait, Duration::ZERO);
            t.succeeded(&Username::parse(&format!("u{i}")).unwrap(), ip, a);
        }
        for i in 0..4 {
            let v = Username::parse(&format!("victim{i}")).unwrap();
            let a = t.begin(&v, ip);
            t.failed(&v, ip, a);
        }
        let me = Username::parse("mallory").unwrap();
        let a = t.begin(&me, ip);
        t.succeeded(&me, ip, a);
        assert!(t.begin(&Username::parse("victim9").unwrap(), ip).wait > Duration::ZERO);
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
