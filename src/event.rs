//! What the server sends a client: replies to requests, and events.
//!
//! Every request gets exactly one reply, `OK` or `ERR`, in request order,
//! except the verbs the table marks unanswered (chunks, acknowledgements,
//! pongs). Events arrive at any time between replies: deliveries, file
//! downloads, group keys, and a farewell before the server closes.
//!
//! # Format
//!
//! ```text
//! OK [<data>] [<text>]
//! ERR <CODE> <text>
//! MSG <conv>:<seq> <unix-ms> <from> <content-key>              + body
//! GMSG <key-id> <seq>                      (clear head)  + envelope ":" content
//! FILE <conv>:<seq> <unix-ms> <from> <size> <sha256-hex> <file name>
//! CHUNK <conv>:<seq> <offset> <content-key>                    + body
//! FILE_END <conv>:<seq>
//! FILE_ABORT <conv>:<seq> <reason>
//! UPLOAD_ABORT <transfer-id> <reason>
//! HIST <conv>:<seq> <unix-ms> <from> <content-key>             + body
//! HIST_FILE <conv>:<seq> <unix-ms> <from> <size> <sha256-hex> <file name>
//! GROUP_KEY <group> <key-id> <key>
//! INVITED <group> <by>
//! REMOVED <group> <by>
//! PING <n>
//! BYE <reason>
//! ```
//!
//! `<conv>` is the conversation as the reader sees it: `#group`, or
//! `@peer` for the direct conversation with `peer`. `GMSG` is how live group
//! messages travel: the server seals `<unix-ms> <from> <content-key>` once,
//! under the group's current key (sent to members as `GROUP_KEY`), so each
//! recipient's frame costs only a MAC; its head travels in clear (see
//! [`crate::frame`]) and names the key and the message's sequence number.

use std::fmt;

use crate::content::{Body, ContentKey};
use crate::frame::Frame;
use crate::names::{Conversation, GroupName, MessageRef, Username};
use crate::request::{format_sha256, parse_sha256, DeviceToken, ReplyKind, Voice};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal,)*) => {
        /// Machine-readable error codes; the text after the code is for people.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as written on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                }
            }
        }
    };
}

error_codes! {
    /// The first word is not a command.
    UnknownCommand = "UNKNOWN_COMMAND",
    /// Wrong number or form of arguments.
    Usage = "USAGE",
    /// A user or group name breaks the naming rules.
    BadName = "BAD_NAME",
    /// The command needs `LOGIN` first.
    NotLoggedIn = "NOT_LOGGED_IN",
    /// `LOGIN` or `CREATE_USER` on a logged-in session.
    AlreadyLoggedIn = "ALREADY_LOGGED_IN",
    /// `CREATE_USER` with a taken username.
    UserExists = "USER_EXISTS",
    /// Wrong username or password (deliberately not saying which).
    LoginFailed = "LOGIN_FAILED",
    /// No such user.
    UnknownUser = "UNKNOWN_USER",
    /// `CREATE_GROUP` with a taken name.
    GroupExists = "GROUP_EXISTS",
    /// No such group.
    NoSuchGroup = "NO_SUCH_GROUP",
    /// The caller is not in that group.
    NotMember = "NOT_MEMBER",
    /// `JOIN` of a group the caller is already in.
    AlreadyMember = "ALREADY_MEMBER",
    /// A file over the server's size limit, or a message body over the
    /// message size limit.
    TooLarge = "TOO_LARGE",
    /// More commands per second than the server allows.
    RateLimited = "RATE_LIMITED",
    /// `CREATE_GROUP` or `JOIN` beyond the per-user group limit.
    TooManyGroups = "TOO_MANY_GROUPS",
    /// `FILE_END` or `FILE_ABORT` for a transfer that is not open.
    NoSuchTransfer = "NO_SUCH_TRANSFER",
    /// A file would take its recipients' undelivered files over the quota.
    QuotaExceeded = "QUOTA_EXCEEDED",
    /// The server could not store the change; nothing was done.
    Storage = "STORAGE",
    /// The user already has the most sessions the server allows.
    TooManySessions = "TOO_MANY_SESSIONS",
    /// Not allowed in this group: it is private, or it takes its owner
    /// or an admin.
    NotAllowed = "NOT_ALLOWED",
}

