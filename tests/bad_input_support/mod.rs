//! Helpers for `tests/bad_input.rs`: the bystanders every attack must leave
//! unharmed, raw connections that send what no client would, a forger that
//! holds the session keys, and ways to wait for a close without sleeping.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use num_bigint::BigUint;
use sha2::{Digest, Sha256};

use muchat::client::{Client, ClientEvent};
use muchat::connection::{FrameReader, ReadError};
use muchat::content::{Body, ContentKey};
use muchat::dh::{EphemeralSecret, PublicValue};
use muchat::event::{ErrorCode, Reply, ReplyData, ServerMessage};
use muchat::frame::{Frame, Opener};
use muchat::handshake::PROTOCOL;
use muchat::keys::{DirectionKeys, SessionKeys, Transcript};
use muchat::names::MessageRef;
use muchat::request::{format_sha256, ReplyKind, SendId, FILE_CHUNK_SIZE};
use muchat::tdes::TdesKey;

use crate::common::{
    client_config, login, next_event, next_message, ok, user, Raw, TestServer, WAIT,
};

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type HmacSha256 = hmac::Hmac<Sha256>;

// ---------------------------------------------------------------------------
// Nobody else is harmed
// ---------------------------------------------------------------------------

/// Two clients logged in before an attack; [`check`](Self::check) proves
/// they still exchange messages both ways after it.
pub struct Bystanders {
    pub a: Client,
    pub b: Client,
}

impl Bystanders {
    pub fn new(server: &TestServer) -> Self {
        Bystanders {
            a: login(server, "bystander-a"),
            b: login(server, "bystander-b"),
        }
    }

    #[track_caller]
    pub fn check(&self, after: &str) {
        for (from, from_name, to, to_name) in [
            (&self.a, "bystander-a", &self.b, "bystander-b"),
            (&self.b, "bystander-b", &self.a, "bystander-a"),
        ] {
            let text = format!("{from_name} still here after {after}");
            let reply = from.send_text(&user(to_name), &text).expect("reply");
            let refs = match &reply {
                r @ Reply::Ok { .. } => r.sent().to_vec(),
                Reply::Err { code, text } => {
                    panic!("after {after}: bystander send: ERR {code} {text}")
                }
            };
            assert_eq!(refs.len(), 1, "after {after}: {reply:?}");
            let got = next_message(to);
            assert_eq!(got.from, from_name, "after {after}");
            assert_eq!(
                got.at,
                format!("@{from_name}:{}", refs[0].seq),
                "after {after}"
            );
            assert_eq!(got.text, text, "after {after}");
        }
    }
}

/// A brand new client can still connect, register, log in and be answered.
pub fn fresh_client_works(server: &TestServer) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("newcomer{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let c = login(server, &name);
    let list = ok(&c, "LIST");
    assert!(list.contains(&name), "{list}");
}

/// After an attack: the bystanders still talk both ways, and a brand new
/// client can still get in.
#[track_caller]
pub fn unharmed(server: &TestServer, by: &Bystanders, after: &str) {
    by.check(after);
    fresh_client_works(server);
}

// ---------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------

/// Registers `name` (password `pw-<name>`) and logs in on `raw`.
pub fn register_and_login(raw: &mut Raw, name: &str) {
    expect_ok(
        raw.request(&format!("CREATE_USER {name} pw-{name} {name} the tester")),
        "CREATE_USER",
    );
    expect_ok(raw.request(&format!("LOGIN {name} pw-{name}")), "LOGIN");
}

/// A raw connection logged in as a new account `name`.
pub fn raw_login(server: &TestServer, name: &str) -> Raw {
    let mut raw = Raw::connect(server);
    register_and_login(&mut raw, name);
    raw
}

/// The next server message, which must be a reply.
#[track_caller]
pub fn next_reply(raw: &mut Raw, ctx: &str) -> Reply {
    match raw.recv() {
        ServerMessage::Reply(r) => r,
        other => panic!("{ctx}: expected a reply, got {other:?}"),
    }
}

/// Sends a frame with a body.
pub fn send_with_body(raw: &mut Raw, head: &str, body: &Body) {
    raw.send_frame(&Frame::with_body(head, body.clone()));
}

