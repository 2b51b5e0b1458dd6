//! Requests: what a client sends the server, as frame heads (plus bodies),
//! and the one table of verbs that says how each is treated.
//!
//! This is the wire form, not what a person types: the client turns a typed
//! [`crate::command::Command`] into one of these, encrypting message text
//! into a body and reading files into chunks. The server parses each frame
//! with [`Request::parse`] before touching any state.
//!
//! Everything the rest of the program needs to know about a verb (its
//! usage line, whether it needs a login, whether it carries a body, what
//! kind of reply it gets, whether it counts toward the rate limit, and how
//! a person types it) is in [`Verb::spec`]. Adding a verb means a row there,
//! its variant and parse arm below, one handler in the server, and the docs.
//!
//! # Format
//!
//! Tokens are separated by single spaces; verbs match in any case.
//!
//! ```text
//! CREATE_USER <username> <password> <display name>
//! LOGIN <username> <password> [<device-token>]
//! RESUME <username> <device-token>
//! CREATE_GROUP <group> [private] | JOIN <group> | LEAVE <group>
//! INVITE | KICK | PROMOTE | DEMOTE | HANDOVER <group> <username>
//! LIST | HELP | LOGOUT | QUIT
//! SEND <username> <send-id> <content-key>                      + body
//! SEND_TO_GROUP <group>[,<group>...] <send-id> <content-key>   + body
//! SEND_FILE <username> <send-id> <size> <sha256-hex> <file name>
//! SEND_TO_GROUP_FILE <group>[,...] <send-id> <size> <sha256-hex> <file name>
//! CHUNK <transfer-id> <offset> <content-key>                   + body
//! FILE_END <transfer-id>
//! FILE_ABORT <transfer-id>
//! ACK <conversation>:<seq>[,<conversation>:<seq>...]
//! PONG <n>
//! HISTORY <@username|#group|name> [<count>]
//! ```

use std::fmt;

use crate::content::{Body, ContentError, ContentKey};
use crate::frame::Frame;
use crate::names::{
    format_group_list, parse_group_list, GroupName, MessageRef, NameError, Username,
};

/// The most plaintext bytes in one file chunk. Every chunk but the last is
/// exactly this long.
pub const FILE_CHUNK_SIZE: usize = 32 * 1024;

/// The longest message text, in bytes: its body then fits a frame line
/// (base64 of the padded ciphertext, plus a head) with room to spare.
pub const MAX_MESSAGE_LEN: usize = 32 * 1024;

/// The longest body accepted for `SEND`/`SEND_TO_GROUP` (base64 of an IV
/// and a [`MAX_MESSAGE_LEN`]-byte text's padded ciphertext), so the relayed
/// `MSG` line stays well inside the frame line limit.
pub const MAX_MESSAGE_BODY_LEN: usize = body_b64_len(MAX_MESSAGE_LEN);

/// The longest body accepted for a `CHUNK`.
pub const MAX_CHUNK_BODY_LEN: usize = body_b64_len(FILE_CHUNK_SIZE);

/// Length of the base64 body carrying `plain` bytes of content.
pub const fn body_b64_len(plain: usize) -> usize {
    (crate::tdes::BLOCK_LEN + crate::tdes::padded_len(plain)).div_ceil(3) * 4
}

/// What a person is told about a message over [`MAX_MESSAGE_LEN`] (by the
/// client before sending, or by the server).
pub fn message_too_long() -> String {
    format!("message too long: at most {MAX_MESSAGE_LEN} bytes of text; send a file instead")
}

/// The longest display name, password, or file name, in bytes.
pub const MAX_FIELD_LEN: usize = 255;

/// The longest send id.
pub const MAX_SEND_ID_LEN: usize = 32;

/// How many messages `HISTORY` returns when no count is given.
pub const DEFAULT_HISTORY: usize = 20;

/// The most messages one `HISTORY` returns; larger counts are capped.
pub const MAX_HISTORY: usize = 500;

/// The most references in one `ACK`.
pub const MAX_ACK_REFS: usize = 256;

/// Who may send a verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Before or after logging in.
    Anyone,
    /// Only before logging in (`ERR ALREADY_LOGGED_IN` after).
    LoggedOut,
    /// Only after logging in (`ERR NOT_LOGGED_IN` before).
    LoggedIn,
}

/// What the server sends back for a verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Nothing: a malformed one cannot be answered, so it ends the
    /// connection instead.
    Unanswered,
    /// `OK <text>` or `ERR`.
    Text,
    /// `OK <ref>[,<ref>...] <text>`: where the message went.
    Sent,
    /// `OK <transfer-id> <text>` for a new upload, or `OK <ref>[,...]
    /// <text>` for a repeated send id whose file is already stored.
    Upload,
    /// `OK <device-token> <text>`: logged in, and the token this device
    /// presents next time.
    Login,
}

/// Everything about one verb, in one place.
#[derive(Debug)]
pub struct VerbSpec {
    /// The word on the wire.
    pub word: &'static str,
    /// The wire usage line (sent back with `ERR USAGE`).
    pub usage: &'static str,
    /// Who may send it.
    pub access: Access,
    /// Whether the frame carries a body (and must).
    pub body: bool,
    /// What comes back.
    pub reply: ReplyKind,
    /// Whether it counts toward the per-session command rate.
    pub rated: bool,
    /// How a person types it, with what it does, for the client's `HELP`
    /// (`None`: people never type it).
    pub typed: Option<(&'static str, &'static str)>,
}

