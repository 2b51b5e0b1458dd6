//! One client connection on the server, from handshake to close.
//!
//! A connection's reader thread runs [`serve`]: handshake, then a loop of
//! read frame -> [`Request::parse`] -> check against the in-memory state
//! (briefly locked) -> make the change durable in the store -> record it in
//! the state -> reply to this client and deliveries to others through their
//! outboxes. Anything a client can send ends, at worst, this one connection.

use std::io::{BufReader, ErrorKind, Read};
use std::net::IpAddr;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::clock::now_ms;
use crate::connection::{FrameReader, ReadError, SharedStream};
use crate::content::{Body, ContentKey};
use crate::event::{ErrorCode, Reply, ServerMessage};
use crate::names::{Conversation, GroupName, Username};
use crate::request::{is_unanswered, HistoryTarget, ParseError, Request};
use crate::store::{dm_key, Content, StoredMessage, UserRecord};
use crate::{handshake, log};

use super::limits::{Admission, TokenBucket};
use super::outbox::{self, Outbox, Outgoing};
use super::replay::{announce, deliver_pending};
use super::state::{group_taken, user_taken, Failure, Online, SessionId};
use super::transfer::{plural, storage, Transfers};
use super::Shared;

/// The `HELP` reply: the wire syntax (the client prints its own help for
/// what people type).
const HELP: &str =
    "requests: CREATE_USER <name> <username> <password> | LOGIN <username> <password> \
| CREATE_GROUP <group> | JOIN <group> | LEAVE <group> | LIST | LOGOUT | QUIT | HELP \
| SEND <username> <content-key> +body | SEND_TO_GROUP <group>[,<group>...] <content-key> +body \
| SEND_FILE <username> <size> <sha256> <name> | SEND_TO_GROUP_FILE <groups> <size> <sha256> <name> \
| CHUNK <id> <offset> <content-key> +body | FILE_END <id> | FILE_ABORT <id> \
| ACK <id>[,<id>...] | HISTORY <username|group> [<count>]";

/// Serves one accepted connection until it closes.
///
/// The connection's place among its address's connections (`admission`) is
/// given back before the socket is closed, so a client that sees the close
/// can connect again at once.
pub(super) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: SessionId,
    shared: Arc<Shared>,
    admission: Admission,
) {
    log!("conn {id} from {peer}: connected");
    let stream = Arc::new(stream);
    let reason = match start(&stream, id, &shared) {
        Ok((reader, mut session)) => {
            let reason = session.run(reader);
            drop(admission);
            session.end();
            // Prefer the outbox's reason: a slow reader is closed from outside.
            session
                .outbox
                .close_reason()
                .filter(|r| r != "closing")
                .unwrap_or(reason)
        }
        Err(reason) => {
            drop(admission);
            reason
        }
    };
    log!("conn {id} from {peer}: closed: {reason}");
}

fn start(
    stream: &Arc<TcpStream>,
    id: SessionId,
    shared: &Arc<Shared>,
) -> Result<(FrameReader<BufReader<Timed>>, Session), String> {
    let io = |e: std::io::Error| format!("socket error: {e}");
    stream.set_nodelay(true).map_err(io)?;
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let mut reader = BufReader::new(Timed {
        stream: SharedStream(Arc::clone(stream)),
        deadline: Some(deadline),
    });
    let mut writer: &TcpStream = stream;
    let keyed = handshake::server(&mut reader, &mut writer, &shared.identity)
        .map_err(|e| format!("handshake failed: {e}"))?;
    reader.get_mut().deadline = None;
    let outbox = outbox::spawn(
        SharedStream(Arc::clone(stream)),
        keyed.sealer,
        shared.config.outbox,
    )
    .map_err(io)?;
    shared.register(id, outbox.clone());
    let session = Session {
        id,
        peer: stream.peer_addr().map_err(io)?.ip(),
        bucket: TokenBucket::new(shared.config.rate, shared.config.burst),
        shared: Arc::clone(shared),
        outbox,
        user: None,
        transfers: Transfers::default(),
        in_flight: Arc::default(),
    };
    Ok((FrameReader::new(reader, keyed.opener), session))
}

/// The socket's read side with an optional overall deadline: each read may
/// wait only for what is left of it, so a peer trickling one byte at a time
/// cannot stretch the handshake, or a frame, past its deadline.
struct Timed {
    stream: SharedStream,
    deadline: Option<Instant>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "took too long",
                ));
            }
            self.stream.0.set_read_timeout(Some(left))?;
            return self.stream.read(buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "took too long")
                }
                _ => e,
            });
        }
        self.stream.read(buf)
    }
}

