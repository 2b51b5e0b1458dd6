//! Durable storage: accounts, groups, conversation logs, members' cursors,
//! and the bytes of files.
//!
//! Every conversation (a group, or the direct conversation of two users) is
//! an append-only log. A message is appended once, whatever the number of
//! recipients, and gets the next sequence number of its conversation, so
//! every member sees one order. What each member has handled is a cursor
//! per conversation, moved forward by cumulative acknowledgements
//! ("everything up to 17"). A member's undelivered messages are simply the
//! log after their cursor: nothing is kept per recipient.
//!
//! The server talks to storage only through the [`Store`] trait, so another
//! backend can replace the embedded SQLite one ([`sqlite::SqliteStore`])
//! without touching command logic. The server keeps accounts, groups and
//! conversation heads in memory for speed ([`crate::server::state`]) and
//! writes every change through to the store *before* acknowledging it: an
//! `OK` means committed.

pub mod migrate;
pub mod postgres;
pub mod sqlite;
mod writer;

pub use writer::LogStore;

use std::collections::HashMap;
use std::fmt;

use crate::content::{Body, ContentKey};
use crate::names::{Conversation, GroupName, MessageRef, Username};
use crate::request::SendId;

/// A storage failure. The request that hit it gets an error reply, never a
/// false `OK`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed an operation, or cannot be reached.
    #[error("database error: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// No connection to PostgreSQL could be had in time.
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// The data directory or database file cannot be used.
    #[error("{path}: {why}")]
    Unusable {
        /// The directory or file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// A stored row does not parse: the database was altered or damaged.
    #[error("corrupt {0} row in the database")]
    Corrupt(&'static str),
    /// The writer thread has stopped (the server is shutting down).
    #[error("the store has stopped")]
    Stopped,
    /// The file's chunks did not all reach the disk.
    #[error("only {stored} of {expected} chunks of file {file} were stored")]
    MissingChunks {
        /// The file.
        file: u64,
        /// Chunks found.
        stored: u64,
        /// Chunks the size calls for.
        expected: u64,
    },
}

/// Result of a storage operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A conversation as the server names it, whoever looks at it: a group, or
/// the direct conversation of two users (in name order, so both share it;
/// the same user twice for notes to oneself).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvId {
    /// A group's conversation.
    Group(GroupName),
    /// Two users' direct conversation, the lesser name first.
    Direct(Username, Username),
}

impl ConvId {
    /// The direct conversation of `a` and `b`.
    pub fn direct(a: &Username, b: &Username) -> ConvId {
        if a <= b {
            ConvId::Direct(a.clone(), b.clone())
        } else {
            ConvId::Direct(b.clone(), a.clone())
        }
    }

    /// The conversation `viewer` means by `conv`.
    pub fn from_view(viewer: &Username, conv: &Conversation) -> ConvId {
        match conv {
            Conversation::Group(g) => ConvId::Group(g.clone()),
            Conversation::User(peer) => ConvId::direct(viewer, peer),
        }
    }

    /// How `viewer` (a member) sees it: `#group`, or `@` the other user.
    pub fn as_seen_by(&self, viewer: &Username) -> Conversation {
        match self {
            ConvId::Group(g) => Conversation::Group(g.clone()),
            ConvId::Direct(a, b) => Conversation::User(if a == viewer { b } else { a }.clone()),
        }
    }

    /// The reference `viewer` uses for message `seq` here.
    pub fn message_ref(&self, viewer: &Username, seq: u64) -> MessageRef {
        MessageRef {
            conv: self.as_seen_by(viewer),
            seq,
        }
    }

    /// The storage key: `#group` or `@a|b`.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// Parses a storage key.
    pub fn parse_key(s: &str) -> Option<ConvId> {
        if let Some(g) = s.strip_prefix('#') {
            return GroupName::parse(g).ok().map(ConvId::Group);
        }
        let (a, b) = s.strip_prefix('@')?.split_once('|')?;
        let (a, b) = (Username::parse(a).ok()?, Username::parse(b).ok()?);
        (a <= b).then_some(ConvId::Direct(a, b))
    }

