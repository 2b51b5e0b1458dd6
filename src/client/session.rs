//! The protocol session: the one place on the client side that speaks the
//! wire. The terminal client ([`super::Client`]), the load generator and
//! the tests all use it.
//!
//! [`Session::connect`] connects, runs the handshake and checks the
//! server's key against the pins before anything is sent. A session splits
//! into a [`SessionWriter`] (typed requests in, frames out) and a
//! [`SessionReader`] (frames in, typed [`Incoming`] out), so one thread can
//! block reading while another writes. The reader keeps the group keys the
//! server hands out and opens every `GMSG` envelope with them, so callers
//! see every message as a [`Delivery`] (a load generator, which verifies
//! every frame but reads only a sample, can have the envelopes left shut:
//! [`SessionReader::defer_envelopes`]); it answers nothing itself (a
//! `PING` comes out as an event for the owner to answer).
//!
//! Replies come in request order and do not say which request they answer,
//! so whoever sends a request remembers its [`ReplyKind`] and turns the raw
//! reply into a typed one with [`Reply::typed`]. [`Session::request`] does
//! that for a caller that owns both halves.
//!
//! [`Acks`] keeps the cumulative acknowledgements: what has been handled,
//! per conversation, and what is still to be told to the server.

use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::connection::{FrameReader, FrameWriter, ReadError, SharedStream};
use crate::content::ContentKey;
use crate::event::{BadServerMessage, Delivery, FileStart, GroupNotice, Reply, ServerMessage};
use crate::frame::Frame;
use crate::handshake::{self, HandshakeError};
use crate::identity::Fingerprint;
use crate::names::{Conversation, GroupName, MessageRef};
use crate::request::{Request, MAX_ACK_REFS};

use super::known_servers::{self, Trust, Verdict};

/// Why a session could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting, reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The server's key is not the one trusted; nothing was sent.
    #[error("{0}")]
    Untrusted(String),
    /// A frame failed its MAC, or the like: the connection is unusable.
    #[error("protocol error from server: {0}")]
    Frame(ReadError),
    /// The server sent something that does not follow the protocol.
    #[error(transparent)]
    BadMessage(#[from] BadServerMessage),
    /// The server closed the connection (with its `BYE` reason, if any).
    #[error("{}", match .0 { Some(why) => format!("server said goodbye: {why}"), None => "server closed the connection".to_string() })]
    Closed(Option<String>),
}

/// What the server sent, as the session's owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The reply to the oldest unanswered request (type it with
    /// [`Reply::typed`] and the request's [`crate::request::ReplyKind`]).
    Reply(Reply),
    /// A message, live or from the store (a `GMSG` arrives opened).
    Message(Delivery),
    /// A live group message with its envelope still shut; only from a
    /// reader told to [`defer_envelopes`](SessionReader::defer_envelopes).
    SealedMessage(SealedGroupMessage),
    /// A past message answering `HISTORY`.
    History(Delivery),
    /// A past file answering `HISTORY`.
    HistoryFile(FileStart),
    /// A file begins.
    File(FileStart),
    /// A piece of a file.
    Chunk {
        /// The file.
        at: MessageRef,
        /// Plaintext offset.
        offset: u64,
        /// The chunk's key.
        key: ContentKey,
        /// The encrypted chunk.
        body: crate::content::Body,
    },
    /// Every chunk of a file has been sent.
    FileEnd(MessageRef),
    /// The server stopped sending a file; it comes again later.
    FileAbort(MessageRef, String),
    /// The server stopped one of our uploads.
    UploadAbort(u64, String),
    /// An owner or admin invited the user to a group or removed them.
    Notice(GroupNotice),
    /// The server asks for a `PONG` with this number.
    Ping(u64),
}

/// Connects to `addr`, runs the handshake and checks the server's key
/// against `trust` (pinned under the name `addr` is written as).
pub struct Session {
    /// The reading half.
    pub reader: SessionReader,
    /// The writing half.
    pub writer: SessionWriter,
    /// On first contact with a server: where its key was pinned.
    pub pinned: Option<String>,
    /// The server key's fingerprint (checked against the trust).
    pub fingerprint: Fingerprint,
}

