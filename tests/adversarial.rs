//! Attacks on the live server and client: men in the middle (with their own
//! key, or forwarding the real one), changed keys for pinned hosts, the
//! real binaries' fingerprint flags, idle sessions, connection floods from
//! one address, password guessing, command floods, and the group and name
//! limits.
//!
//! test_config() turns the rate and per-address limits off; the tests here
//! that need them turn them back on explicitly.
//!
//! Timing: every duration asserted here is a lower bound (an attempt waited
//! at least so long), which a slow machine cannot break. Where an attack's
//! point is that something is *not* delayed, the delay it would otherwise
//! get is made longer than [`WAIT`], the suite's limit on any single wait,
//! so a delayed answer fails the test by timing out.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use common::{
    assert_no_event, connect, err, login, login_again, next_message, ok, run, start_server,
    start_server_with, user, Raw, TestServer, WAIT,
};
use muchat::client::session::SessionError;
use muchat::client::{Client, ClientConfig, ClientError, Trust};
use muchat::connection::{FrameReader, FrameWriter, ReadError};
use muchat::dh::{EphemeralSecret, PublicValue, StaticSecret};
use muchat::event::{ErrorCode, Reply, ServerMessage};
use muchat::handshake::{self, HandshakeError, PROTOCOL};
use muchat::identity::Fingerprint;
use muchat::keys::{SessionKeys, Transcript, SERVER_FINISHED};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Client settings trusting exactly `fp`.
fn pinned_to(server: &TestServer, fp: Fingerprint) -> ClientConfig {
    ClientConfig {
        downloads: server.path("dl"),
        trust: Trust::Fingerprint(fp),
        state_dir: None,
        reconnect: false,
    }
}

/// Client settings pinning on first use in `file`.
fn known_in(server: &TestServer, file: &Path) -> ClientConfig {
    ClientConfig {
        downloads: server.path("dl"),
        trust: Trust::KnownServers(file.to_path_buf()),
        state_dir: None,
        reconnect: false,
    }
}

fn connect_err(addr: SocketAddr, config: ClientConfig) -> ClientError {
    match Client::connect(addr, config) {
        Ok(_) => panic!("the client connected to {addr}; it should have refused"),
        Err(e) => e,
    }
}

fn untrusted(e: ClientError) -> String {
    match e {
        ClientError::Session(SessionError::Untrusted(why)) => why,
        other => panic!("expected SessionError::Untrusted, got {other:?}"),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---------------------------------------------------------------------------
// 1. A man in the middle with its own keys.
// ---------------------------------------------------------------------------

/// What a relaying man in the middle got out of one client connection.
struct MitmReport {
    /// Every frame head the client sent, decrypted by the proxy.
    from_client: Vec<String>,
    /// How the client side ended.
    end: String,
}

/// A proxy on 127.0.0.1:0 that accepts one client, runs the real server
/// handshake towards it with its OWN static key, runs the client handshake
/// towards the real server, and relays frames both ways (opening each with
/// one side's keys and sealing it with the other's), recording what the
/// client sent.
fn spawn_mitm(real: SocketAddr, key: StaticSecret) -> (SocketAddr, JoinHandle<MitmReport>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (victim, _) = listener.accept().expect("accept victim");
        victim.set_read_timeout(Some(WAIT)).unwrap();
        let mut v_reader = BufReader::new(victim.try_clone().unwrap());
        let mut v_writer = victim.try_clone().unwrap();
        let towards_victim = handshake::server(&mut v_reader, &mut v_writer, &key)
            .expect("the proxy's handshake with the client");

        let upstream = TcpStream::connect(real).expect("proxy connects to the real server");
        let mut u_reader = BufReader::new(upstream.try_clone().unwrap());
        let mut u_writer = upstream.try_clone().unwrap();
        let towards_server = handshake::client(&mut u_reader, &mut u_writer)
            .expect("the proxy's handshake with the real server");

        // Server -> client (group messages' clear heads are relayed as such).
        let down = std::thread::spawn(move || {
            let mut r = FrameReader::new(u_reader, towards_server.opener);
            let mut w = FrameWriter::new(v_writer, towards_victim.sealer);
            while let Ok(Some(f)) = r.read_frame() {
                if w.write_frame(&f).is_err() {
                    break;
                }
            }
        });
        // Client -> server, recording.
        let mut r = FrameReader::new(v_reader, towards_victim.opener);
        let mut w = FrameWriter::new(u_writer, towards_server.sealer);
        let mut from_client = Vec::new();
        let end = loop {
            match r.read_frame() {
                Ok(Some(f)) => {
                    from_client.push(f.head.clone());
                    if w.write_frame(&f).is_err() {
                        break "the real server went away".to_string();
                    }
                }
                Ok(None) => break "EOF".to_string(),
                Err(e) => break format!("error: {e}"),
            }
        };
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = victim.shutdown(Shutdown::Both);
        down.join().unwrap();
        MitmReport { from_client, end }
    });
    (addr, handle)
}