macro_rules! verbs {
    ($($(#[$doc:meta])* $variant:ident => $spec:expr,)*) => {
        /// A request verb. [`Verb::spec`] says everything about it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Verb {
            $($(#[$doc])* $variant,)*
        }

        impl Verb {
            /// Every verb, in the order `HELP` lists them.
            pub const ALL: &'static [Verb] = &[$(Verb::$variant,)*];

            /// The verb's row in the table.
            pub fn spec(self) -> &'static VerbSpec {
                match self {
                    $(Verb::$variant => &$spec,)*
                }
            }
        }
    };
}

verbs! {
    /// Create an account.
    CreateUser => VerbSpec {
        word: "CREATE_USER",
        usage: "CREATE_USER <username> <password> <display name>",
        access: Access::LoggedOut,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("CREATE_USER <name> <username> [<password>]", "create an account (quote a name with spaces)")),
    },
    /// Log in.
    Login => VerbSpec {
        word: "LOGIN",
        usage: "LOGIN <username> <password> [<device-token>]",
        access: Access::LoggedOut,
        body: false,
        reply: ReplyKind::Login,
        rated: true,
        typed: Some(("LOGIN <username> [<password>]", "log in (asks for the password if left out)")),
    },
    /// Log in again with this device's token alone (reconnecting).
    Resume => VerbSpec {
        word: "RESUME",
        usage: "RESUME <username> <device-token>",
        access: Access::LoggedOut,
        body: false,
        reply: ReplyKind::Login,
        rated: true,
        typed: None,
    },
    /// Create a group and join it.
    CreateGroup => VerbSpec {
        word: "CREATE_GROUP",
        usage: "CREATE_GROUP <group> [private]",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("CREATE_GROUP <group> [private]", "create a group and join it (private: invited users only)")),
    },
    /// Join a group.
    Join => VerbSpec {
        word: "JOIN",
        usage: "JOIN <group>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("JOIN <group>", "join a group")),
    },
    /// Leave a group.
    Leave => VerbSpec {
        word: "LEAVE",
        usage: "LEAVE <group>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("LEAVE <group>", "leave a group")),
    },
    /// Let a user join (a private group).
    Invite => VerbSpec {
        word: "INVITE",
        usage: "INVITE <group> <username>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("INVITE <group> <user>", "let a user join your private group (owner, admins)")),
    },
    /// Remove a member.
    Kick => VerbSpec {
        word: "KICK",
        usage: "KICK <group> <username>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("KICK <group> <user>", "remove a member (owner, admins)")),
    },
    /// Make a member an admin.
    Promote => VerbSpec {
        word: "PROMOTE",
        usage: "PROMOTE <group> <username>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("PROMOTE <group> <user>", "make a member an admin (owner)")),
    },
    /// Make an admin a plain member again.
    Demote => VerbSpec {
        word: "DEMOTE",
        usage: "DEMOTE <group> <username>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("DEMOTE <group> <user>", "make an admin a plain member (owner)")),
    },
    /// Hand the group over to another member.
    Handover => VerbSpec {
        word: "HANDOVER",
        usage: "HANDOVER <group> <username>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("HANDOVER <group> <user>", "make a member the owner (owner)")),
    },
    /// Groups and who is online.
    List => VerbSpec {
        word: "LIST",
        usage: "LIST",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("LIST", "groups, members, who is online")),
    },
    /// The wire syntax.
    Help => VerbSpec {
        word: "HELP",
        usage: "HELP",
        access: Access::Anyone,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: None,
    },
    /// Log out, keeping the connection.
    Logout => VerbSpec {
        word: "LOGOUT",
        usage: "LOGOUT",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("LOGOUT", "log out, staying connected")),
    },
    /// Close the connection.
    Quit => VerbSpec {
        word: "QUIT",
        usage: "QUIT",
        access: Access::Anyone,
        body: false,
        reply: ReplyKind::Text,
        rated: false,
        typed: Some(("QUIT", "leave")),
    },
    /// A direct message.
    Send => VerbSpec {
        word: "SEND",
        usage: "SEND <username> <send-id> <content-key> + body",
        access: Access::LoggedIn,
        body: true,
        reply: ReplyKind::Sent,
        rated: true,
        typed: Some(("SEND <username> <message>", "direct message")),
    },
    /// A message to one or more groups.
    SendToGroup => VerbSpec {
        word: "SEND_TO_GROUP",
        usage: "SEND_TO_GROUP <group>[,<group>...] <send-id> <content-key> + body",
        access: Access::LoggedIn,
        body: true,
        reply: ReplyKind::Sent,
        rated: true,
        typed: Some(("SEND_TO_GROUP <group>[,<group>...] <message>", "group message")),
    },
    /// Announce a file for a user.
    SendFile => VerbSpec {
        word: "SEND_FILE",
        usage: "SEND_FILE <username> <send-id> <size> <sha256> <file name>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Upload,
        rated: true,
        typed: Some(("SEND FILE <username> <path>", "send a file")),
    },
    /// Announce a file for groups.
    SendToGroupFile => VerbSpec {
        word: "SEND_TO_GROUP_FILE",
        usage: "SEND_TO_GROUP_FILE <group>[,...] <send-id> <size> <sha256> <file name>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Upload,
        rated: true,
        typed: Some(("SEND_TO_GROUP FILE <group>[,<group>...] <path>", "send a file to groups")),
    },
    /// Announce a voice note for a user: a file with its length and format.
    SendVoice => VerbSpec {
        word: "SEND_VOICE",
        usage: "SEND_VOICE <username> <send-id> <size> <sha256> <duration-ms> <format> <file name>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Upload,
        rated: true,
        typed: Some(("SEND VOICE <username> <file.wav>", "send a voice note")),
    },
    /// Announce a voice note for groups.
    SendToGroupVoice => VerbSpec {
        word: "SEND_TO_GROUP_VOICE",
        usage: "SEND_TO_GROUP_VOICE <group>[,...] <send-id> <size> <sha256> <duration-ms> <format> <file name>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Upload,
        rated: true,
        typed: Some(("SEND_TO_GROUP VOICE <group>[,<group>...] <file.wav>", "send a voice note to groups")),
    },
    /// One piece of an announced file.
    Chunk => VerbSpec {
        word: "CHUNK",
        usage: "CHUNK <transfer-id> <offset> <content-key> + body",
        access: Access::LoggedIn,
        body: true,
        reply: ReplyKind::Unanswered,
        rated: false,
        typed: None,
    },
    /// Every chunk sent.
    FileEnd => VerbSpec {
        word: "FILE_END",
        usage: "FILE_END <transfer-id>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Sent,
        rated: false,
        typed: None,
    },
    /// Give up on an upload.
    FileAbort => VerbSpec {
        word: "FILE_ABORT",
        usage: "FILE_ABORT <transfer-id>",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: false,
        typed: None,
    },
    /// Everything up to these messages was handled (ignored when not
    /// logged in: a client may still be acknowledging what it got before
    /// its `LOGOUT`).
    Ack => VerbSpec {
        word: "ACK",
        usage: "ACK <conversation>:<seq>[,<conversation>:<seq>...]",
        access: Access::Anyone,
        body: false,
        reply: ReplyKind::Unanswered,
        rated: false,
        typed: None,
    },
    /// The answer to `PING`.
    Pong => VerbSpec {
        word: "PONG",
        usage: "PONG <n>",
        access: Access::Anyone,
        body: false,
        reply: ReplyKind::Unanswered,
        rated: false,
        typed: None,
    },
    /// The last messages of a conversation.
    History => VerbSpec {
        word: "HISTORY",
        usage: "HISTORY <@username|#group|name> [<count>]",
        access: Access::LoggedIn,
        body: false,
        reply: ReplyKind::Text,
        rated: true,
        typed: Some(("HISTORY <@user|#group> [N]", "the last N (default 20, at most 500) messages")),
    },
}

