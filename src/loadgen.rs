//! A load generator that speaks the real protocol through this library:
//! handshake, login, group fan-out, idle crowds, login storms and file
//! transfers, with every delivery's MAC verified.
//!
//! To measure the server rather than itself, the generator decrypts only
//! a sample of message bodies (every `sample`-th per receiver, each of which
//! is also a latency probe: the sender stamps its send time into the text).
//! Every frame's MAC is still checked, every head decrypted, and every
//! group envelope opened (it carries the id to acknowledge). Receivers
//! acknowledge what they receive, as real clients do, so the server's
//! pending queues are exercised too.
//!
//! Everything is bounded: a hard deadline ends a run, and a run with
//! missing deliveries is reported as a failure.

use std::collections::HashMap;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::clock::now_ms;
use crate::connection::{FrameReader, FrameWriter, SharedStream};
use crate::content::ContentKey;
use crate::event::{Delivery, ErrorCode, Reply, ServerMessage};
use crate::frame::Frame;
use crate::handshake;
use crate::names::{GroupName, Username};
use crate::request::{FileOffer, FileTarget, Request, FILE_CHUNK_SIZE};

/// What to run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `members` clients in one group; `senders` of them send `messages`
    /// messages of `size` bytes each.
    FanOut {
        /// Group size.
        members: usize,
        /// How many members send.
        senders: usize,
        /// Messages per sender.
        messages: usize,
        /// Message text size in bytes.
        size: usize,
        /// Requests a sender keeps in flight.
        window: usize,
    },
    /// Hold `sessions` logged-in sessions, then time one probe message.
    Idle {
        /// Sessions to hold.
        sessions: usize,
    },
    /// `clients` connect, handshake and log in at once.
    Storm {
        /// Clients.
        clients: usize,
    },
    /// One file of `size` bytes to one user or a group of `members`.
    File {
        /// Bytes.
        size: u64,
        /// Recipients (1 = a direct transfer).
        members: usize,
    },
}

/// Run settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server.
    pub addr: SocketAddr,
    /// What to run.
    pub mode: Mode,
    /// Account name prefix (fresh per run by default).
    pub prefix: String,
    /// Hard limit for the whole run.
    pub deadline: Duration,
    /// The server's process id, for CPU and memory figures.
    pub server_pid: Option<u32>,
    /// Decrypt every n-th body per receiver (a latency probe).
    pub sample: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The mode's name.
    pub mode: String,
    /// Deliveries (or logins, sessions, bytes) counted.
    pub deliveries: u64,
    /// How many were expected.
    pub expected: u64,
    /// Wall time of the measured phase, seconds.
    pub wall_s: f64,
    /// Latencies in milliseconds: p50, p90, p99, max.
    pub latency_ms: [f64; 4],
    /// Server CPU seconds during the measured phase (if its pid was given).
    pub server_cpu_s: Option<f64>,
    /// Generator CPU seconds during the measured phase.
    pub generator_cpu_s: f64,
    /// Server resident memory per session in KiB (idle mode).
    pub rss_per_session_kib: Option<f64>,
    /// Megabytes per second (file mode).
    pub mb_per_s: Option<f64>,
    /// Bodies decrypted (the sample).
    pub decrypted: u64,
}

impl Report {
    /// Whether everything expected arrived.
    pub fn complete(&self) -> bool {
        self.deliveries >= self.expected
    }

