//! Group ownership and private groups, seen from the members' clients:
//! invitations, removal (and the key change that keeps a removed member
//! out), roles, what LIST shows whom, and group changes racing each other.

mod common;

use std::collections::HashSet;

use common::{
    err, group, login, login_again, next_event, next_message, ok, run, sent, start_server_with,
    user, WAIT,
};
use muchat::client::session::{Incoming, Session};
use muchat::client::{Client, ClientEvent, Trust};
use muchat::event::{ErrorCode, GroupNotice, NoticeKind, Reply};
use muchat::request::Request;

#[test]
fn a_private_group_is_joined_by_invitation_only_and_listed_to_its_people() {
    let server = start_server_with(|_| {});
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    let eve = login(&server, "eve");
    ok(&alice, "CREATE_GROUP secret private");
    assert!(!ok(&eve, "LIST").contains("#secret"));
    err(&eve, "JOIN secret", ErrorCode::NotAllowed);
    err(&eve, "INVITE secret eve", ErrorCode::NotAllowed);
    err(&eve, "HISTORY #secret", ErrorCode::NotMember);

    ok(&alice, "INVITE secret bob");
    match next_event(&bob) {
        ClientEvent::Notice(GroupNotice {
            kind: NoticeKind::Invited,
            group,
            by,
        }) => {
            assert_eq!((group.as_str(), by.as_str()), ("secret", "alice"));
        }
        other => panic!("expected an invitation, got {other:?}"),
    }
    assert!(ok(&bob, "LIST").contains("#secret (1 member, private, invited)"));
    ok(&bob, "JOIN secret");
    assert!(ok(&alice, "LIST").contains("#secret (2 members, private, joined, owner)"));
    ok(&bob, "SEND_TO_GROUP secret hello");
    assert_eq!(next_message(&alice).text, "hello");
    // The invitation was used up: leaving and coming back needs another.
    ok(&bob, "LEAVE secret");
    err(&bob, "JOIN secret", ErrorCode::NotAllowed);
}

/// alice, bob and carol logged in; alice made `#ops` and bob joined it.
fn ops_of_alice_and_bob(server: &common::TestServer) -> (Client, Client, Client) {
    let alice = login(server, "alice");
    let bob = login(server, "bob");
    let carol = login(server, "carol");
    ok(&alice, "CREATE_GROUP ops");
    ok(&bob, "JOIN ops");
    (alice, bob, carol)
}

#[test]
fn a_kicked_member_gets_nothing_more_and_roles_are_enforced() {
    let server = start_server_with(|_| {});
    let (alice, bob, carol) = ops_of_alice_and_bob(&server);
    ok(&carol, "JOIN ops");
    // Members cannot kick; admins can, but not the owner or other admins.
    err(&carol, "KICK ops bob", ErrorCode::NotAllowed);
    ok(&alice, "PROMOTE ops bob");
    err(&bob, "KICK ops alice", ErrorCode::NotAllowed);
    err(&bob, "PROMOTE ops carol", ErrorCode::NotAllowed);
    ok(&bob, "KICK ops carol");
    match next_event(&carol) {
        ClientEvent::Notice(GroupNotice {
            kind: NoticeKind::Removed,
            group,
            by,
        }) => {
            assert_eq!((group.as_str(), by.as_str()), ("ops", "bob"));
        }
        other => panic!("expected a removal, got {other:?}"),
    }
    ok(&alice, "SEND_TO_GROUP ops after carol left");
    assert_eq!(next_message(&bob).text, "after carol left");
    // Carol's client was told nothing more: a round trip proves it.
    common::assert_no_event(&carol);
    err(
        &carol,
        "SEND_TO_GROUP ops still here?",
        ErrorCode::NotMember,
    );

    // The owner leaves only by handing over first.
    err(&alice, "LEAVE ops", ErrorCode::NotAllowed);
    ok(&alice, "HANDOVER ops bob");
    assert!(ok(&bob, "LIST").contains("#ops (2 members, joined, owner)"));
    ok(&alice, "LEAVE ops");
}