#[test]
fn a_man_in_the_middle_with_its_own_key_is_refused_before_any_frame_is_sent() {
    let server = start_server();
    let real_fp = server.fingerprint();

    // Control: a client that trusts the proxy's key is fully relayed, and
    // the proxy reads everything, passwords included. This is what the pin
    // prevents (and proves the proxy is a working man in the middle).
    let mallory = StaticSecret::random().unwrap();
    let mallory_fp = Fingerprint::of(mallory.public_value());
    assert_ne!(mallory_fp, real_fp);
    let (proxy, report) = spawn_mitm(server.local_addr(), mallory);
    let fooled =
        Client::connect(proxy, pinned_to(&server, mallory_fp)).expect("connect via the proxy");
    ok(&fooled, "CREATE_USER Victim victim hunter2");
    ok(&fooled, "LOGIN victim hunter2");
    drop(fooled);
    let seen = report.join().unwrap().from_client;
    assert!(
        seen.iter().any(|h| h == "LOGIN victim hunter2"),
        "the control proxy should have read the login: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|h| h == "CREATE_USER victim hunter2 Victim"),
        "{seen:?}"
    );

    // Pinned by fingerprint: refused, and not one frame reached the proxy.
    let (proxy, report) = spawn_mitm(server.local_addr(), StaticSecret::random().unwrap());
    let why = untrusted(connect_err(proxy, pinned_to(&server, real_fp.clone())));
    assert!(why.contains(&real_fp.to_string()), "{why}");
    let report = report.join().unwrap();
    assert!(
        report.from_client.is_empty(),
        "frames crossed to the impostor: {:?}",
        report.from_client
    );
    assert!(
        report.end == "EOF" || report.end.starts_with("error"),
        "{}",
        report.end
    );

    // Pinned in known_servers under the proxy's address (an earlier honest
    // connection there): refused loudly, naming the file and the line.
    let known = server.path("mitm-known").join("known_servers");
    let (proxy, report) = spawn_mitm(server.local_addr(), StaticSecret::random().unwrap());
    let before = format!(
        "# pins\n127.0.0.1:1 {}\n{proxy} {real_fp}\n",
        Fingerprint::of(StaticSecret::random().unwrap().public_value())
    );
    std::fs::write(&known, &before).unwrap();
    let why = untrusted(connect_err(proxy, known_in(&server, &known)));
    assert!(why.contains("HAS CHANGED"), "{why}");
    assert!(why.contains(&known.display().to_string()), "{why}");
    assert!(why.contains("line 3 of"), "{why}");
    assert!(why.contains(&real_fp.to_string()), "{why}");
    let report = report.join().unwrap();
    assert!(report.from_client.is_empty(), "{:?}", report.from_client);
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        before,
        "a refused key must not be pinned"
    );
}

// ---------------------------------------------------------------------------
// 2. A man in the middle forwarding the real server's static key.
// ---------------------------------------------------------------------------

/// A proxy that reads the client's hello, answers with the line `forge`
/// makes from it (given the client's value A), then records every byte the
/// client sends afterwards until it closes.
fn forged_hello(
    forge: impl FnOnce(&str, &PublicValue) -> String + Send + 'static,
) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (victim, _) = listener.accept().expect("accept victim");
        victim.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(victim.try_clone().unwrap());
        let mut hello = String::new();
        reader.read_line(&mut hello).expect("client hello");
        let hello = hello.trim_end().to_string();
        let a_hex = hello
            .strip_prefix(&format!("{PROTOCOL} "))
            .unwrap_or_else(|| panic!("a {PROTOCOL} hello: {hello:?}"));
        let a = PublicValue::from_hex(a_hex).expect("the client's value");
        let line = forge(&hello, &a);
        (&victim).write_all(line.as_bytes()).unwrap();
        let mut after = Vec::new();
        // Ends at the client's close (EOF) or a reset.
        let _ = reader.read_to_end(&mut after);
        after
    });
    (addr, handle)
}

