//! One client connection on the server, from handshake to close.
//!
//! A connection's reader thread runs [`serve`]: handshake, then a loop of
//! read frame -> [`Request::parse`] -> apply to [`State`] (briefly locked)
//! -> reply to this client and deliveries to others through their outboxes.
//! Anything a client can send ends, at worst, this one connection.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crate::clock::now_ms;
use crate::connection::{FrameReader, ReadError};
use crate::content::{Body, ContentKey};
use crate::event::{Delivery, ErrorCode, FileStart, Reply, ServerMessage};
use crate::names::{Conversation, Username};
use crate::password::{self, Verifier};
use crate::request::{is_unanswered, FileOffer, FileTarget, ParseError, Request, FILE_CHUNK_SIZE};
use crate::{handshake, log, tdes};

use super::outbox::{self, Outbox, Outgoing};
use super::state::{Failure, Online, SessionId};
use super::Shared;

/// The `HELP` reply: the wire syntax (the client prints its own help for
/// what people type).
const HELP: &str =
    "requests: CREATE_USER <name> <username> <password> | LOGIN <username> <password> \
| CREATE_GROUP <group> | JOIN <group> | LEAVE <group> | LIST | LOGOUT | QUIT | HELP \
| SEND <username> <content-key> +body | SEND_TO_GROUP <group>[,<group>...] <content-key> +body \
| SEND_FILE <username> <size> <sha256> <name> | SEND_TO_GROUP_FILE <groups> <size> <sha256> <name> \
| CHUNK <id> <offset> <content-key> +body | FILE_END <id> | FILE_ABORT <id>";

/// Serves one accepted connection until it closes.
pub(super) fn serve(stream: TcpStream, peer: SocketAddr, id: SessionId, shared: Arc<Shared>) {
    log!("conn {id} from {peer}: connected");
    let reason = match start(&stream, id, &shared) {
        Ok((reader, mut session)) => {
            let reason = session.run(reader);
            session.end();
            // Prefer the outbox's reason: a slow reader is closed from outside.
            session
                .outbox
                .close_reason()
                .filter(|r| r != "closing")
                .unwrap_or(reason)
        }
        Err(reason) => reason,
    };
    log!("conn {id} from {peer}: closed: {reason}");
}

fn start(
    stream: &TcpStream,
    id: SessionId,
    shared: &Arc<Shared>,
) -> Result<(FrameReader<BufReader<Timed>>, Session), String> {
    let io = |e: std::io::Error| format!("socket error: {e}");
    stream.set_nodelay(true).map_err(io)?;
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let mut reader = BufReader::new(Timed {
        stream: stream.try_clone().map_err(io)?,
        deadline: Some(deadline),
    });
    let mut writer = stream.try_clone().map_err(io)?;
    let keyed = handshake::server(&mut reader, &mut writer)
        .map_err(|e| format!("handshake failed: {e}"))?;
    reader.get_mut().deadline = None;
    stream.set_read_timeout(None).map_err(io)?;
    let outbox = outbox::spawn(writer, keyed.sealer, shared.config.outbox).map_err(io)?;
    shared.register(id, outbox.clone());
    let session = Session {
        id,
        shared: Arc::clone(shared),
        outbox,
        user: None,
        transfers: HashMap::new(),
        aborted: HashSet::new(),
    };
    Ok((FrameReader::new(reader, keyed.opener), session))
}

/// The socket's read side with an optional overall deadline: each read may
/// wait only for what is left of it, so a peer trickling one byte at a time
/// cannot stretch the handshake.
struct Timed {
    stream: TcpStream,
    deadline: Option<Instant>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake took too long",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
    }
}

/// A file being relayed from this connection's client.
struct Transfer {
    /// Who gets it: a session stays a recipient only while it is logged in
    /// as the same user.
    recipients: Vec<Online>,
    size: u64,
    /// The offset the next chunk must carry.
    next_offset: u64,
}

/// Whether to keep reading after a request.
enum Flow {
    Continue,
    Quit,
}

struct Session {
    id: SessionId,
    shared: Arc<Shared>,
    outbox: Outbox,
    user: Option<Username>,
    transfers: HashMap<u64, Transfer>,
    /// Transfers this session aborted: their in-flight chunks are dropped quietly.
    aborted: HashSet<u64>,
}

