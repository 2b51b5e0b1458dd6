//! The attacks that the server's abuse limits are built against, run on a
//! real server so that its answers are measured, not assumed. Attackers
//! connect from many loopback source addresses (on Linux all of
//! `127.0.0.0/8` reaches a server listening on `127.0.0.1`), each in a /24
//! block of its own, as a botnet would:
//!
//! | attack | what it does | what is reported |
//! |---|---|---|
//! | `guess` | `--count` (96) logins at once for one account from one address, the last with the right password | password checks in the first 10 s; whether the password was found |
//! | `victim` | a victim who holds a device token logs in every second while 40 guesses a second at its account come from many addresses, for `--secs` | the victim's slowest login |
//! | `spray` | 3 wrong guesses at each of `--count` (150) accounts, one address per account, retrying when told to wait | password checks per second |
//! | `dh-flood` | 8 threads send handshakes from one address for `--secs`, never finishing them | handshakes answered (a modular exponentiation each) and refused, per second |
//! | `silent` | `--count` (3000) connections finish the handshake and say nothing | when the server closes them; its thread count meanwhile |
//! | `nat` | `--count` (100) users log in from one address and stay | how many get in and are served |
//!
//! Every attack is bounded in count and by `--deadline`, and talks only to
//! the address it is given.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};

use muchat::client::session::{Session, SessionError};
use muchat::client::Trust;
use muchat::event::{ErrorCode, Reply, ReplyData};
use muchat::names::Username;
use muchat::request::{DeviceToken, Request};

use super::modes::{fail, LoadError};
use super::report::threads;

/// Which attack to run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Attack {
    /// Parallel guesses at one account from one address.
    Guess,
    /// A victim's device-token login while its account is under attack.
    Victim,
    /// Password spraying: few guesses at many accounts from many addresses.
    Spray,
    /// Handshakes from one address as fast as they can be sent.
    DhFlood,
    /// Connections that finish the handshake and never log in.
    Silent,
    /// Many users behind one address (an office NAT).
    Nat,
}

/// Where and how hard to attack.
pub struct Attacker {
    /// The server as given (the name its key is pinned under).
    pub addr: String,
    /// The accounts' name prefix (fresh per run by default).
    pub prefix: String,
    pub trust: Trust,
    /// How many guesses, accounts or connections (the attack's default
    /// when None).
    pub count: Option<usize>,
    /// How long the timed attacks last.
    pub secs: u64,
    /// The server's process id, for its thread count.
    pub server_pid: Option<u32>,
    /// Hard limit for the run.
    pub deadline: Duration,
}

/// How one login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The password was checked and was right.
    Accepted,
    /// The password was checked and was wrong.
    Wrong,
    /// Refused without a check: `RATE_LIMITED`.
    Limited,
    /// Refused at the door: the handshake or the connection.
    Refused,
    /// Any other error reply.
    Other,
}

impl Outcome {
    fn checked(self) -> bool {
        matches!(self, Outcome::Accepted | Outcome::Wrong)
    }
}

/// Outcomes with when they came (since the attack started).
#[derive(Default)]
struct Tally(Mutex<Vec<(Duration, Outcome)>>);

impl Tally {
    fn add(&self, at: Duration, o: Outcome) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, o));
    }

    fn count(&self, f: impl Fn(Duration, Outcome) -> bool) -> usize {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter(|(at, o)| f(*at, *o)).count()
    }

    fn json(&self) -> Value {
        let n = |o: Outcome| self.count(|_, x| x == o);
        json!({
            "accepted": n(Outcome::Accepted),
            "wrong": n(Outcome::Wrong),
            "rate_limited": n(Outcome::Limited),
            "refused": n(Outcome::Refused),
            "other": n(Outcome::Other),
        })
    }
}

/// The `i`-th attacker address, each in a /24 of its own (127.10.0.1,
/// 127.10.1.1, ...).
fn source(i: usize) -> Ipv4Addr {
    let i = i % (200 * 256);
    Ipv4Addr::new(127, 10 + (i / 256) as u8, (i % 256) as u8, 1)
}

