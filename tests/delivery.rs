//! Delivery under load and file transfers, end to end over real TCP.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use muchat::client::{Client, ClientEvent};
use muchat::event::Reply;

/// 50 clients each send 100 messages into one group at the same time:
/// every member gets every other member's 100, none lost, each sender's
/// order kept.
#[test]
fn fifty_clients_times_one_hundred_messages_nothing_lost_order_kept() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 100;
    let server = start_server();
    let first = login(&server, "u0");
    ok(&first, "CREATE_GROUP crowd");
    let mut clients = vec![first];
    for i in 1..CLIENTS {
        let c = login(&server, &format!("u{i}"));
        ok(&c, "JOIN crowd");
        clients.push(c);
    }
    let clients: Vec<Arc<Client>> = clients.into_iter().map(Arc::new).collect();

    let senders: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = Arc::clone(c);
            std::thread::spawn(move || {
                for n in 0..MESSAGES {
                    ok(&c, &format!("SEND_TO_GROUP crowd {i}:{n}"));
                }
            })
        })
        .collect();

    let receivers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(me, c)| {
            let c = Arc::clone(c);
            std::thread::spawn(move || {
                let mut next: HashMap<usize, usize> = HashMap::new();
                let mut last_seq = 0;
                for _ in 0..(CLIENTS - 1) * MESSAGES {
                    let Msg { at, from, text } = next_message(&c);
                    let seq: u64 = at.strip_prefix("#crowd:").unwrap().parse().unwrap();
                    assert!(
                        seq > last_seq,
                        "one order for everyone: {seq} after {last_seq}"
                    );
                    last_seq = seq;
                    let (who, n) = text.split_once(':').unwrap();
                    let (who, n): (usize, usize) = (who.parse().unwrap(), n.parse().unwrap());
                    assert_eq!(from, format!("u{who}"));
                    assert_ne!(who, me, "own message echoed back");
                    let expected = next.entry(who).or_insert(0);
                    assert_eq!(n, *expected, "sender {who}'s order broken at {me}");
                    *expected += 1;
                }
                assert!(next.values().all(|&n| n == MESSAGES));
            })
        })
        .collect();
    for t in senders.into_iter().chain(receivers) {
        t.join().expect("no thread failed");
    }
}

