//! Pins docs/PROTOCOL.md to the code.
//!
//! The "Test vectors" section of the protocol document holds a fenced block
//! of `name = value` lines: fixed inputs (exponents, IVs, keys, heads),
//! the values the protocol derives from them, and the protocol's constants.
//! These tests recompute every derived value twice, once through the
//! crate's public API and once with an independent re-implementation of the
//! document's description (num-bigint, sha2, hmac, des/cbc, base64 used
//! directly), and fail if any documented line is changed, added or removed.
//!
//! To print the derived values for the block (after changing an input):
//! `cargo test --test protocol_vectors -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::io::Cursor;

use base64::Engine as _;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use cipher::block_padding::Pkcs7;
use hmac::{KeyInit, Mac};
use num_bigint::BigUint;
use sha2::{Digest, Sha256};

use muchat::content::{Body, ContentKey, CONTENT_KEY_B64_LEN};
use muchat::dh::{self, EphemeralSecret, PublicValue};
use muchat::event::{Delivery, ErrorCode, Reply, ServerMessage};
use muchat::frame::{Frame, Opener, Sealer, MAX_HEAD_LEN, MAX_LINE_LEN, REKEY_BLOCKS};
use muchat::handshake::{self, MAX_HANDSHAKE_LINE, PROTOCOL};
use muchat::keys::{self, SessionKeys};
use muchat::names::{Conversation, GroupName, Username, MAX_NAME_LEN};
use muchat::request::{
    Request, DEFAULT_HISTORY, FILE_CHUNK_SIZE, MAX_ACK_IDS, MAX_FIELD_LEN, MAX_HISTORY,
    MAX_MESSAGE_LEN,
};
use muchat::server::outbox::OutboxLimits;
use muchat::server::Config;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The fixed inputs; every other vector is derived from these.
const INPUTS: [&str; 10] = [
    "client_exponent",
    "server_exponent",
    "frame1_iv",
    "frame1_head",
    "content_key",
    "content_iv",
    "content_plaintext",
    "frame2_iv",
    "frame3_iv",
    "frame3_head",
];

/// Every error code. The exhaustive match stops this file compiling when a
/// variant is added, until it is listed here (and then documented, since
/// `error_codes` in the document must equal this list).
fn all_error_codes() -> Vec<ErrorCode> {
    let all = [
        ErrorCode::UnknownCommand,
        ErrorCode::Usage,
        ErrorCode::BadName,
        ErrorCode::NotLoggedIn,
        ErrorCode::AlreadyLoggedIn,
        ErrorCode::UserExists,
        ErrorCode::LoginFailed,
        ErrorCode::UnknownUser,
        ErrorCode::GroupExists,
        ErrorCode::NoSuchGroup,
        ErrorCode::NotMember,
        ErrorCode::AlreadyMember,
        ErrorCode::TooLarge,
        ErrorCode::NoSuchTransfer,
        ErrorCode::QuotaExceeded,
        ErrorCode::Storage,
    ];
    for c in all {
        match c {
            ErrorCode::UnknownCommand
            | ErrorCode::Usage
            | ErrorCode::BadName
            | ErrorCode::NotLoggedIn
            | ErrorCode::AlreadyLoggedIn
            | ErrorCode::UserExists
            | ErrorCode::LoginFailed
            | ErrorCode::UnknownUser
            | ErrorCode::GroupExists
            | ErrorCode::NoSuchGroup
            | ErrorCode::NotMember
            | ErrorCode::AlreadyMember
            | ErrorCode::TooLarge
            | ErrorCode::NoSuchTransfer
            | ErrorCode::QuotaExceeded
            | ErrorCode::Storage => {}
        }
    }
    all.to_vec()
}