impl Verb {
    /// The verb for a word on the wire, in any case.
    pub fn from_word(word: &str) -> Option<Verb> {
        Verb::ALL
            .iter()
            .copied()
            .find(|v| v.spec().word.eq_ignore_ascii_case(word))
    }

    /// The verb a head starts with, if any.
    pub fn of_head(head: &str) -> Option<Verb> {
        Verb::from_word(head.split(' ').next().unwrap_or(""))
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec().word)
    }
}

/// A client-chosen id that makes a send idempotent: a repeat of a send id
/// the server has already stored gets the original reply and changes
/// nothing. 1 to [`MAX_SEND_ID_LEN`] characters from `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendId(String);

impl SendId {
    /// Validates a send id.
    pub fn parse(s: &str) -> Option<SendId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_SEND_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| SendId(s.to_string()))
    }

    /// A fresh id, 16 characters: the time in milliseconds (48 bits),
    /// then 48 random bits, 6 bits a character from an alphabet in ASCII
    /// order. Two ids collide only if both come in the same millisecond
    /// and draw the same 48 bits; the time in front makes a user's ids
    /// sort in the order they were made, so the server's index of recent
    /// ids grows at one end instead of touching a random page of it for
    /// every message.
    pub fn random() -> SendId {
        use rand::Rng as _;
        SendId::from_parts(crate::clock::now_ms(), rand::rng().next_u64())
    }

    /// The id [`random`](Self::random) makes at `ms` with `random` bits
    /// (the low 48 bits of each are used).
    fn from_parts(ms: u64, random: u64) -> SendId {
        const DIGITS: &[u8; 64] =
            b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
        let id = [ms, random]
            .into_iter()
            .flat_map(|v| {
                (0..8)
                    .rev()
                    .map(move |i| DIGITS[((v >> (6 * i)) & 63) as usize])
            })
            .map(char::from)
            .collect();
        SendId(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret the server gives a device at login: presented with the
/// password, it spares that device the account's login throttling; alone
/// (`RESUME`) it logs the device back in. 64 lowercase hex digits (32
/// random bytes); the server keeps only its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken(String);

impl DeviceToken {
    /// Validates a token.
    pub fn parse(s: &str) -> Option<DeviceToken> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| DeviceToken(s.to_string()))
    }

    /// A fresh token from the operating system's random number generator.
    pub fn random() -> DeviceToken {
        use rand::Rng as _;
        let mut bytes = [0u8; 32];
        // The thread-local generator is seeded from the OS; it cannot fail.
        rand::rng().fill_bytes(&mut bytes);
        DeviceToken(format_sha256(&bytes))
    }

    /// What the server keeps: the SHA-256 of the token's text.
    pub fn hash(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.0.as_bytes()).into()
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceToken(<redacted>)")
    }
}

impl fmt::Display for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileTarget {
    /// One user.
    User(Username),
    /// One or more groups.
    Groups(Vec<GroupName>),
}

/// A file's description, sent before its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOffer {
    /// The recipients.
    pub target: FileTarget,
    /// Makes a retried announcement recognisable.
    pub send_id: SendId,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// The sender's name for the file: untrusted, sanitised by receivers.
    pub name: String,
    /// Set for a voice note: its length and format.
    pub voice: Option<Voice>,
}

/// What makes a file a voice note: announced with it, so receivers can
/// show its length before (or without) fetching it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voice {
    /// Its length in milliseconds.
    pub duration_ms: u64,
    /// Its audio format.
    pub format: AudioFormat,
}

/// The audio formats voice notes may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    /// RIFF WAVE (PCM).
    Wav,
}

impl AudioFormat {
    /// Its word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioFormat::Wav => "wav",
        }
    }

    /// Reads the word on the wire.
    pub fn parse(s: &str) -> Option<AudioFormat> {
        match s {
            "wav" => Some(AudioFormat::Wav),
            _ => None,
        }
    }
}