impl Session {
    /// Connects and runs the handshake; nothing is sent after it unless the
    /// server proved it holds a trusted key.
    pub fn connect(addr: &str, trust: &Trust) -> Result<Session, SessionError> {
        let target = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
        Session::over(stream, addr, trust)
    }

    /// Runs the handshake over a stream already connected (by a caller
    /// that chose its source address, say); `addr` names the server for
    /// pinning.
    pub fn over(stream: TcpStream, addr: &str, trust: &Trust) -> Result<Session, SessionError> {
        let stream = Arc::new(stream);
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(SharedStream(Arc::clone(&stream)));
        let mut w = SharedStream(Arc::clone(&stream));
        let keyed = handshake::client(&mut reader, &mut w)?;
        let fingerprint = Fingerprint::of(&keyed.server_key);
        let verdict =
            known_servers::check(trust, addr, &fingerprint).map_err(SessionError::Untrusted)?;
        stream.set_read_timeout(None)?;
        Ok(Session {
            reader: SessionReader {
                frames: FrameReader::new(reader, keyed.opener),
                group_keys: GroupKeys::default(),
                bye: None,
                defer_envelopes: false,
                unbundled: VecDeque::new(),
            },
            writer: SessionWriter {
                frames: FrameWriter::new(SharedStream(Arc::clone(&stream)), keyed.sealer),
            },
            pinned: match verdict {
                Verdict::Pinned(note) => Some(note),
                Verdict::Known => None,
            },
            fingerprint,
        })
    }

    /// Sends a request and reads until its reply, which comes back typed;
    /// whatever arrived before it is returned too, in order.
    pub fn request(&mut self, r: &Request) -> Result<(Reply, Vec<Incoming>), SessionError> {
        self.writer.send(r)?;
        let mut before = Vec::new();
        loop {
            match self.reader.recv()? {
                Incoming::Reply(reply) => return Ok((reply.typed(r.verb().spec().reply)?, before)),
                Incoming::Ping(n) => self.writer.send(&Request::Pong(n))?,
                other => before.push(other),
            }
        }
    }
}

/// The writing half of a session.
pub struct SessionWriter {
    frames: FrameWriter<SharedStream>,
}

impl SessionWriter {
    /// Seals a request into the write buffer (see [`flush`](Self::flush)).
    pub fn queue(&mut self, r: &Request) {
        self.frames.queue_frame(&r.to_frame());
    }

    /// Bytes sealed and not yet written.
    pub fn pending(&self) -> usize {
        self.frames.pending()
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.frames.flush()
    }

    /// Seals and writes one request.
    pub fn send(&mut self, r: &Request) -> std::io::Result<()> {
        self.queue(r);
        self.flush()
    }

    /// Writes a hand-made frame: for tests of what the server does with
    /// requests no client would send.
    pub fn send_frame(&mut self, f: &Frame) -> std::io::Result<()> {
        self.frames.write_frame(f)
    }

    /// Closes the connection (both directions).
    pub fn close(&self) {
        let _ = self.frames.get_ref().0.shutdown(Shutdown::Both);
    }

    /// The socket, to close it from another thread.
    pub fn stream(&self) -> Arc<TcpStream> {
        Arc::clone(&self.frames.get_ref().0)
    }
}

/// The reading half of a session.
pub struct SessionReader {
    frames: FrameReader<BufReader<SharedStream>>,
    group_keys: GroupKeys,
    /// The server's last `BYE` reason, reported when it closes.
    bye: Option<String>,
    /// `GMSG`s come out as [`Incoming::SealedMessage`], unopened.
    defer_envelopes: bool,
    /// The rest of a `GMSG` that carried several messages, to come out
    /// one by one.
    unbundled: VecDeque<Incoming>,
}

/// A `GMSG` whose frame was verified and whose group key is known, but
/// whose envelope (sender, time, content key) is not opened yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedGroupMessage {
    group: GroupName,
    seq: u64,
    key: ContentKey,
    body: crate::content::Body,
}

