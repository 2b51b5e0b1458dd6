//! Each connection's outgoing queue, and the writers that drain them.
//!
//! Everything the server sends a client goes through its [`Outbox`], one
//! FIFO queue (so replies and each conversation's messages keep their
//! order) whose bytes are counted, per connection and against the
//! server's memory [`Budget`]. Pushing never blocks on the network:
//!
//! * [`Outbox::push`] queues unconditionally; callers that may produce a lot
//!   check [`Outbox::has_room`] first (live deliveries fall back to the
//!   store when there is no room, see [`super::delivery`]) or wait for
//!   room ([`Outbox::wait_for_room`], used by a connection's own reader
//!   for its replies and `HISTORY` pages, which paces that client to its
//!   own reading);
//! * a client that takes nothing for too long is disconnected by the writer.
//!
//! Writing is done by a small [`WriterPool`] that belongs to the server:
//! pushing to an idle outbox puts it on the pool's queue once (a flag keeps
//! it from being queued twice), a pool thread seals what is queued into one
//! buffer and writes it with one call, and a socket that is full is retried
//! a few milliseconds later instead of holding the thread. So a group
//! message wakes at most a few threads rather than one per recipient, and
//! an idle connection costs only its reader. When a connection's queue
//! drains below [`REFILL_BELOW`], its drain hook (the delivery engine) is
//! told, so it can fetch more from the store.

use std::collections::VecDeque;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Sender};

use crate::connection::{FrameWriter, SharedStream};
use crate::event::ServerMessage;
use crate::frame::Frame;

use super::CloseReason;

/// A frame waiting to be sealed for one recipient. Reference-counted as a
/// whole, so a group message shares one copy between its recipients and
/// queueing it for one more costs one reference count (one atomic
/// operation on a counter the writers also touch, not one per part).
#[derive(Debug, Clone)]
pub struct Outgoing(Arc<Frame>);

impl Outgoing {
    /// Bytes this frame accounts for while queued (about its line length).
    pub fn cost(&self) -> usize {
        64 + self.0.head.len() * 2 + self.0.body.as_ref().map_or(0, |b| b.as_str().len())
    }

    /// The frame to seal.
    pub fn frame(&self) -> &Frame {
        &self.0
    }
}

impl From<Frame> for Outgoing {
    fn from(f: Frame) -> Self {
        Outgoing(Arc::new(f))
    }
}

/// Back to the frame a client would open (tests decode what the server
/// queued with [`ServerMessage::parse`], the client's own parser).
#[cfg(test)]
impl From<&Outgoing> for Frame {
    fn from(o: &Outgoing) -> Self {
        o.frame().clone()
    }
}

impl From<&ServerMessage> for Outgoing {
    fn from(m: &ServerMessage) -> Self {
        Outgoing::from(m.to_frame())
    }
}

/// The server-wide cap on bytes queued for clients.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes queued now, across all connections.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `share` of the budget (a fraction) is still free.
    fn below(&self, fraction: f64) -> bool {
        (self.used() as f64) < self.limit as f64 * fraction
    }
}

/// Per-connection queue limits.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Bytes a connection may have queued before live deliveries wait in
    /// the store and its reader waits before answering more requests.
    pub window: usize,
    /// How long a client may take nothing while frames wait before it is
    /// disconnected.
    pub stall_timeout: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            window: 256 * 1024,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Below this many queued bytes a connection asks its drain hook for more
/// from the store (catch-up pages are added only below it, so they never
/// crowd out live messages).
pub const REFILL_BELOW: usize = 64 * 1024;

/// Told when a connection's queue runs low (the delivery engine).
pub trait DrainHook: Send + Sync {
    /// The queue is below [`REFILL_BELOW`].
    fn drained(&self);
}

enum Item {
    Frame(Outgoing),
    /// Write what is queued, then close.
    Close,
}

