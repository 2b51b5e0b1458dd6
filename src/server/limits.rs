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

/// One key's login count. Times are wall-clock milliseconds, so servers
/// of a cluster can share counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Failed attempts (lapsing, see [`LoginThrottle`]).
    pub failures: u32,
    /// Attempts being checked now: they count as failures until they succeed.
    pub in_flight: u32,
    /// When the last attempt was let through.
    pub last_attempt_ms: u64,
    /// The latest activity, for lapsing.
    pub last_ms: u64,
}

impl Key {
    /// The key's name where counts are shared (`account:alice`,
    /// `address:10.0.0.7`, `block:10.0.0.0`, `token:<hex>`).
    pub fn name(&self) -> String {
        match self {
            Key::Account(u) => format!("account:{u}"),
            Key::Address(a) => format!("address:{a}"),
            Key::Block(a) => format!("block:{a}"),
            Key::Token(t) => format!("token:{}", crate::request::format_sha256(t)),
        }
    }
}

/// Where login counts live when servers share them (a cluster's Redis).
pub trait SharedCounts: Send + Sync {
    /// Runs `f` on the counts of `keys` (in order; `None`: no count yet)
    /// atomically with respect to every other server, then stores what `f`
    /// left, to lapse after `lapse`. Returns what `f` returned, or an
    /// error if the counts cannot be reached now.
    fn update(
        &self,
        keys: &[String],
        lapse: Duration,
        f: &mut dyn FnMut(&mut [Option<Count>]) -> bool,
    ) -> Result<bool, String>;

    /// Takes one of `rate` password checks allowed per second across every
    /// server, or says how long to wait.
    fn take_check(&self, rate: u32) -> Result<Result<(), Duration>, String>;
}

/// An attempt let through by [`LoginThrottle::begin`]: pass it back to
/// [`LoginThrottle::finish`] once the password was checked.
#[must_use]
#[derive(Debug)]
pub struct LoginAttempt {
    keys: Vec<Key>,
    /// Whether its counts went to the shared store (or, that being out of
    /// reach, to this server's memory).
    shared: bool,
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
///   happened for four times the cap.
///
/// The counts live in memory, or, in a cluster, in [`SharedCounts`] that
/// every server reads and writes atomically: guesses spread over several
/// servers meet the limits of one. If the shared counts cannot be reached,
/// each server falls back to its own (logged).
pub struct LoginThrottle {
    base: Duration,
    cap: Duration,
    counts: Mutex<HashMap<Key, Count>>,
    global: Mutex<TokenBucket>,
    rate: u32,
    shared: Option<Box<dyn SharedCounts>>,
    /// Maps `Instant`s (which tests can move) to wall-clock milliseconds.
    origin: (Instant, u64),
}

/// Entries kept before lapsed ones are swept.
const SWEEP_AT: usize = 10_000;

/// Why an attempt was refused, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryLater(pub Duration);

impl LoginThrottle {
    /// A throttle with the given first spacing, cap, and global rate of
    /// password checks per second (0: unlimited), counting in memory.
    pub fn new(base: Duration, cap: Duration, checks_per_second: u32) -> Self {
        LoginThrottle {
            base,
            cap,
            counts: Mutex::new(HashMap::new()),
            global: Mutex::new(TokenBucket::new(checks_per_second, checks_per_second)),
            rate: checks_per_second,
            shared: None,
            origin: (Instant::now(), crate::clock::now_ms()),
        }
    }