    /// The two users of a direct conversation.
    pub fn direct_users(&self) -> Option<(&Username, &Username)> {
        match self {
            ConvId::Direct(a, b) => Some((a, b)),
            ConvId::Group(_) => None,
        }
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvId::Group(g) => write!(f, "#{g}"),
            ConvId::Direct(a, b) => write!(f, "@{a}|{b}"),
        }
    }
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Login name.
    pub username: Username,
    /// Display name.
    pub name: String,
    /// Password verifier as a PHC string (`$argon2id$...`).
    pub verifier: String,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Group name.
    pub name: GroupName,
    /// Its owner (the creator, until handed over).
    pub owner: Username,
    /// Whether only invited users may join.
    pub private: bool,
    /// Current members.
    pub members: Vec<Username>,
    /// Members who may invite and remove others.
    pub admins: Vec<Username>,
    /// Users invited and not yet joined.
    pub invited: Vec<Username>,
    /// Counts the group's changes (where the store keeps count; 0
    /// otherwise), so a server of a cluster can tell an older reading of
    /// the group from a newer one.
    pub version: u64,
}

/// A change to a group's roles or invitations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// `user` may now join (a private group), invited by `by`.
    Invite {
        /// Who is invited.
        user: Username,
        /// Who invited them.
        by: Username,
    },
    /// A member becomes (true) or stops being (false) an admin.
    Admin(Username, bool),
    /// A member becomes the owner; the old owner stays, as an admin.
    Owner(Username),
}

/// Everything the server loads at start-up.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// All accounts.
    pub users: Vec<UserRecord>,
    /// All groups with their members.
    pub groups: Vec<GroupRecord>,
    /// The last sequence number of every conversation.
    pub heads: HashMap<ConvId, u64>,
}

/// A stored file's description (its chunks are kept separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Identifies the file's chunks.
    pub id: u64,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// The sender's name for it (untrusted).
    pub name: String,
    /// Set for a voice note.
    pub voice: Option<crate::request::Voice>,
}

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text, encrypted by its sender.
    Text {
        /// The content key.
        key: ContentKey,
        /// The encrypted text.
        body: Body,
    },
    /// A file.
    File(FileInfo),
}

/// One entry of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The conversation.
    pub conv: ConvId,
    /// Its place in the conversation (from 1, no gaps).
    pub seq: u64,
    /// Server time of acceptance, Unix milliseconds.
    pub at_ms: u64,
    /// Sender.
    pub from: Username,
    /// Text or file.
    pub content: Content,
}

/// Messages to append together: one per conversation of a send.
#[derive(Debug, Clone)]
pub struct Append {
    /// Who sends.
    pub from: Username,
    /// The sender's id for the send, so a repeat is recognised.
    pub send_id: SendId,
    /// Server time of acceptance, Unix milliseconds.
    pub at_ms: u64,
    /// Where to.
    pub convs: Vec<ConvId>,
    /// What (the same in every conversation).
    pub content: Content,
}

impl Append {
    /// The entry this append makes in `conv` at `seq`.
    pub fn entry(&self, conv: &ConvId, seq: u64) -> LogEntry {
        LogEntry {
            conv: conv.clone(),
            seq,
            at_ms: self.at_ms,
            from: self.from.clone(),
            content: self.content.clone(),
        }
    }
}

/// The outcome of an [`Append`].
#[derive(Debug, Clone)]
pub enum Appended {
    /// Appended now, one entry per conversation, in the order asked.
    New(Vec<LogEntry>),
    /// The send id was used before: these are the entries it made then,
    /// and nothing was appended.
    Repeat(Vec<(ConvId, u64)>),
}

/// One of a user's cursors, with its conversation's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The conversation.
    pub conv: ConvId,
    /// Everything up to here was acknowledged.
    pub acked: u64,
    /// The conversation's last sequence number.
    pub head: u64,
}