/// Sends a frame and returns its reply.
#[track_caller]
pub fn request_frame(raw: &mut Raw, frame: &Frame) -> Reply {
    raw.send_frame(frame);
    next_reply(raw, &frame.head)
}

/// Sends `text` to user `to` as a well-formed `SEND`; returns the reply.
#[track_caller]
pub fn raw_send_text(raw: &mut Raw, to: &str, text: &str) -> Reply {
    let key = ContentKey::random();
    let head = format!("SEND {to} {} {}", SendId::random(), key.to_b64());
    request_frame(raw, &Frame::with_body(head, key.seal(text.as_bytes())))
}

#[track_caller]
pub fn expect_ok(reply: Reply, ctx: &str) -> String {
    match reply {
        Reply::Ok { text, .. } => text,
        Reply::Err { code, text } => panic!("{ctx}: expected OK, got ERR {code} {text}"),
    }
}

#[track_caller]
pub fn expect_err(reply: Reply, code: ErrorCode, ctx: &str) -> String {
    match reply {
        Reply::Err { code: c, text } if c == code => text,
        other => panic!("{ctx:?}: expected ERR {code}, got {other:?}"),
    }
}

/// A raw reply read as the reply to a request of `kind`.
#[track_caller]
pub fn typed(reply: Reply, kind: ReplyKind) -> Reply {
    reply.typed(kind).expect("an OK with its data")
}

/// The references of a send's `OK`, which must be one.
#[track_caller]
pub fn sent_refs(reply: Reply, ctx: &str) -> Vec<MessageRef> {
    let reply = typed(reply, ReplyKind::Sent);
    assert!(reply.is_ok(), "{ctx}: {reply:?}");
    reply.sent().to_vec()
}

/// How a connection ended: the `BYE` reason if one came, and what else
/// arrived before and after it.
#[derive(Debug)]
pub struct Closed {
    pub bye: Option<String>,
    pub before_bye: Vec<ServerMessage>,
    pub after_bye: Vec<ServerMessage>,
}

