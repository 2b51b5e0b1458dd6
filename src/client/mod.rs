//! The terminal client's engine, as a library: used by the `client` binary
//! (REPL and scripts) and by the tests.
//!
//! [`Client::connect`] opens a protocol [`Session`] and runs it on two
//! threads:
//!
//! * a **writer** that sends requests from two queues, commands first and
//!   file chunks second, so chat is never stuck behind an upload. Before
//!   writing a request it records where the reply should go (replies come
//!   in request order);
//! * a **reader** that hands replies to their callers and turns everything
//!   else into [`ClientEvent`]s: message texts decrypted, files written
//!   into the downloads directory by [`downloads::Downloads`]. A message
//!   already shown (the server delivers at least once) is dropped using
//!   [`seen::Seen`], which survives restarts; what has been handled is
//!   acknowledged cumulatively, at most every [`ACK_EVERY`].
//!
//! With [`ClientConfig::reconnect`], a lost connection is reopened with
//! backoff, the user logged back in, and sends that got no reply are sent
//! again with their original send ids (the server recognises a repeat and
//! answers with the original reply), so a send is stored once whatever
//! happens to the connection.

pub mod audio;
pub mod chat;
pub mod display;
pub mod downloads;
pub mod json;
pub mod known_servers;
pub mod progress;
pub mod repl;
pub mod script;
pub mod seen;
pub mod session;
pub mod tui;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select_biased, unbounded, Receiver, Sender};
use sha2::{Digest, Sha256};

use crate::command::Command;
use crate::content::{Body, ContentKey};
use crate::event::{Delivery, GroupNotice, Reply, ReplyData};
use crate::identity::Fingerprint;
use crate::names::{GroupName, MessageRef, Username};
use crate::request::{
    DeviceToken, FileOffer, FileTarget, Request, SendId, Voice, FILE_CHUNK_SIZE, MAX_MESSAGE_LEN,
};

use downloads::Downloads;
pub use known_servers::Trust;
use progress::{Meter, Progress};
use seen::Seen;
use session::{Acks, Incoming, Session, SessionError, SessionReader, SessionWriter};

/// How long handled messages may wait before they are acknowledged.
pub const ACK_EVERY: Duration = Duration::from_millis(200);

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or the handshake failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A local file operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The connection is gone; carries the reason.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// Refused locally before sending (e.g. a message over the size limit).
    #[error("{0}")]
    Refused(String),
}

/// Something that happened on the connection, other than a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message, decrypted.
    Message {
        /// Its conversation and place in it.
        at: MessageRef,
        /// Server time, Unix milliseconds.
        at_ms: u64,
        /// Sender (possibly you, from another of your sessions).
        from: Username,
        /// The text (untrusted: sanitise before printing).
        text: String,
        /// A past message answering `HISTORY`, not a new one.
        history: bool,
    },
    /// A past file answering `HISTORY` (its content is not resent).
    HistoryFile {
        /// Its conversation and place in it.
        at: MessageRef,
        /// Server time it was sent.
        at_ms: u64,
        /// Sender.
        from: Username,
        /// The sender's name for it (untrusted).
        name: String,
        /// Size in bytes.
        size: u64,
        /// Set for a voice note: its length and format.
        voice: Option<Voice>,
    },
    /// A message whose content could not be decrypted.
    BadMessage {
        /// Its conversation and place in it.
        at: MessageRef,
        /// Sender.
        from: Username,
        /// What was wrong.
        reason: String,
    },
    /// Progress of an incoming file of 1 MiB or more, each tenth.
    FileProgress {
        /// The file.
        at: MessageRef,
        /// Safe file name.
        name: String,
        /// Bytes so far, of how many, in how long.
        progress: Progress,
    },
    /// Progress of one of our uploads of 1 MiB or more, each tenth.
    UploadProgress {
        /// Transfer id.
        id: u64,
        /// Local path being sent.
        path: PathBuf,
        /// Bytes queued for the server so far, of how many, in how long.
        progress: Progress,
    },
    /// A file arrived complete and verified.
    FileReceived {
        /// Its conversation and place in it.
        at: MessageRef,
        /// Server time the file was stored.
        at_ms: u64,
        /// Sender.
        from: Username,
        /// Where it was saved (inside the downloads directory).
        path: PathBuf,
        /// Size in bytes.
        size: u64,
        /// Its SHA-256 (checked).
        sha256: [u8; 32],
        /// Set for a voice note: its length and format.
        voice: Option<Voice>,
    },
    /// An incoming file failed; nothing was kept.
    FileFailed {
        /// The file.
        at: MessageRef,
        /// Why.
        reason: String,
    },
    /// One of our uploads finished.
    FileSent {
        /// Transfer id.
        id: u64,
        /// Local path sent.
        path: PathBuf,
        /// The server's final reply.
        reply: Reply,
    },
    /// One of our uploads failed.
    FileSendFailed {
        /// Transfer id.
        id: u64,
        /// Local path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An owner or admin invited the user to a private group (`JOIN` it
    /// to follow it) or removed them from a group.
    Notice(GroupNotice),
    /// The connection dropped; the client tries again after `retry_in`.
    ConnectionLost {
        /// Why it dropped.
        reason: String,
        /// When the next attempt is.
        retry_in: Duration,
    },
    /// The connection is back (and the user logged in again, if they were).
    Reconnected,
    /// The connection ended for good.
    Disconnected(String),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where received files are saved.
    pub downloads: PathBuf,
    /// Which server keys to trust.
    pub trust: Trust,
    /// Where to remember what was shown (None: remember nothing).
    pub state_dir: Option<PathBuf>,
    /// Whether to reconnect (with backoff) when the connection drops.
    pub reconnect: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            downloads: PathBuf::from("downloads"),
            trust: Trust::default(),
            state_dir: None,
            reconnect: false,
        }
    }
}