/// One stored file chunk, as the sender encrypted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Plaintext offset.
    pub offset: u64,
    /// The chunk's content key.
    pub key: ContentKey,
    /// The encrypted chunk.
    pub body: Body,
}

/// A log row's columns, as both backends keep them (a file's come from
/// the `files` table); parsed, not trusted, by [`LogRow::into_entry`].
pub(crate) struct LogRow {
    pub seq: i64,
    pub at_ms: i64,
    pub sender: String,
    /// `text` or `file`.
    pub kind: String,
    /// Text: the content key, base64.
    pub key: String,
    /// Text: the encrypted body, base64.
    pub body: String,
    /// File: id, size, SHA-256 (hex), name, voice (`<duration-ms> <format>`).
    pub file: Option<(i64, i64, String, String, Option<String>)>,
}

impl LogRow {
    /// The entry this row of `conv` holds.
    pub fn into_entry(self, conv: &ConvId) -> StoreResult<LogEntry> {
        let bad = || StoreError::Corrupt("log");
        let content = match (self.kind.as_str(), self.file) {
            ("text", _) => Content::Text {
                key: ContentKey::from_b64(&self.key).map_err(|_| bad())?,
                body: Body::from_wire(&self.body).map_err(|_| bad())?,
            },
            ("file", Some((id, size, sha, name, voice))) => Content::File(FileInfo {
                id: id as u64,
                size: size as u64,
                sha256: crate::request::parse_sha256(&sha).ok_or_else(bad)?,
                name,
                voice: match voice {
                    None => None,
                    Some(v) => {
                        let (d, format) = v.split_once(' ').ok_or_else(bad)?;
                        Some(crate::request::Voice::from_wire(d, format).ok_or_else(bad)?)
                    }
                },
            }),
            _ => return Err(bad()),
        };
        Ok(LogEntry {
            conv: conv.clone(),
            seq: self.seq as u64,
            at_ms: self.at_ms as u64,
            from: Username::parse(&self.sender).map_err(|_| bad())?,
            content,
        })
    }
}

impl StoredChunk {
    /// A chunk from its stored columns (offset, key and body as base64).
    pub(crate) fn from_columns(offset: i64, key: &str, body: &str) -> StoreResult<StoredChunk> {
        let bad = |_| StoreError::Corrupt("file chunk");
        Ok(StoredChunk {
            offset: offset as u64,
            key: ContentKey::from_b64(key).map_err(bad)?,
            body: Body::from_wire(body).map_err(bad)?,
        })
    }
}

/// Runs the completions of one commit together (the server uses it to
/// wake its writers once per commit rather than once per message, so a
/// connection gets several messages in one write). The flag says whether
/// more writes are already queued behind this commit (so the next batch
/// follows at once).
pub type BatchHook = std::sync::Arc<dyn Fn(&mut dyn FnMut(), bool) + Send + Sync>;

/// Work to run on the store's writer when a queued write has committed (or
/// failed). Completions run one at a time, in the order their writes were
/// queued, which is also the order of the sequence numbers they assigned.
pub type Completion<T> = Box<dyn FnOnce(StoreResult<T>) + Send>;

/// The storage interface the server uses.
///
/// Methods that return a result wait until their change is durable;
/// [`append`](Store::append) and [`then`](Store::then) return at once and
/// report through their completion; [`ack`](Store::ack),
/// [`save_chunk`](Store::save_chunk) and [`discard_file`](Store::discard_file)
/// queue their change (a later commit covers them).
pub trait Store: Send + Sync {
    /// Loads accounts, groups and conversation heads.
    fn load(&self) -> StoreResult<Snapshot>;

    /// One account, if it exists (another server of a cluster may have
    /// created it since [`load`](Store::load)).
    fn user(&self, username: &Username) -> StoreResult<Option<UserRecord>>;

    /// One group as stored now, if it exists.
    fn group(&self, name: &GroupName) -> StoreResult<Option<GroupRecord>>;

