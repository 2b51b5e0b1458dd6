//! What both backends share: one writer thread per store that folds
//! whatever writes are queued into a single transaction (group commit), and
//! the one [`Store`] implementation on top of it.
//!
//! A backend supplies two halves: a [`Batcher`], the writer's own
//! connection, which applies a batch of [`Op`]s in one transaction; and a
//! [`Reads`], which answers reads on connections of its own. [`LogStore`]
//! joins them into a [`Store`]: it queues writes to the writer thread, runs
//! their completions there in commit order (so sequence numbers and
//! replies keep one order), and passes reads straight to the backend.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::{
    Append, Appended, BatchHook, Completion, ConvId, Cursor, FileInfo, GroupChange, GroupRecord,
    LogEntry, Snapshot, Store, StoreError, StoreResult, StoredChunk, UserRecord,
};
use crate::names::{GroupName, Username};
use crate::request::SendId;

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;

/// How often delivered files' chunks are looked for and dropped.
const RELEASE_EVERY: Duration = Duration::from_secs(2);

/// How long a send id is remembered (a client retries within minutes).
pub(super) const SEND_ID_DAYS: u64 = 7;

/// How long a device token stays valid without being used.
pub(super) const DEVICE_DAYS: u64 = 30;

/// A queued write.
#[derive(Debug)]
pub enum Op {
    CreateUser(UserRecord),
    CreateGroup(GroupName, Username, bool),
    ChangeGroup(GroupName, GroupChange),
    SetMember(GroupName, Username, bool),
    Append(Box<Append>),
    Ack(Username, ConvId, u64),
    /// Reads a user's cursors on the writer, in order with appends.
    Cursors(Username),
    NewFile(FileInfo),
    SaveChunk(u64, StoredChunk),
    DiscardFile(u64),
    /// Counts a file's stored chunks on the writer, after its chunk writes.
    CountChunks(u64),
    AddDevice(Username, [u8; 32]),
    ForgetDevice([u8; 32]),
    /// Nothing: a barrier.
    Nothing,
}

/// What a write returns.
#[derive(Debug)]
pub enum Outcome {
    /// Done; a count where one is asked for (created: 1 or 0, chunks...).
    Count(u64),
    /// An append's outcome.
    Appended(Appended),
    /// A membership change: the group's head, and whether it changed.
    Membership(u64, bool),
    /// A user's cursors.
    Cursors(Vec<Cursor>),
}

type Then = Box<dyn FnOnce(StoreResult<Outcome>) + Send>;

/// Where a write's outcome goes.
enum Done {
    /// Nobody waits (chunks, acks): a failure is logged.
    Nobody,
    /// A caller blocked on the outcome.
    Waiter(Sender<StoreResult<Outcome>>),
    /// Work to run on the writer thread after the commit.
    Then(Then),
}

/// A write and where its outcome goes.
struct Job {
    op: Op,
    done: Done,
}

/// The writer's connection: applies a batch in one transaction.
pub trait Batcher: Send + 'static {
    /// Applies `ops` in one transaction, one result each, in order. A
    /// failed op undoes only its own writes; if the commit fails, every op
    /// fails.
    fn apply_batch(&mut self, ops: &[&Op]) -> Vec<StoreResult<Outcome>>;

    /// Drops the chunks of files every member has acknowledged, and any
    /// other tidying that may wait (run every couple of seconds while
    /// acknowledgements come in).
    fn tidy(&mut self) -> StoreResult<()>;
}

/// The reads a backend answers on connections of its own, beside the writer.
pub trait Reads: Send + Sync + 'static {
    fn load(&self) -> StoreResult<Snapshot>;
    fn user(&self, username: &Username) -> StoreResult<Option<UserRecord>>;
    fn group(&self, name: &GroupName) -> StoreResult<Option<GroupRecord>>;
    fn previous_send(
        &self,
        user: &Username,
        send_id: &SendId,
    ) -> StoreResult<Option<Vec<(ConvId, u64)>>>;
    fn read(&self, conv: &ConvId, from_seq: u64, limit: usize) -> StoreResult<Vec<LogEntry>>;
    fn history(&self, conv: &ConvId, limit: usize) -> StoreResult<Vec<LogEntry>>;
    fn chunks(&self, file_id: u64, from: u64, limit: usize) -> StoreResult<Vec<StoredChunk>>;
    /// The owner of a device token used at or after `fresh_after_ms`.
    fn device_owner(
        &self,
        token_hash: [u8; 32],
        fresh_after_ms: u64,
    ) -> StoreResult<Option<Username>>;
    fn undelivered_file_bytes(&self, conv: &ConvId) -> StoreResult<u64>;
}

/// A [`Store`] made of a backend's reads and its writer thread.
pub struct LogStore<R> {
    pub(super) reads: R,
    writes: Sender<Job>,
}