/// A request to send, and where its reply goes (none for chunks and acks).
struct Outbound {
    request: Request,
    reply: Option<Sender<Result<Reply, ClientError>>>,
}

impl Outbound {
    /// Whether it may be sent again after a reconnect: a send with a send
    /// id is recognised by the server if it was stored the first time.
    fn retryable(&self) -> bool {
        matches!(
            self.request,
            Request::Send { .. } | Request::SendToGroup { .. }
        )
    }
}

/// One connection's replies still to come, in request order.
#[derive(Default)]
struct Waiters {
    queue: VecDeque<Outbound>,
    closed: bool,
}

/// Outgoing transfers by id, each with the reason the server aborted it
/// (set by the reader, checked by the upload between chunks).
type Uploads = Mutex<HashMap<u64, Arc<Mutex<Option<String>>>>>;

/// What the client's threads share.
struct Inner {
    addr: String,
    config: ClientConfig,
    commands: Sender<Outbound>,
    commands_rx: Receiver<Outbound>,
    bulk: Sender<Outbound>,
    bulk_rx: Receiver<Outbound>,
    events: Sender<ClientEvent>,
    /// The current connection's socket (to close it).
    stream: Mutex<Option<Arc<TcpStream>>>,
    closing: AtomicBool,
    /// Set once the client has given up: nothing queued will be sent.
    gone: AtomicBool,
    /// Who to log in as again after a reconnect, with this device's token.
    credentials: Mutex<Option<(Username, DeviceToken)>>,
    /// Sends that got no reply before the connection dropped.
    resend: Mutex<Vec<Outbound>>,
    uploads: Uploads,
    /// Outgoing transfers still running.
    sending: AtomicUsize,
    /// What was shown, per conversation (per logged-in user).
    seen: Mutex<Seen>,
    /// What was handled and is still to be acknowledged (the reader adds,
    /// a closing client flushes).
    acks: Mutex<Acks>,
    /// Voice notes received, by message, for `PLAY`.
    received: Mutex<HashMap<MessageRef, PathBuf>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connected client.
pub struct Client {
    inner: Arc<Inner>,
    events: Receiver<ClientEvent>,
    pinned: Option<String>,
    fingerprint: Fingerprint,
    /// The thread that reads (and reconnects); joined on drop, so partial
    /// downloads are cleaned up before the process can exit.
    runner: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Connects to `addr` (`host:port`), runs the handshake, and checks the
    /// server's key against `config.trust` before anything is sent.
    pub fn connect(
        addr: impl std::fmt::Display,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let addr = addr.to_string();
        let session = Session::connect(&addr, &config.trust)?;
        let (commands, commands_rx) = unbounded();
        let (bulk, bulk_rx) = bounded(4);
        let (events_tx, events) = unbounded();
        let inner = Arc::new(Inner {
            addr,
            commands,
            commands_rx,
            bulk,
            bulk_rx,
            events: events_tx,
            stream: Mutex::new(None),
            closing: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            credentials: Mutex::new(None),
            resend: Mutex::new(Vec::new()),
            uploads: Mutex::new(HashMap::new()),
            sending: AtomicUsize::new(0),
            seen: Mutex::new(Seen::in_memory()),
            acks: Mutex::new(Acks::default()),
            received: Mutex::new(HashMap::new()),
            config,
        });
        let pinned = session.pinned.clone();
        let fingerprint = session.fingerprint.clone();
        // Before the reader starts, so a close right away finds the socket.
        *lock(&inner.stream) = Some(session.writer.stream());
        let runner = Arc::clone(&inner);
        let runner = std::thread::Builder::new()
            .name("client-reader".into())
            .spawn(move || runner.run(session))?;
        Ok(Client {
            inner,
            events,
            pinned,
            fingerprint,
            runner: Some(runner),
        })
    }

