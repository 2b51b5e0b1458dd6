//! The client side of a connection, as a library: used by the `client`
//! binary (REPL and scripts), by the tests, and by load generators.
//!
//! [`Client::connect`] runs the handshake and starts two threads:
//!
//! * a **writer** that seals frames from two queues, commands first and file
//!   chunks second, so chat is never stuck behind a transfer. Before writing
//!   a request it records where the reply should go, so replies (which the
//!   server sends in request order) find their caller;
//! * a **reader** that opens frames, hands replies to waiting callers, and
//!   turns events into [`ClientEvent`]s: message texts decrypted, files
//!   written into the downloads directory by [`downloads::Downloads`]. It
//!   drops messages it has already seen (the server delivers at least once)
//!   and acknowledges what it has handled with `ACK`, batched until it
//!   would wait for the socket.
//!
//! [`Client::execute`] runs one typed [`Command`]; the methods below it are
//! the same steps for programs.

pub mod display;
pub mod downloads;
pub mod known_servers;
pub mod repl;
pub mod script;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, select_biased, unbounded, Receiver, Sender};
use sha2::{Digest, Sha256};

use crate::command::Command;
use crate::connection::{FrameReader, FrameWriter, ReadError};
use crate::content::ContentKey;
use crate::event::{Delivery, Reply, ServerMessage};
use crate::frame::Frame;
use crate::handshake::{self, HandshakeError};
use crate::names::{Conversation, GroupName, Username};
use crate::request::{
    FileOffer, FileTarget, Request, FILE_CHUNK_SIZE, MAX_ACK_IDS, MAX_MESSAGE_LEN,
};

use crate::identity::Fingerprint;
use downloads::Downloads;
pub use known_servers::Trust;
use known_servers::Verdict;