    /// Deliveries per second.
    pub fn rate(&self) -> f64 {
        self.deliveries as f64 / self.wall_s.max(1e-9)
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        format!(
            "{{\"mode\":\"{}\",\"deliveries\":{},\"expected\":{},\"per_second\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"wall_s\":{:.3},\"server_cpu_s\":{},\"generator_cpu_s\":{:.3},\"rss_per_session_kib\":{},\"mb_per_s\":{},\"decrypted\":{}}}",
            self.mode,
            self.deliveries,
            self.expected,
            self.rate(),
            self.latency_ms[0],
            self.latency_ms[1],
            self.latency_ms[2],
            self.latency_ms[3],
            self.wall_s,
            opt(self.server_cpu_s),
            self.generator_cpu_s,
            opt(self.rss_per_session_kib),
            opt(self.mb_per_s),
            self.decrypted
        )
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} of {} in {:.2} s = {:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}\n",
            self.mode,
            self.deliveries,
            self.expected,
            self.wall_s,
            self.rate(),
            self.latency_ms[0],
            self.latency_ms[1],
            self.latency_ms[2],
            self.latency_ms[3]
        );
        if let Some(cpu) = self.server_cpu_s {
            s.push_str(&format!("server CPU {cpu:.2} s; "));
        }
        s.push_str(&format!("generator CPU {:.2} s", self.generator_cpu_s));
        if let Some(kib) = self.rss_per_session_kib {
            s.push_str(&format!("; server RSS {kib:.1} KiB per session"));
        }
        if let Some(mb) = self.mb_per_s {
            s.push_str(&format!("; {mb:.2} MB/s end to end"));
        }
        s.push_str(&format!(
            "\nbodies decrypted by the generator: {} (a sample; every MAC was verified)",
            self.decrypted
        ));
        s
    }
}

/// Why a run could not proceed.
#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

fn fail(e: impl std::fmt::Display) -> LoadError {
    LoadError(e.to_string())
}

/// One raw session: the writer is shared between a sender and the
/// receiving thread's acknowledgements.
struct Session {
    writer: Arc<Mutex<FrameWriter<SharedStream>>>,
    reader: FrameReader<BufReader<SharedStream>>,
    stream: Arc<TcpStream>,
    /// Group keys the server sent, by id (for opening `GMSG`s).
    group_keys: HashMap<u64, ContentKey>,
}

impl Session {
    fn connect(addr: SocketAddr) -> Result<Session, LoadError> {
        // One file descriptor per session (shared by both halves), so ten
        // thousand sessions fit the usual descriptor limit.
        let stream = Arc::new(TcpStream::connect(addr).map_err(fail)?);
        stream.set_nodelay(true).map_err(fail)?;
        let mut reader = BufReader::new(SharedStream(Arc::clone(&stream)));
        let mut w = SharedStream(Arc::clone(&stream));
        let keyed = handshake::client(&mut reader, &mut w).map_err(fail)?;
        Ok(Session {
            writer: Arc::new(Mutex::new(FrameWriter::new(w, keyed.sealer))),
            reader: FrameReader::new(reader, keyed.opener),
            stream,
            group_keys: HashMap::new(),
        })
    }

    fn send(&self, frame: &Frame) -> Result<(), LoadError> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_frame(frame).map_err(fail)
    }

    /// Sends a request and reads until its reply, acknowledging any
    /// deliveries met on the way (left over from earlier runs).
    fn request(&mut self, r: &Request) -> Result<Reply, LoadError> {
        self.send(&r.to_frame())?;
        loop {
            let f = self
                .reader
                .read_frame()
                .map_err(fail)?
                .ok_or_else(|| fail("server closed"))?;
            match ServerMessage::parse(f).map_err(fail)? {
                ServerMessage::Reply(reply) => return Ok(reply),
                ServerMessage::Msg(d) => self.send(&Request::Ack(vec![d.id]).to_frame())?,
                ServerMessage::GroupKey { key_id, key, .. } => {
                    self.group_keys.insert(key_id, key);
                }
                _ => {}
            }
        }
    }

    /// Creates the account (if new) and logs in.
    fn login(&mut self, user: &str) -> Result<(), LoadError> {
        let username = Username::parse(user).map_err(fail)?;
        let create = Request::CreateUser {
            name: user.to_string(),
            username: username.clone(),
            password: format!("pw-{user}"),
        };
        match self.request(&create)? {
            Reply::Ok(_) | Reply::Err(ErrorCode::UserExists, _) => {}
            Reply::Err(c, t) => return Err(fail(format!("CREATE_USER {user}: {c} {t}"))),
        }
        let login = Request::Login {
            username,
            password: format!("pw-{user}"),
        };
        match self.request(&login)? {
            Reply::Ok(_) => Ok(()),
            Reply::Err(c, t) => Err(fail(format!("LOGIN {user}: {c} {t}"))),
        }
    }

    fn ok(&mut self, r: &Request, tolerated: &[ErrorCode]) -> Result<(), LoadError> {
        match self.request(r)? {
            Reply::Ok(_) => Ok(()),
            Reply::Err(c, _) if tolerated.contains(&c) => Ok(()),
            Reply::Err(c, t) => Err(fail(format!("{}: {c} {t}", r.redacted()))),
        }
    }
}

