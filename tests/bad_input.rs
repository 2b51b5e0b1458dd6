//! Hostile and broken input against the real server over real TCP.
//!
//! Every attack must end in one of two ways: a clear `ERR` reply with the
//! connection still usable, or the server closing that one connection (a
//! `BYE protocol error: ...` first where it can). Never a panic, and never
//! harm to anyone else: after each attack two bystanders, logged in before
//! it, still exchange messages, and a brand new client can still connect
//! and log in ([`unharmed`]).
//!
//! Each case is its own test, on its own server, so one failure hides no
//! other. Nothing here sleeps to synchronise: replies and events are
//! awaited, and a close is detected by reading until end of stream under a
//! bounded read timeout (a timeout is a failure: "the server did not
//! close"). The only sleeps pace an attacker.

mod bad_input_support;
mod common;

use std::fs;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use num_bigint::BigUint;

use bad_input_support::*;
use common::*;
use muchat::client::{Client, ClientEvent};
use muchat::content::{Body, ContentKey};
use muchat::dh::{self, PublicValue};
use muchat::event::{Delivery, ErrorCode, Reply, ReplyData, ServerMessage};
use muchat::frame::{Frame, MAX_HEAD_LEN, MAX_LINE_LEN};
use muchat::handshake::PROTOCOL;
use muchat::names::MessageRef;
use muchat::request::{
    format_sha256, ReplyKind, SendId, FILE_CHUNK_SIZE, MAX_ACK_REFS, MAX_HISTORY, MAX_MESSAGE_LEN,
};
use muchat::tdes::TdesKey;

/// Content keys, send ids, digests and bodies for hand-made requests.
fn key() -> String {
    ContentKey::random().to_b64()
}

fn sid() -> SendId {
    SendId::random()
}

fn sha() -> String {
    format_sha256(&[0xab; 32])
}

fn body() -> Body {
    ContentKey::random().seal(b"hello")
}

fn head(h: impl Into<String>) -> Frame {
    Frame::head(h)
}

fn with_body(h: impl Into<String>) -> Frame {
    Frame::with_body(h, body())
}

/// A body with more text than a message may hold.
fn with_big_body(h: impl Into<String>) -> Frame {
    Frame::with_body(
        h,
        ContentKey::random().seal(&vec![b'm'; MAX_MESSAGE_LEN + 8]),
    )
}

/// A body in the `envelope:content` form only the server's `GMSG` uses.
fn with_enveloped_body(h: impl Into<String>) -> Frame {
    Frame::with_body(h, Body::enveloped(&body(), &body()))
}

/// `name`'s raw connection still works: a message from it reaches
/// bystander-a.
#[track_caller]
fn still_delivers(raw: &mut Raw, name: &str, by: &Bystanders) {
    let text = format!("{name} is still connected");
    let refs = sent_refs(raw_send_text(raw, "bystander-a", &text), "SEND");
    assert_eq!(
        next_message(&by.a),
        Msg {
            at: format!("@{name}:{}", refs[0].seq),
            from: name.into(),
            text,
        }
    );
}

// ---------------------------------------------------------------------------
// 1. Bad requests: clear errors, and the connection stays usable
// ---------------------------------------------------------------------------

mod requests {
    use super::*;

    /// Sends `frame` on a raw connection (logged in as eve first if
    /// `logged_in`), after `setup`; the reply must be `ERR <code>`. Then the
    /// same connection logs in (if it was not) and delivers a message, and
    /// nobody else noticed anything.
    fn refused_after(
        setup: impl FnOnce(&Bystanders),
        logged_in: bool,
        frame: Frame,
        code: ErrorCode,
    ) {
        let server = start_server();
        let by = Bystanders::new(&server);
        setup(&by);
        let mut raw = Raw::connect(&server);
        if logged_in {
            register_and_login(&mut raw, "eve");
        }
        let ctx = format!("{:?}", frame.head);
        expect_err(request_frame(&mut raw, &frame), code, &ctx);
        if !logged_in {
            register_and_login(&mut raw, "eve");
        }
        still_delivers(&mut raw, "eve", &by);
        unharmed(&server, &by, &ctx);
    }

    fn refused(logged_in: bool, frame: Frame, code: ErrorCode) {
        refused_after(|_| {}, logged_in, frame, code)
    }

    /// One module per case, with a test before and one after logging in:
    /// the request is refused the same way either way.
    macro_rules! refused_before_and_after_login {
        ($($name:ident: $frame:expr => $code:ident,)*) => {$(
            mod $name {
                use super::*;

                #[test]
                fn before_login() {
                    refused(false, $frame, ErrorCode::$code);
                }

                #[test]
                fn after_login() {
                    refused(true, $frame, ErrorCode::$code);
                }
            }
        )*};
    }

    macro_rules! refused_before_login {
        ($($name:ident: $frame:expr => $code:ident,)*) => {$(
            #[test]
            fn $name() {
                refused(false, $frame, ErrorCode::$code);
            }
        )*};
    }

    macro_rules! refused_after_login {
        ($($name:ident: $frame:expr => $code:ident,)*) => {$(
            #[test]
            fn $name() {
                refused(true, $frame, ErrorCode::$code);
            }
        )*};
    }

    mod unknown_command {
        use super::*;

        refused_before_and_after_login! {
            fly_away: head("FLY away") => UnknownCommand,
            empty_head: head("") => UnknownCommand,
            delete_everything: head("DELETE_EVERYTHING") => UnknownCommand,
            a_terminal_escape: head("\u{1b}[2J") => UnknownCommand,
            a_verb_with_a_nul_byte: head("LIST\u{0}") => UnknownCommand,
            an_unknown_verb_with_a_body: with_body("FLY away") => UnknownCommand,
        }
    }

    mod usage {
        use super::*;

        refused_before_and_after_login! {
            login_without_a_password: head("LOGIN alice") => Usage,
            login_with_an_extra_word: head("LOGIN alice pw extra") => Usage,
            login_with_a_doubled_space: head("LOGIN  alice pw") => Usage,
            list_with_an_argument: head("LIST now") => Usage,
            help_with_an_argument: head("HELP me") => Usage,
            quit_with_an_argument: head("QUIT now") => Usage,
            history_without_a_name: head("HISTORY") => Usage,
            history_of_zero_messages: head("HISTORY bob 0") => Usage,
            history_of_a_negative_count: head("HISTORY bob -1") => Usage,
            history_of_a_count_in_words: head("HISTORY bob ten") => Usage,
            history_of_a_count_past_u64: head("HISTORY bob 18446744073709551616") => Usage,
            history_with_an_extra_word: head("HISTORY bob 1 2") => Usage,
            create_user_without_a_display_name: head("CREATE_USER a b") => Usage,
            create_user_with_a_control_character_in_the_display_name:
                head("CREATE_USER a b Bad\u{7}Name") => Usage,
            create_user_with_a_display_name_too_long:
                head(format!("CREATE_USER a b {}", "n".repeat(256))) => Usage,
            create_user_with_a_control_character_in_the_password:
                head("CREATE_USER a p\u{1b}w Name") => Usage,
            create_group_without_a_name: head("CREATE_GROUP") => Usage,
            join_without_a_name: head("JOIN") => Usage,
            join_two_names: head("JOIN a b") => Usage,
            file_end_without_an_id: head("FILE_END") => Usage,
            file_end_of_a_word: head("FILE_END x") => Usage,
            file_abort_of_a_negative_id: head("FILE_ABORT -1") => Usage,
            send_file_of_a_negative_size:
                head(format!("SEND_FILE bob {} -1 {} a.txt", sid(), sha())) => Usage,
            send_file_of_a_size_past_u64:
                head(format!("SEND_FILE bob {} 99999999999999999999999 {} a.txt", sid(), sha()))
                    => Usage,
            send_file_with_a_digest_not_hex:
                head(format!("SEND_FILE bob {} 1 nothex a.txt", sid())) => Usage,
            send_file_with_a_digest_too_short:
                head(format!("SEND_FILE bob {} 1 {} a.txt", sid(), &sha()[2..])) => Usage,
            send_file_without_a_name: head(format!("SEND_FILE bob {} 1 {}", sid(), sha())) => Usage,
            send_file_with_a_bell_in_the_name:
                head(format!("SEND_FILE bob {} 1 {} a\u{7}b", sid(), sha())) => Usage,
            send_file_with_a_name_too_long:
                head(format!("SEND_FILE bob {} 1 {} {}", sid(), sha(), "n".repeat(256))) => Usage,
            send_file_without_a_send_id: head(format!("SEND_FILE bob 1 {} a.txt", sha())) => Usage,
            send_file_with_a_bad_send_id:
                head(format!("SEND_FILE bob bad!id 1 {} a.txt", sha())) => Usage,
            send_file_with_a_send_id_too_long:
                head(format!("SEND_FILE bob {} 1 {} a.txt", "s".repeat(33), sha())) => Usage,
            send_to_group_file_without_a_send_id:
                head(format!("SEND_TO_GROUP_FILE devs 1 {} a.txt", sha())) => Usage,
            send_without_a_body: head(format!("SEND bob {} {}", sid(), key())) => Usage,
            send_to_group_without_a_body:
                head(format!("SEND_TO_GROUP devs {} {}", sid(), key())) => Usage,
            list_with_a_body: with_body("LIST") => Usage,
            login_with_a_body: with_body("LOGIN alice pw") => Usage,
            help_with_a_body: with_body("HELP") => Usage,
            file_end_with_a_body: with_body("FILE_END 1") => Usage,
            send_with_a_short_key: with_body(format!("SEND bob {} shortkey", sid())) => Usage,
            send_with_a_key_not_base64:
                with_body(format!("SEND bob {} {}", sid(), "!".repeat(32))) => Usage,
            send_with_an_extra_word: with_body(format!("SEND bob {} {} extra", sid(), key())) => Usage,
            send_without_a_send_id: with_body(format!("SEND bob {}", key())) => Usage,
            send_with_a_bad_send_id: with_body(format!("SEND bob bad/id {}", key())) => Usage,
            send_with_a_send_id_too_long:
                with_body(format!("SEND bob {} {}", "s".repeat(33), key())) => Usage,
            send_to_group_without_a_send_id: with_body(format!("SEND_TO_GROUP devs {}", key())) => Usage,
            send_with_an_enveloped_body:
                with_enveloped_body(format!("SEND bob {} {}", sid(), key())) => Usage,
            send_to_group_with_an_enveloped_body:
                with_enveloped_body(format!("SEND_TO_GROUP devs {} {}", sid(), key())) => Usage,
        }
    }

