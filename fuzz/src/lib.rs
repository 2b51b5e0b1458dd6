//! The bodies of the cargo-fuzz targets in `fuzz_targets/`.
//!
//! Each function takes arbitrary bytes and must return without panicking,
//! whatever they are; each also asserts the few properties that hold for
//! every input. They live here, not in the targets, so that
//! `tests/fuzz_parsers.rs` (which includes this file with `#[path]`)
//! compiles and runs the very same code on the stable toolchain in every
//! `cargo test`: only the one-line `fuzz_target!` wrappers need nightly.
//!
//! This file may use only `muchat`, its dependencies `base64`, `hmac` and
//! `sha2`, and `std`, because the test crate has nothing else.

use std::io::Cursor;
use std::sync::OnceLock;

use base64::Engine as _;
use hmac::{KeyInit, Mac};

use muchat::content::{Body, ContentKey};
use muchat::dh::StaticSecret;
use muchat::event::{Delivery, ReplyData, ServerMessage};
use muchat::frame::{clear_head_allowed, Frame, Opener, Sealer, MAX_HEAD_LEN, MAX_LINE_LEN};
use muchat::handshake::{self, PROTOCOL};
use muchat::keys::DirectionKeys;
use muchat::names::GroupName;
use muchat::request::{self, ReplyKind, Request, Verb};
use muchat::tdes::{TdesKey, BLOCK_LEN};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Every kind of reply a request can get, for [`muchat::event::Reply::typed`].
pub const REPLY_KINDS: [ReplyKind; 4] = [
    ReplyKind::Unanswered,
    ReplyKind::Text,
    ReplyKind::Sent,
    ReplyKind::Upload,
];

/// The fixed session keys every frame target uses.
pub fn keys() -> DirectionKeys {
    DirectionKeys {
        enc: [0x33; 24],
        mac: [0x44; 32],
    }
}

/// The key the request and server-message targets seal bodies (and group
/// envelopes) under.
pub fn body_key() -> ContentKey {
    ContentKey::from_bytes([0x55; 24])
}

/// The group whose key is [`body_key`], for opening `GMSG` envelopes.
pub fn body_group() -> GroupName {
    GroupName::parse("fuzz").expect("valid group name")
}

/// The server identity the handshake target uses.
pub fn server_identity() -> &'static StaticSecret {
    static ID: OnceLock<StaticSecret> = OnceLock::new();
    ID.get_or_init(|| StaticSecret::from_bytes(&[7u8; 32]).expect("valid fixed exponent"))
}

/// The tag a line with these covered characters (`head "." body`) needs
/// at sequence number `seq` under [`keys`]: lets a target get past the MAC
/// on purpose. The MAC covers the head (encrypted, or `=` and clear text),
/// the dot after it, and the SHA-256 of the body when there is one.
pub fn tag_b64(seq: u64, covered: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(&keys().mac).expect("HMAC key");
    mac.update(&seq.to_be_bytes());
    match covered.iter().position(|&b| b == b'.') {
        Some(dot) => {
            mac.update(&covered[..=dot]);
            let body = &covered[dot + 1..];
            if !body.is_empty() {
                mac.update(&<sha2::Sha256 as sha2::Digest>::digest(body));
            }
        }
        None => mac.update(covered),
    }
    B64.encode(mac.finalize().into_bytes())
}

/// A body's base64 parts: itself, or an envelope and its content.
pub fn body_parts(body: &Body) -> Vec<Body> {
    if body.is_plain() {
        vec![body.clone()]
    } else {
        let (envelope, content) = body.split_envelope().expect("not plain: has a ':'");
        vec![envelope, content]
    }
}

/// Checks what any successfully opened frame must satisfy.
pub fn check_opened(frame: &Frame) {
    assert!(frame.head.len() <= MAX_HEAD_LEN, "over-long head accepted");
    if frame.clear {
        assert!(
            clear_head_allowed(&frame.head),
            "clear head {:?} accepted",
            frame.head
        );
    }
    if let Some(body) = &frame.body {
        for part in body_parts(body) {
            assert!(part.is_plain(), "a body of more than two parts accepted");
            let n = part.ciphertext_len();
            assert!(
                n >= 2 * BLOCK_LEN && n.is_multiple_of(BLOCK_LEN),
                "malformed body accepted: {n} bytes"
            );
        }
    }
}

