//! Each client's outgoing queue and the writer that drains it.
//!
//! Everything the server sends a client goes through its [`Outbox`]: replies
//! and messages through a bounded *urgent* queue, file traffic through a
//! small bounded *bulk* queue. Pushing never blocks on the network:
//!
//! * [`Outbox::send`] never waits. If the urgent queue is full the client is
//!   not keeping up, so it is disconnected (with the reason logged) rather
//!   than allowed to stall the sender or other members.
//! * [`Outbox::send_bulk`] waits up to a deadline for room, which paces a
//!   file's sender to its recipients (the natural backpressure of a
//!   transfer) without letting a stuck recipient hold it forever.
//!
//! The writer prefers urgent items, so chat keeps flowing while a file is
//! being relayed, and seals everything already queued before one `write`
//! call, so a backlog costs one syscall rather than one per line.
//!
//! Writing is done by a small pool of threads shared by every connection:
//! pushing to an idle outbox puts it on the pool's queue once (a flag keeps
//! it from being queued twice), a pool thread seals and writes what it
//! holds, and a socket that is full is retried a few milliseconds later
//! instead of holding the thread. So a group message wakes at most a few
//! threads rather than one per recipient, and an idle session costs only
//! its reader thread. This module is the only place that knows how writing
//! is scheduled; callers see only [`Outbox`].

use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, SendTimeoutError, Sender};

use crate::connection::{FrameWriter, SharedStream};
use crate::content::Body;
use crate::event::ServerMessage;
use crate::frame::Sealer;

/// A frame waiting to be sealed for one recipient. The head and body are
/// reference-counted, so a group message shares one copy between recipients.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The head text, sealed per recipient.
    pub head: Arc<str>,
    /// Content encrypted by the sender, passed through unchanged.
    pub body: Option<Body>,
}

impl From<&ServerMessage> for Outgoing {
    fn from(m: &ServerMessage) -> Self {
        let f = m.to_frame();
        Outgoing {
            head: f.head.into(),
            body: f.body,
        }
    }
}

/// Why a push did not reach the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxError {
    /// The recipient was too slow; it has been disconnected.
    Overflow,
    /// The recipient's connection is already closed.
    Closed,
}

/// Queue sizes for one client.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Replies and messages that may wait before the client counts as stuck.
    /// (Counted, not preallocated: an idle client's queue costs nothing.)
    pub urgent: usize,
    /// File frames that may wait.
    pub bulk: usize,
    /// How long a file frame may wait for room before the recipient counts as stuck.
    pub bulk_timeout: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            urgent: 10_000,
            bulk: 16,
            bulk_timeout: Duration::from_secs(30),
        }
    }
}

enum Item {
    Frame(Outgoing),
    /// Write what is queued, then close.
    Close,
}

struct Shared {
    stream: SharedStream,
    /// The sealing half, held by the writer thread while it runs.
    writer: Mutex<Option<FrameWriter<SharedStream>>>,
    /// Whether this outbox is on the writers' queue or being written.
    scheduled: AtomicBool,
    /// The current wait before retrying a full socket.
    backoff: Mutex<Duration>,
    urgent: Receiver<Item>,
    bulk: Receiver<Item>,
    /// Items in the urgent queue; the writer decrements as it takes them.
    queued: AtomicUsize,
    limit: usize,
    /// The first reason this connection was closed by the server, for the log.
    close_reason: Mutex<Option<String>>,
}

impl Shared {
    fn close(&self, reason: &str) {
        let mut r = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.to_string());
        }
        // Wakes the reader blocked in read() and fails any blocked write.
        let _ = self.stream.0.shutdown(Shutdown::Both);
    }
}