impl Voice {
    /// `<duration-ms> <format>`, as in `SEND_VOICE` and `VOICE`.
    pub fn to_wire(self) -> String {
        format!("{} {}", self.duration_ms, self.format.as_str())
    }

    /// Reads `<duration-ms>` and `<format>`.
    pub fn from_wire(duration: &str, format: &str) -> Option<Voice> {
        Some(Voice {
            duration_ms: parse_number(duration)?,
            format: AudioFormat::parse(format)?,
        })
    }
}

/// What an owner or admin does to a user in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manage {
    /// `INVITE`: the user may join (a private group).
    Invite,
    /// `KICK`: the member is removed.
    Kick,
    /// `PROMOTE`: the member becomes an admin.
    Promote,
    /// `DEMOTE`: the admin becomes a plain member.
    Demote,
    /// `HANDOVER`: the member becomes the owner.
    Handover,
}

impl Manage {
    fn verb(self) -> Verb {
        match self {
            Manage::Invite => Verb::Invite,
            Manage::Kick => Verb::Kick,
            Manage::Promote => Verb::Promote,
            Manage::Demote => Verb::Demote,
            Manage::Handover => Verb::Handover,
        }
    }
}

/// The conversation a `HISTORY` request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryTarget {
    /// `@name`: the direct conversation with this user.
    User(Username),
    /// `#name`: this group.
    Group(GroupName),
    /// A bare name: the user of that name if there is one, else the group.
    Either(String),
}

impl fmt::Display for HistoryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryTarget::User(u) => write!(f, "@{u}"),
            HistoryTarget::Group(g) => write!(f, "#{g}"),
            HistoryTarget::Either(n) => f.write_str(n),
        }
    }
}

/// One client-to-server request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CREATE_USER <username> <password> <display name>`
    CreateUser {
        /// Login name.
        username: Username,
        /// Password (never logged).
        password: String,
        /// Display name (may contain spaces).
        name: String,
    },
    /// `LOGIN <username> <password> [<device-token>]`
    Login {
        /// Login name.
        username: Username,
        /// Password (never logged).
        password: String,
        /// This device's token from an earlier login, if it has one.
        token: Option<DeviceToken>,
    },
    /// `RESUME <username> <device-token>`
    Resume {
        /// Login name.
        username: Username,
        /// This device's token (never logged).
        token: DeviceToken,
    },
    /// `CREATE_GROUP <group> [private]`
    CreateGroup {
        /// The new group.
        group: GroupName,
        /// Whether only invited users may join.
        private: bool,
    },
    /// `INVITE`, `KICK`, `PROMOTE`, `DEMOTE` or `HANDOVER <group> <username>`.
    Manage {
        /// What to do.
        action: Manage,
        /// In which group.
        group: GroupName,
        /// To whom.
        user: Username,
    },
    /// `JOIN <group>`
    Join(GroupName),
    /// `LEAVE <group>`
    Leave(GroupName),
    /// `LIST`
    List,
    /// `HELP`
    Help,
    /// `LOGOUT`
    Logout,
    /// `QUIT`
    Quit,
    /// A direct message: the body is the text under `key`.
    Send {
        /// Recipient.
        to: Username,
        /// Makes a retry recognisable.
        send_id: SendId,
        /// The content key.
        key: ContentKey,
        /// The encrypted text.
        body: Body,
    },
    /// A group message to one or several groups.
    SendToGroup {
        /// Recipient groups, without repeats.
        groups: Vec<GroupName>,
        /// Makes a retry recognisable.
        send_id: SendId,
        /// The content key.
        key: ContentKey,
        /// The encrypted text.
        body: Body,
    },
    /// Announces a file; the reply carries the transfer id.
    SendFile(FileOffer),
    /// One chunk of an announced file.
    Chunk {
        /// The id from the `SendFile` reply.
        transfer: u64,
        /// Plaintext offset of this chunk.
        offset: u64,
        /// The chunk's content key.
        key: ContentKey,
        /// The encrypted chunk.
        body: Body,
    },
    /// All chunks sent.
    FileEnd(u64),
    /// The sender gives up on a transfer.
    FileAbort(u64),
    /// Everything up to each of these messages, in its conversation, has
    /// been handled (cumulative). Gets no reply.
    Ack(Vec<MessageRef>),
    /// The answer to the server's `PING <n>`. Gets no reply.
    Pong(u64),
    /// The last messages of a conversation.
    History {
        /// Whose conversation.
        with: HistoryTarget,
        /// How many messages at most (1 to [`MAX_HISTORY`]).
        limit: usize,
    },
}

/// Why a request was refused before reaching the server's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An empty head.
    #[error("empty command")]
    Empty,
    /// The first word is not a verb.
    #[error("unknown command {0:?}; try HELP")]
    UnknownCommand(String),
    /// Wrong arguments, a missing body, or a body where none belongs.
    #[error("usage: {}", .0.spec().usage)]
    Usage(Verb),
    /// A user or group name broke the naming rules.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// A content key or body is malformed.
    #[error(transparent)]
    BadContent(#[from] ContentError),
    /// A body longer than the message (`Send`...) or chunk limit.
    #[error("{}", too_large_text(*.0))]
    TooLarge(Verb),
}

fn too_large_text(verb: Verb) -> String {
    if verb == Verb::Chunk {
        format!("chunk too large: at most {FILE_CHUNK_SIZE} bytes of content")
    } else {
        message_too_long()
    }
}

impl ParseError {
    /// The verb the head started with, if it was one.
    pub fn verb(&self) -> Option<Verb> {
        match self {
            ParseError::Usage(v) | ParseError::TooLarge(v) => Some(*v),
            _ => None,
        }
    }
}

