//! Nothing is lost: persistence across restarts, store-and-forward with
//! acknowledgements, history, quotas, and a data directory that cannot be
//! used.

mod common;

use std::io::BufReader;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use muchat::client::{Client, ClientConfig, ClientEvent, Trust};
use muchat::connection::{FrameReader, FrameWriter};
use muchat::content::ContentKey;
use muchat::event::{Delivery, ErrorCode, Reply, ServerMessage};
use muchat::identity::Fingerprint;
use muchat::names::Conversation;
use muchat::password::PasswordCost;
use muchat::request::Request;
use muchat::server::{Config, Server};

fn config_in(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        ..test_config()
    }
}

fn start_in(dir: &Path) -> Server {
    start_server_with(config_in(dir))
}

#[test]
fn accounts_groups_and_memberships_survive_a_restart() {
    let dir = temp_dir("restart");
    let server = start_in(&dir);
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    ok(&alice, "CREATE_GROUP devs");
    ok(&alice, "CREATE_GROUP ops");
    ok(&bob, "JOIN devs");
    ok(&bob, "JOIN ops");
    ok(&bob, "LEAVE ops");
    drop((alice, bob));
    server.shutdown();

    let server = start_in(&dir);
    let alice = connect(&server);
    err(&alice, "LOGIN alice wrong", ErrorCode::LoginFailed);
    ok(&alice, "LOGIN alice pw-alice");
    err(&alice, "CREATE_USER A alice x", ErrorCode::AlreadyLoggedIn);
    let c = connect(&server);
    err(&c, "CREATE_USER Again alice x", ErrorCode::UserExists);
    let bob = login_again(&server, "bob");
    assert_eq!(
        ok(&bob, "LIST"),
        "groups: #devs (2 members, joined), #ops (1 member); online: alice, bob"
    );
    err(&bob, "CREATE_GROUP devs", ErrorCode::GroupExists);
    // Ids continue after the restart instead of starting again at 1.
    let reply = ok(&alice, "SEND_TO_GROUP devs after restart");
    let id: u64 = reply.split(' ').next().unwrap().parse().unwrap();
    let (got, ..) = next_message(&bob);
    assert_eq!(got, id);
    // The last member leaving does not delete the group or its history.
    ok(&alice, "LEAVE ops");
    ok(&bob, "JOIN ops");
}

#[test]
fn offline_messages_arrive_at_login_in_order() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    ok(&alice, "CREATE_GROUP g");
    ok(&bob, "JOIN g");
    ok(&bob, "LOGOUT");
    ok(&alice, "SEND bob one");
    ok(&alice, "SEND_TO_GROUP g two");
    ok(&alice, "SEND bob three");
    assert_no_event(&bob);
    ok(&bob, "LOGIN bob pw-bob");
    let got: Vec<(String, String)> = (0..3)
        .map(|_| {
            let (_, _, to, text) = next_message(&bob);
            (to, text)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("@bob".to_string(), "one".to_string()),
            ("#g".to_string(), "two".to_string()),
            ("@bob".to_string(), "three".to_string())
        ]
    );
    // Acknowledged: a later login gets nothing again.
    assert_no_event(&bob);
    let again = login_again(&server, "bob");
    assert_no_event(&again);
}

/// A raw session that logs in and reads frames without acknowledging.
fn raw_login(server: &Server, user: &str) -> Raw {
    let mut raw = Raw::connect(server);
    assert!(matches!(
        raw.request(&format!("LOGIN {user} pw-{user}")),
        Reply::Ok(_)
    ));
    raw
}

fn raw_next_msg(raw: &mut Raw) -> Delivery {
    match raw.recv() {
        ServerMessage::Msg(d) => d,
        other => panic!("expected MSG, got {other:?}"),
    }
}