    mod too_large {
        use super::*;

        refused_before_and_after_login! {
            send_over_the_message_limit:
                with_big_body(format!("SEND bob {} {}", sid(), key())) => TooLarge,
            send_to_group_over_the_message_limit:
                with_big_body(format!("SEND_TO_GROUP devs {} {}", sid(), key())) => TooLarge,
        }

        /// Control: a message of exactly the limit goes through.
        #[test]
        fn a_message_of_exactly_the_limit_is_delivered() {
            let server = start_server();
            let by = Bystanders::new(&server);
            let mut raw = raw_login(&server, "eve");
            let text = "m".repeat(MAX_MESSAGE_LEN);
            sent_refs(raw_send_text(&mut raw, "bystander-a", &text), "SEND");
            let got = next_message(&by.a);
            assert_eq!(got.from, "eve");
            assert!(
                got.text == text,
                "the text arrived changed ({} bytes)",
                got.text.len()
            );
            unharmed(&server, &by, "a message of the largest size");
        }
    }

    mod bad_name {
        use super::*;

        refused_before_and_after_login! {
            join_a_path: head("JOIN ../x") => BadName,
            create_group_with_a_name_too_long:
                head(format!("CREATE_GROUP {}", "a".repeat(33))) => BadName,
            create_group_with_the_reserved_name: head("CREATE_GROUP file") => BadName,
            join_the_reserved_name_in_capitals: head("JOIN FILE") => BadName,
            leave_a_name_with_a_slash: head("LEAVE a/b") => BadName,
            join_a_name_starting_with_a_dash: head("JOIN -dash") => BadName,
            login_as_the_reserved_name: head("LOGIN file pw") => BadName,
            create_user_with_a_path: head("CREATE_USER ../eve pw Eve") => BadName,
            create_user_with_the_reserved_name: head("CREATE_USER file pw Eve") => BadName,
            create_user_with_a_name_too_long:
                head(format!("CREATE_USER {} pw Eve", "a".repeat(33))) => BadName,
            send_file_to_a_path: head(format!("SEND_FILE ../bob {} 1 {} a.txt", sid(), sha())) => BadName,
            send_to_group_file_with_an_empty_group_in_the_list:
                head(format!("SEND_TO_GROUP_FILE devs,,x {} 1 {} a.txt", sid(), sha())) => BadName,
            history_of_a_path: head("HISTORY ../x") => BadName,
            history_of_the_reserved_user: head("HISTORY @file") => BadName,
            history_of_a_group_with_a_slash: head("HISTORY #a/b 5") => BadName,
            send_to_a_path: with_body(format!("SEND ../x {} {}", sid(), key())) => BadName,
            send_to_group_with_a_path_in_the_list:
                with_body(format!("SEND_TO_GROUP a,../b {} {}", sid(), key())) => BadName,
        }
    }

    mod not_logged_in {
        use super::*;

        refused_before_login! {
            list: head("LIST") => NotLoggedIn,
            list_in_lower_case: head("list") => NotLoggedIn,
            join: head("JOIN devs") => NotLoggedIn,
            create_group: head("CREATE_GROUP devs") => NotLoggedIn,
            leave: head("LEAVE devs") => NotLoggedIn,
            logout: head("LOGOUT") => NotLoggedIn,
            send_file: head(format!("SEND_FILE bob {} 10 {} a.txt", sid(), sha())) => NotLoggedIn,
            send_to_group_file:
                head(format!("SEND_TO_GROUP_FILE devs {} 10 {} a.txt", sid(), sha())) => NotLoggedIn,
            file_end: head("FILE_END 1") => NotLoggedIn,
            file_abort: head("FILE_ABORT 1") => NotLoggedIn,
            history_of_a_user: head("HISTORY bob") => NotLoggedIn,
            history_of_a_group: head("HISTORY #devs 10") => NotLoggedIn,
            send: with_body(format!("SEND bob {} {}", sid(), key())) => NotLoggedIn,
            send_to_group: with_body(format!("SEND_TO_GROUP devs {} {}", sid(), key())) => NotLoggedIn,
        }

        #[test]
        fn help_is_answered() {
            let server = start_server();
            let by = Bystanders::new(&server);
            let mut raw = Raw::connect(&server);
            let help = expect_ok(raw.request("HELP"), "HELP");
            assert!(help.contains("LOGIN <username> <password>"), "{help}");
            register_and_login(&mut raw, "eve");
            still_delivers(&mut raw, "eve", &by);
            unharmed(&server, &by, "HELP before login");
        }

        #[test]
        fn login_as_an_unknown_user_fails() {
            let server = start_server();
            let by = Bystanders::new(&server);
            let mut raw = Raw::connect(&server);
            expect_err(
                raw.request("LOGIN nobody wrong"),
                ErrorCode::LoginFailed,
                "LOGIN unknown user",
            );
            register_and_login(&mut raw, "eve");
            still_delivers(&mut raw, "eve", &by);
            unharmed(&server, &by, "a failed login");
        }
    }

    mod refused_after_login {
        use super::*;

        refused_after_login! {
            a_second_login: head("LOGIN eve pw-eve") => AlreadyLoggedIn,
            create_user: head("CREATE_USER x pw X") => AlreadyLoggedIn,
            join_an_unknown_group: head("JOIN nosuchgroup") => NoSuchGroup,
            leave_an_unknown_group: head("LEAVE nosuchgroup") => NoSuchGroup,
            file_end_of_an_unknown_transfer: head("FILE_END 424242") => NoSuchTransfer,
            file_abort_of_an_unknown_transfer: head("FILE_ABORT 424242") => NoSuchTransfer,
            send_to_an_unknown_user: with_body(format!("SEND nobody {} {}", sid(), key())) => UnknownUser,
            send_to_an_unknown_group:
                with_body(format!("SEND_TO_GROUP nosuchgroup {} {}", sid(), key())) => NoSuchGroup,
            send_file_to_an_unknown_user:
                head(format!("SEND_FILE nobody {} 10 {} a.txt", sid(), sha())) => UnknownUser,
            history_of_an_unknown_name: head("HISTORY nobody") => UnknownUser,
            history_of_an_unknown_group: head("HISTORY #nosuchgroup") => NoSuchGroup,
        }

        /// bystander-a has a group eve is not in.
        fn group_of_others(by: &Bystanders) {
            ok(&by.a, "CREATE_GROUP devs");
        }

        #[test]
        fn send_to_a_group_one_is_not_in() {
            let frame = with_body(format!("SEND_TO_GROUP devs {} {}", sid(), key()));
            refused_after(group_of_others, true, frame, ErrorCode::NotMember);
        }

        #[test]
        fn send_a_file_to_a_group_one_is_not_in() {
            let frame = head(format!(
                "SEND_TO_GROUP_FILE devs {} 10 {} a.txt",
                sid(),
                sha()
            ));
            refused_after(group_of_others, true, frame, ErrorCode::NotMember);
        }

        #[test]
        fn history_of_a_group_one_is_not_in() {
            let frame = head("HISTORY #devs");
            refused_after(group_of_others, true, frame, ErrorCode::NotMember);
        }

        #[test]
        fn leave_a_group_one_is_not_in() {
            refused_after(
                group_of_others,
                true,
                head("LEAVE devs"),
                ErrorCode::NotMember,
            );
        }
    }

    /// Changed: `CREATE_USER a b c d` was a usage error; the display name
    /// is now the rest of the line, spaces and all.
    #[test]
    fn create_user_takes_a_display_name_with_spaces() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let mut raw = Raw::connect(&server);
        expect_ok(raw.request("CREATE_USER a b c d"), "CREATE_USER");
        expect_ok(raw.request("LOGIN a b"), "LOGIN");
        still_delivers(&mut raw, "a", &by);
        unharmed(&server, &by, "a display name with spaces");
    }

    /// Changed: `HISTORY bob 501` was a usage error; counts above the
    /// maximum are now capped, up to the largest number a count can be.
    #[test]
    fn history_counts_above_the_maximum_are_capped() {
        let server = start_server();
        let by = Bystanders::new(&server);
        drop(login(&server, "bob"));
        let mut raw = raw_login(&server, "eve");
        let n = MAX_HISTORY + 1;
        let text = |i: usize| format!("message {i}");
        for i in 1..=n {
            let key = ContentKey::random();
            let head = format!("SEND bob {} {}", sid(), key.to_b64());
            send_with_body(&mut raw, &head, &key.seal(text(i).as_bytes()));
        }
        for i in 1..=n {
            let refs = sent_refs(next_reply(&mut raw, "SEND"), "SEND");
            assert_eq!(refs, [at(&format!("@bob:{i}"))]);
        }
        for count in [(MAX_HISTORY + 1).to_string(), u64::MAX.to_string()] {
            raw.send(&format!("HISTORY bob {count}"));
            for i in (n - MAX_HISTORY + 1)..=n {
                match raw.recv() {
                    ServerMessage::History(d) => {
                        assert_eq!(d.at, at(&format!("@bob:{i}")), "HISTORY bob {count}");
                        assert_eq!(d.key.open(&d.body).unwrap(), text(i).as_bytes());
                    }
                    other => panic!("HISTORY bob {count}: expected HIST @bob:{i}, got {other:?}"),
                }
            }
            let reply = expect_ok(next_reply(&mut raw, "HISTORY"), "HISTORY");
            assert!(
                reply.starts_with(&format!("{MAX_HISTORY} messages")),
                "HISTORY bob {count}: {reply}"
            );
        }
        still_delivers(&mut raw, "eve", &by);
        unharmed(&server, &by, "large HISTORY counts");
    }
}

// ---------------------------------------------------------------------------
// 1b. Send ids: a repeat changes nothing, and ids are each user's own
// ---------------------------------------------------------------------------

mod send_ids {
    use super::*;

    fn send_with_id(raw: &mut Raw, to: &str, id: &str, text: &str) -> Reply {
        let key = ContentKey::random();
        let head = format!("SEND {to} {id} {}", key.to_b64());
        request_frame(raw, &Frame::with_body(head, key.seal(text.as_bytes())))
    }

