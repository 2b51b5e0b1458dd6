//! Requests: what a client sends the server, as frame heads (plus bodies).
//!
//! This is the wire form, not what a person types: the client turns a typed
//! [`crate::command::Command`] into one of these, encrypting message text
//! into a body and reading files into chunks. The server parses each frame
//! with [`Request::parse`] before touching any state.
//!
//! # Format
//!
//! Tokens are separated by single spaces; command words match in any case.
//!
//! ```text
//! CREATE_USER <name> <username> <password>
//! LOGIN <username> <password>
//! CREATE_GROUP <group> | JOIN <group> | LEAVE <group>
//! LIST | HELP | LOGOUT | QUIT
//! SEND <username> <content-key>                      + body
//! SEND_TO_GROUP <group>[,<group>...] <content-key>   + body
//! SEND_FILE <username> <size> <sha256-hex> <file name>
//! SEND_TO_GROUP_FILE <group>[,...] <size> <sha256-hex> <file name>
//! CHUNK <transfer-id> <offset> <content-key>         + body
//! FILE_END <transfer-id>
//! FILE_ABORT <transfer-id>
//! ACK <id>[,<id>...]
//! PONG <n>
//! HISTORY <username|group|@username|#group> [<count>]
//! ```

use std::fmt;

use crate::content::{Body, ContentError, ContentKey};
use crate::frame::Frame;
use crate::names::{format_group_list, parse_group_list, GroupName, NameError, Username};

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
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// The sender's name for the file: untrusted, sanitised by receivers.
    pub name: String,
}

/// One client-to-server request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CREATE_USER <name> <username> <password>`
    CreateUser {
        /// Display name.
        name: String,
        /// Login name.
        username: Username,
        /// Password (never logged).
        password: String,
    },
    /// `LOGIN <username> <password>`
    Login {
        /// Login name.
        username: Username,
        /// Password (never logged).
        password: String,
    },
    /// `CREATE_GROUP <group>`
    CreateGroup(GroupName),
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
        /// The content key.
        key: ContentKey,
        /// The encrypted text.
        body: Body,
    },
    /// A group message to one or several groups.
    SendToGroup {
        /// Recipient groups, without repeats.
        groups: Vec<GroupName>,
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
    /// Messages and files received and handled: drop them from the
    /// pending queue. Gets no reply.
    Ack(Vec<u64>),
    /// The answer to the server's `PING <n>`. Gets no reply.
    Pong(u64),
    /// The last messages of a conversation.
    History {
        /// Whose conversation.
        with: HistoryTarget,
        /// How many messages at most.
        limit: usize,
    },
}

/// The conversation a `HISTORY` request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryTarget {
    /// `@name`: the direct conversation with this user.
    User(Username),
    /// `#name`: this group.
    Group(GroupName),
    /// A bare name: the group if the caller is in one of that name, else the user.
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

/// How many messages `HISTORY` returns when no count is given.
pub const DEFAULT_HISTORY: usize = 20;

/// The most messages one `HISTORY` returns.
pub const MAX_HISTORY: usize = 500;

/// The most ids in one `ACK`.
pub const MAX_ACK_IDS: usize = 1024;

