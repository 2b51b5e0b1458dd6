//! What the server sends a client: replies to requests, and events.
//!
//! Every request gets exactly one reply, `OK` or `ERR`, in request order
//! (file chunks are not requests and get none). Events arrive at any time
//! between replies: deliveries, file transfers, and a farewell before the
//! server closes a connection.
//!
//! # Format
//!
//! ```text
//! OK [<text>]
//! ERR <CODE> <text>
//! MSG <id> <unix-ms> <from> <@user|#group> <content-key>          + body
//! FILE <id> <unix-ms> <from> <@user|#group> <size> <sha256-hex> <file name>
//! CHUNK <id> <offset> <content-key>                                + body
//! FILE_END <id>
//! FILE_ABORT <id> <reason>
//! HIST <id> <unix-ms> <from> <@user|#group> <content-key>         + body
//! HIST_FILE <id> <unix-ms> <from> <@user|#group> <size> <sha256-hex> <file name>
//! GROUP_KEY <group> <key-id> <key>
//! GMSG <key-id>                                    + envelope ":" content
//! PING <n>
//! BYE <reason>
//! ```
//!
//! `GMSG` is how live group messages travel: the server seals the message's
//! details (`<id> <unix-ms> <from> #<group> <content-key>`) once, under the
//! group's key (sent to members as `GROUP_KEY`), so each recipient's frame
//! needs only a one-block head under its session key and its MAC.

use std::fmt;

use crate::content::{Body, ContentKey};
use crate::frame::Frame;
use crate::names::{Conversation, GroupName, Username};
use crate::request::{format_sha256, parse_sha256};

/// Machine-readable error codes; the text after the code is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The first word is not a command.
    UnknownCommand,
    /// Wrong number or form of arguments.
    Usage,
    /// A user or group name breaks the naming rules.
    BadName,
    /// The command needs `LOGIN` first.
    NotLoggedIn,
    /// `LOGIN` or `CREATE_USER` on a logged-in session.
    AlreadyLoggedIn,
    /// `CREATE_USER` with a taken username.
    UserExists,
    /// Wrong username or password (deliberately not saying which).
    LoginFailed,
    /// No such user.
    UnknownUser,
    /// `CREATE_GROUP` with a taken name.
    GroupExists,
    /// No such group.
    NoSuchGroup,
    /// The caller is not in that group.
    NotMember,
    /// `JOIN` of a group the caller is already in.
    AlreadyMember,
    /// A file over the server's size limit, or a message body over the
    /// message size limit.
    TooLarge,
    /// More commands per second than the server allows.
    RateLimited,
    /// `CREATE_GROUP` or `JOIN` beyond the per-user group limit.
    TooManyGroups,
    /// `FILE_END` or `FILE_ABORT` for a transfer that is not open. (A bad
    /// chunk is answered with a `FILE_ABORT` event, never an `ERR`.)
    NoSuchTransfer,
    /// A file would take a recipient's pending queue over its quota.
    QuotaExceeded,
    /// The server could not store the change; nothing was done.
    Storage,
}

impl ErrorCode {
    const ALL: [ErrorCode; 18] = [
        ErrorCode::UnknownCommand,
        ErrorCode::Usage,
        ErrorCode::BadName,
        ErrorCode::NotLoggedIn,
        ErrorCode::AlreadyLoggedIn,
        ErrorCode::UserExists,
        ErrorCode::LoginFailed,
        ErrorCode::UnknownUser,
        ErrorCode::GroupExists,
        ErrorCode::NoSuchGroup,
        ErrorCode::NotMember,
        ErrorCode::AlreadyMember,
        ErrorCode::TooLarge,
        ErrorCode::NoSuchTransfer,
        ErrorCode::QuotaExceeded,
        ErrorCode::Storage,
        ErrorCode::RateLimited,
        ErrorCode::TooManyGroups,
    ];

    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::Usage => "USAGE",
            ErrorCode::BadName => "BAD_NAME",
            ErrorCode::NotLoggedIn => "NOT_LOGGED_IN",
            ErrorCode::AlreadyLoggedIn => "ALREADY_LOGGED_IN",
            ErrorCode::UserExists => "USER_EXISTS",
            ErrorCode::LoginFailed => "LOGIN_FAILED",
            ErrorCode::UnknownUser => "UNKNOWN_USER",
            ErrorCode::GroupExists => "GROUP_EXISTS",
            ErrorCode::NoSuchGroup => "NO_SUCH_GROUP",
            ErrorCode::NotMember => "NOT_MEMBER",
            ErrorCode::AlreadyMember => "ALREADY_MEMBER",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::NoSuchTransfer => "NO_SUCH_TRANSFER",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::Storage => "STORAGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::TooManyGroups => "TOO_MANY_GROUPS",
        }
    }

    /// Parses a wire code.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Success, with text for people (for sends, the new id comes first).
    Ok(String),
    /// Failure.
    Err(ErrorCode, String),
}

