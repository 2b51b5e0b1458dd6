//! The load shapes: group fan-out, idle crowds, login storms and files,
//! all through the library's protocol session (handshake, MAC on every
//! frame, group envelopes opened, cumulative acknowledgements), so the
//! server is measured under what real clients do.
//!
//! To measure the server rather than itself, the generator decrypts only
//! a sample of message bodies (every `sample`-th per receiver, each of
//! which is also a latency probe: the sender stamps its send time into the
//! text). Everything is bounded: a hard deadline ends a run, and a run
//! with missing deliveries is reported as a failure.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use muchat::client::session::{Acks, Incoming, Session};
use muchat::client::Trust;
use muchat::content::ContentKey;
use muchat::event::{ErrorCode, Reply, ReplyData};
use muchat::names::{GroupName, Username};
use muchat::request::{FileOffer, FileTarget, Request, SendId, FILE_CHUNK_SIZE};

use super::fanout::fan_out;
use super::report::{rss_kib, tree_cpu_seconds, Meter, Report};

/// What to run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Group fan-out.
    FanOut(FanOut),
    /// Hold `sessions` logged-in sessions, then time one probe message.
    Idle { sessions: usize },
    /// `clients` connect, handshake and log in at once.
    Storm { clients: usize },
    /// One file of `size` bytes to one user or a group of `members`.
    File { size: u64, members: usize },
    /// `messages` direct messages one at a time, from a user on the first
    /// server to one on the second (see [`super::latency`]).
    Latency { messages: usize },
}

/// A fan-out shape: `members` clients in one group; `senders` of them send
/// `messages` messages of `size` bytes each, keeping `window` unanswered.
#[derive(Debug, Clone)]
pub struct FanOut {
    pub members: usize,
    pub senders: usize,
    pub messages: usize,
    pub size: usize,
    pub window: usize,
    /// Event-loop threads serving the sessions.
    pub loops: usize,
    /// The senders get one more loop of their own.
    pub sender_loop: bool,
}

/// Run settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The servers (clients are spread over them in turn).
    pub addrs: Vec<String>,
    /// Whose keys to accept.
    pub trust: Trust,
    /// What to run.
    pub mode: Mode,
    /// Account name prefix (fresh per run by default).
    pub prefix: String,
    /// Hard limit for the whole run.
    pub deadline: Duration,
    /// The server's process ids, for CPU and memory figures.
    pub server_pids: Vec<u32>,
    /// Processes the servers lean on (PostgreSQL, Redis), whose CPU
    /// (children's included) is reported apart.
    pub engine_pids: Vec<u32>,
    /// Decrypt every n-th body per receiver (a latency probe).
    pub sample: usize,
}

/// Why a run could not proceed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

pub(crate) fn fail(e: impl std::fmt::Display) -> LoadError {
    LoadError(e.to_string())
}

/// Runs the load and reports.
pub fn run(opts: &Options) -> Result<Report, LoadError> {
    match opts.mode.clone() {
        Mode::FanOut(shape) => fan_out(
            opts,
            &FanOut {
                senders: shape.senders.clamp(1, shape.members),
                window: shape.window.max(1),
                ..shape
            },
        ),
        Mode::Idle { sessions } => idle(opts, sessions),
        Mode::Storm { clients } => storm(opts, clients),
        Mode::File { size, members } => file(opts, size, members.max(1)),
        Mode::Latency { messages } => super::latency::latency(opts, messages),
    }
}

/// A prefix unique to this run, so accounts start clean.
pub fn fresh_prefix() -> String {
    format!("lg{}x", muchat::clock::now_ms() % 1_000_000_000)
}

/// One logged-in generator session.
pub(crate) struct Client {
    pub(crate) name: Username,
    pub(crate) session: Session,
}

impl Client {
    /// Sends a request and expects OK (or one of the `tolerated` errors).
    pub(crate) fn ok(&mut self, r: &Request, tolerated: &[ErrorCode]) -> Result<(), LoadError> {
        match self.session.request(r).map_err(fail)?.0 {
            Reply::Ok { .. } => Ok(()),
            Reply::Err { code, .. } if tolerated.contains(&code) => Ok(()),
            Reply::Err { code, text } => Err(fail(format!("{}: {code} {text}", r.redacted()))),
        }
    }
}

/// How long a request naming a group or user that another server of a
/// cluster has just created is retried while this one does not know it
/// yet (it learns of it from a notice).
pub(crate) const PROPAGATION_WAIT: Duration = Duration::from_secs(10);

