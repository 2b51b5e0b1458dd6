//! Property-based fuzzing of every parser that sees untrusted input: random
//! and mutated input must give an error or a value, never a panic, and the
//! properties the protocol relies on must hold (a sealed frame opens to what
//! was sealed; any change to a sealed line is rejected; a request survives
//! its own wire form).
//!
//! Bounded: a few thousand cases in all, fixed per test, so the suite stays
//! well under 30 seconds in the dev profile (it takes well under a second).
//! `PROPTEST_CASES=N` sets every count to N, for a longer local run.
//!
//! The cargo-fuzz targets in `fuzz/` share their bodies with this file (see
//! `fuzz/src/lib.rs`), so those bodies are compiled and run here on every
//! `cargo test`.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_bodies;

use std::io::Cursor;

use num_bigint::BigUint;
use proptest::collection::vec;
use proptest::prelude::*;

use fuzz_bodies::keys;
use muchat::command::Command;
use muchat::content::{Body, ContentKey};
use muchat::dh::{self, EphemeralSecret, StaticSecret};
use muchat::event::{Delivery, ErrorCode, FileStart, Reply, ServerMessage};
use muchat::frame::{Frame, FrameError, Opener, Sealer, MAX_HEAD_LEN, MAX_LINE_LEN};
use muchat::handshake;
use muchat::identity::Fingerprint;
use muchat::names::{Conversation, GroupName, Username, MAX_NAME_LEN};
use muchat::request::{
    self, FileOffer, FileTarget, HistoryTarget, Request, MAX_HISTORY, MAX_MESSAGE_LEN,
};

/// `cases` cases, and no regression files written into the tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// A valid user or group name, in any letter case.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
        .prop_filter("`file` is reserved", |s| !s.eq_ignore_ascii_case("file"))
}

fn username() -> impl Strategy<Value = Username> {
    name().prop_map(|s| Username::parse(&s).expect("valid name"))
}

fn group() -> impl Strategy<Value = GroupName> {
    name().prop_map(|s| GroupName::parse(&s).expect("valid name"))
}

/// One to four groups without repeats (the parser drops repeats).
fn groups() -> impl Strategy<Value = Vec<GroupName>> {
    vec(group(), 1..5).prop_map(|gs| {
        let mut out: Vec<GroupName> = Vec::new();
        for g in gs {
            if !out.contains(&g) {
                out.push(g);
            }
        }
        out
    })
}

fn conversation() -> impl Strategy<Value = Conversation> {
    prop_oneof![
        username().prop_map(Conversation::User),
        group().prop_map(Conversation::Group),
    ]
}

/// A display name or password (`spaces`: a file name): any characters but
/// control characters, at most 60 of them (so at most 240 bytes).
fn field(spaces: bool) -> impl Strategy<Value = String> {
    if spaces {
        "[^\\p{Cc}]{1,60}"
    } else {
        "[^ \\p{Cc}]{1,60}"
    }
}

fn content_key() -> impl Strategy<Value = ContentKey> {
    any::<[u8; 24]>().prop_map(ContentKey::from_bytes)
}

/// A body sealed under some key, of up to `max` plaintext bytes.
fn body(max: usize) -> impl Strategy<Value = Body> {
    (
        any::<[u8; 24]>(),
        any::<[u8; 8]>(),
        vec(any::<u8>(), 0..max),
    )
        .prop_map(|(k, iv, data)| ContentKey::from_bytes(k).seal_with_iv(&iv, &data))
}

fn history_target() -> impl Strategy<Value = HistoryTarget> {
    prop_oneof![
        username().prop_map(HistoryTarget::User),
        group().prop_map(HistoryTarget::Group),
        username().prop_map(|u| HistoryTarget::Either(u.to_string())),
    ]
}