    /// The original references, as a repeat's `OK`.
    #[track_caller]
    fn repeat_of(reply: Reply, first: &[MessageRef]) {
        let reply = typed(reply, ReplyKind::Sent);
        assert_eq!(reply.sent(), first, "{reply:?}");
        assert!(reply.text().contains("already sent"), "{reply:?}");
    }

    /// A send id used again, with other text, even for someone else, is
    /// answered with the first send's references and stores nothing.
    #[test]
    fn a_repeated_send_id_changes_nothing() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let bob = login(&server, "bob");
        let mut raw = raw_login(&server, "mallory");
        let first = sent_refs(send_with_id(&mut raw, "bob", "retry-1", "first"), "SEND");
        assert_eq!(first, [at("@bob:1")]);
        assert_eq!(next_message(&bob).text, "first");
        repeat_of(
            send_with_id(&mut raw, "bob", "retry-1", "other text"),
            &first,
        );
        repeat_of(
            send_with_id(&mut raw, "bystander-a", "retry-1", "elsewhere"),
            &first,
        );
        assert_no_event(&bob);
        assert_no_event(&by.a);
        // A new id is a new message, next in line.
        let second = sent_refs(send_with_id(&mut raw, "bob", "retry-2", "second"), "SEND");
        assert_eq!(second, [at("@bob:2")]);
        let got = next_message(&bob);
        assert_eq!(
            (got.at.as_str(), got.text.as_str()),
            ("@mallory:2", "second")
        );
        unharmed(&server, &by, "a repeated send id");
    }

    /// Send ids are each user's own: mallory using alice's id sends a new
    /// message, and does not stop alice's repeats being recognised.
    #[test]
    fn someone_elses_send_id_is_not_a_repeat() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let bob = login(&server, "bob");
        let mut alice = raw_login(&server, "alice");
        let mut mallory = raw_login(&server, "mallory");
        let hers = sent_refs(
            send_with_id(&mut alice, "bob", "shared-id", "from alice"),
            "SEND",
        );
        assert_eq!(next_message(&bob).text, "from alice");
        let reply = typed(
            send_with_id(&mut mallory, "bob", "shared-id", "from mallory"),
            ReplyKind::Sent,
        );
        assert_eq!(reply.sent(), [at("@bob:1")], "{reply:?}");
        assert!(!reply.text().contains("already sent"), "{reply:?}");
        let got = next_message(&bob);
        assert_eq!(
            (got.at.as_str(), got.text.as_str()),
            ("@mallory:1", "from mallory")
        );
        repeat_of(send_with_id(&mut alice, "bob", "shared-id", "again"), &hers);
        assert_no_event(&bob);
        unharmed(&server, &by, "someone else's send id");
    }

    /// A file announced again under a send id already used for a stored
    /// file gets that file's references, not a new transfer.
    #[test]
    fn a_repeated_send_id_of_a_file_changes_nothing() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let downloads = server.path("repeat").join("downloads");
        let bob = client_with_downloads(&server, "bob", downloads.clone());
        let mut raw = raw_login(&server, "mallory");
        let data = b"the one and only".to_vec();
        let sha = format_sha256(&sha256(&data));
        let head = format!("SEND_FILE bob file-1 {} {sha} once.txt", data.len());
        let reply = typed(raw.request(&head), ReplyKind::Upload);
        let Reply::Ok {
            data: ReplyData::Transfer(id),
            ..
        } = reply
        else {
            panic!("expected a transfer id, got {reply:?}");
        };
        send_chunks(&mut raw, id, &data);
        let first = vec![file_end(&mut raw, id)];
        let got = expect_file_received(&bob);
        assert_eq!(fs::read(&got.path).unwrap(), data);
        let again = format!(
            "SEND_FILE bob file-1 5 {} twice.txt",
            format_sha256(&[1; 32])
        );
        let reply = typed(raw.request(&again), ReplyKind::Upload);
        assert_eq!(reply.sent(), first.as_slice(), "{reply:?}");
        assert!(reply.text().contains("already sent"), "{reply:?}");
        assert_no_event(&bob);
        assert_eq!(entries(&downloads), ["once.txt"]);
        unharmed(&server, &by, "a repeated file send id");
    }
}

// ---------------------------------------------------------------------------
// 2. Byte-level attacks after a valid handshake: that connection is closed
// ---------------------------------------------------------------------------

mod corrupt_lines {
    use super::*;

    /// A keyed, healthy connection suffers `attack`; the server must close
    /// it, saying `BYE protocol error: ...<reason>...` (where `reason` is
    /// given: a reset may beat the BYE otherwise), and harm no one else.
    fn closes(attack: impl FnOnce(&mut Forger), reason: Option<&str>) {
        let server = start_server();
        let by = Bystanders::new(&server);
        let mut f = Forger::connect(&server);
        f.probe();
        attack(&mut f);
        let closed = read_until_closed(&mut f.reader);
        match reason {
            Some(why) => closed.protocol_error(why),
            None => {
                if let Some(bye) = &closed.bye {
                    assert!(bye.starts_with("protocol error: "), "BYE {bye:?}");
                }
            }
        }
        unharmed(&server, &by, "a corrupt line");
    }

    #[test]
    fn a_line_of_garbage() {
        closes(
            |f| f.write(b"this is not a frame\n"),
            Some("line is not head.body.tag"),
        );
    }

    #[test]
    fn binary_garbage() {
        closes(
            |f| f.write(b"\xff\xfe\x00\x01garbage\r\n"),
            Some("line is not head.body.tag"),
        );
    }

    #[test]
    fn an_empty_line() {
        closes(|f| f.write(b"\n"), Some("line is not head.body.tag"));
    }

    #[test]
    fn invalid_base64_in_the_tag() {
        closes(
            |f| {
                let mut l = b"QUJDREVGR0g=..".to_vec();
                l.extend_from_slice(&[b'@'; 44]);
                l.push(b'\n');
                f.write(&l)
            },
            Some("invalid base64"),
        );
    }

    #[test]
    fn invalid_base64_in_the_head_with_a_valid_mac() {
        closes(
            |f| {
                let l = f.line("!!not*base64!!", "");
                f.write(&l)
            },
            Some("invalid base64"),
        );
    }

    #[test]
    fn invalid_base64_in_the_body_with_a_valid_mac() {
        closes(
            |f| {
                let h = f.head(b"LIST");
                let l = f.line(&h, "%%%%not base64%%%%");
                f.write(&l)
            },
            Some("bad body"),
        );
    }

    #[test]
    fn a_body_that_is_not_whole_blocks_with_a_valid_mac() {
        closes(
            |f| {
                let h = f.head(b"LIST");
                let l = f.line(&h, "AAAA");
                f.write(&l)
            },
            Some("bad body"),
        );
    }

    #[test]
    fn one_byte_flipped_in_the_head() {
        closes(
            |f| {
                let mut l = f.sealed("LIST");
                l[3] ^= 0x01;
                f.write(&l)
            },
            Some("MAC check failed"),
        );
    }

    #[test]
    fn one_byte_flipped_in_the_tag() {
        closes(
            |f| {
                let mut l = f.sealed("LIST");
                // Swap one tag character for another valid base64 character.
                let i = l.len() - 5;
                l[i] = if l[i] == b'A' { b'B' } else { b'A' };
                f.write(&l)
            },
            Some("MAC check failed"),
        );
    }

    #[test]
    fn a_replayed_line() {
        closes(
            |f| {
                let l = f.sealed("LIST");
                f.write(&l);
                match f.recv() {
                    ServerMessage::Reply(r) => {
                        expect_err(r, ErrorCode::NotLoggedIn, "first copy");
                    }
                    other => panic!("expected a reply, got {other:?}"),
                }
                f.write(&l)
            },
            Some("MAC check failed"),
        );
    }

    #[test]
    fn reordered_lines() {
        closes(
            |f| {
                let first = f.sealed("LIST");
                let mut both = f.sealed("HELP");
                both.extend_from_slice(&first);
                f.write(&both)
            },
            Some("MAC check failed"),
        );
    }

    #[test]
    fn a_dropped_line() {
        closes(
            |f| {
                let _dropped = f.sealed("LIST");
                let second = f.sealed("HELP");
                f.write(&second)
            },
            Some("MAC check failed"),
        );
    }

    /// Whatever the half line looks like, it is some protocol error.
    #[test]
    fn a_line_cut_in_half_then_a_newline() {
        closes(
            |f| {
                let l = f.sealed("LIST");
                let mut half = l[..l.len() / 2].to_vec();
                half.push(b'\n');
                f.write(&half)
            },
            Some(""),
        );
    }

    #[test]
    fn a_line_cut_in_half_then_end_of_stream() {
        closes(
            |f| {
                let l = f.sealed("LIST");
                f.write(&l[..l.len() / 2]);
                f.stream.shutdown(Shutdown::Write).unwrap();
            },
            Some("connection closed in the middle of a line"),
        );
    }

    #[test]
    fn bad_3des_padding_with_a_valid_mac() {
        closes(
            |f| {
                // Encrypt one all-zero block and keep only its first
                // ciphertext block: it decrypts to a last byte of 0.
                let iv = [1u8; 8];
                let mut ct = Vec::new();
                TdesKey::new(&f.c2s.enc).encrypt_into(&iv, &[0u8; 8], &mut ct);
                let mut raw = iv.to_vec();
                raw.extend_from_slice(&ct[..8]);
                let l = f.line(&B64.encode(&raw), "");
                f.write(&l)
            },
            Some("bad 3DES padding"),
        );
    }

    #[test]
    fn a_head_that_is_only_an_iv_with_a_valid_mac() {
        closes(
            |f| {
                let l = f.line(&B64.encode([9u8; 8]), "");
                f.write(&l)
            },
            Some("bad 3DES padding"),
        );
    }

    #[test]
    fn a_head_that_is_not_whole_blocks_with_a_valid_mac() {
        closes(
            |f| {
                let l = f.line(&B64.encode([9u8; 21]), "");
                f.write(&l)
            },
            Some("bad 3DES padding"),
        );
    }

    #[test]
    fn a_head_that_is_not_utf8_with_a_valid_mac() {
        closes(
            |f| {
                let h = f.head(&[0xff, 0xfe, 0xfd, b'L']);
                let l = f.line(&h, "");
                f.write(&l)
            },
            Some("not UTF-8"),
        );
    }

