//! Delivery from the logs: what each logged-in connection has been sent of
//! each conversation, live pushes while it keeps up, and catch-up from the
//! store when it does not.
//!
//! Every logged-in connection has a [`Link`]: for each conversation it
//! follows, the next sequence number to send it. When a message commits,
//! the session that sent it offers it ([`Link::offer`]) to every link of
//! every member: a link that is caught up and has room in its outbox gets
//! the frame at once (for a group, the one `GMSG` shared by all members:
//! per recipient only a MAC and a share of a write; a group's messages
//! committed together share one `GMSG`, see [`bundling`]). Otherwise the link
//! only notes that the conversation is ahead of it: the message is in the
//! store, and the link's [`CatchUp`] job pages it from there (as `MSG`, or
//! `FILE` + `CHUNK`s + `FILE_END`) whenever its outbox runs low. A login
//! starts every conversation from the user's cursor the same way, so a
//! backlog, a slow reader and a file download all cost the server a few
//! pages of memory per connection, never the whole backlog.
//!
//! Order: a conversation's frames reach a connection in sequence order,
//! because a link sends `n + 1` only after `n`, and everything it sends
//! goes through one FIFO outbox.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};

use crate::content::Body;
use crate::event::{Delivery, FileStart, ServerMessage};
use crate::names::Username;
use crate::store::{Content, ConvId, Cursor, FileInfo, LogEntry, Store, StoreError};

use super::outbox::{DrainHook, Outbox, Outgoing};
use super::state::SessionId;
use super::{FastMap, FastSet};

/// Log entries read from the store at a time.
const PAGE: usize = 64;

/// File chunks read from the store at a time.
const CHUNK_PAGE: usize = 4;

/// A committed message, with the frames its live recipients get, made once.
pub struct Prepared {
    /// The entry.
    pub entry: LogEntry,
    /// For a group text: its group key's id and its `GMSG` body (the
    /// envelope, sealed once, and the content).
    group_body: Option<(u64, Body)>,
    /// The `GMSG` every member gets, made from `group_body` when the first
    /// link wants it alone (not in a bundle).
    group_frame: OnceLock<Outgoing>,
    /// For a direct message: the `MSG` as each of its two users sees it.
    direct_frames: [OnceLock<Outgoing>; 2],
}