#[test]
fn unacknowledged_messages_are_redelivered_until_acknowledged() {
    let server = start_server();
    let alice = login(&server, "alice");
    drop(login(&server, "bob"));
    ok(&alice, "SEND bob first");
    ok(&alice, "SEND bob second");

    // A client that reads but never acknowledges, then goes away.
    let mut raw = raw_login(&server, "bob");
    let a = raw_next_msg(&mut raw);
    let b = raw_next_msg(&mut raw);
    assert_eq!(a.key.open(&a.body).unwrap(), b"first");
    assert!(a.id < b.id);
    drop(raw);

    // Both come again; acknowledge only the first.
    let mut raw = raw_login(&server, "bob");
    assert_eq!(raw_next_msg(&mut raw).id, a.id);
    assert_eq!(raw_next_msg(&mut raw).id, b.id);
    raw.send(&format!("ACK {}", a.id));
    // The ACK has no reply; HELP's reply proves the ACK was processed first.
    assert!(matches!(raw.request("HELP"), Reply::Ok(_)));
    drop(raw);

    let mut raw = raw_login(&server, "bob");
    let again = raw_next_msg(&mut raw);
    assert_eq!(again.id, b.id, "only the unacknowledged one is redelivered");
    assert_eq!(again.key.open(&again.body).unwrap(), b"second");
    drop(raw);

    // The library client acknowledges what it shows: one more login, then none.
    let bob = login_again(&server, "bob");
    assert_eq!(next_message(&bob).3, "second");
    assert_no_event(&bob);
    drop(bob);
    let bob = login_again(&server, "bob");
    assert_no_event(&bob);
}

/// The client shows a redelivered message once, and acknowledges it.
#[test]
fn the_client_drops_duplicates_by_id() {
    // A stand-in server that sends the same message twice.
    let identity = muchat::dh::StaticSecret::random().unwrap();
    let trust = Trust::Fingerprint(Fingerprint::of(identity.public_value()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream.try_clone().unwrap();
        let keyed = muchat::handshake::server(&mut reader, &mut w, &identity).unwrap();
        let mut frames = FrameReader::new(reader, keyed.opener);
        let mut out = FrameWriter::new(w, keyed.sealer);
        let key = ContentKey::random();
        let msg = |id: u64, text: &[u8]| {
            ServerMessage::Msg(Delivery {
                id,
                at_ms: 1,
                from: user("alice"),
                to: Conversation::User(user("bob")),
                key: key.clone(),
                body: key.seal(text),
            })
            .to_frame()
        };
        for f in [msg(7, b"hello"), msg(7, b"hello"), msg(8, b"next")] {
            out.write_frame(&f).unwrap();
        }
        // Collect ACKs until both ids are acknowledged.
        let mut acked = Vec::new();
        while !(acked.contains(&7) && acked.contains(&8)) {
            let f = frames.read_frame().unwrap().expect("a frame");
            match Request::parse(f).unwrap() {
                Request::Ack(ids) => acked.extend(ids),
                other => panic!("unexpected {other:?}"),
            }
        }
        acked
    });
    let config = ClientConfig {
        trust,
        ..ClientConfig::default()
    };
    let c = Client::connect(addr, config).unwrap();
    assert_eq!(next_message(&c).3, "hello");
    assert_eq!(next_message(&c).3, "next");
    let acked = fake.join().unwrap();
    assert!(acked.iter().filter(|&&id| id == 7).count() >= 1);
}