fn write_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    // Deterministic but not repetitive, so misplaced chunks are caught.
    let mut x: u32 = 0x1234_5678;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn client_with_downloads(server: &TestServer, name: &str) -> (Client, PathBuf) {
    let dir = server.path("downloads");
    let c = Client::connect(server.local_addr(), client_config(server, dir.clone())).unwrap();
    ok(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
    ok(&c, &format!("LOGIN {name} pw-{name}"));
    (c, dir)
}

/// Waits for the received file, skipping progress lines; returns its path.
fn received_file(c: &Client) -> (PathBuf, String, usize) {
    let mut progress = 0;
    loop {
        match next_event(c) {
            ClientEvent::FileProgress { .. } => progress += 1,
            ClientEvent::FileReceived { path, at, .. } => return (path, at.to_string(), progress),
            other => panic!("expected a file, got {other:?}"),
        }
    }
}

/// Waits for the end of an upload, skipping its progress.
fn sent_file(c: &Client) -> Reply {
    sent_file_with_progress(c).0
}

/// The end of an upload, and the percentages its progress reported.
fn sent_file_with_progress(c: &Client) -> (Reply, Vec<u64>) {
    let mut progress = Vec::new();
    loop {
        match next_event(c) {
            ClientEvent::UploadProgress { progress: p, .. } => progress.push(p.percent()),
            ClientEvent::FileSent { reply, .. } => return (reply, progress),
            other => panic!("expected FileSent, got {other:?}"),
        }
    }
}

#[test]
fn direct_file_arrives_byte_for_byte_with_progress() {
    let server = start_server();
    let src = server.path("src");
    let (path, data) = write_file(&src, "big data.bin", 3 * 1024 * 1024 + 17);
    let alice = login(&server, "alice");
    let (bob, bob_dir) = client_with_downloads(&server, "bob");
    let reply = ok(&alice, &format!("SEND FILE bob {}", path.display()));
    assert!(reply.contains("big data.bin"));
    let (sent, progress) = sent_file_with_progress(&alice);
    assert_eq!(sent.sent(), [at("@bob:1")]);
    // The sender sees its upload advance too, in order, short of the end.
    assert!(progress.len() >= 5, "{progress:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]) && progress[progress.len() - 1] < 100);
    let (got, conv, progress) = received_file(&bob);
    assert_eq!(got, bob_dir.join("big data.bin"));
    assert_eq!(conv, "@alice:1");
    assert!(progress >= 5, "a 3 MiB file reports progress ({progress})");
    assert_eq!(std::fs::read(&got).unwrap(), data);
    // A second copy gets a numbered name instead of overwriting.
    ok(&alice, &format!("SEND FILE bob {}", path.display()));
    let (again, _, _) = received_file(&bob);
    assert_eq!(again, bob_dir.join("big data (1).bin"));
    assert_eq!(std::fs::read(&again).unwrap(), data);
}

#[test]
fn group_file_reaches_every_member_once() {
    let server = start_server();
    let src = server.path("src");
    let (path, data) = write_file(&src, "notes.txt", 100_000);
    let (empty, _) = write_file(&src, "empty.txt", 0);
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP a");
    ok(&alice, "CREATE_GROUP b");
    let members: Vec<(Client, PathBuf)> = (0..3)
        .map(|i| {
            let (c, d) = client_with_downloads(&server, &format!("m{i}"));
            ok(&c, "JOIN a");
            ok(&c, "JOIN b");
            (c, d)
        })
        .collect();
    ok(
        &alice,
        &format!("SEND_TO_GROUP FILE a,b {}", path.display()),
    );
    assert_eq!(sent_file(&alice).sent(), [at("#a:1"), at("#b:1")]);
    for (c, dir) in &members {
        // Stored once, it is in both groups' logs, so each shows it.
        let mut convs = Vec::new();
        for _ in 0..2 {
            let (got, conv, _) = received_file(c);
            assert_eq!(got.parent().unwrap(), dir.as_path());
            assert_eq!(std::fs::read(&got).unwrap(), data);
            convs.push(conv);
        }
        convs.sort();
        assert_eq!(convs, ["#a:1", "#b:1"]);
    }
    ok(&alice, &format!("SEND_TO_GROUP FILE b {}", empty.display()));
    for (c, _) in &members {
        let (got, conv, _) = received_file(c);
        assert_eq!(conv, "#b:2");
        assert!(std::fs::read(&got).unwrap().is_empty());
        assert_no_event(c);
    }
}

/// Chat keeps flowing while a file is on its way: a message sent during
/// an upload goes first (the file joins the conversation once stored whole),
/// and a message from someone else overtakes the rest of a download.
///
/// The file is large because loopback sockets buffer megabytes: the server
/// hands a download to the kernel faster than the client decrypts it, so
/// a small file could be all in the socket before the message commits.
#[test]
fn chat_interleaves_with_a_transfer() {
    let server = start_server();
    let src = server.path("src");
    let (path, data) = write_file(&src, "movie.bin", 12 * 1024 * 1024);
    let alice = login(&server, "alice");
    let carol = login(&server, "carol");
    let (bob, _) = client_with_downloads(&server, "bob");
    ok(&alice, &format!("SEND FILE bob {}", path.display()));
    // While the chunks go up, alice chats.
    assert_eq!(sent(&alice, "SEND bob during the upload"), [at("@bob:1")]);
    assert_eq!(sent_file(&alice).sent(), [at("@bob:2")]);
    assert_eq!(next_message(&bob).text, "during the upload");
    // The download starts; carol writes meanwhile.
    assert!(matches!(next_event(&bob), ClientEvent::FileProgress { .. }));
    ok(&carol, "SEND bob got a minute?");
    let mut saw_message = false;
    let mut progress_after_message = false;
    let got = loop {
        match next_event(&bob) {
            ClientEvent::Message { text, at, .. } => {
                assert_eq!(
                    (text.as_str(), at.to_string()),
                    ("got a minute?", "@carol:1".into())
                );
                saw_message = true;
            }
            ClientEvent::FileProgress { .. } => progress_after_message |= saw_message,
            ClientEvent::FileReceived { path, .. } => break path,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        saw_message && progress_after_message,
        "the message overtook the download"
    );
    assert_eq!(std::fs::read(got).unwrap(), data);
}

/// Live group messages travel in envelopes under a group key; a member who
/// leaves makes the key change, so it cannot open what is sent after.
#[test]
fn group_keys_change_when_a_member_leaves() {
    use muchat::event::{Delivery, ServerMessage};
    let server = start_server();
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP g");
    let join = |name: &str| {
        let mut raw = Raw::connect(&server);
        for line in [
            format!("CREATE_USER {name} pw {name}"),
            format!("LOGIN {name} pw"),
            "JOIN g".to_string(),
        ] {
            assert!(raw.request(&line).is_ok(), "{line}");
        }
        raw
    };
    let mut bob = join("bob");
    let mut carol = join("carol");
    // Reads carol's frames up to the next group message, returning it raw.
    let next_gmsg = |carol: &mut Raw| loop {
        let f = carol.reader.read_frame().unwrap().unwrap();
        match ServerMessage::parse(f).unwrap() {
            ServerMessage::GroupKey { group, key_id, key } => {
                carol.group_keys.insert(key_id, (group, key));
            }
            ServerMessage::GroupMsg { key_id, seq, body } => return (key_id, seq, body),
            other => panic!("unexpected {other:?}"),
        }
    };
    let g = group("g");
    ok(&alice, "SEND_TO_GROUP g before");
    let (k1, seq, body) = next_gmsg(&mut carol);
    let d = Delivery::open_group(&g, seq, &carol.group_keys[&k1].1, &body).unwrap();
    assert_eq!(d.key.open(&d.body).unwrap(), b"before");
    assert_eq!(d.at, at("#g:1"));
    assert_eq!(bob.recv_message_text(), "before");
    assert!(bob.group_keys.contains_key(&k1));

    assert!(bob.request("LEAVE g").is_ok());
    ok(&alice, "SEND_TO_GROUP g after");
    let (k2, seq, body) = next_gmsg(&mut carol);
    assert_ne!(k1, k2, "the key changed when bob left");
    let d = Delivery::open_group(&g, seq, &carol.group_keys[&k2].1, &body).unwrap();
    assert_eq!(d.key.open(&d.body).unwrap(), b"after");
    // Bob's keys, had he captured the frame, do not open it.
    for (_, k) in bob.group_keys.values() {
        assert!(Delivery::open_group(&g, seq, k, &body).is_err());
    }
}

/// Bytes the database holds in pages (what the file shrinks to once the
/// write-ahead log is checkpointed), read by a second connection as any
/// SQLite reader would.
fn database_bytes(server: &TestServer) -> u64 {
    let db = server.config.data_dir.join(muchat::store::sqlite::DB_FILE);
    let conn = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the database read-only");
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    u64::try_from(pages * size).unwrap_or(0)
}

#[test]
fn delivered_files_give_their_space_back() {
    let server = start_server();
    let (path, _) = write_file(&server.path("src"), "big.bin", 4 * 1024 * 1024);
    let alice = login(&server, "alice");
    let (bob, _) = client_with_downloads(&server, "bob");
    ok(&alice, &format!("SEND FILE bob {}", path.display()));
    assert!(sent_file(&alice).is_ok());
    let stored = database_bytes(&server);
    assert!(
        stored > 4 * 1024 * 1024,
        "the file is stored: {stored} bytes"
    );
    received_file(&bob);
    // Bob's client acknowledges the file; the store then drops its chunks
    // and gives the pages back.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = database_bytes(&server);
        if now < 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {now} bytes after the file was delivered (was {stored}); {}",
            debug_store(&server)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn debug_store(server: &TestServer) -> String {
    let db = server.config.data_dir.join(muchat::store::sqlite::DB_FILE);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let q = |sql: &str| -> String {
        let mut st = conn.prepare(sql).unwrap();
        let n = st.column_count();
        let rows: Vec<String> = st
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        rows.join("; ")
    };
    format!(
        "files: {} cursors: {} freelist: {} auto_vacuum: {}",
        q("SELECT id, complete, released FROM files"),
        q("SELECT * FROM cursors"),
        q("PRAGMA freelist_count"),
        q("PRAGMA auto_vacuum")
    )
}