impl ErrorCode {
    /// Parses a wire code.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The machine-readable part of an `OK`, which the request's
/// [`ReplyKind`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyData {
    /// Nothing but text.
    None,
    /// Where a message or file went: one reference per conversation.
    Sent(Vec<MessageRef>),
    /// The id of a new upload, for its chunks.
    Transfer(u64),
    /// The token this device presents at its next login.
    Token(DeviceToken),
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Success.
    Ok {
        /// What a program needs from the reply.
        data: ReplyData,
        /// For people.
        text: String,
    },
    /// Failure.
    Err {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// For people.
        text: String,
    },
}

impl Reply {
    /// An `OK` with text only.
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::Ok {
            data: ReplyData::None,
            text: text.into(),
        }
    }

    /// An `ERR`.
    pub fn err(code: ErrorCode, text: impl Into<String>) -> Reply {
        Reply::Err {
            code,
            text: text.into(),
        }
    }

    /// `ERR RATE_LIMITED retry in <n> s: <why>`: the wait in whole
    /// seconds, rounded up.
    pub fn rate_limited(wait: std::time::Duration, why: &str) -> Reply {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Reply::err(ErrorCode::RateLimited, format!("retry in {secs} s: {why}"))
    }

    /// How long a `RATE_LIMITED` reply asks the client to wait before
    /// sending the request again (None for any other reply, or one that
    /// names no wait).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let Reply::Err {
            code: ErrorCode::RateLimited,
            text,
        } = self
        else {
            return None;
        };
        let secs = text.strip_prefix("retry in ")?.split(' ').next()?;
        secs.parse().ok().map(std::time::Duration::from_secs)
    }

    /// Whether this is an `OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok { .. })
    }

    /// The text for people.
    pub fn text(&self) -> &str {
        match self {
            Reply::Ok { text, .. } | Reply::Err { text, .. } => text,
        }
    }

    /// The message references of a send's `OK` (empty otherwise).
    pub fn sent(&self) -> &[MessageRef] {
        match self {
            Reply::Ok {
                data: ReplyData::Sent(refs),
                ..
            } => refs,
            _ => &[],
        }
    }

    /// Reads the data a reply of `kind` carries out of its text (the wire
    /// does not say which request a reply answers: replies come in request
    /// order, so the client knows).
    pub fn typed(self, kind: ReplyKind) -> Result<Reply, BadServerMessage> {
        let Reply::Ok {
            data: ReplyData::None,
            text,
        } = self
        else {
            return Ok(self);
        };
        let (first, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let bad = || BadServerMessage(format!("OK without its data: {}", text));
        let data = match kind {
            ReplyKind::Text | ReplyKind::Unanswered => return Ok(Reply::ok(text)),
            ReplyKind::Sent => ReplyData::Sent(MessageRef::parse_list(first).ok_or_else(bad)?),
            ReplyKind::Upload => match first.parse::<u64>() {
                Ok(id) => ReplyData::Transfer(id),
                Err(_) => ReplyData::Sent(MessageRef::parse_list(first).ok_or_else(bad)?),
            },
            ReplyKind::Login => ReplyData::Token(DeviceToken::parse(first).ok_or_else(bad)?),
        };
        Ok(Reply::Ok {
            data,
            text: rest.to_string(),
        })
    }
}

/// A message delivered to a client (or shown from history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Where it sits: the conversation (as this reader sees it) and its seq.
    pub at: MessageRef,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The sender.
    pub from: Username,
    /// Key for the body.
    pub key: ContentKey,
    /// The text, encrypted by the sender.
    pub body: Body,
}

