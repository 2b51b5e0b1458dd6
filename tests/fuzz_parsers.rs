//! Property-based fuzzing of every parser that sees untrusted input: random
//! and mutated input must give an error or a value, never a panic, and the
//! properties the protocol relies on must hold (a sealed frame opens to what
//! was sealed, clear head or not; any change to a sealed line is rejected; a
//! clear head is accepted only for `GMSG`; requests, server messages, typed
//! replies and message references survive their own wire forms; typed
//! commands mean what they say).
//!
//! Bounded: a few thousand cases in all, fixed per test, so the suite stays
//! within a few seconds in the dev profile on two cores.
//! `PROPTEST_CASES=N` sets every count to N, for a longer local run.
//!
//! The cargo-fuzz targets in `fuzz/` share their bodies with this file (see
//! `fuzz/src/lib.rs`), so those bodies are compiled and run here on every
//! `cargo test`.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_bodies;

use std::io::Cursor;
use std::path::PathBuf;

use num_bigint::BigUint;
use proptest::collection::vec;
use proptest::prelude::*;

use fuzz_bodies::{body_key, check_request, check_server_message, keys, REPLY_KINDS};
use muchat::command::{Command, CommandError};
use muchat::content::{Body, ContentKey};
use muchat::dh::{self, EphemeralSecret, StaticSecret};
use muchat::event::{Delivery, ErrorCode, FileStart, Reply, ReplyData, ServerMessage};
use muchat::frame::{
    clear_head_allowed, Frame, FrameError, Opener, Sealer, MAX_HEAD_LEN, MAX_LINE_LEN,
};
use muchat::handshake::{self, PROTOCOL};
use muchat::identity::Fingerprint;
use muchat::names::{Conversation, GroupName, MessageRef, Username, MAX_NAME_LEN};
use muchat::request::{
    AudioFormat, DeviceToken, FileOffer, FileTarget, HistoryTarget, Manage, ReplyKind, Request,
    SendId, Verb, Voice, MAX_HISTORY, MAX_MESSAGE_LEN, MAX_SEND_ID_LEN,
};
use muchat::text::{is_bidi_control, sanitize};

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

/// Keeps the first of each repeated item, as the parsers do.
fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// One to four groups without repeats (the parser drops repeats).
fn groups() -> impl Strategy<Value = Vec<GroupName>> {
    vec(group(), 1..5).prop_map(dedup)
}

fn conversation() -> impl Strategy<Value = Conversation> {
    prop_oneof![
        username().prop_map(Conversation::User),
        group().prop_map(Conversation::Group),
    ]
}

fn message_ref() -> impl Strategy<Value = MessageRef> {
    (
        conversation(),
        prop_oneof![any::<u64>(), 0u64..1000, Just(u64::MAX)],
    )
        .prop_map(|(conv, seq)| MessageRef { conv, seq })
}

/// A display name or password (`spaces`: a display or file name): any
/// characters but control characters, at most 60 of them (so at most 240
/// bytes, within the 255-byte field limit).
fn field(spaces: bool) -> impl Strategy<Value = String> {
    if spaces {
        "[^\\p{Cc}]{1,60}"
    } else {
        "[^ \\p{Cc}]{1,60}"
    }
}

fn send_id() -> impl Strategy<Value = SendId> {
    "[A-Za-z0-9_-]{1,32}".prop_map(|s| SendId::parse(&s).expect("valid send id"))
}

fn device_token() -> impl Strategy<Value = DeviceToken> {
    "[0-9a-f]{64}".prop_map(|s| DeviceToken::parse(&s).expect("valid device token"))
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

/// A `GMSG` body: an envelope and content, `envelope ":" content`.
fn enveloped_body(max: usize) -> impl Strategy<Value = Body> {
    (body(80), body(max)).prop_map(|(e, c)| Body::enveloped(&e, &c))
}

/// No body, a plain one, or an envelope and content.
fn any_body(max: usize) -> impl Strategy<Value = Option<Body>> {
    prop_oneof![
        Just(None),
        body(max).prop_map(Some),
        enveloped_body(max).prop_map(Some),
    ]
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
        (username(), field(false), field(true)).prop_map(|(username, password, name)| {
            Request::CreateUser {
                username,
                password,
                name,
            }
        }),
        (username(), field(false)).prop_map(|(username, password)| Request::Login {
            username,
            password,
            token: None
        }),
        (group(), proptest::bool::ANY)
            .prop_map(|(group, private)| Request::CreateGroup { group, private }),
        (username(), device_token())
            .prop_map(|(username, token)| Request::Resume { username, token }),
        (
            proptest::sample::select(vec![
                Manage::Invite,
                Manage::Kick,
                Manage::Promote,
                Manage::Demote,
                Manage::Handover
            ]),
            group(),
            username()
        )
            .prop_map(|(action, group, user)| Request::Manage {
                action,
                group,
                user
            }),
        group().prop_map(Request::Join),
        group().prop_map(Request::Leave),
        Just(Request::List),
        Just(Request::Help),
        Just(Request::Logout),
        Just(Request::Quit),
        (username(), send_id(), content_key(), body(300)).prop_map(|(to, send_id, key, body)| {
            Request::Send {
                to,
                send_id,
                key,
                body,
            }
        }),
        (groups(), send_id(), content_key(), body(300)).prop_map(|(groups, send_id, key, body)| {
            Request::SendToGroup {
                groups,
                send_id,
                key,
                body,
            }
        }),
        (
            file_target,
            send_id(),
            any::<u64>(),
            any::<[u8; 32]>(),
            field(true),
            voice(),
        )
            .prop_map(|(target, send_id, size, sha256, name, voice)| {
                Request::SendFile(FileOffer {
                    target,
                    send_id,
                    size,
                    sha256,
                    name,
                    voice,
                })
            }),
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
        vec(message_ref(), 1..40).prop_map(Request::Ack),
        any::<u64>().prop_map(Request::Pong),
        (history_target(), 1..=MAX_HISTORY)
            .prop_map(|(with, limit)| Request::History { with, limit }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL.to_vec())
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        message_ref(),
        any::<u64>(),
        username(),
        content_key(),
        body(300),
    )
        .prop_map(|(at, at_ms, from, key, body)| Delivery {
            at,
            at_ms,
            from,
            key,
            body,
        })
}

/// No voice, or any length of a WAV note.
fn voice() -> impl Strategy<Value = Option<Voice>> {
    proptest::option::of(any::<u64>().prop_map(|duration_ms| Voice {
        duration_ms,
        format: AudioFormat::Wav,
    }))
}

