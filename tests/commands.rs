//! Every command's success and error paths, against a real server on
//! 127.0.0.1:0 through the client library.

mod common;

use common::*;
use muchat::client::ClientEvent;
use muchat::event::{ErrorCode, Reply};

#[test]
fn create_user_and_login() {
    let server = start_server();
    let c = connect(&server);
    ok(&c, "CREATE_USER Alice alice secret");
    err(&c, "CREATE_USER Other alice x", ErrorCode::UserExists);
    let wrong_pw = err(&c, "LOGIN alice nope", ErrorCode::LoginFailed);
    let no_user = err(&c, "LOGIN nobody nope", ErrorCode::LoginFailed);
    assert_eq!(wrong_pw, no_user, "must not reveal whether the user exists");
    assert!(ok(&c, "login alice secret").contains("alice"));
    err(&c, "LOGIN alice secret", ErrorCode::AlreadyLoggedIn);
    err(&c, "CREATE_USER B bob pw", ErrorCode::AlreadyLoggedIn);
    ok(&c, "LOGOUT");
    err(&c, "LIST", ErrorCode::NotLoggedIn);
    ok(&c, "LOGIN alice secret");
}

#[test]
fn commands_need_login_first() {
    let server = start_server();
    let c = connect(&server);
    for line in [
        "LIST",
        "CREATE_GROUP g",
        "JOIN g",
        "LEAVE g",
        "SEND bob hi",
        "SEND_TO_GROUP g hi",
        "LOGOUT",
    ] {
        err(&c, line, ErrorCode::NotLoggedIn);
    }
}

#[test]
fn usage_and_name_errors_come_from_the_server_too() {
    let server = start_server();
    // A raw connection bypasses the client's own parser: the server must
    // refuse these itself, and keep the connection.
    let mut raw = Raw::connect(&server);
    let code = |r: Reply| match r {
        Reply::Err { code, .. } => code,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(code(raw.request("LOGIN onlyone")), ErrorCode::Usage);
    assert_eq!(code(raw.request("JOIN ../../x")), ErrorCode::BadName);
    assert_eq!(code(raw.request("DANCE now")), ErrorCode::UnknownCommand);
    assert_eq!(code(raw.request("list extra")), ErrorCode::Usage);
    assert_eq!(code(raw.request("FILE_END 5")), ErrorCode::NotLoggedIn);
    assert!(raw.request("CREATE_USER a pw A").is_ok());
}

#[test]
fn groups_join_leave_and_list() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    ok(&alice, "CREATE_GROUP devs");
    err(&bob, "CREATE_GROUP devs", ErrorCode::GroupExists);
    err(&alice, "JOIN devs", ErrorCode::AlreadyMember);
    err(&bob, "JOIN nope", ErrorCode::NoSuchGroup);
    err(&bob, "LEAVE devs", ErrorCode::NotMember);
    err(&bob, "LEAVE nope", ErrorCode::NoSuchGroup);
    assert_eq!(
        ok(&bob, "LIST"),
        "groups: #devs (1 member); online: alice, bob"
    );
    ok(&bob, "join devs");
    assert_eq!(
        ok(&bob, "LIST"),
        "groups: #devs (2 members, joined); online: alice, bob"
    );
    ok(&bob, "LEAVE devs");
    err(&bob, "SEND_TO_GROUP devs hi", ErrorCode::NotMember);
    ok(&alice, "LEAVE devs");
    // An emptied group keeps its name.
    assert_eq!(
        ok(&bob, "LIST"),
        "groups: #devs (0 members); online: alice, bob"
    );
    err(&bob, "CREATE_GROUP devs", ErrorCode::GroupExists);
}

#[test]
fn direct_messages() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    // The sender sees the conversation as @bob, the recipient as @alice.
    assert_eq!(
        sent(&alice, "SEND bob  hello,   world  "),
        vec![at("@bob:1")]
    );
    let m = next_message(&bob);
    assert_eq!((m.at.as_str(), m.from.as_str()), ("@alice:1", "alice"));
    assert_eq!(m.text, " hello,   world  ", "spaces are kept");
    err(&alice, "SEND nobody hi", ErrorCode::UnknownUser);
    ok(&bob, "LOGOUT");
    // Offline is no longer an error: the message waits for the next login.
    assert_eq!(sent(&alice, "SEND @bob are you there"), vec![at("@bob:2")]);
    assert_no_event(&bob);
    ok(&bob, "LOGIN bob pw-bob");
    assert_eq!(next_message(&bob).text, "are you there");
    assert_no_event(&alice);
}