    /// The server key's fingerprint, as pinned.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// On first contact with a server, a note saying its key was pinned and
    /// where (to show the user).
    pub fn first_use_note(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    /// Events in arrival order. Ends with [`ClientEvent::Disconnected`].
    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }

    /// Sends one request and waits for its typed reply.
    pub fn request(&self, request: &Request) -> Result<Reply, ClientError> {
        let mut request = request.clone();
        match &mut request {
            Request::Login {
                username, token, ..
            } => {
                // Before the request goes: the user's backlog follows the
                // reply at once, and must meet the record of what was shown.
                self.use_record_of(username);
                // This device's token spares it the account's throttling.
                if token.is_none() {
                    *token = self.stored_token(username);
                }
            }
            // What was handled is acknowledged while it still counts.
            Request::Logout => self.inner.flush_acks(),
            _ => {}
        }
        let reply = self.submit(&self.inner.commands, request.clone())?;
        match (&request, &reply) {
            (
                Request::Login { username, .. } | Request::Resume { username, .. },
                Reply::Ok {
                    data: ReplyData::Token(token),
                    ..
                },
            ) => {
                self.store_token(username, token);
                *lock(&self.inner.credentials) = Some((username.clone(), token.clone()));
            }
            (Request::Logout, _) => {
                if let Some((user, _)) = lock(&self.inner.credentials).take() {
                    if let Some(path) = self.token_path(&user) {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            _ => {}
        }
        Ok(reply)
    }

    /// Where this device's token for `user` is kept (None: no state dir).
    fn token_path(&self, user: &Username) -> Option<PathBuf> {
        let dir = self.inner.config.state_dir.as_ref()?;
        Some(seen::user_dir(dir, &self.inner.addr, user).join("device_token"))
    }

    fn stored_token(&self, user: &Username) -> Option<DeviceToken> {
        if let Some((u, t)) = lock(&self.inner.credentials).as_ref() {
            if u == user {
                return Some(t.clone());
            }
        }
        let text = std::fs::read_to_string(self.token_path(user)?).ok()?;
        DeviceToken::parse(text.trim())
    }

    /// Keeps the token, readable by this user only.
    fn store_token(&self, user: &Username, token: &DeviceToken) {
        let Some(path) = self.token_path(user) else {
            return;
        };
        let write = || -> io::Result<()> {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            writeln!(f, "{token}")?;
            drop(f);
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot keep the device token in {}: {e}", path.display());
        }
    }

    fn submit(&self, queue: &Sender<Outbound>, request: Request) -> Result<Reply, ClientError> {
        let (tx, rx) = bounded(1);
        self.inner.enqueue(
            queue,
            Outbound {
                request,
                reply: Some(tx),
            },
        )?;
        self.inner.wait(&rx)
    }

    /// Switches to `user`'s record of shown messages (kept in the state
    /// directory, if there is one).
    fn use_record_of(&self, user: &Username) {
        let seen = match &self.inner.config.state_dir {
            Some(dir) => Seen::load(&seen::user_dir(dir, &self.inner.addr, user)),
            None => Seen::in_memory(),
        };
        let mut current = lock(&self.inner.seen);
        let _ = current.save();
        *current = seen;
    }

    /// Encrypts `text` under a fresh content key and sends it to a user.
    pub fn send_text(&self, to: &Username, text: &str) -> Result<Reply, ClientError> {
        let (key, body) = seal_text(text)?;
        self.request(&Request::Send {
            to: to.clone(),
            send_id: SendId::random(),
            key,
            body,
        })
    }

    /// Encrypts `text` once and sends it to one or more groups.
    pub fn send_group_text(&self, groups: &[GroupName], text: &str) -> Result<Reply, ClientError> {
        let (key, body) = seal_text(text)?;
        self.request(&Request::SendToGroup {
            groups: groups.to_vec(),
            send_id: SendId::random(),
            key,
            body,
        })
    }

    /// Announces a local file and, once the server accepts it, streams it in
    /// the background. Returns the server's reply to the announcement; the
    /// upload's end arrives as [`ClientEvent::FileSent`] or
    /// [`ClientEvent::FileSendFailed`].
    pub fn send_file(&self, target: FileTarget, path: &Path) -> Result<Reply, ClientError> {
        self.send_file_as(target, path, None)
    }

    /// [`send_file`](Self::send_file) for a voice note: the file is
    /// checked to be audio first (a text file renamed `.wav` is refused
    /// here, before anything is sent), and its length and format go with
    /// the announcement.
    pub fn send_voice(&self, target: FileTarget, path: &Path) -> Result<Reply, ClientError> {
        let voice = audio::inspect(path).map_err(|e| ClientError::Refused(e.to_string()))?;
        self.send_file_as(target, path, Some(voice))
    }

    fn send_file_as(
        &self,
        target: FileTarget,
        path: &Path,
        voice: Option<Voice>,
    ) -> Result<Reply, ClientError> {
        let (size, sha256) = hash_file(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "file".into());
        // Names with control characters are refused by the server; send a clean one.
        let name: String = name
            .chars()
            .map(|c| if c.is_control() { '_' } else { c })
            .collect();
        let reply = self.request(&Request::SendFile(FileOffer {
            target,
            send_id: SendId::random(),
            size,
            sha256,
            name,
            voice,
        }))?;
        let Reply::Ok {
            data: ReplyData::Transfer(id),
            ..
        } = reply
        else {
            return Ok(reply);
        };
        self.inner.sending.fetch_add(1, Ordering::SeqCst);
        let aborted = Arc::new(Mutex::new(None));
        lock(&self.inner.uploads).insert(id, Arc::clone(&aborted));
        let job = Upload {
            id,
            aborted,
            inner: Arc::clone(&self.inner),
            path: path.to_path_buf(),
            size,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("upload-{id}"))
            .spawn(move || job.run());
        if let Err(e) = spawned {
            self.inner.sending.fetch_sub(1, Ordering::SeqCst);
            return Err(ClientError::Io(e));
        }
        Ok(reply)
    }

    /// Runs one typed command. `HELP` is answered locally.
    pub fn execute(&self, command: &Command) -> Result<Reply, ClientError> {
        match command {
            Command::Help => Ok(Reply::ok(crate::command::help())),
            Command::Plain(r) => self.request(r),
            Command::Send { to, text } => self.send_text(to, text),
            Command::SendToGroup { groups, text } => self.send_group_text(groups, text),
            Command::SendFile { target, path } => self.send_file(target.clone(), path),
            Command::SendVoice { target, path } => self.send_voice(target.clone(), path),
            Command::Record { target, secs } => self.record(target.clone(), *secs),
            Command::Play(at) => self.play(at),
            Command::NeedsPassword { username, .. } => Err(ClientError::Refused(format!(
                "a password is needed for {username}: give it after the username"
            ))),
        }
    }

    /// Records `secs` seconds from the microphone (the system's recorder)
    /// into the downloads directory and sends it as a voice note.
    pub fn record(&self, target: FileTarget, secs: u64) -> Result<Reply, ClientError> {
        let dir = &self.inner.config.downloads;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("voice-{}.wav", crate::clock::now_ms()));
        // The recording is checked (and measured) as it is made.
        let voice = audio::record(&path, secs).map_err(|e| ClientError::Refused(e.to_string()))?;
        self.send_file_as(target, &path, Some(voice))
    }

    /// Plays a voice note received on this client (the system's player).
    pub fn play(&self, at: &MessageRef) -> Result<Reply, ClientError> {
        let path = lock(&self.inner.received).get(at).cloned().ok_or_else(|| {
            ClientError::Refused(format!(
                "no voice note {at} was received here; HISTORY shows past ones, which are not kept"
            ))
        })?;
        audio::play(&path).map_err(|e| ClientError::Refused(e.to_string()))?;
        Ok(Reply::ok(format!("played {}", path.display())))
    }

    /// [`execute`](Self::execute), sending the command again after the
    /// wait a `RATE_LIMITED` reply names (such a command was not carried
    /// out), for up to `max_wait` in all. `wait` spends each wait (and may
    /// print events meanwhile); its error ends the retrying.
    pub fn execute_patiently<E>(
        &self,
        command: &Command,
        max_wait: Duration,
        mut wait: impl FnMut(Duration) -> Result<(), E>,
    ) -> Result<Result<Reply, ClientError>, E> {
        let started = std::time::Instant::now();
        loop {
            let result = self.execute(command);
            match result.as_ref().ok().and_then(Reply::retry_after) {
                Some(w) if started.elapsed() + w <= max_wait => wait(w)?,
                _ => return Ok(result),
            }
        }
    }

    /// Outgoing transfers still running.
    pub fn transfers_in_progress(&self) -> usize {
        self.inner.sending.load(Ordering::SeqCst)
    }

    /// Closes the connection for good, politely: what was handled is
    /// acknowledged first and the server is told (`QUIT`), so nothing
    /// already shown comes again; a server that does not answer within a
    /// moment is simply cut off.
    pub fn close(&self) {
        if self.inner.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        if !self.inner.gone.load(Ordering::SeqCst) {
            self.inner.flush_acks();
            let (tx, rx) = bounded(1);
            let quit = Outbound {
                request: Request::Quit,
                reply: Some(tx),
            };
            if self.inner.commands.send(quit).is_ok() {
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
        }
        if let Some(s) = lock(&self.inner.stream).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
        if let Some(t) = self.runner.take() {
            let _ = t.join();
        }
    }
}

/// Encrypts a message text once, under a fresh content key.
fn seal_text(text: &str) -> Result<(ContentKey, Body), ClientError> {
    if text.len() > MAX_MESSAGE_LEN {
        return Err(ClientError::Refused(crate::request::message_too_long()));
    }
    let key = ContentKey::random();
    let body = key.seal(text.as_bytes());
    Ok((key, body))
}

/// Size and SHA-256 of a local file, read once before sending.
fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), ClientError> {
    let mut f = File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        )));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hasher.finalize().into()))
}