fn file_start() -> impl Strategy<Value = FileStart> {
    (
        message_ref(),
        any::<u64>(),
        username(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<String>().prop_filter("a file has a name", |n| !n.is_empty()),
        voice(),
    )
        .prop_map(|(at, at_ms, from, size, sha256, name, voice)| FileStart {
            at,
            at_ms,
            from,
            size,
            sha256,
            name,
            voice,
        })
}

/// Any valid server message (free text is any text at all). Replies are
/// untyped, as `ServerMessage::parse` gives them; see [`typed_reply`].
fn valid_server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        any::<String>().prop_map(|t| ServerMessage::Reply(Reply::ok(t))),
        (error_code(), any::<String>()).prop_map(|(c, t)| ServerMessage::Reply(Reply::err(c, t))),
        delivery().prop_map(ServerMessage::Msg),
        delivery().prop_map(ServerMessage::History),
        (any::<u64>(), any::<u64>(), enveloped_body(300))
            .prop_map(|(key_id, seq, body)| ServerMessage::GroupMsg { key_id, seq, body }),
        file_start().prop_map(ServerMessage::File),
        file_start().prop_map(ServerMessage::HistoryFile),
        (message_ref(), any::<u64>(), content_key(), body(300)).prop_map(
            |(at, offset, key, body)| ServerMessage::Chunk {
                at,
                offset,
                key,
                body,
            }
        ),
        message_ref().prop_map(ServerMessage::FileEnd),
        (message_ref(), any::<String>()).prop_map(|(at, why)| ServerMessage::FileAbort(at, why)),
        (any::<u64>(), any::<String>()).prop_map(|(id, why)| ServerMessage::UploadAbort(id, why)),
        (group(), any::<u64>(), content_key())
            .prop_map(|(group, key_id, key)| { ServerMessage::GroupKey { group, key_id, key } }),
        any::<u64>().prop_map(ServerMessage::Ping),
        any::<String>().prop_map(ServerMessage::Bye),
    ]
}

/// A reply as the client types it, with the kind of request it answers.
fn typed_reply() -> impl Strategy<Value = (ReplyKind, Reply)> {
    let text = prop_oneof![Just(String::new()), any::<String>()];
    let refs = vec(message_ref(), 1..6);
    prop_oneof![
        (
            proptest::sample::select(vec![ReplyKind::Text, ReplyKind::Unanswered]),
            text.clone()
        )
            .prop_map(|(kind, text)| (kind, Reply::ok(text))),
        (
            proptest::sample::select(REPLY_KINDS.to_vec()),
            error_code(),
            text.clone()
        )
            .prop_map(|(kind, code, text)| (kind, Reply::err(code, text))),
        (
            proptest::sample::select(vec![ReplyKind::Sent, ReplyKind::Upload]),
            refs,
            text.clone()
        )
            .prop_map(|(kind, refs, text)| (
                kind,
                Reply::Ok {
                    data: ReplyData::Sent(refs),
                    text
                }
            )),
        (any::<u64>(), text).prop_map(|(id, text)| (
            ReplyKind::Upload,
            Reply::Ok {
                data: ReplyData::Transfer(id),
                text
            }
        )),
    ]
}

/// Every verb either side knows, and the typed aliases, to reach deep into
/// the parsers from random text.
fn verbs() -> Vec<String> {
    let mut v: Vec<String> = Verb::ALL
        .iter()
        .map(|v| v.spec().word.to_string())
        .collect();
    for w in [
        "OK",
        "ERR",
        "MSG",
        "GMSG",
        "HIST",
        "FILE",
        "HIST_FILE",
        "CHUNK",
        "FILE_END",
        "FILE_ABORT",
        "UPLOAD_ABORT",
        "GROUP_KEY",
        "PING",
        "BYE",
        "send file",
        "send_to_group file",
        "/msg",
        "/query",
        "/join",
        "/part",
        "/leave",
        "/quit",
        "/exit",
        "/help",
        "/list",
        "/history",
    ] {
        v.push(w.to_string());
    }
    v
}

/// A token that is likely to be almost an argument: names, numbers, keys,
/// digests, references, codes, quotes, control and bidi characters.
fn token() -> impl Strategy<Value = String> {
    let code = error_code().prop_map(|c| c.as_str().to_string());
    prop_oneof![
        name(),
        "[@#]?[A-Za-z0-9][A-Za-z0-9_.-]{0,4}",
        "[0-9]{1,25}",
        "[-+]?[0-9]{1,3}",
        "[A-Za-z0-9+/]{30,34}=?",
        "[A-Za-z0-9+/]{32}",
        "[0-9a-fA-F]{63,65}",
        "[@#,]?[A-Za-z0-9_.,-]{0,12}",
        "[@#][A-Za-z0-9_.-]{0,6}:[0-9+-]{0,21}",
        "([@#][a-z0-9]{1,4}:[0-9]{1,3},){1,3}[@#][a-z0-9]{1,4}:[0-9]{1,3}",
        "\"[^\"]{0,12}\"?",
        code,
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069} .:]{0,4}",
        any::<String>(),
    ]
}

/// Text that is likely to be almost a command: a verb (any case) and a few
/// [`token`]s.
fn head_text() -> impl Strategy<Value = String> {
    let verb = proptest::sample::select(verbs());
    (
        verb,
        any::<bool>(),
        vec(token(), 0..6),
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

/// A head that may travel in clear: a `GMSG` head, or any printable ASCII
/// without a `.`.
fn clear_head() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(k, s)| format!("GMSG {k} {s}")),
        "[\\x20-\\x2d\\x2f-\\x7e]{1,80}",
    ]
}

/// A frame's head and whether it travels in clear (only when it may).
fn sealable_head() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        head_text().prop_map(|h| (h, false)),
        any::<String>().prop_map(|h| (h, false)),
        clear_head().prop_map(|h| (h, true)),
    ]
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
    /// One space-separated word replaced by a [`token`].
    ReplaceWord(usize, String),
    /// A [`token`] inserted as a word.
    InsertWord(usize, String),
    /// One word removed.
    DeleteWord(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        Just(' '),
        Just(','),
        Just('@'),
        Just('#'),
        Just(':'),
        Just('"'),
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
        (any::<usize>(), token()).prop_map(|(i, t)| Edit::ReplaceWord(i, t)),
        (any::<usize>(), token()).prop_map(|(i, t)| Edit::InsertWord(i, t)),
        any::<usize>().prop_map(Edit::DeleteWord),
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
            let mut words: Vec<&str> = s.split(' ').collect();
            let (a, b) = (at(*a, words.len()), at(*b, words.len()));
            words.swap(a, b);
            return words.join(" ");
        }
        Edit::ReplaceWord(i, t) => {
            let mut words: Vec<&str> = s.split(' ').collect();
            let i = at(*i, words.len());
            words[i] = t;
            return words.join(" ");
        }
        Edit::InsertWord(i, t) => {
            let mut words: Vec<&str> = s.split(' ').collect();
            words.insert(at(*i, words.len() + 1), t);
            return words.join(" ");
        }
        Edit::DeleteWord(i) => {
            let mut words: Vec<&str> = s.split(' ').collect();
            words.remove(at(*i, words.len()));
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
    /// A `.`, `=` or `:` inserted anywhere.
    Insert(usize, u8),
    /// Base64-looking garbage inserted anywhere.
    InsertGarbage(usize, String),
    /// Base64-looking garbage in place of one segment.
    ReplaceSegment(usize, String),
    /// The head segment given, or stripped of, the `=` of a clear head.
    ToggleClear,
}

