//! One client connection on the server, from handshake to close.
//!
//! A connection's reader thread runs [`serve`]: the handshake, then a loop
//! of read frame -> [`Session::receive`]: [`Request::parse`] -> the checks
//! the verb table asks for (login, rate) -> [`handler::handle`]. Replies
//! keep request order even when a request's reply waits for a commit:
//! later replies queue behind it (see [`Session::reply`]). Anything a
//! client sends ends, at worst, this one connection.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, info_span, warn};

use crate::connection::{FrameReader, ReadError, SharedStream};
use crate::event::{ErrorCode, Reply, ServerMessage};
use crate::frame::Frame;
use crate::frame::Opener;
use crate::handshake;
use crate::names::Username;
use crate::request::{Access, ParseError, ReplyKind, Request, Verb};

use super::delivery::Link;
use super::handler;
use super::limits::{Place, TokenBucket};
use super::outbox::Outbox;
use super::state::{Failure, SessionId};
use super::transfer::Transfers;
use super::{CloseReason, Shared};

/// Serves one accepted connection until it closes or goes idle (then it
/// waits without a thread: see [`super::park`]).
///
/// The connection's place among its address's connections (`place`, held
/// until it logs in) is given back before the socket is closed, so a
/// client that sees the close can connect again at once.
pub(super) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: SessionId,
    shared: Arc<Shared>,
    place: Place<IpAddr>,
) {
    let span = info_span!("conn", id, %peer);
    let _entered = span.enter();
    info!("connected");
    let stream = Arc::new(stream);
    match start(&stream, peer, id, &shared) {
        Ok((reader, mut session)) => {
            session.places = Places::Address(place);
            drive(session, reader);
        }
        Err(reason) => {
            drop(place);
            info!(%reason, "closed");
        }
    }
}

/// The reading half of a connection past its handshake.
pub(super) type Reader = FrameReader<BufReader<Timed>>;

/// Runs a session on this thread until it closes, or until it has been
/// idle for the configured `park_after`: then it is handed to the parking
/// thread, and this thread ends.
pub(super) fn drive(mut session: Session, reader: Reader) {
    match session.run(reader) {
        Run::Idle(reader) => {
            let shared = Arc::clone(&session.shared);
            let (read, opener) = (*reader).into_parts();
            shared.parking.park(session, read.into_inner(), opener);
        }
        Run::Closed(reason) => close(session, reason),
    }
}

/// Resumes a parked session on this thread: its socket has something to
/// read, or (`close`) it is to be closed for that reason.
pub(super) fn resume(session: Session, stream: Timed, opener: Opener, close: Option<CloseReason>) {
    let span = info_span!("conn", id = session.id, peer = %session.peer);
    let _entered = span.enter();
    match close {
        Some(reason) => {
            let reason = session.bye(reason);
            self::close(session, reason);
        }
        None => {
            let reader = FrameReader::new(BufReader::with_capacity(READ_BUFFER, stream), opener);
            drive(session, reader);
        }
    }
}

/// Ends a session: logs out, closes the socket once its last frames are
/// written, and logs why.
fn close(mut session: Session, reason: CloseReason) {
    session.places = Places::None;
    session.end(&reason);
    // Prefer the outbox's reason: a slow reader is closed from outside.
    let reason = session
        .outbox
        .close_reason()
        .filter(|r| *r != CloseReason::Finished)
        .unwrap_or(reason);
    info!(%reason, "closed");
}

/// How a session's run on a thread ended.
pub(super) enum Run {
    /// The connection is to close, for this reason.
    Closed(CloseReason),
    /// Idle between frames, nothing buffered: park it.
    Idle(Box<Reader>),
}

/// Where a connection counts against the connection caps (the place is
/// held, not read: dropping it frees it).
#[allow(dead_code)]
pub(super) enum Places {
    /// Not logged in: among its address's connections.
    Address(Place<IpAddr>),
    /// Logged in: among its user's sessions.
    User(Place<Username>),
    /// Closing.
    None,
}