/// The confirmation a server would send for these keys.
fn confirm_for(keys: &SessionKeys) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&keys.confirm).unwrap();
    mac.update(SERVER_FINISHED.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// A hello with the proxy's own ephemeral value, `static_value` as S, and a
/// confirmation computed from what the proxy can derive: its ephemeral
/// secret with A, and its own static secret with A standing in for `Zes`.
fn hello_from_own_keys(a: &PublicValue, own: &StaticSecret, static_value: &PublicValue) -> String {
    let b = EphemeralSecret::random().unwrap();
    let b_pub = b.public_value().clone();
    let ee = b.diffie_hellman(a);
    let es = own.diffie_hellman(a);
    let keys = SessionKeys::derive(
        &ee,
        &es,
        &Transcript {
            client: a,
            server: &b_pub,
            server_static: static_value,
        },
    );
    format!(
        "{PROTOCOL} {} {} {}\n",
        b_pub.to_hex(),
        static_value.to_hex(),
        confirm_for(&keys)
    )
}

#[test]
fn a_man_in_the_middle_forwarding_the_real_key_cannot_confirm() {
    let server = start_server();
    let real_fp = server.fingerprint();
    // The real S, as anyone connecting to the server sees it.
    let real_s = {
        let s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        handshake::client(&mut r, &mut &s).unwrap().server_key
    };
    assert_eq!(Fingerprint::of(&real_s), real_fp);

    let attempt = |name: &str, proxy: SocketAddr, got: JoinHandle<Vec<u8>>| {
        match connect_err(proxy, pinned_to(&server, real_fp.clone())) {
            ClientError::Session(SessionError::Handshake(HandshakeError::BadConfirmation)) => {}
            other => panic!("{name}: expected BadConfirmation, got {other:?}"),
        }
        let after = got.join().unwrap();
        assert!(
            after.is_empty(),
            "{name}: the client sent {} bytes after the forged hello",
            after.len()
        );
    };

    // An arbitrary (random) confirmation.
    let s = real_s.clone();
    let (proxy, got) = forged_hello(move |_, _| {
        let b = EphemeralSecret::random().unwrap();
        let noise: [u8; 32] = Sha256::digest(b.public_value().to_bytes()).into();
        format!(
            "{PROTOCOL} {} {} {}\n",
            b.public_value().to_hex(),
            s.to_hex(),
            B64.encode(noise)
        )
    });
    attempt("random confirmation", proxy, got);

    // A confirmation from keys the proxy can derive, treating its own
    // secret as if it were the server's.
    let s = real_s.clone();
    let (proxy, got) =
        forged_hello(move |_, a| hello_from_own_keys(a, &StaticSecret::random().unwrap(), &s));
    attempt("confirmation from the proxy's keys", proxy, got);

    // The real server's genuine confirmation for this very client's A
    // (the proxy forwards the client's hello), with the proxy's own B
    // substituted so it could learn Zee.
    let real = server.local_addr();
    let (proxy, got) = forged_hello(move |hello, _| {
        let up = TcpStream::connect(real).unwrap();
        up.set_read_timeout(Some(WAIT)).unwrap();
        (&up).write_all(format!("{hello}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(&up).read_line(&mut line).unwrap();
        let parts: Vec<&str> = line.trim_end().split(' ').collect();
        assert_eq!(parts.len(), 4, "{line}");
        assert_eq!(parts[0], PROTOCOL, "{line}");
        let b = EphemeralSecret::random().unwrap();
        format!(
            "{PROTOCOL} {} {} {}\n",
            b.public_value().to_hex(),
            parts[2],
            parts[3]
        )
    });
    attempt("relayed confirmation with the proxy's B", proxy, got);

    // Control: the same computation, honest about its own static key,
    // passes the confirmation; only the pin stops it. So the refusals
    // above come from the confirmation, not from a badly forged line.
    let (proxy, got) = forged_hello(move |_, a| {
        let own = StaticSecret::random().unwrap();
        let own_pub = own.public_value().clone();
        hello_from_own_keys(a, &own, &own_pub)
    });
    untrusted(connect_err(proxy, pinned_to(&server, real_fp.clone())));
    assert!(got.join().unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// 3. A changed key for a pinned host.
// ---------------------------------------------------------------------------

#[test]
fn a_changed_key_for_a_pinned_address_is_refused_loudly() {
    let first = start_server();
    let second = start_server();
    let (fp1, fp2) = (first.fingerprint(), second.fingerprint());
    assert_ne!(fp1, fp2, "different data directories, different keys");

    let known = first.path("known").join("known_servers");
    let c = Client::connect(first.local_addr(), known_in(&first, &known)).expect("first contact");
    let note = c
        .first_use_note()
        .expect("a note on first contact")
        .to_string();
    assert!(note.contains(&fp1.to_string()), "{note}");
    assert!(note.contains(&known.display().to_string()), "{note}");
    ok(&c, "CREATE_USER A a pw");
    drop(c);
    let text = std::fs::read_to_string(&known).unwrap();
    assert_eq!(text, format!("{} {fp1}\n", first.local_addr()));

    // The second server's address, pinned to the first server's key (as if
    // the first had run there before): its own key is a changed key.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&known)
        .unwrap();
    writeln!(f, "{} {fp1}", second.local_addr()).unwrap();
    drop(f);
    let before = std::fs::read_to_string(&known).unwrap();
    let why = untrusted(connect_err(second.local_addr(), known_in(&first, &known)));
    for needle in [
        "HAS CHANGED".to_string(),
        second.local_addr().to_string(),
        fp1.to_string(),
        fp2.to_string(),
        format!("line 2 of {}", known.display()),
    ] {
        assert!(why.contains(&needle), "{needle:?} missing from: {why}");
    }
    assert_eq!(std::fs::read_to_string(&known).unwrap(), before);

    // The first server is still known and trusted, silently.
    let c = Client::connect(first.local_addr(), known_in(&first, &known)).expect("known server");
    assert_eq!(c.first_use_note(), None);
    ok(&c, "LOGIN a pw");
    assert_eq!(std::fs::read_to_string(&known).unwrap(), before);
}

// ---------------------------------------------------------------------------
// 4. The real binaries' fingerprint flags (and the server's log).
// ---------------------------------------------------------------------------

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// A command for one of the binaries, with none of the caller's settings:
/// no MUCHAT_* variable (the server reads every flag from one), and the
/// log at its default level (the tests read its info lines).
fn bin(path: &str) -> Command {
    let mut c = Command::new(path);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MUCHAT_") {
            c.env_remove(name);
        }
    }
    c.env("RUST_LOG", "info");
    c
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `r` to its end on a thread; the text arrives on the channel.
fn collect(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

/// Runs `cmd` with `input` on stdin; returns (exit code, stdout, stderr).
/// Fails the test if its output is not closed (it has not exited) within
/// WAIT.
fn run_bin(cmd: &mut Command, input: &str) -> (i32, String, String) {
    let mut child = Killed(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let out = collect(child.0.stdout.take().unwrap());
    let errs = collect(child.0.stderr.take().unwrap());
    let mut stdin = child.0.stdin.take().unwrap();
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    // Both pipes close when the process exits.
    let out = out
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{cmd:?} did not exit"));
    let errs = errs
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{cmd:?} did not exit"));
    let status = child.0.wait().expect("wait");
    (status.code().unwrap_or(-1), out, errs)
}

fn server_fingerprint_of(data: &Path) -> String {
    let (code, out, errs) = run_bin(
        bin(SERVER).arg("--fingerprint").arg("--data-dir").arg(data),
        "",
    );
    assert_eq!(code, 0, "{errs}");
    let fp = out.trim().to_string();
    assert!(Fingerprint::parse(&fp).is_some(), "{out:?}");
    fp
}

/// The server binary, running on 127.0.0.1:0.
struct ServerBin {
    /// Where it listens, from its log.
    addr: String,
    /// The fingerprint it logged before listening.
    fingerprint: String,
    /// Its log lines as they come.
    log: mpsc::Receiver<String>,
    _child: Killed,
}

impl ServerBin {
    fn start(data: &Path, flags: &[&str]) -> ServerBin {
        let mut child = Killed(
            bin(SERVER)
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(data)
                .args(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn server"),
        );
        // Every line is read (so the server never blocks on its log) and
        // passed on.
        let stderr = BufReader::new(child.0.stderr.take().unwrap());
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // `<time>  INFO key fingerprint=SHA256:...`, then
        // `<time>  INFO listening addr=127.0.0.1:PORT`.
        let value = |line: &str, key: &str| -> Option<String> {
            let rest = line.split(&format!(" {key}")).nth(1)?;
            Some(rest.split_whitespace().next().unwrap_or("").to_string())
        };
        let (mut fingerprint, mut addr) = (None, None);
        while addr.is_none() {
            let line = log
                .recv_timeout(WAIT)
                .expect("the server logs where it listens");
            if line.contains(" INFO key ") {
                fingerprint = value(&line, "fingerprint=");
            }
            if line.contains(" INFO listening ") {
                addr = value(&line, "addr=");
            }
        }
        ServerBin {
            addr: addr.unwrap(),
            fingerprint: fingerprint.expect("the server logs its fingerprint before listening"),
            log,
            _child: child,
        }
    }
}

#[test]
fn the_binaries_pin_fingerprints_and_refuse_a_wrong_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let server = ServerBin::start(&data, &["--rate", "0"]);
    let (addr, fp) = (server.addr.clone(), server.fingerprint.clone());
    assert!(Fingerprint::parse(&fp).is_some(), "{fp}");
    assert_eq!(server_fingerprint_of(&data), fp, "server --fingerprint");

    // Another key, for the wrong-fingerprint case.
    let other = server_fingerprint_of(&tmp.path().join("other-data"));
    assert_ne!(other, fp);

    // No client run may touch a real known_servers file or state directory.
    let home = tmp.path().join("home");
    let downloads = tmp.path().join("downloads");
    let state = tmp.path().join("state");
    let client = || {
        let mut c = bin(CLIENT);
        c.env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("xdg"))
            .env("XDG_STATE_HOME", home.join("xdg-state"))
            .arg(&addr)
            .arg("--downloads")
            .arg(&downloads)
            .arg("--state-dir")
            .arg(&state);
        c
    };

    let (code, out, errs) = run_bin(
        client().args(["--server-fingerprint", &fp]),
        "CREATE_USER A a pw\n",
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {errs}");
    assert!(out.contains("OK created user a"), "{out}");

    let (code, out, errs) = run_bin(
        client().args(["--server-fingerprint", &other]),
        "CREATE_USER B b pw\n",
    );
    assert_ne!(code, 0, "a wrong fingerprint must fail; stderr: {errs}");
    assert_eq!(out, "", "nothing may be printed (or sent) on a refused key");
    assert!(errs.contains(&fp) && errs.contains(&other), "{errs}");
    assert!(
        !home.join("xdg").exists(),
        "--server-fingerprint must not write a known_servers file"
    );

    // Trust on first use with --known-servers. (Each run makes one round
    // trip: a client ending its input at once may hang, see
    // a_client_closed_right_after_connecting_lets_go.)
    let known = tmp.path().join("known").join("known_servers");
    let known_s = known.display().to_string();
    let (code, out, errs) = run_bin(client().args(["--known-servers", &known_s]), "LOGIN a pw\n");
    assert_eq!(code, 0, "stdout: {out}\nstderr: {errs}");
    assert!(out.contains("OK logged in as a"), "{out}");
    assert!(errs.contains(&known_s) && errs.contains(&fp), "{errs}");
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("{addr} {fp}\n")
    );
    // The second time: known, no note.
    let (code, out, errs) = run_bin(client().args(["--known-servers", &known_s]), "LOGIN a pw\n");
    assert_eq!(code, 0, "{errs}");
    assert!(out.contains("OK logged in as a"), "{out}");
    assert!(!errs.contains(&known_s), "{errs}");

    // A pin to another key for this address: refused, nothing printed.
    std::fs::write(&known, format!("{addr} {other}\n")).unwrap();
    let (code, out, errs) = run_bin(
        client().args(["--known-servers", &known_s]),
        "CREATE_USER C c pw\n",
    );
    assert_ne!(code, 0, "{errs}");
    assert_eq!(out, "");
    assert!(
        errs.contains("HAS CHANGED") && errs.contains(&known_s),
        "{errs}"
    );
    assert!(
        !home.join("xdg").exists() && !home.join("xdg-state").exists(),
        "nothing may be written outside the given files"
    );
}

/// A client closed (here: dropped) as soon as it has connected must let
/// go of the connection. The `client` binary does exactly this when its
/// input ends at once (`client ADDR --server-fingerprint FP < /dev/null`).
#[test]
fn a_client_closed_right_after_connecting_lets_go() {
    let server = start_server();
    // The race is lost about one time in five; a hundred tries find it.
    for i in 0..100 {
        let c = connect(&server);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(c);
            let _ = tx.send(());
        });
        // (A client left hanging lets go when the server shuts down.)
        rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("connection {i}: dropping the client did not return within {WAIT:?}")
        });
    }
}

#[test]
fn failed_logins_are_logged_with_the_guessers_address() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = ServerBin::start(&tmp.path().join("data"), &[]);
    let c = Client::connect(
        &server.addr,
        ClientConfig {
            downloads: tmp.path().join("dl"),
            trust: Trust::Fingerprint(Fingerprint::parse(&server.fingerprint).unwrap()),
            state_dir: None,
            reconnect: false,
        },
    )
    .expect("connect to the server binary");
    err(&c, "LOGIN mallet guess1", ErrorCode::LoginFailed);
    // The reply is sent after the line is logged; every line before it is
    // read in turn (a bounded number: nothing else happens on the server).
    let line = (0..1000)
        .map(|_| {
            server
                .log
                .recv_timeout(WAIT)
                .expect("the failed login is logged")
        })
        .find(|l| l.contains("login failed"))
        .expect("a \"login failed\" line");
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("user=mallet"), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(
        !line.contains("guess1"),
        "the password must not be logged: {line}"
    );
}

