//! Helpers shared by the integration tests: a server on 127.0.0.1:0 in a
//! temporary directory (removed when the test ends), logged-in clients,
//! and waiting for replies and events (never sleeping).
#![allow(dead_code)]

pub mod engines;

use std::io::BufReader;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use muchat::client::{Client, ClientConfig, ClientEvent, Trust};
use muchat::connection::{FrameReader, FrameWriter};
use muchat::event::{Delivery, ErrorCode, Reply, ServerMessage};
use muchat::frame::Frame;
use muchat::handshake;
use muchat::names::{GroupName, MessageRef, Username};
use muchat::server::{Config, Server};
use tempfile::TempDir;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Settings for a test server in `dir`: cheap password hashing (tests
/// create many accounts; one test checks the real cost), and the rate,
/// per-address and per-user limits off (tests run many clients from one
/// address, fast; the adversarial tests turn them back on).
pub fn test_config(dir: &Path) -> Config {
    Config {
        data_dir: dir.join("data"),
        password_cost: muchat::password::PasswordCost::TESTING,
        rate: 0,
        max_connections_per_ip: 0,
        max_sessions_per_user: 0,
        handshake_rate: 0,
        max_password_checks: 0,
        ..Config::default()
    }
}

/// Sends the server's log to the test's output when `MUCHAT_TEST_LOG` is set.
fn init_log() {
    if std::env::var_os("MUCHAT_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("debug")
            .try_init();
    }
}

/// A server for one test, with the temporary directory it (and the test's
/// clients) keep their files in; both go when it is dropped.
pub struct TestServer {
    pub server: Option<Server>,
    pub dir: TempDir,
    pub config: Config,
    next: AtomicUsize,
}

impl std::ops::Deref for TestServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }
}

impl TestServer {
    /// A fresh directory inside the test's temporary directory.
    pub fn path(&self, tag: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let p = self.dir.path().join(format!("{tag}-{n}"));
        std::fs::create_dir_all(&p).expect("temp dir");
        p
    }

    /// Stops the server and starts it again on the same data directory
    /// (and port 0, so a new address).
    pub fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        self.server = Some(bind(self.config.clone()));
    }

    /// Stops the server for good.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

fn bind(config: Config) -> Server {
    init_log();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    Server::start(listener, config).expect("start server")
}

pub fn start_server() -> TestServer {
    start_server_with(|_| {})
}

/// A server with its settings adjusted by `f` (start from [`test_config`]).
pub fn start_server_with(f: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    f(&mut config);
    TestServer {
        server: Some(bind(config.clone())),
        dir,
        config,
        next: AtomicUsize::new(0),
    }
}

/// Client settings for `server`: its key pinned by fingerprint (never the
/// user's own known_servers file), files into `downloads`, nothing
/// remembered between runs, no reconnecting.
pub fn client_config(server: &Server, downloads: PathBuf) -> ClientConfig {
    ClientConfig {
        downloads,
        trust: Trust::Fingerprint(server.fingerprint()),
        state_dir: None,
        reconnect: false,
    }
}

pub fn connect(server: &TestServer) -> Client {
    let config = client_config(server, server.path("dl"));
    Client::connect(server.local_addr(), config).expect("connect")
}

pub fn user(name: &str) -> Username {
    Username::parse(name).expect("valid test username")
}

pub fn group(name: &str) -> GroupName {
    GroupName::parse(name).expect("valid test group name")
}

pub fn at(s: &str) -> MessageRef {
    MessageRef::parse(s).expect("valid message reference")
}

/// Runs a typed command line and returns the reply.
pub fn run(client: &Client, line: &str) -> Reply {
    let command = muchat::command::Command::parse(line).expect("valid test command");
    client.execute(&command).expect("reply")
}

/// Runs a command that must succeed; returns the OK text.
pub fn ok(client: &Client, line: &str) -> String {
    match run(client, line) {
        Reply::Ok { text, .. } => text,
        Reply::Err { code, text } => panic!("{line:?} failed: {code} {text}"),
    }
}

/// Runs a send that must succeed; returns where the message went.
pub fn sent(client: &Client, line: &str) -> Vec<MessageRef> {
    match run(client, line) {
        r @ Reply::Ok { .. } => {
            assert!(!r.sent().is_empty(), "{line:?}: no references in {r:?}");
            r.sent().to_vec()
        }
        Reply::Err { code, text } => panic!("{line:?} failed: {code} {text}"),
    }
}

/// Runs a command that must fail with `code`; returns the error text.
pub fn err(client: &Client, line: &str, code: ErrorCode) -> String {
    match run(client, line) {
        Reply::Err { code: c, text } if c == code => text,
        other => panic!("{line:?}: expected ERR {code}, got {other:?}"),
    }
}