/// Any valid request.
fn valid_request() -> impl Strategy<Value = Request> {
    let file_target = prop_oneof![
        username().prop_map(FileTarget::User),
        groups().prop_map(FileTarget::Groups),
    ];
    prop_oneof![
        (field(false), username(), field(false)).prop_map(|(name, username, password)| {
            Request::CreateUser {
                name,
                username,
                password,
            }
        }),
        (username(), field(false))
            .prop_map(|(username, password)| Request::Login { username, password }),
        group().prop_map(Request::CreateGroup),
        group().prop_map(Request::Join),
        group().prop_map(Request::Leave),
        Just(Request::List),
        Just(Request::Help),
        Just(Request::Logout),
        Just(Request::Quit),
        (username(), content_key(), body(300)).prop_map(|(to, key, body)| Request::Send {
            to,
            key,
            body
        }),
        (groups(), content_key(), body(300)).prop_map(|(groups, key, body)| Request::SendToGroup {
            groups,
            key,
            body
        }),
        (file_target, any::<u64>(), any::<[u8; 32]>(), field(true)).prop_map(
            |(target, size, sha256, name)| Request::SendFile(FileOffer {
                target,
                size,
                sha256,
                name,
            })
        ),
        (any::<u64>(), any::<u64>(), content_key(), body(300)).prop_map(
            |(transfer, offset, key, body)| Request::Chunk {
                transfer,
                offset,
                key,
                body,
            }
        ),
        any::<u64>().prop_map(Request::FileEnd),
        any::<u64>().prop_map(Request::FileAbort),
        vec(any::<u64>(), 1..40).prop_map(Request::Ack),
        any::<u64>().prop_map(Request::Pong),
        (history_target(), 1..=MAX_HISTORY)
            .prop_map(|(with, limit)| Request::History { with, limit }),
    ]
}

/// The wire codes of [`ErrorCode`].
const CODES: [&str; 18] = [
    "UNKNOWN_COMMAND",
    "USAGE",
    "BAD_NAME",
    "NOT_LOGGED_IN",
    "ALREADY_LOGGED_IN",
    "USER_EXISTS",
    "LOGIN_FAILED",
    "UNKNOWN_USER",
    "GROUP_EXISTS",
    "NO_SUCH_GROUP",
    "NOT_MEMBER",
    "ALREADY_MEMBER",
    "TOO_LARGE",
    "NO_SUCH_TRANSFER",
    "QUOTA_EXCEEDED",
    "STORAGE",
    "RATE_LIMITED",
    "TOO_MANY_GROUPS",
];