/// Runs the load and reports.
pub fn run(opts: &Options) -> Result<Report, LoadError> {
    match opts.mode.clone() {
        Mode::FanOut {
            members,
            senders,
            messages,
            size,
            window,
        } => fan_out(
            opts,
            members,
            senders.min(members),
            messages,
            size,
            window.max(1),
        ),
        Mode::Idle { sessions } => idle(opts, sessions),
        Mode::Storm { clients } => storm(opts, clients),
        Mode::File { size, members } => file(opts, size, members.max(1)),
    }
}

/// Sets up `n` logged-in sessions named `<prefix><i>`, in parallel.
fn sessions(opts: &Options, n: usize, first: usize) -> Result<Vec<Session>, LoadError> {
    let threads = n.clamp(1, 16);
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, Session)>> = Mutex::new(Vec::with_capacity(n));
    let error: Mutex<Option<LoadError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let made = Session::connect(opts.addr).and_then(|mut sess| {
                    sess.login(&format!("{}{}", opts.prefix, first + i))?;
                    Ok(sess)
                });
                match made {
                    Ok(sess) => out
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, sess)),
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
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

/// What a receiver thread hands back.
struct Received {
    count: u64,
    latencies_us: Vec<u64>,
    decrypted: u64,
}

impl Received {
    /// Decrypts a delivery's body and records its latency.
    fn sample(&mut self, d: &Delivery) {
        if let Ok(text) = d.key.open(&d.body) {
            self.decrypted += 1;
            if let Some(sent_us) = stamp(&text) {
                self.latencies_us.push(now_us().saturating_sub(sent_us));
            }
        }
    }
}