#[test]
fn parallel_joins_and_leaves_agree_with_the_final_state_and_the_cap_holds() {
    let server = start_server_with(|c| c.max_groups_per_user = 3);
    // Creating counts toward the cap too: two owners, three groups each.
    let owners = [login(&server, "owner1"), login(&server, "owner2")];
    for (i, g) in ["g1", "g2", "g3", "g4", "g5", "g6"].iter().enumerate() {
        ok(&owners[i / 3], &format!("CREATE_GROUP {g}"));
    }
    let _first = login(&server, "racer");
    const SESSIONS: usize = 8;
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|_| login_again(&server, "racer"))
        .collect();
    // Every session tries to join every group, and to leave g1, at once.
    let replies: Vec<Vec<(String, Reply)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter()
            .map(|c| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for line in [
                        "JOIN g1", "JOIN g2", "LEAVE g1", "JOIN g3", "JOIN g4", "JOIN g5",
                        "JOIN g6", "LEAVE g1", "JOIN g1",
                    ] {
                        out.push((line.to_string(), run(c, line)));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let list = ok(&sessions[0], "LIST");
    let joined: HashSet<String> = ["g1", "g2", "g3", "g4", "g5", "g6"]
        .into_iter()
        .filter(|g| {
            list.contains(&format!("#{g} (")) && {
                let at = list.find(&format!("#{g} (")).unwrap();
                list[at..].split(')').next().unwrap().contains("joined")
            }
        })
        .map(str::to_string)
        .collect();
    assert!(joined.len() <= 3, "cap of 3 exceeded: {list}");
    for g in ["g1", "g2", "g3", "g4", "g5", "g6"] {
        let oks = |verb: &str| {
            replies
                .iter()
                .flatten()
                .filter(|(l, r)| l == &format!("{verb} {g}") && r.is_ok())
                .count() as i64
        };
        let balance = oks("JOIN") - oks("LEAVE");
        let expected = i64::from(joined.contains(g));
        assert_eq!(balance, expected, "#{g}: OK joins minus OK leaves; {list}");
    }
}

/// Who a group message goes to changes with every join, login and logout,
/// also once the group has carried messages (the server keeps its list of
/// a group's connections between messages). A new member or session first
/// reads the group from the store, which may already hold the next
/// message; the one after can only reach them live.
#[test]
fn members_who_join_or_log_in_between_messages_get_what_follows() {
    let server = start_server_with(|_| {});
    let (alice, bob, carol) = ops_of_alice_and_bob(&server);
    let say = |text: &str| ok(&alice, &format!("SEND_TO_GROUP ops {text}"));
    say("one");
    assert_eq!(next_message(&bob).text, "one");

    ok(&carol, "JOIN ops");
    for text in ["two", "three"] {
        say(text);
        assert_eq!(next_message(&carol).text, text);
        assert_eq!(next_message(&bob).text, text);
    }

    let bob_again = login_again(&server, "bob");
    say("four");
    // Whatever Bob had not acknowledged yet comes first, from the store.
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("four") && texts.len() < 4 {
        texts.push(next_message(&bob_again).text);
    }
    assert_eq!(texts.last().map(String::as_str), Some("four"), "{texts:?}");
    say("five");
    assert_eq!(next_message(&bob_again).text, "five");

    // Bob's first session leaves; his other one still gets what follows.
    ok(&bob, "LOGOUT");
    say("six");
    assert_eq!(next_message(&bob_again).text, "six");
    for text in ["four", "five", "six"] {
        assert_eq!(next_message(&carol).text, text);
    }
}

/// A reader that defers envelopes (the load generator's receivers) gets a
/// live group message with its envelope shut, at the place its clear head
/// gives, ready to acknowledge; opened, it is the message any member reads.
#[test]
fn a_deferred_envelope_opens_to_the_message_a_member_reads() {
    let server = start_server_with(|_| {});
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP ops");

    let mut bob = session_in_ops(&server, "bob");
    bob.reader.defer_envelopes();

    let refs = sent(&alice, "SEND_TO_GROUP ops hello, shut envelope");
    let sealed = loop {
        match bob.reader.recv().unwrap() {
            Incoming::SealedMessage(m) => break m,
            Incoming::Message(d) => panic!("an opened message from a deferring reader: {d:?}"),
            _ => {}
        }
    };
    assert_eq!(vec![sealed.at()], refs);
    let d = sealed.open().unwrap();
    assert_eq!(d.at, sealed.at());
    assert_eq!(d.from, user("alice"));
    assert_eq!(d.key.open(&d.body).unwrap(), b"hello, shut envelope");
}

/// Logs `name` in on a raw session, joined to `ops`.
fn session_in_ops(server: &common::TestServer, name: &str) -> Session {
    let trust = Trust::Fingerprint(server.fingerprint());
    let mut s = Session::connect(&server.local_addr().to_string(), &trust).unwrap();
    for r in [
        Request::CreateUser {
            username: user(name),
            password: format!("pw-{name}"),
            name: name.into(),
        },
        Request::Login {
            username: user(name),
            password: format!("pw-{name}"),
            token: None,
        },
        Request::Join(group("ops")),
    ] {
        let (reply, _) = s.request(&r).unwrap();
        assert!(matches!(reply, Reply::Ok { .. }), "{r:?}: {reply:?}");
    }
    s.reader.set_timeout(Some(WAIT)).unwrap();
    s
}

#[test]
fn a_burst_to_a_group_reaches_every_member_once_in_order() {
    let server = start_server_with(|_| {});
    let alice = login(&server, "alice");
    ok(&alice, "CREATE_GROUP ops");
    let mut bob = session_in_ops(&server, "bob");
    let mut carol = session_in_ops(&server, "carol");
    carol.reader.defer_envelopes();

    // Sent without waiting for replies, so that several commit together
    // (and may reach bob and carol bundled in one GMSG).
    const N: u64 = 40;
    let mut dave = session_in_ops(&server, "dave");
    let texts: Vec<String> = (1..=N).map(|i| format!("burst message {i}")).collect();
    for t in &texts {
        let key = muchat::content::ContentKey::random();
        dave.writer.queue(&Request::SendToGroup {
            groups: vec![group("ops")],
            send_id: muchat::request::SendId::random(),
            body: key.seal(t.as_bytes()),
            key,
        });
    }
    dave.writer.flush().unwrap();

    // Each member reads every message once, in sequence order, with the
    // sender's text.
    for reader in [&mut bob, &mut carol] {
        let mut seq = 0;
        while seq < N {
            let d = match reader.reader.recv().unwrap() {
                Incoming::Message(d) => d,
                Incoming::SealedMessage(m) => m.open().unwrap(),
                _ => continue,
            };
            seq += 1;
            assert_eq!(d.at.seq, seq, "in order, none twice, none missing");
            assert_eq!(d.from, user("dave"));
            let t = d.key.open(&d.body).unwrap();
            assert_eq!(t, texts[(seq - 1) as usize].as_bytes());
        }
    }
    // And dave gets a reply for each, and none of his own messages back.
    let mut replies = 0;
    while replies < N {
        match dave.reader.recv().unwrap() {
            Incoming::Reply(r) => {
                assert!(matches!(r, Reply::Ok { .. }), "{r:?}");
                replies += 1;
            }
            Incoming::Message(d) => panic!("dave was sent his own message {d:?}"),
            _ => {}
        }
    }
}