/// A message delivered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Server-assigned id, unique on this server.
    pub id: u64,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The sender.
    pub from: Username,
    /// The recipient (for direct messages) or the group.
    pub to: Conversation,
    /// Key for the body.
    pub key: ContentKey,
    /// The text, encrypted by the sender.
    pub body: Body,
}

impl Delivery {
    /// The delivery's fields without its body, as they appear after the
    /// verb of a `MSG` head and inside a `GMSG` envelope.
    fn fields(&self) -> String {
        let Delivery {
            id,
            at_ms,
            from,
            to,
            key,
            ..
        } = self;
        format!("{id} {at_ms} {from} {to} {}", key.to_b64())
    }

    /// Parses [`fields`](Self::fields) text; `None` if malformed.
    fn parse_fields(text: &str, body: Body) -> Option<Delivery> {
        let mut t = text.split(' ');
        let d = Delivery {
            id: t.next()?.parse().ok()?,
            at_ms: t.next()?.parse().ok()?,
            from: Username::parse(t.next()?).ok()?,
            to: Conversation::parse(t.next()?).ok()?,
            key: ContentKey::from_b64(t.next()?).ok()?,
            body,
        };
        t.next().is_none().then_some(d)
    }

    fn head(&self, verb: &str) -> String {
        format!("{verb} {}", self.fields())
    }

    /// 3DES blocks sealing this delivery's envelope takes (for key limits).
    pub fn envelope_blocks(&self) -> u64 {
        (crate::tdes::padded_len(self.fields().len()) / crate::tdes::BLOCK_LEN) as u64
    }

    /// The `GMSG` body: this delivery's envelope sealed once under the
    /// group's key, then the sender's content unchanged.
    pub fn seal_for_group(&self, group_key: &ContentKey) -> Body {
        let envelope = group_key.seal(self.fields().as_bytes());
        Body::enveloped(&envelope, &self.body)
    }

    /// Opens a `GMSG` body with the group key its head named.
    pub fn open_group(group_key: &ContentKey, body: &Body) -> Result<Delivery, BadServerMessage> {
        let bad = |what: &str| BadServerMessage(format!("GMSG: {what}"));
        let (envelope, content) = body.split_envelope().ok_or_else(|| bad("no envelope"))?;
        let text = group_key
            .open(&envelope)
            .map_err(|_| bad("envelope does not decrypt"))?;
        let text = String::from_utf8(text).map_err(|_| bad("envelope is not text"))?;
        Delivery::parse_fields(&text, content).ok_or_else(|| bad("malformed envelope"))
    }
}

/// The start of an incoming file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStart {
    /// Server-assigned id; the transfer's chunks carry it.
    pub id: u64,
    /// Server time the transfer was accepted.
    pub at_ms: u64,
    /// The sender.
    pub from: Username,
    /// The recipient or group.
    pub to: Conversation,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the whole plaintext.
    pub sha256: [u8; 32],
    /// The sender's file name: untrusted, to be sanitised.
    pub name: String,
}

impl FileStart {
    fn head(&self, verb: &str) -> String {
        let sha = format_sha256(&self.sha256);
        let FileStart {
            id,
            at_ms,
            from,
            to,
            size,
            name,
            ..
        } = self;
        format!("{verb} {id} {at_ms} {from} {to} {size} {sha} {name}")
    }
}