/// Reads deliveries until `expected` arrive or `stop` passes; replies go
/// to `replies`. Acknowledges in batches, as a real client does.
fn receive(
    mut reader: FrameReader<BufReader<SharedStream>>,
    mut group_keys: HashMap<u64, ContentKey>,
    writer: Arc<Mutex<FrameWriter<SharedStream>>>,
    expected: u64,
    sample: usize,
    replies: Option<Sender<Reply>>,
    total: Arc<AtomicU64>,
) -> Received {
    let mut got = Received {
        count: 0,
        latencies_us: Vec::new(),
        decrypted: 0,
    };
    let mut acks = Vec::new();
    let sample = sample.max(1) as u64;

    loop {
        if got.count >= expected && replies.is_none() {
            break;
        }
        let frame = match reader.read_frame() {
            Ok(Some(f)) => f,
            _ => break,
        };
        // A group envelope opens into the message it carries (the envelope
        // holds the id to acknowledge), then counts like any delivery.
        let message = match ServerMessage::parse(frame) {
            Ok(ServerMessage::GroupMsg { key_id, body }) => {
                match group_keys
                    .get(&key_id)
                    .and_then(|k| Delivery::open_group(k, &body).ok())
                {
                    Some(d) => Ok(ServerMessage::Msg(d)),
                    None => break,
                }
            }
            other => other,
        };
        match message {
            Ok(ServerMessage::GroupKey { key_id, key, .. }) => {
                group_keys.insert(key_id, key);
            }

            Ok(ServerMessage::Msg(d)) => {
                got.count += 1;
                total.fetch_add(1, Ordering::Relaxed);
                acks.push(d.id);
                if got.count % sample == 1 || sample == 1 {
                    got.sample(&d);
                }
            }
            Ok(ServerMessage::Reply(r)) => {
                if let Some(tx) = &replies {
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
        if !acks.is_empty() && (!reader.has_buffered() || acks.len() >= 512) {
            let frame = Request::Ack(std::mem::take(&mut acks)).to_frame();
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            if w.write_frame(&frame).is_err() {
                break;
            }
        }
    }
    got
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The send time stamped at the start of a message: `t=<unix µs> `.
fn stamp(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text.get(..text.len().min(40))?).ok()?;
    text.strip_prefix("t=")?.split(' ').next()?.parse().ok()
}

fn message_text(size: usize) -> Vec<u8> {
    let mut t = format!("t={} ", now_us()).into_bytes();
    t.resize(size.max(t.len()), b'x');
    t
}

fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentiles(mut us: Vec<u64>) -> [f64; 4] {
    if us.is_empty() {
        return [0.0; 4];
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    [
        at(0.5),
        at(0.9),
        at(0.99),
        *us.last().unwrap_or(&0) as f64 / 1000.0,
    ]
}

/// Runs `f` while measuring wall time and CPU of the server and of this process.
struct Meter {
    start: Instant,
    server0: Option<f64>,
    me0: f64,
    pid: Option<u32>,
}

impl Meter {
    fn start(pid: Option<u32>) -> Meter {
        Meter {
            start: Instant::now(),
            server0: pid.and_then(|p| cpu_seconds(Some(p))),
            me0: cpu_seconds(None).unwrap_or(0.0),
            pid,
        }
    }

    fn finish(&self, report: &mut Report) {
        report.wall_s = self.start.elapsed().as_secs_f64();
        report.server_cpu_s = match (self.server0, self.pid.and_then(|p| cpu_seconds(Some(p)))) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        report.generator_cpu_s = cpu_seconds(None).unwrap_or(0.0) - self.me0;
    }
}

fn fan_out(
    opts: &Options,
    members: usize,
    senders: usize,
    messages: usize,
    size: usize,
    window: usize,
) -> Result<Report, LoadError> {
    let group = GroupName::parse(&format!("{}g", opts.prefix)).map_err(fail)?;
    let mut all = sessions(opts, members, 0)?;
    for (i, s) in all.iter_mut().enumerate() {
        if i == 0 {
            s.ok(
                &Request::CreateGroup(group.clone()),
                &[ErrorCode::GroupExists],
            )?;
        }
        s.ok(&Request::Join(group.clone()), &[ErrorCode::AlreadyMember])?;
    }
    let per_receiver = |i: usize| -> u64 {
        let others = if i < senders { senders - 1 } else { senders };
        (others * messages) as u64
    };
    let expected: u64 = (0..members).map(per_receiver).sum();
    let total = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + opts.deadline;
    let meter = Meter::start(opts.server_pid);

    let mut receivers = Vec::new();
    let mut send_jobs = Vec::new();
    for (i, s) in all.into_iter().enumerate() {
        let Session {
            writer,
            reader,
            stream,
            group_keys,
        } = s;
        let (reply_tx, reply_rx) = if i < senders {
            let (tx, rx) = unbounded();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (w, total, sample, want) = (
            Arc::clone(&writer),
            Arc::clone(&total),
            opts.sample,
            per_receiver(i),
        );
        receivers.push((
            Arc::clone(&stream),
            std::thread::spawn(move || {
                receive(reader, group_keys, w, want, sample, reply_tx, total)
            }),
        ));
        if let Some(rx) = reply_rx {
            send_jobs.push((writer, rx));
        }
    }
    let send_threads: Vec<_> = send_jobs
        .into_iter()
        .map(|(writer, replies)| {
            let group = group.clone();
            std::thread::spawn(move || {
                send_loop(&writer, &replies, &group, messages, size, window, deadline)
            })
        })
        .collect();
    let mut send_errors = 0;
    for t in send_threads {
        send_errors += t
            .join()
            .unwrap_or(Err(fail("sender panicked")))
            .err()
            .map_or(0, |_| 1);
    }
    // Wait for the deliveries, bounded by the deadline.
    while total.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut report = Report {
        mode: format!("fan-out {members} members, {senders} sender(s), {messages} x {size} B"),
        expected,
        ..Report::default()
    };
    meter.finish(&mut report);
    let mut latencies = Vec::new();
    for (stream, t) in receivers {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        if let Ok(r) = t.join() {
            report.deliveries += r.count;
            report.decrypted += r.decrypted;
            latencies.extend(r.latencies_us);
        }
    }
    report.deliveries = report
        .deliveries
        .min(total.load(Ordering::Relaxed).max(report.deliveries));
    report.latency_ms = percentiles(latencies);
    if send_errors > 0 {
        return Err(fail(format!(
            "{send_errors} sender(s) failed; {}",
            report.summary()
        )));
    }
    Ok(report)
}

/// Sends `messages` group messages keeping `window` requests in flight.
fn send_loop(
    writer: &Mutex<FrameWriter<SharedStream>>,
    replies: &Receiver<Reply>,
    group: &GroupName,
    messages: usize,
    size: usize,
    window: usize,
    deadline: Instant,
) -> Result<(), LoadError> {
    let mut sent = 0;
    let mut answered = 0;
    while answered < messages {
        while sent < messages && sent - answered < window {
            let key = ContentKey::random();
            let body = key.seal(&message_text(size));
            let frame = Request::SendToGroup {
                groups: vec![group.clone()],
                key,
                body,
            }
            .to_frame();
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            w.queue(&frame.head, frame.body.as_ref());
            sent += 1;
            if sent - answered >= window || sent == messages || w.pending() > 64 * 1024 {
                w.flush().map_err(fail)?;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match replies.recv_timeout(left) {
            Ok(Reply::Ok(_)) => answered += 1,
            Ok(Reply::Err(c, t)) => return Err(fail(format!("send refused: {c} {t}"))),
            Err(_) => return Err(fail("deadline passed waiting for replies")),
        }
    }
    Ok(())
}

fn idle(opts: &Options, n: usize) -> Result<Report, LoadError> {
    let rss0 = opts.server_pid.and_then(rss_kib);
    let meter = Meter::start(opts.server_pid);
    let mut held = sessions(opts, n, 0)?;
    let mut report = Report {
        mode: format!("idle {n} sessions"),
        expected: n as u64,
        deliveries: held.len() as u64,
        ..Report::default()
    };
    meter.finish(&mut report);
    if let (Some(a), Some(b)) = (rss0, opts.server_pid.and_then(rss_kib)) {
        report.rss_per_session_kib = Some((b - a) / n.max(1) as f64);
    }
    // One probe through the crowd: the last session messages the first.
    if n >= 2 {
        let probe_to = Username::parse(&format!("{}0", opts.prefix)).map_err(fail)?;
        let receiver = held.remove(0);
        let sender = held.pop().ok_or_else(|| fail("no sender"))?;
        let key = ContentKey::random();
        let start = Instant::now();
        sender.send(
            &Request::Send {
                to: probe_to,
                key: key.clone(),
                body: key.seal(&message_text(100)),
            }
            .to_frame(),
        )?;
        let mut reader = receiver.reader;
        receiver
            .stream
            .set_read_timeout(Some(opts.deadline))
            .map_err(fail)?;
        loop {
            let f = reader
                .read_frame()
                .map_err(fail)?
                .ok_or_else(|| fail("closed"))?;
            if let Ok(ServerMessage::Msg(_)) = ServerMessage::parse(f) {
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                report.latency_ms = [ms, ms, ms, ms];
                break;
            }
        }
    }
    Ok(report)
}

fn storm(opts: &Options, n: usize) -> Result<Report, LoadError> {
    // Accounts first (not measured), then the storm of logins.
    drop(sessions(opts, n, 0)?);
    let meter = Meter::start(opts.server_pid);
    let barrier = std::sync::Barrier::new(n);
    let (tx, rx) = bounded(n);
    std::thread::scope(|s| {
        for i in 0..n {
            let (tx, barrier) = (tx.clone(), &barrier);
            s.spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let ok = Session::connect(opts.addr).and_then(|mut sess| {
                    sess.login(&format!("{}{i}", opts.prefix))?;
                    Ok(sess)
                });
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
    meter.finish(&mut report);
    report.latency_ms = percentiles(results.iter().map(|r| r.0).collect());
    Ok(report)
}

fn file(opts: &Options, size: u64, members: usize) -> Result<Report, LoadError> {
    let mut all = sessions(opts, members + 1, 0)?;
    let target = if members == 1 {
        FileTarget::User(Username::parse(&format!("{}1", opts.prefix)).map_err(fail)?)
    } else {
        let g = GroupName::parse(&format!("{}f", opts.prefix)).map_err(fail)?;
        for (i, s) in all.iter_mut().enumerate() {
            if i == 0 {
                s.ok(&Request::CreateGroup(g.clone()), &[ErrorCode::GroupExists])?;
            }
            s.ok(&Request::Join(g.clone()), &[ErrorCode::AlreadyMember])?;
        }
        FileTarget::Groups(vec![g])
    };
    let mut sender = all.remove(0);
    let total = Arc::new(AtomicU64::new(0));
    let chunks = size.div_ceil(FILE_CHUNK_SIZE as u64);
    let mut receivers = Vec::new();
    for r in all {
        let total = Arc::clone(&total);
        let mut reader = r.reader;
        receivers.push((
            Arc::clone(&r.stream),
            std::thread::spawn(move || {
                // Counts chunk bytes until FILE_END; MACs verified, bodies not decrypted.
                let mut bytes = 0u64;
                while let Ok(Some(f)) = reader.read_frame() {
                    match ServerMessage::parse(f) {
                        Ok(ServerMessage::Chunk { body, .. }) => {
                            bytes += body.ciphertext_len() as u64
                        }
                        Ok(ServerMessage::FileEnd(_)) => break,
                        _ => {}
                    }
                }
                total.fetch_add(1, Ordering::Relaxed);
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
    let meter = Meter::start(opts.server_pid);
    let offer = Request::SendFile(FileOffer {
        target,
        size,
        sha256,
        name: "loadgen.bin".into(),
    });
    let id = match sender.request(&offer)? {
        Reply::Ok(t) => t
            .split(' ')
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| fail(t.clone()))?,
        Reply::Err(c, t) => return Err(fail(format!("{c} {t}"))),
    };
    for i in 0..chunks {
        let offset = i * FILE_CHUNK_SIZE as u64;
        let n = (size - offset).min(FILE_CHUNK_SIZE as u64) as usize;
        let key = ContentKey::random();
        let body = key.seal(&data[..n]);
        sender.send(
            &Request::Chunk {
                transfer: id,
                offset,
                key,
                body,
            }
            .to_frame(),
        )?;
    }
    match sender.request(&Request::FileEnd(id))? {
        Reply::Ok(_) => {}
        Reply::Err(c, t) => return Err(fail(format!("FILE_END: {c} {t}"))),
    }
    let deadline = Instant::now() + opts.deadline;
    while (total.load(Ordering::Relaxed) as usize) < receivers.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut report = Report {
        mode: format!("file {size} B to {members} recipient(s)"),
        expected: members as u64,
        deliveries: total.load(Ordering::Relaxed),
        ..Report::default()
    };
    meter.finish(&mut report);
    report.mb_per_s = Some(size as f64 / 1e6 / report.wall_s.max(1e-9));
    for (stream, t) in receivers {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = t.join();
    }
    Ok(report)
}

/// The raw single-core 3DES-CBC throughput of the `des` crate on this
/// machine, in MB/s: encrypts `bytes` in 64 KiB messages under one cached
/// key schedule. Printed with every run so ratios can be judged elsewhere.
pub fn tdes_mb_per_s(bytes: usize) -> f64 {
    let key = crate::tdes::TdesKey::new(&[0x42; crate::tdes::KEY_LEN]);
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

/// A prefix unique to this run, so accounts start clean.
pub fn fresh_prefix() -> String {
    format!("lg{}x", now_ms() % 1_000_000_000)
}