#[test]
fn every_session_of_a_user_gets_live_deliveries() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob1 = login(&server, "bob");
    let bob2 = login_again(&server, "bob");
    ok(&alice, "SEND bob to both");
    assert_eq!(next_message(&bob1).text, "to both");
    assert_eq!(next_message(&bob2).text, "to both");
    // What one session sends, the user's other sessions see too.
    ok(&bob1, "SEND alice from bob1");
    let m = next_message(&bob2);
    assert_eq!((m.at.as_str(), m.from.as_str()), ("@alice:2", "bob"));
    assert_eq!(next_message(&alice).text, "from bob1");
    assert_no_event(&bob1);
    // One session logging out leaves the other online.
    ok(&bob1, "LOGOUT");
    ok(&alice, "SEND bob still here?");
    assert_eq!(next_message(&bob2).text, "still here?");
    assert_no_event(&bob1);
}

#[test]
fn multi_group_send_is_labelled_once_per_group() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    let carol = login(&server, "carol");
    ok(&alice, "CREATE_GROUP a");
    ok(&alice, "CREATE_GROUP b");
    ok(&bob, "JOIN a");
    ok(&bob, "JOIN b");
    ok(&carol, "JOIN b");
    assert_eq!(
        sent(&alice, "SEND_TO_GROUP a, #b hello groups"),
        vec![at("#a:1"), at("#b:1")]
    );
    let m1 = next_message(&bob);
    let m2 = next_message(&bob);
    assert_eq!((m1.at.as_str(), m1.text.as_str()), ("#a:1", "hello groups"));
    assert_eq!((m2.at.as_str(), m2.text.as_str()), ("#b:1", "hello groups"));
    assert_eq!(next_message(&carol).at, "#b:1");
    assert_no_event(&carol);
    // The sender's own session does not get its message back.
    assert_no_event(&alice);
    err(&alice, "SEND_TO_GROUP a,nope hi", ErrorCode::NoSuchGroup);
    err(&carol, "SEND_TO_GROUP b,a hi", ErrorCode::NotMember);
    assert_no_event(&bob);
}

#[test]
fn fan_out_to_many_members() {
    let server = start_server();
    let sender = login(&server, "sender");
    ok(&sender, "CREATE_GROUP big");
    let members: Vec<_> = (0..40)
        .map(|i| {
            let c = login(&server, &format!("m{i}"));
            ok(&c, "JOIN big");
            c
        })
        .collect();
    for i in 0..20 {
        ok(&sender, &format!("SEND_TO_GROUP big message {i}"));
    }
    for m in &members {
        for i in 0..20 {
            let m = next_message(m);
            assert_eq!(
                (m.from.as_str(), m.at),
                ("sender", format!("#big:{}", i + 1))
            );
            assert_eq!(m.text, format!("message {i}"));
        }
    }
}

#[test]
fn quit_ends_the_connection_and_help_is_local() {
    let server = start_server();
    let c = login(&server, "alice");
    assert!(ok(&c, "HELP").contains("SEND_TO_GROUP FILE"));
    assert_eq!(ok(&c, "QUIT"), "bye");
    let end = next_event(&c);
    assert!(matches!(end, ClientEvent::Disconnected(_)), "{end:?}");
    let again = login_again(&server, "alice");
    assert!(ok(&again, "LIST").contains("online: alice"));
}

#[test]
fn the_longest_allowed_message_arrives_and_a_longer_one_is_refused_locally() {
    let server = start_server();
    let alice = login(&server, "alice");
    let bob = login(&server, "bob");
    let longest = "é".repeat(muchat::request::MAX_MESSAGE_LEN / 2);
    alice.send_text(&user("bob"), &longest).unwrap();
    assert_eq!(next_message(&bob).text, longest);
    let too_long = "x".repeat(muchat::request::MAX_MESSAGE_LEN + 1);
    assert!(matches!(
        alice.send_text(&user("bob"), &too_long),
        Err(muchat::client::ClientError::Refused(_))
    ));
    // Still connected and usable.
    ok(&alice, "SEND bob short");
    assert_eq!(next_message(&bob).text, "short");
}