/// Why a client operation failed.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting or a local file operation failed.
    Io(io::Error),
    /// The handshake failed.
    Handshake(HandshakeError),
    /// The connection is gone; carries the reason.
    Disconnected(String),
    /// The server's key is not the one trusted; nothing was sent.
    Untrusted(String),
    /// Refused locally before sending (e.g. a message over the size limit).
    Refused(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Handshake(e) => write!(f, "{e}"),
            ClientError::Disconnected(why) => write!(f, "disconnected: {why}"),
            ClientError::Untrusted(why) => write!(f, "{why}"),
            ClientError::Refused(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// Something that happened on the connection, other than a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message, decrypted.
    Message {
        /// Server-assigned id.
        id: u64,
        /// Server time, Unix milliseconds.
        at_ms: u64,
        /// Sender.
        from: Username,
        /// You (`@you`) or the group.
        to: Conversation,
        /// The text (untrusted: sanitise before printing).
        text: String,
        /// A past message answering `HISTORY`, not a new one.
        history: bool,
    },
    /// A past file answering `HISTORY` (its content is not resent).
    HistoryFile {
        /// Message id.
        id: u64,
        /// Server time it was sent.
        at_ms: u64,
        /// Sender.
        from: Username,
        /// The recipient or group.
        to: Conversation,
        /// The sender's name for it (untrusted).
        name: String,
        /// Size in bytes.
        size: u64,
    },
    /// A message whose content could not be decrypted.
    BadMessage {
        /// Server-assigned id.
        id: u64,
        /// Sender.
        from: Username,
        /// What was wrong.
        reason: String,
    },
    /// Progress of an incoming file over 1 MiB.
    FileProgress {
        /// Transfer id.
        id: u64,
        /// Safe file name.
        name: String,
        /// Bytes so far.
        received: u64,
        /// Announced size.
        size: u64,
    },
    /// A file arrived complete and verified.
    FileReceived {
        /// Transfer id.
        id: u64,
        /// Server time the transfer started.
        at_ms: u64,
        /// Sender.
        from: Username,
        /// You or the group.
        to: Conversation,
        /// Where it was saved (inside the downloads directory).
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
    /// An incoming file failed or was aborted; nothing was kept.
    FileFailed {
        /// Transfer id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// One of our outgoing transfers finished.
    FileSent {
        /// Transfer id.
        id: u64,
        /// Local path sent.
        path: PathBuf,
        /// The server's final reply.
        reply: Reply,
    },
    /// One of our outgoing transfers failed.
    FileSendFailed {
        /// Transfer id.
        id: u64,
        /// Local path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The connection ended.
    Disconnected(String),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where received files are saved.
    pub downloads: PathBuf,
    /// Which server keys to trust.
    pub trust: Trust,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            downloads: PathBuf::from("downloads"),
            trust: Trust::default(),
        }
    }
}

/// A frame to send, and where its reply should go (none for chunks).
struct Outbound {
    frame: Frame,
    reply: Option<Sender<Reply>>,
}

/// Callers waiting for replies, oldest first; `closed` once the reader has
/// stopped, so no caller is queued to wait for a reply that cannot come.
#[derive(Default)]
struct Waiters {
    queue: VecDeque<Sender<Reply>>,
    closed: bool,
}

type Pending = Arc<Mutex<Waiters>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, Waiters> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Outgoing transfers by id, each with the reason the server aborted it
/// (set by the reader, checked by the upload between chunks).
type Uploads = Arc<Mutex<HashMap<u64, Arc<Mutex<Option<String>>>>>>;

/// A connected, keyed client session.
pub struct Client {
    commands: Sender<Outbound>,
    bulk: Sender<Outbound>,
    events: Receiver<ClientEvent>,
    events_tx: Sender<ClientEvent>,
    stream: TcpStream,
    /// Outgoing transfers still running.
    sending: Arc<AtomicUsize>,
    uploads: Uploads,
    /// Set on first contact with a server: where its key was pinned.
    pinned: Option<String>,
}

impl Client {
    /// Connects to `addr`, runs the handshake, and checks the server's key
    /// against `config.trust` (pinned under the name `addr` is written as)
    /// before anything is sent.
    pub fn connect(
        addr: impl ToSocketAddrs + fmt::Display,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let name = addr.to_string();
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream.try_clone()?;
        let keyed = handshake::client(&mut reader, &mut writer).map_err(ClientError::Handshake)?;
        let verdict =
            known_servers::check(&config.trust, &name, &Fingerprint::of(&keyed.server_key))
                .map_err(ClientError::Untrusted)?;
        stream.set_read_timeout(None)?;

        let pending: Pending = Arc::default();
        let (commands, commands_rx) = unbounded();
        let (bulk, bulk_rx) = bounded(4);
        let (events_tx, events) = unbounded();

        let w = FrameWriter::new(writer, keyed.sealer);
        let (p, s) = (Arc::clone(&pending), stream.try_clone()?);
        std::thread::Builder::new()
            .name("client-writer".into())
            .spawn(move || write_loop(w, &commands_rx, &bulk_rx, &p, &s))?;

        let r = FrameReader::new(reader, keyed.opener);
        let (p, tx) = (Arc::clone(&pending), events_tx.clone());
        let uploads: Uploads = Arc::default();
        let incoming = Incoming {
            downloads: Downloads::new(config.downloads),
            uploads: Arc::clone(&uploads),
            acks: commands.clone(),
        };
        std::thread::Builder::new()
            .name("client-reader".into())
            .spawn(move || read_loop(r, &p, &tx, incoming))?;

        Ok(Client {
            commands,
            bulk,
            events,
            events_tx,
            stream,
            sending: Arc::default(),
            uploads,
            pinned: match verdict {
                Verdict::Pinned(note) => Some(note),
                Verdict::Known => None,
            },
        })
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

    /// Sends one request and waits for its reply.
    pub fn request(&self, request: &Request) -> Result<Reply, ClientError> {
        let rx = submit(&self.commands, request.to_frame())?;
        rx.recv()
            .map_err(|_| ClientError::Disconnected("connection closed before the reply".into()))
    }

    /// Encrypts `text` under a fresh content key and sends it to a user.
    pub fn send_text(&self, to: &Username, text: &str) -> Result<Reply, ClientError> {
        let (key, body) = seal_text(text)?;
        self.request(&Request::Send {
            to: to.clone(),
            key,
            body,
        })
    }

    /// Encrypts `text` once and sends it to one or more groups.
    pub fn send_group_text(&self, groups: &[GroupName], text: &str) -> Result<Reply, ClientError> {
        let (key, body) = seal_text(text)?;
        self.request(&Request::SendToGroup {
            groups: groups.to_vec(),
            key,
            body,
        })
    }

    /// Announces a local file and, once the server accepts it, streams it in
    /// the background. Returns the server's reply to the announcement; the
    /// transfer's end arrives as [`ClientEvent::FileSent`] or
    /// [`ClientEvent::FileSendFailed`].
    pub fn send_file(&self, target: FileTarget, path: &Path) -> Result<Reply, ClientError> {
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
            size,
            sha256,
            name,
        }))?;
        let Reply::Ok(text) = &reply else {
            return Ok(reply);
        };
        let Some(id) = text.split(' ').next().and_then(|t| t.parse::<u64>().ok()) else {
            return Err(ClientError::Disconnected(format!(
                "unexpected reply to a file offer: {text}"
            )));
        };
        self.sending.fetch_add(1, Ordering::SeqCst);
        let aborted = Arc::new(Mutex::new(None));
        lock_uploads(&self.uploads).insert(id, Arc::clone(&aborted));
        let job = Upload {
            id,
            aborted,
            uploads: Arc::clone(&self.uploads),
            path: path.to_path_buf(),
            size,
            bulk: self.bulk.clone(),
            events: self.events_tx.clone(),
            sending: Arc::clone(&self.sending),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("upload-{id}"))
            .spawn(move || job.run());
        if let Err(e) = spawned {
            self.sending.fetch_sub(1, Ordering::SeqCst);
            return Err(ClientError::Io(e));
        }
        Ok(reply)
    }

    /// Runs one typed command. `HELP` is answered locally.
    pub fn execute(&self, command: &Command) -> Result<Reply, ClientError> {
        match command {
            Command::Help => Ok(Reply::Ok(crate::command::HELP.to_string())),
            Command::Plain(r) => self.request(r),
            Command::Send { to, text } => self.send_text(to, text),
            Command::SendToGroup { groups, text } => self.send_group_text(groups, text),
            Command::SendFile { target, path } => self.send_file(target.clone(), path),
        }
    }

    /// Outgoing transfers still running.
    pub fn transfers_in_progress(&self) -> usize {
        self.sending.load(Ordering::SeqCst)
    }

    /// Closes the connection.
    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

/// Encrypts a message text once, under a fresh content key.
fn seal_text(text: &str) -> Result<(ContentKey, crate::content::Body), ClientError> {
    if text.len() > MAX_MESSAGE_LEN {
        return Err(ClientError::Refused(crate::request::message_too_long()));
    }
    let key = ContentKey::random();
    let body = key.seal(text.as_bytes());
    Ok((key, body))
}

/// Queues a frame that expects a reply and returns where the reply will land.
fn submit(queue: &Sender<Outbound>, frame: Frame) -> Result<Receiver<Reply>, ClientError> {
    let (tx, rx) = bounded(1);
    queue
        .send(Outbound {
            frame,
            reply: Some(tx),
        })
        .map_err(|_| ClientError::Disconnected("connection closed".into()))?;
    Ok(rx)
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

fn lock_uploads(
    u: &Uploads,
) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Mutex<Option<String>>>>> {
    u.lock().unwrap_or_else(|e| e.into_inner())
}

/// One outgoing file being streamed.
struct Upload {
    id: u64,
    /// Set by the reader if the server aborts this transfer.
    aborted: Arc<Mutex<Option<String>>>,
    uploads: Uploads,
    path: PathBuf,
    size: u64,
    bulk: Sender<Outbound>,
    events: Sender<ClientEvent>,
    sending: Arc<AtomicUsize>,
}

impl Upload {
    fn run(self) {
        let event = match self.stream() {
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
        lock_uploads(&self.uploads).remove(&self.id);
        let _ = self.events.send(event);
        self.sending.fetch_sub(1, Ordering::SeqCst);
    }

    fn abort_reason(&self) -> Option<String> {
        self.aborted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stream(&self) -> Result<Reply, String> {
        let gone = || "connection closed".to_string();
        let mut f = File::open(&self.path).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; FILE_CHUNK_SIZE];
        let mut offset = 0u64;
        while offset < self.size {
            if let Some(why) = self.abort_reason() {
                return Err(format!("server aborted the transfer: {why}"));
            }
            let want = FILE_CHUNK_SIZE.min((self.size - offset) as usize);
            if let Err(e) = f.read_exact(&mut buf[..want]) {
                // The file shrank or failed since it was hashed: cancel.
                let _ = submit(&self.bulk, Request::FileAbort(self.id).to_frame());
                return Err(format!("reading {}: {e}", self.path.display()));
            }
            let key = ContentKey::random();
            let body = key.seal(&buf[..want]);
            let frame = Request::Chunk {
                transfer: self.id,
                offset,
                key,
                body,
            }
            .to_frame();
            self.bulk
                .send(Outbound { frame, reply: None })
                .map_err(|_| gone())?;
            offset += want as u64;
        }
        if let Some(why) = self.abort_reason() {
            return Err(format!("server aborted the transfer: {why}"));
        }
        // The end goes through the same queue as the chunks, so it follows them.
        let reply = submit(&self.bulk, Request::FileEnd(self.id).to_frame())
            .map_err(|e| e.to_string())?
            .recv()
            .map_err(|_| gone())?;
        Ok(reply)
    }
}

fn write_loop(
    mut w: FrameWriter<TcpStream>,
    commands: &Receiver<Outbound>,
    bulk: &Receiver<Outbound>,
    pending: &Pending,
    stream: &TcpStream,
) {
    loop {
        let first = select_biased! {
            recv(commands) -> m => m,
            recv(bulk) -> m => m,
        };
        let Ok(mut item) = first else { break };
        loop {
            if let Some(tx) = item.reply.take() {
                let mut waiters = lock(pending);
                if waiters.closed {
                    // Dropping tx tells the caller the connection is gone.
                    break;
                }
                waiters.queue.push_back(tx);
            }
            w.queue(&item.frame.head, item.frame.body.as_ref());
            if w.pending() >= 256 * 1024 {
                break;
            }
            item = match commands.try_recv().or_else(|_| bulk.try_recv()) {
                Ok(next) => next,
                Err(_) => break,
            };
        }
        if w.flush().is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// What the reader needs besides the socket: incoming files, our own
/// uploads (to stop one the server aborted), and the queue for `ACK`s.
struct Incoming {
    downloads: Downloads,
    uploads: Uploads,
    acks: Sender<Outbound>,
}

/// Ids already handled, so a redelivered message is shown once. Bounded:
/// the oldest ids are forgotten first (redelivery happens at login, long
/// before that many newer messages arrive).
struct Seen {
    set: std::collections::HashSet<u64>,
    order: VecDeque<u64>,
}

impl Seen {
    const CAPACITY: usize = 100_000;

    fn new() -> Self {
        Seen {
            set: std::collections::HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Accepts `id` again (its first delivery could not be handled).
    fn forget(&mut self, id: u64) {
        self.set.remove(&id);
    }

    /// True the first time `id` is seen.
    fn first(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// The group keys this session was given, by id; a few recent ones per
/// group, so messages sealed just before a key change still open.
#[derive(Default)]
struct GroupKeys {
    by_id: HashMap<u64, ContentKey>,
    recent: HashMap<GroupName, VecDeque<u64>>,
}

impl GroupKeys {
    const KEEP: usize = 4;

    fn insert(&mut self, group: GroupName, id: u64, key: ContentKey) {
        self.by_id.insert(id, key);
        let ids = self.recent.entry(group).or_default();
        ids.push_back(id);
        if ids.len() > Self::KEEP {
            if let Some(old) = ids.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    fn get(&self, id: u64) -> Option<&ContentKey> {
        self.by_id.get(&id)
    }
}

/// Decrypts a delivered or historical message.
fn open_message(d: crate::event::Delivery, history: bool) -> ClientEvent {
    match d.key.open(&d.body) {
        Ok(bytes) => ClientEvent::Message {
            id: d.id,
            at_ms: d.at_ms,
            from: d.from,
            to: d.to,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            history,
        },
        Err(e) => ClientEvent::BadMessage {
            id: d.id,
            from: d.from,
            reason: e.to_string(),
        },
    }
}

fn read_loop(
    mut r: FrameReader<BufReader<TcpStream>>,
    pending: &Pending,
    events: &Sender<ClientEvent>,
    incoming: Incoming,
) {
    let Incoming {
        mut downloads,
        uploads,
        acks,
    } = incoming;
    let mut seen = Seen::new();
    let mut group_keys = GroupKeys::default();
    let mut to_ack: Vec<u64> = Vec::new();
    let mut bye = None;
    let reason = loop {
        let frame = match r.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break bye.unwrap_or_else(|| "server closed the connection".to_string()),
            Err(ReadError::Io(e)) => break bye.unwrap_or_else(|| format!("connection lost: {e}")),
            Err(e) => break format!("protocol error from server: {e}"),
        };
        let message = match ServerMessage::parse(frame) {
            // A group envelope opens into the message it carries, handled
            // below like any other delivery.
            Ok(ServerMessage::GroupMsg { key_id, body }) => {
                let opened = group_keys
                    .get(key_id)
                    .ok_or_else(|| format!("no group key {key_id}"))
                    .and_then(|k| Delivery::open_group(k, &body).map_err(|e| e.to_string()));
                match opened {
                    Ok(d) => ServerMessage::Msg(d),
                    // Without the envelope there is no id to acknowledge:
                    // the message stays pending and comes again at login.
                    Err(e) => break format!("undecodable group message: {e}"),
                }
            }
            Ok(m) => m,
            Err(e) => break e.to_string(),
        };
        let out = match message {
            ServerMessage::Reply(reply) => {
                let waiter = lock(pending).queue.pop_front();
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(reply);
                        continue;
                    }
                    None => break "server sent a reply nobody asked for".to_string(),
                }
            }
            ServerMessage::Msg(d) => {
                to_ack.push(d.id);
                if seen.first(d.id) {
                    vec![open_message(d, false)]
                } else {
                    Vec::new()
                }
            }
            ServerMessage::GroupKey { group, key_id, key } => {
                group_keys.insert(group, key_id, key);
                continue;
            }
            // Opened into a MSG above; nothing left to do here.
            ServerMessage::GroupMsg { .. } => continue,

            ServerMessage::History(d) => vec![open_message(d, true)],
            ServerMessage::HistoryFile(f) => vec![ClientEvent::HistoryFile {
                id: f.id,
                at_ms: f.at_ms,
                from: f.from,
                to: f.to,
                name: f.name,
                size: f.size,
            }],
            ServerMessage::File(start) => {
                if seen.first(start.id) {
                    downloads.start(start)
                } else {
                    // Already received: its chunks will find no download.
                    to_ack.push(start.id);
                    Vec::new()
                }
            }
            ServerMessage::Chunk {
                id,
                offset,
                key,
                body,
            } => downloads.chunk(id, offset, &key, &body),
            ServerMessage::FileEnd(id) => downloads.end(id),
            ServerMessage::FileAbort(id, why) => match lock_uploads(&uploads).get(&id) {
                Some(upload) => {
                    *upload.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    Vec::new()
                }
                None => downloads.abort(id, &why),
            },
            ServerMessage::Ping(n) => {
                let frame = Request::Pong(n).to_frame();
                let _ = acks.send(Outbound { frame, reply: None });
                continue;
            }
            ServerMessage::Bye(why) => {
                bye = Some(format!("server said goodbye: {why}"));
                continue;
            }
        };
        to_ack.append(&mut downloads.take_acks());
        for id in downloads.take_retries() {
            seen.forget(id);
        }
        // Acknowledge once a burst is handled (before waiting on the
        // socket), and before handing the events on, so anything the
        // application sends after seeing them follows the ACK.
        if !to_ack.is_empty() && (!r.has_buffered() || to_ack.len() >= MAX_ACK_IDS) {
            let frame = Request::Ack(std::mem::take(&mut to_ack)).to_frame();
            let _ = acks.send(Outbound { frame, reply: None });
        }
        for e in out {
            let _ = events.send(e);
        }
    };
    downloads.abandon_all();
    // Dropping the waiters wakes every caller blocked on a reply.
    {
        let mut waiters = lock(pending);
        waiters.closed = true;
        waiters.queue.clear();
    }
    let _ = r.get_ref().get_ref().shutdown(Shutdown::Both);
    let _ = events.send(ClientEvent::Disconnected(reason));
}