impl SealedGroupMessage {
    /// Where it sits, from the clear head: what to acknowledge.
    pub fn at(&self) -> MessageRef {
        MessageRef {
            conv: Conversation::Group(self.group.clone()),
            seq: self.seq,
        }
    }

    /// Opens the envelope, with the checks an opened `GMSG` gets.
    pub fn open(&self) -> Result<Delivery, BadServerMessage> {
        Delivery::open_group(&self.group, self.seq, &self.key, &self.body)
    }
}

impl SessionReader {
    /// The next reply or event. A clean close (after a `BYE` or not) is
    /// [`SessionError::Closed`]; a read timeout is [`SessionError::Io`]
    /// with kind `WouldBlock`/`TimedOut` and loses nothing (call again).
    pub fn recv(&mut self) -> Result<Incoming, SessionError> {
        if let Some(next) = self.unbundled.pop_front() {
            return Ok(next);
        }
        loop {
            let frame = match self.frames.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Err(SessionError::Closed(self.bye.take())),
                Err(ReadError::Io(e)) => {
                    let timeout = matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                    return match (timeout, self.bye.take()) {
                        (false, Some(why)) => Err(SessionError::Closed(Some(why))),
                        _ => Err(SessionError::Io(e)),
                    };
                }
                Err(e) => return Err(SessionError::Frame(e)),
            };
            let incoming = match ServerMessage::parse(frame)? {
                ServerMessage::Reply(r) => Incoming::Reply(r),
                ServerMessage::Msg(d) => Incoming::Message(d),
                ServerMessage::GroupMsg { key_id, seq, body } => {
                    let mut messages = self.group_messages(key_id, seq, &body)?.into_iter();
                    let Some(first) = messages.next() else {
                        continue;
                    };
                    self.unbundled.extend(messages);
                    first
                }
                ServerMessage::GroupKey { group, key_id, key } => {
                    self.group_keys.insert(group, key_id, key);
                    continue;
                }
                ServerMessage::History(d) => Incoming::History(d),
                ServerMessage::HistoryFile(f) => Incoming::HistoryFile(f),
                ServerMessage::File(f) => Incoming::File(f),
                ServerMessage::Chunk {
                    at,
                    offset,
                    key,
                    body,
                } => Incoming::Chunk {
                    at,
                    offset,
                    key,
                    body,
                },
                ServerMessage::FileEnd(at) => Incoming::FileEnd(at),
                ServerMessage::FileAbort(at, why) => Incoming::FileAbort(at, why),
                ServerMessage::UploadAbort(id, why) => Incoming::UploadAbort(id, why),
                ServerMessage::Notice(n) => Incoming::Notice(n),
                ServerMessage::Ping(n) => Incoming::Ping(n),
                ServerMessage::Bye(why) => {
                    self.bye = Some(why);
                    continue;
                }
            };
            return Ok(incoming);
        }
    }

    /// The messages of a `GMSG`: one, or several with consecutive numbers
    /// from `seq`, opened unless envelopes are deferred.
    fn group_messages(
        &self,
        key_id: u64,
        seq: u64,
        body: &crate::content::Body,
    ) -> Result<Vec<Incoming>, BadServerMessage> {
        let (group, key) = self
            .group_keys
            .get(key_id)
            .ok_or_else(|| BadServerMessage(format!("GMSG under unknown group key {key_id}")))?;
        let mut messages = Vec::new();
        for (i, body) in body.unbundle().into_iter().enumerate() {
            let seq = u64::try_from(i)
                .ok()
                .and_then(|i| seq.checked_add(i))
                .ok_or_else(|| BadServerMessage("GMSG: sequence number out of range".into()))?;
            messages.push(if self.defer_envelopes {
                Incoming::SealedMessage(SealedGroupMessage {
                    group: group.clone(),
                    seq,
                    key: key.clone(),
                    body,
                })
            } else {
                Incoming::Message(Delivery::open_group(group, seq, key, &body)?)
            });
        }
        Ok(messages)
    }

    /// From now on, live group messages come out as
    /// [`Incoming::SealedMessage`] with their envelopes shut: every frame's
    /// MAC is still verified and an unknown group key is still an error,
    /// but the 3DES of opening is left to the caller, for the messages it
    /// reads. For load generators, which acknowledge everything and read
    /// a sample; a client showing messages has no use for it.
    pub fn defer_envelopes(&mut self) {
        self.defer_envelopes = true;
    }

    /// Whether a whole frame may already be buffered (so the next
    /// [`recv`](Self::recv) may not need the socket).
    pub fn has_buffered(&self) -> bool {
        !self.unbundled.is_empty() || self.frames.has_buffered()
    }

    /// Sets how long [`recv`](Self::recv) may wait (None: for ever).
    pub fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.frames.get_ref().get_ref().0.set_read_timeout(t)
    }
}

