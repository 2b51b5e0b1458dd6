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
//! This module is the only place that knows a writer is a thread: a
//! different writer (an event loop over many sockets) can replace
//! [`spawn`] without changing any caller. The thread is started when there
//! is something to write and exits after half a second with nothing more,
//! so an idle session costs only its reader thread.

use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, select_biased, unbounded, Receiver, SendTimeoutError, Sender};

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
    /// Whether a writer thread is running (or starting).
    running: AtomicBool,
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
    let shared = Arc::new(Shared {
        stream: stream.clone(),
        queued: AtomicUsize::new(0),
        limit: limits.urgent,
        close_reason: Mutex::new(None),
        writer: Mutex::new(Some(FrameWriter::new(stream, sealer))),
        running: AtomicBool::new(false),
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

/// How long a writer thread waits for more work before it exits (a client
/// that receives nothing holds no writer thread).
const IDLE_EXIT: Duration = Duration::from_millis(500);

impl Shared {
    /// Starts the writer thread unless one is running.
    fn ensure_writer(self: &Arc<Self>) {
        if self
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("writer".into())
            .stack_size(crate::server::THREAD_STACK)
            .spawn(move || me.run_writer());
        if spawned.is_err() {
            self.running.store(false, Ordering::SeqCst);
            self.close("cannot start a writer thread");
        }
    }

    fn run_writer(self: Arc<Self>) {
        loop {
            let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                // The connection is finished.
                self.running.store(false, Ordering::SeqCst);
                return;
            };
            match write_loop(w, &self.urgent, &self.bulk, &self.queued) {
                Some(w) => {
                    // Idle: park the writer, then make sure nothing slipped in
                    // after the last look (a pusher saw `running` still set).
                    *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
                    self.running.store(false, Ordering::SeqCst);
                    let pending = !self.urgent.is_empty() || !self.bulk.is_empty();
                    if !pending
                        || self
                            .running
                            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                            .is_err()
                    {
                        return;
                    }
                }
                None => {
                    self.running.store(false, Ordering::SeqCst);
                    self.close("closing");
                    return;
                }
            }
        }
    }
}

/// Flush once this many bytes are sealed, even if more are queued.
const FLUSH_AT: usize = 256 * 1024;

/// Writes until the queues stay empty for [`IDLE_EXIT`] (returning the
/// writer for later) or the connection is finished (returning `None`).
fn write_loop(
    mut w: FrameWriter<SharedStream>,
    urgent: &Receiver<Item>,
    bulk: &Receiver<Item>,
    queued: &AtomicUsize,
) -> Option<FrameWriter<SharedStream>> {
    let take_urgent = |m: Item| {
        queued.fetch_sub(1, Ordering::AcqRel);
        m
    };
    loop {
        let first = select_biased! {
            recv(urgent) -> m => m.map(take_urgent),
            recv(bulk) -> m => m,
            default(IDLE_EXIT) => return Some(w),
        };
        let Ok(mut item) = first else { return None };
        loop {
            match item {
                Item::Frame(o) => w.queue(&o.head, o.body.as_ref()),
                Item::Close => {
                    let _ = w.flush();
                    return None;
                }
            }
            if w.pending() >= FLUSH_AT {
                break;
            }
            item = match urgent
                .try_recv()
                .map(take_urgent)
                .or_else(|_| bulk.try_recv())
            {
                Ok(next) => next,
                Err(_) => break,
            };
        }
        if w.flush().is_err() {
            return None;
        }
    }
}