impl Session {
    fn run(&mut self, mut reader: FrameReader<BufReader<Timed>>) -> String {
        loop {
            let frame = match reader.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return "client closed the connection".into(),
                Err(ReadError::Io(e)) => return format!("read failed: {e}"),
                Err(e) => {
                    let why = e.to_string();
                    self.push(&ServerMessage::Bye(format!("protocol error: {why}")));
                    return format!("protocol error: {why}");
                }
            };
            let unanswered = is_unanswered(&frame.head);
            let flow = match Request::parse(frame) {
                Ok(request) => self.handle(request),
                Err(e) if unanswered => {
                    // No reply can carry this error without desynchronising
                    // the client's replies, so the connection ends.
                    let why = format!("protocol error: malformed chunk: {e}");
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
        self.logout();
        self.shared.unregister(self.id);
        self.outbox.finish();
    }

    fn logout(&mut self) {
        let open: Vec<u64> = self.transfers.keys().copied().collect();
        for id in open {
            self.abort_transfer(id, "sender logged out");
        }
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
        self.push(&ServerMessage::Reply(reply));
    }

    fn handle(&mut self, request: Request) -> Flow {
        let result = match request {
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
            Request::Login { username, password } => self.login(username, &password),
            Request::Chunk {
                transfer,
                offset,
                key,
                body,
            } => {
                // Chunks get no reply; only a failure is reported, as FILE_ABORT.
                self.chunk(transfer, offset, key, body);
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
        match request {
            Request::Logout => {
                self.logout();
                Ok("logged out".into())
            }
            Request::CreateGroup(g) => {
                self.shared.state().create_group(me, &g)?;
                Ok(format!("created #{g}; you are its first member"))
            }
            Request::Join(g) => {
                let n = self.shared.state().join(me, &g)?;
                Ok(format!("joined #{g} ({n} member{})", plural(n)))
            }
            Request::Leave(g) => {
                self.shared.state().leave(me, &g)?;
                Ok(format!("left #{g}"))
            }
            Request::List => Ok(self.shared.state().list(me)),
            Request::Send { to, key, body } => {
                let mut recipients = self.shared.state().user_recipients(&to)?;
                // A note to yourself reaches your other sessions, not this one.
                recipients.retain(|o| o.session != self.id);
                let id = self.shared.next_id();
                let msg = ServerMessage::Msg(Delivery {
                    id,
                    at_ms: now_ms(),
                    from: me.clone(),
                    to: Conversation::User(to.clone()),
                    key,
                    body,
                });
                let n = deliver(&recipients, &Outgoing::from(&msg));
                Ok(format!("{id} sent to {to} ({n} session{})", plural(n)))
            }
            Request::SendToGroup { groups, key, body } => {
                let targets = self.shared.state().group_recipients(me, self.id, &groups)?;
                let at_ms = now_ms();
                let mut ids = Vec::new();
                let mut total = 0;
                for (group, recipients) in targets {
                    let id = self.shared.next_id();
                    let msg = ServerMessage::Msg(Delivery {
                        id,
                        at_ms,
                        from: me.clone(),
                        to: Conversation::Group(group),
                        key: key.clone(),
                        body: body.clone(),
                    });
                    total += deliver(&recipients, &Outgoing::from(&msg));
                    ids.push(id.to_string());
                }
                let names: Vec<String> = groups.iter().map(|g| format!("#{g}")).collect();
                Ok(format!(
                    "{} sent to {} ({total} session{})",
                    ids.join(","),
                    names.join(","),
                    plural(total)
                ))
            }
            Request::SendFile(offer) => self.offer_file(me, offer),
            Request::FileEnd(id) => {
                let t = self.transfers.remove(&id).ok_or_else(|| no_transfer(id))?;
                let end = Outgoing::from(&ServerMessage::FileEnd(id));
                let n = t
                    .recipients
                    .iter()
                    .filter(|o| o.outbox.send_bulk(end.clone()).is_ok())
                    .count();
                Ok(format!("{id} file delivered to {n} session{}", plural(n)))
            }
            Request::FileAbort(id) => {
                if !self.abort_transfer(id, "sender cancelled") {
                    return Err(no_transfer(id));
                }
                Ok(format!("{id} transfer cancelled"))
            }
            Request::CreateUser { .. } | Request::Login { .. } => Err(Failure(
                ErrorCode::AlreadyLoggedIn,
                "already logged in; LOGOUT first".into(),
            )),
            // handle() answers these before checking for a login.
            Request::Help | Request::Quit | Request::Chunk { .. } => {
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
        let verifier = Verifier::new(password);
        self.shared.state().create_user(name, username, verifier)?;
        log!("conn {}: created user {username}", self.id);
        Ok(format!(
            "created user {username}; now LOGIN {username} <password>"
        ))
    }

    fn login(&mut self, username: Username, password: &str) -> Result<String, Failure> {
        if self.user.is_some() {
            return Err(Failure(
                ErrorCode::AlreadyLoggedIn,
                "already logged in; LOGOUT first".into(),
            ));
        }
        let verifier = self.shared.state().verifier(&username);
        if !password::check(verifier.as_ref(), password) {
            log!("conn {}: failed login as {username}", self.id);
            return Err(Failure(
                ErrorCode::LoginFailed,
                "wrong username or password".into(),
            ));
        }
        self.shared.state().add_session(
            &username,
            Online {
                session: self.id,
                user: username.clone(),
                outbox: self.outbox.clone(),
            },
        );
        log!("conn {}: logged in as {username}", self.id);
        let text = format!("logged in as {username}");
        self.user = Some(username);
        Ok(text)
    }

    fn offer_file(&mut self, me: &Username, offer: FileOffer) -> Result<String, Failure> {
        let max = self.shared.config.max_file_size;
        if offer.size > max {
            return Err(Failure(
                ErrorCode::TooLarge,
                format!(
                    "file is {} bytes; this server accepts at most {max}",
                    offer.size
                ),
            ));
        }
        // Each recipient session gets the file once, labelled with the first
        // listed conversation it belongs to.
        let labelled: Vec<(Conversation, Vec<Online>)> = match &offer.target {
            FileTarget::User(u) => {
                let sessions = self.shared.state().user_recipients(u)?;
                vec![(Conversation::User(u.clone()), sessions)]
            }
            FileTarget::Groups(gs) => self
                .shared
                .state()
                .group_recipients(me, self.id, gs)?
                .into_iter()
                .map(|(g, s)| (Conversation::Group(g), s))
                .collect(),
        };
        let id = self.shared.next_id();
        let at_ms = now_ms();
        let mut seen = HashSet::new();
        let mut recipients = Vec::new();
        for (to, sessions) in labelled {
            let start = Outgoing::from(&ServerMessage::File(FileStart {
                id,
                at_ms,
                from: me.clone(),
                to,
                size: offer.size,
                sha256: offer.sha256,
                name: offer.name.clone(),
            }));
            for o in sessions {
                if o.session != self.id
                    && seen.insert(o.session)
                    && o.outbox.send_bulk(start.clone()).is_ok()
                {
                    recipients.push(o);
                }
            }
        }
        let n = recipients.len();
        self.transfers.insert(
            id,
            Transfer {
                recipients,
                size: offer.size,
                next_offset: 0,
            },
        );
        Ok(format!(
            "{id} sending {} ({} bytes) to {n} session{}",
            offer.name,
            offer.size,
            plural(n)
        ))
    }

    /// Ends an open transfer, telling its recipients why. False if it was not open.
    fn abort_transfer(&mut self, id: u64, why: &str) -> bool {
        let Some(t) = self.transfers.remove(&id) else {
            return false;
        };
        self.aborted.insert(id);
        let abort = Outgoing::from(&ServerMessage::FileAbort(id, why.into()));
        for o in &t.recipients {
            let _ = o.outbox.send_bulk(abort.clone());
        }
        true
    }

    fn chunk(&mut self, id: u64, offset: u64, key: ContentKey, body: Body) {
        if self.aborted.contains(&id) {
            return;
        }
        let Some(t) = self.transfers.get_mut(&id) else {
            self.aborted.insert(id);
            self.push(&ServerMessage::FileAbort(id, "no such transfer".into()));
            return;
        };
        // Chunks are FILE_CHUNK_SIZE bytes, except a shorter last one. The
        // server sees only ciphertext, whose padded length is fixed by the
        // plaintext length, so it can check each chunk carries exactly the
        // bytes due at its offset.
        let padded = body.ciphertext_len().saturating_sub(tdes::BLOCK_LEN);
        let expected = t.size.saturating_sub(offset).min(FILE_CHUNK_SIZE as u64);
        let fits = offset == t.next_offset
            && offset < t.size
            && padded == tdes::padded_len(expected as usize);
        if !fits {
            let why = "chunk does not fit the announced size, or out of order";
            self.abort_transfer(id, why);
            self.push(&ServerMessage::FileAbort(id, why.into()));
            return;
        }
        t.next_offset = offset + expected;
        let frame = Outgoing::from(&ServerMessage::Chunk {
            id,
            offset,
            key,
            body,
        });
        // A recipient that is gone or stuck drops out; the rest carry on.
        let state = self.shared.state();
        t.recipients
            .retain(|o| state.is_online_as(&o.user, o.session));
        drop(state);
        t.recipients
            .retain(|o| o.outbox.send_bulk(frame.clone()).is_ok());
    }
}

fn deliver(recipients: &[Online], msg: &Outgoing) -> usize {
    recipients
        .iter()
        .filter(|o| o.outbox.send(msg.clone()).is_ok())
        .count()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn no_transfer(id: u64) -> Failure {
    Failure(ErrorCode::NoSuchTransfer, format!("no open transfer {id}"))
}

fn parse_failure(e: ParseError) -> Failure {
    let code = match e {
        ParseError::Empty | ParseError::UnknownCommand(_) => ErrorCode::UnknownCommand,
        ParseError::Usage(_) | ParseError::BadContent(_) => ErrorCode::Usage,
        ParseError::TooLarge => ErrorCode::TooLarge,
        ParseError::BadName(_) => ErrorCode::BadName,
    };
    Failure(code, e.to_string())
}