/// Any valid server message (free text is any text at all).
fn valid_server_message() -> impl Strategy<Value = ServerMessage> {
    let code = proptest::sample::select(CODES.to_vec())
        .prop_map(|c| ErrorCode::parse(c).expect("known code"));
    let delivery = (
        any::<u64>(),
        any::<u64>(),
        username(),
        conversation(),
        content_key(),
        body(300),
    )
        .prop_map(|(id, at_ms, from, to, key, body)| Delivery {
            id,
            at_ms,
            from,
            to,
            key,
            body,
        })
        .boxed();
    let file = (
        any::<u64>(),
        any::<u64>(),
        username(),
        conversation(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<String>(),
    )
        .prop_map(|(id, at_ms, from, to, size, sha256, name)| FileStart {
            id,
            at_ms,
            from,
            to,
            size,
            sha256,
            name,
        })
        .boxed();
    prop_oneof![
        any::<String>().prop_map(|t| ServerMessage::Reply(Reply::Ok(t))),
        (code, any::<String>()).prop_map(|(c, t)| ServerMessage::Reply(Reply::Err(c, t))),
        delivery.clone().prop_map(ServerMessage::Msg),
        delivery.prop_map(ServerMessage::History),
        file.clone().prop_map(ServerMessage::File),
        file.prop_map(ServerMessage::HistoryFile),
        (any::<u64>(), any::<u64>(), content_key(), body(300)).prop_map(
            |(id, offset, key, body)| ServerMessage::Chunk {
                id,
                offset,
                key,
                body,
            }
        ),
        any::<u64>().prop_map(ServerMessage::FileEnd),
        (any::<u64>(), any::<String>()).prop_map(|(id, why)| ServerMessage::FileAbort(id, why)),
        any::<u64>().prop_map(ServerMessage::Ping),
        any::<String>().prop_map(ServerMessage::Bye),
    ]
}

/// Every verb either side knows, in odd cases too, to reach deep into the
/// parsers from random text.
const VERBS: [&str; 28] = [
    "CREATE_USER",
    "LOGIN",
    "CREATE_GROUP",
    "JOIN",
    "LEAVE",
    "LIST",
    "HELP",
    "LOGOUT",
    "QUIT",
    "SEND",
    "SEND_TO_GROUP",
    "SEND_FILE",
    "SEND_TO_GROUP_FILE",
    "CHUNK",
    "FILE_END",
    "FILE_ABORT",
    "ACK",
    "PONG",
    "HISTORY",
    "OK",
    "ERR",
    "MSG",
    "HIST",
    "FILE",
    "HIST_FILE",
    "PING",
    "BYE",
    "send file",
];

/// Text that is likely to be almost a command: a verb (any case) and a few
/// tokens mixing names, numbers, keys, control and bidi characters.
fn head_text() -> impl Strategy<Value = String> {
    let verb = proptest::sample::select(VERBS.to_vec());
    let token = prop_oneof![
        name(),
        "[0-9]{1,25}",
        "[-+]?[0-9]{1,3}",
        "[A-Za-z0-9+/]{30,34}=?",
        "[0-9a-fA-F]{64}",
        "[@#,]?[A-Za-z0-9_.,-]{0,12}",
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069} .]{0,4}",
        any::<String>(),
    ];
    (
        verb,
        any::<bool>(),
        vec(token, 0..6),
        "[ ]{1,2}",
        any::<bool>(),
    )
        .prop_map(|(verb, lower, tokens, sep, trailing)| {
            let mut head = if lower {
                verb.to_lowercase()
            } else {
                verb.to_string()
            };
            for t in tokens {
                head.push_str(&sep);
                head.push_str(&t);
            }
            if trailing {
                head.push(' ');
            }
            head
        })
}

/// A text edit: one applied to a valid head gives a plausible invalid one.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, char),
    Replace(usize, char),
    Truncate(usize),
    DuplicateFrom(usize),
    SwapWords(usize, usize),
    FlipCase,
    DoubleSpace(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        Just(' '),
        Just(','),
        Just('@'),
        Just('#'),
        Just('0'),
        Just('\u{1b}'),
        Just('\n'),
        Just('\u{202e}'),
        any::<char>(),
    ];
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
        (any::<usize>(), ch).prop_map(|(i, c)| Edit::Replace(i, c)),
        any::<usize>().prop_map(Edit::Truncate),
        any::<usize>().prop_map(Edit::DuplicateFrom),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapWords(a, b)),
        Just(Edit::FlipCase),
        any::<usize>().prop_map(Edit::DoubleSpace),
    ]
}

fn apply_edit(s: &str, e: &Edit) -> String {
    let mut c: Vec<char> = s.chars().collect();
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match e {
        Edit::Delete(i) if !c.is_empty() => {
            let i = at(*i, c.len());
            c.remove(i);
        }
        Edit::Insert(i, ch) => {
            let i = at(*i, c.len() + 1);
            c.insert(i, *ch);
        }
        Edit::Replace(i, ch) if !c.is_empty() => {
            let i = at(*i, c.len());
            c[i] = *ch;
        }
        Edit::Truncate(i) => c.truncate(at(*i, c.len() + 1)),
        Edit::DuplicateFrom(i) => {
            let tail: Vec<char> = c[at(*i, c.len() + 1)..].to_vec();
            c.extend(tail);
        }
        Edit::SwapWords(a, b) => {
            let text: String = c.iter().collect();
            let mut words: Vec<&str> = text.split(' ').collect();
            let (a, b) = (at(*a, words.len()), at(*b, words.len()));
            words.swap(a, b);
            return words.join(" ");
        }
        Edit::FlipCase => {
            return c
                .iter()
                .map(|ch| {
                    if ch.is_ascii_uppercase() {
                        ch.to_ascii_lowercase()
                    } else {
                        ch.to_ascii_uppercase()
                    }
                })
                .collect()
        }
        Edit::DoubleSpace(i) => {
            let spaces: Vec<usize> = (0..c.len()).filter(|&j| c[j] == ' ').collect();
            if !spaces.is_empty() {
                c.insert(spaces[at(*i, spaces.len())], ' ');
            }
        }
        _ => {}
    }
    c.into_iter().collect()
}