/// The protocol constants as the code defines them.
fn constants() -> Vec<(&'static str, String)> {
    let config = Config::default();
    let limits = OutboxLimits::default();
    let codes: Vec<&str> = all_error_codes()
        .into_iter()
        .map(ErrorCode::as_str)
        .collect();
    vec![
        ("protocol", PROTOCOL.to_string()),
        ("generator", dh::GENERATOR.to_string()),
        ("element_bytes", dh::ELEMENT_BYTES.to_string()),
        ("element_hex_len", dh::ELEMENT_HEX_LEN.to_string()),
        ("exponent_bits", dh::EXPONENT_BITS.to_string()),
        ("label_c2s_enc", keys::LABEL_C2S_ENC.to_string()),
        ("label_c2s_mac", keys::LABEL_C2S_MAC.to_string()),
        ("label_s2c_enc", keys::LABEL_S2C_ENC.to_string()),
        ("label_s2c_mac", keys::LABEL_S2C_MAC.to_string()),
        ("label_rekey", keys::LABEL_REKEY.to_string()),
        ("max_handshake_line", MAX_HANDSHAKE_LINE.to_string()),
        ("max_line_len", MAX_LINE_LEN.to_string()),
        ("max_head_len", MAX_HEAD_LEN.to_string()),
        ("rekey_blocks", REKEY_BLOCKS.to_string()),
        ("content_key_b64_len", CONTENT_KEY_B64_LEN.to_string()),
        ("file_chunk_size", FILE_CHUNK_SIZE.to_string()),
        ("max_field_len", MAX_FIELD_LEN.to_string()),
        ("max_name_len", MAX_NAME_LEN.to_string()),
        ("default_max_file_size", config.max_file_size.to_string()),
        (
            "handshake_timeout_secs",
            config.handshake_timeout.as_secs().to_string(),
        ),
        ("outbox_urgent_queue", limits.urgent.to_string()),
        ("outbox_bulk_queue", limits.bulk.to_string()),
        (
            "bulk_timeout_secs",
            limits.bulk_timeout.as_secs().to_string(),
        ),
        ("max_message_len", MAX_MESSAGE_LEN.to_string()),
        ("default_history", DEFAULT_HISTORY.to_string()),
        ("max_history", MAX_HISTORY.to_string()),
        ("max_ack_ids", MAX_ACK_IDS.to_string()),
        (
            "default_max_pending_bytes",
            config.max_pending_bytes.to_string(),
        ),
        ("error_codes", codes.join(",")),
    ]
}

/// The length of the line carrying a worst-case `MSG` event (longest ids,
/// timestamp and names) with `n` bytes of message plaintext.
fn worst_case_msg_line(n: usize) -> usize {
    let key = ContentKey::from_bytes([1; 24]);
    let msg = ServerMessage::Msg(Delivery {
        id: u64::MAX,
        at_ms: u64::MAX,
        from: Username::parse(&"u".repeat(MAX_NAME_LEN)).unwrap(),
        to: Conversation::Group(GroupName::parse(&"g".repeat(MAX_NAME_LEN)).unwrap()),
        key: key.clone(),
        body: key.seal_with_iv(&[0; 8], &vec![0; n]),
    });
    let frame = msg.to_frame();
    let mut sealer = Sealer::new(&muchat::keys::DirectionKeys {
        enc: [2; 24],
        mac: [3; 32],
    });
    let line = seal(&mut sealer, &[0; 8], &frame.head, frame.body.as_ref());
    line.len()
}

/// The longest allowed message, relayed in the worst case, fits a line.
#[test]
fn the_longest_message_always_fits_its_relayed_line() {
    assert!(worst_case_msg_line(MAX_MESSAGE_LEN) <= MAX_LINE_LEN);
}