    #[test]
    fn a_head_over_the_head_limit_with_a_valid_mac() {
        closes(
            |f| {
                let h = f.head("A".repeat(MAX_HEAD_LEN + 1000).as_bytes());
                let l = f.line(&h, "");
                f.write(&l)
            },
            Some("not UTF-8 text within the size limit"),
        );
    }

    #[test]
    fn a_line_over_the_line_limit_without_a_newline() {
        // The server must give up after the limit, not wait for a newline;
        // it may close (and reset) before everything is written.
        closes(
            |f| {
                let _ = (&f.stream).write_all(&vec![b'A'; MAX_LINE_LEN + 4096]);
            },
            None,
        );
    }

    /// New in MUCHAT/3: only the server's `GMSG` may travel with a clear head.
    #[test]
    fn a_clear_head_from_a_client() {
        closes(
            |f| {
                let l = f.line("=LIST", "");
                f.write(&l)
            },
            Some("clear head from a client"),
        );
    }

    #[test]
    fn a_clear_gmsg_head_with_an_envelope_from_a_client() {
        closes(
            |f| {
                let b = Body::enveloped(&body(), &body());
                let l = f.line("=GMSG 1 1", b.as_str());
                f.write(&l)
            },
            Some("clear head from a client"),
        );
    }

    #[test]
    fn a_clear_head_that_is_not_ascii() {
        closes(
            |f| {
                let l = f.line("=caf\u{e9}", "");
                f.write(&l)
            },
            Some("not UTF-8 text within the size limit"),
        );
    }