impl Delivery {
    /// The `GMSG` envelope's text: what a `MSG` head says beyond the
    /// reference (which the `GMSG` head carries in clear).
    fn envelope_text(&self) -> String {
        format!("{} {} {}", self.at_ms, self.from, self.key.to_b64())
    }

    /// 3DES blocks sealing this delivery's envelope takes (for key limits).
    pub fn envelope_blocks(&self) -> u64 {
        (crate::tdes::padded_len(self.envelope_text().len()) / crate::tdes::BLOCK_LEN) as u64
    }

    /// The `GMSG` body: this delivery's envelope sealed once under the
    /// group's key, then the sender's content unchanged.
    pub fn seal_for_group(&self, group_key: &ContentKey) -> Body {
        let envelope = group_key.seal(self.envelope_text().as_bytes());
        Body::enveloped(&envelope, &self.body)
    }

    /// Opens a `GMSG` of `group` (found from the key id in its head) with
    /// that group key.
    pub fn open_group(
        group: &GroupName,
        seq: u64,
        group_key: &ContentKey,
        body: &Body,
    ) -> Result<Delivery, BadServerMessage> {
        let bad = |what: &str| BadServerMessage(format!("GMSG: {what}"));
        let (envelope, content) = body.split_envelope().ok_or_else(|| bad("no envelope"))?;
        let text = group_key
            .open(&envelope)
            .map_err(|_| bad("envelope does not decrypt"))?;
        let text = String::from_utf8(text).map_err(|_| bad("envelope is not text"))?;
        let mut t = text.split(' ');
        let mut field = || t.next().ok_or_else(|| bad("malformed envelope"));
        let d = Delivery {
            at: MessageRef {
                conv: Conversation::Group(group.clone()),
                seq,
            },
            at_ms: field()?.parse().map_err(|_| bad("bad time"))?,
            from: Username::parse(field()?).map_err(|_| bad("bad sender"))?,
            key: ContentKey::from_b64(field()?).map_err(|_| bad("bad key"))?,
            body: content,
        };
        match t.next() {
            None => Ok(d),
            Some(_) => Err(bad("malformed envelope")),
        }
    }
}

/// The start of a file being delivered (or shown from history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStart {
    /// Where it sits in its conversation; its chunks carry the same reference.
    pub at: MessageRef,
    /// Server time the file was stored.
    pub at_ms: u64,
    /// The sender.
    pub from: Username,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the whole plaintext.
    pub sha256: [u8; 32],
    /// The sender's file name: untrusted, to be sanitised.
    pub name: String,
    /// Set for a voice note (announced as `VOICE`/`HIST_VOICE`).
    pub voice: Option<Voice>,
}

/// An owner or admin changed a user's place in a group: sent to that
/// user's sessions, and shown by the client as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNotice {
    /// What happened.
    pub kind: NoticeKind,
    /// The group.
    pub group: GroupName,
    /// The owner or admin who did it.
    pub by: Username,
}

/// What a [`GroupNotice`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// Invited to a private group (`JOIN` accepts).
    Invited,
    /// Removed from a group; its sessions follow it no more.
    Removed,
}

impl NoticeKind {
    /// The event's word on the wire.
    pub fn word(self) -> &'static str {
        match self {
            NoticeKind::Invited => "INVITED",
            NoticeKind::Removed => "REMOVED",
        }
    }
}