fn start(
    stream: &Arc<TcpStream>,
    peer: SocketAddr,
    id: SessionId,
    shared: &Arc<Shared>,
) -> Result<(FrameReader<BufReader<Timed>>, Session), CloseReason> {
    let io = |e: std::io::Error| CloseReason::ReadFailed(e.to_string());
    stream.set_nodelay(true).map_err(io)?;
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let mut reader = BufReader::with_capacity(
        READ_BUFFER,
        Timed {
            stream: SharedStream(Arc::clone(stream)),
            deadline: Some(deadline),
            armed: None,
        },
    );
    let mut writer: &TcpStream = stream;
    let handshake_failed = |e: handshake::HandshakeError| CloseReason::Handshake(e.to_string());
    let theirs =
        handshake::read_client_hello(&mut reader, &mut writer).map_err(handshake_failed)?;
    // A flood of handshakes from one address is refused before any
    // exponentiation.
    if !shared.handshakes.allow(peer.ip()) {
        handshake::refuse(
            &mut writer,
            "too many handshakes from your address; try again shortly",
        );
        return Err(CloseReason::Handshake(
            "too many handshakes from this address".into(),
        ));
    }
    // The exponentiations run on a worker, not on this thread's stack.
    let identity = Arc::clone(&shared.identity);
    let hello = shared
        .workers
        .run(move || {
            let secret = crate::dh::EphemeralSecret::random()?;
            Ok::<_, crate::dh::DhError>(handshake::answer(&theirs, &identity, secret))
        })
        .ok_or(CloseReason::ShuttingDown)?
        .map_err(|e| CloseReason::Handshake(e.to_string()))?;
    writer.write_all(hello.line.as_bytes()).map_err(io)?;
    let keyed = hello.keyed;
    reader.get_mut().deadline = None;
    let writer =
        crate::connection::FrameWriter::new(SharedStream(Arc::clone(stream)), keyed.sealer);
    let outbox = shared.writers.outbox(writer).map_err(io)?;
    shared.connections().insert(id, outbox.clone());
    if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        shared.connections().remove(&id);
        let _ = outbox.send(&ServerMessage::Bye(
            CloseReason::ShuttingDown.bye().unwrap_or_default(),
        ));
        outbox.finish();
        return Err(CloseReason::ShuttingDown);
    }
    let session = Session::new(id, peer, shared, outbox, keyed.bundles);
    Ok((FrameReader::new(reader, keyed.opener), session))
}

/// Frames a connection may send without being logged in (each is
/// decrypted and MAC-checked, so they are not free for the server).
pub(super) const PRE_LOGIN_FRAMES: u32 = 64;

/// Bytes buffered for reading: one line may be longer (up to the line
/// limit), but most are short, and an idle connection's buffer is memory
/// the server holds for nothing.
const READ_BUFFER: usize = 2048;

/// The socket's read side with an optional overall deadline: each read may
/// wait only for what is left of it (give or take a sixteenth), so a peer
/// trickling one byte at a time cannot stretch the handshake, or a frame,
/// past its deadline.
pub(super) struct Timed {
    stream: SharedStream,
    deadline: Option<Instant>,
    /// The receive timeout last given to the socket. Setting it is a
    /// system call, so it is set again only when what is left of the
    /// deadline has moved away from it by more than a sixteenth: a busy
    /// connection's reads then cost one call each, not two.
    armed: Option<Duration>,
}

impl Timed {
    /// The socket (for the parking thread's poll).
    pub(super) fn socket(&self) -> &TcpStream {
        &self.stream.0
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(ErrorKind::TimedOut, "took too long"));
            }
            if self.armed.is_none_or(|a| a.abs_diff(left) > left / 16) {
                self.stream.0.set_read_timeout(Some(left))?;
                self.armed = Some(left);
            }
            return self.stream.read(buf).map_err(|e| match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    std::io::Error::new(ErrorKind::TimedOut, "took too long")
                }
                _ => e,
            });
        }
        self.stream.read(buf)
    }
}