/// A byte-level change to a sealed line.
#[derive(Debug, Clone)]
enum LineMutation {
    /// XOR one byte with a non-zero value (a single bit when it is a power of two).
    Xor(usize, u8),
    /// Keep only a proper prefix.
    Truncate(usize),
    /// Drop a proper prefix.
    DropFront(usize),
    /// The line twice, or a piece of it repeated.
    Duplicate(usize, usize),
    /// A `.` inserted anywhere.
    InsertDot(usize),
    /// Base64-looking garbage inserted anywhere.
    InsertGarbage(usize, String),
    /// Base64-looking garbage in place of one segment.
    ReplaceSegment(usize, String),
}

fn line_mutation() -> impl Strategy<Value = LineMutation> {
    let garbage = "[A-Za-z0-9+/=.]{1,60}";
    prop_oneof![
        (any::<usize>(), 0u32..8).prop_map(|(i, bit)| LineMutation::Xor(i, 1 << bit)),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| LineMutation::Xor(i, x)),
        any::<usize>().prop_map(LineMutation::Truncate),
        any::<usize>().prop_map(LineMutation::DropFront),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineMutation::Duplicate(a, b)),
        any::<usize>().prop_map(LineMutation::InsertDot),
        (any::<usize>(), garbage).prop_map(|(i, g)| LineMutation::InsertGarbage(i, g)),
        (0usize..3, "[A-Za-z0-9+/=]{0,60}").prop_map(|(i, g)| LineMutation::ReplaceSegment(i, g)),
    ]
}

fn mutate_line(line: &[u8], m: &LineMutation) -> Vec<u8> {
    let n = line.len();
    let mut out = line.to_vec();
    match m {
        LineMutation::Xor(i, x) => out[i % n] ^= x,
        LineMutation::Truncate(i) => out.truncate(i % n),
        LineMutation::DropFront(i) => out = line[1 + i % n..].to_vec(),
        LineMutation::Duplicate(a, b) => {
            let (a, b) = (a % (n + 1), b % (n + 1));
            let (from, to) = (a.min(b), a.max(b));
            if from == to {
                out.extend_from_slice(line);
            } else {
                out.splice(to..to, line[from..to].iter().copied());
            }
        }
        LineMutation::InsertDot(i) => out.insert(i % (n + 1), b'.'),
        LineMutation::InsertGarbage(i, g) => {
            let i = i % (n + 1);
            out.splice(i..i, g.bytes());
        }
        LineMutation::ReplaceSegment(which, g) => {
            let text = String::from_utf8(out).expect("sealed lines are ASCII");
            let mut parts: Vec<&str> = text.split('.').collect();
            parts[*which] = g;
            out = parts.join(".").into_bytes();
        }
    }
    out
}