/// One outgoing file being streamed.
struct Upload {
    id: u64,
    /// Set by the reader if the server aborts this transfer.
    aborted: Arc<Mutex<Option<String>>>,
    inner: Arc<Inner>,
    path: PathBuf,
    size: u64,
}

impl Upload {
    fn run(self) {
        let event = match self.stream() {
            Ok(reply) if reply.is_ok() => ClientEvent::FileSent {
                id: self.id,
                path: self.path.clone(),
                reply,
            },
            // The server refused to store it: a failure, with its reason.
            Ok(Reply::Err { code, text }) => ClientEvent::FileSendFailed {
                id: self.id,
                path: self.path.clone(),
                reason: format!("{code} {text}"),
            },
            Ok(reply) => ClientEvent::FileSent {
                id: self.id,
                path: self.path.clone(),
                reply,
            },
            Err(reason) => ClientEvent::FileSendFailed {
                id: self.id,
                path: self.path.clone(),
                reason,
            },
        };
        lock(&self.inner.uploads).remove(&self.id);
        let _ = self.inner.events.send(event);
        self.inner.sending.fetch_sub(1, Ordering::SeqCst);
    }

    fn abort_reason(&self) -> Option<String> {
        lock(&self.aborted).clone()
    }

    fn stream(&self) -> Result<Reply, String> {
        let gone = || "connection closed".to_string();
        let mut f = File::open(&self.path).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; FILE_CHUNK_SIZE];
        let mut offset = 0u64;
        let mut meter = Meter::new(self.size);
        while offset < self.size {
            if let Some(why) = self.abort_reason() {
                return Err(format!("server stopped the upload: {why}"));
            }
            let want = FILE_CHUNK_SIZE.min((self.size - offset) as usize);
            if let Err(e) = f.read_exact(&mut buf[..want]) {
                // The file shrank or failed since it was hashed: cancel.
                let _ = self.inner.enqueue(
                    &self.inner.bulk,
                    Outbound {
                        request: Request::FileAbort(self.id),
                        reply: None,
                    },
                );
                return Err(format!("reading {}: {e}", self.path.display()));
            }
            let key = ContentKey::random();
            let body = key.seal(&buf[..want]);
            let request = Request::Chunk {
                transfer: self.id,
                offset,
                key,
                body,
            };
            self.inner
                .enqueue(
                    &self.inner.bulk,
                    Outbound {
                        request,
                        reply: None,
                    },
                )
                .map_err(|_| gone())?;
            offset += want as u64;
            if let Some(progress) = meter.update(offset) {
                let _ = self.inner.events.send(ClientEvent::UploadProgress {
                    id: self.id,
                    path: self.path.clone(),
                    progress,
                });
            }
        }
        if let Some(why) = self.abort_reason() {
            return Err(format!("server stopped the upload: {why}"));
        }
        // The end goes through the same queue as the chunks, so it follows them.
        let (tx, rx) = bounded(1);
        self.inner
            .enqueue(
                &self.inner.bulk,
                Outbound {
                    request: Request::FileEnd(self.id),
                    reply: Some(tx),
                },
            )
            .map_err(|_| gone())?;
        self.inner.wait(&rx).map_err(|e| e.to_string())
    }
}