/// Whether to keep reading after a request.
pub(super) enum Flow {
    Continue,
    Close(CloseReason),
}

/// A logged-in user on this connection.
pub(super) struct Login {
    pub user: Username,
    pub link: Arc<Link>,
}

/// One connection's state, owned by its reader thread.
pub(super) struct Session {
    pub id: SessionId,
    /// The client's address (for login throttling and the log).
    pub peer: SocketAddr,
    /// Its place under the connection caps.
    pub places: Places,
    /// When the handshake finished (or the last logout): the login deadline
    /// runs from here.
    pub started: Instant,
    /// Frames read since then without being logged in.
    pre_login_frames: u32,
    /// When the last frame arrived (or the session began).
    pub last_heard: Instant,
    /// The `PING` sent and not yet answered by any frame, and when.
    pub ping: Option<(u64, Instant)>,
    /// `PING`s sent so far (their numbers).
    pings: u64,
    /// The device token (its hash) this session logged in with.
    pub device: Option<[u8; 32]>,
    /// Commands allowed per second.
    bucket: TokenBucket,
    pub shared: Arc<Shared>,
    pub outbox: Outbox,
    pub login: Option<Login>,
    pub transfers: Transfers,
    /// Requests whose reply waits for a commit. While any are in flight,
    /// later replies queue behind them (see [`Session::reply`]).
    in_flight: Arc<AtomicUsize>,
    /// Whether the client speaks the current protocol, which takes several
    /// messages in one `GMSG` (an older client gets them one by one).
    pub(super) bundles: bool,
}

impl Session {
    /// A connection just past its handshake: not logged in, its login
    /// deadline running from now; `bundles` if it speaks `MUCHAT/4`.
    fn new(
        id: SessionId,
        peer: SocketAddr,
        shared: &Arc<Shared>,
        outbox: Outbox,
        bundles: bool,
    ) -> Session {
        Session {
            id,
            peer,
            places: Places::None,
            started: Instant::now(),
            pre_login_frames: 0,
            last_heard: Instant::now(),
            ping: None,
            pings: 0,
            device: None,
            bucket: TokenBucket::new(shared.config.rate, shared.config.burst),
            shared: Arc::clone(shared),
            outbox,
            login: None,
            transfers: Transfers::default(),
            in_flight: Arc::default(),
            bundles,
        }
    }