/// Seals one frame under [`keys`], newline removed.
fn seal(sealer: &mut Sealer, head: &str, body: Option<&Body>) -> Vec<u8> {
    let mut out = Vec::new();
    sealer.seal_into(head, body, &mut out);
    assert_eq!(out.pop(), Some(b'\n'));
    out
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// Random bytes never open (that would be a forged MAC) and never panic.
    #[test]
    fn random_lines_are_rejected(line in vec(any::<u8>(), 0..400)) {
        prop_assert!(Opener::new(&keys()).open(&line).is_err());
    }

    /// Lines shaped like frames (`head.body.tag`, base64 everywhere, a
    /// 44-character tag) but made up are rejected.
    #[test]
    fn made_up_frames_are_rejected(
        line in "[A-Za-z0-9+/]{0,80}={0,2}\\.[A-Za-z0-9+/]{0,80}={0,2}\\.[A-Za-z0-9+/]{43}="
    ) {
        let result = Opener::new(&keys()).open(line.as_bytes());
        prop_assert!(result.is_err(), "{:?}", result);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A sealed line opens to exactly what was sealed, once; the same line
    /// changed in any way (bit flips, truncation, duplication, a `.`,
    /// garbage) is rejected by a fresh opener.
    #[test]
    fn sealed_lines_open_and_mutated_ones_do_not(
        head in prop_oneof![head_text(), any::<String>()],
        body in proptest::option::of(body(400)),
        mutations in vec(line_mutation(), 1..12),
    ) {
        let mut sealer = Sealer::new(&keys());
        let mut opener = Opener::new(&keys());
        let line = seal(&mut sealer, &head, body.as_ref());
        prop_assert_eq!(opener.open(&line), Ok(Frame { head: head.clone(), body: body.clone() }));
        prop_assert_eq!(opener.open(&line), Err(FrameError::BadMac), "replay accepted");
        for m in &mutations {
            let bad = mutate_line(&line, m);
            if bad != line {
                let result = Opener::new(&keys()).open(&bad);
                prop_assert!(result.is_err(), "{:?} accepted: {:?}", m, result);
            }
        }
    }

    /// A stream of frames opens in order, also across key rotations; a
    /// dropped, repeated or swapped frame is caught at that point.
    #[test]
    fn frame_streams_keep_their_order(
        heads in vec(head_text(), 2..12),
        rekey_blocks in 2u64..40,
        victim in any::<usize>(),
    ) {
        let mut sealer = Sealer::with_rekey_blocks(&keys(), rekey_blocks);
        let lines: Vec<Vec<u8>> = heads.iter().map(|h| seal(&mut sealer, h, None)).collect();
        let mut opener = Opener::with_rekey_blocks(&keys(), rekey_blocks);
        for (line, head) in lines.iter().zip(&heads) {
            prop_assert_eq!(&opener.open(line).expect("in order").head, head);
        }
        let v = victim % (lines.len() - 1);
        // Drop frame v: frame v+1 arrives in its place.
        let mut dropped = Opener::with_rekey_blocks(&keys(), rekey_blocks);
        for line in &lines[..v] {
            prop_assert!(dropped.open(line).is_ok());
        }
        prop_assert_eq!(dropped.open(&lines[v + 1]), Err(FrameError::BadMac));
        // Repeat frame v.
        let mut repeated = Opener::with_rekey_blocks(&keys(), rekey_blocks);
        for line in &lines[..=v] {
            prop_assert!(repeated.open(line).is_ok());
        }
        prop_assert_eq!(repeated.open(&lines[v]), Err(FrameError::BadMac));
    }

    /// Arbitrary heads encrypted and tagged correctly: the frame opens
    /// exactly when the head is UTF-8 within the limit (see the fuzz body).
    #[test]
    fn authentic_frames_with_arbitrary_contents(data in vec(any::<u8>(), 0..600)) {
        for mode in [1u8, 2, 3] {
            let mut input = vec![mode];
            input.extend_from_slice(&data);
            fuzz_bodies::frame_decoder(&input);
        }
    }

    /// The frame decoder's fuzz body on random input.
    #[test]
    fn fuzz_body_frame_decoder(data in vec(any::<u8>(), 0..600)) {
        fuzz_bodies::frame_decoder(&data);
    }
}

/// Every single-bit change anywhere in a sealed line, with and without a
/// body, is rejected.
#[test]
fn every_single_bit_flip_is_rejected() {
    let mut sealer = Sealer::new(&keys());
    let key = ContentKey::from_bytes([9; 24]);
    let body = key.seal_with_iv(&[1; 8], b"the body of a message, a few blocks long");
    let lines = [
        seal(&mut sealer, "LOGIN alice hunter2", None),
        seal(
            &mut sealer,
            "SEND bob AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            Some(&body),
        ),
        seal(&mut sealer, "", None),
    ];
    for (seq, line) in lines.iter().enumerate() {
        let opener_at = |seq: usize| {
            let mut o = Opener::new(&keys());
            for l in &lines[..seq] {
                o.open(l).expect("earlier line opens");
            }
            o
        };
        assert!(opener_at(seq).open(line).is_ok());
        for i in 0..line.len() {
            for bit in 0..8 {
                let mut bad = line.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    opener_at(seq).open(&bad).is_err(),
                    "line {seq}: flipping bit {bit} of byte {i} was accepted"
                );
            }
        }
    }
}

