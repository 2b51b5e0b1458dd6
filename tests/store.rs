//! Persistence and delivery from the logs, against the real server: what
//! survives a restart, offline delivery, cumulative acknowledgement,
//! exactly-once display across crashes and retried sends, files stored and
//! paged, migration of a 0.1 data directory, and a reader that stops
//! reading slowing no one.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use muchat::client::{Client, ClientConfig, ClientEvent, Trust};
use muchat::event::{Delivery, ErrorCode, Reply, ServerMessage};
use muchat::password::PasswordCost;
use muchat::server::Server;

#[test]
fn accounts_groups_and_memberships_survive_a_restart() {
    let mut server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    ok(&alice, "CREATE_GROUP devs");
    ok(&alice, "CREATE_GROUP ops");
    ok(&bob, "JOIN devs");
    ok(&bob, "JOIN ops");
    ok(&bob, "LEAVE ops");
    assert_eq!(sent(&alice, "SEND_TO_GROUP devs before"), [at("#devs:1")]);
    assert_eq!(next_message(&bob).text, "before");
    drop((alice, bob));
    server.restart();

    let alice = connect(&server);
    err(&alice, "LOGIN alice wrong", ErrorCode::LoginFailed);
    ok(&alice, "LOGIN alice pw-alice");
    let c = connect(&server);
    err(&c, "CREATE_USER Again alice x", ErrorCode::UserExists);
    let bob = login_again(&server, "bob");
    assert_eq!(
        ok(&bob, "LIST"),
        "groups: #devs (2 members, joined), #ops (1 member); online: alice, bob"
    );
    err(&bob, "CREATE_GROUP devs", ErrorCode::GroupExists);
    // Sequence numbers go on after the restart instead of starting again.
    assert_eq!(sent(&alice, "SEND_TO_GROUP devs after"), [at("#devs:2")]);
    assert_eq!(next_message(&bob).at, "#devs:2");
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
    let mut got: Vec<(String, String)> = (0..3)
        .map(|_| {
            let m = next_message(&bob);
            (m.at, m.text)
        })
        .collect();
    // Each conversation in order; the two conversations in either order.
    got.sort();
    assert_eq!(
        got,
        [
            ("#g:1".to_string(), "two".to_string()),
            ("@alice:1".to_string(), "one".to_string()),
            ("@alice:2".to_string(), "three".to_string())
        ]
    );
    // Acknowledged: a later login gets nothing again.
    assert_no_event(&bob);
    drop(bob);
    let again = login_again(&server, "bob");
    // The acknowledgement is written within a moment; a login reads it.
    assert_no_event(&again);
}

/// Joining a group brings no backlog: a member gets what is sent after.
#[test]
fn joining_starts_at_the_end_of_the_group() {
    let server = start_server();
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP g");
    ok(&alice, "SEND_TO_GROUP g old news");
    let bob = login(&server, "bob");
    ok(&bob, "JOIN g");
    assert_no_event(&bob);
    ok(&alice, "SEND_TO_GROUP g fresh");
    assert_eq!(next_message(&bob).at, "#g:2");
}

/// A raw session that logs in and reads frames without acknowledging.
fn raw_login(server: &Server, user: &str) -> Raw {
    let mut raw = Raw::connect(server);
    assert!(raw.request(&format!("LOGIN {user} pw-{user}")).is_ok());
    raw
}

fn raw_next_msg(raw: &mut Raw) -> Delivery {
    match raw.recv() {
        ServerMessage::Msg(d) => d,
        other => panic!("expected MSG, got {other:?}"),
    }
}