/// The group keys this session was given, by id; a few recent ones per
/// group, so messages sealed just before a key change still open.
#[derive(Default)]
struct GroupKeys {
    by_id: HashMap<u64, (GroupName, ContentKey)>,
    recent: HashMap<GroupName, VecDeque<u64>>,
}

impl GroupKeys {
    const KEEP: usize = 4;

    fn insert(&mut self, group: GroupName, id: u64, key: ContentKey) {
        self.by_id.insert(id, (group.clone(), key));
        let ids = self.recent.entry(group).or_default();
        ids.push_back(id);
        if ids.len() > Self::KEEP {
            if let Some(old) = ids.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    fn get(&self, id: u64) -> Option<(&GroupName, &ContentKey)> {
        self.by_id.get(&id).map(|(g, k)| (g, k))
    }
}

/// Cumulative acknowledgements: per conversation, the highest sequence
/// number handled (everything before it was handled too, since a
/// conversation's messages arrive in order), and the highest already told
/// to the server.
#[derive(Debug, Default)]
pub struct Acks {
    handled: HashMap<Conversation, u64>,
    told: HashMap<Conversation, u64>,
}

impl Acks {
    /// Marks a message as handled (shown, saved, or refused for good).
    pub fn handled(&mut self, at: &MessageRef) {
        let h = self.handled.entry(at.conv.clone()).or_insert(0);
        *h = (*h).max(at.seq);
    }

    /// Whether something handled has not been told to the server yet.
    pub fn pending(&self) -> bool {
        self.handled
            .iter()
            .any(|(c, s)| self.told.get(c).is_none_or(|t| t < s))
    }

    /// The `ACK` requests that tell the server everything handled so far
    /// (one per [`MAX_ACK_REFS`] conversations), marking it told.
    pub fn take(&mut self) -> Vec<Request> {
        let mut refs: Vec<MessageRef> = Vec::new();
        for (conv, &seq) in &self.handled {
            if self.told.get(conv).is_none_or(|&t| t < seq) {
                refs.push(MessageRef {
                    conv: conv.clone(),
                    seq,
                });
                self.told.insert(conv.clone(), seq);
            }
        }
        refs.sort_by(|a, b| a.conv.cmp(&b.conv));
        refs.chunks(MAX_ACK_REFS)
            .map(|c| Request::Ack(c.to_vec()))
            .collect()
    }

    /// Forgets what was told (a new connection must be told again).
    pub fn reconnected(&mut self) {
        self.told.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_cumulative_and_sent_once() {
        let mut a = Acks::default();
        let r = |s: &str| MessageRef::parse(s).unwrap();
        a.handled(&r("#ops:3"));
        a.handled(&r("#ops:5"));
        a.handled(&r("#ops:4"));
        a.handled(&r("@bob:1"));
        assert!(a.pending());
        assert_eq!(a.take(), vec![Request::Ack(vec![r("@bob:1"), r("#ops:5")])]);
        assert!(!a.pending());
        assert!(a.take().is_empty());
        a.handled(&r("#ops:6"));
        assert_eq!(a.take(), vec![Request::Ack(vec![r("#ops:6")])]);
        a.reconnected();
        assert_eq!(a.take().len(), 1);
    }
}