    #[test]
    fn a_clear_head_over_the_head_limit() {
        closes(
            |f| {
                let l = f.line(&format!("={}", "A".repeat(MAX_HEAD_LEN + 1)), "");
                f.write(&l)
            },
            Some("not UTF-8 text within the size limit"),
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Handshake attacks: "MUCHAT/4 ERROR ..." then close
// ---------------------------------------------------------------------------

mod handshakes {
    use super::*;

    const NOT_MUCHAT: &str = "does not speak the muchat protocol";
    const VERSION: &str = "unsupported protocol version";
    const MALFORMED: &str = "must be 512 hex digits";
    const RANGE: &str = "outside 2..p-2";

    /// A valid public value (2^100).
    fn valid() -> String {
        pad_hex(&BigUint::from(2u32).pow(100))
    }

    fn hello(value: &str) -> Vec<u8> {
        format!("{PROTOCOL} {value}\n").into_bytes()
    }

    /// The server answers `bytes` with `MUCHAT/4 ERROR <reason>` and closes.
    fn refused(bytes: &[u8], reason: &str) {
        let server = start_server();
        let by = Bystanders::new(&server);
        let (reply, mut reader) = handshake_reply(&server, bytes);
        assert!(
            reply.starts_with(&format!("{PROTOCOL} ERROR ")),
            "expected {PROTOCOL} ERROR, got {reply:?}"
        );
        assert!(
            reply.contains(reason),
            "{reply:?} should mention {reason:?}"
        );
        assert!(reply.ends_with('\n'), "unterminated reply {reply:?}");
        assert_closed(&mut reader, "a refused hello");
        unharmed(&server, &by, "a refused hello");
    }

    #[test]
    fn http() {
        refused(b"GET / HTTP/1.1\r\n", NOT_MUCHAT);
    }

    #[test]
    fn an_empty_line() {
        refused(b"\n", NOT_MUCHAT);
    }

    #[test]
    fn binary() {
        refused(b"\xff\xfe\x00\x80\n", NOT_MUCHAT);
    }

    #[test]
    fn the_protocol_in_lower_case() {
        let line = format!("{} {}\n", PROTOCOL.to_lowercase(), valid());
        refused(line.as_bytes(), NOT_MUCHAT);
    }

    #[test]
    fn an_over_long_line() {
        refused(&hello(&"a".repeat(3000)), NOT_MUCHAT);
    }

    #[test]
    fn version_9() {
        refused(format!("MUCHAT/9 {}\n", valid()).as_bytes(), VERSION);
    }

    #[test]
    fn version_20() {
        refused(format!("MUCHAT/20 {}\n", valid()).as_bytes(), VERSION);
    }

    /// New: a client of the previous protocol is told, not misunderstood.
    #[test]
    fn the_previous_version_2() {
        refused(format!("MUCHAT/2 {}\n", valid()).as_bytes(), VERSION);
    }

    #[test]
    fn no_value() {
        refused(format!("{PROTOCOL}\n").as_bytes(), MALFORMED);
    }

    #[test]
    fn the_value_0() {
        refused(&hello(&pad_hex(&BigUint::from(0u32))), RANGE);
    }

    #[test]
    fn the_value_1() {
        refused(&hello(&pad_hex(&BigUint::from(1u32))), RANGE);
    }

    #[test]
    fn the_value_p_minus_1() {
        refused(
            &hello(&pad_hex(&(dh::prime() - BigUint::from(1u32)))),
            RANGE,
        );
    }

    #[test]
    fn the_value_p() {
        refused(&hello(&pad_hex(dh::prime())), RANGE);
    }

    #[test]
    fn the_value_2_to_the_2048_minus_1() {
        refused(&hello(&"f".repeat(512)), RANGE);
    }

    #[test]
    fn a_value_of_513_digits() {
        refused(&hello(&format!("0{}", valid())), MALFORMED);
    }

    #[test]
    fn a_value_of_511_digits() {
        refused(&hello(&valid()[1..]), MALFORMED);
    }

    #[test]
    fn an_unpadded_2() {
        refused(&hello("2"), MALFORMED);
    }

    #[test]
    fn a_value_not_hex() {
        refused(&hello(&"zz".repeat(256)), MALFORMED);
    }

    #[test]
    fn a_value_with_a_sign() {
        refused(&hello(&format!("+{}", &valid()[1..])), MALFORMED);
    }

    #[test]
    fn a_trailing_word() {
        refused(&hello(&format!("{} 1", valid())), MALFORMED);
    }

    /// Controls: the boundaries 2 and p-2 are accepted.
    fn accepted(v: &BigUint) {
        let server = start_server();
        let (reply, _) = handshake_reply(&server, &hello(&pad_hex(v)));
        let value = reply
            .trim_end()
            .strip_prefix(&format!("{PROTOCOL} "))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("ERROR");
        assert!(PublicValue::from_hex(value).is_ok(), "refused: {reply:?}");
    }

    #[test]
    fn the_value_2_is_accepted() {
        accepted(&BigUint::from(2u32));
    }

    #[test]
    fn the_value_p_minus_2_is_accepted() {
        accepted(&(dh::prime() - BigUint::from(2u32)));
    }

    fn server_with_a_short_handshake() -> TestServer {
        start_server_with(|c| c.handshake_timeout = Duration::from_secs(1))
    }

    /// A client that says nothing, or stops mid-line, is closed after the
    /// handshake timeout (no reply: there is nothing to answer).
    fn closed_after_the_timeout(bytes: &[u8]) {
        let server = server_with_a_short_handshake();
        let by = Bystanders::new(&server);
        let stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        (&stream).write_all(bytes).unwrap();
        let mut reader = BufReader::new(stream);
        assert_closed(&mut reader, "an unfinished hello");
        unharmed(&server, &by, "an unfinished hello");
    }

    #[test]
    fn a_silent_client_is_closed_after_the_timeout() {
        closed_after_the_timeout(b"");
    }

    #[test]
    fn half_a_hello_is_closed_after_the_timeout() {
        closed_after_the_timeout(format!("{PROTOCOL} abc").as_bytes());
    }

    /// A client trickling its hello a byte at a time cannot stretch the
    /// handshake: the deadline is for the whole hello, not for each read.
    /// The attacker would keep trickling far longer than a read here may
    /// wait, so only a server that keeps its deadline closes in time; and
    /// the close must come while the attacker is still at it.
    #[test]
    fn a_trickled_hello_cannot_stretch_the_handshake() {
        let server = server_with_a_short_handshake();
        let by = Bystanders::new(&server);
        let stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut trickle = stream.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let _ = trickle.write_all(format!("{PROTOCOL} ").as_bytes());
                // Within the hello line limit; 1500 bytes 50 ms apart is
                // 75 s, far past WAIT. (The pause paces the attacker.)
                for _ in 0..1500 {
                    if stop.load(Ordering::SeqCst) || trickle.write_all(b"a").is_err() {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                true
            })
        };
        let mut reader = BufReader::new(stream);
        assert_closed(&mut reader, "a trickled hello");
        stop.store(true, Ordering::SeqCst);
        let trickled_to_the_end = attacker.join().unwrap();
        assert!(
            !trickled_to_the_end,
            "the connection stayed open for the whole trickled hello"
        );
        unharmed(&server, &by, "a trickled hello");
    }
}

// ---------------------------------------------------------------------------
// 4. A member that never reads holds up nobody and loses nothing
// ---------------------------------------------------------------------------

mod slow_readers {
    use super::*;

    /// Group text sent while one member reads nothing: far more than a
    /// loopback connection that is not read absorbs in kernel buffers (a
    /// few MiB on Linux) plus its window, so the server must hold messages
    /// back for it (the test checks that it did).
    const FLOOD_BYTES: usize = 16 << 20;
    const TEXT_LEN: usize = 30_000;
    /// The two others exchange direct messages this often during the flood.
    const EXCHANGE_EVERY: usize = 64;

    fn text_of(i: usize) -> String {
        let fill = char::from(b'a' + (i % 26) as u8);
        let mut t = format!("{i:05} ");
        t.extend(std::iter::repeat_n(fill, TEXT_LEN - t.len()));
        t
    }

    /// Reads `fast`'s messages up to the direct message `want` from
    /// sender; the room messages on the way must come in order.
    fn fast_reads_until(fast: &Client, seen: &mut usize, total: usize, want: &str) {
        for _ in 0..=total {
            let m = next_message(fast);
            if m.at.starts_with("@sender:") {
                assert_eq!((m.from.as_str(), m.text.as_str()), ("sender", want));
                return;
            }
            *seen += 1;
            assert_eq!(m.at, format!("#room:{seen}"), "fast: out of order");
            assert!(m.text == text_of(*seen - 1), "fast: message {seen} differs");
        }
        panic!("fast never got {want:?}");
    }

    #[test]
    fn a_member_that_never_reads_holds_up_nobody_and_loses_nothing() {
        let server = start_server_with(|c| c.session_window = 16 * 1024);
        let by = Bystanders::new(&server);
        let mut sender = raw_login(&server, "sender");
        expect_ok(sender.request("CREATE_GROUP room"), "CREATE_GROUP");
        let fast = login(&server, "fast");
        ok(&fast, "JOIN room");
        let mut stuck = raw_login(&server, "stuck");
        expect_ok(stuck.request("JOIN room"), "stuck JOIN");
        // From here on `stuck` reads nothing until the flood is over.

        let total = FLOOD_BYTES / TEXT_LEN;
        let mut fast_seen = 0;
        for i in 0..total {
            // The sender is never held up: each reply comes (within WAIT,
            // the raw connection's read timeout).
            let key = ContentKey::random();
            let head = format!("SEND_TO_GROUP room {} {}", sid(), key.to_b64());
            let frame = Frame::with_body(head, key.seal(text_of(i).as_bytes()));
            let refs = sent_refs(request_frame(&mut sender, &frame), "SEND_TO_GROUP");
            assert_eq!(refs, [at(&format!("#room:{}", i + 1))]);
            if (i + 1) % EXCHANGE_EVERY == 0 {
                // The others still talk, both ways, while stuck reads nothing.
                let ask = format!("fast to sender after {} messages", i + 1);
                sent(&fast, &format!("SEND sender {ask}"));
                match sender.recv() {
                    ServerMessage::Msg(d) => {
                        assert_eq!(d.from.as_str(), "fast");
                        assert_eq!(d.key.open(&d.body).unwrap(), ask.as_bytes());
                    }
                    other => panic!("sender: expected fast's message, got {other:?}"),
                }
                let answer = format!("sender to fast after {} messages", i + 1);
                sent_refs(raw_send_text(&mut sender, "fast", &answer), "SEND");
                fast_reads_until(&fast, &mut fast_seen, total, &answer);
            }
        }
        // fast got every message, in order.
        while fast_seen < total {
            let m = next_message(&fast);
            fast_seen += 1;
            assert_eq!(m.at, format!("#room:{fast_seen}"), "fast: out of order");
            assert!(
                m.text == text_of(fast_seen - 1),
                "fast: message {fast_seen} differs"
            );
        }
        assert_no_event(&fast);

        // stuck finally reads: everything is there, in order, once; some of
        // it live, the rest (held back while it did not read) from the store.
        let mut from_store = 0;
        for i in 0..total {
            let d = loop {
                let f = stuck.reader.read_frame().expect("read").expect("a frame");
                match ServerMessage::parse(f).expect("well-formed server message") {
                    ServerMessage::GroupKey { group, key_id, key } => {
                        stuck.group_keys.insert(key_id, (group, key));
                    }
                    ServerMessage::GroupMsg { key_id, seq, body } => {
                        let (g, k) = &stuck.group_keys[&key_id];
                        break Delivery::open_group(g, seq, k, &body).expect("GMSG opens");
                    }
                    ServerMessage::Msg(d) => {
                        from_store += 1;
                        break d;
                    }
                    other => panic!("stuck: expected message {}, got {other:?}", i + 1),
                }
            };
            assert_eq!(d.at, at(&format!("#room:{}", i + 1)), "stuck: out of order");
            assert_eq!(d.from.as_str(), "sender");
            let text = d.key.open(&d.body).expect("opens");
            assert!(
                text == text_of(i).as_bytes(),
                "stuck: message {} differs",
                i + 1
            );
        }
        assert!(
            from_store > 0,
            "stuck never fell behind: {FLOOD_BYTES} bytes did not fill its connection"
        );
        // Nothing more, and the connection still works.
        expect_ok(stuck.request("LIST"), "stuck LIST");
        unharmed(&server, &by, "a member that did not read");
    }
}

// ---------------------------------------------------------------------------
// 5. Files over the server's limit
// ---------------------------------------------------------------------------

mod file_size_limit {
    use super::*;

    const LIMIT: u64 = 1000;

    fn limited_server() -> TestServer {
        start_server_with(|c| c.max_file_size = LIMIT)
    }

    fn big_file(server: &TestServer) -> PathBuf {
        let path = server.path("limit").join("big.bin");
        fs::write(&path, vec![7u8; 2 * LIMIT as usize]).unwrap();
        path
    }

    #[test]
    fn a_direct_file_over_the_limit_is_refused_before_anyone_hears_of_it() {
        let server = limited_server();
        let by = Bystanders::new(&server);
        let alice = login(&server, "alice");
        let bob = login(&server, "bob");
        let line = format!("SEND FILE bob {}", big_file(&server).display());
        let text = err(&alice, &line, ErrorCode::TooLarge);
        assert!(
            text.contains("1000"),
            "the error should state the limit: {text}"
        );
        assert_no_event(&bob);
        assert_no_event(&alice);
        unharmed(&server, &by, "a direct file over the limit");
    }

    #[test]
    fn a_group_file_over_the_limit_is_refused_before_anyone_hears_of_it() {
        let server = limited_server();
        let by = Bystanders::new(&server);
        let alice = login(&server, "alice");
        let bob = login(&server, "bob");
        ok(&alice, "CREATE_GROUP devs");
        ok(&bob, "JOIN devs");
        let line = format!("SEND_TO_GROUP FILE devs {}", big_file(&server).display());
        let text = err(&alice, &line, ErrorCode::TooLarge);
        assert!(
            text.contains("1000"),
            "the error should state the limit: {text}"
        );
        assert_no_event(&bob);
        assert_no_event(&alice);
        unharmed(&server, &by, "a group file over the limit");
    }

    /// A raw sender lying about nothing but the size.
    fn raw_size(size: &str, code: ErrorCode) {
        let server = limited_server();
        let by = Bystanders::new(&server);
        let bob = login(&server, "bob");
        let mut raw = raw_login(&server, "mallory");
        let head = format!(
            "SEND_FILE bob {} {size} {} x.bin",
            sid(),
            format_sha256(&[1; 32])
        );
        expect_err(raw.request(&head), code, &head);
        expect_ok(raw.request("LIST"), "LIST");
        assert_no_event(&bob);
        unharmed(&server, &by, "an announced size over the limit");
    }

    #[test]
    fn one_byte_over_the_limit() {
        raw_size("1001", ErrorCode::TooLarge);
    }

    #[test]
    fn the_largest_size() {
        raw_size("18446744073709551615", ErrorCode::TooLarge);
    }

    #[test]
    fn a_size_past_u64() {
        raw_size("18446744073709551616", ErrorCode::Usage);
    }

    /// Control: exactly the limit goes through.
    #[test]
    fn a_file_of_exactly_the_limit_is_delivered() {
        let server = limited_server();
        let by = Bystanders::new(&server);
        let alice = login(&server, "alice");
        let bob = login(&server, "bob");
        let fits = server.path("limit").join("fits.bin");
        fs::write(&fits, vec![9u8; LIMIT as usize]).unwrap();
        ok(&alice, &format!("SEND FILE bob {}", fits.display()));
        let got = expect_file_received(&bob);
        assert_eq!(got.size, LIMIT);
        assert_eq!(fs::read(&got.path).unwrap(), vec![9u8; LIMIT as usize]);
        match next_event(&alice) {
            ClientEvent::FileSent { reply, .. } => assert_eq!(reply.sent(), [at("@bob:1")]),
            other => panic!("expected FileSent, got {other:?}"),
        }
        unharmed(&server, &by, "a file of exactly the limit");
    }
}

// ---------------------------------------------------------------------------
// 6. Chunks that do not belong
// ---------------------------------------------------------------------------

mod chunks {
    use super::*;

    /// A recipient with a known downloads directory, and a raw sender.
    struct Upload {
        server: TestServer,
        by: Bystanders,
        bob: Client,
        downloads: PathBuf,
        sender: &'static str,
        raw: Raw,
    }

    impl Upload {
        fn new(sender: &'static str) -> Upload {
            let server = start_server();
            let by = Bystanders::new(&server);
            let downloads = server.path("stray").join("downloads");
            let bob = client_with_downloads(&server, "bob", downloads.clone());
            let raw = raw_login(&server, sender);
            Upload {
                server,
                by,
                bob,
                downloads,
                sender,
                raw,
            }
        }

        /// The sender continues on a new connection.
        fn reconnect(&mut self) {
            let mut raw = Raw::connect(&self.server);
            let login = format!("LOGIN {0} pw-{0}", self.sender);
            expect_ok(raw.request(&login), "LOGIN again");
            self.raw = raw;
        }

        /// A proper file from the sender arrives whole, as the
        /// conversation's message `seq`, and is the only file saved.
        fn proper_file_arrives(&mut self, seq: u64) {
            let data = b"a proper file after all that".to_vec();
            let sent_at = raw_send_file(&mut self.raw, "bob", "proper.txt", &data, &sha256(&data));
            assert_eq!(sent_at, at(&format!("@bob:{seq}")));
            let got = expect_file_received(&self.bob);
            assert_eq!(got.at, at(&format!("@{}:{seq}", self.sender)));
            assert_eq!(fs::read(&got.path).unwrap(), data);
            assert_eq!(entries(&self.downloads), ["proper.txt"]);
        }

        /// Nobody heard of a file, and none was saved.
        fn nothing_arrived(&self) {
            assert_no_event(&self.bob);
            assert!(
                entries(&self.downloads).is_empty(),
                "left {:?}",
                entries(&self.downloads)
            );
        }
    }

    /// Changed: a chunk before login used to get `FILE_ABORT`; an
    /// unanswered request before login now closes the connection.
    #[test]
    fn a_chunk_before_login_closes_the_connection() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let mut raw = Raw::connect(&server);
        send_chunk(&mut raw, 999, 0, b"nothing to see");
        read_until_closed(&mut raw.reader).protocol_error("CHUNK before logging in");
        unharmed(&server, &by, "a chunk before login");
    }

    /// A chunk for a transfer that does not exist is answered once with
    /// `UPLOAD_ABORT` (was `FILE_ABORT`); more for the same id are dropped
    /// quietly.
    #[test]
    fn a_stray_chunk_is_aborted_once() {
        let mut u = Upload::new("mallory");
        send_chunk(&mut u.raw, 998, 0, b"stray");
        let why = expect_upload_abort(&mut u.raw, 998);
        assert!(why.contains("no such transfer"), "{why}");
        send_chunk(&mut u.raw, 998, 100, b"stray again");
        // The next thing read is the LIST reply, not another abort.
        expect_ok(u.raw.request("LIST"), "LIST after stray chunks");
        u.nothing_arrived();
        unharmed(&u.server, &u.by, "stray chunks");
    }

    /// A chunk that breaks the announced transfer aborts it: the sender is
    /// told (`UPLOAD_ABORT`), nobody else ever hears of the file, the
    /// transfer is gone, and a proper file sent next takes the
    /// conversation's first place (the aborted one took none).
    fn misfit(size: u64, chunks: &[(u64, usize)]) {
        let mut u = Upload::new("mallory");
        let id = announce(&mut u.raw, "bob", size, &[3; 32], "victim.txt");
        for &(offset, len) in chunks {
            send_chunk(&mut u.raw, id, offset, &vec![b'z'; len]);
        }
        let why = expect_upload_abort(&mut u.raw, id);
        assert!(why.contains("announced size"), "{why}");
        // Later chunks of it are dropped quietly; it cannot be ended.
        send_chunk(&mut u.raw, id, 0, b"late");
        expect_err(
            u.raw.request(&format!("FILE_END {id}")),
            ErrorCode::NoSuchTransfer,
            "FILE_END after the abort",
        );
        expect_ok(u.raw.request("LIST"), "LIST");
        u.nothing_arrived();
        unharmed(&u.server, &u.by, "a chunk that does not fit");
        // On a new connection: the same one is the ignored test below.
        u.reconnect();
        u.proper_file_arrives(1);
    }

    const C: usize = FILE_CHUNK_SIZE;

    #[test]
    fn a_chunk_past_the_announced_size() {
        misfit(10, &[(0, 100)]);
    }

    #[test]
    fn a_chunk_at_the_announced_end() {
        misfit(10, &[(0, 10), (10, 1)]);
    }

    #[test]
    fn a_chunk_shorter_than_its_share() {
        misfit(2 * C as u64, &[(0, C - 100)]);
    }

    #[test]
    fn a_chunk_replayed_at_an_old_offset() {
        misfit(2 * C as u64, &[(0, C), (0, C)]);
    }

    #[test]
    fn a_chunk_skipping_ahead() {
        misfit(3 * C as u64, &[(0, C), (2 * C as u64, C)]);
    }

    #[test]
    fn a_chunk_for_a_file_announced_empty() {
        misfit(0, &[(0, 1)]);
    }

    /// The old file's control after the misfit chunks: the same connection
    /// can still send a proper file.
    #[test]
    fn a_proper_file_after_an_aborted_upload_on_the_same_connection() {
        let mut u = Upload::new("mallory");
        let id = announce(&mut u.raw, "bob", 10, &[3; 32], "victim.txt");
        send_chunk(&mut u.raw, id, 0, &[b'z'; 100]);
        expect_upload_abort(&mut u.raw, id);
        u.proper_file_arrives(1);
        assert_no_event(&u.bob);
        unharmed(&u.server, &u.by, "an aborted upload");
    }

    /// The same through the path an honest client takes: it cancels an
    /// upload (its file shrank while being read), then sends again.
    #[test]
    fn a_proper_file_after_a_cancelled_upload_on_the_same_connection() {
        let mut u = Upload::new("mallory");
        let id = announce(&mut u.raw, "bob", 2 * C as u64, &[3; 32], "shrank.txt");
        send_chunk(&mut u.raw, id, 0, &[b'z'; C]);
        u.raw.send(&format!("FILE_ABORT {id}"));
        expect_upload_abort(&mut u.raw, id);
        expect_ok(next_reply(&mut u.raw, "FILE_ABORT"), "FILE_ABORT");
        u.proper_file_arrives(1);
        assert_no_event(&u.bob);
        unharmed(&u.server, &u.by, "a cancelled upload");
    }

    /// A stray chunk names an id no upload has yet; the connection's next
    /// upload may well be given that id, and must not suffer for it.
    #[test]
    fn a_stray_chunk_does_not_spoil_the_upload_later_given_its_id() {
        let mut u = Upload::new("mallory");
        // Transfer ids are handed out in order from 1 on a new server.
        send_chunk(&mut u.raw, 1, 0, b"stray");
        let why = expect_upload_abort(&mut u.raw, 1);
        assert!(why.contains("no such transfer"), "{why}");
        u.proper_file_arrives(1);
        assert_no_event(&u.bob);
        unharmed(&u.server, &u.by, "a stray chunk");
    }

    /// A malformed chunk cannot be answered (chunks get no reply), so it
    /// ends that connection with a BYE; the upload open on it is dropped,
    /// and leaves nothing: nobody hears of it, and the conversation it was
    /// for stays empty.
    fn malformed(frame: impl FnOnce(u64) -> Frame) {
        let mut u = Upload::new("chunker");
        let id = announce(&mut u.raw, "bob", 10, &[4; 32], "open.txt");
        u.raw.send_frame(&frame(id));
        let closed = read_until_closed(&mut u.raw.reader);
        closed.protocol_error("malformed");
        for m in &closed.after_bye {
            assert!(
                matches!(m, ServerMessage::UploadAbort(got, _) if *got == id),
                "after the BYE: {m:?}"
            );
        }
        u.nothing_arrived();
        let history = ok(&u.bob, "HISTORY chunker");
        assert!(history.starts_with("0 messages"), "{history}");
        unharmed(&u.server, &u.by, "a malformed chunk");
    }

    #[test]
    fn a_chunk_without_a_body() {
        malformed(|id| head(format!("CHUNK {id} 0 {}", key())));
    }

    #[test]
    fn a_chunk_with_a_bad_key() {
        malformed(|id| with_body(format!("CHUNK {id} 0 {}", "!".repeat(32))));
    }

    #[test]
    fn a_chunk_with_a_bad_id() {
        malformed(|_| with_body(format!("CHUNK x 0 {}", key())));
    }

    #[test]
    fn a_chunk_without_an_offset() {
        malformed(|id| with_body(format!("CHUNK {id} {}", key())));
    }

    #[test]
    fn a_chunk_in_lower_case_with_a_negative_offset() {
        malformed(|id| with_body(format!("chunk {id} -1 {}", key())));
    }

    #[test]
    fn a_chunk_over_the_chunk_limit() {
        malformed(|id| {
            let k = ContentKey::random();
            Frame::with_body(
                format!("CHUNK {id} 0 {}", k.to_b64()),
                k.seal(&vec![0; FILE_CHUNK_SIZE + 8]),
            )
        });
    }

    #[test]
    fn a_chunk_with_an_enveloped_body() {
        malformed(|id| with_enveloped_body(format!("CHUNK {id} 0 {}", key())));
    }

    /// New: transfer ids are numbers anyone can guess. Another connection
    /// meddling with alice's open upload (`attack` gets its id) changes
    /// nothing for her: her file still arrives whole.
    fn someone_elses_transfer(attack: impl FnOnce(&mut Raw, u64)) {
        let server = start_server();
        let by = Bystanders::new(&server);
        let downloads = server.path("theirs").join("downloads");
        let bob = client_with_downloads(&server, "bob", downloads.clone());
        let mut alice = raw_login(&server, "alice");
        let mut mallory = raw_login(&server, "mallory");
        let data: Vec<u8> = (0..2 * C + 5).map(|i| (i % 251) as u8).collect();
        let id = announce(
            &mut alice,
            "bob",
            data.len() as u64,
            &sha256(&data),
            "hers.bin",
        );
        send_chunk(&mut alice, id, 0, &data[..C]);
        attack(&mut mallory, id);
        expect_ok(mallory.request("LIST"), "mallory LIST");
        send_chunk(&mut alice, id, C as u64, &data[C..2 * C]);
        send_chunk(&mut alice, id, 2 * C as u64, &data[2 * C..]);
        assert_eq!(file_end(&mut alice, id), at("@bob:1"));
        let got = expect_file_received(&bob);
        assert_eq!((got.at, got.from.as_str()), (at("@alice:1"), "alice"));
        assert!(
            fs::read(&got.path).unwrap() == data,
            "alice's file arrived changed"
        );
        assert_no_event(&bob);
        unharmed(&server, &by, "meddling with someone else's transfer");
    }

    #[test]
    fn a_chunk_for_someone_elses_transfer() {
        someone_elses_transfer(|mallory, id| {
            send_chunk(mallory, id, C as u64, &[b'X'; C]);
            let why = expect_upload_abort(mallory, id);
            assert!(why.contains("no such transfer"), "{why}");
        });
    }

    #[test]
    fn file_end_of_someone_elses_transfer() {
        someone_elses_transfer(|mallory, id| {
            expect_err(
                mallory.request(&format!("FILE_END {id}")),
                ErrorCode::NoSuchTransfer,
                "FILE_END",
            );
        });
    }

    #[test]
    fn file_abort_of_someone_elses_transfer() {
        someone_elses_transfer(|mallory, id| {
            expect_err(
                mallory.request(&format!("FILE_ABORT {id}")),
                ErrorCode::NoSuchTransfer,
                "FILE_ABORT",
            );
        });
    }
}

// ---------------------------------------------------------------------------
// 6b. Acknowledgements and pongs: only your own, and a malformed one
// cannot be answered
// ---------------------------------------------------------------------------

mod acks {
    use super::*;