// ---------------------------------------------------------------------------
// 5. Idle sessions.
// ---------------------------------------------------------------------------

fn online(c: &Client) -> String {
    let list = ok(c, "LIST");
    list.split("online: ").nth(1).unwrap_or("").to_string()
}

#[test]
fn idle_sessions_are_pinged_then_closed_while_answering_clients_stay() {
    // Reading threads keep the idle clock (never parked: the idle timeout
    // comes first).
    idle_sessions_are_pinged_then_closed(Duration::from_secs(60));
}

#[test]
fn parked_idle_sessions_are_pinged_then_closed_too() {
    // The parking thread keeps the idle clock.
    idle_sessions_are_pinged_then_closed(Duration::from_millis(20));
}

fn idle_sessions_are_pinged_then_closed(park_after: Duration) {
    let idle_timeout = Duration::from_secs(1);
    let server = start_server_with(|c| {
        c.idle_timeout = idle_timeout;
        c.park_after = park_after;
    });
    // The library client answers PING with PONG.
    let keeper = login(&server, "keeper");

    let mut idle = Raw::connect(&server);
    assert!(idle.request("CREATE_USER idle pw Idle").is_ok());
    // Before the last frame idle sends: the server's idle clock starts
    // after it reads it.
    let t0 = Instant::now();
    assert!(idle.request("LOGIN idle pw").is_ok());
    assert!(online(&keeper).contains("idle"));
    // The keeper sends nothing of its own from here on.
    let keeper_quiet = Instant::now();

    // Pinged after half the idle timeout, closed after the whole (the
    // margins allow for the kernel's timer granularity).
    assert_eq!(idle.recv(), ServerMessage::Ping(1));
    let pinged = t0.elapsed();
    assert_eq!(idle.expect_close().as_deref(), Some("idle timeout"));
    let closed = t0.elapsed();
    assert!(
        pinged >= Duration::from_millis(400),
        "pinged after {pinged:?}"
    );
    assert!(
        closed >= Duration::from_millis(800),
        "closed after {closed:?}"
    );

    // Past the handshake but never logged in, also silent.
    let mut anon = Raw::connect(&server);
    assert_eq!(anon.recv(), ServerMessage::Ping(1));
    assert_eq!(anon.expect_close().as_deref(), Some("idle timeout"));

    // The keeper has now been silent longer than the idle timeout (anon
    // connected after its last request and has been closed for idleness),
    // but it answered its PINGs: still connected, and the idle user is gone.
    assert!(
        keeper_quiet.elapsed() >= Duration::from_millis(800),
        "{:?}",
        keeper_quiet.elapsed()
    );
    let list = online(&keeper);
    assert!(list.contains("keeper") && !list.contains("idle"), "{list}");
    assert_no_event(&keeper);
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn parked_sessions_get_everything_and_wake_for_requests() {
    let server = start_server_with(|c| c.park_after = Duration::from_millis(20));
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    wait_until("both parked", || server.parked_sessions() == 2);
    // A delivery to a parked session needs no reading thread.
    ok(&alice, "SEND bob while you sleep");
    assert_eq!(next_message(&bob).text, "while you sleep");
    // Many wake-ups and parkings in a row: nothing lost, nothing reordered.
    for round in 0..5 {
        wait_until("both parked again", || server.parked_sessions() == 2);
        for i in 0..10 {
            ok(&bob, &format!("SEND alice {round}.{i}"));
        }
        for i in 0..10 {
            assert_eq!(next_message(&alice).text, format!("{round}.{i}"));
        }
    }
    // A raw peer: a request arriving while parked is answered.
    let mut raw = Raw::connect(&server);
    assert!(raw.request("CREATE_USER carol pw Carol").is_ok());
    assert!(raw.request("LOGIN carol pw").is_ok());
    wait_until("carol parked", || server.parked_sessions() == 3);
    assert!(raw.request("LIST").is_ok());
    assert_no_event(&alice);
}

// ---------------------------------------------------------------------------
// 6. Connections per address, and freed places.
// ---------------------------------------------------------------------------

/// Reads what the server sends until it closes; fails on a timeout.
fn read_until_close(s: &TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match (&mut &*s).read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => panic!("the server did not close the connection"),
            Err(_) => return all, // reset: closed too
        }
    }
}