/// Why a request was refused before reaching the server's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// An empty head.
    Empty,
    /// The first word is not a command.
    UnknownCommand(String),
    /// Wrong arguments; carries the command's usage line.
    Usage(&'static str),
    /// A user or group name broke the naming rules.
    BadName(NameError),
    /// A content key or body is malformed.
    BadContent(ContentError),
    /// A body longer than the message (false) or chunk (true) limit.
    TooLarge {
        /// Whether the body was a file chunk's.
        chunk: bool,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty command"),
            ParseError::UnknownCommand(c) => write!(f, "unknown command {c:?}; try HELP"),
            ParseError::Usage(u) => write!(f, "usage: {u}"),
            ParseError::BadName(e) => write!(f, "{e}"),
            ParseError::BadContent(e) => write!(f, "{e}"),
            ParseError::TooLarge { chunk: false } => f.write_str(&message_too_long()),
            ParseError::TooLarge { chunk: true } => {
                write!(
                    f,
                    "chunk too large: at most {FILE_CHUNK_SIZE} bytes of content"
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

impl From<NameError> for ParseError {
    fn from(e: NameError) -> Self {
        ParseError::BadName(e)
    }
}

impl From<ContentError> for ParseError {
    fn from(e: ContentError) -> Self {
        ParseError::BadContent(e)
    }
}

/// Splits off the first `n` space-separated tokens and returns them with the rest.
fn split_n(s: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut tokens = Vec::with_capacity(n);
    let mut rest = s;
    for _ in 0..n {
        let (tok, r) = match rest.find(' ') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if tok.is_empty() {
            return None;
        }
        tokens.push(tok);
        rest = r;
    }
    Some((tokens, rest))
}

/// Exactly `n` tokens, no more.
fn exactly<'a>(s: &'a str, n: usize, usage: &'static str) -> Result<Vec<&'a str>, ParseError> {
    match split_n(s, n) {
        Some((t, "")) => Ok(t),
        _ => Err(ParseError::Usage(usage)),
    }
}

/// A display name, password or file name: printable, bounded, no spaces unless `spaces`.
fn field(s: &str, spaces: bool, usage: &'static str) -> Result<String, ParseError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_FIELD_LEN
        && !s.chars().any(|c| c.is_control() || (!spaces && c == ' '));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ParseError::Usage(usage))
    }
}

fn number(s: &str, usage: &'static str) -> Result<u64, ParseError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Usage(usage));
    }
    s.parse().map_err(|_| ParseError::Usage(usage))
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

const U_CREATE_USER: &str = "CREATE_USER <name> <username> <password>";
const U_LOGIN: &str = "LOGIN <username> <password>";
const U_CREATE_GROUP: &str = "CREATE_GROUP <group>";
const U_JOIN: &str = "JOIN <group>";
const U_LEAVE: &str = "LEAVE <group>";
const U_SEND: &str = "SEND <username> <content-key> + body";
const U_SEND_GROUP: &str = "SEND_TO_GROUP <group>[,<group>...] <content-key> + body";
const U_SEND_FILE: &str = "SEND_FILE <username> <size> <sha256> <file name>";
const U_SEND_GROUP_FILE: &str = "SEND_TO_GROUP_FILE <group>[,...] <size> <sha256> <file name>";
const U_CHUNK: &str = "CHUNK <transfer-id> <offset> <content-key> + body";
const U_FILE_END: &str = "FILE_END <transfer-id>";
const U_FILE_ABORT: &str = "FILE_ABORT <transfer-id>";
const U_ACK: &str = "ACK <id>[,<id>...]";
const U_PONG: &str = "PONG <n>";
const U_HISTORY: &str = "HISTORY <username|group> [<count>]";

impl Request {
    /// Parses a received frame.
    pub fn parse(frame: Frame) -> Result<Request, ParseError> {
        let Frame { head, body } = frame;
        let (verb, args) = match head.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (head.as_str(), ""),
        };
        if verb.is_empty() {
            return Err(ParseError::Empty);
        }
        let verb = verb.to_ascii_uppercase();
        let Some(usage) = usage_of(&verb) else {
            return Err(ParseError::UnknownCommand(truncate(&verb, 32)));
        };
        let needs_body = matches!(verb.as_str(), "SEND" | "SEND_TO_GROUP" | "CHUNK");
        let body = match (needs_body, body) {
            (true, Some(b)) if !b.is_plain() => {
                return Err(ParseError::Usage(usage));
            }
            (true, Some(b)) => {
                let max = if verb == "CHUNK" {
                    MAX_CHUNK_BODY_LEN
                } else {
                    MAX_MESSAGE_BODY_LEN
                };
                if b.as_str().len() > max {
                    return Err(ParseError::TooLarge {
                        chunk: verb == "CHUNK",
                    });
                }
                Some(b)
            }
            (false, None) => None,
            (true, None) | (false, Some(_)) => {
                return Err(ParseError::Usage(usage));
            }
        };
        let no_args = |r: Request| {
            if args.is_empty() {
                Ok(r)
            } else {
                Err(ParseError::Usage(usage))
            }
        };
        match verb.as_str() {
            "CREATE_USER" => {
                let t = exactly(args, 3, U_CREATE_USER)?;
                Ok(Request::CreateUser {
                    name: field(t[0], false, U_CREATE_USER)?,
                    username: Username::parse(t[1])?,
                    password: field(t[2], false, U_CREATE_USER)?,
                })
            }
            "LOGIN" => {
                let t = exactly(args, 2, U_LOGIN)?;
                Ok(Request::Login {
                    username: Username::parse(t[0])?,
                    password: field(t[1], false, U_LOGIN)?,
                })
            }
            "CREATE_GROUP" => Ok(Request::CreateGroup(GroupName::parse(
                exactly(args, 1, U_CREATE_GROUP)?[0],
            )?)),
            "JOIN" => Ok(Request::Join(GroupName::parse(
                exactly(args, 1, U_JOIN)?[0],
            )?)),
            "LEAVE" => Ok(Request::Leave(GroupName::parse(
                exactly(args, 1, U_LEAVE)?[0],
            )?)),
            "LIST" => no_args(Request::List),
            "HELP" => no_args(Request::Help),
            "LOGOUT" => no_args(Request::Logout),
            "QUIT" => no_args(Request::Quit),
            "SEND" | "SEND_TO_GROUP" => {
                let t = exactly(args, 2, usage)?;
                let key = ContentKey::from_b64(t[1])?;
                // needs_body guaranteed a body for these verbs.
                let body = body.expect("body checked above");
                if verb == "SEND" {
                    Ok(Request::Send {
                        to: Username::parse(t[0])?,
                        key,
                        body,
                    })
                } else {
                    Ok(Request::SendToGroup {
                        groups: parse_group_list(t[0])?,
                        key,
                        body,
                    })
                }
            }
            "SEND_FILE" | "SEND_TO_GROUP_FILE" => {
                let (t, name) = split_n(args, 3).ok_or(ParseError::Usage(usage))?;
                let target = if verb == "SEND_FILE" {
                    FileTarget::User(Username::parse(t[0])?)
                } else {
                    FileTarget::Groups(parse_group_list(t[0])?)
                };
                Ok(Request::SendFile(FileOffer {
                    target,
                    size: number(t[1], usage)?,
                    sha256: parse_sha256(t[2]).ok_or(ParseError::Usage(usage))?,
                    name: field(name, true, usage)?,
                }))
            }
            "CHUNK" => {
                let t = exactly(args, 3, U_CHUNK)?;
                Ok(Request::Chunk {
                    transfer: number(t[0], U_CHUNK)?,
                    offset: number(t[1], U_CHUNK)?,
                    key: ContentKey::from_b64(t[2])?,
                    body: body.expect("body checked above"),
                })
            }
            "FILE_END" => Ok(Request::FileEnd(number(
                exactly(args, 1, U_FILE_END)?[0],
                U_FILE_END,
            )?)),
            "FILE_ABORT" => Ok(Request::FileAbort(number(
                exactly(args, 1, U_FILE_ABORT)?[0],
                U_FILE_ABORT,
            )?)),
            "ACK" => {
                let list = exactly(args, 1, U_ACK)?[0];
                let ids = list
                    .split(',')
                    .map(|id| number(id, U_ACK))
                    .collect::<Result<Vec<u64>, _>>()?;
                if ids.len() > MAX_ACK_IDS {
                    return Err(ParseError::Usage(U_ACK));
                }
                Ok(Request::Ack(ids))
            }
            "PONG" => Ok(Request::Pong(number(exactly(args, 1, U_PONG)?[0], U_PONG)?)),
            "HISTORY" => {
                let t = match split_n(args, 2) {
                    Some((t, "")) => t,
                    _ => exactly(args, 1, U_HISTORY)?,
                };
                let with = if let Some(u) = t[0].strip_prefix('@') {
                    HistoryTarget::User(Username::parse(u)?)
                } else if let Some(g) = t[0].strip_prefix('#') {
                    HistoryTarget::Group(GroupName::parse(g)?)
                } else {
                    // Valid as a user or a group name (the rules are the same).
                    HistoryTarget::Either(Username::parse(t[0])?.to_string())
                };
                let limit = match t.get(1) {
                    Some(n) => number(n, U_HISTORY)?,
                    None => DEFAULT_HISTORY as u64,
                };
                if limit == 0 || limit > MAX_HISTORY as u64 {
                    return Err(ParseError::Usage(U_HISTORY));
                }
                Ok(Request::History {
                    with,
                    limit: limit as usize,
                })
            }
            _ => Err(ParseError::UnknownCommand(truncate(&verb, 32))),
        }
    }

    /// The frame that carries this request.
    pub fn to_frame(&self) -> Frame {
        let (head, body) = match self {
            Request::CreateUser {
                name,
                username,
                password,
            } => (format!("CREATE_USER {name} {username} {password}"), None),
            Request::Login { username, password } => (format!("LOGIN {username} {password}"), None),
            Request::CreateGroup(g) => (format!("CREATE_GROUP {g}"), None),
            Request::Join(g) => (format!("JOIN {g}"), None),
            Request::Leave(g) => (format!("LEAVE {g}"), None),
            Request::List => ("LIST".into(), None),
            Request::Help => ("HELP".into(), None),
            Request::Logout => ("LOGOUT".into(), None),
            Request::Quit => ("QUIT".into(), None),
            Request::Send { to, key, body } => {
                (format!("SEND {to} {}", key.to_b64()), Some(body.clone()))
            }
            Request::SendToGroup { groups, key, body } => (
                format!(
                    "SEND_TO_GROUP {} {}",
                    format_group_list(groups),
                    key.to_b64()
                ),
                Some(body.clone()),
            ),
            Request::SendFile(o) => {
                let (verb, target) = match &o.target {
                    FileTarget::User(u) => ("SEND_FILE", u.to_string()),
                    FileTarget::Groups(g) => ("SEND_TO_GROUP_FILE", format_group_list(g)),
                };
                let sha = format_sha256(&o.sha256);
                (format!("{verb} {target} {} {sha} {}", o.size, o.name), None)
            }
            Request::Chunk {
                transfer,
                offset,
                key,
                body,
            } => (
                format!("CHUNK {transfer} {offset} {}", key.to_b64()),
                Some(body.clone()),
            ),
            Request::FileEnd(t) => (format!("FILE_END {t}"), None),
            Request::FileAbort(t) => (format!("FILE_ABORT {t}"), None),
            Request::Ack(ids) => {
                let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
                (format!("ACK {}", ids.join(",")), None)
            }
            Request::History { with, limit } => (format!("HISTORY {with} {limit}"), None),
            Request::Pong(n) => (format!("PONG {n}"), None),
        };
        Frame { head, body }
    }

    /// The head with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        match self {
            Request::CreateUser { name, username, .. } => {
                format!("CREATE_USER {name} {username} <password>")
            }
            Request::Login { username, .. } => format!("LOGIN {username} <password>"),
            other => other.to_frame().head,
        }
    }
}