/// Splits `data` at its first `sep` (the separator dropped).
fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A body sealed under [`body_key`] from fuzzer bytes: none if `plain` is
/// empty; an envelope and content if it holds a `0xFF` (the envelope's
/// plaintext before it, the content's after); else plain content.
fn body_from_bytes(iv: u8, plain: &[u8]) -> Option<Body> {
    if plain.is_empty() {
        return None;
    }
    let iv = [iv; BLOCK_LEN];
    Some(match plain.iter().position(|&b| b == 0xFF) {
        Some(i) => Body::enveloped(
            &body_key().seal_with_iv(&iv, &plain[..i]),
            &body_key().seal_with_iv(&iv, &plain[i + 1..]),
        ),
        None => body_key().seal_with_iv(&iv, plain),
    })
}

/// `head "." body "." tag` for a line whose tag is right for sequence 0.
fn tagged_line(head: &[u8], body: Option<&Body>) -> Vec<u8> {
    let mut line = head.to_vec();
    line.push(b'.');
    if let Some(b) = body {
        line.extend_from_slice(b.as_str().as_bytes());
    }
    let tag = tag_b64(0, &line);
    line.push(b'.');
    line.extend_from_slice(tag.as_bytes());
    line
}

/// Seals one frame under [`keys`] with a fresh sealer, newline removed.
fn seal_fresh(head: &str, clear: bool) -> Vec<u8> {
    let mut line = Vec::new();
    let mut sealer = Sealer::new(&keys());
    if clear {
        sealer.seal_clear_into(head, None, &mut line);
    } else {
        sealer.seal_into(head, None, &mut line);
    }
    assert_eq!(line.pop(), Some(b'\n'));
    line
}

/// The frame decoder: `Opener::open` with fixed keys. The first byte picks
/// how the rest is used:
///
/// * 0: raw lines (split at `\n`) through one opener: what an attacker
///   without the keys can send.
/// * 1: the rest is a line's covered part (`head.body`), given a valid tag,
///   so the decoder's post-MAC paths (base64, 3DES padding, clear heads,
///   UTF-8, head and body limits) see arbitrary input.
/// * 2: the rest is a head's plaintext bytes (then `0xFF`, then a body's,
///   itself split at a second `0xFF` into an envelope and content),
///   properly encrypted and tagged: the frame must open exactly when the
///   head is UTF-8 within the limits, and then to those very bytes.
/// * 3: the rest, as text, is sealed by a `Sealer` (and, when it may be, as
///   a clear head too); each must open to itself, and the same line with
///   one bit flipped (chosen by the input) must not.
/// * 4: as 2, but the head travels in clear (`=` and the bytes): it must
///   open exactly when the bytes are a permitted clear head.
pub fn frame_decoder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => {
            let mut opener = Opener::new(&keys());
            for line in rest.split(|&b| b == b'\n') {
                if let Ok(frame) = opener.open(line) {
                    check_opened(&frame);
                }
            }
        }
        1 => {
            let mut line = rest.to_vec();
            line.push(b'.');
            line.extend_from_slice(tag_b64(0, rest).as_bytes());
            if let Ok(frame) = Opener::new(&keys()).open(&line) {
                check_opened(&frame);
                assert_eq!(frame.clear, line.starts_with(b"="));
            }
        }
        2 | 4 => {
            let clear = mode % 5 == 4;
            let (head, body_plain) = split_at_byte(rest, 0xFF);
            let body = body_from_bytes(mode, body_plain);
            let head_segment = if clear {
                [b"=", head].concat()
            } else {
                let iv = [mode; BLOCK_LEN];
                let mut raw = iv.to_vec();
                TdesKey::new(&keys().enc).encrypt_into(&iv, head, &mut raw);
                B64.encode(&raw).into_bytes()
            };
            let line = tagged_line(&head_segment, body.as_ref());
            let result = Opener::new(&keys()).open(&line);
            let text = std::str::from_utf8(head).ok();
            let should_open = line.len() <= MAX_LINE_LEN
                && head.len() <= MAX_HEAD_LEN
                && text.is_some_and(|t| !clear || clear_head_allowed(t));
            assert_eq!(result.is_ok(), should_open, "{result:?}");
            if let Ok(frame) = result {
                check_opened(&frame);
                assert_eq!(frame.head.as_bytes(), head);
                assert_eq!(frame.body, body);
                assert_eq!(frame.clear, clear);
            }
        }
        _ => {
            let head = String::from_utf8_lossy(rest);
            let bit: usize = rest.iter().map(|&b| b as usize).sum();
            for clear in [false, true] {
                if clear && !clear_head_allowed(&head) {
                    continue;
                }
                let mut line = seal_fresh(&head, clear);
                let opened = Opener::new(&keys()).open(&line);
                if line.len() <= MAX_LINE_LEN && head.len() <= MAX_HEAD_LEN {
                    let want = Frame {
                        head: head.to_string(),
                        body: None,
                        clear,
                    };
                    assert_eq!(opened, Ok(want));
                } else {
                    assert!(opened.is_err());
                }
                let pos = bit / 8 % line.len();
                line[pos] ^= 1 << (bit % 8);
                assert!(
                    Opener::new(&keys()).open(&line).is_err(),
                    "a line with a flipped bit was accepted (clear: {clear})"
                );
            }
        }
    }
}