/// The `name = value` lines of the fenced block under the "Test vectors" heading.
fn documented() -> BTreeMap<String, String> {
    let mut lines = DOC.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with('#') && l.contains("Test vectors"))
        .expect("a \"Test vectors\" heading");
    lines
        .by_ref()
        .find(|l| l.starts_with("```"))
        .expect("a fenced block after the heading");
    let mut map = BTreeMap::new();
    for line in lines.by_ref() {
        if line.starts_with("```") {
            return map;
        }
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not a `name = value` line: {line:?}"));
        let old = map.insert(name.trim().to_string(), value.to_string());
        assert!(old.is_none(), "{name} is documented twice");
    }
    panic!("unterminated test vector block");
}

fn get<'a>(doc: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    doc.get(name)
        .unwrap_or_else(|| panic!("{name} missing from the test vectors"))
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "not hex: {s:?}"
    );
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fixed<const N: usize>(s: &str) -> [u8; N] {
    unhex(s)
        .try_into()
        .unwrap_or_else(|_| panic!("{s:?} is not {N} bytes"))
}

fn exponent(doc: &BTreeMap<String, String>, name: &str) -> BigUint {
    BigUint::from_bytes_be(&unhex(get(doc, name)))
}

/// Seals one frame and returns the line without its newline.
fn seal(sealer: &mut Sealer, iv: &[u8; 8], head: &str, body: Option<&Body>) -> String {
    let mut out = Vec::new();
    sealer.seal_with_iv(iv, head, body, &mut out);
    assert_eq!(out.pop(), Some(b'\n'), "a sealed line ends in a newline");
    String::from_utf8(out).expect("sealed lines are ASCII")
}

/// Every derived vector, computed through the crate's public API.
fn derive_through_the_crate(doc: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let a = exponent(doc, "client_exponent");
    let client_public = EphemeralSecret::from_exponent(a.clone())
        .public_value()
        .clone();
    let server = EphemeralSecret::from_exponent(exponent(doc, "server_exponent"));
    let server_public = server.public_value().clone();

    // The client runs the real handshake against a canned server hello.
    let hello = format!("{PROTOCOL} {}\n", server_public.to_hex());
    let mut sent = Vec::new();
    let mut keyed = handshake::client_with_secret(
        &mut Cursor::new(hello.into_bytes()),
        &mut sent,
        EphemeralSecret::from_exponent(a.clone()),
    )
    .expect("handshake");
    assert_eq!(
        String::from_utf8(sent).unwrap(),
        format!("MUCHAT/1 {}\n", client_public.to_hex())
    );

    let client_keys = SessionKeys::derive(
        &EphemeralSecret::from_exponent(a.clone()).diffie_hellman(&server_public),
        &client_public,
        &server_public,
    );
    let server_keys = SessionKeys::derive(
        &server.diffie_hellman(&client_public),
        &client_public,
        &server_public,
    );
    assert_eq!(client_keys, server_keys, "both ends derive the same keys");
    let c2s = &client_keys.client_to_server;
    let s2c = &client_keys.server_to_client;

    // Z is not reachable through the API: compute it with num-bigint; the
    // independent key derivation below ties it to the crate's keys.
    let z = BigUint::from_bytes_be(&server_public.to_bytes()).modpow(&a, dh::prime());
    let mut z_bytes = [0u8; 256];
    let raw = z.to_bytes_be();
    z_bytes[256 - raw.len()..].copy_from_slice(&raw);

    let content_key = ContentKey::from_bytes(fixed(get(doc, "content_key")));
    let body = content_key.seal_with_iv(
        &fixed(get(doc, "content_iv")),
        get(doc, "content_plaintext").as_bytes(),
    );
    let frame2_head = format!("SEND bob {}", content_key.to_b64());

    let frame1 = seal(
        &mut keyed.sealer,
        &fixed(get(doc, "frame1_iv")),
        get(doc, "frame1_head"),
        None,
    );
    let frame2 = seal(
        &mut keyed.sealer,
        &fixed(get(doc, "frame2_iv")),
        &frame2_head,
        Some(&body),
    );
    let frame3 = seal(
        &mut Sealer::new(&server_keys.server_to_client),
        &fixed(get(doc, "frame3_iv")),
        get(doc, "frame3_head"),
        None,
    );

    vec![
        ("client_public", client_public.to_hex()),
        ("server_public", server_public.to_hex()),
        ("shared_secret", hex(&z_bytes)),
        ("c2s_enc_key", hex(&c2s.enc)),
        ("c2s_mac_key", hex(&c2s.mac)),
        ("s2c_enc_key", hex(&s2c.enc)),
        ("s2c_mac_key", hex(&s2c.mac)),
        ("c2s_enc_key_rotated", hex(&keys::rotate_enc_key(&c2s.enc))),
        ("content_key_b64", content_key.to_b64()),
        ("content_body", body.as_str().to_string()),
        ("frame1_line", frame1),
        ("frame2_head", frame2_head),
        ("frame2_line", frame2),
        ("frame3_line", frame3),
    ]
}