#[test]
fn over_long_lines_are_refused_before_any_work() {
    let mut o = Opener::new(&keys());
    assert_eq!(
        o.open(&vec![b'.'; MAX_LINE_LEN + 1]),
        Err(FrameError::TooLong)
    );
    // A head over the limit is refused even with a valid MAC.
    let long = "x".repeat(MAX_HEAD_LEN + 1);
    let line = seal(&mut Sealer::new(&keys()), &long, None);
    assert_eq!(Opener::new(&keys()).open(&line), Err(FrameError::BadHead));
}

// ---------------------------------------------------------------------------
// Requests and server messages
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// Random heads, with and without bodies: an error or a request that
    /// survives its wire form.
    #[test]
    fn random_requests_never_panic(
        head in prop_oneof![head_text(), any::<String>()],
        body in proptest::option::of(body(300)),
    ) {
        let _ = request::is_unanswered(&head);
        if let Ok(r) = Request::parse(Frame { head, body }) {
            prop_assert_eq!(Request::parse(r.to_frame()), Ok(r.clone()));
        }
    }

    /// Every valid request parses back from its own frame.
    #[test]
    fn requests_round_trip(r in valid_request()) {
        prop_assert_eq!(Request::parse(r.to_frame()), Ok(r.clone()));
        let shown = r.redacted();
        if let Request::Login { username, .. } = &r {
            prop_assert_eq!(shown, format!("LOGIN {username} <password>"));
        } else if let Request::CreateUser { name, username, .. } = &r {
            prop_assert_eq!(shown, format!("CREATE_USER {name} {username} <password>"));
        }
    }

    /// Valid requests, edited: still an error or a round-tripping request.
    #[test]
    fn edited_requests_never_panic(
        r in valid_request(),
        edits in vec(edit(), 1..4),
        keep_body in any::<bool>(),
    ) {
        let Frame { mut head, body } = r.to_frame();
        for e in &edits {
            head = apply_edit(&head, e);
        }
        let body = if keep_body { body } else { None };
        if let Ok(again) = Request::parse(Frame { head, body }) {
            prop_assert_eq!(Request::parse(again.to_frame()), Ok(again.clone()));
        }
    }

    /// The request and server-message fuzz bodies on random input.
    #[test]
    fn fuzz_bodies_for_requests_and_server_messages(data in vec(any::<u8>(), 0..300)) {
        fuzz_bodies::request_parser(&data);
        fuzz_bodies::server_message(&data);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Random server messages, with and without bodies: an error or a
    /// message that survives its wire form.
    #[test]
    fn random_server_messages_never_panic(
        head in prop_oneof![head_text(), any::<String>()],
        body in proptest::option::of(body(300)),
    ) {
        if let Ok(m) = ServerMessage::parse(Frame { head, body }) {
            prop_assert_eq!(ServerMessage::parse(m.to_frame()), Ok(m.clone()));
        }
    }

    /// Every valid server message parses back from its own frame, and its
    /// edited forms never panic.
    #[test]
    fn server_messages_round_trip(m in valid_server_message(), edits in vec(edit(), 1..4)) {
        let frame = m.to_frame();
        prop_assert_eq!(ServerMessage::parse(frame.clone()), Ok(m.clone()));
        let mut head = frame.head;
        for e in &edits {
            head = apply_edit(&head, e);
        }
        if let Ok(again) = ServerMessage::parse(Frame { head, body: frame.body }) {
            prop_assert_eq!(ServerMessage::parse(again.to_frame()), Ok(again.clone()));
        }
    }
}