/// Whether a head is a request that gets no reply (a file chunk, an
/// acknowledgement or a pong). A malformed one cannot be answered, so it
/// ends the connection instead.
pub fn is_unanswered(head: &str) -> bool {
    let verb = head.split(' ').next().unwrap_or("");
    ["CHUNK", "ACK", "PONG"]
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v))
}

/// The usage line of a request verb; `None` for a word that is not one.
fn usage_of(verb: &str) -> Option<&'static str> {
    Some(match verb {
        "CREATE_USER" => U_CREATE_USER,
        "LOGIN" => U_LOGIN,
        "CREATE_GROUP" => U_CREATE_GROUP,
        "JOIN" => U_JOIN,
        "LEAVE" => U_LEAVE,
        "LIST" => "LIST",
        "HELP" => "HELP",
        "LOGOUT" => "LOGOUT",
        "QUIT" => "QUIT",
        "SEND" => U_SEND,
        "SEND_TO_GROUP" => U_SEND_GROUP,
        "SEND_FILE" => U_SEND_FILE,
        "SEND_TO_GROUP_FILE" => U_SEND_GROUP_FILE,
        "CHUNK" => U_CHUNK,
        "FILE_END" => U_FILE_END,
        "FILE_ABORT" => U_FILE_ABORT,
        "ACK" => U_ACK,
        "HISTORY" => U_HISTORY,
        "PONG" => U_PONG,
        _ => return None,
    })
}

