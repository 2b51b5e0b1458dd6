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

use muchat::content::ContentKey;
use muchat::dh::StaticSecret;
use muchat::event::ServerMessage;
use muchat::frame::{Frame, Opener, Sealer, MAX_HEAD_LEN, MAX_LINE_LEN};
use muchat::handshake::{self, PROTOCOL};
use muchat::keys::DirectionKeys;
use muchat::request::{self, Request};
use muchat::tdes::{TdesKey, BLOCK_LEN};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The fixed session keys every frame target uses.
pub fn keys() -> DirectionKeys {
    DirectionKeys {
        enc: [0x33; 24],
        mac: [0x44; 32],
    }
}

/// The key the request and server-message targets seal bodies under.
fn body_key() -> ContentKey {
    ContentKey::from_bytes([0x55; 24])
}

/// The server identity the handshake target uses.
pub fn server_identity() -> &'static StaticSecret {
    static ID: OnceLock<StaticSecret> = OnceLock::new();
    ID.get_or_init(|| StaticSecret::from_bytes(&[7u8; 32]).expect("valid fixed exponent"))
}

/// The tag a line with these covered characters (`head "." body`) needs
/// at sequence number `seq` under [`keys`]: lets a target get past the MAC
/// on purpose. The MAC covers the head, the dot after it, and the SHA-256
/// of the body when there is one.
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

/// Checks what any successfully opened frame must satisfy.
fn check_opened(frame: &Frame) {
    assert!(frame.head.len() <= MAX_HEAD_LEN, "over-long head accepted");
    if let Some(body) = &frame.body {
        let n = body.ciphertext_len();
        assert!(
            n >= 2 * BLOCK_LEN && n.is_multiple_of(BLOCK_LEN),
            "malformed body accepted"
        );
    }
}

/// Splits `data` at its first `sep` (the separator dropped).
fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The frame decoder: `Opener::open` with fixed keys. The first byte picks
/// how the rest is used:
///
/// * 0: raw lines (split at `\n`) through one opener: what an attacker
///   without the keys can send.
/// * 1: the rest is a line's covered part (`head.body`), given a valid tag,
///   so the decoder's post-MAC paths (base64, 3DES padding, UTF-8, head and
///   body limits) see arbitrary input.
/// * 2: the rest is a head's plaintext bytes (then `0xFF`, then a body's),
///   properly encrypted and tagged: the frame must open exactly when the
///   head is UTF-8 within the limits, and then to those very bytes.
/// * 3: the rest, as text, is sealed by a `Sealer`; it must open to itself,
///   and the same line with one bit flipped (chosen by the input) must not.
pub fn frame_decoder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
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
            }
        }
        2 => {
            let (head, body_plain) = split_at_byte(rest, 0xFF);
            let iv = [mode; BLOCK_LEN];
            let mut raw = iv.to_vec();
            TdesKey::new(&keys().enc).encrypt_into(&iv, head, &mut raw);
            let body = (!body_plain.is_empty()).then(|| body_key().seal_with_iv(&iv, body_plain));
            let mut line = B64.encode(&raw).into_bytes();
            line.push(b'.');
            if let Some(b) = &body {
                line.extend_from_slice(b.as_str().as_bytes());
            }
            let tag = tag_b64(0, &line);
            line.push(b'.');
            line.extend_from_slice(tag.as_bytes());
            let result = Opener::new(&keys()).open(&line);
            let should_open = line.len() <= MAX_LINE_LEN
                && head.len() <= MAX_HEAD_LEN
                && std::str::from_utf8(head).is_ok();
            assert_eq!(result.is_ok(), should_open, "{result:?}");
            if let Ok(frame) = result {
                assert_eq!(frame.head.as_bytes(), head);
                assert_eq!(frame.body, body);
            }
        }
        _ => {
            let head = String::from_utf8_lossy(rest);
            let mut line = Vec::new();
            Sealer::new(&keys()).seal_into(&head, None, &mut line);
            assert_eq!(line.pop(), Some(b'\n'));
            let opened = Opener::new(&keys()).open(&line);
            if line.len() <= MAX_LINE_LEN && head.len() <= MAX_HEAD_LEN {
                assert_eq!(opened, Ok(Frame::head(head.into_owned())));
            } else {
                assert!(opened.is_err());
            }
            let bit: usize = rest.iter().map(|&b| b as usize).sum();
            let pos = bit / 8 % line.len();
            line[pos] ^= 1 << (bit % 8);
            assert!(
                Opener::new(&keys()).open(&line).is_err(),
                "a line with a flipped bit was accepted"
            );
        }
    }
}