#[test]
#[ignore = "prints the derived vectors for docs/PROTOCOL.md"]
fn print_vectors() {
    let doc = documented();
    for (name, value) in derive_through_the_crate(&doc)
        .into_iter()
        .chain(constants())
    {
        println!("{name} = {value}");
    }
}

#[test]
fn every_documented_value_matches_the_code() {
    let doc = documented();
    let mut expected: BTreeMap<String, String> = derive_through_the_crate(&doc)
        .into_iter()
        .chain(constants())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for name in INPUTS {
        expected.insert(name.to_string(), get(&doc, name).to_string());
    }
    for (name, want) in &expected {
        assert_eq!(
            get(&doc, name),
            want,
            "documented {name} differs from the code"
        );
    }
    let extra: Vec<&String> = doc.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "unchecked names in the test vectors: {extra:?}"
    );
}

/// SHA-256(label || 0x00 || parts...), as the document describes.
fn sha256(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0u8]);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn tdes_cbc_decrypt(key: &[u8], iv: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut buf = ct.to_vec();
    let n = cbc::Decryptor::<des::TdesEde3>::new_from_slices(key, iv)
        .expect("24-byte key, 8-byte IV")
        .decrypt_padded::<Pkcs7>(&mut buf)
        .expect("valid PKCS#7 padding")
        .len();
    buf.truncate(n);
    buf
}

/// Checks a line as the document describes it: `head "." body "." tag`, the
/// tag an HMAC over the sequence number and `head "." body`, the head
/// base64(IV || 3DES-CBC). Returns the head text and the body segment.
fn open_by_hand(
    line: &str,
    mac_key: &[u8],
    enc_key: &[u8],
    seq: u64,
    iv: &str,
) -> (String, String) {
    assert!(line.len() <= MAX_LINE_LEN);
    let (covered, tag) = line.rsplit_once('.').expect("a tag");
    let (head, body) = covered.split_once('.').expect("a head");
    assert_eq!(tag.len(), 44);
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(mac_key).unwrap();
    mac.update(&seq.to_be_bytes());
    mac.update(covered.as_bytes());
    assert_eq!(B64.encode(mac.finalize().into_bytes()), tag, "tag");
    let raw = B64.decode(head).expect("head base64");
    assert_eq!(hex(&raw[..8]), iv, "the head starts with its IV");
    let text = tdes_cbc_decrypt(enc_key, &raw[..8], &raw[8..]);
    (String::from_utf8(text).unwrap(), body.to_string())
}