/// At most `max` characters of untrusted text, for error messages.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<Request, ParseError> {
        Request::parse(Frame::head(head))
    }

    #[test]
    fn simple_commands_in_any_case() {
        assert_eq!(parse("list"), Ok(Request::List));
        assert_eq!(parse("Logout"), Ok(Request::Logout));
        assert_eq!(
            parse("login alice pw"),
            Ok(Request::Login {
                username: Username::parse("alice").unwrap(),
                password: "pw".into()
            })
        );
        assert_eq!(
            parse("CREATE_GROUP devs"),
            Ok(Request::CreateGroup(GroupName::parse("devs").unwrap()))
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(
            parse("FLY away"),
            Err(ParseError::UnknownCommand("FLY".into()))
        );
        assert_eq!(parse("LOGIN alice"), Err(ParseError::Usage(U_LOGIN)));
        assert_eq!(
            parse("LOGIN alice pw extra"),
            Err(ParseError::Usage(U_LOGIN))
        );
        assert_eq!(parse("LIST now"), Err(ParseError::Usage("LIST")));
        assert_eq!(
            parse("JOIN ../etc"),
            Err(ParseError::BadName(NameError::Characters))
        );
        assert_eq!(
            parse("SEND bob key"),
            Err(ParseError::Usage(U_SEND)),
            "no body"
        );
        assert_eq!(parse("LOGIN  alice pw"), Err(ParseError::Usage(U_LOGIN)));
        let body = ContentKey::random().seal(b"x");
        let with_body = |h: &str| {
            Request::parse(Frame {
                head: h.into(),
                body: Some(body.clone()),
            })
        };
        assert_eq!(
            with_body("FLY x"),
            Err(ParseError::UnknownCommand("FLY".into()))
        );
        assert_eq!(with_body("LIST"), Err(ParseError::Usage("LIST")));
        assert!(parse_sha256(&"+f".repeat(32)).is_none());
    }

    #[test]
    fn bodies_over_the_limits_are_too_large() {
        let key = ContentKey::random();
        let fits = key.seal(&vec![b'a'; MAX_MESSAGE_LEN]);
        assert_eq!(fits.as_str().len(), MAX_MESSAGE_BODY_LEN);
        let big = key.seal(&vec![b'a'; MAX_MESSAGE_LEN + 8]);
        let head = format!("SEND bob {}", key.to_b64());
        let frame = |b: &Body| Frame {
            head: head.clone(),
            body: Some(b.clone()),
        };
        assert!(Request::parse(frame(&fits)).is_ok());
        assert_eq!(
            Request::parse(frame(&big)),
            Err(ParseError::TooLarge { chunk: false })
        );
        let chunk = key.seal(&vec![0; FILE_CHUNK_SIZE + 8]);
        let head = format!("CHUNK 1 0 {}", key.to_b64());
        assert_eq!(
            Request::parse(Frame {
                head,
                body: Some(chunk)
            }),
            Err(ParseError::TooLarge { chunk: true })
        );
        assert!(is_unanswered("chunk 1 2 3"));
        assert!(!is_unanswered("CHUNKY"));
    }

    #[test]
    fn every_request_round_trips_through_its_frame() {
        let key = ContentKey::random();
        let body = key.seal(b"hi there");
        let u = Username::parse("bob").unwrap();
        let gs = parse_group_list("a,b").unwrap();
        let all = vec![
            Request::CreateUser {
                name: "Bob".into(),
                username: u.clone(),
                password: "s3cret!".into(),
            },
            Request::Login {
                username: u.clone(),
                password: "x".into(),
            },
            Request::CreateGroup(gs[0].clone()),
            Request::Join(gs[0].clone()),
            Request::Leave(gs[1].clone()),
            Request::List,
            Request::Help,
            Request::Logout,
            Request::Quit,
            Request::Send {
                to: u.clone(),
                key: key.clone(),
                body: body.clone(),
            },
            Request::SendToGroup {
                groups: gs.clone(),
                key: key.clone(),
                body: body.clone(),
            },
            Request::SendFile(FileOffer {
                target: FileTarget::User(u.clone()),
                size: 12,
                sha256: [0xab; 32],
                name: "my report.pdf".into(),
            }),
            Request::SendFile(FileOffer {
                target: FileTarget::Groups(gs.clone()),
                size: 0,
                sha256: [1; 32],
                name: "x".into(),
            }),
            Request::Chunk {
                transfer: 7,
                offset: 32768,
                key: key.clone(),
                body: body.clone(),
            },
            Request::FileEnd(7),
            Request::FileAbort(8),
            Request::Ack(vec![1, 22, 333]),
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
    fn history_and_ack_forms() {
        assert_eq!(
            parse("history devs"),
            Ok(Request::History {
                with: HistoryTarget::Either("devs".into()),
                limit: DEFAULT_HISTORY
            })
        );
        assert_eq!(parse("HISTORY devs 0"), Err(ParseError::Usage(U_HISTORY)));
        assert_eq!(parse("HISTORY devs 501"), Err(ParseError::Usage(U_HISTORY)));
        assert_eq!(parse("HISTORY devs 5 6"), Err(ParseError::Usage(U_HISTORY)));
        assert!(matches!(parse("HISTORY ../x"), Err(ParseError::BadName(_))));
        assert_eq!(parse("ACK 1,,2"), Err(ParseError::Usage(U_ACK)));
        assert_eq!(parse("ACK"), Err(ParseError::Usage(U_ACK)));
        let many: Vec<String> = (0..=MAX_ACK_IDS).map(|i| i.to_string()).collect();
        assert_eq!(
            parse(&format!("ACK {}", many.join(","))),
            Err(ParseError::Usage(U_ACK))
        );
    }

    #[test]
    fn passwords_are_redacted() {
        let r = parse("LOGIN alice hunter2").unwrap();
        assert!(!r.redacted().contains("hunter2"));
    }

    #[test]
    fn file_names_reject_control_characters() {
        let sha = "00".repeat(32);
        assert!(parse(&format!("SEND_FILE bob 1 {sha} a\u{1b}[2J")).is_err());
        assert!(parse(&format!("SEND_FILE bob 1 {sha} ")).is_err());
        assert!(parse(&format!("SEND_FILE bob -1 {sha} a")).is_err());
        assert!(parse(&format!("SEND_FILE bob 99999999999999999999999 {sha} a")).is_err());
    }
}
