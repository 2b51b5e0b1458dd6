//! Abuse limits: a per-session command rate, login throttling that holds
//! under concurrency, per-address handshake rates, and caps on connections
//! per address (before login) and sessions per user (after).
//!
//! Each is a plain data structure with no I/O and time passed in, so the
//! session and the accept loop decide what to do when a limit is hit (an
//! `ERR`, a refused connection) and the rules are unit-tested here without
//! sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::names::Username;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
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

    /// Whether the bucket is full at `now` (the same as a new one, so it
    /// need not be kept).
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.rate == 0.0 || self.tokens + elapsed * self.rate >= self.burst
    }

    /// Takes one token at `now`, or says how long until there is one.
    pub fn take_at(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Failures allowed for an account, an address or a device token before
/// attempts are spaced out.
pub const FREE_LOGIN_FAILURES: u32 = 3;

/// Failures allowed for a whole address block (/24 or /64) before its
/// attempts are spaced out: many people may share one.
pub const FREE_BLOCK_FAILURES: u32 = 20;

/// What login attempts are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(Username),
    Address(IpAddr),
    /// An IPv4 /24 or IPv6 /64.
    Block(IpAddr),
    /// A device token (its hash), which exempts a login from `Account`.
    Token([u8; 32]),
}

/// The /24 (IPv4) or /64 (IPv6) an address is in, as its first address.
pub fn address_block(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Count {
    /// Failed attempts (lapsing, see [`LoginThrottle`]).
    failures: u32,
    /// Attempts being checked now: they count as failures until they succeed.
    in_flight: u32,
    /// When the last attempt was let through.
    last_attempt: Instant,
    /// The latest activity, for lapsing.
    last: Instant,
}

/// An attempt let through by [`LoginThrottle::begin`]: pass it back to
/// [`LoginThrottle::finish`] once the password was checked.
#[must_use]
#[derive(Debug)]
pub struct LoginAttempt {
    keys: Vec<Key>,
}

/// Login throttling that parallel guesses cannot bypass and an attacker
/// cannot turn into a lockout.
///
/// * Attempts are counted against the **account**, the **address**, its
///   **address block** (/24 or /64) and, when one is presented, the
///   **device token**. For an account or a token, an attempt being checked
///   counts as a failure until it succeeds, so guesses sent at once all see
///   each other.
/// * After [`FREE_LOGIN_FAILURES`] failures (block: [`FREE_BLOCK_FAILURES`])
///   attempts must be spaced: the n-th further one only `base * 2^n`
///   (capped) after the previous one. An attempt that comes too early is
///   **refused at once** with the time to wait, never queued: nobody's
///   login waits behind someone else's guesses.
/// * At most one password check per account is in flight.
/// * A login that presents a valid device token (issued to that device at
///   a successful login) is counted against that token only, not the
///   account, address or block, so an attacker guessing a user's password
///   (even from the user's own network) does not lock the user out of
///   their own devices; the token has its own free failures and spacing.
/// * A global bucket caps password checks per second, with a burst of one
///   second's worth (spraying many accounts from many addresses costs
///   time); token logins do not draw from it.
/// * A success clears the account's and the token's counts and takes the
///   account's failures off the address's. Counts lapse once nothing has
///   happened for four times the cap. The counts live in memory.
pub struct LoginThrottle {
    base: Duration,
    cap: Duration,
    counts: Mutex<HashMap<Key, Count>>,
    global: Mutex<TokenBucket>,
}

/// Entries kept before lapsed ones are swept.
const SWEEP_AT: usize = 10_000;

/// Why an attempt was refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryLater(pub Duration);

impl LoginThrottle {
    /// A throttle with the given first spacing, cap, and global rate of
    /// password checks per second (0: unlimited).
    pub fn new(base: Duration, cap: Duration, checks_per_second: u32) -> Self {
        LoginThrottle {
            base,
            cap,
            counts: Mutex::new(HashMap::new()),
            global: Mutex::new(TokenBucket::new(checks_per_second, checks_per_second)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Count>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keys(user: &Username, addr: IpAddr, token: Option<[u8; 32]>) -> Vec<Key> {
        match token {
            // A valid token is not a guess: the attacker would need the
            // device's secret. Counting it only on its own means guesses from
            // the user's own address, block or at the account cannot keep the
            // user's devices out.
            Some(t) => vec![Key::Token(t)],
            None => vec![
                Key::Account(user.clone()),
                Key::Address(addr),
                Key::Block(address_block(addr)),
            ],
        }
    }

    /// Starts an attempt for `user` from `addr`, with the hash of a valid
    /// device token if one was presented.
    pub fn begin(
        &self,
        user: &Username,
        addr: IpAddr,
        token: Option<[u8; 32]>,
    ) -> Result<LoginAttempt, TryLater> {
        self.begin_at(user, addr, token, Instant::now())
    }

    fn begin_at(
        &self,
        user: &Username,
        addr: IpAddr,
        token: Option<[u8; 32]>,
        now: Instant,
    ) -> Result<LoginAttempt, TryLater> {
        let lapse = self.cap * 4;
        let keys = Self::keys(user, addr, token);
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            map.retain(|_, c| c.in_flight > 0 || now.duration_since(c.last) <= lapse);
        }
        let mut wait = Duration::ZERO;
        for key in &keys {
            let Some(c) = map.get(key) else { continue };
            if c.in_flight == 0 && now.duration_since(c.last) > lapse {
                continue;
            }
            if matches!(key, Key::Account(_)) && c.in_flight > 0 {
                // One check per account at a time: the other waits its turn
                // outside, on the client.
                wait = wait.max(Duration::from_secs(1));
            }
            let free = match key {
                Key::Block(_) => FREE_BLOCK_FAILURES,
                _ => FREE_LOGIN_FAILURES,
            };
            // For an account or a device, an attempt being checked counts as
            // a failure (parallel guesses see each other); an address or a
            // block may have many people logging in at once, so there only
            // failures count.
            let counted = match key {
                Key::Account(_) | Key::Token(_) => c.failures + c.in_flight,
                Key::Address(_) | Key::Block(_) => c.failures,
            };
            if counted >= free {
                let exp = (counted - free).min(20);
                let gap = self.base.saturating_mul(1 << exp).min(self.cap);
                let ready = c.last_attempt + gap;
                wait = wait.max(ready.saturating_duration_since(now));
            }
        }
        if !wait.is_zero() {
            return Err(TryLater(wait));
        }
        if token.is_none() {
            let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
            global.take_at(now).map_err(TryLater)?;
        }
        for key in &keys {
            let lapsed = |c: &Count| c.in_flight == 0 && now.duration_since(c.last) > lapse;
            let c = map.entry(key.clone()).or_insert(Count {
                failures: 0,
                in_flight: 0,
                last_attempt: now,
                last: now,
            });
            if lapsed(c) {
                c.failures = 0;
            }
            c.in_flight += 1;
            c.last_attempt = now;
            c.last = now;
        }
        Ok(LoginAttempt { keys })
    }

    /// The attempt's password check is over.
    pub fn finish(&self, attempt: LoginAttempt, succeeded: bool) {
        let now = Instant::now();
        let mut map = self.lock();
        for key in &attempt.keys {
            if let Some(c) = map.get_mut(key) {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.last = now;
                if !succeeded {
                    c.failures = c.failures.saturating_add(1);
                }
            }
        }
        if succeeded {
            let mut cleared = 0;
            for key in &attempt.keys {
                if matches!(key, Key::Account(_) | Key::Token(_)) {
                    if let Some(c) = map.get_mut(key) {
                        cleared = cleared.max(c.failures);
                        c.failures = 0;
                    }
                }
            }
            for key in &attempt.keys {
                if matches!(key, Key::Address(_) | Key::Block(_)) {
                    if let Some(c) = map.get_mut(key) {
                        c.failures = c.failures.saturating_sub(cleared);
                    }
                }
            }
        }
    }
}

/// Counts something per key (address, user) against a cap; each admitted
/// one holds its place until dropped.
pub struct Counts<K: std::hash::Hash + Eq + Clone>(Mutex<HashMap<K, usize>>);

impl<K: std::hash::Hash + Eq + Clone> Default for Counts<K> {
    fn default() -> Self {
        Counts(Mutex::new(HashMap::new()))
    }
}

/// A place held in a [`Counts`]; dropping it frees the place.
pub struct Place<K: std::hash::Hash + Eq + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    /// Admits one more for `key` unless it already has `max` (0: no limit).
    pub fn admit(self: &Arc<Self>, key: K, max: usize) -> Option<Place<K>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Place {
            counts: Arc::clone(self),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Handshakes allowed per address: a token bucket each, so a flood of
/// Diffie-Hellman requests from one address is refused before any
/// exponentiation.
pub struct HandshakeRate {
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl HandshakeRate {
    /// `rate` handshakes per second per address, `burst` at once (rate 0:
    /// unlimited).
    pub fn new(rate: u32, burst: u32) -> Self {
        HandshakeRate {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a handshake from `addr` may go ahead now.
    pub fn allow(&self, addr: IpAddr) -> bool {
        self.allow_at(addr, Instant::now())
    }

    fn allow_at(&self, addr: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT {
            // A full bucket is the same as none.
            map.retain(|_, b| !b.is_full_at(now));
        }
        map.entry(addr)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .take_at(now)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 5);
        let t0 = Instant::now();
        b.last = t0;
        assert!((0..5).all(|_| b.take_at(t0).is_ok()));
        assert!(b.take_at(t0).is_err());
        assert!(b.take_at(t0 + Duration::from_millis(100)).is_ok());
        let wait = b.take_at(t0 + Duration::from_millis(100)).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        let mut unlimited = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| unlimited.take_at(t0).is_ok()));
        assert!(unlimited.is_full_at(t0));
        // A drained bucket is full again (as good as new) once refilled.
        assert!(!b.is_full_at(t0 + Duration::from_millis(100)));
        assert!(b.is_full_at(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn parallel_guesses_count_before_they_are_checked() {
        let t = LoginThrottle::new(Duration::from_millis(500), Duration::from_secs(60), 0);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let now = Instant::now();
        // Ninety-six guesses at once: one is checked, the rest refused.
        let results: Vec<_> = (0..96)
            .map(|_| t.begin_at(&user("alice"), ip, None, now))
            .collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        for r in results.into_iter().flatten() {
            t.finish(r, false);
        }
    }

    #[test]
    fn failures_space_attempts_out_and_refuse_instead_of_queueing() {
        let t = LoginThrottle::new(Duration::from_millis(100), Duration::from_secs(1), 0);
        let (u, ip) = (user("alice"), IpAddr::from([10, 0, 0, 1]));
        let mut now = Instant::now();
        for _ in 0..FREE_LOGIN_FAILURES {
            let a = t.begin_at(&u, ip, None, now).expect("free");
            t.finish(a, false);
            now += Duration::from_millis(1);
        }
        let TryLater(wait) = t.begin_at(&u, ip, None, now).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        now += wait;
        let a = t.begin_at(&u, ip, None, now).expect("after the wait");
        t.finish(a, false);
        // The next gap doubles.
        let TryLater(wait) = t.begin_at(&u, ip, None, now).unwrap_err();
        assert!(wait > Duration::from_millis(190), "{wait:?}");
    }

    #[test]
    fn a_device_token_is_not_locked_out_by_guesses_at_the_account() {
        let t = LoginThrottle::new(Duration::from_millis(500), Duration::from_secs(60), 10);
        let now = Instant::now();
        // An attacker from many addresses.
        for i in 0..40u8 {
            let ip = IpAddr::from([192, 0, i, 1]);
            if let Ok(a) = t.begin_at(&user("alice"), ip, None, now) {
                t.finish(a, false);
            }
        }
        assert!(t
            .begin_at(&user("alice"), IpAddr::from([198, 51, 100, 7]), None, now)
            .is_err());
        // Alice's laptop, with its token, from her own address and from
        // the attacked block.
        for ip in [
            IpAddr::from([198, 51, 100, 7]),
            IpAddr::from([192, 0, 3, 1]),
        ] {
            let a = t
                .begin_at(&user("alice"), ip, Some([7; 32]), now)
                .expect("token logins skip the account, address and global counts");
            t.finish(a, true);
        }
    }

    #[test]
    fn the_global_cap_slows_spraying_across_addresses() {
        let t = LoginThrottle::new(Duration::from_millis(500), Duration::from_secs(60), 5);
        let now = Instant::now();
        let let_through = (0..150u32)
            .filter(|i| {
                let ip = IpAddr::from([10, (*i / 256) as u8, (*i % 256) as u8, 1]);
                t.begin_at(&user(&format!("u{i}")), ip, None, now)
                    .map(|a| t.finish(a, false))
                    .is_ok()
            })
            .count();
        assert_eq!(let_through, 5, "one second's burst, then the rate");
    }

    #[test]
    fn successes_never_count_and_blocks_share_failures() {
        let t = LoginThrottle::new(Duration::from_millis(100), Duration::from_secs(1), 0);
        let mut now = Instant::now();
        // An office behind one address: many successful logins, never slowed.
        let ip = IpAddr::from([10, 0, 0, 9]);
        for i in 0..50 {
            let a = t
                .begin_at(&user(&format!("u{i}")), ip, None, now)
                .expect("free");
            t.finish(a, true);
            now += Duration::from_millis(1);
        }
        // Failures spread over one /24 add up for the block.
        for i in 0..FREE_BLOCK_FAILURES {
            let ip = IpAddr::from([10, 0, 1, i as u8]);
            let a = t
                .begin_at(&user(&format!("v{i}")), ip, None, now)
                .expect("under the block's allowance");
            t.finish(a, false);
            now += Duration::from_millis(1);
        }
        assert!(t
            .begin_at(&user("w"), IpAddr::from([10, 0, 1, 200]), None, now)
            .is_err());
        assert!(t
            .begin_at(&user("w"), IpAddr::from([10, 0, 2, 1]), None, now)
            .is_ok());
    }

    #[test]
    fn places_are_capped_and_freed() {
        let c: Arc<Counts<IpAddr>> = Arc::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = c.admit(ip, 2).unwrap();
        let _b = c.admit(ip, 2).unwrap();
        assert!(c.admit(ip, 2).is_none());
        assert!(c.admit(IpAddr::from([127, 0, 0, 2]), 2).is_some());
        drop(a);
        assert!(c.admit(ip, 2).is_some());
    }

    #[test]
    fn handshakes_per_address_are_rate_limited() {
        let r = HandshakeRate::new(2, 4);
        let now = Instant::now();
        let ip = IpAddr::from([10, 1, 1, 1]);
        let allowed = (0..100).filter(|_| r.allow_at(ip, now)).count();
        assert_eq!(allowed, 4);
        assert!(r.allow_at(IpAddr::from([10, 1, 1, 2]), now));
        assert!(r.allow_at(ip, now + Duration::from_secs(1)));
    }
}