impl Prepared {
    /// Prepares `entry`; `group_body` is its group key's id and `GMSG`
    /// body if it is a group text.
    pub fn new(entry: LogEntry, group_body: Option<(u64, Body)>) -> Prepared {
        Prepared {
            entry,
            group_body,
            group_frame: OnceLock::new(),
            direct_frames: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// Its group key's id and `GMSG` body, for a group text.
    pub fn group_body(&self) -> Option<(u64, &Body)> {
        self.group_body.as_ref().map(|(k, b)| (*k, b))
    }

    /// The frame a live recipient `viewer` gets, if this entry goes live
    /// (files are always paged from the store).
    fn live_frame(&self, viewer: &Username) -> Option<&Outgoing> {
        if let Some((key_id, body)) = &self.group_body {
            return Some(self.group_frame.get_or_init(|| {
                Outgoing::from(&ServerMessage::GroupMsg {
                    key_id: *key_id,
                    seq: self.entry.seq,
                    body: body.clone(),
                })
            }));
        }
        let (a, _) = self.entry.conv.direct_users()?;
        if !matches!(self.entry.content, Content::Text { .. }) {
            return None;
        }
        let slot = &self.direct_frames[usize::from(viewer != a)];
        Some(slot.get_or_init(|| Outgoing::from(&entry_message(&self.entry, viewer, false))))
    }
}

/// Consecutive messages of one group under one key, committed together,
/// with the one `GMSG` that carries them all ([`Body::bundle`]): a link
/// that is caught up gets the bundle (one MAC and one frame for the lot),
/// any other link gets them one by one.
struct Bundle<'a> {
    /// The messages, in sequence order, with no gap.
    messages: &'a [Prepared],
    /// The `GMSG` of them all.
    frame: Outgoing,
}

thread_local! {
    /// Group messages gathered while [`bundling`] runs on this thread.
    static GATHERED: std::cell::RefCell<Option<Run>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a commit's completions) with the live group messages it
/// delivers gathered ([`offer_live`]), and offers them when it returns:
/// messages of one group committed together go to each member that keeps
/// up as one `GMSG` (one MAC and one frame for the lot), as an event-loop
/// server would flush them to each client in one write.
pub fn bundling(f: &mut dyn FnMut()) {
    let outer = GATHERED.with(|g| g.borrow_mut().replace(Run::default()));
    f();
    let run = GATHERED.with(|g| std::mem::replace(&mut *g.borrow_mut(), outer));
    if let Some(mut run) = run {
        run.offer();
    }
}

/// Offers a committed message to the links following its conversation:
/// at once, or, inside [`bundling`], once the commit's completions have
/// run (joined to the group messages before it where it can be).
pub fn offer_live(p: Prepared, links: Arc<[Arc<Link>]>) {
    // What to offer now, outside the borrow: a finished run, and this
    // message if it cannot wait (not a group text, or not inside bundling).
    let (done, now) = GATHERED.with(|g| {
        let mut g = g.borrow_mut();
        let Some(run) = g.as_mut() else {
            return (None, Some((p, links)));
        };
        if run.extend(&p, &links) {
            run.push(p, links);
            return (None, None);
        }
        let done = std::mem::take(run);
        if run.extend(&p, &links) {
            run.push(p, links);
            (Some(done), None)
        } else {
            (Some(done), Some((p, links)))
        }
    });
    if let Some(mut done) = done {
        done.offer();
    }
    if let Some((p, links)) = now {
        for link in links.iter() {
            link.offer(&p);
        }
    }
}

/// Offers what [`bundling`] has gathered so far, before something that
/// must reach connections after it (a group key's change, a leave).
pub fn offer_gathered() {
    let run = GATHERED.with(|g| g.borrow_mut().as_mut().map(std::mem::take));
    if let Some(mut run) = run {
        run.offer();
    }
}

/// The most base64 a bundled `GMSG` body carries (a single message may be
/// larger, and goes alone): well inside a line's limit, and a share of a
/// connection's window.
const BUNDLE_MAX: usize = 16 * 1024;

/// Group messages of one commit waiting to go out together: consecutive
/// sequence numbers of one group, under one key, to the same followers.
#[derive(Default)]
struct Run {
    messages: Vec<Prepared>,
    links: Option<Arc<[Arc<Link>]>>,
    bytes: usize,
}

impl Run {
    /// Whether `p` (with these followers) may join the run; an empty run
    /// takes any group text.
    fn extend(&self, p: &Prepared, links: &Arc<[Arc<Link>]>) -> bool {
        let Some((key_id, body)) = p.group_body() else {
            return false;
        };
        let (Some(last), Some(ours)) = (self.messages.last(), &self.links) else {
            return true;
        };
        last.entry.conv == p.entry.conv
            && last.entry.seq.checked_add(1) == Some(p.entry.seq)
            && last.group_body().is_some_and(|(k, _)| k == key_id)
            && Arc::ptr_eq(ours, links)
            && self.bytes + 1 + body.as_str().len() <= BUNDLE_MAX
    }

    fn push(&mut self, p: Prepared, links: Arc<[Arc<Link>]>) {
        self.bytes += p.group_body().map_or(0, |(_, b)| b.as_str().len() + 1);
        self.messages.push(p);
        self.links = Some(links);
    }

    /// Offers the run to its followers and empties it.
    fn offer(&mut self) {
        let messages = std::mem::take(&mut self.messages);
        self.bytes = 0;
        let Some(links) = self.links.take() else {
            return;
        };
        // Every message of a run is a group text under the first one's key
        // (`extend`); should one not be, they go one by one.
        let bodies: Option<Vec<&Body>> = messages
            .iter()
            .map(|p| p.group_body().map(|(_, b)| b))
            .collect();
        let key_id = messages
            .first()
            .and_then(Prepared::group_body)
            .map(|(k, _)| k);
        match (messages.as_slice(), bodies, key_id) {
            ([first, _, ..], Some(bodies), Some(key_id)) => {
                let frame = Outgoing::from(&ServerMessage::GroupMsg {
                    key_id,
                    seq: first.entry.seq,
                    body: Body::bundle(&bodies),
                });
                let bundle = Bundle {
                    messages: &messages,
                    frame,
                };
                for link in links.iter() {
                    link.offer_bundle(&bundle);
                }
            }
            _ => {
                for p in &messages {
                    for link in links.iter() {
                        link.offer(p);
                    }
                }
            }
        }
    }
}

/// The `MSG` (or file announcement) for `viewer`, as a stored entry
/// becomes on the wire; `history` picks `HIST`/`HIST_FILE`.
pub fn entry_message(entry: &LogEntry, viewer: &Username, history: bool) -> ServerMessage {
    let at = entry.conv.message_ref(viewer, entry.seq);
    match &entry.content {
        Content::Text { key, body } => {
            let d = Delivery {
                at,
                at_ms: entry.at_ms,
                from: entry.from.clone(),
                key: key.clone(),
                body: body.clone(),
            };
            if history {
                ServerMessage::History(d)
            } else {
                ServerMessage::Msg(d)
            }
        }
        Content::File(f) => {
            let start = file_start(entry, f, viewer);
            if history {
                ServerMessage::HistoryFile(start)
            } else {
                ServerMessage::File(start)
            }
        }
    }
}

fn file_start(entry: &LogEntry, f: &FileInfo, viewer: &Username) -> FileStart {
    FileStart {
        at: entry.conv.message_ref(viewer, entry.seq),
        at_ms: entry.at_ms,
        from: entry.from.clone(),
        size: f.size,
        sha256: f.sha256,
        name: f.name.clone(),
        voice: f.voice,
    }
}

/// A file being paged to a connection.
struct FileCursor {
    info: FileInfo,
    /// The next chunk offset to send.
    offset: u64,
}

/// One conversation as one connection follows it.
struct Progress {
    /// The next sequence number to send.
    next: u64,
    /// The highest sequence number known to exist.
    head: u64,
    /// Acknowledged by this connection's user (as far as it knows).
    acked: u64,
    /// A file part-way sent.
    file: Option<FileCursor>,
}

#[derive(Default)]
struct LinkState {
    convs: FastMap<ConvId, Progress>,
    /// Entries this connection sent itself and need not get back (its own
    /// files: it has them).
    skip: FastSet<(ConvId, u64)>,
    /// Conversations with entries to fetch from the store.
    behind: BTreeSet<ConvId>,
    /// The conversation served last (catch-up takes turns).
    last_served: Option<ConvId>,
}

impl LinkState {
    /// Whether `conv` has entries to fetch from the store (the emptiness
    /// check first: it is the common case, and needs no lookup).
    fn is_behind(&self, conv: &ConvId) -> bool {
        !self.behind.is_empty() && self.behind.contains(conv)
    }
}

/// A logged-in connection, as delivery sees it.
pub struct Link {
    /// The connection.
    pub session: SessionId,
    /// Logged in as.
    pub user: Username,
    /// Where its frames go.
    pub outbox: Outbox,
    state: Mutex<LinkState>,
    /// Whether a catch-up job is queued or running.
    scheduled: AtomicBool,
    catch_up: Sender<Option<Arc<Link>>>,
    /// This link, for the outbox's drain hook to schedule it.
    me: Weak<Link>,
    /// Whether any conversation is behind (a lock-free hint for the drain
    /// hook, which runs after every write).
    has_behind: AtomicBool,
    /// Whether the client takes several messages in one `GMSG`.
    bundles: bool,
}

impl Link {
    /// A link for `user` on `session`, following nothing yet.
    pub fn new(
        session: SessionId,
        user: Username,
        outbox: Outbox,
        catch_up: &CatchUp,
        bundles: bool,
    ) -> Arc<Link> {
        let link = Arc::new_cyclic(|me| Link {
            session,
            user,
            outbox: outbox.clone(),
            state: Mutex::new(LinkState::default()),
            scheduled: AtomicBool::new(false),
            catch_up: catch_up.jobs.clone(),
            me: me.clone(),
            has_behind: AtomicBool::new(false),
            bundles,
        });
        let hook: Weak<dyn DrainHook> = link.me.clone();
        outbox.set_drain_hook(Some(hook));
        link
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following the user's conversations from their cursors (at
    /// login): whatever lies past a cursor is fetched from the store.
    pub fn start(self: &Arc<Self>, cursors: Vec<Cursor>) {
        let mut st = self.lock();
        for c in cursors {
            if c.acked < c.head {
                st.behind.insert(c.conv.clone());
            }
            st.convs.insert(
                c.conv,
                Progress {
                    next: c.acked + 1,
                    head: c.head,
                    acked: c.acked,
                    file: None,
                },
            );
        }
        let behind = !st.behind.is_empty();
        drop(st);
        if behind {
            self.schedule();
        }
    }

    /// Starts following a group just joined, after its `head`.
    pub fn follow(&self, conv: ConvId, head: u64) {
        self.lock().convs.insert(
            conv,
            Progress {
                next: head + 1,
                head,
                acked: head,
                file: None,
            },
        );
    }

    /// Stops following a conversation (a group left). Messages committed
    /// before, and gathered for a bundle, are offered first.
    pub fn unfollow(&self, conv: &ConvId) {
        offer_gathered();
        let mut st = self.lock();
        st.convs.remove(conv);
        st.behind.remove(conv);
        st.skip.retain(|(c, _)| c != conv);
    }

    /// Stops delivering (logout or close). A file part-way sent is
    /// broken off with `FILE_ABORT`, so the client discards its partial
    /// copy (it comes again, whole, at the next login).
    pub fn detach(&self, why: &str) {
        self.outbox.set_drain_hook(None);
        let mut st = self.lock();
        for (conv, p) in &st.convs {
            if p.file.is_some() {
                let at = conv.message_ref(&self.user, p.next);
                let _ = self.outbox.send(&ServerMessage::FileAbort(at, why.into()));
            }
        }
        st.convs.clear();
        st.behind.clear();
    }

    /// A message just committed, for this link's user. Sent now if the
    /// link is caught up in that conversation and has room; otherwise
    /// noted, and fetched from the store when there is room.
    pub fn offer(self: &Arc<Self>, p: &Prepared) {
        let conv = &p.entry.conv;
        let seq = p.entry.seq;
        let mut st = self.lock();
        // A direct conversation that began after this login starts at 1.
        if conv.direct_users().is_some() && !st.convs.contains_key(conv) {
            st.convs.insert(
                conv.clone(),
                Progress {
                    next: 1,
                    head: 0,
                    acked: 0,
                    file: None,
                },
            );
        }
        let behind = st.is_behind(conv);
        let st = &mut *st;
        let Some(progress) = st.convs.get_mut(conv) else {
            return;
        };
        if seq < progress.next {
            return;
        }
        progress.head = progress.head.max(seq);
        if seq == progress.next
            && !behind
            && !st.skip.is_empty()
            && st.skip.remove(&(conv.clone(), seq))
        {
            // This connection sent it: its reply told it where it went.
            progress.next += 1;
            return;
        }
        if seq == progress.next && !behind && self.outbox.has_room() {
            if let Some(frame) = p.live_frame(&self.user) {
                if self.outbox.push(frame.clone()).is_ok() {
                    progress.next += 1;
                }
                return;
            }
        }
        st.behind.insert(conv.clone());
        self.schedule();
    }

    /// Messages committed together, for this link's user: the bundle in
    /// one frame if the link is caught up right to its first message, has
    /// room, speaks bundles and sent none of them itself; otherwise each
    /// message on its own, as [`offer`](Self::offer) does.
    fn offer_bundle(self: &Arc<Self>, bundle: &Bundle<'_>) {
        let (Some(first), Some(last)) = (bundle.messages.first(), bundle.messages.last()) else {
            return;
        };
        if self.bundles {
            let conv = &first.entry.conv;
            let mut st = self.lock();
            let clear = st.skip.is_empty() && !st.is_behind(conv);
            if let Some(progress) = st.convs.get_mut(conv) {
                if clear && progress.next == first.entry.seq && self.outbox.has_room() {
                    progress.head = progress.head.max(last.entry.seq);
                    if self.outbox.push(bundle.frame.clone()).is_ok() {
                        progress.next = last.entry.seq + 1;
                    }
                    return;
                }
            }
        }
        for p in bundle.messages {
            self.offer(p);
        }
    }

    /// Marks an entry this connection sent itself as one it need not get
    /// back (the reply to its send named it).
    pub fn skip(&self, conv: ConvId, seq: u64) {
        self.lock().skip.insert((conv, seq));
    }

    /// The highest sequence number of `conv` sent on this connection: an
    /// acknowledgement cannot go past it.
    pub fn sent_up_to(&self, conv: &ConvId) -> u64 {
        self.lock().convs.get(conv).map_or(0, |p| p.next - 1)
    }

    /// Records an acknowledgement up to `seq`; true if it moves the cursor.
    pub fn note_ack(&self, conv: &ConvId, seq: u64) -> bool {
        let mut st = self.lock();
        match st.convs.get_mut(conv) {
            Some(p) if seq > p.acked => {
                p.acked = seq;
                true
            }
            _ => false,
        }
    }

    /// Queues a catch-up job unless one is queued or running.
    fn schedule(self: &Arc<Self>) {
        self.has_behind.store(true, Ordering::Release);
        if self
            .scheduled
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && self.catch_up.send(Some(Arc::clone(self))).is_err()
        {
            self.scheduled.store(false, Ordering::Release);
        }
    }

    /// Picks the next conversation to serve, in turn.
    fn next_behind(st: &LinkState) -> Option<ConvId> {
        let after = st.last_served.as_ref().and_then(|last| {
            st.behind
                .range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
        });
        after.or_else(|| st.behind.iter().next()).cloned()
    }

    /// Sends what the store holds for conversations this link is behind
    /// in, while the outbox has room. Returns whether to come back later
    /// (the server's memory budget, not this connection, is what is full).
    fn catch_up(self: &Arc<Self>, store: &dyn Store) -> Result<Again, StoreError> {
        loop {
            if self.outbox.is_closed() {
                return Ok(Again::No);
            }
            if !self.outbox.has_refill_room() {
                // The outbox's drain hook calls again once it has room; if
                // it is the server's budget that is full, try again soon.
                return Ok(if self.outbox.queued() < super::outbox::REFILL_BELOW {
                    Again::Later
                } else {
                    Again::No
                });
            }
            let (conv, next, file) = {
                let mut st = self.lock();
                let Some(conv) = Self::next_behind(&st) else {
                    self.has_behind.store(false, Ordering::Release);
                    return Ok(Again::No);
                };
                st.last_served = Some(conv.clone());
                let p = st.convs.get(&conv);
                match p {
                    None => {
                        st.behind.remove(&conv);
                        continue;
                    }
                    Some(p) if p.next > p.head && p.file.is_none() => {
                        st.behind.remove(&conv);
                        continue;
                    }
                    Some(p) => (
                        conv.clone(),
                        p.next,
                        p.file.as_ref().map(|f| (f.info.id, f.info.size, f.offset)),
                    ),
                }
            };
            match file {
                Some((id, size, offset)) => {
                    self.send_chunks(store, &conv, next, id, size, offset)?
                }
                None => self.send_entries(store, &conv, next)?,
            }
        }
    }

    /// Queues the next page of a conversation's entries (stopping at a file,
    /// whose chunks follow on the next turns).
    fn send_entries(&self, store: &dyn Store, conv: &ConvId, from: u64) -> Result<(), StoreError> {
        let entries = store.read(conv, from, PAGE)?;
        let mut st = self.lock();
        if entries.is_empty() {
            // Nothing stored past `from` (yet): the next offer brings it.
            st.behind.remove(conv);
            return Ok(());
        }
        let st = &mut *st;
        for entry in entries {
            let Some(p) = st.convs.get_mut(conv) else {
                return Ok(());
            };
            // Past `head` lie entries committed but not yet offered: their
            // completion (which names this connection's own sends, not to
            // be sent back) has not run yet. Their offer brings them.
            if entry.seq != p.next || entry.seq > p.head || !self.outbox.has_refill_room() {
                break;
            }
            if st.skip.remove(&(conv.clone(), entry.seq)) {
                p.next += 1;
                continue;
            }
            let message = entry_message(&entry, &self.user, false);
            if self.outbox.send(&message).is_err() {
                return Ok(());
            }
            if let Content::File(info) = &entry.content {
                p.file = Some(FileCursor {
                    info: info.clone(),
                    offset: 0,
                });
                return Ok(());
            }
            p.next += 1;
        }
        if st.convs.get(conv).is_some_and(|p| p.next > p.head) {
            // Caught up: from now on offers go straight out.
            st.behind.remove(conv);
        }
        Ok(())
    }

    /// Queues the next chunks of a file part-way sent, and its end after
    /// the last one.
    fn send_chunks(
        &self,
        store: &dyn Store,
        conv: &ConvId,
        seq: u64,
        file_id: u64,
        size: u64,
        offset: u64,
    ) -> Result<(), StoreError> {
        let chunks = if offset < size {
            store.chunks(file_id, offset, CHUNK_PAGE)?
        } else {
            Vec::new()
        };
        let mut st = self.lock();
        let Some(p) = st.convs.get_mut(conv) else {
            return Ok(());
        };
        let Some(f) = p.file.as_mut() else {
            return Ok(());
        };
        let at = conv.message_ref(&self.user, seq);
        let mut ended = chunks.is_empty();
        for c in chunks {
            if c.offset < f.offset {
                continue;
            }
            if !self.outbox.has_refill_room() {
                return Ok(());
            }
            f.offset = c.offset + (crate::request::FILE_CHUNK_SIZE as u64);
            let chunk = ServerMessage::Chunk {
                at: at.clone(),
                offset: c.offset,
                key: c.key,
                body: c.body,
            };
            if self.outbox.send(&chunk).is_err() {
                return Ok(());
            }
            ended = f.offset >= size;
        }
        if ended {
            // Every chunk sent (or, for a file whose chunks are gone, none
            // left to send: the client's size and digest check then fails).
            let _ = self.outbox.send(&ServerMessage::FileEnd(at));
            p.file = None;
            p.next += 1;
        }
        Ok(())
    }
}

impl DrainHook for Link {
    fn drained(&self) {
        if !self.has_behind.load(Ordering::Acquire) || self.lock().behind.is_empty() {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            me.schedule();
        }
    }
}

/// Whether a catch-up job should run again soon.
enum Again {
    No,
    Later,
}

/// Threads that page stored messages to links that are behind. Owned by
/// the server; its threads end when it is dropped.
pub struct CatchUp {
    jobs: Sender<Option<Arc<Link>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Catch-up threads (store reads happen here, off the writers).
const CATCH_UP_THREADS: usize = 2;

impl CatchUp {
    /// Starts the threads, reading from `store`.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<CatchUp> {
        let (jobs, rx) = unbounded::<Option<Arc<Link>>>();
        let mut threads = Vec::new();
        for _ in 0..CATCH_UP_THREADS {
            let (rx, store) = (rx.clone(), Arc::clone(&store));
            threads.push(
                std::thread::Builder::new()
                    .name("catch-up".into())
                    .spawn(move || {
                        for job in rx.iter() {
                            let Some(link) = job else { return };
                            let result = link.catch_up(store.as_ref());
                            link.scheduled.store(false, Ordering::Release);
                            match result {
                                Ok(Again::No) => {
                                    // Work that arrived while this ran.
                                    if !link.lock().behind.is_empty()
                                        && link.outbox.has_refill_room()
                                    {
                                        link.schedule();
                                    }
                                }
                                Ok(Again::Later) => {
                                    std::thread::sleep(Duration::from_millis(10));
                                    link.schedule();
                                }
                                Err(e) => {
                                    tracing::warn!(user = %link.user, "catch-up read failed: {e}");
                                    std::thread::sleep(Duration::from_millis(200));
                                    link.schedule();
                                }
                            }
                        }
                    })?,
            );
        }
        Ok(CatchUp { jobs, threads })
    }
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        for _ in 0..CATCH_UP_THREADS {
            let _ = self.jobs.send(None);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