/// Anything the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// The reply to the oldest unanswered request.
    Reply(Reply),
    /// A message.
    Msg(Delivery),
    /// A file begins.
    File(FileStart),
    /// A piece of a file.
    Chunk {
        /// The file's id.
        id: u64,
        /// Plaintext offset.
        offset: u64,
        /// The chunk's key.
        key: ContentKey,
        /// The encrypted chunk.
        body: Body,
    },
    /// All chunks of a file have been sent.
    FileEnd(u64),
    /// The transfer stopped early.
    FileAbort(u64, String),
    /// A past message, answering `HISTORY` (not to be acknowledged).
    History(Delivery),
    /// A past file, answering `HISTORY` (its content is not resent).
    HistoryFile(FileStart),
    /// The server checks the connection is alive; answer `PONG <n>`.
    Ping(u64),
    /// A group's current key, for opening `GMSG` envelopes.
    GroupKey {
        /// The group.
        group: GroupName,
        /// Identifies the key in `GMSG` heads.
        key_id: u64,
        /// The key.
        key: ContentKey,
    },
    /// A live group message: an envelope under a group key, then content.
    GroupMsg {
        /// Which group key sealed the envelope.
        key_id: u64,
        /// `envelope ":" content`.
        body: Body,
    },
    /// The server is closing this connection.
    Bye(String),
}

/// A server message that does not follow the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadServerMessage(pub String);

impl fmt::Display for BadServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed server message: {}", self.0)
    }
}

impl std::error::Error for BadServerMessage {}

impl ServerMessage {
    /// The frame carrying this message.
    pub fn to_frame(&self) -> Frame {
        let (head, body) = match self {
            ServerMessage::Reply(Reply::Ok(t)) if t.is_empty() => ("OK".to_string(), None),
            ServerMessage::Reply(Reply::Ok(t)) => (format!("OK {t}"), None),
            ServerMessage::Reply(Reply::Err(c, t)) => (format!("ERR {c} {t}"), None),
            ServerMessage::Msg(d) => (d.head("MSG"), Some(d.body.clone())),
            ServerMessage::History(d) => (d.head("HIST"), Some(d.body.clone())),
            ServerMessage::File(f) => (f.head("FILE"), None),
            ServerMessage::HistoryFile(f) => (f.head("HIST_FILE"), None),
            ServerMessage::Chunk {
                id,
                offset,
                key,
                body,
            } => (
                format!("CHUNK {id} {offset} {}", key.to_b64()),
                Some(body.clone()),
            ),
            ServerMessage::FileEnd(id) => (format!("FILE_END {id}"), None),
            ServerMessage::FileAbort(id, why) => (format!("FILE_ABORT {id} {why}"), None),
            ServerMessage::Bye(why) => (format!("BYE {why}"), None),
            ServerMessage::Ping(n) => (format!("PING {n}"), None),
            ServerMessage::GroupKey { group, key_id, key } => {
                (format!("GROUP_KEY {group} {key_id} {}", key.to_b64()), None)
            }
            ServerMessage::GroupMsg { key_id, body } => {
                (format!("GMSG {key_id}"), Some(body.clone()))
            }
        };
        Frame { head, body }
    }