struct Inner {
    /// The socket, shut down on close; `None` for a detached outbox (unit
    /// tests), which has no connection behind it.
    stream: Option<SharedStream>,
    /// The sealing half, held by a writer thread while it works.
    writer: Mutex<Option<FrameWriter<SharedStream>>>,
    /// Whether this outbox is on the writers' queue or being written.
    scheduled: AtomicBool,
    /// The current wait before retrying a full socket.
    backoff: Mutex<Duration>,
    /// Since when the socket has taken nothing while bytes waited.
    stalled_since: Mutex<Option<Instant>>,
    /// Frames waiting for a writer, oldest first. A plain locked deque:
    /// a push holds the lock for one `push_back`, and a writer takes a
    /// whole turn's worth under one lock rather than one receive per frame.
    queue: Mutex<VecDeque<Item>>,
    /// Wakes a unit test waiting in [`Outbox::take`].
    #[cfg(test)]
    arrived: Condvar,
    /// Bytes queued and not yet written to the socket.
    bytes: AtomicUsize,
    /// Of those, the frames already sealed into the writer's buffer.
    carried: AtomicUsize,
    /// Wakes a reader waiting for room.
    room: (Mutex<()>, Condvar),
    /// Readers waiting for room: notifying a condition variable costs a
    /// system call even when nobody waits, and writers would pay it after
    /// every write.
    room_waiters: AtomicUsize,
    limits: OutboxLimits,
    budget: Arc<Budget>,
    pool: Sender<Job>,
    hook: Mutex<Option<Weak<dyn DrainHook>>>,
    closed: AtomicBool,
    /// The first reason this connection was closed by the server.
    close_reason: Mutex<Option<CloseReason>>,
}

impl Inner {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Item>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends to the queue.
    fn enqueue(&self, item: Item) {
        self.queue().push_back(item);
        #[cfg(test)]
        self.arrived.notify_all();
    }

    fn close(&self, reason: CloseReason) {
        let mut r = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.closed.store(true, Ordering::SeqCst);
        // Wakes the reader blocked in read() and fails any blocked write.
        if let Some(stream) = &self.stream {
            let _ = stream.0.shutdown(Shutdown::Both);
        }
        self.wake_room();
    }

    /// Wakes the readers waiting for room, if any. A waiter counts itself
    /// before it checks for room, and callers change what it checks
    /// before calling this, so no wake-up is lost.
    fn wake_room(&self) {
        // Pairs with the fence in `wait_for_room`: either this sees the
        // waiter, or the waiter sees the bytes this caller took off.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            let _held = self.room.0.lock().unwrap_or_else(|e| e.into_inner());
            self.room.1.notify_all();
        }
    }

    fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
        self.budget.used.fetch_add(n, Ordering::AcqRel);
    }

    fn sub_bytes(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.budget.used.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Whatever was still queued leaves the server's budget.
        let left = *self.bytes.get_mut();
        self.budget.used.fetch_sub(left, Ordering::AcqRel);
    }
}