/// Builds a frame from fuzzer bytes. The first byte holds flags: bit 0, a
/// body; bit 1, a body 16 times as long (to reach the size limits); bit 2,
/// a clear head; bit 3, the body is an envelope and content (its plaintext
/// split at the first `0xFF`). The head is the text up to the first `\n`,
/// the body's plaintext what follows.
pub fn frame_from_bytes(data: &[u8]) -> Option<Frame> {
    let (&flags, rest) = data.split_first()?;
    let (head, body_plain) = split_at_byte(rest, b'\n');
    let iv = [flags; BLOCK_LEN];
    let seal = |plain: &[u8]| {
        if flags & 2 == 2 {
            let long: Vec<u8> = plain
                .iter()
                .copied()
                .cycle()
                .take(16 * plain.len())
                .collect();
            body_key().seal_with_iv(&iv, &long)
        } else {
            body_key().seal_with_iv(&iv, plain)
        }
    };
    let body = (flags & 1 == 1).then(|| {
        if flags & 8 == 8 {
            let (envelope, content) = split_at_byte(body_plain, 0xFF);
            Body::enveloped(&body_key().seal_with_iv(&iv, envelope), &seal(content))
        } else {
            seal(body_plain)
        }
    });
    Some(Frame {
        head: String::from_utf8_lossy(head).into_owned(),
        body,
        clear: flags & 4 == 4,
    })
}

/// Checks a request `Request::parse` accepted from `head` (and a body):
/// its verb, its body, its limits, its round trip, and its redaction.
pub fn check_request(head: &str, had_body: bool, r: &Request) {
    let verb = r.verb();
    assert_eq!(Verb::of_head(head), Some(verb), "verb of {head:?}");
    assert_eq!(verb.spec().body, had_body, "{verb}: body");
    let frame = r.to_frame();
    assert!(!frame.clear, "a request with a clear head");
    assert_eq!(frame.body.is_some(), verb.spec().body);
    assert_eq!(Request::parse(frame.clone()), Ok(r.clone()), "round trip");
    match r {
        Request::Send { body, .. } | Request::SendToGroup { body, .. } => {
            assert!(body.is_plain());
            assert!(body.as_str().len() <= request::MAX_MESSAGE_BODY_LEN);
        }
        Request::Chunk { body, .. } => {
            assert!(body.is_plain());
            assert!(body.as_str().len() <= request::MAX_CHUNK_BODY_LEN);
        }
        Request::Ack(refs) => {
            assert!(!refs.is_empty() && refs.len() <= request::MAX_ACK_REFS);
        }
        Request::History { limit, .. } => {
            assert!((1..=request::MAX_HISTORY).contains(limit));
        }
        Request::Login { .. } | Request::CreateUser { .. } => {
            // The password is the third word and a login's device token the
            // fourth: they, and only they, are hidden.
            let mut words: Vec<&str> = frame.head.splitn(4, ' ').collect();
            words[2] = "<password>";
            if matches!(r, Request::Login { .. }) && words.len() == 4 {
                words[3] = "<device-token>";
            }
            assert_eq!(r.redacted(), words.join(" "));
        }
        Request::Resume { .. } => {
            let mut words: Vec<&str> = frame.head.splitn(3, ' ').collect();
            words[2] = "<device-token>";
            assert_eq!(r.redacted(), words.join(" "));
        }
        _ => assert_eq!(r.redacted(), frame.head),
    }
}

/// The request parser: `Request::parse` of a head and optional body. Any
/// request it accepts is checked by [`check_request`]; an error that names
/// a verb names the head's.
pub fn request_parser(data: &[u8]) {
    let Some(frame) = frame_from_bytes(data) else {
        return;
    };
    let head = frame.head.clone();
    let had_body = frame.body.is_some();
    let verb = Verb::of_head(&head);
    match Request::parse(frame) {
        Ok(r) => check_request(&head, had_body, &r),
        Err(e) => {
            if let Some(v) = e.verb() {
                assert_eq!(verb, Some(v), "{e:?} for {head:?}");
            }
        }
    }
}

