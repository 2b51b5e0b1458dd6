//! Hostile and broken input against the real server over real TCP.
//!
//! Every attack must end in one of two ways: a clear `ERR` reply with the
//! connection still usable, or the server closing that one connection (a
//! `BYE protocol error: ...` first where it can). Never a panic, and never
//! harm to anyone else: after each attack two bystanders, logged in before
//! it, still exchange messages, and (where a connection was closed) a brand
//! new client can still connect and log in.
//!
//! Nothing here sleeps to synchronise: replies and events are awaited, and a
//! close is detected by reading until end of stream under a bounded read
//! timeout (a timeout is a failure: "the server did not close").

mod common;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use num_bigint::BigUint;
use sha2::{Digest, Sha256};

use common::{
    assert_no_event, client_config, err, login, next_event, next_message, ok, start_server_with,
    temp_dir, user, Raw, WAIT,
};
use muchat::client::{Client, ClientEvent};
use muchat::connection::{FrameReader, ReadError};
use muchat::content::{Body, ContentKey};
use muchat::dh::{self, EphemeralSecret, PublicValue};
use muchat::event::{ErrorCode, Reply, ServerMessage};
use muchat::frame::{Opener, MAX_HEAD_LEN, MAX_LINE_LEN};
use muchat::handshake::PROTOCOL;
use muchat::keys::{DirectionKeys, SessionKeys};
use muchat::names::GroupName;
use muchat::request::{format_sha256, FILE_CHUNK_SIZE, MAX_MESSAGE_LEN};
use muchat::server::outbox::OutboxLimits;
use muchat::server::{Config, Server};
use muchat::tdes::TdesKey;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type HmacSha256 = hmac::Hmac<Sha256>;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Two clients logged in before any attack; [`check`](Self::check) proves
/// they still exchange messages both ways afterwards.
struct Bystanders {
    a: Client,
    b: Client,
}

impl Bystanders {
    fn new(server: &Server) -> Self {
        Bystanders {
            a: login(server, "bystander-a"),
            b: login(server, "bystander-b"),
        }
    }

    fn check(&self, after: &str) {
        for (from, from_name, to, to_name) in [
            (&self.a, "bystander-a", &self.b, "bystander-b"),
            (&self.b, "bystander-b", &self.a, "bystander-a"),
        ] {
            let text = format!("{from_name} still here after {after}");
            expect_ok(from.send_text(&user(to_name), &text).expect("reply"), after);
            let (_, got_from, got_to, got_text) = next_message(to);
            assert_eq!(got_from, from_name, "after {after}");
            assert_eq!(got_to, format!("@{to_name}"), "after {after}");
            assert_eq!(got_text, text, "after {after}");
        }
    }
}