impl Client {
    /// Sends a request and expects OK (or one of the `tolerated` errors),
    /// sending it again every 2 ms for up to [`PROPAGATION_WAIT`] while the
    /// reply is `not_yet` (say NO_SUCH_GROUP for a group another server
    /// just created). Returns how long that took if it was refused at
    /// first, so the caller can say so: that is the cluster's propagation
    /// lag, not something to hide.
    pub(crate) fn ok_once_known(
        &mut self,
        r: &Request,
        tolerated: &[ErrorCode],
        not_yet: ErrorCode,
    ) -> Result<Option<Duration>, LoadError> {
        let start = Instant::now();
        let mut refused = false;
        loop {
            match self.session.request(r).map_err(fail)?.0 {
                Reply::Ok { .. } => return Ok(refused.then(|| start.elapsed())),
                Reply::Err { code, .. } if tolerated.contains(&code) => {
                    return Ok(refused.then(|| start.elapsed()))
                }
                Reply::Err { code, .. }
                    if code == not_yet && start.elapsed() < PROPAGATION_WAIT =>
                {
                    refused = true;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Reply::Err { code, text } => {
                    return Err(fail(format!(
                        "{}: {code} {text} (after {:?})",
                        r.redacted(),
                        start.elapsed()
                    )))
                }
            }
        }
    }

    /// Reads until the next reply, answering `PING`s on the way; an `ERR`
    /// fails the run.
    pub(crate) fn await_reply(&mut self) -> Result<(), LoadError> {
        loop {
            match self.session.reader.recv().map_err(fail)? {
                Incoming::Reply(r) if r.is_ok() => return Ok(()),
                Incoming::Reply(r) => return Err(fail(format!("{}: {}", self.name, r.text()))),
                Incoming::Ping(n) => self.session.writer.send(&Request::Pong(n)).map_err(fail)?,
                _ => {}
            }
        }
    }
}

/// Connects, creates the account (if new) and logs in.
fn client(opts: &Options, i: usize) -> Result<Client, LoadError> {
    let addr = &opts.addrs[i % opts.addrs.len()];
    let name = Username::parse(&format!("{}{i}", opts.prefix)).map_err(fail)?;
    let mut c = Client {
        session: Session::connect(addr, &opts.trust).map_err(fail)?,
        name: name.clone(),
    };
    let password = format!("pw-{name}");
    c.ok(
        &Request::CreateUser {
            username: name.clone(),
            password: password.clone(),
            name: name.to_string(),
        },
        &[ErrorCode::UserExists],
    )?;
    c.ok(
        &Request::Login {
            username: name,
            password,
            token: None,
        },
        &[],
    )?;
    Ok(c)
}

/// Sets up `n` logged-in sessions, in parallel.
pub(crate) fn clients(opts: &Options, n: usize) -> Result<Vec<Client>, LoadError> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, Client)>> = Mutex::new(Vec::with_capacity(n));
    let error: Mutex<Option<LoadError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..n.clamp(1, 16) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                match client(opts, i) {
                    Ok(c) => out.lock().unwrap_or_else(|e| e.into_inner()).push((i, c)),
                    Err(e) => {
                        *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut out = out.into_inner().unwrap_or_else(|e| e.into_inner());
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The send time stamped at the start of a message: `t=<unix µs> `.
pub(crate) fn stamp(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text.get(..text.len().min(40))?).ok()?;
    text.strip_prefix("t=")?.split(' ').next()?.parse().ok()
}

/// A message of `size` bytes stamped with its send time.
pub(crate) fn message_text(size: usize) -> Vec<u8> {
    let mut t = format!("t={} ", now_us()).into_bytes();
    t.resize(size.max(t.len()), b'x');
    t
}

/// Summed CPU of all the servers, via the meter of each, and of the
/// engines they use.
pub(crate) struct Meters(Vec<Meter>, Meter, Vec<(u32, Option<f64>)>);

impl Meters {
    pub(crate) fn start(opts: &Options) -> Meters {
        Meters(
            opts.server_pids
                .iter()
                .map(|p| Meter::start(Some(*p)))
                .collect(),
            Meter::start(None),
            opts.engine_pids
                .iter()
                .map(|&p| (p, tree_cpu_seconds(p)))
                .collect(),
        )
    }

    pub(crate) fn stop(&self, report: &mut Report) {
        self.1.stop(report);
        let mut engines = None;
        for &(pid, before) in &self.2 {
            if let (Some(a), Some(b)) = (before, tree_cpu_seconds(pid)) {
                *engines.get_or_insert(0.0) += b - a;
            }
        }
        report.engines_cpu_s = engines;
        let mut cpu = None;
        let mut rss = None;
        let mut each = Vec::new();
        for m in &self.0 {
            let mut r = Report::default();
            m.stop(&mut r);
            if let Some(c) = r.server_cpu_s {
                *cpu.get_or_insert(0.0) += c;
            }
            each.push(r.server_cpu_s.unwrap_or(f64::NAN));
            if let Some(k) = r.server_rss_kib {
                *rss.get_or_insert(0.0) += k;
            }
        }
        report.server_cpu_s = cpu;
        report.server_rss_kib = rss;
        if each.len() > 1 {
            report.server_cpu_s_each = each;
        }
    }
}

/// Makes `group` (an open group, created by the first client if it is not
/// there yet) and has every client join it. A client on another server of
/// a cluster may be told NO_SUCH_GROUP until its server hears of the
/// group: its JOIN is retried, and the wait reported on standard error.
pub(crate) fn form_group(all: &mut [Client], group: &GroupName) -> Result<(), LoadError> {
    if let Some(first) = all.first_mut() {
        first.ok(
            &Request::CreateGroup {
                group: group.clone(),
                private: false,
            },
            &[ErrorCode::GroupExists],
        )?;
    }
    let mut waits = Vec::new();
    for c in all.iter_mut() {
        let waited = c.ok_once_known(
            &Request::Join(group.clone()),
            &[ErrorCode::AlreadyMember],
            ErrorCode::NoSuchGroup,
        )?;
        waits.extend(waited);
    }
    if let Some(longest) = waits.iter().max() {
        eprintln!(
            "loadgen: {} JOIN(s) were refused NO_SUCH_GROUP at first (the group was created \
             through another server) and retried; the longest wait was {:.1} ms",
            waits.len(),
            longest.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn idle(opts: &Options, n: usize) -> Result<Report, LoadError> {
    let pid = opts.server_pids.first().copied();
    let rss0 = pid.and_then(rss_kib);
    let meters = Meters::start(opts);
    let mut held = clients(opts, n)?;
    let mut report = Report {
        mode: format!("idle {n} sessions"),
        expected: n as u64,
        deliveries: held.len() as u64,
        ..Report::default()
    };
    // Let the server settle first: replies written, buffers released, and
    // the idle sessions parked (the server's default --park-after-ms is
    // 2000).
    std::thread::sleep(Duration::from_secs(3));
    meters.stop(&mut report);
    if let (Some(a), Some(b)) = (rss0, pid.and_then(rss_kib)) {
        report.rss_per_session_kib = Some((b - a) / n.max(1) as f64);
    }
    let mut latencies = Vec::new();
    // One probe through the crowd: the last session messages the first.
    if n >= 2 {
        let receiver = held.remove(0);
        let mut sender = held.pop().ok_or_else(|| fail("no sender"))?;
        let key = ContentKey::random();
        let start = Instant::now();
        sender
            .session
            .writer
            .send(&Request::Send {
                to: receiver.name.clone(),
                send_id: SendId::random(),
                key: key.clone(),
                body: key.seal(&message_text(100)),
            })
            .map_err(fail)?;
        let mut reader = receiver.session.reader;
        reader.set_timeout(Some(opts.deadline)).map_err(fail)?;
        loop {
            if let Incoming::Message(_) = reader.recv().map_err(fail)? {
                latencies.push(start.elapsed().as_micros() as u64);
                break;
            }
        }
    }
    report.finish(latencies);
    Ok(report)
}

fn storm(opts: &Options, n: usize) -> Result<Report, LoadError> {
    // Accounts first (not measured), then the storm of logins.
    drop(clients(opts, n)?);
    let meters = Meters::start(opts);
    let barrier = std::sync::Barrier::new(n);
    let (tx, rx) = bounded(n);
    std::thread::scope(|s| {
        for i in 0..n {
            let (tx, barrier) = (tx.clone(), &barrier);
            s.spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let ok = client(opts, i);
                let _ = tx.send((start.elapsed().as_micros() as u64, ok.is_ok()));
                // Stay connected until everyone is in, so the crowd is real.
                drop(ok);
            });
        }
    });
    drop(tx);
    let results: Vec<(u64, bool)> = rx.iter().collect();
    let mut report = Report {
        mode: format!("login storm {n} clients"),
        expected: n as u64,
        deliveries: results.iter().filter(|r| r.1).count() as u64,
        ..Report::default()
    };
    meters.stop(&mut report);
    report.finish(results.iter().map(|r| r.0).collect());
    Ok(report)
}

fn file(opts: &Options, size: u64, members: usize) -> Result<Report, LoadError> {
    let mut all = clients(opts, members + 1)?;
    let target = if members == 1 {
        FileTarget::User(all[1].name.clone())
    } else {
        let g = GroupName::parse(&format!("{}f", opts.prefix)).map_err(fail)?;
        form_group(&mut all, &g)?;
        FileTarget::Groups(vec![g])
    };
    let mut sender = all.remove(0);
    let done = Arc::new(AtomicU64::new(0));
    let chunks = size.div_ceil(FILE_CHUNK_SIZE as u64);
    let mut receivers = Vec::new();
    for r in all {
        let done = Arc::clone(&done);
        let Session {
            mut reader, writer, ..
        } = r.session;
        receivers.push((
            writer.stream(),
            std::thread::spawn(move || {
                // Counts chunk bytes until FILE_END; MACs verified, bodies not decrypted.
                let mut bytes = 0u64;
                let mut writer = writer;
                loop {
                    match reader.recv() {
                        Ok(Incoming::Chunk { body, .. }) => bytes += body.ciphertext_len() as u64,
                        Ok(Incoming::FileEnd(at)) => {
                            let mut acks = Acks::default();
                            acks.handled(&at);
                            for a in acks.take() {
                                let _ = writer.send(&a);
                            }
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                bytes
            }),
        ));
    }
    let data = vec![0x5au8; FILE_CHUNK_SIZE];
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    for i in 0..chunks {
        let n = (size - i * FILE_CHUNK_SIZE as u64).min(FILE_CHUNK_SIZE as u64) as usize;
        sha2::Digest::update(&mut hasher, &data[..n]);
    }
    let sha256: [u8; 32] = sha2::Digest::finalize(hasher).into();
    let meters = Meters::start(opts);
    let offer = Request::SendFile(FileOffer {
        target,
        send_id: SendId::random(),
        size,
        sha256,
        name: "loadgen.bin".into(),
        voice: None,
    });
    let id = match sender.session.request(&offer).map_err(fail)?.0 {
        Reply::Ok {
            data: ReplyData::Transfer(id),
            ..
        } => id,
        other => return Err(fail(format!("file offer: {other:?}"))),
    };
    for i in 0..chunks {
        let offset = i * FILE_CHUNK_SIZE as u64;
        let n = (size - offset).min(FILE_CHUNK_SIZE as u64) as usize;
        let key = ContentKey::random();
        let body = key.seal(&data[..n]);
        sender
            .session
            .writer
            .send(&Request::Chunk {
                transfer: id,
                offset,
                key,
                body,
            })
            .map_err(fail)?;
    }
    let end = sender
        .session
        .request(&Request::FileEnd(id))
        .map_err(fail)?
        .0;
    if !end.is_ok() {
        return Err(fail(format!("FILE_END: {}", end.text())));
    }
    let deadline = Instant::now() + opts.deadline;
    while (done.load(Ordering::Relaxed) as usize) < receivers.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut report = Report {
        mode: format!("file {size} B to {members} recipient(s)"),
        expected: members as u64,
        deliveries: done.load(Ordering::Relaxed),
        ..Report::default()
    };
    meters.stop(&mut report);
    report.mb_per_s = Some(size as f64 / 1e6 / report.wall_s.max(1e-9));
    for (stream, t) in receivers {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = t.join();
    }
    report.finish(Vec::new());
    Ok(report)
}

/// The raw single-core 3DES-CBC throughput of the `des` crate on this
/// machine, in MB/s: encrypts `bytes` in 64 KiB messages under one cached
/// key schedule. Printed with every run so ratios can be judged elsewhere.
pub fn tdes_mb_per_s(bytes: usize) -> f64 {
    let key = muchat::tdes::TdesKey::new(&[0x42; muchat::tdes::KEY_LEN]);
    let chunk = vec![0x5au8; 64 * 1024];
    let mut out = Vec::with_capacity(chunk.len() + 8);
    let start = Instant::now();
    let mut done = 0;
    while done < bytes {
        out.clear();
        key.encrypt_into(&[1; 8], &chunk, &mut out);
        done += chunk.len();
    }
    done as f64 / 1e6 / start.elapsed().as_secs_f64()
}
