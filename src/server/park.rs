//! Idle connections without a thread.
//!
//! A logged-in connection that has said nothing for `--park-after-ms`
//! (2 s) gives its thread back: its
//! [`Session`] and the read half of its socket move here, and one parking
//! thread waits on all of their sockets at once (epoll, through mio). When
//! a parked socket becomes readable (a request, a `PONG`, or the close the
//! server itself began with `BYE`), the session gets a thread again and
//! carries on where it stopped ([`session::resume`](super::session::resume)).
//! Deliveries do not need the reading thread (they go through the
//! session's outbox and the writer pool), so a parked session still gets
//! everything at once.
//!
//! While a session is parked this thread keeps its idle clock: it sends
//! the `PING` when the session has been silent for half the idle timeout,
//! and closes it (`BYE idle timeout`) when that goes unanswered as long
//! again, exactly as a reading thread would.
//!
//! Ten thousand idle sessions thus cost ten thousand sockets and session
//! records, not ten thousand threads and stacks. Nothing read is lost:
//! only a session standing between two frames with nothing buffered is
//! parked.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::frame::Opener;

use super::session::{self, Session, Timed};
use super::CloseReason;

/// The parking thread's token for "new sessions to park".
const WAKE: Token = Token(0);

/// The longest the parking thread sleeps between looks at its idle clocks.
const TICK: Duration = Duration::from_secs(1);

/// A session waiting for its socket.
struct Parked {
    session: Session,
    stream: Timed,
    opener: Opener,
}

/// The handle to the parking thread, held by the server's shared state.
pub(super) struct Parking {
    tx: Sender<Parked>,
    waker: Arc<Waker>,
    /// Sessions parked now.
    count: Arc<AtomicUsize>,
}

impl Parking {
    /// Starts the parking thread.
    pub fn start() -> io::Result<Parking> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, rx) = unbounded();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&count);
        std::thread::Builder::new()
            .name("park".into())
            .stack_size(super::THREAD_STACK)
            .spawn(move || run(poll, &rx, &counted))?;
        Ok(Parking { tx, waker, count })
    }

    /// Sessions parked now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Parks an idle session; if the parking thread is gone, the session
    /// goes on reading at once on a thread of its own.
    pub fn park(&self, session: Session, stream: Timed, opener: Opener) {
        let parked = Parked {
            session,
            stream,
            opener,
        };
        if let Err(e) = self.tx.send(parked) {
            wake(e.0, None);
            return;
        }
        let _ = self.waker.wake();
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        // The thread sees the channel closed and ends (no session can be
        // parked any more: every one holds the state this lives in).
        let (tx, _) = unbounded();
        drop(std::mem::replace(&mut self.tx, tx));
        let _ = self.waker.wake();
    }
}

/// Gives a parked session a thread again.
fn wake(p: Parked, close: Option<CloseReason>) {
    let id = p.session.id;
    let (tx, job) = crossbeam_channel::bounded::<Parked>(1);
    let started = std::thread::Builder::new()
        .name(format!("conn-{id}"))
        .stack_size(super::THREAD_STACK)
        .spawn(move || {
            if let Ok(p) = job.recv() {
                session::resume(p.session, p.stream, p.opener, close);
            }
        });
    if let Err(e) = started {
        // No thread to read with (the system is out of them): end the
        // session here, properly (logged out, told why), rather than leave
        // it online with nobody reading.
        tracing::error!(conn = id, "cannot start a thread for a parked session: {e}");
        let why = CloseReason::ReadFailed(format!("cannot start a thread: {e}"));
        session::resume(p.session, p.stream, p.opener, Some(why));
        return;
    }
    let _ = tx.send(p);
}

/// The parking thread: waits on every parked socket and on the idle
/// clocks. The clocks are looked at when the earliest of them is due (or a
/// [`TICK`] has passed), not on every wake-up, so a busy poll over many
/// parked sessions does not scan them all each time.
fn run(mut poll: Poll, rx: &Receiver<Parked>, count: &AtomicUsize) {
    let mut parked: HashMap<Token, Parked> = HashMap::new();
    let mut next_token = 1usize;
    let mut events = Events::with_capacity(256);
    let mut next_check = Instant::now() + TICK;
    loop {
        let timeout = next_check.saturating_duration_since(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!("parking: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        for event in &events {
            if let Some(p) = unpark(&poll, &mut parked, event.token()) {
                wake(p, None);
            }
        }
        // New arrivals.
        loop {
            match rx.try_recv() {
                Ok(p) => {
                    let token = Token(next_token);
                    next_token = next_token.wrapping_add(1).max(1);
                    let fd = p.stream.socket().as_raw_fd();
                    // Registering a socket that is already readable reports it
                    // at once, so nothing that arrived meanwhile is missed.
                    match poll
                        .registry()
                        .register(&mut SourceFd(&fd), token, Interest::READABLE)
                    {
                        Ok(()) => {
                            next_check = next_check.min(idle_deadline(&p.session));
                            parked.insert(token, p);
                        }
                        Err(_) => wake(p, None),
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if parked.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        if Instant::now() >= next_check {
            next_check = idle_clocks(&poll, &mut parked);
        }
        count.store(parked.len(), Ordering::Relaxed);
    }
}

/// Takes a session off the poll (None for the waker's token, or one
/// already gone).
fn unpark(poll: &Poll, parked: &mut HashMap<Token, Parked>, token: Token) -> Option<Parked> {
    let p = parked.remove(&token)?;
    let fd = p.stream.socket().as_raw_fd();
    let _ = poll.registry().deregister(&mut SourceFd(&fd));
    Some(p)
}

/// When a session is due a `PING` (or, pinged, to be closed).
fn idle_deadline(s: &Session) -> Instant {
    let after = s.ping_after();
    match s.ping {
        Some((_, sent)) => sent + after,
        None => s.last_heard + after,
    }
}

/// Pings the sessions that have been silent long enough and closes those
/// that did not answer; returns when to look again (the earliest clock
/// left, a [`TICK`] from now at the latest).
fn idle_clocks(poll: &Poll, parked: &mut HashMap<Token, Parked>) -> Instant {
    let now = Instant::now();
    let mut next = now + TICK;
    let mut unanswered = Vec::new();
    for (token, p) in parked.iter_mut() {
        if idle_deadline(&p.session) <= now {
            if p.session.ping.is_some() {
                unanswered.push(*token);
                continue;
            }
            p.session.send_ping();
        }
        next = next.min(idle_deadline(&p.session));
    }
    for token in unanswered {
        if let Some(p) = unpark(poll, parked, token) {
            wake(p, Some(CloseReason::IdleTimeout));
        }
    }
    next
}