    fn run(&mut self, mut reader: Reader) -> Run {
        let ping_after = self.ping_after();
        // When the frame being read must be whole (kept while a frame is
        // half read, so parking checks cannot stretch it).
        let mut frame_by = Instant::now() + ping_after;
        loop {
            // Before login the login deadline comes first.
            let login_by =
                (self.login.is_none()).then(|| self.started + self.shared.config.login_timeout);
            // Each frame must arrive whole within half the idle timeout, or
            // the session is pinged (and closed the second time): a peer
            // trickling bytes is as idle as a silent one.
            let now = Instant::now();
            if reader.between_frames() {
                frame_by = now + ping_after;
            }
            let ping_at = match self.ping {
                Some((_, sent)) => sent + ping_after,
                None => frame_by,
            };
            // A logged-in session silent for a while gives its thread back.
            let park_after = self.shared.config.park_after;
            let park_at =
                (self.login.is_some() && park_after < ping_after).then_some(now + park_after);
            let deadline = [login_by, park_at]
                .into_iter()
                .flatten()
                .fold(ping_at, Instant::min);
            reader.get_mut().get_mut().deadline = Some(deadline);
            let frame = match reader.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Run::Closed(CloseReason::ClientClosed),
                Err(ReadError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    let now = Instant::now();
                    if login_by.is_some_and(|l| now >= l) {
                        return Run::Closed(self.bye(CloseReason::LoginTimeout));
                    }
                    if now >= ping_at {
                        if self.ping.is_some() {
                            return Run::Closed(self.bye(CloseReason::IdleTimeout));
                        }
                        self.send_ping();
                    } else if reader.between_frames() && !reader.has_buffered() {
                        return Run::Idle(Box::new(reader));
                    }
                    continue;
                }
                Err(ReadError::Io(e)) => {
                    return Run::Closed(CloseReason::ReadFailed(e.to_string()))
                }
                Err(e) => return Run::Closed(self.bye(CloseReason::Protocol(e.to_string()))),
            };
            self.ping = None;
            self.last_heard = Instant::now();
            if self.login.is_none() {
                // Work before login is free for the peer: bounded.
                self.pre_login_frames += 1;
                if self.pre_login_frames > PRE_LOGIN_FRAMES {
                    return Run::Closed(self.bye(CloseReason::TooManyFrames));
                }
            }
            if let Flow::Close(reason) = self.receive(frame) {
                return Run::Closed(self.bye(reason));
            }
            // A client that does not read its replies stops being served
            // (its requests wait in its socket) instead of growing memory.
            if !self.outbox.wait_for_room() {
                return Run::Closed(CloseReason::TooSlow);
            }
        }
    }

    /// How long a session may be silent before it is pinged, and then
    /// before it is closed: half the idle timeout each.
    pub(super) fn ping_after(&self) -> Duration {
        (self.shared.config.idle_timeout / 2).max(Duration::from_millis(10))
    }

    /// Sends the next `PING`; the session must answer with any frame.
    pub(super) fn send_ping(&mut self) {
        self.pings += 1;
        self.ping = Some((self.pings, Instant::now()));
        let _ = self.outbox.send(&ServerMessage::Ping(self.pings));
    }

    /// Everything one opened frame from the client does past the socket:
    /// parsed, admitted by the verb table, handled. Unit tests drive a
    /// detached (`Session::detached`) session through it with frames.
    pub(super) fn receive(&mut self, frame: Frame) -> Flow {
        if frame.clear {
            return Flow::Close(CloseReason::Protocol("clear head from a client".into()));
        }
        let verb = Verb::of_head(&frame.head);
        match Request::parse(frame) {
            Ok(request) => self.admit(request),
            // No reply can carry an error about an unanswered request
            // without desynchronising the client's replies, so it ends
            // the connection.
            Err(e) if verb.is_some_and(|v| v.spec().reply == ReplyKind::Unanswered) => {
                Flow::Close(CloseReason::Protocol(format!("malformed request: {e}")))
            }
            Err(e) => {
                self.reply(parse_failure(e).into());
                Flow::Continue
            }
        }
    }

    /// A session with no connection behind it, for unit tests: its peer
    /// is 127.0.0.1 (a port made from its id) and its outbox is detached
    /// (`WriterPool::detached_outbox`), so the test takes what the server
    /// queued for it. Each gets a new id, as accepted connections do.
    #[cfg(test)]
    pub fn detached(shared: &Arc<Shared>) -> Session {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 40_000 + (n % 20_000) as u16;
        let peer = SocketAddr::from(([127, 0, 0, 1], port));
        Session::new(
            n as SessionId,
            peer,
            shared,
            shared.writers.detached_outbox(),
            true,
        )
    }

    /// Says why before closing, when the client should be told.
    pub(super) fn bye(&self, reason: CloseReason) -> CloseReason {
        if let Some(text) = reason.bye() {
            let _ = self.outbox.send(&ServerMessage::Bye(text));
        }
        reason
    }

    /// Applies the verb table's rules (login, rate), then hands the
    /// request to its handler.
    fn admit(&mut self, request: Request) -> Flow {
        let spec = request.verb().spec();
        let logged_in = self.login.is_some();
        let refusal = match (spec.access, logged_in) {
            (Access::LoggedIn, false) => Some(Failure::new(
                ErrorCode::NotLoggedIn,
                "log in first: LOGIN <username> <password>",
            )),
            (Access::LoggedOut, true) => Some(Failure::new(
                ErrorCode::AlreadyLoggedIn,
                "already logged in; LOGOUT first",
            )),
            _ => None,
        };
        if let Some(f) = refusal {
            if spec.reply == ReplyKind::Unanswered {
                return Flow::Close(CloseReason::Protocol(format!(
                    "{} before logging in",
                    spec.word
                )));
            }
            self.reply(f.into());
            return Flow::Continue;
        }
        if spec.rated {
            if let Err(wait) = self.bucket.take_at(Instant::now()) {
                let limit = self.shared.config.rate;
                self.reply(Reply::rate_limited(
                    wait,
                    &format!("at most {limit} commands per second"),
                ));
                return Flow::Continue;
            }
        }
        handler::handle(self, request)
    }

    /// Logs out and stops unfinished uploads.
    fn end(&mut self, reason: &CloseReason) {
        self.logout(&format!("sender disconnected: {reason}"));
        self.shared.connections().remove(&self.id);
        let outbox = self.outbox.clone();
        // After the replies of requests still committing.
        self.ordered(move || outbox.finish());
    }

    /// Runs `f` after every reply still waiting for a commit has been
    /// sent: now if none is, else from the store's writer behind them.
    pub fn ordered(&self, f: impl FnOnce() + Send + 'static) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return f();
        }
        let done = self.begin_commit();
        self.shared.store.then(Box::new(move |_| {
            f();
            done.finish();
        }));
    }

    /// Marks a request whose reply comes from a store completion; the
    /// completion must call [`InFlight::finish`] after queueing its reply.
    pub fn begin_commit(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// Queues a reply, after any still waiting for a commit.
    pub fn reply(&self, reply: Reply) {
        let outbox = self.outbox.clone();
        self.ordered(move || {
            let _ = outbox.send(&ServerMessage::Reply(reply));
        });
    }

    /// Ends the login, if any: the connection stops getting deliveries.
    pub fn logout(&mut self, why: &str) {
        self.transfers.abort_all(&self.shared, &self.outbox, why);
        if let Some(Login { user, link }) = self.login.take() {
            link.detach("logged out");
            let (shared, id) = (Arc::clone(&self.shared), self.id);
            // After a login still registering (its completion is in flight).
            self.ordered(move || shared.state().remove_link(&user, id));
            info!("logged out");
        }
    }

    /// Starts the login deadline and the pre-login frame budget afresh
    /// (after a logout).
    pub fn restart_login_clock(&mut self) {
        self.started = Instant::now();
        self.pre_login_frames = 0;
    }

    /// The logged-in user (the verb table guarantees one for handlers of
    /// logged-in verbs; a miss is answered, never a panic).
    pub fn user(&self) -> Result<Username, Failure> {
        self.login
            .as_ref()
            .map(|l| l.user.clone())
            .ok_or_else(|| Failure::new(ErrorCode::NotLoggedIn, "log in first"))
    }

    /// Logs a refused login with the client's address (fail2ban reads it).
    pub fn log_failed_login(&self, user: &Username) {
        warn!(user = %user, peer = %self.peer, "login failed");
    }
}

/// A reply still to come from a store completion.
#[must_use = "finish it once the reply is queued"]
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// The reply is queued: later replies may go.
    pub fn finish(self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn parse_failure(e: ParseError) -> Failure {
    let code = match e {
        ParseError::Empty | ParseError::UnknownCommand(_) => ErrorCode::UnknownCommand,
        ParseError::Usage(_) | ParseError::BadContent(_) => ErrorCode::Usage,
        ParseError::TooLarge(_) => ErrorCode::TooLarge,
        ParseError::BadName(_) => ErrorCode::BadName,
    };
    Failure(code, e.to_string())
}