// ---------------------------------------------------------------------------
// What people type, names, fingerprints, content
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// Typed lines with control characters, bidi overrides and any Unicode.
    #[test]
    fn typed_commands_never_panic(
        line in prop_oneof![
            head_text(),
            any::<String>(),
            "(?i)(send|send_to_group)( file)? [^\\n]{0,40}",
            "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e} a-zA-Z0-9_,.#@-]{0,60}",
        ],
    ) {
        match Command::parse(&line) {
            Ok(Command::Send { text, .. }) | Ok(Command::SendToGroup { text, .. }) => {
                prop_assert!(!text.is_empty() && text.len() <= MAX_MESSAGE_LEN);
            }
            Ok(Command::Plain(r)) => {
                prop_assert_eq!(Request::parse(r.to_frame()), Ok(r.clone()));
            }
            _ => {}
        }
    }

    /// Names: only `[A-Za-z0-9_.-]`, 1 to 32, stored in lower case;
    /// conversations print back to what parses to them.
    #[test]
    fn names_parse_only_what_the_rules_allow(
        s in prop_oneof![name(), any::<String>(), "[@#]?[A-Za-z0-9_.\\-/ ]{0,40}", "[@#]?(?i)file"],
    ) {
        let ok_chars = |t: &str| t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        let names = [
            Username::parse(&s).map(|u| u.to_string()),
            GroupName::parse(&s).map(|g| g.to_string()),
        ];
        for n in names.into_iter().flatten() {
            prop_assert_eq!(&n, &s.to_ascii_lowercase());
            prop_assert!(!n.is_empty() && n.len() <= MAX_NAME_LEN && ok_chars(&n));
            prop_assert!(n.starts_with(|c: char| c.is_ascii_alphanumeric()));
            prop_assert_ne!(n.as_str(), "file");
        }
        if let Ok(c) = Conversation::parse(&s) {
            prop_assert_eq!(Conversation::parse(&c.to_string()), Ok(c.clone()));
        }
        let _ = muchat::names::parse_group_list(&s);
    }

    /// Fingerprints, content keys and bodies: junk is refused, and what is
    /// accepted is canonical.
    #[test]
    fn keys_fingerprints_and_bodies(
        s in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9+/]{32}",
            "[A-Za-z0-9+/=]{28,36}",
            "\\s{0,2}SHA256:[A-Za-z0-9+/=]{40,46}\\s{0,2}",
            "([A-Za-z0-9+/]{4}){2,20}([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?",
        ],
    ) {
        if let Some(fp) = Fingerprint::parse(&s) {
            prop_assert_eq!(Fingerprint::parse(&fp.to_string()), Some(fp.clone()));
            prop_assert_eq!(fp.to_string(), s.trim());
        }
        if let Ok(k) = ContentKey::from_b64(&s) {
            prop_assert_eq!(k.to_b64(), s.clone());
        }
        if let Ok(b) = Body::from_wire(&s) {
            let n = b.ciphertext_len();
            prop_assert!(n >= 16 && n % 8 == 0, "{} bytes", n);
            // A wrong key: bad padding or garbage, never a panic.
            let _ = ContentKey::from_bytes([3; 24]).open(&b);
        }
    }
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// Candidate public values: random hex (right length or not) and the
/// degenerate values 0, 1, p-1 and p.
fn hex_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{512}",
        "[0-9a-fA-F]{500,520}",
        Just("0".repeat(512)),
        Just(format!("{:0>512}", "1")),
        Just(format!("{:0>512x}", dh::prime() - 1u32)),
        Just(format!("{:0>512x}", dh::prime())),
    ]
}