fn refused_for_too_many(server: &TestServer) {
    let s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let text = String::from_utf8(read_until_close(&s)).unwrap();
    assert!(
        text.starts_with(&format!("{PROTOCOL} ERROR too many connections")),
        "{text:?}"
    );
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
}

#[test]
fn connections_per_address_are_capped_before_login_only() {
    let server = start_server_with(|c| {
        c.max_connections_per_ip = 2;
        c.handshake_timeout = Duration::from_secs(1);
    });
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| {
            let s = TcpStream::connect(server.local_addr()).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        })
        .collect();
    refused_for_too_many(&server);
    refused_for_too_many(&server);

    // The handshake deadline closes both, without a word.
    for s in &silent {
        assert_eq!(read_until_close(s), b"");
    }

    // The server gives a connection's place back before it closes the
    // socket, so once a close is seen the place is free. Logging in gives
    // it back too (an office behind one address can all log in).
    let mut logged_in = Vec::new();
    for i in 0..5 {
        logged_in.push(login(&server, &format!("u{i}")));
    }
    let a = connect(&server);
    ok(&a, "CREATE_USER A a pw");
    let b = connect(&server);
    ok(&b, "CREATE_USER B b pw");
    // Two not logged in: the address's places are taken again.
    refused_for_too_many(&server);
    for c in &logged_in {
        ok(c, "LIST");
    }
}

