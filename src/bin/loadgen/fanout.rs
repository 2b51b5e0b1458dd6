//! Group fan-out: `members` sessions in one group; `senders` of them each
//! send `messages` messages, keeping `window` requests unanswered.
//!
//! Every session is served by one of a few event-loop threads (`loops`,
//! one mio [`Poll`] each, sessions dealt out in turn), not by a thread of
//! its own: with a thread per member, every delivery can be a wake-up and
//! a context switch, part of which (waking the reading thread) is charged
//! to the server's send path, and hundreds of runnable threads share the
//! cores with the server in ways that depend on the scheduler. A loop
//! that is busy is not woken: the server's write only marks the socket
//! ready. The [`SessionReader`] verifies every frame's MAC, every delivery
//! is acknowledged (cumulatively, at most every [`ACK_EVERY`] per session,
//! as the real client does), every `sample`-th message per receiver is
//! read as a latency probe (envelope opened, body decrypted), and `PING`s
//! are answered. Members that send nothing leave the other envelopes shut
//! ([`SessionReader::defer_envelopes`]): a `GMSG`'s place is in its clear
//! head, so acknowledging needs no 3DES, and opening 7 blocks for every
//! copy had been two thirds of the generator's CPU, taken from the cores
//! it shares with the server (the IRC generator does no such work).
//!
//! The senders live in the loops too (sharing the receivers' loops, or
//! with `--sender-loop` on one of their own; see [`fan_out`]): each reply
//! frees a slot of its sender's window, and the next messages go out with
//! the next write.
//!
//! # Reading
//!
//! The handshake, login and join run blocking, as for every mode. Then
//! each socket is made non-blocking and its raw fd registered for
//! readability with [`SourceFd`] (the session keeps owning the socket).
//! mio is edge-triggered, so on every event the session is drained:
//! [`SessionReader::recv`] is called until it fails with `WouldBlock`. It
//! does so only once the socket itself has (its buffered reader reads the
//! socket only when its buffer is empty), which re-arms the edge, and it
//! loses nothing (a partial line stays in the frame reader for the next
//! call). Frames read into the buffer before registration would make no
//! event, so every session is also drained once when its loop starts.
//!
//! # Writing
//!
//! [`SessionWriter::flush`] writes its whole buffer or fails, and what a
//! failed flush did not write is dropped: on a non-blocking socket a
//! `WouldBlock` half-way through a frame would corrupt the stream. Writing
//! through a `dup`ed fd kept blocking is no way out: `O_NONBLOCK` belongs
//! to the open file description, which a `dup` shares. So a loop switches
//! the socket to blocking for the length of a flush and back (two
//! `ioctl(FIONBIO)` calls per flush; flushes are one per drained batch of
//! a session at most, and ACKs at most every [`ACK_EVERY`]). That is sound
//! because only the session's loop thread reads or writes its socket: no
//! read can run while the socket blocks. A flush could block only if the
//! server stopped reading this connection while the socket buffers
//! (hundreds of KiB on loopback) filled up; what a session sends is small
//! and bounded (a sender's window of requests, ACKs, PONGs), and a write
//! timeout ([`WRITE_WAIT`]) makes a server that stops reading for good a
//! failed session rather than a hung loop.
//!
//! Everything one drained batch calls for (PONGs, the ACK if it is due, a
//! sender's next messages) is queued and goes out in one flush.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, RecvTimeoutError, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use muchat::client::session::{
    Acks, Incoming, Session, SessionError, SessionReader, SessionWriter,
};
use muchat::content::ContentKey;
use muchat::event::{BadServerMessage, Delivery, Reply};
use muchat::names::{GroupName, MessageRef, Username};
use muchat::request::{Request, SendId};

use super::modes::{
    clients, fail, form_group, message_text, now_us, stamp, FanOut, LoadError, Meters, Options,
};
use super::report::Report;

/// The real client's pace: a session acknowledges at most this often.
const ACK_EVERY: Duration = Duration::from_millis(200);

/// How often a loop looks for sessions that went quiet with deliveries
/// still unacknowledged (busy sessions acknowledge as they read).
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// A flush that cannot finish in this long fails its session.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// How often the main thread notes the figures while deliveries come in.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The token of a loop's waker (sessions are numbered from 0).
const WAKE: Token = Token(usize::MAX);