impl Closed {
    /// The server said `BYE protocol error: ...` mentioning `why`, with
    /// nothing else before it.
    #[track_caller]
    pub fn protocol_error(&self, why: &str) {
        let bye = self
            .bye
            .as_deref()
            .unwrap_or_else(|| panic!("closed without a BYE ({self:?})"));
        assert!(bye.starts_with("protocol error: "), "BYE {bye:?}");
        assert!(bye.contains(why), "BYE {bye:?} should mention {why:?}");
        assert!(
            self.before_bye.is_empty(),
            "unexpected frames before the BYE: {:?}",
            self.before_bye
        );
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads frames until the server ends the connection (end of stream, reset,
/// or a line cut short). Each read waits at most [`WAIT`] (the sockets'
/// read timeout): a timeout means the server kept the connection open, a
/// failure.
pub fn read_until_closed(reader: &mut FrameReader<BufReader<TcpStream>>) -> Closed {
    let mut closed = Closed {
        bye: None,
        before_bye: Vec::new(),
        after_bye: Vec::new(),
    };
    for _ in 0..10_000 {
        match reader.read_frame() {
            Ok(Some(f)) => match ServerMessage::parse(f) {
                Ok(ServerMessage::Bye(why)) => closed.bye = Some(why),
                Ok(other) if closed.bye.is_none() => closed.before_bye.push(other),
                Ok(other) => closed.after_bye.push(other),
                Err(e) => panic!("malformed frame from the server: {e}"),
            },
            Ok(None) => return closed,
            Err(ReadError::Io(e)) if is_timeout(&e) => {
                panic!("the server did not close the connection within {WAIT:?} ({closed:?})")
            }
            Err(_) => return closed,
        }
    }
    panic!(
        "the server kept sending and never closed ({:?})",
        closed.bye
    )
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A library client with a known downloads directory, logged in as `name`.
pub fn client_with_downloads(server: &TestServer, name: &str, downloads: PathBuf) -> Client {
    let c =
        Client::connect(server.local_addr(), client_config(server, downloads)).expect("connect");
    ok(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
    ok(&c, &format!("LOGIN {name} pw-{name}"));
    c
}

/// Announces a file from a raw sender; returns the transfer id.
#[track_caller]
pub fn announce(raw: &mut Raw, to: &str, size: u64, sha: &[u8; 32], name: &str) -> u64 {
    let head = format!(
        "SEND_FILE {to} {} {size} {} {name}",
        SendId::random(),
        format_sha256(sha)
    );
    match typed(raw.request(&head), ReplyKind::Upload) {
        Reply::Ok {
            data: ReplyData::Transfer(id),
            ..
        } => id,
        other => panic!("{head}: expected a transfer id, got {other:?}"),
    }
}

/// Sends one chunk of `data` under a fresh key (chunks get no reply).
pub fn send_chunk(raw: &mut Raw, id: u64, offset: u64, data: &[u8]) {
    let key = ContentKey::random();
    send_with_body(
        raw,
        &format!("CHUNK {id} {offset} {}", key.to_b64()),
        &key.seal(data),
    );
}

/// Sends every chunk of `data`.
pub fn send_chunks(raw: &mut Raw, id: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(FILE_CHUNK_SIZE).enumerate() {
        send_chunk(raw, id, (i * FILE_CHUNK_SIZE) as u64, chunk);
    }
}

/// Ends an upload that must be accepted; returns where the file went.
#[track_caller]
pub fn file_end(raw: &mut Raw, id: u64) -> MessageRef {
    let refs = sent_refs(raw.request(&format!("FILE_END {id}")), "FILE_END");
    assert_eq!(refs.len(), 1, "{refs:?}");
    refs[0].clone()
}

/// Announces `data` under `name` with the given SHA-256, sends every chunk
/// and `FILE_END`; returns where the file went (as the sender sees it).
#[track_caller]
pub fn raw_send_file(
    raw: &mut Raw,
    to: &str,
    name: &str,
    data: &[u8],
    sha: &[u8; 32],
) -> MessageRef {
    let id = announce(raw, to, data.len() as u64, sha, name);
    send_chunks(raw, id, data);
    file_end(raw, id)
}

/// The next server message, which must be `UPLOAD_ABORT` for `id`; returns
/// its reason.
#[track_caller]
pub fn expect_upload_abort(raw: &mut Raw, id: u64) -> String {
    match raw.recv() {
        ServerMessage::UploadAbort(got, why) => {
            assert_eq!(got, id, "UPLOAD_ABORT for the wrong transfer ({why})");
            why
        }
        other => panic!("expected UPLOAD_ABORT {id}, got {other:?}"),
    }
}

/// Names of the entries in `dir` (none if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut names: Vec<String> = rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
        Err(_) => Vec::new(),
    }
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A file that arrived whole and verified.
#[derive(Debug)]
pub struct Received {
    pub at: MessageRef,
    pub from: String,
    pub path: PathBuf,
    pub size: u64,
}

/// The next event must be a received file.
#[track_caller]
pub fn expect_file_received(client: &Client) -> Received {
    match next_event(client) {
        ClientEvent::FileReceived {
            at,
            from,
            path,
            size,
            ..
        } => Received {
            at,
            from: from.to_string(),
            path,
            size,
        },
        other => panic!("expected FileReceived, got {other:?}"),
    }
}

/// The next event must be a failed incoming file at `at`; returns the reason.
#[track_caller]
pub fn expect_file_failed(client: &Client, at: &MessageRef) -> String {
    match next_event(client) {
        ClientEvent::FileFailed { at: got, reason } => {
            assert_eq!(&got, at, "FileFailed for the wrong file ({reason})");
            reason
        }
        other => panic!("expected FileFailed for {at}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// A connection whose keys we hold
// ---------------------------------------------------------------------------

/// A connection keyed by our own handshake, so we hold the session keys and
/// can write any bytes: tampered, replayed, reordered lines, or lines that
/// carry a *valid* MAC over contents the sealer would never produce (bad
/// padding, bad base64 in the head, non-UTF-8 heads, clear heads).
pub struct Forger {
    pub stream: TcpStream,
    pub reader: FrameReader<BufReader<TcpStream>>,
    pub c2s: DirectionKeys,
    /// The sequence number the next MAC'd line uses.
    seq: u64,
}

impl Forger {
    pub fn connect(server: &TestServer) -> Forger {
        let stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let secret = EphemeralSecret::random().expect("rng");
        let ours = secret.public_value().clone();
        (&stream)
            .write_all(format!("{PROTOCOL} {}\n", ours.to_hex()).as_bytes())
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut hello = String::new();
        reader.read_line(&mut hello).expect("server hello");
        let rest = hello
            .trim_end()
            .strip_prefix(&format!("{PROTOCOL} "))
            .unwrap_or_else(|| panic!("bad server hello {hello:?}"));
        // `<B> <S> <confirm>`: the confirmation is not checked here (the
        // server is ours), only the keys are derived.
        let mut parts = rest.split(' ');
        let theirs = PublicValue::from_hex(parts.next().unwrap()).expect("server value");
        let fixed = PublicValue::from_hex(parts.next().unwrap()).expect("server static value");
        let (ee, es) = secret.diffie_hellman_twice(&theirs, &fixed);
        let transcript = Transcript {
            client: &ours,
            server: &theirs,
            server_static: &fixed,
        };
        let keys = SessionKeys::derive(&ee, &es, &transcript);
        Forger {
            stream,
            reader: FrameReader::new(reader, Opener::new(&keys.server_to_client)),
            c2s: keys.client_to_server,
            seq: 0,
        }
    }

    /// `base64(IV || 3DES-CBC(PKCS7(text)))` under the session key.
    pub fn head(&self, text: &[u8]) -> String {
        let iv = [0x5a; 8];
        let mut raw = iv.to_vec();
        TdesKey::new(&self.c2s.enc).encrypt_into(&iv, text, &mut raw);
        B64.encode(raw)
    }

    /// `head "." body "." tag "\n"` with a valid tag for the next sequence
    /// number: the MAC covers the head segment, the dot, and the body's
    /// SHA-256 (if there is a body).
    pub fn line(&mut self, head_segment: &str, body: &str) -> Vec<u8> {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.c2s.mac).unwrap();
        mac.update(&self.seq.to_be_bytes());
        mac.update(format!("{head_segment}.").as_bytes());
        if !body.is_empty() {
            mac.update(&Sha256::digest(body.as_bytes()));
        }
        self.seq += 1;
        let mut out = format!("{head_segment}.{body}.").into_bytes();
        out.extend_from_slice(B64.encode(mac.finalize().into_bytes()).as_bytes());
        out.push(b'\n');
        out
    }

    /// A correctly sealed line for `head`.
    pub fn sealed(&mut self, head: &str) -> Vec<u8> {
        let h = self.head(head.as_bytes());
        self.line(&h, "")
    }

    pub fn write(&mut self, bytes: &[u8]) {
        (&self.stream).write_all(bytes).expect("write");
    }

    pub fn recv(&mut self) -> ServerMessage {
        let f = self.reader.read_frame().expect("read").expect("a frame");
        ServerMessage::parse(f).expect("well-formed server message")
    }

    /// Proves the connection is healthy: a sealed LIST gets ERR NOT_LOGGED_IN.
    pub fn probe(&mut self) {
        let l = self.sealed("LIST");
        self.write(&l);
        match self.recv() {
            ServerMessage::Reply(r) => {
                expect_err(r, ErrorCode::NotLoggedIn, "probe LIST");
            }
            other => panic!("probe: expected a reply, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Handshakes
// ---------------------------------------------------------------------------

/// A group 14 value as the 512 hex digits of the wire.
pub fn pad_hex(v: &BigUint) -> String {
    format!("{:0>512}", v.to_str_radix(16))
}

/// Sends `bytes` as a handshake and returns the server's reply line.
pub fn handshake_reply(server: &TestServer, bytes: &[u8]) -> (String, BufReader<TcpStream>) {
    let stream = TcpStream::connect(server.local_addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    (&stream).write_all(bytes).expect("write");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(_) => {}
        Err(e) if is_timeout(&e) => panic!("no handshake reply within {WAIT:?}"),
        Err(e) => panic!("reading the handshake reply: {e}"),
    }
    (line, reader)
}

/// The server must have closed: end of stream or reset, not a timeout.
#[track_caller]
pub fn assert_closed(reader: &mut BufReader<TcpStream>, ctx: &str) {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{ctx}: more after the reply: {rest:?}"),
        Err(e) if is_timeout(&e) => panic!("{ctx}: the server did not close within {WAIT:?}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{ctx}: {e}"),
    }
}