/// Anything the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// The reply to the oldest unanswered request.
    Reply(Reply),
    /// A message.
    Msg(Delivery),
    /// A live group message: an envelope under a group key, then content.
    GroupMsg {
        /// Which group key sealed the envelope (and so which group).
        key_id: u64,
        /// The message's place in the group's log.
        seq: u64,
        /// `envelope ":" content`.
        body: Body,
    },
    /// A file begins.
    File(FileStart),
    /// A piece of a file being delivered.
    Chunk {
        /// The file.
        at: MessageRef,
        /// Plaintext offset.
        offset: u64,
        /// The chunk's key.
        key: ContentKey,
        /// The encrypted chunk.
        body: Body,
    },
    /// All chunks of a file have been sent.
    FileEnd(MessageRef),
    /// The server stopped sending a file (it comes again from the start
    /// after the next login, unless acknowledged).
    FileAbort(MessageRef, String),
    /// The server stopped receiving one of this client's uploads.
    UploadAbort(u64, String),
    /// A past message, answering `HISTORY` (not to be acknowledged).
    History(Delivery),
    /// A past file, answering `HISTORY` (its content is not resent).
    HistoryFile(FileStart),
    /// A group's current key, for opening `GMSG` envelopes.
    GroupKey {
        /// The group.
        group: GroupName,
        /// Identifies the key in `GMSG` heads; unique for the server's run.
        key_id: u64,
        /// The key.
        key: ContentKey,
    },
    /// `INVITED`/`REMOVED`: an owner or admin changed the reader's place
    /// in a group.
    Notice(GroupNotice),
    /// The server checks the connection is alive; answer `PONG <n>`.
    Ping(u64),
    /// The server is closing this connection.
    Bye(String),
}

/// A server message that does not follow the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed server message: {0}")]
pub struct BadServerMessage(pub String);

fn delivery_head(verb: &str, d: &Delivery) -> String {
    format!("{verb} {} {} {} {}", d.at, d.at_ms, d.from, d.key.to_b64())
}

/// `FILE ...` or, for a voice note, `VOICE ...` with its length and format
/// before the name (`history`: `HIST_FILE`, `HIST_VOICE`).
fn file_head(history: bool, f: &FileStart) -> String {
    let verb = match (history, f.voice.is_some()) {
        (false, false) => "FILE",
        (false, true) => "VOICE",
        (true, false) => "HIST_FILE",
        (true, true) => "HIST_VOICE",
    };
    let voice = f
        .voice
        .map(|v| format!("{} ", v.to_wire()))
        .unwrap_or_default();
    format!(
        "{verb} {} {} {} {} {} {voice}{}",
        f.at,
        f.at_ms,
        f.from,
        f.size,
        format_sha256(&f.sha256),
        f.name
    )
}

impl ServerMessage {
    /// The frame carrying this message.
    pub fn to_frame(&self) -> Frame {
        let plain = |head: String| Frame::head(head);
        let with_body = |head: String, body: &Body| Frame {
            head,
            body: Some(body.clone()),
            clear: false,
        };
        match self {
            ServerMessage::Reply(Reply::Ok { data, text }) => {
                let data = match data {
                    ReplyData::None => String::new(),
                    ReplyData::Sent(refs) => MessageRef::format_list(refs),
                    ReplyData::Transfer(id) => id.to_string(),
                    ReplyData::Token(t) => t.to_string(),
                };
                let parts: Vec<&str> = ["OK", &data, text]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect();
                plain(parts.join(" "))
            }
            ServerMessage::Reply(Reply::Err { code, text }) => plain(format!("ERR {code} {text}")),
            ServerMessage::Msg(d) => with_body(delivery_head("MSG", d), &d.body),
            ServerMessage::History(d) => with_body(delivery_head("HIST", d), &d.body),
            ServerMessage::GroupMsg { key_id, seq, body } => Frame {
                head: format!("GMSG {key_id} {seq}"),
                body: Some(body.clone()),
                clear: true,
            },
            ServerMessage::File(f) => plain(file_head(false, f)),
            ServerMessage::HistoryFile(f) => plain(file_head(true, f)),
            ServerMessage::Chunk {
                at,
                offset,
                key,
                body,
            } => with_body(format!("CHUNK {at} {offset} {}", key.to_b64()), body),
            ServerMessage::FileEnd(at) => plain(format!("FILE_END {at}")),
            ServerMessage::FileAbort(at, why) => plain(format!("FILE_ABORT {at} {why}")),
            ServerMessage::UploadAbort(id, why) => plain(format!("UPLOAD_ABORT {id} {why}")),
            ServerMessage::GroupKey { group, key_id, key } => {
                plain(format!("GROUP_KEY {group} {key_id} {}", key.to_b64()))
            }
            ServerMessage::Notice(n) => plain(format!("{} {} {}", n.kind.word(), n.group, n.by)),
            ServerMessage::Ping(n) => plain(format!("PING {n}")),
            ServerMessage::Bye(why) => plain(format!("BYE {why}")),
        }
    }