    /// Changed: an ACK before login used to be ignored; an unanswered
    /// request before login now closes the connection.
    #[test]
    fn an_ack_before_login_is_ignored() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let mut raw = Raw::connect(&server);
        // A client may still be acknowledging what it got before LOGOUT.
        raw.send("ACK @bob:1,#devs:2");
        assert!(raw.request("HELP").is_ok());
        unharmed(&server, &by, "an ACK before login");
    }

    /// Mallory acknowledges conversations that are not hers (and her own
    /// with the same names, far ahead): bob's waiting messages stay his.
    #[test]
    fn acks_of_other_peoples_conversations_change_nothing() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let alice = login(&server, "alice");
        ok(&alice, "CREATE_GROUP secret");
        {
            let bob = login(&server, "bob");
            ok(&bob, "JOIN secret");
        } // bob is offline from here on
        assert_eq!(sent(&alice, "SEND bob for bob only"), [at("@bob:1")]);
        assert_eq!(
            sent(&alice, "SEND_TO_GROUP secret for the group only"),
            [at("#secret:1")]
        );

        let mut mallory = raw_login(&server, "mallory");
        let many: Vec<String> = (1..=MAX_ACK_REFS)
            .map(|i| format!("{}:{i}", ["@bob", "@alice", "#secret"][i % 3]))
            .collect();
        for head in [
            "ACK @bob:1".to_string(),
            "ACK @alice:1".to_string(),
            "ACK #secret:1".to_string(),
            "ACK #secret:1000,@bob:1000,@alice:1000".to_string(),
            "ACK @mallory:1000".to_string(),
            format!("ACK {}", many.join(",")),
        ] {
            mallory.send(&head);
        }
        // A stored message after the ACKs: the store applies writes in
        // order, so once it is answered the ACKs have been applied.
        sent_refs(raw_send_text(&mut mallory, "alice", "barrier"), "SEND");
        let got = next_message(&alice);
        assert_eq!(
            (got.from.as_str(), got.text.as_str()),
            ("mallory", "barrier")
        );