/// Lines a server (or someone in the middle) might send as its hello.
fn server_hello() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..1200),
        (
            hex_value(),
            hex_value(),
            "[A-Za-z0-9+/]{43}=|[A-Za-z0-9+/=]{0,60}|"
        )
            .prop_map(|(b, s, c)| format!("MUCHAT/2 {b} {s} {c}\n").into_bytes()),
        "MUCHAT/2 ERROR [\\x00-\\x7f\\u{202e}]{0,300}\n".prop_map(String::into_bytes),
        "(MUCHAT/[0-9 ]{0,3}|HTTP/1.1 200 OK|SSH-2.0-x)[^\\n]{0,40}\r?\n"
            .prop_map(String::into_bytes),
        "MUCHAT/2 [0-9a-f ]{0,1100}\n".prop_map(String::into_bytes),
        Just(vec![b'M'; 3000]),
    ]
}

proptest! {
    // One to three 2048-bit modpows per case.
    #![proptest_config(config(64))]

    /// The client side fed random server hellos: always an error (only the
    /// holder of a static key could confirm), never a panic.
    #[test]
    fn client_handshake_refuses_made_up_servers(hello in server_hello()) {
        let result = handshake::client(&mut Cursor::new(&hello), &mut Vec::new());
        prop_assert!(result.is_err());
        fuzz_bodies::handshake_client(&hello);
    }
}

/// Lines a client (or a scanner) might send as its hello.
fn client_hello() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..700),
        hex_value().prop_map(|a| format!("MUCHAT/2 {a}\n").into_bytes()),
        hex_value().prop_map(|a| format!("MUCHAT/2 {a}\r\n").into_bytes()),
        "(MUCHAT/[0-9\\x00-\\x1f\\x7f\u{202e}]{0,3}|GET / HTTP/1.1)[^\\n]{0,40}\n"
            .prop_map(String::into_bytes),
        "MUCHAT/2 [0-9a-f\\x00-\\x1f ]{0,600}\n?".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(config(32))]

    /// The server side fed random client hellos: at most one line back, no
    /// control characters echoed, success only for a well-formed value.
    #[test]
    fn server_handshake_survives_any_hello(hello in client_hello()) {
        fuzz_bodies::handshake_server(&hello);
    }
}

/// A real exchange through the two halves, then a message each way; and
/// the client rejects the same server hello for a different static key.
#[test]
fn handshake_round_trip_and_wrong_key() {
    let server_id = StaticSecret::from_bytes(&[7u8; 32]).unwrap();
    let client_secret = || EphemeralSecret::from_exponent(BigUint::from(0x1234_5678_9abc_u64));
    let mut client_hello = Vec::new();
    // A reader with nothing: the client writes its hello, then fails to read.
    assert!(handshake::client_with_secret(
        &mut Cursor::new(b""),
        &mut client_hello,
        client_secret()
    )
    .is_err());
    let mut server_hello = Vec::new();
    let mut server = handshake::server(
        &mut Cursor::new(&client_hello),
        &mut server_hello,
        &server_id,
    )
    .unwrap();
    let mut client = handshake::client_with_secret(
        &mut Cursor::new(&server_hello),
        &mut Vec::new(),
        client_secret(),
    )
    .unwrap();
    assert_eq!(&client.server_key, server_id.public_value());
    let line = seal(&mut client.sealer, "LIST", None);
    assert_eq!(server.opener.open(&line), Ok(Frame::head("LIST")));
    let line = seal(&mut server.sealer, "OK", None);
    assert_eq!(client.opener.open(&line), Ok(Frame::head("OK")));

    // Someone in the middle swaps in its own static value: confirmation fails.
    let text = String::from_utf8(server_hello).unwrap();
    let words: Vec<&str> = text.trim_end().split(' ').collect();
    let other = StaticSecret::from_bytes(&[8u8; 32]).unwrap();
    let forged = format!(
        "{} {} {} {}\n",
        words[0],
        words[1],
        other.public_value().to_hex(),
        words[3]
    );
    let result = handshake::client_with_secret(
        &mut Cursor::new(forged.as_bytes()),
        &mut Vec::new(),
        client_secret(),
    );
    assert!(matches!(
        result,
        Err(handshake::HandshakeError::BadConfirmation)
    ));
}