/// The space-separated arguments of one head, taken left to right.
struct Args<'a> {
    rest: &'a str,
    verb: Verb,
}

impl<'a> Args<'a> {
    fn usage(&self) -> ParseError {
        ParseError::Usage(self.verb)
    }

    /// The next token (non-empty: a doubled space is a usage error).
    fn next(&mut self) -> Result<&'a str, ParseError> {
        let (tok, rest) = match self.rest.find(' ') {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, ""),
        };
        if tok.is_empty() {
            return Err(self.usage());
        }
        self.rest = rest;
        Ok(tok)
    }

    /// The next token, if any remain.
    fn optional(&mut self) -> Result<Option<&'a str>, ParseError> {
        if self.rest.is_empty() {
            Ok(None)
        } else {
            self.next().map(Some)
        }
    }

    fn number(&mut self) -> Result<u64, ParseError> {
        let t = self.next()?;
        parse_number(t).ok_or_else(|| self.usage())
    }

    /// Everything left, as a display name, password or file name:
    /// printable, bounded, and free of spaces unless `spaces`.
    fn field(&mut self, spaces: bool) -> Result<String, ParseError> {
        let s = if spaces {
            std::mem::take(&mut self.rest)
        } else {
            self.next()?
        };
        let ok = !s.is_empty()
            && s.len() <= MAX_FIELD_LEN
            && !s.chars().any(|c| c.is_control() || (!spaces && c == ' '));
        if ok {
            Ok(s.to_string())
        } else {
            Err(self.usage())
        }
    }

    fn send_id(&mut self) -> Result<SendId, ParseError> {
        let t = self.next()?;
        SendId::parse(t).ok_or_else(|| self.usage())
    }

    /// Fails unless every argument was used.
    fn end(self) -> Result<(), ParseError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.usage())
        }
    }
}

fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses 64 hex digits into a SHA-256 digest.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Writes a digest as 64 lowercase hex digits.
pub fn format_sha256(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Request {
    /// Parses a received frame.
    pub fn parse(frame: Frame) -> Result<Request, ParseError> {
        let Frame { head, body, .. } = frame;
        let (word, rest) = head.split_once(' ').unwrap_or((head.as_str(), ""));
        if word.is_empty() {
            return Err(ParseError::Empty);
        }
        let verb =
            Verb::from_word(word).ok_or_else(|| ParseError::UnknownCommand(truncate(word, 32)))?;
        let spec = verb.spec();
        let body = match (spec.body, body) {
            (true, Some(b)) if b.is_plain() => {
                let max = if verb == Verb::Chunk {
                    MAX_CHUNK_BODY_LEN
                } else {
                    MAX_MESSAGE_BODY_LEN
                };
                if b.as_str().len() > max {
                    return Err(ParseError::TooLarge(verb));
                }
                Some(b)
            }
            (false, None) => None,
            _ => return Err(ParseError::Usage(verb)),
        };
        // The table said whether a body comes; these verbs have one.
        let body = || body.clone().ok_or(ParseError::Usage(verb));
        let mut a = Args { rest, verb };
        let request = match verb {
            Verb::CreateUser => Request::CreateUser {
                username: Username::parse(a.next()?)?,
                password: a.field(false)?,
                name: a.field(true)?,
            },
            Verb::Login => Request::Login {
                username: Username::parse(a.next()?)?,
                password: a.field(false)?,
                token: match a.optional()? {
                    None => None,
                    Some(t) => Some(DeviceToken::parse(t).ok_or(ParseError::Usage(verb))?),
                },
            },
            Verb::Resume => Request::Resume {
                username: Username::parse(a.next()?)?,
                token: DeviceToken::parse(a.next()?).ok_or(ParseError::Usage(verb))?,
            },
            Verb::CreateGroup => Request::CreateGroup {
                group: GroupName::parse(a.next()?)?,
                private: match a.optional()? {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("private") => true,
                    Some(_) => return Err(ParseError::Usage(verb)),
                },
            },
            Verb::Invite | Verb::Kick | Verb::Promote | Verb::Demote | Verb::Handover => {
                Request::Manage {
                    action: match verb {
                        Verb::Invite => Manage::Invite,
                        Verb::Kick => Manage::Kick,
                        Verb::Promote => Manage::Promote,
                        Verb::Demote => Manage::Demote,
                        _ => Manage::Handover,
                    },
                    group: GroupName::parse(a.next()?)?,
                    user: Username::parse(a.next()?)?,
                }
            }
            Verb::Join => Request::Join(GroupName::parse(a.next()?)?),
            Verb::Leave => Request::Leave(GroupName::parse(a.next()?)?),
            Verb::List => Request::List,
            Verb::Help => Request::Help,
            Verb::Logout => Request::Logout,
            Verb::Quit => Request::Quit,
            Verb::Send => Request::Send {
                to: Username::parse(a.next()?)?,
                send_id: a.send_id()?,
                key: ContentKey::from_b64(a.next()?)?,
                body: body()?,
            },
            Verb::SendToGroup => Request::SendToGroup {
                groups: parse_group_list(a.next()?)?,
                send_id: a.send_id()?,
                key: ContentKey::from_b64(a.next()?)?,
                body: body()?,
            },
            Verb::SendFile | Verb::SendToGroupFile | Verb::SendVoice | Verb::SendToGroupVoice => {
                let to = a.next()?;
                let target = if matches!(verb, Verb::SendFile | Verb::SendVoice) {
                    FileTarget::User(Username::parse(to)?)
                } else {
                    FileTarget::Groups(parse_group_list(to)?)
                };
                let send_id = a.send_id()?;
                let size = a.number()?;
                let sha256 = parse_sha256(a.next()?).ok_or(ParseError::Usage(verb))?;
                let voice = match verb {
                    Verb::SendVoice | Verb::SendToGroupVoice => {
                        let (duration, format) = (a.next()?, a.next()?);
                        Some(Voice::from_wire(duration, format).ok_or(ParseError::Usage(verb))?)
                    }
                    _ => None,
                };
                Request::SendFile(FileOffer {
                    target,
                    send_id,
                    size,
                    sha256,
                    name: a.field(true)?,
                    voice,
                })
            }
            Verb::Chunk => Request::Chunk {
                transfer: a.number()?,
                offset: a.number()?,
                key: ContentKey::from_b64(a.next()?)?,
                body: body()?,
            },
            Verb::FileEnd => Request::FileEnd(a.number()?),
            Verb::FileAbort => Request::FileAbort(a.number()?),
            Verb::Ack => {
                let refs = MessageRef::parse_list(a.next()?).ok_or(ParseError::Usage(verb))?;
                if refs.len() > MAX_ACK_REFS {
                    return Err(ParseError::Usage(verb));
                }
                Request::Ack(refs)
            }
            Verb::Pong => Request::Pong(a.number()?),
            Verb::History => {
                let name = a.next()?;
                let with = if let Some(u) = name.strip_prefix('@') {
                    HistoryTarget::User(Username::parse(u)?)
                } else if let Some(g) = name.strip_prefix('#') {
                    HistoryTarget::Group(GroupName::parse(g)?)
                } else {
                    // Valid as a user or a group name (the rules are the same).
                    HistoryTarget::Either(Username::parse(name)?.to_string())
                };
                let limit = match a.optional()? {
                    None => DEFAULT_HISTORY as u64,
                    Some(n) => parse_number(n).ok_or(ParseError::Usage(verb))?,
                };
                if limit == 0 {
                    return Err(ParseError::Usage(verb));
                }
                Request::History {
                    with,
                    limit: limit.min(MAX_HISTORY as u64) as usize,
                }
            }
        };
        a.end()?;
        Ok(request)
    }

    /// The request's verb.
    pub fn verb(&self) -> Verb {
        match self {
            Request::CreateUser { .. } => Verb::CreateUser,
            Request::Login { .. } => Verb::Login,
            Request::Resume { .. } => Verb::Resume,
            Request::CreateGroup { .. } => Verb::CreateGroup,
            Request::Manage { action, .. } => action.verb(),
            Request::Join(_) => Verb::Join,
            Request::Leave(_) => Verb::Leave,
            Request::List => Verb::List,
            Request::Help => Verb::Help,
            Request::Logout => Verb::Logout,
            Request::Quit => Verb::Quit,
            Request::Send { .. } => Verb::Send,
            Request::SendToGroup { .. } => Verb::SendToGroup,
            Request::SendFile(o) => match (&o.target, o.voice) {
                (FileTarget::User(_), None) => Verb::SendFile,
                (FileTarget::Groups(_), None) => Verb::SendToGroupFile,
                (FileTarget::User(_), Some(_)) => Verb::SendVoice,
                (FileTarget::Groups(_), Some(_)) => Verb::SendToGroupVoice,
            },
            Request::Chunk { .. } => Verb::Chunk,
            Request::FileEnd(_) => Verb::FileEnd,
            Request::FileAbort(_) => Verb::FileAbort,
            Request::Ack(_) => Verb::Ack,
            Request::Pong(_) => Verb::Pong,
            Request::History { .. } => Verb::History,
        }
    }

    /// The frame that carries this request.
    pub fn to_frame(&self) -> Frame {
        let word = self.verb().spec().word;
        let (args, body) = match self {
            Request::CreateUser {
                username,
                password,
                name,
            } => (format!("{username} {password} {name}"), None),
            Request::Login {
                username,
                password,
                token: None,
            } => (format!("{username} {password}"), None),
            Request::Login {
                username,
                password,
                token: Some(t),
            } => (format!("{username} {password} {t}"), None),
            Request::Resume { username, token } => (format!("{username} {token}"), None),
            Request::CreateGroup {
                group,
                private: false,
            } => (group.to_string(), None),
            Request::CreateGroup {
                group,
                private: true,
            } => (format!("{group} private"), None),
            Request::Manage { group, user, .. } => (format!("{group} {user}"), None),
            Request::Join(g) | Request::Leave(g) => (g.to_string(), None),
            Request::List | Request::Help | Request::Logout | Request::Quit => {
                (String::new(), None)
            }
            Request::Send {
                to,
                send_id,
                key,
                body,
            } => (
                format!("{to} {send_id} {}", key.to_b64()),
                Some(body.clone()),
            ),
            Request::SendToGroup {
                groups,
                send_id,
                key,
                body,
            } => (
                format!("{} {send_id} {}", format_group_list(groups), key.to_b64()),
                Some(body.clone()),
            ),
            Request::SendFile(o) => {
                let target = match &o.target {
                    FileTarget::User(u) => u.to_string(),
                    FileTarget::Groups(g) => format_group_list(g),
                };
                let sha = format_sha256(&o.sha256);
                let voice = o
                    .voice
                    .map(|v| format!("{} ", v.to_wire()))
                    .unwrap_or_default();
                (
                    format!("{target} {} {} {sha} {voice}{}", o.send_id, o.size, o.name),
                    None,
                )
            }
            Request::Chunk {
                transfer,
                offset,
                key,
                body,
            } => (
                format!("{transfer} {offset} {}", key.to_b64()),
                Some(body.clone()),
            ),
            Request::FileEnd(t) | Request::FileAbort(t) => (t.to_string(), None),
            Request::Ack(refs) => (MessageRef::format_list(refs), None),
            Request::Pong(n) => (n.to_string(), None),
            Request::History { with, limit } => (format!("{with} {limit}"), None),
        };
        let head = if args.is_empty() {
            word.to_string()
        } else {
            format!("{word} {args}")
        };
        Frame {
            head,
            body,
            clear: false,
        }
    }

    /// The head with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        match self {
            Request::CreateUser { username, name, .. } => {
                format!("CREATE_USER {username} <password> {name}")
            }
            Request::Login {
                username,
                token: None,
                ..
            } => format!("LOGIN {username} <password>"),
            Request::Login { username, .. } => {
                format!("LOGIN {username} <password> <device-token>")
            }
            Request::Resume { username, .. } => format!("RESUME {username} <device-token>"),
            other => other.to_frame().head,
        }
    }
}