/// The session count in a send reply: `... (<n> [live ]session[s])`.
fn sessions_reached(reply: &str) -> usize {
    reply
        .rsplit_once('(')
        .and_then(|(_, tail)| tail.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no session count in {reply:?}"))
}

/// A brand new client can still connect, register and log in.
fn fresh_client_works(server: &Server, name: &str) {
    let c = login(server, name);
    ok(&c, "LIST");
}

#[track_caller]
fn expect_ok(reply: Reply, ctx: &str) -> String {
    match reply {
        Reply::Ok(text) => text,
        Reply::Err(code, text) => panic!("{ctx}: expected OK, got ERR {code} {text}"),
    }
}

#[track_caller]
fn expect_err(reply: Reply, code: ErrorCode, ctx: &str) -> String {
    match reply {
        Reply::Err(c, text) if c == code => text,
        other => panic!("{ctx:?}: expected ERR {code}, got {other:?}"),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads frames until the server ends the connection (end of stream, reset,
/// or a line cut short). Returns the `BYE` reason if one came, and how many
/// other frames arrived first. A read timeout means the server kept the
/// connection open: a failure.
fn read_until_closed(reader: &mut FrameReader<BufReader<TcpStream>>) -> (Option<String>, usize) {
    let mut bye = None;
    let mut others = 0;
    loop {
        match reader.read_frame() {
            Ok(Some(f)) => match ServerMessage::parse(f) {
                Ok(ServerMessage::Bye(why)) => bye = Some(why),
                _ => others += 1,
            },
            Ok(None) => return (bye, others),
            Err(ReadError::Io(e)) if is_timeout(&e) => {
                panic!("the server did not close the connection within {WAIT:?}")
            }
            Err(_) => return (bye, others),
        }
    }
}

/// Sends a frame with a body through a [`Raw`] connection.
fn send_with_body(raw: &mut Raw, head: &str, body: &Body) {
    raw.writer.queue(head, Some(body));
    raw.writer.flush().expect("write");
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A library client whose downloads directory we know, logged in as `name`.
fn client_with_downloads(server: &Server, name: &str, downloads: PathBuf) -> Client {
    let c =
        Client::connect(server.local_addr(), client_config(server, downloads)).expect("connect");
    ok(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
    ok(&c, &format!("LOGIN {name} pw-{name}"));
    c
}

/// A Raw connection logged in as a new account `name`.
fn raw_login(server: &Server, name: &str) -> Raw {
    let mut raw = Raw::connect(server);
    expect_ok(
        raw.request(&format!("CREATE_USER {name} {name} pw-{name}")),
        "raw CREATE_USER",
    );
    expect_ok(raw.request(&format!("LOGIN {name} pw-{name}")), "raw LOGIN");
    raw
}

/// Announces a file from a Raw sender; returns the transfer id.
fn announce(raw: &mut Raw, to: &str, size: u64, sha: &[u8; 32], name: &str) -> u64 {
    let head = format!("SEND_FILE {to} {size} {} {name}", format_sha256(sha));
    let text = expect_ok(raw.request(&head), &head);
    text.split(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no id in {text:?}"))
}

/// Sends one chunk (no reply is expected for chunks).
fn send_chunk(raw: &mut Raw, id: u64, offset: u64, data: &[u8]) {
    let key = ContentKey::random();
    let body = key.seal(data);
    send_with_body(raw, &format!("CHUNK {id} {offset} {}", key.to_b64()), &body);
}

/// Announces `data` under `name` with the given SHA-256, sends every chunk
/// and `FILE_END`; returns the transfer id.
fn raw_send_file(raw: &mut Raw, to: &str, name: &str, data: &[u8], sha: &[u8; 32]) -> u64 {
    let id = announce(raw, to, data.len() as u64, sha, name);
    for (i, chunk) in data.chunks(FILE_CHUNK_SIZE).enumerate() {
        send_chunk(raw, id, (i * FILE_CHUNK_SIZE) as u64, chunk);
    }
    expect_ok(raw.request(&format!("FILE_END {id}")), "FILE_END");
    id
}

/// Names of the entries in `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The next event must be a failed incoming file `id`; returns the reason.
#[track_caller]
fn expect_file_failed(client: &Client, id: u64) -> String {
    match next_event(client) {
        ClientEvent::FileFailed { id: got, reason } => {
            assert_eq!(got, id, "FileFailed for the wrong transfer ({reason})");
            reason
        }
        other => panic!("expected FileFailed for {id}, got {other:?}"),
    }
}

/// A connection keyed by our own handshake, so we hold the session keys and
/// can write any bytes: tampered, replayed, reordered lines, or lines that
/// carry a *valid* MAC over contents the sealer would never produce (bad
/// padding, bad base64 in the head, non-UTF-8 heads).
struct Forger {
    stream: TcpStream,
    reader: FrameReader<BufReader<TcpStream>>,
    c2s: DirectionKeys,
    /// The sequence number the next MAC'd line uses.
    seq: u64,
}

impl Forger {
    fn connect(server: &Server) -> Forger {
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
        let transcript = muchat::keys::Transcript {
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
    fn head(&self, text: &[u8]) -> String {
        let iv = [0x5a; 8];
        let mut raw = iv.to_vec();
        TdesKey::new(&self.c2s.enc).encrypt_into(&iv, text, &mut raw);
        B64.encode(raw)
    }

    /// `head "." body "." tag "\n"` with a valid tag for the next sequence number.
    fn line(&mut self, head_b64: &str, body: &str) -> Vec<u8> {
        let covered = format!("{head_b64}.{body}");
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.c2s.mac).unwrap();
        mac.update(&self.seq.to_be_bytes());
        // The MAC covers the head, the dot, and the body's SHA-256 (if any).
        mac.update(format!("{head_b64}.").as_bytes());
        if !body.is_empty() {
            mac.update(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
        }
        self.seq += 1;
        let mut out = covered.into_bytes();
        out.push(b'.');
        out.extend_from_slice(B64.encode(mac.finalize().into_bytes()).as_bytes());
        out.push(b'\n');
        out
    }

    /// A correctly sealed line for `head`.
    fn sealed(&mut self, head: &str) -> Vec<u8> {
        let h = self.head(head.as_bytes());
        self.line(&h, "")
    }

    fn write(&mut self, bytes: &[u8]) {
        (&self.stream).write_all(bytes).expect("write");
    }

    fn recv(&mut self) -> ServerMessage {
        let f = self.reader.read_frame().expect("read").expect("a frame");
        ServerMessage::parse(f).expect("well-formed server message")
    }

    /// Proves the connection is healthy: a sealed LIST gets ERR NOT_LOGGED_IN.
    fn probe(&mut self) {
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
// 1. Bad requests: clear errors, connection stays usable
// ---------------------------------------------------------------------------

#[test]
fn bad_requests_get_clear_errors_and_the_connection_stays_usable() {
    let server = common::start_server();
    let by = Bystanders::new(&server);
    let mut raw = Raw::connect(&server);
    let key = ContentKey::random().to_b64();
    let body = ContentKey::random().seal(b"hello");
    let sha = format_sha256(&[0xab; 32]);
    let long_name = "a".repeat(33);

    // HELP needs no login.
    expect_ok(raw.request("HELP"), "HELP before login");

    // Everything that needs a login, without one.
    for head in [
        "LIST".to_string(),
        "list".to_string(),
        "JOIN devs".to_string(),
        "CREATE_GROUP devs".to_string(),
        "LEAVE devs".to_string(),
        "LOGOUT".to_string(),
        format!("SEND_FILE bob 10 {sha} a.txt"),
        format!("SEND_TO_GROUP_FILE devs 10 {sha} a.txt"),
        "FILE_END 1".to_string(),
        "FILE_ABORT 1".to_string(),
        "HISTORY bob".to_string(),
        "HISTORY #devs 10".to_string(),
    ] {
        expect_err(raw.request(&head), ErrorCode::NotLoggedIn, &head);
    }
    // ACK gets no reply, logged in or not: the next reply is LIST's.
    raw.send("ACK 1,2,3");
    expect_err(
        raw.request("LIST"),
        ErrorCode::NotLoggedIn,
        "LIST after ACK",
    );
    for head in [
        format!("SEND bob {key}"),
        format!("SEND_TO_GROUP devs {key}"),
    ] {
        send_with_body(&mut raw, &head, &body);
        match raw.recv() {
            ServerMessage::Reply(r) => expect_err(r, ErrorCode::NotLoggedIn, &head),
            other => panic!("{head}: expected a reply, got {other:?}"),
        };
    }
    expect_err(
        raw.request("LOGIN nobody wrong"),
        ErrorCode::LoginFailed,
        "LOGIN unknown user",
    );

    // Parse errors, checked the same way before and after logging in.
    let parse_errors = |raw: &mut Raw, when: &str| {
        for head in [
            "FLY away",
            "",
            "DELETE_EVERYTHING",
            "\u{1b}[2J",
            "LIST\u{0}",
        ] {
            expect_err(
                raw.request(head),
                ErrorCode::UnknownCommand,
                &format!("{when}: {head:?}"),
            );
        }
        let usage = [
            "LOGIN alice".to_string(),
            "LOGIN alice pw extra".to_string(),
            "LOGIN  alice pw".to_string(),
            "LIST now".to_string(),
            "HELP me".to_string(),
            "HISTORY".to_string(),
            "HISTORY bob 0".to_string(),
            "HISTORY bob 501".to_string(),
            "HISTORY bob -1".to_string(),
            "HISTORY bob ten".to_string(),
            "HISTORY bob 1 2".to_string(),
            "QUIT now".to_string(),
            "CREATE_USER a b".to_string(),
            "CREATE_USER a b c d".to_string(),
            "CREATE_GROUP".to_string(),
            "JOIN".to_string(),
            "JOIN a b".to_string(),
            "FILE_END".to_string(),
            "FILE_END x".to_string(),
            "FILE_ABORT -1".to_string(),
            format!("SEND_FILE bob -1 {sha} a.txt"),
            format!("SEND_FILE bob 99999999999999999999999 {sha} a.txt"),
            "SEND_FILE bob 1 nothex a.txt".to_string(),
            format!("SEND_FILE bob 1 {sha}"),
            format!("SEND_FILE bob 1 {sha} a\u{7}b"),
            format!("SEND_FILE bob 1 {sha} {}", "n".repeat(256)),
            // Bodies missing where required.
            format!("SEND bob {key}"),
            format!("SEND_TO_GROUP devs {key}"),
        ];
        for head in &usage {
            expect_err(
                raw.request(head),
                ErrorCode::Usage,
                &format!("{when}: {head:?}"),
            );
        }
        // Bodies where none is expected, and malformed content keys.
        for head in [
            "LIST".to_string(),
            "LOGIN alice pw".to_string(),
            "HELP".to_string(),
            "FILE_END 1".to_string(),
            "SEND bob shortkey".to_string(),
            format!("SEND bob {}", "!".repeat(32)),
            format!("SEND bob {key} extra"),
        ] {
            send_with_body(raw, &head, &body);
            match raw.recv() {
                ServerMessage::Reply(r) => {
                    expect_err(r, ErrorCode::Usage, &format!("{when}: {head:?} + body"))
                }
                other => panic!("{when}: {head:?} + body: expected a reply, got {other:?}"),
            };
        }
        // A body where a command word is unknown: still UNKNOWN_COMMAND.
        send_with_body(raw, "FLY away", &body);
        match raw.recv() {
            ServerMessage::Reply(r) => {
                expect_err(r, ErrorCode::UnknownCommand, &format!("{when}: FLY + body"))
            }
            other => panic!("{when}: FLY + body: expected a reply, got {other:?}"),
        };
        // A message body over the message limit.
        let big = ContentKey::random().seal(&vec![b'm'; MAX_MESSAGE_LEN + 8]);
        for head in [
            format!("SEND bob {key}"),
            format!("SEND_TO_GROUP devs {key}"),
        ] {
            send_with_body(raw, &head, &big);
            match raw.recv() {
                ServerMessage::Reply(r) => expect_err(
                    r,
                    ErrorCode::TooLarge,
                    &format!("{when}: {head:?} + big body"),
                ),
                other => panic!("{when}: {head:?} + big body: expected a reply, got {other:?}"),
            };
        }
        let bad_names = [
            "JOIN ../x".to_string(),
            format!("CREATE_GROUP {long_name}"),
            "CREATE_GROUP file".to_string(),
            "JOIN FILE".to_string(),
            "LEAVE a/b".to_string(),
            "JOIN -dash".to_string(),
            "LOGIN file pw".to_string(),
            "CREATE_USER Eve ../eve pw".to_string(),
            "CREATE_USER Eve file pw".to_string(),
            format!("CREATE_USER Eve {long_name} pw"),
            format!("SEND_FILE ../bob 1 {sha} a.txt"),
            format!("SEND_TO_GROUP_FILE devs,,x 1 {sha} a.txt"),
            "HISTORY ../x".to_string(),
            "HISTORY @file".to_string(),
            "HISTORY #a/b 5".to_string(),
        ];
        for head in &bad_names {
            expect_err(
                raw.request(head),
                ErrorCode::BadName,
                &format!("{when}: {head:?}"),
            );
        }
        for head in [
            format!("SEND ../x {key}"),
            format!("SEND_TO_GROUP a,../b {key}"),
        ] {
            send_with_body(raw, &head, &body);
            match raw.recv() {
                ServerMessage::Reply(r) => {
                    expect_err(r, ErrorCode::BadName, &format!("{when}: {head:?}"))
                }
                other => panic!("{when}: {head:?}: expected a reply, got {other:?}"),
            };
        }
    };

    parse_errors(&mut raw, "before login");
    by.check("bad requests before login");

    // Still usable: register and log in on the same connection.
    expect_ok(
        raw.request("CREATE_USER Eve eve pw-eve"),
        "CREATE_USER after errors",
    );
    expect_ok(raw.request("LOGIN eve pw-eve"), "LOGIN after errors");
    expect_ok(raw.request("LIST"), "LIST after login");

    parse_errors(&mut raw, "after login");
    expect_err(
        raw.request("LOGIN eve pw-eve"),
        ErrorCode::AlreadyLoggedIn,
        "second LOGIN",
    );
    expect_err(
        raw.request("CREATE_USER X x pw"),
        ErrorCode::AlreadyLoggedIn,
        "CREATE_USER logged in",
    );
    expect_err(
        raw.request("JOIN nosuchgroup"),
        ErrorCode::NoSuchGroup,
        "JOIN unknown",
    );
    expect_err(
        raw.request("LEAVE nosuchgroup"),
        ErrorCode::NoSuchGroup,
        "LEAVE unknown",
    );
    expect_err(
        raw.request("FILE_END 424242"),
        ErrorCode::NoSuchTransfer,
        "FILE_END unknown",
    );
    expect_err(
        raw.request("FILE_ABORT 424242"),
        ErrorCode::NoSuchTransfer,
        "FILE_ABORT unknown",
    );
    send_with_body(&mut raw, &format!("SEND nobody {key}"), &body);
    match raw.recv() {
        ServerMessage::Reply(r) => expect_err(r, ErrorCode::UnknownUser, "SEND to unknown user"),
        other => panic!("expected a reply, got {other:?}"),
    };

    // And the usable connection really delivers: eve -> bystander-a.
    let k = ContentKey::random();
    send_with_body(
        &mut raw,
        &format!("SEND bystander-a {}", k.to_b64()),
        &k.seal(b"from eve"),
    );
    match raw.recv() {
        ServerMessage::Reply(r) => expect_ok(r, "SEND from eve"),
        other => panic!("expected a reply, got {other:?}"),
    };
    let (_, from, _, text) = next_message(&by.a);
    assert_eq!((from.as_str(), text.as_str()), ("eve", "from eve"));
    by.check("bad requests after login");
}

// ---------------------------------------------------------------------------
// 2. Byte-level attacks after a valid handshake: that connection is closed
// ---------------------------------------------------------------------------

/// What to do to a healthy, keyed connection.
type Attack = fn(&mut Forger);

#[test]
fn corrupt_lines_close_only_that_connection() {
    let server = common::start_server();
    let by = Bystanders::new(&server);

    // (name, attack, what the BYE must say; None where a reset may beat it)
    let cases: Vec<(&str, Attack, Option<&str>)> = vec![
        (
            "a line of garbage",
            |f| f.write(b"this is not a frame\n"),
            Some("line is not head.body.tag"),
        ),
        (
            "binary garbage",
            |f| f.write(b"\xff\xfe\x00\x01garbage\r\n"),
            Some("line is not head.body.tag"),
        ),
        (
            "an empty line",
            |f| f.write(b"\n"),
            Some("line is not head.body.tag"),
        ),
        (
            "invalid base64 in the tag",
            |f| {
                let mut l = b"QUJDREVGR0g=..".to_vec();
                l.extend_from_slice(&[b'@'; 44]);
                l.push(b'\n');
                f.write(&l)
            },
            Some("invalid base64"),
        ),
        (
            "invalid base64 in the head (valid MAC)",
            |f| {
                let l = f.line("!!not*base64!!", "");
                f.write(&l)
            },
            Some("invalid base64"),
        ),
        (
            "invalid base64 in the body (valid MAC)",
            |f| {
                let h = f.head(b"LIST");
                let l = f.line(&h, "%%%%not base64%%%%");
                f.write(&l)
            },
            Some("bad body"),
        ),
        (
            "a body that is not whole blocks (valid MAC)",
            |f| {
                let h = f.head(b"LIST");
                let l = f.line(&h, "AAAA");
                f.write(&l)
            },
            Some("bad body"),
        ),
        (
            "one byte flipped in the head",
            |f| {
                let mut l = f.sealed("LIST");
                l[3] ^= 0x01;
                f.write(&l)
            },
            Some("MAC check failed"),
        ),
        (
            "one byte flipped in the tag",
            |f| {
                let mut l = f.sealed("LIST");
                // Swap one tag character for another valid base64 character.
                let i = l.len() - 5;
                l[i] = if l[i] == b'A' { b'B' } else { b'A' };
                f.write(&l)
            },
            Some("MAC check failed"),
        ),
        (
            "a replayed line",
            |f| {
                let l = f.sealed("LIST");
                f.write(&l);
                match f.recv() {
                    ServerMessage::Reply(r) => {
                        expect_err(r, ErrorCode::NotLoggedIn, "first copy");
                    }
                    other => panic!("expected a reply, got {other:?}"),
                }
                f.write(&l)
            },
            Some("MAC check failed"),
        ),
        (
            "reordered lines",
            |f| {
                let first = f.sealed("LIST");
                let second = f.sealed("HELP");
                let mut both = second;
                both.extend_from_slice(&first);
                f.write(&both)
            },
            Some("MAC check failed"),
        ),
        (
            "a dropped line",
            |f| {
                let _dropped = f.sealed("LIST");
                let second = f.sealed("HELP");
                f.write(&second)
            },
            Some("MAC check failed"),
        ),
        (
            "a line cut in half, then a newline",
            |f| {
                let l = f.sealed("LIST");
                let mut half = l[..l.len() / 2].to_vec();
                half.push(b'\n');
                f.write(&half)
            },
            Some("protocol error"),
        ),
        (
            "a line cut in half, then end of stream",
            |f| {
                let l = f.sealed("LIST");
                f.write(&l[..l.len() / 2]);
                f.stream.shutdown(Shutdown::Write).unwrap();
            },
            Some("connection closed in the middle of a line"),
        ),
        (
            "bad 3DES padding (valid MAC)",
            |f| {
                // Encrypt one all-zero block and keep only its first
                // ciphertext block: it decrypts to a last byte of 0.
                let iv = [1u8; 8];
                let mut ct = Vec::new();
                TdesKey::new(&f.c2s.enc).encrypt_into(&iv, &[0u8; 8], &mut ct);
                let mut raw = iv.to_vec();
                raw.extend_from_slice(&ct[..8]);
                let l = f.line(&B64.encode(raw), "");
                f.write(&l)
            },
            Some("bad 3DES padding"),
        ),
        (
            "a head that is only an IV (valid MAC)",
            |f| {
                let l = f.line(&B64.encode([9u8; 8]), "");
                f.write(&l)
            },
            Some("bad 3DES padding"),
        ),
        (
            "a head that is not whole blocks (valid MAC)",
            |f| {
                let l = f.line(&B64.encode([9u8; 21]), "");
                f.write(&l)
            },
            Some("bad 3DES padding"),
        ),
        (
            "a head that is not UTF-8 (valid MAC)",
            |f| {
                let h = f.head(&[0xff, 0xfe, 0xfd, b'L']);
                let l = f.line(&h, "");
                f.write(&l)
            },
            Some("not UTF-8"),
        ),
        (
            "a head over the head limit (valid MAC)",
            |f| {
                let h = f.head("A".repeat(MAX_HEAD_LEN + 1000).as_bytes());
                let l = f.line(&h, "");
                f.write(&l)
            },
            Some("not UTF-8 text within the size limit"),
        ),
        (
            "a line over 64 KiB without a newline",
            |f| {
                // The server must give up after 64 KiB, not wait for a newline.
                f.write(&vec![b'A'; MAX_LINE_LEN + 4096]);
            },
            None,
        ),
    ];

    for (i, (name, attack, reason)) in cases.into_iter().enumerate() {
        let mut f = Forger::connect(&server);
        f.probe();
        attack(&mut f);
        let (bye, _) = read_until_closed(&mut f.reader);
        if let Some(reason) = reason {
            let bye = bye.unwrap_or_else(|| panic!("{name}: closed without a BYE"));
            assert!(bye.starts_with("protocol error"), "{name}: BYE {bye:?}");
            assert!(
                bye.contains(reason),
                "{name}: BYE {bye:?} should mention {reason:?}"
            );
        } else if let Some(bye) = bye {
            assert!(bye.starts_with("protocol error"), "{name}: BYE {bye:?}");
        }
        by.check(name);
        fresh_client_works(&server, &format!("fresh{i}"));
    }
}

// ---------------------------------------------------------------------------
// 3. Handshake attacks: "MUCHAT/2 ERROR ..." then close
// ---------------------------------------------------------------------------

/// A group 14 value as the 512 hex digits of the wire.
fn pad_hex(v: &BigUint) -> String {
    format!("{:0>512}", v.to_str_radix(16))
}

/// Sends `bytes` as a handshake and returns the server's reply line (empty if none).
fn handshake_reply(server: &Server, bytes: &[u8]) -> (String, BufReader<TcpStream>) {
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
fn assert_closed(reader: &mut BufReader<TcpStream>, ctx: &str) {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{ctx}: more after the reply: {rest:?}"),
        Err(e) if is_timeout(&e) => panic!("{ctx}: the server did not close within {WAIT:?}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{ctx}: {e}"),
    }
}

#[test]
fn bad_handshakes_are_refused_and_closed() {
    let server = start_server_with(Config {
        handshake_timeout: Duration::from_secs(1),
        ..common::test_config()
    });
    let by = Bystanders::new(&server);
    let p = dh::prime();
    let one = BigUint::from(1u32);
    let two = BigUint::from(2u32);
    let valid = pad_hex(&two.pow(100));

    let not_muchat = "does not speak the muchat protocol";
    let version = "unsupported protocol version";
    let malformed = "must be 512 hex digits";
    let range = "outside 2..p-2";
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        ("HTTP".into(), b"GET / HTTP/1.1\r\n".to_vec(), not_muchat),
        ("empty line".into(), b"\n".to_vec(), not_muchat),
        ("binary".into(), b"\xff\xfe\x00\x80\n".to_vec(), not_muchat),
        (
            "lowercase".into(),
            format!("muchat/2 {valid}\n").into_bytes(),
            not_muchat,
        ),
        (
            "over-long line".into(),
            format!("MUCHAT/2 {}\n", "a".repeat(3000)).into_bytes(),
            not_muchat,
        ),
        (
            "MUCHAT/9".into(),
            format!("MUCHAT/9 {valid}\n").into_bytes(),
            version,
        ),
        (
            "MUCHAT/20".into(),
            format!("MUCHAT/20 {valid}\n").into_bytes(),
            version,
        ),
        ("no value".into(), b"MUCHAT/2\n".to_vec(), malformed),
        (
            "0".into(),
            format!("MUCHAT/2 {}\n", pad_hex(&BigUint::from(0u32))).into_bytes(),
            range,
        ),
        (
            "1".into(),
            format!("MUCHAT/2 {}\n", pad_hex(&one)).into_bytes(),
            range,
        ),
        (
            "p-1".into(),
            format!("MUCHAT/2 {}\n", pad_hex(&(p - &one))).into_bytes(),
            range,
        ),
        (
            "p".into(),
            format!("MUCHAT/2 {}\n", pad_hex(p)).into_bytes(),
            range,
        ),
        (
            "2^2048-1".into(),
            format!("MUCHAT/2 {}\n", "f".repeat(512)).into_bytes(),
            range,
        ),
        (
            "513 digits".into(),
            format!("MUCHAT/2 0{valid}\n").into_bytes(),
            malformed,
        ),
        (
            "511 digits".into(),
            format!("MUCHAT/2 {}\n", &valid[1..]).into_bytes(),
            malformed,
        ),
        ("unpadded 2".into(), b"MUCHAT/2 2\n".to_vec(), malformed),
        (
            "non-hex".into(),
            format!("MUCHAT/2 {}\n", "zz".repeat(256)).into_bytes(),
            malformed,
        ),
        (
            "sign".into(),
            format!("MUCHAT/2 +{}\n", &valid[1..]).into_bytes(),
            malformed,
        ),
        (
            "trailing word".into(),
            format!("MUCHAT/2 {valid} 1\n").into_bytes(),
            malformed,
        ),
    ];
    for (name, bytes, reason) in &cases {
        let (reply, mut reader) = handshake_reply(&server, bytes);
        assert!(
            reply.starts_with("MUCHAT/2 ERROR "),
            "{name}: expected MUCHAT/2 ERROR, got {reply:?}"
        );
        assert!(
            reply.contains(reason),
            "{name}: {reply:?} should mention {reason:?}"
        );
        assert!(
            reply.ends_with('\n'),
            "{name}: unterminated reply {reply:?}"
        );
        assert_closed(&mut reader, name);
        by.check(&format!("handshake {name}"));
    }

    // Controls: the boundaries 2 and p-2 are accepted.
    for (name, v) in [("2", two.clone()), ("p-2", p - &two)] {
        let (reply, _) = handshake_reply(&server, format!("MUCHAT/2 {}\n", pad_hex(&v)).as_bytes());
        let value = reply
            .trim_end()
            .strip_prefix("MUCHAT/2 ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("ERROR");
        assert!(
            PublicValue::from_hex(value).is_ok(),
            "{name} refused: {reply:?}"
        );
    }

    // A client that says nothing, or stops mid-line, is closed after the
    // handshake timeout (no reply: there is nothing to answer).
    for (name, bytes) in [("silent", &b""[..]), ("half a hello", &b"MUCHAT/2 abc"[..])] {
        let stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        (&stream).write_all(bytes).unwrap();
        let mut reader = BufReader::new(stream);
        assert_closed(&mut reader, name);
        by.check(&format!("handshake {name}"));
    }

    // A client trickling its hello a byte at a time cannot stretch the
    // handshake: the deadline is for the whole hello, not for each read.
    // (The pause paces the attacker; nothing is synchronised by it.)
    let stream = TcpStream::connect(server.local_addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut trickle = stream.try_clone().unwrap();
    let started = Instant::now();
    let attacker = std::thread::spawn(move || {
        let _ = trickle.write_all(b"MUCHAT/2 ");
        for _ in 0..100 {
            if trickle.write_all(b"a").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut reader = BufReader::new(stream);
    assert_closed(&mut reader, "trickled hello");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a trickled hello kept the handshake open for {took:?} (deadline 1 s)"
    );
    attacker.join().unwrap();
    by.check("handshake trickled hello");

    fresh_client_works(&server, "after-handshakes");
}

// ---------------------------------------------------------------------------
// 4. A reader that never reads is cut off; nobody else waits for it
// ---------------------------------------------------------------------------

#[test]
fn a_stalled_reader_does_not_stall_the_others() {
    const MAX_MESSAGES: usize = 8000;
    const AFTER_DROP: usize = 200;
    let server = start_server_with(Config {
        outbox: OutboxLimits {
            urgent: 64,
            bulk: 4,
            bulk_timeout: Duration::from_secs(2),
        },
        ..common::test_config()
    });
    let sender = login(&server, "sender");
    let fast = login(&server, "fast");
    ok(&sender, "CREATE_GROUP room");
    ok(&fast, "JOIN room");
    let mut stuck = raw_login(&server, "stuck");
    expect_ok(stuck.request("JOIN room"), "stuck JOIN");
    // From here on `stuck` reads nothing until the end of the test.

    let filler = "x".repeat(2000);
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let room = [GroupName::parse("room").unwrap()];
        let mut texts = Vec::new();
        let mut dropped_at = None;
        while texts.len() < MAX_MESSAGES {
            let n = texts.len();
            let text = format!("{n:05} {filler}");
            let reply = sender.send_group_text(&room, &text).expect("reply");
            let reply = expect_ok(reply, &format!("group message {n}"));
            let live = sessions_reached(&reply);
            match dropped_at {
                None if live == 1 => dropped_at = Some(n),
                None => assert_eq!(live, 2, "message {n}: {reply}"),
                Some(_) => assert_eq!(live, 1, "message {n}: stuck is back? {reply}"),
            }
            texts.push(text);
            if dropped_at.is_some_and(|d| n >= d + AFTER_DROP) {
                break;
            }
        }
        let _ = done_tx.send(());
        (sender, texts, dropped_at)
    });
    // The sender must never block on the stuck reader: all replies come back.
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the sender was blocked: its replies stopped coming");
    let (sender, texts, dropped_at) = worker.join().expect("sender thread");
    let dropped_at = dropped_at.unwrap_or_else(|| {
        panic!(
            "{} messages sent, the stuck reader was never disconnected",
            texts.len()
        )
    });

    // The fast receiver got every message, in order, including those sent
    // while the stuck one was being cut off.
    for (i, want) in texts.iter().enumerate() {
        let (_, from, to, text) = next_message(&fast);
        assert_eq!(
            (from.as_str(), to.as_str()),
            ("sender", "#room"),
            "message {i}"
        );
        assert!(
            text == *want,
            "message {i} differs: got {:?}...",
            &text[..text.len().min(12)]
        );
    }

    // The stuck connection was closed by the server: reading it now yields
    // what was already in flight, then the end, and never everything.
    let (_, got) = read_until_closed(&mut stuck.reader);
    assert!(
        got < texts.len(),
        "stuck got all {got} messages: it was never cut off"
    );
    assert!(
        got <= dropped_at + 1,
        "stuck got {got} but was dropped at {dropped_at}"
    );

    // Everyone else carries on.
    expect_ok(
        sender
            .send_text(&user("fast"), "still fine")
            .expect("reply"),
        "direct message",
    );
    let (_, from, _, text) = next_message(&fast);
    assert_eq!((from.as_str(), text.as_str()), ("sender", "still fine"));
    expect_ok(
        fast.send_text(&user("sender"), "me too").expect("reply"),
        "direct message",
    );
    let (_, from, _, text) = next_message(&sender);
    assert_eq!((from.as_str(), text.as_str()), ("fast", "me too"));
    let list = ok(&sender, "LIST");
    assert!(list.contains("fast"), "{list}");
    fresh_client_works(&server, "newcomer");
}

// ---------------------------------------------------------------------------
// 5. A file over the server's limit
// ---------------------------------------------------------------------------

#[test]
fn files_over_the_limit_are_refused_before_anyone_hears_of_them() {
    let server = start_server_with(Config {
        max_file_size: 1000,
        ..common::test_config()
    });
    let by = Bystanders::new(&server);
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    ok(&alice, "CREATE_GROUP devs");
    ok(&bob, "JOIN devs");
    let dir = temp_dir("limit");
    let big = dir.join("big.bin");
    fs::write(&big, vec![7u8; 2000]).unwrap();

    let text = err(
        &alice,
        &format!("SEND FILE bob {}", big.display()),
        ErrorCode::TooLarge,
    );
    assert!(
        text.contains("1000"),
        "the error should state the limit: {text}"
    );
    err(
        &alice,
        &format!("SEND_TO_GROUP FILE devs {}", big.display()),
        ErrorCode::TooLarge,
    );
    assert_no_event(&bob);
    assert_no_event(&alice);

    // A raw sender lying about nothing but the size gets the same answer.
    let mut raw = raw_login(&server, "mallory");
    let sha = format_sha256(&[1; 32]);
    for size in ["1001", "18446744073709551615"] {
        let head = format!("SEND_FILE bob {size} {sha} x.bin");
        expect_err(raw.request(&head), ErrorCode::TooLarge, &head);
    }
    expect_err(
        raw.request(&format!("SEND_FILE bob 18446744073709551616 {sha} x.bin")),
        ErrorCode::Usage,
        "size past u64",
    );
    // The connection is still usable.
    expect_ok(raw.request("LIST"), "LIST");
    assert_no_event(&bob);
    by.check("oversized files");

    // Control: exactly the limit goes through.
    let fits = dir.join("fits.bin");
    fs::write(&fits, vec![9u8; 1000]).unwrap();
    ok(&alice, &format!("SEND FILE bob {}", fits.display()));
    match next_event(&bob) {
        ClientEvent::FileReceived { size, path, .. } => {
            assert_eq!(size, 1000);
            assert_eq!(fs::read(&path).unwrap(), vec![9u8; 1000]);
        }
        other => panic!("expected the 1000-byte file, got {other:?}"),
    }
    match next_event(&alice) {
        ClientEvent::FileSent {
            reply: Reply::Ok(_),
            ..
        } => {}
        other => panic!("expected FileSent, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 6. Chunks that do not belong
// ---------------------------------------------------------------------------

#[test]
fn stray_and_misfit_chunks_abort_and_malformed_chunks_close() {
    let server = common::start_server();
    let by = Bystanders::new(&server);
    let downloads = temp_dir("stray").join("downloads");
    let bob = client_with_downloads(&server, "bob", downloads.clone());

    // A chunk for a transfer that does not exist, before logging in.
    let mut raw = Raw::connect(&server);
    send_chunk(&mut raw, 999, 0, b"nothing to see");
    match raw.recv() {
        ServerMessage::FileAbort(999, why) => assert!(why.contains("no such transfer"), "{why}"),
        other => panic!("expected FILE_ABORT 999, got {other:?}"),
    }
    expect_err(
        raw.request("LIST"),
        ErrorCode::NotLoggedIn,
        "LIST after stray chunk",
    );
    expect_ok(raw.request("CREATE_USER Mallory mallory pw"), "CREATE_USER");
    expect_ok(raw.request("LOGIN mallory pw"), "LOGIN");

    // ... and logged in; a second stray chunk for the same id is dropped
    // quietly (the next thing read is the LIST reply, not another abort).
    send_chunk(&mut raw, 998, 0, b"stray");
    match raw.recv() {
        ServerMessage::FileAbort(998, why) => assert!(why.contains("no such transfer"), "{why}"),
        other => panic!("expected FILE_ABORT 998, got {other:?}"),
    }
    send_chunk(&mut raw, 998, 100, b"stray again");
    expect_ok(raw.request("LIST"), "LIST after stray chunks");
    assert_no_event(&bob);
    by.check("stray chunks");

    // Chunks that break the announced transfer: each aborts it for both ends.
    const C: usize = FILE_CHUNK_SIZE;
    // (what, announced size, chunks as (offset, length))
    type Case<'a> = (&'a str, u64, &'a [(u64, usize)]);
    let cases: [Case; 6] = [
        ("a chunk past the announced size", 10, &[(0, 100)]),
        ("a chunk at the announced end", 10, &[(0, 10), (10, 1)]),
        (
            "a chunk shorter than its share",
            2 * C as u64,
            &[(0, C - 100)],
        ),
        (
            "a chunk replayed at an old offset",
            2 * C as u64,
            &[(0, C), (0, C)],
        ),
        (
            "a chunk skipping ahead",
            3 * C as u64,
            &[(0, C), (2 * C as u64, C)],
        ),
        ("a chunk for a file announced empty", 0, &[(0, 1)]),
    ];
    for (name, size, chunks) in cases {
        let id = announce(&mut raw, "bob", size, &[3; 32], "victim.txt");
        for &(offset, len) in chunks {
            send_chunk(&mut raw, id, offset, &vec![b'z'; len]);
        }
        match raw.recv() {
            ServerMessage::FileAbort(got, why) => {
                assert_eq!(got, id, "{name}: abort for the wrong transfer");
                assert!(why.contains("announced size"), "{name}: {why}");
            }
            other => panic!("{name}: expected FILE_ABORT {id}, got {other:?}"),
        }
        let reason = expect_file_failed(&bob, id);
        assert!(reason.contains("aborted"), "{name}: {reason}");
        assert!(
            entries(&downloads).is_empty(),
            "{name}: left {:?}",
            entries(&downloads)
        );
        // The transfer is gone, the connection is fine.
        expect_err(
            raw.request(&format!("FILE_END {id}")),
            ErrorCode::NoSuchTransfer,
            name,
        );
        expect_ok(raw.request("LIST"), name);
        by.check(name);
    }

    // Control: the same connection can still send a proper file.
    let data = b"a proper file after all that".to_vec();
    let id = raw_send_file(&mut raw, "bob", "proper.txt", &data, &sha256(&data));
    match next_event(&bob) {
        ClientEvent::FileReceived { id: got, path, .. } => {
            assert_eq!(got, id);
            assert_eq!(fs::read(&path).unwrap(), data);
        }
        other => panic!("expected the proper file, got {other:?}"),
    }

    // A malformed chunk cannot be answered (chunks get no reply), so it ends
    // that connection with a BYE; an open transfer on it is aborted.
    let key = ContentKey::random();
    let small = key.seal(b"x");
    let oversized = key.seal(&vec![0; FILE_CHUNK_SIZE + 8]);
    let k = key.to_b64();
    let malformed: [(&str, String, Option<&Body>); 6] = [
        ("no body", format!("CHUNK 1 0 {k}"), None),
        (
            "bad key",
            format!("CHUNK 1 0 {}", "!".repeat(32)),
            Some(&small),
        ),
        ("bad id", format!("CHUNK x 0 {k}"), Some(&small)),
        ("missing offset", format!("CHUNK 1 {k}"), Some(&small)),
        (
            "lowercase, bad offset",
            format!("chunk 1 -1 {k}"),
            Some(&small),
        ),
        (
            "body over the chunk limit",
            format!("CHUNK 1 0 {k}"),
            Some(&oversized),
        ),
    ];
    for (i, (name, head, body)) in malformed.into_iter().enumerate() {
        let mut raw = raw_login(&server, &format!("chunker{i}"));
        let id = announce(&mut raw, "bob", 10, &[4; 32], "open.txt");
        let head = head
            .replace("CHUNK 1 ", &format!("CHUNK {id} "))
            .replace("chunk 1 ", &format!("chunk {id} "));
        match body {
            Some(b) => send_with_body(&mut raw, &head, b),
            None => raw.send(&head),
        }
        let (bye, others) = read_until_closed(&mut raw.reader);
        let bye = bye.unwrap_or_else(|| panic!("malformed chunk ({name}): closed without a BYE"));
        assert!(
            bye.starts_with("protocol error") && bye.contains("malformed"),
            "{name}: {bye}"
        );
        assert_eq!(others, 0, "{name}: unexpected frames before the BYE");
        let reason = expect_file_failed(&bob, id);
        assert!(reason.contains("aborted"), "{name}: {reason}");
        assert!(
            entries(&downloads).iter().all(|e| e == "proper.txt"),
            "{name}: {:?}",
            entries(&downloads)
        );
        by.check(&format!("malformed chunk ({name})"));
        fresh_client_works(&server, &format!("fresh-chunk{i}"));
    }
}

// ---------------------------------------------------------------------------
// 6b. Acknowledgements: only your own, and a malformed one cannot be answered
// ---------------------------------------------------------------------------

#[test]
fn foreign_acks_change_nothing_and_malformed_acks_close() {
    let server = common::start_server();
    let by = Bystanders::new(&server);
    let alice = login(&server, "alice");
    drop(login(&server, "bob")); // bob exists, and is offline from here on

    // A message waits for bob; mallory acknowledges its id (and every id
    // around it) as if it were hers.
    let reply = expect_ok(
        alice
            .send_text(&user("bob"), "for bob only")
            .expect("reply"),
        "SEND to offline bob",
    );
    let id: u64 = reply
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .expect("message id");
    let mut raw = raw_login(&server, "mallory");
    raw.send(&format!("ACK {id}"));
    let all: Vec<String> = (1..=id + 5).map(|i| i.to_string()).collect();
    raw.send(&format!("ACK {}", all.join(",")));
    // A stored message after the ACKs: the store applies writes in order,
    // so once this is acknowledged the ACKs have been applied.
    let k = ContentKey::random();
    send_with_body(
        &mut raw,
        &format!("SEND alice {}", k.to_b64()),
        &k.seal(b"barrier"),
    );
    match raw.recv() {
        ServerMessage::Reply(r) => expect_ok(r, "SEND after ACKs"),
        other => panic!("expected a reply, got {other:?}"),
    };
    let (_, from, _, text) = next_message(&alice);
    assert_eq!((from.as_str(), text.as_str()), ("mallory", "barrier"));

    // bob still gets his message.
    let bob = common::login_again(&server, "bob");
    let (got, from, to, text) = next_message(&bob);
    assert_eq!(
        (got, from.as_str(), to.as_str(), text.as_str()),
        (id, "alice", "@bob", "for bob only"),
        "mallory's ACK removed bob's pending message"
    );
    by.check("foreign ACKs");

    // Malformed ACKs end the connection with a BYE.
    let too_many: Vec<String> = (1..=1025).map(|i| i.to_string()).collect();
    let malformed = [
        "ACK".to_string(),
        "ACK x".to_string(),
        "ACK 1,,2".to_string(),
        "ACK 1 2".to_string(),
        "ack -1".to_string(),
        format!("ACK {}", too_many.join(",")),
    ];
    for (i, head) in malformed.iter().enumerate() {
        let mut raw = raw_login(&server, &format!("acker{i}"));
        raw.send(head);
        let (bye, others) = read_until_closed(&mut raw.reader);
        let bye = bye.unwrap_or_else(|| panic!("{head:?}: closed without a BYE"));
        assert!(
            bye.starts_with("protocol error") && bye.contains("malformed"),
            "{head:?}: {bye}"
        );
        assert_eq!(others, 0, "{head:?}: unexpected frames before the BYE");
        by.check(&format!("malformed {head:.20}"));
        fresh_client_works(&server, &format!("fresh-ack{i}"));
    }
    // With a body, too.
    let mut raw = raw_login(&server, "acker-body");
    send_with_body(&mut raw, "ACK 1", &k.seal(b"x"));
    let (bye, _) = read_until_closed(&mut raw.reader);
    assert!(bye.is_some_and(|b| b.contains("malformed")), "ACK + body");
    by.check("ACK with a body");
    assert_no_event(&bob);
}

// ---------------------------------------------------------------------------
// 7. Hostile file names
// ---------------------------------------------------------------------------

#[test]
fn hostile_file_names_land_inside_the_downloads_directory() {
    let server = common::start_server();
    let by = Bystanders::new(&server);
    // base/a/b/c/downloads, with decoy directories where a traversal would
    // land, so that a client that followed the names would succeed and be
    // caught rather than fail on a missing directory.
    let base = temp_dir("hostile");
    let downloads = base.join("a").join("b").join("c").join("downloads");
    fs::create_dir_all(base.join("a").join("b").join("etc")).unwrap();
    fs::create_dir_all(base.join("abs")).unwrap();
    let abs_target = base.join("abs").join("owned");
    let bob = client_with_downloads(&server, "bob", downloads.clone());
    let mut raw = raw_login(&server, "mallory");

    // (name sent, the saved name expected; None = "file-<id>")
    let abs_name = abs_target.display().to_string();
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("../../etc/passwd", Some("passwd")),
        ("/abs/path", Some("path")),
        (&abs_name, Some("owned")),
        ("..", None),
        ("...", None),
        ("/", None),
        ("sub/", None),
        ("..\\..\\win.ini", Some("win.ini")),
        ("a/b/../../../../../etc/passwd", Some("passwd (1)")),
        (".bashrc", Some("bashrc")),
        ("evil\u{202E}txt.exe", Some("eviltxt.exe")),
        ("  spaced  name.txt  ", Some("spaced  name.txt")),
    ];
    let mut saved = Vec::new();
    for (i, (name, expected)) in cases.iter().enumerate() {
        // The first one spans two chunks.
        let mut data = format!("content #{i} of {name:?}\n").into_bytes();
        if i == 0 {
            data.resize(FILE_CHUNK_SIZE + 100, b'#');
        }
        let id = raw_send_file(&mut raw, "bob", name, &data, &sha256(&data));
        let (path, size) = match next_event(&bob) {
            ClientEvent::FileReceived {
                id: got,
                path,
                size,
                from,
                ..
            } => {
                assert_eq!(got, id, "{name:?}");
                assert_eq!(from.as_str(), "mallory");
                (path, size)
            }
            other => panic!("{name:?}: expected FileReceived, got {other:?}"),
        };
        assert_eq!(
            path.parent(),
            Some(downloads.as_path()),
            "{name:?} saved at {}",
            path.display()
        );
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        let want = expected
            .map(str::to_string)
            .unwrap_or_else(|| format!("file-{id}"));
        assert_eq!(file_name, want, "{name:?}");
        assert!(
            !file_name.starts_with('.'),
            "{name:?}: hidden name {file_name:?}"
        );
        assert_eq!(size, data.len() as u64);
        assert_eq!(fs::read(&path).unwrap(), data, "{name:?}: content");
        saved.push((path, data));
        by.check(&format!("file name {name:?}"));
    }

    // Nothing overwritten (the second "passwd" got a new name), nothing
    // written anywhere but directly in the downloads directory, no leftovers.
    for (path, data) in &saved {
        assert_eq!(
            &fs::read(path).unwrap(),
            data,
            "{} was overwritten",
            path.display()
        );
    }
    let mut all = files_under(&base);
    all.sort();
    for f in &all {
        assert_eq!(
            f.parent(),
            Some(downloads.as_path()),
            "file written outside downloads: {}",
            f.display()
        );
    }
    assert_eq!(all.len(), saved.len(), "unexpected files: {all:?}");
    assert!(!abs_target.exists());
    assert!(entries(&base.join("a").join("b").join("etc")).is_empty());
    assert!(entries(&base.join("abs")).is_empty());

    // Names the server must refuse outright: control characters, empty.
    let sha = format_sha256(&[0; 32]);
    for name in ["a\u{1b}[2Jb", "new\nline", "tab\there", ""] {
        let head = format!("SEND_FILE bob 5 {sha} {name}");
        expect_err(raw.request(&head), ErrorCode::Usage, &head);
    }
    assert_no_event(&bob);
}

// ---------------------------------------------------------------------------
// 8. Files that do not match what was announced
// ---------------------------------------------------------------------------

#[test]
fn corrupted_files_are_discarded_without_a_trace() {
    let server = common::start_server();
    let by = Bystanders::new(&server);
    let downloads = temp_dir("corrupt").join("downloads");
    let bob = client_with_downloads(&server, "bob", downloads.clone());
    let mut raw = raw_login(&server, "mallory");

    // Control: an honest file arrives (so the failures below are the checks').
    let honest = b"honest content".to_vec();
    let id = raw_send_file(&mut raw, "bob", "honest.txt", &honest, &sha256(&honest));
    let honest_path = match next_event(&bob) {
        ClientEvent::FileReceived { id: got, path, .. } => {
            assert_eq!(got, id);
            path
        }
        other => panic!("expected the honest file, got {other:?}"),
    };
    assert_eq!(entries(&downloads), vec!["honest.txt".to_string()]);

    // Wrong SHA-256, one chunk and several.
    for (name, len) in [
        ("wrong-sha.txt", 500),
        ("wrong-sha-big.bin", 2 * FILE_CHUNK_SIZE + 7),
    ] {
        let data = vec![b'q'; len];
        let id = raw_send_file(&mut raw, "bob", name, &data, &sha256(b"something else"));
        let reason = expect_file_failed(&bob, id);
        assert!(reason.contains("SHA-256"), "{name}: {reason}");
        assert_eq!(
            entries(&downloads),
            vec!["honest.txt".to_string()],
            "{name}: leftovers"
        );
        by.check(name);
    }

    // Fewer bytes than announced, then FILE_END.
    // 97 bytes pad to the same ciphertext length as 100, so the server
    // cannot tell; the receiver must.
    let data = vec![b's'; 97];
    let id = announce(&mut raw, "bob", 100, &sha256(&data), "short.txt");
    send_chunk(&mut raw, id, 0, &data);
    expect_ok(raw.request(&format!("FILE_END {id}")), "FILE_END short");
    let reason = expect_file_failed(&bob, id);
    assert!(reason.contains("97"), "short file: {reason}");
    assert_eq!(
        entries(&downloads),
        vec!["honest.txt".to_string()],
        "short file: leftovers"
    );
    by.check("a short file");

    // A chunk whose body is not under the key its head names.
    let data = vec![b'k'; 64];
    let id = announce(&mut raw, "bob", 64, &sha256(&data), "wrong-key.txt");
    let body = ContentKey::random().seal(&data);
    send_with_body(
        &mut raw,
        &format!("CHUNK {id} 0 {}", ContentKey::random().to_b64()),
        &body,
    );
    expect_ok(raw.request(&format!("FILE_END {id}")), "FILE_END wrong key");
    expect_file_failed(&bob, id);
    assert_eq!(
        entries(&downloads),
        vec!["honest.txt".to_string()],
        "wrong key: leftovers"
    );

    // The sender gives up midway: the partial file goes too.
    let data = vec![b'h'; 3 * FILE_CHUNK_SIZE];
    let id = announce(
        &mut raw,
        "bob",
        data.len() as u64,
        &sha256(&data),
        "half.bin",
    );
    send_chunk(&mut raw, id, 0, &data[..FILE_CHUNK_SIZE]);
    expect_ok(raw.request(&format!("FILE_ABORT {id}")), "FILE_ABORT");
    let reason = expect_file_failed(&bob, id);
    assert!(reason.contains("cancelled"), "{reason}");
    assert_eq!(
        entries(&downloads),
        vec!["honest.txt".to_string()],
        "abort: leftovers"
    );

    // The sender vanishes midway: same.
    let id = announce(
        &mut raw,
        "bob",
        data.len() as u64,
        &sha256(&data),
        "vanish.bin",
    );
    send_chunk(&mut raw, id, 0, &data[..FILE_CHUNK_SIZE]);
    // A round trip proves the chunk was taken before we hang up.
    expect_ok(raw.request("LIST"), "LIST");
    drop(raw);
    expect_file_failed(&bob, id);
    assert_eq!(
        entries(&downloads),
        vec!["honest.txt".to_string()],
        "vanish: leftovers"
    );

    assert_eq!(fs::read(&honest_path).unwrap(), honest);
    assert_no_event(&bob);
    by.check("corrupted files");
}