/// Creates an account and logs in as it on a new connection.
pub fn login(server: &TestServer, name: &str) -> Client {
    let c = connect(server);
    ok(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
    ok(&c, &format!("LOGIN {name} pw-{name}"));
    c
}

/// Another session for an existing account.
pub fn login_again(server: &TestServer, name: &str) -> Client {
    let c = connect(server);
    ok(&c, &format!("LOGIN {name} pw-{name}"));
    c
}

pub fn next_event(client: &Client) -> ClientEvent {
    client
        .events()
        .recv_timeout(WAIT)
        .expect("an event within the time limit")
}

/// A received message, in the forms tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// `#group:seq` or `@user:seq`.
    pub at: String,
    pub from: String,
    pub text: String,
}

/// The next message event: any other event first is a failure.
pub fn next_message(client: &Client) -> Msg {
    match next_event(client) {
        ClientEvent::Message { at, from, text, .. } => Msg {
            at: at.to_string(),
            from: from.to_string(),
            text,
        },
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Proves no event is queued for `client` by a round trip: a reply to a
/// request sent now comes after every event already sent to it.
pub fn assert_no_event(client: &Client) {
    // HELP sent to the server (not answered locally) works logged in or not.
    let reply = client
        .request(&muchat::request::Request::Help)
        .expect("reply");
    assert!(reply.is_ok());
    if let Ok(e) = client.events().try_recv() {
        panic!("unexpected event {e:?}");
    }
}

/// A raw connection that speaks frames directly, for hand-crafted input
/// (the client library would refuse to send it).
pub struct Raw {
    pub reader: FrameReader<BufReader<TcpStream>>,
    pub writer: FrameWriter<TcpStream>,
    pub stream: TcpStream,
    /// Group keys received, to open `GMSG`s.
    pub group_keys: std::collections::HashMap<u64, (GroupName, muchat::content::ContentKey)>,
}

impl Raw {
    pub fn connect(server: &Server) -> Raw {
        Raw::over(TcpStream::connect(server.local_addr()).expect("connect"))
    }

    /// A raw connection over a stream already connected to a server.
    pub fn over(stream: TcpStream) -> Raw {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream.try_clone().unwrap();
        let keyed = handshake::client(&mut reader, &mut w).expect("handshake");
        Raw {
            reader: FrameReader::new(reader, keyed.opener),
            writer: FrameWriter::new(w, keyed.sealer),
            stream,
            group_keys: Default::default(),
        }
    }

    pub fn send(&mut self, head: &str) {
        self.writer.write_frame(&Frame::head(head)).expect("write");
    }

    pub fn send_frame(&mut self, f: &Frame) {
        self.writer.write_frame(f).expect("write");
    }

    /// The next server message. Group keys are kept (not returned), and a
    /// `GMSG` is opened and returned as the `MSG` it carries, so tests see
    /// group messages as a client shows them.
    pub fn recv(&mut self) -> ServerMessage {
        loop {
            let f = self.reader.read_frame().expect("read").expect("a frame");
            match ServerMessage::parse(f).expect("well-formed server message") {
                ServerMessage::GroupKey { group, key_id, key } => {
                    self.group_keys.insert(key_id, (group, key));
                }
                ServerMessage::GroupMsg { key_id, seq, body } => {
                    let (g, key) = self
                        .group_keys
                        .get(&key_id)
                        .expect("group key sent before GMSG");
                    let d = Delivery::open_group(g, seq, key, &body).expect("GMSG opens");
                    return ServerMessage::Msg(d);
                }
                other => return other,
            }
        }
    }

    /// The text of the next message (a `MSG`, or a `GMSG` opened).
    pub fn recv_message_text(&mut self) -> String {
        match self.recv() {
            ServerMessage::Msg(d) => {
                String::from_utf8(d.key.open(&d.body).expect("opens")).unwrap()
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Sends a head and returns the reply.
    pub fn request(&mut self, head: &str) -> Reply {
        self.send(head);
        match self.recv() {
            ServerMessage::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// Reads until the server closes; returns the BYE reason if one came.
    pub fn expect_close(&mut self) -> Option<String> {
        let mut bye = None;
        loop {
            match self.reader.read_frame() {
                Ok(Some(f)) => {
                    if let Ok(ServerMessage::Bye(why)) = ServerMessage::parse(f) {
                        bye = Some(why);
                    }
                }
                Ok(None) => return bye,
                Err(muchat::connection::ReadError::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("server did not close the connection")
                }
                Err(_) => return bye,
            }
        }
    }
}