/// What every loop of a run shares.
struct Job {
    group: GroupName,
    messages: usize,
    size: usize,
    window: usize,
    sample: u64,
    /// The run's time limit (for messages).
    deadline: Duration,
    /// Deliveries from others, across the loops.
    total: AtomicU64,
    /// Deliveries not past the last place seen in the group (repeated or
    /// out of order), across the loops; not counted in `total`.
    repeats: AtomicU64,
    /// Set (and the wakers woken) when the run is over.
    stop: AtomicBool,
}

/// What a loop tells the main thread, once.
enum Status {
    /// Every session of the loop has all its deliveries (and, for a
    /// sender, all its replies).
    Complete,
    /// A session failed: the run cannot complete.
    Failed,
}

/// A sender's progress.
struct Sending {
    sent: usize,
    answered: usize,
}

/// One member's session, as a loop serves it.
struct Member {
    me: Username,
    reader: SessionReader,
    writer: SessionWriter,
    stream: Arc<TcpStream>,
    fd: RawFd,
    acks: Acks,
    last_ack: Instant,
    /// Deliveries from others it should get, and got.
    expected: u64,
    got: u64,
    /// The place in the group's log of the last delivery (its own
    /// included): every later one must be past it.
    last_seq: u64,
    /// Deliveries not past `last_seq`, and the first one's place.
    repeats: u64,
    first_repeat: Option<(u64, u64)>,
    sending: Option<Sending>,
    /// Counted as complete by its loop.
    complete: bool,
    failed: bool,
}

/// What a loop hands back.
#[derive(Default)]
struct Served {
    latencies_us: Vec<u64>,
    decrypted: u64,
    /// Why senders failed or did not finish.
    send_errors: Vec<String>,
    /// Why other sessions failed.
    errors: Vec<String>,
    /// Sessions that did not get all their deliveries (who, how many of
    /// how many, and whether it was a sender), or got some twice.
    short: Vec<String>,
}

impl Member {
    fn new(c: super::modes::Client, expected: u64, sender: bool) -> Result<Member, LoadError> {
        let Session {
            mut reader, writer, ..
        } = c.session;
        // A member that sends nothing gets only others' messages: it needs
        // to open only the envelopes of those it reads (the sample). Every
        // frame's MAC is verified all the same.
        if !sender {
            reader.defer_envelopes();
        }
        let stream = writer.stream();
        stream.set_write_timeout(Some(WRITE_WAIT)).map_err(fail)?;
        stream.set_nonblocking(true).map_err(fail)?;
        Ok(Member {
            me: c.name,
            reader,
            writer,
            fd: stream.as_raw_fd(),
            stream,
            acks: Acks::default(),
            last_ack: Instant::now(),
            expected,
            got: 0,
            last_seq: 0,
            repeats: 0,
            first_repeat: None,
            sending: sender.then_some(Sending {
                sent: 0,
                answered: 0,
            }),
            complete: false,
            failed: false,
        })
    }

    fn is_complete(&self, job: &Job) -> bool {
        self.got >= self.expected
            && self
                .sending
                .as_ref()
                .is_none_or(|s| s.answered >= job.messages)
    }