#[test]
fn sessions_per_user_are_capped() {
    let server = start_server_with(|c| c.max_sessions_per_user = 2);
    let a = login(&server, "a");
    let _b = login_again(&server, "a");
    let c = connect(&server);
    assert!(
        matches!(
            run(&c, "LOGIN a pw-a"),
            Reply::Err {
                code: ErrorCode::TooManySessions,
                ..
            }
        ),
        "a third session for one user is refused"
    );
    drop(a);
    // The place comes back once the first session is gone.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = run(&c, "LOGIN a pw-a");
        if r.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place never came back: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn silent_sessions_are_closed_at_the_login_deadline() {
    let server = start_server_with(|c| c.login_timeout = Duration::from_millis(500));
    let mut raw = Raw::connect(&server);
    // A logged-in session is not subject to it.
    let c = login(&server, "a");
    let mut saw_bye = false;
    loop {
        match raw.reader.read_frame() {
            Ok(Some(f)) => {
                if let ServerMessage::Bye(why) = ServerMessage::parse(f).unwrap() {
                    assert!(why.contains("log in"), "{why}");
                    saw_bye = true;
                }
            }
            Ok(None) | Err(ReadError::Io(_)) if saw_bye => break,
            other => panic!("expected a BYE then a close: {other:?}"),
        }
    }
    ok(&c, "LIST");
}

#[test]
fn frames_before_login_are_budgeted() {
    let server = start_server();
    let mut raw = Raw::connect(&server);
    // PONGs need no reply; each is decrypted and checked all the same.
    for i in 0..200 {
        let pong = muchat::frame::Frame::head(format!("PONG {i}"));
        if raw.writer.write_frame(&pong).is_err() {
            break;
        }
    }
    let mut saw_bye = false;
    loop {
        match raw.reader.read_frame() {
            Ok(Some(f)) => {
                if let ServerMessage::Bye(why) = ServerMessage::parse(f).unwrap() {
                    assert!(why.contains("without logging in"), "{why}");
                    saw_bye = true;
                }
            }
            Ok(None) | Err(ReadError::Io(_)) if saw_bye => break,
            other => panic!("expected a BYE then a close: {other:?}"),
        }
    }
}

#[test]
fn a_handshake_flood_from_one_address_is_refused_before_the_exponentiation() {
    let server = start_server_with(|c| c.handshake_rate = 1);
    // The burst (four times the rate) goes through; the rest are refused
    // with a line, not answered with a server hello.
    let mut refused = 0;
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let secret = EphemeralSecret::random().unwrap();
        let hello = format!("{PROTOCOL} {}\n", secret.public_value().to_hex());
        s.write_all(hello.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        if line.starts_with(&format!("{PROTOCOL} ERROR too many handshakes")) {
            refused += 1;
        }
    }
    assert!(
        refused >= 10,
        "only {refused} of 20 handshakes were refused"
    );
}

// ---------------------------------------------------------------------------
// 7. Password guessing.
// ---------------------------------------------------------------------------

/// One login attempt on a fresh connection (as a guesser reconnecting would
/// make it).
fn attempt(server: &TestServer, name: &str, password: &str) -> Reply {
    let c = connect(server);
    run(&c, &format!("LOGIN {name} {password}"))
}

fn is_login_failed(r: &Reply) -> bool {
    matches!(
        r,
        Reply::Err {
            code: ErrorCode::LoginFailed,
            ..
        }
    )
}

fn is_rate_limited(r: &Reply) -> bool {
    matches!(r, Reply::Err { code: ErrorCode::RateLimited, text } if text.starts_with("retry in "))
}

/// Tries a login until it is not refused as too early; returns the reply
/// and how long it took to be let through.
fn patient_login(server: &TestServer, name: &str, password: &str) -> (Reply, Duration) {
    let start = Instant::now();
    loop {
        let r = attempt(server, name, password);
        if !is_rate_limited(&r) {
            return (r, start.elapsed());
        }
        assert!(start.elapsed() < WAIT, "LOGIN {name}: refused for {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn password_guessing_is_spaced_out_by_account_and_by_address() {
    let server = start_server_with(|c| c.login_backoff = Duration::from_millis(200));
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right-pw");
    drop(c);

    // Three free failures, then an early attempt is refused at once (not
    // queued), and let through only 200 ms, then 400 ms, after the last.
    for i in 1..=3 {
        let reply = attempt(&server, "alice", &format!("guess{i}"));
        assert!(is_login_failed(&reply), "attempt {i}: {reply:?}");
    }
    let early = attempt(&server, "alice", "guess4");
    assert!(is_rate_limited(&early), "{early:?}");
    let (reply, took) = patient_login(&server, "alice", "guess4");
    assert!(is_login_failed(&reply), "{reply:?}");
    assert!(
        took >= Duration::from_millis(150),
        "4th attempt after {took:?}"
    );
    let (reply, took) = patient_login(&server, "alice", "guess5");
    assert!(is_login_failed(&reply), "{reply:?}");
    assert!(
        took >= Duration::from_millis(350),
        "5th attempt after {took:?}"
    );

    // Another (non-existent) account from the same address is throttled
    // by the address.
    let reply = attempt(&server, "nobody", "guess");
    assert!(is_rate_limited(&reply), "{reply:?}");

    // The right password still works, after its wait.
    let (reply, _) = patient_login(&server, "alice", "right-pw");
    assert!(reply.is_ok(), "{reply:?}");
}

#[test]
fn a_few_failures_and_a_success_are_never_refused() {
    let server = start_server_with(|c| c.login_backoff = Duration::from_secs(60));
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right-pw");
    drop(c);
    for i in 1..=2 {
        let r = attempt(&server, "alice", &format!("guess{i}"));
        assert!(is_login_failed(&r), "{r:?}");
    }
    let r = attempt(&server, "alice", "right-pw");
    assert!(r.is_ok(), "{r:?}");
    // The success cleared the account's count and took its failures off
    // the address's: three more failures are free again.
    for i in 3..=5 {
        let r = attempt(&server, "alice", &format!("guess{i}"));
        assert!(is_login_failed(&r), "failure {i}: {r:?}");
    }
}

#[test]
fn parallel_guesses_are_checked_one_at_a_time_and_spaced() {
    let backoff = Duration::from_millis(500);
    let server = start_server_with(|c| c.login_backoff = backoff);
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right-pw");
    drop(c);
    // Twenty-four guessers, each retrying at once whenever refused, for a
    // bounded time.
    const GUESSERS: usize = 24;
    let window = Duration::from_millis(2500);
    let start = Instant::now();
    let server = &server;
    let (checked, refused) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..GUESSERS)
            .map(|g| {
                scope.spawn(move || {
                    let (mut checked, mut refused) = (0, 0);
                    let mut i = 0;
                    while start.elapsed() < window {
                        i += 1;
                        let r = attempt(server, "alice", &format!("g{g}x{i}"));
                        if is_login_failed(&r) {
                            checked += 1;
                        } else if is_rate_limited(&r) {
                            refused += 1;
                        } else {
                            panic!("{r:?}");
                        }
                    }
                    (checked, refused)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
    });
    // Three free, then at 0.5 s, 1.5 s (3.5 s is past the window).
    assert!(checked <= 5, "{checked} guesses checked in {window:?}");
    assert!(
        checked >= 1 && refused > 0,
        "checked {checked}, refused {refused}"
    );
}

#[test]
fn a_device_token_logs_its_owner_in_while_the_account_is_attacked() {
    let server = start_server_with(|c| c.login_backoff = Duration::from_secs(60));
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right-pw");
    let token = match run(&c, "LOGIN alice right-pw") {
        Reply::Ok {
            data: muchat::event::ReplyData::Token(t),
            ..
        } => t,
        other => panic!("{other:?}"),
    };
    drop(c);
    // The attacker burns the account's and the address's allowance.
    for i in 0..10 {
        let r = attempt(&server, "alice", &format!("guess{i}"));
        assert!(is_login_failed(&r) || is_rate_limited(&r), "{r:?}");
    }
    assert!(is_rate_limited(&attempt(&server, "alice", "right-pw")));
    // With the device's token the owner is let in at once, by password
    // and token or by the token alone.
    let r = attempt_raw(&server, &format!("LOGIN alice right-pw {}", token.as_str()));
    assert!(r.is_ok(), "{r:?}");
    let r = attempt_raw(&server, &format!("RESUME alice {}", token.as_str()));
    assert!(r.is_ok(), "{r:?}");
    // A made-up token is no way in.
    let fake = "0".repeat(64);
    let r = attempt_raw(&server, &format!("RESUME alice {fake}"));
    assert!(!r.is_ok(), "{r:?}");
}

/// Sends `line` on a fresh raw connection (for the wire forms the
/// terminal's commands do not take) and returns the reply.
fn attempt_raw(server: &TestServer, line: &str) -> Reply {
    let mut raw = Raw::connect(server);
    raw.send(line);
    match raw.recv() {
        ServerMessage::Reply(r) => r,
        other => panic!("{line}: unexpected {other:?}"),
    }
}

/// Fails `n` wrong logins for distinct (non-existent) accounts, one
/// connection each, as a password sprayer would, waiting when refused.
fn spray(server: &TestServer, tag: &str, n: usize) {
    for i in 0..n {
        let (reply, _) = patient_login(server, &format!("{tag}{i}"), "Summer2024");
        assert!(is_login_failed(&reply), "{reply:?}");
    }
}

#[test]
fn the_global_rate_of_password_checks_holds_across_accounts() {
    // No spacing per address: only the global rate is left.
    let server = start_server_with(|c| {
        c.max_password_checks = 4;
        c.login_backoff = Duration::ZERO;
    });
    let start = Instant::now();
    let (mut checked, mut refused) = (0u32, 0u32);
    for i in 0..40 {
        let r = attempt(&server, &format!("sprayed{i}"), "Summer2024");
        if is_login_failed(&r) {
            checked += 1;
        } else if is_rate_limited(&r) {
            refused += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let allowed = 4.0 + 4.0 * secs + 1.0;
    assert!(
        f64::from(checked) <= allowed,
        "{checked} checks in {secs:.1} s (allowed {allowed:.0}), {refused} refused"
    );
    assert!(refused > 0);
}

#[test]
fn logging_in_to_your_own_account_does_not_reset_the_address_throttle() {
    let server = start_server_with(|c| c.login_backoff = Duration::from_millis(200));
    let c = connect(&server);
    ok(&c, "CREATE_USER Mallory mallory mallory-pw");
    drop(c);
    spray(&server, "victim", 4);
    let (reply, _) = patient_login(&server, "mallory", "mallory-pw");
    assert!(reply.is_ok(), "{reply:?}");
    // Four failures against other accounts still count for this address.
    let reply = attempt(&server, "victim9", "Summer2024");
    assert!(
        is_rate_limited(&reply),
        "the sprayer's next guess: {reply:?}"
    );
}

// ---------------------------------------------------------------------------
// 8. Command floods.
// ---------------------------------------------------------------------------

/// Sends `head` until it is not rate-limited, pacing the attacker; returns
/// the OK text, which must start with `prefix`. Ten times 1/rate of pauses
/// is always enough for a token to come back.
fn paced(raw: &mut Raw, head: &str, prefix: &str, rate: u32) -> String {
    let pause = Duration::from_secs(1) / rate / 10;
    for _ in 0..100 {
        match raw.request(head) {
            Reply::Ok { text, .. } => {
                assert!(text.starts_with(prefix), "{head}: {text}");
                return text;
            }
            Reply::Err {
                code: ErrorCode::RateLimited,
                ..
            } => std::thread::sleep(pause),
            other => panic!("{head}: {other:?}"),
        }
    }
    panic!("{head} was still rate-limited after 10 x 1/rate of pauses");
}

#[test]
fn a_command_flood_is_rate_limited_without_starving_others() {
    const RATE: u32 = 20;
    const BURST: u32 = 20;
    let server = start_server_with(|c| {
        c.rate = RATE;
        c.burst = BURST;
    });
    let bob = login(&server, "bob");
    let carol = login(&server, "carol");
    let mut raw = Raw::connect(&server);
    assert!(raw.request("CREATE_USER flooder pw F").is_ok());
    assert!(raw.request("LOGIN flooder pw").is_ok());

    const FLOOD: usize = 300;
    std::thread::scope(|scope| {
        // Bob and Carol chat while the flood runs (well within their own
        // bursts: rate limits are per session).
        let chat = scope.spawn(|| {
            for i in 0..10 {
                for (from, to) in [(&bob, "carol"), (&carol, "bob")] {
                    match from.send_text(&user(to), &format!("to {to} #{i}")) {
                        Ok(r) if r.is_ok() => {}
                        other => panic!("send to {to} #{i}: {other:?}"),
                    }
                }
            }
            for (me, name, other) in [(&bob, "bob", "carol"), (&carol, "carol", "bob")] {
                for i in 0..10 {
                    let m = next_message(me);
                    assert_eq!(m.from, other);
                    assert_eq!(m.text, format!("to {name} #{i}"));
                }
            }
        });

        // Every request written before any reply is read.
        let flood_start = Instant::now();
        for _ in 0..FLOOD {
            raw.writer.queue("LIST", None);
        }
        raw.writer.flush().unwrap();
        let (mut oks, mut limited) = (0u32, 0u32);
        for n in 0..FLOOD {
            match raw.recv() {
                ServerMessage::Reply(Reply::Ok { text, .. }) if text.starts_with("groups:") => {
                    oks += 1
                }
                ServerMessage::Reply(Reply::Err {
                    code: ErrorCode::RateLimited,
                    ..
                }) => limited += 1,
                other => panic!("reply {n}: unexpected {other:?}"),
            }
        }
        let took = flood_start.elapsed();
        assert_eq!((oks + limited) as usize, FLOOD);
        // The burst was served: the bucket held BURST less CREATE_USER and
        // LOGIN when the flood began.
        assert!(oks >= BURST - 2, "the burst should have been served: {oks}");
        // And no more than the burst and the rate allow over the time the
        // flood took (that is: serving `oks` took at least
        // (oks - BURST) / RATE seconds).
        let allowed = f64::from(BURST) + f64::from(RATE) * took.as_secs_f64();
        assert!(
            f64::from(oks) <= allowed + 1e-3,
            "{oks} of {FLOOD} served in {took:?}: at most {allowed:.1} allowed ({limited} limited)"
        );
        chat.join().unwrap();
    });

    // Still connected: once tokens come back, requests succeed.
    paced(&mut raw, "LIST", "groups:", RATE);
    paced(&mut raw, "HELP", "requests:", RATE);
    // Exactly one reply each: QUIT (never rate-limited) is answered next,
    // with nothing left over from the flood before it or after it.
    assert_eq!(raw.request("QUIT"), Reply::ok("bye"));
    match raw.reader.read_frame() {
        Ok(None) => {}
        Err(ReadError::Io(e)) if !is_timeout(&e) => {}
        other => panic!("expected the close after QUIT, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 9. Group limits and case-insensitive names.
// ---------------------------------------------------------------------------

#[test]
fn the_group_cap_holds_and_names_ignore_case() {
    let server = start_server_with(|c| c.max_groups_per_user = 2);
    let a = login(&server, "gia");
    let b = login(&server, "gib");
    ok(&a, "CREATE_GROUP g1");
    ok(&a, "CREATE_GROUP g2");
    err(&a, "CREATE_GROUP g3", ErrorCode::TooManyGroups);
    ok(&b, "CREATE_GROUP g4");
    err(&a, "JOIN g4", ErrorCode::TooManyGroups);
    // The refused CREATE_GROUP made nothing.
    assert!(!ok(&a, "LIST").contains("#g3"));
    ok(&b, "CREATE_GROUP g3");
    err(&b, "CREATE_GROUP G3", ErrorCode::GroupExists);

    ok(&a, "LEAVE g1");
    ok(&a, "JOIN g4");
    err(&a, "JOIN g3", ErrorCode::TooManyGroups);
    let list = ok(&a, "LIST");
    assert!(list.contains("#g4 (2 members, joined)"), "{list}");

    let c = connect(&server);
    ok(&c, "CREATE_USER Alice Alice pw");
    err(&c, "CREATE_USER x ALICE pw", ErrorCode::UserExists);
    err(&c, "CREATE_USER x alice pw", ErrorCode::UserExists);
    ok(&c, "LOGIN ALICE pw");
    let list = online(&c);
    assert!(
        list.split(", ").any(|u| u == "alice") && !list.contains("Alice"),
        "{list}"
    );
    drop(c);
    let c = connect(&server);
    ok(&c, "LOGIN aLiCe pw");
}

/// A server that completes the handshake with `key`, then sends `frames`
/// and waits for the client to close.
fn spawn_hostile_server(key: StaticSecret, frames: Vec<ServerMessage>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (client, _) = listener.accept().expect("accept");
        client.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut writer = client.try_clone().unwrap();
        let keyed = handshake::server(&mut reader, &mut writer, &key).expect("handshake");
        let mut w = FrameWriter::new(writer, keyed.sealer);
        for m in frames {
            w.write_frame(&m.to_frame()).expect("write");
        }
        // Until the client hangs up.
        let _ = reader.read(&mut [0; 64]);
    });
    addr
}

/// Several messages in one `GMSG` whose numbers would run past the largest
/// sequence number: the client refuses the frame as a protocol error (it
/// does not wrap round, and does not crash); one message at the largest
/// number is still read.
#[test]
fn a_bundled_gmsg_numbered_past_the_end_is_refused() {
    use muchat::client::session::{Incoming, Session};
    use muchat::content::{Body, ContentKey};
    use muchat::names::GroupName;

    let group_key = ContentKey::from_bytes([9; 24]);
    let envelope = |who: &str| {
        let content = ContentKey::from_bytes([3; 24]);
        let text = format!("1764106800000 {who} {}", content.to_b64());
        Body::enveloped(&group_key.seal(text.as_bytes()), &content.seal(b"hi"))
    };
    let key_msg = ServerMessage::GroupKey {
        group: GroupName::parse("ops").unwrap(),
        key_id: 1,
        key: group_key.clone(),
    };
    let gmsg = |seq: u64, body: Body| ServerMessage::GroupMsg {
        key_id: 1,
        seq,
        body,
    };
    let key = StaticSecret::from_bytes(&[5u8; 32]).unwrap();
    let trust = Trust::Fingerprint(Fingerprint::of(key.public_value()));
    let addr = spawn_hostile_server(
        key,
        vec![
            key_msg,
            gmsg(u64::MAX, envelope("alice")),
            gmsg(
                u64::MAX,
                Body::bundle(&[&envelope("alice"), &envelope("bob")]),
            ),
        ],
    );
    let mut s = Session::connect(&addr.to_string(), &trust).expect("connect");
    s.reader.set_timeout(Some(WAIT)).unwrap();
    match s.reader.recv() {
        Ok(Incoming::Message(d)) => assert_eq!(d.at.seq, u64::MAX),
        other => panic!("the last number, alone, is a message: {other:?}"),
    }
    match s.reader.recv() {
        Err(SessionError::BadMessage(e)) => {
            assert!(e.to_string().contains("out of range"), "{e}")
        }
        other => panic!("a bundle past the end must be refused: {other:?}"),
    }
}