/// The address a victim or an office uses.
const HOME: Ipv4Addr = Ipv4Addr::LOCALHOST;

impl Attacker {
    /// Runs `attack`; returns what it measured (also printed by the caller).
    pub fn run(&self, attack: Attack) -> Result<Value, LoadError> {
        let target = self
            .addr
            .to_socket_addrs()
            .map_err(fail)?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| fail(format!("{} has no IPv4 address", self.addr)))?;
        let run = Run {
            a: self,
            target,
            started: Instant::now(),
        };
        match attack {
            Attack::Guess => run.guess(self.count.unwrap_or(96)),
            Attack::Victim => run.victim(),
            Attack::Spray => run.spray(self.count.unwrap_or(150)),
            Attack::DhFlood => run.dh_flood(),
            Attack::Silent => run.silent(self.count.unwrap_or(3000)),
            Attack::Nat => run.nat(self.count.unwrap_or(100)),
        }
    }
}

struct Run<'a> {
    a: &'a Attacker,
    target: SocketAddr,
    started: Instant,
}

impl Run<'_> {
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn past_deadline(&self) -> bool {
        self.elapsed() >= self.a.deadline
    }

    /// A TCP connection from `from`.
    fn tcp_from(&self, from: Ipv4Addr) -> std::io::Result<TcpStream> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SocketAddr::from((from, 0)).into())?;
        socket.connect_timeout(&self.target.into(), Duration::from_secs(10))?;
        Ok(socket.into())
    }

    /// A session (handshake done) from `from`.
    fn connect_from(&self, from: Ipv4Addr) -> Result<Session, SessionError> {
        Session::over(self.tcp_from(from)?, &self.a.addr, &self.a.trust)
    }

    /// A session from `from`, trying again a second after each refusal
    /// (as the client does when told "try again shortly").
    fn connect_patiently(&self, from: Ipv4Addr) -> Result<Session, LoadError> {
        loop {
            match self.connect_from(from) {
                Ok(s) => return Ok(s),
                Err(e) if self.past_deadline() => return Err(fail(e)),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    fn user(&self, what: &str) -> Result<Username, LoadError> {
        Username::parse(&format!("{}{what}", self.a.prefix)).map_err(fail)
    }

    /// Creates the accounts (password `pw-<name>`), waiting whenever the
    /// server asks to; each connection stays within the frames allowed
    /// before login.
    fn accounts(&self, names: &[Username]) -> Result<(), LoadError> {
        for chunk in names.chunks(40) {
            let mut s = self.connect_patiently(HOME)?;
            for name in chunk {
                let r = Request::CreateUser {
                    username: name.clone(),
                    password: format!("pw-{name}"),
                    name: name.to_string(),
                };
                loop {
                    match s.request(&r).map_err(fail)?.0 {
                        Reply::Ok { .. } => break,
                        Reply::Err {
                            code: ErrorCode::UserExists,
                            ..
                        } => break,
                        other => match other.retry_after() {
                            Some(wait) if !self.past_deadline() => std::thread::sleep(wait),
                            _ => return Err(fail(format!("CREATE_USER {name}: {other:?}"))),
                        },
                    }
                }
            }
        }
        Ok(())
    }

    /// One login on a session; the token of an accepted one.
    fn login_on(
        s: &mut Session,
        user: &Username,
        password: &str,
        token: Option<&DeviceToken>,
    ) -> (Outcome, Option<DeviceToken>, Option<Duration>) {
        let r = Request::Login {
            username: user.clone(),
            password: password.to_string(),
            token: token.cloned(),
        };
        match s.request(&r) {
            Ok((reply, _)) => {
                let retry = reply.retry_after();
                match reply {
                    Reply::Ok {
                        data: ReplyData::Token(t),
                        ..
                    } => (Outcome::Accepted, Some(t), None),
                    Reply::Ok { .. } => (Outcome::Accepted, None, None),
                    Reply::Err {
                        code: ErrorCode::LoginFailed,
                        ..
                    } => (Outcome::Wrong, None, None),
                    Reply::Err {
                        code: ErrorCode::RateLimited,
                        ..
                    } => (Outcome::Limited, None, retry),
                    Reply::Err { .. } => (Outcome::Other, None, None),
                }
            }
            Err(_) => (Outcome::Refused, None, None),
        }
    }

    /// One login on a connection of its own from `from`.
    fn login_from(
        &self,
        from: Ipv4Addr,
        user: &Username,
        password: &str,
        token: Option<&DeviceToken>,
    ) -> (Outcome, Option<DeviceToken>) {
        match self.connect_from(from) {
            Ok(mut s) => {
                let (o, t, _) = Self::login_on(&mut s, user, password, token);
                let _ = s.writer.send(&Request::Quit);
                (o, t)
            }
            Err(_) => (Outcome::Refused, None),
        }
    }

    fn guess(&self, n: usize) -> Result<Value, LoadError> {
        let victim = self.user("guess")?;
        self.accounts(std::slice::from_ref(&victim))?;
        let right = format!("pw-{victim}");
        let tally = Tally::default();
        let go = Instant::now();
        std::thread::scope(|scope| {
            for i in 0..n {
                let (tally, victim, right) = (&tally, &victim, &right);
                scope.spawn(move || {
                    let pw = if i + 1 == n {
                        right.clone()
                    } else {
                        format!("guess-{i}")
                    };
                    let (o, _) = self.login_from(HOME, victim, &pw, None);
                    tally.add(go.elapsed(), o);
                });
            }
        });
        let first_10s = tally.count(|at, o| o.checked() && at <= Duration::from_secs(10));
        let found = tally.count(|_, o| o == Outcome::Accepted) > 0;
        println!(
            "guess: {n} logins at once for one account from one address: \
             {first_10s} password checks in the first 10 s; password found: {found}"
        );
        Ok(json!({
            "attack": "guess", "attempts": n, "checked_first_10s": first_10s,
            "found": found, "outcomes": tally.json(),
            "seconds": go.elapsed().as_secs_f64(),
        }))
    }

    fn victim(&self) -> Result<Value, LoadError> {
        let victim = self.user("victim")?;
        self.accounts(std::slice::from_ref(&victim))?;
        let right = format!("pw-{victim}");
        let (o, token) = self.login_from(HOME, &victim, &right, None);
        let mut token = match (o, token) {
            (Outcome::Accepted, Some(t)) => t,
            _ => return Err(fail(format!("the victim's first login: {o:?}"))),
        };
        let attack = Duration::from_secs(self.a.secs);
        let tally = Tally::default();
        let mut waits: Vec<(Duration, Outcome)> = Vec::new();
        let go = Instant::now();
        std::thread::scope(|scope| {
            let (tally, victim_ref) = (&tally, &victim);
            // 40 guesses a second, each from the next address.
            scope.spawn(move || {
                let mut k = 0;
                while go.elapsed() < attack && !self.past_deadline() {
                    let from = source(k);
                    scope.spawn(move || {
                        let (o, _) = self.login_from(from, victim_ref, &format!("guess-{k}"), None);
                        tally.add(go.elapsed(), o);
                    });
                    k += 1;
                    let next = go + Duration::from_millis(25 * k as u64);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            });
            // The victim, once a second, with its device token.
            let mut i = 1;
            while go.elapsed() < attack && !self.past_deadline() {
                let t0 = Instant::now();
                let (o, t) = self.login_from(HOME, &victim, &right, Some(&token));
                waits.push((t0.elapsed(), o));
                if let Some(t) = t {
                    token = t;
                }
                let next = go + Duration::from_secs(i);
                i += 1;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        let accepted = waits
            .iter()
            .filter(|(_, o)| *o == Outcome::Accepted)
            .count();
        let slowest = waits.iter().map(|(d, _)| *d).max().unwrap_or_default();
        println!(
            "victim: {} guesses at its account from many addresses over {} s; \
             the victim's device-token logins: {accepted} of {} accepted, slowest {:.0} ms",
            tally.count(|_, _| true),
            self.a.secs,
            waits.len(),
            slowest.as_secs_f64() * 1000.0
        );
        Ok(json!({
            "attack": "victim", "seconds": self.a.secs,
            "victim_logins": waits.len(), "victim_accepted": accepted,
            "victim_slowest_ms": slowest.as_secs_f64() * 1000.0,
            "attacker": tally.json(),
        }))
    }

    fn spray(&self, n: usize) -> Result<Value, LoadError> {
        let names = (0..n)
            .map(|i| self.user(&format!("spray{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        self.accounts(&names)?;
        let tally = Tally::default();
        let go = Instant::now();
        std::thread::scope(|scope| {
            for (i, name) in names.iter().enumerate() {
                let tally = &tally;
                scope.spawn(move || {
                    let mut session = None;
                    let mut guess = 0;
                    while guess < 3 && !self.past_deadline() {
                        let s = match session.as_mut() {
                            Some(s) => s,
                            None => match self.connect_from(source(i)) {
                                Ok(s) => session.insert(s),
                                Err(_) => {
                                    tally.add(go.elapsed(), Outcome::Refused);
                                    std::thread::sleep(Duration::from_secs(1));
                                    continue;
                                }
                            },
                        };
                        let (o, _, wait) = Self::login_on(s, name, &format!("spray-{guess}"), None);
                        tally.add(go.elapsed(), o);
                        match o {
                            Outcome::Limited => {
                                std::thread::sleep(wait.unwrap_or(Duration::from_secs(1)))
                            }
                            Outcome::Refused => session = None,
                            _ => guess += 1,
                        }
                    }
                });
            }
        });
        let checked = tally.count(|_, o| o.checked());
        let took = go.elapsed().as_secs_f64();
        println!(
            "spray: 3 guesses at each of {n} accounts from {n} addresses: \
             {checked} checked in {took:.1} s = {:.1} checks/s",
            checked as f64 / took
        );
        Ok(json!({
            "attack": "spray", "accounts": n, "checked": checked, "seconds": took,
            "checks_per_second": checked as f64 / took, "outcomes": tally.json(),
        }))
    }

    fn dh_flood(&self) -> Result<Value, LoadError> {
        // One public value for every hello: the attacker does no work per
        // handshake, the server one exponentiation per answer.
        let secret = muchat::dh::EphemeralSecret::random().map_err(fail)?;
        let hello = muchat::handshake::hello_line(secret.public_value());
        let (answered, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let flood = Duration::from_secs(self.a.secs);
        let go = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let (hello, answered, refused) = (&hello, &answered, &refused);
                scope.spawn(move || {
                    while go.elapsed() < flood && !self.past_deadline() {
                        match self.half_handshake(hello) {
                            Some(true) => answered.fetch_add(1, Ordering::Relaxed),
                            _ => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
        });
        let took = go.elapsed().as_secs_f64();
        let (answered, refused) = (answered.into_inner(), refused.into_inner());
        println!(
            "dh-flood: one address for {took:.1} s: {answered} handshakes answered \
             ({:.1}/s, a modular exponentiation each), {refused} refused ({:.1}/s)",
            answered as f64 / took,
            refused as f64 / took
        );
        Ok(json!({
            "attack": "dh-flood", "seconds": took, "answered": answered,
            "answered_per_second": answered as f64 / took, "refused": refused,
        }))
    }

    /// Sends a hello and reads the answer: true if the server answered with
    /// its values (did the work), false if it refused.
    fn half_handshake(&self, hello: &str) -> Option<bool> {
        use std::io::{BufRead, BufReader, Write};
        let mut tcp = self.tcp_from(HOME).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        tcp.write_all(hello.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(&tcp).read_line(&mut line).ok()?;
        Some(!line.is_empty() && !line.contains(" ERROR "))
    }

    fn silent(&self, n: usize) -> Result<Value, LoadError> {
        // Twelve per address: within the per-address handshake burst and
        // the cap on connections not logged in.
        let closed: Mutex<Vec<Duration>> = Mutex::default();
        let (opened, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let peak_threads = AtomicUsize::new(0);
        let go = Instant::now();
        std::thread::scope(|scope| -> Result<(), LoadError> {
            for i in 0..n {
                let (closed, opened, failed) = (&closed, &opened, &failed);
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn_scoped(scope, move || {
                        let Ok(mut s) = self.connect_from(source(1000 + i / 12)) else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let ready = Instant::now();
                        opened.fetch_add(1, Ordering::Relaxed);
                        let _ = s
                            .reader
                            .set_timeout(Some(self.a.deadline.saturating_sub(self.elapsed())));
                        // Say nothing; read until the server closes.
                        loop {
                            match s.reader.recv() {
                                Ok(_) => continue,
                                Err(SessionError::Closed(_)) | Err(SessionError::Io(_))
                                    if !self.past_deadline() =>
                                {
                                    break
                                }
                                Err(_) => return,
                            }
                        }
                        closed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(ready.elapsed());
                    })
                    .map_err(fail)?;
            }
            // The server's threads while the sessions are held.
            let all = || opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
            while !self.past_deadline() {
                if let Some(t) = self.a.server_pid.and_then(threads) {
                    peak_threads.fetch_max(t, Ordering::Relaxed);
                }
                let done = closed.lock().unwrap_or_else(|e| e.into_inner()).len();
                if all() == n && done == opened.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        })?;
        let mut closed = closed.into_inner().unwrap_or_else(|e| e.into_inner());
        closed.sort();
        let at = |q: f64| {
            closed
                .get(((closed.len() as f64 * q) as usize).min(closed.len().saturating_sub(1)))
                .map_or(0.0, Duration::as_secs_f64)
        };
        let (opened, failed) = (opened.into_inner(), failed.into_inner());
        let peak = peak_threads.into_inner();
        println!(
            "silent: {opened} of {n} connections finished the handshake and said nothing \
             ({failed} refused); the server closed {} of them, {:.1} s (median) and {:.1} s \
             (last) after their handshake; server threads at most {peak}",
            closed.len(),
            at(0.5),
            at(1.0),
        );
        Ok(json!({
            "attack": "silent", "connections": n, "opened": opened, "refused": failed,
            "closed_by_server": closed.len(), "closed_after_median_s": at(0.5),
            "closed_after_max_s": at(1.0), "server_threads_peak": peak,
            "seconds": go.elapsed().as_secs_f64(),
        }))
    }

    fn nat(&self, n: usize) -> Result<Value, LoadError> {
        let names = (0..n)
            .map(|i| self.user(&format!("office{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        self.accounts(&names)?;
        let go = Instant::now();
        // Everyone logs in from one address, as an office does: a refused
        // handshake ("try again shortly") is tried again a second later,
        // as the client does.
        let sessions: Vec<Option<Session>> = std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    scope.spawn(move || {
                        let mut s = self.connect_patiently(HOME).ok()?;
                        loop {
                            match Self::login_on(&mut s, name, &format!("pw-{name}"), None) {
                                (Outcome::Accepted, ..) => return Some(s),
                                _ if self.past_deadline() => return None,
                                (Outcome::Limited, _, wait) => {
                                    std::thread::sleep(wait.unwrap_or(Duration::from_secs(1)))
                                }
                                // Closed meanwhile (the login deadline): again.
                                (Outcome::Refused, ..) => {
                                    s = self.connect_patiently(HOME).ok()?;
                                }
                                _ => return None,
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect()
        });
        let logged_in = sessions.iter().flatten().count();
        let took = go.elapsed().as_secs_f64();
        // All of them at once: each asks for LIST.
        let mut served = 0;
        for mut s in sessions.into_iter().flatten() {
            if matches!(s.request(&Request::List), Ok((Reply::Ok { .. }, _))) {
                served += 1;
            }
        }
        println!(
            "nat: {n} users from one address: {logged_in} logged in (all by {took:.1} s), \
             {served} served while all were connected"
        );
        Ok(json!({
            "attack": "nat", "users": n, "logged_in": logged_in, "served": served,
            "seconds_to_log_in": took,
        }))
    }
}