    /// Parses a frame from the server.
    pub fn parse(frame: Frame) -> Result<Self, BadServerMessage> {
        let bad = || BadServerMessage(crate::request::truncate(&frame.head, 80));
        let head = frame.head.as_str();
        let (verb, args) = head.split_once(' ').unwrap_or((head, ""));
        let mut t = args.split(' ');
        let mut next = || t.next().ok_or_else(bad);
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let body = || frame.body.clone().ok_or_else(bad);
        Ok(match verb {
            "OK" => ServerMessage::Reply(Reply::Ok(args.to_string())),
            "ERR" => {
                let (code, text) = args.split_once(' ').unwrap_or((args, ""));
                let code = ErrorCode::parse(code).ok_or_else(bad)?;
                ServerMessage::Reply(Reply::Err(code, text.to_string()))
            }
            "MSG" | "HIST" => {
                let d = Delivery::parse_fields(args, body()?).ok_or_else(bad)?;
                if verb == "MSG" {
                    ServerMessage::Msg(d)
                } else {
                    ServerMessage::History(d)
                }
            }
            "FILE" | "HIST_FILE" => {
                let (id, at_ms) = (num(next()?)?, num(next()?)?);
                let from = Username::parse(next()?).map_err(|_| bad())?;
                let to = Conversation::parse(next()?).map_err(|_| bad())?;
                let size = num(next()?)?;
                let sha256 = parse_sha256(next()?).ok_or_else(bad)?;
                let name: Vec<&str> = t.collect();
                let f = FileStart {
                    id,
                    at_ms,
                    from,
                    to,
                    size,
                    sha256,
                    name: name.join(" "),
                };
                if verb == "FILE" {
                    ServerMessage::File(f)
                } else {
                    ServerMessage::HistoryFile(f)
                }
            }
            "CHUNK" => ServerMessage::Chunk {
                id: num(next()?)?,
                offset: num(next()?)?,
                key: ContentKey::from_b64(next()?).map_err(|_| bad())?,
                body: body()?,
            },
            "FILE_END" => ServerMessage::FileEnd(num(args)?),
            "FILE_ABORT" => {
                let (id, why) = args.split_once(' ').unwrap_or((args, ""));
                ServerMessage::FileAbort(num(id)?, why.to_string())
            }
            "BYE" => ServerMessage::Bye(args.to_string()),
            "PING" => ServerMessage::Ping(num(args)?),
            "GROUP_KEY" => ServerMessage::GroupKey {
                group: GroupName::parse(next()?).map_err(|_| bad())?,
                key_id: num(next()?)?,
                key: ContentKey::from_b64(next()?).map_err(|_| bad())?,
            },
            "GMSG" => {
                let body = body()?;
                if body.is_plain() {
                    return Err(bad());
                }
                ServerMessage::GroupMsg {
                    key_id: num(args)?,
                    body,
                }
            }
            _ => return Err(bad()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::GroupName;

    #[test]
    fn every_message_round_trips() {
        let key = ContentKey::random();
        let body = key.seal(b"payload");
        let alice = Username::parse("alice").unwrap();
        let all = vec![
            ServerMessage::Reply(Reply::Ok(String::new())),
            ServerMessage::Reply(Reply::Ok("17 sent to bob".into())),
            ServerMessage::Reply(Reply::Err(ErrorCode::NotMember, "not in #x".into())),
            ServerMessage::Msg(Delivery {
                id: 17,
                at_ms: 1_764_000_000_000,
                from: alice.clone(),
                to: Conversation::Group(GroupName::parse("devs").unwrap()),
                key: key.clone(),
                body: body.clone(),
            }),
            ServerMessage::File(FileStart {
                id: 18,
                at_ms: 5,
                from: alice.clone(),
                to: Conversation::User(Username::parse("bob").unwrap()),
                size: 100,
                sha256: [7; 32],
                name: "two  spaces.txt".into(),
            }),
            ServerMessage::Chunk {
                id: 18,
                offset: 0,
                key,
                body,
            },
            ServerMessage::History(Delivery {
                id: 3,
                at_ms: 4,
                from: alice.clone(),
                to: Conversation::User(Username::parse("bob").unwrap()),
                key: ContentKey::random(),
                body: ContentKey::random().seal(b"old"),
            }),
            ServerMessage::HistoryFile(FileStart {
                id: 19,
                at_ms: 5,
                from: alice.clone(),
                to: Conversation::Group(GroupName::parse("g").unwrap()),
                size: 1,
                sha256: [8; 32],
                name: "old.txt".into(),
            }),
            ServerMessage::FileEnd(18),
            ServerMessage::FileAbort(18, "sender left".into()),
            ServerMessage::Bye("server shutting down".into()),
            ServerMessage::Ping(3),
            ServerMessage::GroupKey {
                group: GroupName::parse("g").unwrap(),
                key_id: 4,
                key: ContentKey::random(),
            },
            ServerMessage::GroupMsg {
                key_id: 4,
                body: Body::enveloped(
                    &ContentKey::random().seal(b"m"),
                    &ContentKey::random().seal(b"c"),
                ),
            },
        ];
        for m in all {
            assert_eq!(ServerMessage::parse(m.to_frame()), Ok(m.clone()));
        }
    }

    #[test]
    fn junk_is_an_error() {
        for h in [
            "",
            "WHAT",
            "ERR NOPE x",
            "MSG 1 2",
            "FILE_END x",
            "MSG 1 2 a @b k",
        ] {
            assert!(ServerMessage::parse(Frame::head(h)).is_err(), "{h}");
        }
    }
}