    /// The same throttle with its counts in `shared`.
    pub fn shared(mut self, shared: Box<dyn SharedCounts>) -> Self {
        self.shared = Some(shared);
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Count>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ms(&self, at: Instant) -> u64 {
        let (i, ms) = self.origin;
        ms + at.saturating_duration_since(i).as_millis() as u64
    }

    fn lapse(&self) -> Duration {
        self.cap * 4
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

    /// Runs `f` on the counts of `keys`, shared if possible; says where.
    fn update(
        &self,
        keys: &[Key],
        f: &mut dyn FnMut(&mut [Option<Count>]) -> bool,
    ) -> (bool, bool) {
        if let Some(shared) = &self.shared {
            let names: Vec<String> = keys.iter().map(Key::name).collect();
            match shared.update(&names, self.lapse(), f) {
                Ok(r) => return (r, true),
                Err(e) => tracing::warn!("shared login counts unreachable ({e}); counting here"),
            }
        }
        (self.local_update(keys, f), false)
    }

    /// Runs `f` on this server's own counts of `keys`.
    fn local_update(&self, keys: &[Key], f: &mut dyn FnMut(&mut [Option<Count>]) -> bool) -> bool {
        let mut map = self.lock();
        let mut counts: Vec<Option<Count>> = keys.iter().map(|k| map.get(k).copied()).collect();
        let r = f(&mut counts);
        for (k, c) in keys.iter().zip(counts) {
            if let Some(c) = c {
                map.insert(k.clone(), c);
            }
        }
        r
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
        let now_ms = self.ms(now);
        let lapse = self.lapse().as_millis() as u64;
        let keys = Self::keys(user, addr, token);
        {
            let mut map = self.lock();
            if map.len() >= SWEEP_AT {
                map.retain(|_, c| c.in_flight > 0 || now_ms.saturating_sub(c.last_ms) <= lapse);
            }
        }
        let lapsed = |c: &Count| c.in_flight == 0 && now_ms.saturating_sub(c.last_ms) > lapse;
        let mut wait = Duration::ZERO;
        let (let_through, shared) = self.update(&keys, &mut |counts| {
            wait = Duration::ZERO;
            for (key, c) in keys.iter().zip(counts.iter()) {
                let Some(c) = c else { continue };
                if lapsed(c) {
                    continue;
                }
                if matches!(key, Key::Account(_)) && c.in_flight > 0 {
                    // One check per account at a time: the other waits its
                    // turn outside, on the client.
                    wait = wait.max(Duration::from_secs(1));
                }
                let free = match key {
                    Key::Block(_) => FREE_BLOCK_FAILURES,
                    _ => FREE_LOGIN_FAILURES,
                };
                // For an account or a device, an attempt being checked
                // counts as a failure (parallel guesses see each other); an
                // address or a block may have many people logging in at
                // once, so there only failures count.
                let counted = match key {
                    Key::Account(_) | Key::Token(_) => c.failures + c.in_flight,
                    Key::Address(_) | Key::Block(_) => c.failures,
                };
                if counted >= free {
                    let exp = (counted - free).min(20);
                    let gap = self.base.saturating_mul(1 << exp).min(self.cap);
                    let ready = c.last_attempt_ms + gap.as_millis() as u64;
                    wait = wait.max(Duration::from_millis(ready.saturating_sub(now_ms)));
                }
            }
            if !wait.is_zero() {
                return false;
            }
            if token.is_none() {
                if let Err(w) = self.take_check(now) {
                    wait = w;
                    return false;
                }
            }
            for c in counts.iter_mut() {
                let c = c.get_or_insert_with(Count::default);
                if lapsed(c) {
                    c.failures = 0;
                }
                c.in_flight += 1;
                c.last_attempt_ms = now_ms;
                c.last_ms = now_ms;
            }
            true
        });
        if !let_through {
            return Err(TryLater(wait));
        }
        Ok(LoginAttempt { keys, shared })
    }

    /// Takes one password check from the global budget.
    fn take_check(&self, now: Instant) -> Result<(), Duration> {
        if let Some(shared) = &self.shared {
            if self.rate == 0 {
                return Ok(());
            }
            match shared.take_check(self.rate) {
                Ok(r) => return r,
                Err(e) => tracing::warn!("shared check budget unreachable ({e}); counting here"),
            }
        }
        let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        global.take_at(now)
    }

    /// The attempt's password check is over.
    pub fn finish(&self, attempt: LoginAttempt, succeeded: bool) {
        let now_ms = self.ms(Instant::now());
        let keys = &attempt.keys;
        let mut settle = |counts: &mut [Option<Count>]| {
            for c in counts.iter_mut().flatten() {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.last_ms = now_ms;
                if !succeeded {
                    c.failures = c.failures.saturating_add(1);
                }
            }
            if succeeded {
                let mut cleared = 0;
                for (key, c) in keys.iter().zip(counts.iter_mut()) {
                    if let (Key::Account(_) | Key::Token(_), Some(c)) = (key, c) {
                        cleared = cleared.max(c.failures);
                        c.failures = 0;
                    }
                }
                for (key, c) in keys.iter().zip(counts.iter_mut()) {
                    if let (Key::Address(_) | Key::Block(_), Some(c)) = (key, c) {
                        c.failures = c.failures.saturating_sub(cleared);
                    }
                }
            }
            true
        };
        if attempt.shared {
            self.update(keys, &mut settle);
        } else {
            self.local_update(keys, &mut settle);
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