#[test]
fn an_independent_implementation_of_the_document_agrees() {
    let doc = documented();
    let p = dh::prime();
    let doc_prime: String = DOC.split_whitespace().collect();
    assert!(
        doc_prime.contains(&format!("{p:X}")),
        "the group 14 prime is written out in the document"
    );
    let g = BigUint::from(2u32);
    let (a, b) = (
        exponent(&doc, "client_exponent"),
        exponent(&doc, "server_exponent"),
    );
    for e in [&a, &b] {
        assert!(e.bits() <= 256 && *e > BigUint::from(1u32));
    }
    let big_a = g.modpow(&a, p);
    let big_b = g.modpow(&b, p);
    assert_eq!(format!("{big_a:0>512x}"), get(&doc, "client_public"));
    assert_eq!(format!("{big_b:0>512x}"), get(&doc, "server_public"));
    let z = big_b.modpow(&a, p);
    assert_eq!(z, big_a.modpow(&b, p));
    assert_eq!(format!("{z:0>512x}"), get(&doc, "shared_secret"));

    let z = unhex(get(&doc, "shared_secret"));
    let big_a = unhex(get(&doc, "client_public"));
    let big_b = unhex(get(&doc, "server_public"));
    assert_eq!((z.len(), big_a.len(), big_b.len()), (256, 256, 256));
    let kdf = |label| sha256(label, &[&z, &big_a, &big_b]);
    assert_eq!(
        hex(&kdf("muchat/1 c2s enc")[..24]),
        get(&doc, "c2s_enc_key")
    );
    assert_eq!(hex(&kdf("muchat/1 c2s mac")), get(&doc, "c2s_mac_key"));
    assert_eq!(
        hex(&kdf("muchat/1 s2c enc")[..24]),
        get(&doc, "s2c_enc_key")
    );
    assert_eq!(hex(&kdf("muchat/1 s2c mac")), get(&doc, "s2c_mac_key"));
    let c2s_enc = unhex(get(&doc, "c2s_enc_key"));
    assert_eq!(
        hex(&sha256("muchat/1 rekey", &[&c2s_enc])[..24]),
        get(&doc, "c2s_enc_key_rotated")
    );

    let content_key = unhex(get(&doc, "content_key"));
    assert_eq!(content_key.len(), 24);
    let key_b64 = get(&doc, "content_key_b64");
    assert_eq!(key_b64, B64.encode(&content_key));
    assert_eq!(key_b64.len(), 32);
    let body = B64.decode(get(&doc, "content_body")).unwrap();
    assert_eq!(hex(&body[..8]), get(&doc, "content_iv"));
    assert_eq!(
        tdes_cbc_decrypt(&content_key, &body[..8], &body[8..]),
        get(&doc, "content_plaintext").as_bytes()
    );
    assert_eq!(get(&doc, "frame2_head"), format!("SEND bob {key_b64}"));

    let c2s_mac = unhex(get(&doc, "c2s_mac_key"));
    let s2c_mac = unhex(get(&doc, "s2c_mac_key"));
    let s2c_enc = unhex(get(&doc, "s2c_enc_key"));
    let (head, body) = open_by_hand(
        get(&doc, "frame1_line"),
        &c2s_mac,
        &c2s_enc,
        0,
        get(&doc, "frame1_iv"),
    );
    assert_eq!(
        (head.as_str(), body.as_str()),
        (get(&doc, "frame1_head"), "")
    );
    let (head, body) = open_by_hand(
        get(&doc, "frame2_line"),
        &c2s_mac,
        &c2s_enc,
        1,
        get(&doc, "frame2_iv"),
    );
    assert_eq!(head, get(&doc, "frame2_head"));
    assert_eq!(
        body,
        get(&doc, "content_body"),
        "the body is carried verbatim"
    );
    let (head, body) = open_by_hand(
        get(&doc, "frame3_line"),
        &s2c_mac,
        &s2c_enc,
        0,
        get(&doc, "frame3_iv"),
    );
    assert_eq!(
        (head.as_str(), body.as_str()),
        (get(&doc, "frame3_head"), "")
    );
}

fn documented_keys(doc: &BTreeMap<String, String>) -> SessionKeys {
    let client_public = PublicValue::from_hex(get(doc, "client_public")).unwrap();
    let server = EphemeralSecret::from_exponent(exponent(doc, "server_exponent"));
    let server_public = server.public_value().clone();
    SessionKeys::derive(
        &server.diffie_hellman(&client_public),
        &client_public,
        &server_public,
    )
}