/// Checks a server message `ServerMessage::parse` accepted: it survives
/// `to_frame` (a clear head exactly for `GMSG`); a reply typed as any kind
/// survives its wire form too; a `GMSG` envelope opens or is refused.
pub fn check_server_message(m: &ServerMessage) {
    let frame = m.to_frame();
    let is_gmsg = matches!(m, ServerMessage::GroupMsg { .. });
    assert_eq!(frame.clear, is_gmsg, "clear head for {m:?}");
    if frame.clear {
        assert!(clear_head_allowed(&frame.head));
    }
    assert_eq!(ServerMessage::parse(frame), Ok(m.clone()), "round trip");
    match m {
        ServerMessage::Reply(r) => {
            for kind in REPLY_KINDS {
                let Ok(typed) = r.clone().typed(kind) else {
                    continue;
                };
                if let ServerMessage::Reply(raw) =
                    ServerMessage::parse(ServerMessage::Reply(typed.clone()).to_frame())
                        .expect("a typed reply parses")
                {
                    assert_eq!(raw.typed(kind), Ok(typed.clone()), "{kind:?}");
                } else {
                    panic!("a reply parsed as something else");
                }
                if let muchat::event::Reply::Ok { data, .. } = &typed {
                    match (kind, data) {
                        (ReplyKind::Sent, ReplyData::Sent(refs))
                        | (ReplyKind::Upload, ReplyData::Sent(refs)) => {
                            assert!(!refs.is_empty())
                        }
                        (ReplyKind::Upload, ReplyData::Transfer(_)) => {}
                        (ReplyKind::Text | ReplyKind::Unanswered, ReplyData::None) => {}
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
        ServerMessage::GroupMsg { seq, body, .. } => {
            let group = body_group();
            if let Ok(d) = Delivery::open_group(&group, *seq, &body_key(), body) {
                assert_eq!(d.at.seq, *seq);
                let msg = ServerMessage::Msg(d);
                assert_eq!(ServerMessage::parse(msg.to_frame()), Ok(msg));
            }
        }
        _ => {}
    }
}

/// The client's parser of what the server sends: `ServerMessage::parse`,
/// of frames with and without bodies, envelopes and clear heads. Anything
/// it accepts is checked by [`check_server_message`]; a clear head is
/// accepted only for `GMSG`.
pub fn server_message(data: &[u8]) {
    let Some(frame) = frame_from_bytes(data) else {
        return;
    };
    let clear = frame.clear;
    if let Ok(m) = ServerMessage::parse(frame) {
        assert_eq!(
            clear,
            matches!(m, ServerMessage::GroupMsg { .. }),
            "clear head accepted for {m:?}, or GMSG without one"
        );
        check_server_message(&m);
    }
}

/// The client side of the handshake fed `data` as the server's hello. Only
/// the holder of a static key could make it succeed, and the fuzzer holds
/// none: it must fail, never panic. (One to three 2048-bit modpows a call.)
pub fn handshake_client(data: &[u8]) {
    let mut sent = Vec::new();
    let result = handshake::client(&mut Cursor::new(data), &mut sent);
    assert!(result.is_err(), "a handshake without any key succeeded");
    assert!(sent.starts_with(format!("{PROTOCOL} ").as_bytes()) && sent.ends_with(b"\n"));
}

/// The server side of the handshake fed `data` as the client's hello, with
/// a fixed static key. Whatever happens, the server writes at most one
/// line, and never echoes a raw control character back.
pub fn handshake_server(data: &[u8]) {
    let mut sent = Vec::new();
    let result = handshake::server(&mut Cursor::new(data), &mut sent, server_identity());
    if sent.is_empty() {
        assert!(result.is_err(), "success without a server hello");
        return;
    }
    assert!(sent.starts_with(format!("{PROTOCOL} ").as_bytes()));
    assert_eq!(
        sent.iter().position(|&b| b == b'\n'),
        Some(sent.len() - 1),
        "one line"
    );
    assert!(
        !sent[..sent.len() - 1]
            .iter()
            .any(|&b| b < 0x20 || b == 0x7f),
        "control character in the server's reply"
    );
    let is_refusal = sent.starts_with(format!("{PROTOCOL} ERROR ").as_bytes());
    assert_eq!(result.is_err(), is_refusal);
    if result.is_ok() {
        // Only a hello of exactly "MUCHAT/3 <512 hex digits>" is accepted.
        let line = split_at_byte(data, b'\n').0;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let hex = line.strip_prefix(format!("{PROTOCOL} ").as_bytes());
        assert!(hex.is_some_and(|h| h.len() == 512 && h.iter().all(u8::is_ascii_hexdigit)));
    }
}