fn file_of(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn next_file(c: &Client) -> PathBuf {
    loop {
        match next_event(c) {
            ClientEvent::FileReceived { path, .. } => return path,
            ClientEvent::FileProgress { .. } => {}
            other => panic!("expected a file, got {other:?}"),
        }
    }
}

#[test]
fn a_file_to_an_offline_member_is_delivered_at_login() {
    let server = start_server();
    let src = temp_dir("src");
    let (path, data) = file_of(&src, "offline.bin", 200_000);
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP g");
    let bob_dir = temp_dir("bob-dl");
    let bob =
        Client::connect(server.local_addr(), client_config(&server, bob_dir.clone())).unwrap();
    ok(&bob, "CREATE_USER bob bob pw-bob");
    ok(&bob, "LOGIN bob pw-bob");
    ok(&bob, "JOIN g");
    ok(&bob, "LOGOUT");

    let reply = ok(&alice, &format!("SEND FILE bob {}", path.display()));
    assert!(reply.contains("kept for 1 user"), "{reply}");
    assert!(matches!(
        next_event(&alice),
        ClientEvent::FileSent {
            reply: Reply::Ok(_),
            ..
        }
    ));
    ok(&alice, &format!("SEND_TO_GROUP FILE g {}", path.display()));
    assert!(matches!(
        next_event(&alice),
        ClientEvent::FileSent {
            reply: Reply::Ok(_),
            ..
        }
    ));

    ok(&bob, "LOGIN bob pw-bob");
    let first = next_file(&bob);
    let second = next_file(&bob);
    assert_eq!(first, bob_dir.join("offline.bin"));
    assert_eq!(second, bob_dir.join("offline (1).bin"));
    assert_eq!(std::fs::read(first).unwrap(), data);
    assert_eq!(std::fs::read(second).unwrap(), data);
    assert_no_event(&bob);
    // Acknowledged: not offered again.
    drop(bob);
    let bob = login_again(&server, "bob");
    assert_no_event(&bob);
}

#[test]
fn files_beyond_the_pending_quota_are_refused() {
    let server = start_server_with(Config {
        max_pending_bytes: 150_000,
        ..test_config()
    });
    let src = temp_dir("src");
    let (small, _) = file_of(&src, "small.bin", 100_000);
    let alice = login(&server, "alice");
    drop(login(&server, "bob"));
    ok(&alice, &format!("SEND FILE bob {}", small.display()));
    assert!(matches!(
        next_event(&alice),
        ClientEvent::FileSent {
            reply: Reply::Ok(_),
            ..
        }
    ));
    // 100,000 waiting + 100,000 more is over 150,000.
    let text = err(
        &alice,
        &format!("SEND FILE bob {}", small.display()),
        ErrorCode::QuotaExceeded,
    );
    assert!(text.contains("bob"), "{text}");
    // Once bob has his file, there is room again.
    let bob = login_again(&server, "bob");
    let _ = next_file(&bob);
    assert_no_event(&bob);
    ok(&bob, "LOGOUT");
    ok(&alice, &format!("SEND FILE bob {}", small.display()));
}

#[test]
fn history_shows_only_your_conversations() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    let eve = login(&server, "eve");
    ok(&alice, "CREATE_GROUP devs");
    ok(&bob, "JOIN devs");
    for i in 0..5 {
        ok(&alice, &format!("SEND_TO_GROUP devs group {i}"));
    }
    ok(&alice, "SEND bob psst");
    ok(&bob, "SEND alice what");
    for _ in 0..6 {
        let _ = next_message(&bob);
    }
    let _ = next_message(&alice);

    let history = |c: &Client, line: &str| -> (Vec<(String, String, String)>, String) {
        let text = ok(c, line);
        let mut got = Vec::new();
        while let Ok(e) = c.events().try_recv() {
            match e {
                ClientEvent::Message {
                    from,
                    to,
                    text,
                    history: true,
                    ..
                } => got.push((from.to_string(), to.to_string(), text)),
                other => panic!("unexpected {other:?}"),
            }
        }
        (got, text)
    };
    let (got, text) = history(&bob, "HISTORY devs 3");
    assert_eq!(text, "3 messages with devs");
    let texts: Vec<&str> = got.iter().map(|m| m.2.as_str()).collect();
    assert_eq!(
        texts,
        ["group 2", "group 3", "group 4"],
        "last 3, oldest first"
    );
    let (got, _) = history(&alice, "HISTORY @bob");
    assert_eq!(
        got,
        [
            ("alice".into(), "@bob".into(), "psst".into()),
            ("bob".into(), "@alice".into(), "what".into())
        ]
    );
    // Eve is not in #devs and was in no conversation with bob.
    err(&eve, "HISTORY devs", ErrorCode::NotMember);
    err(&eve, "HISTORY #devs", ErrorCode::NotMember);
    let (got, _) = history(&eve, "HISTORY bob");
    assert!(got.is_empty());
    err(&eve, "HISTORY nobody", ErrorCode::UnknownUser);
    // Leaving ends access; the history itself stays.
    ok(&bob, "LEAVE devs");
    err(&bob, "HISTORY #devs", ErrorCode::NotMember);
    let (got, _) = history(&alice, "HISTORY devs 100");
    assert_eq!(got.len(), 5);
}