        let bob = login_again(&server, "bob");
        let mut got = vec![next_message(&bob), next_message(&bob)];
        got.sort_by(|a, b| a.at.cmp(&b.at));
        let msg = |at: &str, text: &str| Msg {
            at: at.into(),
            from: "alice".into(),
            text: text.into(),
        };
        assert_eq!(
            got,
            [
                msg("#secret:1", "for the group only"),
                msg("@alice:1", "for bob only")
            ],
            "mallory's ACKs removed bob's waiting messages"
        );
        assert_no_event(&bob);
        unharmed(&server, &by, "ACKs of others' conversations");
    }

    /// An acknowledgement never moves a cursor past what that connection
    /// was actually sent.
    #[test]
    fn an_ack_past_what_the_connection_was_sent_moves_nothing() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let alice = login(&server, "alice");
        ok(&alice, "CREATE_GROUP g");
        let mut bob = raw_login(&server, "bob");
        expect_ok(bob.request("JOIN g"), "JOIN");
        assert_eq!(sent(&alice, "SEND bob one"), [at("@bob:1")]);
        match bob.recv() {
            ServerMessage::Msg(d) => assert_eq!(d.at, at("@alice:1")),
            other => panic!("expected alice's message, got {other:?}"),
        }
        // Sent @alice:1 and nothing in #g, bob claims far more.
        bob.send("ACK @alice:3,#g:50");
        expect_ok(bob.request("HELP"), "HELP after the ACK");
        sent(&alice, "SEND bob two");
        sent(&alice, "SEND bob three");
        sent(&alice, "SEND_TO_GROUP g to the group");
        drop(bob); // without acknowledging anything more

        let bob = login_again(&server, "bob");
        let mut got: Vec<Msg> = (0..3).map(|_| next_message(&bob)).collect();
        got.sort_by(|a, b| a.at.cmp(&b.at));
        let msg = |at: &str, text: &str| Msg {
            at: at.into(),
            from: "alice".into(),
            text: text.into(),
        };
        assert_eq!(
            got,
            [
                msg("#g:1", "to the group"),
                msg("@alice:2", "two"),
                msg("@alice:3", "three")
            ],
            "an ACK ahead of what was sent dropped messages"
        );
        assert_no_event(&bob);
        unharmed(&server, &by, "an ACK ahead of what was sent");
    }

    /// Control: an ACK of the most references allowed is accepted (and,
    /// like every ACK, not answered).
    #[test]
    fn an_ack_of_the_most_references_is_accepted() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let mut raw = raw_login(&server, "acker");
        let refs: Vec<String> = (1..=MAX_ACK_REFS).map(|i| format!("#g{i}:{i}")).collect();
        raw.send(&format!("ACK {}", refs.join(",")));
        expect_ok(raw.request("LIST"), "LIST after the ACK");
        still_delivers(&mut raw, "acker", &by);
        unharmed(&server, &by, "a long ACK");
    }

    /// A malformed unanswered request (ACK, PONG) cannot be answered, so it
    /// ends that connection with a BYE.
    fn malformed(frame: Frame) {
        let server = start_server();
        let by = Bystanders::new(&server);
        let mut raw = raw_login(&server, "acker");
        raw.send_frame(&frame);
        let closed = read_until_closed(&mut raw.reader);
        closed.protocol_error("malformed");
        assert!(closed.after_bye.is_empty(), "{closed:?}");
        unharmed(&server, &by, "a malformed ACK or PONG");
    }

    macro_rules! malformed {
        ($($name:ident: $frame:expr,)*) => {$(
            #[test]
            fn $name() {
                malformed($frame);
            }
        )*};
    }

    malformed! {
        ack_without_references: head("ACK"),
        ack_of_a_word: head("ACK x"),
        ack_of_a_bare_number_as_in_muchat_2: head("ACK 17"),
        ack_with_an_empty_item: head("ACK #a:1,,#a:2"),
        ack_of_two_words: head("ACK #a:1 #a:2"),
        ack_in_lower_case_of_a_negative_number: head("ack #a:-1"),
        ack_without_a_sequence_number: head("ACK #a:"),
        ack_of_a_sequence_number_past_u64: head("ACK #a:18446744073709551616"),
        ack_of_a_bad_name: head("ACK @../x:1"),
        ack_of_too_many_references: head(format!(
            "ACK {}",
            (0..=MAX_ACK_REFS).map(|i| format!("#a:{i}")).collect::<Vec<_>>().join(",")
        )),
        ack_with_a_body: with_body("ACK #a:1"),
        pong_without_a_number: head("PONG"),
        pong_of_a_word: head("PONG x"),
        pong_of_two_numbers: head("PONG 1 2"),
        pong_with_a_body: with_body("PONG 1"),
    }

    /// New: PONG needs no login and gets no reply; one out of the blue
    /// changes nothing.
    #[test]
    fn a_pong_before_login_gets_no_reply() {
        let server = start_server();
        let by = Bystanders::new(&server);
        let mut raw = Raw::connect(&server);
        raw.send("PONG 7");
        // The next thing read is HELP's reply.
        expect_ok(raw.request("HELP"), "HELP after PONG");
        register_and_login(&mut raw, "eve");
        still_delivers(&mut raw, "eve", &by);
        unharmed(&server, &by, "a PONG before login");
    }
}

// ---------------------------------------------------------------------------
// 7. Hostile file names
// ---------------------------------------------------------------------------

mod file_names {
    use super::*;

    /// bob's downloads at base/a/b/c/downloads, with decoy directories
    /// where a traversal would land, so that a client that followed the
    /// names would succeed and be caught rather than fail on a missing
    /// directory; mallory sends.
    struct Target {
        server: TestServer,
        by: Bystanders,
        base: PathBuf,
        downloads: PathBuf,
        bob: Client,
        raw: Raw,
    }

    impl Target {
        fn new() -> Target {
            let server = start_server();
            let by = Bystanders::new(&server);
            let base = server.path("hostile");
            let downloads = base.join("a").join("b").join("c").join("downloads");
            fs::create_dir_all(base.join("a").join("b").join("etc")).unwrap();
            fs::create_dir_all(base.join("abs")).unwrap();
            let bob = client_with_downloads(&server, "bob", downloads.clone());
            let raw = raw_login(&server, "mallory");
            Target {
                server,
                by,
                base,
                downloads,
                bob,
                raw,
            }
        }

        /// Sends `data` named `name`; it must land directly inside the
        /// downloads directory, whole, under a name that is not hidden.
        /// Returns the saved name and where the file went.
        fn send(&mut self, name: &str, data: &[u8]) -> (String, Received) {
            let sent_at = raw_send_file(&mut self.raw, "bob", name, data, &sha256(data));
            let got = expect_file_received(&self.bob);
            assert_eq!(got.at.seq, sent_at.seq, "{name:?}");
            assert_eq!(got.from, "mallory");
            assert_eq!(
                got.path.parent(),
                Some(self.downloads.as_path()),
                "{name:?} saved at {}",
                got.path.display()
            );
            let file_name = got.path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !file_name.starts_with('.'),
                "{name:?}: hidden name {file_name:?}"
            );
            assert_eq!(got.size, data.len() as u64);
            assert!(fs::read(&got.path).unwrap() == data, "{name:?}: content");
            (file_name, got)
        }

        /// Nothing written anywhere but these files, directly in the
        /// downloads directory; no leftovers, decoys untouched.
        fn only(&self, files: &[&Path]) {
            let all = files_under(&self.base);
            let mut want: Vec<PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
            want.sort();
            assert_eq!(all, want, "files written");
            assert!(entries(&self.base.join("a").join("b").join("etc")).is_empty());
            assert!(entries(&self.base.join("abs")).is_empty());
        }