#[test]
fn the_server_opens_the_documented_lines() {
    let doc = documented();
    let keys = documented_keys(&doc);
    let line1 = get(&doc, "frame1_line").as_bytes();
    let line2 = get(&doc, "frame2_line").as_bytes();

    // Sequence numbers: the second line does not verify as the first.
    assert!(Opener::new(&keys.client_to_server).open(line2).is_err());
    // Nor under the other direction's keys.
    assert!(Opener::new(&keys.server_to_client).open(line1).is_err());

    let mut opener = Opener::new(&keys.client_to_server);
    let f1 = opener.open(line1).expect("frame 1 opens");
    assert_eq!(f1, Frame::head(get(&doc, "frame1_head")));
    assert_eq!(
        Request::parse(f1),
        Ok(Request::Login {
            username: Username::parse("alice").unwrap(),
            password: "secret".into(),
        })
    );
    let f2 = opener.open(line2).expect("frame 2 opens");
    assert_eq!(f2.head, get(&doc, "frame2_head"));
    let body = f2.body.clone().expect("frame 2 has a body");
    assert_eq!(body.as_str(), get(&doc, "content_body"));
    let key = ContentKey::from_b64(get(&doc, "content_key_b64")).unwrap();
    assert_eq!(
        key.open(&body).unwrap(),
        get(&doc, "content_plaintext").as_bytes()
    );
    assert_eq!(
        Request::parse(f2),
        Ok(Request::Send {
            to: Username::parse("bob").unwrap(),
            key,
            body,
        })
    );
    // A replay of the first line fails once the counter has moved on.
    assert!(opener.open(line1).is_err());

    let mut client_opener = Opener::new(&keys.server_to_client);
    let f3 = client_opener
        .open(get(&doc, "frame3_line").as_bytes())
        .unwrap();
    assert_eq!(f3.head, get(&doc, "frame3_head"));
    assert_eq!(
        ServerMessage::parse(f3),
        Ok(ServerMessage::Reply(Reply::Ok("logged in as alice".into())))
    );
}

/// With a limit of 3 blocks, frame 1 (a 3-block head) fills the key exactly
/// and frame 2 would cross the limit, so frame 2 is sealed under the
/// documented rotated key with the unrotated MAC key.
#[test]
fn rotation_happens_before_a_head_would_cross_the_limit() {
    let doc = documented();
    let keys = documented_keys(&doc);
    let head1 = get(&doc, "frame1_head");
    assert_eq!(head1.len() / 8 + 1, 3, "frame 1's head is three blocks");
    let body = Body::from_wire(get(&doc, "content_body")).unwrap();
    let mut sealer = Sealer::with_rekey_blocks(&keys.client_to_server, 3);
    let line1 = seal(&mut sealer, &fixed(get(&doc, "frame1_iv")), head1, None);
    assert_eq!(
        line1,
        get(&doc, "frame1_line"),
        "no rotation at exactly the limit"
    );
    let line2 = seal(
        &mut sealer,
        &fixed(get(&doc, "frame2_iv")),
        get(&doc, "frame2_head"),
        Some(&body),
    );
    assert_ne!(line2, get(&doc, "frame2_line"));
    let (head, _) = open_by_hand(
        &line2,
        &keys.client_to_server.mac,
        &unhex(get(&doc, "c2s_enc_key_rotated")),
        1,
        get(&doc, "frame2_iv"),
    );
    assert_eq!(head, get(&doc, "frame2_head"));
    let mut opener = Opener::with_rekey_blocks(&keys.client_to_server, 3);
    assert_eq!(opener.open(line1.as_bytes()).unwrap().head, head1);
    assert_eq!(opener.open(line2.as_bytes()).unwrap().head, head);
}