fn line_mutation() -> impl Strategy<Value = LineMutation> {
    let garbage = "[A-Za-z0-9+/=.:]{1,60}";
    prop_oneof![
        (any::<usize>(), 0u32..8).prop_map(|(i, bit)| LineMutation::Xor(i, 1 << bit)),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| LineMutation::Xor(i, x)),
        any::<usize>().prop_map(LineMutation::Truncate),
        any::<usize>().prop_map(LineMutation::DropFront),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineMutation::Duplicate(a, b)),
        (
            any::<usize>(),
            proptest::sample::select(vec![b'.', b'=', b':'])
        )
            .prop_map(|(i, b)| LineMutation::Insert(i, b)),
        (any::<usize>(), garbage).prop_map(|(i, g)| LineMutation::InsertGarbage(i, g)),
        (0usize..3, "[A-Za-z0-9+/=:]{0,60}").prop_map(|(i, g)| LineMutation::ReplaceSegment(i, g)),
        Just(LineMutation::ToggleClear),
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
        LineMutation::Insert(i, b) => out.insert(i % (n + 1), *b),
        LineMutation::InsertGarbage(i, g) => {
            let i = i % (n + 1);
            out.splice(i..i, g.bytes());
        }
        LineMutation::ReplaceSegment(which, g) => {
            let text = String::from_utf8(out).expect("sealed lines here are ASCII");
            let mut parts: Vec<&str> = text.split('.').collect();
            parts[*which] = g;
            out = parts.join(".").into_bytes();
        }
        LineMutation::ToggleClear => {
            if out.first() == Some(&b'=') {
                out.remove(0);
            } else {
                out.insert(0, b'=');
            }
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

/// Seals a frame, its head in clear if it says so, newline removed.
fn seal_frame(sealer: &mut Sealer, frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    sealer.seal_frame_into(frame, &mut out);
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

    /// Lines shaped like frames (`head.body.tag`, base64 everywhere or a
    /// clear head, a 44-character tag) but made up are rejected.
    #[test]
    fn made_up_frames_are_rejected(
        line in prop_oneof![
            "[A-Za-z0-9+/]{0,80}={0,2}\\.[A-Za-z0-9+/]{0,80}={0,2}\\.[A-Za-z0-9+/]{43}=",
            concat!(
                "=(GMSG [0-9]{1,5} [0-9]{1,5}|[ -~]{0,40})",
                "\\.([A-Za-z0-9+/]{0,40}={0,2}:?){0,2}\\.[A-Za-z0-9+/]{43}=",
            ),
        ]
    ) {
        let result = Opener::new(&keys()).open(line.as_bytes());
        prop_assert!(result.is_err(), "{:?}", result);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A sealed line, clear head or not, opens to exactly what was sealed,
    /// once; the same line changed in any way (any change of one byte,
    /// truncation, duplication, an inserted `.`, `=` or `:`, garbage, the
    /// clear marker added or removed) is rejected by a fresh opener.
    #[test]
    fn sealed_lines_open_and_mutated_ones_do_not(
        (head, clear) in sealable_head(),
        body in any_body(400),
        mutations in vec(line_mutation(), 1..12),
    ) {
        let frame = Frame { head, body, clear };
        let mut sealer = Sealer::new(&keys());
        let mut opener = Opener::new(&keys());
        let line = seal_frame(&mut sealer, &frame);
        prop_assert_eq!(line.starts_with(b"="), clear);
        prop_assert_eq!(opener.open(&line), Ok(frame.clone()));
        prop_assert_eq!(opener.open(&line), Err(FrameError::BadMac), "replay accepted");
        for m in &mutations {
            let bad = mutate_line(&line, m);
            if bad != line {
                let result = Opener::new(&keys()).open(&bad);
                prop_assert!(result.is_err(), "{:?} accepted: {:?}", m, result);
            }
        }
    }

    /// A stream of frames, clear and encrypted heads mixed, opens in order,
    /// also across key rotations (clear heads use no 3DES blocks on either
    /// side); a dropped, repeated or swapped frame is caught at that point.
    #[test]
    fn frame_streams_keep_their_order(
        heads in vec(sealable_head(), 2..12),
        rekey_blocks in 2u64..40,
        victim in any::<usize>(),
    ) {
        let mut sealer = Sealer::with_rekey_blocks(&keys(), rekey_blocks);
        let frames: Vec<Frame> = heads
            .into_iter()
            .map(|(head, clear)| Frame { head, body: None, clear })
            .collect();
        let lines: Vec<Vec<u8>> = frames.iter().map(|f| seal_frame(&mut sealer, f)).collect();
        let mut opener = Opener::with_rekey_blocks(&keys(), rekey_blocks);
        for (line, frame) in lines.iter().zip(&frames) {
            prop_assert_eq!(&opener.open(line).expect("in order"), frame);
        }
        let v = victim % (lines.len() - 1);
        let opener_after = |n: usize| {
            let mut o = Opener::with_rekey_blocks(&keys(), rekey_blocks);
            for line in &lines[..n] {
                o.open(line).expect("earlier line opens");
            }
            o
        };
        // Drop frame v, or swap it with v+1: frame v+1 arrives in its place.
        prop_assert_eq!(opener_after(v).open(&lines[v + 1]), Err(FrameError::BadMac));
        // Repeat frame v.
        prop_assert_eq!(opener_after(v + 1).open(&lines[v]), Err(FrameError::BadMac));
        // Any frame too early.
        let later = v + 1 + victim % (lines.len() - v - 1);
        prop_assert_eq!(opener_after(v).open(&lines[later]), Err(FrameError::BadMac));
    }

    /// Arbitrary heads encrypted (or in clear) and tagged correctly: the
    /// frame opens exactly when the head is UTF-8 within the limit (and a
    /// permitted clear head), and a sealed one with a bit flipped does not
    /// (see the fuzz body).
    #[test]
    fn authentic_frames_with_arbitrary_contents(data in vec(any::<u8>(), 0..600)) {
        for mode in [1u8, 2, 3, 4] {
            let mut input = vec![mode];
            input.extend_from_slice(&data);
            fuzz_bodies::frame_decoder(&input);
        }
    }

    /// The same with printable ASCII, which reaches the clear-head paths.
    #[test]
    fn authentic_frames_with_printable_contents(
        text in "[ -~]{0,200}",
        body in proptest::option::of(vec(any::<u8>(), 0..200)),
    ) {
        for mode in [1u8, 3, 4] {
            let mut input = vec![mode];
            input.extend_from_slice(text.as_bytes());
            if let Some(b) = &body {
                input.push(0xFF);
                input.extend_from_slice(b);
            }
            fuzz_bodies::frame_decoder(&input);
        }
    }

    /// The frame decoder's fuzz body on random input.
    #[test]
    fn fuzz_body_frame_decoder(data in vec(any::<u8>(), 0..600)) {
        fuzz_bodies::frame_decoder(&data);
    }
}

/// Sealed lines of every shape: encrypted heads with and without a body,
/// an empty head, and clear heads with no body, a plain body and an
/// envelope; each as the first frame of its direction.
fn sample_lines() -> Vec<(Frame, Vec<u8>)> {
    let key = ContentKey::from_bytes([9; 24]);
    let body = key.seal_with_iv(&[1; 8], b"the body of a message, a few blocks long");
    let envelope = Body::enveloped(&key.seal_with_iv(&[2; 8], b"17 alice key"), &body);
    let frames = [
        Frame::head("LOGIN alice hunter2"),
        Frame::with_body("SEND bob s1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", body.clone()),
        Frame::head(""),
        Frame {
            head: "GMSG 3 41".into(),
            body: Some(envelope),
            clear: true,
        },
        Frame {
            head: "GMSG 18446744073709551615 0".into(),
            body: Some(body),
            clear: true,
        },
        Frame {
            head: "=".into(),
            body: None,
            clear: true,
        },
    ];
    frames
        .into_iter()
        .map(|f| {
            let line = seal_frame(&mut Sealer::new(&keys()), &f);
            (f, line)
        })
        .collect()
}

/// Every change of any one byte of a sealed line, to any other value, is
/// rejected: clear heads included. One opener tries them all: a refused
/// line leaves it as it was, and it still opens the real line at the end,
/// so no change got past the MAC (which would have moved it on).
#[test]
fn every_single_byte_change_is_rejected() {
    for (frame, line) in sample_lines() {
        let mut opener = Opener::new(&keys());
        let mut bad = line.clone();
        for i in 0..line.len() {
            for x in 1..=255u8 {
                bad[i] = line[i] ^ x;
                let result = opener.open(&bad);
                assert!(
                    result.is_err(),
                    "{frame:?}: byte {i} changed to {:#04x} was accepted: {result:?}",
                    bad[i]
                );
            }
            bad[i] = line[i];
        }
        assert_eq!(opener.open(&line), Ok(frame));
    }
}

/// The same lines sealed one after another (sequence numbers above 0):
/// every single-bit change is rejected.
#[test]
fn every_single_bit_flip_mid_stream_is_rejected() {
    let samples = sample_lines();
    let mut sealer = Sealer::new(&keys());
    let lines: Vec<Vec<u8>> = samples
        .iter()
        .map(|(f, _)| seal_frame(&mut sealer, f))
        .collect();
    let mut opener = Opener::new(&keys());
    for (seq, line) in lines.iter().enumerate() {
        for i in 0..line.len() {
            for bit in 0..8 {
                let mut bad = line.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    opener.open(&bad).is_err(),
                    "line {seq}: flipping bit {bit} of byte {i} was accepted"
                );
            }
        }
        assert_eq!(opener.open(line).as_ref(), Ok(&samples[seq].0));
    }
}

#[test]
fn over_long_lines_are_refused_before_any_work() {
    let mut o = Opener::new(&keys());
    assert_eq!(
        o.open(&vec![b'.'; MAX_LINE_LEN + 1]),
        Err(FrameError::TooLong)
    );
    // A head over the limit is refused even with a valid MAC, clear or not.
    let long = "x".repeat(MAX_HEAD_LEN + 1);
    let line = seal(&mut Sealer::new(&keys()), &long, None);
    assert_eq!(Opener::new(&keys()).open(&line), Err(FrameError::BadHead));
    let mut line = Vec::new();
    Sealer::new(&keys()).seal_clear_into(&long, None, &mut line);
    line.pop();
    assert_eq!(Opener::new(&keys()).open(&line), Err(FrameError::BadHead));
    // At the limit, a clear head opens.
    let max = "x".repeat(MAX_HEAD_LEN);
    let mut line = Vec::new();
    Sealer::new(&keys()).seal_clear_into(&max, None, &mut line);
    line.pop();
    assert_eq!(
        Opener::new(&keys())
            .open(&line)
            .map(|f| (f.head.len(), f.clear)),
        Ok((MAX_HEAD_LEN, true))
    );
}

// ---------------------------------------------------------------------------
// Requests and server messages
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// Random heads, with and without bodies (plain or enveloped), clear or
    /// not: an error naming the head's verb, or a request that survives its
    /// wire form.
    #[test]
    fn random_requests_never_panic(
        head in prop_oneof![head_text(), any::<String>()],
        body in any_body(300),
        clear in any::<bool>(),
    ) {
        let verb = Verb::of_head(&head);
        let had_body = body.is_some();
        match Request::parse(Frame { head: head.clone(), body, clear }) {
            Ok(r) => check_request(&head, had_body, &r),
            Err(e) => {
                let _ = e.to_string();
                if let Some(v) = e.verb() {
                    prop_assert_eq!(verb, Some(v));
                }
            }
        }
    }

    /// Every valid request parses back from its own frame, and from that
    /// frame sealed and opened.
    #[test]
    fn requests_round_trip(r in valid_request()) {
        let frame = r.to_frame();
        check_request(&frame.head, frame.body.is_some(), &r);
        let line = seal_frame(&mut Sealer::new(&keys()), &frame);
        let opened = Opener::new(&keys()).open(&line).expect("opens");
        prop_assert_eq!(Request::parse(opened), Ok(r.clone()));
    }

    /// Valid requests, edited: still an error or a round-tripping request.
    #[test]
    fn edited_requests_never_panic(
        r in valid_request(),
        edits in vec(edit(), 1..4),
        keep_body in any::<bool>(),
    ) {
        let Frame { mut head, body, .. } = r.to_frame();
        for e in &edits {
            head = apply_edit(&head, e);
        }
        let body = if keep_body { body } else { None };
        let had_body = body.is_some();
        if let Ok(again) = Request::parse(Frame { head: head.clone(), body, clear: false }) {
            check_request(&head, had_body, &again);
        }
    }

    /// The request and server-message fuzz bodies on random input.
    #[test]
    fn fuzz_bodies_for_requests_and_server_messages(data in vec(any::<u8>(), 0..300)) {
        fuzz_bodies::request_parser(&data);
        fuzz_bodies::server_message(&data);
    }

    /// The same bodies on input shaped like their frames: flags, a head
    /// that is almost a command, `\n`, a body's plaintext.
    #[test]
    fn fuzz_bodies_on_shaped_input(
        flags in any::<u8>(),
        head in head_text(),
        body in vec(any::<u8>(), 0..100),
    ) {
        let mut data = vec![flags];
        data.extend_from_slice(head.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(&body);
        fuzz_bodies::request_parser(&data);
        fuzz_bodies::server_message(&data);
    }
}

/// A frame as [`fuzz_bodies::frame_from_bytes`] builds it: flags for a
/// body (and an envelope) and a clear head, the head, `\n`, a body's
/// plaintext.
fn frame_bytes(head: &str, body: Option<&Body>, clear: bool, plaintext: &[u8]) -> Vec<u8> {
    let mut flags = 0u8;
    if let Some(b) = body {
        flags |= if b.is_plain() { 1 } else { 1 | 8 };
    }
    if clear {
        flags |= 4;
    }
    let mut data = vec![flags];
    data.extend_from_slice(head.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(plaintext);
    data
}

proptest! {
    #![proptest_config(config(256))]

    /// The request and server-message fuzz bodies on valid frames of both,
    /// lightly edited: these reach their round-trip checks.
    #[test]
    fn fuzz_bodies_on_valid_frames(
        frame in prop_oneof![
            valid_request().prop_map(|r| r.to_frame()),
            valid_server_message().prop_map(|m| m.to_frame()),
        ],
        edits in vec(edit(), 0..2),
        plaintext in vec(any::<u8>(), 0..100),
    ) {
        let mut head = frame.head;
        for e in &edits {
            head = apply_edit(&head, e);
        }
        let data = frame_bytes(&head, frame.body.as_ref(), frame.clear, &plaintext);
        fuzz_bodies::request_parser(&data);
        fuzz_bodies::server_message(&data);
    }

    /// Random server messages, with and without bodies, clear or not: an
    /// error, or a message that survives its wire form; a clear head is
    /// accepted only for `GMSG`, and a `GMSG` only with one.
    #[test]
    fn random_server_messages_never_panic(
        head in prop_oneof![head_text(), clear_head(), any::<String>()],
        body in any_body(300),
        // Mostly as a server would send it: clear exactly for `GMSG`.
        odd in proptest::bool::weighted(0.2),
    ) {
        let clear = head.starts_with("GMSG") != odd;
        if let Ok(m) = ServerMessage::parse(Frame { head, body, clear }) {
            prop_assert_eq!(clear, matches!(m, ServerMessage::GroupMsg { .. }));
            check_server_message(&m);
        }
    }

    /// Every valid server message parses back from its own frame, and from
    /// that frame sealed and opened; with its clear flag flipped it is
    /// refused; its edited forms never panic.
    #[test]
    fn server_messages_round_trip(m in valid_server_message(), edits in vec(edit(), 1..4)) {
        let frame = m.to_frame();
        check_server_message(&m);
        let line = seal_frame(&mut Sealer::new(&keys()), &frame);
        let opened = Opener::new(&keys()).open(&line).expect("opens");
        prop_assert_eq!(&opened, &frame);
        prop_assert_eq!(ServerMessage::parse(opened), Ok(m.clone()));
        let flipped = Frame { clear: !frame.clear, ..frame.clone() };
        prop_assert!(ServerMessage::parse(flipped).is_err(), "clear flag ignored");
        let mut head = frame.head;
        for e in &edits {
            head = apply_edit(&head, e);
        }
        let edited = Frame { head, body: frame.body, clear: frame.clear };
        if let Ok(again) = ServerMessage::parse(edited) {
            check_server_message(&again);
        }
    }

    /// A typed reply survives its wire form: parsed, then typed with the
    /// kind of the request it answers.
    #[test]
    fn typed_replies_round_trip((kind, reply) in typed_reply()) {
        let frame = ServerMessage::Reply(reply.clone()).to_frame();
        let Ok(ServerMessage::Reply(raw)) = ServerMessage::parse(frame) else {
            panic!("a reply parses as a reply");
        };
        prop_assert_eq!(raw.clone().typed(kind), Ok(reply.clone()));
        // Typing is idempotent.
        prop_assert_eq!(reply.clone().typed(kind), Ok(reply.clone()));
        prop_assert_eq!(raw.is_ok(), reply.is_ok());
    }

    /// Any `OK` text typed as any kind: an error or a reply that survives
    /// its wire form.
    #[test]
    fn any_reply_text_types_or_fails(
        text in prop_oneof![
            any::<String>(),
            "[0-9+]{0,21}( .{0,20})?",
            "([@#][A-Za-z0-9]{1,4}:[0-9]{1,20},?){0,4}( .{0,20})?",
        ],
    ) {
        check_server_message(&ServerMessage::Reply(Reply::ok(text)));
    }

    /// A group message's envelope opens with its group key into the very
    /// delivery that was sealed, and not with another key.
    #[test]
    fn group_envelopes_open_with_their_key(
        d in delivery(),
        g in group(),
        seq in any::<u64>(),
        key in prop_oneof![Just(body_key()), content_key()],
        other in content_key(),
    ) {
        let d = Delivery {
            at: MessageRef { conv: Conversation::Group(g.clone()), seq },
            ..d
        };
        let body = d.seal_for_group(&key);
        prop_assert!(!body.is_plain());
        prop_assert_eq!(Delivery::open_group(&g, seq, &key, &body), Ok(d.clone()));
        if other != key {
            prop_assert_ne!(Delivery::open_group(&g, seq, &other, &body), Ok(d.clone()));
        }
        // Through the fuzz body's checks, which open it when the key is
        // `body_key()`.
        let m = ServerMessage::GroupMsg { key_id: 1, seq, body };
        check_server_message(&m);
    }

    /// Envelopes with made-up text under the right key: an error or a
    /// delivery that survives its own wire form (see the fuzz body).
    #[test]
    fn made_up_envelopes_never_panic(
        text in prop_oneof![
            any::<String>(),
            "[0-9]{1,20} [A-Za-z0-9][A-Za-z0-9_.-]{0,8} [A-Za-z0-9+/]{32}",
            "[0-9+-]{0,21} [A-Za-z0-9_.-]{0,8} [A-Za-z0-9+/=]{31,33}( [a-z]{0,3})?",
            "[0-9]{1,3}( [A-Za-z0-9+/]{0,32}){0,4} ?",
        ],
        seq in any::<u64>(),
        content in body(50),
    ) {
        let envelope = body_key().seal_with_iv(&[5; 8], text.as_bytes());
        let body = Body::enveloped(&envelope, &content);
        let m = ServerMessage::GroupMsg { key_id: 7, seq, body };
        check_server_message(&m);
    }
}

/// A word that no parser could take as part of a free text it ends with.
fn extra_word() -> impl Strategy<Value = String> {
    prop_oneof![token(), Just("x".to_string()), Just("0".to_string())]
        .prop_filter("a word", |w| !w.is_empty() && !w.contains(' '))
}

proptest! {
    #![proptest_config(config(128))]

    /// A request whose last argument is not free text (a display or file
    /// name) refuses another word after it.
    #[test]
    fn requests_refuse_extra_words(r in valid_request(), word in extra_word()) {
        if !matches!(r, Request::CreateUser { .. } | Request::SendFile(_)) {
            let Frame { head, body, clear } = r.to_frame();
            let longer = Frame { head: format!("{head} {word}"), body, clear };
            prop_assert!(Request::parse(longer).is_err(), "{:?} + {:?}", r, word);
        }
    }

    /// Likewise a server message; and one that carries plain content
    /// refuses an envelope in its place.
    #[test]
    fn server_messages_refuse_extra_words(
        m in valid_server_message(),
        word in extra_word(),
        envelope in enveloped_body(20),
    ) {
        let Frame { head, body, clear } = m.to_frame();
        let fixed = head.starts_with("MSG ")
            || head.starts_with("HIST ")
            || head.starts_with("GMSG ")
            || head.starts_with("CHUNK ")
            || head.starts_with("FILE_END ")
            || head.starts_with("GROUP_KEY ")
            || head.starts_with("PING ");
        if fixed {
            let longer = Frame { head: format!("{head} {word}"), body: body.clone(), clear };
            prop_assert!(ServerMessage::parse(longer).is_err(), "{:?} + {:?}", m, word);
        }
        if body.as_ref().is_some_and(Body::is_plain) {
            let enveloped = Frame { head, body: Some(envelope), clear };
            prop_assert!(ServerMessage::parse(enveloped).is_err(), "{:?} enveloped", m);
        }
    }
}

// ---------------------------------------------------------------------------
// Message references
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// References, and lists of them, survive their written form.
    #[test]
    fn message_refs_round_trip(r in message_ref(), list in vec(message_ref(), 1..8)) {
        prop_assert_eq!(MessageRef::parse(&r.to_string()), Some(r.clone()));
        let written = MessageRef::format_list(&list);
        prop_assert_eq!(MessageRef::parse_list(&written), Some(list.clone()));
    }

    /// Random text: no reference, or one that survives its written form
    /// (in lower case, without leading zeros, so never longer).
    #[test]
    fn message_refs_from_random_text(
        s in prop_oneof![
            any::<String>(),
            "[@#]?[A-Za-z0-9_.:-]{0,10}:[0-9+-]{0,22}",
            "[@#][A-Za-z0-9][A-Za-z0-9_.-]{0,8}:0{0,3}[0-9]{1,20}",
            "([@#][A-Za-z0-9_.-]{0,5}:[0-9]{0,3}[, ]{0,2}){1,4}",
        ],
    ) {
        if let Some(r) = MessageRef::parse(&s) {
            let written = r.to_string();
            prop_assert_eq!(MessageRef::parse(&written), Some(r.clone()));
            prop_assert!(written.len() <= s.len());
        }
        if let Some(list) = MessageRef::parse_list(&s) {
            prop_assert!(!list.is_empty());
            let written = MessageRef::format_list(&list);
            prop_assert_eq!(MessageRef::parse_list(&written), Some(list.clone()));
        }
    }
}

// ---------------------------------------------------------------------------
// What people type
// ---------------------------------------------------------------------------

/// Checks what any typed command must satisfy.
fn check_command(c: &Command) -> Result<(), TestCaseError> {
    match c {
        Command::Help => {}
        Command::Send { text, .. } => {
            prop_assert!(!text.is_empty() && text.len() <= MAX_MESSAGE_LEN);
        }
        Command::SendToGroup { groups, text } => {
            prop_assert!(!text.is_empty() && text.len() <= MAX_MESSAGE_LEN);
            prop_assert!(!groups.is_empty());
            prop_assert_eq!(groups, &dedup(groups.clone()));
        }
        Command::SendFile { target, path } | Command::SendVoice { target, path } => {
            let p = path.to_str().expect("typed paths are text");
            prop_assert!(!p.is_empty() && p == p.trim(), "{:?}", p);
            if let FileTarget::Groups(gs) = target {
                prop_assert!(!gs.is_empty());
                prop_assert_eq!(gs, &dedup(gs.clone()));
            }
        }
        Command::Record { target, secs } => {
            prop_assert!((1..=600).contains(secs));
            if let FileTarget::Groups(gs) = target {
                prop_assert_eq!(gs.len(), 1);
            }
        }
        Command::Play(at) => {
            prop_assert_eq!(MessageRef::parse(&at.to_string()), Some(at.clone()));
        }
        Command::Plain(r) => {
            prop_assert!(r.verb().spec().typed.is_some(), "{:?}", r);
            prop_assert!(c.has_password() == r.redacted().contains("<password>"));
            let frame = r.to_frame();
            check_request(&frame.head, frame.body.is_some(), r);
        }
        Command::NeedsPassword { create, .. } => {
            prop_assert!(!c.has_password());
            if let Some(name) = create {
                prop_assert!(!name.is_empty() && !name.chars().any(char::is_control));
            }
            let filled = c.clone().with_password("pw".into());
            prop_assert!(filled.has_password());
            let Command::Plain(r) = &filled else {
                panic!("a password makes a request");
            };
            let frame = r.to_frame();
            check_request(&frame.head, false, r);
        }
    }
    Ok(())
}

/// How a user may be written: `alice`, `@alice`, in any case.
fn typed_user() -> impl Strategy<Value = (Username, String)> {
    (name(), any::<bool>()).prop_map(|(n, at)| {
        let u = Username::parse(&n).expect("valid name");
        (u, if at { format!("@{n}") } else { n })
    })
}

/// How a group may be written: `ops`, `#ops`, in any case.
fn typed_group() -> impl Strategy<Value = (GroupName, String)> {
    (name(), any::<bool>()).prop_map(|(n, hash)| {
        let g = GroupName::parse(&n).expect("valid name");
        (g, if hash { format!("#{n}") } else { n })
    })
}

/// A typed group list (repeats allowed, spaces around commas) and the
/// groups it means.
fn typed_groups() -> impl Strategy<Value = (Vec<GroupName>, String)> {
    (
        vec(typed_group(), 1..5),
        proptest::sample::select(vec![",", ", ", " ,", " , ", ",  "]),
    )
        .prop_map(|(gs, sep)| {
            let written: Vec<String> = gs.iter().map(|(_, w)| w.clone()).collect();
            let groups = dedup(gs.into_iter().map(|(g, _)| g).collect());
            (groups, written.join(sep))
        })
}

/// Message text: anything on one line whose first word is not a comma.
fn typed_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\\r\\n ,][^\\r\\n]{0,40}",
        "[ ]{1,3}[^\\r\\n ,][^\\r\\n]{0,10}",
    ]
}