    /// Reads until the socket would block, then writes what that calls
    /// for. An error means the session is unusable.
    fn serve(&mut self, job: &Job, out: &mut Served) -> Result<(), String> {
        let before = self.got;
        loop {
            match self.reader.recv() {
                Ok(Incoming::Message(d)) => {
                    if self.in_order(job, &d.at) && d.from != self.me {
                        self.count(job, out, || Ok(d)).map_err(|e| e.to_string())?;
                    }
                }
                // Only a member that sends nothing defers its envelopes, so
                // every message it gets is another's.
                Ok(Incoming::SealedMessage(m)) => {
                    if self.in_order(job, &m.at()) {
                        self.count(job, out, || m.open())
                            .map_err(|e| e.to_string())?;
                    }
                }
                Ok(Incoming::Reply(r)) => match (&mut self.sending, r) {
                    (Some(s), Reply::Ok { .. }) if s.answered < s.sent => s.answered += 1,
                    (Some(_), Reply::Err { code, text }) => {
                        return Err(format!("send refused: {code} {text}"))
                    }
                    (_, r) => return Err(format!("unexpected reply: {r:?}")),
                },
                Ok(Incoming::Ping(n)) => self.writer.queue(&Request::Pong(n)),
                Ok(_) => {}
                Err(SessionError::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        if self.got > before {
            job.total.fetch_add(self.got - before, Ordering::Relaxed);
        }
        if let Some(s) = &mut self.sending {
            while s.sent < job.messages && s.sent - s.answered < job.window {
                let key = ContentKey::random();
                let body = key.seal(&message_text(job.size));
                self.writer.queue(&Request::SendToGroup {
                    groups: vec![job.group.clone()],
                    send_id: SendId::random(),
                    key,
                    body,
                });
                s.sent += 1;
            }
        }
        self.queue_ack_if_due(Instant::now());
        self.flush()
    }

    /// Marks a delivery handled (for the next ACK) and checks its place:
    /// false for a repeat, which is counted as one.
    fn in_order(&mut self, job: &Job, at: &MessageRef) -> bool {
        self.acks.handled(at);
        // One group, so one conversation: its places only grow.
        if at.seq <= self.last_seq {
            job.repeats.fetch_add(1, Ordering::Relaxed);
            self.repeats += 1;
            self.first_repeat.get_or_insert((at.seq, self.last_seq));
            return false;
        }
        self.last_seq = at.seq;
        true
    }

    /// Counts a delivery from another member; every `sample`-th is read
    /// (its envelope opened if still shut, its body decrypted). An
    /// envelope that does not open is the server's error.
    fn count(
        &mut self,
        job: &Job,
        out: &mut Served,
        read: impl FnOnce() -> Result<Delivery, BadServerMessage>,
    ) -> Result<(), BadServerMessage> {
        self.got += 1;
        if self.got % job.sample == 1 || job.sample == 1 {
            sample_body(out, &read()?);
        }
        Ok(())
    }

    /// Queues the cumulative ACK if something is unacknowledged and the
    /// last one went out at least [`ACK_EVERY`] ago.
    fn queue_ack_if_due(&mut self, now: Instant) {
        if self.acks.pending() && now.duration_since(self.last_ack) >= ACK_EVERY {
            self.last_ack = now;
            for a in self.acks.take() {
                self.writer.queue(&a);
            }
        }
    }

    /// Writes everything queued, the socket blocking meanwhile (see the
    /// module's comment).
    fn flush(&mut self) -> Result<(), String> {
        if self.writer.pending() == 0 {
            return Ok(());
        }
        self.stream
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        let written = self.writer.flush();
        self.stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        written.map_err(|e| format!("write: {e}"))
    }
}

/// Decrypts a delivery's body and records its latency.
fn sample_body(out: &mut Served, d: &Delivery) {
    if let Ok(text) = d.key.open(&d.body) {
        out.decrypted += 1;
        if let Some(sent_us) = stamp(&text) {
            out.latencies_us.push(now_us().saturating_sub(sent_us));
        }
    }
}

/// One loop's sessions and what it has seen.
struct Loop<'a> {
    registry: Registry,
    job: &'a Job,
    out: Served,
    /// Sessions neither complete nor failed.
    remaining: usize,
    failures: usize,
}

impl Loop<'_> {
    /// Serves a session after an event (or at the start), counting it once
    /// when it completes or fails.
    fn serve(&mut self, m: &mut Member) {
        if m.failed {
            return;
        }
        match m.serve(self.job, &mut self.out) {
            Ok(()) if !m.complete && m.is_complete(self.job) => {
                m.complete = true;
                self.remaining -= 1;
            }
            Ok(()) => {}
            Err(why) => self.fail(m, why),
        }
    }

    /// Sends a due ACK of a session that went quiet.
    fn sweep(&mut self, m: &mut Member, now: Instant) {
        if m.failed {
            return;
        }
        m.queue_ack_if_due(now);
        if let Err(why) = m.flush() {
            self.fail(m, why);
        }
    }

    fn fail(&mut self, m: &mut Member, why: String) {
        m.failed = true;
        let _ = self.registry.deregister(&mut SourceFd(&m.fd));
        if !m.complete {
            m.complete = true;
            self.remaining -= 1;
        }
        self.failures += 1;
        let why = format!("{}: {why}", m.me);
        if m.sending.is_some() {
            self.out.send_errors.push(why);
        } else {
            self.out.errors.push(why);
        }
    }
}

/// One loop: serves `members` until the job stops, telling `status` once
/// when they are all complete or one has failed.
fn run_loop(poll: &mut Poll, members: &mut [Member], job: &Job, status: &Sender<Status>) -> Served {
    let mut events = Events::with_capacity(1024);
    let mut registered = Ok(());
    for (i, m) in members.iter_mut().enumerate() {
        registered = registered.and_then(|()| {
            poll.registry()
                .register(&mut SourceFd(&m.fd), Token(i), Interest::READABLE)
        });
    }
    let registry = match poll.registry().try_clone() {
        Ok(r) => r,
        Err(e) => {
            let _ = status.send(Status::Failed);
            return Served {
                errors: vec![format!("poll: {e}")],
                ..Served::default()
            };
        }
    };
    let mut l = Loop {
        registry,
        job,
        out: Served::default(),
        remaining: members.len(),
        failures: 0,
    };
    if let Err(e) = registered {
        l.out.errors.push(format!("registering a socket: {e}"));
        let _ = status.send(Status::Failed);
        return l.out;
    }
    // The first turn serves every session: what was buffered before
    // registration makes no event, and the senders' first windows go out.
    let mut ready: Vec<usize> = (0..members.len()).collect();
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    let mut told = false;
    loop {
        for &i in &ready {
            l.serve(&mut members[i]);
        }
        let now = Instant::now();
        if now >= next_sweep {
            for m in members.iter_mut() {
                l.sweep(m, now);
            }
            next_sweep = now + SWEEP_EVERY;
        }
        if !told && (l.failures > 0 || l.remaining == 0) {
            told = true;
            let _ = status.send(if l.failures > 0 {
                Status::Failed
            } else {
                Status::Complete
            });
        }
        if job.stop.load(Ordering::Acquire) {
            break;
        }
        ready.clear();
        let timeout = next_sweep.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                l.out.errors.push(format!("poll: {e}"));
                let _ = status.send(Status::Failed);
                break;
            }
        }
        ready.extend(
            events
                .iter()
                .map(|e| e.token())
                .filter(|&t| t != WAKE)
                .map(|t| t.0),
        );
    }
    for m in members.iter().filter(|m| !m.failed) {
        if let Some((seq, last)) = m.first_repeat {
            l.out.short.push(format!(
                "{} got {} repeated or out of order (first: place {seq} after {last})",
                m.me, m.repeats
            ));
        }
        if m.got < m.expected {
            l.out.short.push(format!(
                "{} got {} of {}{}",
                m.me,
                m.got,
                m.expected,
                if m.sending.is_some() {
                    " (a sender)"
                } else {
                    ""
                }
            ));
        }
        if let Some(s) = &m.sending {
            if s.answered < job.messages {
                l.out.send_errors.push(format!(
                    "{}: {} of {} sends answered when the run ended (deadline {:?})",
                    m.me, s.answered, job.messages, job.deadline
                ));
            }
        }
    }
    l.out
}

