//! Helpers shared by the integration tests: a server on 127.0.0.1:0, logged-in
//! clients, and waiting for replies and events (never sleeping).
#![allow(dead_code)]

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use muchat::client::{Client, ClientConfig, ClientEvent, Trust};
use muchat::connection::{FrameReader, FrameWriter};
use muchat::event::{ErrorCode, Reply, ServerMessage};
use muchat::frame::Frame;
use muchat::handshake;
use muchat::names::Username;
use muchat::server::{Config, Server};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Settings for a test server: a fresh data directory, cheap password
/// hashing (tests create many accounts; one test checks the real cost).
pub fn test_config() -> Config {
    Config {
        data_dir: temp_dir("data"),
        password_cost: muchat::password::PasswordCost::TESTING,
        // Tests run many clients from one address, fast; tests/adversarial.rs
        // turns these limits back on to test them.
        rate: 0,
        max_connections_per_ip: 0,
        ..Config::default()
    }
}

pub fn start_server() -> Server {
    start_server_with(test_config())
}

pub fn start_server_with(config: Config) -> Server {
    // Set MUCHAT_TEST_LOG=1 to see the server log while debugging a test.
    muchat::log::set_quiet(std::env::var_os("MUCHAT_TEST_LOG").is_none());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    Server::start(listener, config).expect("start server")
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("muchat-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Client settings for `server`: its key pinned by fingerprint (never the
/// user's own known_servers file), files into `downloads`.
pub fn client_config(server: &Server, downloads: PathBuf) -> ClientConfig {
    ClientConfig {
        downloads,
        trust: Trust::Fingerprint(server.fingerprint()),
    }
}

pub fn connect(server: &Server) -> Client {
    let config = client_config(server, temp_dir("dl"));
    Client::connect(server.local_addr(), config).expect("connect")
}

pub fn user(name: &str) -> Username {
    Username::parse(name).expect("valid test username")
}

/// Runs a typed command line and returns the reply.
pub fn run(client: &Client, line: &str) -> Reply {
    let command = muchat::command::Command::parse(line).expect("valid test command");
    client.execute(&command).expect("reply")
}

/// Runs a command that must succeed; returns the OK text.
pub fn ok(client: &Client, line: &str) -> String {
    match run(client, line) {
        Reply::Ok(text) => text,
        Reply::Err(code, text) => panic!("{line:?} failed: {code} {text}"),
    }
}

/// Runs a command that must fail with `code`; returns the error text.
pub fn err(client: &Client, line: &str, code: ErrorCode) -> String {
    match run(client, line) {
        Reply::Err(c, text) if c == code => text,
        other => panic!("{line:?}: expected ERR {code}, got {other:?}"),
    }
}

/// Creates an account and logs in as it on a new connection.
pub fn login(server: &Server, name: &str) -> Client {
    let c = connect(server);
    ok(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
    ok(&c, &format!("LOGIN {name} pw-{name}"));
    c
}

/// Another session for an existing account.
pub fn login_again(server: &Server, name: &str) -> Client {
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

/// The next message event as (id, from, to, text), skipping nothing: any
/// other event first is a failure.
pub fn next_message(client: &Client) -> (u64, String, String, String) {
    match next_event(client) {
        ClientEvent::Message {
            id, from, to, text, ..
        } => (id, from.to_string(), to.to_string(), text),
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
    assert!(matches!(reply, Reply::Ok(_)));
    if let Ok(e) = client.events().try_recv() {
        panic!("unexpected event {e:?}");
    }
}

/// A raw connection that speaks frames directly, for hand-crafted input.
pub struct Raw {
    pub reader: FrameReader<BufReader<TcpStream>>,
    pub writer: FrameWriter<TcpStream>,
    pub stream: TcpStream,
    /// Group keys received, to open `GMSG`s.
    pub group_keys: std::collections::HashMap<u64, muchat::content::ContentKey>,
}

impl Raw {
    pub fn connect(server: &Server) -> Raw {
        let stream = TcpStream::connect(server.local_addr()).expect("connect");
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

    /// The next server message. Group keys are kept (not returned), and a
    /// `GMSG` is opened and returned as the `MSG` it carries, so tests see
    /// group messages as a client shows them.
    pub fn recv(&mut self) -> ServerMessage {
        loop {
            let f = self.reader.read_frame().expect("read").expect("a frame");
            match ServerMessage::parse(f).expect("well-formed server message") {
                ServerMessage::GroupKey { key_id, key, .. } => {
                    self.group_keys.insert(key_id, key);
                }
                ServerMessage::GroupMsg { key_id, body } => {
                    let key = self
                        .group_keys
                        .get(&key_id)
                        .expect("group key sent before GMSG");
                    let d = muchat::event::Delivery::open_group(key, &body).expect("GMSG opens");
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