/// A handle for queueing frames to one client. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    urgent: Sender<Item>,
    bulk: Sender<Item>,
    bulk_timeout: Duration,
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues a reply or message without waiting; a full queue disconnects the client.
    pub fn send(&self, item: Outgoing) -> Result<(), OutboxError> {
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= self.shared.limit {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared.close("outbox full: client too slow to read");
            return Err(OutboxError::Overflow);
        }
        self.urgent.send(Item::Frame(item)).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            OutboxError::Closed
        })?;
        self.shared.ensure_writer();
        Ok(())
    }

    /// Queues a file frame, waiting up to the bulk timeout for room.
    pub fn send_bulk(&self, item: Outgoing) -> Result<(), OutboxError> {
        // A full queue always has a writer draining it (one only stops
        // with both queues empty), so waiting for room makes progress.
        match self.bulk.send_timeout(Item::Frame(item), self.bulk_timeout) {
            Ok(()) => {
                self.shared.ensure_writer();
                Ok(())
            }
            Err(SendTimeoutError::Timeout(_)) => {
                self.shared
                    .close("file queue stuck: client too slow to read");
                Err(OutboxError::Overflow)
            }
            Err(SendTimeoutError::Disconnected(_)) => Err(OutboxError::Closed),
        }
    }

    /// Sends what is already queued, then closes the connection. Used by the
    /// connection's own reader when it ends, so a final reply or `BYE` still
    /// goes out.
    pub fn finish(&self) {
        // Counted like any item, since the writer uncounts whatever it takes.
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.urgent.send(Item::Close).is_err() {
            self.shared.close("closing");
        }
        self.shared.ensure_writer();
    }

    /// Closes the connection now, recording `reason` for the log.
    pub fn close(&self, reason: &str) {
        self.shared.close(reason);
    }

    /// Why the server closed this connection, if it did.
    pub fn close_reason(&self) -> Option<String> {
        self.shared
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Starts the writer for a connection and returns its outbox.
pub fn spawn(
    stream: SharedStream,
    sealer: Sealer,
    limits: OutboxLimits,
) -> std::io::Result<Outbox> {
    let (urgent_tx, urgent_rx) = unbounded();
    let (bulk_tx, bulk_rx) = bounded(limits.bulk);
    // A writer serves many connections: it never waits long on one.
    stream.0.set_write_timeout(Some(WRITE_WAIT))?;
    let shared = Arc::new(Shared {
        stream: stream.clone(),
        queued: AtomicUsize::new(0),
        limit: limits.urgent,
        close_reason: Mutex::new(None),
        writer: Mutex::new(Some(FrameWriter::new(stream, sealer))),
        scheduled: AtomicBool::new(false),
        backoff: Mutex::new(RETRY_AFTER),
        urgent: urgent_rx,
        bulk: bulk_rx,
    });
    Ok(Outbox {
        urgent: urgent_tx,
        bulk: bulk_tx,
        bulk_timeout: limits.bulk_timeout,
        shared,
    })
}

/// Threads that write for every connection.
const POOL_THREADS: usize = 4;

/// How long one write may wait for a client's socket before the writer
/// moves on to other connections (the rest is retried shortly).
const WRITE_WAIT: Duration = Duration::from_millis(2);

/// How soon a connection whose socket was full is tried again; the wait
/// doubles while the client takes nothing, up to [`RETRY_MAX`], so a stuck
/// client costs the writers almost nothing until its queue overflows.
const RETRY_AFTER: Duration = Duration::from_millis(2);

/// The longest wait between tries for a client that takes nothing.
const RETRY_MAX: Duration = Duration::from_millis(500);

/// The writers shared by all connections: a queue of outboxes with work,
/// served by [`POOL_THREADS`] threads, and a retry queue for outboxes whose
/// client is not reading fast enough.
struct Pool {
    ready: Sender<Arc<Shared>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (ready, ready_rx) = unbounded::<Arc<Shared>>();
        let (retry, retry_rx) = unbounded::<(Instant, Arc<Shared>)>();
        for _ in 0..POOL_THREADS {
            let (rx, again) = (ready_rx.clone(), ready.clone());
            let retry = retry.clone();
            // Without writers nothing is ever sent: failing to start them is fatal.
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || {
                    for shared in rx.iter() {
                        match shared.serve() {
                            Served::MoreQueued => {
                                let _ = again.send(shared);
                            }
                            Served::SocketFull(wait) => {
                                let _ = retry.send((Instant::now() + wait, shared));
                            }
                            Served::Idle => shared.unschedule(),
                            Served::Finished => {}
                        }
                    }
                })
                .expect("start the writer threads");
        }
        let again = ready.clone();
        std::thread::Builder::new()
            .name("writer-retry".into())
            .spawn(move || {
                for (at, shared) in retry_rx.iter() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let _ = again.send(shared);
                }
            })
            .expect("start the writer retry thread");
        Pool { ready }
    })
}

/// What one turn of writing for a connection left.
enum Served {
    /// More items are queued: go again (after others waiting).
    MoreQueued,
    /// The client's socket is full: try again after this long.
    SocketFull(Duration),
    /// Nothing left to do.
    Idle,
    /// The connection is closed.
    Finished,
}

impl Shared {
    /// Puts this outbox on the writers' queue unless it is there (or being
    /// written) already.
    fn ensure_writer(self: &Arc<Self>) {
        if self
            .scheduled
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let _ = pool().ready.send(Arc::clone(self));
        }
    }

    /// After an idle turn: unless something slipped in while the flag was
    /// still set, leave the queue.
    fn unschedule(self: Arc<Self>) {
        self.scheduled.store(false, Ordering::SeqCst);
        if !self.urgent.is_empty() || !self.bulk.is_empty() {
            self.ensure_writer();
        }
    }

    /// One turn: seal what is queued (up to [`FLUSH_AT`] bytes, urgent
    /// items first) and write as much as the socket takes.
    fn serve(&self) -> Served {
        let Some(mut w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Served::Finished;
        };
        let mut closing = false;
        while w.pending() < FLUSH_AT {
            let next = self
                .urgent
                .try_recv()
                .inspect(|_| {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                })
                .or_else(|_| self.bulk.try_recv());
            match next {
                Ok(Item::Frame(o)) => w.queue(&o.head, o.body.as_ref()),
                Ok(Item::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if closing {
            // Last words (a reply or BYE) get a bounded chance, then close.
            for _ in 0..50 {
                if !matches!(w.write_some(), Ok(left) if left > 0) {
                    break;
                }
            }
            self.close("closing");
            return Served::Finished;
        }
        let before = w.pending();
        match w.write_some() {
            Err(_) => {
                self.close("write failed");
                Served::Finished
            }
            Ok(left) => {
                *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
                let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                if left == before && left > 0 {
                    *backoff = (*backoff * 2).clamp(RETRY_AFTER, RETRY_MAX);
                } else {
                    *backoff = RETRY_AFTER;
                }
                if left > 0 {
                    Served::SocketFull(*backoff)
                } else if !self.urgent.is_empty() || !self.bulk.is_empty() {
                    Served::MoreQueued
                } else {
                    Served::Idle
                }
            }
        }
    }
}

/// Flush once this many bytes are sealed, even if more are queued.
const FLUSH_AT: usize = 256 * 1024;