/// Runs the fan-out shape (see the module's comment) on `loops` threads,
/// or `loops` + 1 with `sender_loop`.
///
/// Where the senders are served decides how far they run ahead of the
/// receivers. Sharing the receivers' loops (the default, as the peer
/// benchmark does), a reply is acted on after the loop's turn through the
/// other sessions' backlogs, so the senders are paced by what the
/// receivers keep up with. On a loop of their own they answer every reply
/// at once, whatever the receivers' backlog (as the former sender threads
/// did when the scheduler let them): when the receivers are the slower
/// side, messages queue in the server, latency becomes queueing time, and
/// the server writes bigger batches.
pub fn fan_out(opts: &Options, shape: &FanOut) -> Result<Report, LoadError> {
    let &FanOut {
        members,
        senders,
        messages,
        size,
        window,
        loops,
        sender_loop,
    } = shape;
    let group = GroupName::parse(&format!("{}g", opts.prefix)).map_err(fail)?;
    let mut all = clients(opts, members)?;
    form_group(&mut all, &group)?;
    // Every message reaches every member but its sender (whose own other
    // sessions, none here, would get it too; its echo is not counted).
    let per_receiver = |i: usize| -> u64 {
        let others = if i < senders { senders - 1 } else { senders };
        (others * messages) as u64
    };
    let expected: u64 = (0..members).map(per_receiver).sum();
    // Sessions are dealt out to the loops in turn; with `sender_loop` the
    // senders have one more loop to themselves (see [`fan_out`]).
    let receiver_loops = loops.clamp(1, members.max(1));
    let mut shards: Vec<Vec<Member>> = (0..=receiver_loops).map(|_| Vec::new()).collect();
    for (i, c) in all.into_iter().enumerate() {
        let sender = i < senders;
        let shard = if sender && sender_loop {
            receiver_loops
        } else {
            i % receiver_loops
        };
        shards[shard].push(Member::new(c, per_receiver(i), sender)?);
    }
    shards.retain(|s| !s.is_empty());
    let loops = shards.len();
    let job = Arc::new(Job {
        group,
        messages,
        size,
        window,
        sample: opts.sample.max(1) as u64,
        deadline: opts.deadline,
        total: AtomicU64::new(0),
        repeats: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let (status_tx, status_rx) = unbounded();
    let mut wakers = Vec::new();
    let mut threads = Vec::new();
    let deadline = Instant::now() + opts.deadline;
    let meters = Meters::start(opts);
    for (n, mut shard) in shards.into_iter().enumerate() {
        let mut poll = Poll::new().map_err(fail)?;
        wakers.push(Waker::new(poll.registry(), WAKE).map_err(fail)?);
        let (job, status) = (Arc::clone(&job), status_tx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("fan-out-{n}"))
                .spawn(move || {
                    let served = run_loop(&mut poll, &mut shard, &job, &status);
                    // The sessions close here, after the loop's last word.
                    drop(shard);
                    served
                })
                .map_err(fail)?,
        );
    }
    drop(status_tx);
    // Wait for every loop to complete (or one to fail), bounded by the
    // deadline. Whenever the count has moved, the figures so far are noted:
    // if deliveries stop short, the run is reported up to the last one, not
    // with the idle wait for the deadline in its time and CPU.
    let mut complete = 0;
    let mut counted = 0;
    let mut at_last_delivery = None;
    while complete < loops {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(PROGRESS_EVERY);
        match status_rx.recv_timeout(wait) {
            Ok(Status::Complete) => complete += 1,
            Ok(Status::Failed) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let total = job.total.load(Ordering::Relaxed);
        if total != counted {
            counted = total;
            let mut so_far = Report::default();
            meters.stop(&mut so_far);
            at_last_delivery = Some(so_far);
        }
    }
    let mut report = Report {
        mode: format!(
            "fan-out {members} members, {senders} sender(s), {messages} x {size} B, window {window}"
        ),
        expected,
        deliveries: job.total.load(Ordering::Relaxed),
        ..Report::default()
    };
    meters.stop(&mut report);
    if let Some(then) = at_last_delivery {
        let idle = report.wall_s - then.wall_s;
        if report.deliveries < expected && report.deliveries == counted && idle >= 1.0 {
            report.stalled_at_s = Some(then.wall_s);
            report.wall_s = then.wall_s;
            report.server_cpu_s = then.server_cpu_s;
            report.server_cpu_s_each = then.server_cpu_s_each;
            report.engines_cpu_s = then.engines_cpu_s;
            report.generator_cpu_s = then.generator_cpu_s;
        }
    }
    job.stop.store(true, Ordering::Release);
    for w in &wakers {
        let _ = w.wake();
    }
    let mut latencies = Vec::new();
    let mut send_errors = Vec::new();
    let mut errors = Vec::new();
    let mut short = Vec::new();
    for t in threads {
        match t.join() {
            Ok(served) => {
                report.decrypted += served.decrypted;
                latencies.extend(served.latencies_us);
                send_errors.extend(served.send_errors);
                errors.extend(served.errors);
                short.extend(served.short);
            }
            Err(_) => errors.push("an event loop panicked".to_string()),
        }
    }
    // Late ones too (the loops ran until they were stopped).
    report.repeats = job.repeats.load(Ordering::Relaxed);
    report.finish(latencies);
    if let Some(e) = errors.first() {
        eprintln!("loadgen: {} session(s) failed, first: {e}", errors.len());
    }
    if !short.is_empty() {
        short.sort();
        eprintln!(
            "loadgen: {} session(s) short of deliveries or with repeats: {}{}",
            short.len(),
            short[..short.len().min(10)].join(", "),
            if short.len() > 10 { ", ..." } else { "" }
        );
    }
    if let Some(e) = send_errors.first() {
        return Err(fail(format!(
            "{} sender(s) failed, first: {e}\n{}",
            send_errors.len(),
            report.summary()
        )));
    }
    Ok(report)
}