/// Whether to keep reading after a request.
enum Flow {
    Continue,
    Quit,
}

struct Session {
    id: SessionId,
    /// The client's address, for login throttling.
    peer: IpAddr,
    /// Commands allowed per second.
    bucket: TokenBucket,
    shared: Arc<Shared>,
    outbox: Outbox,
    user: Option<Username>,
    transfers: Transfers,
    /// Messages accepted but not yet committed. Their replies come from the
    /// store's writer after the commit, so while any are in flight, later
    /// replies queue behind them (see [`Session::ordered`]).
    in_flight: Arc<AtomicUsize>,
}

impl Session {
    fn run(&mut self, mut reader: FrameReader<BufReader<Timed>>) -> String {
        // The number of a PING sent and not yet answered by any frame.
        let mut ping: Option<u64> = None;
        let mut pings = 0;
        // Each frame must arrive whole within half the idle timeout, or the
        // session is pinged (and closed the second time): a peer trickling
        // bytes is as idle as a silent one.
        let ping_after = (self.shared.config.idle_timeout / 2).max(Duration::from_millis(10));
        loop {
            reader.get_mut().get_mut().deadline = Some(Instant::now() + ping_after);
            let frame = match reader.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return "client closed the connection".into(),
                Err(ReadError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    if ping.is_some() {
                        self.push(&ServerMessage::Bye("idle timeout".into()));
                        return "idle timeout: no answer to PING".into();
                    }
                    pings += 1;
                    ping = Some(pings);
                    self.push(&ServerMessage::Ping(pings));
                    continue;
                }
                Err(ReadError::Io(e)) => return format!("read failed: {e}"),
                Err(e) => {
                    let why = e.to_string();
                    self.push(&ServerMessage::Bye(format!("protocol error: {why}")));
                    return format!("protocol error: {why}");
                }
            };
            ping = None;
            let unanswered = is_unanswered(&frame.head);
            let flow = match Request::parse(frame) {
                Ok(request) => self.handle(request),
                Err(e) if unanswered => {
                    // No reply can carry this error without desynchronising
                    // the client's replies, so the connection ends.
                    let why = format!("protocol error: malformed request: {e}");
                    self.push(&ServerMessage::Bye(why.clone()));
                    return why;
                }
                Err(e) => {
                    self.reply(Err(parse_failure(e)));
                    Flow::Continue
                }
            };
            if let Flow::Quit = flow {
                return "client quit".into();
            }
        }
    }

    /// Logs out and tells file recipients about unfinished transfers.
    fn end(&mut self) {
        self.logout("sender disconnected");
        self.shared.unregister(self.id);
        let outbox = self.outbox.clone();
        // After the replies of messages still committing.
        self.ordered(move || outbox.finish());
    }

    /// Runs `f` after every reply still waiting for a commit has been sent:
    /// now if none is, else from the store's writer behind them.
    fn ordered(&self, f: impl FnOnce() + Send + 'static) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return f();
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = Arc::clone(&self.in_flight);
        self.shared.store.then(Box::new(move |_| {
            f();
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }));
    }

    /// Commits messages without blocking this connection, then (on the
    /// store's writer, in order) runs `deliver` and sends its reply.
    fn commit_then_reply(
        &self,
        batch: Vec<(StoredMessage, Vec<Username>)>,
        deliver: impl FnOnce(&Shared, &[(StoredMessage, Vec<Username>)]) -> String + Send + 'static,
    ) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = Arc::clone(&self.in_flight);
        let shared = Arc::clone(&self.shared);
        let outbox = self.outbox.clone();
        let saved = batch.clone();
        self.shared.store.save_messages_then(
            batch,
            Box::new(move |result| {
                let reply = match result {
                    Ok(()) => Reply::Ok(deliver(&shared, &saved)),
                    Err(e) => {
                        let Failure(code, text) = storage(e);
                        Reply::Err(code, text)
                    }
                };
                let _ = outbox.send(Outgoing::from(&ServerMessage::Reply(reply)));
                in_flight.fetch_sub(1, Ordering::AcqRel);
            }),
        );
    }

    fn logout(&mut self, why: &str) {
        self.transfers.abort_all(&self.shared, why);
        if let Some(user) = self.user.take() {
            self.shared.state().remove_session(&user, self.id);
            log!("conn {}: {user} logged out", self.id);
        }
    }

    fn push(&self, m: &ServerMessage) {
        let _ = self.outbox.send(Outgoing::from(m));
    }

    fn reply(&self, r: Result<String, Failure>) {
        let reply = match r {
            Ok(text) => Reply::Ok(text),
            Err(Failure(code, text)) => Reply::Err(code, text),
        };
        let frame = Outgoing::from(&ServerMessage::Reply(reply));
        let outbox = self.outbox.clone();
        self.ordered(move || {
            let _ = outbox.send(frame);
        });
    }

    fn handle(&mut self, request: Request) -> Flow {
        let counted = !matches!(
            request,
            Request::Chunk { .. } | Request::Ack(_) | Request::Pong(_)
        );
        if counted && !self.bucket.take() {
            let limit = self.shared.config.rate;
            self.reply(Err(Failure(
                ErrorCode::RateLimited,
                format!("slow down: at most {limit} commands per second"),
            )));
            return Flow::Continue;
        }
        let result = match request {
            // Any frame proves the connection is alive; nothing else to do.
            Request::Pong(_) => return Flow::Continue,
            Request::Help => Ok(HELP.to_string()),
            Request::Quit => {
                self.reply(Ok("bye".into()));
                return Flow::Quit;
            }
            Request::CreateUser {
                name,
                username,
                password,
            } => self.create_user(name, &username, &password),
            Request::Login { username, password } => {
                match self.login(&username, &password) {
                    Ok(text) => {
                        self.reply(Ok(text));
                        // After the reply, so the client sees it first.
                        let (shared, id) = (Arc::clone(&self.shared), self.id);
                        let outbox = self.outbox.clone();
                        self.ordered(move || deliver_pending(shared, username, id, outbox));
                    }
                    Err(f) => self.reply(Err(f)),
                }
                return Flow::Continue;
            }
            // Requests that get no reply.
            Request::Chunk {
                transfer,
                offset,
                key,
                body,
            } => {
                if let Some(abort) = self
                    .transfers
                    .chunk(&self.shared, transfer, offset, key, body)
                {
                    self.push(&abort);
                }
                return Flow::Continue;
            }
            Request::Ack(ids) => {
                if let Some(me) = &self.user {
                    self.shared.store.ack(me, &ids);
                }
                return Flow::Continue;
            }
            Request::Send { to, key, body } if self.user.is_some() => {
                let me = self.user.clone().expect("checked by the guard");
                if let Err(f) = self.send(&me, to, key, body) {
                    self.reply(Err(f));
                }
                return Flow::Continue;
            }
            Request::SendToGroup { groups, key, body } if self.user.is_some() => {
                let me = self.user.clone().expect("checked by the guard");
                if let Err(f) = self.send_to_groups(&me, &groups, key, body) {
                    self.reply(Err(f));
                }
                return Flow::Continue;
            }
            Request::History { with, limit } if self.user.is_some() => {
                let me = self.user.clone().expect("checked by the guard");
                if let Err(f) = self.history(&me, with, limit) {
                    self.reply(Err(f));
                }
                return Flow::Continue;
            }
            other => match self.user.clone() {
                None => Err(Failure(
                    ErrorCode::NotLoggedIn,
                    "log in first: LOGIN <username> <password>".into(),
                )),
                Some(me) => self.handle_logged_in(&me, other),
            },
        };
        self.reply(result);
        Flow::Continue
    }

    fn handle_logged_in(&mut self, me: &Username, request: Request) -> Result<String, Failure> {
        let shared = Arc::clone(&self.shared);
        match request {
            Request::Logout => {
                self.logout("sender logged out");
                Ok("logged out".into())
            }
            Request::CreateGroup(g) => {
                shared.state().check_new_group(&g)?;
                shared
                    .state()
                    .check_group_count(me, shared.config.max_groups_per_user)?;
                if !shared.store.create_group(&g, me).map_err(storage)? {
                    return Err(group_taken(&g));
                }
                shared.state().add_group(me, &g);
                Ok(format!("created #{g}; you are its first member"))
            }
            Request::Join(ref g) | Request::Leave(ref g) => {
                let join = matches!(request, Request::Join(_));
                shared.state().check_membership(me, g, !join)?;
                if join {
                    shared
                        .state()
                        .check_group_count(me, shared.config.max_groups_per_user)?;
                }
                shared.store.set_member(g, me, join).map_err(storage)?;
                let n = shared.state().set_member(me, g, join);
                Ok(if join {
                    format!("joined #{g} ({n} member{})", plural(n))
                } else {
                    format!("left #{g}")
                })
            }
            Request::List => Ok(shared.state().list(me)),
            Request::SendFile(offer) => self.transfers.offer(&shared, me, self.id, offer),
            Request::FileEnd(id) => self.transfers.end(&shared, id),
            Request::FileAbort(id) => {
                if !self.transfers.abort(&shared, id, "sender cancelled") {
                    return Err(Failure(
                        ErrorCode::NoSuchTransfer,
                        format!("no open transfer {id}"),
                    ));
                }
                Ok(format!("{id} transfer cancelled"))
            }
            Request::CreateUser { .. } | Request::Login { .. } => Err(Failure(
                ErrorCode::AlreadyLoggedIn,
                "already logged in; LOGOUT first".into(),
            )),
            // handle() answers these before checking for a login.
            Request::Help
            | Request::Quit
            | Request::Chunk { .. }
            | Request::Ack(_)
            | Request::Pong(_)
            | Request::Send { .. }
            | Request::SendToGroup { .. }
            | Request::History { .. } => {
                Err(Failure(ErrorCode::Usage, "unexpected request".into()))
            }
        }
    }

    fn create_user(
        &mut self,
        name: String,
        username: &Username,
        password: &str,
    ) -> Result<String, Failure> {
        if self.user.is_some() {
            return Err(Failure(
                ErrorCode::AlreadyLoggedIn,
                "already logged in; LOGOUT first".into(),
            ));
        }
        self.shared.state().check_new_user(username)?;
        // The slow hash runs without any lock held.
        let verifier = self.shared.passwords.hash(password).map_err(|e| {
            log!("conn {}: {e}", self.id);
            Failure(
                ErrorCode::Storage,
                "could not secure the password; try again".into(),
            )
        })?;
        let record = UserRecord {
            username: username.clone(),
            name,
            verifier,
        };
        if !self.shared.store.create_user(&record).map_err(storage)? {
            return Err(user_taken(username));
        }
        self.shared.state().add_account(&record);
        log!("conn {}: created user {username}", self.id);
        Ok(format!(
            "created user {username}; now LOGIN {username} <password>"
        ))
    }

    fn login(&mut self, username: &Username, password: &str) -> Result<String, Failure> {
        if self.user.is_some() {
            return Err(Failure(
                ErrorCode::AlreadyLoggedIn,
                "already logged in; LOGOUT first".into(),
            ));
        }
        // Repeated failures make each further attempt wait (same wait, same
        // reply, whether or not the account exists).
        let attempt = self.shared.throttle.begin(username, self.peer);
        if !attempt.wait.is_zero() {
            std::thread::sleep(attempt.wait);
        }
        let verifier = self.shared.state().verifier(username);
        if !self.shared.passwords.check(verifier.as_deref(), password) {
            self.shared.throttle.failed(username, self.peer, attempt);
            log!("conn {}: failed login as {username}", self.id);
            return Err(Failure(
                ErrorCode::LoginFailed,
                "wrong username or password".into(),
            ));
        }
        self.shared.throttle.succeeded(username, self.peer, attempt);
        self.shared.state().add_session(
            username,
            Online {
                session: self.id,
                user: username.clone(),
                outbox: self.outbox.clone(),
            },
        );
        log!("conn {}: logged in as {username}", self.id);
        self.user = Some(username.clone());
        Ok(format!("logged in as {username}"))
    }

    /// A direct message: committed (pending for the recipient) before the
    /// OK, then delivered to the recipient's live sessions.
    fn send(
        &self,
        me: &Username,
        to: Username,
        key: ContentKey,
        body: Body,
    ) -> Result<(), Failure> {
        self.shared.state().check_user(&to)?;
        let message = StoredMessage {
            id: self.shared.next_id(),
            at_ms: now_ms(),
            from: me.clone(),
            to: Conversation::User(to.clone()),
            content: Content::Text { key, body },
        };
        let session = self.id;
        self.commit_then_reply(vec![(message, vec![to.clone()])], move |shared, saved| {
            let message = &saved[0].0;
            // A note to yourself reaches your other sessions, not this one.
            let sessions = shared.state().sessions_of([&to], session);
            let n = deliver(&sessions, &Outgoing::from(&announce(message, false)));
            format!(
                "{} sent to {to} ({n} live session{})",
                message.id,
                plural(n)
            )
        });
        Ok(())
    }

    /// One message per listed group, committed together before the OK.
    fn send_to_groups(
        &self,
        me: &Username,
        groups: &[GroupName],
        key: ContentKey,
        body: Body,
    ) -> Result<(), Failure> {
        let targets = self.shared.state().group_members(me, groups)?;
        let at_ms = now_ms();
        let batch: Vec<(StoredMessage, Vec<Username>)> = targets
            .into_iter()
            .map(|(group, members)| {
                let message = StoredMessage {
                    id: self.shared.next_id(),
                    at_ms,
                    from: me.clone(),
                    to: Conversation::Group(group),
                    content: Content::Text {
                        key: key.clone(),
                        body: body.clone(),
                    },
                };
                (message, members)
            })
            .collect();
        let names: Vec<String> = groups.iter().map(|g| format!("#{g}")).collect();
        let (me, session) = (me.clone(), self.id);
        self.commit_then_reply(batch, move |shared, saved| {
            let mut total = 0;
            for (message, members) in saved {
                let ServerMessage::Msg(delivery) = announce(message, false) else {
                    continue;
                };
                let Conversation::Group(group) = &delivery.to else {
                    continue;
                };
                let (sessions, key) = {
                    let mut state = shared.state();
                    // The sender's other sessions see the group message too.
                    let sessions = state.sessions_of(members.iter().chain([&me]), session);
                    (sessions, state.group_key(group, delivery.envelope_blocks()))
                };
                // The envelope is sealed once; each recipient's frame adds
                // only a one-block head and a MAC.
                let frame = match key {
                    Some(k) => ServerMessage::GroupMsg {
                        key_id: k.id,
                        body: delivery.seal_for_group(&k.key),
                    },
                    None => ServerMessage::Msg(delivery),
                };
                total += deliver(&sessions, &Outgoing::from(&frame));
            }
            let ids: Vec<String> = saved.iter().map(|(m, _)| m.id.to_string()).collect();
            format!(
                "{} sent to {} ({total} live session{})",
                ids.join(","),
                names.join(","),
                plural(total)
            )
        });
        Ok(())
    }

    /// Sends the last `limit` messages of a conversation as `HIST` events,
    /// then the reply; fails early if the caller may not see it.
    fn history(&self, me: &Username, with: HistoryTarget, limit: usize) -> Result<(), Failure> {
        let key = {
            let state = self.shared.state();
            let group_key = |g: &GroupName| -> Result<String, Failure> {
                state.check_membership(me, g, true)?;
                Ok(format!("#{g}"))
            };
            let user_key = |u: &Username| -> Result<String, Failure> {
                state.check_user(u)?;
                Ok(dm_key(me, u))
            };
            match &with {
                HistoryTarget::User(u) => user_key(u)?,
                HistoryTarget::Group(g) => group_key(g)?,
                HistoryTarget::Either(name) => {
                    // Validated by the parser; both name types share the rules.
                    let (u, g) = (Username::parse(name), GroupName::parse(name));
                    match (u, g) {
                        (_, Ok(g)) if state.is_member(me, &g) => group_key(&g)?,
                        (Ok(u), _) if state.user_exists(&u) => user_key(&u)?,
                        (_, Ok(g)) if state.group_exists(&g) => group_key(&g)?,
                        _ => {
                            return Err(Failure(
                                ErrorCode::UnknownUser,
                                format!("no user or group named {name}"),
                            ))
                        }
                    }
                }
            }
        };
        // Behind messages still committing, so they are included and the
        // earlier replies come first.
        let (shared, outbox) = (Arc::clone(&self.shared), self.outbox.clone());
        self.ordered(move || {
            let reply = match shared.store.history(&key, limit) {
                Ok(messages) => {
                    for m in &messages {
                        let _ = outbox.send(Outgoing::from(&announce(m, true)));
                    }
                    let n = messages.len();
                    Reply::Ok(format!("{n} message{} with {with}", plural(n)))
                }
                Err(e) => {
                    let Failure(code, text) = storage(e);
                    Reply::Err(code, text)
                }
            };
            let _ = outbox.send(Outgoing::from(&ServerMessage::Reply(reply)));
        });
        Ok(())
    }
}

fn deliver(recipients: &[Online], msg: &Outgoing) -> usize {
    recipients
        .iter()
        .filter(|o| o.outbox.send(msg.clone()).is_ok())
        .count()
}

fn parse_failure(e: ParseError) -> Failure {
    let code = match e {
        ParseError::Empty | ParseError::UnknownCommand(_) => ErrorCode::UnknownCommand,
        ParseError::Usage(_) | ParseError::BadContent(_) => ErrorCode::Usage,
        ParseError::TooLarge { .. } => ErrorCode::TooLarge,
        ParseError::BadName(_) => ErrorCode::BadName,
    };
    Failure(code, e.to_string())
}