impl<R: Reads> LogStore<R> {
    /// Starts the writer thread on `batcher`; each commit's completions
    /// run inside `hook` if given.
    pub(super) fn start(
        reads: R,
        batcher: impl Batcher,
        hook: Option<BatchHook>,
    ) -> std::io::Result<Self> {
        let (writes, jobs) = unbounded();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(batcher, &jobs, hook))?;
        Ok(LogStore { reads, writes })
    }

    fn wait(&self, op: Op) -> StoreResult<Outcome> {
        let (tx, rx) = bounded(1);
        self.writes
            .send(Job {
                op,
                done: Done::Waiter(tx),
            })
            .map_err(|_| StoreError::Stopped)?;
        rx.recv().map_err(|_| StoreError::Stopped)?
    }

    fn wait_count(&self, op: Op) -> StoreResult<u64> {
        match self.wait(op)? {
            Outcome::Count(n) => Ok(n),
            _ => Err(StoreError::Corrupt("write outcome")),
        }
    }

    fn queue(&self, op: Op, done: Done) {
        if let Err(e) = self.writes.send(Job { op, done }) {
            // The writer is gone: fail the job here so no caller hangs.
            if let Done::Then(f) = e.into_inner().done {
                f(Err(StoreError::Stopped));
            }
        }
    }

    /// Queues `op`, handing its outcome (picked out by `pick`) to `done`.
    fn queue_then<T: 'static>(
        &self,
        op: Op,
        pick: fn(Outcome) -> Option<T>,
        what: &'static str,
        done: Completion<T>,
    ) {
        self.queue(
            op,
            Done::Then(Box::new(move |r| {
                done(r.and_then(|o| pick(o).ok_or(StoreError::Corrupt(what))))
            })),
        );
    }
}