/// Wrong passwords get the same reply whether or not the account exists,
/// and take about as long (real Argon2id cost, so the hash dominates).
#[test]
fn a_failed_login_does_not_reveal_whether_the_user_exists() {
    let server = start_server_with(Config {
        password_cost: PasswordCost::OWASP,
        // Throttling would delay the later attempts; it is tested on its own.
        login_backoff: std::time::Duration::ZERO,
        ..test_config()
    });
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right");
    let time = |line: &str| -> (std::time::Duration, String) {
        let start = Instant::now();
        let text = err(&c, line, ErrorCode::LoginFailed);
        (start.elapsed(), text)
    };
    let mut existing = std::time::Duration::ZERO;
    let mut missing = std::time::Duration::ZERO;
    for _ in 0..3 {
        let (t1, e1) = time("LOGIN alice wrong");
        let (t2, e2) = time("LOGIN mallory wrong");
        assert_eq!(e1, e2);
        existing += t1;
        missing += t2;
    }
    let ratio = existing.as_secs_f64() / missing.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "existing {existing:?} vs missing {missing:?}"
    );
}

#[test]
fn an_unusable_data_directory_is_a_clear_error() {
    // A database file that is not a database.
    let dir = temp_dir("corrupt");
    std::fs::write(dir.join("muchat.db"), vec![b'x'; 4096]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = Server::start(listener, config_in(&dir))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("muchat.db"), "{e}");
    // The garbage is left alone, not replaced by a fresh database.
    assert_eq!(
        std::fs::read(dir.join("muchat.db")).unwrap(),
        vec![b'x'; 4096]
    );

    // A data directory that cannot be created (a file is in the way).
    let blocker = temp_dir("blocked").join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = Server::start(listener, config_in(&blocker.join("data")))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("blocked"), "{e}");

    // The binary says so and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("muchat.db"));
}

/// kill -9 at any moment loses no message whose sender got OK.
#[test]
fn kill_dash_nine_loses_no_acknowledged_message() {
    let dir = temp_dir("kill9");
    let spawn = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["127.0.0.1:0", "--rate", "0", "--data-dir"])
            .arg(&dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(BufReader::new(stderr));
        let addr = loop {
            let line = lines.next().expect("server output").unwrap();
            if let Some(a) = line.split("listening on ").nth(1) {
                break a.trim().to_string();
            }
        };
        // Keep draining the log so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        (child, addr)
    };
    let (mut server, addr) = spawn();
    // Pins go to a file of the test's own, never the user's.
    let known = dir.join("known_servers");
    let connect_to = |addr: &str| {
        let config = ClientConfig {
            trust: Trust::KnownServers(known.clone()),
            ..ClientConfig::default()
        };
        Client::connect(addr, config).unwrap()
    };
    let alice = connect_to(&addr);
    ok(&alice, "CREATE_USER A alice pw-alice");
    ok(&alice, "LOGIN alice pw-alice");
    let bob = connect_to(&addr);
    ok(&bob, "CREATE_USER B bob pw-bob");
    drop(bob);

    // Alice sends until the server dies; each OK'd id is reported.
    let (acks_tx, acks) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        for i in 0..100_000 {
            match alice.send_text(&user("bob"), &format!("m{i}")) {
                Ok(Reply::Ok(text)) => {
                    let id: u64 = text.split(' ').next().unwrap().parse().unwrap();
                    if acks_tx.send(id).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    // Kill mid-traffic: once 200 messages are acknowledged, with more in flight.
    let mut acked: Vec<u64> = acks.iter().take(200).collect();
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    sender.join().unwrap();
    acked.extend(acks.try_iter());
    assert!(acked.len() >= 200);

    let (mut server, addr) = spawn();
    let bob = connect_to(&addr);
    ok(&bob, "LOGIN bob pw-bob");
    let mut seen = std::collections::HashSet::new();
    let want: std::collections::HashSet<u64> = acked.iter().copied().collect();
    while !want.is_subset(&seen) {
        let (id, ..) = next_message(&bob);
        assert!(seen.insert(id), "message {id} shown twice");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