    /// Parses a frame from the server. Only a `GMSG` may have a clear head.
    pub fn parse(frame: Frame) -> Result<Self, BadServerMessage> {
        let bad = || BadServerMessage(crate::request::truncate(&frame.head, 80));
        let head = frame.head.as_str();
        let (verb, args) = head.split_once(' ').unwrap_or((head, ""));
        if frame.clear != (verb == "GMSG") {
            return Err(bad());
        }
        let mut t = args.split(' ');
        let mut next = || t.next().filter(|s| !s.is_empty()).ok_or_else(bad);
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let at = |s: &str| MessageRef::parse(s).ok_or_else(bad);
        let body = || frame.body.clone().ok_or_else(bad);
        let no_body = || {
            if frame.body.is_some() {
                Err(bad())
            } else {
                Ok(())
            }
        };
        let message = match verb {
            "OK" => {
                no_body()?;
                ServerMessage::Reply(Reply::ok(args))
            }
            "ERR" => {
                no_body()?;
                let (code, text) = args.split_once(' ').unwrap_or((args, ""));
                let code = ErrorCode::parse(code).ok_or_else(bad)?;
                ServerMessage::Reply(Reply::err(code, text))
            }
            "MSG" | "HIST" => {
                let d = Delivery {
                    at: at(next()?)?,
                    at_ms: num(next()?)?,
                    from: Username::parse(next()?).map_err(|_| bad())?,
                    key: ContentKey::from_b64(next()?).map_err(|_| bad())?,
                    body: body()?,
                };
                if t.next().is_some() || !d.body.is_plain() {
                    return Err(bad());
                }
                if verb == "MSG" {
                    ServerMessage::Msg(d)
                } else {
                    ServerMessage::History(d)
                }
            }
            "GMSG" => {
                let (key_id, seq) = (num(next()?)?, num(next()?)?);
                let body = body()?;
                if body.is_plain() || t.next().is_some() {
                    return Err(bad());
                }
                ServerMessage::GroupMsg { key_id, seq, body }
            }
            "FILE" | "HIST_FILE" | "VOICE" | "HIST_VOICE" => {
                no_body()?;
                let (at, at_ms) = (at(next()?)?, num(next()?)?);
                let from = Username::parse(next()?).map_err(|_| bad())?;
                let (size, sha256) = (num(next()?)?, parse_sha256(next()?).ok_or_else(bad)?);
                let voice = match verb {
                    "VOICE" | "HIST_VOICE" => {
                        let (d, format) = (next()?, next()?);
                        Some(Voice::from_wire(d, format).ok_or_else(bad)?)
                    }
                    _ => None,
                };
                let f = FileStart {
                    at,
                    at_ms,
                    from,
                    size,
                    sha256,
                    name: t.collect::<Vec<&str>>().join(" "),
                    voice,
                };
                if f.name.is_empty() {
                    return Err(bad());
                }
                if verb.starts_with("HIST_") {
                    ServerMessage::HistoryFile(f)
                } else {
                    ServerMessage::File(f)
                }
            }
            "CHUNK" => {
                let chunk = ServerMessage::Chunk {
                    at: at(next()?)?,
                    offset: num(next()?)?,
                    key: ContentKey::from_b64(next()?).map_err(|_| bad())?,
                    body: body()?,
                };
                let plain = matches!(&chunk, ServerMessage::Chunk { body, .. } if body.is_plain());
                if t.next().is_some() || !plain {
                    return Err(bad());
                }
                chunk
            }
            "FILE_END" => {
                no_body()?;
                ServerMessage::FileEnd(at(args)?)
            }
            "FILE_ABORT" | "UPLOAD_ABORT" => {
                no_body()?;
                let (id, why) = args.split_once(' ').unwrap_or((args, ""));
                if verb == "FILE_ABORT" {
                    ServerMessage::FileAbort(at(id)?, why.to_string())
                } else {
                    ServerMessage::UploadAbort(num(id)?, why.to_string())
                }
            }
            "GROUP_KEY" => {
                no_body()?;
                let key = ServerMessage::GroupKey {
                    group: GroupName::parse(next()?).map_err(|_| bad())?,
                    key_id: num(next()?)?,
                    key: ContentKey::from_b64(next()?).map_err(|_| bad())?,
                };
                if t.next().is_some() {
                    return Err(bad());
                }
                key
            }
            "INVITED" | "REMOVED" => {
                no_body()?;
                let group = GroupName::parse(next()?).map_err(|_| bad())?;
                let by = Username::parse(next()?).map_err(|_| bad())?;
                if t.next().is_some() {
                    return Err(bad());
                }
                let kind = if verb == "INVITED" {
                    NoticeKind::Invited
                } else {
                    NoticeKind::Removed
                };
                ServerMessage::Notice(GroupNotice { kind, group, by })
            }
            "PING" => {
                no_body()?;
                ServerMessage::Ping(num(args)?)
            }
            "BYE" => {
                no_body()?;
                ServerMessage::Bye(args.to_string())
            }
            _ => return Err(bad()),
        };
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::GroupName;

    fn group_ref(g: &str, seq: u64) -> MessageRef {
        MessageRef {
            conv: Conversation::Group(GroupName::parse(g).unwrap()),
            seq,
        }
    }

    #[test]
    fn a_rate_limited_reply_says_how_long_to_wait() {
        use std::time::Duration;
        let r = Reply::rate_limited(Duration::from_millis(2_100), "too many login attempts");
        assert_eq!(r.text(), "retry in 3 s: too many login attempts");
        assert_eq!(r.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(
            Reply::err(ErrorCode::RateLimited, "soon").retry_after(),
            None
        );
        assert_eq!(
            Reply::err(ErrorCode::Usage, "retry in 3 s").retry_after(),
            None
        );
        assert_eq!(Reply::ok("retry in 3 s").retry_after(), None);
    }

    #[test]
    fn every_message_round_trips() {
        let key = ContentKey::random();
        let body = key.seal(b"payload");
        let alice = Username::parse("alice").unwrap();
        let bob_ref = MessageRef {
            conv: Conversation::User(Username::parse("bob").unwrap()),
            seq: 18,
        };
        let all = vec![
            ServerMessage::Reply(Reply::ok("")),
            ServerMessage::Reply(Reply::ok("logged in as bob")),
            ServerMessage::Reply(Reply::err(ErrorCode::NotMember, "not in #x")),
            ServerMessage::Msg(Delivery {
                at: group_ref("devs", 17),
                at_ms: 1_764_000_000_000,
                from: alice.clone(),
                key: key.clone(),
                body: body.clone(),
            }),
            ServerMessage::File(FileStart {
                at: bob_ref.clone(),
                at_ms: 5,
                from: alice.clone(),
                size: 100,
                sha256: [7; 32],
                name: "two  spaces.txt".into(),
                voice: None,
            }),
            ServerMessage::File(FileStart {
                at: bob_ref.clone(),
                at_ms: 6,
                from: alice.clone(),
                size: 48_044,
                sha256: [9; 32],
                name: "note.wav".into(),
                voice: Some(Voice {
                    duration_ms: 1_500,
                    format: crate::request::AudioFormat::Wav,
                }),
            }),
            ServerMessage::Chunk {
                at: bob_ref.clone(),
                offset: 0,
                key,
                body,
            },
            ServerMessage::History(Delivery {
                at: group_ref("g", 3),
                at_ms: 4,
                from: alice.clone(),
                key: ContentKey::random(),
                body: ContentKey::random().seal(b"old"),
            }),
            ServerMessage::HistoryFile(FileStart {
                at: group_ref("g", 19),
                at_ms: 5,
                from: alice.clone(),
                size: 1,
                sha256: [8; 32],
                name: "old.txt".into(),
                voice: None,
            }),
            ServerMessage::HistoryFile(FileStart {
                at: group_ref("g", 20),
                at_ms: 6,
                from: alice.clone(),
                size: 44,
                sha256: [8; 32],
                name: "old note.wav".into(),
                voice: Some(Voice {
                    duration_ms: 61_000,
                    format: crate::request::AudioFormat::Wav,
                }),
            }),
            ServerMessage::FileEnd(bob_ref.clone()),
            ServerMessage::FileAbort(bob_ref, "server is shutting down".into()),
            ServerMessage::UploadAbort(18, "chunk out of order".into()),
            ServerMessage::Bye("server shutting down".into()),
            ServerMessage::Notice(GroupNotice {
                kind: NoticeKind::Invited,
                group: GroupName::parse("g").unwrap(),
                by: alice.clone(),
            }),
            ServerMessage::Notice(GroupNotice {
                kind: NoticeKind::Removed,
                group: GroupName::parse("g").unwrap(),
                by: alice.clone(),
            }),
            ServerMessage::Ping(3),
            ServerMessage::GroupKey {
                group: GroupName::parse("g").unwrap(),
                key_id: 4,
                key: ContentKey::random(),
            },
            ServerMessage::GroupMsg {
                key_id: 4,
                seq: 99,
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
    fn replies_carry_typed_data() {
        let refs = vec![group_ref("a", 1), group_ref("b", 7)];
        let sent = Reply::Ok {
            data: ReplyData::Sent(refs.clone()),
            text: "sent".into(),
        };
        let ServerMessage::Reply(raw) =
            ServerMessage::parse(ServerMessage::Reply(sent.clone()).to_frame()).unwrap()
        else {
            panic!("a reply")
        };
        assert_eq!(raw.clone().typed(ReplyKind::Sent).unwrap(), sent);
        assert_eq!(raw.typed(ReplyKind::Sent).unwrap().sent(), refs.as_slice());
        let upload = Reply::Ok {
            data: ReplyData::Transfer(12),
            text: "send the chunks".into(),
        };
        let back = match ServerMessage::parse(ServerMessage::Reply(upload.clone()).to_frame()) {
            Ok(ServerMessage::Reply(r)) => r.typed(ReplyKind::Upload).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(back, upload);
        assert!(Reply::ok("3 messages").typed(ReplyKind::Sent).is_err());
        assert_eq!(
            Reply::ok("3 messages").typed(ReplyKind::Text).unwrap(),
            Reply::ok("3 messages")
        );
    }

    #[test]
    fn group_envelopes_open_with_their_key() {
        let (gk, ck) = (ContentKey::random(), ContentKey::random());
        let d = Delivery {
            at: group_ref("ops", 5),
            at_ms: 77,
            from: Username::parse("carol").unwrap(),
            key: ck.clone(),
            body: ck.seal(b"hello"),
        };
        let sealed = d.seal_for_group(&gk);
        let g = GroupName::parse("ops").unwrap();
        assert_eq!(Delivery::open_group(&g, 5, &gk, &sealed).unwrap(), d);
        assert!(Delivery::open_group(&g, 5, &ContentKey::random(), &sealed).is_err());
    }

    #[test]
    fn junk_is_an_error() {
        for h in [
            "",
            "WHAT",
            "ERR NOPE x",
            "MSG 1 2",
            "FILE_END x",
            "FILE_END 7",
            "MSG #a:1 2 a k",
            "GMSG 1 2",
        ] {
            assert!(ServerMessage::parse(Frame::head(h)).is_err(), "{h}");
        }
        // Only GMSG may come with a clear head.
        let mut f = Frame::head("OK fine");
        f.clear = true;
        assert!(ServerMessage::parse(f).is_err());
    }
}