fn write_loop(mut batcher: impl Batcher, jobs: &Receiver<Job>, batch_hook: Option<BatchHook>) {
    let mut last_release = Instant::now();
    let mut acked_since_release = false;
    loop {
        let first = if acked_since_release {
            // Wake up to release delivered files even when nothing else comes.
            match jobs.recv_timeout(RELEASE_EVERY) {
                Ok(j) => Some(j),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match jobs.recv() {
                Ok(j) => Some(j),
                Err(_) => return,
            }
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            acked_since_release |= batch.iter().any(|j| matches!(j.op, Op::Ack(..)));
            merge_acks(&mut batch);
            let ops: Vec<&Op> = batch.iter().map(|j| &j.op).collect();
            let outcome = batcher.apply_batch(&ops);
            // More writes already waiting: the next batch follows at once.
            let more = !jobs.is_empty();
            let mut jobs = Some(batch.into_iter().zip(outcome));
            let mut complete = || {
                // In queue order, so completions (replies) keep their order.
                for (job, result) in jobs.take().into_iter().flatten() {
                    match job.done {
                        Done::Nobody => {
                            if let Err(e) = result {
                                tracing::error!("store write failed: {e}");
                            }
                        }
                        Done::Waiter(tx) => {
                            let _ = tx.send(result);
                        }
                        Done::Then(f) => f(result),
                    }
                }
            };
            match &batch_hook {
                Some(hook) => hook(&mut complete, more),
                None => complete(),
            }
        }
        if acked_since_release && last_release.elapsed() >= RELEASE_EVERY {
            last_release = Instant::now();
            acked_since_release = false;
            if let Err(e) = batcher.tidy() {
                tracing::warn!("cannot release delivered files: {e}");
            }
        }
    }
}

/// Keeps only the highest acknowledgement per user and conversation in a
/// batch (the others become no-ops): clients acknowledge in bursts.
fn merge_acks(batch: &mut [Job]) {
    let mut highest: HashMap<(Username, ConvId), (usize, u64)> = HashMap::new();
    for (i, job) in batch.iter().enumerate() {
        if let Op::Ack(user, conv, seq) = &job.op {
            let e = highest
                .entry((user.clone(), conv.clone()))
                .or_insert((i, *seq));
            if *seq >= e.1 {
                *e = (i, *seq);
            }
        }
    }
    for (i, job) in batch.iter_mut().enumerate() {
        if let Op::Ack(user, conv, _) = &job.op {
            if highest.get(&(user.clone(), conv.clone())).map(|e| e.0) != Some(i) {
                job.op = Op::Nothing;
            }
        }
    }
}

/// The `'conv seq'` pairs a send made, as the `sends` table keeps them.
pub(super) fn format_send_refs(entries: &[LogEntry]) -> String {
    let refs: Vec<String> = entries
        .iter()
        .map(|e| format!("{} {}", e.conv.key(), e.seq))
        .collect();
    refs.join(",")
}

/// Parses what [`format_send_refs`] wrote.
pub(super) fn parse_send_refs(text: &str) -> StoreResult<Vec<(ConvId, u64)>> {
    text.split(',')
        .map(|r| {
            let (conv, seq) = r.split_once(' ')?;
            Some((ConvId::parse_key(conv)?, seq.parse().ok()?))
        })
        .collect::<Option<_>>()
        .ok_or(StoreError::Corrupt("sends"))
}

impl<R: Reads> Store for LogStore<R> {
    fn load(&self) -> StoreResult<Snapshot> {
        self.reads.load()
    }

    fn user(&self, username: &Username) -> StoreResult<Option<UserRecord>> {
        self.reads.user(username)
    }

    fn group(&self, name: &GroupName) -> StoreResult<Option<GroupRecord>> {
        self.reads.group(name)
    }

    fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        self.wait_count(Op::CreateUser(user.clone()))
            .map(|n| n == 1)
    }

    fn create_group(&self, name: &GroupName, owner: &Username, private: bool) -> StoreResult<bool> {
        self.wait_count(Op::CreateGroup(name.clone(), owner.clone(), private))
            .map(|n| n == 1)
    }

    fn change_group(&self, group: &GroupName, change: &GroupChange) -> StoreResult<()> {
        self.wait_count(Op::ChangeGroup(group.clone(), change.clone()))
            .map(|_| ())
    }

    fn set_member(
        &self,
        group: &GroupName,
        user: &Username,
        member: bool,
        done: Completion<(u64, bool)>,
    ) {
        self.queue_then(
            Op::SetMember(group.clone(), user.clone(), member),
            |o| match o {
                Outcome::Membership(head, changed) => Some((head, changed)),
                _ => None,
            },
            "membership outcome",
            done,
        );
    }

    fn append(&self, append: Append, done: Completion<Appended>) {
        self.queue_then(
            Op::Append(Box::new(append)),
            |o| match o {
                Outcome::Appended(a) => Some(a),
                _ => None,
            },
            "append outcome",
            done,
        );
    }

    fn then(&self, done: Completion<()>) {
        self.queue_then(Op::Nothing, |_| Some(()), "barrier", done);
    }

    fn sync(&self) -> StoreResult<()> {
        self.wait(Op::Nothing).map(|_| ())
    }

    fn ack(&self, user: &Username, conv: &ConvId, seq: u64) {
        self.queue(Op::Ack(user.clone(), conv.clone(), seq), Done::Nobody);
    }

    fn cursors(&self, user: &Username, done: Completion<Vec<Cursor>>) {
        self.queue_then(
            Op::Cursors(user.clone()),
            |o| match o {
                Outcome::Cursors(c) => Some(c),
                _ => None,
            },
            "cursors outcome",
            done,
        );
    }

    fn previous_send(
        &self,
        user: &Username,
        send_id: &SendId,
    ) -> StoreResult<Option<Vec<(ConvId, u64)>>> {
        self.sync()?;
        self.reads.previous_send(user, send_id)
    }

    fn read(&self, conv: &ConvId, from_seq: u64, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.reads.read(conv, from_seq, limit)
    }

    fn history(&self, conv: &ConvId, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.reads.history(conv, limit)
    }

    fn new_file(&self, info: &FileInfo) -> StoreResult<u64> {
        self.wait_count(Op::NewFile(info.clone()))
    }

    fn save_chunk(&self, file_id: u64, chunk: &StoredChunk) {
        self.queue(Op::SaveChunk(file_id, chunk.clone()), Done::Nobody);
    }

    fn discard_file(&self, file_id: u64) {
        self.queue(Op::DiscardFile(file_id), Done::Nobody);
    }

    fn stored_chunks(&self, file_id: u64) -> StoreResult<u64> {
        self.wait_count(Op::CountChunks(file_id))
    }

    fn chunks(&self, file_id: u64, from: u64, limit: usize) -> StoreResult<Vec<StoredChunk>> {
        self.reads.chunks(file_id, from, limit)
    }

    fn undelivered_file_bytes(&self, conv: &ConvId) -> StoreResult<u64> {
        self.sync()?;
        self.reads.undelivered_file_bytes(conv)
    }

    fn add_device(&self, user: &Username, token_hash: [u8; 32]) -> StoreResult<()> {
        self.wait_count(Op::AddDevice(user.clone(), token_hash))
            .map(|_| ())
    }

    fn device_owner(&self, token_hash: [u8; 32]) -> StoreResult<Option<Username>> {
        let fresh_after = crate::clock::now_ms().saturating_sub(DEVICE_DAYS * 86_400_000);
        let owner = self.reads.device_owner(token_hash, fresh_after)?;
        if let Some(user) = &owner {
            // Renews the token's lifetime.
            self.queue(Op::AddDevice(user.clone(), token_hash), Done::Nobody);
        }
        Ok(owner)
    }

    fn forget_device(&self, token_hash: [u8; 32]) {
        self.queue(Op::ForgetDevice(token_hash), Done::Nobody);
    }
}