/// A path as typed after `SEND FILE <to>`: trimmed, spaces inside allowed.
fn typed_path() -> impl Strategy<Value = String> {
    "[A-Za-z0-9/._~-]([A-Za-z0-9/._ ~-]{0,30}[A-Za-z0-9/._~-])?"
}

/// A command word in a random letter case.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars()
            .zip(upper)
            .map(|(c, u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// A valid typed line and the command it must parse to.
fn typed_line() -> impl Strategy<Value = (String, Command)> {
    let password = "[!-~]{1,20}";
    let display = prop_oneof![
        // One word, not starting with a quote.
        "[A-Za-z0-9\u{e9}'_-][A-Za-z0-9\u{e9}'\"_-]{0,12}".prop_map(|n| (n.clone(), n)),
        // Quoted, spaces inside (trimmed).
        "[A-Za-z0-9\u{e9}'-]{1,8}( [A-Za-z0-9\u{e9}'-]{1,8}){0,3}"
            .prop_map(|n| (n.clone(), format!("\"{n}\""))),
        "[A-Za-z0-9]{1,8}".prop_map(|n| (n.clone(), format!("\" {n} \""))),
    ];
    prop_oneof![
        (any_case("send"), typed_user(), typed_text()).prop_map(|(v, (to, w), text)| {
            (format!("{v} {w} {text}"), Command::Send { to, text })
        }),
        (
            proptest::sample::select(vec!["/msg", "/query", "/MSG"]),
            typed_user(),
            typed_text()
        )
            .prop_map(|(v, (to, w), text)| {
                let w = w.trim_start_matches('@');
                (format!("{v} @{w} {text}"), Command::Send { to, text })
            }),
        (any_case("send_to_group"), typed_groups(), typed_text()).prop_map(
            |(v, (groups, w), text)| {
                (
                    format!("{v} {w} {text}"),
                    Command::SendToGroup { groups, text },
                )
            }
        ),
        (typed_group(), typed_text()).prop_map(|((g, w), text)| {
            let w = w.trim_start_matches('#');
            (
                format!("/msg #{w} {text}"),
                Command::SendToGroup {
                    groups: vec![g],
                    text,
                },
            )
        }),
        (
            any_case("send"),
            any_case("file"),
            typed_user(),
            typed_path()
        )
            .prop_map(|(v, f, (to, w), path)| {
                (
                    format!("{v} {f} {w} {path}"),
                    Command::SendFile {
                        target: FileTarget::User(to),
                        path: PathBuf::from(path),
                    },
                )
            }),
        (any_case("send_to_group"), typed_groups(), typed_path()).prop_map(
            |(v, (groups, w), path)| {
                (
                    format!("{v} file {w} {path}"),
                    Command::SendFile {
                        target: FileTarget::Groups(groups),
                        path: PathBuf::from(path),
                    },
                )
            }
        ),
        (any_case("create_user"), display, typed_user(), password).prop_map(
            |(v, (name, w), (username, uw), password)| {
                (
                    format!("{v} {w} {uw} {password}"),
                    Command::Plain(Request::CreateUser {
                        username,
                        password,
                        name,
                    }),
                )
            }
        ),
        (
            any_case("login"),
            typed_user(),
            proptest::option::of(password)
        )
            .prop_map(|(v, (username, w), password)| match password {
                Some(password) => (
                    format!("{v} {w} {password}"),
                    Command::Plain(Request::Login {
                        username,
                        password,
                        token: None
                    }),
                ),
                None => (
                    format!("{v} {w}"),
                    Command::NeedsPassword {
                        create: None,
                        username,
                    },
                ),
            }),
        (
            proptest::sample::select(vec![
                "join",
                "JOIN",
                "/join",
                "leave",
                "/part",
                "/leave",
                "create_group"
            ]),
            typed_group()
        )
            .prop_map(|(v, (g, w))| {
                let r = match v.to_ascii_lowercase().as_str() {
                    "join" | "/join" => Request::Join(g),
                    "create_group" => Request::CreateGroup {
                        group: g,
                        private: false,
                    },
                    _ => Request::Leave(g),
                };
                (format!("{v} {w}"), Command::Plain(r))
            }),
        proptest::sample::select(vec![
            ("list", Command::Plain(Request::List)),
            ("/list", Command::Plain(Request::List)),
            ("LOGOUT", Command::Plain(Request::Logout)),
            ("quit", Command::Plain(Request::Quit)),
            ("/quit", Command::Plain(Request::Quit)),
            ("/exit", Command::Plain(Request::Quit)),
            ("help", Command::Help),
            ("/help", Command::Help),
        ])
        .prop_map(|(l, c)| (l.to_string(), c)),
        (
            proptest::sample::select(vec!["history", "/history"]),
            history_target(),
            proptest::option::of(1u64..100_000)
        )
            .prop_map(|(v, with, n)| {
                let limit = n.map_or(20, |n| n.min(MAX_HISTORY as u64) as usize);
                let line = match n {
                    Some(n) => format!("{v} {with} {n}"),
                    None => format!("{v} {with}"),
                };
                (line, Command::Plain(Request::History { with, limit }))
            }),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Typed lines with control characters, bidi overrides, quotes and any
    /// Unicode: an error, or a command that keeps its promises (messages
    /// within the limit, requests that survive their wire form).
    #[test]
    fn typed_commands_never_panic(
        line in prop_oneof![
            head_text(),
            any::<String>(),
            "(?i)(send|send_to_group|/msg)( file)? [^\\n]{0,40}",
            "(?i)create_user \"?[^\\n]{0,30}",
            "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{202a}-\\u{202e} a-zA-Z0-9_,.#@\"/-]{0,60}",
        ],
    ) {
        match Command::parse(&line) {
            Ok(c) => check_command(&c)?,
            Err(e) => {
                let _ = e.to_string();
                if let CommandError::Unknown(word) = &e {
                    prop_assert!(word.chars().count() <= 32, "{:?}", word);
                }
            }
        }
    }

    /// Valid typed lines, with `#`, `@`, spaced group lists, quoted names,
    /// aliases and any letter case, parse to what they say.
    #[test]
    fn typed_commands_mean_what_they_say((line, want) in typed_line(), crlf in any::<bool>()) {
        let line = if crlf { format!("{line}\r\n") } else { line };
        let got = Command::parse(&line);
        prop_assert_eq!(&got, &Ok(want.clone()), "{:?}", line);
        check_command(&want)?;
    }

    /// Valid typed lines, edited: an error or a command that keeps its
    /// promises.
    #[test]
    fn edited_typed_commands_never_panic(
        (line, _) in typed_line(),
        edits in vec(edit(), 1..4),
    ) {
        let mut line = line;
        for e in &edits {
            line = apply_edit(&line, e);
        }
        if let Ok(c) = Command::parse(&line) {
            check_command(&c)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Names, send ids, fingerprints, content, terminal text
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// Names: only `[A-Za-z0-9_.-]`, 1 to 32, stored in lower case;
    /// conversations print back to what parses to them; group lists have
    /// no repeats.
    #[test]
    fn names_parse_only_what_the_rules_allow(
        s in prop_oneof![
            name(),
            any::<String>(),
            "[@#]?[A-Za-z0-9_.\\-/ ,]{0,40}",
            "[@#]?(?i)file",
        ],
    ) {
        let ok_chars =
            |t: &str| t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
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
        if let Ok(gs) = muchat::names::parse_group_list(&s) {
            prop_assert!(!gs.is_empty());
            prop_assert_eq!(&gs, &dedup(gs.clone()));
            let written = muchat::names::format_group_list(&gs);
            prop_assert_eq!(muchat::names::parse_group_list(&written), Ok(gs.clone()));
        }
    }

    /// Send ids: 1 to 32 of `[A-Za-z0-9_-]`, kept as given.
    #[test]
    fn send_ids_parse_only_what_the_rules_allow(
        s in prop_oneof![any::<String>(), "[A-Za-z0-9_\\-+/ ]{0,40}"],
    ) {
        if let Some(id) = SendId::parse(&s) {
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert!(!s.is_empty() && s.len() <= MAX_SEND_ID_LEN);
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
        let r = SendId::random();
        prop_assert_eq!(SendId::parse(r.as_str()), Some(r.clone()));
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
            "(([A-Za-z0-9+/]{4}){2,8}([A-Za-z0-9+/]{2}==)?:?){1,3}",
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
            prop_assert!(s.matches(':').count() <= 1);
            prop_assert_eq!(b.is_plain(), !s.contains(':'));
            for part in fuzz_bodies::body_parts(&b) {
                let n = part.ciphertext_len();
                prop_assert!(n >= 16 && n % 8 == 0, "{} bytes", n);
                // A wrong key: bad padding or garbage, never a panic.
                let _ = ContentKey::from_bytes([3; 24]).open(&part);
            }
        }
    }

    /// Whatever text comes in, what reaches the terminal has no control or
    /// bidi characters.
    #[test]
    fn sanitized_text_has_no_controls(
        s in prop_oneof![
            any::<String>(),
            concat!(
                "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{200e}\\u{200f}\\u{61c}",
                "\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a ]{0,40}",
            ),
        ],
    ) {
        let out = sanitize(&s);
        prop_assert!(!out.chars().any(|c| c.is_control() || is_bidi_control(c)), "{:?}", out);
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

/// The current version, and the one before it.
fn version() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just(PROTOCOL), 1 => Just("MUCHAT/2")]
}

/// Lines a server (or someone in the middle) might send as its hello.
fn server_hello() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..1200),
        (
            version(),
            hex_value(),
            hex_value(),
            "[A-Za-z0-9+/]{43}=|[A-Za-z0-9+/=]{0,60}|"
        )
            .prop_map(|(v, b, s, c)| format!("{v} {b} {s} {c}\n").into_bytes()),
        (version(), "ERROR [\\x00-\\x7f\\u{202e}]{0,300}\n")
            .prop_map(|(v, rest)| format!("{v} {rest}").into_bytes()),
        "(MUCHAT/[0-9 ]{0,3}|HTTP/1.1 200 OK|SSH-2.0-x)[^\\n]{0,40}\r?\n"
            .prop_map(String::into_bytes),
        (version(), "[0-9a-f ]{0,1100}\n").prop_map(|(v, rest)| format!("{v} {rest}").into_bytes()),
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
        (version(), hex_value()).prop_map(|(v, a)| format!("{v} {a}\n").into_bytes()),
        (version(), hex_value()).prop_map(|(v, a)| format!("{v} {a}\r\n").into_bytes()),
        "(MUCHAT/[0-9\\x00-\\x1f\\x7f\u{202e}]{0,3}|GET / HTTP/1.1)[^\\n]{0,40}\n"
            .prop_map(String::into_bytes),
        (version(), "[0-9a-f\\x00-\\x1f ]{0,600}\n?")
            .prop_map(|(v, rest)| format!("{v} {rest}").into_bytes()),
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

/// A real exchange through the two halves, then a message each way (a
/// `GMSG` with its clear head among them); and the client rejects the same
/// server hello for a different static key, or another version.
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
    assert!(client_hello.starts_with(format!("{PROTOCOL} ").as_bytes()));
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
    let gmsg = ServerMessage::GroupMsg {
        key_id: 2,
        seq: 9,
        body: Body::enveloped(
            &ContentKey::from_bytes([1; 24]).seal(b"1 alice k"),
            &ContentKey::from_bytes([2; 24]).seal(b"hi"),
        ),
    };
    let line = seal_frame(&mut server.sealer, &gmsg.to_frame());
    assert!(line.starts_with(b"=GMSG 2 9."));
    let opened = client.opener.open(&line).unwrap();
    assert!(opened.clear && clear_head_allowed(&opened.head));
    assert_eq!(ServerMessage::parse(opened), Ok(gmsg));

    // Someone in the middle swaps in its own static value: confirmation fails.
    let text = String::from_utf8(server_hello).unwrap();
    let words: Vec<&str> = text.trim_end().split(' ').collect();
    assert_eq!(words.len(), 4);
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
    // The same hello under the previous version is refused as such.
    let old = text.replacen(PROTOCOL, "MUCHAT/2", 1);
    let result = handshake::client_with_secret(
        &mut Cursor::new(old.as_bytes()),
        &mut Vec::new(),
        client_secret(),
    );
    assert!(matches!(result, Err(handshake::HandshakeError::Version(v)) if v == "MUCHAT/2"));
}