impl Inner {
    /// Queues a request for the writer (waiting for room in the bounded
    /// chunk queue); fails once the client has given up.
    fn enqueue(&self, queue: &Sender<Outbound>, mut o: Outbound) -> Result<(), ClientError> {
        loop {
            if self.gone.load(Ordering::SeqCst) {
                return Err(ClientError::Disconnected("connection closed".into()));
            }
            match queue.send_timeout(o, Duration::from_millis(100)) {
                Ok(()) => return Ok(()),
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => o = back,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                    return Err(ClientError::Disconnected("connection closed".into()))
                }
            }
        }
    }

    /// Waits for a reply; fails once the client has given up.
    fn wait(&self, rx: &Receiver<Result<Reply, ClientError>>) -> Result<Reply, ClientError> {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => return r,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.gone.load(Ordering::SeqCst) {
                        // A reply queued just before giving up still counts.
                        return rx.try_recv().unwrap_or_else(|_| {
                            Err(ClientError::Disconnected(
                                "connection closed before the reply".into(),
                            ))
                        });
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(ClientError::Disconnected(
                        "connection closed before the reply".into(),
                    ))
                }
            }
        }
    }

    /// Runs connections until the client closes or gives up: reads the
    /// current one, and on a drop reconnects (if configured) with backoff.
    fn run(self: Arc<Self>, first: Session) {
        let mut session = Some(first);
        let mut downloads = Downloads::new(self.config.downloads.clone());
        let mut backoff = Duration::from_millis(250);
        // Why the last attempt to reconnect failed.
        let mut failed: Option<String> = None;
        loop {
            let reason = match session.take() {
                Some(s) => {
                    backoff = Duration::from_millis(250);
                    self.serve(s, &mut downloads)
                }
                None => failed.take().map_or("cannot reconnect".into(), |e| {
                    format!("cannot reconnect: {e}")
                }),
            };
            downloads.abandon_all();
            let give_up = !self.config.reconnect || self.closing.load(Ordering::SeqCst);
            if give_up {
                self.fail_resends(&reason);
                break self.finish(reason);
            }
            let _ = self.events.send(ClientEvent::ConnectionLost {
                reason: reason.clone(),
                retry_in: backoff,
            });
            self.sleep_unless_closing(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
            if self.closing.load(Ordering::SeqCst) {
                self.fail_resends(&reason);
                break self.finish(reason);
            }
            match self.reconnect() {
                Ok(s) => {
                    lock(&self.acks).reconnected();
                    session = Some(s);
                    let _ = self.events.send(ClientEvent::Reconnected);
                }
                Err(e) => {
                    // Trust failures never get better by retrying.
                    if matches!(e, SessionError::Untrusted(_)) {
                        self.fail_resends(&e.to_string());
                        break self.finish(e.to_string());
                    }
                    failed = Some(e.to_string());
                }
            }
        }
    }

    /// Waits `d`, or less if the client is closed meanwhile.
    fn sleep_unless_closing(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.closing.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }

    fn finish(&self, reason: String) {
        self.gone.store(true, Ordering::SeqCst);
        let _ = lock(&self.seen).save();
        // Whatever is still queued will never be sent.
        for o in self.commands_rx.try_iter().chain(self.bulk_rx.try_iter()) {
            if let Some(tx) = o.reply {
                let _ = tx.send(Err(ClientError::Disconnected(reason.clone())));
            }
        }
        let _ = self.events.send(ClientEvent::Disconnected(reason));
    }

    /// Fails the sends kept for a reconnect that will not come.
    fn fail_resends(&self, why: &str) {
        for o in lock(&self.resend).drain(..) {
            if let Some(tx) = o.reply {
                let _ = tx.send(Err(ClientError::Disconnected(why.to_string())));
            }
        }
    }

    /// Opens a new session and logs in again as the remembered user.
    fn reconnect(&self) -> Result<Session, SessionError> {
        let mut s = Session::connect(&self.addr, &self.config.trust)?;
        let credentials = lock(&self.credentials).clone();
        if let Some((username, token)) = credentials {
            let (reply, _) = s.request(&Request::Resume { username, token })?;
            if !reply.is_ok() {
                let _ = self.events.send(ClientEvent::Disconnected(format!(
                    "could not log in again: {}",
                    reply.text()
                )));
                return Err(SessionError::Untrusted(reply.text().to_string()));
            }
        }
        Ok(s)
    }

    /// Serves one connection until it drops; returns why.
    fn serve(self: &Arc<Self>, session: Session, downloads: &mut Downloads) -> String {
        let Session { reader, writer, .. } = session;
        *lock(&self.stream) = Some(writer.stream());
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let resend: Vec<Outbound> = lock(&self.resend).drain(..).collect();
        // Dropping `stop` ends this connection's writer, so it cannot take
        // requests meant for the next connection.
        let (stop, stopped) = bounded::<()>(0);
        let writer_thread = {
            let (inner, waiters) = (Arc::clone(self), Arc::clone(&waiters));
            std::thread::Builder::new()
                .name("client-writer".into())
                .spawn(move || inner.write_loop(writer, &waiters, resend, &stopped))
        };
        let writer_thread = match writer_thread {
            Ok(t) => t,
            Err(e) => return format!("cannot start the writer: {e}"),
        };
        let reason = self.read_loop(reader, &waiters, downloads);
        // Replies that will not come: sends wait for the next connection,
        // everything else fails now.
        let mut w = lock(&waiters);
        w.closed = true;
        let reconnecting = self.config.reconnect && !self.closing.load(Ordering::SeqCst);
        for o in w.queue.drain(..) {
            self.lost(o, reconnecting, &reason);
        }
        drop(w);
        if let Some(s) = lock(&self.stream).take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        drop(stop);
        let _ = writer_thread.join();
        for aborted in lock(&self.uploads).values() {
            *lock(aborted) = Some(format!("connection lost: {reason}"));
        }
        reason
    }

    /// A request whose reply will not come on this connection.
    fn lost(&self, o: Outbound, reconnecting: bool, why: &str) {
        if reconnecting && o.retryable() {
            lock(&self.resend).push(o);
        } else if let Some(tx) = o.reply {
            let _ = tx.send(Err(ClientError::Disconnected(why.to_string())));
        }
    }

    fn write_loop(
        &self,
        mut w: SessionWriter,
        waiters: &Mutex<Waiters>,
        first: Vec<Outbound>,
        stopped: &Receiver<()>,
    ) {
        let mut first = first.into_iter();
        loop {
            let next = match first.next() {
                Some(o) => Ok(o),
                None => select_biased! {
                    recv(stopped) -> _ => break,
                    recv(self.commands_rx) -> m => m,
                    recv(self.bulk_rx) -> m => m,
                },
            };
            let Ok(mut item) = next else { break };
            loop {
                let has_reply = item.reply.is_some();
                w.queue(&item.request);
                if has_reply {
                    let mut q = lock(waiters);
                    if q.closed {
                        drop(q);
                        let reconnecting =
                            self.config.reconnect && !self.closing.load(Ordering::SeqCst);
                        self.lost(item, reconnecting, "connection closed");
                        return;
                    }
                    q.queue.push_back(item);
                }
                if w.pending() >= 256 * 1024 {
                    break;
                }
                item = match self
                    .commands_rx
                    .try_recv()
                    .or_else(|_| self.bulk_rx.try_recv())
                {
                    Ok(next) => next,
                    Err(_) => break,
                };
            }
            if w.flush().is_err() {
                break;
            }
        }
        // Sends kept for a reconnect but not sent on this connection wait
        // for the next one.
        let reconnecting = self.config.reconnect && !self.closing.load(Ordering::SeqCst);
        for o in first {
            self.lost(o, reconnecting, "connection closed");
        }
        w.close();
    }

    /// Sends acknowledgements (and saves what was shown).
    fn flush_acks(&self) {
        let requests = lock(&self.acks).take();
        for request in requests {
            let _ = self.commands.send(Outbound {
                request,
                reply: None,
            });
        }
        if let Err(e) = lock(&self.seen).save() {
            tracing::warn!("cannot save what was shown: {e}");
        }
    }

    fn read_loop(
        &self,
        mut r: SessionReader,
        waiters: &Mutex<Waiters>,
        downloads: &mut Downloads,
    ) -> String {
        let mut last_flush = Instant::now();
        let mut timeout_set = false;
        // Files already shown: their chunks are skipped, their end acknowledged.
        let mut skipping: Vec<MessageRef> = Vec::new();
        loop {
            // With acknowledgements waiting, wake up in time to send them.
            let want_timeout = lock(&self.acks).pending();
            if want_timeout != timeout_set {
                let t = want_timeout.then_some(ACK_EVERY);
                if r.set_timeout(t).is_err() {
                    return "cannot set a read timeout".into();
                }
                timeout_set = want_timeout;
            }
            let incoming = match r.recv() {
                Ok(i) => i,
                Err(SessionError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.flush_acks();
                    last_flush = Instant::now();
                    continue;
                }
                Err(e) => {
                    self.flush_acks();
                    return e.to_string();
                }
            };
            let events = match incoming {
                Incoming::Reply(reply) => {
                    let waiter = lock(waiters).queue.pop_front();
                    let Some(w) = waiter else {
                        return "server sent a reply nobody asked for".into();
                    };
                    let kind = w.request.verb().spec().reply;
                    let typed = reply
                        .typed(kind)
                        .map_err(|e| ClientError::Session(SessionError::BadMessage(e)));
                    // What this client sent is shown (by whoever asked)
                    // and handled: the server does not send it back.
                    if let Ok(r) = &typed {
                        let mut seen = lock(&self.seen);
                        for at in r.sent() {
                            seen.sent(at);
                            lock(&self.acks).handled(at);
                        }
                    }
                    if let Some(tx) = w.reply {
                        let _ = tx.send(typed);
                    }
                    Vec::new()
                }
                Incoming::Message(d) => self.message(d),
                // This reader never defers envelopes; opened here all the same.
                Incoming::SealedMessage(m) => match m.open() {
                    Ok(d) => self.message(d),
                    Err(e) => {
                        self.flush_acks();
                        return e.to_string();
                    }
                },
                Incoming::History(d) => vec![open_message(d, true)],
                Incoming::HistoryFile(f) => vec![ClientEvent::HistoryFile {
                    at: f.at,
                    at_ms: f.at_ms,
                    from: f.from,
                    name: f.name,
                    size: f.size,
                    voice: f.voice,
                }],
                Incoming::File(start) => {
                    if lock(&self.seen).is_new(&start.at) {
                        downloads.start(start)
                    } else {
                        skipping.push(start.at);
                        Vec::new()
                    }
                }
                Incoming::Chunk {
                    at,
                    offset,
                    key,
                    body,
                } => downloads.chunk(&at, offset, &key, &body),
                Incoming::FileEnd(at) => {
                    if let Some(i) = skipping.iter().position(|s| *s == at) {
                        skipping.swap_remove(i);
                        lock(&self.acks).handled(&at);
                        Vec::new()
                    } else {
                        downloads.end(&at)
                    }
                }
                Incoming::FileAbort(at, why) => {
                    skipping.retain(|s| *s != at);
                    downloads.abort(&at, &why)
                }
                Incoming::UploadAbort(id, why) => {
                    if let Some(upload) = lock(&self.uploads).get(&id) {
                        *lock(upload) = Some(why);
                    }
                    Vec::new()
                }
                Incoming::Notice(n) => vec![ClientEvent::Notice(n)],
                Incoming::Ping(n) => {
                    let _ = self.commands.send(Outbound {
                        request: Request::Pong(n),
                        reply: None,
                    });
                    Vec::new()
                }
            };
            for at in downloads.take_done() {
                lock(&self.seen).shown(&at);
                lock(&self.acks).handled(&at);
            }
            for e in events {
                // Voice notes are remembered, for PLAY.
                if let ClientEvent::FileReceived {
                    at,
                    path,
                    voice: Some(_),
                    ..
                } = &e
                {
                    lock(&self.received).insert(at.clone(), path.clone());
                }
                let _ = self.events.send(e);
            }
            if !r.has_buffered() && last_flush.elapsed() >= ACK_EVERY && lock(&self.acks).pending()
            {
                self.flush_acks();
                last_flush = Instant::now();
            }
        }
    }

    /// A delivered message: shown unless it was shown before, and handled
    /// either way.
    fn message(&self, d: Delivery) -> Vec<ClientEvent> {
        let at = d.at.clone();
        let mut seen = lock(&self.seen);
        let out = if seen.is_new(&at) {
            seen.shown(&at);
            vec![open_message(d, false)]
        } else {
            Vec::new()
        };
        lock(&self.acks).handled(&at);
        out
    }
}

/// Decrypts a delivered or historical message.
fn open_message(d: Delivery, history: bool) -> ClientEvent {
    match d.key.open(&d.body) {
        Ok(bytes) => ClientEvent::Message {
            at: d.at,
            at_ms: d.at_ms,
            from: d.from,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            history,
        },
        Err(e) => ClientEvent::BadMessage {
            at: d.at,
            from: d.from,
            reason: e.to_string(),
        },
    }
}

/// Events for the display tests (the prompt's, the full-screen client's).
#[cfg(test)]
pub(crate) mod testing {
    use super::ClientEvent;
    use crate::names::{MessageRef, Username};

    /// A live text message `text` from `from` at `at` (`#ops:1`, `@bob:2`).
    pub fn message(at: &str, from: &str, text: &str) -> ClientEvent {
        ClientEvent::Message {
            at: MessageRef::parse(at).expect("a message reference"),
            at_ms: 0,
            from: Username::parse(from).expect("a user name"),
            text: text.into(),
            history: false,
        }
    }
}
