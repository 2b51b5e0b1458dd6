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
                for _ in 0..(CLIENTS - 1) * MESSAGES {
                    let (_, from, to, text) = next_message(&c);
                    assert_eq!(to, "#crowd");
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

fn client_with_downloads(server: &muchat::server::Server, name: &str) -> (Client, PathBuf) {
    let dir = temp_dir("downloads");
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
            ClientEvent::FileReceived { path, to, .. } => return (path, to.to_string(), progress),
            other => panic!("expected a file, got {other:?}"),
        }
    }
}

fn sent_file(c: &Client) -> Reply {
    match next_event(c) {
        ClientEvent::FileSent { reply, .. } => reply,
        other => panic!("expected FileSent, got {other:?}"),
    }
}

#[test]
fn direct_file_arrives_byte_for_byte_with_progress() {
    let server = start_server();
    let src = temp_dir("src");
    let (path, data) = write_file(&src, "big data.bin", 3 * 1024 * 1024 + 17);
    let alice = login(&server, "alice");
    let (bob, bob_dir) = client_with_downloads(&server, "bob");
    let reply = ok(&alice, &format!("SEND FILE bob {}", path.display()));
    assert!(reply.contains("big data.bin"));
    let (got, to, progress) = received_file(&bob);
    assert_eq!(got, bob_dir.join("big data.bin"));
    assert_eq!(to, "@bob");
    assert!(progress >= 5, "a 3 MiB file reports progress ({progress})");
    assert_eq!(std::fs::read(&got).unwrap(), data);
    assert!(matches!(sent_file(&alice), Reply::Ok(_)));
    // A second copy gets a numbered name instead of overwriting.
    ok(&alice, &format!("SEND FILE bob {}", path.display()));
    let (again, _, _) = received_file(&bob);
    assert_eq!(again, bob_dir.join("big data (1).bin"));
    assert_eq!(std::fs::read(&again).unwrap(), data);
}

#[test]
fn group_file_reaches_every_member_once() {
    let server = start_server();
    let src = temp_dir("src");
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
    for (c, dir) in &members {
        let (got, to, _) = received_file(c);
        assert_eq!(to, "#a", "labelled with the first listed group");
        assert_eq!(got.parent().unwrap(), dir.as_path());
        assert_eq!(std::fs::read(&got).unwrap(), data);
    }
    ok(&alice, &format!("SEND_TO_GROUP FILE b {}", empty.display()));
    for (c, _) in &members {
        let (got, to, _) = received_file(c);
        assert_eq!(to, "#b");
        assert!(std::fs::read(&got).unwrap().is_empty());
        // Once per session, even though it is in both groups.
        assert_no_event(c);
    }
}

/// Chat keeps flowing both ways while a file is in flight.
#[test]
fn chat_interleaves_with_a_transfer() {
    let server = start_server();
    let src = temp_dir("src");
    let (path, data) = write_file(&src, "movie.bin", 4 * 1024 * 1024);
    let alice = login(&server, "alice");
    let (bob, _) = client_with_downloads(&server, "bob");
    ok(&alice, &format!("SEND FILE bob {}", path.display()));
    // While chunks flow alice -> bob, messages go both ways.
    ok(&alice, "SEND bob during the transfer");
    ok(&bob, "SEND alice got it, still downloading");
    let mut saw_message = false;
    let mut saw_progress_after_message = false;
    let got = loop {
        match next_event(&bob) {
            ClientEvent::Message { text, .. } => {
                assert_eq!(text, "during the transfer");
                saw_message = true;
            }
            ClientEvent::FileProgress { .. } => saw_progress_after_message |= saw_message,
            ClientEvent::FileReceived { path, .. } => break path,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_message);
    assert!(
        saw_progress_after_message,
        "the message overtook the rest of the file"
    );
    assert_eq!(std::fs::read(got).unwrap(), data);
    // Alice's incoming message and her transfer's end, in either order.
    let mut events = [next_event(&alice), next_event(&alice)];
    events.sort_by_key(|e| matches!(e, ClientEvent::FileSent { .. }));
    assert!(
        matches!(&events[0], ClientEvent::Message { text, .. } if text == "got it, still downloading")
    );
    assert!(matches!(
        &events[1],
        ClientEvent::FileSent {
            reply: Reply::Ok(_),
            ..
        }
    ));
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
            format!("CREATE_USER {name} {name} pw"),
            format!("LOGIN {name} pw"),
            "JOIN g".to_string(),
        ] {
            assert!(
                matches!(raw.request(&line), muchat::event::Reply::Ok(_)),
                "{line}"
            );
        }
        raw
    };
    let mut bob = join("bob");
    let mut carol = join("carol");
    // Reads carol's frames up to the next group message, returning it raw.
    let next_gmsg = |carol: &mut Raw| loop {
        let f = carol.reader.read_frame().unwrap().unwrap();
        match ServerMessage::parse(f).unwrap() {
            ServerMessage::GroupKey { key_id, key, .. } => {
                carol.group_keys.insert(key_id, key);
            }
            ServerMessage::GroupMsg { key_id, body } => return (key_id, body),
            other => panic!("unexpected {other:?}"),
        }
    };
    ok(&alice, "SEND_TO_GROUP g before");
    let (k1, body) = next_gmsg(&mut carol);
    let d = Delivery::open_group(&carol.group_keys[&k1], &body).unwrap();
    assert_eq!(d.key.open(&d.body).unwrap(), b"before");
    assert_eq!(bob.recv_message_text(), "before");
    assert!(bob.group_keys.contains_key(&k1));

    assert!(matches!(
        bob.request("LEAVE g"),
        muchat::event::Reply::Ok(_)
    ));
    ok(&alice, "SEND_TO_GROUP g after");
    let (k2, body) = next_gmsg(&mut carol);
    assert_ne!(k1, k2, "the key changed when bob left");
    let d = Delivery::open_group(&carol.group_keys[&k2], &body).unwrap();
    assert_eq!(d.key.open(&d.body).unwrap(), b"after");
    // Bob's keys, had he captured the frame, do not open it.
    for k in bob.group_keys.values() {
        assert!(Delivery::open_group(k, &body).is_err());
    }
}