/// At most `max` characters of untrusted text, for error messages.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Conversation;

    fn parse(head: &str) -> Result<Request, ParseError> {
        Request::parse(Frame::head(head))
    }

    #[test]
    fn send_ids_are_valid_distinct_and_sort_by_time() {
        let a = SendId::from_parts(1_764_720_000_000, u64::MAX);
        let b = SendId::from_parts(1_764_720_000_001, 0);
        assert_eq!(a.as_str().len(), 16);
        assert_eq!(SendId::parse(a.as_str()), Some(a.clone()));
        assert!(a < b, "{a} then {b}");
        // Each digit sorts with its value, across the whole alphabet.
        let ids: Vec<SendId> = (0..64).map(|ms| SendId::from_parts(ms, 0)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let fresh: std::collections::HashSet<_> = (0..1000).map(|_| SendId::random()).collect();
        assert_eq!(fresh.len(), 1000);
        assert!(fresh
            .iter()
            .all(|id| SendId::parse(id.as_str()).as_ref() == Some(id)));
    }

    #[test]
    fn simple_commands_in_any_case() {
        assert_eq!(parse("list"), Ok(Request::List));
        assert_eq!(parse("Logout"), Ok(Request::Logout));
        assert_eq!(
            parse("login alice pw"),
            Ok(Request::Login {
                username: Username::parse("alice").unwrap(),
                password: "pw".into(),
                token: None
            })
        );
        assert_eq!(
            parse("CREATE_USER alice pw Alice Smith"),
            Ok(Request::CreateUser {
                username: Username::parse("alice").unwrap(),
                password: "pw".into(),
                name: "Alice Smith".into()
            })
        );
    }

    #[test]
    fn every_verb_has_one_word_and_a_usage_starting_with_it() {
        for v in Verb::ALL {
            assert_eq!(Verb::from_word(v.spec().word), Some(*v));
            assert!(v.spec().usage.starts_with(v.spec().word), "{v}");
            let unanswered = v.spec().reply == ReplyKind::Unanswered;
            assert!(
                !(unanswered && v.spec().rated),
                "{v}: unanswered verbs are not rated"
            );
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(
            parse("FLY away"),
            Err(ParseError::UnknownCommand("FLY".into()))
        );
        assert_eq!(parse("LOGIN alice"), Err(ParseError::Usage(Verb::Login)));
        assert_eq!(
            parse("LOGIN alice pw extra"),
            Err(ParseError::Usage(Verb::Login))
        );
        assert_eq!(parse("LIST now"), Err(ParseError::Usage(Verb::List)));
        assert_eq!(
            parse("JOIN ../etc"),
            Err(ParseError::BadName(NameError::Characters))
        );
        assert_eq!(
            parse("SEND bob id1 key"),
            Err(ParseError::Usage(Verb::Send)),
            "no body"
        );
        assert_eq!(
            parse("LOGIN  alice pw"),
            Err(ParseError::Usage(Verb::Login))
        );
        let body = ContentKey::random().seal(b"x");
        let with_body = |h: &str| Request::parse(Frame::with_body(h, body.clone()));
        assert_eq!(
            with_body("FLY x"),
            Err(ParseError::UnknownCommand("FLY".into()))
        );
        assert_eq!(with_body("LIST"), Err(ParseError::Usage(Verb::List)));
        let key = ContentKey::random().to_b64();
        assert_eq!(
            with_body(&format!("SEND bob bad!id {key}")),
            Err(ParseError::Usage(Verb::Send))
        );
        assert!(parse_sha256(&"+f".repeat(32)).is_none());
    }

    #[test]
    fn bodies_over_the_limits_are_too_large() {
        let key = ContentKey::random();
        let fits = key.seal(&vec![b'a'; MAX_MESSAGE_LEN]);
        assert_eq!(fits.as_str().len(), MAX_MESSAGE_BODY_LEN);
        let big = key.seal(&vec![b'a'; MAX_MESSAGE_LEN + 8]);
        let head = format!("SEND bob x1 {}", key.to_b64());
        let frame = |b: &Body| Frame::with_body(head.clone(), b.clone());
        assert!(Request::parse(frame(&fits)).is_ok());
        assert_eq!(
            Request::parse(frame(&big)),
            Err(ParseError::TooLarge(Verb::Send))
        );
        let chunk = key.seal(&vec![0; FILE_CHUNK_SIZE + 8]);
        let head = format!("CHUNK 1 0 {}", key.to_b64());
        assert_eq!(
            Request::parse(Frame::with_body(head, chunk)),
            Err(ParseError::TooLarge(Verb::Chunk))
        );
        assert_eq!(
            Verb::of_head("chunk 1 2 3").map(|v| v.spec().reply),
            Some(ReplyKind::Unanswered)
        );
        assert_eq!(Verb::of_head("CHUNKY"), None);
    }

    #[test]
    fn every_request_round_trips_through_its_frame() {
        let key = ContentKey::random();
        let body = key.seal(b"hi there");
        let u = Username::parse("bob").unwrap();
        let gs = parse_group_list("a,b").unwrap();
        let id = SendId::parse("c0ffee").unwrap();
        let all = vec![
            Request::CreateUser {
                username: u.clone(),
                password: "s3cret!".into(),
                name: "Bob the Builder".into(),
            },
            Request::Login {
                username: u.clone(),
                password: "x".into(),
                token: None,
            },
            Request::Login {
                username: u.clone(),
                password: "x".into(),
                token: Some(DeviceToken::random()),
            },
            Request::Resume {
                username: u.clone(),
                token: DeviceToken::random(),
            },
            Request::CreateGroup {
                group: gs[0].clone(),
                private: false,
            },
            Request::CreateGroup {
                group: gs[1].clone(),
                private: true,
            },
            Request::Manage {
                action: Manage::Kick,
                group: gs[0].clone(),
                user: u.clone(),
            },
            Request::Join(gs[0].clone()),
            Request::Leave(gs[1].clone()),
            Request::List,
            Request::Help,
            Request::Logout,
            Request::Quit,
            Request::Send {
                to: u.clone(),
                send_id: id.clone(),
                key: key.clone(),
                body: body.clone(),
            },
            Request::SendToGroup {
                groups: gs.clone(),
                send_id: id.clone(),
                key: key.clone(),
                body: body.clone(),
            },
            Request::SendFile(FileOffer {
                target: FileTarget::User(u.clone()),
                send_id: id.clone(),
                size: 12,
                sha256: [0xab; 32],
                name: "my report.pdf".into(),
                voice: None,
            }),
            Request::SendFile(FileOffer {
                target: FileTarget::Groups(gs.clone()),
                send_id: SendId::random(),
                size: 0,
                sha256: [1; 32],
                name: "x".into(),
                voice: None,
            }),
            Request::SendFile(FileOffer {
                target: FileTarget::User(u.clone()),
                send_id: SendId::random(),
                size: 48_044,
                sha256: [2; 32],
                name: "note 1.wav".into(),
                voice: Some(Voice {
                    duration_ms: 1_500,
                    format: AudioFormat::Wav,
                }),
            }),
            Request::SendFile(FileOffer {
                target: FileTarget::Groups(gs.clone()),
                send_id: SendId::random(),
                size: 44,
                sha256: [3; 32],
                name: "n.wav".into(),
                voice: Some(Voice {
                    duration_ms: 0,
                    format: AudioFormat::Wav,
                }),
            }),
            Request::Chunk {
                transfer: 7,
                offset: 32768,
                key: key.clone(),
                body: body.clone(),
            },
            Request::FileEnd(7),
            Request::FileAbort(8),
            Request::Ack(vec![
                MessageRef {
                    conv: Conversation::Group(gs[0].clone()),
                    seq: 4,
                },
                MessageRef {
                    conv: Conversation::User(u.clone()),
                    seq: 9,
                },
            ]),
            Request::Pong(9),
            Request::History {
                with: HistoryTarget::Group(gs[0].clone()),
                limit: 5,
            },
            Request::History {
                with: HistoryTarget::User(u.clone()),
                limit: DEFAULT_HISTORY,
            },
            Request::History {
                with: HistoryTarget::Either("bob".into()),
                limit: 1,
            },
        ];
        for r in all {
            assert_eq!(Request::parse(r.to_frame()), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn history_counts_are_capped_and_acks_bounded() {
        assert_eq!(
            parse("history devs"),
            Ok(Request::History {
                with: HistoryTarget::Either("devs".into()),
                limit: DEFAULT_HISTORY
            })
        );
        assert_eq!(
            parse("HISTORY devs 9999"),
            Ok(Request::History {
                with: HistoryTarget::Either("devs".into()),
                limit: MAX_HISTORY
            })
        );
        assert_eq!(
            parse("HISTORY devs 0"),
            Err(ParseError::Usage(Verb::History))
        );
        assert_eq!(
            parse("HISTORY devs 5 6"),
            Err(ParseError::Usage(Verb::History))
        );
        assert!(matches!(parse("HISTORY ../x"), Err(ParseError::BadName(_))));
        assert_eq!(parse("ACK #a:1,,#a:2"), Err(ParseError::Usage(Verb::Ack)));
        assert_eq!(parse("ACK 17"), Err(ParseError::Usage(Verb::Ack)));
        assert_eq!(parse("ACK"), Err(ParseError::Usage(Verb::Ack)));
        let many: Vec<String> = (0..=MAX_ACK_REFS).map(|i| format!("#g:{i}")).collect();
        assert_eq!(
            parse(&format!("ACK {}", many.join(","))),
            Err(ParseError::Usage(Verb::Ack))
        );
    }

    #[test]
    fn passwords_are_redacted() {
        let r = parse("LOGIN alice hunter2").unwrap();
        assert!(!r.redacted().contains("hunter2"));
        let r = parse("CREATE_USER alice hunter2 Alice").unwrap();
        assert!(!r.redacted().contains("hunter2"));
    }

    #[test]
    fn file_names_reject_control_characters() {
        let sha = "00".repeat(32);
        assert!(parse(&format!("SEND_FILE bob s1 1 {sha} a\u{1b}[2J")).is_err());
        assert!(parse(&format!("SEND_FILE bob s1 1 {sha} ")).is_err());
        assert!(parse(&format!("SEND_FILE bob s1 -1 {sha} a")).is_err());
        assert!(parse(&format!("SEND_FILE bob s1 99999999999999999999999 {sha} a")).is_err());
        assert!(parse(&format!("SEND_FILE bob s1 1 {sha} a b.txt")).is_ok());
    }
}
