//! Attacks on the live server and client: men in the middle (with their own
//! key, or forwarding the real one), changed keys for pinned hosts, the
//! real binaries' fingerprint flags, idle sessions, connection floods from
//! one address, password guessing, command floods, and the group and name
//! limits. (Malformed input of every kind is tests/bad_input.rs.)
//!
//! test_config() turns the rate and per-address limits off; the tests here
//! that need them turn them back on explicitly.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use common::{
    client_config, connect, err, login, ok, start_server_with, temp_dir, test_config, user, Raw,
    WAIT,
};
use muchat::client::{Client, ClientConfig, ClientError, Trust};
use muchat::connection::{FrameReader, FrameWriter, ReadError};
use muchat::dh::{EphemeralSecret, PublicValue, StaticSecret};
use muchat::event::{ErrorCode, Reply, ServerMessage};
use muchat::handshake::{self, HandshakeError, PROTOCOL};
use muchat::identity::Fingerprint;
use muchat::keys::{SessionKeys, Transcript, SERVER_FINISHED};
use muchat::server::{Config, Server};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn trust_fp(fp: Fingerprint) -> ClientConfig {
    ClientConfig {
        downloads: temp_dir("dl"),
        trust: Trust::Fingerprint(fp),
    }
}

fn trust_file(path: &Path) -> ClientConfig {
    ClientConfig {
        downloads: temp_dir("dl"),
        trust: Trust::KnownServers(path.to_path_buf()),
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
        ClientError::Untrusted(why) => why,
        other => panic!("expected ClientError::Untrusted, got {other:?}"),
    }
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

        // Server -> client.
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
    let server = start_server_with(test_config());
    let real_fp = server.fingerprint();

    // Control: a client that trusts the proxy's key is fully relayed, and
    // the proxy reads everything, passwords included. This is what the pin
    // prevents (and proves the proxy is a working man in the middle).
    let mallory = StaticSecret::random().unwrap();
    let mallory_fp = Fingerprint::of(mallory.public_value());
    assert_ne!(mallory_fp, real_fp);
    let (proxy, report) = spawn_mitm(server.local_addr(), mallory);
    let fooled = Client::connect(proxy, trust_fp(mallory_fp)).expect("connect via the proxy");
    ok(&fooled, "CREATE_USER Victim victim hunter2");
    ok(&fooled, "LOGIN victim hunter2");
    drop(fooled);
    let seen = report.join().unwrap().from_client;
    assert!(
        seen.iter().any(|h| h == "LOGIN victim hunter2"),
        "the control proxy should have read the login: {seen:?}"
    );

    // Pinned by fingerprint: refused, and not one frame reached the proxy.
    let (proxy, report) = spawn_mitm(server.local_addr(), StaticSecret::random().unwrap());
    let why = untrusted(connect_err(proxy, trust_fp(real_fp.clone())));
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
    let dir = temp_dir("mitm-known");
    let known = dir.join("known_servers");
    let (proxy, report) = spawn_mitm(server.local_addr(), StaticSecret::random().unwrap());
    let before = format!(
        "# pins\n127.0.0.1:1 {}\n{proxy} {real_fp}\n",
        Fingerprint::of(StaticSecret::random().unwrap().public_value())
    );
    std::fs::write(&known, &before).unwrap();
    let why = untrusted(connect_err(proxy, trust_file(&known)));
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
            .expect("a MUCHAT/2 hello");
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
    let server = start_server_with(test_config());
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
        match connect_err(proxy, trust_fp(real_fp.clone())) {
            ClientError::Handshake(HandshakeError::BadConfirmation) => {}
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
    untrusted(connect_err(proxy, trust_fp(real_fp.clone())));
    assert!(got.join().unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// 3. A changed key for a pinned host.
// ---------------------------------------------------------------------------

#[test]
fn a_changed_key_for_a_pinned_address_is_refused_loudly() {
    let first = start_server_with(test_config());
    let second = start_server_with(test_config());
    let (fp1, fp2) = (first.fingerprint(), second.fingerprint());
    assert_ne!(fp1, fp2, "different data directories, different keys");

    let dir = temp_dir("known");
    let known = dir.join("known_servers");
    let c = Client::connect(first.local_addr(), trust_file(&known)).expect("first contact");
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
    let why = untrusted(connect_err(second.local_addr(), trust_file(&known)));
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
    let c = Client::connect(first.local_addr(), trust_file(&known)).expect("known server");
    assert_eq!(c.first_use_note(), None);
    ok(&c, "LOGIN a pw");
    assert_eq!(std::fs::read_to_string(&known).unwrap(), before);
}

// ---------------------------------------------------------------------------
// 4. The real binaries' fingerprint flags.
// ---------------------------------------------------------------------------

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with `input` on stdin; returns (exit code, stdout, stderr).
/// Fails the test if it runs longer than WAIT.
fn run_bin(cmd: &mut Command, input: &str) -> (i32, String, String) {
    let mut child = Killed(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = collect(Box::new(child.0.stdout.take().unwrap()));
    let errs = collect(Box::new(child.0.stderr.take().unwrap()));
    let mut stdin = child.0.stdin.take().unwrap();
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < WAIT, "{cmd:?} did not exit");
        // Polling a child's exit status (no portable blocking wait with a timeout).
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        errs.join().unwrap(),
    )
}

fn server_fingerprint_of(data: &Path) -> String {
    let (code, out, errs) = run_bin(
        Command::new(SERVER)
            .arg("--fingerprint")
            .arg("--data-dir")
            .arg(data),
        "",
    );
    assert_eq!(code, 0, "{errs}");
    let fp = out.trim().to_string();
    assert!(Fingerprint::parse(&fp).is_some(), "{out:?}");
    fp
}

#[test]
fn the_binaries_pin_fingerprints_and_refuse_a_wrong_one() {
    let data = temp_dir("bin-data");
    let mut child = Killed(
        Command::new(SERVER)
            .args(["127.0.0.1:0", "--rate", "0", "--data-dir"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server"),
    );
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let (mut logged_fp, mut addr) = (None, None);
    while addr.is_none() {
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.split("key fingerprint ").nth(1) {
            logged_fp = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = Some(rest.trim().to_string());
        }
    }
    // Keep draining the log so the server never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    let fp = logged_fp.expect("the server logs its fingerprint before listening");
    let addr = addr.unwrap();
    assert!(Fingerprint::parse(&fp).is_some(), "{fp}");
    assert_eq!(server_fingerprint_of(&data), fp, "server --fingerprint");

    // Another key, for the wrong-fingerprint case.
    let other = server_fingerprint_of(&temp_dir("bin-other"));
    assert_ne!(other, fp);

    // No client run may touch a real known_servers file.
    let home = temp_dir("bin-home");
    let client = || {
        let mut c = Command::new(CLIENT);
        c.env("HOME", &home).env("XDG_DATA_HOME", home.join("xdg"));
        c
    };

    let (code, out, errs) = run_bin(
        client().args([&addr, "--server-fingerprint", &fp]),
        "CREATE_USER A a pw\n",
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {errs}");
    assert!(out.contains("OK created user a"), "{out}");

    let (code, out, errs) = run_bin(
        client().args([&addr, "--server-fingerprint", &other]),
        "CREATE_USER B b pw\n",
    );
    assert_ne!(code, 0, "a wrong fingerprint must fail; stderr: {errs}");
    assert_eq!(out, "", "nothing may be printed (or sent) on a refused key");
    assert!(errs.contains(&fp) && errs.contains(&other), "{errs}");
    assert!(
        !home.join("xdg").exists(),
        "--server-fingerprint must not write a known_servers file"
    );

    // Trust on first use with --known-servers.
    let known = temp_dir("bin-known").join("known_servers");
    let known_s = known.display().to_string();
    let (code, out, errs) = run_bin(client().args([&addr, "--known-servers", &known_s]), "");
    assert_eq!(code, 0, "stdout: {out}\nstderr: {errs}");
    assert!(errs.contains(&known_s) && errs.contains(&fp), "{errs}");
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("{addr} {fp}\n")
    );
    // The second time: known, no note.
    let (code, _, errs) = run_bin(client().args([&addr, "--known-servers", &known_s]), "");
    assert_eq!(code, 0, "{errs}");
    assert!(!errs.contains(&known_s), "{errs}");

    // A pin to another key for this address: refused, nothing printed.
    std::fs::write(&known, format!("{addr} {other}\n")).unwrap();
    let (code, out, errs) = run_bin(
        client().args([&addr, "--known-servers", &known_s]),
        "CREATE_USER C c pw\n",
    );
    assert_ne!(code, 0, "{errs}");
    assert_eq!(out, "");
    assert!(
        errs.contains("HAS CHANGED") && errs.contains(&known_s),
        "{errs}"
    );
    drop(child);
}

// ---------------------------------------------------------------------------
// 5. Idle sessions.
// ---------------------------------------------------------------------------

#[test]
fn idle_sessions_are_pinged_then_closed_while_answering_clients_stay() {
    let server = start_server_with(Config {
        idle_timeout: Duration::from_secs(1),
        ..test_config()
    });
    // The library client answers PING with PONG.
    let keeper = login(&server, "keeper");

    let mut idle = Raw::connect(&server);
    assert!(matches!(
        idle.request("CREATE_USER Idle idle pw"),
        Reply::Ok(_)
    ));
    assert!(matches!(idle.request("LOGIN idle pw"), Reply::Ok(_)));
    let t0 = Instant::now();
    // Past the handshake but never logged in, also silent.
    let mut anon = Raw::connect(&server);
    assert!(online(&keeper).contains("idle"));

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

    assert_eq!(anon.recv(), ServerMessage::Ping(1));
    assert_eq!(anon.expect_close().as_deref(), Some("idle timeout"));

    // The keeper has been silent longer than the idle timeout, but it
    // answered its PINGs: still connected, and the idle user is gone.
    let list = online(&keeper);
    assert!(list.contains("keeper") && !list.contains("idle"), "{list}");
    if let Ok(e) = keeper.events().try_recv() {
        panic!("unexpected event {e:?}");
    }
}

fn online(c: &Client) -> String {
    let list = ok(c, "LIST");
    list.split("online: ").nth(1).unwrap_or("").to_string()
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
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server did not close the connection")
            }
            Err(_) => return all, // reset: closed too
        }
    }
}

fn refused_for_too_many(server: &Server) {
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

/// Connects a library client. The server gives a connection's place back
/// before it closes the socket, so once a close is seen the place is free.
fn connect_when_freed(server: &Server) -> Client {
    Client::connect(server.local_addr(), client_config(server, temp_dir("dl")))
        .expect("the place of a closed connection is free again")
}

#[test]
fn connections_per_address_are_capped_and_freed_places_reused() {
    let server = start_server_with(Config {
        max_connections_per_ip: 2,
        handshake_timeout: Duration::from_secs(1),
        ..test_config()
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

    let a = connect_when_freed(&server);
    ok(&a, "CREATE_USER A a pw");
    ok(&a, "LOGIN a pw");
    let b = connect_when_freed(&server);
    ok(&b, "CREATE_USER B b pw");
    // Both places are taken again: the refusals did not leak any.
    refused_for_too_many(&server);
    ok(&a, "LIST");
}

// ---------------------------------------------------------------------------
// 7. Password guessing.
// ---------------------------------------------------------------------------

/// One login attempt on a fresh connection (as a guesser reconnecting would
/// make it); returns the reply and how long the server took to give it.
fn timed_login(server: &Server, name: &str, password: &str) -> (Reply, Duration) {
    let c = connect(server);
    let start = Instant::now();
    let reply = common::run(&c, &format!("LOGIN {name} {password}"));
    (reply, start.elapsed())
}

#[test]
fn password_guessing_is_slowed_by_account_and_by_address() {
    let server = start_server_with(Config {
        login_backoff: Duration::from_millis(200),
        ..test_config()
    });
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right-pw");
    drop(c);
    let failed = Reply::Err(ErrorCode::LoginFailed, "wrong username or password".into());

    for i in 1..=3 {
        let (reply, took) = timed_login(&server, "alice", &format!("guess{i}"));
        assert_eq!(reply, failed, "attempt {i}");
        assert!(
            took < Duration::from_millis(150),
            "attempt {i} took {took:?}"
        );
    }
    let (reply, took) = timed_login(&server, "alice", "guess4");
    assert_eq!(reply, failed);
    assert!(
        took >= Duration::from_millis(180),
        "4th attempt took {took:?}"
    );
    let (reply, took) = timed_login(&server, "alice", "guess5");
    assert_eq!(reply, failed);
    assert!(
        took >= Duration::from_millis(360),
        "5th attempt took {took:?}"
    );

    // Another (non-existent) account from the same address: the same
    // reply, and throttled by the address (5 failures: 200 ms x 4).
    let (reply, took) = timed_login(&server, "nobody", "guess");
    assert_eq!(reply, failed);
    assert!(
        took >= Duration::from_millis(720),
        "other name took {took:?}"
    );

    // The right password still works, after its wait, and resets the count.
    let (reply, took) = timed_login(&server, "alice", "right-pw");
    assert_eq!(reply, Reply::Ok("logged in as alice".into()));
    assert!(
        took >= Duration::from_millis(1400),
        "right password took {took:?}"
    );
    let (reply, took) = timed_login(&server, "alice", "wrong-again");
    assert_eq!(reply, failed);
    assert!(
        took < Duration::from_millis(150),
        "after a success a wrong attempt took {took:?}"
    );
}

/// Fails `n` wrong logins for distinct (non-existent) accounts, one
/// connection each, as a password sprayer would.
fn spray(server: &Server, tag: &str, n: usize) {
    for i in 0..n {
        let (reply, _) = timed_login(server, &format!("{tag}{i}"), "Summer2024");
        assert!(matches!(reply, Reply::Err(ErrorCode::LoginFailed, _)));
    }
}

#[test]
fn concurrent_guesses_do_not_share_one_backoff_window() {
    let server = start_server_with(Config {
        login_backoff: Duration::from_millis(200),
        ..test_config()
    });
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right-pw");
    drop(c);
    for i in 1..=3 {
        let (reply, _) = timed_login(&server, "alice", &format!("free{i}"));
        assert!(matches!(reply, Reply::Err(ErrorCode::LoginFailed, _)));
    }
    // Eight guesses at once, one connection each.
    const GUESSES: usize = 8;
    let clients: Vec<Client> = (0..GUESSES).map(|_| connect(&server)).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    for (i, c) in clients.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let cmd = muchat::command::Command::parse(&format!("LOGIN alice guess{i}")).unwrap();
            let reply = c.execute(&cmd);
            let _ = tx.send((reply, start.elapsed()));
        });
    }
    drop(tx);
    // One after another, the 1st would be checked at 200 ms, the 2nd at
    // 600 ms, the 3rd at 1400 ms: at most 2 answers within a second.
    let deadline = start + Duration::from_secs(1);
    let mut answered = Vec::new();
    while let Ok((reply, at)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        answered.push(at);
        assert!(
            matches!(reply, Ok(Reply::Err(ErrorCode::LoginFailed, _))),
            "{reply:?}"
        );
    }
    assert!(
        answered.len() <= 2,
        "{} of {GUESSES} concurrent guesses were checked within 1 s, at {answered:?}",
        answered.len()
    );
}

#[test]
fn logging_in_to_your_own_account_does_not_reset_the_address_throttle() {
    let server = start_server_with(Config {
        login_backoff: Duration::from_millis(200),
        ..test_config()
    });
    let c = connect(&server);
    ok(&c, "CREATE_USER Mallory mallory mallory-pw");
    drop(c);
    spray(&server, "victim", 4);
    let (reply, _) = timed_login(&server, "mallory", "mallory-pw");
    assert!(matches!(reply, Reply::Ok(_)), "{reply:?}");
    // Four failures against other accounts still count for this address.
    let (reply, took) = timed_login(&server, "victim9", "Summer2024");
    assert!(matches!(reply, Reply::Err(ErrorCode::LoginFailed, _)));
    assert!(
        took >= Duration::from_millis(180),
        "the sprayer's next guess waited only {took:?}"
    );
}

// ---------------------------------------------------------------------------
// 8. Command floods.
// ---------------------------------------------------------------------------

#[test]
fn a_command_flood_is_rate_limited_without_starving_others() {
    let server = start_server_with(Config {
        rate: 20,
        burst: 20,
        ..test_config()
    });
    let bob = login(&server, "bob");
    let carol = login(&server, "carol");
    let mut raw = Raw::connect(&server);
    assert!(matches!(
        raw.request("CREATE_USER F flooder pw"),
        Reply::Ok(_)
    ));
    assert!(matches!(raw.request("LOGIN flooder pw"), Reply::Ok(_)));

    const FLOOD: usize = 300;
    std::thread::scope(|scope| {
        // Bob and Carol chat while the flood runs.
        let chat = scope.spawn(|| {
            for i in 0..10 {
                for (from, to) in [(&bob, "carol"), (&carol, "bob")] {
                    match from.send_text(&user(to), &format!("to {to} #{i}")) {
                        Ok(Reply::Ok(_)) => {}
                        other => panic!("send to {to} #{i}: {other:?}"),
                    }
                }
            }
            for (me, other) in [(&bob, "bob"), (&carol, "carol")] {
                for i in 0..10 {
                    let (_, _, _, text) = common::next_message(me);
                    assert_eq!(text, format!("to {other} #{i}"));
                }
            }
        });

        // Every request written before any reply is read.
        for _ in 0..FLOOD {
            raw.writer.queue("LIST", None);
        }
        raw.writer.flush().unwrap();
        let (mut oks, mut limited) = (0, 0);
        for n in 0..FLOOD {
            match raw.recv() {
                ServerMessage::Reply(Reply::Ok(text)) if text.starts_with("groups:") => oks += 1,
                ServerMessage::Reply(Reply::Err(ErrorCode::RateLimited, _)) => limited += 1,
                other => panic!("reply {n}: unexpected {other:?}"),
            }
        }
        assert_eq!(oks + limited, FLOOD);
        assert!(limited >= 250, "only {limited} of {FLOOD} were limited");
        assert!(oks >= 18, "the burst should have been served: {oks}");
        chat.join().unwrap();
    });

    // Exactly one reply each: nothing more is coming.
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    match raw.reader.read_frame() {
        Err(ReadError::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("an extra frame after the flood's replies: {other:?}"),
    }
    raw.stream.set_read_timeout(Some(WAIT)).unwrap();

    // Still connected: once tokens come back, requests succeed.
    let mut tries = 0;
    loop {
        tries += 1;
        match raw.request("LIST") {
            Reply::Ok(_) => break,
            Reply::Err(ErrorCode::RateLimited, _) if tries < 200 => {
                // Pacing the attacker: one token comes back every 50 ms.
                std::thread::sleep(Duration::from_millis(10));
            }
            other => panic!("after the flood: {other:?}"),
        }
    }
    match raw.request("HELP") {
        Reply::Ok(text) => assert!(text.starts_with("requests:"), "{text}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 9. Group limits and case-insensitive names.
// ---------------------------------------------------------------------------

#[test]
fn the_group_cap_holds_and_names_ignore_case() {
    let server = start_server_with(Config {
        max_groups_per_user: 2,
        ..test_config()
    });
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