    /// Creates an account; false if the username is taken.
    fn create_user(&self, user: &UserRecord) -> StoreResult<bool>;

    /// Creates a group with its owner as first member (cursor at 0); false
    /// if the name is taken.
    fn create_group(&self, name: &GroupName, owner: &Username, private: bool) -> StoreResult<bool>;

    /// Changes a group's roles or invitations.
    fn change_group(&self, group: &GroupName, change: &GroupChange) -> StoreResult<()>;

    /// Adds a member (cursor at the group's head: joining brings no
    /// backlog) or removes one (and their cursor). Calls `done`, in commit
    /// order with appends, with the group's head (so the caller knows
    /// exactly which messages a new member must get) and whether anything
    /// changed (a member joining again, or a non-member leaving, changes
    /// nothing and keeps their cursor).
    fn set_member(
        &self,
        group: &GroupName,
        user: &Username,
        member: bool,
        done: Completion<(u64, bool)>,
    );

    /// Appends one message to each of `append.convs` in one transaction,
    /// unless `append.send_id` was already used by the sender. A direct
    /// conversation's first message creates it, with a cursor at 0 for
    /// both users.
    fn append(&self, append: Append, done: Completion<Appended>);

    /// Runs `done` once every write queued before it has committed (or failed).
    fn then(&self, done: Completion<()>);

    /// Waits until every write queued before has committed.
    fn sync(&self) -> StoreResult<()>;

    /// Moves `user`'s cursor in `conv` forward to `seq` (never back).
    fn ack(&self, user: &Username, conv: &ConvId, seq: u64);

    /// `user`'s cursors, one per conversation they belong to, read in
    /// commit order with appends (so a login that registers for live
    /// deliveries in `done` misses nothing and gets nothing twice).
    fn cursors(&self, user: &Username, done: Completion<Vec<Cursor>>);

    /// The entries a send id made, if `user` used it before.
    fn previous_send(
        &self,
        user: &Username,
        send_id: &SendId,
    ) -> StoreResult<Option<Vec<(ConvId, u64)>>>;

    /// Up to `limit` entries of `conv` from `from_seq` on, in order.
    fn read(&self, conv: &ConvId, from_seq: u64, limit: usize) -> StoreResult<Vec<LogEntry>>;

    /// The last `limit` entries of `conv`, oldest first.
    fn history(&self, conv: &ConvId, limit: usize) -> StoreResult<Vec<LogEntry>>;

    /// Records a file about to be uploaded and returns its id. Until an
    /// entry refers to it, it is incomplete: dropped at the next start.
    fn new_file(&self, info: &FileInfo) -> StoreResult<u64>;

    /// Queues one chunk of a file being received.
    fn save_chunk(&self, file_id: u64, chunk: &StoredChunk);

    /// Drops an upload that did not complete, with its chunks.
    fn discard_file(&self, file_id: u64);

    /// How many chunks of `file_id` are stored, counted after every write
    /// queued before (so a failed chunk write shows as a missing chunk).
    fn stored_chunks(&self, file_id: u64) -> StoreResult<u64>;

    /// Up to `limit` of a stored file's chunks with offsets from `from`
    /// on, in offset order (read a large file a page at a time).
    fn chunks(&self, file_id: u64, from: u64, limit: usize) -> StoreResult<Vec<StoredChunk>>;

    /// Bytes of files in `conv` that some member has not acknowledged.
    fn undelivered_file_bytes(&self, conv: &ConvId) -> StoreResult<u64>;

    /// Records a device token (by its hash) for `user`.
    fn add_device(&self, user: &Username, token_hash: [u8; 32]) -> StoreResult<()>;

    /// Whose device token this is, if it is valid (used in the last 30
    /// days); using it renews it.
    fn device_owner(&self, token_hash: [u8; 32]) -> StoreResult<Option<Username>>;

    /// Forgets a device token (the device logged out).
    fn forget_device(&self, token_hash: [u8; 32]);
}