/// Builds a frame from fuzzer bytes: bit 0 of the first byte says whether
/// it has a body, bit 1 makes the body 16 times as long (to reach the size
/// limits); the head is the text up to the first `\n`, the body's
/// plaintext what follows.
pub fn frame_from_bytes(data: &[u8]) -> Option<Frame> {
    let (&flags, rest) = data.split_first()?;
    let (head, body_plain) = split_at_byte(rest, b'\n');
    let body = (flags & 1 == 1).then(|| {
        if flags & 2 == 2 {
            let long: Vec<u8> = body_plain
                .iter()
                .copied()
                .cycle()
                .take(16 * body_plain.len())
                .collect();
            body_key().seal_with_iv(&[flags; BLOCK_LEN], &long)
        } else {
            body_key().seal_with_iv(&[flags; BLOCK_LEN], body_plain)
        }
    });
    Some(Frame {
        head: String::from_utf8_lossy(head).into_owned(),
        body,
    })
}

/// The request parser: `Request::parse` of a head and optional body. Any
/// request it accepts must survive `to_frame` and parse back to itself,
/// respect the body limits, and never show its password in `redacted`.
pub fn request_parser(data: &[u8]) {
    let Some(frame) = frame_from_bytes(data) else {
        return;
    };
    let _ = request::is_unanswered(&frame.head);
    let Ok(r) = Request::parse(frame) else {
        return;
    };
    assert_eq!(Request::parse(r.to_frame()), Ok(r.clone()), "round trip");
    match &r {
        Request::Send { body, .. } | Request::SendToGroup { body, .. } => {
            assert!(body.as_str().len() <= request::MAX_MESSAGE_BODY_LEN);
        }
        Request::Chunk { body, .. } => {
            assert!(body.as_str().len() <= request::MAX_CHUNK_BODY_LEN);
        }
        Request::Login { .. } | Request::CreateUser { .. } => {
            assert!(r.redacted().ends_with(" <password>"), "{}", r.redacted());
        }
        _ => {}
    }
}

/// The client's parser of what the server sends: `ServerMessage::parse`.
/// Anything it accepts must survive `to_frame` and parse back to itself.
pub fn server_message(data: &[u8]) {
    let Some(frame) = frame_from_bytes(data) else {
        return;
    };
    if let Ok(m) = ServerMessage::parse(frame) {
        assert_eq!(
            ServerMessage::parse(m.to_frame()),
            Ok(m.clone()),
            "round trip"
        );
    }
}

/// The client side of the handshake fed `data` as the server's hello. Only
/// the holder of a static key could make it succeed, and the fuzzer holds
/// none: it must fail, never panic. (One to three 2048-bit modpows a call.)
pub fn handshake_client(data: &[u8]) {
    let mut sent = Vec::new();
    let result = handshake::client(&mut Cursor::new(data), &mut sent);
    assert!(result.is_err(), "a handshake without any key succeeded");
    assert!(sent.starts_with(PROTOCOL.as_bytes()) && sent.ends_with(b"\n"));
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
        // A hello of exactly "MUCHAT/2 <512 hex digits>" was accepted.
        let line = split_at_byte(data, b'\n').0;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let hex = line.strip_prefix(format!("{PROTOCOL} ").as_bytes());
        assert!(hex.is_some_and(|h| h.len() == 512 && h.iter().all(u8::is_ascii_hexdigit)));
    }
}