/// Counts a reader out of [`Inner::room_waiters`] however its wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handle for queueing frames to one client. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// Why a push did not reach the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Outbox {
    /// Queues a frame. Never waits.
    pub fn push(&self, item: Outgoing) -> Result<(), Closed> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Closed);
        }
        self.inner.add_bytes(item.cost());
        self.inner.enqueue(Item::Frame(item));
        let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
            Some(list) => {
                // A commit often pushes several messages to one outbox in a row.
                if !list.last().is_some_and(|l| Arc::ptr_eq(l, &self.inner)) {
                    list.push(Arc::clone(&self.inner));
                }
                true
            }
            None => false,
        });
        if !deferred {
            self.ensure_writer();
        }
        Ok(())
    }

    /// Queues a server message.
    pub fn send(&self, message: &ServerMessage) -> Result<(), Closed> {
        self.push(Outgoing::from(message))
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.inner.bytes.load(Ordering::Acquire)
    }

    /// Whether a live delivery may be queued now: the connection is within
    /// its window and the server within its budget.
    pub fn has_room(&self) -> bool {
        self.queued() < self.inner.limits.window && self.inner.budget.below(1.0)
    }

    /// Whether a page from the store may be queued now (more conservative
    /// than [`has_room`](Self::has_room), so stored backlogs never crowd
    /// out live traffic or the budget).
    pub fn has_refill_room(&self) -> bool {
        self.queued() < REFILL_BELOW && self.inner.budget.below(0.75)
    }

    /// Waits until the connection is within its window (replies and
    /// `HISTORY` pages of this connection's own requests wait here, so a
    /// client that does not read stops being served). False if the
    /// connection closed or made no progress for the stall timeout.
    pub fn wait_for_room(&self) -> bool {
        let (lock, cvar) = &self.inner.room;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.room_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.inner.room_waiters);
        std::sync::atomic::fence(Ordering::SeqCst);
        let mut last = self.queued();
        let mut since = Instant::now();
        while self.queued() >= self.inner.limits.window {
            if self.inner.closed.load(Ordering::Acquire) {
                return false;
            }
            let (g, _) = cvar
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            guard = g;
            let now = self.queued();
            if now < last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= self.inner.limits.stall_timeout {
                drop(guard);
                self.close(CloseReason::TooSlow);
                return false;
            }
        }
        !self.inner.closed.load(Ordering::Acquire)
    }

    /// Sets the hook told when the queue runs low.
    pub fn set_drain_hook(&self, hook: Option<Weak<dyn DrainHook>>) {
        *self.inner.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Sends what is already queued, then closes the connection. Used by the
    /// connection's own reader when it ends, so a final reply or `BYE` still
    /// goes out.
    pub fn finish(&self) {
        self.inner.enqueue(Item::Close);
        self.ensure_writer();
    }

    /// Closes the connection now, recording `reason` for the log.
    pub fn close(&self, reason: CloseReason) {
        self.inner.close(reason);
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Why the server closed this connection, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the oldest queued frame off a detached outbox
    /// (`WriterPool::detached_outbox`), as a writer would, waiting up to
    /// `timeout` for one (returning as soon as it is there). `None` if
    /// nothing came, or the outbox was [finished](Self::finish).
    #[cfg(test)]
    pub fn take(&self, timeout: Duration) -> Option<Outgoing> {
        let queue = self.inner.queue();
        let (mut queue, _) = self
            .inner
            .arrived
            .wait_timeout_while(queue, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        let item = queue.pop_front();
        drop(queue);
        match item? {
            Item::Frame(o) => {
                self.inner.sub_bytes(o.cost());
                self.inner.wake_room();
                Some(o)
            }
            Item::Close => {
                self.inner.close(CloseReason::Finished);
                None
            }
        }
    }

    /// Puts this outbox on the writers' queue unless it is there (or being
    /// written) already.
    fn ensure_writer(&self) {
        ensure_writer(&self.inner);
    }
}

thread_local! {
    /// Outboxes pushed to while [`deferring_wakeups`] runs on this thread.
    static DEFERRED: std::cell::RefCell<Option<Vec<Arc<Inner>>>> =
        const { std::cell::RefCell::new(None) };
    /// Outboxes whose wake-up waits for the next commit, and for how many
    /// commits they have waited.
    static CARRIED: std::cell::RefCell<(Vec<Arc<Inner>>, u32)> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// Commits whose wake-ups may wait for the next one while the store is
/// busy: bounds the delay this adds to a few commits' time.
const CARRY_COMMITS: u32 = 8;

/// Runs `f` (a commit's completions), then wakes the writers for every
/// outbox it pushed to, once each: the messages of one commit reach each
/// connection in one write, as an event-loop server would send them. While
/// more writes are queued behind this commit (`more`), the wake-ups wait
/// for the next commit (at most [`CARRY_COMMITS`]), so a busy server sends
/// several commits' messages in one write per connection; an idle one
/// sends at once.
pub fn deferring_wakeups(f: &mut dyn FnMut(), more: bool) {
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    f();
    let pushed = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
    let due = CARRIED.with(|c| {
        let mut c = c.borrow_mut();
        c.0.extend(pushed.into_iter().flatten());
        c.1 += 1;
        if more && c.1 < CARRY_COMMITS {
            return Vec::new();
        }
        c.1 = 0;
        std::mem::take(&mut c.0)
    });
    for inner in due {
        ensure_writer(&inner);
    }
}

fn ensure_writer(inner: &Arc<Inner>) {
    if inner
        .scheduled
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        let _ = inner.pool.send(Job::Serve(Arc::clone(inner)));
    }
}

/// Threads that write for every connection.
const POOL_THREADS: usize = 2;

/// How long one write may wait for a client's socket before the writer
/// moves on to other connections (the rest is retried shortly).
const WRITE_WAIT: Duration = Duration::from_millis(2);

/// How soon a connection whose socket was full is tried again; the wait
/// doubles while the client takes nothing, up to [`RETRY_MAX`], so a stuck
/// client costs the writers almost nothing.
const RETRY_AFTER: Duration = Duration::from_millis(2);

/// The longest wait between tries for a client that takes nothing.
const RETRY_MAX: Duration = Duration::from_millis(500);

/// Seal at most this much before writing, even if more is queued.
const FLUSH_AT: usize = 128 * 1024;

enum Job {
    Serve(Arc<Inner>),
    Stop,
}

/// The writers shared by a server's connections: a queue of outboxes with
/// work, served by [`POOL_THREADS`] threads, and a retry thread for
/// outboxes whose client is not reading fast enough. Stops (its threads
/// end) when the server drops it.
pub struct WriterPool {
    jobs: Sender<Job>,
    retry: Sender<Option<(Instant, Arc<Inner>)>>,
    threads: Vec<JoinHandle<()>>,
    budget: Arc<Budget>,
    limits: OutboxLimits,
}

impl WriterPool {
    /// Starts the writer threads.
    pub fn start(limits: OutboxLimits, budget: Arc<Budget>) -> std::io::Result<WriterPool> {
        let (jobs, jobs_rx) = unbounded::<Job>();
        let (retry, retry_rx) = unbounded::<Option<(Instant, Arc<Inner>)>>();
        let mut threads = Vec::new();
        for _ in 0..POOL_THREADS {
            let (rx, again, retry) = (jobs_rx.clone(), jobs.clone(), retry.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("writer".into())
                    .spawn(move || {
                        for job in rx.iter() {
                            let Job::Serve(inner) = job else { return };
                            match serve(&inner) {
                                Served::MoreQueued => {
                                    let _ = again.send(Job::Serve(inner));
                                }
                                Served::SocketFull(wait) => {
                                    let _ = retry.send(Some((Instant::now() + wait, inner)));
                                }
                                Served::Idle => unschedule(inner),
                                Served::Finished => {}
                            }
                        }
                    })?,
            );
        }
        let again = jobs.clone();
        threads.push(
            std::thread::Builder::new()
                .name("writer-retry".into())
                .spawn(move || {
                    for item in retry_rx.iter() {
                        let Some((at, inner)) = item else { return };
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        let _ = again.send(Job::Serve(inner));
                    }
                })?,
        );
        Ok(WriterPool {
            jobs,
            retry,
            threads,
            budget,
            limits,
        })
    }

    /// A new connection's outbox, writing to `writer`.
    pub fn outbox(&self, writer: FrameWriter<SharedStream>) -> std::io::Result<Outbox> {
        let stream = writer.get_ref().clone();
        // A writer serves many connections: it never waits long on one.
        stream.0.set_write_timeout(Some(WRITE_WAIT))?;
        Ok(self.new_outbox(Some(stream), Some(writer), self.jobs.clone()))
    }

    /// An outbox with no connection behind it, for unit tests of what the
    /// server queues: it counts against this pool's budget and limits like
    /// any other, but no writer ever serves it (its wake-ups go to a queue
    /// nobody reads), so its frames stay queued until the test takes
    /// them (`Outbox::take`).
    #[cfg(test)]
    pub fn detached_outbox(&self) -> Outbox {
        let (nobody, _) = unbounded();
        self.new_outbox(None, None, nobody)
    }

    fn new_outbox(
        &self,
        stream: Option<SharedStream>,
        writer: Option<FrameWriter<SharedStream>>,
        pool: Sender<Job>,
    ) -> Outbox {
        let inner = Arc::new(Inner {
            stream,
            writer: Mutex::new(writer),
            scheduled: AtomicBool::new(false),
            backoff: Mutex::new(RETRY_AFTER),
            stalled_since: Mutex::new(None),
            queue: Mutex::new(VecDeque::new()),
            #[cfg(test)]
            arrived: Condvar::new(),
            bytes: AtomicUsize::new(0),
            carried: AtomicUsize::new(0),
            room: (Mutex::new(()), Condvar::new()),
            room_waiters: AtomicUsize::new(0),
            limits: self.limits,
            budget: Arc::clone(&self.budget),
            pool,
            hook: Mutex::new(None),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
        });
        Outbox { inner }
    }

    /// Bytes queued for clients across the server.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for WriterPool {
    fn drop(&mut self) {
        for _ in 0..POOL_THREADS {
            let _ = self.jobs.send(Job::Stop);
        }
        let _ = self.retry.send(None);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
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

/// After an idle turn: unless something slipped in while the flag was
/// still set, leave the queue.
fn unschedule(inner: Arc<Inner>) {
    inner.scheduled.store(false, Ordering::SeqCst);
    if !inner.queue().is_empty() {
        ensure_writer(&inner);
    }
}

/// One turn: seal what is queued (up to [`FLUSH_AT`] bytes) and write as
/// much as the socket takes.
fn serve(inner: &Arc<Inner>) -> Served {
    let Some(mut w) = inner
        .writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return Served::Finished;
    };
    let mut closing = false;
    // Bytes taken off the queue are still counted until written.
    let mut sealed_cost = 0usize;
    // A turn's frames come off the queue under one lock and are sealed
    // after it, so pushers never wait on the sealing.
    let mut turn = Vec::new();
    {
        let mut queue = inner.queue();
        let mut room = FLUSH_AT.saturating_sub(w.pending());
        while room > 0 {
            match queue.pop_front() {
                Some(Item::Frame(o)) => {
                    room = room.saturating_sub(o.cost());
                    turn.push(o);
                }
                Some(Item::Close) => {
                    closing = true;
                    break;
                }
                None => break,
            }
        }
    }
    for o in turn {
        sealed_cost += o.cost();
        w.queue_frame(o.frame());
    }
    if closing {
        // Last words (a reply or BYE) get a bounded chance, then close.
        for _ in 0..50 {
            if !matches!(w.write_some(), Ok(left) if left > 0) {
                break;
            }
        }
        inner.close(CloseReason::Finished);
        return Served::Finished;
    }
    let before = w.pending();
    if w.write_some().is_err() {
        inner.close(CloseReason::WriteFailed);
        return Served::Finished;
    }
    let left = w.pending();
    *inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    // Frames sealed into the buffer stay counted until the buffer is
    // written out whole.
    let carried = inner.carried.fetch_add(sealed_cost, Ordering::AcqRel) + sealed_cost;
    if left == 0 {
        inner.carried.fetch_sub(carried, Ordering::AcqRel);
        inner.sub_bytes(carried);
    }
    inner.wake_room();
    if inner.bytes.load(Ordering::Acquire) < REFILL_BELOW {
        let hook = inner.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = hook.and_then(|h| h.upgrade()) {
            h.drained();
        }
    }
    let mut stalled = inner
        .stalled_since
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut backoff = inner.backoff.lock().unwrap_or_else(|e| e.into_inner());
    if left > 0 && left == before {
        let since = *stalled.get_or_insert_with(Instant::now);
        if since.elapsed() >= inner.limits.stall_timeout {
            drop((stalled, backoff));
            inner.close(CloseReason::TooSlow);
            return Served::Finished;
        }
        *backoff = (*backoff * 2).clamp(RETRY_AFTER, RETRY_MAX);
    } else {
        *stalled = None;
        *backoff = RETRY_AFTER;
    }
    if left > 0 {
        Served::SocketFull(*backoff)
    } else if !inner.queue().is_empty() {
        Served::MoreQueued
    } else {
        Served::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(o: &Outbox) -> bool {
        o.inner.scheduled.load(Ordering::SeqCst)
    }

    #[test]
    fn a_busy_store_carries_wake_ups_to_a_later_commit_but_not_forever() {
        let pool =
            WriterPool::start(OutboxLimits::default(), Arc::new(Budget::new(1 << 20))).unwrap();
        let o = pool.detached_outbox();
        let push = || {
            o.send(&ServerMessage::Ping(1)).unwrap();
        };
        // More writes queued behind the commit: the wake-up waits...
        deferring_wakeups(&mut || push(), true);
        assert!(!scheduled(&o));
        deferring_wakeups(&mut || {}, true);
        assert!(!scheduled(&o));
        // ...until a commit with nothing behind it.
        deferring_wakeups(&mut || {}, false);
        assert!(scheduled(&o));

        // Under constant load it waits for CARRY_COMMITS commits at most.
        let o = pool.detached_outbox();
        let push = || {
            o.send(&ServerMessage::Ping(2)).unwrap();
        };
        deferring_wakeups(&mut || push(), true);
        for _ in 1..CARRY_COMMITS - 1 {
            deferring_wakeups(&mut || {}, true);
            assert!(!scheduled(&o));
        }
        deferring_wakeups(&mut || {}, true);
        assert!(scheduled(&o));
    }
}