        fn done(self, after: &str) {
            assert_no_event(&self.bob);
            unharmed(&self.server, &self.by, after);
        }
    }

    /// A file named `name` is saved as `want` (`None`: `file-<seq>`).
    fn saved_as(name: &str, want: Option<&str>) {
        let mut t = Target::new();
        let data = format!("content of {name:?}\n").into_bytes();
        let (saved, got) = t.send(name, &data);
        let want = want.map_or_else(|| format!("file-{}", got.at.seq), str::to_string);
        assert_eq!(saved, want, "{name:?}");
        t.only(&[&got.path]);
        t.done(&format!("file name {name:?}"));
    }

    /// This one spans two chunks.
    #[test]
    fn a_relative_path_up_the_tree() {
        let mut t = Target::new();
        let mut data = b"content of a file two chunks long\n".to_vec();
        data.resize(FILE_CHUNK_SIZE + 100, b'#');
        let (saved, got) = t.send("../../etc/passwd", &data);
        assert_eq!(saved, "passwd");
        t.only(&[&got.path]);
        t.done("a relative path up the tree");
    }

    #[test]
    fn an_absolute_path() {
        saved_as("/abs/path", Some("path"));
    }

    #[test]
    fn an_absolute_path_to_a_real_directory() {
        let mut t = Target::new();
        let target = t.base.join("abs").join("owned");
        let name = target.display().to_string();
        let (saved, got) = t.send(&name, b"owned?");
        assert_eq!(saved, "owned");
        assert!(!target.exists());
        t.only(&[&got.path]);
        t.done("an absolute path");
    }

    #[test]
    fn dot_dot() {
        saved_as("..", None);
    }

    #[test]
    fn three_dots() {
        saved_as("...", None);
    }

    #[test]
    fn a_lone_slash() {
        saved_as("/", None);
    }

    #[test]
    fn a_trailing_slash() {
        saved_as("sub/", None);
    }

    #[test]
    fn windows_separators() {
        saved_as("..\\..\\win.ini", Some("win.ini"));
    }

    #[test]
    fn a_long_way_up() {
        saved_as("a/b/../../../../../etc/passwd", Some("passwd"));
    }

    #[test]
    fn a_hidden_name() {
        saved_as(".bashrc", Some("bashrc"));
    }

    #[test]
    fn a_bidi_override() {
        saved_as("evil\u{202E}txt.exe", Some("eviltxt.exe"));
    }

    #[test]
    fn surrounding_spaces() {
        saved_as("  spaced  name.txt  ", Some("spaced  name.txt"));
    }

    /// New: a drive letter or stream name (`:`) is dropped.
    #[test]
    fn a_drive_letter() {
        saved_as("C:evil.txt", Some("Cevil.txt"));
    }

    /// Nothing is overwritten: the second "passwd" gets a new name.
    #[test]
    fn a_second_file_of_the_same_name() {
        let mut t = Target::new();
        let first = b"the first passwd".to_vec();
        let second = b"the second passwd".to_vec();
        let (saved1, got1) = t.send("../../etc/passwd", &first);
        let (saved2, got2) = t.send("a/b/../../../../../etc/passwd", &second);
        assert_eq!((saved1.as_str(), saved2.as_str()), ("passwd", "passwd (1)"));
        assert_eq!(
            fs::read(&got1.path).unwrap(),
            first,
            "the first was overwritten"
        );
        t.only(&[&got1.path, &got2.path]);
        t.done("two files of the same name");
    }

    /// Names the server must refuse outright: control characters, empty.
    fn refused(name: &str) {
        let mut t = Target::new();
        let head = format!(
            "SEND_FILE bob {} 5 {} {name}",
            sid(),
            format_sha256(&[0; 32])
        );
        expect_err(t.raw.request(&head), ErrorCode::Usage, &head);
        expect_ok(t.raw.request("LIST"), "LIST");
        t.only(&[]);
        t.done(&format!("file name {name:?}"));
    }

    #[test]
    fn a_name_with_an_escape_sequence_is_refused() {
        refused("a\u{1b}[2Jb");
    }

    #[test]
    fn a_name_with_a_newline_is_refused() {
        refused("new\nline");
    }

    #[test]
    fn a_name_with_a_tab_is_refused() {
        refused("tab\there");
    }

    #[test]
    fn an_empty_name_is_refused() {
        refused("");
    }
}

// ---------------------------------------------------------------------------
// 8. Files that do not match what was announced
// ---------------------------------------------------------------------------

mod corrupt_files {
    use super::*;

    /// bob with a known downloads directory; mallory sends.
    struct Target {
        server: TestServer,
        by: Bystanders,
        bob: Client,
        downloads: PathBuf,
        raw: Raw,
    }

    impl Target {
        fn new() -> Target {
            let server = start_server();
            let by = Bystanders::new(&server);
            let downloads = server.path("corrupt").join("downloads");
            let bob = client_with_downloads(&server, "bob", downloads.clone());
            let raw = raw_login(&server, "mallory");
            Target {
                server,
                by,
                bob,
                downloads,
                raw,
            }
        }

        /// mallory continues on a new connection (see
        /// `chunks::a_proper_file_after_a_cancelled_upload_on_the_same_connection`).
        fn reconnect(&mut self) {
            let mut raw = Raw::connect(&self.server);
            expect_ok(raw.request("LOGIN mallory pw-mallory"), "LOGIN again");
            self.raw = raw;
        }

        /// bob refuses the file at `seq` (nothing kept); returns why.
        fn refused(&self, seq: u64) -> String {
            let reason = expect_file_failed(&self.bob, &at(&format!("@mallory:{seq}")));
            assert!(
                entries(&self.downloads).is_empty(),
                "leftovers: {:?}",
                entries(&self.downloads)
            );
            reason
        }

        /// Afterwards an honest file still arrives, at `seq`, and is the
        /// only thing saved; nobody else noticed anything.
        fn honest_file_still_arrives(mut self, seq: u64, after: &str) {
            let data = b"honest content".to_vec();
            let sent_at = raw_send_file(&mut self.raw, "bob", "honest.txt", &data, &sha256(&data));
            assert_eq!(sent_at, at(&format!("@bob:{seq}")));
            let got = expect_file_received(&self.bob);
            assert_eq!(got.at, at(&format!("@mallory:{seq}")));
            assert_eq!(fs::read(&got.path).unwrap(), data);
            assert_eq!(entries(&self.downloads), ["honest.txt"]);
            assert_no_event(&self.bob);
            unharmed(&self.server, &self.by, after);
        }
    }

    /// Control: an honest file arrives (so the failures below are the
    /// checks').
    #[test]
    fn an_honest_file_arrives() {
        Target::new().honest_file_still_arrives(1, "an honest file");
    }

    fn wrong_sha256(len: usize) {
        let mut t = Target::new();
        let data = vec![b'q'; len];
        let sent_at = raw_send_file(&mut t.raw, "bob", "wrong-sha.bin", &data, &sha256(b"else"));
        assert_eq!(sent_at, at("@bob:1"));
        let reason = t.refused(1);
        assert!(reason.contains("SHA-256"), "{reason}");
        t.honest_file_still_arrives(2, "a file with the wrong SHA-256");
    }

    #[test]
    fn a_wrong_sha256_in_one_chunk() {
        wrong_sha256(500);
    }

    #[test]
    fn a_wrong_sha256_over_several_chunks() {
        wrong_sha256(2 * FILE_CHUNK_SIZE + 7);
    }

    /// 97 bytes pad to the same ciphertext length as 100, so the server
    /// cannot tell; the receiver must.
    #[test]
    fn fewer_bytes_than_announced() {
        let mut t = Target::new();
        let data = vec![b's'; 97];
        let id = announce(&mut t.raw, "bob", 100, &sha256(&data), "short.txt");
        send_chunk(&mut t.raw, id, 0, &data);
        assert_eq!(file_end(&mut t.raw, id), at("@bob:1"));
        let reason = t.refused(1);
        assert!(reason.contains("97"), "{reason}");
        t.honest_file_still_arrives(2, "a short file");
    }

    /// A chunk whose body is not under the key its head names: the server
    /// cannot tell; the receiver must.
    #[test]
    fn a_chunk_under_another_key() {
        let mut t = Target::new();
        let data = vec![b'k'; 64];
        let id = announce(&mut t.raw, "bob", 64, &sha256(&data), "wrong-key.txt");
        let body = ContentKey::random().seal(&data);
        send_with_body(&mut t.raw, &format!("CHUNK {id} 0 {}", key()), &body);
        assert_eq!(file_end(&mut t.raw, id), at("@bob:1"));
        t.refused(1);
        t.honest_file_still_arrives(2, "a chunk under another key");
    }

    /// Reads the `UPLOAD_ABORT` for `id` and a reply, in either order.
    fn upload_abort_and_reply(raw: &mut Raw, id: u64) -> (String, Reply) {
        let (mut why, mut reply) = (None, None);
        for _ in 0..2 {
            match raw.recv() {
                ServerMessage::UploadAbort(got, w) if got == id && why.is_none() => why = Some(w),
                ServerMessage::Reply(r) if reply.is_none() => reply = Some(r),
                other => panic!("expected UPLOAD_ABORT {id} and a reply, got {other:?}"),
            }
        }
        (why.unwrap(), reply.unwrap())
    }

    fn half_a_file(t: &mut Target) -> u64 {
        let data = vec![b'h'; 3 * FILE_CHUNK_SIZE];
        let id = announce(
            &mut t.raw,
            "bob",
            data.len() as u64,
            &sha256(&data),
            "half.bin",
        );
        send_chunk(&mut t.raw, id, 0, &data[..FILE_CHUNK_SIZE]);
        id
    }

    /// Changed: the recipient used to see the download fail; now files are
    /// stored whole before anyone hears of them, so nobody does.
    #[test]
    fn an_upload_cancelled_midway_leaves_nothing() {
        let mut t = Target::new();
        let id = half_a_file(&mut t);
        t.raw.send(&format!("FILE_ABORT {id}"));
        let (why, reply) = upload_abort_and_reply(&mut t.raw, id);
        assert!(why.contains("cancelled"), "{why}");
        expect_ok(reply, "FILE_ABORT");
        expect_err(
            t.raw.request(&format!("FILE_END {id}")),
            ErrorCode::NoSuchTransfer,
            "FILE_END after FILE_ABORT",
        );
        assert_no_event(&t.bob);
        t.reconnect();
        t.honest_file_still_arrives(1, "a cancelled upload");
    }

    /// New: `FILE_END` before every chunk came cancels the upload.
    #[test]
    fn an_upload_ended_early_leaves_nothing() {
        let mut t = Target::new();
        let id = half_a_file(&mut t);
        t.raw.send(&format!("FILE_END {id}"));
        let (why, reply) = upload_abort_and_reply(&mut t.raw, id);
        assert!(why.contains("ended early"), "{why}");
        let text = expect_err(reply, ErrorCode::Usage, "FILE_END early");
        assert!(text.contains("cancelled"), "{text}");
        expect_err(
            t.raw.request(&format!("FILE_END {id}")),
            ErrorCode::NoSuchTransfer,
            "FILE_END again",
        );
        assert_no_event(&t.bob);
        t.reconnect();
        t.honest_file_still_arrives(1, "an upload ended early");
    }

    /// Changed as above: the sender vanishing midway leaves nothing either.
    #[test]
    fn a_sender_vanishing_midway_leaves_nothing() {
        let mut t = Target::new();
        half_a_file(&mut t);
        // A round trip proves the chunk was taken before we hang up.
        expect_ok(t.raw.request("LIST"), "LIST");
        t.reconnect(); // the first connection closes here
        assert_no_event(&t.bob);
        t.honest_file_still_arrives(1, "a sender that vanished");
    }
}