#[test]
fn acknowledgements_are_cumulative_and_redelivery_starts_after_them() {
    let server = start_server();
    let alice = login(&server, "alice");
    drop(login(&server, "bob"));
    for t in ["first", "second", "third"] {
        ok(&alice, &format!("SEND bob {t}"));
    }
    // A client that reads but never acknowledges, then goes away.
    let mut raw = raw_login(&server, "bob");
    let seqs: Vec<u64> = (0..3).map(|_| raw_next_msg(&mut raw).at.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    drop(raw);

    // All come again; acknowledge up to the second.
    let mut raw = raw_login(&server, "bob");
    let seqs: Vec<u64> = (0..3).map(|_| raw_next_msg(&mut raw).at.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    raw.send("ACK @alice:2");
    // The ACK has no reply; HELP's reply proves the ACK was read first.
    assert!(raw.request("HELP").is_ok());
    drop(raw);

    let mut raw = raw_login(&server, "bob");
    let again = raw_next_msg(&mut raw);
    assert_eq!(again.at, at("@alice:3"), "only what follows the ack");
    assert_eq!(again.key.open(&again.body).unwrap(), b"third");
    drop(raw);

    // The library client acknowledges what it shows: one more login, then none.
    let bob = login_again(&server, "bob");
    assert_eq!(next_message(&bob).text, "third");
    drop(bob);
    let bob = login_again(&server, "bob");
    assert_no_event(&bob);
}

/// An acknowledgement cannot reach past what the connection was sent: a
/// client that acknowledges a made-up reference (or a `HIST` one, from
/// the same numbering) loses nothing it was not given.
#[test]
fn an_acknowledgement_never_skips_what_was_not_sent() {
    let server = start_server();
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP g");
    let bob = login(&server, "bob");
    ok(&bob, "JOIN g");
    drop(bob);
    ok(&alice, "SEND_TO_GROUP g m1");
    let mut raw = raw_login(&server, "bob");
    assert_eq!(raw_next_msg(&mut raw).at.seq, 1);
    // Claims everything up to 99 in #g, and in a conversation that does
    // not exist yet.
    raw.send("ACK #g:99,@alice:99");
    assert!(raw.request("HELP").is_ok());
    drop(raw);
    ok(&alice, "SEND_TO_GROUP g m2");
    ok(&alice, "SEND bob m3");
    let bob = login_again(&server, "bob");
    let mut texts: Vec<String> = (0..2).map(|_| next_message(&bob).text).collect();
    texts.sort();
    assert_eq!(texts, ["m2", "m3"]);
    assert_no_event(&bob);
}

/// The client shows each message once even when the server delivers it
/// again (its acknowledgement was lost, as in a crash): it remembers, per
/// conversation, what it has shown, in its state directory, across
/// restarts, and acknowledges the repeat without showing it.
#[test]
fn a_redelivered_message_is_shown_once_across_client_restarts() {
    let server = start_server();
    let alice = login(&server, "alice");
    drop(login(&server, "bob"));
    ok(&alice, "SEND bob once");
    ok(&alice, "SEND bob twice");
    // A client read both and showed the first, but its acknowledgement
    // never reached the server.
    let state = server.path("state");
    let dir =
        muchat::client::seen::user_dir(&state, &server.local_addr().to_string(), &user("bob"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seen.json"), r#"{"@alice":1}"#).unwrap();
    let config = ClientConfig {
        state_dir: Some(state.clone()),
        ..client_config(&server, server.path("dl"))
    };
    let bob = Client::connect(server.local_addr(), config).unwrap();
    ok(&bob, "LOGIN bob pw-bob");
    // The server sends both; only the second is shown.
    let m = next_message(&bob);
    assert_eq!((m.at.as_str(), m.text.as_str()), ("@alice:2", "twice"));
    assert_no_event(&bob);
    drop(bob);
    assert_eq!(
        std::fs::read_to_string(dir.join("seen.json")).unwrap(),
        r#"{"@alice":2}"#
    );
    // And both were acknowledged: a raw login gets nothing.
    let mut raw = raw_login(&server, "bob");
    assert!(matches!(raw.request("HELP"), Reply::Ok { .. }));
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

fn file_sent(c: &Client) -> Reply {
    loop {
        match next_event(c) {
            ClientEvent::FileSent { reply, .. } => return reply,
            ClientEvent::FileSendFailed { reason, .. } => panic!("upload failed: {reason}"),
            _ => {}
        }
    }
}

#[test]
fn a_file_to_an_offline_member_is_delivered_at_login() {
    let mut server = start_server();
    let src = server.path("src");
    let (path, data) = file_of(&src, "report.pdf", 200_000);
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP g");
    let bob = login(&server, "bob");
    ok(&bob, "JOIN g");
    ok(&bob, "LOGOUT");
    ok(&alice, &format!("SEND_TO_GROUP FILE g {}", path.display()));
    assert!(file_sent(&alice).is_ok());
    drop(alice);
    // Across a restart, too.
    server.restart();
    let bob = login_again(&server, "bob");
    let got = next_file(&bob);
    assert_eq!(std::fs::read(got).unwrap(), data);
    drop(bob);
    let bob = login_again(&server, "bob");
    assert_no_event(&bob);
}

#[test]
fn files_beyond_the_pending_quota_are_refused() {
    let server = start_server_with(|c| c.max_pending_bytes = 150_000);
    let src = server.path("src");
    let (path, _) = file_of(&src, "a.bin", 100_000);
    let alice = login(&server, "alice");
    drop(login(&server, "bob"));
    ok(&alice, &format!("SEND FILE bob {}", path.display()));
    assert!(file_sent(&alice).is_ok());
    // Bob has not collected the first: a second would go over.
    let text = err(
        &alice,
        &format!("SEND FILE bob {}", path.display()),
        ErrorCode::QuotaExceeded,
    );
    assert!(text.contains("@bob"), "{text}");
    // Once he has it, there is room again.
    let bob = login_again(&server, "bob");
    next_file(&bob);
    drop(bob);
    let deadline = Instant::now() + WAIT;
    loop {
        match run(&alice, &format!("SEND FILE bob {}", path.display())) {
            Reply::Ok { .. } => break,
            // The acknowledgement may still be on its way to the disk.
            Reply::Err {
                code: ErrorCode::QuotaExceeded,
                ..
            } if Instant::now() < deadline => std::thread::yield_now(),
            other => panic!("{other:?}"),
        }
    }
    assert!(file_sent(&alice).is_ok());
}

#[test]
fn history_shows_only_your_conversations() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    let eve = login(&server, "eve");
    ok(&alice, "CREATE_GROUP devs");
    ok(&bob, "JOIN devs");
    // A group named like a user does not hide that user's direct history.
    ok(&alice, "CREATE_GROUP bob");
    for i in 0..5 {
        ok(&alice, &format!("SEND_TO_GROUP devs group {i}"));
    }
    ok(&alice, "SEND bob psst");
    ok(&bob, "SEND alice what");
    ok(&alice, "SEND_TO_GROUP bob in the group called bob");
    let history = |c: &Client, line: &str| -> (Vec<(String, String, String)>, String) {
        // Drain live deliveries first.
        while c.events().try_recv().is_ok() {}
        let text = ok(c, line);
        let mut got = Vec::new();
        while let Ok(e) = c.events().try_recv() {
            match e {
                ClientEvent::Message {
                    from,
                    at,
                    text,
                    history: true,
                    ..
                } => got.push((from.to_string(), at.to_string(), text)),
                ClientEvent::Message { history: false, .. } => {}
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
    let (got, _) = history(&alice, "HISTORY bob");
    assert_eq!(
        got,
        [
            ("alice".into(), "@bob:1".into(), "psst".into()),
            ("bob".into(), "@bob:2".into(), "what".into())
        ],
        "a bare name is the user when there is one"
    );
    let (got, _) = history(&alice, "HISTORY #bob");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, "#bob:1");
    // Eve is not in #devs and was in no conversation with bob.
    err(&eve, "HISTORY devs", ErrorCode::NotMember);
    err(&eve, "HISTORY #devs", ErrorCode::NotMember);
    let (got, _) = history(&eve, "HISTORY @bob");
    assert!(got.is_empty());
    err(&eve, "HISTORY nobody", ErrorCode::UnknownUser);
    // Counts above the cap are capped, not refused.
    assert_eq!(
        history(&alice, "HISTORY devs 9999").1,
        "5 messages with devs"
    );
    // Leaving ends access; the history itself stays.
    ok(&bob, "LEAVE devs");
    err(&bob, "HISTORY #devs", ErrorCode::NotMember);
    let (got, _) = history(&alice, "HISTORY devs 100");
    assert_eq!(got.len(), 5);
}

/// A message sent to several groups, and a file too, is in each group's
/// history.
#[test]
fn a_send_to_several_groups_is_in_each_history() {
    let server = start_server();
    let src = server.path("src");
    let (path, _) = file_of(&src, "plan.txt", 1000);
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP ops");
    ok(&alice, "CREATE_GROUP dev");
    ok(&alice, "SEND_TO_GROUP ops,dev hello both");
    ok(
        &alice,
        &format!("SEND_TO_GROUP FILE ops,dev {}", path.display()),
    );
    assert!(file_sent(&alice).is_ok());
    for g in ["ops", "dev"] {
        assert_eq!(
            ok(&alice, &format!("HISTORY #{g}")),
            format!("2 messages with #{g}")
        );
        let mut kinds = Vec::new();
        for _ in 0..2 {
            match next_event(&alice) {
                ClientEvent::Message { text, .. } => kinds.push(text),
                ClientEvent::HistoryFile { name, .. } => kinds.push(name),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(kinds, ["hello both", "plan.txt"]);
    }
}

/// Wrong passwords get the same reply whether or not the account exists,
/// and an unknown account is not answered faster (real Argon2id cost).
#[test]
fn a_failed_login_does_not_reveal_whether_the_user_exists() {
    let server = start_server_with(|c| {
        c.password_cost = PasswordCost::OWASP;
        // Throttling would delay the later attempts; it is tested on its own.
        c.login_backoff = Duration::ZERO;
    });
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice right");
    let time = |line: &str| -> (Duration, String) {
        let start = Instant::now();
        let text = err(&c, line, ErrorCode::LoginFailed);
        (start.elapsed(), text)
    };
    let mut existing = Duration::ZERO;
    let mut missing = Duration::ZERO;
    for _ in 0..3 {
        let (t1, e1) = time("LOGIN alice wrong");
        let (t2, e2) = time("LOGIN mallory wrong");
        assert_eq!(e1, e2);
        existing += t1;
        missing += t2;
    }
    // Only a lower bound: the unknown account costs a full hash too.
    assert!(
        missing * 2 >= existing,
        "existing {existing:?} vs missing {missing:?}"
    );
}

#[test]
fn an_unusable_data_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let start = |dir: &Path| {
        let mut config = test_config(tmp.path());
        config.data_dir = dir.to_path_buf();
        Server::start(TcpListener::bind("127.0.0.1:0").unwrap(), config)
    };
    // A database file that is not a database.
    let dir = tmp.path().join("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("muchat.db"), vec![b'x'; 4096]).unwrap();
    let e = start(&dir).err().expect("refused");
    assert!(e.to_string().contains("muchat.db"), "{e}");
    // The garbage is left alone, not replaced by a fresh database.
    assert_eq!(
        std::fs::read(dir.join("muchat.db")).unwrap(),
        vec![b'x'; 4096]
    );

    // A data directory that cannot be created (a file is in the way).
    let blocker = tmp.path().join("blocked");
    std::fs::write(&blocker, "not a directory").unwrap();
    let e = start(&blocker.join("data")).err().expect("refused");
    assert!(e.to_string().contains("blocked"), "{e}");

    // The binary says so and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("muchat.db"));
}

/// A data directory written by muchat 0.1 (one pending row per recipient)
/// becomes logs and cursors: nothing pending is lost, nothing delivered
/// comes again, and a file waiting for two members reaches both.
#[test]
fn a_database_from_muchat_0_1_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = rusqlite::Connection::open(data.join("muchat.db")).unwrap();
    db.execute_batch(include_str!("fixtures/v1-database.sql"))
        .unwrap();
    drop(db);
    let server = start_server_with(|c| c.data_dir = data.clone());
    // The fixture's users, with their 0.1 passwords and Argon2 verifiers.
    let carol = login_again(&server, "carol");
    // Carol had #ops messages 1, 2 (texts), 3 (text) and 4 (a file) pending.
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = next_message(&carol);
        got.push((m.at, m.from, m.text));
    }
    assert_eq!(
        got,
        [
            ("#ops:1".into(), "alice".into(), "first to ops".into()),
            ("#ops:2".into(), "alice".into(), "second to ops".into()),
            (
                "#ops:3".into(),
                "alice".into(),
                "third to ops, after bob read".into()
            ),
        ]
    );
    let path = next_file(&carol);
    assert_eq!(path.file_name().unwrap(), "v1file2.bin");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 40_000);
    assert_no_event(&carol);
    // Bob had read everything but #ops 3 and the file.
    let bob = login_again(&server, "bob");
    assert_eq!(next_message(&bob).at, "#ops:3");
    assert_eq!(next_file(&bob).file_name().unwrap(), "v1file2.bin");
    assert_no_event(&bob);
    // Alice had read everything; her history is whole.
    let alice = login_again(&server, "alice");
    assert_no_event(&alice);
    assert_eq!(ok(&alice, "HISTORY @bob"), "3 messages with @bob");
    // New messages go on from the migrated heads.
    assert_eq!(
        sent(&alice, "SEND_TO_GROUP ops after the upgrade"),
        [at("#ops:5")]
    );
}

/// A server process of its own, on a port that stays the same across
/// restarts (so reconnecting clients find it again).
struct Process {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Process {
    fn start(dir: &Path, port: u16) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .arg(format!("127.0.0.1:{port}"))
            .args(["--rate", "0", "--max-connections-per-ip", "0", "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(BufReader::new(stderr));
        let port = loop {
            let line = lines.next().expect("server output").unwrap();
            if let Some(a) = line.split("addr=127.0.0.1:").nth(1) {
                break a.trim().parse().unwrap();
            }
        };
        // Keep draining the log so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Process {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn kill_and_restart(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        *self = Process::start(&self.dir.clone(), self.port);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kill -9 of the server, three times mid-traffic, with both clients
/// reconnecting on their own: every message whose sender got `OK` arrives,
/// none is shown twice, and sends retried after a reconnect (same send id)
/// are stored once.
#[test]
fn kill_dash_nine_loses_nothing_and_shows_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Process::start(tmp.path(), 0);
    let addr = format!("127.0.0.1:{}", server.port);
    let known = tmp.path().join("known_servers");
    let client = |name: &str| {
        let config = ClientConfig {
            trust: Trust::KnownServers(known.clone()),
            downloads: tmp.path().join("dl"),
            state_dir: Some(tmp.path().join("state")),
            reconnect: true,
        };
        let c = Client::connect(&addr, config).unwrap();
        let _ = run(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
        ok(&c, &format!("LOGIN {name} pw-{name}"));
        c
    };
    let alice = client("alice");
    let bob = client("bob");
    const MESSAGES: usize = 300;
    let sender = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..MESSAGES {
            // Each send is retried by the client across reconnects until
            // it gets a reply.
            match alice.send_text(&user("bob"), &format!("m{i}")) {
                Ok(r) if r.is_ok() => acked.push(i),
                other => panic!("m{i}: {other:?}"),
            }
        }
        (alice, acked)
    });
    // Kill the server three times while messages flow.
    let mut shown: HashMap<String, usize> = HashMap::new();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while shown.len() < MESSAGES {
        assert!(Instant::now() < deadline, "only {} arrived", shown.len());
        let event = bob.events().recv_timeout(WAIT);
        let Ok(event) = event else {
            panic!("no event; {} shown, {kills} kills", shown.len());
        };
        match event {
            ClientEvent::Message { text, .. } => {
                *shown.entry(text).or_default() += 1;
                if kills < 3 && shown.len() >= (kills + 1) * MESSAGES / 4 {
                    kills += 1;
                    server.kill_and_restart();
                }
            }
            ClientEvent::ConnectionLost { .. } | ClientEvent::Reconnected => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let (alice, acked) = sender.join().unwrap();
    assert_eq!(kills, 3);
    assert_eq!(acked.len(), MESSAGES);
    let twice: Vec<_> = shown.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shown twice: {twice:?}");
    // Retried sends were stored once: the log holds exactly MESSAGES.
    let all: HashSet<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(shown.keys().cloned().collect::<HashSet<_>>(), all);
    while alice.events().try_recv().is_ok() {}
    let history = ok(&alice, "HISTORY @bob 500");
    assert_eq!(history, format!("{MESSAGES} messages with @bob"));
}

/// A member that stops reading slows no one: a group file completes for
/// the sender and the other members as usual, chat goes on, and the silent
/// member gets everything once it reads again.
#[test]
fn a_member_that_does_not_read_stalls_nobody() {
    let server = start_server();
    let src = server.path("src");
    let (path, data) = file_of(&src, "big.bin", 5 * 1024 * 1024);
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP g");
    let bob = login(&server, "bob");
    ok(&bob, "JOIN g");
    // Mallory joins and then never reads a byte.
    let mut mallory = Raw::connect(&server);
    for line in [
        "CREATE_USER mallory pw Mallory",
        "LOGIN mallory pw",
        "JOIN g",
    ] {
        assert!(mallory.request(line).is_ok(), "{line}");
    }
    ok(&alice, &format!("SEND_TO_GROUP FILE g {}", path.display()));
    for i in 0..200 {
        ok(&alice, &format!("SEND_TO_GROUP g chat {i}"));
    }
    assert!(file_sent(&alice).is_ok());
    // 200 chats and the file, in whatever order they committed.
    assert_eq!(sent(&alice, "SEND_TO_GROUP g still going"), [at("#g:202")]);
    // Bob gets all of it while mallory reads nothing.
    let mut got_file = None;
    let mut texts = 0;
    while got_file.is_none() || texts < 201 {
        match next_event(&bob) {
            ClientEvent::Message { .. } => texts += 1,
            ClientEvent::FileReceived { path, .. } => got_file = Some(path),
            ClientEvent::FileProgress { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(std::fs::read(got_file.unwrap()).unwrap(), data);
    // Now mallory reads: everything is there, in order.
    let mut chunks = 0u64;
    let mut last = 0;
    loop {
        match mallory.recv() {
            ServerMessage::Msg(d) => {
                assert!(d.at.seq > last, "in order");
                last = d.at.seq;
                if last == 202 {
                    break;
                }
            }
            ServerMessage::File(f) => {
                assert!(f.at.seq > last);
                last = f.at.seq;
            }
            ServerMessage::Chunk { .. } => chunks += 1,
            ServerMessage::FileEnd(_) | ServerMessage::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(chunks, 160, "all 5 MiB in 32 KiB chunks");
}
