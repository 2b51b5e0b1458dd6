//! Durable storage: accounts, groups, memberships, messages, pending
//! deliveries and the bytes of files not yet delivered.
//!
//! The server talks to storage only through the [`Store`] trait, so another
//! backend can replace the embedded SQLite one ([`sqlite::SqliteStore`])
//! without touching command logic. The server keeps accounts and groups in
//! memory for speed ([`crate::server::state`]) and writes every change
//! through to the store *before* acknowledging it: an `OK` means committed.
//!
//! Delivery is at-least-once: each message gets a pending row per recipient
//! user, removed only when one of that user's clients acknowledges it
//! (`ACK`); clients drop duplicates by message id.

pub mod sqlite;

use std::fmt;

use crate::content::{Body, ContentKey};
use crate::names::{Conversation, GroupName, Username};

/// A storage failure. The request that hit it gets an error reply, never a
/// false `OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Result of a storage operation.
pub type StoreResult<T> = Result<T, StoreError>;

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
    /// Creator.
    pub owner: Username,
    /// Current members.
    pub members: Vec<Username>,
}

/// Everything the server loads at start-up.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// All accounts.
    pub users: Vec<UserRecord>,
    /// All groups with their members.
    pub groups: Vec<GroupRecord>,
    /// The highest message id ever assigned (0 if none).
    pub max_message_id: u64,
}

/// What a stored message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text, encrypted by its sender.
    Text {
        /// The content key.
        key: ContentKey,
        /// The encrypted text.
        body: Body,
    },
    /// A file; its chunks are stored separately until delivered.
    File {
        /// Size in bytes.
        size: u64,
        /// SHA-256 of the plaintext.
        sha256: [u8; 32],
        /// The sender's name for it.
        name: String,
    },
}

/// A message as stored and replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Server-assigned id.
    pub id: u64,
    /// Server time, Unix milliseconds.
    pub at_ms: u64,
    /// Sender.
    pub from: Username,
    /// The recipient user or the group, as delivered.
    pub to: Conversation,
    /// Text or file.
    pub content: Content,
}

impl StoredMessage {
    /// The conversation key history is kept under: `#group`, or for direct
    /// messages `@a|b` with the two names in order, so both sides share it.
    pub fn conversation_key(&self) -> String {
        match &self.to {
            Conversation::Group(g) => format!("#{g}"),
            Conversation::User(u) => dm_key(&self.from, u),
        }
    }

    /// Bytes this message holds in a recipient's pending queue (for quotas).
    pub fn pending_bytes(&self) -> u64 {
        match &self.content {
            Content::Text { body, .. } => body.as_str().len() as u64,
            Content::File { size, .. } => *size,
        }
    }
}

/// The history key of the direct conversation between `a` and `b`.
pub fn dm_key(a: &Username, b: &Username) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("@{x}|{y}")
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

/// Work to run when a queued write has committed (or failed).
pub type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// The storage interface the server uses.
///
/// Methods that return a result wait until their change is durable;
/// [`save_chunk`](Store::save_chunk) and [`ack`](Store::ack) queue their
/// change and return at once (a later waiting call or commit covers them).
pub trait Store: Send + Sync {
    /// Loads accounts, groups and the last message id.
    fn load(&self) -> StoreResult<Snapshot>;

    /// Creates an account; false if the username is taken.
    fn create_user(&self, user: &UserRecord) -> StoreResult<bool>;

    /// Creates a group with its owner as first member; false if taken.
    fn create_group(&self, name: &GroupName, owner: &Username) -> StoreResult<bool>;

    /// Adds or removes a member.
    fn set_member(&self, group: &GroupName, user: &Username, member: bool) -> StoreResult<()>;

    /// Stores messages, each with a pending row for each of its recipient
    /// users, in one commit.
    fn save_messages(&self, batch: &[(StoredMessage, Vec<Username>)]) -> StoreResult<()>;

    /// Like [`save_messages`](Store::save_messages), but returns at once and
    /// calls `done` with the outcome once committed. Completions run in the
    /// order their writes were queued, so a connection can keep reading
    /// requests while its earlier messages commit (one fsync then covers
    /// many) and still answer them in order.
    fn save_messages_then(&self, batch: Vec<(StoredMessage, Vec<Username>)>, done: Completion);

    /// Calls `done` once every write queued before it has been committed (or
    /// has failed): a barrier that orders a reply after earlier completions.
    fn then(&self, done: Completion);

    /// Queues one chunk of a file being received.
    fn save_chunk(&self, file_id: u64, chunk: &StoredChunk);

    /// Drops the stored chunks of a transfer that did not complete.
    fn discard_file(&self, file_id: u64);

    /// How many chunks of `file_id` are stored, counted after every write
    /// queued before (so a failed chunk write shows as a missing chunk).
    fn stored_chunks(&self, file_id: u64) -> StoreResult<u64>;

    /// Queues the removal of `ids` from `user`'s pending queue.
    fn ack(&self, user: &Username, ids: &[u64]);

    /// `user`'s pending messages, oldest first.
    fn pending(&self, user: &Username) -> StoreResult<Vec<StoredMessage>>;

    /// Bytes waiting in `user`'s pending queue.
    fn pending_bytes(&self, user: &Username) -> StoreResult<u64>;

    /// Up to `limit` of a stored file's chunks with offsets from `from`
    /// on, in offset order (read a large file a page at a time).
    fn chunks(&self, file_id: u64, from: u64, limit: usize) -> StoreResult<Vec<StoredChunk>>;

    /// The last `limit` messages of a conversation (see
    /// [`StoredMessage::conversation_key`]), oldest first.
    fn history(&self, conversation: &str, limit: usize) -> StoreResult<Vec<StoredMessage>>;
}
